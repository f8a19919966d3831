"""One contract for every object store: LocalStore, MemoryStore and MinioStore.

MinioStore runs the real ``minio`` SDK over HTTP against moto's S3 server on a free loopback port
(``ThreadedMotoServer``), one fresh bucket per test.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from moto.server import ThreadedMotoServer

from core.storage import (
    InvalidKey,
    LocalStore,
    MemoryStore,
    ObjectNotFound,
    ObjectStore,
    StorageError,
)
from core.storage.minio_store import MIN_PART_SIZE, MinioStore

ACCESS_KEY = "contract-test-access"
SECRET_KEY = "contract-test-secret"
_bucket_ids = itertools.count()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


def make_minio(endpoint: str, **kw: object) -> MinioStore:
    return MinioStore(
        endpoint,
        ACCESS_KEY,
        SECRET_KEY,
        f"contract-{os.getpid()}-{next(_bucket_ids)}",
        secure=False,
        region="us-east-1",
        part_size=MIN_PART_SIZE,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "memory", "minio"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    if request.param == "memory":
        return MemoryStore()
    minio = make_minio(request.getfixturevalue("moto_endpoint"))
    minio.ensure_bucket()
    return minio


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(256)) * 1000], ids=["empty", "small", "256k"])
def test_bytes_round_trip(store: ObjectStore, payload: bytes) -> None:
    info = store.put_bytes("jobs/a/blob.bin", payload, content_type="application/x-test")
    assert store.get_bytes("jobs/a/blob.bin") == payload
    assert info.key == "jobs/a/blob.bin"
    assert info.size == len(payload)
    assert info.sha256 == sha(payload)
    stat = store.stat("jobs/a/blob.bin")
    assert (stat.size, stat.sha256, stat.content_type) == (len(payload), sha(payload), "application/x-test")
    assert stat.last_modified.tzinfo is not None


def test_file_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "in.npz"
    src.write_bytes(b"\x93NUMPY" + os.urandom(5000))
    info = store.put_file("jobs/b/shards/0.npz", src)
    assert (info.size, info.sha256) == (src.stat().st_size, sha(src.read_bytes()))
    dest = tmp_path / "out" / "deeper" / "0.npz"  # parents are created
    store.download_file("jobs/b/shards/0.npz", dest)
    assert dest.read_bytes() == src.read_bytes()
    # no temporary files left next to the destination
    assert sorted(p.name for p in dest.parent.iterdir()) == ["0.npz"]


def test_put_file_guesses_content_type(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "m.json"
    src.write_text("{}")
    store.put_file("jobs/c/metrics.json", src)
    assert store.stat("jobs/c/metrics.json").content_type == "application/json"


def test_large_object_uses_multipart(store: ObjectStore, tmp_path: Path) -> None:
    payload = os.urandom(11 * 1024 * 1024)  # > 2 parts of 5 MiB
    src = tmp_path / "big.bin"
    src.write_bytes(payload)
    info = store.put_file("big/object.bin", src)
    assert (info.size, info.sha256) == (len(payload), sha(payload))
    if isinstance(store, MinioStore):
        # An S3 multipart ETag is "<md5 of part md5s>-<number of parts>": 11 MiB in 5 MiB parts = 3 parts.
        assert info.etag.endswith("-3"), info.etag
    dest = tmp_path / "big.out"
    store.download_file("big/object.bin", dest)
    assert sha(dest.read_bytes()) == sha(payload)
    chunks = list(store.iter_chunks("big/object.bin", chunk_size=1024 * 1024))
    assert b"".join(chunks) == payload
    assert max(len(c) for c in chunks) <= 1024 * 1024


def test_iter_chunks_reassembles(store: ObjectStore) -> None:
    payload = os.urandom(10_000)
    store.put_bytes("s/stream.bin", payload)
    chunks = list(store.iter_chunks("s/stream.bin", chunk_size=4096))
    assert b"".join(chunks) == payload
    assert all(len(c) <= 4096 for c in chunks) and len(chunks) >= 3


def test_json_round_trip(store: ObjectStore) -> None:
    value = {"count": 3, "histogram": [1, 2, 0], "name": "ünïcode", "nested": {"a": None}}
    info = store.put_json("jobs/d/metrics.json", value)
    assert store.get_json("jobs/d/metrics.json") == value
    assert info.content_type == "application/json"


def test_json_refuses_nan_and_reports_bad_json(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="jobs/d/bad.json"):
        store.put_json("jobs/d/bad.json", {"x": float("nan")})
    assert not store.exists("jobs/d/bad.json")
    store.put_bytes("jobs/d/garbage.json", b"{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        store.get_json("jobs/d/garbage.json")


# -- metadata, listing, overwrite, delete ------------------------------------------------------------


def test_list_by_prefix_is_sorted_and_exact(store: ObjectStore) -> None:
    keys = ["jobs/ab/x", "jobs/a/2.npz", "jobs/a/10.npz", "jobs/a/sub/deep.bin", "jobs/a-b/y", "other/z"]
    for i, key in enumerate(keys):
        store.put_bytes(key, b"x" * (i + 1))
    listed = list(store.list("jobs/a/"))
    assert [i.key for i in listed] == ["jobs/a/10.npz", "jobs/a/2.npz", "jobs/a/sub/deep.bin"]
    assert [i.size for i in listed] == [3, 2, 4]
    # A plain string prefix, as in S3: 'jobs/a' also matches 'jobs/a-b/...' and 'jobs/ab/...'.
    assert [i.key for i in store.list("jobs/a")] == sorted(k for k in keys if k.startswith("jobs/a"))
    assert [i.key for i in store.list("")] == sorted(keys)
    assert list(store.list("nothing/")) == []
    assert [i.key for i in store.list("jobs/a/sub")] == ["jobs/a/sub/deep.bin"]


def test_list_entries_match_stat(store: ObjectStore) -> None:
    store.put_bytes("l/one", b"12345")
    (entry,) = list(store.list("l/"))
    stat = store.stat("l/one")
    assert (entry.key, entry.size, entry.etag) == (stat.key, stat.size, stat.etag)
    assert entry.sha256 in (None, stat.sha256)  # S3 listings do not carry user metadata


def test_overwrite_replaces_content_and_metadata(store: ObjectStore) -> None:
    first = store.put_bytes("o/key", b"first version")
    second = store.put_bytes("o/key", b"second, longer version")
    assert store.get_bytes("o/key") == b"second, longer version"
    stat = store.stat("o/key")
    assert stat.sha256 == sha(b"second, longer version") != first.sha256
    assert stat.size == len(b"second, longer version")
    assert second.etag != first.etag
    assert [i.key for i in store.list("o/")] == ["o/key"]


def test_put_if_absent_creates_once(store: ObjectStore) -> None:
    assert store.put_bytes_if_absent("idem/k.json", b"one") is True
    assert store.put_bytes_if_absent("idem/k.json", b"two") is False
    assert store.get_bytes("idem/k.json") == b"one"
    assert store.stat("idem/k.json").sha256 == sha(b"one")


def test_put_many_stores_each_object_as_put_bytes_would(store: ObjectStore) -> None:
    store.put_bytes("many/active/j1", b"older")  # overwritten like put_bytes overwrites
    items = [("many/jobs/j1/job.json", b'{"id": "j1"}', "application/json"),
             ("many/active/j1", b"", "text/plain"), ("many/index/o/j1", b"", "text/plain")]
    infos = store.put_many(items)
    assert [i.key for i in infos] == [key for key, _, _ in items]
    for (key, data, content_type), info in zip(items, infos, strict=True):
        assert store.get_bytes(key) == data
        assert (info.size, info.sha256) == (len(data), sha(data))
        stat = store.stat(key)
        assert (stat.size, stat.sha256, stat.content_type) == (len(data), sha(data), content_type)
    assert store.put_many([]) == []


def test_put_many_rejects_a_bad_key_before_writing_any(store: ObjectStore) -> None:
    with pytest.raises(InvalidKey):
        store.put_many([("fine/first", b"1", "text/plain"), ("../escape", b"2", "text/plain")])
    assert not store.exists("fine/first")


def test_delete(store: ObjectStore) -> None:
    store.put_bytes("d/a", b"1")
    store.put_bytes("d/b", b"2")
    assert store.exists("d/a")
    store.delete("d/a")
    assert not store.exists("d/a")
    assert [i.key for i in store.list("d/")] == ["d/b"]
    store.delete("d/a")  # deleting a missing key is fine (S3 semantics)
    with pytest.raises(ObjectNotFound):
        store.get_bytes("d/a")


@pytest.mark.parametrize(
    "operation",
    [
        lambda s, tmp: s.get_bytes("no/such/key"),
        lambda s, tmp: s.stat("no/such/key"),
        lambda s, tmp: s.iter_chunks("no/such/key"),  # raises at call time, before iteration
        lambda s, tmp: s.download_file("no/such/key", tmp / "x"),
        lambda s, tmp: s.get_json("no/such/key"),
    ],
    ids=["get_bytes", "stat", "iter_chunks", "download_file", "get_json"],
)
def test_missing_key_raises_object_not_found(store: ObjectStore, tmp_path: Path, operation) -> None:
    store.put_bytes("no/such/key-but-similar", b"x")
    with pytest.raises(ObjectNotFound) as info:
        operation(store, tmp_path)
    assert info.value.key == "no/such/key"
    assert not store.exists("no/such/key")
    assert not (tmp_path / "x").exists()


def test_a_prefix_is_not_an_object(store: ObjectStore) -> None:
    store.put_bytes("p/q/r", b"x")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("p/q")
    assert not store.exists("p")


# -- key validation ----------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "/abs/key",
    "../escape",
    "a/../../escape",
    "a/./b",
    "a//b",
    "trailing/",
    "back\\slash",
    ".hidden",
    "a/.meta",
    "nul\x00byte",
    "new\nline",
    "sp ace",
    "ünicode",
    "x" * 1025,
    "a/" + "y" * 201,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_invalid_keys_are_rejected_before_io(store: ObjectStore, tmp_path: Path, key: str) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    operations = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_bytes_if_absent(key, b"x"),
        lambda: store.put_file(key, src),
        lambda: store.get_bytes(key),
        lambda: store.iter_chunks(key),
        lambda: store.stat(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.download_file(key, tmp_path / "out"),
        lambda: store.presigned_url(key, expires=60),
    ]
    for operation in operations:
        with pytest.raises(InvalidKey) as info:
            operation()
        assert isinstance(info.value, ValueError)  # bad input is a ValueError as well
    assert list(store.list("")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["f"] + (["store"] if (tmp_path / "store").exists() else [])
    )


@pytest.mark.parametrize("prefix", ["/", "/a", "../", "a//", "a\\b", "..", ".x/"], ids=repr)
def test_invalid_list_prefixes_are_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        list(store.list(prefix))


@pytest.mark.parametrize(
    "key", ["a", "jobs/0123abcd/shards/17.npz", "x=1,y=2/a+b@c~d_e-f.g", "A" * 200], ids=lambda k: k[:30]
)
def test_valid_keys_work(store: ObjectStore, key: str) -> None:
    store.put_bytes(key, b"ok")
    assert store.get_bytes(key) == b"ok"
    assert [i.key for i in store.list(key)] == [key]


# -- presigning and ping -------------------------------------------------------------------------------


def test_presigned_url(store: ObjectStore) -> None:
    payload = os.urandom(2048)
    store.put_bytes("jobs/e/preview.png", payload, content_type="image/png")
    url = store.presigned_url("jobs/e/preview.png", expires=300)
    if isinstance(store, MinioStore):
        assert url is not None
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        assert response.content == payload
    else:
        assert url is None


@pytest.mark.parametrize("expires", [0, -5, 7 * 24 * 3600 + 1, 1.5, True], ids=repr)
def test_presigned_url_rejects_bad_expiry(store: ObjectStore, expires: object) -> None:
    with pytest.raises(ValueError, match="expires"):
        store.presigned_url("a/b", expires=expires)  # type: ignore[arg-type]


def test_ping(store: ObjectStore) -> None:
    store.ping()


# -- MinIO specifics -----------------------------------------------------------------------------------


def test_minio_presigns_for_the_public_endpoint(moto_endpoint: str) -> None:
    _, port = moto_endpoint.split(":")
    public = make_minio(moto_endpoint, public_endpoint=f"localhost:{port}")
    public.put_bytes("pub/obj", b"public bytes")
    url = public.presigned_url("pub/obj", expires=60)
    assert url is not None and urlsplit(url).netloc == f"localhost:{port}"
    assert httpx.get(url, timeout=10).content == b"public bytes"
    https = make_minio(moto_endpoint, public_endpoint="https://files.example.org")
    url = https.presigned_url("pub/obj", expires=60)
    parts = urlsplit(url or "")
    assert (parts.scheme, parts.netloc) == ("https", "files.example.org")
    assert parts.path == f"/{https.bucket}/pub/obj"
    assert "X-Amz-Signature=" in parts.query and "X-Amz-Expires=60" in parts.query


def test_minio_creates_its_bucket_on_first_write(moto_endpoint: str) -> None:
    store = make_minio(moto_endpoint)
    store.put_bytes("first/write", b"x")
    assert store.get_bytes("first/write") == b"x"
    store.ensure_bucket()  # idempotent


def test_minio_translates_s3_errors(moto_endpoint: str) -> None:
    store = make_minio(moto_endpoint, auto_create_bucket=False)
    with pytest.raises(StorageError, match="does not exist") as info:
        store.put_bytes("k", b"x")
    assert not isinstance(info.value, ObjectNotFound)
    assert type(info.value.__cause__).__name__ == "S3Error"  # chained, never raised bare
    with pytest.raises(StorageError, match="does not exist"):
        store.ping()


def test_minio_unreachable_server_is_a_storage_error() -> None:
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = make_minio(f"127.0.0.1:{port}", connect_timeout=1.0)
    with pytest.raises(StorageError, match="cannot talk to"):
        store.ping()
    with pytest.raises(StorageError):
        store.get_bytes("a")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint": "http://host:9000/path"},
        {"endpoint": "ftp://host"},
        {"endpoint": ""},
        {"bucket": "Bad_Bucket"},
        {"part_size": 1024},
        {"public_endpoint": "host/with/path"},
    ],
    ids=lambda kw: next(iter(kw)),
)
def test_minio_rejects_bad_configuration(kwargs: dict) -> None:
    args = {"endpoint": "127.0.0.1:9000", "access_key": "a", "secret_key": "b", "bucket": "ok-bucket"}
    args.update(kwargs)
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"^{name} must"):
        MinioStore(**args)


# -- LocalStore specifics --------------------------------------------------------------------------------


def test_local_writes_leave_no_temporary_files_and_stay_under_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put_bytes("a/b.bin", b"1")
    store.put_bytes("a/b.bin", b"2")
    assert store.put_bytes_if_absent("a/b.bin", b"3") is False
    names = sorted(p.name for p in (tmp_path / "root" / "a").iterdir())
    assert names == [".b.bin.meta.json", "b.bin"]  # the data file and its sidecar, nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_local_put_many_renames_in_order_after_all_are_written(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put_many([("jobs/j/job.json", b"{}", "application/json"), ("active/j", b"", "text/plain")])
    for folder, names in (("jobs/j", [".job.json.meta.json", "job.json"]), ("active", [".j.meta.json", "j"])):
        assert sorted(p.name for p in (tmp_path / "root" / folder).iterdir()) == names  # no temporary files
    # an item that cannot be written fails the batch before any object of it is in place
    store.put_bytes("blocked", b"an object, so not a prefix")
    with pytest.raises(StorageError, match="'blocked/x'"):
        store.put_many([("jobs/k/job.json", b"{}", "application/json"), ("blocked/x", b"", "text/plain")])
    assert not store.exists("jobs/k/job.json")
    assert [p.name for p in (tmp_path / "root" / "jobs" / "k").iterdir()] == []


def test_local_detects_a_stale_sidecar(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("k/v", b"original")
    (tmp_path / "k" / "v").write_bytes(b"changed behind the store's back")
    assert store.stat("k/v").sha256 == sha(b"changed behind the store's back")
    # a file dropped into the root by hand gets a hash too
    (tmp_path / "k" / "manual").write_bytes(b"by hand")
    assert store.stat("k/manual").sha256 == sha(b"by hand")


def test_local_refuses_symlinks_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not read")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    store = LocalStore(root)
    with pytest.raises(StorageError, match="outside the store root"):
        store.get_bytes("link/secret")
    with pytest.raises(StorageError, match="outside the store root"):
        store.put_bytes("link/new", b"x")
    assert not (outside / "new").exists()


def test_local_object_and_prefix_conflict_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a", b"object")
    with pytest.raises(StorageError, match="'a/b'"):
        store.put_bytes("a/b", b"x")
    store.put_bytes("c/d", b"x")
    with pytest.raises(StorageError, match="under the prefix"):
        store.put_bytes("c", b"x")
    with pytest.raises(StorageError, match="under the prefix"):
        store.put_bytes_if_absent("c", b"x")
    store.delete("c/d")
    assert store.put_bytes_if_absent("c", b"now fine") is True  # the emptied directory gives way
    assert store.get_bytes("c") == b"now fine"


def test_local_ping_fails_on_unusable_root(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="cannot be created"):
        LocalStore(blocker / "store").ping()


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_put_if_absent_has_one_winner_under_contention(tmp_path: Path, kind: str) -> None:
    # Not run on moto: its server checks for the key and then writes, which is not atomic.
    from concurrent.futures import ThreadPoolExecutor

    store: ObjectStore = LocalStore(tmp_path) if kind == "local" else MemoryStore()
    payloads = [f"writer {i}".encode() for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(lambda p: store.put_bytes_if_absent("race/key", p), payloads))
    assert won.count(True) == 1
    assert store.get_bytes("race/key") == payloads[won.index(True)]

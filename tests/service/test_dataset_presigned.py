"""Presigned uploads (POST /datasets/uploads, .../complete) against moto's S3 server, the server the storage
contract suite uses: the client PUTs straight to the store; completion validates, registers and removes the
staged object, valid or not."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer

from core.storage.minio_store import MIN_PART_SIZE, MinioStore
from tests.upload_files import bad_files, good_npz

_buckets = itertools.count()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def minio_client(settings, redis_client, moto_endpoint) -> Iterator[tuple[TestClient, MinioStore]]:
    from api.app import create_app

    store = MinioStore(moto_endpoint, "presign-access", "presign-secret",
                       f"presign-{os.getpid()}-{next(_buckets)}", secure=False, part_size=MIN_PART_SIZE)
    store.ensure_bucket()
    with TestClient(create_app(settings, store=store, redis_client=redis_client)) as client:
        yield client, store


def staged(store) -> list[str]:
    return [i.key for i in store.list("registry/staging/")]


def test_presigned_upload_then_complete_registers_the_set(minio_client) -> None:
    client, store = minio_client
    start = client.post("/datasets/uploads", json={"name": "big one", "num_classes": 10})
    assert start.status_code == 201, start.text
    upload = start.json()
    assert upload["method"] == "PUT" and upload["max_bytes"] > 0
    put = httpx.put(upload["url"], content=good_npz(n=40))
    assert put.status_code == 200, put.text
    done = client.post(upload["complete"])
    assert done.status_code == 201, done.text
    ds = done.json()
    assert ds["source"] == "presigned" and ds["num_images"] == 40 and ds["name"] == "big one"
    assert client.get(f"/datasets/{ds['id']}").json()["sha256"] == ds["sha256"]
    assert staged(store) == []
    assert client.post(upload["complete"]).status_code == 404  # completed once
    assert store.exists(f"registry/datasets/{ds['id']}/data.npz")


def test_a_bad_presigned_file_is_refused_and_removed(minio_client) -> None:
    client, store = minio_client
    upload = client.post("/datasets/uploads", json={"name": "bad"}).json()
    assert client.post(upload["complete"]).status_code == 409  # nothing PUT yet
    data, field = bad_files()["object labels"]
    assert httpx.put(upload["url"], content=data).status_code == 200
    refused = client.post(upload["complete"])
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == field
    assert staged(store) == [] and [i.key for i in store.list("registry/datasets/")] == []
    assert client.post("/datasets/uploads/" + "0" * 24 + "/complete").status_code == 404


def test_multipart_upload_and_delete_on_the_minio_store(minio_client) -> None:
    client, store = minio_client
    created = client.post("/datasets", files={"file": ("a.npz", good_npz(n=30), "application/octet-stream")},
                          data={"name": "on s3"})
    assert created.status_code == 201, created.text
    ds = created.json()
    assert client.get(f"/datasets/{ds['id']}").json()["num_images"] == 30
    assert client.delete(f"/datasets/{ds['id']}").status_code == 204
    assert [i.key for i in store.list("registry/")] == []


def test_the_local_store_has_no_presigned_uploads(client) -> None:
    reply = client.post("/datasets/uploads", json={"name": "x"})
    assert reply.status_code == 409 and "POST /datasets" in reply.json()["detail"]


def test_cdp_download_follows_a_presigned_url(minio_client, redis_client, tmp_path) -> None:
    import numpy as np

    from core.cli.download import download
    from core.jobs.artifacts import write_manifest
    from core.jobs.records import JobRepository
    from core.specs import GenerateSpec, JobPlan

    client, store = minio_client
    spec = GenerateSpec(dataset="digits", model="unet-t", classifier="cnn-t", count=4)
    repo = JobRepository(store, redis_client)
    job = repo.create(kind="generate", owner="anonymous", input=spec.model_dump(mode="json"),
                      plan=JobPlan(shards=1))
    data = good_npz(n=4)
    store.put_bytes(f"jobs/{job.id}/dataset.npz", data)
    write_manifest(store, job.id)
    entry = next(a for a in client.get(f"/jobs/{job.id}/artifacts").json()["items"]
                 if a["name"] == "dataset.npz")
    assert entry["url"].startswith("http://127.0.0.1:")  # presigned, on the S3 server
    out = download(client, job.id, tmp_path / "d.npz", quiet=True)
    assert out.read_bytes() == data and np.load(out, allow_pickle=False)["image"].shape == (4, 16, 16, 1)

"""/datasets on the real service: upload -> train -> generate -> download, every bad file, two teams, the
storage quota, the upload limit, delete while in use, and an upload cut off halfway."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from core.cli.download import download
from core.jobs.apikeys import create_key
from core.settings import get_settings
from tests.upload_files import bad_files, folder_zip, good_npz


@pytest.fixture(autouse=True)
def _small_inflate_limit(service_env, monkeypatch) -> None:
    """Archives may inflate to 4 MiB here (CDP_MAX_UNCOMPRESSED_BYTES), so a zip bomb stays small."""
    monkeypatch.setenv("CDP_MAX_UNCOMPRESSED_BYTES", str(4 << 20))
    get_settings.cache_clear()


def upload(client, data: bytes, name: str = "mine", headers: dict | None = None, **fields):
    return client.post("/datasets", files={"file": ("set.npz", data, "application/octet-stream")},
                       data={"name": name, **fields}, headers=headers or {})


def registry_objects(store) -> list[str]:
    return [info.key for info in store.list("registry/")]


def test_upload_train_generate_download_round_trip(stack, tmp_path) -> None:
    client = stack.client
    data = good_npz(n=60)
    created = upload(client, data)
    assert created.status_code == 201, created.text
    ds = created.json()
    assert ds["ref"] == f"ds:{ds['id']}" and ds["owner"] == "anonymous" and ds["num_images"] == 60
    assert ds["image_shape"] == [16, 16, 1] and ds["num_classes"] == 10 and ds["class_counts"] == [6] * 10
    assert ds["split"] == "seeded" and len(ds["sha256"]) == 64 and ds["created_at"]
    again = upload(client, data, name="same file")
    assert again.status_code == 200 and again.json()["id"] == ds["id"]  # stored once
    assert len([k for k in registry_objects(stack.store) if k.endswith("data.npz")]) == 1

    listed = client.get("/datasets").json()["items"]
    assert {"digits", "mnist5k", ds["id"]} <= {d["id"] for d in listed}
    assert next(d for d in listed if d["id"] == "digits")["builtin"] is True
    assert client.delete("/datasets/digits").status_code == 409

    train = client.post("/jobs/train", json={"kind": "diffusion", "dataset": ds["ref"], "epochs": 1,
                                             "batch_size": 16})
    assert train.status_code == 202, train.text
    trained = stack.wait(train.json()["id"], until={"succeeded", "failed", "canceled"}, timeout=120)
    assert trained["status"] == "succeeded", trained["error"]
    gen = client.post("/jobs/generate", json={
        "dataset": ds["ref"], "model": f"job:{trained['id']}", "classifier": "cnn-t", "count": 10, "steps": 2,
        "schedule": "uniform", "batch_size": 8, "loss": "none"})
    assert gen.status_code == 202, gen.text
    done = stack.wait(gen.json()["id"], until={"succeeded", "failed", "canceled"}, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    out = download(client, done["id"], tmp_path / "dataset.npz", quiet=True)
    with np.load(out, allow_pickle=False) as npz:
        assert npz["image"].shape == (10, 16, 16, 1) and npz["label"].dtype == np.int64

    # the generated set, registered as a data set, is usable by ds:<id>
    reg = client.post("/datasets", json={"from_job": f"job:{done['id']}", "name": "generated",
                                         "num_classes": 10})
    assert reg.status_code == 201, reg.text
    assert reg.json()["source"] == f"job:{done['id']}" and reg.json()["num_images"] == 10
    as_form = client.post("/datasets", data={"from_job": f"job:{done['id']}", "name": "again",
                                             "num_classes": "10"})  # the documented multipart fields
    assert as_form.status_code == 200 and as_form.json()["id"] == reg.json()["id"]
    evaluate = client.post("/jobs/evaluate", json={"model": "cnn-t", "dataset": reg.json()["ref"],
                                                   "attacks": ["pgd_ce"], "steps": 1, "limit": 4})
    assert evaluate.status_code == 202, evaluate.text
    assert client.post("/datasets", json={"from_job": "job:" + "0" * 24, "name": "x"}).status_code == 404


@pytest.mark.parametrize("case", sorted(bad_files()))
def test_every_bad_file_is_a_422_naming_the_field_and_nothing_is_stored(client, store, case) -> None:
    data, field = bad_files()[case]
    reply = upload(client, data)
    assert reply.status_code == 422, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    problem = reply.json()
    assert [e["field"] for e in problem["errors"]] == [field]
    assert "/tmp" not in reply.text and "Traceback" not in reply.text
    assert registry_objects(store) == []


def test_bad_fields_of_the_form(client, store) -> None:
    assert upload(client, good_npz(), name="../x").json()["errors"][0]["field"] == "body.name"
    assert upload(client, good_npz(), num_classes="ten").json()["errors"][0]["field"] == "body.num_classes"
    reply = client.post("/datasets", data={"name": "no file"})
    assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "body.file"
    assert client.post("/datasets", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert registry_objects(store) == []


def test_image_folder_zip_and_a_spec_with_an_unknown_ref(client) -> None:
    reply = upload(client, folder_zip(classes=2, per_class=5, size=8))
    assert reply.status_code == 201 and reply.json()["class_names"] == ["c0", "c1"]
    experiment = client.post("/jobs/experiment", json={
        "dataset": reply.json()["ref"], "seeds": [0], "arms": [{"name": "real only"}],
        "trades": {"epochs": 1}, "evaluation": {"attacks": ["pgd_ce"], "steps": 1, "limit": 4}})
    assert experiment.status_code == 202, experiment.text
    bad = client.post("/jobs/train", json={"kind": "classifier", "dataset": "ds:" + "f" * 24, "epochs": 1})
    assert bad.status_code == 404 and bad.json()["errors"][0]["field"] == "body.dataset"  # well formed
    bad = client.post("/jobs/train", json={"kind": "classifier", "dataset": "ds:nope", "epochs": 1})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.dataset"


@pytest.fixture
def two_teams(service_env, monkeypatch, tmp_path):
    path = tmp_path / "keys.json"
    keys = {team: create_key(path, team=team)[1] for team in ("team-a", "team-b")}
    keys["admin"] = create_key(path, team="ops", role="admin")[1]
    monkeypatch.setenv("CDP_API_KEYS_FILE", str(path))
    monkeypatch.setenv("CDP_QUOTA_STORAGE_BYTES", "200000")
    get_settings.cache_clear()
    return {team: {"Authorization": f"Bearer {key}"} for team, key in keys.items()}


def test_two_teams_are_isolated_and_admins_see_all(two_teams, client, store) -> None:
    a, b, admin = two_teams["team-a"], two_teams["team-b"], two_teams["admin"]
    mine = upload(client, good_npz(), headers=a).json()
    theirs = upload(client, good_npz(), headers=b).json()  # same file, other team: its own entry
    assert mine["id"] != theirs["id"] and theirs["owner"] == "team-b"
    assert client.get(f"/datasets/{mine['id']}", headers=b).status_code == 404
    assert client.delete(f"/datasets/{mine['id']}", headers=b).status_code == 404
    assert mine["id"] not in {d["id"] for d in client.get("/datasets", headers=b).json()["items"]}
    spec = {"kind": "classifier", "dataset": mine["ref"], "epochs": 1}
    refused = client.post("/jobs/train", json=spec, headers=b)
    assert refused.status_code == 404 and refused.json()["errors"][0]["field"] == "body.dataset"
    assert client.post("/jobs/train", json=spec, headers=a).status_code == 202
    seen = {d["id"] for d in client.get("/datasets", headers=admin).json()["items"]}
    assert {mine["id"], theirs["id"]} <= seen
    assert client.get(f"/datasets/{theirs['id']}", headers=admin).status_code == 200

    # delete is refused while the unfinished job uses it
    in_use = client.delete(f"/datasets/{mine['id']}", headers=a)
    assert in_use.status_code == 409 and "unfinished" in in_use.json()["detail"]
    assert client.delete(f"/datasets/{theirs['id']}", headers=b).status_code == 204
    assert client.get(f"/datasets/{theirs['id']}", headers=b).status_code == 404
    assert not [k for k in registry_objects(store) if theirs["id"] in k]

    # the storage quota (200000 bytes per team): a second, different set is over it
    big = upload(client, good_npz(n=800, seed=1), headers=a)
    assert big.status_code == 429, big.text
    detail = big.json()["detail"]
    assert "200000" in detail and "team-a" in detail and "CDP_QUOTA_STORAGE_BYTES" in detail
    assert len([k for k in registry_objects(store) if k.endswith("data.npz")]) == 1


def test_upload_over_the_size_limit_is_a_413(service_env, monkeypatch, client, store) -> None:
    monkeypatch.setenv("CDP_MAX_UPLOAD_BYTES", "4096")
    get_settings.cache_clear()
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(get_settings(), store=store)) as small:
        reply = upload(small, good_npz(n=60))
        assert reply.status_code == 413 and "CDP_MAX_UPLOAD_BYTES = 4096" in reply.json()["detail"]
        body = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.npz\"\r\n\r\n"
                + good_npz(n=60) + b"\r\n--B--\r\n")
        chunked = small.post("/datasets", content=iter([body[i:i + 1000] for i in range(0, len(body), 1000)]),
                             headers={"content-type": "multipart/form-data; boundary=B"})
        assert chunked.status_code == 413 and "CDP_MAX_UPLOAD_BYTES" in chunked.json()["detail"]
        assert upload(small, good_npz(n=2, size=4)).status_code == 201  # small ones still pass
    get_settings.cache_clear()


def test_an_upload_cut_off_halfway_leaves_nothing(settings, store, redis_client) -> None:
    from api.app import create_app
    from tests.service.serving import served

    body_start = (b"--XyZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nhalf\r\n"
                  b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.npz\"\r\n"
                  b"Content-Type: application/octet-stream\r\n\r\n")
    payload = good_npz(n=400)
    app = create_app(settings, store=store, redis_client=redis_client)
    with served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = ("POST /datasets HTTP/1.1\r\nHost: x\r\n"
                    "Content-Type: multipart/form-data; boundary=XyZ\r\n"
                    f"Content-Length: {len(body_start) + len(payload) + 9}\r\n\r\n").encode()
            sock.sendall(head + body_start + payload[: len(payload) // 2])
            time.sleep(0.3)
        time.sleep(0.5)
        import httpx

        assert httpx.get(f"{url}/datasets").json()["items"][-1]["builtin"] is True
    assert registry_objects(store) == []

"""The OpenAPI document describes this server: the data sets it can load, examples a fresh server accepts,
and the media types its artifact downloads are served with."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from core.jobs import keys
from core.jobs.records import JobRepository
from core.settings import Settings
from core.storage import LocalStore
from tests.service.test_api_production import make_client

SPECS = ("GenerateSpec", "TrainSpec", "EvaluateSpec", "ExperimentSpec")


def schemas(client: TestClient) -> dict:
    return client.get("/openapi.json").json()["components"]["schemas"]


def test_the_dataset_enum_lists_what_this_server_can_load(store: LocalStore, redis_client: redis.Redis,
                                                          settings: Settings) -> None:
    fresh = schemas(make_client(store, redis_client))
    for name in SPECS:
        builtins, uploads = fresh[name]["properties"]["dataset"]["anyOf"]
        assert builtins["enum"] == ["digits", "mnist5k", "mnist5k16"], name
        assert uploads["pattern"] == "^ds:[0-9a-f]{24}$", name  # a team's own uploads (POST /datasets)
    cifar = settings.data_root / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for part in ("test_batch", "data_batch_1"):
        (cifar / part).write_bytes(b"")
    with_cifar = schemas(make_client(store, redis_client))  # built at start from the data root
    assert with_cifar["TrainSpec"]["properties"]["dataset"]["anyOf"][0]["enum"] == [
        "digits", "mnist5k", "mnist5k16", "cifar10"]
    client = make_client(store, redis_client)
    refused = client.post("/jobs/train", json={"kind": "classifier", "dataset": "gtsrb", "epochs": 1})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "body.dataset"


def test_the_examples_work_on_a_fresh_server_and_the_rest_say_what_must_exist(
        store: LocalStore, redis_client: redis.Redis, settings: Settings) -> None:
    client = make_client(store, redis_client)
    document = schemas(client)
    for example in document["TrainSpec"]["examples"]:
        assert client.post("/jobs/train", json=example).status_code == 202, example
    for example in document["ExperimentSpec"]["examples"]:
        assert client.post("/jobs/experiment", json=example).status_code == 202, example
    assert "POST /jobs/train" in document["GenerateSpec"]["description"]
    assert "404" in document["EvaluateSpec"]["description"]
    assert "digits-unet" not in str(document["TrainSpec"]) + str(document["ExperimentSpec"])


@pytest.mark.parametrize(("name", "media"), [
    ("checkpoints/checkpoint.pt", "application/octet-stream"), ("shards/0.npz", "application/octet-stream"),
    ("metrics.json", "application/json"), ("preview.png", "image/png"), ("report.html", "text/html"),
    ("model/model.safetensors", "application/octet-stream")])
def test_artifacts_are_served_as_the_types_the_document_declares(
        store: LocalStore, redis_client: redis.Redis, settings: Settings, name: str, media: str) -> None:
    client = make_client(store, redis_client)
    job = JobRepository(store, redis_client).create(kind="train", owner="anonymous", input={})
    store.put_bytes(keys.job_prefix(job.id) + name, b"\x00data")
    reply = client.get(f"/jobs/{job.id}/artifacts/{name}")
    assert reply.status_code == 200 and reply.headers["content-type"].split(";")[0] == media
    declared = client.get("/openapi.json").json()["paths"]["/jobs/{job_id}/artifacts/{name}"]["get"]
    assert media in declared["responses"]["200"]["content"]


def test_rules_between_fields_are_in_the_document_and_answered_as_cross_field(
        store: LocalStore, redis_client: redis.Redis, settings: Settings) -> None:
    client = make_client(store, redis_client)
    rules = schemas(client)["TrainSpec"]["allOf"]
    assert any("arch_options" in str(rule.get("else", {})) for rule in rules)
    reply = client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": 1,
                                             "arch_options": {"depth": 16}})
    assert reply.status_code == 422 and reply.json()["errors"][0]["type"] == "cross_field"
    reply = client.post("/jobs/train", json={"kind": "diffusion", "dataset": "digits", "epochs": 1,
                                             "synthetic": ["job:" + "0" * 24]})
    assert reply.status_code == 422 and reply.json()["errors"][0]["type"] == "cross_field"

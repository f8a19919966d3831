"""A client generated at run time from /openapi.json (operation ids only, no hand-written paths) submits a
training job to the real stack and reads its metrics."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.service.serving import served

pytestmark = pytest.mark.timeout(180)


class GeneratedClient:
    """Methods named after the document's operation ids; arguments are routed by each parameter's ``in``."""

    def __init__(self, http: httpx.Client, document: dict[str, Any]) -> None:
        self.http, self.document = http, document
        self.operations: dict[str, tuple[str, str, list[dict[str, Any]], bool]] = {}
        for path, item in document["paths"].items():
            for method, op in item.items():
                self.operations[op["operationId"]] = (method.upper(), path, op.get("parameters", []),
                                                      "requestBody" in op)

    def call(self, operation_id: str, body: Any = None, **arguments: Any) -> httpx.Response:
        method, path, parameters, has_body = self.operations[operation_id]
        query, headers = {}, {}
        for parameter in parameters:
            name = parameter["name"]
            if name not in arguments:
                if parameter.get("required"):
                    raise TypeError(f"{operation_id} needs {name}")
                continue
            value = arguments.pop(name)
            if parameter["in"] == "path":
                path = path.replace("{" + name + "}", str(value))
            elif parameter["in"] == "query":
                query[name] = value
            elif parameter["in"] == "header":
                headers[name] = value
        if arguments:
            raise TypeError(f"{operation_id} has no parameters {sorted(arguments)}")
        return self.http.request(method, path, params=query, headers=headers,
                                 json=body if has_body else None)

    def required_fields(self, schema_name: str) -> set[str]:
        return set(self.document["components"]["schemas"][schema_name].get("required", []))


def test_generated_client_submits_a_job_and_reads_its_metrics(stack) -> None:
    api = GeneratedClient(stack.client, stack.client.get("/openapi.json").json())
    created = api.call("createTrainJob", {"kind": "classifier", "dataset": "digits", "epochs": 1,
                                          "arch_options": {"width": 4, "feature_dim": 16}, "eval_samples": 32,
                                          "eval_attack_steps": 2}, **{"Idempotency-Key": "client-1"})
    assert created.status_code == 202, created.text
    job = created.json()
    assert api.required_fields("JobRecord") <= set(job)

    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = api.call("getJob", job_id=job["id"]).json()
    assert job["status"] == "succeeded", job["error"]

    metrics = api.call("getJobMetrics", job_id=job["id"])
    assert metrics.status_code == 200
    body = metrics.json()
    assert api.required_fields("JobMetrics") <= set(body)
    assert len(body["metrics"]["history"]) == 1
    assert {"clean_acc", "robust_acc"} <= set(body["metrics"]["test"])

    listing = api.call("listJobs", kind="train", status="succeeded").json()
    assert [j["id"] for j in listing["items"]] == [job["id"]]
    artifacts = api.call("listJobArtifacts", job_id=job["id"]).json()
    names = {a["name"] for a in artifacts["items"]}
    assert {"model/model.safetensors", "metrics.json", "manifest.json"} <= names


def test_openapi_python_client_generated_package_submits_a_job_and_reads_its_metrics(
    stack, tmp_path, monkeypatch
) -> None:
    """What other teams do: run openapi-python-client on /openapi.json and call the service through the
    package it writes (typed models, one module per operation id)."""
    import importlib

    generate_client_package(stack, tmp_path, monkeypatch, "cdp_client")
    client_mod = importlib.import_module("cdp_client.client")
    create_train_job = importlib.import_module("cdp_client.api.jobs.create_train_job")
    get_job = importlib.import_module("cdp_client.api.jobs.get_job")
    get_job_metrics = importlib.import_module("cdp_client.api.jobs.get_job_metrics")
    models = importlib.import_module("cdp_client.models")

    client = client_mod.Client(base_url="http://testserver")
    client.set_httpx_client(stack.client)  # the TestClient is an httpx.Client bound to the app
    body = models.TrainSpec.from_dict({"kind": "classifier", "dataset": "digits", "epochs": 1,
                                       "arch_options": {"width": 4, "feature_dim": 16}, "eval_samples": 32,
                                       "eval_attack_steps": 2})
    created = create_train_job.sync_detailed(client=client, body=body, idempotency_key="generated-1")
    assert created.status_code == 202, created.content
    assert isinstance(created.parsed, models.JobRecord)
    job_id = created.parsed.id

    record = get_job.sync(client=client, job_id=job_id, wait=60)  # README's wait_for: long-polls, no sleeps
    while record.status not in ("succeeded", "failed", "canceled"):
        record = get_job.sync(client=client, job_id=job_id, wait=60)
    assert isinstance(record, models.JobRecord)
    assert record.status == models.JobRecordStatus.SUCCEEDED, record.error

    metrics = get_job_metrics.sync(client=client, job_id=job_id)
    assert isinstance(metrics, models.JobMetrics), metrics
    values = metrics.metrics.to_dict()
    assert {"clean_acc", "robust_acc"} <= set(values["test"])
    assert 0.0 <= values["test"]["clean_acc"] <= 1.0

    missing = get_job.sync_detailed(client=client, job_id="0" * 24)
    assert missing.status_code == 404


def test_generated_client_submits_an_experiment_and_reads_its_result(stack, tmp_path, monkeypatch) -> None:
    """The experiment and evaluation operations through the package openapi-python-client writes."""
    import importlib

    generate_client_package(stack, tmp_path, monkeypatch, "cdp_client2")
    client_mod = importlib.import_module("cdp_client2.client")
    create_experiment_job = importlib.import_module("cdp_client2.api.jobs.create_experiment_job")
    create_evaluate_job = importlib.import_module("cdp_client2.api.jobs.create_evaluate_job")
    get_job_metrics = importlib.import_module("cdp_client2.api.jobs.get_job_metrics")
    models = importlib.import_module("cdp_client2.models")
    client = client_mod.Client(base_url="http://testserver")
    client.set_httpx_client(stack.client)

    evaluation = create_evaluate_job.sync_detailed(client=client, body=models.EvaluateSpec.from_dict(
        {"model": "cnn-t", "dataset": "digits", "limit": 16, "steps": 1}))
    assert evaluation.status_code == 202, evaluation.content
    body = models.ExperimentSpec.from_dict({
        "dataset": "digits", "seeds": [0], "real_subset": 100, "arms": [{"name": "real only"}],
        "trades": {"epochs": 1, "batch_size": 64, "arch_options": {"width": 4, "feature_dim": 16},
                   "attack_steps": 1},
        "evaluation": {"attacks": ["pgd_ce"], "steps": 1, "limit": 16}})
    created = create_experiment_job.sync_detailed(client=client, body=body)
    assert created.status_code == 202, created.content
    assert isinstance(created.parsed, models.JobRecord)
    job = stack.wait(created.parsed.id, until={"succeeded", "failed", "canceled"}, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    metrics = get_job_metrics.sync(client=client, job_id=created.parsed.id)
    assert isinstance(metrics, models.JobMetrics), metrics
    assert isinstance(metrics.experiment, models.ExperimentResult)
    assert metrics.experiment.reference == "real only"
    arms = metrics.experiment.arms.to_dict()
    assert 0.0 <= arms["real only"]["worst_acc"]["mean"] <= 1.0
    evaluated = stack.wait(evaluation.parsed.id, until={"succeeded", "failed"}, timeout=60)
    assert evaluated["status"] == "succeeded", evaluated["error"]
    typed = get_job_metrics.sync(client=client, job_id=evaluation.parsed.id)
    assert isinstance(typed.evaluation, models.EvaluationMetrics)
    assert typed.evaluation.worst_acc <= typed.evaluation.pgd_ce_acc <= typed.evaluation.clean_acc


def generate_client_package(stack, tmp_path, monkeypatch, name: str) -> None:
    """Run openapi-python-client on the live /openapi.json, writing the importable package ``name``."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(stack.client.get("/openapi.json").json()))
    generator = Path(sys.executable).with_name("openapi-python-client")
    done = subprocess.run(
        [str(generator), "generate", "--path", str(spec), "--meta", "none", "--output-path",
         str(tmp_path / name)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    monkeypatch.syspath_prepend(str(tmp_path))


def test_authenticated_client_of_the_generated_package_submits_and_reads_a_job(
    service_env, monkeypatch, tmp_path, store, redis_client
) -> None:
    """With API keys on, as README shows: ``AuthenticatedClient(base_url, token=<key>)``; the plain
    ``Client`` gets a 401."""
    import importlib
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from api.app import create_app
    from core.jobs.apikeys import create_key
    from core.settings import get_settings

    _, key = create_key(tmp_path / "keys.json", team="team-a")
    monkeypatch.setenv("CDP_API_KEYS_FILE", str(tmp_path / "keys.json"))
    get_settings.cache_clear()
    http = TestClient(create_app(get_settings(), store=store, redis_client=redis_client))
    generate_client_package(SimpleNamespace(client=http), tmp_path, monkeypatch, "cdp_client3")
    client_mod = importlib.import_module("cdp_client3.client")
    create_train_job = importlib.import_module("cdp_client3.api.jobs.create_train_job")
    get_job = importlib.import_module("cdp_client3.api.jobs.get_job")
    list_jobs = importlib.import_module("cdp_client3.api.jobs.list_jobs")
    models = importlib.import_module("cdp_client3.models")

    # a real server on loopback: the generated client builds its own httpx client with the bearer header
    with served(http.app) as base_url:
        client = client_mod.AuthenticatedClient(base_url=base_url, token=key)
        created = create_train_job.sync_detailed(client=client, body=models.TrainSpec.from_dict(
            {"kind": "classifier", "dataset": "digits", "epochs": 1}), idempotency_key="auth-1")
        assert created.status_code == 202, created.content
        assert created.headers["location"] == f"/jobs/{created.parsed.id}"
        record = get_job.sync(client=client, job_id=created.parsed.id)
        assert isinstance(record, models.JobRecord) and record.owner == "team-a"
        assert [j.id for j in list_jobs.sync(client=client).items] == [created.parsed.id]

        anonymous = client_mod.Client(base_url=base_url)
        assert get_job.sync_detailed(client=anonymous, job_id=created.parsed.id).status_code == 401

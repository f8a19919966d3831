"""The HTTP API without a worker: validation, problem+json errors, references, idempotency, owners, paging.

A private Redis answers; the tasks the API sends stay in the broker queue, where the tests read them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from core.jobs import task_names
from core.jobs.queue import CONTROL_QUEUE, WORK_QUEUES, queue_keys
from core.jobs.records import JobRepository
from core.settings import Settings
from core.storage import LocalStore

PROBLEM = "application/problem+json"


def generate_body(**overrides: object) -> dict:
    body: dict = {"dataset": "digits", "model": "unet-a", "classifier": "cnn-a", "count": 20, "steps": 10}
    body.update(overrides)
    return body


@pytest.fixture
def named_models(settings: Settings) -> None:
    for name in ("unet-a", "cnn-a"):
        (settings.model_dir / name).mkdir()


def queued_tasks(redis_client: redis.Redis) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in the broker's queues, oldest first within each list
    (one list per queue and priority step)."""
    out = []
    lists = [key for queue in (*WORK_QUEUES, CONTROL_QUEUE) for key in queue_keys(queue)]
    for raw in (raw for key in lists for raw in reversed(redis_client.lrange(key, 0, -1))):
        message = json.loads(raw)
        args = json.loads(__import__("base64").b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], args))
    return out


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("/problems/")
    assert body["instance"] == response.request.url.path
    return body


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"dataset": "digits"}, {"body.model", "body.classifier", "body.count"}),
        (generate_body(count=0), {"body.count"}),
        (generate_body(count=10**6), {"body.count"}),
        (generate_body(model="../../etc"), {"body.model"}),
        (generate_body(model="/abs/path"), {"body.model"}),
        (generate_body(classifier="job:123"), {"body.classifier"}),
        (generate_body(loss="triplet"), {"body.loss"}),
        (generate_body(tau_plus=1.0), {"body.tau_plus"}),
        (generate_body(steps=501), {"body.steps"}),
        (generate_body(guidance_window=[400, 100]), {"body.guidance_window"}),
        (generate_body(unknown_field=1), {"body.unknown_field"}),
    ],
    ids=["missing", "count-zero", "count-over-limit", "model-path", "model-abs", "bad-job-ref", "loss",
         "tau-plus", "steps-over-limit", "window-order", "extra-field"],
)
def test_generate_validation_errors_name_each_field(client: TestClient, body: dict, fields: set[str]) -> None:
    problem = assert_problem(client.post("/jobs/generate", json=body), 422)
    assert {e["field"] for e in problem["errors"]} == fields


def test_count_over_limit_says_the_limit(client: TestClient) -> None:
    problem = assert_problem(client.post("/jobs/generate", json=generate_body(count=6000)), 422)
    assert "5000" in problem["detail"]


def test_train_validation(client: TestClient) -> None:
    problem = assert_problem(client.post("/jobs/train", json={"kind": "diffusion", "dataset": "digits",
                                                              "epochs": 1, "synthetic": ["job:" + "a" * 24]}),
                             422)
    assert "trades" in problem["detail"]
    bad = {"kind": "gan", "dataset": "mnist", "epochs": 0}
    problem = assert_problem(client.post("/jobs/train", json=bad), 422)
    assert {e["field"] for e in problem["errors"]} == {"body.kind", "body.dataset", "body.epochs"}


def test_unknown_job_is_404_problem(client: TestClient) -> None:
    for path in ("/jobs/" + "0" * 24, "/jobs/" + "0" * 24 + "/metrics", "/jobs/" + "0" * 24 + "/artifacts",
                 "/jobs/" + "0" * 24 + "/events"):
        assert_problem(client.get(path), 404)
    assert_problem(client.post("/jobs/" + "0" * 24 + "/cancel"), 404)
    assert_problem(client.get("/jobs/not-a-job-id"), 404)  # no such resource
    assert client.get("/jobs/" + "0" * 24 + "%0A").status_code == 404  # a final newline is no job id
    not_allowed = client.get("/jobs/train")  # only POST exists there
    assert_problem(not_allowed, 405)
    assert not_allowed.headers["allow"] == "POST"


def test_submit_generate_enqueues_one_task_per_shard(
    client: TestClient, named_models: None, redis_client: redis.Redis
) -> None:
    response = client.post("/jobs/generate", json=generate_body(count=20))  # shard_size 8 -> 3 shards
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["kind"] == "generate" and job["owner"] == "anonymous"
    assert job["input"]["lam"] == 1e5 and job["input"]["tau"] == 10.0  # the paper's HNM defaults
    assert job["links"]["metrics"] == f"/jobs/{job['id']}/metrics"
    assert queued_tasks(redis_client) == [(task_names.GENERATE_SHARD, [job["id"], k]) for k in range(3)]
    assert client.get(f"/jobs/{job['id']}").json()["input"] == job["input"]
    problem = assert_problem(client.get(f"/jobs/{job['id']}/metrics"), 409)
    assert "queued" in problem["detail"]


def test_infonce_defaults(client: TestClient, named_models: None) -> None:
    job = client.post("/jobs/generate", json=generate_body(loss="infonce")).json()
    assert (job["input"]["lam"], job["input"]["tau"]) == (2e4, 0.1)


def test_references_must_be_finished_jobs_of_the_right_kind(
    client: TestClient, named_models: None, store: LocalStore, redis_client: redis.Redis
) -> None:
    """A well-formed reference to something absent is a 404, to a job that is not a finished job of the
    right kind a 409 (both name the field): the document cannot know what exists, so neither is a 422."""
    repo = JobRepository(store, redis_client)
    missing = "job:" + "f" * 24
    problem = assert_problem(client.post("/jobs/generate", json=generate_body(model=missing)), 404)
    assert problem["errors"][0]["field"] == "body.model" and "does not exist" in problem["detail"]
    assert problem["type"] == "/problems/reference-not-found"

    problem = assert_problem(client.post("/jobs/generate", json=generate_body(model="no-such-model")), 404)
    assert "no model named 'no-such-model'" in problem["detail"]

    classifier_job = repo.create(kind="train", owner="anonymous", input={"kind": "classifier"})
    repo.finish(classifier_job.id, "succeeded")
    problem = assert_problem(
        client.post("/jobs/generate", json=generate_body(model=f"job:{classifier_job.id}")), 409)
    assert "classifier training job" in problem["detail"] and "diffusion" in problem["detail"]

    failed_job = repo.create(kind="train", owner="anonymous", input={"kind": "diffusion"})
    repo.finish(failed_job.id, "failed", error="boom")
    problem = assert_problem(
        client.post("/jobs/generate", json=generate_body(model=f"job:{failed_job.id}")), 409)
    assert "is failed" in problem["detail"] and problem["errors"][0]["field"] == "body.model"
    assert problem["type"] == "/problems/reference-not-usable"

    diffusion_job = repo.create(kind="train", owner="anonymous", input={"kind": "diffusion"})
    waiting = client.post("/jobs/generate", json=generate_body(model=f"job:{diffusion_job.id}",
                                                              classifier=f"job:{classifier_job.id}"))
    assert waiting.status_code == 202, waiting.text  # an unfinished input: the job waits for it
    assert (waiting.json()["status"], waiting.json()["waiting_for"]) == ("waiting", [diffusion_job.id])

    repo.finish(diffusion_job.id, "succeeded")
    ok = client.post("/jobs/generate", json=generate_body(model=f"job:{diffusion_job.id}",
                                                         classifier=f"job:{classifier_job.id}"))
    assert ok.status_code == 202, ok.text

    problem = assert_problem(client.post("/jobs/train", json={
        "kind": "trades", "dataset": "digits", "epochs": 1, "synthetic": [f"job:{classifier_job.id}"]}), 409)
    assert problem["errors"][0]["field"] == "body.synthetic.0" and "generation job" in problem["detail"]


def test_idempotency_key(client: TestClient, redis_client: redis.Redis) -> None:
    body = {"kind": "classifier", "dataset": "digits", "epochs": 2}
    first = client.post("/jobs/train", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/jobs/train", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert len(queued_tasks(redis_client)) == 1
    problem = assert_problem(client.post("/jobs/train", json={**body, "epochs": 3},
                                         headers={"Idempotency-Key": "k1"}), 422)
    assert "different request body" in problem["detail"]
    other = client.post("/jobs/train", json=body, headers={"Idempotency-Key": "k2"})
    assert other.json()["id"] != first.json()["id"]


def test_owners_see_only_their_jobs(
    monkeypatch: pytest.MonkeyPatch, service_env: dict, store: LocalStore, redis_client: redis.Redis
) -> None:
    from api.app import create_app
    from core.settings import get_settings

    monkeypatch.setenv("CDP_API_TOKENS", json.dumps({"tok-a": "alice", "tok-b": "bob"}))
    get_settings.cache_clear()
    client = TestClient(create_app(get_settings(), store=store, redis_client=redis_client))
    alice, bob = {"Authorization": "Bearer tok-a"}, {"Authorization": "Bearer tok-b"}
    body = {"kind": "classifier", "dataset": "digits", "epochs": 1}

    assert_problem(client.post("/jobs/train", json=body), 401)
    assert_problem(client.post("/jobs/train", json=body, headers={"Authorization": "Bearer nope"}), 401)
    job = client.post("/jobs/train", json=body, headers=alice).json()
    assert job["owner"] == "alice"
    assert client.get(f"/jobs/{job['id']}", headers=alice).status_code == 200
    assert_problem(client.get(f"/jobs/{job['id']}", headers=bob), 404)
    assert_problem(client.post(f"/jobs/{job['id']}/cancel", headers=bob), 404)
    assert client.get("/jobs", headers=bob).json()["items"] == []
    assert [j["id"] for j in client.get("/jobs", headers=alice).json()["items"]] == [job["id"]]
    # the same idempotency key is per owner
    a = client.post("/jobs/train", json=body, headers={**alice, "Idempotency-Key": "same"}).json()
    b = client.post("/jobs/train", json=body, headers={**bob, "Idempotency-Key": "same"}).json()
    assert a["id"] != b["id"] and b["owner"] == "bob"


def test_cancel_queued_job_is_idempotent(client: TestClient) -> None:
    job = client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": 1}).json()
    first = client.post(f"/jobs/{job['id']}/cancel")
    second = client.post(f"/jobs/{job['id']}/cancel")
    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == second.json()["status"] == "canceled"
    assert second.json()["cancel_requested"] is True
    assert first.json()["completed_at"] == second.json()["completed_at"] is not None


def test_list_filters_and_pages(client: TestClient, named_models: None) -> None:
    train_ids = [client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": e}
                             ).json()["id"] for e in range(1, 6)]
    gen_id = client.post("/jobs/generate", json=generate_body()).json()["id"]
    client.post(f"/jobs/{train_ids[0]}/cancel")

    seen, token = [], None
    while True:
        params = {"kind": "train", "page_size": 2} | ({"page_token": token} if token else {})
        page = client.get("/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        assert len(page["items"]) <= 2
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == list(reversed(train_ids))  # newest first, each once, generation job filtered out
    canceled = client.get("/jobs", params={"status": "canceled"}).json()["items"]
    assert [j["id"] for j in canceled] == [train_ids[0]]
    assert [j["id"] for j in client.get("/jobs", params={"kind": "generate"}).json()["items"]] == [gen_id]
    assert_problem(client.get("/jobs", params={"status": "sleeping"}), 422)
    assert_problem(client.get("/jobs", params={"page_size": 0}), 422)


def test_health_ready_and_prometheus(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "storage": "ok"}
    client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": 1})
    text = client.get("/metrics").text
    assert 'cdp_jobs_submitted_total{kind="train"}' in text
    assert "cdp_http_requests_total" in text


def test_readyz_reports_a_dead_redis(settings: Settings, store: LocalStore) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from api.app import create_app

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, decode_responses=True,
                       retry=Retry(NoBackoff(), 0))
    client = TestClient(create_app(settings, store=store, redis_client=dead))
    problem = assert_problem(client.get("/readyz"), 503)
    assert problem["detail"].startswith("redis:")


def test_openapi_has_stable_operation_ids_and_problem_schema(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    ops = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert {"createGenerateJob", "createTrainJob", "listJobs", "getJob", "cancelJob", "getJobMetrics",
            "listJobArtifacts", "downloadJobArtifact", "streamJobEvents", "healthz", "readyz"} <= ops
    generate = document["paths"]["/jobs/generate"]["post"]
    assert "202" in generate["responses"] and "422" in generate["responses"]
    assert "Problem" in document["components"]["schemas"]
    assert document["components"]["schemas"]["GenerateSpec"]["examples"]


def test_api_imports_neither_torch_nor_worker() -> None:
    code = (
        "import sys\n"
        "from api.app import create_app\n"
        "from core.storage import MemoryStore\n"
        "import redis\n"
        "create_app(store=MemoryStore(), redis_client=redis.Redis(port=1))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'worker', 'diffusers'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


class PresigningStore(LocalStore):
    """A local store that answers presigned_url like MinIO would (records the expiry it was asked for)."""

    expiries: list[int] = []

    def presigned_url(self, key: str, *, expires: int) -> str | None:
        self.expiries.append(expires)
        return f"https://minio.example/cdp/{key}?X-Amz-Expires={expires}"


@pytest.mark.parametrize("presigning", [False, True], ids=["local-route", "presigned"])
def test_artifact_urls(presigning: bool, settings: Settings, redis_client: redis.Redis,
                       tmp_path: Path) -> None:
    from api.app import create_app
    from core.jobs import keys
    from core.jobs.artifacts import write_manifest

    store = PresigningStore(tmp_path / "s") if presigning else LocalStore(tmp_path / "s")
    client = TestClient(create_app(settings, store=store, redis_client=redis_client))
    job = JobRepository(store, redis_client).create(kind="generate", owner="anonymous", input={})
    store.put_bytes(keys.job_prefix(job.id) + "shards/0.npz", b"npz bytes")
    listing = client.get(f"/jobs/{job.id}/artifacts").json()
    assert listing["complete"] is False and [a["name"] for a in listing["items"]] == ["shards/0.npz"]
    write_manifest(store, job.id)
    listing = client.get(f"/jobs/{job.id}/artifacts").json()
    assert listing["complete"] is True
    items = {a["name"]: a for a in listing["items"]}
    assert set(items) == {"shards/0.npz", "manifest.json"}
    assert items["shards/0.npz"]["sha256"] == __import__("hashlib").sha256(b"npz bytes").hexdigest()
    url = items["shards/0.npz"]["url"]
    if presigning:
        assert url == f"https://minio.example/cdp/jobs/{job.id}/shards/0.npz?X-Amz-Expires=3600"
        assert store.expiries[-1] == settings.presign_expiry_s
    else:
        assert url == f"http://testserver/jobs/{job.id}/artifacts/shards/0.npz"
        download = client.get(url)
        assert download.content == b"npz bytes"
        assert download.headers["content-disposition"] == 'attachment; filename="0.npz"'
    assert_problem(client.get(f"/jobs/{job.id}/artifacts/shards/9.npz"), 404)
    assert_problem(client.get(f"/jobs/{job.id}/artifacts/job.json/../x"), 404)


def test_job_records_survive_a_redis_flush(client: TestClient, redis_client: redis.Redis) -> None:
    job = client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": 1}).json()
    redis_client.flushall()  # Redis restarted without persistence: the store still has the record
    again = client.get(f"/jobs/{job['id']}")
    assert again.status_code == 200 and again.json()["input"] == job["input"]
    assert [j["id"] for j in client.get("/jobs").json()["items"]] == [job["id"]]

"""The API as other teams meet it: hashed API keys and roles, quotas, body limits, strict input, a truthful
OpenAPI document (every schema example is accepted), no leaks. A private Redis; no worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from core.cli import main
from core.jobs.apikeys import create_key
from core.jobs.records import JobRepository
from core.settings import Settings, get_settings
from core.storage import LocalStore

PROBLEM = "application/problem+json"
EXAMPLE_JOB = "0190a1b2c3d4e5f6a7b8c9d0"  # the job id the schema examples refer to


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    return response.json()


class Keys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.a = create_key(path, team="team-a")[1]
        self.b = create_key(path, team="team-b")[1]
        self.admin = create_key(path, team="ops", role="admin")[1]

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Keys:
    """Three keys (team-a, team-b, an admin of team ops) in CDP_API_KEYS_FILE; request before `client`."""
    made = Keys(tmp_path / "keys.json")
    monkeypatch.setenv("CDP_API_KEYS_FILE", str(made.path))
    get_settings.cache_clear()
    return made


def make_client(store: LocalStore, redis_client: redis.Redis, **env: str) -> TestClient:
    from api.app import create_app

    get_settings.cache_clear()
    settings = get_settings().model_copy(update=env)
    return TestClient(create_app(settings, store=store, redis_client=redis_client))


TRAIN = {"kind": "classifier", "dataset": "digits", "epochs": 1}


# --- keys and roles -------------------------------------------------------------------------------------
def test_cdp_keys_create_prints_the_key_once_and_stores_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    assert main(["keys", "create", "--team", "team-a", "--role", "admin", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("cdp_") and len(key) > 40
    text = path.read_text()
    assert key not in text and key.split("_")[-1] not in text
    (entry,) = json.loads(text)["keys"]
    assert entry["team"] == "team-a" and entry["role"] == "admin"
    assert entry["sha256"] == __import__("hashlib").sha256(key.encode()).hexdigest()
    assert path.stat().st_mode & 0o077 == 0
    assert main(["keys", "list", "--file", str(path)]) == 0
    assert key not in capsys.readouterr().out


def test_a_key_is_checked_before_the_body_is_parsed(keys: Keys, client: TestClient) -> None:
    refused = client.post("/jobs/train", content=b"{not json", headers={"content-type": "application/json"})
    assert problem(refused, 401)["type"] == "/problems/unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert problem(client.get("/jobs", headers=Keys.auth("cdp_00000000_" + "x" * 43)), 401)
    malformed = client.post("/jobs/train", content=b"{not json", headers={
        "content-type": "application/json", **Keys.auth(keys.a)})
    assert problem(malformed, 400)["type"] == "/problems/malformed-json"


def test_teams_see_only_their_jobs_and_an_admin_sees_all(keys: Keys, client: TestClient) -> None:
    a = client.post("/jobs/train", json=TRAIN, headers=Keys.auth(keys.a)).json()
    b = client.post("/jobs/train", json=TRAIN, headers=Keys.auth(keys.b)).json()
    assert (a["owner"], b["owner"]) == ("team-a", "team-b")
    listed = {key: [j["id"] for j in client.get("/jobs", headers=Keys.auth(key)).json()["items"]]
              for key in (keys.a, keys.b, keys.admin)}
    assert listed[keys.a] == [a["id"]] and listed[keys.b] == [b["id"]]
    assert listed[keys.admin] == [b["id"], a["id"]]
    problem(client.get(f"/jobs/{a['id']}", headers=Keys.auth(keys.b)), 404)
    problem(client.post(f"/jobs/{a['id']}/cancel", headers=Keys.auth(keys.b)), 404)
    assert client.get(f"/jobs/{a['id']}", headers=Keys.auth(keys.admin)).status_code == 200
    canceled = client.post(f"/jobs/{b['id']}/cancel", headers=Keys.auth(keys.admin)).json()
    assert canceled["status"] == "canceled"


def test_metrics_need_an_admin_key_when_keys_are_on(keys: Keys, client: TestClient) -> None:
    problem(client.get("/metrics"), 401)
    problem(client.get("/metrics", headers=Keys.auth(keys.a)), 403)
    scraped = client.get("/metrics", headers=Keys.auth(keys.admin))
    assert scraped.status_code == 200 and "cdp_http_requests_total" in scraped.text
    assert client.get("/healthz").status_code == client.get("/readyz").status_code == 200


def test_a_new_key_works_at_once_and_a_revoked_one_stops(keys: Keys, client: TestClient) -> None:
    _, late = create_key(keys.path, team="team-c")
    assert client.get("/jobs", headers=Keys.auth(late)).status_code == 200
    key_id = late.split("_")[1]
    assert main(["keys", "revoke", key_id, "--file", str(keys.path)]) == 0
    problem(client.get("/jobs", headers=Keys.auth(late)), 401)


def test_openapi_declares_a_bearer_scheme_on_every_job_operation(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert any(s == {"type": "http", "scheme": "bearer", "description": s.get("description")}
               for s in schemes.values())
    for path, item in document["paths"].items():
        for operation in item.values():
            names = {p["name"].lower() for p in operation.get("parameters", [])}
            assert "authorization" not in names, path
            if path.startswith("/jobs"):
                assert operation.get("security"), path


# --- quotas and limits ----------------------------------------------------------------------------------
def test_a_team_over_its_concurrent_jobs_quota_gets_429_and_others_do_not(
    keys: Keys, store: LocalStore, redis_client: redis.Redis
) -> None:
    client = make_client(store, redis_client, quota_concurrent_jobs=2)
    first = [client.post("/jobs/train", json=TRAIN, headers=Keys.auth(keys.a)).json() for _ in range(2)]
    over = client.post("/jobs/train", json=TRAIN, headers=Keys.auth(keys.a))
    body = problem(over, 429)
    assert body["type"] == "/problems/quota-concurrent-jobs" and "2 unfinished jobs" in body["detail"]
    assert int(over.headers["Retry-After"]) > 0
    assert client.post("/jobs/train", json=TRAIN, headers=Keys.auth(keys.b)).status_code == 202
    # nothing was left behind by the refusal, and a finished job frees its slot
    assert len(client.get("/jobs", headers=Keys.auth(keys.a)).json()["items"]) == 2
    client.post(f"/jobs/{first[0]['id']}/cancel", headers=Keys.auth(keys.a))
    assert client.post("/jobs/train", json=TRAIN, headers=Keys.auth(keys.a)).status_code == 202


def test_images_per_day_quota(store: LocalStore, redis_client: redis.Redis, settings: Settings) -> None:
    for name in ("unet-a", "cnn-a"):
        (settings.model_dir / name).mkdir()
    client = make_client(store, redis_client, quota_images_per_day=30)
    body = {"dataset": "digits", "model": "unet-a", "classifier": "cnn-a", "count": 20, "steps": 10}
    assert client.post("/jobs/generate", json=body).status_code == 202
    over = client.post("/jobs/generate", json=body)
    assert problem(over, 429)["type"] == "/problems/quota-images-per-day"
    assert 0 < int(over.headers["Retry-After"]) <= 24 * 3600 + 1
    assert client.post("/jobs/generate", json={**body, "count": 10}).status_code == 202  # refund: 20 + 10


def test_epochs_per_day_quota_counts_experiment_arms_and_seeds(
    store: LocalStore, redis_client: redis.Redis
) -> None:
    client = make_client(store, redis_client, quota_epochs_per_day=10)
    experiment = {"dataset": "digits", "seeds": [0, 1, 2], "arms": [{"name": "a"}, {"name": "b"}],
                  "trades": {"epochs": 2}}  # 12 epochs
    assert problem(client.post("/jobs/experiment", json=experiment), 429)["type"] == \
        "/problems/quota-epochs-per-day"
    assert client.post("/jobs/train", json={**TRAIN, "epochs": 10}).status_code == 202


def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    big = json.dumps({**TRAIN, "padding": "x" * 2_000_000}).encode()
    assert problem(client.post("/jobs/train", content=big, headers={"content-type": "application/json"}),
                   413)["type"] == "/problems/request-body-too-large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        yield b'{"kind": "classifier", "x": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    assert problem(client.post("/jobs/train", content=chunks(), headers={"content-type": "application/json"}),
                   413)


def test_a_20_mb_field_gives_a_short_reply(store: LocalStore, redis_client: redis.Redis) -> None:
    client = make_client(store, redis_client, max_body_bytes=64 * 2**20)
    huge = "a" * (20 * 2**20)
    for body in ({"dataset": "digits", "model": huge, "classifier": "c", "count": 1},
                 {"dataset": "digits", "model": "m", "classifier": "c", "count": 1, "loss": huge},
                 {**TRAIN, "seed": huge}):
        reply = client.post("/jobs/generate" if "model" in body else "/jobs/train", json=body)
        assert problem(reply, 422)["errors"]
        assert len(reply.content) < 10_000, len(reply.content)


# --- strict input ---------------------------------------------------------------------------------------
GEN = {"dataset": "digits", "model": "unet-a", "classifier": "cnn-a", "count": 4, "steps": 10}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/jobs/generate", {**GEN, "count": "64"}, "body.count"),
        ("/jobs/generate", {**GEN, "count": 2.0}, "body.count"),
        ("/jobs/generate", {**GEN, "count": True}, "body.count"),
        ("/jobs/generate", {**GEN, "steps": "10"}, "body.steps"),
        ("/jobs/generate", {**GEN, "lam": "1e3"}, "body.lam"),
        ("/jobs/generate", {**GEN, "tstr": "yes"}, "body.tstr"),
        ("/jobs/generate", {**GEN, "model": f"job:{EXAMPLE_JOB}\n"}, "body.model"),
        ("/jobs/train", {**TRAIN, "synthetic": [f"job:{EXAMPLE_JOB}\n"], "kind": "trades"},
         "body.synthetic.0"),
        ("/jobs/train", {**TRAIN, "arch": "wrn", "arch_options": {"width": 8}}, "body"),
        ("/jobs/train", {**TRAIN, "arch": "wrn", "arch_options": {"depth": 12}}, "body"),
        ("/jobs/train", {**TRAIN, "eval_samples": 10**12}, "body.eval_samples"),
        ("/jobs/train", {**TRAIN, "dataset": "cifar10"}, "body.dataset"),
        ("/jobs/evaluate", {"model": "cnn-a", "dataset": "gtsrb"}, "body.dataset"),
        ("/jobs/experiment", {"dataset": "digits", "seeds": [0], "arms": [{"name": "a"}],
                              "trades": {"epochs": 1}, "reference": "r" * 10_000}, "body.reference"),
    ],
    ids=["count-str", "count-float", "count-bool", "steps-str", "lam-str", "bool-str", "ref-newline",
         "job-ref-newline", "wrn-width", "wrn-depth", "eval-samples", "dataset-missing", "eval-no-dataset",
         "reference-long"],
)
def test_bad_input_is_a_422_naming_the_field(client: TestClient, settings: Settings, path: str, body: dict,
                                             field: str) -> None:
    for name in ("unet-a", "cnn-a"):
        (settings.model_dir / name).mkdir(exist_ok=True)
    errors = problem(client.post(path, json=body), 422)["errors"]
    assert field in {e["field"] for e in errors}, errors


@pytest.mark.parametrize("key", ["", " ", "a" * 129, "key with spaces", "ünïcode"],
                         ids=["empty", "space", "long", "spaces", "non-ascii"])
def test_bad_idempotency_keys_are_refused(client: TestClient, key: str) -> None:
    reply = client.post("/jobs/train", json=TRAIN, headers={"Idempotency-Key": key.encode()})
    assert {e["field"] for e in problem(reply, 422)["errors"]} == {"header.Idempotency-Key"}


# --- a truthful document --------------------------------------------------------------------------------
SUBMISSIONS = {"GenerateSpec": "/jobs/generate", "TrainSpec": "/jobs/train", "EvaluateSpec": "/jobs/evaluate",
               "ExperimentSpec": "/jobs/experiment"}


def test_every_schema_example_is_accepted(
    client: TestClient, settings: Settings, store: LocalStore, redis_client: redis.Redis
) -> None:
    """The world the examples describe (models digits-unet and digits-cnn, a finished generation job
    0190a1...), then each example of each request schema is submitted and accepted."""
    from core.specs import JobRecord

    for name in ("digits-unet", "digits-cnn"):
        (settings.model_dir / name).mkdir()
    repo = JobRepository(store, redis_client)
    repo.create(kind="generate", owner="anonymous", input={}, job_id=EXAMPLE_JOB)
    repo.finish(EXAMPLE_JOB, "succeeded")
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    submitted = 0
    for schema, path in SUBMISSIONS.items():
        assert schemas[schema]["examples"], schema
        for example in schemas[schema]["examples"]:
            reply = client.post(path, json=example)
            assert reply.status_code == 202, (schema, reply.text)
            submitted += 1
    assert submitted >= 5
    for example in schemas["JobRecord"]["examples"]:
        JobRecord.model_validate(example)


def test_every_operation_documents_its_errors_as_problem_json(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    assert list(response["content"]) == [PROBLEM], (method, path, status)
                    assert response["content"][PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
    generate = document["paths"]["/jobs/generate"]["post"]["responses"]
    assert {"400", "401", "413", "422", "429", "503"} <= set(generate)
    assert "Location" in generate["202"]["headers"]
    assert "Retry-After" in generate["429"]["headers"]
    count = document["components"]["schemas"]["GenerateSpec"]["properties"]["count"]
    assert count["maximum"] == 5000  # the server's CDP_MAX_COUNT of the test settings
    metrics = document["components"]["schemas"]["JobMetrics"]["properties"]
    assert {"generation", "training", "evaluation", "experiment"} <= set(metrics)


# --- no leaks -------------------------------------------------------------------------------------------
def test_readyz_and_job_errors_name_no_server_paths_or_addresses(
    settings: Settings, store: LocalStore, redis_client: redis.Redis
) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from api.app import create_app

    dead = redis.Redis(host="10.255.1.2", port=6390, socket_connect_timeout=0.2, decode_responses=True,
                       retry=Retry(NoBackoff(), 0))
    reply = TestClient(create_app(settings, store=store, redis_client=dead)).get("/readyz")
    assert reply.status_code == 503
    assert "10.255" not in reply.text and "6390" not in reply.text
    assert str(settings.store_root) not in reply.text

    client = TestClient(create_app(settings, store=store, redis_client=redis_client))
    repo = JobRepository(store, redis_client)
    job = repo.create(kind="train", owner="anonymous", input={"kind": "classifier"})
    repo.finish(job.id, "failed", error=f"GTSRB split folder missing: {settings.data_root}/gtsrb/train")
    error = client.get(f"/jobs/{job.id}").json()["error"]
    assert "GTSRB split folder missing" in error and str(settings.data_root) not in error
    assert error.endswith(".../train")


def test_strict_input_still_takes_json_arrays_and_ints_as_floats(client: TestClient,
                                                                settings: Settings) -> None:
    for name in ("unet-a", "cnn-a"):
        (settings.model_dir / name).mkdir()
    body = {**GEN, "guidance_window": [100, 400], "lam": 1000, "eta": 0}
    accepted = client.post("/jobs/generate", json=body)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["input"]["guidance_window"] == [100, 400]

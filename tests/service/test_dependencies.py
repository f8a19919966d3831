"""Jobs that wait for their inputs (core.jobs.waiting) through the real stack (private Redis, a Celery
worker, the HTTP API, the local store): a whole chain submitted at once and followed only by ``?wait=``,
a failed or canceled input failing its dependants with the cause, another team's job, quotas, and the
reconciler settling a waiting job whose input finished while Redis lost everything."""

from __future__ import annotations

import time

import pytest

from core.jobs import waiting
from core.jobs.queue import Enqueuer
from core.jobs.reconcile import reconcile
from core.jobs.records import JobRepository

pytestmark = pytest.mark.timeout(300)

TERMINAL = {"succeeded", "failed", "canceled"}
TINY_CLASSIFIER = {"kind": "classifier", "dataset": "digits", "epochs": 1, "batch_size": 128,
                   "arch_options": {"width": 4, "feature_dim": 16}, "eval_samples": 16,
                   "eval_attack_steps": 1}


def generation(**overrides: object) -> dict:
    body: dict = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 8, "steps": 2,
                  "schedule": "uniform", "batch_size": 8, "loss": "hnm", "lam": 10.0, "seed": 3}
    body.update(overrides)
    return body


def submit(client, route: str, body: dict) -> dict:
    reply = client.post(f"/jobs/{route}", json=body)
    assert reply.status_code == 202, reply.text
    return reply.json()


def waited(client, job_id: str, seconds: float = 60) -> dict:
    """One long-poll per call; the test never polls in a loop of its own except across these calls."""
    reply = client.get(f"/jobs/{job_id}", params={"wait": seconds})
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture
def long_waits(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_MAX_WAIT_SECONDS", "240")


def test_a_chain_submitted_at_once_runs_to_the_end(long_waits, stack) -> None:
    client = stack.client
    diffusion = submit(client, "train", {"kind": "diffusion", "dataset": "digits", "epochs": 1,
                                         "batch_size": 128})
    classifier = submit(client, "train", TINY_CLASSIFIER)
    gen = submit(client, "generate", generation(model=f"job:{diffusion['id']}",
                                                classifier=f"job:{classifier['id']}"))
    trades = submit(client, "train", {**TINY_CLASSIFIER, "kind": "trades", "attack_steps": 1,
                                      "synthetic": [f"job:{gen['id']}"], "synthetic_fraction": 0.5})
    evaluation = submit(client, "evaluate", {"model": f"job:{trades['id']}", "dataset": "digits",
                                             "attacks": ["pgd_ce"], "steps": 2, "limit": 32})
    assert gen["status"] == "waiting"
    assert sorted(gen["waiting_for"]) == sorted([diffusion["id"], classifier["id"]])
    assert (trades["status"], trades["waiting_for"]) == ("waiting", [gen["id"]])
    assert (evaluation["status"], evaluation["waiting_for"]) == ("waiting", [trades["id"]])

    job = waited(client, evaluation["id"], 240)
    assert job["status"] == "succeeded", job["error"]
    for earlier in (diffusion, classifier, gen, trades):
        record = client.get(f"/jobs/{earlier['id']}").json()
        assert record["status"] == "succeeded" and record["waiting_for"] == []
    # each dependant started only after its inputs had finished
    record = {j["id"]: client.get(f"/jobs/{j['id']}").json() for j in (diffusion, gen, trades, evaluation)}
    assert record[gen["id"]]["started_at"] >= record[diffusion["id"]]["completed_at"]
    assert record[evaluation["id"]]["started_at"] >= record[trades["id"]]["completed_at"]
    assert client.get(f"/jobs/{evaluation['id']}/metrics").json()["evaluation"]["count"] == 32


def test_a_failed_input_fails_its_dependants_with_the_cause(stack) -> None:
    client = stack.client
    repo = client.app.state.service.repo  # the API's repository (with the hook that settles dependants)
    # a model name that exists but is no diffusion pipeline: the generation fails in the worker, once a gate
    # job (recorded by hand, never run) succeeds, so that every dependant is in place before it fails
    (stack.settings.model_dir / "not-a-unet").mkdir()
    gate = repo.create(kind="train", owner="anonymous", input={"kind": "classifier"})
    broken = submit(client, "generate", generation(model="not-a-unet", classifier=f"job:{gate.id}"))
    trades = submit(client, "train", {**TINY_CLASSIFIER, "kind": "trades",
                                      "synthetic": [f"job:{broken['id']}"]})
    evaluation = submit(client, "evaluate", {"model": f"job:{trades['id']}", "dataset": "digits"})
    assert {broken["status"], trades["status"], evaluation["status"]} == {"waiting"}
    repo.finish(gate.id, "succeeded")
    job = waited(client, evaluation["id"])
    assert job["status"] == "failed"
    assert f"job:{trades['id']}" in job["error"] and "failed" in job["error"]
    middle = client.get(f"/jobs/{trades['id']}").json()
    assert middle["status"] == "failed" and f"synthetic.0 (job:{broken['id']}) failed" in middle["error"]
    assert client.get(f"/jobs/{broken['id']}").json()["status"] == "failed"
    # naming a job that already failed is refused at once, naming the field
    reply = client.post("/jobs/train", json={**TINY_CLASSIFIER, "kind": "trades",
                                             "synthetic": [f"job:{broken['id']}"]})
    assert reply.status_code == 409 and reply.json()["errors"][0]["field"] == "body.synthetic.0"


def test_canceling_an_input_fails_the_waiting_job_and_cancel_of_a_waiting_job_is_immediate(stack) -> None:
    client = stack.client
    slow = submit(client, "train", {"kind": "diffusion", "dataset": "digits", "epochs": 50, "batch_size": 16})
    gen = submit(client, "generate", generation(model=f"job:{slow['id']}"))
    other = submit(client, "generate", generation(model=f"job:{slow['id']}", seed=4))
    assert client.post(f"/jobs/{other['id']}/cancel").json()["status"] == "canceled"
    client.post(f"/jobs/{slow['id']}/cancel")
    job = waited(client, gen["id"])
    assert job["status"] == "failed" and f"model (job:{slow['id']}) canceled" in job["error"]
    assert waited(client, slow["id"])["status"] == "canceled"


def test_wait_returns_early_once_the_job_finishes(long_waits, stack) -> None:
    client = stack.client
    job = submit(client, "generate", generation())
    started = time.monotonic()
    done = waited(client, job["id"], 200)
    assert done["status"] == "succeeded"
    assert time.monotonic() - started < 200  # it answered on completion, not at the end of the wait
    # an unfinished job answers after the wait, with its current state; the wait is bounded by the setting
    slow = submit(client, "train", {"kind": "diffusion", "dataset": "digits", "epochs": 50, "batch_size": 16})
    assert waited(client, slow["id"], 0.3)["status"] in ("queued", "running")
    client.post(f"/jobs/{slow['id']}/cancel")
    assert client.get(f"/jobs/{job['id']}", params={"wait": -1}).status_code == 422


def test_quotas_count_waiting_jobs(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                   stack_serving) -> None:
    monkeypatch.setenv("CDP_QUOTA_CONCURRENT_JOBS", "2")
    with stack_serving(["cdp.evaluate"]) as stack:  # nobody trains: the first job stays queued
        slow = submit(stack.client, "train", TINY_CLASSIFIER)
        dependant = submit(stack.client, "evaluate", {"model": f"job:{slow['id']}", "dataset": "digits"})
        assert dependant["status"] == "waiting"
        third = stack.client.post("/jobs/evaluate", json={"model": "cnn-t", "dataset": "digits"})
        assert third.status_code == 429
        stack.client.post(f"/jobs/{slow['id']}/cancel")  # frees both slots: the dependant fails at once
        assert waited(stack.client, dependant["id"], 5)["status"] == "failed"
        assert stack.client.post("/jobs/evaluate", json={"model": "cnn-t", "dataset": "digits"}
                                 ).status_code == 202


def test_the_reconciler_releases_a_waiting_job_after_redis_lost_everything(stack_serving) -> None:
    with stack_serving(["cdp.evaluate"]) as stack:  # nobody generates: we finish the input by hand
        gen = submit(stack.client, "generate", generation())
        trades = submit(stack.client, "train", {**TINY_CLASSIFIER, "kind": "trades",
                                                "synthetic": [f"job:{gen['id']}"]})
        assert trades["status"] == "waiting"
        stack.redis.flushall()  # Redis loses the dependants' sets and every mirror
        repo = JobRepository(stack.store, stack.redis)  # no hook: as if the finishing worker died
        repo.finish(gen["id"], "succeeded")
        assert repo.load(trades["id"]).status == "waiting"
        enqueuer = Enqueuer(stack.worker_app, repo.leases)
        report = reconcile(repo, enqueuer, max_attempts=3, default_shard_size=8)
        assert trades["id"] in report.released
        record = repo.load(trades["id"])
        assert (record.status, record.waiting_for) == ("queued", [])
        assert repo.leases.states(trades["id"], ["train"])["train"].pending
        assert waiting.dependants_of(repo, gen["id"]) == {trades["id"]}  # store marker (hook never ran)


def test_another_teams_unfinished_job_cannot_be_waited_for(service_env, monkeypatch, tmp_path,
                                                            client) -> None:
    from api.app import create_app
    from core.jobs.apikeys import create_key
    from core.settings import get_settings

    path = tmp_path / "keys.json"
    a, b = (create_key(path, team=team)[1] for team in ("team-a", "team-b"))
    admin = create_key(path, team="ops", role="admin")[1]
    monkeypatch.setenv("CDP_API_KEYS_FILE", str(path))
    get_settings.cache_clear()
    from fastapi.testclient import TestClient

    app = create_app(get_settings(), store=client.app.state.store,
                     redis_client=client.app.state.service.repo.redis)
    with TestClient(app) as http:
        auth = {k: {"Authorization": f"Bearer {v}"} for k, v in (("a", a), ("b", b), ("admin", admin))}
        theirs = http.post("/jobs/train", json=TINY_CLASSIFIER, headers=auth["a"]).json()
        assert theirs["status"] == "queued"
        spec = {"model": f"job:{theirs['id']}", "dataset": "digits"}
        refused = http.post("/jobs/evaluate", json=spec, headers=auth["b"])
        assert refused.status_code == 404 and refused.json()["errors"][0]["field"] == "body.model"
        unknown = http.post("/jobs/evaluate", json={**spec, "model": "job:" + "0" * 24}, headers=auth["b"])
        assert refused.json()["detail"].replace(theirs["id"], "0" * 24) == unknown.json()["detail"]
        assert http.get(f"/jobs/{theirs['id']}", params={"wait": 5}, headers=auth["b"]).status_code == 404
        mine = http.post("/jobs/evaluate", json=spec, headers=auth["a"]).json()
        assert mine["status"] == "waiting"

        pipeline = http.post("/pipelines", headers=auth["a"], json={"steps": [
            {"name": "cls", "kind": "train", "spec": TINY_CLASSIFIER},
            {"name": "score", "kind": "evaluate", "spec": {"model": "step:cls", "dataset": "digits"}}]})
        assert pipeline.status_code == 202, pipeline.text
        pid = pipeline.json()["id"]
        assert http.get(f"/pipelines/{pid}", headers=auth["b"]).status_code == 404
        assert http.post(f"/pipelines/{pid}/cancel", headers=auth["b"]).status_code == 404
        assert http.get(f"/pipelines/{pid}", headers=auth["a"]).json()["status"] == "queued"
        assert http.get(f"/pipelines/{pid}", headers=auth["admin"]).status_code == 200
    get_settings.cache_clear()

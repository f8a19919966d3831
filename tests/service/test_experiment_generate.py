"""Experiments that generate their own synthetic sets (arms with ``generate`` and ``count``) through the real
stack: the generation children (one per distinct spec, guidance-only variants on the same seed), the TRADES
children that use them, a failed generation that fails only its arms, and cancel reaching the generations."""

from __future__ import annotations

import json
import time

import pytest

from core.jobs.composite import child_id, generation_key
from core.specs import ExperimentSpec
from tests.service.events import read_events

pytestmark = pytest.mark.timeout(300)

TINY_TRADES = {"epochs": 1, "batch_size": 64, "arch_options": {"width": 4, "feature_dim": 16},
               "attack_steps": 1}
TINY_EVAL = {"attacks": ["pgd_ce"], "steps": 2, "limit": 40, "batch_size": 64}
VANILLA = {"model": "unet-t", "classifier": "cnn-t", "loss": "none", "steps": 2, "schedule": "uniform",
           "batch_size": 8}


def experiment(arms: list[dict], seeds: list[int]) -> dict:
    return {"dataset": "digits", "seeds": seeds, "real_subset": 100, "trades": TINY_TRADES,
            "evaluation": TINY_EVAL, "arms": arms}


def children(client, job_id: str) -> list[dict]:
    return client.get("/jobs", params={"parent": job_id, "page_size": 100}).json()["items"]


@pytest.fixture
def long_waits(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_MAX_WAIT_SECONDS", "280")


def test_generate_arms_at_two_counts_and_two_seeds(long_waits, stack) -> None:
    client = stack.client
    guided = {**VANILLA, "loss": "hnm", "lam": 10.0}
    spec = experiment([{"name": "real only"},
                       {"name": "+ vanilla 8", "generate": VANILLA, "count": 8},
                       {"name": "+ vanilla 16", "generate": VANILLA, "count": 16},
                       {"name": "+ guided 16", "generate": guided, "count": 16}], seeds=[0, 1])
    reply = client.post("/jobs/experiment", json=spec)
    assert reply.status_code == 202, reply.text
    job = client.get(f"/jobs/{reply.json()['id']}", params={"wait": 280}).json()
    assert job["status"] == "succeeded", job["error"]

    kids = children(client, job["id"])
    by_kind: dict[str, list[dict]] = {}
    for kid in kids:
        by_kind.setdefault(kid["kind"], []).append(kid)
        assert kid["status"] == "succeeded" and kid["parent"] == job["id"]
    assert sorted(len(v) for v in by_kind.values()) == [3, 8, 8]  # 3 generations, 4 arms x 2 seeds x 2
    generations = {g["id"]: g["input"] for g in by_kind["generate"]}
    assert sorted(g["count"] for g in generations.values()) == [8, 16, 16]
    assert {g["seed"] for g in generations.values()} == {0}  # guided and vanilla start from the same x_T
    result = client.get(f"/jobs/{job['id']}/metrics").json()["metrics"]
    assert set(result["arms"]) == {"real only", "+ vanilla 8", "+ vanilla 16", "+ guided 16"}
    assert result["failed_arms"] == {}
    for arm, count in (("+ vanilla 8", 8), ("+ vanilla 16", 16), ("+ guided 16", 16)):
        gen_id = result["generations"][arm]
        assert generations[gen_id]["count"] == count
        trains = [t for t in by_kind["train"] if t["input"]["synthetic"] == [f"job:{gen_id}"]]
        assert sorted(t["input"]["seed"] for t in trains) == [0, 1], arm
    assert generations[result["generations"]["+ guided 16"]]["loss"] == "hnm"
    assert [t for t in by_kind["train"] if t["input"]["synthetic"] == []]  # the real-only arm
    # the experiment's progress counted every child's units: 3 generations (1, 2, 2 shards + finalize) + 16
    assert job["progress"]["fraction"] == 1.0


def test_a_failed_generation_fails_only_its_arms_and_identical_specs_run_once(long_waits, stack) -> None:
    client = stack.client
    (stack.settings.model_dir / "not-a-unet").mkdir()  # exists, but is no diffusion pipeline
    broken = {**VANILLA, "model": "not-a-unet"}
    spec = experiment([{"name": "real only"},
                       {"name": "+ broken a", "generate": broken, "count": 8},
                       {"name": "+ broken b", "generate": broken, "count": 8, "synthetic_fraction": 0.3},
                       {"name": "+ vanilla", "generate": VANILLA, "count": 8}], seeds=[0])
    reply = client.post("/jobs/experiment", json=spec)
    assert reply.status_code == 202, reply.text
    job = client.get(f"/jobs/{reply.json()['id']}", params={"wait": 280}).json()
    assert job["status"] == "succeeded", job["error"]
    kids = children(client, job["id"])
    gens = [k for k in kids if k["kind"] == "generate"]
    assert len(gens) == 2  # the two broken arms share one generation job
    parsed = ExperimentSpec.model_validate(spec)
    broken_id = child_id(job["id"], generation_key(parsed.child_generate_spec(parsed.arms[1])))
    assert {g["id"]: g["status"] for g in gens}[broken_id] == "failed"
    result = client.get(f"/jobs/{job['id']}/metrics").json()["metrics"]
    assert set(result["failed_arms"]) == {"+ broken a", "+ broken b"}
    assert all(broken_id in why and "failed" in why for why in result["failed_arms"].values())
    assert set(result["arms"]) == {"real only", "+ vanilla"}
    assert sorted(k["kind"] for k in kids if k["kind"] != "generate") == ["evaluate"] * 2 + ["train"] * 2
    report = json.loads(stack.store.get_bytes(f"jobs/{job['id']}/report.json"))
    assert set(report["failed_arms"]) == {"+ broken a", "+ broken b"}
    html = stack.store.get_bytes(f"jobs/{job['id']}/report.html").decode()
    assert 'id="failed-arms"' in html and broken_id in html


def test_cancel_of_an_experiment_reaches_its_generations(stack) -> None:
    client = stack.client
    slow = {**VANILLA, "steps": 400}
    reply = client.post("/jobs/experiment", json=experiment(
        [{"name": "real only"}, {"name": "+ slow", "generate": slow, "count": 8}], seeds=[0]))
    job_id = reply.json()["id"]
    deadline = time.monotonic() + 60
    while not [k for k in children(client, job_id) if k["kind"] == "generate" and k["status"] == "running"]:
        assert time.monotonic() < deadline, "the generation child never ran"
        time.sleep(0.2)
    client.post(f"/jobs/{job_id}/cancel")
    assert client.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] == "canceled"
    for kid in children(client, job_id):
        assert client.get(f"/jobs/{kid['id']}", params={"wait": 30}).json()["status"] in ("canceled",
                                                                                           "succeeded")
    gen = [k for k in children(client, job_id) if k["kind"] == "generate"][0]
    assert gen["status"] == "canceled"


def test_arm_generation_specs_are_checked_at_submission(client) -> None:
    bad = client.post("/jobs/experiment", json=experiment(
        [{"name": "a", "generate": VANILLA}], seeds=[0]))  # no count
    assert bad.status_code == 422 and "count" in bad.text
    bad = client.post("/jobs/experiment", json=experiment(
        [{"name": "a", "generate": {**VANILLA, "model": "no-such-model"}, "count": 8}], seeds=[0]))
    assert bad.status_code == 404  # a well-formed reference to a model that does not exist
    assert bad.json()["errors"][0]["field"] == "body.arms.0.generate.model"
    bad = client.post("/jobs/experiment", json=experiment([{"name": "a", "count": 8}], seeds=[0]))
    assert bad.status_code == 422 and "count" in bad.text


def test_an_experiments_events_include_its_children_and_its_progress_counts_their_units(stack) -> None:
    client = stack.client
    reply = client.post("/jobs/experiment", json=experiment(
        [{"name": "real only"}, {"name": "+ vanilla", "generate": VANILLA, "count": 16}], seeds=[0]))
    job_id = reply.json()["id"]
    events = read_events(client, f"/jobs/{job_id}/events", poll_s=0.05)
    assert events[-1][0] == "state" and events[-1][1]["status"] == "succeeded"
    children = [data for name, data in events if name == "child"]
    kinds = {c["kind"] for c in children}
    assert kinds == {"generate", "train", "evaluate"}
    gen_states = [c["status"] for c in children if c["kind"] == "generate"]
    assert gen_states[-1] == "succeeded" and len(gen_states) >= 2  # seen before it finished, then done
    assert all(c["parent"] == job_id for c in children)
    # 16 images in shards of 8 (2 shards + finalize) and 2 arms x 1 seed x (TRADES, evaluation): 7 units
    totals = {data["total"] for name, data in events if name == "progress" and data["stage"] == "children"}
    assert totals == {7}
    fractions = [data["fraction"] for name, data in events if name == "progress"]
    assert fractions[-1] == 1.0 and any(0 < f < 1 for f in fractions)  # it moved while children ran

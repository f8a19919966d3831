"""Pipelines (POST /pipelines) through the real stack: the MNIST-5k study document of experiments/, reduced to
tiny sizes, run end to end in one request and followed with ``?wait=``; step references checked at
submission; cancel; the composite progress and the events stream of an experiment; ``cdp wait``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.cli import main as cdp
from tests.service.events import read_events
from tests.service.serving import served

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments" / "mnist5k-pipeline.json"
COUNTS = ROOT / "experiments" / "mnist5k-counts-pipeline.json"  # the sample-efficiency study


def reduced(document: dict) -> dict:
    """The study's document at tiny sizes: the same steps and references, five of its arms (every kind of
    generation, the shared one included), one seed, a few images."""
    doc = json.loads(json.dumps(document))
    steps = {s["name"]: s["spec"] for s in doc["steps"]}
    steps["diffusion"].update(epochs=1, batch_size=128)
    steps["labeller"].update(epochs=1, batch_size=128, arch_options={"width": 4, "feature_dim": 16},
                             eval_samples=16, eval_attack_steps=1)
    study = steps["study"]
    keep = ("R", "R+vanilla 0.3", "R+vanilla 0.7", "R+CDP 0.3", "R+CDP 0.3 (1000 images)")
    study.update(seeds=[0], arms=[a for a in study["arms"] if a["name"] in keep])
    study["trades"].update(epochs=1, steps_per_epoch=1, attack_steps=1, arch_options={"width": 4})
    study["evaluation"] = {"eps": 0.15, "attacks": ["pgd_ce"], "steps": 1, "limit": 16}
    for arm in study["arms"]:
        if "generate" in arm:
            guided = arm["generate"]["loss"] != "none"
            arm["generate"].update(steps=2, batch_size=8, lam=10.0 if guided else 0.0)
            arm["count"] = 16 if arm["count"] == 5000 else 8
    return doc


@pytest.fixture
def long_waits(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_MAX_WAIT_SECONDS", "280")


@pytest.mark.parametrize("document", [STUDY, COUNTS], ids=lambda p: p.name)
def test_the_mnist5k_study_documents_validate_at_full_size(
    document: Path, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.jobs.pipelines import SPEC_MODELS
    from core.settings import get_settings
    from core.specs.pipeline import PipelineSpec, resolve_steps

    monkeypatch.setenv("CDP_MAX_EPOCHS", "600")  # the generator's 600 epochs (experiments/README.md)
    get_settings.cache_clear()
    spec = PipelineSpec.model_validate(json.loads(document.read_text()))
    ids: dict[str, str] = {}
    for step in spec.steps:
        SPEC_MODELS[step.kind].model_validate(resolve_steps(step.spec, ids))
        ids[step.name] = "0" * 24
    get_settings.cache_clear()


def test_the_counts_document_plans_the_scripted_study() -> None:
    """The sample-efficiency document runs the (method, N, seed) cells of experiments/mnist5k_counts.py, at
    its settings: the same x_T (seed, batch) for every method at every N, the mild lambda the script chose,
    and the robust variant's features from the real-only TRADES step of seed 0."""
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import mnist5k_counts as script

    doc = json.loads(COUNTS.read_text())
    steps = {s["name"]: s for s in doc["steps"]}
    cells, noise = set(), set()
    for step in doc["steps"]:
        if step["kind"] != "experiment":
            continue
        for arm in step["spec"]["arms"]:
            if arm["name"] == "real only":
                cells |= {("real only", None, seed) for seed in step["spec"]["seeds"]}
                continue
            method, count = arm["name"].split(" ")
            assert int(count) == arm["count"] and arm["synthetic_fraction"] == script.FRACTION
            gen = arm["generate"]
            noise.add((gen["seed"], gen["batch_size"], gen["steps"]))
            assert gen["loss"] == ("none" if method == "vanilla" else "hnm")
            assert gen.get("lam") == {"vanilla": None, "cdp-paper": None}.get(method, 1e4)
            assert gen.get("feature_extractor") == ("step:real0" if method == "cdp-mild-robust" else None)
            cells |= {(method, arm["count"], seed) for seed in step["spec"]["seeds"]}
    planned = {(m, n, s) for m in script.METHODS for n in script.COUNTS for s in script.SEEDS[n]}
    planned |= {("real only", None, s) for s in script.SEEDS[500]}
    assert cells == planned
    assert noise == {(script.SET_SEED, 250, 50)}  # one x_T for all; 250 divides every N, so sets nest
    assert steps["real0"]["spec"]["seed"] == 0 and steps["real0"]["spec"]["kind"] == "trades"


def test_the_reduced_mnist5k_study_runs_end_to_end_in_one_request(long_waits, stack) -> None:
    client = stack.client
    reply = client.post("/pipelines", json=reduced(json.loads(STUDY.read_text())))
    assert reply.status_code == 202, reply.text
    created = reply.json()
    assert reply.headers["Location"] == f"/pipelines/{created['id']}"
    states = {s["name"]: s for s in created["steps"]}
    assert states["diffusion"]["status"] in ("queued", "running")
    assert states["study"]["status"] == "waiting"
    assert sorted(states["study"]["waiting_for"]) == ["diffusion", "labeller"]

    pipeline = client.get(f"/pipelines/{created['id']}", params={"wait": 280}).json()
    assert pipeline["status"] == "succeeded", pipeline["error"]
    assert pipeline["progress"]["fraction"] == 1.0
    assert pipeline["progress"]["current"] == pipeline["progress"]["total"] > 3
    study_id = {s["name"]: s["job_id"] for s in pipeline["steps"]}["study"]
    result = client.get(f"/jobs/{study_id}/metrics").json()["metrics"]
    assert len(result["arms"]) == 5 and result["failed_arms"] == {}
    generations = result["generations"]
    assert generations["R+vanilla 0.3"] == generations["R+vanilla 0.7"]  # identical specs: one job
    assert len(set(generations.values())) == 3  # vanilla, Contrastive-DP, Contrastive-DP at 1000 images
    diffusion_id = {s["name"]: s["job_id"] for s in pipeline["steps"]}["diffusion"]
    for gen_id in set(generations.values()):
        gen = client.get(f"/jobs/{gen_id}").json()
        assert gen["input"]["model"] == f"job:{diffusion_id}" and gen["parent"] == study_id


def test_step_references_and_specs_are_checked_before_anything_runs(stack) -> None:
    client = stack.client
    train = {"kind": "classifier", "dataset": "digits", "epochs": 1}
    gen = {"dataset": "digits", "model": "step:nope", "classifier": "step:cls", "count": 8}
    reply = client.post("/pipelines", json={"steps": [
        {"name": "cls", "kind": "train", "spec": {**train, "epochs": 0}},
        {"name": "gen", "kind": "generate", "spec": gen}]})
    assert reply.status_code == 422
    fields = {e["field"] for e in reply.json()["errors"]}
    assert fields == {"body.steps.0.spec.epochs", "body.steps.1.spec.model"}
    assert client.get("/jobs").json()["items"] == []  # nothing submitted

    # a reference of the wrong kind (a classifier as the diffusion model): refused, earlier steps canceled
    reply = client.post("/pipelines", json={"steps": [
        {"name": "cls", "kind": "train", "spec": train},
        {"name": "gen", "kind": "generate", "spec": {**gen, "model": "step:cls"}}]})
    assert reply.status_code == 422
    assert reply.json()["errors"][0]["field"] == "body.steps.1.spec.model"
    (submitted,) = client.get("/jobs").json()["items"]  # the first step, canceled (cooperatively: it may run)
    assert submitted["cancel_requested"] is True
    assert client.get(f"/jobs/{submitted['id']}", params={"wait": 30}).json()["status"] in ("canceled",
                                                                                           "succeeded")
    assert client.get("/pipelines/0190a1b2c3d4e5f6a7b8c9d0").status_code == 404


def test_cancel_of_a_pipeline_cancels_its_steps(stack) -> None:
    client = stack.client
    reply = client.post("/pipelines", json={"steps": [
        {"name": "slow", "kind": "train", "spec": {"kind": "diffusion", "dataset": "digits", "epochs": 50,
                                                    "batch_size": 16}},
        {"name": "score", "kind": "evaluate", "spec": {"model": "cnn-t", "dataset": "digits"}},
        {"name": "gen", "kind": "generate", "spec": {"dataset": "digits", "model": "step:slow",
                                                      "classifier": "cnn-t", "count": 8}}]})
    assert reply.status_code == 202, reply.text
    pipeline_id = reply.json()["id"]
    client.post(f"/pipelines/{pipeline_id}/cancel")
    pipeline = client.get(f"/pipelines/{pipeline_id}", params={"wait": 30}).json()
    assert pipeline["status"] in ("canceled", "failed")
    states = {s["name"]: s["status"] for s in pipeline["steps"]}
    assert states["slow"] == "canceled" and states["gen"] == "canceled"


def test_cdp_wait_follows_a_job_to_its_end(stack, capsys: pytest.CaptureFixture[str]) -> None:
    job = stack.client.post("/jobs/generate", json={
        "dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 8, "steps": 2,
        "schedule": "uniform", "batch_size": 8, "loss": "none"}).json()
    with served(stack.client.app) as url:
        assert cdp(["wait", job["id"], "--url", url, "--json", "--quiet"]) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
        assert cdp(["wait", "0190a1b2c3d4e5f6a7b8c9d0", "--url", url, "--quiet"]) == 2
        assert "404" in capsys.readouterr().err


def test_an_idempotency_key_replays_the_same_pipeline(client) -> None:
    body = {"steps": [
        {"name": "cls", "kind": "train", "spec": {"kind": "classifier", "dataset": "digits", "epochs": 1}},
        {"name": "score", "kind": "evaluate", "spec": {"model": "step:cls", "dataset": "digits"}}]}
    first = client.post("/pipelines", json=body, headers={"Idempotency-Key": "study-1"})
    assert first.status_code == 202, first.text
    again = client.post("/pipelines", json=body, headers={"Idempotency-Key": "study-1"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert [s["job_id"] for s in again.json()["steps"]] == [s["job_id"] for s in first.json()["steps"]]
    assert len(client.get("/jobs").json()["items"]) == 2  # no second set of steps
    other = {**body, "name": "changed"}
    conflict = client.post("/pipelines", json=other, headers={"Idempotency-Key": "study-1"})
    assert conflict.status_code == 422 and conflict.json()["errors"][0]["field"] == "header.Idempotency-Key"
    # the same key on a job route is a key of its own
    job = client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": 1},
                      headers={"Idempotency-Key": "study-1"})
    assert job.status_code == 202


def test_a_pipelines_events_report_each_steps_changes_and_end_with_its_state(stack) -> None:
    client = stack.client
    reply = client.post("/pipelines", json={"steps": [
        {"name": "gen", "kind": "generate", "spec": {
            "dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 16, "steps": 2,
            "schedule": "uniform", "batch_size": 8, "loss": "none"}},
        {"name": "score", "kind": "evaluate", "spec": {"model": "cnn-t", "dataset": "digits",
                                                        "attacks": ["pgd_ce"], "steps": 1, "limit": 16}}]})
    pipeline_id = reply.json()["id"]
    events = read_events(client, f"/pipelines/{pipeline_id}/events", poll_s=0.05)
    assert events[-1][0] == "state" and events[-1][1]["status"] == "succeeded"
    steps = [data for name, data in events if name == "step"]
    seen = {step: [s["status"] for s in steps if s["name"] == step] for step in ("gen", "score")}
    assert all(states[-1] == "succeeded" for states in seen.values()), seen
    assert max(len(states) for states in seen.values()) >= 2, seen  # changes while it ran, not only the end
    totals = {data["total"] for name, data in events if name == "progress"}
    assert totals == {2 + 1 + 1}  # two shards of 8 and the finalize step, one evaluation

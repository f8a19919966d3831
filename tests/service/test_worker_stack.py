"""Full jobs through the real stack: private Redis, an in-process Celery worker (not eager), the HTTP API,
the local store, and tiny untrained models saved into the model directory."""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import pytest

from core.jobs import keys, task_names
from core.jobs.queue import GENERATE_QUEUE
from tests.service.events import follow_events

pytestmark = pytest.mark.timeout(240)


def small_generation(**overrides: object) -> dict:
    body: dict = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 20, "steps": 4,
                  "schedule": "uniform", "batch_size": 8, "loss": "hnm", "lam": 10.0, "seed": 3}
    body.update(overrides)
    return body


def test_generation_job_end_to_end(stack) -> None:
    client = stack.client
    created = client.post("/jobs/generate", json=small_generation())
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    job = stack.wait(job_id, until={"succeeded", "failed", "canceled"})
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["fraction"] == 1.0 and job["started_at"] and job["completed_at"]

    metrics = client.get(f"/jobs/{job_id}/metrics").json()["metrics"]
    assert metrics["generated"] == 20
    histogram = metrics["class_histogram"]
    assert sum(histogram.values() if isinstance(histogram, dict) else histogram) == 20
    assert metrics["images_per_s"] > 0
    assert 0 <= metrics["mean_confidence_all"] <= 1
    # the tiny UNet is untrained: its samples are noise, and the job says so instead of succeeding silently
    assert metrics["outlier_fraction"] > 0.5
    assert any(w.startswith("outliers:") for w in metrics["warnings"]), metrics["warnings"]
    assert job["warnings"] == metrics["warnings"]
    typed = client.get(f"/jobs/{job_id}/metrics").json()["generation"]
    assert typed["warnings"] == metrics["warnings"]

    listing = client.get(f"/jobs/{job_id}/artifacts").json()
    assert listing["complete"] is True
    names = {a["name"] for a in listing["items"]}
    assert {"shards/0.npz", "shards/1.npz", "shards/2.npz", "metrics.json", "preview.png",
            "manifest.json"} <= names
    sizes = []
    for artifact in listing["items"]:
        if artifact["name"].startswith("shards/") and artifact["name"].endswith(".npz"):
            body = client.get(artifact["url"])  # the local store: the API's streamed download route
            assert body.status_code == 200
            assert hashlib.sha256(body.content).hexdigest() == artifact["sha256"]
            assert len(body.content) == artifact["size"]
            with np.load(io.BytesIO(body.content)) as npz:
                assert npz["image"].dtype == np.uint8 and npz["image"].shape[1:] == (16, 16, 1)
                assert npz["label"].dtype == np.int64 and len(npz["label"]) == len(npz["image"])
                assert npz["confidence"].shape == npz["entropy"].shape == npz["label"].shape
                sizes.append(len(npz["label"]))
    assert sorted(sizes) == [4, 8, 8]
    npy = sorted(n for n in names if n.endswith(".npy"))  # the memory-mappable pair of every shard
    assert npy == sorted(f"shards/{k}.{part}.npy" for k in range(3) for part in ("images", "labels"))

    # manifest.json is written last and lists every other artifact with its digest
    manifest = json.loads(stack.store.get_bytes(keys.manifest_key(job_id)))
    manifest_time = stack.store.stat(keys.manifest_key(job_id)).last_modified
    for entry in manifest["artifacts"]:
        info = stack.store.stat(keys.job_prefix(job_id) + entry["name"])
        assert info.last_modified <= manifest_time
        assert entry["size"] == info.size

    # the generated set feeds a (one-epoch, tiny) TRADES job
    trades = client.post("/jobs/train", json={
        "kind": "trades", "dataset": "digits", "epochs": 1, "batch_size": 64, "synthetic": [f"job:{job_id}"],
        "arch_options": {"width": 4, "feature_dim": 16}, "attack_steps": 2, "eval_attack_steps": 2,
        "eval_samples": 32})
    assert trades.status_code == 202, trades.text
    trained = stack.wait(trades.json()["id"], until={"succeeded", "failed", "canceled"}, timeout=120)
    assert trained["status"] == "succeeded", trained["error"]
    trades_metrics = client.get(f"/jobs/{trained['id']}/metrics").json()["metrics"]
    assert 0 <= trades_metrics["test"]["robust_acc"] <= trades_metrics["test"]["clean_acc"] <= 1

    # the event stream of a finished job ends with its terminal state
    with client.stream("GET", f"/jobs/{job_id}/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        text = "".join(events.iter_text())
    event_names = [line for line in text.splitlines() if line.startswith("event: ")]
    assert event_names == ["event: progress", "event: state"]
    assert '"status": "succeeded"' in text.split("event: state")[-1]


def test_same_seed_same_images_and_redelivered_shard_is_not_redone(stack) -> None:
    client = stack.client
    first = stack.wait(client.post("/jobs/generate", json=small_generation(count=8)).json()["id"],
                       until={"succeeded", "failed"})
    second = stack.wait(client.post("/jobs/generate", json=small_generation(count=8)).json()["id"],
                        until={"succeeded", "failed"})
    assert first["status"] == second["status"] == "succeeded", (first["error"], second["error"])
    a = np.load(io.BytesIO(stack.store.get_bytes(keys.shard_key(first["id"], 0))))["image"]
    b = np.load(io.BytesIO(stack.store.get_bytes(keys.shard_key(second["id"], 0))))["image"]
    assert np.array_equal(a, b)  # shard seeds derive from (job seed, shard index)

    # Redeliver shard 0 of the finished job: the worker sees the complete shard and does not redo it.
    key = keys.shard_key(first["id"], 0)
    before = stack.store.stat(key)
    result = stack.worker_app.send_task(task_names.GENERATE_SHARD, args=[first["id"], 0],
                                        queue=GENERATE_QUEUE)
    assert result.get(timeout=60) == "exists"
    after = stack.store.stat(key)
    assert (after.etag, after.sha256) == (before.etag, before.sha256)
    shards = [i for i in stack.store.list(keys.job_prefix(first["id"]) + "shards/") if i.key.endswith(".npz")]
    assert len(shards) == 1
    assert stack.client.get(f"/jobs/{first['id']}").json()["attempt"] == 1


def test_cancel_a_running_job_while_following_its_events(stack) -> None:
    client = stack.client
    job_id = client.post("/jobs/generate", json=small_generation(count=16, steps=500)).json()["id"]
    events: list[tuple[str, dict]] = []
    for event, data in follow_events(client, f"/jobs/{job_id}/events", poll_s=0.1):
        events.append((event, data))
        if event == "progress" and data["status"] == "running" and data["current"] > 0 \
                and not any(e == "cancel" for e, _ in events):
            canceled = client.post(f"/jobs/{job_id}/cancel")
            assert canceled.status_code == 200 and canceled.json()["cancel_requested"] is True
            events.append(("cancel", {}))
    kinds = [e for e, _ in events]
    assert kinds[0] == "state" and events[0][1]["status"] in ("queued", "running")
    assert "cancel" in kinds, "no progress event of the running job arrived"
    # the stream ends with the terminal state
    assert kinds[-1] == "state" and events[-1][1]["status"] == "canceled"
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "canceled"
    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "canceled"  # idempotent
    # the canceled shard was never written, no manifest, and the second shard's task does nothing
    time.sleep(0.5)
    assert not stack.store.exists(keys.manifest_key(job_id))
    assert list(stack.store.list(keys.job_prefix(job_id) + "shards/")) == []
    assert client.get(f"/jobs/{job_id}/metrics").status_code == 409


def test_a_failing_job_is_failed_with_its_error(stack) -> None:
    (stack.settings.model_dir / "empty").mkdir()  # a name that exists but holds no model
    job_id = stack.client.post("/jobs/generate", json=small_generation(model="empty", count=4)).json()["id"]
    job = stack.wait(job_id, until={"succeeded", "failed", "canceled"})
    assert job["status"] == "failed"
    assert "empty" in job["error"] and job["completed_at"] is not None


def test_selection_keeps_the_top_k_per_class(stack) -> None:
    body = small_generation(count=16, selection={"criterion": "entropy", "top_k": 1})
    job = stack.wait(stack.client.post("/jobs/generate", json=body).json()["id"],
                     until={"succeeded", "failed", "canceled"})
    assert job["status"] == "succeeded", job["error"]
    metrics = stack.client.get(f"/jobs/{job['id']}/metrics").json()["metrics"]
    with np.load(io.BytesIO(stack.store.get_bytes(keys.job_prefix(job["id"]) + "selected.npz"))) as npz:
        labels = npz["label"]
    assert metrics["generated"] == 16 and metrics["count"] == len(labels)
    assert np.bincount(labels).max() == 1  # one image per pseudo-label class present
    shards = [np.load(io.BytesIO(stack.store.get_bytes(keys.shard_key(job["id"], k)))) for k in range(2)]
    all_labels = np.concatenate([shard["label"] for shard in shards])
    assert set(labels.tolist()) == set(all_labels.tolist())


@pytest.fixture
def shards_of_two(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_SHARD_SIZE", "2")  # before the stack reads the settings


def test_class_conditional_model_through_the_api_generates_every_class_evenly(shards_of_two, stack) -> None:
    client = stack.client
    trained = client.post("/jobs/train", json={"kind": "diffusion", "dataset": "digits", "epochs": 1,
                                                "batch_size": 128, "class_conditional": True})
    assert trained.status_code == 202, trained.text
    model_job = stack.wait(trained.json()["id"], until={"succeeded", "failed", "canceled"}, timeout=180)
    assert model_job["status"] == "succeeded", model_job["error"]
    body = small_generation(model=f"job:{model_job['id']}", count=30, steps=2, batch_size=2, loss="none")
    created = client.post("/jobs/generate", json=body)
    assert created.status_code == 202, created.text
    job = stack.wait(created.json()["id"], until={"succeeded", "failed", "canceled"}, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert job["plan"]["shards"] == 15  # shards of two images: fewer than the ten classes
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()["metrics"]
    assert metrics["class_label_histogram"] == [3] * 10  # every class, evenly, over the whole job
    labels = []
    for shard in range(15):
        with np.load(io.BytesIO(stack.store.get_bytes(keys.shard_key(job["id"], shard)))) as npz:
            assert npz["class_label"].dtype == np.int64 and npz["label"].shape == npz["class_label"].shape
            labels += npz["class_label"].tolist()
    assert labels == [i % 10 for i in range(30)]

"""Tracking of training jobs and experiments: the per-step curve in metrics.json (always), TensorBoard
event files under the job's artifacts read back record by record, and an MLflow run in a file store (params =
the spec, metrics per step and per epoch, the model's config as an artifact). Off by default."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import redis

from core.jobs import keys
from core.jobs.tracking import StepCurve, TrackingConfig, flatten, track_experiment
from core.jobs.training import run_train
from core.settings import Settings
from core.specs import TrainSpec
from core.storage import LocalStore
from tests.service.test_jobs_execute import make_ctx

SPEC = TrainSpec(kind="classifier", dataset="digits", epochs=2, batch_size=256, eval_samples=32,
                 arch_options={"width": 4, "feature_dim": 16}, eval_attack_steps=1)


def read_events(data: bytes) -> list:
    """The Event protos of a TensorBoard event file (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events, at = [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = Event()
        event.ParseFromString(data[at + 12:at + 12 + length])
        events.append(event)
        at += 12 + length + 4
    return events


def test_tracking_is_off_by_default_but_the_step_curve_is_kept(settings: Settings, store: LocalStore,
                                                               redis_client: redis.Redis) -> None:
    ctx = make_ctx(settings, store, redis_client)
    job = ctx.repo.create(kind="train", owner="o", input=SPEC.model_dump(mode="json"))
    assert run_train(ctx, job.id) == "done", ctx.repo.get(job.id).error
    metrics = store.get_json(keys.metrics_key(job.id))
    steps = metrics["steps"]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 2 * 5
    assert all(s["loss"] > 0 for s in steps)
    assert not list(store.list(keys.job_prefix(job.id) + "tensorboard/"))


@pytest.mark.timeout(120)
def test_tensorboard_and_mlflow_get_the_spec_steps_and_epochs(settings: Settings, store: LocalStore,
                                                              redis_client: redis.Redis, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    ctx = make_ctx(settings, store, redis_client, tracking=TrackingConfig(mlflow_uri=uri, tensorboard=True))
    job = ctx.repo.create(kind="train", owner="o", input=SPEC.model_dump(mode="json"))
    assert run_train(ctx, job.id) == "done", ctx.repo.get(job.id).error
    metrics = store.get_json(keys.metrics_key(job.id))
    n_steps = metrics["steps"][-1]["step"]

    files = [i.key for i in store.list(keys.job_prefix(job.id) + "tensorboard/")]
    assert len(files) == 1 and files[0].rsplit("/", 1)[1].startswith("events.out.tfevents.")
    manifest = store.get_json(keys.manifest_key(job.id))
    assert any(a["name"].startswith("tensorboard/events.out.tfevents.") for a in manifest["artifacts"])
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(store.get_bytes(files[0])):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    loss = scalars["train/step_loss"]
    assert [s for s, _ in loss] == list(range(1, n_steps + 1))
    assert [round(v, 4) for _, v in loss] == [round(s["loss"], 4) for s in metrics["steps"]]
    history = metrics["history"]
    val = [round(v, 5) for _, v in scalars["epoch/val_accuracy"]]
    assert val == [round(h["val_accuracy"], 5) for h in history]
    assert scalars["epoch/val_accuracy"][-1][0] == n_steps  # an epoch's record at its last step
    assert "test/clean_acc" in scalars

    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("contrastive-dp").experiment_id])
    assert run.data.tags["cdp.job_id"] == job.id and run.info.status == "FINISHED"
    assert run.data.params["kind"] == "classifier" and run.data.params["arch_options.width"] == "4"
    assert run.data.params["epochs"] == "2"
    history_loss = client.get_metric_history(run.info.run_id, "train/step_loss")
    assert sorted(m.step for m in history_loss) == list(range(1, n_steps + 1))
    assert len(client.get_metric_history(run.info.run_id, "epoch/val_accuracy")) == 2
    assert "config.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_an_experiment_run_holds_its_spec_numbers_and_report(settings: Settings, store: LocalStore,
                                                             redis_client: redis.Redis, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    ctx = make_ctx(settings, store, redis_client, tracking=TrackingConfig(mlflow_uri=uri, tensorboard=True))
    report = {"specs": {"experiment": {"dataset": "digits", "seeds": [0, 1]}},
              "runs": [{"arm": "real only", "seed": s, "metrics": {"worst_acc": 0.4 + s / 10}}
                       for s in (0, 1)],
              "summary": {"arms": {"real only": {"worst_acc": {"mean": 0.45, "std": 0.07}}}}}
    track_experiment(ctx, "e" * 24, report, "<!DOCTYPE html><p>report</p>")
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("contrastive-dp").experiment_id])
    assert run.data.params["dataset"] == "digits" and run.data.tags["cdp.kind"] == "experiment"
    worst = client.get_metric_history(run.info.run_id, "real only/worst_acc")
    assert sorted((m.step, round(m.value, 6)) for m in worst) == [(0, 0.4), (1, 0.5)]
    assert client.get_metric_history(run.info.run_id, "mean/real only/worst_acc")[0].value == 0.45
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.html", "report.json"}
    assert list(store.list(keys.job_prefix("e" * 24) + "tensorboard/events.out.tfevents."))


def test_step_curve_downsamples_to_bucket_means_and_params_flatten() -> None:
    curve = StepCurve()
    for step in range(1, 1001):
        curve.add(step, {"loss": float(step), "flag": True})
    points = curve.downsampled(max_points=100)
    assert len(points) == 100 and points[0] == {"step": 10, "loss": 5.5} and points[-1]["step"] == 1000
    assert flatten({"a": {"b": 1}, "c": [1, 2], "d": {}}) == {"a.b": "1", "c": "[1, 2]", "d": "{}"}

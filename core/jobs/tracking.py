"""Where a training job's and an experiment's numbers go besides ``metrics.json``: the per-step training
curve (always, as ``metrics.json["steps"]``), TensorBoard event files under the job's artifacts
(``jobs/<id>/tensorboard/events.out.tfevents.*``, with ``CDP_TENSORBOARD=true``) and an MLflow run (with
``CDP_MLFLOW_TRACKING_URI``): params = the spec, metrics per step and per epoch, artifacts = the report or the
model's config and card. Both are off by default.

TensorBoard files are written by ``tensorboardX`` (a small pure-Python writer; TensorBoard itself is not
needed to write them). MLflow goes through ``mlflow-skinny``'s :class:`MlflowClient` with an explicit run id
(no process-global active run, so concurrent jobs in one worker never mix), imported only when a URI is
set. A file store (``file:///path``) needs ``MLFLOW_ALLOW_FILE_STORE=true`` since MLflow 3; an MLflow server
(``http://host:5000``) or a database URI work as MLflow documents them. A tracking backend that fails is
logged and switched off for that job; it never fails the job.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.progress import ProgressEvent, Stage

log = logging.getLogger(__name__)

# What of a finished model goes to MLflow: its config and, where the trainer wrote one, its model card.
MODEL_CARD_FILES = ("config.json", "README.md", "model_card.md")
TENSORBOARD_DIR = "tensorboard/"
MAX_CURVE_POINTS = 500  # the per-step curve in metrics.json: bucket means beyond this many steps
_PARAM_CHARS = 500


@dataclass(frozen=True)
class TrackingConfig:
    mlflow_uri: str | None = None
    mlflow_experiment: str = "contrastive-dp"
    tensorboard: bool = False


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": "1", "c": "[1, 2]"}`` (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:_PARAM_CHARS]
    return out


def _tag(name: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_ - . / `` and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)[:250]


class StepCurve:
    """The numbers a trainer reports with each step (``Stage.TRAIN`` events with ``metrics``)."""

    def __init__(self) -> None:
        self.points: list[tuple[int, dict[str, float]]] = []

    def add(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        values = {k: v for k, v in ((k, _number(v)) for k, v in metrics.items()) if v is not None}
        if values:
            self.points.append((step, values))
        return values

    def downsampled(self, max_points: int = MAX_CURVE_POINTS) -> list[dict[str, float]]:
        """At most ``max_points`` records ``{"step": s, key: mean, ...}``: consecutive steps averaged in
        equal buckets (``step`` is each bucket's last step)."""
        if not self.points:
            return []
        size = max(1, math.ceil(len(self.points) / max_points))
        out = []
        for start in range(0, len(self.points), size):
            bucket = self.points[start:start + size]
            keys = sorted({k for _, values in bucket for k in values})
            record: dict[str, float] = {"step": bucket[-1][0]}
            for key in keys:
                seen = [values[key] for _, values in bucket if key in values]
                record[key] = sum(seen) / len(seen)
            out.append(record)
        return out


class Tracker:
    """The TensorBoard writer and the MLflow run of one job (either may be absent)."""

    def __init__(self, config: TrackingConfig | None, *, job_id: str, kind: str, name: str,
                 params: Mapping[str, Any], local_dir: Path) -> None:
        config = config or TrackingConfig()
        self.job_id, self.local_dir = job_id, local_dir
        self._tb: Any = None
        self._mlflow: Any = None
        self._run_id: str | None = None
        if config.tensorboard:
            try:
                from tensorboardX import SummaryWriter

                local_dir.mkdir(parents=True, exist_ok=True)
                self._tb = SummaryWriter(logdir=str(local_dir), flush_secs=30)
                self._tb.add_text("spec", "\n".join(f"    {k}: {v}" for k, v in flatten(params).items()))
            except Exception as exc:  # tracking never fails a job
                log.warning("job %s: TensorBoard logging is off: %s", job_id, exc)
                self._tb = None
        if config.mlflow_uri:
            try:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=config.mlflow_uri)
                found = client.get_experiment_by_name(config.mlflow_experiment)
                experiment_id = (found.experiment_id if found is not None
                                 else client.create_experiment(config.mlflow_experiment))
                run = client.create_run(experiment_id, run_name=name,
                                        tags={"cdp.job_id": job_id, "cdp.kind": kind})
                self._mlflow, self._run_id = client, run.info.run_id
                from mlflow.entities import Param

                items = [Param(k, v) for k, v in flatten(params).items()]
                for start in range(0, len(items), 100):
                    client.log_batch(self._run_id, params=items[start:start + 100])
            except Exception as exc:
                log.warning("job %s: MLflow logging is off: %s", job_id, exc)
                self._mlflow = None

    @property
    def active(self) -> bool:
        return self._tb is not None or self._mlflow is not None

    def scalars(self, values: Mapping[str, float], step: int, *, prefix: str = "") -> None:
        for key, value in values.items():
            number = _number(value)
            if number is None:
                continue
            if self._tb is not None:
                self._tb.add_scalar(f"{prefix}{key}", number, step)
            if self._mlflow is not None:
                try:
                    self._mlflow.log_metric(self._run_id, _tag(f"{prefix}{key}"), number, step=step)
                except Exception as exc:
                    log.warning("job %s: MLflow logging stopped: %s", self.job_id, exc)
                    self._mlflow = None

    def artifacts(self, paths: Iterable[Path]) -> None:
        if self._mlflow is None:
            return
        for path in paths:
            if path.is_file():
                try:
                    self._mlflow.log_artifact(self._run_id, str(path))
                except Exception as exc:
                    log.warning("job %s: MLflow artifact %s not logged: %s", self.job_id, path.name, exc)

    def close(self, status: str = "FINISHED") -> list[Path]:
        """Ends the MLflow run; flushes and closes TensorBoard, returning its event files."""
        if self._mlflow is not None:
            try:
                self._mlflow.set_terminated(self._run_id, status=status)
            except Exception as exc:
                log.warning("job %s: MLflow run not ended: %s", self.job_id, exc)
            self._mlflow = None
        if self._tb is None:
            return []
        self._tb.close()
        self._tb = None
        return sorted(self.local_dir.glob("events.out.tfevents.*"))


class TrackedProgress:
    """A ProgressFn in front of the job's own: forwards each event first (its cancel and lease checks may
    raise), then records train-step numbers in :attr:`curve` and sends them and each epoch's record to the
    tracker. ``steps`` counts events, so a trainer that resumes continues the curve from its own step."""

    def __init__(self, inner: Callable[[ProgressEvent], None], tracker: Tracker) -> None:
        self.inner, self.tracker = inner, tracker
        self.curve = StepCurve()
        self._step = 0

    @property
    def last_step(self) -> int:
        return self._step

    def __call__(self, event: ProgressEvent, /) -> None:
        self.inner(event)
        if event.stage == Stage.TRAIN and event.metrics:
            step = int(event.metrics.get("step", event.current))
            self._step = step
            values = self.curve.add(step, {k: v for k, v in event.metrics.items() if k != "step"})
            if self.tracker.active:
                self.tracker.scalars(values, step, prefix="train/step_")
        elif event.stage == Stage.EPOCH and event.metrics and self.tracker.active:
            record = dict(event.metrics)
            epoch = record.pop("epoch", event.current)
            self.tracker.scalars({k: v for k, v in record.items() if _number(v) is not None},
                                 self._step or int(epoch), prefix="epoch/")


def upload_tensorboard(ctx: Any, job_id: str, event_files: Iterable[Path]) -> None:
    """Put a job's TensorBoard event files into the store under ``jobs/<id>/tensorboard/``."""
    from core.jobs import keys

    for path in event_files:
        ctx.store.put_file(keys.job_prefix(job_id) + TENSORBOARD_DIR + path.name, path,
                           content_type="application/octet-stream")
        path.unlink(missing_ok=True)


def track_experiment(ctx: Any, job_id: str, report: Mapping[str, Any], html: str) -> None:
    """An experiment's run: params = its spec; metrics = each (arm, seed)'s numbers at step = seed and each
    arm's mean; artifacts = report.html and report.json. TensorBoard files go under its artifacts."""
    import json
    import shutil

    config: TrackingConfig | None = ctx.tracking
    if config is None or not (config.mlflow_uri or config.tensorboard):
        return
    spec = report.get("specs", {}).get("experiment", {})
    local = ctx.work_dir / "tensorboard" / job_id
    tracker = Tracker(config, job_id=job_id, kind="experiment", name=f"experiment {job_id}", params=spec,
                      local_dir=local)
    for run in report.get("runs", []):
        tracker.scalars(run.get("metrics") or {}, int(run.get("seed", 0)), prefix=f"{run.get('arm')}/")
    for arm, entry in report["summary"].get("arms", {}).items():
        means = {m: stat["mean"] for m, stat in entry.items() if isinstance(stat, Mapping) and "mean" in stat}
        tracker.scalars(means, 0, prefix=f"mean/{arm}/")
    files = ctx.work_dir / "tracking" / job_id
    files.mkdir(parents=True, exist_ok=True)
    (files / "report.html").write_text(html, encoding="utf-8")
    plain = {k: v for k, v in report.items() if k != "previews"}
    (files / "report.json").write_text(json.dumps(plain, default=str), encoding="utf-8")
    tracker.artifacts([files / "report.html", files / "report.json"])
    upload_tensorboard(ctx, job_id, tracker.close())
    shutil.rmtree(files, ignore_errors=True)

"""What the worker's tasks do: compose the science in core/ with the store and the job record.

Delivery is at-least-once, so every function here is idempotent, and each runs one *unit* under a lease
(:mod:`core.jobs.leases`): a message for a unit that another executor holds does nothing.

- ``run_generate_shard``: shard k of a generation job, seeded from (job seed, k); a shard already in the
  store is complete (objects appear atomically) and is not redone. When the last shard lands, the finalize
  unit is enqueued (unless it already has a message; a duplicate would find the job finished).
- ``run_finalize``: metrics, preview grid, then the manifest, written LAST, then the job succeeds.
- ``run_train``: trains in a local work directory that mirrors ``jobs/<id>/checkpoints/`` in the store; a
  redelivered task restores the checkpoints and the trainer resumes from the last epoch.

Every unit runs inside :func:`_run_unit`, which ends each way a unit can end in a defined state: done; the
job canceled (the progress callable checks the cancel flag between DDIM steps and epochs and raises
:class:`core.progress.Cancelled`); the job failed with its error (any exception of the job itself, the
time limit ``CDP_TASK_TIME_LIMIT_S`` checked in the progress callable, the attempt cap); or, when a
dependency failed (Redis unreachable, the store failing), the lease given up so that the reconciler hands
the unit on, counted as an attempt. Nothing is acknowledged and forgotten. Heavy imports (torch,
diffusers, the trainers) happen inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.data.images import grid_png
from core.jobs import keys
from core.jobs.leases import DeadlineExceeded, Lease, LeaseLost
from core.jobs.queue import Enqueuer, job_priority
from core.jobs.reconcile import shard_count
from core.jobs.records import JobNotFound, JobRepository, is_dependency_error
from core.progress import Cancelled
from core.specs import GenerateSpec, JobRecord, JobStatus, Progress, TrainSpec, job_id_of
from core.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """Everything a task needs, built once per worker process (see worker/tasks.py)."""

    repo: JobRepository
    store: ObjectStore
    enqueuer: Enqueuer
    model_dir: Path
    work_dir: Path
    data_root: Path
    device: str
    shard_size: int  # only for records written before plans froze the shard size
    max_attempts: int
    lease_renew_s: float = 5.0
    time_limit_s: float = 6 * 3600
    speed: Any = None  # core.diffusion.fast.SamplingSpeed for generation (None: the plain fp32 eager loop)
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    models: ModelCache = field(init=False)

    def __post_init__(self) -> None:
        self.models = ModelCache(self)


# --------------------------------------------------------------------------------------------- models
class ModelCache:
    """Loaded diffusion models and classifiers, kept per worker process (a few, least recently used out)."""

    def __init__(self, ctx: WorkerContext, *, capacity: int = 4) -> None:
        self.ctx = ctx
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def local_path(self, ref: str) -> Path:
        """A model directory on local disk: a model-dir entry, or a training job's output (downloaded)."""
        job_id = job_id_of(ref)
        if job_id is None:
            return self.ctx.model_dir / ref
        target = self.ctx.work_dir / "models" / job_id
        if not (target / ".complete").exists():
            download_prefix(self.ctx.store, keys.model_prefix(job_id), target)
            (target / ".complete").write_text("ok")
        return target

    def get(self, kind: str, ref: str) -> Any:
        key = (kind, ref)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        path = self.local_path(ref)
        if kind == "diffusion":
            from core.diffusion import load_diffusion_model

            model = load_diffusion_model(path, device=self.ctx.device)
        else:
            from core.models import load_classifier

            model = load_classifier(path, device=self.ctx.device)
        self._items[key] = model
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return model


# ------------------------------------------------------------------------------------------- helpers
def download_prefix(store: ObjectStore, prefix: str, target: Path) -> int:
    """Copy every object under ``prefix`` to ``target/<rest of key>``; returns the number of files."""
    count = 0
    for info in store.list(prefix):
        store.download_file(info.key, target / info.key[len(prefix):])
        count += 1
    return count


class DirectorySync:
    """Uploads new or changed files of a local directory under a store prefix (checkpoints each epoch)."""

    def __init__(self, store: ObjectStore, local: Path, prefix: str) -> None:
        self.store, self.local, self.prefix = store, local, prefix
        self._seen: dict[str, tuple[int, int]] = {}

    def __call__(self) -> int:
        uploaded = 0
        for path in sorted(p for p in self.local.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = path.relative_to(self.local).as_posix()
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(rel) == signature:
                continue
            self.store.put_file(self.prefix + rel, path)
            self._seen[rel] = signature
            uploaded += 1
        return uploaded


def shard_seed(seed: int, shard: int) -> int:
    """An independent 63-bit seed per shard, derived from (job seed, shard index)."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def shard_size_of(job: JobRecord, spec: GenerateSpec, shard: int, default_shard_size: int) -> int:
    size = job.plan.shard_size or default_shard_size
    return min(size, spec.count - shard * size)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _run_unit(ctx: WorkerContext, job_id: str, unit: str, message_id: str,
              work: Callable[[JobRecord, Lease], str], *, count_attempts: bool = True) -> str:
    """Run one unit under its lease; returns what happened ("done", "skipped", "busy", "canceled",
    "failed", "lease-lost", "released"). A job that ends here and is a step of an experiment wakes its
    parent. ``count_attempts=False`` for an experiment's coordinating step, which runs many times."""
    outcome = _run_unit_once(ctx, job_id, unit, message_id, work, count_attempts=count_attempts)
    if outcome in ("done", "canceled", "failed"):
        _wake_parent(ctx, job_id)
    return outcome


def _wake_parent(ctx: WorkerContext, job_id: str) -> None:
    try:
        job = ctx.repo.get(job_id)
        if job.parent is not None and job.terminal:
            ctx.enqueuer.unit(job.parent, "experiment")
    except Exception as exc:  # the reconciler wakes it at its next pass anyway
        log.warning("job %s: could not wake its parent: %s", job_id, exc)


def _run_unit_once(ctx: WorkerContext, job_id: str, unit: str, message_id: str,
                   work: Callable[[JobRecord, Lease], str], *, count_attempts: bool) -> str:
    lease: Lease | None = None
    try:
        try:
            job = ctx.repo.get(job_id)
        except JobNotFound:  # e.g. a stale message from another store; nothing to do
            log.warning("task for unknown job %s ignored", job_id)
            return "skipped"
        if job.terminal:
            return "skipped"
        if job.cancel_requested or ctx.repo.cancel_requested(job_id):
            ctx.repo.finish(job_id, "canceled")
            return "canceled"
        lease = ctx.repo.leases.acquire(job_id, unit, message_id=message_id, holder=ctx.holder)
        if lease is None:
            log.info("job %s: %s is held by %s; message %s dropped", job_id, unit,
                     ctx.repo.leases.holder(job_id, unit), message_id)
            return "busy"
        deadline = time.monotonic() + ctx.time_limit_s
        lease.start_heartbeat(ctx.lease_renew_s, deadline=deadline + ctx.repo.leases.ttl_ms / 1000)
        attempt = ctx.repo.count_attempt(job_id, unit) if count_attempts else 1
        if attempt > ctx.max_attempts:
            last = ctx.repo.unit_error(job_id, unit)
            ctx.repo.finish(job_id, "failed", error=f"{unit} was started {attempt} times (limit "
                            f"{ctx.max_attempts}); " + (f"last error: {last}" if last else
                                                          "its worker was lost each time"))
            return "failed"
        log.info("job %s: %s started (attempt %d, lease %d, %s)", job_id, unit, attempt, lease.token,
                 ctx.holder)
        _UNIT.lease, _UNIT.deadline = lease, deadline
        try:
            return work(job, lease)
        finally:
            _UNIT.lease, _UNIT.deadline = None, None
    except Cancelled:
        return _settle(ctx, job_id, unit, lease, "canceled")
    except LeaseLost as exc:
        log.warning("job %s: %s", job_id, exc)
        return "lease-lost"
    except Exception as exc:
        if is_dependency_error(exc):
            if lease is None:  # this message still stands for the unit: the task retries it (worker/tasks.py)
                raise
            return _give_up(ctx, job_id, unit, exc)
        log.exception("job %s failed in %s", job_id, unit)
        return _settle(ctx, job_id, unit, lease, "failed", error=_error_text(exc))
    finally:
        if lease is not None:
            lease.release()


def _settle(ctx: WorkerContext, job_id: str, unit: str, lease: Lease | None, status: JobStatus, *,
            error: str | None = None) -> str:
    """Finish the job, unless this executor lost the unit meanwhile; a store that cannot take the final
    write makes the unit give up its lease instead (the next attempt meets the same error and writes it)."""
    try:
        if lease is not None:
            lease.check()
        ctx.repo.finish(job_id, status, error=error)
        return status
    except LeaseLost as exc:
        log.warning("job %s: %s", job_id, exc)
        return "lease-lost"
    except Exception as exc:
        if is_dependency_error(exc):
            return _give_up(ctx, job_id, unit, exc)
        raise


def _give_up(ctx: WorkerContext, job_id: str, unit: str, exc: BaseException) -> str:
    """A dependency failed: remember why and release the unit; the reconciler re-enqueues it."""
    text = _error_text(exc)
    log.warning("job %s: %s gives up its lease, a dependency failed (%s); the reconciler retries it",
                job_id, unit, text)
    ctx.repo.note_unit_error(job_id, unit, text)
    return "released"


class _UnitContext(threading.local):
    lease: Lease | None = None
    deadline: float | None = None


_UNIT = _UnitContext()  # the unit this thread runs: its progress callbacks check lease and deadline


class _JobProgress:
    """The core ProgressFn of one unit of work: checks the cancel flag and mirrors progress to Redis."""

    def __init__(self, ctx: WorkerContext, job_id: str, *, part: Callable[[str, float], float],
                 min_interval_s: float = 0.25) -> None:
        self.ctx, self.job_id, self.part = ctx, job_id, part
        self.min_interval_s = min_interval_s
        self._last = 0.0

    def __call__(self, *, stage: str, current: int, total: int, message: str = "",
                 metrics: dict[str, Any] | None = None) -> None:
        if _UNIT.lease is not None:
            _UNIT.lease.check()
        if _UNIT.deadline is not None and time.monotonic() > _UNIT.deadline:
            raise DeadlineExceeded(f"the unit ran longer than the time limit of {self.ctx.time_limit_s:g} s "
                                   "(CDP_TASK_TIME_LIMIT_S)")
        if self.ctx.repo.cancel_requested(self.job_id):
            raise Cancelled(f"job {self.job_id} was canceled")
        now = time.monotonic()
        if now - self._last < self.min_interval_s and current < total:
            return
        self._last = now
        local = current / total if total > 0 else 0.0
        fraction = min(1.0, max(0.0, self.part(stage, local)))
        self.ctx.repo.set_progress(self.job_id, Progress(fraction=fraction,
                                                         current=current, total=total, stage=stage,
                                                         message=message))


# ---------------------------------------------------------------------------------------- generation
def run_generate_shard(ctx: WorkerContext, job_id: str, shard: int, message_id: str = "direct") -> str:
    key = keys.shard_key(job_id, shard)
    if ctx.store.exists(key):  # a redelivered, already complete shard: never redone
        _maybe_enqueue_finalize(ctx, job_id)
        return "exists"

    def work(job: JobRecord, lease: Lease) -> str:
        spec = job.generate_spec()
        n_shards = shard_count(job, ctx.shard_size)
        if not 0 <= shard < n_shards:
            raise ValueError(f"shard={shard} outside 0..{n_shards - 1} for job {job_id}")
        ctx.repo.mark_running(job_id)
        data = _generate_shard_arrays(ctx, job, spec, shard, n_shards)
        lease.check()
        images_key, labels_key = keys.shard_npy_keys(job_id, shard)
        ctx.store.put_bytes(images_key, _npy_bytes(data["image"]), content_type="application/octet-stream")
        ctx.store.put_bytes(labels_key, _npy_bytes(data["label"]), content_type="application/octet-stream")
        ctx.store.put_bytes(key, _npz_bytes(**data), content_type="application/octet-stream")  # complete
        log.info("job %s: shard %d written (%d images, lease %d)", job_id, shard, len(data["label"]),
                 lease.token)
        ctx.repo.note_shard_done(job_id, shard)
        _maybe_enqueue_finalize(ctx, job_id)
        return "done"

    return _run_unit(ctx, job_id, f"shard-{shard}", message_id, work)


def _generate_shard_arrays(ctx: WorkerContext, job: JobRecord, spec: GenerateSpec, shard: int,
                           n_shards: int) -> dict[str, np.ndarray]:
    from core.generation import GenerationParams, generate

    diffusion = ctx.models.get("diffusion", spec.model)
    classifier = ctx.models.get("classifier", spec.classifier)
    extractor = (ctx.models.get("classifier", spec.feature_extractor) if spec.feature_extractor is not None
                 else None)
    real_images = None
    if spec.strategy in ("real_positive", "real_negative"):
        from core.data import load_dataset

        real_images = load_dataset(spec.dataset, "train", root=ctx.data_root).images
    params = GenerationParams.from_spec(spec)
    done_before = ctx.repo.shards_done(job.id)
    progress = _JobProgress(ctx, job.id, part=lambda stage, f: (
        done_before + (0.95 * f if stage == "sampling" else 0.95 + 0.05 * f)) / n_shards)
    started = time.perf_counter()
    count = shard_size_of(job, spec, shard, ctx.shard_size)
    result = generate(diffusion, classifier, params=params, count=count,
                      seed=shard_seed(spec.seed, shard), real_images=real_images, device=ctx.device,
                      progress=progress, speed=ctx.speed, feature_extractor=extractor, head_seed=spec.seed,
                      label_offset=shard * (job.plan.shard_size or ctx.shard_size))
    elapsed = time.perf_counter() - started
    arrays = {
        "image": np.asarray(result.images, dtype=np.uint8),
        "label": np.asarray(result.labels, dtype=np.int64),
        "confidence": np.asarray(result.confidence, dtype=np.float32),
        "entropy": np.asarray(result.entropy, dtype=np.float32),
        "elapsed_s": np.asarray(elapsed, dtype=np.float64),
    }
    if result.class_labels is not None:  # the conditioning label, next to the pseudo-label
        arrays["class_label"] = np.asarray(result.class_labels, dtype=np.int64)
    return arrays


def _maybe_enqueue_finalize(ctx: WorkerContext, job_id: str) -> bool:
    """Enqueue the finalize unit once every shard is in the store, unless it already has a message (two
    shards finishing together may both send one: the second finds the job finished and does nothing)."""
    try:
        job = ctx.repo.get(job_id)
    except JobNotFound:
        return False
    if job.terminal:
        return False
    n_shards = shard_count(job, ctx.shard_size)
    listed = ctx.store.list(keys.job_prefix(job_id) + "shards/")
    present = sum(1 for info in listed if info.key.endswith(".npz"))  # not the .npy pairs beside them
    if present < n_shards or ctx.repo.leases.has_state(job_id, "finalize"):
        return False
    ctx.enqueuer.unit(job_id, "finalize", priority=job_priority(job))
    return True


def load_shards(store: ObjectStore, job_id: str, n_shards: int) -> dict[str, np.ndarray]:
    """All shards of a job concatenated in shard order (plus ``elapsed_s``: the summed sampling time)."""
    parts: dict[str, list[np.ndarray]] = {"image": [], "label": [], "confidence": [], "entropy": []}
    elapsed = 0.0
    for shard in range(n_shards):
        with np.load(io.BytesIO(store.get_bytes(keys.shard_key(job_id, shard)))) as npz:
            for name in ("image", "label", "confidence", "entropy"):
                parts[name].append(npz[name])
            if "class_label" in npz.files:
                parts.setdefault("class_label", []).append(npz["class_label"])
            elapsed += float(npz["elapsed_s"]) if "elapsed_s" in npz.files else 0.0
    out = {name: np.concatenate(arrays) for name, arrays in parts.items() if arrays}
    out["elapsed_s"] = np.asarray(elapsed)
    return out


def run_finalize(ctx: WorkerContext, job_id: str, message_id: str = "direct") -> str:
    def work(job: JobRecord, lease: Lease) -> str:
        spec = job.generate_spec()
        from core.data import load_dataset
        from core.generation import sample_metrics, sample_quality, train_on_synthetic_test_on_real

        ctx.repo.set_progress(job_id, Progress(fraction=0.99, current=0, total=1, stage="finalizing"))
        data = load_shards(ctx.store, job_id, shard_count(job, ctx.shard_size))
        classifier = ctx.models.get("classifier", spec.classifier)
        images, labels = data["image"], data["label"]
        if spec.selection is not None:
            images, labels = _select(ctx, spec, classifier, data)
            ctx.store.put_bytes(keys.job_prefix(job_id) + "selected.npz",
                                _npz_bytes(image=images, label=labels))
        metrics = dict(sample_metrics(classifier, images, labels))
        train = load_dataset(spec.dataset, "train", root=ctx.data_root)
        judge = ctx.models.get("classifier", spec.judge) if spec.judge is not None else None
        metrics.update(sample_quality(images, labels, real_images_uint8_nhwc=train.images, judge=judge,
                                      num_classes=train.info.num_classes, device=ctx.device))
        if spec.tstr:
            test = load_dataset(spec.dataset, "test", root=ctx.data_root)
            metrics["tstr_accuracy"] = train_on_synthetic_test_on_real(
                images, labels, test.images, test.labels, num_classes=train.info.num_classes, seed=spec.seed,
                device=ctx.device)
        elapsed = float(data["elapsed_s"])
        metrics.update(
            generated=int(len(data["label"])),
            class_label_histogram=(np.bincount(data["class_label"], minlength=train.info.num_classes).tolist()
                                   if "class_label" in data else None),
            mean_confidence_all=float(np.mean(data["confidence"])),
            mean_entropy_all=float(np.mean(data["entropy"])),
            sampling_seconds=elapsed,
            images_per_s=float(len(data["label"]) / elapsed) if elapsed > 0 else None,
            spec=spec.model_dump(mode="json"),
        )
        ctx.store.put_json(keys.metrics_key(job_id), _jsonable(metrics))
        ctx.store.put_bytes(keys.preview_key(job_id), grid_png(images), content_type="image/png")
        lease.check()
        write_manifest(ctx.store, job_id)
        ctx.repo.finish(job_id, "succeeded")
        return "done"

    return _run_unit(ctx, job_id, "finalize", message_id, work)


def _select(ctx: WorkerContext, spec: GenerateSpec, classifier: Any, data: dict[str, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray]:
    from core.contrastive import select_top_k

    assert spec.selection is not None
    index = select_top_k(classifier, data["image"], data["label"], criterion=spec.selection.criterion,
                         k=spec.selection.top_k, device=ctx.device)
    index = np.asarray(index, dtype=np.int64)
    return data["image"][index], data["label"][index]


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays and non-finite floats -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    return value


def write_manifest(store: ObjectStore, job_id: str) -> dict[str, Any]:
    """``manifest.json``: every artifact of the job with size and sha256. Written last: its presence means
    the job's outputs are complete."""
    prefix = keys.job_prefix(job_id)
    skip = {keys.record_key(job_id), keys.manifest_key(job_id)}
    artifacts = []
    for info in store.list(prefix):
        if info.key in skip:
            continue
        digest = info.sha256 or store.stat(info.key).sha256
        if digest is None:
            digest = hashlib.sha256(store.get_bytes(info.key)).hexdigest()
        artifacts.append({"name": info.key[len(prefix):], "size": info.size, "sha256": digest})
    manifest = {"job_id": job_id, "artifacts": artifacts}
    store.put_json(keys.manifest_key(job_id), manifest)
    return manifest


# ------------------------------------------------------------------------------------------ training
def run_train(ctx: WorkerContext, job_id: str, message_id: str = "direct") -> str:
    def work(job: JobRecord, lease: Lease) -> str:
        spec = job.train_spec()
        ctx.repo.mark_running(job_id)
        out_dir = ctx.work_dir / "jobs" / job_id
        restored = download_prefix(ctx.store, keys.checkpoint_prefix(job_id), out_dir)
        if restored:
            log.info("job %s: restored %d checkpoint files, resuming", job_id, restored)
        sync = DirectorySync(ctx.store, out_dir, keys.checkpoint_prefix(job_id))
        progress = _TrainProgress(ctx, job_id, sync, epochs=spec.epochs)
        from core.jobs.training import train_for_spec

        result = train_for_spec(spec, out_dir=out_dir, data_root=ctx.data_root, device=ctx.device,
                                progress=progress, synthetic_dirs=_synthetic_dirs(ctx, spec))
        sync()
        model_dir = result.pop("_model_dir", None)
        if model_dir is not None:
            for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
                ctx.store.put_file(keys.model_prefix(job_id) + path.relative_to(model_dir).as_posix(), path)
        ctx.store.put_json(keys.metrics_key(job_id), _jsonable(result))
        lease.check()
        write_manifest(ctx.store, job_id)
        ctx.repo.finish(job_id, "succeeded")
        shutil.rmtree(out_dir, ignore_errors=True)
        return "done"

    return _run_unit(ctx, job_id, "train", message_id, work)


class _TrainProgress(_JobProgress):
    """Progress of a training run; syncs the checkpoint directory to the store whenever an epoch ends."""

    def __init__(self, ctx: WorkerContext, job_id: str, sync: DirectorySync, *, epochs: int) -> None:
        # training steps fill 0..90 %, the final evaluation the rest
        super().__init__(ctx, job_id, part=lambda stage, f: 0.9 * f if stage in ("train", "epoch")
                         else 0.9 + 0.1 * f)
        self.sync = sync

    def __call__(self, *, stage: str, current: int, total: int, message: str = "",
                 metrics: dict[str, Any] | None = None) -> None:
        if stage == "epoch":  # the trainers report an epoch after its checkpoint is on disk
            self.sync()
        super().__call__(stage=stage, current=current, total=total, message=message, metrics=metrics)


def _synthetic_dirs(ctx: WorkerContext, spec: TrainSpec) -> list[Path]:
    """Download the shards of each referenced generation job (once per worker) and return their dirs."""
    dirs = []
    for ref in spec.synthetic:
        job_id = job_id_of(ref)
        assert job_id is not None
        target = ctx.work_dir / "synthetic" / job_id
        if not (target / ".complete").exists():
            selected = keys.job_prefix(job_id) + "selected.npz"
            try:
                ctx.store.download_file(selected, target / "shards" / "0.npz")
            except ObjectNotFound:
                download_prefix(ctx.store, keys.job_prefix(job_id) + "shards/", target / "shards")
            (target / ".complete").write_text("ok")
        dirs.append(target / "shards")
    return dirs

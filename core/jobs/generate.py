"""Generation jobs: one unit per shard, then a finalize unit (worker side; torch is imported lazily).

- ``run_generate_shard``: shard k of a generation job, seeded from (job seed, k) by :func:`unit_seed`; a
  shard already in the store is complete (objects appear atomically) and is not redone. When the last shard
  lands, the finalize unit is enqueued (unless it already has a message; a duplicate would find the job
  finished).
- ``run_finalize``: metrics, preview grid, the one-file export ``dataset.npz`` (:mod:`core.jobs.exports`),
  then the manifest, written LAST, then the job succeeds.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np

from core import options
from core.data.images import grid_png
from core.jobs import keys
from core.jobs.artifacts import jsonable, npy_bytes, npz_bytes, write_manifest
from core.jobs.context import JobProgress, WorkerContext, run_unit, unit_seed
from core.jobs.datasets import dataset_root, load_split
from core.jobs.errors import JobNotFound
from core.jobs.exports import write_export
from core.jobs.leases import Lease
from core.jobs.queue import job_priority
from core.jobs.reconcile import shard_count
from core.progress import Stage
from core.specs import GenerateSpec, JobRecord, Progress
from core.storage import ObjectStore

log = logging.getLogger(__name__)


def shard_size_of(job: JobRecord, spec: GenerateSpec, shard: int, default_shard_size: int) -> int:
    size = job.plan.shard_size or default_shard_size
    return min(size, spec.count - shard * size)


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
        ctx.store.put_bytes(images_key, npy_bytes(data["image"]), content_type="application/octet-stream")
        ctx.store.put_bytes(labels_key, npy_bytes(data["label"]), content_type="application/octet-stream")
        ctx.store.put_bytes(key, npz_bytes(**data), content_type="application/octet-stream")  # complete
        log.info("job %s: shard %d written (%d images, lease %d)", job_id, shard, len(data["label"]),
                 lease.token)
        ctx.repo.note_shard_done(job_id, shard)
        _maybe_enqueue_finalize(ctx, job_id)
        return "done"

    return run_unit(ctx, job_id, f"shard-{shard}", message_id, work)


def _generate_shard_arrays(ctx: WorkerContext, job: JobRecord, spec: GenerateSpec, shard: int,
                           n_shards: int) -> dict[str, np.ndarray]:
    from core.generation import GenerationParams, generate

    diffusion = ctx.models.get("diffusion", spec.model)
    classifier = ctx.models.get("classifier", spec.classifier)
    extractor = (ctx.models.get("classifier", spec.feature_extractor) if spec.feature_extractor is not None
                 else None)
    real_images = None
    if spec.strategy in options.REAL_STRATEGIES:
        root = dataset_root(ctx.store, spec.dataset, data_root=ctx.data_root, work_dir=ctx.work_dir)
        real_images = load_split(spec.dataset, "train", root=root).images
    params = GenerationParams.from_spec(spec)
    done_before = ctx.repo.shards_done(job.id)
    progress = JobProgress(ctx, job.id, "generate", offset=done_before / n_shards, scale=1 / n_shards)
    started = time.perf_counter()
    count = shard_size_of(job, spec, shard, ctx.shard_size)
    result = generate(diffusion, classifier, params=params, count=count,
                      seed=unit_seed(spec.seed, shard), real_images=real_images, device=ctx.device,
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
        from core.quality import (
            sample_metrics,
            sample_quality,
            sample_warnings,
            train_on_synthetic_test_on_real,
        )

        ctx.repo.set_progress(job_id, Progress(fraction=0.99, current=0, total=1, stage=Stage.FINALIZING))
        data = load_shards(ctx.store, job_id, shard_count(job, ctx.shard_size))
        classifier = ctx.models.get("classifier", spec.classifier)
        images, labels = data["image"], data["label"]
        if spec.selection is not None:
            images, labels = _select(ctx, spec, classifier, data)
            ctx.store.put_bytes(keys.job_prefix(job_id) + "selected.npz",
                                npz_bytes(image=images, label=labels))
        metrics = dict(sample_metrics(classifier, images, labels))
        root = dataset_root(ctx.store, spec.dataset, data_root=ctx.data_root, work_dir=ctx.work_dir)
        train = load_split(spec.dataset, "train", root=root)
        judge = ctx.models.get("classifier", spec.judge) if spec.judge is not None else None
        metrics.update(sample_quality(images, labels, real_images_uint8_nhwc=train.images, judge=judge,
                                      num_classes=train.info.num_classes, device=ctx.device))
        if spec.tstr:
            test = load_split(spec.dataset, "test", root=root)
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
        metrics["warnings"] = sample_warnings(metrics, num_classes=train.info.num_classes)
        for warning in metrics["warnings"]:
            log.warning("job %s: %s", job_id, warning)
        ctx.store.put_json(keys.metrics_key(job_id), jsonable(metrics))
        ctx.store.put_bytes(keys.preview_key(job_id), grid_png(images), content_type="image/png")
        write_export(ctx.store, job_id, shard_count(job, ctx.shard_size), work_dir=ctx.work_dir)
        lease.check()
        write_manifest(ctx.store, job_id)
        ctx.repo.finish(job_id, "succeeded", warnings=metrics["warnings"])
        return "done"

    return run_unit(ctx, job_id, "finalize", message_id, work)


def _select(ctx: WorkerContext, spec: GenerateSpec, classifier: Any, data: dict[str, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray]:
    from core.contrastive import select_top_k

    assert spec.selection is not None
    index = select_top_k(classifier, data["image"], data["label"], criterion=spec.selection.criterion,
                         k=spec.selection.top_k, device=ctx.device)
    index = np.asarray(index, dtype=np.int64)
    return data["image"][index], data["label"][index]

"""Evaluation jobs: clean and adversarial accuracy of a finished model, per sample, resumable in chunks.

The split (all of it, or with ``limit`` a subset spread evenly over the classes:
:meth:`core.data.ImageDataset.limit_index`) is cut into chunks of ``CHUNK`` images; each chunk's per-sample
results land in ``jobs/<id>/chunks/<k>.npz`` as soon as they are computed, so a redelivered unit skips the
chunks already in the store. Chunk k's attacks are seeded with :func:`core.jobs.context.unit_seed` (spec
seed, k), like a generation shard. The sanity checks (zero gradients, randomness, probability outputs, step
monotonicity; :func:`core.training.masking_checks.check_gradient_masking`) run once, on the first batch, and
are kept in ``chunks/sanity.json``. The result: ``metrics.json`` (``clean_acc``, one ``<attack>_acc`` per
attack, named by :data:`core.training.attacks.ATTACK_TABLE`, ``worst_acc``: correct under every attack,
counts, seconds, the checks with their verdicts) and ``results.npz`` (per-sample index into the split, label
and one boolean column per attack); ``worst_acc`` is the per-sample worst over clean and every attack of the
job, AutoAttack included, all on the same images.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from typing import Any

import numpy as np

from core.jobs import keys
from core.jobs.artifacts import jsonable, npz_bytes, write_manifest
from core.jobs.context import JobProgress, WorkerContext, run_unit, unit_seed
from core.jobs.leases import Lease
from core.progress import Stage, report
from core.specs import EvaluateSpec, JobRecord
from core.storage import ObjectNotFound

log = logging.getLogger(__name__)

CHUNK = 256  # images per stored chunk (a unit of resumption)
SANITY_BATCH = 64


def chunk_key(job_id: str, chunk: int) -> str:
    return f"{keys.job_prefix(job_id)}chunks/{chunk}.npz"


def run_evaluate(ctx: WorkerContext, job_id: str, message_id: str = "direct") -> str:
    def work(job: JobRecord, lease: Lease) -> str:
        spec = job.evaluate_spec()
        ctx.repo.mark_running(job_id)
        metrics, table = evaluate_job(ctx, job_id, spec, lease)
        lease.check()
        ctx.store.put_bytes(keys.job_prefix(job_id) + "results.npz", npz_bytes(**table))
        ctx.store.put_json(keys.metrics_key(job_id), jsonable(metrics))
        write_manifest(ctx.store, job_id)
        ctx.repo.finish(job_id, "succeeded")
        return "done"

    return run_unit(ctx, job_id, "evaluate", message_id, work)


def evaluate_job(ctx: WorkerContext, job_id: str, spec: EvaluateSpec, lease: Lease
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    import torch

    from core.jobs.datasets import dataset_root, load_split
    from core.training.attacks import ATTACK_TABLE
    from core.training.masking_checks import check_gradient_masking, sanity_verdicts
    from core.training.robustness import per_sample_robustness

    model = ctx.models.get("classifier", spec.model)
    root = dataset_root(ctx.store, spec.dataset, data_root=ctx.data_root, work_dir=ctx.work_dir)
    data = load_split(spec.dataset, spec.split, root=root)
    index = data.limit_index(spec.limit)
    x_all, y_all = data.subset(index).to_tensors("cpu")
    n = int(y_all.shape[0])
    n_chunks = math.ceil(n / CHUNK)
    progress = JobProgress(ctx, job_id, "evaluate")
    step_size = spec.step_size if spec.step_size is not None else 2.5 * spec.eps / spec.steps

    sanity_key = f"{keys.job_prefix(job_id)}chunks/sanity.json"
    try:
        sanity = ctx.store.get_json(sanity_key)
    except ObjectNotFound:
        head = slice(0, min(n, SANITY_BATCH))
        messages = check_gradient_masking(model.to(ctx.device), x_all[head].to(ctx.device),
                                          y_all[head].to(ctx.device), eps=spec.eps, steps=spec.steps,
                                          step_size=step_size,
                                          generator=torch.Generator(device="cpu").manual_seed(spec.seed + 1))
        sanity = {"verdicts": sanity_verdicts(messages), "warnings": messages}
        ctx.store.put_json(sanity_key, sanity)

    columns = ["clean", *spec.attacks, "worst"]
    seconds = 0.0
    for k in range(n_chunks):
        key = chunk_key(job_id, k)
        if not ctx.store.exists(key):
            part = slice(k * CHUNK, min(n, (k + 1) * CHUNK))
            started = time.perf_counter()
            masks = per_sample_robustness(
                model, x_all[part], y_all[part], eps=spec.eps, attacks=tuple(spec.attacks), steps=spec.steps,
                step_size=step_size, restarts=spec.restarts, autoattack_version=spec.autoattack_version,
                batch_size=spec.batch_size, device=ctx.device, seed=unit_seed(spec.seed, k))
            elapsed = time.perf_counter() - started
            lease.check()
            ctx.store.put_bytes(key, npz_bytes(**{c: masks[c].numpy() for c in columns},
                                               elapsed_s=np.asarray(elapsed)))
        report(progress, Stage.EVALUATE, k + 1, n_chunks, message=f"chunk {k + 1} of {n_chunks}")

    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for k in range(n_chunks):
        with np.load(io.BytesIO(ctx.store.get_bytes(chunk_key(job_id, k)))) as npz:
            for c in columns:
                parts[c].append(npz[c])
            seconds += float(npz["elapsed_s"])
    table = {c: np.concatenate(v).astype(bool) for c, v in parts.items()}
    table["index"] = index.astype(np.int64)
    table["label"] = y_all.numpy().astype(np.int64)
    metrics: dict[str, Any] = {
        "model": spec.model, "dataset": spec.dataset, "split": spec.split, "count": n,
        "eps": spec.eps, "steps": spec.steps, "step_size": step_size, "restarts": spec.restarts,
        "attacks": list(spec.attacks), "seconds": round(seconds, 3), "chunks": n_chunks,
        "clean_acc": float(table["clean"].mean()), "worst_acc": float(table["worst"].mean()),
        "correct": {c: int(table[c].sum()) for c in columns},
        "class_counts": np.bincount(table["label"], minlength=data.info.num_classes).astype(int).tolist(),
        "sanity": sanity["verdicts"], "warnings": sanity["warnings"],
    }
    for attack in spec.attacks:
        metrics[ATTACK_TABLE[attack].metric] = float(table[attack].mean())
    if "autoattack" in spec.attacks:
        metrics["autoattack_version"] = spec.autoattack_version
    log.info("job %s: evaluated %d images: %s", job_id, n, json.dumps(
        {k: metrics[k] for k in metrics if k.endswith("_acc")}))
    return metrics, table

"""Training jobs: from a :class:`core.specs.TrainSpec` to a trainer call (worker side; imports torch lazily).

``run_train`` is the job's one unit: it trains in a local work directory that mirrors
``jobs/<id>/checkpoints/`` in the store; a redelivered task restores the checkpoints and the trainer resumes
from the last epoch.

Every trainer checkpoints into ``out_dir`` each epoch and resumes from it, so the caller only has to keep
``out_dir`` in sync with the store. Returns the trainer's metrics with two additions: ``_model_dir`` (the
directory holding the finished model, uploaded to ``jobs/<id>/model/``) and, for classifiers, ``test``: the
clean and PGD robust accuracy on the held-out test split at the spec's eps.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.jobs import keys
from core.jobs.artifacts import DirectorySync, download_prefix, jsonable, write_manifest
from core.jobs.context import JobProgress, WorkerContext, run_unit
from core.jobs.datasets import dataset_root, load_split
from core.jobs.leases import Lease
from core.jobs.tracking import MODEL_CARD_FILES, TrackedProgress, Tracker, upload_tensorboard
from core.progress import Cancelled, ProgressFn
from core.specs import JobRecord, TrainSpec, job_id_of
from core.storage import ObjectNotFound

log = logging.getLogger(__name__)

# Files in a trainer's out_dir that are not part of the model it leaves behind.
NOT_MODEL = ("checkpoint.pt", "metrics.json")


def run_train(ctx: WorkerContext, job_id: str, message_id: str = "direct") -> str:
    def work(job: JobRecord, lease: Lease) -> str:
        spec = job.train_spec()
        ctx.repo.mark_running(job_id)
        out_dir = ctx.work_dir / "jobs" / job_id
        restored = download_prefix(ctx.store, keys.checkpoint_prefix(job_id), out_dir)
        if restored:
            log.info("job %s: restored %d checkpoint files, resuming", job_id, restored)
        sync = DirectorySync(ctx.store, out_dir, keys.checkpoint_prefix(job_id))
        tracker = Tracker(ctx.tracking, job_id=job_id, kind=f"train/{spec.kind}",
                          name=f"{spec.kind} {spec.dataset} seed {spec.seed} ({job_id})", params=job.input,
                          local_dir=ctx.work_dir / "tensorboard" / job_id)
        progress = TrackedProgress(JobProgress(ctx, job_id, "train", on_checkpoint=sync), tracker)
        try:
            data_root = dataset_root(ctx.store, spec.dataset, data_root=ctx.data_root, work_dir=ctx.work_dir)
            result = train_for_spec(spec, out_dir=out_dir, data_root=data_root, device=ctx.device,
                                    progress=progress, synthetic_dirs=_synthetic_dirs(ctx, spec))
        except BaseException as exc:
            tracker.close("KILLED" if isinstance(exc, Cancelled) else "FAILED")
            raise
        sync()
        result["steps"] = progress.curve.downsampled()  # the per-step curve (loss, ...): the report's lines
        model_dir = result.pop("_model_dir", None)
        if model_dir is not None:
            for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
                ctx.store.put_file(keys.model_prefix(job_id) + path.relative_to(model_dir).as_posix(), path)
            tracker.artifacts(Path(model_dir) / name for name in MODEL_CARD_FILES)
        if isinstance(result.get("test"), dict):
            tracker.scalars(result["test"], progress.last_step, prefix="test/")
        upload_tensorboard(ctx, job_id, tracker.close())
        ctx.store.put_json(keys.metrics_key(job_id), jsonable(paths_as_job_names(result, out_dir)))
        lease.check()
        write_manifest(ctx.store, job_id)
        ctx.repo.finish(job_id, "succeeded")
        shutil.rmtree(out_dir, ignore_errors=True)
        return "done"

    return run_unit(ctx, job_id, "train", message_id, work)


def paths_as_job_names(value: Any, out_dir: Path) -> Any:
    """A trainer's metrics as the job's clients see them, without this server's paths: a path inside the
    trainer's ``out_dir`` becomes the name of the same file or folder under the job's ``model/`` (where
    ``out_dir`` is uploaded, less its checkpoint and metrics: ``model_dir`` -> ``"model/"``); any other
    absolute path is dropped (a dict loses the key, a list keeps ``None`` in its place)."""
    if isinstance(value, dict):
        named = {k: paths_as_job_names(v, out_dir) for k, v in value.items()}
        return {k: v for k, v in named.items() if v is not _OUTSIDE_OUT_DIR}
    if isinstance(value, list | tuple):
        return [None if v is _OUTSIDE_OUT_DIR else v for v in (paths_as_job_names(v, out_dir) for v in value)]
    if isinstance(value, str | Path) and Path(value).is_absolute():
        path = Path(value)
        if not path.is_relative_to(out_dir):
            return _OUTSIDE_OUT_DIR
        rel = path.relative_to(out_dir).as_posix()
        return "model/" if rel == "." else f"model/{rel}"
    return value


_OUTSIDE_OUT_DIR = object()


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


def train_for_spec(spec: TrainSpec, *, out_dir: Path, data_root: Path, device: str, progress: ProgressFn,
                   synthetic_dirs: Sequence[Path] = ()) -> dict[str, Any]:
    """Train on this host: in this process, or with ``spec.devices`` > 1 on that many torch.distributed ranks
    (this process is rank 0 and keeps ``progress``; ``core.training.distributed.launch``)."""
    from core.training.distributed import launch

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = launch(_train_rank, {"spec": spec, "out_dir": out_dir, "data_root": data_root, "device": device,
                                   "synthetic_dirs": list(synthetic_dirs)},
                     nproc=spec.devices, device=device, progress=progress)  # fmt: skip
    model_dir = out_dir.parent / f"{out_dir.name}-model"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(out_dir, model_dir, ignore=shutil.ignore_patterns(*NOT_MODEL))
    return {**metrics, "_model_dir": str(model_dir)}


def _train_rank(*, spec: TrainSpec, out_dir: Path, data_root: Path, device: str, progress: ProgressFn | None,
                synthetic_dirs: Sequence[Path]) -> dict[str, Any]:
    """One rank of a training job (all of it with one device); the final evaluation runs on rank 0 only."""
    from core.training.distributed import is_main

    train = load_split(spec.dataset, "train", root=data_root)
    if spec.kind == "diffusion":
        from core.training.diffusion import DiffusionTrainConfig, train_diffusion

        config = DiffusionTrainConfig(preset=spec.unet, epochs=spec.epochs, batch_size=spec.batch_size,
                                      class_conditional=spec.class_conditional,
                                      **({"lr": spec.lr} if spec.lr else {}))
        metrics = train_diffusion(train, config=config, out_dir=out_dir, seed=spec.seed, device=device,
                                  progress=progress)
    elif spec.kind == "classifier":
        from core.training.classifier import ClassifierTrainConfig, train_classifier

        val = load_split(spec.dataset, "val", root=data_root)
        config = ClassifierTrainConfig(arch=spec.arch, arch_options=dict(spec.arch_options),
                                       epochs=spec.epochs, batch_size=spec.batch_size,
                                       **({"lr": spec.lr} if spec.lr else {}))
        metrics = train_classifier(train, val, config=config, out_dir=out_dir, seed=spec.seed, device=device,
                                   progress=progress)
        if spec.final_eval and is_main():
            metrics["test"] = _evaluate(spec, out_dir, data_root=data_root, device=device, progress=progress)
    else:
        metrics = _train_trades(spec, train, out_dir=out_dir, data_root=data_root, device=device,
                                progress=progress, synthetic_dirs=synthetic_dirs)
    return metrics


def _evaluate(spec: TrainSpec, model_path: Path, *, data_root: Path, device: str,
              progress: ProgressFn) -> dict[str, Any]:
    """Clean and PGD (CE and CW) robust accuracy of the saved model on the test split."""
    from core.models import load_classifier
    from core.training.robustness import evaluate_robustness

    test = load_split(spec.dataset, "test", root=data_root)
    x, y = test.subset(test.limit_index(spec.eval_samples)).to_tensors("cpu")
    model = load_classifier(model_path, device=device)
    return evaluate_robustness(model, x, y, eps=spec.eps, steps=spec.eval_attack_steps, device=device,
                               seed=spec.seed, progress=progress)


def _train_trades(spec: TrainSpec, train: Any, *, out_dir: Path, data_root: Path, device: str,
                  progress: ProgressFn | None, synthetic_dirs: Sequence[Path]) -> dict[str, Any]:
    from core.data import load_synthetic
    from core.training.distributed import is_main
    from core.training.trades import TradesConfig, train_trades

    val = load_split(spec.dataset, "val", root=data_root)
    if spec.real_subset is not None:
        train = real_subset(train, spec.real_subset)
    if spec.oracle:  # R + O: the real images held out of the train split, the ceiling of more real data
        train = train.concat(load_split(spec.dataset, "oracle", root=data_root))
    synthetic = (load_synthetic(list(synthetic_dirs), num_classes=train.info.num_classes)
                 if synthetic_dirs else None)
    config = TradesConfig(**spec.trades_config_options())
    metrics = train_trades(train, val, synthetic=synthetic, config=config, out_dir=out_dir, seed=spec.seed,
                           device=device, progress=progress)
    if not is_main():
        return metrics
    metrics["real_images"] = len(train)
    metrics["synthetic_images"] = len(synthetic) if synthetic is not None else 0
    # metrics["synthetic_share_seen"]: the trainer's count of the synthetic rows of the batches it trained on
    if spec.final_eval:
        metrics["test"] = _evaluate(spec, out_dir, data_root=data_root, device=device, progress=progress)
    return metrics


REAL_SUBSET_SEED = 0  # one subset for every arm and seed: arms differ only in their synthetic data


def real_subset(train: Any, n: int) -> Any:
    """A stratified subset of about ``n`` training images (per-class rounding), the same for every caller."""
    from core.data.dataset import seeded_split

    if n >= len(train):
        return train
    (keep, _rest) = seeded_split(train.labels, fractions=[n / len(train)], seed=REAL_SUBSET_SEED)
    return train.subset(keep)

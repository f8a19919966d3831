"""Celery task names, shared by the API (which enqueues by name) and worker/ (which registers them)."""

from __future__ import annotations

GENERATE_SHARD = "cdp.generate_shard"
FINALIZE_GENERATION = "cdp.finalize_generation"
TRAIN = "cdp.train"
EVALUATE = "cdp.evaluate"
EXPERIMENT_STEP = "cdp.experiment_step"
RECONCILE = "cdp.reconcile"
ALL_TASKS: tuple[str, ...] = (GENERATE_SHARD, FINALIZE_GENERATION, TRAIN, EVALUATE, EXPERIMENT_STEP,
                              RECONCILE)

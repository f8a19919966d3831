"""Experiment jobs: arms x seeds of TRADES training and evaluation as child jobs, then statistics.

The experiment's only unit, ``experiment``, is a short coordinating step that never waits: it creates
whatever child is due (a TRADES job per (arm, seed); once that succeeded, an evaluation job of its model),
reports progress, and returns. It runs again whenever a child finishes (the child wakes it) and at every
reconcile pass, so any number of workers run the children while no worker sits blocked on them. Child ids
are derived from (experiment id, arm, seed, step): a redelivered or repeated step finds the child that
exists and never trains an (arm, seed) twice. A failed or canceled child fails the experiment and cancels
the children still running; canceling the experiment cancels them too (:meth:`JobService.cancel`).

When every evaluation has succeeded the step reads the children's metrics, computes per-arm statistics over
seeds and paired differences to the reference arm (:mod:`core.experiment_report`), and writes
``metrics.json``, ``report.json`` and ``report.html`` (a self-contained page: table, robust-accuracy plot
with per-seed points and intervals, training curves, the synthetic sets' preview grids, the exact specs).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from core.jobs import keys
from core.jobs.artifacts import jsonable, write_manifest
from core.jobs.context import WorkerContext, run_unit
from core.jobs.leases import Lease
from core.jobs.queue import job_priority
from core.jobs.reconcile import initial_units
from core.jobs.records import JobNotFound
from core.progress import Stage
from core.specs import EvaluateSpec, ExperimentSpec, JobPlan, JobRecord, Progress, TrainSpec, job_id_of
from core.storage import ObjectNotFound

log = logging.getLogger(__name__)

REPORT_METRICS = ("clean_acc", "pgd_ce_acc", "pgd_cw_acc", "worst_acc", "autoattack_acc")


def child_id(parent_id: str, key: str) -> str:
    """A child's job id: the parent's time prefix (children sort next to it) and 12 hex digits of a hash."""
    return parent_id[:12] + hashlib.sha256(f"{parent_id}/{key}".encode()).hexdigest()[:12]


def ensure_child(ctx: WorkerContext, parent: JobRecord, key: str, kind: str,
                 spec: TrainSpec | EvaluateSpec) -> JobRecord:
    """The child job for ``key``, created and enqueued if it does not exist yet (idempotent by its id; a
    child created but not enqueued before a crash is enqueued by the reconciler)."""
    job_id = child_id(parent.id, key)
    try:
        return ctx.repo.get(job_id)
    except JobNotFound:
        pass
    body = {**spec.model_dump(mode="json"), "priority": job_priority(parent)}  # children inherit it
    record = ctx.repo.create(kind=kind, owner=parent.owner, input=body,  # type: ignore[arg-type]
                             job_id=job_id, plan=JobPlan(limits=parent.plan.limits), parent=parent.id)
    ctx.enqueuer.units(job_id, initial_units(record, ctx.shard_size), priority=job_priority(record))
    log.info("experiment %s: created %s job %s (%s)", parent.id, kind, job_id, key)
    return record


def run_experiment(ctx: WorkerContext, job_id: str, message_id: str = "direct") -> str:
    def work(job: JobRecord, lease: Lease) -> str:
        spec = job.experiment_spec()
        ctx.repo.mark_running(job_id)
        total = 2 * len(spec.arms) * len(spec.seeds)
        done = 0
        failures: list[str] = []
        failed_children: list[JobRecord] = []
        pairs: list[tuple[str, int, JobRecord, JobRecord]] = []
        for arm in spec.arms:
            for seed in spec.seeds:
                train = ensure_child(ctx, job, f"{arm.name}/{seed}/train", "train",
                                     spec.child_train_spec(arm, seed))
                if train.status in ("failed", "canceled"):
                    failed_children.append(train)
                    failures.append(f"{arm.name} seed {seed}: training job {train.id} {train.status}"
                                    + (f" ({train.error})" if train.error else ""))
                    continue
                if train.status != "succeeded":
                    continue
                done += 1
                evaluation = ensure_child(ctx, job, f"{arm.name}/{seed}/evaluate", "evaluate",
                                          spec.child_evaluate_spec(train.id, seed))
                if evaluation.status in ("failed", "canceled"):
                    failed_children.append(evaluation)
                    why = f" ({evaluation.error})" if evaluation.error else ""
                    failures.append(f"{arm.name} seed {seed}: evaluation job {evaluation.id} "
                                    f"{evaluation.status}{why}")
                elif evaluation.status == "succeeded":
                    done += 1
                    pairs.append((arm.name, seed, train, evaluation))
        if failures:
            cancel_children(ctx, job_id)
            lease.check()
            # children failed through no fault of the caller: the experiment's quota charges go back
            ctx.repo.finish(job_id, "failed", error="; ".join(failures)[:2000],
                            refund=all(child.refunded for child in failed_children))
            return "failed"
        ctx.repo.set_progress(job_id, Progress(fraction=min(0.99, done / total), current=done, total=total,
                                               stage=Stage.CHILDREN, message=f"{done} of {total} child jobs"))
        if done < total:
            return "waiting"
        report = build_report(ctx, job, spec, pairs)
        lease.check()
        write_report(ctx, job_id, report)
        ctx.repo.finish(job_id, "succeeded")
        return "done"

    return run_unit(ctx, job_id, "experiment", message_id, work, count_attempts=False)


def children_of(ctx: WorkerContext, job: JobRecord) -> list[JobRecord]:
    found = []
    for arm in job.experiment_spec().arms:
        for seed in job.experiment_spec().seeds:
            for step in ("train", "evaluate"):
                try:
                    found.append(ctx.repo.get(child_id(job.id, f"{arm.name}/{seed}/{step}")))
                except JobNotFound:
                    pass
    return found


def cancel_children(ctx: WorkerContext, job_id: str) -> None:
    for child in children_of(ctx, ctx.repo.get(job_id)):
        if not child.terminal:
            ctx.repo.request_cancel(child.id)


def build_report(ctx: WorkerContext, job: JobRecord, spec: ExperimentSpec,
                 pairs: list[tuple[str, int, JobRecord, JobRecord]]) -> dict[str, Any]:
    from core.experiment_report import summarize

    runs = []
    for arm, seed, train, evaluation in pairs:
        trained = ctx.store.get_json(keys.metrics_key(train.id))
        evaluated = ctx.store.get_json(keys.metrics_key(evaluation.id))
        runs.append({
            "arm": arm, "seed": seed,
            "metrics": {m: evaluated[m] for m in REPORT_METRICS if evaluated.get(m) is not None},
            "synthetic_share": trained.get("synthetic_share_seen"),
            "history": trained.get("history", []),
            "train_job": train.id, "evaluate_job": evaluation.id,
            "best_epoch": trained.get("best_epoch"), "train_seconds": trained.get("train_seconds"),
            "sanity": evaluated.get("sanity"), "warnings": evaluated.get("warnings", []),
        })
    summary = summarize(runs, arms=[a.name for a in spec.arms], reference=spec.reference or spec.arms[0].name)
    previews: dict[str, bytes | None] = {}
    for arm_spec in spec.arms:
        previews[arm_spec.name] = None
        for ref in arm_spec.synthetic[:1]:
            try:
                previews[arm_spec.name] = ctx.store.get_bytes(keys.preview_key(job_id_of(ref) or ""))
            except ObjectNotFound:
                pass
    children = {f"{r['arm']} / seed {r['seed']}": {"train": r["train_job"], "evaluate": r["evaluate_job"]}
                for r in runs}
    child_specs = {f"{r['arm']} / seed {r['seed']}": {
        "train": ctx.repo.get(r["train_job"]).input, "evaluate": ctx.repo.get(r["evaluate_job"]).input}
        for r in runs}
    return {"title": f"Experiment {job.id} on {spec.dataset}", "summary": summary, "runs": runs,
            "previews": previews, "children": children,
            "specs": {"experiment": spec.model_dump(mode="json"), "children": child_specs}}


def write_report(ctx: WorkerContext, job_id: str, report: dict[str, Any]) -> None:
    from core.experiment_report import render_html

    html = render_html(report)
    plain = {k: v for k, v in report.items() if k != "previews"}
    ctx.store.put_json(keys.job_prefix(job_id) + "report.json", jsonable(plain))
    ctx.store.put_bytes(keys.job_prefix(job_id) + "report.html", html.encode(), content_type="text/html")
    summary = report["summary"]
    metrics = {"reference": summary.get("reference"), "interval": summary.get("interval"),
               "arms": summary.get("arms"), "paired": summary.get("paired"),
               "runs": [{k: v for k, v in r.items() if k != "history"} for r in report["runs"]],
               "children": report["children"]}
    ctx.store.put_json(keys.metrics_key(job_id), jsonable(metrics))
    write_manifest(ctx.store, job_id)

"""Experiment jobs: arms x seeds of TRADES training and evaluation as child jobs, then statistics.

The experiment's only unit, ``experiment``, is a short coordinating step that never waits: it creates
whatever child is due (a generation job per distinct ``generate`` spec of its arms; a TRADES job per (arm,
seed) once the arm's generation succeeded; once that succeeded, an evaluation job of its model), reports
progress (its children's units, :mod:`core.jobs.composite`), and returns. It runs again whenever a child
finishes (the child wakes it) and at every reconcile pass, so any number of workers run the children while
no worker sits blocked on them. Child ids are derived from (experiment id, arm, seed, step), a generation's
from the digest of its spec: a redelivered or repeated step finds the child that exists and never trains an
(arm, seed) twice, and arms with identical generation specs share one job. A failed or canceled generation
fails only the arms that use it (``failed_arms`` in the report; the reference arm's fails the experiment);
any other failed or canceled child fails the experiment and cancels the children still running; canceling
the experiment cancels them too (:meth:`JobService.cancel`).

When every evaluation has succeeded the step reads the children's metrics, computes per-arm statistics over
seeds and paired differences to the reference arm (:mod:`core.experiment_report`), and writes
``metrics.json``, ``report.json`` and ``report.html`` (a self-contained page: table, robust-accuracy plot
with per-seed points and intervals, training curves, the synthetic sets' preview grids, the exact specs).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from core.jobs import keys
from core.jobs.artifacts import jsonable, write_manifest
from core.jobs.composite import child_id, experiment_progress, generation_key
from core.jobs.context import WorkerContext, run_unit
from core.jobs.errors import JobNotFound
from core.jobs.leases import Lease
from core.jobs.queue import job_priority
from core.jobs.reconcile import initial_units
from core.jobs.tracking import track_experiment
from core.specs import (
    EvaluateSpec,
    ExperimentArm,
    ExperimentSpec,
    GenerateSpec,
    JobPlan,
    JobRecord,
    TrainSpec,
    job_id_of,
)
from core.storage import ObjectNotFound
from core.training.attacks import REPORT_METRICS

log = logging.getLogger(__name__)


def ensure_child(ctx: WorkerContext, parent: JobRecord, key: str, kind: str,
                 spec: TrainSpec | EvaluateSpec | GenerateSpec) -> JobRecord:
    """The child job for ``key``, created and enqueued if it does not exist yet (idempotent by its id; a
    child created but not enqueued before a crash is enqueued by the reconciler)."""
    job_id = child_id(parent.id, key)
    try:
        return ctx.repo.get(job_id)
    except JobNotFound:
        pass
    body = {**spec.model_dump(mode="json"), "priority": job_priority(parent)}  # children inherit it
    plan = JobPlan(limits=parent.plan.limits)
    if isinstance(spec, GenerateSpec):
        plan.shards, plan.shard_size = math.ceil(spec.count / ctx.shard_size), ctx.shard_size
    record = ctx.repo.create(kind=kind, owner=parent.owner, input=body,  # type: ignore[arg-type]
                             job_id=job_id, plan=plan, parent=parent.id)
    ctx.enqueuer.units(job_id, initial_units(record, ctx.shard_size), priority=job_priority(record))
    log.info("experiment %s: created %s job %s (%s)", parent.id, kind, job_id, key)
    return record


def _ended(record: JobRecord, what: str) -> str | None:
    """"<what> <id> failed (error)" for a failed or canceled child, else None."""
    if record.status not in ("failed", "canceled"):
        return None
    return f"{what} {record.id} {record.status}" + (f" ({record.error})" if record.error else "")


def run_experiment(ctx: WorkerContext, job_id: str, message_id: str = "direct") -> str:
    def work(job: JobRecord, lease: Lease) -> str:
        spec = job.experiment_spec()
        ctx.repo.mark_running(job_id)
        failures: list[str] = []
        failed_arms: dict[str, str] = {}  # arms whose generation failed: left out of the table
        failed_children: list[JobRecord] = []
        pairs: list[tuple[str, int, JobRecord, JobRecord]] = []
        ready_arms: list[tuple[ExperimentArm, list[str]]] = []
        for arm in spec.arms:
            generation = spec.child_generate_spec(arm)
            if generation is None:
                ready_arms.append((arm, list(arm.synthetic)))
                continue
            child = ensure_child(ctx, job, generation_key(generation), "generate", generation)
            ended = _ended(child, "its generation job")
            if ended:
                failed_arms[arm.name] = ended
                failed_children.append(child)
            elif child.status == "succeeded":
                ready_arms.append((arm, [*arm.synthetic, f"job:{child.id}"]))
        for arm, synthetic in ready_arms:
            for seed in spec.seeds:
                train = ensure_child(ctx, job, f"{arm.name}/{seed}/train", "train",
                                     spec.child_train_spec(arm, seed, synthetic))
                ended = _ended(train, "training job")
                if ended:
                    failed_children.append(train)
                if ended or train.status != "succeeded":
                    failures += [f"{arm.name} seed {seed}: {ended}"] if ended else []
                    continue
                evaluation = ensure_child(ctx, job, f"{arm.name}/{seed}/evaluate", "evaluate",
                                          spec.child_evaluate_spec(train.id, seed))
                ended = _ended(evaluation, "evaluation job")
                if ended:
                    failed_children.append(evaluation)
                    failures.append(f"{arm.name} seed {seed}: {ended}")
                elif evaluation.status == "succeeded":
                    pairs.append((arm.name, seed, train, evaluation))
        if spec.reference in failed_arms:
            failures.append(f"the reference arm {spec.reference!r}: {failed_arms[spec.reference]}")
        if failures:
            cancel_children(ctx, job_id)
            lease.check()
            # children failed through no fault of the caller: the experiment's quota charges go back
            ctx.repo.finish(job_id, "failed", error="; ".join(failures)[:2000],
                            refund=bool(failed_children) and all(c.refunded for c in failed_children))
            return "failed"
        progress = experiment_progress(ctx.repo, job, ctx.shard_size)
        expected = len(spec.seeds) * (len(spec.arms) - len(failed_arms))
        if len(pairs) < expected:
            ctx.repo.set_progress(job_id, progress)
            return "waiting"
        report = build_report(ctx, job, spec, pairs, failed_arms)
        lease.check()
        write_report(ctx, job_id, report)
        ctx.repo.finish(job_id, "succeeded")
        return "done"

    return run_unit(ctx, job_id, "experiment", message_id, work, count_attempts=False)


def children_of(ctx: WorkerContext, job: JobRecord) -> list[JobRecord]:
    spec = job.experiment_spec()
    keys_ = [generation_key(g) for g in map(spec.child_generate_spec, spec.arms) if g is not None]
    keys_ += [f"{arm.name}/{seed}/{step}" for arm in spec.arms for seed in spec.seeds
              for step in ("train", "evaluate")]
    found = []
    for key in dict.fromkeys(keys_):
        try:
            found.append(ctx.repo.get(child_id(job.id, key)))
        except JobNotFound:
            pass
    return found


def cancel_children(ctx: WorkerContext, job_id: str) -> None:
    for child in children_of(ctx, ctx.repo.get(job_id)):
        if not child.terminal:
            ctx.repo.request_cancel(child.id)


def build_report(ctx: WorkerContext, job: JobRecord, spec: ExperimentSpec,
                 pairs: list[tuple[str, int, JobRecord, JobRecord]],
                 failed_arms: dict[str, str] | None = None) -> dict[str, Any]:
    from core.experiment_report import summarize

    runs = []
    for arm, seed, train, evaluation in pairs:
        trained = ctx.store.get_json(keys.metrics_key(train.id))
        evaluated = ctx.store.get_json(keys.metrics_key(evaluation.id))
        runs.append({
            "arm": arm, "seed": seed,
            "metrics": {m: evaluated[m] for m in REPORT_METRICS if evaluated.get(m) is not None},
            "synthetic_share": trained.get("synthetic_share_seen"),
            "history": trained.get("history", []), "steps": trained.get("steps", []),
            "train_job": train.id, "evaluate_job": evaluation.id,
            "best_epoch": trained.get("best_epoch"), "train_seconds": trained.get("train_seconds"),
            "sanity": evaluated.get("sanity"), "warnings": evaluated.get("warnings", []),
        })
    failed_arms = failed_arms or {}
    summary = summarize(runs, arms=[a.name for a in spec.arms if a.name not in failed_arms],
                        reference=spec.reference or spec.arms[0].name)
    previews: dict[str, bytes | None] = {}
    samples: dict[str, dict[str, Any]] = {}
    sets = {r["arm"]: ctx.repo.get(r["train_job"]).input.get("synthetic", []) for r in runs}
    for arm_spec in spec.arms:
        previews[arm_spec.name] = None
        for ref in sets.get(arm_spec.name, [])[-1:]:
            try:
                previews[arm_spec.name] = ctx.store.get_bytes(keys.preview_key(job_id_of(ref) or ""))
            except ObjectNotFound:
                pass
            try:  # the sample metrics of the arm's (first) synthetic set, shown beside its robust accuracy
                generated = ctx.store.get_json(keys.metrics_key(job_id_of(ref) or ""))
                samples[arm_spec.name] = {"job": job_id_of(ref), "metrics": generated,
                                          "warnings": list(generated.get("warnings") or [])}
            except ObjectNotFound:
                pass
    children = {f"{r['arm']} / seed {r['seed']}": {"train": r["train_job"], "evaluate": r["evaluate_job"]}
                for r in runs}
    child_specs = {f"{r['arm']} / seed {r['seed']}": {
        "train": ctx.repo.get(r["train_job"]).input, "evaluate": ctx.repo.get(r["evaluate_job"]).input}
        for r in runs}
    generations = {arm.name: child_id(job.id, generation_key(g)) for arm in spec.arms
                   if (g := spec.child_generate_spec(arm)) is not None}
    return {"title": f"Experiment {job.id} on {spec.dataset}", "summary": summary, "runs": runs,
            "previews": previews, "children": children, "samples": samples, "generations": generations,
            "failed_arms": failed_arms,
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
               "runs": [{k: v for k, v in r.items() if k not in ("history", "steps")}
                        for r in report["runs"]],
               "children": report["children"], "generations": report.get("generations", {}),
               "failed_arms": report.get("failed_arms", {})}
    track_experiment(ctx, job_id, report, html)
    ctx.store.put_json(keys.metrics_key(job_id), jsonable(metrics))
    write_manifest(ctx.store, job_id)

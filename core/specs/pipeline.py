"""A pipeline: named steps, each a job spec of one kind, that name earlier steps' outputs as
``step:<name>`` wherever a spec takes ``job:<id>`` (a model, a classifier, a synthetic set, an arm's
generation model). The service submits every step at once as a job with dependencies
(:mod:`core.jobs.waiting`), so a step starts when the steps it names have succeeded.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.specs.common import cross_field, short

StepKind = Literal["train", "generate", "evaluate", "experiment"]
_STEP_NAME = r"^[a-z][a-z0-9_-]{0,39}$"
_STEP_REF = re.compile(r"step:(.*)", re.S)


class PipelineStep(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=_STEP_NAME, description="lower-case letters, digits, '_', '-'",
                      examples=["diffusion"])
    kind: StepKind = Field(description="which job: the body of POST /jobs/<kind>")
    spec: dict[str, Any] = Field(description="the job's spec, validated as the body of POST /jobs/<kind> "
                                 "(its errors name body.steps.<i>.spec.<field>); `step:<name>` names an "
                                 "earlier step's job")


class PipelineSpec(BaseModel):
    """Steps in order, each with a unique name; a step may name only steps before it (so a pipeline has no
    cycles)."""

    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{"name": "digits-smoke", "steps": [
            {"name": "diffusion", "kind": "train", "spec": {"kind": "diffusion", "dataset": "digits",
                                                             "epochs": 8}},
            {"name": "classifier", "kind": "train", "spec": {"kind": "classifier", "dataset": "digits",
                                                              "epochs": 8}},
            {"name": "vanilla", "kind": "generate", "spec": {
                "dataset": "digits", "model": "step:diffusion", "classifier": "step:classifier",
                "count": 256, "loss": "none", "steps": 50, "schedule": "uniform"}},
            {"name": "score", "kind": "evaluate", "spec": {"model": "step:classifier",
                                                            "dataset": "digits"}}]}]})
    name: str | None = Field(default=None, max_length=100, description="for people")
    steps: list[PipelineStep] = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _unique_names(self) -> PipelineSpec:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise cross_field(f"steps: names must be unique; {short(twice)} appear more than once")
        return self


class StepReferenceError(ValueError):
    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


def resolve_steps(value: Any, job_ids: dict[str, str], loc: tuple[str | int, ...] = ()) -> Any:
    """``value`` with every ``step:<name>`` replaced by ``job:<id>`` of that step (``job_ids`` holds the
    steps before this one); StepReferenceError naming the field for any other step name."""
    if isinstance(value, str):
        match = _STEP_REF.fullmatch(value)
        if match is None:
            return value
        name = match.group(1)
        if name not in job_ids:
            raise StepReferenceError(loc, f"{short(value)} names no earlier step (earlier: "
                                     f"{sorted(job_ids) or 'none'})")
        return f"job:{job_ids[name]}"
    if isinstance(value, dict):
        return {k: resolve_steps(v, job_ids, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_steps(v, job_ids, (*loc, i)) for i, v in enumerate(value)]
    return value


class PipelineStepState(BaseModel):
    name: str
    kind: StepKind
    job_id: str
    status: str = Field(description="the step's job's status (waiting, queued, running, succeeded, ...)")
    waiting_for: list[str] = Field(default_factory=list, description="names of the steps it waits for")
    progress: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class PipelineRecord(BaseModel):
    """A pipeline as the API returns it: its steps' jobs and their states, the progress of all of them
    counted in units, and a status that is terminal once every step is."""

    id: str
    name: str | None = None
    owner: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"] = Field(
        description="succeeded: every step did; failed / canceled: every step is finished and one failed / "
        "was canceled; running: a step started or finished; queued otherwise")
    progress: dict[str, Any] = Field(default_factory=dict, description="fraction, current / total units")
    error: str | None = Field(default=None, description="the failed or canceled steps and why")
    created_at: str
    steps: list[PipelineStepState]
    links: dict[str, str]

    @property
    def terminal(self) -> bool:
        return self.status in ("succeeded", "failed", "canceled")

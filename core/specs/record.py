"""The job record: what ``jobs/<id>/job.json`` holds and the API returns, with progress, plan and links."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.specs.common import JOB_ID_PATTERN
from core.specs.generate import GenerateSpec
from core.specs.train import EvaluateSpec, ExperimentSpec, TrainSpec

JobKind = Literal["generate", "train", "evaluate", "experiment"]
JobStatus = Literal["waiting", "queued", "running", "succeeded", "failed", "canceled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class Progress(BaseModel):
    fraction: float = Field(default=0.0, ge=0, le=1)
    current: int = 0
    total: int = 0
    stage: str = ""
    message: str = ""


class JobLinks(BaseModel):
    self: str
    metrics: str
    artifacts: str
    events: str
    cancel: str


class JobPlan(BaseModel):
    """What the API decided at submission and every worker follows, never re-deriving it from its own
    settings: the shard layout of a generation job and the limits its spec was checked against."""

    shards: int = Field(default=0, ge=0, description="generation: number of shards (0 for training)")
    shard_size: int = Field(default=0, ge=0, description="generation: images per shard")
    limits: dict[str, int | float] = Field(default_factory=dict, description="the CDP_MAX_* limits in force")


class JobRecord(BaseModel):
    """A job as stored in ``jobs/<id>/job.json`` and returned by the API."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": "0190a1b2c3d4e5f6a7b8c9d0", "kind": "generate", "owner": "anonymous",
                 "status": "running", "input": {"dataset": "digits", "model": "digits-unet",
                                                  "classifier": "digits-cnn", "count": 512},
                 "progress": {"fraction": 0.25, "current": 1, "total": 4, "stage": "sampling",
                              "message": ""},
                 "error": None, "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:01Z",
                 "completed_at": None, "attempt": 1, "cancel_requested": False,
                 "links": {"self": "/jobs/0190a1b2c3d4e5f6a7b8c9d0",
                           "metrics": "/jobs/0190a1b2c3d4e5f6a7b8c9d0/metrics",
                           "artifacts": "/jobs/0190a1b2c3d4e5f6a7b8c9d0/artifacts",
                           "events": "/jobs/0190a1b2c3d4e5f6a7b8c9d0/events",
                           "cancel": "/jobs/0190a1b2c3d4e5f6a7b8c9d0/cancel"}}
            ]
        }
    )

    id: str = Field(pattern=rf"^{JOB_ID_PATTERN}$")
    kind: JobKind
    owner: str
    status: JobStatus = "queued"
    input: dict[str, Any]
    progress: Progress = Field(default_factory=Progress)
    error: str | None = None
    warnings: list[str] = Field(default_factory=list, description="what the result's own checks flag, e.g. "
                                "a generated set whose samples are mostly outliers (see its metrics)")
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    attempt: int = Field(default=0, description="the most times any unit of this job was started")
    attempts: dict[str, int] = Field(default_factory=dict,
                                     description="unit (shard-<k>, finalize, train) -> times started")
    cancel_requested: bool = False
    plan: JobPlan = Field(default_factory=JobPlan)
    parent: str | None = Field(default=None, description="the experiment job this job is a step of")
    waiting_for: list[str] = Field(default_factory=list, description="status waiting: the ids of the "
                                   "unfinished input jobs it starts after (core.jobs.waiting)")
    refunded: bool = Field(default=False, description="failed through no fault of the caller (a dependency "
                           "outage, a worker lost on every attempt): its images and epochs were given back "
                           "to the team's daily quotas")
    links: JobLinks

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def generate_spec(self) -> GenerateSpec:
        return GenerateSpec.model_validate(self.input, context=self._context())

    def train_spec(self) -> TrainSpec:
        return TrainSpec.model_validate(self.input, context=self._context())

    def evaluate_spec(self) -> EvaluateSpec:
        return EvaluateSpec.model_validate(self.input, context=self._context())

    def experiment_spec(self) -> ExperimentSpec:
        return ExperimentSpec.model_validate(self.input, context=self._context())

    def spec(self) -> GenerateSpec | TrainSpec | EvaluateSpec | ExperimentSpec:
        return {"generate": self.generate_spec, "train": self.train_spec, "evaluate": self.evaluate_spec,
                "experiment": self.experiment_spec}[self.kind]()

    def _context(self) -> dict[str, Any] | None:
        return {"limits": self.plan.limits} if self.plan.limits else None


def links_for(job_id: str) -> JobLinks:
    base = f"/jobs/{job_id}"
    return JobLinks(self=base, metrics=f"{base}/metrics", artifacts=f"{base}/artifacts",
                    events=f"{base}/events", cancel=f"{base}/cancel")

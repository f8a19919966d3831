"""The generation job's spec (paper Algorithm 1), with its selection step (App. D.3).

It checks the request's shape (strict types, bounds, the server's limits) and fills the paper's defaults from
:mod:`core.options`; :meth:`core.generation.GenerationParams.from_spec` turns it into the science's settings,
which check their own ranges.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core import options
from core.options import FeatureOn, GenLoss, HeadScope, Schedule, SelectionCriterion, Strategy
from core.settings import get_settings
from core.specs.common import (
    MAX_SEED,
    PRIORITY_DOC,
    DatasetRef,
    JobPriority,
    ModelRef,
    Timestep,
    cross_field,
    within_server_limit,
)


class SelectionSpec(BaseModel):
    """Keep the top K samples per class by one of the criteria of paper App. D.3."""

    model_config = ConfigDict(extra="forbid", strict=True)
    criterion: SelectionCriterion = options.CRITERION
    top_k: int = Field(ge=1, description="samples kept per class")

    _limits = field_validator("top_k")(within_server_limit)


class GenerateSpec(BaseModel):
    """A contrastive-guided (or vanilla, ``loss="none"``) DDIM generation job (paper Algorithm 1)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # numbers are numbers: "64", 2.0 and true are not a count (see STRICT_INPUT)
        validate_default=True,  # a default above a server limit is refused too
        json_schema_extra={
            "examples": [
                {"dataset": "digits", "model": "digits-unet", "classifier": "digits-cnn", "count": 512,
                 "loss": "hnm", "lam": 1000.0, "steps": 50, "schedule": "uniform", "seed": 0}
            ]
        },
    )

    dataset: DatasetRef
    model: ModelRef
    classifier: ModelRef
    count: int = Field(ge=1, description="number of images to generate")
    loss: GenLoss = options.LOSS
    lam: float | None = Field(
        default=None, ge=0, description=f"guidance strength lambda; default {options.LAM['hnm']:g} for hnm, "
        f"{options.LAM['infonce']:g} for infonce"
    )
    tau: float | None = Field(
        default=None, gt=0, le=1e4, description=f"temperature; default {options.TAU['hnm']:g} for hnm, "
        f"{options.TAU['infonce']:g} for infonce"
    )
    tau_plus: float = Field(default=options.TAU_PLUS, ge=0, lt=1)
    beta: float = Field(default=options.BETA, ge=0, le=100)
    strategy: Strategy = options.STRATEGY
    embedding_head: bool = False
    head_scope: HeadScope = Field(
        default=options.HEAD_SCOPE, description="with embedding_head: one head trained online across every "
        "batch of a shard (each shard starts from the same head, seeded by the job seed), or a fresh head "
        "per batch")
    steps: int = Field(default=options.STEPS, ge=1)
    schedule: Schedule = options.SCHEDULE
    eta: float = Field(default=options.ETA, ge=0, le=1)
    guidance_window: tuple[Timestep, Timestep] | None = Field(
        default=None, strict=False,  # a JSON array is a tuple here (the items stay strict integers)
        description="guide only for lo <= t <= hi (DDPM timesteps); default: the whole schedule"
    )
    batch_size: int = Field(default=options.BATCH_SIZE, ge=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    feature_on: FeatureOn = Field(
        default=options.FEATURE_ON_DEFAULT,
        description="features on x_t (the paper) or on the predicted x_0 (extension)")
    selection: SelectionSpec | None = None
    feature_extractor: ModelRef | None = Field(
        default=None,
        description="the classifier whose features the guidance uses (e.g. job:<id> of a finished TRADES "
        "job: an adversarially trained model); default: `classifier`, which always makes the pseudo-labels")
    judge: ModelRef | None = Field(
        default=None,
        description="an independent classifier (job:<id> of a finished classifier/trades training job, or a "
        "model name) used only to score label_agreement; without one label_agreement is null")
    tstr: bool = Field(
        default=False, description="also train a small CNN on the generated set and report its accuracy on "
        "the dataset's real test split (tstr_accuracy)")

    priority: JobPriority = Field(default="normal", description=PRIORITY_DOC)

    _limits = field_validator("count", "steps", "batch_size", "lam")(within_server_limit)

    @field_validator("guidance_window")
    @classmethod
    def _window_order(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] <= value[1]:
            raise cross_field(f"guidance_window={list(value)} must satisfy 0 <= lo <= hi")
        return value

    @model_validator(mode="after")
    def _paper_defaults(self) -> GenerateSpec:
        if self.lam is None:
            self.lam = min(options.LAM[self.loss], get_settings().max_lambda)
        if self.tau is None:
            self.tau = options.TAU[self.loss]
        return self

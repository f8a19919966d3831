"""Job specs and the job record: the pydantic models the HTTP API accepts and the worker executes.

Generation defaults follow the paper and are written once in :mod:`core.options` (HNM: tau = 10,
lambda = 1e5, tau_plus = 0.1, beta = 1; InfoNCE: tau = 0.1, lambda = 2e4; DDIM with 200 "quad" steps and
eta = 0); TRADES defaults to beta = 6, eps = 8/255, 10 PGD steps of 2/255. Every number is bounded; the limits
that operators tune (count, steps, batch size, epochs, lambda) come from :class:`core.settings.Settings`.

Models are referenced either as ``job:<id>`` (the output of a finished training job) or as a bare name in
the server's model directory; a name is never a path (no slashes, no ``..``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core import options
from core.options import (
    Arch,
    AttackName,
    DatasetName,
    FeatureOn,
    GenLoss,
    HeadScope,
    Mixing,
    Schedule,
    SelectionCriterion,
    Strategy,
    TrainKind,
    UnetPreset,
)
from core.settings import get_settings

JOB_ID_PATTERN = r"[0-9a-f]{24}"
# Both are matched against the whole string (re.fullmatch): "$" would also match before a final newline.
_JOB_REF = re.compile(rf"job:({JOB_ID_PATTERN})")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MODEL_REF_PATTERN = rf"^(job:{JOB_ID_PATTERN}|[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}})$"
_SHORT = 40


def short(value: object) -> str:
    """``repr(value)`` cut to a short prefix: validation messages never echo a long input back."""
    text = repr(value)
    return text if len(text) <= _SHORT else text[:_SHORT] + f"... ({len(text)} characters)"


JobKind = Literal["generate", "train", "evaluate", "experiment"]
JobPriority = Literal["low", "normal", "high"]
_PRIORITY_DOC = ("orders this job's units among the waiting ones of their queue (cdp.generate, cdp.train, "
                 "cdp.evaluate): high before normal before low")
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
Timestep = Annotated[int, Field(ge=0, le=100_000)]
ArchOption = Literal["width", "feature_dim", "depth", "widen_factor"]


def _check_model_ref(value: str) -> str:
    if _JOB_REF.fullmatch(value):
        return value
    if _MODEL_NAME.fullmatch(value) and ".." not in value:
        return value
    raise ValueError(
        f"{short(value)} is neither 'job:<24 hex digits>' nor a model name (letters, digits, '.', '_', '-'; "
        "no paths)"
    )


def _check_job_ref(value: str) -> str:
    if not _JOB_REF.fullmatch(value):
        raise ValueError(f"{short(value)} is not a job reference of the form 'job:<24 hex digits>'")
    return value


ModelRef = Annotated[
    str,
    Field(max_length=64, pattern=_MODEL_REF_PATTERN),
    AfterValidator(_check_model_ref),
    Field(description="`job:<id>` of a finished training job, or a model name from the server's model "
          "directory", examples=["job:0190a1b2c3d4e5f6a7b8c9d0", "digits-unet"]),
]
JobRef = Annotated[str, Field(max_length=28, pattern=rf"^job:{JOB_ID_PATTERN}$"),
                   AfterValidator(_check_job_ref), Field(examples=["job:0190a1b2c3d4e5f6a7b8c9d0"])]


def job_id_of(ref: str) -> str | None:
    """The job id in a ``job:<id>`` reference, or None for a model name."""
    match = _JOB_REF.fullmatch(ref)
    return match.group(1) if match else None


# Which setting bounds each numeric spec field (the server's limits, CDP_MAX_*).
_SERVER_LIMITS = {
    "count": "max_count", "top_k": "max_count", "steps": "max_steps", "batch_size": "max_batch_size",
    "lam": "max_lambda", "epochs": "max_epochs", "limit": "max_count", "eval_samples": "max_count",
    "devices": "max_devices",
}
SERVER_LIMITS = _SERVER_LIMITS  # public: the API documents these bounds in its OpenAPI document


def server_limits() -> dict[str, float]:
    """The limits in force now (CDP_MAX_*), as frozen into a job's plan at submission."""
    settings = get_settings()
    return {name: getattr(settings, name) for name in sorted(set(_SERVER_LIMITS.values()))}


def _within_server_limit(value: float | None, info: ValidationInfo) -> float | None:
    """A field validator: ``value`` must not exceed the setting named for its field in _SERVER_LIMITS.

    A worker re-reading an accepted spec passes the limits frozen at submission as the validation context
    (``{"limits": {...}}``), so a worker with other settings never rejects a job the API accepted."""
    name = info.field_name or ""
    setting = _SERVER_LIMITS[name]
    frozen = (info.context or {}).get("limits") if isinstance(info.context, dict) else None
    limit = frozen[setting] if frozen and setting in frozen else getattr(get_settings(), setting)
    if value is not None and value > limit:
        raise ValueError(f"{name}={value} exceeds the server limit {limit}")
    return value


class SelectionSpec(BaseModel):
    """Keep the top K samples per class by one of the criteria of paper App. D.3."""

    model_config = ConfigDict(extra="forbid", strict=True)
    criterion: SelectionCriterion = options.CRITERION
    top_k: int = Field(ge=1, description="samples kept per class")

    _limits = field_validator("top_k")(_within_server_limit)


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

    dataset: DatasetName
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
    seed: int = Field(default=0, ge=0, lt=2**63)
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

    priority: JobPriority = Field(default="normal", description=_PRIORITY_DOC)

    _limits = field_validator("count", "steps", "batch_size", "lam")(_within_server_limit)

    @field_validator("guidance_window")
    @classmethod
    def _window_order(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] <= value[1]:
            raise ValueError(f"guidance_window={list(value)} must satisfy 0 <= lo <= hi")
        return value

    @model_validator(mode="after")
    def _paper_defaults(self) -> GenerateSpec:
        if self.lam is None:
            self.lam = min(options.LAM[self.loss], get_settings().max_lambda)
        if self.tau is None:
            self.tau = options.TAU[self.loss]
        return self


# Which arch_options each classifier architecture takes (core.models.build_classifier).
ARCH_OPTIONS: dict[str, frozenset[str]] = {"small_cnn": frozenset({"width", "feature_dim"}),
                                           "wrn": frozenset({"depth", "widen_factor"})}


def _check_arch_options(arch: str, options: dict[str, int]) -> None:
    """What the worker would refuse when it builds the model, refused at submission instead."""
    unknown = sorted(set(options) - ARCH_OPTIONS[arch])
    if unknown:
        raise ValueError(f"arch_options {unknown} do not apply to arch={arch!r} (it takes "
                         f"{sorted(ARCH_OPTIONS[arch])})")
    depth = options.get("depth")
    if arch == "wrn" and depth is not None and (depth < 10 or (depth - 4) % 6 != 0):
        raise ValueError(f"arch_options.depth={depth}: a WRN depth is 6n + 4 with n >= 1 (10, 16, 22, ...)")
    if arch == "wrn" and options.get("widen_factor", 1) > 32:
        raise ValueError(f"arch_options.widen_factor={options['widen_factor']} exceeds 32")


class TrainSpec(BaseModel):
    """Training of a diffusion model, a classifier (feature extractor / pseudo-labeler), or TRADES."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_default=True,  # a default above a server limit is refused too
        json_schema_extra={
            "examples": [
                {"kind": "classifier", "dataset": "digits", "epochs": 5},
                {"kind": "trades", "dataset": "digits", "epochs": 3,
                 "synthetic": ["job:0190a1b2c3d4e5f6a7b8c9d0"], "synthetic_fraction": 0.7},
            ]
        },
    )

    kind: TrainKind
    dataset: DatasetName
    epochs: int = Field(ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float | None = Field(default=None, gt=0, le=10, description="learning rate; default: the trainer's")
    seed: int = Field(default=0, ge=0, lt=2**63)
    arch: Arch = Field(default="small_cnn", description="classifier / trades")
    arch_options: dict[ArchOption, Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=dict, description="small_cnn: width, feature_dim; wrn: depth, widen_factor")
    unet: UnetPreset = Field(default="tiny", description="diffusion: UNet preset")
    class_conditional: bool = Field(default=False, description="diffusion: a class-conditional UNet (class "
                                    "embeddings); its generation jobs draw labels balanced over the job")
    # TRADES (Zhang et al. 2019) and the real/synthetic mixing of paper eq. (3).
    synthetic: list[JobRef] = Field(default_factory=list, max_length=16,
                                    description="finished generation jobs mixed into TRADES training")
    synthetic_fraction: float = Field(default=0.7, ge=0, lt=1,
                                      description="share of each batch drawn from the synthetic set")
    beta: float = Field(default=6.0, ge=0, le=100, description="TRADES KL weight")
    eps: float = Field(default=8 / 255, ge=0, le=1, description="L_inf radius")
    step_size: float = Field(default=2 / 255, gt=0, le=1)
    attack_steps: int = Field(default=10, ge=1, le=100)
    eval_attack_steps: int = Field(default=20, ge=1, le=200)
    eval_samples: int | None = Field(default=1000, ge=1, description="test images for the final clean / "
                                     "robust evaluation (classifier, trades); null = the whole test split")
    mixing: Mixing = Field(
        default="batch", description="trades: synthetic share of each batch ('batch'), or the paper's eq.-3 "
        "weighted sum of a real and a synthetic loss ('loss')")
    real_subset: int | None = Field(
        default=None, ge=10, le=1_000_000, description="trades: train on a stratified subset of this many "
        "real training images (the same subset for every seed), keeping the rest out")
    final_eval: bool = Field(default=True, description="classifier / trades: evaluate on the test split at "
                             "the end (experiments turn it off and run evaluation jobs instead)")
    oracle: bool = Field(default=False, description="trades on mnist5k: also train on the oracle pool (real "
                         "images held out of the train split): the ceiling of what more real data gives")
    steps_per_epoch: int | None = Field(
        default=None, ge=1, le=100_000, description="trades: optimizer steps per epoch; default "
        "ceil(real images / batch_size). Fix it so arms with different real sets train for the same steps")
    eps_warmup: float = Field(default=0.0, ge=0, le=1, description="trades: fraction of all steps over "
                              "which eps and the attack step ramp linearly up from 0 (0: full eps at once)")

    devices: int = Field(default=1, ge=1, description="data-parallel processes on one worker host "
                         "(torch.distributed: one GPU each, or gloo on the CPU); at most CDP_MAX_DEVICES")

    priority: JobPriority = Field(default="normal", description=_PRIORITY_DOC)

    _limits = field_validator("epochs", "batch_size", "eval_samples", "devices")(_within_server_limit)

    @model_validator(mode="after")
    def _synthetic_only_for_trades(self) -> TrainSpec:
        if self.synthetic and self.kind != "trades":
            raise ValueError(f"synthetic data is only used by kind='trades', not kind={self.kind!r}")
        if self.class_conditional and self.kind != "diffusion":
            raise ValueError(f"class_conditional: only kind='diffusion' is conditioned, not "
                             f"kind={self.kind!r}")
        if self.oracle and (self.kind != "trades" or not self.dataset.startswith("mnist5k")):
            raise ValueError("oracle: only TRADES on mnist5k / mnist5k16 has an oracle pool")
        _check_arch_options(self.arch, self.arch_options)
        if self.devices > self.batch_size:
            raise ValueError(f"devices={self.devices}: each process needs a share of the batch "
                             f"(batch_size={self.batch_size})")
        return self


class EvaluationSettings(BaseModel):
    """How a model is attacked: shared by evaluation jobs and the evaluation step of experiments."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    split: Literal["test", "val"] = "test"
    eps: float = Field(default=8 / 255, ge=0, le=1, description="L_inf radius")
    attacks: list[AttackName] = Field(default_factory=lambda: ["pgd_ce", "pgd_cw"], min_length=1,
                                      max_length=3, description="pgd_ce, pgd_cw (PGD with the CE loss / "
                                      "the CW margin), autoattack (pyautoattack)")
    steps: int = Field(default=20, ge=1, le=1000, description="PGD steps")
    restarts: int = Field(default=1, ge=1, le=20, description="PGD random restarts")
    step_size: float | None = Field(default=None, gt=0, le=1, description="PGD step; default 2.5 eps / steps")
    autoattack_version: Literal["standard", "fast"] = Field(
        default="standard", description="standard: APGD-CE, APGD-T, FAB-T, Square (Croce & Hein 2020); "
        "fast: APGD-CE and APGD-T only (a cheaper subset, an upper bound on standard's robust accuracy)")
    limit: int | None = Field(default=1000, ge=1, description="the first n images of the split; null = all")
    seed: int = Field(default=0, ge=0, lt=2**63)
    batch_size: int = Field(default=256, ge=1)

    _limits = field_validator("batch_size", "limit")(_within_server_limit)

    @field_validator("attacks")
    @classmethod
    def _unique_attacks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"attacks={value} lists an attack twice")
        return value


class EvaluateSpec(EvaluationSettings):
    """Clean and adversarial accuracy of a finished classifier or TRADES model on a split of a dataset."""

    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True,
        json_schema_extra={"examples": [{"model": "digits-cnn", "dataset": "digits",
                                         "attacks": ["pgd_ce", "pgd_cw"], "limit": 500}]},
    )
    model: ModelRef
    dataset: DatasetName
    priority: JobPriority = Field(default="normal", description=_PRIORITY_DOC)


_ARM_NAME = r"^[A-Za-z0-9+][A-Za-z0-9 _.+()-]{0,63}$"


class ExperimentArm(BaseModel):
    """One arm: TRADES on the real data plus these synthetic sets (none: the real-only reference)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=_ARM_NAME, examples=["real only", "+ Contrastive-DP"])
    synthetic: list[JobRef] = Field(default_factory=list, max_length=16,
                                    description="finished generation jobs; [] = real data only")
    synthetic_fraction: float = Field(default=0.5, ge=0, lt=1)
    mixing: Mixing = "batch"
    oracle: bool = Field(default=False, description="mnist5k: also train on the oracle pool of real images")


class ExperimentTrades(BaseModel):
    """The TRADES settings every arm shares (see TrainSpec for their meaning)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)
    epochs: int = Field(ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float | None = Field(default=None, gt=0, le=10)
    arch: Arch = "small_cnn"
    arch_options: dict[ArchOption, Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=dict)
    beta: float = Field(default=6.0, ge=0, le=100)
    eps: float = Field(default=8 / 255, ge=0, le=1)
    step_size: float = Field(default=2 / 255, gt=0, le=1)
    attack_steps: int = Field(default=10, ge=1, le=100)
    steps_per_epoch: int | None = Field(default=None, ge=1, le=100_000,
                                        description="optimizer steps per epoch, the same for every arm")
    eps_warmup: float = Field(default=0.0, ge=0, le=1, description="fraction of steps with a ramped eps")

    _limits = field_validator("epochs", "batch_size")(_within_server_limit)

    @model_validator(mode="after")
    def _arch_options(self) -> ExperimentTrades:
        _check_arch_options(self.arch, self.arch_options)
        return self


class ExperimentSpec(BaseModel):
    """Arms x seeds: one TRADES job and one evaluation job per (arm, seed), then statistics over seeds."""

    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True,
        json_schema_extra={"examples": [{
            "dataset": "digits", "seeds": [0, 1],
            "arms": [{"name": "real only"},
                     {"name": "+ Contrastive-DP", "synthetic": ["job:0190a1b2c3d4e5f6a7b8c9d0"],
                      "synthetic_fraction": 0.5}],
            "trades": {"epochs": 5}, "evaluation": {"attacks": ["pgd_ce", "pgd_cw"], "limit": 500}}]},
    )
    dataset: DatasetName
    arms: list[ExperimentArm] = Field(min_length=1, max_length=8)
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(min_length=1, max_length=10)
    trades: ExperimentTrades
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    real_subset: int | None = Field(default=None, ge=10, le=1_000_000,
                                    description="train every arm on one stratified subset of n real images")
    reference: str | None = Field(default=None, max_length=64, description="the arm the others are "
                                  "compared to; default: the first")
    priority: JobPriority = Field(default="normal", description=_PRIORITY_DOC + "; its child jobs inherit it")

    @model_validator(mode="after")
    def _names(self) -> ExperimentSpec:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: each seed once, got {self.seeds}")
        if self.reference is None:
            self.reference = names[0]
        elif self.reference not in names:
            raise ValueError(f"reference={short(self.reference)} is not one of the arms {names}")
        return self

    def child_train_spec(self, arm: ExperimentArm, seed: int) -> TrainSpec:
        return TrainSpec(kind="trades", dataset=self.dataset, seed=seed, synthetic=list(arm.synthetic),
                         synthetic_fraction=arm.synthetic_fraction, mixing=arm.mixing, oracle=arm.oracle,
                         real_subset=self.real_subset, final_eval=False, **self.trades.model_dump())

    def child_evaluate_spec(self, model_job_id: str, seed: int) -> EvaluateSpec:
        settings = self.evaluation.model_dump()
        return EvaluateSpec(model=f"job:{model_job_id}", dataset=self.dataset, **settings)


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
    limits: dict[str, float] = Field(default_factory=dict, description="the CDP_MAX_* limits in force")


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
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    attempt: int = Field(default=0, description="the most times any unit of this job was started")
    attempts: dict[str, int] = Field(default_factory=dict,
                                     description="unit (shard-<k>, finalize, train) -> times started")
    cancel_requested: bool = False
    plan: JobPlan = Field(default_factory=JobPlan)
    parent: str | None = Field(default=None, description="the experiment job this job is a step of")
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

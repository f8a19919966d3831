"""Specs of training (diffusion, classifier, TRADES), evaluation and experiment jobs.

TRADES defaults to beta = 6, eps = 8/255, 10 PGD steps of 2/255 (Zhang et al. 2019; paper App. D.2).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from core import options
from core.options import Arch, AttackName, Mixing, TrainKind, UnetPreset
from core.specs.common import (
    MAX_SEED,
    PRIORITY_DOC,
    DatasetRef,
    JobPriority,
    JobRef,
    ModelRef,
    cross_field,
    short,
    within_server_limit,
)
from core.specs.generate import GenerateSpec

ArchOption = Literal["width", "feature_dim", "depth", "widen_factor"]

# Which arch_options each classifier architecture takes (core.models.build_classifier): the one table of the
# specs, the API document and the `cdp train classifier|trades` options (tests/test_options.py checks
# that it covers every Arch and every ArchOption).
ARCH_OPTIONS: dict[Arch, tuple[ArchOption, ...]] = {"small_cnn": ("width", "feature_dim"),
                                                    "wrn": ("depth", "widen_factor")}


def _check_arch_options(arch: str, arch_options: dict[str, int]) -> None:
    """What the worker would refuse when it builds the model, refused at submission instead."""
    unknown = sorted(set(arch_options) - set(ARCH_OPTIONS[arch]))
    if unknown:
        raise cross_field(f"arch_options {unknown} do not apply to arch={arch!r} (it takes "
                         f"{sorted(ARCH_OPTIONS[arch])})")
    depth = arch_options.get("depth")
    if arch == "wrn" and depth is not None and (depth < 10 or (depth - 4) % 6 != 0):
        raise cross_field(f"arch_options.depth={depth}: a WRN depth is 6n + 4 with n >= 1 (10, 16, 22, ...)")
    if arch == "wrn" and arch_options.get("widen_factor", 1) > 32:
        raise cross_field(f"arch_options.widen_factor={arch_options['widen_factor']} exceeds 32")


def trades_config_options(
    *, epochs: int, batch_size: int, lr: float | None, arch: str, arch_options: Mapping[str, int],
    beta: float, eps: float, step_size: float, attack_steps: int, eval_attack_steps: int,
    eval_samples: int | None, synthetic_fraction: float, mixing: str, steps_per_epoch: int | None = None,
    eps_warmup: float = 0.0,
) -> dict[str, Any]:
    """The keyword arguments of ``core.training.trades.TradesConfig`` for TRADES options named as TrainSpec
    names them: the one mapping of a train job (:meth:`TrainSpec.trades_config_options`) and of
    ``cdp train trades``. ``attack_steps`` is the training attack's ``steps``, ``eval_attack_steps`` the
    checkpoint selection's ``eval_steps``, ``eval_samples`` its ``eval_max`` validation images; ``lr`` or
    ``eval_samples`` None leaves the trainer's default. Options TrainSpec lacks (the optimiser's, the attack
    start, eta) the caller adds."""
    config: dict[str, Any] = dict(arch=arch, arch_options=dict(arch_options), epochs=epochs,
                                  batch_size=batch_size, beta=beta, eps=eps, step_size=step_size,
                                  steps=attack_steps, synthetic_fraction=synthetic_fraction, mixing=mixing,
                                  eval_steps=eval_attack_steps, steps_per_epoch=steps_per_epoch,
                                  eps_warmup=eps_warmup)
    if eval_samples is not None:
        config["eval_max"] = eval_samples
    if lr is not None:
        config["lr"] = lr
    return config


# Which TrainSpec fields apply to each kind (TrainSpec.record_input; tests/test_options.py checks that every
# field is listed for some kind and every kind is listed).
_COMMON_TRAIN_FIELDS = ("kind", "dataset", "epochs", "batch_size", "lr", "seed", "devices", "priority")
_EVAL_FIELDS = ("eps", "eval_attack_steps", "eval_samples", "final_eval")
TRAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "diffusion": (*_COMMON_TRAIN_FIELDS, "unet", "class_conditional"),
    "classifier": (*_COMMON_TRAIN_FIELDS, "arch", "arch_options", *_EVAL_FIELDS),
    "trades": (*_COMMON_TRAIN_FIELDS, "arch", "arch_options", *_EVAL_FIELDS, "synthetic",
               "synthetic_fraction", "beta", "step_size", "attack_steps", "mixing", "real_subset", "oracle",
               "steps_per_epoch", "eps_warmup"),
}


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
    dataset: DatasetRef
    epochs: int = Field(ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float | None = Field(default=None, gt=0, le=10, description="learning rate; default: the trainer's")
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    arch: Arch = Field(default=options.ARCH, description="classifier / trades")
    arch_options: dict[ArchOption, Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=dict, description="small_cnn: width, feature_dim; wrn: depth, widen_factor")
    unet: UnetPreset = Field(default=options.UNET, description="diffusion: UNet preset")
    class_conditional: bool = Field(default=False, description="diffusion: a class-conditional UNet (class "
                                    "embeddings); its generation jobs draw labels balanced over the job")
    # TRADES (Zhang et al. 2019) and the real/synthetic mixing of paper eq. (3).
    synthetic: list[JobRef] = Field(default_factory=list, max_length=16,
                                    description="generation jobs mixed into TRADES training (this job "
                                    "waits for unfinished ones)")
    synthetic_fraction: float = Field(default=options.SYNTHETIC_FRACTION, ge=0, lt=1,
                                      description="share of each batch drawn from the synthetic set")
    beta: float = Field(default=options.TRADES_BETA, ge=0, le=100, description="TRADES KL weight")
    eps: float = Field(default=options.EPS, ge=0, le=1, description="L_inf radius")
    step_size: float = Field(default=options.STEP_SIZE, gt=0, le=1)
    attack_steps: int = Field(default=options.ATTACK_STEPS, ge=1, le=100)
    eval_attack_steps: int = Field(default=options.EVAL_ATTACK_STEPS, ge=1, le=200)
    eval_samples: int | None = Field(default=1000, ge=1, description="test images for the final clean / "
                                     "robust evaluation (classifier, trades); null = the whole test split")
    mixing: Mixing = Field(
        default=options.MIXING, description="trades: synthetic share of each batch ('batch'), or the paper's "
        "eq.-3 weighted sum of a real and a synthetic loss ('loss')")
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

    priority: JobPriority = Field(default="normal", description=PRIORITY_DOC)

    _limits = field_validator("epochs", "batch_size", "eval_samples", "devices")(within_server_limit)

    def record_input(self) -> dict[str, Any]:
        """The spec as a job record shows it: only the fields that apply to its kind (a diffusion job's
        record does not echo TRADES' beta or eps). Validating it again gives this spec back."""
        return self.model_dump(mode="json", include=set(TRAIN_FIELDS[self.kind]))

    def trades_config_options(self) -> dict[str, Any]:
        """The ``TradesConfig`` keyword arguments of a trades spec (:func:`trades_config_options`)."""
        return trades_config_options(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, arch=self.arch,
            arch_options=self.arch_options, beta=self.beta, eps=self.eps, step_size=self.step_size,
            attack_steps=self.attack_steps, eval_attack_steps=self.eval_attack_steps,
            eval_samples=self.eval_samples, synthetic_fraction=self.synthetic_fraction, mixing=self.mixing,
            steps_per_epoch=self.steps_per_epoch, eps_warmup=self.eps_warmup)

    @model_validator(mode="after")
    def _synthetic_only_for_trades(self) -> TrainSpec:
        if self.synthetic and self.kind != "trades":
            raise cross_field(f"synthetic data is only used by kind='trades', not kind={self.kind!r}")
        if self.class_conditional and self.kind != "diffusion":
            raise cross_field(f"class_conditional: only kind='diffusion' is conditioned, not "
                             f"kind={self.kind!r}")
        if self.oracle and (self.kind != "trades" or not self.dataset.startswith("mnist5k")):
            raise cross_field("oracle: only TRADES on mnist5k / mnist5k16 has an oracle pool")
        _check_arch_options(self.arch, self.arch_options)
        if self.devices > self.batch_size:
            raise cross_field(f"devices={self.devices}: each process needs a share of the batch "
                             f"(batch_size={self.batch_size})")
        return self


class EvaluationSettings(BaseModel):
    """How a model is attacked: shared by evaluation jobs and the evaluation step of experiments."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    split: Literal["test", "val"] = "test"
    eps: float = Field(default=options.EPS, ge=0, le=1, description="L_inf radius")
    attacks: list[AttackName] = Field(default_factory=lambda: ["pgd_ce", "pgd_cw"], min_length=1,
                                      max_length=3, description="pgd_ce, pgd_cw (PGD with the CE loss / "
                                      "the CW margin), autoattack (pyautoattack)",
                                      json_schema_extra={"uniqueItems": True})
    steps: int = Field(default=options.EVAL_ATTACK_STEPS, ge=1, le=1000, description="PGD steps")
    restarts: int = Field(default=1, ge=1, le=20, description="PGD random restarts")
    step_size: float | None = Field(default=None, gt=0, le=1, description="PGD step; default 2.5 eps / steps")
    autoattack_version: Literal["standard", "fast"] = Field(
        default="standard", description="standard: APGD-CE, APGD-T, FAB-T, Square (Croce & Hein 2020); "
        "fast: APGD-CE and APGD-T only (a cheaper subset, an upper bound on standard's robust accuracy)")
    limit: int | None = Field(default=1000, ge=1, description="n images of the split, spread evenly over its "
                              "classes (a seeded stratified subset; results.npz records which); null = all")
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    batch_size: int = Field(default=256, ge=1)

    _limits = field_validator("batch_size", "limit")(within_server_limit)

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
    dataset: DatasetRef
    priority: JobPriority = Field(default="normal", description=PRIORITY_DOC)


_ARM_NAME = r"^[A-Za-z0-9+][A-Za-z0-9 _.+()-]{0,63}$"


class ArmGeneration(GenerateSpec):
    """A generation spec inside an experiment arm: ``dataset`` is the experiment's, ``count`` may come from
    the arm, ``seed`` (default 0) is shared by arms that differ only in guidance, so they start from the
    same x_T."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, json_schema_extra={
        "examples": [{"model": "job:0190a1b2c3d4e5f6a7b8c9d0", "classifier": "job:0190a1b2c3d4e5f6a7b8c9d1",
                      "loss": "none", "steps": 50, "schedule": "uniform"}]})
    dataset: DatasetRef | None = Field(default=None, description="default (and only allowed value): the "
                                        "experiment's dataset")
    count: int | None = Field(default=None, ge=1, description="default: the arm's count")


class ExperimentArm(BaseModel):
    """One arm: TRADES on the real data plus these synthetic sets (none: the real-only reference)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=_ARM_NAME, examples=["real only", "+ Contrastive-DP"])
    synthetic: list[JobRef] = Field(default_factory=list, max_length=16,
                                    description="generation jobs (unfinished ones: the experiment waits "
                                    "for them); [] = real data only")
    synthetic_fraction: float = Field(default=0.5, ge=0, lt=1)
    mixing: Mixing = options.MIXING
    oracle: bool = Field(default=False, description="mnist5k: also train on the oracle pool of real images")
    generate: ArmGeneration | None = Field(
        default=None, description="a generation job the experiment runs for this arm (a child job) and mixes "
        "in besides `synthetic`; arms with identical generation specs share one job. It needs a count: the "
        "arm's `count` or generate.count")
    count: int | None = Field(default=None, ge=1, description="only with `generate`: the images it makes "
                              "(overrides generate.count), so arms can sweep the synthetic set's size")

    _limits = field_validator("count")(within_server_limit)

    @model_validator(mode="after")
    def _generation_count(self) -> ExperimentArm:
        if self.generate is None and self.count is not None:
            raise cross_field("count: only an arm with `generate` takes a count")
        if self.generate is not None and self.count is None and self.generate.count is None:
            raise cross_field("generate: needs a count (arm `count` or generate.count)")
        return self


# The TrainSpec fields every arm of an experiment shares (ExperimentSpec.trades): ExperimentTrades takes them,
# with their types, bounds, defaults and descriptions, from TrainSpec, so each is declared once. (A base class
# of both would put these fields first in TrainSpec's schema, its job records and the generated clients.)
EXPERIMENT_TRADES_FIELDS = ("epochs", "batch_size", "lr", "arch", "arch_options", "beta", "eps", "step_size",
                            "attack_steps", "steps_per_epoch", "eps_warmup")


class _ExperimentTradesRules(BaseModel):
    """What ExperimentTrades checks besides its fields' own bounds (the fields: EXPERIMENT_TRADES_FIELDS)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    @model_validator(mode="after")
    def _arch_options(self) -> _ExperimentTradesRules:
        _check_arch_options(getattr(self, "arch"), getattr(self, "arch_options"))  # noqa: B009
        return self


ExperimentTrades = create_model(
    "ExperimentTrades",
    __base__=_ExperimentTradesRules,
    __module__=__name__,
    __doc__="The TRADES settings every arm shares (see TrainSpec for their meaning).",
    __validators__={"_limits": field_validator("epochs", "batch_size")(within_server_limit)},
    **{name: (TrainSpec.model_fields[name].annotation, copy.deepcopy(TrainSpec.model_fields[name]))
       for name in EXPERIMENT_TRADES_FIELDS},
)


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
    dataset: DatasetRef
    arms: list[ExperimentArm] = Field(min_length=1, max_length=8)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(min_length=1, max_length=10,
                                                               json_schema_extra={"uniqueItems": True})
    trades: ExperimentTrades
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    real_subset: int | None = Field(default=None, ge=10, le=1_000_000,
                                    description="train every arm on one stratified subset of n real images")
    reference: str | None = Field(default=None, max_length=64, description="the arm the others are "
                                  "compared to; default: the first")
    priority: JobPriority = Field(default="normal", description=PRIORITY_DOC + "; its child jobs inherit it")

    @model_validator(mode="after")
    def _names(self) -> ExperimentSpec:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise cross_field(f"arms: names must be unique, got {names}")
        if len(set(self.seeds)) != len(self.seeds):
            raise cross_field(f"seeds: each seed once, got {self.seeds}")
        for arm in self.arms:
            if arm.generate is not None and arm.generate.dataset not in (None, self.dataset):
                raise cross_field(f"arms: {arm.name!r} generates on dataset {arm.generate.dataset!r}, not "
                                  f"the experiment's {self.dataset!r}")
        if self.reference is None:
            self.reference = names[0]
        elif self.reference not in names:
            raise cross_field(f"reference={short(self.reference)} is not one of the arms {names}")
        return self

    def child_generate_spec(self, arm: ExperimentArm) -> GenerateSpec | None:
        """The generation child of an arm with ``generate`` (None without)."""
        if arm.generate is None:
            return None
        body = {**arm.generate.model_dump(), "dataset": self.dataset, "priority": self.priority,
                "count": arm.count if arm.count is not None else arm.generate.count}
        return GenerateSpec.model_validate(body)

    def generated_images(self) -> int:
        """Images the experiment's own generation children make (identical specs count once)."""
        specs = {g.model_dump_json(): g.count for g in map(self.child_generate_spec, self.arms) if g}
        return sum(specs.values())

    def child_train_spec(self, arm: ExperimentArm, seed: int, synthetic: list[str] | None = None
                         ) -> TrainSpec:
        synthetic = list(arm.synthetic) if synthetic is None else synthetic
        return TrainSpec(kind="trades", dataset=self.dataset, seed=seed, synthetic=synthetic,
                         synthetic_fraction=arm.synthetic_fraction, mixing=arm.mixing, oracle=arm.oracle,
                         real_subset=self.real_subset, final_eval=False, **self.trades.model_dump())

    def child_evaluate_spec(self, model_job_id: str, seed: int) -> EvaluateSpec:
        """The evaluation of run ``seed``'s model: the attacks' seed is ``evaluation.seed + seed``, so each
        run is attacked with its own random starts and the whole run is reproducible from its seed."""
        settings = self.evaluation.model_dump()
        settings["seed"] = (self.evaluation.seed + seed) % (MAX_SEED + 1)
        return EvaluateSpec(model=f"job:{model_job_id}", dataset=self.dataset, **settings)

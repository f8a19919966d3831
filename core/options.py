"""Every option's literal values and its default, written once (torch-free: ``api/`` imports it).

Each set of names is a ``Literal`` type; the tuple of its values comes from ``get_args`` of that type, so a
name is spelled in one place. The job specs (:mod:`core.specs`), the science (:mod:`core.generation`,
:mod:`core.contrastive`, :mod:`core.diffusion`), the models, the data loaders and ``cdp generate`` all read
their choices and defaults from here.

Generation defaults follow the paper (Contrastive-DP, §5 and App. D.2): the hard-negative-mining loss with
tau = 10, lambda = 1e5, tau_plus = 0.1, beta = 1; InfoNCE with tau = 0.1, lambda = 2e4; DDIM with 200 "quad"
steps and eta = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

# ------------------------------------------------------------------------------------------- guidance
ContrastiveLoss = Literal["hnm", "infonce"]
GenLoss = Literal[ContrastiveLoss, "none"]  # "none": vanilla DDIM
RealStrategy = Literal["real_positive", "real_negative"]  # the pair strategies that need real samples
Strategy = Literal["previous", RealStrategy, "class_conditional"]  # paper App. C.1
FeatureOn = Literal["x_t", "x0_hat"]  # features on x_t (the paper) or on the predicted x_0 (extension)
HeadScope = Literal["run", "batch"]  # one embedding head per run (the authors' loop) or one per batch
Schedule = Literal["uniform", "quad"]  # DDIM timestep subsequences (Song et al. 2021, App. D.2)
SelectionCriterion = Literal["separability", "separability_margin", "separability_literal", "grad_norm",
                             "robust_grad_norm", "entropy"]  # paper App. D.3

CONTRASTIVE_LOSSES: tuple[str, ...] = get_args(ContrastiveLoss)
GEN_LOSSES: tuple[str, ...] = get_args(GenLoss)
REAL_STRATEGIES: tuple[str, ...] = get_args(RealStrategy)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
FEATURE_ON: tuple[str, ...] = get_args(FeatureOn)
HEAD_SCOPES: tuple[str, ...] = get_args(HeadScope)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
CRITERIA: tuple[str, ...] = get_args(SelectionCriterion)

# ------------------------------------------------------------------------------------ models and data
Arch = Literal["small_cnn", "wrn"]  # classifier architectures (core.models.classifiers)
UnetPreset = Literal["tiny", "ddpm_cifar10"]  # core.models.unet
PackagedDataset = Literal["digits", "mnist5k", "mnist5k16"]  # ship inside an installed package
DatasetName = Literal[PackagedDataset, "cifar10", "gtsrb"]
TrainKind = Literal["diffusion", "classifier", "trades"]
Mixing = Literal["batch", "loss"]  # TRADES: synthetic share of each batch, or the paper's eq.-3 weighted sum
AttackName = Literal["pgd_ce", "pgd_cw", "autoattack"]

TradesSchedule = Literal["cosine", "onecycle", "constant"]  # TRADES learning-rate schedules
AttackStart = Literal["normal", "uniform"]  # PGD start: x + 0.001 N(0, I) (TRADES' code) or uniform
ToyModel = Literal["mlp", "exact"]  # the 2-D toy's eps-model: a trained MLP or the exact mixture denoiser
ToyFeatures = Literal["rff", "identity"]  # the toy's feature map: random Fourier features or the identity
ToyLabels = Literal["pseudo", "oracle"]  # the toy's class_conditional labels: eq.-5 labeller or Bayes rule

ARCHS: tuple[str, ...] = get_args(Arch)
UNET_PRESETS: tuple[str, ...] = get_args(UnetPreset)
PACKAGED_DATASETS: tuple[str, ...] = get_args(PackagedDataset)
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
TRAIN_KINDS: tuple[str, ...] = get_args(TrainKind)
MIXINGS: tuple[str, ...] = get_args(Mixing)
ATTACKS: tuple[str, ...] = get_args(AttackName)
TRADES_SCHEDULES: tuple[str, ...] = get_args(TradesSchedule)
ATTACK_STARTS: tuple[str, ...] = get_args(AttackStart)
TOY_MODELS: tuple[str, ...] = get_args(ToyModel)
TOY_FEATURES: tuple[str, ...] = get_args(ToyFeatures)
TOY_LABELS: tuple[str, ...] = get_args(ToyLabels)

# ------------------------------------------------------------------------------ generation defaults
CONTRASTIVE_LOSS: ContrastiveLoss = "hnm"
LOSS: GenLoss = CONTRASTIVE_LOSS
TAU: dict[str, float] = {"hnm": 10.0, "infonce": 0.1, "none": 10.0}  # "none" never uses it
LAM: dict[str, float] = {"hnm": 1e5, "infonce": 2e4, "none": 0.0}
TAU_PLUS = 0.1
BETA = 1.0
STRATEGY: Strategy = "previous"
FEATURE_ON_DEFAULT: FeatureOn = "x_t"
HEAD_SCOPE: HeadScope = "run"
STEPS = 200
SCHEDULE: Schedule = "quad"
ETA = 0.0
BATCH_SIZE = 256
CRITERION: SelectionCriterion = "separability"

# -------------------------------------------------------------------------------- training defaults
ARCH: Arch = "small_cnn"
UNET: UnetPreset = "tiny"
EPS = 8 / 255  # L_inf radius of training and evaluation attacks (CIFAR-10's usual budget)
STEP_SIZE = 2 / 255  # PGD step of the TRADES inner maximisation
TRADES_BETA = 6.0  # TRADES' KL weight (Zhang et al. 2019)
ATTACK_STEPS = 10  # PGD steps while training
EVAL_ATTACK_STEPS = 20  # PGD steps of the evaluations
MIXING: Mixing = "batch"
SYNTHETIC_FRACTION = 0.7  # share of each batch that is synthetic (mixing "batch")
MIXING_ETA = 0.3  # weight of the real data in eq. 3 (mixing "loss")
TRADES_SCHEDULE: TradesSchedule = "cosine"
ATTACK_START: AttackStart = "normal"


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """ValueError ``"<name> must be one of (...), got <value>"`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")

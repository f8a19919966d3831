"""Generate a labelled synthetic set with (contrastive-guided) DDIM: the science behind ``cdp generate`` and
the service's generation jobs. The quality numbers of a generated set are in :mod:`core.quality`.

Pipeline per batch (paper Algorithm 1 + §2.1): x_T ~ N(0, I) from a per-batch generator seeded from
(seed, batch index) -> guided DDIM over ``steps`` timesteps -> clip to [-1, 1] -> uint8 -> pseudo-labels,
confidence and entropy from the classifier (on the uint8 images / 255, exactly what a downstream
training run sees). The guidance's feature extractor is ``classifier.features((x + 1) / 2)``: the diffusion
model works in [-1, 1], the classifier in [0, 1] (see ``core.contrastive.classifier_feature_fn``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core import options
from core.contrastive import (
    ContrastiveGuidance,
    check_guidance_args,
    classifier_feature_fn,
    classifier_label_fn,
    pseudo_label,
    validate_window,
)
from core.data.images import to_signed
from core.diffusion import DiffusionModel, ddim_timesteps, sample
from core.diffusion.fast import SamplingSpeed, fast_features, fast_unet
from core.options import FeatureOn, GenLoss, HeadScope, Schedule, Strategy, check_choice
from core.progress import ProgressEvent, ProgressFn, Stage
from core.quality import check_uint8_nhwc

__all__ = [
    "GeneratedSet",
    "GenerationParams",
    "batch_seed",
    "generate",
    "images_to_model_space",
    "model_space_to_uint8",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Sampling and guidance settings (paper Algorithm 1; App. C.1). ``loss="none"`` or ``lam=0`` is vanilla
    DDIM. ``guidance_window=(lo, hi)`` guides only for lo <= t <= hi (None: every step but the first).
    ``feature_on`` (extension): features on x_t (the paper) or on the predicted x_0. ``head_scope`` (with
    ``embedding_head``): one head trained online across every batch of the run ("run", as the authors'
    loop does) or a fresh head per batch ("batch", this project's first reading).

    The defaults are :mod:`core.options`' (the paper's); ``lam`` and ``tau`` are always given: the API's
    :class:`core.specs.GenerateSpec` fills both with the paper's value for the loss, ``cdp generate`` fills
    tau and asks for lambda.
    The object checks itself once, when it is made: the choices and ranges of every field, the guidance's
    hyperparameters with the same :func:`core.contrastive.check_guidance_args` that ``ContrastiveGuidance``
    applies. ``GenerateSpec`` checks the API's shape and bounds first; :meth:`from_spec` converts it.
    """

    loss: GenLoss = options.LOSS
    lam: float
    tau: float
    tau_plus: float = options.TAU_PLUS
    beta: float = options.BETA
    strategy: Strategy = options.STRATEGY
    embedding_head: bool = False
    steps: int = options.STEPS
    schedule: Schedule = options.SCHEDULE
    eta: float = options.ETA
    guidance_window: tuple[int, int] | None = None
    batch_size: int = options.BATCH_SIZE
    feature_on: FeatureOn = options.FEATURE_ON_DEFAULT
    head_scope: HeadScope = options.HEAD_SCOPE

    def __post_init__(self) -> None:
        if isinstance(self.guidance_window, list):
            object.__setattr__(self, "guidance_window", tuple(self.guidance_window))
        check_choice("loss", self.loss, options.GEN_LOSSES)
        check_guidance_args(
            loss=options.CONTRASTIVE_LOSS if self.loss == "none" else self.loss, lam=self.lam, tau=self.tau,
            tau_plus=self.tau_plus, beta=self.beta, strategy=self.strategy,
        )
        _check_positive_int("steps", self.steps)
        check_choice("schedule", self.schedule, options.SCHEDULES)
        if not isinstance(self.eta, int | float) or not math.isfinite(self.eta) or self.eta < 0:
            raise ValueError(f"eta must be a finite number >= 0, got {self.eta!r}")
        validate_window(self.guidance_window)
        _check_positive_int("batch_size", self.batch_size)
        if not isinstance(self.embedding_head, bool):
            raise ValueError(f"embedding_head must be a bool, got {self.embedding_head!r}")
        check_choice("feature_on", self.feature_on, options.FEATURE_ON)
        check_choice("head_scope", self.head_scope, options.HEAD_SCOPES)

    @classmethod
    def from_spec(cls, spec: Any) -> GenerationParams:
        """The settings of an accepted generation job: any object with these fields, in practice a
        ``core.specs.GenerateSpec`` that has already filled lam and tau (typed loosely: the science imports no
        seams, tests/test_layout.py)."""
        values = {f.name: getattr(spec, f.name) for f in fields(cls)}
        return cls(**values)

    @property
    def guided(self) -> bool:
        return self.loss != "none" and self.lam > 0

    def timesteps(self, num_train_timesteps: int) -> list[int]:
        """The DDIM sequence for a model with ``num_train_timesteps``; checks steps and the window."""
        ts = ddim_timesteps(num_train_timesteps, self.steps, self.schedule)
        if self.guided and self.guidance_window is not None:
            if self.guidance_window[1] > num_train_timesteps - 1:
                raise ValueError(
                    f"guidance_window {self.guidance_window!r} exceeds the model's last timestep "
                    f"{num_train_timesteps - 1}"
                )
            validate_window(self.guidance_window, ts)
        return ts

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["guidance_window"] = list(self.guidance_window) if self.guidance_window is not None else None
        return out


@dataclass
class GeneratedSet:
    """A generated, pseudo-labelled set; the images follow :mod:`core.data.dataset`'s convention (uint8
    N x H x W x C), ``guidance`` holds one entry per guided step of every batch (what
    :meth:`guidance_summary` and ``cdp generate``'s metrics report)."""

    images: np.ndarray  # uint8 N x H x W x C
    labels: np.ndarray  # int64 pseudo-labels
    confidence: np.ndarray  # float32 max softmax probability
    entropy: np.ndarray  # float32 softmax entropy (nats)
    class_labels: np.ndarray | None = None  # int64 conditioning labels of a conditional model
    guidance: list[dict[str, float]] = field(default_factory=list)  # per guided step: batch, t, loss, norm

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def guidance_summary(self) -> dict[str, float | int] | None:
        """guided_steps (over all batches), mean_loss and mean_grad_norm (mean over those steps of the batch
        loss and of the mean ||lam * grad||); None for an unguided set."""
        if not self.guidance:
            return None
        n = len(self.guidance)
        return {"guided_steps": n, "mean_loss": sum(g["loss"] for g in self.guidance) / n,
                "mean_grad_norm": sum(g["grad_norm"] for g in self.guidance) / n}

    def save_npz(self, path: Path) -> None:
        """Write ``image``/``label`` (the ecosystem's keys) plus ``confidence`` and ``entropy``."""
        np.savez(path, image=self.images, label=self.labels, confidence=self.confidence, entropy=self.entropy)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def batch_seed(seed: int, batch: int) -> int:
    """A 63-bit seed for batch ``batch`` of a run seeded ``seed`` (independent streams per batch)."""
    state = np.random.SeedSequence([int(seed), int(batch)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def images_to_model_space(images: np.ndarray, *, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [-1, 1] (the diffusion model's range)."""
    check_uint8_nhwc("images", images)
    return to_signed(images, device)


def model_space_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float N x C x H x W in [-1, 1] (clipped) -> uint8 N x H x W x C."""
    y = ((x.detach().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def generate(
    diffusion: DiffusionModel,
    classifier: nn.Module,
    *,
    params: GenerationParams,
    count: int,
    seed: int,
    real_images: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    speed: SamplingSpeed | None = None,
    feature_extractor: nn.Module | None = None,
    head_seed: int | None = None,
    label_offset: int = 0,
) -> GeneratedSet:
    """Sample ``count`` images (guided per ``params``), pseudo-label them with ``classifier``.

    The guidance takes its features from ``feature_extractor`` when given (e.g. an adversarially trained
    model), else from ``classifier``; the pseudo-labels always come from ``classifier``. With
    ``params.head_scope == "run"`` one embedding head serves the whole run, initialised from ``head_seed``
    (default ``seed``): a sharded job passes its job seed, so every shard starts from the same head.
    A class-conditional model gets label ``(label_offset + i) % num_classes`` for the run's i-th image: a
    sharded job passes the index of its shard's first image, so the classes are balanced over the whole job
    (not restarted at 0 in every shard).

    Deterministic given ``seed`` (batch b uses a generator seeded from (seed, b)). The models must already
    be on ``device``; the classifier is put in eval mode. ``real_images`` (uint8 N x H x W x C, same size as
    the model) feed the real_positive / real_negative strategies. ``progress`` gets a ``Stage.SAMPLING`` event
    (current of total) after every DDIM step (total = batches x steps) and may raise
    ``core.progress.Cancelled`` to stop. ``speed`` switches on the optional fast paths of
    :mod:`core.diffusion.fast` (compile, channels_last, bf16 on CUDA).
    """
    _check_generate_args(classifier, feature_extractor, count=count, label_offset=label_offset)
    ts = params.timesteps(diffusion.num_train_timesteps)
    shape = (diffusion.channels, diffusion.image_size, diffusion.image_size)
    real = _real_for_guidance(params, real_images, shape=shape, device=device)
    classifier.eval()
    diffusion.unet.eval()
    extractor = feature_extractor if feature_extractor is not None else classifier
    extractor.eval()
    speed = speed or SamplingSpeed()
    unet = fast_unet(diffusion.unet, speed)
    feature_fn = fast_features(classifier_feature_fn(extractor), speed)
    n_batches = math.ceil(count / params.batch_size)
    total_steps = n_batches * len(ts)
    images: list[np.ndarray] = []
    cond: list[np.ndarray] = []
    history: list[dict[str, float]] = []
    guidance: ContrastiveGuidance | None = None
    run_scope = params.embedding_head and params.head_scope == "run"  # else a fresh guidance per batch
    for b in range(n_batches):
        n = min(params.batch_size, count - b * params.batch_size)
        gen = torch.Generator(device=device).manual_seed(batch_seed(seed, b))
        x_T = torch.randn((n, *shape), generator=gen, device=device)
        first = label_offset + b * params.batch_size  # the job-wide index of the batch's first image
        class_labels = _class_labels(diffusion, start=first, n=n, device=device)
        if class_labels is not None:
            cond.append(class_labels.cpu().numpy())
        if params.guided and (guidance is None or not run_scope):
            head_gen_seed = batch_seed(seed if head_seed is None else head_seed, 0) if run_scope else \
                batch_seed(seed, b)
            guidance = _make_guidance(params, feature_fn, classifier, real=real,
                                      conditional=class_labels is not None, keep_head=run_scope,
                                      head_seed=head_gen_seed, device=device)

        def on_step(step: int, _total: int, _b: int = b) -> None:
            if progress is not None:
                progress(ProgressEvent(Stage.SAMPLING, _b * len(ts) + step, total_steps,
                                       message=f"batch {_b + 1}/{n_batches}"))

        x0 = sample(unet, x_T, alphas_cumprod=diffusion.alphas_cumprod, timesteps=ts,
                    eta=params.eta, guidance=guidance, class_labels=class_labels, generator=gen,
                    callback=on_step, autocast_dtype=speed.autocast_dtype(device))
        images.append(model_space_to_uint8(x0))
        if guidance is not None:
            history += [
                {"batch": b, "t": h.t, "loss": h.loss, "grad_norm": h.grad_norm} for h in guidance.history
            ]
    generated = _pseudo_labelled(classifier, np.concatenate(images), cond=cond, guidance=history,
                                 batch_size=max(params.batch_size, 256), progress=progress)
    log.info("generated %d images (%s, lam=%g, %d steps)", count, params.loss, params.lam, len(ts))
    return generated


def _check_generate_args(classifier: nn.Module, feature_extractor: nn.Module | None, *, count: int,
                         label_offset: int) -> None:
    _check_positive_int("count", count)
    if isinstance(label_offset, bool) or not isinstance(label_offset, int) or label_offset < 0:
        raise ValueError(f"label_offset must be an int >= 0, got {label_offset!r}")
    if not hasattr(classifier, "features"):
        raise ValueError(f"classifier {type(classifier).__name__} has no features() method")
    if feature_extractor is not None and not hasattr(feature_extractor, "features"):
        raise ValueError(f"feature_extractor {type(feature_extractor).__name__} has no features() method")


def _real_for_guidance(params: GenerationParams, real_images: np.ndarray | None, *,
                       shape: tuple[int, int, int], device: str | torch.device) -> torch.Tensor | None:
    """The real images in the model's space when the guidance's strategy needs them (None otherwise);
    ValueError when they are missing or of another shape than the model's (C, H, W) ``shape``."""
    if not (params.guided and params.strategy in options.REAL_STRATEGIES):
        return None
    if real_images is None or len(real_images) == 0:
        raise ValueError(f"strategy {params.strategy!r} needs real_images, got none")
    real = images_to_model_space(real_images, device=device)
    if tuple(real.shape[1:]) != shape:
        got = tuple(real.shape[1:])
        raise ValueError(f"real_images have shape {got} (C, H, W); the model makes {shape}")
    return real


def _class_labels(diffusion: DiffusionModel, *, start: int, n: int,
                  device: str | torch.device) -> torch.Tensor | None:
    """A class-conditional model's labels for the run's images ``start`` .. ``start + n - 1``: balanced,
    cycling over the classes across the whole job; None for an unconditional model."""
    if diffusion.num_classes is None:
        return None
    return (torch.arange(start, start + n, device=device) % diffusion.num_classes).long()


def _make_guidance(
    params: GenerationParams,
    feature_fn: Any,
    classifier: nn.Module,
    *,
    real: torch.Tensor | None,
    conditional: bool,
    keep_head: bool,
    head_seed: int,
    device: str | torch.device,
) -> ContrastiveGuidance:
    """The contrastive guidance of ``params`` (guided ones only) on the features of ``feature_fn``. An
    unconditional model's samples get their labels from ``classifier`` (``conditional``: the model's own
    labels serve); ``keep_head`` keeps one embedding head across batches; the head's initial weights come
    from ``head_seed``."""
    return ContrastiveGuidance(
        feature_fn,
        loss=params.loss,  # type: ignore[arg-type]  # "none" excluded by params.guided
        lam=params.lam, tau=params.tau, tau_plus=params.tau_plus, beta=params.beta,
        strategy=params.strategy, window=params.guidance_window, feature_on=params.feature_on,
        real=real, label_fn=None if conditional else classifier_label_fn(classifier),
        embedding_head=params.embedding_head, keep_head=keep_head,
        generator=torch.Generator(device=device).manual_seed(head_seed ^ 0x5EED),
    )


def _pseudo_labelled(classifier: nn.Module, images: np.ndarray, *, cond: list[np.ndarray],
                     guidance: list[dict[str, float]], batch_size: int,
                     progress: ProgressFn | None) -> GeneratedSet:
    """The generated uint8 ``images`` with the classifier's pseudo-labels, confidence and entropy."""
    if progress is not None:
        progress(ProgressEvent(Stage.LABELLING, 0, 1))
    pseudo = pseudo_label(classifier, images, batch_size=batch_size)
    if progress is not None:
        progress(ProgressEvent(Stage.LABELLING, 1, 1))
    return GeneratedSet(
        images=images,
        labels=pseudo.labels.numpy().astype(np.int64),
        confidence=pseudo.confidence.numpy().astype(np.float32),
        entropy=pseudo.entropy.numpy().astype(np.float32),
        class_labels=np.concatenate(cond).astype(np.int64) if cond else None,
        guidance=guidance,
    )

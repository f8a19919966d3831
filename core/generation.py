"""Generate a labelled synthetic set with (contrastive-guided) DDIM: the science behind ``cdp generate`` and
the service's generation jobs.

Pipeline per batch (paper Algorithm 1 + §2.1): x_T ~ N(0, I) from a per-batch generator seeded from
(seed, batch index) -> guided DDIM over ``steps`` timesteps -> clip to [-1, 1] -> uint8 -> pseudo-labels,
confidence and entropy from the classifier (on the uint8 images / 255, exactly what a downstream
training run sees). The guidance's feature extractor is ``classifier.features((x + 1) / 2)``: the diffusion
model works in [-1, 1], the classifier in [0, 1] (see ``core.contrastive.classifier_feature_fn``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from core.contrastive import (
    ContrastiveGuidance,
    check_guidance_args,
    classifier_feature_fn,
    classifier_label_fn,
    feature_separability,
    pseudo_label,
    validate_window,
)
from core.diffusion import DiffusionModel, ddim_timesteps, sample
from core.diffusion.fast import SamplingSpeed, fast_features, fast_unet
from core.progress import ProgressFn

log = logging.getLogger(__name__)

GenLoss = Literal["hnm", "infonce", "none"]
Schedule = Literal["uniform", "quad"]


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Sampling and guidance settings (paper Algorithm 1; App. C.1). ``loss="none"`` or ``lam=0`` is vanilla
    DDIM. ``guidance_window=(lo, hi)`` guides only for lo <= t <= hi (None: every step but the first).
    ``feature_on`` (extension): features on x_t (the paper) or on the predicted x_0."""

    loss: GenLoss = "hnm"
    lam: float
    tau: float
    tau_plus: float = 0.1
    beta: float = 1.0
    strategy: Literal["previous", "real_positive", "real_negative", "class_conditional"] = "previous"
    embedding_head: bool = False
    steps: int
    schedule: Schedule
    eta: float = 0.0
    guidance_window: tuple[int, int] | None
    batch_size: int
    feature_on: Literal["x_t", "x0_hat"] = "x_t"

    def __post_init__(self) -> None:
        if isinstance(self.guidance_window, list):
            object.__setattr__(self, "guidance_window", tuple(self.guidance_window))
        if self.loss not in get_args(GenLoss):
            raise ValueError(f"loss must be one of {get_args(GenLoss)}, got {self.loss!r}")
        check_guidance_args(
            loss="hnm" if self.loss == "none" else self.loss, lam=self.lam, tau=self.tau,
            tau_plus=self.tau_plus, beta=self.beta, strategy=self.strategy,
        )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if self.schedule not in get_args(Schedule):
            raise ValueError(f"schedule must be one of {get_args(Schedule)}, got {self.schedule!r}")
        if not isinstance(self.eta, int | float) or not math.isfinite(self.eta) or self.eta < 0:
            raise ValueError(f"eta must be a finite number >= 0, got {self.eta!r}")
        validate_window(self.guidance_window)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.embedding_head, bool):
            raise ValueError(f"embedding_head must be a bool, got {self.embedding_head!r}")
        if self.feature_on not in ("x_t", "x0_hat"):
            raise ValueError(f"feature_on must be 'x_t' or 'x0_hat', got {self.feature_on!r}")

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
    """A generated, pseudo-labelled set (INTERFACES.md)."""

    images: np.ndarray  # uint8 N x H x W x C
    labels: np.ndarray  # int64 pseudo-labels
    confidence: np.ndarray  # float32 max softmax probability
    entropy: np.ndarray  # float32 softmax entropy (nats)
    class_labels: np.ndarray | None = None  # int64 conditioning labels of a conditional model
    guidance: list[dict[str, float]] = field(default_factory=list)  # per guided step: mean loss, grad norm

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def save_npz(self, path: Path) -> None:
        """Write ``image``/``label`` (the ecosystem's keys) plus ``confidence`` and ``entropy``."""
        np.savez(path, image=self.images, label=self.labels, confidence=self.confidence, entropy=self.entropy)


def batch_seed(seed: int, batch: int) -> int:
    """A 63-bit seed for batch ``batch`` of a run seeded ``seed`` (independent streams per batch)."""
    state = np.random.SeedSequence([int(seed), int(batch)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def images_to_model_space(images: np.ndarray, *, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [-1, 1] (the diffusion model's range)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"images must be a uint8 N x H x W x C array, got {getattr(images, 'dtype', type(images))} "
            f"{getattr(images, 'shape', '')}"
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().to(device)
    return x / 127.5 - 1.0


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
) -> GeneratedSet:
    """Sample ``count`` images (guided per ``params``), pseudo-label them with ``classifier``.

    Deterministic given ``seed`` (batch b uses a generator seeded from (seed, b)). The models must already
    be on ``device``; the classifier is put in eval mode. ``real_images`` (uint8 N x H x W x C, same size as
    the model) feed the real_positive / real_negative strategies. ``progress(stage="sampling", current,
    total)`` is called after every DDIM step (total = batches x steps) and may raise
    ``core.progress.Cancelled`` to stop. ``speed`` switches on the optional fast paths of
    :mod:`core.diffusion.fast` (compile, channels_last, bf16 on CUDA).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if not hasattr(classifier, "features"):
        raise ValueError(f"classifier {type(classifier).__name__} has no features() method")
    ts = params.timesteps(diffusion.num_train_timesteps)
    shape = (diffusion.channels, diffusion.image_size, diffusion.image_size)
    real = None
    if params.guided and params.strategy in ("real_positive", "real_negative"):
        if real_images is None or len(real_images) == 0:
            raise ValueError(f"strategy {params.strategy!r} needs real_images, got none")
        real = images_to_model_space(real_images, device=device)
        if tuple(real.shape[1:]) != shape:
            got = tuple(real.shape[1:])
            raise ValueError(f"real_images have shape {got} (C, H, W); the model makes {shape}")
    classifier.eval()
    diffusion.unet.eval()
    speed = speed or SamplingSpeed()
    unet = fast_unet(diffusion.unet, speed)
    feature_fn = fast_features(classifier_feature_fn(classifier), speed)
    n_batches = math.ceil(count / params.batch_size)
    total_steps = n_batches * len(ts)
    images: list[np.ndarray] = []
    cond: list[np.ndarray] = []
    history: list[dict[str, float]] = []
    for b in range(n_batches):
        n = min(params.batch_size, count - b * params.batch_size)
        gen = torch.Generator(device=device).manual_seed(batch_seed(seed, b))
        x_T = torch.randn((n, *shape), generator=gen, device=device)
        class_labels = None
        if diffusion.num_classes is not None:  # balanced labels, cycling over the whole run
            start = b * params.batch_size
            class_labels = (torch.arange(start, start + n, device=device) % diffusion.num_classes).long()
            cond.append(class_labels.cpu().numpy())
        guidance = None
        if params.guided:
            guidance = ContrastiveGuidance(
                feature_fn,
                loss=params.loss,  # type: ignore[arg-type]  # "none" excluded by params.guided
                lam=params.lam, tau=params.tau, tau_plus=params.tau_plus, beta=params.beta,
                strategy=params.strategy, window=params.guidance_window, feature_on=params.feature_on,
                real=real, label_fn=classifier_label_fn(classifier) if class_labels is None else None,
                embedding_head=params.embedding_head,
                generator=torch.Generator(device=device).manual_seed(batch_seed(seed, b) ^ 0x5EED),
            )

        def on_step(step: int, _total: int, _b: int = b) -> None:
            if progress is not None:
                progress(stage="sampling", current=_b * len(ts) + step, total=total_steps,
                         message=f"batch {_b + 1}/{n_batches}")

        x0 = sample(unet, x_T, alphas_cumprod=diffusion.alphas_cumprod, timesteps=ts,
                    eta=params.eta, guidance=guidance, class_labels=class_labels, generator=gen,
                    callback=on_step, autocast_dtype=speed.autocast_dtype(device))
        images.append(model_space_to_uint8(x0))
        if guidance is not None:
            history += [
                {"batch": b, "t": h.t, "loss": h.loss, "grad_norm": h.grad_norm} for h in guidance.history
            ]
    all_images = np.concatenate(images)
    if progress is not None:
        progress(stage="labelling", current=0, total=1)
    pl = pseudo_label(classifier, all_images, batch_size=max(params.batch_size, 256))
    if progress is not None:
        progress(stage="labelling", current=1, total=1)
    log.info("generated %d images (%s, lam=%g, %d steps)", count, params.loss, params.lam, len(ts))
    return GeneratedSet(
        images=all_images,
        labels=pl.labels.numpy().astype(np.int64),
        confidence=pl.confidence.numpy().astype(np.float32),
        entropy=pl.entropy.numpy().astype(np.float32),
        class_labels=np.concatenate(cond).astype(np.int64) if cond else None,
        guidance=history,
    )


def sample_metrics(
    classifier: nn.Module, images_uint8_nhwc: np.ndarray, labels: np.ndarray, *, max_pairs: int = 2000
) -> dict[str, Any]:
    """Quality/diversity numbers for a labelled synthetic set, from ``classifier`` (eval mode).

    count; class_histogram (per class, of ``labels``); mean_confidence / mean_entropy of the classifier;
    label_agreement (classifier argmax == labels); separability of the penultimate features: mean distance
    to the own class centroid, to the nearest other centroid, and margin = mean (d_other - d_own) /
    (d_other + d_own); mean_feature_cosine: mean pairwise cosine of the features (over at most
    ``max_pairs`` samples; lower = more diverse).
    """
    labels_t = torch.as_tensor(np.asarray(labels)).long()
    if labels_t.shape != (len(images_uint8_nhwc),):
        raise ValueError(f"labels must have shape ({len(images_uint8_nhwc)},), got {tuple(labels_t.shape)}")
    default_k = int(labels_t.max()) + 1 if labels_t.numel() else 0
    num_classes = max(int(getattr(classifier, "num_classes", default_k)), default_k)
    if labels_t.numel() == 0:
        return {"count": 0, "class_histogram": [0] * num_classes}
    hist = np.bincount(labels_t.numpy(), minlength=num_classes).tolist()
    classifier.eval()
    pl = pseudo_label(classifier, images_uint8_nhwc)
    sep = feature_separability(pl.features, labels_t)
    f = torch.nn.functional.normalize(pl.features[:max_pairs].double(), dim=1)
    m = f.shape[0]
    cos = (f @ f.T).sum().sub(m).div(m * (m - 1)).item() if m > 1 else math.nan
    return {
        "count": int(labels_t.numel()),
        "class_histogram": hist,
        "mean_confidence": float(pl.confidence.mean()),
        "mean_entropy": float(pl.entropy.mean()),
        "label_agreement": float((pl.labels == labels_t).float().mean()),
        "separability_margin": sep["margin"],
        "mean_dist_own_centroid": sep["mean_dist_own"],
        "mean_dist_other_centroid": sep["mean_dist_other"],
        "mean_feature_cosine": cos,
    }

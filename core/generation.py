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
from core.data.images import to_signed, to_unit
from core.diffusion import DiffusionModel, ddim_timesteps, sample
from core.diffusion.fast import SamplingSpeed, fast_features, fast_unet
from core.progress import ProgressEvent, ProgressFn, Stage

log = logging.getLogger(__name__)

GenLoss = Literal["hnm", "infonce", "none"]
Schedule = Literal["uniform", "quad"]


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Sampling and guidance settings (paper Algorithm 1; App. C.1). ``loss="none"`` or ``lam=0`` is vanilla
    DDIM. ``guidance_window=(lo, hi)`` guides only for lo <= t <= hi (None: every step but the first).
    ``feature_on`` (extension): features on x_t (the paper) or on the predicted x_0. ``head_scope`` (with
    ``embedding_head``): one head trained online across every batch of the run ("run", as the authors'
    loop does) or a fresh head per batch ("batch", this project's first reading)."""

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
    head_scope: Literal["run", "batch"] = "run"

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
        if self.head_scope not in ("run", "batch"):
            raise ValueError(f"head_scope must be 'run' or 'batch', got {self.head_scope!r}")

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
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if isinstance(label_offset, bool) or not isinstance(label_offset, int) or label_offset < 0:
        raise ValueError(f"label_offset must be an int >= 0, got {label_offset!r}")
    if not hasattr(classifier, "features"):
        raise ValueError(f"classifier {type(classifier).__name__} has no features() method")
    if feature_extractor is not None and not hasattr(feature_extractor, "features"):
        raise ValueError(f"feature_extractor {type(feature_extractor).__name__} has no features() method")
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
    for b in range(n_batches):
        n = min(params.batch_size, count - b * params.batch_size)
        gen = torch.Generator(device=device).manual_seed(batch_seed(seed, b))
        x_T = torch.randn((n, *shape), generator=gen, device=device)
        class_labels = None
        if diffusion.num_classes is not None:  # balanced labels, cycling over the whole job
            start = label_offset + b * params.batch_size
            class_labels = (torch.arange(start, start + n, device=device) % diffusion.num_classes).long()
            cond.append(class_labels.cpu().numpy())
        run_scope = params.embedding_head and params.head_scope == "run"  # else a fresh guidance per batch
        if params.guided and (guidance is None or not run_scope):
            head_gen_seed = batch_seed(seed if head_seed is None else head_seed, 0) if run_scope else \
                batch_seed(seed, b)
            guidance = ContrastiveGuidance(
                feature_fn,
                loss=params.loss,  # type: ignore[arg-type]  # "none" excluded by params.guided
                lam=params.lam, tau=params.tau, tau_plus=params.tau_plus, beta=params.beta,
                strategy=params.strategy, window=params.guidance_window, feature_on=params.feature_on,
                real=real, label_fn=classifier_label_fn(classifier) if class_labels is None else None,
                embedding_head=params.embedding_head, keep_head=run_scope,
                generator=torch.Generator(device=device).manual_seed(head_gen_seed ^ 0x5EED),
            )

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
    all_images = np.concatenate(images)
    if progress is not None:
        progress(ProgressEvent(Stage.LABELLING, 0, 1))
    pl = pseudo_label(classifier, all_images, batch_size=max(params.batch_size, 256))
    if progress is not None:
        progress(ProgressEvent(Stage.LABELLING, 1, 1))
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
    separability of the penultimate features: mean distance to the own class centroid, to the nearest other
    centroid, and margin = mean (d_other - d_own) / (d_other + d_own); mean_feature_cosine: mean pairwise
    cosine of the features (over at most ``max_pairs`` samples; lower = more diverse). No label agreement:
    against the classifier that made the pseudo-labels it is 1 by construction; :func:`sample_quality` gets
    it from an independent judge.
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
        "separability_margin": sep["margin"],
        "mean_dist_own_centroid": sep["mean_dist_own"],
        "mean_dist_other_centroid": sep["mean_dist_other"],
        "mean_feature_cosine": cos,
    }


# --------------------------------------------------------------------------------------- sample quality
# RMS distance (on [0, 1] pixels) below which a sample counts as a copy of a real training image. On
# scikit-learn digits (16 x 16, the 1295-image train split) the nearest *distinct* train image is at least
# 0.047 RMS away (1st percentile 0.053, median 0.092), and test images are >= 0.042 from their nearest train
# image; 0.02 is less than half the smallest of those, yet far above the < 4e-4 float32 error of an exact copy
# and above uint8 rounding (1/255 ~ 0.004 RMS at most).
DUPLICATE_THRESHOLD = 0.02


def _check_uint8_nhwc(name: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{name} must be a uint8 N x H x W x C array, got {getattr(images, 'dtype', type(images))} "
            f"{getattr(images, 'shape', '')}"
        )


def total_variation(images_uint8_nhwc: np.ndarray, *, batch_size: int = 4096,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """Per image: mean |difference| of horizontally neighbouring pixels + the same vertically, on [0, 1]
    floats (averaged over channels). Smooth images score low, speckle/noise high (uniform noise ~0.67)."""
    _check_uint8_nhwc("images", images_uint8_nhwc)
    out = []
    for start in range(0, len(images_uint8_nhwc), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images_uint8_nhwc[start : start + batch_size]))
        x = to_unit(x, device)
        tv = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
        tv = tv + (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        out.append(tv.cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def nearest_real_distance(
    images_uint8_nhwc: np.ndarray, real_images_uint8_nhwc: np.ndarray, *, chunk: int = 2048,
    real_chunk: int = 4096, device: str | torch.device = "cpu",
) -> np.ndarray:
    """Per sample: RMS distance (L2 of flattened [0, 1] pixels / sqrt(pixel values)) to the nearest real one.

    Chunked ``torch.cdist`` over both sets (at most ``chunk`` x ``real_chunk`` distances and those two float
    blocks in memory at once; the inputs stay uint8), so 10k samples x 50k real CIFAR images fit easily.
    """
    _check_uint8_nhwc("images", images_uint8_nhwc)
    _check_uint8_nhwc("real images", real_images_uint8_nhwc)
    if images_uint8_nhwc.shape[1:] != real_images_uint8_nhwc.shape[1:]:
        raise ValueError(f"images are {images_uint8_nhwc.shape[1:]} (H, W, C) but the real images are "
                         f"{real_images_uint8_nhwc.shape[1:]}")
    if len(real_images_uint8_nhwc) == 0:
        raise ValueError("no real images to compare against")
    n, dim = len(images_uint8_nhwc), int(np.prod(images_uint8_nhwc.shape[1:]))
    samples = torch.from_numpy(np.ascontiguousarray(images_uint8_nhwc).reshape(n, dim)).to(device)
    best = torch.full((n,), math.inf, device=device)
    for r in range(0, len(real_images_uint8_nhwc), real_chunk):
        real = torch.from_numpy(np.ascontiguousarray(real_images_uint8_nhwc[r : r + real_chunk]))
        real = real.reshape(-1, dim).to(device).float().div(255.0)
        for s in range(0, n, chunk):
            d = torch.cdist(samples[s : s + chunk].float().div(255.0), real).min(dim=1).values
            best[s : s + chunk] = torch.minimum(best[s : s + chunk], d)
    return (best / math.sqrt(dim)).cpu().double().numpy()


@torch.no_grad()
def judge_labels(judge: nn.Module, images_uint8_nhwc: np.ndarray, *, num_classes: int | None = None,
                 batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """argmax of ``judge`` (fed float N x C x H x W in [0, 1], like ``pseudo_label``), in eval mode. The
    images go to the judge's own device (``device`` when it has no parameters); with ``num_classes`` the
    judge must return that many logits."""
    param = next(judge.parameters(), None)
    dev = param.device if param is not None else torch.device(device)
    was_training = judge.training
    judge.eval()
    try:
        preds = []
        for start in range(0, len(images_uint8_nhwc), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images_uint8_nhwc[start : start + batch_size]))
            logits = judge(to_unit(x, dev))
            if logits.ndim != 2 or (num_classes is not None and logits.shape[1] != num_classes):
                raise ValueError(f"the judge returned logits of shape {tuple(logits.shape)}; expected "
                                 f"N x {num_classes if num_classes is not None else 'K'}")
            preds.append(logits.argmax(dim=1).cpu())
    finally:
        judge.train(was_training)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def class_balance(labels: np.ndarray, *, num_classes: int) -> dict[str, float]:
    """From the histogram of ``labels``: class_entropy_normalized (entropy / log(num_classes); 1 = balanced,
    0 = one class), class_share_min, class_share_max (shares of the whole set)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    if labels.size == 0:
        return dict.fromkeys(("class_entropy_normalized", "class_share_min", "class_share_max"), math.nan)
    share = np.bincount(labels, minlength=num_classes) / labels.size
    nz = share[share > 0]
    entropy = max(0.0, float(-(nz * np.log(nz)).sum()))  # no -0.0 for a single class
    return {
        "class_entropy_normalized": entropy / math.log(num_classes) if num_classes > 1 else 1.0,
        "class_share_min": float(share.min()),
        "class_share_max": float(share.max()),
    }


def sample_quality(
    images_uint8_nhwc: np.ndarray,
    labels: np.ndarray,
    *,
    real_images_uint8_nhwc: np.ndarray,
    judge: nn.Module | None = None,
    num_classes: int,
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Quality numbers for a labelled synthetic set that do not rely on the classifier that labelled it.

    - ``label_agreement``: share of samples where the independent classifier ``judge`` predicts the stored
      label (``label_agreement_source: "judge"``); without a judge it is None (source ``"absent"``), never 1.
    - outliers: ``tv_mean`` (mean total variation, see :func:`total_variation`), ``tv_real_max`` (the largest
      TV of the real training images ``real_images_uint8_nhwc``), ``outliers`` / ``outlier_fraction``
      (samples whose TV exceeds ``tv_real_max``: speckle no real image has).
    - memorisation: RMS distance of each sample to its nearest real image (:func:`nearest_real_distance`);
      ``nn_distance_median``; ``near_duplicates`` / ``near_duplicate_fraction`` below ``duplicate_threshold``
      (reported as ``near_duplicate_threshold``). The default 0.02 RMS is under half the smallest distance
      between distinct real digits (0.047; median nearest-neighbour distance 0.092, see DUPLICATE_THRESHOLD).
    - class balance of ``labels`` (:func:`class_balance`).
    """
    _check_uint8_nhwc("images", images_uint8_nhwc)
    _check_uint8_nhwc("real images", real_images_uint8_nhwc)
    labels_t = torch.as_tensor(np.asarray(labels)).long()
    n = len(images_uint8_nhwc)
    if labels_t.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels_t.shape)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not math.isfinite(duplicate_threshold) or duplicate_threshold < 0:
        raise ValueError(f"duplicate_threshold must be a finite number >= 0, got {duplicate_threshold!r}")
    if len(real_images_uint8_nhwc) == 0:
        raise ValueError("real_images_uint8_nhwc is empty; outliers and near-duplicates need real images")
    out: dict[str, Any] = {"label_agreement": None, "label_agreement_source": "absent"}
    if judge is not None:
        if n:
            pred = judge_labels(judge, images_uint8_nhwc, num_classes=num_classes, device=device)
            out["label_agreement"] = float((pred == labels_t).double().mean())
        out["label_agreement_source"] = "judge"
    tv = total_variation(images_uint8_nhwc, device=device)
    tv_real_max = float(total_variation(real_images_uint8_nhwc, device=device).max())
    outliers = int((tv > tv_real_max).sum())
    nn_dist = (nearest_real_distance(images_uint8_nhwc, real_images_uint8_nhwc, device=device) if n
               else np.zeros(0))
    dups = int((nn_dist < duplicate_threshold).sum())
    out.update(
        tv_mean=float(tv.mean()) if n else math.nan,
        tv_real_max=tv_real_max,
        outliers=outliers,
        outlier_fraction=outliers / n if n else math.nan,
        nn_distance_median=float(np.median(nn_dist)) if n else math.nan,
        near_duplicates=dups,
        near_duplicate_fraction=dups / n if n else math.nan,
        near_duplicate_threshold=float(duplicate_threshold),
        **class_balance(labels_t.numpy(), num_classes=num_classes),
    )
    return out


def train_on_synthetic_test_on_real(
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    lr: float = 3e-3,
) -> float:
    """TSTR: accuracy on the real ``test_images`` of a small CNN trained only on the synthetic set.

    ``small_cnn`` (width 8, feature_dim 32), AdamW, cross-entropy, ``epochs`` passes in an order drawn from
    ``seed``; the weights are initialised under ``seed`` too (without touching the global RNG), so the result
    is deterministic on a given device. Images are uint8 N x H x W x C.
    """
    from core.models import build_classifier

    _check_uint8_nhwc("images", images)
    _check_uint8_nhwc("test images", test_images)
    if images.shape[1:] != test_images.shape[1:]:
        raise ValueError(f"images are {images.shape[1:]} but the test images are {test_images.shape[1:]}")
    if len(images) == 0 or len(test_images) == 0:
        raise ValueError("TSTR needs a non-empty synthetic set and a non-empty test set")
    y = torch.as_tensor(np.asarray(labels)).long()
    y_test = torch.as_tensor(np.asarray(test_labels)).long()
    if y.shape != (len(images),) or y_test.shape != (len(test_images),):
        raise ValueError("labels and test_labels must have one entry per image")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
    _, size, _, channels = images.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier("small_cnn", num_classes=num_classes, channels=channels, image_size=size,
                                 width=8, feature_dim=32)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(images), generator=generator).split(batch_size):
            x = to_unit(x_all[index], device)
            loss = torch.nn.functional.cross_entropy(model(x), y[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_images), 512):
            x = torch.from_numpy(np.ascontiguousarray(test_images[start : start + 512]))
            pred = model(to_unit(x, device)).argmax(dim=1).cpu()
            correct += int((pred == y_test[start : start + 512]).sum())
    return correct / len(test_images)

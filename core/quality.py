"""Quality numbers for a labelled synthetic set: the classifier's own view (:func:`sample_metrics`) and
numbers that do not rely on the classifier that labelled it (:func:`sample_quality`: an independent judge,
outliers, near-copies of real images, class balance; :func:`train_on_synthetic_test_on_real`).

Images are uint8 N x H x W x C (the convention of :mod:`core.data.dataset`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from core.contrastive import feature_separability, pseudo_label
from core.data.images import to_unit

# RMS distance (on [0, 1] pixels) below which a sample counts as a copy of a real training image. On
# scikit-learn digits (16 x 16, the 1295-image train split) the nearest *distinct* train image is at least
# 0.047 RMS away (1st percentile 0.053, median 0.092), and test images are >= 0.042 from their nearest train
# image; 0.02 is less than half the smallest of those, yet far above the < 4e-4 float32 error of an exact copy
# and above uint8 rounding (1/255 ~ 0.004 RMS at most).
DUPLICATE_THRESHOLD = 0.02


def check_uint8_nhwc(name: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{name} must be a uint8 N x H x W x C array, got {getattr(images, 'dtype', type(images))} "
            f"{getattr(images, 'shape', '')}"
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
    pseudo = pseudo_label(classifier, images_uint8_nhwc)
    sep = feature_separability(pseudo.features, labels_t)
    f = torch.nn.functional.normalize(pseudo.features[:max_pairs].double(), dim=1)
    m = f.shape[0]
    cos = (f @ f.T).sum().sub(m).div(m * (m - 1)).item() if m > 1 else math.nan
    return {
        "count": int(labels_t.numel()),
        "class_histogram": hist,
        "mean_confidence": float(pseudo.confidence.mean()),
        "mean_entropy": float(pseudo.entropy.mean()),
        "separability_margin": sep["margin"],
        "mean_dist_own_centroid": sep["mean_dist_own"],
        "mean_dist_other_centroid": sep["mean_dist_other"],
        "mean_feature_cosine": cos,
    }


def total_variation(images_uint8_nhwc: np.ndarray, *, batch_size: int = 4096,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """Per image: mean |difference| of horizontally neighbouring pixels + the same vertically, on [0, 1]
    floats (averaged over channels). Smooth images score low, speckle/noise high (uniform noise ~0.67)."""
    check_uint8_nhwc("images", images_uint8_nhwc)
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
    check_uint8_nhwc("images", images_uint8_nhwc)
    check_uint8_nhwc("real images", real_images_uint8_nhwc)
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


# When a generated set's metrics say the samples are not usable training data (sample_warnings). The outlier
# share is the one a user meets first: an undertrained generator (the README's 8-epoch smoke model) gives
# 0.8-0.9 of noisy images where a usable one gives 0 to 0.02.
WARN_OUTLIER_FRACTION = 0.05  # more than this share noisier than the noisiest real training image
WARN_NEAR_DUPLICATE_FRACTION = 0.01  # more than this share copies a real training image
WARN_LABEL_AGREEMENT = 0.90  # the judge reads the stored label on fewer samples than this
WARN_CLASS_SHARE = 0.5  # a class holds less than half (or more than twice) its balanced share


def sample_warnings(metrics: dict[str, Any], *, num_classes: int) -> list[str]:
    """Plain-language warnings for a generated set, from :func:`sample_quality` and :func:`sample_metrics`
    figures in ``metrics`` (missing or NaN figures are skipped). Empty when nothing is wrong."""

    def figure(name: str) -> float | None:
        value = metrics.get(name)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    out: list[str] = []
    outliers = figure("outlier_fraction")
    if outliers is not None and outliers > WARN_OUTLIER_FRACTION:
        out.append(f"outliers: {100 * outliers:.0f} % of the samples are noisier (total variation) than the "
                   f"noisiest real training image (warning above {100 * WARN_OUTLIER_FRACTION:.0f} %): the "
                   "diffusion model is likely undertrained or the guidance too strong; look at the preview")
    dups = figure("near_duplicate_fraction")
    if dups is not None and dups > WARN_NEAR_DUPLICATE_FRACTION:
        out.append(f"near-copies: {100 * dups:.1f} % of the samples nearly copy a real training image "
                   f"(warning above {100 * WARN_NEAR_DUPLICATE_FRACTION:.0f} %): the model may memorise")
    agreement = figure("label_agreement")
    if agreement is not None and agreement < WARN_LABEL_AGREEMENT:
        out.append(f"labels: the judge agrees with only {100 * agreement:.1f} % of the pseudo-labels "
                   f"(warning below {100 * WARN_LABEL_AGREEMENT:.0f} %)")
    low, high = figure("class_share_min"), figure("class_share_max")
    balanced = 1.0 / num_classes if num_classes > 0 else None
    if balanced is not None and low is not None and high is not None and (
            low < WARN_CLASS_SHARE * balanced or high > balanced / WARN_CLASS_SHARE):
        out.append(f"class imbalance: class shares range {100 * low:.1f}-{100 * high:.1f} % where "
                   f"{100 * balanced:.1f} % is balanced")
    return out


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
    check_uint8_nhwc("images", images_uint8_nhwc)
    check_uint8_nhwc("real images", real_images_uint8_nhwc)
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

    check_uint8_nhwc("images", images)
    check_uint8_nhwc("test images", test_images)
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

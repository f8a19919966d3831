"""Image classifiers: a Wide ResNet WRN-d-k with Swish (the paper's feature extractor and TRADES model) and
a small CNN for small images. Both take float N x C x H x W in [0, 1], normalise inside, and expose the
penultimate features the contrastive guidance uses (paper §3.2: f is the classifier without its last linear
layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from core.options import ARCHS, Arch

Activation = Literal["silu", "relu"]
_ACTIVATIONS = {"silu": F.silu, "relu": F.relu}


class _Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers, so they travel with the checkpoint."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """Common surface: ``features(x)`` (N x feature_dim), ``forward(x)`` (logits), and the build config."""

    num_classes: int
    feature_dim: int
    build_config: dict[str, Any]

    def __init__(
        self, *, num_classes: int, channels: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if len(mean) != channels:
            raise ValueError(f"mean has {len(mean)} values for {channels} channels")
        self.num_classes = num_classes
        self.channels = channels
        self.normalize = _Normalize(mean, std)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected N x {self.channels} x H x W input, got shape {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class SmallCNN(ImageClassifier):
    """Two conv-conv-pool stages and a hidden linear layer; fast on a CPU for 16 x 16 digits.

    conv(w) - SiLU - conv(w) - SiLU - maxpool - conv(2w) - SiLU - conv(2w) - SiLU - maxpool -
    linear(feature_dim)
    - SiLU = features; then linear(num_classes) = logits.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        channels: int,
        image_size: int,
        width: int = 32,
        feature_dim: int = 128,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__(num_classes=num_classes, channels=channels, mean=mean, std=std)
        if image_size % 4 != 0:
            raise ValueError(f"small_cnn needs an image size divisible by 4, got {image_size}")
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim), nn.SiLU())
        self.fc = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        h = self.body(self.normalize(x))  # N x 2w x H/4 x W/4
        return self.head(h.flatten(1))  # N x feature_dim


class _WideBlock(nn.Module):
    """Pre-activation residual block: BN - Swish - conv3x3(stride) - BN - Swish - conv3x3 (+ 1x1 shortcut)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: Activation = "silu") -> None:
        super().__init__()
        self.act = _ACTIVATIONS[activation]
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.act(self.bn2(out)))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


class WideResNet(ImageClassifier):
    """WRN-depth-width (Zagoruyko & Komodakis) with Swish/SiLU activations, as in Gowal et al. and the paper.

    (depth - 4) / 6 blocks per group, widths 16, 16k, 32k, 64k; strides 1, 2, 2; global average pooling.
    WRN-28-10 on 32 x 32 gives 640 features. ``activation="relu"`` is the original WRN's (TRADES and
    RobustBench's ``WideResNet``), for weights converted with :mod:`core.models.convert`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        channels: int,
        image_size: int,
        depth: int = 28,
        widen_factor: int = 10,
        activation: Activation = "silu",
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__(num_classes=num_classes, channels=channels, mean=mean, std=std)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        self.act = _ACTIVATIONS[activation]
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        if image_size % 4 != 0:
            raise ValueError(f"wrn needs an image size divisible by 4, got {image_size}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.feature_dim = widths[3]
        self.conv1 = nn.Conv2d(channels, widths[0], 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        for group, stride in zip(range(3), (1, 2, 2), strict=True):
            for k in range(blocks):
                in_planes = widths[group] if k == 0 else widths[group + 1]
                layers.append(_WideBlock(in_planes, widths[group + 1], stride if k == 0 else 1, activation))
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        h = self.blocks(self.conv1(self.normalize(x)))  # N x 64k x H/4 x W/4
        h = self.act(self.bn(h))
        return h.mean(dim=(2, 3))  # N x 64k


def build_classifier(
    arch: Arch,
    *,
    num_classes: int,
    channels: int,
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> ImageClassifier:
    """A classifier for float N x C x H x W input in [0, 1].

    ``mean``/``std`` (per channel, in [0, 1] units; default 0.5 / 0.5) are the normalisation applied inside.
    Extra keyword arguments go to the architecture: ``small_cnn`` takes ``width``, ``feature_dim``; ``wrn``
    takes ``depth``, ``widen_factor`` (WRN-28-10 by default), ``activation``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown classifier arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mean_t = tuple(float(v) for v in (mean if mean is not None else [0.5] * channels))
    std_t = tuple(float(v) for v in (std if std is not None else [0.5] * channels))
    allowed = {"small_cnn": {"width", "feature_dim"}, "wrn": {"depth", "widen_factor", "activation"}}[arch]
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) for {arch}: {', '.join(sorted(unknown))}")
    common = dict(num_classes=num_classes, channels=channels, image_size=image_size, mean=mean_t, std=std_t)
    model: ImageClassifier
    if arch == "small_cnn":
        model = SmallCNN(**common, **kwargs)
    else:
        model = WideResNet(**common, **kwargs)
    model.build_config = {
        "arch": arch,
        "num_classes": num_classes,
        "channels": channels,
        "image_size": image_size,
        "mean": list(mean_t),
        "std": list(std_t),
        **kwargs,
    }
    return model

"""What the guidance embeds: the classifier's features on the sampler's [-1, 1] images, pseudo-labels, and
the optional embedding head g trained online on top of them (paper §3.2)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FeatureFn = Callable[[Tensor], Tensor]
LabelFn = Callable[[Tensor], Tensor]


def classifier_feature_fn(classifier: nn.Module) -> FeatureFn:
    """f(x) = classifier.features((x + 1) / 2) for x in the diffusion model's [-1, 1] range.

    The project's classifiers take inputs in [0, 1] (:mod:`core.data.images`); the authors fed x in [-1, 1]
    straight into a classifier normalising as if inputs were in [0, 1]. Mapping to [0, 1]
    first is a deliberate fix: the classifier then sees the range it was trained on.
    """
    if not hasattr(classifier, "features"):
        raise ValueError(f"classifier {type(classifier).__name__} has no features() method")

    def features(x: Tensor) -> Tensor:
        return classifier.features((x + 1.0) / 2.0)

    return features


def classifier_label_fn(classifier: nn.Module) -> LabelFn:
    """Pseudo-labels argmax classifier((x + 1) / 2) for x in [-1, 1] (no gradient)."""

    def labels(x: Tensor) -> Tensor:
        with torch.no_grad():
            return classifier(((x + 1.0) / 2.0).clamp(0.0, 1.0)).argmax(dim=1)

    return labels


class EmbeddingHead(nn.Module):
    """g: Linear(k, hidden) - ReLU - Linear(hidden, out); the guidance L2-normalises its output."""

    def __init__(
        self, in_dim: int, *, hidden: int = 128, out_dim: int = 128, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        with torch.no_grad():  # PyTorch's default uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), from `generator`
            for layer in (self.fc1, self.fc2):
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    u = torch.rand(p.shape, generator=generator, device=generator.device)
                    p.copy_(u * 2 * bound - bound)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(h)))

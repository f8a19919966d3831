"""Pseudo-labels and the App. D.3 selection criteria against direct per-sample computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.contrastive import feature_separability, pseudo_label, select_top_k, selection_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Linear2(nn.Module):
    """features = tanh(conv); logits = linear(features)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(8, 3)
        self.num_classes, self.feature_dim = 3, 8

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(torch.tanh(self.conv(x) * 3), 2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * 4


@pytest.fixture(scope="module")
def data() -> tuple[Linear2, torch.Tensor, torch.Tensor]:
    model = Linear2().eval()
    x = torch.rand(30, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x).argmax(1)
    return model, x, labels


def test_pseudo_label_values(data) -> None:
    model, x, _ = data
    pl = pseudo_label(model, x, batch_size=7)
    with torch.no_grad():
        p = F.softmax(model(x), 1)
    assert torch.equal(pl.labels, p.argmax(1))
    torch.testing.assert_close(pl.confidence, p.max(1).values)
    torch.testing.assert_close(pl.entropy, -(p * p.log()).sum(1))
    torch.testing.assert_close(pl.features, model.features(x).detach())
    # uint8 NHWC arrays are accepted and mean the same images.
    arr = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pl2 = pseudo_label(model, arr)
    torch.testing.assert_close(
        pl2.entropy, pseudo_label(model, torch.from_numpy(arr).permute(0, 3, 1, 2) / 255).entropy
    )


def _top_per_class(scores: torch.Tensor, labels: torch.Tensor, k: int) -> list[int]:
    keep = []
    for c in labels.unique().tolist():
        idx = [i for i in range(len(labels)) if labels[i] == c]
        keep += sorted(idx, key=lambda i: -float(scores[i]))[:k]
    return sorted(keep)


def test_entropy_and_grad_norm_criteria(data) -> None:
    model, x, labels = data
    pl = pseudo_label(model, x)
    got = select_top_k(model, x, labels, k=2, criterion="entropy").tolist()
    assert got == _top_per_class(-pl.entropy, labels, 2)
    # Gradient norm: per-sample, one backward per sample.
    norms = []
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), labels[i : i + 1]), xi)
        norms.append(g.norm())
    norms = torch.stack(norms)
    torch.testing.assert_close(selection_scores(model, x, labels, criterion="grad_norm", batch_size=8), norms)
    assert select_top_k(model, x, labels, k=3, criterion="grad_norm").tolist() == _top_per_class(
        norms, labels, 3
    )


def test_separability_criteria_match_their_definitions(data) -> None:
    model, x, _ = data
    labels = torch.tensor([3, 5, 7]).repeat(10)  # given labels (three classes, ids not 0..C-1)
    f = model.features(x).detach().double()
    classes = labels.unique().tolist()
    cents = torch.stack([f[labels == c].mean(0) for c in classes])
    dist = torch.cdist(f, cents)
    column = torch.tensor([classes.index(int(c)) for c in labels])  # labels need not be 0..C-1
    own = dist[torch.arange(len(labels)), column]
    mask = torch.nn.functional.one_hot(column, dist.shape[1]).bool()
    other = dist.masked_fill(mask, float("inf")).min(1).values
    for criterion, score in (("separability_literal", -dist.sum(1)), ("separability", -own),
                             ("separability_margin", other - own)):
        torch.testing.assert_close(selection_scores(model, x, labels, criterion=criterion), score, rtol=1e-5,
                                   atol=1e-5)
        got = select_top_k(model, x, labels, k=2, criterion=criterion).tolist()
        assert got == _top_per_class(score, labels, 2), criterion


class _Identity(torch.nn.Module):
    """Features = the input itself (2-D points as 2 x 1 x 1 images), logits = the features."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_default_separability_keeps_samples_near_their_own_centroid_unlike_the_literal_reading() -> None:
    # Class 0 around (0, 0), class 1 around (10, 0). Among class 0, sample a = (0, 0) sits on its own
    # centroid; sample b = (4, 0) is halfway towards class 1. Summed distances to both centroids are about
    # equal for a (0 + 10) and b (4 + 6), and c = (0, 3) is worse than b under the literal reading
    # (3 + 10.4 > 10) although it is closer to its own class than b.
    class0 = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [-4.0, 0.0], [0.0, -3.0]])
    class1 = torch.tensor([[10.0, 0.0], [11.0, 0.0], [9.0, 0.0], [10.0, 1.0], [10.0, -1.0]])
    x = torch.cat([class0, class1])[:, :, None, None]
    labels = torch.tensor([0] * 5 + [1] * 5)
    model = _Identity()
    literal = select_top_k(model, x, labels, k=2, criterion="separability_literal").tolist()
    default = select_top_k(model, x, labels, k=2, criterion="separability").tolist()
    cent0 = class0.mean(0)

    def mean_own_distance(idx: list[int]) -> float:
        kept0 = [i for i in idx if i < 5]
        return float((class0[kept0] - cent0).norm(dim=1).mean())

    assert 1 in literal and 1 not in default  # the sample halfway to the other class
    assert mean_own_distance(default) < mean_own_distance(literal)


def test_robust_grad_norm_is_seeded_and_differs(data) -> None:
    model, x, labels = data
    kw = dict(criterion="robust_grad_norm", attack_steps=3, eps=0.1, step_size=0.05)
    a = selection_scores(model, x, labels, generator=torch.Generator().manual_seed(0), **kw)
    b = selection_scores(model, x, labels, generator=torch.Generator().manual_seed(0), **kw)
    plain = selection_scores(model, x, labels, criterion="grad_norm")
    assert torch.equal(a, b) and torch.isfinite(a).all() and (a > 0).all()
    assert not torch.allclose(a, plain)
    with pytest.raises(ValueError, match="eps"):
        selection_scores(model, x, labels, criterion="robust_grad_norm", eps=0.0)


def test_k_larger_than_class_and_errors(data) -> None:
    model, x, labels = data
    assert select_top_k(model, x, labels, k=100, criterion="entropy").tolist() == list(range(30))
    arr = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    got = select_top_k(model, arr, labels.numpy(), k=1, criterion="entropy")
    assert got.numel() == len(labels.unique())
    with pytest.raises(ValueError, match="uint8"):
        select_top_k(model, x.numpy(), labels.numpy(), k=1, criterion="entropy")
    with pytest.raises(ValueError, match="'loss'"):
        select_top_k(model, x, labels, k=1, criterion="loss")
    with pytest.raises(ValueError, match="got 0"):
        select_top_k(model, x, labels, k=0, criterion="entropy")


def test_feature_separability_hand_values() -> None:
    f = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0]])
    lab = torch.tensor([0, 0, 1, 1])
    s = feature_separability(f, lab)
    # Centroids 1 and 11: own distance 1 for all; other distances 11, 9, 9, 11.
    assert s["mean_dist_own"] == pytest.approx(1.0) and s["mean_dist_other"] == pytest.approx(10.0)
    assert s["margin"] == pytest.approx(np.mean([10 / 12, 8 / 10, 8 / 10, 10 / 12]))
    assert np.isnan(feature_separability(f, torch.zeros(4, dtype=torch.long))["margin"])

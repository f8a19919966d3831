"""Gradient-masking sanity checks (core.training.masking_checks.check_gradient_masking)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from adversarial_helpers import digits_tensors, tiny_cnn, train_ce
from torch import Tensor, nn

from core.training.masking_checks import GradientMaskingWarning, check_gradient_masking


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        return -grad


class Defended(nn.Module):
    """Wraps a trained net with one of the classic ways to fool a gradient-based evaluation."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "quantised":  # a non-differentiable step: zero gradient everywhere
            return self.net(torch.round(x * 8) / 8)
        if self.kind == "reversed":  # gradients that point the wrong way
            return self.net(_ReverseGradient.apply(x))
        if self.kind == "softmax":
            return self.net(x).softmax(dim=1)
        if self.kind == "random":  # input dropout even in eval mode
            return self.net(F.dropout(x, 0.2, training=True))
        return self.net(x)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net() -> nn.Module:
    x, y = digits_tensors("train")
    return train_ce(tiny_cnn(1), x, y, epochs=8, seed=1)


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    x, y = digits_tensors("test")
    return x[:256], y[:256]


def _run(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[list[str], list[warnings.WarningMessage]]:
    x, y = batch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generator = torch.Generator().manual_seed(1)
        messages = check_gradient_masking(model, x, y, eps=0.1, steps=20, generator=generator)
    return messages, [w for w in caught if issubclass(w.category, GradientMaskingWarning)]


def test_silent_on_a_normal_model(net: nn.Module, batch) -> None:
    messages, caught = _run(Defended(net, "none"), batch)
    assert messages == []
    assert caught == []


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("quantised", "zero gradients"),
        ("reversed", "step monotonicity"),
        ("softmax", "probability outputs"),
        ("random", "randomness"),
    ],
)
def test_warns_on_a_masked_model(net: nn.Module, batch, kind: str, check: str) -> None:
    messages, caught = _run(Defended(net, kind), batch)
    assert any(m.startswith(check) for m in messages), messages
    assert any(str(w.message).startswith(check) for w in caught)


def test_checks_restore_train_mode(net: nn.Module, batch) -> None:
    model = Defended(net, "none").train()
    _run(model, batch)
    assert model.training and net.training
    net.eval()

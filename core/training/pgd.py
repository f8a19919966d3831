"""White-box L-inf PGD (Madry et al. 2018) and its pieces: the attack losses (cross-entropy, Carlini-Wagner
margin), the projection onto the threat model, the uniform start, a context that runs a model in eval mode,
and the per-sample correctness the evaluations count.

Threat model (paper eq. 1): Delta = {delta : ||delta||_inf <= eps}; images stay in [0, 1]. The evaluations
built on this are in :mod:`core.training.robustness` and :mod:`core.training.masking_checks`; the attacks
they run are listed in :mod:`core.training.attacks`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttackLoss = Literal["ce", "cw"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every sub-module in eval mode and restore each one's own train/eval flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def cw_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Carlini-Wagner margin per sample: max_{j != y} z_j - z_y (positive means misclassified).

    logits: N x K, labels: N -> N.
    """
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)  # N
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - true_logit


def attack_loss(logits: Tensor, labels: Tensor, *, loss: AttackLoss) -> Tensor:
    """Per-sample loss the attacker maximises: cross-entropy or the CW margin. N x K -> N."""
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    if loss == "cw":
        return cw_margin(logits, labels)
    raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")


def project_linf(x_adv: Tensor, x: Tensor, *, eps: float) -> Tensor:
    """Project onto the L-inf ball of radius eps around x intersected with the box [0, 1]."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def uniform_start(x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """x + U(-eps, eps), projected to [0, 1]; the noise is drawn on the generator's device."""
    noise_device = generator.device if generator is not None else x.device
    noise = torch.rand(x.shape, generator=generator, device=noise_device, dtype=x.dtype).to(x.device)
    return project_linf(x + (2.0 * noise - 1.0) * eps, x, eps=eps)


def validate_attack(*, eps: float, step_size: float, steps: int, restarts: int, loss: str) -> None:
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts!r}")
    if loss not in ("ce", "cw"):
        raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    loss: AttackLoss = "ce",
    random_start: bool = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L-inf PGD: x_{k+1} = Proj_{B(x, eps) ∩ [0,1]}(x_k + step_size * sign(grad_x loss(f(x_k), y))).

    Returns the last iterate of each restart (Madry et al.); over restarts the worst case per sample is kept:
    a sample misclassified by any restart keeps that restart's image, otherwise the one with the highest loss.
    The model runs in eval mode during the attack and gets each sub-module's train/eval flag back afterwards;
    parameter gradients are not touched. x: N x C x H x W in [0, 1], y: N (int64). Randomness (the uniform
    start in the ball) comes only from ``generator``.
    """
    validate_attack(eps=eps, step_size=step_size, steps=steps, restarts=restarts, loss=loss)
    if restarts > 1 and not random_start:
        raise ValueError(f"restarts={restarts} repeats the same attack unless random_start=True")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    x = x.detach()
    y = y.detach()
    best_x = x.clone()
    best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    with eval_mode(model):
        for _ in range(restarts):
            x_adv = uniform_start(x, eps=eps, generator=generator) if random_start else x.clone()
            for _ in range(steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    objective = attack_loss(model(x_adv), y, loss=loss).sum()
                    (grad,) = torch.autograd.grad(objective, x_adv)
                x_adv = project_linf(x_adv.detach() + step_size * grad.sign(), x, eps=eps)
            with torch.no_grad():
                logits = model(x_adv)
                fooled = logits.argmax(dim=1) != y
                value = attack_loss(logits, y, loss=loss)
            # Lexicographic (fooled, loss): a restart replaces the kept image only if it is strictly worse.
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (value > best_loss))
            best_x[better] = x_adv[better]
            best_fooled |= fooled
            best_loss = torch.where(better, value, best_loss)
    return best_x.detach()


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``batch_size`` rows."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def correct_mask(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per sample (N bool): ``model`` (in eval mode, no gradients) predicts ``y`` on ``x``."""
    with torch.no_grad(), eval_mode(model):
        return model(x).argmax(dim=1) == y

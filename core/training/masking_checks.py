"""Sanity checks of a robust-accuracy number, in the spirit of AutoAttack's ``checks.py``: zero gradients,
randomness, probability outputs, and more PGD steps weaker than fewer. Each failed check emits a
:class:`GradientMaskingWarning`; a robust-accuracy number is only as believable as these checks.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from core.training.pgd import attack_loss, correct_mask, eval_mode, pgd_attack, uniform_start


class GradientMaskingWarning(UserWarning):
    """A sanity check suggests that gradient-based robust accuracy overestimates the true robustness."""


def check_gradient_masking(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    tolerance: float = 0.02,
) -> list[str]:
    """Sanity checks after AutoAttack's ``checks.py``; returns the failed checks' messages and warns for each.

    1. zero gradients: some inputs have an all-zero input gradient for both CE and the CW margin;
    2. randomness: two forward passes on the same input in eval mode give different logits;
    3. probability outputs: every row lies in [0, 1] and sums to 1 (softmax applied inside the model);
    4. step monotonicity: PGD-CE with ``steps`` steps leaves accuracy higher (by more than ``tolerance``
       and at least two samples) than PGD-CE with a quarter of the steps, or than uniform noise in the ball.
    Runs on the given (small) batch, with the model in eval mode; its train/eval flags are restored.
    """
    messages: list[str] = []
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    with eval_mode(model):
        x = x.detach()
        with torch.no_grad():
            first = model(x)
            second = model(x)
        if not torch.allclose(first, second, rtol=1e-5, atol=1e-6):
            diff = (first - second).abs().max().item()
            messages.append(
                f"randomness: logits differ on identical input (max |diff| = {diff:.3g}); "
                "the model looks randomised, use an expectation-over-transformation attack"
            )
        sums_to_one = torch.allclose(first.sum(dim=1), torch.ones_like(first[:, 0]), atol=1e-4)
        if bool(first.min() >= -1e-5) and bool(first.max() <= 1 + 1e-5) and sums_to_one:
            messages.append(
                "probability outputs: the model's outputs lie in [0, 1] and sum to 1; "
                "attacks need logits, remove the final softmax"
            )
        zero = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for kind in ("ce", "cw"):
            x_grad = x.clone().requires_grad_(True)
            with torch.enable_grad():
                objective = attack_loss(model(x_grad), y, loss=kind).sum()  # type: ignore[arg-type]
                (grad,) = torch.autograd.grad(objective, x_grad, allow_unused=True)
            if grad is not None:
                zero &= grad.flatten(1).abs().sum(dim=1) == 0
        if zero.any():
            messages.append(
                f"zero gradients: {int(zero.sum())} of {x.shape[0]} inputs have an all-zero input gradient; "
                "gradient-based attacks cannot move them (masked or obfuscated gradients)"
            )
        if eps > 0 and steps > 1:
            n = x.shape[0]
            few = max(1, steps // 4)
            state = generator.get_state() if generator is not None else None
            x_many = pgd_attack(model, x, y, eps=eps, step_size=step_size, steps=steps, generator=generator)
            acc_many = correct_mask(model, x_many, y)
            if state is not None:
                generator.set_state(state)  # the same random starts for the shorter attack
            few_size = 2.5 * eps / few
            acc_few = correct_mask(
                model, pgd_attack(model, x, y, eps=eps, step_size=few_size, steps=few, generator=generator), y
            )
            acc_noise = correct_mask(model, uniform_start(x, eps=eps, generator=generator), y)
            margin = max(2, math.ceil(tolerance * n))
            for name, weaker in ((f"PGD-{few}", acc_few), ("uniform noise", acc_noise)):
                surplus = int(acc_many.sum()) - int(weaker.sum())
                if surplus >= margin:
                    messages.append(
                        f"step monotonicity: PGD-{steps} leaves {surplus} more of {n} inputs correct than "
                        f"{name}; the attack is not converging (masked or misleading gradients)"
                    )
    for message in messages:
        warnings.warn(message, GradientMaskingWarning, stacklevel=2)
    return messages


SANITY_CHECKS = ("zero gradients", "randomness", "probability outputs", "step monotonicity")


def sanity_verdicts(messages: list[str]) -> dict[str, str]:
    """The checks of :func:`check_gradient_masking` by name -> "pass" or "fail"."""
    return {name.replace(" ", "_"): "fail" if any(m.startswith(name + ":") for m in messages) else "pass"
            for name in SANITY_CHECKS}

"""White-box L-inf attacks and the robustness evaluation that checks itself (REFERENCE.md §4).

- :func:`pgd_attack`: projected gradient descent (Madry et al. 2018) on the cross-entropy or the
  Carlini-Wagner margin, with random start and restarts; the worst case per sample over restarts is kept.
- :func:`evaluate_robustness`: clean accuracy, PGD-CE, PGD-CW, optionally AutoAttack standard (optional extra
  ``pyautoattack``), and the worst case over all of them per sample, computed on images in [0, 1].
- :func:`check_gradient_masking`: sanity checks in the spirit of AutoAttack's ``checks.py`` (zero gradients,
  randomness, probability outputs, more PGD steps weaker than fewer). Each failed check emits a
  :class:`GradientMaskingWarning`; a robust-accuracy number is only as believable as these checks.

Threat model (paper eq. 1): Delta = {delta : ||delta||_inf <= eps}; images stay in [0, 1].
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.progress import ProgressEvent, ProgressFn, Stage

logger = logging.getLogger(__name__)

AttackLoss = Literal["ce", "cw"]


class GradientMaskingWarning(UserWarning):
    """A sanity check suggests that gradient-based robust accuracy overestimates the true robustness."""


class _HasTensors(Protocol):
    def to_tensors(self, device: torch.device | str) -> tuple[Tensor, Tensor]: ...


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


def _validate_attack(*, eps: float, step_size: float, steps: int, restarts: int, loss: str) -> None:
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
    _validate_attack(eps=eps, step_size=step_size, steps=steps, restarts=restarts, loss=loss)
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


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _accuracy_mask(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad(), eval_mode(model):
        return model(x).argmax(dim=1) == y


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
            acc_many = _accuracy_mask(model, x_many, y)
            if state is not None:
                generator.set_state(state)  # the same random starts for the shorter attack
            few_size = 2.5 * eps / few
            acc_few = _accuracy_mask(
                model, pgd_attack(model, x, y, eps=eps, step_size=few_size, steps=few, generator=generator), y
            )
            acc_noise = _accuracy_mask(model, uniform_start(x, eps=eps, generator=generator), y)
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


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    version: str = "standard",
) -> Tensor:
    """AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square; Croce & Hein 2020), L-inf, via ``pyautoattack``.
    ``version="fast"`` runs APGD-CE and APGD-T only: cheaper, and an upper bound on standard's robust
    accuracy.

    Returns the adversarial images (robust points keep their clean image). Raises ImportError with the install
    command when the optional extra is missing.
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:
        raise ImportError(
            "AutoAttack needs the optional package 'pyautoattack': pip install 'contrastive-dp[autoattack]'"
        ) from exc
    with eval_mode(model):
        if version == "fast":
            adversary = AutoAttack(model, norm="Linf", eps=float(eps), version="custom", device=device,
                                   seed=seed, attacks=["apgd-ce", "apgd-t"])
        elif version == "standard":
            adversary = AutoAttack(model, norm="Linf", eps=float(eps), version="standard", device=device,
                                   seed=seed)
        else:
            raise ValueError(f"version must be 'standard' or 'fast', got {version!r}")
        # AutoAttack moves each batch to ``device`` itself; the full set stays where it is.
        x_adv, _ = adversary.run_standard_evaluation(x.detach(), y.detach(), batch_size=batch_size)
    return x_adv.detach()


def evaluate_robustness(
    model: nn.Module,
    images: Tensor | _HasTensors,
    labels: Tensor | None = None,
    *,
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    autoattack: bool = False,
    sanity_checks: bool = True,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Clean accuracy, PGD-CE and PGD-CW robust accuracy (and AutoAttack standard if asked) at L-inf ``eps``.

    ``images`` is either an ImageDataset (core.data; anything with ``to_tensors(device)``) or a float tensor
    N x C x H x W in [0, 1] with ``labels``. ``step_size`` defaults to 2.5 * eps / steps (Madry et al.).
    ``robust_acc`` is the per-sample worst case over clean, PGD-CE, PGD-CW (and AutoAttack): a sample counts
    only if every attack failed on it. Sanity checks (:func:`check_gradient_masking`) run on the first batch;
    their messages are returned under ``warnings``. Deterministic given ``seed``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if labels is None:
        if not hasattr(images, "to_tensors"):
            raise ValueError("labels are required when images is a tensor")
        x_all, y_all = images.to_tensors("cpu")  # type: ignore[union-attr]
    else:
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a tensor when labels are given, got {type(images).__name__}")
        x_all, y_all = images.detach().cpu(), labels.detach().cpu()
    n = int(x_all.shape[0])
    if n == 0:
        raise ValueError("cannot evaluate robustness on an empty set")
    if float(x_all.min()) < 0 or float(x_all.max()) > 1:
        raise ValueError(
            f"images must lie in [0, 1], got range [{float(x_all.min()):.3g}, {float(x_all.max()):.3g}]"
        )
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    _validate_attack(
        eps=eps, step_size=step_size if eps > 0 else 1.0, steps=steps, restarts=restarts, loss="ce"
    )
    model = model.to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    messages: list[str] = []
    if sanity_checks:
        head = slice(0, min(n, batch_size))
        messages = check_gradient_masking(
            model, x_all[head].to(device), y_all[head].to(device), eps=eps, steps=steps,
            step_size=step_size, generator=torch.Generator(device="cpu").manual_seed(seed + 1),
        )
    correct: dict[str, list[Tensor]] = {"clean": [], "pgd_ce": [], "pgd_cw": []}
    n_batches = math.ceil(n / batch_size)
    for i, part in enumerate(_batches(n, batch_size)):
        x, y = x_all[part].to(device), y_all[part].to(device)
        correct["clean"].append(_accuracy_mask(model, x, y).cpu())
        for kind in ("ce", "cw"):
            if eps > 0:
                x_adv = pgd_attack(
                    model, x, y, eps=eps, step_size=step_size, steps=steps, loss=kind,  # type: ignore[arg-type]
                    restarts=restarts, generator=generator,
                )
            else:
                x_adv = x
            correct[f"pgd_{kind}"].append(_accuracy_mask(model, x_adv, y).cpu())
        if progress is not None:
            progress(ProgressEvent(Stage.EVALUATE, i + 1, n_batches, message="PGD-CE/CW"))
    masks = {name: torch.cat(parts) for name, parts in correct.items()}
    if autoattack:
        x_adv = run_autoattack(model, x_all, y_all, eps=eps, batch_size=batch_size, device=device, seed=seed)
        masks["autoattack"] = _accuracy_mask(model, x_adv.to(device), y_all.to(device)).cpu()
    worst = torch.stack(list(masks.values())).all(dim=0)
    result: dict[str, Any] = {
        "count": n,
        "eps": float(eps),
        "steps": int(steps),
        "step_size": float(step_size),
        "restarts": int(restarts),
        "clean_acc": masks["clean"].float().mean().item(),
        "pgd_ce_acc": masks["pgd_ce"].float().mean().item(),
        "pgd_cw_acc": masks["pgd_cw"].float().mean().item(),
        "robust_acc": worst.float().mean().item(),
        "warnings": messages,
    }
    if autoattack:
        result["autoattack_acc"] = masks["autoattack"].float().mean().item()
    return result


SANITY_CHECKS = ("zero gradients", "randomness", "probability outputs", "step monotonicity")


def sanity_verdicts(messages: list[str]) -> dict[str, str]:
    """The checks of :func:`check_gradient_masking` by name -> "pass" or "fail"."""
    return {name.replace(" ", "_"): "fail" if any(m.startswith(name + ":") for m in messages) else "pass"
            for name in SANITY_CHECKS}


def per_sample_robustness(
    model: nn.Module,
    x_all: Tensor,
    y_all: Tensor,
    *,
    eps: float,
    attacks: tuple[str, ...] = ("pgd_ce", "pgd_cw"),
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    autoattack_version: str = "standard",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Tensor]:
    """Per-sample correctness (bool, on the CPU) under no attack (``clean``) and each of ``attacks``
    (``pgd_ce``, ``pgd_cw``, ``autoattack``) plus ``worst``: correct under every one of them. Images are float
    N x C x H x W in [0, 1]. Deterministic given ``seed``."""
    unknown = set(attacks) - {"pgd_ce", "pgd_cw", "autoattack"}
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; choose from pgd_ce, pgd_cw, autoattack")
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    _validate_attack(eps=eps, step_size=step_size if eps > 0 else 1.0, steps=steps, restarts=restarts,
                     loss="ce")
    model = model.to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    pgd = [a for a in attacks if a != "autoattack"]
    masks: dict[str, list[Tensor]] = {name: [] for name in ("clean", *pgd)}
    for part in _batches(int(x_all.shape[0]), batch_size):
        x, y = x_all[part].to(device), y_all[part].to(device)
        masks["clean"].append(_accuracy_mask(model, x, y).cpu())
        for name in attacks:
            if name == "autoattack":
                continue
            x_adv = x if eps == 0 else pgd_attack(model, x, y, eps=eps, step_size=step_size, steps=steps,
                                                  loss=name.removeprefix("pgd_"),  # type: ignore[arg-type]
                                                  restarts=restarts, generator=generator)
            masks[name].append(_accuracy_mask(model, x_adv, y).cpu())
    out = {name: torch.cat(parts) for name, parts in masks.items()}
    if "autoattack" in attacks:
        x_adv = x_all if eps == 0 else run_autoattack(model, x_all, y_all, eps=eps, batch_size=batch_size,
                                                      device=device, seed=seed, version=autoattack_version)
        out["autoattack"] = _accuracy_mask(model, x_adv.to(device), y_all.to(device)).cpu()
    out["worst"] = torch.stack(list(out.values())).all(dim=0)
    return out


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512) -> float:
    """Plain accuracy on float images in [0, 1], in eval mode."""
    hits = [int(_accuracy_mask(model, x[part], y[part]).sum()) for part in _batches(x.shape[0], batch_size)]
    return sum(hits) / max(int(x.shape[0]), 1)

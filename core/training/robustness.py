"""Robustness evaluation on images in [0, 1] at L-inf radius eps: clean accuracy, each attack of
:data:`core.training.attacks.ATTACK_TABLE` (PGD-CE, PGD-CW, optionally AutoAttack standard from the optional
extra ``pyautoattack``), and the worst case over all of them per sample (:func:`evaluate_robustness`,
:func:`per_sample_robustness`); :func:`pgd_robust_accuracy` is the cheaper per-epoch measure of the TRADES
trainer. Sanity checks come from :mod:`core.training.masking_checks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from core.data import ImageDataset
from core.data.images import to_unit
from core.progress import ProgressEvent, ProgressFn, Stage
from core.training.attacks import (
    ATTACK_TABLE,
    CLEAN_METRIC,
    DEFAULT_ATTACKS,
    WORST_METRIC,
    Attack,
    check_attacks,
)
from core.training.masking_checks import check_gradient_masking
from core.training.pgd import batches, correct_mask, eval_mode, pgd_attack, validate_attack


class _HasTensors(Protocol):
    def to_tensors(self, device: torch.device | str) -> tuple[Tensor, Tensor]: ...


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
    ``worst_acc`` is the per-sample worst case over clean, PGD-CE, PGD-CW (and AutoAttack), all run on the
    same images by :func:`per_sample_robustness`: a sample counts only if every attack failed on it
    (``robust_acc`` is the same figure under its older name). Sanity checks (:func:`check_gradient_masking`)
    run on the first batch; their messages are returned under ``warnings``. Deterministic given ``seed``.
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
    validate_attack(
        eps=eps, step_size=step_size if eps > 0 else 1.0, steps=steps, restarts=restarts, loss="ce"
    )
    model = model.to(device)
    messages: list[str] = []
    if sanity_checks:
        head = slice(0, min(n, batch_size))
        messages = check_gradient_masking(
            model, x_all[head].to(device), y_all[head].to(device), eps=eps, steps=steps,
            step_size=step_size, generator=torch.Generator(device="cpu").manual_seed(seed + 1),
        )
    attacks = tuple(name for name, attack in ATTACK_TABLE.items() if attack.default or autoattack)
    masks = per_sample_robustness(model, x_all, y_all, eps=eps, attacks=attacks, steps=steps,
                                  step_size=step_size, restarts=restarts, batch_size=batch_size,
                                  device=device, seed=seed, progress=progress)
    def share(name: str) -> float:
        return masks[name].float().mean().item()

    # the default attacks' figures beside the clean one, those run on request after the rest
    result: dict[str, Any] = {
        "count": n,
        "eps": float(eps),
        "steps": int(steps),
        "step_size": float(step_size),
        "restarts": int(restarts),
        CLEAN_METRIC: share("clean"),
        **{ATTACK_TABLE[name].metric: share(name) for name in attacks if ATTACK_TABLE[name].default},
        WORST_METRIC: share("worst"),
        "robust_acc": share("worst"),  # the same figure under its older name (deprecated)
        "warnings": messages,
        **{ATTACK_TABLE[name].metric: share(name) for name in attacks if not ATTACK_TABLE[name].default},
    }
    return result


def per_sample_robustness(
    model: nn.Module,
    x_all: Tensor,
    y_all: Tensor,
    *,
    eps: float,
    attacks: tuple[str, ...] = DEFAULT_ATTACKS,
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    autoattack_version: str = "standard",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Tensor]:
    """Per-sample correctness (bool, on the CPU) under no attack (``clean``) and each of ``attacks`` (names
    of :data:`~core.training.attacks.ATTACK_TABLE`: ``pgd_ce``, ``pgd_cw``, ``autoattack``) plus ``worst``:
    correct under every one of them. Images are float N x C x H x W in [0, 1]. Every attack runs on every
    image, so ``worst`` never mixes subsets: the batch-wise attacks (PGD) in one pass over the batches, in the
    order given, from one generator; the whole-set ones (AutoAttack) after. Deterministic given ``seed``."""
    check_attacks(attacks)
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    validate_attack(eps=eps, step_size=step_size if eps > 0 else 1.0, steps=steps, restarts=restarts,
                     loss="ce")
    model = model.to(device)
    settings = _AttackSettings(eps=eps, steps=steps, step_size=step_size, restarts=restarts,
                               autoattack_version=autoattack_version, batch_size=batch_size, device=device,
                               seed=seed, generator=torch.Generator(device="cpu").manual_seed(seed))
    batchwise = [name for name in attacks if _METHODS[ATTACK_TABLE[name].method].batchwise]
    masks: dict[str, list[Tensor]] = {name: [] for name in ("clean", *batchwise)}
    n_batches = math.ceil(int(x_all.shape[0]) / batch_size)
    for i, part in enumerate(batches(int(x_all.shape[0]), batch_size)):
        x, y = x_all[part].to(device), y_all[part].to(device)
        masks["clean"].append(correct_mask(model, x, y).cpu())
        for name in batchwise:
            x_adv = _attacked(ATTACK_TABLE[name], model, x, y, settings)
            masks[name].append(correct_mask(model, x_adv, y).cpu())
        if progress is not None:
            progress(ProgressEvent(Stage.EVALUATE, i + 1, n_batches, message="/".join(batchwise) or "clean"))
    out = {name: torch.cat(parts) for name, parts in masks.items()}
    for name in attacks:
        if name not in out:  # a whole-set attack
            x_adv = _attacked(ATTACK_TABLE[name], model, x_all, y_all, settings)
            out[name] = correct_mask(model, x_adv.to(device), y_all.to(device)).cpu()
    out["worst"] = torch.stack(list(out.values())).all(dim=0)
    return out


@dataclass(frozen=True)
class _AttackSettings:
    """What the attacks of one evaluation share (PGD's draws all come from ``generator``)."""

    eps: float
    steps: int
    step_size: float
    restarts: int
    autoattack_version: str
    batch_size: int
    device: torch.device | str
    seed: int
    generator: torch.Generator


def _run_pgd(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, settings: _AttackSettings) -> Tensor:
    return pgd_attack(model, x, y, eps=settings.eps, step_size=settings.step_size, steps=settings.steps,
                      loss=attack.loss or "ce", restarts=settings.restarts, generator=settings.generator)


def _run_autoattack(attack: Attack, model: nn.Module, x: Tensor, y: Tensor,
                    settings: _AttackSettings) -> Tensor:
    return run_autoattack(model, x, y, eps=settings.eps, batch_size=settings.batch_size,
                          device=settings.device, seed=settings.seed, version=settings.autoattack_version)


@dataclass(frozen=True)
class _Method:
    run: Callable[[Attack, nn.Module, Tensor, Tensor, _AttackSettings], Tensor]
    batchwise: bool  # run per batch of the evaluation (else once, on the whole set)


# How each ``Attack.method`` of the table runs (tests/test_attacks_pgd.py checks that every method has one).
_METHODS: dict[str, _Method] = {
    "pgd": _Method(_run_pgd, batchwise=True),
    "autoattack": _Method(_run_autoattack, batchwise=False),
}


def _attacked(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, settings: _AttackSettings) -> Tensor:
    """``attack``'s adversarial images for (x, y); the images themselves at eps 0."""
    if settings.eps == 0:
        return x
    return _METHODS[attack.method].run(attack, model, x, y, settings)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512) -> float:
    """Plain accuracy on float images in [0, 1], in eval mode."""
    hits = [int(correct_mask(model, x[part], y[part]).sum()) for part in batches(x.shape[0], batch_size)]
    return sum(hits) / max(int(x.shape[0]), 1)


def pgd_robust_accuracy(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    eps: float,
    steps: int,
    limit: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """Clean and PGD-CE accuracy (step 2.5 eps / steps, uniform start) on ``limit`` images of ``dataset``
    (uint8; spread evenly over the classes), one restart, no sanity checks: the per-epoch validation measure
    of TRADES."""
    index = dataset.limit_index(limit)
    n = len(index)
    images = torch.from_numpy(dataset.images[index])
    labels = torch.from_numpy(dataset.labels[index])
    generator = torch.Generator().manual_seed(seed)
    clean = robust = 0
    with eval_mode(model):
        for start in range(0, n, batch_size):
            x = to_unit(images[start : start + batch_size], device)
            y = labels[start : start + batch_size].to(device)
            with torch.no_grad():
                clean += int((model(x).argmax(1) == y).sum())
            if eps > 0 and steps > 0:
                x = pgd_attack(
                    model, x, y, eps=eps, step_size=2.5 * eps / steps, steps=steps, generator=generator
                )
            with torch.no_grad():
                robust += int((model(x).argmax(1) == y).sum())
    return {"clean_acc": clean / n, "pgd_acc": robust / n}

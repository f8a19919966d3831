"""The checks of the guidance's settings, shared by ``ContrastiveGuidance`` and
``core.generation.GenerationParams`` (each checks itself once, when it is made, with these)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from core.options import CONTRASTIVE_LOSSES, STRATEGIES, check_choice


def validate_window(window: tuple[int, int] | None, timesteps: Sequence[int] | None = None) -> None:
    """Check a guidance window (lo, hi), inclusive; with ``timesteps`` (largest first) also check that at
    least one timestep after the first lies inside it."""
    if window is None:
        return
    if (
        not isinstance(window, tuple | list)
        or len(window) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in window)
    ):
        raise ValueError(f"guidance window must be a pair of ints (lo, hi), got {window!r}")
    lo, hi = window
    if lo < 0 or hi < lo:
        raise ValueError(f"guidance window must satisfy 0 <= lo <= hi, got {tuple(window)!r}")
    if timesteps is not None:
        ts = list(timesteps)
        if not any(lo <= t <= hi for t in ts[1:]):
            raise ValueError(
                f"guidance window {tuple(window)!r} contains no timestep of the schedule after the first "
                f"(schedule runs {ts[0]} .. {ts[-1]} in {len(ts)} steps)"
            )


def check_guidance_args(
    *, loss: str, lam: float, tau: float, tau_plus: float, beta: float, strategy: str
) -> None:
    """ValueError naming the offending value for any out-of-range guidance hyperparameter."""
    check_choice("loss", loss, CONTRASTIVE_LOSSES)
    check_choice("strategy", strategy, STRATEGIES)
    if not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if not isinstance(tau, int | float) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if not isinstance(tau_plus, int | float) or not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus!r}")
    if not isinstance(beta, int | float) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")

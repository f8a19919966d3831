"""White-box L-inf attacks and the robustness evaluation that checks itself, in one import.

This module re-exports three that split the work, so that ``core.training.attacks`` keeps serving the jobs,
the CLI, the experiments and the tests:

- :mod:`core.training.pgd`: :func:`pgd_attack`, projected gradient descent (Madry et al. 2018) on the
  cross-entropy or the Carlini-Wagner margin, with random start and restarts (the worst case per sample over
  restarts is kept), and its pieces;
- :mod:`core.training.robustness`: :func:`evaluate_robustness` (clean accuracy, PGD-CE, PGD-CW, optionally
  AutoAttack standard from the optional extra ``pyautoattack``, and the worst case over all of them per
  sample), :func:`per_sample_robustness`, :func:`run_autoattack`, :func:`accuracy` and the TRADES trainer's
  per-epoch :func:`pgd_robust_accuracy`;
- :mod:`core.training.masking_checks`: :func:`check_gradient_masking`, sanity checks in the spirit of
  AutoAttack's ``checks.py``, each failed check emitting a :class:`GradientMaskingWarning`.

Threat model (paper eq. 1): Delta = {delta : ||delta||_inf <= eps}; images stay in [0, 1].
"""

from __future__ import annotations

from core.training.masking_checks import (
    SANITY_CHECKS,
    GradientMaskingWarning,
    check_gradient_masking,
    sanity_verdicts,
)
from core.training.pgd import (
    AttackLoss,
    attack_loss,
    cw_margin,
    eval_mode,
    pgd_attack,
    project_linf,
    uniform_start,
)
from core.training.robustness import (
    accuracy,
    evaluate_robustness,
    per_sample_robustness,
    pgd_robust_accuracy,
    run_autoattack,
)

__all__ = [
    "SANITY_CHECKS",
    "AttackLoss",
    "GradientMaskingWarning",
    "accuracy",
    "attack_loss",
    "check_gradient_masking",
    "cw_margin",
    "eval_mode",
    "evaluate_robustness",
    "per_sample_robustness",
    "pgd_attack",
    "pgd_robust_accuracy",
    "project_linf",
    "run_autoattack",
    "sanity_verdicts",
    "uniform_start",
]

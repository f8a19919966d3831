"""The Gaussian theory of the paper's §3 (closed forms, self-training, Proposition 1), its seeded study and
figures, and the 2-D mixture toy of the guidance (:mod:`core.simulation.toy2d`)."""

from core.simulation.gaussian import (
    DIRECTIONS,
    Direction,
    SelfTrainingResult,
    batch_accuracies,
    closed_form_robust_accuracy,
    empirical_accuracies,
    make_mu,
    optimal_accuracies,
    optimal_robust_direction,
    orthogonal_unit,
    sample_mixture,
    self_training,
    standard_accuracy,
    synthetic_mean,
)
from core.simulation.study import GaussianStudy, ResultRow, run_gaussian_study

__all__ = [
    "DIRECTIONS",
    "Direction",
    "GaussianStudy",
    "ResultRow",
    "SelfTrainingResult",
    "batch_accuracies",
    "empirical_accuracies",
    "make_mu",
    "optimal_accuracies",
    "optimal_robust_direction",
    "orthogonal_unit",
    "closed_form_robust_accuracy",
    "run_gaussian_study",
    "sample_mixture",
    "self_training",
    "standard_accuracy",
    "synthetic_mean",
]

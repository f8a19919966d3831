"""Contrastive guidance for diffusion sampling (paper §4), pseudo-labels and data selection (App. D.3)."""

from core.contrastive.guidance import (
    FEATURE_ON,
    LOSSES,
    STRATEGIES,
    ContrastiveGuidance,
    EmbeddingHead,
    FeatureOn,
    GuidanceStep,
    LossName,
    Strategy,
    batch_contrastive_loss,
    check_guidance_args,
    classifier_feature_fn,
    classifier_label_fn,
    validate_window,
)
from core.contrastive.losses import hnm_loss, info_nce_loss
from core.contrastive.selection import (
    CRITERIA,
    Criterion,
    PseudoLabels,
    feature_separability,
    pseudo_label,
    select_top_k,
    selection_scores,
)

__all__ = [
    "CRITERIA",
    "FEATURE_ON",
    "LOSSES",
    "STRATEGIES",
    "ContrastiveGuidance",
    "Criterion",
    "EmbeddingHead",
    "FeatureOn",
    "GuidanceStep",
    "LossName",
    "PseudoLabels",
    "Strategy",
    "batch_contrastive_loss",
    "check_guidance_args",
    "classifier_feature_fn",
    "classifier_label_fn",
    "feature_separability",
    "hnm_loss",
    "info_nce_loss",
    "pseudo_label",
    "select_top_k",
    "selection_scores",
    "validate_window",
]

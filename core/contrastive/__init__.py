"""Contrastive guidance for diffusion sampling (paper §4), pseudo-labels and data selection (App. D.3)."""

from core.contrastive.checks import check_guidance_args, validate_window
from core.contrastive.features import EmbeddingHead, classifier_feature_fn, classifier_label_fn
from core.contrastive.guidance import ContrastiveGuidance, GuidanceStep
from core.contrastive.losses import batch_contrastive_loss, hnm_loss, info_nce_loss
from core.contrastive.selection import (
    PseudoLabels,
    feature_separability,
    pseudo_label,
    select_top_k,
    selection_scores,
)
from core.options import CONTRASTIVE_LOSSES as LOSSES
from core.options import CRITERIA, FEATURE_ON, STRATEGIES, FeatureOn, Strategy
from core.options import ContrastiveLoss as LossName
from core.options import SelectionCriterion as Criterion

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

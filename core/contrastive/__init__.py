"""Contrastive guidance for diffusion sampling (paper §4), pseudo-labels and data selection (App. D.3)."""

from core.contrastive.losses import hnm_loss, info_nce_loss

__all__ = ["hnm_loss", "info_nce_loss"]

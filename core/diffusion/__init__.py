"""DDIM sampling with pluggable guidance, and loading of diffusers epsilon-prediction models."""

from core.diffusion.ddim import Guidance, StepCallback, ddim_timesteps, predict_eps, sample
from core.diffusion.loading import (
    DiffusionModel,
    alphas_cumprod_from_config,
    betas_from_config,
    load_diffusion_model,
)

__all__ = [
    "DiffusionModel",
    "Guidance",
    "StepCallback",
    "alphas_cumprod_from_config",
    "betas_from_config",
    "ddim_timesteps",
    "load_diffusion_model",
    "predict_eps",
    "sample",
]

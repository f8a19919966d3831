"""DDIM sampling with pluggable guidance, and loading of diffusers epsilon-prediction models."""

from core.diffusion.ddim import (
    DDIMSchedule,
    Guidance,
    StepCallback,
    ddim_step,
    ddim_timesteps,
    predict_eps,
    sample,
)
from core.diffusion.loading import (
    DiffusionModel,
    alphas_cumprod_from_config,
    betas_from_config,
    load_diffusion_model,
)

__all__ = [
    "DDIMSchedule",
    "DiffusionModel",
    "Guidance",
    "StepCallback",
    "alphas_cumprod_from_config",
    "betas_from_config",
    "ddim_step",
    "ddim_timesteps",
    "load_diffusion_model",
    "predict_eps",
    "sample",
]

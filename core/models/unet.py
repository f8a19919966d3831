"""Diffusion UNet presets (diffusers ``UNet2DModel``) and saving in the diffusers pipeline layout.

Presets:

- ``tiny``: three resolution levels (16, 32, 32 channels, one ResNet block each, self-attention only in the
  middle block at 4 x 4), 0.27 M parameters, for 16 x 16 digits; chosen for steps per CPU-second: on the
  shared 2-core machine a wider (32, 64, 64) variant reached a worse sample confidence in the same wall time.
- ``ddpm_cifar10``: the shape of ``google/ddpm-cifar10-32`` (Ho et al. 2020): block_out_channels
  128/256/256/256, two ResNet blocks per level, attention in the second down block (16 x 16) and the
  matching up block.

Both predict the noise epsilon (the DDPM objective) and work on images in [-1, 1].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from core.options import UNET_PRESETS, UnetPreset

logger = logging.getLogger(__name__)

# DDPM's schedule (Ho et al. 2020), used by the paper's CIFAR-10 model: linear betas 1e-4 .. 0.02 over T.
BETA_START = 1e-4
BETA_END = 0.02


def _preset_config(preset: UnetPreset) -> dict[str, Any]:
    if preset == "tiny":
        return {
            "block_out_channels": (16, 32, 32),
            "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
            "layers_per_block": 1,
            "norm_num_groups": 8,
        }
    if preset == "ddpm_cifar10":
        return {
            "block_out_channels": (128, 256, 256, 256),
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "attention_head_dim": None,
            "downsample_padding": 0,
            "flip_sin_to_cos": False,
            "freq_shift": 1,
            "norm_eps": 1e-6,
        }
    raise ValueError(f"unknown UNet preset {preset!r}; expected one of {', '.join(UNET_PRESETS)}")


def build_unet(
    preset: UnetPreset, *, image_size: int, channels: int, num_classes: int | None = None
) -> UNet2DModel:
    """A freshly initialised UNet2DModel of the given preset.

    ``num_classes`` makes it class-conditional (a learned class embedding added to the time embedding,
    diffusers' ``num_class_embeds``); call it then with ``class_labels``.
    """
    config = _preset_config(preset)
    levels = len(config["block_out_channels"])
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size < 2 ** (levels - 1) or image_size % 2 ** (levels - 1) != 0:
        raise ValueError(
            f"image_size {image_size} must be a multiple of {2 ** (levels - 1)} for preset {preset!r}"
        )
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        num_class_embeds=num_classes,
        **config,
    )


def make_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The DDPM noise schedule: linear betas 1e-4 .. 0.02 over ``num_train_timesteps`` steps, epsilon
    target."""
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="linear",
        prediction_type="epsilon",
    )


def save_diffusion(unet: UNet2DModel, path: Path | str, *, num_train_timesteps: int = 1000) -> None:
    """Save ``unet`` with its DDPM scheduler as a diffusers pipeline directory (``model_index.json``,
    ``unet/``, ``scheduler/``), loadable by ``DDPMPipeline.from_pretrained(path)`` and ``core.diffusion``."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    pipeline = DDPMPipeline(unet=unet, scheduler=make_scheduler(num_train_timesteps))
    pipeline.save_pretrained(str(directory), safe_serialization=True)
    logger.info("saved diffusion pipeline to %s", directory)

"""Small diffusion pieces shared by the sampler, generation and guidance tests (not a test module)."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel


def tiny_unet(num_classes: int | None = None, seed: int = 0) -> UNet2DModel:
    """An untrained two-level diffusers UNet for 8 x 8 x 1 images in eval mode, seeded initialisation;
    ``num_classes`` adds a class embedding."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        add_attention=False,
        num_class_embeds=num_classes,
    ).eval()


def linear_alphas(t: int = 1000) -> torch.Tensor:
    """alpha-bar of the DDPM linear schedule (betas 1e-4 .. 0.02 over ``t`` steps), float64."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, t, dtype=torch.float64), 0)

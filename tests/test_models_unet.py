"""core.models UNet presets and the diffusers pipeline layout written by save_diffusion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline

from core.diffusion import load_diffusion_model
from core.models import build_unet, save_diffusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiny_preset_predicts_noise_of_the_input_shape() -> None:
    torch.manual_seed(0)
    unet = build_unet("tiny", image_size=16, channels=1)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 900])).sample
    assert out.shape == x.shape
    assert unet.config.num_class_embeds is None


def test_class_conditional_unet_uses_the_label() -> None:
    torch.manual_seed(0)
    unet = build_unet("tiny", image_size=16, channels=3, num_classes=10).eval()
    torch.nn.init.normal_(unet.class_embedding.weight)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([500, 500])
    with torch.no_grad():
        a = unet(x, t, class_labels=torch.tensor([0, 0])).sample
        b = unet(x, t, class_labels=torch.tensor([3, 7])).sample
    assert unet.config.num_class_embeds == 10
    assert not torch.allclose(a, b)


def test_ddpm_cifar10_preset_has_the_google_ddpm_shape() -> None:
    unet = build_unet("ddpm_cifar10", image_size=32, channels=3)
    config = unet.config
    assert list(config.block_out_channels) == [128, 256, 256, 256]
    assert list(config.down_block_types) == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]
    assert list(config.up_block_types) == ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    assert config.layers_per_block == 2 and config.sample_size == 32
    # google/ddpm-cifar10-32 has 35.7 M parameters
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(35.75e6, rel=0.01)


@pytest.mark.parametrize(
    ("preset", "size", "channels", "message"),
    [("huge", 16, 1, "unknown UNet preset"), ("tiny", 10, 1, "multiple of 4"), ("tiny", 16, 2, "channels")],
    ids=["preset", "size", "channels"],
)
def test_build_unet_rejects_bad_arguments(preset: str, size: int, channels: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_unet(preset, image_size=size, channels=channels)  # type: ignore[arg-type]


def test_save_diffusion_writes_a_pipeline_that_diffusers_and_core_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = build_unet("tiny", image_size=16, channels=1, num_classes=10).eval()
    save_diffusion(unet, tmp_path / "pipe", num_train_timesteps=1000)
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    scheduler = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"]) == (
        "linear",
        1e-4,
        0.02,
    )
    assert scheduler["num_train_timesteps"] == 1000

    pipeline = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    loaded = load_diffusion_model(tmp_path / "pipe")
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([3, 700]), torch.tensor([1, 2])
    with torch.no_grad():
        expected = unet(x, t, class_labels=y).sample
        assert torch.equal(pipeline.unet(x, t, class_labels=y).sample, expected)
        assert torch.equal(loaded.unet(x, t, class_labels=y).sample, expected)
    assert (loaded.num_train_timesteps, loaded.image_size, loaded.channels, loaded.num_classes) == (
        1000,
        16,
        1,
        10,
    )
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(loaded.alphas_cumprod, torch.cumprod(1 - betas, 0))

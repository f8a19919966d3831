"""The device-agnostic paths, run on every device this machine has: always the CPU, and CUDA where a GPU is
present (skipped otherwise). The CPU run keeps these tests honest on machines without a GPU; the CUDA run is
what a GPU host adds: sampling with guidance, PGD and a TRADES epoch on the GPU, with results moved back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.contrastive import ContrastiveGuidance, classifier_feature_fn
from core.data import load_dataset
from core.diffusion import ddim_timesteps, load_diffusion_model, sample
from core.generation import GenerationParams, generate
from core.models import build_classifier, build_unet, load_classifier, save_classifier, save_diffusion
from core.training.pgd import pgd_attack
from core.training.trades import TradesConfig, train_trades

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("device-models")
    torch.manual_seed(0)
    save_diffusion(build_unet("tiny", image_size=16, channels=1), root / "unet")
    save_classifier(
        build_classifier("small_cnn", num_classes=10, channels=1, image_size=16, width=4, feature_dim=16),
        root / "cnn",
    )
    return root / "unet", root / "cnn"


@pytest.mark.parametrize("device", DEVICES)
def test_guided_sampling_runs_on_device_and_matches_the_cpu(device: str, saved_models) -> None:
    unet_dir, cnn_dir = saved_models
    diffusion = load_diffusion_model(unet_dir, device=device)
    classifier = load_classifier(cnn_dir, device=device)
    timesteps = ddim_timesteps(diffusion.num_train_timesteps, 4, "uniform")
    x_T = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    guidance = ContrastiveGuidance(
        classifier_feature_fn(classifier), loss="hnm", lam=50.0, tau=0.5, tau_plus=0.1, beta=1.0
    )
    guided = sample(diffusion.unet, x_T.to(device), alphas_cumprod=diffusion.alphas_cumprod,
                    timesteps=timesteps, guidance=guidance)
    plain = sample(diffusion.unet, x_T.to(device), alphas_cumprod=diffusion.alphas_cumprod,
                   timesteps=timesteps)
    assert guided.device.type == torch.device(device).type
    assert torch.isfinite(guided).all()
    assert not torch.allclose(guided, plain), "guidance changed nothing"

    cpu = load_diffusion_model(unet_dir, device="cpu")
    reference = sample(cpu.unet, x_T, alphas_cumprod=cpu.alphas_cumprod, timesteps=timesteps)
    torch.testing.assert_close(plain.cpu(), reference, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_generate_on_device_returns_host_arrays(device: str, saved_models) -> None:
    unet_dir, cnn_dir = saved_models
    diffusion = load_diffusion_model(unet_dir, device=device)
    classifier = load_classifier(cnn_dir, device=device)
    params = GenerationParams(loss="infonce", lam=10.0, tau=0.5, steps=3, schedule="uniform",
                              guidance_window=None, batch_size=4)
    out = generate(diffusion, classifier, params=params, count=6, seed=1, device=device)
    assert isinstance(out.images, np.ndarray) and out.images.dtype == np.uint8
    assert out.images.shape == (6, 16, 16, 1)
    assert out.labels.shape == (6,) and out.labels.min() >= 0 and out.labels.max() < 10


@pytest.mark.parametrize("device", DEVICES)
def test_pgd_on_device_stays_in_the_ball(device: str, saved_models) -> None:
    _, cnn_dir = saved_models
    model = load_classifier(cnn_dir, device=device)
    data = load_dataset("digits", "val")
    x, y = data.to_tensors(device)
    x, y = x[:32], y[:32]
    adv = pgd_attack(model, x, y, eps=0.1, step_size=0.025, steps=3,
                     generator=torch.Generator(device=device).manual_seed(0))
    assert adv.device == x.device
    assert (adv - x).abs().max().item() <= 0.1 + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_trades_epoch_on_device_saves_a_model_the_cpu_loads(device: str, tmp_path: Path) -> None:
    train = load_dataset("digits", "train").subset(np.arange(128))
    val = load_dataset("digits", "val").subset(np.arange(32))
    config = TradesConfig(epochs=1, batch_size=32, lr=0.05, eps=0.1, step_size=0.05, steps=2,
                          arch_options={"width": 4, "feature_dim": 16}, eval_steps=2, eval_max=32)
    metrics = train_trades(train, val, config=config, out_dir=tmp_path / "trades", seed=0, device=device)
    assert len(metrics["history"]) == 1
    model = load_classifier(tmp_path / "trades", device="cpu")
    x, _ = val.to_tensors("cpu")
    assert model(x).shape == (32, 10)


@NO_CUDA
@pytest.mark.parametrize("speed", [{"bf16": True}, {"compile": "inductor"}, {"channels_last": True},
                                   {"compile": "cudagraphs"},
                                   {"compile": "inductor", "bf16": True, "channels_last": True}],
                         ids=["bf16", "inductor", "channels_last", "cudagraphs", "all"])
def test_the_cuda_fast_paths_match_fp32_eager(speed, saved_models) -> None:
    """On a GPU: bf16 autocast of the UNet (tolerance 3e-2: bfloat16 keeps 8 bits of mantissa over a few
    steps), inductor compilation and channels_last (tolerance 1e-3: TF32/cuDNN algorithm choices) against the
    fp32 eager loop from the same noise."""
    from core.diffusion.fast import SamplingSpeed, fast_features, fast_unet

    unet_dir, cnn_dir = saved_models
    diffusion = load_diffusion_model(unet_dir, device="cuda")
    classifier = load_classifier(cnn_dir, device="cuda")
    ts = ddim_timesteps(diffusion.num_train_timesteps, 8, "uniform")
    x_T = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0)).cuda()
    options = SamplingSpeed(**speed)

    def run(unet, features, autocast):
        guidance = ContrastiveGuidance(features, loss="hnm", lam=20.0, tau=0.5)
        return sample(unet, x_T, alphas_cumprod=diffusion.alphas_cumprod, timesteps=ts, guidance=guidance,
                      autocast_dtype=autocast).float().cpu()

    reference = run(diffusion.unet, classifier_feature_fn(classifier), None)
    fast = run(fast_unet(diffusion.unet, options), fast_features(classifier_feature_fn(classifier), options),
               options.autocast_dtype("cuda"))
    tolerance = 3e-2 if options.bf16 else 1e-3
    torch.testing.assert_close(fast, reference, rtol=tolerance, atol=tolerance)

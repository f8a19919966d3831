"""DDIM timesteps, the sampling loop against independent implementations, and model loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from diffusion_helpers import linear_alphas, tiny_unet
from torch import nn

from core.diffusion import DDIMSchedule, Guidance, ddim_step, ddim_timesteps, load_diffusion_model, sample
from core.diffusion.loading import alphas_cumprod_from_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PlainEps(nn.Module):
    """A plain module eps(x, t): depends on x and t so the loop order matters."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * (1 + t.float().view(-1, 1) / 1000)


@pytest.mark.parametrize(
    ("t", "s", "kind", "expected"),
    [
        (10, 5, "uniform", [8, 6, 4, 2, 0]),
        (1000, 4, "uniform", [750, 500, 250, 0]),
        (10, 3, "uniform", [6, 3, 0]),
        (1000, 1, "uniform", [0]),
        (1000, 5, "quad", [800, 450, 200, 50, 0]),
        (1000, 3, "quad", [800, 200, 0]),
        (100, 4, "quad", [80, 35, 8, 0]),  # s = 0, 2.98, 5.96, 8.94; s^2 = 0, 8.9, 35.6, 80
    ],
)
def test_ddim_timesteps_hand_computed(t: int, s: int, kind: str, expected: list[int]) -> None:
    assert ddim_timesteps(t, s, kind) == expected


def test_quad_deduplicates() -> None:
    seq = ddim_timesteps(1000, 200, "quad")
    assert seq[0] == 800 and seq[-1] == 0
    assert len(seq) == len(set(seq)) < 200
    assert all(a > b for a, b in zip(seq, seq[1:], strict=False))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1000, 0, "uniform"), "got 0"),
        ((1000, 1001, "uniform"), "1001"),
        ((1000, 10, "cosine"), "cosine"),
        ((0, 1, "uniform"), "got 0"),
    ],
)
def test_ddim_timesteps_bad_args(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ddim_timesteps(*args)


def textbook_ddim(model, x, alphas, timesteps, class_labels=None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0), eq. 12 of Song et al. written out step by step."""
    x = x.clone()
    for i, t in enumerate(timesteps):
        a = alphas[t].item()
        a_prev = alphas[timesteps[i + 1]].item() if i + 1 < len(timesteps) else 1.0
        tt = torch.full((x.shape[0],), t)
        with torch.no_grad():
            out = model(x, tt) if class_labels is None else model(x, tt, class_labels)
        eps = out.sample if hasattr(out, "sample") else out
        pred_x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        x = a_prev**0.5 * pred_x0 + (1 - a_prev) ** 0.5 * eps
    return x


def test_sample_matches_diffusers_ddim_on_uniform_sequence() -> None:
    # For a uniform ("leading") sequence diffusers' DDIMScheduler.step is correct: an independent check.
    unet = tiny_unet()
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
    )
    sched.set_timesteps(10)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = x_T.clone()
    for t in sched.timesteps:
        with torch.no_grad():
            eps = unet(x, t).sample
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    ts = ddim_timesteps(1000, 10, "uniform")
    assert ts == [int(t) for t in sched.timesteps]
    ours = sample(unet, x_T, alphas_cumprod=linear_alphas(), timesteps=ts)
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "quad"])
def test_sample_matches_textbook_loop_with_unet(kind: str) -> None:
    unet = tiny_unet(num_classes=3)
    labels = torch.tensor([0, 2, 1])
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    ts = ddim_timesteps(1000, 8, kind)
    alphas = linear_alphas()
    ours = sample(unet, x_T, alphas_cumprod=alphas, timesteps=ts, class_labels=labels)
    torch.testing.assert_close(ours, textbook_ddim(unet, x_T, alphas, ts, labels), atol=1e-5, rtol=1e-5)


def test_sample_with_plain_module() -> None:
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    ts = ddim_timesteps(1000, 20, "quad")
    out = sample(PlainEps(), x_T, alphas_cumprod=linear_alphas(), timesteps=ts)
    torch.testing.assert_close(out, textbook_ddim(PlainEps(), x_T, linear_alphas(), ts), atol=1e-5, rtol=1e-5)


def test_eta_uses_generator() -> None:
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(4))
    ts = ddim_timesteps(1000, 10, "uniform")

    def run(seed: int) -> torch.Tensor:
        return sample(
            PlainEps(),
            x_T,
            alphas_cumprod=linear_alphas(),
            timesteps=ts,
            eta=1.0,
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    det = sample(PlainEps(), x_T, alphas_cumprod=linear_alphas(), timesteps=ts)
    assert not torch.allclose(run(0), det)


def test_callback_called_and_can_cancel() -> None:
    calls: list[tuple[int, int]] = []

    class Stop(Exception):
        pass

    def cb(step: int, total: int) -> None:
        calls.append((step, total))
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        sample(
            PlainEps(),
            torch.zeros(2, 2),
            alphas_cumprod=linear_alphas(),
            timesteps=ddim_timesteps(1000, 10, "uniform"),
            callback=cb,
        )
    assert calls == [(1, 10), (2, 10), (3, 10)]


def test_guidance_term_enters_eps_and_sees_previous_state() -> None:
    seen: list[tuple[int, bool]] = []
    prepared: list[list[int]] = []

    class Shift:
        def prepare(self, timesteps):
            prepared.append(list(timesteps))

        def __call__(self, x_t, t, *, eps, alpha_bar_t, x_prev, step, class_labels):
            seen.append((t, x_prev is None))
            return torch.full_like(x_t, 0.1)

    x_T = torch.randn(2, 2, generator=torch.Generator().manual_seed(5))
    ts = [500, 250, 0]
    alphas = linear_alphas()
    assert isinstance(Shift(), Guidance)
    got = sample(PlainEps(), x_T, alphas_cumprod=alphas, timesteps=ts, guidance=Shift())
    assert prepared == [ts]
    assert seen == [(500, True), (250, False), (0, False)]

    class Shifted(nn.Module):
        def forward(self, x, t):
            return PlainEps()(x, t) + 0.1

    torch.testing.assert_close(got, textbook_ddim(Shifted(), x_T, alphas, ts), atol=1e-6, rtol=1e-6)


def test_ddim_step_is_eq_12() -> None:
    x, eps_hat = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    a_t, a_next = 0.3, 0.6
    x0_hat = (x - math.sqrt(1 - a_t) * eps_hat) / math.sqrt(a_t)
    expected = math.sqrt(a_next) * x0_hat + math.sqrt(1 - a_next) * eps_hat
    assert torch.equal(ddim_step(x, eps_hat, alpha_bar_t=a_t, alpha_bar_next=a_next), expected)
    # the last step (alpha_bar_next = 1) returns the predicted x_0, with or without eta
    last = ddim_step(x, eps_hat, alpha_bar_t=a_t, alpha_bar_next=1.0, eta=1.0)
    torch.testing.assert_close(last, x0_hat, atol=1e-12, rtol=0)
    # eta > 0 adds sigma_t z, drawn from the generator
    noisy = [ddim_step(x, eps_hat, alpha_bar_t=a_t, alpha_bar_next=a_next, eta=1.0,
                       generator=torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.allclose(noisy[0], noisy[2])
    assert not torch.allclose(noisy[0], expected)


def test_schedule_pairs_each_step_with_the_next_alpha_bar() -> None:
    schedule = DDIMSchedule.make(linear_alphas(), [500, 250, 0])
    alphas = linear_alphas().tolist()
    assert len(schedule) == 3
    assert schedule.alpha_bar_pair(0) == (alphas[500], alphas[250])
    assert schedule.alpha_bar_pair(2) == (alphas[0], 1.0)


def test_refuses_inference_mode_and_bad_timesteps() -> None:
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        sample(PlainEps(), torch.zeros(1, 2), alphas_cumprod=linear_alphas(), timesteps=[10, 0])
    with pytest.raises(ValueError, match="decreasing"):
        sample(PlainEps(), torch.zeros(1, 2), alphas_cumprod=linear_alphas(), timesteps=[0, 10])
    with pytest.raises(ValueError, match="1000"):
        sample(PlainEps(), torch.zeros(1, 2), alphas_cumprod=linear_alphas(), timesteps=[1000, 0])
    with pytest.raises(ValueError, match="-0.5"):
        sample(PlainEps(), torch.zeros(1, 2), alphas_cumprod=linear_alphas(), timesteps=[10, 0], eta=-0.5)


def test_load_pipeline_dir_round_trip(tmp_path: Path) -> None:
    unet = tiny_unet(num_classes=3)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    model = load_diffusion_model(tmp_path / "pipe")
    assert (model.num_train_timesteps, model.image_size, model.channels, model.num_classes) == (1000, 8, 1, 3)
    assert model.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(model.alphas_cumprod.float(), sched.alphas_cumprod, atol=1e-6, rtol=1e-5)
    x = torch.randn(2, 1, 8, 8)
    t, y = torch.tensor([3, 700]), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, t, y).sample, unet(x, t, y).sample)
    assert not model.unet.training


def test_load_bare_unet_dir(tmp_path: Path) -> None:
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "scheduler_config.json").write_text(
        json.dumps(
            {
                "num_train_timesteps": 500,
                "beta_schedule": "scaled_linear",
                "beta_start": 1e-4,
                "beta_end": 0.02,
            }
        )
    )
    model = load_diffusion_model(tmp_path / "unet")
    assert model.num_classes is None and model.num_train_timesteps == 500
    betas = torch.linspace(1e-2, math.sqrt(0.02), 500, dtype=torch.float64) ** 2
    torch.testing.assert_close(model.alphas_cumprod, torch.cumprod(1 - betas, 0))


def _flat_hub_layout(folder: Path, unet, *, safe: bool) -> None:
    """google/ddpm-cifar10-32's layout: model_index.json, config.json, scheduler_config.json and the
    weights in one directory (no unet/ or scheduler/ subfolders)."""
    unet.save_pretrained(folder, safe_serialization=safe)
    DDPMScheduler(num_train_timesteps=1000).save_config(folder)
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
         "unet": ["diffusers", "UNet2DModel"]}))


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_load_the_hubs_flat_layout(tmp_path: Path, safe: bool) -> None:
    unet = tiny_unet()
    _flat_hub_layout(tmp_path / "flat", unet, safe=safe)
    weights = "diffusion_pytorch_model." + ("safetensors" if safe else "bin")
    assert (tmp_path / "flat" / weights).is_file() and not (tmp_path / "flat" / "unet").exists()
    model = load_diffusion_model(tmp_path / "flat")
    assert (model.num_train_timesteps, model.image_size, model.channels) == (1000, 8, 1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, t).sample, unet(x, t).sample)


class _RunsCode:
    def __reduce__(self):  # unpickling would call print("pwned")
        return (print, ("pwned",))


def test_bin_weights_are_read_with_the_weights_only_loader(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    _flat_hub_layout(tmp_path / "flat", tiny_unet(), safe=False)
    state = torch.load(tmp_path / "flat" / "diffusion_pytorch_model.bin", weights_only=True)
    state["payload"] = _RunsCode()
    torch.save(state, tmp_path / "flat" / "diffusion_pytorch_model.bin")
    with pytest.raises(Exception, match="Unable to load weights") as caught:
        load_diffusion_model(tmp_path / "flat")
    chain, exc = [], caught.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, pickle.UnpicklingError) for e in chain)  # the weights-only unpickler refused it
    assert "pwned" not in capsys.readouterr().out  # and the payload never ran


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config.json"):
        load_diffusion_model(tmp_path)
    tiny_unet().save_pretrained(tmp_path / "u")
    with pytest.raises(ValueError, match="scheduler_config.json"):
        load_diffusion_model(tmp_path / "u")
    with pytest.raises(ValueError, match="v_prediction"):
        alphas_cumprod_from_config({"prediction_type": "v_prediction"})

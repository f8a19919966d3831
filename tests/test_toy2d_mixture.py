"""The 2-D proof: eps-models, metrics, guided vs vanilla from the same noise, and ``cdp toy2d``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main
from core.diffusion import ddim_timesteps, sample
from core.simulation.gaussian import closed_form_robust_accuracy, self_training, standard_accuracy
from core.simulation.toy2d import GuidanceSettings, Toy2DConfig, build_eps_model, run_toy2d, set_metrics
from core.simulation.toy2d_models import ExactMixtureEps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


EXACT = Toy2DConfig(model="exact", steps=25, real_trials=10)


def test_exact_denoiser_matches_posterior_mean_by_monte_carlo() -> None:
    # E[eps | x_t] estimated from joint samples near a point vs the closed form (a = 0.5).
    cfg = Toy2DConfig(model="exact")
    alphas = cfg.alphas_cumprod()
    t = int(torch.argmin((alphas - 0.5).abs()))
    a = float(alphas[t])
    g = torch.Generator().manual_seed(0)
    n = 400_000
    y = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x0 = y[:, None] * torch.tensor([1.0, 1.0]) + torch.randn(n, 2, generator=g)
    e = torch.randn(n, 2, generator=g)
    xt = a**0.5 * x0 + (1 - a) ** 0.5 * e
    point = torch.tensor([0.3, -0.2])
    near = (xt - point).norm(dim=1) < 0.1
    model = ExactMixtureEps(torch.tensor([1.0, 1.0]), sigma=1.0, alphas_cumprod=alphas)
    closed = model(point[None], torch.tensor([t]))[0]
    torch.testing.assert_close(closed, e[near].mean(0), atol=0.05, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_vanilla_sampling_recovers_the_mixture(seed: int) -> None:
    r = run_toy2d(EXACT, GuidanceSettings(loss="none"), seed=seed, n=2000)
    v, d = r.metrics["vanilla"], r.metrics["data"]
    assert abs(v["class_fraction_pos"] - 0.5) < 0.05
    assert abs(v["c_hat"] - d["c_hat"]) < 0.1 and abs(v["spread"] - d["spread"]) < 0.1
    assert r.guided is None


def test_trained_mlp_is_a_usable_eps_model() -> None:
    cfg = Toy2DConfig(train_steps=400, steps=25, real_trials=5)
    model = build_eps_model(cfg, seed=0)
    r = run_toy2d(cfg, GuidanceSettings(loss="none"), seed=0, n=1000, model=model)
    v = r.metrics["vanilla"]
    assert abs(v["c_hat"] - 1.0) < 0.2 and abs(v["class_fraction_pos"] - 0.5) < 0.08
    # Same seed, same model weights.
    again = build_eps_model(cfg, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))


def test_set_metrics_against_hand_values() -> None:
    cfg = Toy2DConfig(model="exact", real_trials=3)
    x = np.array([[2.0, 2.0], [2.0, 0.0], [-2.0, -2.0], [-2.0, 0.0]])
    rng = np.random.default_rng(0)
    reals = [(rng.normal(size=(10, 2)) + 1, np.ones(10)) for _ in range(3)]
    m = set_metrics(x, cfg, real_sets=reals)
    # Class means (2, 1) and (-2, -1): distance 2 sqrt(5); each point 1 from its mean; c = (4+2)/(2*2) = 1.5.
    assert m["mean_distance"] == pytest.approx(2 * 5**0.5)
    assert m["spread"] == pytest.approx(1.0)
    assert m["c_hat"] == pytest.approx(1.5)
    res = self_training(*reals[1], x)
    theta = res.theta_final
    assert m["accuracy"] == pytest.approx(
        np.mean([standard_accuracy(self_training(*r, x).theta_final, np.ones(2)) for r in reals])
    )
    assert 0.5 < standard_accuracy(theta, np.ones(2)) <= 0.9215
    assert closed_form_robust_accuracy(theta, np.ones(2), eps=0.5) < standard_accuracy(theta, np.ones(2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_previous_strategy_spreads_samples(seed: int) -> None:
    # Paper App. C.2: InfoNCE/HNM with in-batch negatives push samples apart (within classes too).
    r = run_toy2d(EXACT, GuidanceSettings(loss="hnm", lam=300.0), seed=seed, n=256)
    v, g = r.metrics["vanilla"], r.metrics["guided"]
    assert g["spread"] > v["spread"]
    assert g["batch_contrastive_loss"] < v["batch_contrastive_loss"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_conditional_with_oracle_labels_separates_classes(seed: int) -> None:
    # Paper Fig. 3/4: conditional HNM (oracle classes) makes the two classes more separable.
    cfg = Toy2DConfig(model="exact", steps=25, real_trials=10, labels="oracle")
    r = run_toy2d(cfg, GuidanceSettings(strategy="class_conditional", lam=100.0), seed=seed, n=256)
    v, g = r.metrics["vanilla"], r.metrics["guided"]
    assert g["separability"] > v["separability"] and g["mean_distance"] > v["mean_distance"]


def test_same_seed_same_result() -> None:
    g = GuidanceSettings(loss="infonce", lam=100.0, embedding_head=True)
    a = run_toy2d(EXACT, g, seed=3, n=64)
    b = run_toy2d(EXACT, g, seed=3, n=64)
    assert np.array_equal(a.guided, b.guided) and a.metrics == b.metrics


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="-1.0"):
        GuidanceSettings(lam=-1.0)
    with pytest.raises(ValueError, match="'blob'"):
        GuidanceSettings(strategy="blob")
    with pytest.raises(ValueError, match="init_scale .* 0.0"):
        Toy2DConfig(init_scale=0.0)
    with pytest.raises(ValueError, match="n must be"):
        run_toy2d(EXACT, GuidanceSettings(), seed=0, n=1)


def test_cli_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "toy.png"
    code = main(
        [
            "toy2d",
            "--model",
            "exact",
            "--loss",
            "infonce",
            "--lam",
            "50",
            "--n",
            "64",
            "--steps",
            "10",
            "--repeats",
            "2",
            "--format",
            "json",
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == [0, 1] and out["guidance"]["loss"] == "infonce" and len(out["runs"]) == 2
    assert set(out["summary"]) == {"data", "vanilla", "guided"}
    assert 0.5 < out["summary"]["guided"]["accuracy"]["mean"] <= 1.0
    assert png.stat().st_size > 1000


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toy2d", "--model", "exact", "--loss", "none", "--n", "32", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "eq.5 robust accuracy" in out and "vanilla" in out and "guided" not in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--lam", "-1"], "-1"),
        (["--tau", "0"], "'0'"),
        (["--tau-plus", "1.0"], "1.0"),
        (["--strategy", "blob"], "blob"),
        (["--steps", "10", "--window", "995", "999"], "(995, 999)"),
    ],
    ids=["lam", "tau", "tau_plus", "strategy", "window"],
)
def test_cli_bad_arguments_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["toy2d", "--model", "exact", "--n", "8", *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_guided_ddim_on_toy_is_deterministic_with_eta() -> None:
    cfg = Toy2DConfig(model="exact")
    model = build_eps_model(cfg, seed=0)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    ts = ddim_timesteps(1000, 10, "quad")

    def run() -> torch.Tensor:
        return sample(
            model,
            x,
            alphas_cumprod=cfg.alphas_cumprod(),
            timesteps=ts,
            eta=0.5,
            generator=torch.Generator().manual_seed(1),
        )

    assert torch.equal(run(), run())

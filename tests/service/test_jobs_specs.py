"""core.specs: paper defaults, model references (never paths), bounds from settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import get_settings
from core.specs import GenerateSpec, TrainSpec, job_id_of

BASE = {"dataset": "digits", "model": "m", "classifier": "c", "count": 10}


@pytest.mark.parametrize("ref", ["digits-unet", "ddpm_cifar10.v2", "job:" + "0" * 24, "A"],
                         ids=["name", "dots", "job", "short"])
def test_valid_model_references(ref: str) -> None:
    assert GenerateSpec(**{**BASE, "model": ref}).model == ref


@pytest.mark.parametrize("ref", ["../x", "a/b", "/abs", "a..b", ".hidden", "job:xyz", "job:" + "0" * 25, "",
                                 "x" * 65, "a b"],
                         ids=["parent", "slash", "abs", "dotdot", "hidden", "bad-job", "long-job", "empty",
                              "too-long", "space"])
def test_invalid_model_references_name_the_value(ref: str) -> None:
    with pytest.raises(ValidationError) as info:
        GenerateSpec(**{**BASE, "model": ref})
    assert info.value.errors()[0]["loc"] == ("model",)
    assert repr(ref)[:20] in str(info.value)  # long values are shown as a prefix


def test_paper_defaults() -> None:
    hnm = GenerateSpec(**BASE)
    assert (hnm.loss, hnm.lam, hnm.tau, hnm.tau_plus, hnm.beta) == ("hnm", 1e5, 10.0, 0.1, 1.0)
    assert (hnm.steps, hnm.schedule, hnm.eta, hnm.strategy) == (200, "quad", 0.0, "previous")
    infonce = GenerateSpec(**BASE, loss="infonce")
    assert (infonce.lam, infonce.tau) == (2e4, 0.1)
    assert GenerateSpec(**BASE, loss="none").lam == 0.0
    assert GenerateSpec(**BASE, lam=5.0, tau=2.0).lam == 5.0
    trades = TrainSpec(kind="trades", dataset="digits", epochs=1)
    assert (trades.beta, trades.eps, trades.step_size, trades.attack_steps) == (6.0, 8 / 255, 2 / 255, 10)


def test_a_trades_spec_maps_to_the_trainer_options_field_by_field() -> None:
    spec = TrainSpec(kind="trades", dataset="digits", epochs=2, batch_size=64, lr=0.05, arch="wrn",
                     arch_options={"depth": 10}, beta=3.0, eps=0.1, step_size=0.02, attack_steps=5,
                     eval_attack_steps=7, eval_samples=None, synthetic_fraction=0.5, mixing="loss",
                     steps_per_epoch=9, eps_warmup=0.2)
    assert spec.trades_config_options() == {
        "arch": "wrn", "arch_options": {"depth": 10}, "epochs": 2, "batch_size": 64, "lr": 0.05, "beta": 3.0,
        "eps": 0.1, "step_size": 0.02, "steps": 5, "eval_steps": 7, "synthetic_fraction": 0.5,
        "mixing": "loss", "steps_per_epoch": 9, "eps_warmup": 0.2}  # eval_samples None: no eval_max
    default = TrainSpec(kind="trades", dataset="digits", epochs=1).trades_config_options()
    assert "lr" not in default and default["eval_max"] == 1000  # lr None: the trainer's


def test_bounds_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_MAX_COUNT", "50")
    monkeypatch.setenv("CDP_MAX_EPOCHS", "3")
    monkeypatch.setenv("CDP_MAX_LAMBDA", "1000")
    get_settings.cache_clear()
    GenerateSpec(**{**BASE, "count": 50})
    with pytest.raises(ValidationError, match="count=51 exceeds the server limit 50"):
        GenerateSpec(**{**BASE, "count": 51})
    with pytest.raises(ValidationError, match="epochs=4 exceeds the server limit 3"):
        TrainSpec(kind="classifier", dataset="digits", epochs=4)
    with pytest.raises(ValidationError, match="lam=2000.0 exceeds"):
        GenerateSpec(**BASE, lam=2000.0)
    assert GenerateSpec(**BASE).lam == 1000.0  # the paper's default, capped at the server's limit


def test_job_id_of() -> None:
    assert job_id_of("job:" + "ab" * 12) == "ab" * 12
    assert job_id_of("digits-unet") is None


def test_a_default_above_the_server_limit_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_MAX_STEPS", "50")
    get_settings.cache_clear()
    with pytest.raises(ValidationError, match="steps=200 exceeds the server limit 50"):
        GenerateSpec(**BASE)  # the paper's 200 DDIM steps, not asked for explicitly
    assert GenerateSpec(**BASE, steps=50).steps == 50


def test_the_oracle_pool_is_only_for_trades_on_mnist5k() -> None:
    TrainSpec(kind="trades", dataset="mnist5k", epochs=1, oracle=True)
    TrainSpec(kind="trades", dataset="mnist5k16", epochs=1, oracle=True)
    for bad in ({"kind": "trades", "dataset": "digits"}, {"kind": "classifier", "dataset": "mnist5k"}):
        with pytest.raises(ValidationError, match="oracle"):
            TrainSpec(epochs=1, oracle=True, **bad)


def test_trades_on_r_plus_o_trains_on_both_pools_for_the_fixed_step_budget(tmp_path: Path) -> None:
    from core.jobs.training import train_for_spec

    spec = TrainSpec(kind="trades", dataset="mnist5k16", epochs=1, oracle=True, steps_per_epoch=2,
                     batch_size=8, attack_steps=1, eval_attack_steps=1, eval_samples=8, final_eval=False)
    metrics = train_for_spec(spec, out_dir=tmp_path / "out", data_root=tmp_path, device="cpu",
                          progress=lambda _event: None, synthetic_dirs=[])
    assert metrics["real_images"] == 1000 + 2500
    assert metrics["steps"] == 2 and metrics["steps_per_epoch"] == 2


def test_devices_are_bounded_by_the_setting_and_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_MAX_DEVICES", "2")
    get_settings.cache_clear()
    assert TrainSpec(kind="trades", dataset="digits", epochs=1, devices=2).devices == 2
    with pytest.raises(ValidationError, match="devices=3 exceeds the server limit 2"):
        TrainSpec(kind="trades", dataset="digits", epochs=1, devices=3)
    with pytest.raises(ValidationError, match="devices=2: each process needs a share of the batch"):
        TrainSpec(kind="classifier", dataset="digits", epochs=1, devices=2, batch_size=1)
    with pytest.raises(ValidationError, match="priority"):
        TrainSpec(kind="classifier", dataset="digits", epochs=1, priority="urgent")

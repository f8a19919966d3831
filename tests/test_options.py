"""core.options: torch-free, the one source of the defaults the CLI, the API spec and the science share."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from core import options
from core.cli.generate import _params, register
from core.generation import GenerationParams
from core.specs import GenerateSpec

REQUIRED = {"dataset": "digits", "model": "m", "classifier": "c", "count": 1}
# field of GenerationParams / GenerateSpec -> its default in core.options
SHARED = {
    "loss": options.LOSS, "tau_plus": options.TAU_PLUS, "beta": options.BETA, "strategy": options.STRATEGY,
    "embedding_head": False, "steps": options.STEPS, "schedule": options.SCHEDULE, "eta": options.ETA,
    "guidance_window": None, "batch_size": options.BATCH_SIZE, "feature_on": options.FEATURE_ON_DEFAULT,
    "head_scope": options.HEAD_SCOPE,
}


def test_options_import_no_torch() -> None:
    code = "import sys, core.options; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_paper_values() -> None:
    assert (options.TAU["hnm"], options.LAM["hnm"], options.TAU_PLUS, options.BETA) == (10.0, 1e5, 0.1, 1.0)
    assert (options.TAU["infonce"], options.LAM["infonce"]) == (0.1, 2e4)
    assert (options.STEPS, options.SCHEDULE, options.ETA) == (200, "quad", 0.0)


def cli_args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["generate", "--diffusion", "d", "--classifier", "c", "--count", "1", "--out",
                              "o", *extra])


def test_generation_params_defaults_are_the_options() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(GenerationParams)
                if f.default is not dataclasses.MISSING}
    assert defaults == SHARED


def test_cli_defaults_are_the_options() -> None:
    assert {name: getattr(_params(cli_args("--lam", "5")), name) for name in SHARED} == SHARED


@pytest.mark.parametrize("loss", options.GEN_LOSSES)
def test_cli_and_spec_resolve_to_the_same_params(loss: str) -> None:
    lam = ["--lam", "5"] if loss != "none" else []
    from_cli = _params(cli_args("--loss", loss, *lam))
    spec = GenerateSpec.model_validate({**REQUIRED, "loss": loss, **({"lam": 5.0} if lam else {})})
    assert from_cli == GenerationParams.from_spec(spec)
    assert from_cli.tau == options.TAU[loss]
    assert {name: getattr(from_cli, name) for name in SHARED} == SHARED | {"loss": loss}


def test_spec_fills_the_paper_lambda() -> None:
    for loss in options.GEN_LOSSES:
        spec = GenerateSpec.model_validate({**REQUIRED, "loss": loss})
        assert (spec.lam, spec.tau) == (options.LAM[loss], options.TAU[loss])


def test_choices_come_from_options() -> None:
    assert GenerateSpec.model_json_schema()["properties"]["strategy"]["enum"] == list(options.STRATEGIES)
    actions = {a.dest: a for a in _generate_actions()}
    assert tuple(actions["strategy"].choices) == options.STRATEGIES
    assert tuple(actions["schedule"].choices) == options.SCHEDULES
    assert tuple(actions["loss"].choices) == options.GEN_LOSSES


def _generate_actions() -> list[argparse.Action]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    return list(sub.choices["generate"]._actions)


def test_trades_defaults_agree_across_the_spec_the_trainer_and_the_cli() -> None:
    from core.cli.train_trades import add_trades_arguments
    from core.specs import TrainSpec
    from core.training.trades import TradesConfig

    parser = argparse.ArgumentParser()
    add_trades_arguments(parser)
    cli = parser.parse_args(["--dataset", "digits", "--out", "unused"])
    spec = TrainSpec(kind="trades", dataset="digits", epochs=1)
    config = TradesConfig()
    # option default -> (spec field, TradesConfig field, CLI dest)
    shared = {
        options.TRADES_BETA: ("beta", "beta", "beta"), options.EPS: ("eps", "eps", "eps"),
        options.ATTACK_STEPS: ("attack_steps", "steps", "attack_steps"),
        options.SYNTHETIC_FRACTION: ("synthetic_fraction", "synthetic_fraction", "synthetic_fraction"),
        options.MIXING: ("mixing", "mixing", "mixing"), options.ARCH: ("arch", "arch", "arch"),
    }
    for default, (spec_field, config_field, dest) in shared.items():
        assert getattr(spec, spec_field) == getattr(config, config_field) == getattr(cli, dest) == default
    assert spec.step_size == config.step_size == cli.step_size == options.STEP_SIZE  # not eps / 4
    # checkpoint selection: PGD steps on the validation split (TradesConfig's own default is not used)
    assert spec.eval_attack_steps == cli.eval_steps == options.EVAL_ATTACK_STEPS
    assert (config.schedule, config.start, config.eta) == (cli.schedule, cli.start, cli.eta)
    assert (cli.schedule, cli.start, cli.eta) == (options.TRADES_SCHEDULE, options.ATTACK_START,
                                                  options.MIXING_ETA)


def test_a_train_job_and_the_cli_map_their_defaults_to_the_same_trades_config() -> None:
    """Both go through core.specs.train.trades_config_options; only eval_max differs (the spec's eval_samples
    1000, the CLI's --eval-max 1024)."""
    from core.cli.train_trades import _trades_config, add_trades_arguments
    from core.specs import TrainSpec
    from core.training.trades import TradesConfig

    parser = argparse.ArgumentParser()
    add_trades_arguments(parser)
    from_cli = _trades_config(parser.parse_args(["--dataset", "digits", "--out", "unused", "--epochs", "3"]))
    from_spec = TradesConfig(**TrainSpec(kind="trades", dataset="digits", epochs=3).trades_config_options())
    assert (from_spec.eval_max, from_cli.eval_max) == (1000, 1024)
    assert dataclasses.replace(from_spec, eval_max=1024) == from_cli
    assert (from_cli.step_size, from_cli.eval_steps) == (options.STEP_SIZE, options.EVAL_ATTACK_STEPS)


def test_toy_cli_defaults_are_the_toy_dataclasses_defaults() -> None:
    from core.cli import toy2d as cli_toy2d
    from core.simulation.toy2d import GuidanceSettings, Toy2DConfig

    root = argparse.ArgumentParser()
    cli_toy2d.register(root.add_subparsers())
    args = root.parse_args(["toy2d"])
    config, guidance = Toy2DConfig(), GuidanceSettings()
    for name in ("loss", "strategy", "lam", "tau", "tau_plus", "beta", "feature_on"):
        assert getattr(args, name) == getattr(guidance, name), name
    for name in ("model", "features", "labels", "steps", "init_scale", "train_steps", "n_real"):
        assert getattr(args, name) == getattr(config, name), name


def test_an_experiment_attacks_each_run_with_its_own_seed() -> None:
    """child_evaluate_spec used to drop the run's seed: every seed's model met the same random starts."""
    from core.specs import ExperimentSpec

    spec = ExperimentSpec.model_validate({"dataset": "digits", "seeds": [0, 4], "arms": [{"name": "real"}],
                                          "trades": {"epochs": 1}, "evaluation": {"seed": 10}})
    assert [spec.child_evaluate_spec("0190a1b2c3d4e5f6a7b8c9d0", s).seed for s in spec.seeds] == [10, 14]
    from core.specs.common import MAX_SEED

    assert spec.child_evaluate_spec("0190a1b2c3d4e5f6a7b8c9d0", MAX_SEED).seed == 9  # wraps, stays valid


def test_a_train_record_shows_only_the_fields_of_its_kind() -> None:
    from core.options import TRAIN_KINDS
    from core.specs import TrainSpec
    from core.specs.train import TRAIN_FIELDS

    assert set(TRAIN_FIELDS) == set(TRAIN_KINDS)
    listed = {name for fields in TRAIN_FIELDS.values() for name in fields}
    assert listed == set(TrainSpec.model_fields), set(TrainSpec.model_fields) ^ listed
    diffusion = TrainSpec(kind="diffusion", dataset="digits", epochs=2)
    shown = diffusion.record_input()
    assert {"beta", "eps", "arch", "synthetic_fraction"}.isdisjoint(shown) and shown["unet"] == "tiny"
    assert TrainSpec.model_validate(shown) == diffusion  # the record still gives the spec back
    trades = TrainSpec(kind="trades", dataset="digits", epochs=2, beta=3.0)
    assert TrainSpec.model_validate(trades.record_input()) == trades


def test_one_arch_options_table_covers_every_arch_and_every_arch_option() -> None:
    from typing import get_args

    from core.specs.train import ARCH_OPTIONS, ArchOption

    assert set(ARCH_OPTIONS) == set(get_args(options.Arch)) == set(options.ARCHS)
    listed = [name for names in ARCH_OPTIONS.values() for name in names]
    assert sorted(listed) == sorted(get_args(ArchOption))  # each option belongs to exactly one arch


def test_an_experiment_s_trades_settings_are_train_spec_fields_declared_once() -> None:
    from pydantic import ValidationError

    from core.specs import ExperimentSpec, ExperimentTrades, TrainSpec
    from core.specs.train import EXPERIMENT_TRADES_FIELDS

    assert list(ExperimentTrades.model_fields) == list(EXPERIMENT_TRADES_FIELDS)
    for name in EXPERIMENT_TRADES_FIELDS:  # same type, bounds, default and description
        ours, theirs = ExperimentTrades.model_fields[name], TrainSpec.model_fields[name]
        assert (ours.annotation, ours.metadata, ours.description) == (theirs.annotation, theirs.metadata,
                                                                       theirs.description), name
        assert ours.get_default(call_default_factory=True) == theirs.get_default(call_default_factory=True)
    trades = ExperimentTrades(epochs=2, arch="wrn", arch_options={"depth": 10}, step_size=0.01)
    spec = ExperimentSpec(dataset="digits", seeds=[0], arms=[{"name": "real"}], trades=trades)
    child = spec.child_train_spec(spec.arms[0], 0)
    assert {name: getattr(child, name) for name in EXPERIMENT_TRADES_FIELDS} == trades.model_dump()
    for bad in ({"epochs": 0}, {"epochs": 1, "arch_options": {"depth": 10}}, {"epochs": 1, "kind": "trades"}):
        with pytest.raises(ValidationError):
            ExperimentTrades.model_validate(bad)


def test_frozen_limits_are_integers_where_whole() -> None:
    from core.specs import JobPlan, server_limits

    limits = server_limits()
    assert isinstance(limits["max_count"], int)
    assert JobPlan(limits=limits).model_dump(mode="json")["limits"]["max_count"] == limits["max_count"]
    assert isinstance(JobPlan(limits=limits).limits["max_count"], int)

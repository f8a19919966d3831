"""`cdp evaluate` and the options of `cdp train trades` (core.cli.evaluate, core.cli.train_trades)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core import options
from core.cli import main
from core.cli.train_trades import add_trades_arguments, parse_eps, run_trades
from core.data import load_dataset
from core.models import build_classifier, save_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def classifier_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_classifier("small_cnn", num_classes=10, channels=1, image_size=16, width=4, feature_dim=8)
    save_classifier(model, tmp_path / "clf", config={"note": "untrained"})
    return tmp_path / "clf"


def test_evaluate_prints_json(classifier_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", str(classifier_dir), "--dataset", "digits", "--split", "val", "--eps", "8/255",
                 "--steps", "2", "--limit", "30", "--device", "cpu", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 30 and result["split"] == "val"
    assert result["eps"] == pytest.approx(8 / 255)
    assert 0.0 <= result["robust_acc"] <= result["pgd_ce_acc"] <= result["clean_acc"] <= 1.0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--eps", "1.5"], "eps"),
        (["--eps", "8/0"], "fraction"),
        (["--eps", "0.1", "--steps", "0"], "integer"),
    ],
    ids=["eps-above-one", "eps-division-by-zero", "zero-steps"],
)
def test_evaluate_rejects_bad_options(
    classifier_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(classifier_dir), "--dataset", "digits", *argv])
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err


def test_evaluate_missing_model_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "nothing"), "--dataset", "digits", "--eps", "0.1"])
    assert exit_info.value.code == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "value"), [("0.1", 0.1), ("8/255", 8 / 255), ("0", 0.0)])
def test_parse_eps(text: str, value: float) -> None:
    assert parse_eps(text) == pytest.approx(value)


def test_cdp_train_trades_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digits = load_dataset("digits", "train")
    np.savez(tmp_path / "syn.npz", image=digits.images[:64], label=digits.labels[:64])
    code = main([
        "train", "trades", "--dataset", "digits", "--epochs", "1", "--seed", "1",
        "--out", str(tmp_path / "run"), "--json", "--eps", "0.1", "--synthetic", str(tmp_path / "syn.npz"),
        "--steps", "1", "--batch-size", "128", "--width", "4", "--eval-steps", "1", "--eval-max", "32",
        "--device", "cpu",
    ])  # fmt: skip
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["synthetic_count"] == 64
    assert metrics["config"]["eps"] == pytest.approx(0.1)
    assert metrics["config"]["step_size"] == pytest.approx(options.STEP_SIZE)  # the spec's default, any eps
    assert metrics["config"]["eval_steps"] == 1
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_train_trades_rejects_options_of_another_arch(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_trades_arguments(parser)
    args = parser.parse_args(["--dataset", "digits", "--out", str(tmp_path), "--depth", "16"])
    with pytest.raises(ValueError, match="depth"):
        run_trades(args)


def test_both_train_commands_take_the_arch_options_of_the_one_table(tmp_path: Path) -> None:
    from typing import get_args

    from core.cli.train import register
    from core.cli.train_trades import ARCH_OPTION_ARGUMENTS, _trades_config
    from core.specs.train import ArchOption

    assert set(ARCH_OPTION_ARGUMENTS) == set(get_args(ArchOption))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    for kind in ("classifier", "trades"):
        args = parser.parse_args(["train", kind, "--dataset", "digits", "--epochs", "1",
                                  "--out", str(tmp_path), "--width", "4", "--feature-dim", "8"])
        assert (args.width, args.feature_dim, args.depth, args.widen_factor) == (4, 8, None, None)
    assert _trades_config(args).arch_options == {"width": 4, "feature_dim": 8}

"""``cdp train diffusion|classifier`` and ``cdp generate``: --json output shape, files written, and exit
code 2 with one clear line on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.data import load_synthetic
from core.diffusion import load_diffusion_model
from core.models import load_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # exactly one JSON object on stdout
    return json.loads(out[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    common = ["--dataset", "digits", "--epochs", "1", "--seed", "0", "--device", "cpu", "--json"]
    assert main(["train", "diffusion", *common, "--out", str(root / "diff"), "--limit", "32",
                 "--batch-size", "16"]) == 0  # fmt: skip
    assert main(["train", "classifier", *common, "--out", str(root / "clf"), "--limit", "128",
                 "--width", "8", "--feature-dim", "16"]) == 0  # fmt: skip
    return {"diffusion": root / "diff", "classifier": root / "clf", "root": root}


def test_train_commands_print_one_json_object_and_leave_loadable_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trained: dict[str, Path]
) -> None:
    capsys.readouterr()
    common = ["--dataset", "digits", "--epochs", "1", "--seed", "0", "--device", "cpu", "--json"]
    diffusion = run_json(capsys, ["train", "diffusion", *common, "--out", str(trained["diffusion"]),
                                  "--limit", "32", "--batch-size", "16"])  # fmt: skip
    assert diffusion["kind"] == "diffusion" and diffusion["steps"] == 2 and diffusion["epochs"] == 1
    assert {"initial_eval_loss", "final_ema_eval_loss", "history", "pipeline_dir", "wall_seconds"} <= set(
        diffusion
    )
    assert load_diffusion_model(trained["diffusion"]).image_size == 16

    classifier = run_json(capsys, ["train", "classifier", *common, "--out", str(tmp_path / "c"),
                                   "--limit", "64",
                                   "--width", "8", "--feature-dim", "16"])  # fmt: skip
    assert classifier["kind"] == "classifier" and len(classifier["history"]) == 1
    assert 0.0 <= classifier["test_accuracy"] <= 1.0 and classifier["best_epoch"] == 1
    assert load_classifier(tmp_path / "c").feature_dim == 16


def test_generate_writes_shards_preview_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trained: dict[str, Path]
) -> None:
    capsys.readouterr()
    argv = ["generate", "--diffusion", str(trained["diffusion"]), "--classifier", str(trained["classifier"]),
            "--count", "7", "--seed", "3", "--out", str(tmp_path / "g"), "--loss", "hnm", "--lam", "10",
            "--steps", "4", "--batch-size", "4", "--shard-size", "3", "--device", "cpu",
            "--json"]  # fmt: skip
    metrics = run_json(capsys, argv)
    assert metrics["count"] == 7 and sum(metrics["class_histogram"]) == 7
    assert metrics["params"]["loss"] == "hnm" and metrics["params"]["tau"] == 10.0
    # 2 batches x the 3 steps after the first of the 4 (quad, the default schedule)
    assert metrics["guidance"]["guided_steps"] == 6 and np.isfinite(metrics["guidance"]["mean_loss"])
    assert [Path(p).name for p in metrics["shards"]] == ["0.npz", "1.npz", "2.npz"]
    with np.load(tmp_path / "g" / "shards" / "0.npz") as shard:
        assert shard["image"].dtype == np.uint8 and shard["image"].shape == (3, 16, 16, 1)
        assert shard["label"].dtype == np.int64 and shard["confidence"].dtype == np.float32
        assert shard["entropy"].shape == (3,)
    dataset = load_synthetic([tmp_path / "g"], num_classes=10)
    assert len(dataset) == 7
    assert Image.open(tmp_path / "g" / "preview.png").size[0] > 16
    assert json.loads((tmp_path / "g" / "metrics.json").read_text())["count"] == 7
    # same seed, same images; with the dataset the model learned, the set's quality and its warnings: a
    # 1-epoch model makes noise, and cdp generate says so on stderr
    assert main([*argv[:-1], "--out", str(tmp_path / "h"), "--quality-dataset", "digits", "--json"]) == 0
    printed = capsys.readouterr()
    noisy = json.loads(printed.out.strip().splitlines()[-1])
    assert np.array_equal(load_synthetic([tmp_path / "h"]).images, dataset.images)
    assert noisy["outlier_fraction"] > 0.5 and noisy["warnings"][0].startswith("outliers:")
    assert "warning: outliers:" in printed.err
    # an existing set is not silently replaced
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "already holds 3 shard(s)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "classifier", "--dataset", "digits", "--epochs", "1", "--out", "X", "--arch", "wrn",
          "--width", "8"], "--width does not apply to --arch wrn"),
        (["train", "classifier", "--dataset", "mnist", "--epochs", "1", "--out", "X"],
         "unknown dataset 'mnist'"),
        (["train", "diffusion", "--dataset", "digits", "--epochs", "0", "--out", "X"], "--epochs"),
        (["generate", "--diffusion", "D", "--classifier", "C", "--count", "5", "--out", "X"],
         "--lam is required"),
        (["generate", "--diffusion", "D", "--classifier", "C", "--count", "5", "--out", "X",
          "--loss", "none",
          "--strategy", "real_positive"], "needs --real-dataset"),
    ],
    ids=["width-for-wrn", "unknown-dataset", "zero-epochs", "missing-lam", "real-strategy-without-data"],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [str(tmp_path / a) if a in ("X", "D", "C") else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err

"""Data-parallel training (core.training.distributed): two gloo processes on the CPU reach the weights of one
process with the same global batch and seed, and a distributed run killed after an epoch resumes.

Tolerances: the classifier agrees to float rounding (1.2e-6 after its 3 epochs; atol 5e-6). In TRADES,
the attack's random start is drawn for the global batch and each rank takes its rows, so both runs start
from the same x_adv (tested exactly on the first step, with the default start). After that the weights
differ by float rounding (the all-reduced half-batch gradients sum in another order than the one-process
gradient: 6e-8 after one step),
and with the default start (x + 0.001 N(0, 1), where the KL's input gradients are near zero) PGD's sign()
turns such differences into pixels of x_adv moved by 2 step sizes: measured on `cdp train trades --dataset
digits --epochs 1 --seed 0 --eps 0.1 --attack-steps 1 --step-size 0.025` (11 steps; eps / 4 was then the
CLI's default step), x_adv agreed exactly on step 1, differed in 2 of 16384 pixels on step 2, 637 on
step 5, and the weights ended 1.3e-3 apart; the same run
with the attack split into the two halves on one process reproduced the one-process weights exactly, so the
split of the batch is not the cause. The weights check therefore trains with the uniform start (x_adv
eps away from x, gradients far from zero): the 3 steps agree to 7e-7, checked at atol 1e-5 (a wrong
gradient scale or a wrong slice of the batch differs by 1e-3 or more). With the default start the same
3 steps ended 2.6e-3 apart once the digits split order changed, which is why an earlier atol of 2e-4 failed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import build_parser, main
from core.cli.train import _train_classifier_rank
from core.data import load_dataset
from core.progress import Cancelled, ProgressEvent, Stage
from core.training.distributed import launch

CLASSIFIER = ["train", "classifier", "--dataset", "digits", "--limit", "64", "--batch-size", "16", "--width",
              "4", "--feature-dim", "8", "--augment", "--device", "cpu", "--seed", "3"]  # fmt: skip


CLASSIFIER_ATOL = 5e-6  # float rounding over 3 epochs; a wrong gradient scale or batch slice is > 1e-3 off


def _weights(out: Path, part: str = "model") -> dict[str, torch.Tensor]:
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    return state[part] if part == "model" else state[part]["module"]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol:g}"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def one_process_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("classifier-1proc")
    torch.set_num_threads(1)
    assert main([*CLASSIFIER, "--epochs", "3", "--out", str(out), "--json"]) == 0
    return out


def test_two_gloo_ranks_train_trades_like_one_process(tmp_path: Path) -> None:
    val = load_dataset("digits", "val")
    synthetic = tmp_path / "synthetic.npz"
    np.savez(synthetic, image=val.images[:64], label=val.labels[:64])
    args = ["train", "trades", "--dataset", "digits", "--limit", "96", "--batch-size", "32", "--attack-steps",
            "1", "--epochs", "1", "--width", "4", "--eval-max", "32", "--eval-steps", "1", "--device", "cpu",
            "--eps", "0.1", "--step-size", "0.025", "--synthetic", str(synthetic), "--synthetic-fraction",
            "0.5", "--start", "uniform"]  # fmt: skip (step eps / 4: the tolerances were measured with it)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "two"), "--nproc", "2"]) == 0
    for part in ("model", "ema"):
        _assert_close(_weights(tmp_path / "one", part), _weights(tmp_path / "two", part), atol=1e-5)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["history"][-1]
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["history"][-1]
    assert two["train_clean_acc"] == pytest.approx(one["train_clean_acc"], abs=1 / 96)  # the global batch's


def test_two_gloo_ranks_start_trades_from_the_one_process_x_adv(tmp_path: Path) -> None:
    """The attack's random start depends on the sample's row in the global batch, not on the rank: on the
    first step (identical weights) the two ranks' x_adv together are the one-process x_adv."""
    from tests.trades_ranks import global_x_adv, recording_rank

    args = build_parser().parse_args([
        "train", "trades", "--dataset", "digits", "--limit", "64", "--batch-size", "32",
        "--attack-steps", "1", "--epochs", "1", "--width", "4", "--eval-max", "16", "--eval-steps", "1",
        "--device", "cpu", "--eps", "0.1", "--step-size", "0.025",
        "--out", str(tmp_path / "out")])  # fmt: skip
    for nproc in (1, 2):
        (tmp_path / f"x{nproc}").mkdir()
        args.out = str(tmp_path / f"out{nproc}")
        launch(recording_rank, {"args": args, "record": str(tmp_path / f"x{nproc}")}, nproc=nproc,
               device="cpu")
    one, two = global_x_adv(tmp_path / "x1", 0, 1), global_x_adv(tmp_path / "x2", 0, 2)
    assert one.shape == two.shape and len(one) == 32
    assert torch.equal(one, two)
    assert not torch.equal(two[:16], two[16:])  # the two halves are not one draw repeated


def test_two_gloo_ranks_train_the_classifier_like_one_process(one_process_classifier: Path,
                                                               tmp_path: Path) -> None:
    assert main([*CLASSIFIER, "--epochs", "3", "--out", str(tmp_path), "--nproc", "2"]) == 0
    _assert_close(_weights(one_process_classifier), _weights(tmp_path), atol=CLASSIFIER_ATOL)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "metrics.json").is_file()


def test_a_distributed_run_killed_after_an_epoch_resumes(one_process_classifier: Path,
                                                         tmp_path: Path) -> None:
    """Rank 0's progress callback stops the run after epoch 1 (as a cancel or a lost lease does in the
    worker); the launcher kills the other rank; the same command then resumes from the checkpoint."""
    args = build_parser().parse_args([*CLASSIFIER, "--epochs", "3", "--out", str(tmp_path), "--nproc", "2"])

    def stop_after_first_epoch(event: ProgressEvent) -> None:
        if event.stage == Stage.EPOCH and event.current == 1:
            raise Cancelled("stopped after epoch 1")

    with pytest.raises(Cancelled):
        launch(_train_classifier_rank, {"args": args}, nproc=2, device="cpu", progress=stop_after_first_epoch)
    assert int(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"]) == 1
    assert main([*CLASSIFIER, "--epochs", "3", "--out", str(tmp_path), "--nproc", "2"]) == 0
    _assert_close(_weights(one_process_classifier), _weights(tmp_path), atol=CLASSIFIER_ATOL)


def test_a_train_job_with_two_devices_runs_two_ranks_from_the_worker(tmp_path: Path) -> None:
    """The worker's path (core.jobs.training.train_for_spec): rank 0 keeps the job's progress callback."""
    from core.jobs.training import train_for_spec
    from core.specs import TrainSpec

    spec = TrainSpec(kind="classifier", dataset="digits", epochs=1, batch_size=64, devices=2,
                     final_eval=False, arch_options={"width": 4, "feature_dim": 8})
    stages: list[str] = []
    metrics = train_for_spec(spec, out_dir=tmp_path / "out", data_root=tmp_path, device="cpu",
                             progress=lambda event: stages.append(event.stage))  # fmt: skip
    assert metrics["steps"] == 21 and stages.count("epoch") == 1  # ceil(1295 / 64) steps of the global batch
    assert (Path(metrics["_model_dir"]) / "model.safetensors").is_file()

"""core.training.classifier: learning on digits, checkpoints, cancellation and bit-identical resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from core.data import load_dataset
from core.models import load_classifier
from core.progress import Cancelled, ProgressEvent
from core.training.classifier import ClassifierTrainConfig, augment_batch, evaluate_accuracy, train_classifier
from core.training.common import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    train = load_dataset("digits", "train")
    return train.subset(range(0, len(train), 3)), load_dataset("digits", "val")


CONFIG = ClassifierTrainConfig(epochs=3, batch_size=32, arch_options={"width": 8, "feature_dim": 32}, lr=3e-3)


def test_trains_to_useful_accuracy_and_saves_the_best_epoch(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    train, val = digits
    events: list[tuple[str, int, int]] = []

    def progress(event: ProgressEvent) -> None:
        events.append((event.stage, event.current, event.total))

    metrics = train_classifier(train, val, config=CONFIG, out_dir=tmp_path, seed=0, progress=progress)
    assert metrics["best_val_accuracy"] > 0.6  # 10 classes: chance is 0.1
    assert len(metrics["history"]) == 3 and metrics["best_epoch"] in (1, 2, 3)
    best = metrics["history"][metrics["best_epoch"] - 1]["val_accuracy"]
    model = load_classifier(tmp_path)
    assert evaluate_accuracy(model, val)["accuracy"] == pytest.approx(best)
    assert ("epoch", 3, 3) in events
    steps = [e for e in events if e[0] == "train"]
    assert steps[-1][1] == steps[-1][2] == 3 * -(-len(train) // 32)
    assert json.loads((tmp_path / "metrics.json").read_text())["best_epoch"] == metrics["best_epoch"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 3


@pytest.mark.parametrize("cancel_at", ["epoch-end", "mid-epoch"])
def test_resume_after_cancel_gives_the_uninterrupted_weights(tmp_path: Path, digits, cancel_at: str) -> None:  # type: ignore[no-untyped-def]
    train, val = digits
    config = replace(CONFIG, epochs=2, augment=True)  # augmentation draws from the RNG too
    reference = train_classifier(train, val, config=config, out_dir=tmp_path / "a", seed=5)
    steps_per_epoch = -(-len(train) // config.batch_size)

    def cancel(event: ProgressEvent) -> None:
        if cancel_at == "epoch-end" and event.stage == "epoch" and event.current == 1:
            raise Cancelled
        if cancel_at == "mid-epoch" and event.stage == "train" and event.current == steps_per_epoch + 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        train_classifier(train, val, config=config, out_dir=tmp_path / "b", seed=5, progress=cancel)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    resumed = train_classifier(train, val, config=config, out_dir=tmp_path / "b", seed=5)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert resumed["history"] == reference["history"]
    # a different seed gives different weights, so the equality above is not vacuous
    other = train_classifier(train, val, config=config, out_dir=tmp_path / "c", seed=6)
    assert other["history"] != reference["history"]


def test_resume_refuses_a_checkpoint_made_with_other_settings(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    train, val = digits
    config = replace(CONFIG, epochs=1)
    train_classifier(train, val, config=config, out_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="arch_options"):
        changed = replace(CONFIG, epochs=1, arch_options={"width": 4})
        train_classifier(train, val, config=changed, out_dir=tmp_path, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"arch": "vit"}, "arch"), ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"),
     ({"optimizer": "lamb"}, "lamb"), ({"label_smoothing": 1.0}, "label_smoothing")],
    ids=["arch", "epochs", "lr", "optimizer", "smoothing"],
)  # fmt: skip
def test_config_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClassifierTrainConfig(**kwargs)


def test_augmentation_translates_within_padding_and_is_seeded() -> None:
    x = torch.zeros(6, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    a = augment_batch(x, padding=2, horizontal_flip=True, generator=torch.Generator().manual_seed(0))
    b = augment_batch(x, padding=2, horizontal_flip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.all(
        a.sum(dim=(1, 2, 3)) == 4
    )  # the 2x2 blob moves by <= 2 pixels and never leaves the frame
    assert not all(torch.equal(a[i], x[i]) for i in range(6))


def test_resume_refuses_another_kind_of_checkpoint(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    from core.training.diffusion import DiffusionTrainConfig, train_diffusion

    train, val = digits
    train_classifier(train, val, config=replace(CONFIG, epochs=1), out_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="not a diffusion training checkpoint"):
        train_diffusion(train, config=DiffusionTrainConfig(epochs=1, batch_size=32), out_dir=tmp_path, seed=0)

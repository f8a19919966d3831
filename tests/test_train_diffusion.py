"""core.training.diffusion: an epoch lowers the DDPM loss, leaves a pipeline core.diffusion loads; resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from core.data import load_dataset
from core.diffusion import ddim_timesteps, load_diffusion_model, sample
from core.progress import Cancelled, ProgressEvent
from core.training.common import load_checkpoint
from core.training.diffusion import DiffusionTrainConfig, train_diffusion

CONFIG = DiffusionTrainConfig(preset="tiny", epochs=1, batch_size=32, lr=2e-3, warmup_steps=0, eval_batch=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits", "train").subset(range(192))


def test_one_epoch_lowers_the_loss_and_saves_a_loadable_pipeline(tmp_path: Path, small_digits) -> None:  # type: ignore[no-untyped-def]
    metrics = train_diffusion(small_digits, config=CONFIG, out_dir=tmp_path, seed=0)
    assert metrics["steps"] == 6
    # same fixed batch, t and eps before and after: the live model's loss must have dropped
    assert metrics["final_eval_loss"] < 0.8 * metrics["initial_eval_loss"]
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 6
    model = load_diffusion_model(tmp_path)
    assert (model.image_size, model.channels, model.num_classes, model.num_train_timesteps) == (
        16,
        1,
        None,
        1000,
    )
    x = sample(model.unet, torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)),
               alphas_cumprod=model.alphas_cumprod, timesteps=ddim_timesteps(1000, 3, "uniform"))  # fmt: skip
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()
    # the saved weights are the EMA ones
    ema = load_checkpoint(tmp_path / "checkpoint.pt")["ema"]["module"]
    for name, tensor in model.unet.state_dict().items():
        assert torch.equal(tensor, ema[name]), name


def test_class_conditional_training_saves_the_class_embedding(tmp_path: Path, small_digits) -> None:  # type: ignore[no-untyped-def]
    config = replace(CONFIG, class_conditional=True)
    train_diffusion(small_digits.subset(range(32)), config=config, out_dir=tmp_path, seed=0)
    assert load_diffusion_model(tmp_path).num_classes == 10


def test_resume_after_cancel_gives_the_uninterrupted_weights(tmp_path: Path, small_digits) -> None:  # type: ignore[no-untyped-def]
    data = small_digits.subset(range(64))
    config = replace(CONFIG, epochs=2, horizontal_flip=True)
    reference = train_diffusion(data, config=config, out_dir=tmp_path / "a", seed=3)

    def cancel(event: ProgressEvent) -> None:
        if event.stage == "train" and event.current == 3:  # inside epoch 2 (2 steps per epoch)
            raise Cancelled

    with pytest.raises(Cancelled):
        train_diffusion(data, config=config, out_dir=tmp_path / "b", seed=3, progress=cancel)
    assert not (tmp_path / "b" / "model_index.json").exists()
    resumed = train_diffusion(data, config=config, out_dir=tmp_path / "b", seed=3)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for key in ("model", "ema"):
        flat_a = a[key] if key == "model" else a[key]["module"]
        flat_b = b[key] if key == "model" else b[key]["module"]
        for name, tensor in flat_a.items():
            assert torch.equal(tensor, flat_b[name]), (key, name)
    assert resumed["history"] == reference["history"]
    with pytest.raises(ValueError, match="preset|batch_size"):
        train_diffusion(data, config=replace(config, batch_size=16), out_dir=tmp_path / "b", seed=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"preset": "big"}, "preset"), ({"epochs": 0}, "epochs"), ({"ema_decay": 1.0}, "ema_decay"),
     ({"lr": float("nan")}, "lr")],
    ids=["preset", "epochs", "ema", "lr"],
)  # fmt: skip
def test_config_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiffusionTrainConfig(**kwargs)

"""core.training.run: the trainers' shared skeleton, on a toy trainer: an interrupted run resumes to the
uninterrupted weights, every part round-trips, older checkpoint layouts still resume, bad resumes are
refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.progress import Cancelled, ProgressEvent, ProgressFn, Stage
from core.training.common import EMA, load_checkpoint, save_checkpoint, seed_everything
from core.training.run import TrainingRun

EPOCHS = 4


def _toy_run(out: Path, *, seed: int, ema: bool = True, **overrides: Any) -> TrainingRun:
    """A linear model with every part a trainer may have: SGD with momentum, a step schedule, an EMA, a
    named generator, a best record and an extra value."""
    generator = seed_everything(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    options: dict[str, Any] = dict(
        out=out, config={"lr": 0.1, "epochs": EPOCHS}, resume_fields=("lr", "epochs"), model=model,
        optimizer=optimizer, generators={"train": generator},
        scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5),
        ema=EMA(model, 0.9) if ema else None, best={"epoch": 0, "loss": float("inf")},
        extra={"first_loss": None},
    )
    return TrainingRun("toy", **{**options, **overrides})


def _train(out: Path, *, seed: int, progress: ProgressFn | None = None) -> TrainingRun:
    """The loop a trainer writes around the skeleton; noise from the named generator and the global RNG."""
    run = _toy_run(out, seed=seed)
    run.resume()
    generator = run.generators["train"]
    for epoch in range(run.epoch, EPOCHS):
        for _ in range(3):
            x = torch.randn(8, 3, generator=generator) + 0.01 * torch.randn(8, 3)  # the global RNG too
            loss = (run.model(x) - x[:, :2]).pow(2).mean()
            run.optimizer.zero_grad()
            loss.backward()
            run.optimizer.step()
            assert run.scheduler is not None and run.ema is not None
            run.scheduler.step()
            run.ema.update(run.model)
            run.step += 1
        if run.extra["first_loss"] is None:
            run.extra["first_loss"] = float(loss.detach())
        record = {"epoch": epoch + 1, "loss": float(loss.detach())}
        assert run.best is not None
        if record["loss"] < run.best["loss"]:
            run.best = dict(record)
        run.end_epoch(record, epochs=EPOCHS, progress=progress)
    return run


def _same_state(a: Any, b: Any) -> bool:
    """Nested state dicts (tensors, numbers, lists) equal element for element."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("stop_after", [1, 2, 3], ids=lambda k: f"after-epoch-{k}")
def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path: Path, stop_after: int) -> None:
    reference = _train(tmp_path / "a", seed=0)

    def stop(event: ProgressEvent) -> None:
        if event.stage is Stage.EPOCH and event.current == stop_after:
            raise Cancelled

    with pytest.raises(Cancelled):
        _train(tmp_path / "b", seed=0, progress=stop)
    # the checkpoint is written before the epoch is reported
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == stop_after
    resumed = _train(tmp_path / "b", seed=0)
    assert (resumed.epoch, resumed.step) == (reference.epoch, reference.step) == (EPOCHS, 3 * EPOCHS)
    assert resumed.history == reference.history and resumed.best == reference.best
    assert resumed.extra == reference.extra
    untimed = [{**load_checkpoint(tmp_path / name / "checkpoint.pt"), "elapsed_s": 0.0} for name in "ab"]
    assert _same_state(*untimed)  # model, optimiser, scheduler, EMA, RNG states: all but the wall time
    other = _train(tmp_path / "c", seed=1)  # another seed moves the weights: the equality is not vacuous
    assert not torch.equal(other.model.weight, reference.model.weight)


def test_resume_restores_every_part_and_counter(tmp_path: Path) -> None:
    trained = _train(tmp_path, seed=0)
    trained.elapsed = 12.5
    saved = trained.state_dict()
    fresh = _toy_run(tmp_path, seed=7)  # other initial weights and generator state
    save_checkpoint(fresh.checkpoint_path, saved)
    assert fresh.resume() is True
    assert _same_state(fresh.state_dict(), saved)
    assert fresh.generators["train"].get_state().equal(trained.generators["train"].get_state())
    assert (fresh.epoch, fresh.step, fresh.elapsed) == (EPOCHS, 3 * EPOCHS, 12.5)
    assert fresh.extra == trained.extra and fresh.best == trained.best


def test_a_missing_checkpoint_leaves_the_run_at_the_start(tmp_path: Path) -> None:
    run = _toy_run(tmp_path, seed=0)
    assert run.resume() is False
    assert (run.epoch, run.step, run.history) == (0, 0, [])


def test_checkpoints_written_before_the_skeleton_still_resume(tmp_path: Path) -> None:
    """The layout the trainers wrote by hand: TRADES without EMA stored ``"ema": None``, the classifier
    had no EMA key at all; both resume into a run without EMA."""
    source = _train(tmp_path / "src", seed=0)
    assert source.scheduler is not None and source.best is not None
    old = {
        "kind": "toy", "config": {"lr": 0.1, "epochs": EPOCHS}, "epoch": 2, "step": 6,
        "model": source.model.state_dict(), "optimizer": source.optimizer.state_dict(),
        "scheduler": source.scheduler.state_dict(), "ema": None,
        "rng": load_checkpoint(source.checkpoint_path)["rng"], "history": source.history[:2],
        "best": source.best, "elapsed_s": 3.0, "first_loss": 0.5,
    }  # fmt: skip
    for name, state in {"ema-none": old, "no-ema-key": {k: v for k, v in old.items() if k != "ema"}}.items():
        run = _toy_run(tmp_path / name, seed=3, ema=False)
        save_checkpoint(run.checkpoint_path, state)
        assert run.resume() is True
        assert torch.equal(run.model.weight, source.model.weight)
        assert (run.epoch, run.step, run.elapsed, run.extra) == (2, 6, 3.0, {"first_loss": 0.5})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": {"lr": 0.2, "epochs": EPOCHS}}, "lr=0.1"),
        ({"must_match": {"synthetic_count": 5}}, "synthetic_count=None, not 5"),
    ],
    ids=["config-field", "must-match"],
)
def test_resume_refuses_a_checkpoint_made_with_other_settings(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    _train(tmp_path, seed=0)
    with pytest.raises(ValueError, match=message):
        _toy_run(tmp_path, seed=0, **change).resume()


@pytest.mark.parametrize(
    ("without", "message"),
    [({"ema": False}, "no ema state"), ({"extra": {}}, "no first_loss state"),
     ({"best": None}, "no best state")],
    ids=["ema", "extra", "best"],
)  # fmt: skip
def test_resume_refuses_a_checkpoint_without_a_part_the_run_has(
    tmp_path: Path, without: dict[str, Any], message: str
) -> None:
    run = _toy_run(tmp_path, seed=0, **without)  # writes a checkpoint that lacks the part
    run.end_epoch({"epoch": 1}, epochs=EPOCHS, progress=None)
    with pytest.raises(ValueError, match=message):
        _toy_run(tmp_path, seed=0).resume()


def test_other_ranks_keep_the_history_but_write_and_report_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("core.training.run.is_main", lambda: False)
    events: list[str] = []
    run = _toy_run(tmp_path, seed=0)
    run.end_epoch({"epoch": 1}, epochs=EPOCHS, progress=lambda event: events.append(event.stage))
    run.write_metrics({"kind": "toy"})
    assert run.history == [{"epoch": 1}] and run.epoch == 1
    assert events == [] and not any(tmp_path.iterdir())

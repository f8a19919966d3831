"""core.training.common: EMA arithmetic, seeding, device choice, checkpoints and RNG state capture."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.training.common import (
    EMA,
    batch_order,
    load_checkpoint,
    resolve_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


def test_ema_update_is_the_exponential_average_and_copies_buffers() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    before = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    for averaged, old, live in zip(ema.module.parameters(), before, model.parameters(), strict=True):
        assert torch.allclose(averaged, 0.9 * old + 0.1 * live)
        assert not averaged.requires_grad
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 3.0))
    target = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    target.load_state_dict(ema.module.state_dict())  # the averaged model is an ordinary module
    assert torch.equal(target[0].weight, ema.module[0].weight)


def test_ema_warmup_ramps_the_decay_and_state_round_trips() -> None:
    ema = EMA(nn.Linear(1, 1), decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    for _ in range(90):
        ema.update(nn.Linear(1, 1))
    assert ema.current_decay() == pytest.approx(91 / 100)
    other = EMA(nn.Linear(1, 1), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 90 and other.decay == 0.999 and other.warmup
    assert torch.equal(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), decay=1.0)


def test_seed_everything_makes_all_generators_repeat() -> None:
    def draws() -> tuple[float, float, float, float]:
        generator = seed_everything(7)
        return (random.random(), float(np.random.rand()), float(torch.rand(1)),
                float(torch.rand(1, generator=generator)))  # fmt: skip

    assert draws() == draws()
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="nonsense"):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_rng_state_restores_every_generator(tmp_path: Path) -> None:
    generator = seed_everything(3)
    torch.rand(5, generator=generator)
    state = rng_state({"g": generator})
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})

    def draws() -> list[float]:
        return [float(torch.rand(1, generator=generator)), float(torch.rand(1)), float(np.random.rand()),
                random.random(), random.gauss(0, 1)]  # fmt: skip

    first = draws()
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], {"g": generator})
    assert draws() == first
    with pytest.raises(ValueError, match="'other'"):
        set_rng_state(state, {"other": torch.Generator()})


def test_checkpoints_round_trip_and_refuse_garbage_or_code(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    save_checkpoint(
        tmp_path / "ck" / "c.pt", {"model": model.state_dict(), "epoch": 4, "history": [{"a": 1.0}]}
    )
    state = load_checkpoint(tmp_path / "ck" / "c.pt")
    assert state["epoch"] == 4 and torch.equal(state["model"]["weight"], model.weight)
    assert not (tmp_path / "ck" / "c.pt.tmp").exists()
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"obj": nn.Linear(1, 1)}, tmp_path / "module.pt")  # a pickled module needs code to load
    with pytest.raises(ValueError, match="module.pt"):
        load_checkpoint(tmp_path / "module.pt")
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(tmp_path / "none.pt")


def test_batch_order_is_a_seeded_permutation() -> None:
    batches = list(batch_order(10, 4, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    again = list(batch_order(10, 4, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert [len(b) for b in batch_order(10, 4, generator=torch.Generator(), drop_last=True)] == [4, 4]

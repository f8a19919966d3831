"""A rank of ``cdp train trades`` that records every x_adv it trains on (tests/test_distributed_training.py):
launch() imports this module-level target by name in its child processes, so rank 1 records too."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch


def recording_rank(*, args: argparse.Namespace, record: str, progress: Any) -> dict[str, Any]:
    import core.training.trades as trades
    from core.cli.train_trades import _train_trades_rank
    from core.training.distributed import rank

    adversary = trades.trades_adversary
    step = [0]

    def recorded(model: torch.nn.Module, x: torch.Tensor, **options: Any) -> torch.Tensor:
        x_adv = adversary(model, x, **options)
        torch.save(x_adv, Path(record) / f"{step[0]}-{rank()}.pt")
        step[0] += 1
        return x_adv

    trades.trades_adversary = recorded
    try:
        return _train_trades_rank(args=args, progress=progress)
    finally:
        trades.trades_adversary = adversary


def global_x_adv(record: Path, step: int, ranks: int) -> torch.Tensor:
    """The global batch's x_adv at ``step``: the ranks' rows in rank order."""
    return torch.cat([torch.load(record / f"{step}-{r}.pt") for r in range(ranks)])

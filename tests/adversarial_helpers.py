"""Small models and data shared by the attack and TRADES tests (not a test module)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.data import load_dataset


def digits_tensors(split: str) -> tuple[Tensor, Tensor]:
    """The 16 x 16 digits split as float N x 1 x 16 x 16 in [0, 1] and int64 labels."""
    return load_dataset("digits", split).to_tensors("cpu")  # type: ignore[arg-type]


def tiny_cnn(seed: int) -> nn.Module:
    """A two-conv network for 1 x 16 x 16 inputs, 10 classes, seeded initialisation."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 8 x 8
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 4 x 4
        nn.Flatten(), nn.Linear(32 * 16, 10),
    )


def train_ce(
    model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, seed: int, batch_size: int = 64
) -> nn.Module:
    """Standard (non-adversarial) training with Adam; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()

"""Shared training utilities: seeding, device choice, an exponential moving average of weights, RNG state
capture, atomic checkpoint files, shuffled batches and the progress call. :mod:`core.training.run` puts
them together into the checkpoint a bit-identical resume needs (model, optimizer, EMA, RNG states, epoch)."""

from __future__ import annotations

import copy
import logging
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.models.io import load_weights_only

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, numpy's and torch's global RNGs; return a CPU ``torch.Generator`` seeded with ``seed``.

    Trainers draw every random number they use from explicit generators (the returned one and its
    descendants); the global seeding only tames library code that uses the global state.
    """
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device (ValueError if unusable)."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return resolved


class EMA:
    """Exponential moving average of a model's parameters: theta_ema <- d * theta_ema + (1 - d) * theta.

    ``self.module`` is a full copy of the model (eval mode, no gradients) holding the averaged parameters;
    buffers (BatchNorm running statistics) are copied from the live model at each update, as in Gowal et al.
    With ``warmup`` the decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so short runs are
    not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        for averaged, live in zip(self.module.parameters(), model.parameters(), strict=True):
            averaged.lerp_(live.detach(), 1.0 - decay)
        for averaged_buffer, live_buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            averaged_buffer.copy_(live_buffer)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "module": self.module.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["module"])


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The states of the named generators plus the global torch, numpy and Python RNGs."""
    state: dict[str, Any] = {f"generator/{name}": g.get_state() for name, g in generators.items()}
    state["torch"] = torch.get_rng_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    state["python"] = random.getstate()  # (version, tuple of ints, gauss_next float | None)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Restore what :func:`rng_state` captured into ``generators`` and the global RNGs."""
    for name, generator in generators.items():
        key = f"generator/{name}"
        if key not in state:
            raise ValueError(f"checkpoint has no state for generator {name!r}")
        generator.set_state(state[key])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) atomically with ``torch.save``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)


def load_checkpoint(path: Path | str, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` (no code runs)."""
    source = Path(path)
    if not source.is_file():
        raise ValueError(f"checkpoint {source} missing")
    state = load_weights_only(source, map_location=map_location, what="checkpoint")
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {source}: expected a dict, got {type(state).__name__}")
    return state


def batch_order(
    n: int, batch_size: int, *, generator: torch.Generator, drop_last: bool = False
) -> Iterator[torch.Tensor]:
    """Indices of one shuffled epoch, in batches; the permutation is drawn from ``generator``."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def check_resumable(
    state: dict[str, Any], *, kind: str, config: dict[str, Any], fields: Iterable[str], path: Path
) -> None:
    """Refuse to resume from a checkpoint of another kind of training or made with other settings.

    ``config`` is the current configuration as a dict; every name in ``fields`` must equal the saved value.
    """
    if state.get("kind") != kind:
        raise ValueError(f"{path} is not a {kind} training checkpoint (kind={state.get('kind')!r})")
    saved = state.get("config", {})
    for name in fields:
        if saved.get(name) != config.get(name):
            raise ValueError(
                f"{path} was made with {name}={saved.get(name)!r}, not {config.get(name)!r}; "
                "use another output directory or the same settings"
            )

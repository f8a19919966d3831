"""Load an epsilon-prediction diffusion model and its noise schedule from a diffusers directory.

Accepted layouts:

- a diffusers *pipeline* directory: ``model_index.json``, ``unet/`` (``UNet2DModel.save_pretrained``) and
  ``scheduler/`` (``scheduler_config.json``), as written by ``DDPMPipeline.save_pretrained``;
- the hub's flat layout, as ``google/ddpm-cifar10-32`` is published: ``model_index.json`` beside the UNet's
  ``config.json``, ``scheduler_config.json`` and the weights in one directory;
- a bare UNet directory (``config.json`` + weights) with a ``scheduler_config.json`` next to the config;
- anything else is handed to ``from_pretrained`` as a hub id (works only where a hub is reachable).

``alphas_cumprod`` is recomputed in float64 from the scheduler config (linear, scaled_linear,
squaredcos_cap_v2 or trained betas), not taken from the scheduler's float32 buffer.

Weights: ``diffusion_pytorch_model.safetensors`` is preferred where present; ``.bin`` weights are read by
diffusers with ``torch.load(weights_only=True)`` (torch >= 1.13), so a pickle that carries code is refused.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # diffusers is slow to import; load it only when a model is loaded
    from diffusers import UNet2DModel

log = logging.getLogger(__name__)

SCHEDULER_CONFIG = "scheduler_config.json"


@dataclass
class DiffusionModel:
    """A loaded diffusion model: the UNet (eval mode) and its cumulative noise schedule."""

    unet: UNet2DModel
    alphas_cumprod: torch.Tensor  # float64, shape (T,)
    num_train_timesteps: int
    image_size: int
    channels: int
    num_classes: int | None


def betas_from_config(config: dict[str, Any]) -> torch.Tensor:
    """The beta schedule of a diffusers scheduler config, in float64."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return torch.tensor(config["trained_betas"], dtype=torch.float64)
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"only epsilon-prediction models are supported, got {config['prediction_type']!r}")
    kind = config.get("beta_schedule", "linear")
    start = float(config.get("beta_start", 1e-4))
    end = float(config.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=torch.float64
        )
    raise ValueError(f"unsupported beta_schedule {kind!r}")


def alphas_cumprod_from_config(config: dict[str, Any]) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64."""
    return torch.cumprod(1.0 - betas_from_config(config), dim=0)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def _locate(path: Path) -> tuple[Path, Path]:
    """(unet directory, scheduler config file) for a local directory, or ValueError."""
    flat = (path / "model_index.json").is_file() and not (path / "unet").is_dir() and (
        path / "config.json").is_file()
    if flat:  # the hub's flat layout: the UNet and the scheduler config side by side with model_index.json
        unet_dir, sched = path, path / SCHEDULER_CONFIG
    elif (path / "model_index.json").is_file() or (path / "unet").is_dir():
        unet_dir, sched = path / "unet", path / "scheduler" / SCHEDULER_CONFIG
    else:
        unet_dir, sched = path, path / SCHEDULER_CONFIG
        if not sched.is_file() and (path.parent / SCHEDULER_CONFIG).is_file():
            sched = path.parent / SCHEDULER_CONFIG
    if not (unet_dir / "config.json").is_file():
        raise ValueError(f"no UNet config.json found under {path}")
    if not sched.is_file():
        raise ValueError(f"no {SCHEDULER_CONFIG} found for the model at {path}")
    return unet_dir, sched


def _sample_size(config: Any) -> int:
    size = config.sample_size
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ValueError(f"only square images are supported, got sample_size {size}")
        size = size[0]
    return int(size)


def load_diffusion_model(path: str | Path, *, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a UNet2DModel and its ``alphas_cumprod`` from a local diffusers directory (or a hub id)."""
    from diffusers import UNet2DModel

    local = Path(path)
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"diffusion model path must be a directory, got {path}")
        unet_dir, sched_path = _locate(local)
        unet = UNet2DModel.from_pretrained(unet_dir)
        sched_config = _read_json(sched_path)
    else:  # a hub id; only works where the machine can reach the hub
        from diffusers import DDPMScheduler

        try:
            unet = UNet2DModel.from_pretrained(str(path), subfolder="unet")
            sched_config = dict(DDPMScheduler.from_pretrained(str(path), subfolder="scheduler").config)
        except Exception as exc:  # noqa: BLE001 - hub/network errors come in many types
            msg = f"cannot load diffusion model {str(path)!r}: not a local directory ({exc})"
            raise ValueError(msg) from exc
    alphas = alphas_cumprod_from_config(sched_config)
    unet.eval().to(device)
    num_classes = unet.config.num_class_embeds
    log.info("loaded diffusion model from %s (T=%d, conditional=%s)", path, alphas.numel(), num_classes)
    return DiffusionModel(
        unet=unet,
        alphas_cumprod=alphas,
        num_train_timesteps=int(alphas.numel()),
        image_size=_sample_size(unet.config),
        channels=int(unet.config.in_channels),
        num_classes=int(num_classes) if num_classes is not None else None,
    )

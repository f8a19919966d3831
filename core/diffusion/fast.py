"""Optional fast paths of the sampling loop, each behind a switch (the service's settings ``CDP_COMPILE``,
``CDP_CHANNELS_LAST``, ``CDP_BF16``), each checked against the plain fp32 eager loop by a parity test:

- ``compile``: ``torch.compile`` of the UNet and of the classifier's feature extractor (backend
  ``inductor`` by default; ``aot_eager`` traces without generating code, for checking the graph capture).
  Shapes are static within a run, so one compilation serves every step. On this project's 2-core CPU the
  first inductor compilation of the tiny UNet took 74 s and the compiled loop was not faster than eager
  (docs/performance.md): it is meant for GPU hosts.
- ``channels_last``: the UNet's weights (and its inputs) in NHWC memory order, which cuDNN's convolutions
  prefer on tensor-core GPUs.
- ``bf16``: the UNet forward under ``torch.autocast(dtype=bfloat16)`` on CUDA, its output cast back to
  fp32; the guidance gradient and the DDIM update stay in fp32. Ignored on the CPU.

- ``compile="cudagraphs"``: inductor with ``mode="reduce-overhead"``, which records the compiled UNet (and
  feature extractor) forward into CUDA graphs and replays them: shapes are static within a run, so the
  per-kernel launch cost disappears. Only on CUDA (elsewhere it falls back to plain inductor). The guided
  step's backward and the head's optimiser step are not graphed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSpeed:
    compile: Literal["off", "inductor", "aot_eager", "cudagraphs"] = "off"
    channels_last: bool = False
    bf16: bool = False

    def autocast_dtype(self, device: str | torch.device) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 and torch.device(device).type == "cuda" else None


class ChannelsLast(nn.Module):
    """Feeds the wrapped UNet NHWC-ordered inputs (its weights converted once)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.unet(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)


def fast_unet(unet: nn.Module, speed: SamplingSpeed) -> nn.Module | Callable[..., Any]:
    """The UNet wrapped per ``speed`` (the same module when every switch is off)."""
    model: nn.Module | Callable[..., Any] = ChannelsLast(unet) if speed.channels_last else unet
    return _compiled(model, speed)


def _compiled(fn: Any, speed: SamplingSpeed) -> Any:
    if speed.compile == "off":
        return fn
    if speed.compile == "cudagraphs":
        mode = "reduce-overhead" if torch.cuda.is_available() else None
        return torch.compile(fn, backend="inductor", mode=mode, dynamic=False)
    return torch.compile(fn, backend=speed.compile, dynamic=False)


def fast_features(feature_fn: Callable[[torch.Tensor], torch.Tensor], speed: SamplingSpeed
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    return _compiled(feature_fn, speed)

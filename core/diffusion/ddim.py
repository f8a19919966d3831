"""DDIM sampling (Song et al. 2021) with an optional guidance term (paper Algorithm 1).

Symbols (the paper's Algorithm 1 writes ``alpha_t`` for the cumulative product):

=================  ==========================================================
code               paper
=================  ==========================================================
``a_t``            alpha_bar_t = prod_{s<=t} (1 - beta_s) at the current t
``a_next``         alpha_bar at the next (smaller) timestep; 1 after t_min
``eps``            eps_theta(x_t, t), the model's noise prediction
``eps_hat``        eps + lambda * grad L_contra (Algorithm 1, line 6)
``x0_hat``         (x_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t)
=================  ==========================================================

One step (DDIM eq. 12, Algorithm 1 line 7 when eta = 0)::

    x_next = sqrt(a_next) * x0_hat + c1 * z + c2 * eps_hat
    c1 = eta * sqrt((1 - a_t / a_next) * (1 - a_next) / (1 - a_t)),  c2 = sqrt(1 - a_next - c1^2)

The update is computed here from ``alphas_cumprod`` rather than with diffusers' ``DDIMScheduler.step``,
which derives the previous timestep as ``t - T // S`` and is therefore wrong for non-uniform sequences.
``x0_hat`` is not clipped (as in the official DDIM code).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from core.options import SCHEDULES, Schedule, check_choice

log = logging.getLogger(__name__)


def ddim_timesteps(num_train_timesteps: int, steps: int, kind: Schedule = "uniform") -> list[int]:
    """The DDIM timestep subsequence, largest first, without duplicates.

    ``uniform``: t = 0, T//S, 2T//S, ... (S values). ``quad`` (the paper's choice for CIFAR-10):
    t = int(s^2) for s in linspace(0, sqrt(0.8 T), S); dense near 0, largest value 0.8 T, and
    duplicates (possible for large S) are removed, so fewer than S values may come back.
    """
    t_total = num_train_timesteps
    if isinstance(t_total, bool) or not isinstance(t_total, int) or t_total < 1:
        raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be an int in [1, {num_train_timesteps}], got {steps!r}")
    check_choice("timestep kind", kind, SCHEDULES)
    if kind == "uniform":
        skip = num_train_timesteps // steps
        seq = [i * skip for i in range(steps)]
    else:
        seq = [int(s) for s in np.linspace(0.0, math.sqrt(0.8 * num_train_timesteps), steps) ** 2]
    return sorted(set(seq), reverse=True)


@runtime_checkable
class Guidance(Protocol):
    """What ``sample`` accepts as ``guidance``.

    Called once per step (every step, so it can keep state), it returns the term added to the model's
    epsilon (Algorithm 1, line 6) or ``None`` for no change at this step. ``x_prev`` is the state before
    the previous step (x_{t+1} in the paper's notation), ``None`` on the first step. The sampler calls it
    outside ``torch.no_grad()``; it must not modify its inputs.
    """

    def __call__(
        self,
        x_t: Tensor,
        t: int,
        *,
        eps: Tensor,
        alpha_bar_t: float,
        x_prev: Tensor | None,
        step: int,
        class_labels: Tensor | None,
    ) -> Tensor | None: ...


StepCallback = Callable[[int, int], None]


def _validate_timesteps(timesteps: Sequence[int], n_alphas: int) -> list[int]:
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps must not be empty")
    if any(t < 0 or t >= n_alphas for t in ts):
        raise ValueError(f"timesteps must lie in [0, {n_alphas - 1}], got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"timesteps must be strictly decreasing (largest first), got {ts}")
    return ts


def predict_eps(
    model: nn.Module | Callable[..., object], x: Tensor, t: int, *, class_labels: Tensor | None = None
) -> Tensor:
    """eps_theta(x, t): call ``model(x, t)`` or ``model(x, t, class_labels)`` and unwrap the output.

    Works with diffusers' ``UNet2DModel`` (returns an object with ``.sample``), plain modules returning a
    tensor, and tuples (first element). A learned-variance output (2C channels) is cut to its first C.
    """
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    out = model(x, t_batch) if class_labels is None else model(x, t_batch, class_labels)
    if hasattr(out, "sample"):
        out = out.sample
    elif isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"model returned {type(out).__name__}, expected a tensor")
    if out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]:
        out = out[:, : x.shape[1]]
    if out.shape != x.shape:
        raise ValueError(f"model output shape {tuple(out.shape)} does not match input {tuple(x.shape)}")
    return out


def sample(
    model: nn.Module | Callable[..., object],
    x_T: Tensor,
    *,
    alphas_cumprod: Tensor,
    timesteps: Sequence[int],
    eta: float = 0.0,
    guidance: Guidance | None = None,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Run the (guided) DDIM loop from ``x_T`` down to x_0 over ``timesteps`` (largest first).

    The model runs under ``torch.no_grad()``; a guidance callable may use autograd (it runs outside
    no_grad). ``callback(step, total)`` is called after every step (step counts from 1) and may raise to
    stop sampling. With ``eta = 0`` and no guidance the loop is deterministic; with ``eta > 0`` the noise z
    is drawn from ``generator``. ``autocast_dtype`` (e.g. bfloat16 on CUDA) runs the model's forward under
    autocast and casts its output back to x's dtype; the guidance and the update stay in x's dtype.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("sample() must not run under torch.inference_mode(): guidance needs autograd")
    if not isinstance(eta, int | float) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    alphas = alphas_cumprod.detach().to("cpu", torch.float64)
    ts = _validate_timesteps(timesteps, alphas.numel())
    if class_labels is not None and class_labels.shape[0] != x_T.shape[0]:
        raise ValueError(f"class_labels has {class_labels.shape[0]} rows, x_T has {x_T.shape[0]}")
    prepare = getattr(guidance, "prepare", None)
    if callable(prepare):
        prepare(ts)

    x = x_T
    x_prev: Tensor | None = None
    total = len(ts)
    alpha_values = alphas.tolist()  # host floats once, so the loop never reads a tensor back
    for i, t in enumerate(ts):
        a_t = alpha_values[t]
        a_next = alpha_values[ts[i + 1]] if i + 1 < total else 1.0
        with torch.no_grad():
            if autocast_dtype is None:
                eps = predict_eps(model, x, t, class_labels=class_labels)
            else:
                with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
                    eps = predict_eps(model, x, t, class_labels=class_labels)
                eps = eps.to(x.dtype)
        if guidance is not None:
            extra = guidance(
                x, t, eps=eps, alpha_bar_t=a_t, x_prev=x_prev, step=i, class_labels=class_labels
            )
            if extra is not None:
                eps = eps + extra.detach().to(eps.dtype)
        with torch.no_grad():
            x0_hat = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
            c1 = eta * math.sqrt(max((1.0 - a_t / a_next) * (1.0 - a_next) / (1.0 - a_t), 0.0))
            c2 = math.sqrt(max(1.0 - a_next - c1**2, 0.0))
            x_next = math.sqrt(a_next) * x0_hat + c2 * eps
            if c1 > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x_next = x_next + c1 * z
        x_prev, x = x, x_next
        if callback is not None:
            callback(i + 1, total)
    return x

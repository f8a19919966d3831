"""DDIM sampling (Song et al. 2021) with an optional guidance term (paper Algorithm 1), in three parts:
the schedule (:func:`ddim_timesteps`, :class:`DDIMSchedule`), one update (:func:`ddim_step`) and the loop
(:func:`sample`), which asks the model for eps, lets the guidance change it, and steps.

Symbols (the paper's Algorithm 1 writes ``alpha_t`` for the cumulative product):

==================  ==========================================================================================
code                paper
==================  ==========================================================================================
``alpha_bar_t``     alpha_bar_t = prod_{s<=t} (1 - beta_s) at the current timestep t
``alpha_bar_next``  alpha_bar at the next (smaller) timestep of the sequence; 1 after the last
``eps``             eps_theta(x_t, t), the model's noise prediction
``eps_hat``         eps + lambda * grad L_contra (Algorithm 1, line 6); ``eps`` when unguided
``x0_hat``          (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t), the predicted x_0
``sigma_t``         eta * sqrt((1 - alpha_bar_next) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_next))
``x_next``          x_{t-1} of DDIM eq. 12, the state at the next timestep
``x_prev``          the state before the current one (x_{t+1}), which the guidance pairs x_t with
==================  ==========================================================================================

One step (DDIM eq. 12; Algorithm 1, line 7 when eta = 0)::

    x_next = sqrt(alpha_bar_next) * x0_hat + sqrt(1 - alpha_bar_next - sigma_t^2) * eps_hat + sigma_t * z

The update is computed here from ``alphas_cumprod`` rather than with diffusers' ``DDIMScheduler.step``,
which derives the previous timestep as ``t - T // S`` and is therefore wrong for non-uniform sequences.
``x0_hat`` is not clipped (as in the official DDIM code).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

    ``prepare(timesteps)`` is called once before a run (the sequence, largest first): check it, reset the
    per-run state. The guidance is then called once per step (every step, so it can keep state) and returns
    the term added to the model's epsilon (Algorithm 1, line 6) or ``None`` for no change at this step.
    ``x_prev`` is the state before the previous step (x_{t+1} in the paper's notation), ``None`` on the
    first step. The sampler calls it outside ``torch.no_grad()``; it must not modify its inputs.
    """

    def prepare(self, timesteps: Sequence[int]) -> None: ...

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


@dataclass(frozen=True)
class DDIMSchedule:
    """A run's timestep sequence (largest first) and the model's alpha_bar at every training timestep, as
    host floats (read once, so the loop never reads a tensor back from the device)."""

    timesteps: list[int]
    alpha_bars: list[float]

    @classmethod
    def make(cls, alphas_cumprod: Tensor, timesteps: Sequence[int]) -> DDIMSchedule:
        """Check ``timesteps`` against ``alphas_cumprod`` (one value per training timestep)."""
        alphas = alphas_cumprod.detach().to("cpu", torch.float64)
        ts = [int(t) for t in timesteps]
        if not ts:
            raise ValueError("timesteps must not be empty")
        if any(t < 0 or t >= alphas.numel() for t in ts):
            raise ValueError(f"timesteps must lie in [0, {alphas.numel() - 1}], got {ts}")
        if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
            raise ValueError(f"timesteps must be strictly decreasing (largest first), got {ts}")
        return cls(timesteps=ts, alpha_bars=alphas.tolist())

    def __len__(self) -> int:
        return len(self.timesteps)

    def alpha_bar_pair(self, i: int) -> tuple[float, float]:
        """(alpha_bar_t, alpha_bar_next) of step ``i``: the next timestep's, or 1 after the last step."""
        alpha_bar_next = self.alpha_bars[self.timesteps[i + 1]] if i + 1 < len(self.timesteps) else 1.0
        return self.alpha_bars[self.timesteps[i]], alpha_bar_next


def ddim_step(
    x_t: Tensor,
    eps_hat: Tensor,
    *,
    alpha_bar_t: float,
    alpha_bar_next: float,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One DDIM update from x_t to ``x_next`` (DDIM eq. 12) with the (guided) noise ``eps_hat``.

    With ``eta > 0`` the noise z is drawn from ``generator`` (on x's device, in x's dtype).
    """
    # 1. predicted x_0 ("predicted x_0" of eq. 12; Algorithm 1, line 7, inside the first bracket)
    x0_hat = (x_t - math.sqrt(1.0 - alpha_bar_t) * eps_hat) / math.sqrt(alpha_bar_t)
    # 2. sigma_t (eq. 16, times eta); eta = 0 is deterministic DDIM, eta = 1 the DDPM posterior's spread
    sigma_t = eta * math.sqrt(
        max((1.0 - alpha_bar_t / alpha_bar_next) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar_t), 0.0)
    )
    # 3. the coefficient of the "direction pointing to x_t" of eq. 12
    direction = math.sqrt(max(1.0 - alpha_bar_next - sigma_t**2, 0.0))
    # 4. x_next without random noise (eq. 12; Algorithm 1, line 7 when eta = 0)
    x_next = math.sqrt(alpha_bar_next) * x0_hat + direction * eps_hat
    # 5. add the random noise sigma_t * z of eq. 12
    if sigma_t > 0:
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        x_next = x_next + sigma_t * z
    return x_next


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
    schedule = DDIMSchedule.make(alphas_cumprod, timesteps)
    if class_labels is not None and class_labels.shape[0] != x_T.shape[0]:
        raise ValueError(f"class_labels has {class_labels.shape[0]} rows, x_T has {x_T.shape[0]}")
    if guidance is not None:
        guidance.prepare(schedule.timesteps)

    x = x_T
    x_prev: Tensor | None = None
    for i, t in enumerate(schedule.timesteps):
        alpha_bar_t, alpha_bar_next = schedule.alpha_bar_pair(i)
        with torch.no_grad():
            if autocast_dtype is None:
                eps = predict_eps(model, x, t, class_labels=class_labels)
            else:
                with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
                    eps = predict_eps(model, x, t, class_labels=class_labels)
                eps = eps.to(x.dtype)
        eps_hat = eps
        if guidance is not None:  # Algorithm 1, line 6 (outside no_grad: the guidance uses autograd)
            extra = guidance(
                x, t, eps=eps, alpha_bar_t=alpha_bar_t, x_prev=x_prev, step=i, class_labels=class_labels
            )
            if extra is not None:
                eps_hat = eps + extra.detach().to(eps.dtype)
        with torch.no_grad():
            x_next = ddim_step(x, eps_hat, alpha_bar_t=alpha_bar_t, alpha_bar_next=alpha_bar_next, eta=eta,
                               generator=generator)
        x_prev, x = x, x_next
        if callback is not None:
            callback(i + 1, len(schedule))
    return x

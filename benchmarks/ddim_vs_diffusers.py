"""Unguided DDIM: our sampler (``core.diffusion.sample``) against diffusers' ``DDIMPipeline``, same UNet.

Both sides run the SAME ``UNet2DModel`` object (``core.models.build_unet`` returns one; untrained weights,
eval mode), the same number of steps, batch and eta = 0, and both start from the same x_T. Per shape the
script first checks that the two produce the same samples, then times them in interleaved rounds (ours,
diffusers, ours, diffusers, ...) and reports medians and the ratio diffusers / ours (> 1: ours is faster).

The scheduler is ``DDIMScheduler`` with the DDPM linear betas (1e-4 .. 0.02 over 1000 steps),
``timestep_spacing="leading"``, ``steps_offset=0``, ``set_alpha_to_one=True`` (the last step goes to
alpha_bar = 1, as ours does) and ``clip_sample=False`` (ours does not clip x0_hat; diffusers' default would
clip it to [-1, 1]). Our timesteps are the scheduler's ``timesteps`` after ``set_timesteps(steps)`` (checked
to equal ``ddim_timesteps(1000, steps, "uniform")``) and our ``alphas_cumprod`` is the scheduler's buffer.

What each timed call includes:

- diffusers: ``pipe(batch_size=B, generator=<CPU generator>, eta=0, num_inference_steps=S,
  output_type="pt")``, i.e. drawing x_T (on the CPU, moved to the device), ``set_timesteps``, S UNet
  forwards, S ``scheduler.step`` calls, and the final ``(x / 2 + 0.5).clamp(0, 1)``. ``output_type="pt"``
  skips the numpy/PIL conversion; the progress bar is disabled.
- ours: the same x_T draw (CPU generator, moved to the device), ``sample(unet, x_T, alphas_cumprod=...,
  timesteps=..., eta=0)`` (S UNet forwards and S updates), and the same final ``(x / 2 + 0.5).clamp(0, 1)``.

Then the same two runs with a near-free stand-in model (eps = 0.1 x) in place of the UNet give each sampler's
own cost per step (scheduler arithmetic, dispatch, Python), reported in microseconds per step.

On CUDA every timed call ends with ``torch.cuda.synchronize()``. Shapes: digits = tiny UNet, 16 x 16 x 1,
batch 64, 20 steps; cifar10 = ddpm_cifar10 UNet, 32 x 32 x 3, batch 8, 10 steps by default (a CPU takes about
a second per forward; the per-step work compared is the same at any S: ``--steps 20`` as gpu.sh does).

Timing uses the process CPU time on a CPU (``--clock auto``: with one torch thread it is far less disturbed by
other load on a shared machine than elapsed time) and elapsed time on CUDA (``--clock wall`` forces elapsed
time).

    .venv/bin/python benchmarks/ddim_vs_diffusers.py                        # digits and CIFAR-10 shapes
    .venv/bin/python benchmarks/ddim_vs_diffusers.py --shapes cifar10 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from _common import add_run_options, print_table, selected_shapes, start_run, timed, write_report
from diffusers import ConfigMixin, DDIMPipeline, DDIMScheduler, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from core.diffusion import ddim_timesteps, sample
from core.models import build_unet
from core.models.unet import BETA_END, BETA_START

NUM_TRAIN_TIMESTEPS = 1000
SHAPES: dict[str, dict[str, Any]] = {
    "digits": {"preset": "tiny", "image_size": 16, "channels": 1, "batch": 64, "steps": 20},
    "cifar10": {"preset": "ddpm_cifar10", "image_size": 32, "channels": 3, "batch": 8, "steps": 10},
}


def make_ddim_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
        beta_schedule="linear", prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True,
        steps_offset=0, timestep_spacing="leading",
    )


class NullUNet(ModelMixin, ConfigMixin):
    """eps = 0.1 x: a stand-in for the UNet that costs almost nothing, to time each sampler's own loop."""

    @register_to_config
    def __init__(self, sample_size: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, sample: torch.Tensor, timestep: Any, class_labels: Any = None,
                return_dict: bool = True) -> UNet2DOutput:
        return UNet2DOutput(sample=sample * self.scale)


Sampler = Callable[[], torch.Tensor]


def make_sides(
    unet: nn.Module, *, batch: int, steps: int, shape: tuple[int, ...], device: torch.device, seed: int
) -> tuple[Sampler, Sampler, DDIMPipeline, list[int], torch.Tensor]:
    """(ours, diffusers, the pipeline, the timesteps, alphas_cumprod) for ``unet`` (see the docstring)."""
    pipe = DDIMPipeline(unet=unet, scheduler=make_ddim_scheduler())
    scheduler = pipe.scheduler  # DDIMPipeline rebuilds the scheduler from its config: use the pipeline's
    pipe.set_progress_bar_config(disable=True)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    if timesteps != ddim_timesteps(NUM_TRAIN_TIMESTEPS, steps, "uniform"):
        raise SystemExit(f"scheduler timesteps {timesteps} differ from ddim_timesteps(uniform)")
    alphas_cumprod = scheduler.alphas_cumprod.clone()  # float32, the very values diffusers' step uses

    def ours() -> torch.Tensor:
        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
        x = sample(unet, x_T, alphas_cumprod=alphas_cumprod, timesteps=timesteps, eta=0.0)
        return (x / 2 + 0.5).clamp(0, 1)

    def theirs() -> torch.Tensor:
        out = pipe(batch_size=batch, generator=torch.Generator().manual_seed(seed), eta=0.0,
                   num_inference_steps=steps, output_type="pt")
        return out.images

    return ours, theirs, pipe, timesteps, alphas_cumprod


def interleaved(sides: dict[str, Callable[[], object]], *, repeats: int, calls: int, device: torch.device,
                label: str, per: float) -> dict[str, list[float]]:
    """Per round each side once (``calls`` back-to-back calls), in reversed order every other round (ABBA)."""
    times: dict[str, list[float]] = {k: [] for k in sides}
    for round_ in range(repeats):
        order = list(sides.items())
        if round_ % 2:
            order.reverse()
        for side, fn in order:
            times[side].append(timed(lambda fn=fn: [fn() for _ in range(calls)], device) / calls / per)
            print(f"{label} round {round_ + 1}/{repeats} {side}: {times[side][-1] * 1e3:.4f} ms",
                  file=sys.stderr)
    return times


def bench_shape(name: str, spec: dict[str, Any], *, repeats: int, overhead_calls: int, device: torch.device,
                seed: int) -> dict:
    torch.manual_seed(seed)
    unet = build_unet(spec["preset"], image_size=spec["image_size"], channels=spec["channels"])
    assert isinstance(unet, UNet2DModel), type(unet)
    unet = unet.to(device).eval()
    batch, steps = spec["batch"], spec["steps"]
    shape = (batch, spec["channels"], spec["image_size"], spec["image_size"])
    ours, theirs, pipe, timesteps, alphas_cumprod = make_sides(unet, batch=batch, steps=steps, shape=shape,
                                                               device=device, seed=seed)

    # The check (also the warm-up): same x_T, same samples? Record diffusers' last x before its clamp too.
    last: dict[str, torch.Tensor] = {}
    scheduler = pipe.scheduler
    step = scheduler.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        out = step(*args, **kwargs)
        last["x0"] = out.prev_sample
        return out

    scheduler.step = recording_step  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            their_images = theirs()
    finally:
        del scheduler.step  # back to the class's method
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    our_x0 = sample(unet, x_T, alphas_cumprod=alphas_cumprod, timesteps=timesteps, eta=0.0)
    raw_diff = float((our_x0 - last["x0"]).abs().max())
    image_diff = float(((our_x0 / 2 + 0.5).clamp(0, 1) - their_images).abs().max())
    raw_scale = float(our_x0.abs().max())

    times = interleaved({"ours": ours, "diffusers": theirs}, repeats=repeats, calls=1, device=device,
                        label=name, per=batch)
    ours_ms = statistics.median(times["ours"]) * 1e3
    theirs_ms = statistics.median(times["diffusers"]) * 1e3

    # The samplers' own loops: the same runs with a near-free model in place of the UNet.
    null = NullUNet(sample_size=spec["image_size"], in_channels=spec["channels"]).to(device).eval()
    null_ours, null_theirs, *_ = make_sides(null, batch=batch, steps=steps, shape=shape, device=device,
                                            seed=seed)
    null_ours(), null_theirs()  # warm-up
    overhead = interleaved({"ours": null_ours, "diffusers": null_theirs}, repeats=repeats,
                           calls=overhead_calls, device=device, label=f"{name} null model", per=steps)
    return {
        "shape": name, "unet": spec["preset"], "image": f"{spec['image_size']}x{spec['image_size']}x"
        f"{spec['channels']}", "batch": batch, "steps": steps, "timesteps": timesteps,
        "ours_ms_per_image": ours_ms, "diffusers_ms_per_image": theirs_ms,
        "ratio_diffusers_over_ours": theirs_ms / ours_ms,
        "paired_ratio_diffusers_over_ours": statistics.median(
            d / o for d, o in zip(times["diffusers"], times["ours"], strict=True)),
        "max_abs_diff_x0": raw_diff, "max_abs_x0": raw_scale, "max_abs_diff_images": image_diff,
        "null_model_ours_us_per_step": statistics.median(overhead["ours"]) * 1e6,
        "null_model_diffusers_us_per_step": statistics.median(overhead["diffusers"]) * 1e6,
        "times_s_per_image": times, "null_model_times_s_per_step": overhead,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="digits,cifar10", help="comma-separated: digits, cifar10")
    parser.add_argument("--batch", type=int, default=None, help="override every shape's batch size")
    parser.add_argument("--steps", type=int, default=None, help="override every shape's DDIM steps")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds per shape")
    parser.add_argument("--overhead-calls", type=int, default=20,
                        help="back-to-back runs per round with the null model (the samplers' own loops)")
    add_run_options(parser)
    args = parser.parse_args()
    device = start_run(args)
    rows = []
    for name, spec in selected_shapes(parser, args, SHAPES, {"batch": "batch", "steps": "steps"}):
        rows.append(bench_shape(name, spec, repeats=args.repeats, overhead_calls=args.overhead_calls,
                                device=device, seed=args.seed))

    print(f"unguided DDIM (eta 0), ours vs diffusers DDIMPipeline on the same UNet, "
          f"{args.threads} thread(s), {args.device}, {args.clock} clock, median of {args.repeats} "
          "interleaved rounds")
    print_table([
        ("shape", "shape", "<8"), ("unet", "unet", "<13"), ("image", "image", "<8"), ("batch", "batch", ">5"),
        ("steps", "steps", ">5"), ("ours ms/img", "ours_ms_per_image", ">12.2f"),
        ("diffusers ms/img", "diffusers_ms_per_image", ">17.2f"),
        ("diffusers/ours", "ratio_diffusers_over_ours", ">15.3f"),
        ("paired", "paired_ratio_diffusers_over_ours", ">7.3f"), ("max|dx0|", "max_abs_diff_x0", ">9.1e"),
        ("max|dimg|", "max_abs_diff_images", ">9.1e"),
        ("loop us/step ours", "null_model_ours_us_per_step", ">18.1f"),
        ("diffusers", "null_model_diffusers_us_per_step", ">10.1f"),
    ], rows)
    print("diffusers/ours: ratio of the medians; paired: median over rounds of that round's ratio")
    print("max|dx0|: largest |ours - diffusers| on the final x (before the clamp; largest |x| per shape in "
          "the JSON); max|dimg|: on the returned [0, 1] images")
    print("loop us/step: each sampler's own cost per step (whole batch), measured with a near-free model "
          "(eps = 0.1 x) in place of the UNet")
    if args.json is not None:
        write_report(args.json, "ddim_vs_diffusers", args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

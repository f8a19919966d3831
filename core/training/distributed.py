"""Data-parallel training on ``torch.distributed``: the launcher and the few helpers the trainers share.

Every rank runs the same trainer with the same seed, so every rank draws the same epoch plan (the same
permutations, synthetic indices, augmentation offsets, attack start noise, diffusion t and eps) for the
*global* batch from the same generators, and keeps only its slice of the rows (:func:`local_rows`).
``DistributedDataParallel`` averages the gradients over the ranks; each rank's loss is scaled by
``world_size * n_local / n_global`` (:func:`loss_scale`) so the average equals the gradient of the
one-process batch mean, whatever the split. The global batch and the synthetic share are therefore those
of one process, and a run on N ranks reaches the one-process weights up to float rounding.

BatchNorm: on CUDA the model's BatchNorm layers become ``nn.SyncBatchNorm`` (batch statistics over the
global batch, as on one process); on the CPU (gloo) PyTorch has no SyncBatchNorm, so each rank normalises
over its slice and DDP broadcasts rank 0's running statistics every step (the models without BatchNorm,
``small_cnn`` and the UNets with GroupNorm, are unaffected). EMA weights are updated on every rank from
identical parameters; rank 0 alone evaluates, writes checkpoints, models and metrics, and calls the
progress callback.

Launch: :func:`launch` runs rank 0 in the calling process (so the worker's progress callback, with its
lease and cancellation checks, keeps working) and ranks 1..N-1 as child processes that find their rank in
torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). Under ``torchrun`` itself (several hosts, rendezvous) the CLI sees those variables and
joins the group directly (:func:`init_from_environment`).
"""

from __future__ import annotations

import datetime
import importlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

# How long a rank waits in a collective (e.g. while rank 0 evaluates an epoch) before giving up.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
# Environment variables torchrun sets for every worker process.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and when not distributed): the process that writes files and reports progress."""
    return rank() == 0


def local_rows(n_global: int) -> slice:
    """This rank's contiguous share of ``n_global`` rows (sizes differ by at most one, like
    ``torch.tensor_split``)."""
    size, index = world_size(), rank()
    if n_global < size:
        raise ValueError(f"a batch of {n_global} rows cannot be split over {size} processes; "
                         "use a batch size (and data set size) of at least the number of processes")
    base, extra = divmod(n_global, size)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))


def loss_scale(n_local: int, n_global: int) -> float:
    """Factor for a rank's mean loss over its ``n_local`` rows so that DDP's gradient average over the ranks
    equals the gradient of the mean over all ``n_global`` rows."""
    return world_size() * n_local / n_global


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (SyncBatchNorm first on CUDA); ``model`` itself when
    not distributed. DDP broadcasts rank 0's parameters and buffers at construction."""
    if world_size() == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (what gets saved, attacked and averaged)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over the ranks (the epoch's training statistics); identity on one process."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def rank_device(device: str | torch.device) -> torch.device:
    """The device of this rank: the CPU stays the CPU; ``cuda`` / ``cuda:N`` become ``cuda:(N + local
    rank)`` so ranks on one host use consecutive GPUs."""
    resolved = torch.device(device)
    if resolved.type != "cuda" or world_size() == 1:
        return resolved
    index = (resolved.index or 0) + int(os.environ.get("LOCAL_RANK", rank()))
    if index >= torch.cuda.device_count():
        raise ValueError(f"rank {rank()} needs cuda:{index}, but only {torch.cuda.device_count()} GPUs "
                         "are visible")  # fmt: skip
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def backend_for(device: str | torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_environment(device: str | torch.device) -> bool:
    """Join the process group described by torchrun's variables; False (nothing done) when they are absent
    or the world has one process."""
    if dist.is_initialized():
        return True
    if not all(name in os.environ for name in TORCHRUN_VARIABLES) or int(os.environ["WORLD_SIZE"]) == 1:
        return False
    dist.init_process_group(backend_for(device), init_method="env://", timeout=COLLECTIVE_TIMEOUT)
    logger.info("joined process group: rank %d of %d", rank(), world_size())
    return True


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def launch(
    target: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    nproc: int,
    device: str | torch.device,
    progress: Any = None,
) -> Any:
    """Run ``target(**kwargs, progress=...)`` on ``nproc`` ranks of one host and return rank 0's result.

    ``target`` must be a module-level function (the children import it by name) and ``kwargs`` picklable;
    rank 0 runs in this process with ``progress``, the other ranks in child processes with ``progress=None``.
    ``nproc == 1`` calls ``target`` directly. An exception on rank 0 (a cancel, a lost lease) stops the
    children; a child that fails makes rank 0's next collective fail, and its exit code is reported.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if nproc == 1 or dist.is_initialized():
        return target(**kwargs, progress=progress)
    name = f"{target.__module__}:{target.__name__}"
    if _resolve(name) is not target:
        raise ValueError(f"{name} is not a module-level function the child processes can import")
    # rank 0 owns the rendezvous store; port 0 lets the OS pick a free port without a race
    store = dist.TCPStore("127.0.0.1", 0, nproc, is_master=True, timeout=COLLECTIVE_TIMEOUT,
                          wait_for_workers=False)
    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="cdp-ddp-") as scratch:
        payload = Path(scratch) / "payload.pkl"  # our own data for our own children (mode 0700 directory)
        payload.write_bytes(pickle.dumps({"target": name, "kwargs": kwargs, "device": str(device),
                                          "threads": torch.get_num_threads()}))  # fmt: skip
        try:
            for child_rank in range(1, nproc):
                env = {**os.environ, "RANK": str(child_rank), "LOCAL_RANK": str(child_rank),
                       "WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port)}
                children.append(subprocess.Popen(
                    [sys.executable, "-m", "core.training.distributed", str(payload)], env=env))  # fmt: skip
            _wait_for_children(store, children)
            dist.init_process_group(backend_for(device), store=store, rank=0, world_size=nproc,
                                    timeout=COLLECTIVE_TIMEOUT)  # fmt: skip
            try:
                result = target(**kwargs, progress=progress)
            finally:
                dist.destroy_process_group()
            # the children finish right after rank 0 (their last collective); a hung one is killed below
            failed = [(k + 1, child.wait(timeout=300)) for k, child in enumerate(children)]
            failed = [(k, code) for k, code in failed if code != 0]
            if failed:
                raise RuntimeError(f"distributed training: rank(s) {failed} exited with non-zero codes")
            return result
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()


def _wait_for_children(store: dist.TCPStore, children: list[subprocess.Popen[bytes]]) -> None:
    """Wait until every child rank has reached rank 0's store, failing at once when one exits first (a
    child that cannot start would otherwise leave rank 0 waiting in init_process_group for the timeout)."""
    keys = [f"cdp/ready/{k + 1}" for k in range(len(children))]
    deadline = time.monotonic() + COLLECTIVE_TIMEOUT.total_seconds()
    while not store.check(keys):
        exited = [(k + 1, child.returncode) for k, child in enumerate(children) if child.poll() is not None]
        if exited:
            raise RuntimeError(f"distributed training: rank(s) {exited} exited before joining "
                               "(see their output above)")  # fmt: skip
        if time.monotonic() > deadline:
            raise RuntimeError("distributed training: the child ranks did not start in time")
        time.sleep(0.05)


@contextmanager
def process_group_from_environment(device: str | torch.device) -> Iterator[bool]:
    """Join torchrun's group for the block (True when distributed) and leave it afterwards."""
    joined = init_from_environment(device)
    try:
        yield joined
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def _child(payload_path: str) -> None:
    """A rank started by :func:`launch`: join rank 0's store (the address in torchrun's variables), run."""
    payload = pickle.loads(Path(payload_path).read_bytes())
    torch.set_num_threads(int(payload["threads"]))
    size, index = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size, is_master=False,
                          timeout=COLLECTIVE_TIMEOUT)  # fmt: skip
    store.set(f"cdp/ready/{index}", "1")
    dist.init_process_group(backend_for(payload["device"]), store=store, rank=index, world_size=size,
                            timeout=COLLECTIVE_TIMEOUT)  # fmt: skip
    try:
        _resolve(payload["target"])(**payload["kwargs"], progress=None)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # a child rank started by launch()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s rank %(process)d %(name)s: %(message)s")
    _child(sys.argv[1])

"""Data-parallel training on N processes (torch ``DistributedDataParallel``), started by ``torchrun``.

``torchrun --nproc_per_node N -m bhsearch pretrain ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` sees ``WORLD_SIZE > 1`` and joins the
process group (``nccl`` on CUDA, one device per process, ``cuda:LOCAL_RANK``; ``gloo`` on CPU). Without
that environment (or with ``WORLD_SIZE=1``) nothing here does anything and a run is exactly the
single-process run.

What the rest of the training code does with it (``bhsearch.train.loop``):

* ``batch_size`` is per process; one optimizer step sees ``batch_size × WORLD_SIZE × accumulation``
  images. :class:`~bhsearch.train.loop.EpochBatchSampler` draws the global batches exactly as one
  process with the global batch would, and hands process ``r`` the ``r``-th contiguous slice of each
  (:func:`shard`); per-sample augmentation draws are taken for the whole global batch and sliced, so a
  sample is augmented as it would be in one process.
* Each process's loss is weighted by its share of the global batch, so DDP's gradient average is the
  gradient of the global batch's mean loss; reported losses and image counts are all-reduced.
* The global torch RNG (used inside models, e.g. RPN sampling) is seeded per process.
* Rank 0 evaluates, writes the checkpoint (with every process's RNG state), ``metrics.jsonl`` and the
  weights; the others wait at a barrier. Resume reads the rank-0 checkpoint on every process and
  needs the same number of processes.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from bhsearch.errors import UsageError

TIMEOUT_ENV = "BHSEARCH_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0  # rank 0 evaluates while the others wait: long enough for a full evaluation


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"WORLD_SIZE must be a positive integer, got {text!r}") from None
    if value < 1:
        raise UsageError(f"WORLD_SIZE must be a positive integer, got {text!r}")
    return value


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def _timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise UsageError(f"{TIMEOUT_ENV} must be positive, got {text!r}")
    return value


def setup(device_name: str | None = "auto", *, sync_bn: bool = False) -> torch.device:
    """The training device of this process; under torchrun (``WORLD_SIZE > 1``) also joins the process group.

    A process group that already exists (e.g. set up by a launcher such as Ray Train's ``TorchTrainer``,
    which also sets ``WORLD_SIZE`` and ``LOCAL_RANK``) is used as it is. ``sync_bn`` with more than one
    process needs CUDA devices (torch's ``SyncBatchNorm`` has no CPU implementation): refused on CPU
    before any work is done.
    """
    from bhsearch.train.loop import select_device

    world = env_world_size()
    if world == 1:
        return select_device(device_name)
    required = ("RANK", "LOCAL_RANK") if dist.is_initialized() else ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in required if k not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; start multi-process runs with torchrun")
    try:
        local = int(os.environ["LOCAL_RANK"])
    except ValueError:
        raise UsageError(f"LOCAL_RANK must be an integer, got {os.environ['LOCAL_RANK']!r}") from None
    text = (device_name or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if text != "cuda":
            raise UsageError(
                f"--device {device_name}: under torchrun every process uses cuda:LOCAL_RANK; pass --device cuda or auto"
            )
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device_name}: CUDA is not available on this machine (use --device cpu)")
        if local >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {local}: only {torch.cuda.device_count()} CUDA device(s) on this machine; "
                "use --nproc_per_node <= the device count"
            )
        device, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(device)
    elif text == "cpu":
        device, backend = torch.device("cpu"), "gloo"
    else:
        select_device(device_name)  # raises the usual one-line error
        raise UsageError(f"--device {device_name}: not usable for multi-process training")  # pragma: no cover
    if sync_bn and device.type != "cuda":
        raise UsageError(
            "sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation); "
            "drop sync_bn for multi-process CPU runs"
        )
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=_timeout_s()), **kwargs)
        atexit.register(_teardown)
    elif dist.get_world_size() != world:
        raise UsageError(f"a process group of {dist.get_world_size()} processes exists, but WORLD_SIZE is {world}")
    return device


def _teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device, *, sync_bn: bool = False) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel (``sync_bn``: BatchNorm → SyncBatchNorm first, in place);
    ``model`` itself when not distributed. Parameters are shared with ``model``, so its optimizer and
    ``state_dict`` stay valid."""
    if not active():
        return model
    if sync_bn:
        if device.type != "cuda":
            raise UsageError("sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation)")
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:  # pragma: no cover - a bare BatchNorm as the whole model
            raise UsageError("sync_bn: the model itself is a BatchNorm layer")
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def shard(total: int, rank_: int, world: int) -> tuple[int, int]:
    """``(start, count)`` of process ``rank_``'s contiguous slice of ``total`` items split over ``world``
    processes as evenly as possible (the first ``total % world`` processes get one more)."""
    base, extra = divmod(total, world)
    return rank_ * base + min(rank_, extra), base + (1 if rank_ < extra else 0)


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (picklable objects)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes, in place (unchanged when not distributed)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


__all__ = [
    "active",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "env_world_size",
    "gather_objects",
    "is_main",
    "rank",
    "setup",
    "shard",
    "world_size",
    "wrap",
]

"""Helpers shared by the training stages: devices, seeding, schedules, checkpoints, the step loop.

Determinism: data order and augmentation draw from generators seeded by
``derive_seed(seed, ..., epoch, batch)`` (stateless, so worker count and resume point do
not matter); the global torch RNG (used inside models, e.g. RPN sampling) is reseeded at
every epoch start and saved in mid-epoch checkpoints. On CPU two runs with the same seed
give identical metrics, and a resumed run ends where an uninterrupted one would.

Checkpoints hold only tensors and plain Python containers, so ``torch.load(path,
weights_only=True)`` reads them; they are written to a temporary file and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bhsearch.errors import DataError, TrainingError, UsageError
from bhsearch.fileio import atomic_write, atomic_write_text, require_file  # noqa: F401  (re-exported)
from bhsearch.train import distributed

DEVICE_CHOICES = ("auto", "cpu", "cuda")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
PROGRESS_CHOICES = ("auto", "on", "off")
CHECKPOINT_FORMAT = 1
# settings added after checkpoints already existed: a checkpoint without one ran with this value
# (``crop_pct``: pre-training's centre-crop ratio, 0.875 since it was added; it only acts on image-file data,
# which older checkpoints never trained on)
LATER_SETTINGS = {"sync_bn": False, "crop_pct": 0.875}

# --------------------------------------------------------------------------- devices and runtime


def select_device(name: str | None = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda``/``cuda:N`` must exist; ``cpu``."""
    text = (name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise UsageError(f"--device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configure_runtime(
    device: torch.device, *, seed: int, deterministic: bool = True, num_threads: int | None = None
) -> None:
    """Seed every RNG, set CPU threads, and set cuDNN/TF32 flags for ``device``."""
    if num_threads:
        torch.set_num_threads(int(num_threads))
    seed_everything(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any printable parts (same on every machine and Python run)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(*parts: Any, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


def resolve_amp(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full precision)."""
    amp = (amp or "auto").lower()
    if amp not in AMP_CHOICES:
        raise UsageError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if amp == "fp16":
        raise UsageError("amp fp16 needs a CUDA device; use bf16 or off on CPU")
    return torch.bfloat16 if amp == "bf16" else None


def resolve_channels_last(device: torch.device, setting: str | bool) -> bool:
    if isinstance(setting, bool):
        return setting
    if setting not in ("auto", "on", "off"):
        raise UsageError(f"channels_last must be auto, on or off, got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(obj: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move tensors (also inside lists, tuples and dicts) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking and device.type == "cuda")
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


# --------------------------------------------------------------------------- data order


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of indices, shuffled by ``(seed, epoch)``; ``set_epoch(e, start)`` skips ``start`` batches.

    With ``groups`` (a group id per index, e.g. the source image of each tile) the groups are
    shuffled and then the members inside each group, so members of one group come together.

    Data-parallel (``world`` > 1 processes, this one ``rank``): ``batch_size`` is per process; the
    sampler forms the global batches of ``batch_size × world`` indices exactly as one process would
    with that batch size and yields this process's contiguous slice of each (``distributed.shard``;
    the slices of one batch are disjoint and together the whole batch). A last global batch with
    fewer indices than processes is skipped (at most ``world - 1`` items an epoch), so every process
    has data in every step. ``batch_span(b)`` gives the slice's start and the global batch's size.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        groups: list[int] | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        if size <= 0:
            raise DataError("the dataset is empty")
        if batch_size <= 0:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        if groups is not None and len(groups) != size:
            raise UsageError(f"groups has {len(groups)} entries for {size} items")
        if world < 1 or not 0 <= rank < world:
            raise UsageError(f"rank {rank} of {world} processes is not a valid data-parallel position")
        if size < world:
            raise DataError(f"the dataset has {size} item(s), fewer than the {world} training processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.shuffle, self.drop_last, self.groups = shuffle, drop_last, groups
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    @property
    def global_batch(self) -> int:
        """Indices per step over all processes (``batch_size × world``)."""
        return self.batch_size * self.world

    @property
    def num_batches(self) -> int:
        g = self.global_batch
        if self.drop_last and self.size >= g:
            return self.size // g
        n = math.ceil(self.size / g)
        if 0 < self.size % g < self.world:  # a tail too small to give every process an item
            n -= 1
        return n

    def batch_span(self, b: int) -> tuple[int, int]:
        """``(start, total)``: where this process's slice of global batch ``b`` starts, and that batch's size."""
        total = min(self.global_batch, self.size - b * self.global_batch)
        return distributed.shard(total, self.rank, self.world)[0], total

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        gen = generator(self.seed, "order", self.epoch)
        if self.groups is None:
            return torch.randperm(self.size, generator=gen).tolist()
        members: dict[int, list[int]] = {}
        for i, g in enumerate(self.groups):
            members.setdefault(g, []).append(i)
        keys = list(members)
        out: list[int] = []
        for k in torch.randperm(len(keys), generator=gen).tolist():
            group = members[keys[k]]
            out.extend(group[j] for j in torch.randperm(len(group), generator=gen).tolist())
        return out

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        g = self.global_batch
        for b in range(self.start, self.num_batches):
            batch = order[b * g : (b + 1) * g]
            if self.world == 1:
                yield batch
            else:
                start, count = distributed.shard(len(batch), self.rank, self.world)
                yield batch[start : start + count]

    def __len__(self) -> int:
        return self.num_batches - self.start


def worker_init(_worker_id: int) -> None:
    """DataLoader workers run one thread each (the main process owns the cores)."""
    torch.set_num_threads(1)


def make_loader(dataset, batch_sampler, *, collate_fn, num_workers: int, device: torch.device):
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=worker_init if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )


# --------------------------------------------------------------------------- learning rate


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a pure function of the optimizer step (nothing to checkpoint but the step).

    ``kind``: ``cosine`` (to ``min_lr_ratio * base_lr``), ``step`` (× ``gamma`` at each of
    ``milestones``, in steps) or ``constant``; linear warm-up over ``warmup_steps`` starting at
    ``warmup_ratio * lr`` (mmdet's rule).
    """

    base_lr: float
    total_steps: int
    kind: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_ratio: float = 0.001
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "step", "constant"):
            raise UsageError(f"schedule must be cosine, step or constant, got {self.kind!r}")

    def __call__(self, step: int) -> float:
        if self.kind == "cosine":
            t = min(1.0, step / max(1, self.total_steps))
            floor = self.min_lr_ratio
            lr = self.base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))
        elif self.kind == "step":
            lr = self.base_lr * self.gamma ** sum(step >= m for m in self.milestones)
        else:
            lr = self.base_lr
        if step < self.warmup_steps:
            k = (1 - step / self.warmup_steps) * (1 - self.warmup_ratio)
            lr *= 1 - k
        return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# --------------------------------------------------------------------------- files and checkpoints


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; unreadable files raise DataError naming them."""
    path = require_file(path, "{path}: no such checkpoint", DataError)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable bhsearch checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not a bhsearch checkpoint (missing format {CHECKPOINT_FORMAT})")
    return state


def save_safetensors(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = require_file(path, "{path}: no such weights file")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None


def capture_rng() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], path: Path, ignore: Iterable[str]) -> None:
    """A resumed run must use the settings it started with (except the ``ignore`` ones)."""
    skip = set(ignore)
    saved = {**{k: v for k, v in LATER_SETTINGS.items() if k in current}, **saved}
    diff = [k for k in sorted(set(saved) | set(current)) if k not in skip and saved.get(k) != current.get(k)]
    if diff:
        parts = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:4])
        raise UsageError(f"{path}: cannot resume with different settings ({parts}); use the original ones")


def checkpoint_payload(
    stage: str, config: Any, spec: Any, trainer: Trainer, st: LoopState, rng: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """What every stage's ``checkpoint.pt`` holds (tensors and plain containers only)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "stage": stage,
        "config": config.to_dict(),
        "spec": spec.to_dict(),
        **extra,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "loop": st.to_dict(),
        "rng": rng,
    }


def resume_or_start(
    ckpt_path: Path,
    *,
    resume: bool,
    stage: str,
    description: str,
    config: Any,
    spec: Any,
    trainer: Trainer,
    resumable: Iterable[str],
    outputs: Iterable[str],
) -> tuple[LoopState, dict[str, Any] | None]:
    """Restore model, optimizer, scaler and loop state from ``ckpt_path`` when resuming (refusing a
    checkpoint of another stage, spec or settings), else delete the run's old ``outputs``.

    Returns the loop state and the RNG state to restore at the first batch (None at an epoch start).
    """
    out = ckpt_path.parent
    if not (resume and ckpt_path.is_file()):
        for name in outputs:
            (out / name).unlink(missing_ok=True)
        return LoopState(), None
    saved = load_checkpoint(ckpt_path)
    if saved.get("stage") != stage:
        raise UsageError(f"{ckpt_path}: a {saved.get('stage')} checkpoint, not a {description} one")
    check_resume_config(saved["config"], config.to_dict(), ckpt_path, resumable)
    if saved["spec"] != spec.to_dict():
        from bhsearch.spec import get_spec

        raise UsageError(f"{ckpt_path}: was trained with spec {get_spec(saved['spec']).id}, not {spec.id}")
    world, saved_world = distributed.world_size(), int(saved.get("world_size", 1))
    if saved_world != world:
        raise UsageError(
            f"{ckpt_path}: was trained on {saved_world} process(es), not {world}; resume with "
            + (f"torchrun --nproc_per_node {saved_world}" if saved_world > 1 else "one process (no torchrun)")
        )
    trainer.model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scaler.load_state_dict(saved["scaler"])
    state = LoopState.from_dict(saved["loop"])
    trainer.reporter.note(f"resuming {out} at epoch {state.epoch + 1}, batch {state.batch}")
    if not state.batch:
        return state, None
    return state, (saved["rng_ranks"][distributed.rank()] if world > 1 else saved["rng"])


def write_metrics(path: str | Path, history: list[dict[str, Any]]) -> Path:
    """Rewrite ``metrics.jsonl`` (one JSON object per epoch) from the checkpoint's history."""
    return atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in history))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- progress and summary


class Reporter:
    """Rich progress bars on a terminal (epoch, it/s, loss, ETA); one line per epoch otherwise."""

    def __init__(self, stage: str, mode: str = "auto", console=None):
        from rich.console import Console

        if mode not in PROGRESS_CHOICES:
            raise UsageError(f"progress must be one of {', '.join(PROGRESS_CHOICES)}, got {mode!r}")
        self.stage = stage
        self.console = console or Console(stderr=True)
        self.mode = mode
        self.bars = mode == "on" or (mode == "auto" and self.console.is_terminal)
        self.lines = mode != "off"
        if not distributed.is_main():  # data-parallel runs: only rank 0 reports
            self.bars = self.lines = False
        self._progress = None
        self._task = None
        self._t0 = 0.0
        self._done = 0

    def start(self) -> None:
        if not self.bars:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} it/s"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()

    def epoch_start(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        self._t0, self._done = time.perf_counter(), 0
        if self._progress is not None:
            self._task = self._progress.add_task(
                f"{self.stage} epoch {epoch + 1}/{epochs}", total=total, completed=done, rate="-", loss="-"
            )

    def advance(self, n: int, loss: float | None) -> None:
        self._done += n
        if self._progress is not None and self._task is not None:
            rate = self._done / max(1e-9, time.perf_counter() - self._t0)
            self._progress.update(
                self._task, advance=n, rate=f"{rate:.2f}", loss="-" if loss is None else f"{loss:.4f}"
            )

    def phase(self, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=text)

    def epoch_end(self, record: dict[str, Any], keys: Iterable[str]) -> None:
        if self.lines and not self.bars:
            parts = [f"{k} {_fmt(record[k])}" for k in keys if k in record]
            self.console.print(f"{self.stage} epoch {record['epoch']}/{record['epochs']}: " + ", ".join(parts))

    def note(self, text: str) -> None:
        if self.lines:
            self.console.print(text)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_table(history: list[dict[str, Any]], keys: Iterable[str], title: str):
    """A rich table with one row per epoch and the given metric columns."""
    from rich.table import Table

    keys = [k for k in keys if any(k in row for row in history)]
    table = Table(title=title)
    table.add_column("epoch", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for row in history:
        table.add_row(str(row.get("epoch")), *[_fmt(row[k]) if k in row else "-" for k in keys])
    return table


# --------------------------------------------------------------------------- interrupts


class InterruptGuard:
    """First Ctrl-C asks the loop to stop after the current step and checkpoint; the second aborts.

    Only installs a handler in the main thread (Ray Tune trials run elsewhere and are untouched).
    In a data-parallel run SIGTERM is handled the same way: torchrun passes the signal it gets (SIGINT
    on Ctrl-C, SIGTERM from a scheduler) on to its workers and kills them 30 s later; the request is
    all-reduced, so every process stops and checkpoints at the same step.
    """

    def __init__(self, reporter: Reporter | None = None):
        self.requested = False
        self._old: dict[int, Any] = {}
        self._reporter = reporter

    def _handle(self, signum, frame):  # pragma: no cover - exercised through signals
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._reporter is not None:
            self._reporter.note("interrupt: saving a checkpoint after this step (Ctrl-C again to abort now)")

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGINT, signal.SIGTERM) if distributed.active() else (signal.SIGINT,)
            for sig in signals:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


# --------------------------------------------------------------------------- the step loop


@dataclass
class LoopState:
    """Where a run stands: ``epoch`` completed epochs, ``batch`` micro-batches done in the next one."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    images: int = 0
    train_time: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "sums": dict(self.sums),
            "count": self.count,
            "images": self.images,
            "train_time": self.train_time,
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def reset_epoch(self) -> None:
        self.batch, self.sums, self.count, self.images, self.train_time = 0, {}, 0, 0, 0.0


LossFn = Callable[[Any, int], "tuple[torch.Tensor, dict[str, torch.Tensor], int]"]


class Trainer:
    """Runs training epochs: autocast, gradient accumulation, per-step LR, finite-loss check,
    mid-epoch checkpoints on Ctrl-C / crash / every ``checkpoint_interval_s`` seconds."""

    def __init__(
        self,
        *,
        stage: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        accumulation: int,
        reporter: Reporter,
        save: Callable[[LoopState, dict[str, Any]], None],
        checkpoint_interval_s: float = 600.0,
        grad_clip: float | None = None,
    ):
        if accumulation < 1:
            raise UsageError(f"accumulation must be >= 1, got {accumulation}")
        self.stage, self.model, self.optimizer, self.schedule = stage, model, optimizer, schedule
        self.device, self.amp_dtype, self.accumulation = device, amp_dtype, accumulation
        self.reporter, self.save = reporter, save
        self.checkpoint_interval_s, self.grad_clip = checkpoint_interval_s, grad_clip
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.interrupt: InterruptGuard | None = None
        # what the loss functions call: ``model`` itself, or its DistributedDataParallel wrapper
        self.net: torch.nn.Module = model

    def train_epoch(
        self,
        state: LoopState,
        epochs: int,
        num_batches: int,
        batches: Iterable[Any],
        loss_fn: LossFn,
        span: Callable[[int], tuple[int, int]] | None = None,
    ) -> None:
        """Train from ``state.batch`` to the end of epoch ``state.epoch``; ``state`` is updated in place.

        Checkpoints are only taken at optimizer-step boundaries, where they are exact. Data-parallel:
        ``span(b)`` (the sampler's ``batch_span``) gives global batch ``b``'s size; each process's loss
        is weighted by its share of it, so the averaged gradient is that of the global batch's mean loss.
        Loss figures, image counts and the checkpoint / stop requests are all-reduced once per step, so
        every process takes the same decisions at the same step.
        """
        model, opt = self.model, self.optimizer
        world = distributed.world_size()
        ddp = self.net is not model
        model.train()
        opt.zero_grad(set_to_none=True)
        self.reporter.epoch_start(state.epoch, epochs, num_batches, state.batch)
        last_save = time.monotonic()
        pending: list[torch.Tensor] = []
        pending_parts: dict[str, list[torch.Tensor]] = {}
        pending_images = 0
        t_start = time.perf_counter()
        for b, batch in enumerate(batches, start=state.batch):
            group_start = b - b % self.accumulation
            group = min(self.accumulation, num_batches - group_start)
            last_of_group = b + 1 - group_start >= group
            if b == group_start:
                set_lr(opt, self.schedule(state.step))
            # DDP: gradients are all-reduced only in the backward pass of a group's last micro-batch
            sync = self.net.no_sync() if ddp and not last_of_group else contextlib.nullcontext()
            with sync:
                with autocast(self.device, self.amp_dtype):
                    loss, parts, n_images = loss_fn(batch, b)
                if world == 1:
                    share = 1.0
                    self.scaler.scale(loss / group).backward()
                else:
                    share = n_images / span(b)[1] if span is not None else 1.0 / world
                    self.scaler.scale(loss * (share * world / group)).backward()
            pending.append(loss.detach().float() * share if world > 1 else loss.detach().float())
            for k, v in parts.items():
                pending_parts.setdefault(k, []).append(v.detach().float() * share if world > 1 else v.detach().float())
            pending_images += n_images
            if not last_of_group:
                continue
            # end of an accumulation group: one host sync, finite check, optimizer step
            keys = list(pending_parts)
            values = torch.stack([torch.stack(pending).sum()] + [torch.stack(pending_parts[k]).sum() for k in keys])
            want_save = want_stop = False
            if world > 1:
                want_save = bool(
                    self.checkpoint_interval_s and time.monotonic() - last_save > self.checkpoint_interval_s
                )
                want_stop = self.interrupt is not None and self.interrupt.requested
                flags = torch.tensor([float(pending_images), float(want_save), float(want_stop)], device=values.device)
                reduced = distributed.all_reduce_sum(torch.cat([values, flags.to(values.dtype)])).tolist()
                values, (total_images, n_save, n_stop) = reduced[:-3], reduced[-3:]
                pending_images, want_save, want_stop = round(total_images), n_save > 0, n_stop > 0
            else:
                values = values.tolist()
            if not all(math.isfinite(v) for v in values):
                raise TrainingError(
                    f"{self.stage}: loss became {values[0]} at epoch {state.epoch + 1}, batch {b + 1} "
                    f"(lr {opt.param_groups[0]['lr']:.3g}); lower the learning rate or check the data"
                )
            if self.grad_clip:
                self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            self.scaler.step(opt)
            self.scaler.update()
            opt.zero_grad(set_to_none=True)
            state.step += 1
            state.batch = b + 1
            state.sums["loss"] = state.sums.get("loss", 0.0) + values[0]
            for k, v in zip(keys, values[1:], strict=True):
                state.sums[k] = state.sums.get(k, 0.0) + v
            state.count += len(pending)
            state.images += pending_images
            now = time.perf_counter()
            state.train_time += now - t_start
            t_start = now
            self.reporter.advance(len(pending), values[0] / len(pending))
            pending, pending_parts, pending_images = [], {}, 0
            if state.batch < num_batches:
                if world > 1:  # the all-reduced requests: every process saves / stops here or none does
                    stop, save = want_stop, want_save
                else:
                    stop = self.interrupt is not None and self.interrupt.requested
                    save = self.checkpoint_interval_s and time.monotonic() - last_save > self.checkpoint_interval_s
                if stop:
                    self.save(state, capture_rng())
                    raise KeyboardInterrupt
                if save:
                    self.save(state, capture_rng())
                    last_save = time.monotonic()


def finish_epoch(state: LoopState) -> dict[str, Any]:
    """Per-epoch training figures from the running sums (mean losses, images/s)."""
    out: dict[str, Any] = {}
    n = max(1, state.count)
    for k, v in state.sums.items():
        out[k if k.startswith("loss") else f"loss_{k}"] = v / n
    out["train_images_per_s"] = state.images / state.train_time if state.train_time > 0 else 0.0
    return out


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


# --------------------------------------------------------------------------- the epoch loop


@dataclass
class EpochLoop:
    """One training stage's epochs: everything :func:`run_epochs` needs, built by the stage.

    ``evaluate(epoch)`` returns the epoch's evaluation figures (``{}`` on epochs not evaluated);
    ``save_weights()`` writes the stage's weights file; ``checkpoint(state, rng)`` its checkpoint;
    ``callback(stage, epoch, record, out_dir)`` runs once both are on disk.
    """

    stage: str
    epochs: int
    seed: int
    state: LoopState
    resumed_rng: dict[str, Any] | None
    sampler: EpochBatchSampler
    loader: Iterable[Any]
    loss_fn: LossFn
    trainer: Trainer
    reporter: Reporter
    keys: tuple[str, ...]
    evaluate: Callable[[int], dict[str, Any]]
    save_weights: Callable[[], None]
    checkpoint: Callable[[LoopState, dict[str, Any]], None]
    out_dir: Path
    weights_file: str
    callback: Callable[..., None] | None = None
    callback_stage: str | None = None


def run_epochs(run: EpochLoop) -> list[dict[str, Any]]:
    """Train ``run`` to its last epoch: per epoch train, evaluate, checkpoint, write metrics and weights.

    The global torch RNG is reseeded at each epoch start (or restored from a mid-epoch checkpoint),
    so a resumed run ends where an uninterrupted one would. Returns the metrics history.

    Data-parallel: every process trains; rank 0 evaluates and its epoch record goes to all processes;
    rank 0 writes the checkpoint, metrics and weights while the others wait; ``callback`` then runs on
    every process (``distributed.is_main()`` tells rank 0).
    """
    state, optimizer = run.state, run.trainer.optimizer
    resumed_rng = run.resumed_rng
    world, main = distributed.world_size(), distributed.is_main()
    run.reporter.start()
    try:
        with InterruptGuard(run.reporter) as guard:
            run.trainer.interrupt = guard
            while state.epoch < run.epochs:
                t0 = time.perf_counter()
                if resumed_rng is not None:
                    restore_rng(resumed_rng)
                    resumed_rng = None
                elif state.batch == 0:
                    if world == 1:
                        torch.manual_seed(derive_seed(run.seed, "torch", state.epoch))
                    else:
                        torch.manual_seed(derive_seed(run.seed, "torch", state.epoch, "rank", distributed.rank()))
                run.sampler.set_epoch(state.epoch, state.batch)
                run.trainer.train_epoch(
                    state, run.epochs, run.sampler.num_batches, run.loader, run.loss_fn, span=run.sampler.batch_span
                )
                epoch = state.epoch + 1
                record: dict[str, Any] = {"stage": run.stage, "epoch": epoch, "epochs": run.epochs}
                record.update(finish_epoch(state))
                record["lr"] = optimizer.param_groups[0]["lr"]
                if main:
                    record.update(run.evaluate(epoch))
                    record["epoch_time_s"] = time.perf_counter() - t0
                record = distributed.broadcast_object(record)  # the others wait for rank 0's evaluation
                state.history.append(record)
                state.epoch += 1
                state.reset_epoch()
                run.checkpoint(state, capture_rng())
                if main:
                    write_metrics(run.out_dir / "metrics.jsonl", state.history)
                    run.save_weights()
                distributed.barrier()
                run.reporter.epoch_end(record, run.keys)
                if run.callback is not None:
                    run.callback(run.callback_stage or run.stage, epoch, dict(record), run.out_dir)
    finally:
        run.trainer.interrupt = None
        run.reporter.stop()
    if main:
        if not (run.out_dir / run.weights_file).is_file():
            run.save_weights()
        write_metrics(run.out_dir / "metrics.jsonl", state.history)
    distributed.barrier()
    return state.history


def step_schedule(
    base_lr: float,
    sampler: EpochBatchSampler,
    accumulation: int,
    epochs: int,
    milestones: Iterable[float],
    gamma: float,
    *,
    kind: str = "step",
    milestone_scale: float = 1.0,
    warmup_steps: int = 0,
    warmup_epochs: float | None = None,
    warmup_ratio: float = 0.001,
) -> LRSchedule:
    """The LR schedule of a run over optimizer steps.

    ``milestones`` are in units of which the run has ``milestone_scale`` (1: fractions of the run;
    12: the paper's epochs). Warm-up: ``warmup_epochs`` epochs, else ``warmup_steps`` capped at a
    third of the run.
    """
    steps_per_epoch = -(-sampler.num_batches // accumulation)
    total_steps = steps_per_epoch * epochs
    if warmup_epochs is not None:
        warmup = round(warmup_epochs * steps_per_epoch)
    else:
        warmup = min(warmup_steps, total_steps // 3)
    return LRSchedule(
        base_lr=base_lr,
        total_steps=total_steps,
        kind=kind,
        milestones=tuple(round(m * epochs / milestone_scale) * steps_per_epoch for m in milestones),
        gamma=gamma,
        warmup_steps=warmup,
        warmup_ratio=warmup_ratio,
    )


def start_training(
    *,
    stage: str,
    checkpoint_stage: str,
    description: str,
    out_dir: Path,
    config: Any,
    spec: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    reporter: Reporter,
    resume: bool,
    resumable: Iterable[str],
    weights_file: str,
    **payload: Any,
) -> tuple[Trainer, LoopState, dict[str, Any] | None, Callable[[LoopState, dict[str, Any]], None]]:
    """The trainer of a stage, resumed from ``out_dir/checkpoint.pt`` when asked, and its checkpoint writer.

    ``config`` supplies ``accumulation``, ``checkpoint_interval_s``, ``grad_clip`` (and ``sync_bn``); ``payload``
    goes into every checkpoint (``detector`` settings, ``run`` facts, ``num_classes``). Returns ``(trainer,
    state, resumed_rng, checkpoint)``. In a data-parallel run ``trainer.net`` is the model wrapped in
    DistributedDataParallel: loss functions must call ``trainer.net``, not the model.
    """
    ckpt_path = out_dir / "checkpoint.pt"
    world = distributed.world_size()
    sync_bn = bool(getattr(config, "sync_bn", False))

    def checkpoint(st: LoopState, rng: dict[str, Any]) -> None:
        """Every process calls this at the same step; rank 0 writes (with every process's RNG state)."""
        if world == 1:
            save_checkpoint(ckpt_path, checkpoint_payload(checkpoint_stage, config, spec, trainer, st, rng, **payload))
            return
        rngs = distributed.gather_objects(rng)
        if distributed.is_main():
            state = checkpoint_payload(checkpoint_stage, config, spec, trainer, st, rng, **payload)
            save_checkpoint(ckpt_path, {**state, "world_size": world, "rng_ranks": rngs})
        distributed.barrier()

    trainer = Trainer(
        stage=stage,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        device=device,
        amp_dtype=amp_dtype,
        accumulation=config.accumulation,
        reporter=reporter,
        save=checkpoint,
        checkpoint_interval_s=config.checkpoint_interval_s,
        grad_clip=config.grad_clip,
    )
    state, resumed_rng = resume_or_start(
        ckpt_path,
        resume=resume,
        stage=checkpoint_stage,
        description=description,
        config=config,
        spec=spec,
        trainer=trainer,
        resumable=resumable,
        outputs=("checkpoint.pt", "metrics.jsonl", weights_file),
    )
    # after loading a checkpoint: DDP starts every process from rank 0's parameters and buffers
    trainer.net = distributed.wrap(model, device, sync_bn=sync_bn)
    return trainer, state, resumed_rng, checkpoint

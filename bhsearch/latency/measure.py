"""Timing and memory measurement of units and whole backbones (imports torch).

Times are wall-clock per call on CPU (``time.perf_counter``; ``clock="cpu"`` uses the calling
thread's CPU time instead, which other processes on a shared machine do not inflate, valid with one
intra-op thread) and CUDA events on GPU, after
warm-up, summarised by the median and the 10th/90th percentiles. Memory on GPU comes from the
CUDA caching allocator (``max_memory_allocated``); on CPU from :class:`TensorMemoryTracker`, which
follows every tensor storage created by an operator (forward and backward) until it is freed.
"""

from __future__ import annotations

import platform
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bhsearch.errors import UsageError
from bhsearch.latency.units import DTYPE_BYTES, BlockUnit, StemUnit, Unit
from bhsearch.spec import ResNetSpec, Spec, get_spec, parse_input_size

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("inference", "train")


# --------------------------------------------------------------------------- settings


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from ``cpu``/``cuda``/``cuda:N``; UsageError when it is not available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise UsageError(f"device must be cpu or cuda, got {device!r}")
    return dev


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in TORCH_DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(TORCH_DTYPES)}; got {dtype!r}")
    return TORCH_DTYPES[dtype]


def set_threads(threads: int | None) -> int:
    """Set the intra-op CPU thread count (None keeps it) and return the one in effect."""
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise UsageError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


#: glibc ``mallopt`` parameters and the values :func:`steady_allocator` sets (bytes).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
STEADY_TRIM_BYTES, STEADY_MMAP_BYTES = 512 << 20, 256 << 20


def steady_allocator() -> bool:
    """Pin glibc malloc's mmap and trim thresholds (True when set; False off glibc).

    By default glibc raises its mmap threshold each time a large block is freed, so the same network is
    timed with its activations page-faulted in from fresh ``mmap`` s early in a process and served from
    the heap later: 20-30 % apart on this project's CPU machine for high-resolution (bottom-heavy)
    backbones. Fixed thresholds make every pass allocate alike (the process keeps its freed memory until it
    exits); the same as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, STEADY_TRIM_BYTES)) and bool(mallopt(_M_MMAP_THRESHOLD, STEADY_MMAP_BYTES))


def device_name(device: torch.device) -> str:
    """A human-readable name of the device (CPU model or GPU name)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")


def _check_reps(warmup: int, reps: int) -> None:
    if not isinstance(warmup, int) or warmup < 0:
        raise UsageError(f"warmup must be a non-negative integer, got {warmup!r}")
    if not isinstance(reps, int) or reps < 1:
        raise UsageError(f"reps must be a positive integer, got {reps!r}")


# --------------------------------------------------------------------------- timing


CLOCKS = ("wall", "cpu")


def check_clock(clock: str) -> None:
    """``wall`` (elapsed time) or ``cpu`` (this thread's CPU time; needs one intra-op thread)."""
    if clock not in CLOCKS:
        raise UsageError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
    if clock == "cpu" and torch.get_num_threads() != 1:
        raise UsageError("clock 'cpu' measures the calling thread only: use it with --threads 1")


def time_callable(
    fn: Callable[[], Any], device: torch.device, warmup: int = 2, reps: int = 7, clock: str = "wall"
) -> list[float]:
    """Seconds per call of ``fn`` for ``reps`` calls after ``warmup`` untimed ones (CUDA events on GPU,
    else ``clock``: wall time or the calling thread's CPU time)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    else:
        check_clock(clock)
        timer = time.perf_counter if clock == "wall" else time.thread_time
        for _ in range(reps):
            t0 = timer()
            fn()
            times.append(timer() - t0)
    return times


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times: list[float]) -> dict[str, Any]:
    """Median, p10, p90, mean and min of a list of seconds."""
    s = sorted(times)
    return {
        "median_s": _percentile(s, 0.5),
        "p10_s": _percentile(s, 0.1),
        "p90_s": _percentile(s, 0.9),
        "mean_s": sum(s) / len(s),
        "min_s": s[0],
        "reps": len(s),
    }


def _backward(out: Any, grads: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """Back-propagate dense output gradients (as a head or the next block would send), made once."""
    leaves = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
    if grads is None:
        gen = torch.Generator().manual_seed(1)
        grads = [torch.randn(t.shape, generator=gen).to(t.device, t.dtype) for t in leaves]
    torch.autograd.backward(leaves, grads)
    return grads


def _step_fn(module: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], Any]:
    if mode == "inference":
        module.eval()

        def infer() -> Any:
            with torch.inference_mode():
                return module(x)

        return infer
    module.train()
    grads: list[list[torch.Tensor]] = []

    def train_step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        made = _backward(module(x), grads[0] if grads else None)
        if not grads:
            grads.append(made)

    return train_step


def _input(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, requires_grad: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(requires_grad)


def time_module(
    module: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    mode: str = "inference",
    warmup: int = 2,
    reps: int = 7,
    input_grad: bool = False,
    clock: str = "wall",
) -> dict[str, Any]:
    """Time ``module`` on a random ``input_shape`` batch: inference (no autograd) or a training step
    (forward + backward; ``input_grad`` also computes the input's gradient, as inside a network)."""
    _check_mode(mode)
    _check_reps(warmup, reps)
    module = module.to(device=device, dtype=dtype)
    x = _input(input_shape, device, dtype, input_grad and mode == "train")
    return summarize(time_callable(_step_fn(module, x, mode), device, warmup, reps, clock))


# --------------------------------------------------------------------------- memory


class TensorMemoryTracker(TorchDispatchMode):
    """Counts the bytes of tensor storages created by operators while active (forward and backward):
    ``current`` (live now), ``peak``; a storage counts once, from its creation until it is freed.
    Storages that existed before (weights, inputs) and in-place results are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._live.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._live or key in inputs:
                continue
            nbytes = storage.nbytes()
            self._live.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def memory_module(
    module: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    mode: str = "train",
    input_grad: bool = False,
) -> dict[str, int]:
    """Bytes allocated by one call of ``module`` beyond weights and input: ``saved_bytes`` (still live
    after the forward pass, i.e. what autograd keeps, plus the output) and ``peak_bytes`` (the
    highest point of the whole call; a training step includes backward and weight gradients)."""
    _check_mode(mode)
    module = module.to(device=device, dtype=dtype)
    x = _input(input_shape, device, dtype, input_grad and mode == "train")
    module.train(mode == "train")
    module.zero_grad(set_to_none=True)
    grads = None
    if mode == "train":  # output gradients exist before the step, like the next layer's
        grads = _backward(module(x), None)
        module.zero_grad(set_to_none=True)
        x.grad = None
    grad_ctx = torch.enable_grad if mode == "train" else torch.inference_mode
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with grad_ctx():
            out = module(x)
        torch.cuda.synchronize(device)
        saved = torch.cuda.memory_allocated(device) - base
        if mode == "train":
            _backward(out, grads)
        del out
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with TensorMemoryTracker() as tracker:
            with grad_ctx():
                out = module(x)
            saved = tracker.current
            if mode == "train":
                _backward(out, grads)
            del out
        peak = tracker.peak
    module.zero_grad(set_to_none=True)
    return {"saved_bytes": int(saved), "peak_bytes": int(peak)}


# --------------------------------------------------------------------------- units and networks


def build_unit(unit: Unit, norm: str = "bn") -> nn.Module:
    """The torch module of a unit, from the same building blocks as :mod:`bhsearch.models.resnet`."""
    from bhsearch.models.resnet import make_stage, make_stem

    if isinstance(unit, StemUnit):
        stem_spec = ResNetSpec(
            stem_width=unit.stem_width,
            stem_kernel=unit.kernel,
            stem_stride=unit.stride,
            stem_pool=unit.pool,
            deep_stem=unit.deep,
        )
        return make_stem(stem_spec, norm)
    if isinstance(unit, BlockUnit):
        return make_stage(unit.block, unit.inplanes, unit.planes, 1, unit.stride, norm)
    raise TypeError(f"no builder for unit {unit!r}")


def unit_input_grad(unit: Unit) -> bool:
    """Inside a network every unit but the stem gets an input that requires a gradient."""
    return not isinstance(unit, StemUnit)


def measure_latency(
    spec: Spec | str,
    input_size: str | tuple[int, int],
    device: str = "cpu",
    batch_size: int = 1,
    dtype: str = "float32",
    mode: str = "inference",
    warmup: int = 2,
    reps: int = 7,
    threads: int | None = None,
    norm: str = "bn",
    clock: str = "wall",
) -> dict[str, Any]:
    """Measured end-to-end latency of the backbone for ``spec``: ``median_s``, ``p10_s``, ``p90_s``,
    ``mean_s``, ``min_s``, ``reps`` and the settings it ran under. ``mode="train"`` times one
    forward + backward step (batch-norm in training mode); ``clock`` see :func:`time_callable`."""
    from bhsearch.models import build_backbone

    spec = get_spec(spec)
    width, height = parse_input_size(input_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    dev, tdtype = resolve_device(device), resolve_dtype(dtype)
    n_threads = set_threads(threads)
    steady_allocator()
    torch.manual_seed(0)
    model = build_backbone(spec, norm=norm)
    result = time_module(model, (batch_size, 3, height, width), dev, tdtype, mode, warmup, reps, clock=clock)
    return {
        **result,
        "spec": spec.id,
        "input_size": [width, height],
        "mode": mode,
        "device": dev.type,
        "device_name": device_name(dev),
        "batch_size": batch_size,
        "dtype": dtype,
        "threads": n_threads,
        "norm": norm,
        "clock": "cuda-events" if dev.type == "cuda" else clock,
    }


def measure_latencies(
    specs: list[Spec | str],
    input_size: str | tuple[int, int],
    device: str = "cpu",
    warmup: int = 2,
    reps: int = 7,
    threads: int | None = None,
    clock: str = "wall",
    norm: str = "bn",
) -> dict[str, dict[str, Any]]:
    """Batch-1 inference latency of several backbones, **interleaved**: after every model's warm-up, each of
    ``reps`` rounds times one pass of every model in turn, so a slow spell of the machine (another process,
    frequency scaling) hits all of them alike instead of one. Returns :func:`summarize` per spec id."""
    from bhsearch.models import build_backbone

    width, height = parse_input_size(input_size)
    _check_reps(warmup, reps)
    dev = resolve_device(device)
    set_threads(threads)
    steady_allocator()
    steps: dict[str, Callable[[], Any]] = {}
    for spec in specs:
        spec = get_spec(spec)
        torch.manual_seed(0)
        model = build_backbone(spec).to(dev)
        steps[spec.id] = _step_fn(model, _input((1, 3, height, width), dev, torch.float32, False), "inference")
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():
        time_callable(fn, dev, warmup, 0, clock)
    for _ in range(reps):
        for spec_id, fn in steps.items():
            times[spec_id] += time_callable(fn, dev, 0, 1, clock)
    return {k: summarize(v) for k, v in times.items()}


def measure_train_memory(
    spec: Spec | str,
    input_size: str | tuple[int, int],
    batch_size: int = 1,
    dtype: str = "float32",
    device: str = "cpu",
    norm: str = "bn",
) -> dict[str, int]:
    """Measured memory of one training step of the backbone: ``saved_bytes`` (kept by autograd after
    forward), ``peak_bytes`` (highest point of forward + backward beyond weights and input) and
    ``param_bytes``; compare with :func:`bhsearch.latency.train_memory_breakdown`."""
    from bhsearch.models import build_backbone

    spec = get_spec(spec)
    width, height = parse_input_size(input_size)
    dev, tdtype = resolve_device(device), resolve_dtype(dtype)
    torch.manual_seed(0)
    model = build_backbone(spec, norm=norm)
    result = memory_module(model, (batch_size, 3, height, width), dev, tdtype, "train")
    result["param_bytes"] = sum(p.numel() for p in model.parameters()) * DTYPE_BYTES[dtype]
    return result


__all__ = [
    "TensorMemoryTracker",
    "build_unit",
    "device_name",
    "measure_latencies",
    "measure_latency",
    "measure_train_memory",
    "memory_module",
    "resolve_device",
    "resolve_dtype",
    "set_threads",
    "steady_allocator",
    "summarize",
    "time_callable",
    "time_module",
    "unit_input_grad",
]

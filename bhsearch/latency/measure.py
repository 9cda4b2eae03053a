"""Timing and memory measurement of units and whole backbones (imports torch).

Times are wall-clock per call on CPU (``time.perf_counter``; ``clock="cpu"`` uses the calling
thread's CPU time instead, which other processes on a shared machine do not inflate, valid with one
intra-op thread) and CUDA events on GPU, after
warm-up, summarised by the median and the 10th/90th percentiles. ``runtime="onnxruntime"`` times
the module exported to ONNX (``torch.onnx.export(dynamo=False)``) in an onnxruntime CPU session with
``intra_op_num_threads`` = the thread count and sequential execution (inference only);
``runtime="compile"`` times ``torch.compile(module)`` (inductor; compiled during warm-up, inference
only). Memory on GPU comes from the
CUDA caching allocator (``max_memory_allocated``); on CPU from :class:`TensorMemoryTracker`, which
follows every tensor storage created by an operator (forward and backward) until it is freed.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bhsearch.errors import UsageError
from bhsearch.latency.table import RUNTIMES, percentile, spread
from bhsearch.latency.units import DTYPE_BYTES, BlockUnit, HRNetUnit, StemUnit, Unit
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


#: Least warm-up time (seconds) of :func:`time_module` when it warms up at all: onnxruntime sessions and
#: oneDNN primitives run their first 2-4 calls up to 2x slower (thread pools spinning up, memory arenas
#: growing), so a fixed single warm-up call left 30-50 % spread in millisecond units on this project's
#: CPU machine and biased their medians upwards.
WARMUP_S = 0.25

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


class CpuAccount:
    """Wall time and process CPU time (all threads) spent in timed passes, summed over calls of
    :func:`time_callable`; ``ratio`` below 1 with one thread means the process waited for a core."""

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0

    @property
    def ratio(self) -> float | None:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else None


def time_callable(
    fn: Callable[[], Any],
    device: torch.device,
    warmup: int = 2,
    reps: int = 7,
    clock: str = "wall",
    account: CpuAccount | None = None,
    warmup_s: float = 0.0,
) -> list[float]:
    """Seconds per call of ``fn`` for ``reps`` calls after ``warmup`` untimed ones, and more untimed ones
    until ``warmup_s`` seconds of warm-up have passed (CUDA events on GPU, else ``clock``: wall time or
    the calling thread's CPU time). ``account`` adds the timed passes' wall and process CPU time."""
    w0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    while warmup and time.perf_counter() - w0 < warmup_s:
        fn()
    times = []
    w0, c0 = time.perf_counter(), time.process_time()
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
    if account is not None:
        account.wall_s += time.perf_counter() - w0
        account.cpu_s += time.process_time() - c0
    return times


def summarize(times: list[float]) -> dict[str, Any]:
    """Median, p10, p90, mean, min and relative spread ((p90 - p10) / median) of a list of seconds."""
    s = sorted(times)
    median, p10, p90 = percentile(s, 0.5), percentile(s, 0.1), percentile(s, 0.9)
    return {
        "median_s": median,
        "p10_s": p10,
        "p90_s": p90,
        "mean_s": sum(s) / len(s),
        "min_s": s[0],
        "spread": spread(p10, p90, median),
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
        _clear_grad(x)
        made = _backward(module(x), grads[0] if grads else None)
        if not grads:
            grads.append(made)

    return train_step


def _clear_grad(x: Any) -> None:
    for t in x if isinstance(x, list) else [x]:
        t.grad = None


def _multi(shape: Any) -> bool:
    """True for a list of shapes (a unit with several inputs: HRNet transitions and fuse layers)."""
    return bool(shape) and not isinstance(shape[0], int)


def _input(shape: Any, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> Any:
    """A random tensor of ``shape``, or a list of them for a list of shapes."""
    gen = torch.Generator().manual_seed(0)
    shapes = list(shape) if _multi(shape) else [shape]
    xs = [torch.randn(tuple(s), generator=gen).to(device=device, dtype=dtype).requires_grad_(requires_grad)
          for s in shapes]  # fmt: skip
    return xs if _multi(shape) else xs[0]


def check_runtime(runtime: str, mode: str = "inference", device: torch.device | None = None) -> None:
    """UsageError for an unknown runtime, a training step or CUDA under onnxruntime, or a missing onnxruntime."""
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime == "torch":
        return
    if mode != "inference":
        raise UsageError(f"runtime {runtime} times inference only; got mode {mode!r}")
    if runtime == "compile":
        return
    if device is not None and device.type != "cpu":
        raise UsageError(f"runtime {runtime} is profiled on cpu only; got device {device.type!r}")
    onnxruntime_version()


def onnxruntime_version() -> str:
    """The installed onnxruntime's version; UsageError (one line) when onnxruntime or onnx is missing."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime
    except ImportError as exc:
        raise UsageError(
            f"--runtime onnxruntime needs onnxruntime and onnx ({exc.name or exc} is missing): "
            "pip install 'bhsearch[export]'"
        ) from None
    return str(onnxruntime.__version__)


class _Flat(nn.Module):
    """A module with positional tensor inputs and a tuple output, for ONNX export of list-in/list-out units."""

    def __init__(self, module: nn.Module, multi: bool) -> None:
        super().__init__()
        self.module, self.multi = module, multi

    def forward(self, *xs: torch.Tensor) -> Any:
        out = self.module(list(xs) if self.multi else xs[0])
        return tuple(out) if isinstance(out, (list, tuple)) else out


def onnx_step(module: nn.Module, x: Any, threads: int) -> Callable[[], Any]:
    """One inference pass of ``module`` on ``x`` in an onnxruntime CPU session (the module is exported
    to ONNX with the TorchScript exporter in eval mode; ``intra_op_num_threads = threads``, sequential)."""
    import warnings

    import onnxruntime as ort

    multi = isinstance(x, list)
    xs = list(x) if multi else [x]
    flat = _Flat(module.eval(), multi)
    names = [f"x{i}" for i in range(len(xs))]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "unit.onnx")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(flat, tuple(xs), path, input_names=names, opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, xs, strict=True)}

    def infer() -> Any:
        return session.run(None, feeds)

    return infer


def time_module(
    module: nn.Module,
    input_shape: Any,
    device: torch.device,
    dtype: torch.dtype,
    mode: str = "inference",
    warmup: int = 2,
    reps: int = 7,
    input_grad: bool = False,
    clock: str = "wall",
    runtime: str = "torch",
    account: CpuAccount | None = None,
) -> dict[str, Any]:
    """Time ``module`` on a random ``input_shape`` batch (a list of shapes for several inputs):
    inference (no autograd) or a training step (forward + backward; ``input_grad`` also computes the
    input's gradient, as inside a network). ``runtime="onnxruntime"``: inference in onnxruntime.
    With ``warmup`` >= 1 the warm-up lasts at least ``WARMUP_S`` seconds; the allocator is
    :func:`steady_allocator`'s, so units and whole networks are timed alike."""
    _check_mode(mode)
    _check_reps(warmup, reps)
    check_runtime(runtime, mode, device)
    steady_allocator()
    module = module.to(device=device, dtype=dtype)
    x = _input(input_shape, device, dtype, input_grad and mode == "train")
    if runtime == "onnxruntime":
        fn = onnx_step(module, x, torch.get_num_threads())
    elif runtime == "compile":  # compiled on the first call: never time it
        fn, warmup = _step_fn(torch.compile(module), x, mode), max(1, warmup)
    else:
        fn = _step_fn(module, x, mode)
    return summarize(time_callable(fn, device, warmup, reps, clock, account, warmup_s=WARMUP_S))


class _Pointwise(nn.Module):
    """One depthwise 1x1 convolution per tensor of a list (channel counts ``channels``): a cheap
    operator onnxruntime keeps in its blocked layout (a dense 1x1 convolution on 128 channels at 320x256
    cost twice the unit it surrounded, and its noise at 2 threads swamped the unit)."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 1, groups=c) for c in channels)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.convs, xs, strict=True)]


class _InContext(nn.Module):
    """A unit between depthwise 1x1 convolutions on its inputs (unless it reads the network's input) and outputs:
    in onnxruntime its boundary tensors then stay in the blocked layout its convolutions use, and its
    residual additions fuse into them, as inside a network."""

    def __init__(self, unit: nn.Module, multi: bool, inputs: list[int] | None, outputs: list[int]) -> None:
        super().__init__()
        self.unit, self.multi = unit, multi
        self.pre = _Pointwise(inputs) if inputs is not None else None
        self.post = _Pointwise(outputs)

    def forward(self, x: Any) -> tuple[torch.Tensor, ...]:
        xs = x if self.multi else [x]
        if self.pre is not None:
            xs = self.pre(xs)
        out = self.unit(xs if self.multi else xs[0])
        return tuple(self.post(list(out) if isinstance(out, (list, tuple)) else [out]))


class _Context(nn.Module):
    """The context of :class:`_InContext` alone: two depthwise 1x1 convolutions in a row per tensor."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.pre, self.post = _Pointwise(channels), _Pointwise(channels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(self.post(self.pre(xs)))


def time_in_context(
    module: nn.Module,
    input_shape: Any,
    device: torch.device,
    dtype: torch.dtype,
    reads_input: bool = False,
    warmup: int = 2,
    reps: int = 7,
    clock: str = "wall",
    account: CpuAccount | None = None,
) -> dict[str, Any]:
    """onnxruntime inference time of a unit as inside a network: the unit between depthwise 1x1 convolutions
    on its inputs and outputs (:class:`_InContext`; ``reads_input``: the unit reads the network's input, the
    stem, and gets none on its inputs) less half the time of those convolutions alone on its inputs and
    half on its outputs (``context_s``; for a unit whose inputs and outputs have the same shapes that is
    the context's whole cost). A unit timed alone in onnxruntime converts its input and output between
    the plain and the blocked layout and adds its shortcut in the plain one, which a network does not
    (docs/latency.md, "Units in context")."""
    x = _input(input_shape, device, dtype, False)
    with torch.no_grad():
        out = module.eval()(x)
    in_shapes = [tuple(t.shape) for t in (x if isinstance(x, list) else [x])]
    out_shapes = [tuple(t.shape) for t in (out if isinstance(out, (list, tuple)) else [out])]
    ins, outs = [s[1] for s in in_shapes], [s[1] for s in out_shapes]
    kw = dict(warmup=warmup, reps=reps, clock=clock, runtime="onnxruntime", account=account)
    wrapped = _InContext(module, isinstance(x, list), None if reads_input else ins, outs)
    total = time_module(wrapped, input_shape, device, dtype, **kw)
    after = time_module(_Context(outs), out_shapes, device, dtype, **kw)
    if reads_input:
        before = {"median_s": 0.0, "min_s": 0.0}
    elif in_shapes == out_shapes:
        before = after
    else:
        before = time_module(_Context(ins), in_shapes, device, dtype, **kw)
    context = {k: (before[k] + after[k]) / 2 for k in ("median_s", "min_s")}
    median = max(0.0, total["median_s"] - context["median_s"])
    p10, p90 = (max(0.0, total[k] - context["median_s"]) for k in ("p10_s", "p90_s"))
    return {
        **total,
        "median_s": median,
        "mean_s": max(0.0, total["mean_s"] - context["median_s"]),
        "min_s": max(0.0, total["min_s"] - context["min_s"]),
        "p10_s": p10,
        "p90_s": p90,
        "spread": spread(p10, p90, median),
        "context_s": context["median_s"],
    }


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
        _clear_grad(x)
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
    """The torch module of a unit, from the same building blocks as :mod:`bhsearch.models.resnet`
    (HRNet units: :func:`bhsearch.models.hrnet.build_unit`)."""
    from bhsearch.models.resnet import make_stage, make_stem

    if isinstance(unit, HRNetUnit):
        from bhsearch.models.hrnet import build_unit as build_hrnet_unit

        return build_hrnet_unit(unit.part, norm)[0]
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
    if isinstance(unit, HRNetUnit):
        return not unit.is_stem
    return not isinstance(unit, StemUnit)


def unit_input_shape(unit: Unit, batch_size: int) -> Any:
    """The batched input shape of a unit: a list of shapes for units that take a list of branches
    (HRNet transitions and fuse layers), else one shape."""
    shapes = [(batch_size, *s) for s in unit.in_shapes]
    multi = isinstance(unit, HRNetUnit) and unit.part.kind in ("transition", "fuse")
    return shapes if multi else shapes[0]


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
    runtime: str = "torch",
    account: CpuAccount | None = None,
) -> dict[str, Any]:
    """Measured end-to-end latency of the backbone for ``spec``: ``median_s``, ``p10_s``, ``p90_s``,
    ``mean_s``, ``min_s``, ``spread``, ``reps`` and the settings it ran under. ``mode="train"`` times one
    forward + backward step (batch-norm in training mode); ``clock`` see :func:`time_callable`;
    ``runtime="onnxruntime"`` the backbone exported to ONNX in onnxruntime (inference)."""
    from bhsearch.models import build_backbone

    spec = get_spec(spec)
    width, height = parse_input_size(input_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    dev, tdtype = resolve_device(device), resolve_dtype(dtype)
    n_threads = set_threads(threads)
    steady_allocator()
    torch.manual_seed(0)
    check_runtime(runtime, mode, dev)
    model = build_backbone(spec, norm=norm)
    if runtime != "torch":
        model = _DictToTuple(model)
    shape = (batch_size, 3, height, width)
    result = time_module(model, shape, dev, tdtype, mode, warmup, reps, clock=clock, runtime=runtime, account=account)
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
        "runtime": runtime,
    }


class _DictToTuple(nn.Module):
    """A backbone whose dict output becomes a tuple (ONNX graphs return tuples)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(x).values())


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
    "CpuAccount",
    "TensorMemoryTracker",
    "build_unit",
    "check_runtime",
    "device_name",
    "measure_latencies",
    "measure_latency",
    "measure_train_memory",
    "memory_module",
    "onnx_step",
    "onnxruntime_version",
    "resolve_device",
    "resolve_dtype",
    "set_threads",
    "steady_allocator",
    "summarize",
    "time_callable",
    "time_module",
    "unit_input_grad",
    "unit_input_shape",
]

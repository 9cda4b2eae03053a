"""Latency units: the distinct building blocks a network is timed by, and analytic training memory.

A *unit* is the smallest piece whose time does not depend on its neighbours: the stem, or one
residual block with a given (type, input channels, width, stride, input resolution). A ResNet is
a sum of units, and a design space produces few distinct ones (every non-first block of a stage is
the same unit), so a lookup table of measured units predicts every candidate of the space.

An HRNet is a sum of :class:`HRNetUnit` s, the descriptors of :func:`bhsearch.cost_hrnet.hrnet_units`:
the stem, each stage-1 block, the optional max-pool, each transition, each branch block (at its
width and resolution) and each module's fuse layers. Depth in an HRNet space repeats the same
branch blocks and fuse layers, so its table is as small as a ResNet's.

Pure Python, no torch: the solver enumerates units for every candidate it ranks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Union

from bhsearch.errors import UsageError
from bhsearch.spec import EXPANSION, HRNetSpec, ResNetSpec, Spec, get_spec, parse_input_size

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
STATS_BYTES = 4  # batch-norm save_mean / save_invstd stay float32 for every input dtype
INDEX_BYTES = 8  # max-pool indices are int64


def conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return (n + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class StemUnit:
    """A ResNet stem (conv or deep stem, norm, ReLU, optional 3x3/s2 max-pool) on a ``3 x height x width`` input."""

    stem_width: int
    kernel: int
    stride: int
    pool: bool
    deep: bool
    height: int
    width: int

    kind = "resnet-stem"

    @classmethod
    def of(cls, spec: ResNetSpec, height: int, width: int) -> StemUnit:
        return cls(spec.stem_width, 3 if spec.deep_stem else spec.stem_kernel, spec.stem_stride, spec.stem_pool,
                   spec.deep_stem, height, width)  # fmt: skip

    @property
    def key(self) -> str:
        code = ("deep" if self.deep else f"k{self.kernel}") + f"s{self.stride}" + ("p" if self.pool else "")
        return f"resnet-stem:{code}:c{self.stem_width}:{self.width}x{self.height}"

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (3, self.height, self.width)

    @property
    def in_shapes(self) -> tuple[tuple[int, int, int], ...]:
        return (self.in_shape,)

    @property
    def conv_shape(self) -> tuple[int, int]:
        k = 3 if self.deep else self.kernel
        return conv_out(self.height, k, self.stride, k // 2), conv_out(self.width, k, self.stride, k // 2)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        h, w = self.conv_shape
        if self.pool:
            h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        return (self.stem_width, h, w)

    def params(self) -> int:
        c = self.stem_width
        if self.deep:
            half = c // 2
            return 27 * half + 9 * half * half + 9 * half * c + 2 * (half + half + c)
        return self.kernel * self.kernel * 3 * c + 2 * c

    def saved(self) -> tuple[int, int, int]:
        """(activation elements, float32 norm statistics, int64 indices) autograd keeps per image."""
        h, w = self.conv_shape
        c = self.stem_width
        widths = (c // 2, c // 2, c) if self.deep else (c,)
        elems = sum(2 * ch * h * w for ch in widths)  # conv output (kept by norm) + norm/ReLU output
        stats = sum(2 * ch for ch in widths)
        indices = 0
        if self.pool:
            _, ph, pw = self.out_shape
            elems += c * ph * pw  # pooled output, kept by the next convs
            indices = c * ph * pw
        return elems, stats, indices

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class BlockUnit:
    """One residual block (``basic`` or ``bottleneck``) on an ``inplanes x height x width`` input."""

    block: str
    inplanes: int
    planes: int
    stride: int
    height: int
    width: int

    kind = "resnet-block"

    @property
    def outplanes(self) -> int:
        return self.planes * EXPANSION[self.block]

    @property
    def downsample(self) -> bool:
        return self.stride != 1 or self.inplanes != self.outplanes

    @property
    def key(self) -> str:
        return f"resnet-{self.block}:{self.inplanes}>{self.planes}:s{self.stride}:{self.width}x{self.height}"

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (self.inplanes, self.height, self.width)

    @property
    def in_shapes(self) -> tuple[tuple[int, int, int], ...]:
        return (self.in_shape,)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.outplanes, conv_out(self.height, 3, self.stride, 1), conv_out(self.width, 3, self.stride, 1))

    def params(self) -> int:
        i, p, o = self.inplanes, self.planes, self.outplanes
        if self.block == "bottleneck":
            n = i * p + 9 * p * p + p * o + 2 * (p + p + o)
        else:
            n = 9 * i * p + 9 * p * p + 2 * (p + p)
        if self.downsample:
            n += i * o + 2 * o
        return n

    def saved(self) -> tuple[int, int, int]:
        """(activation elements, float32 norm statistics, int64 indices) autograd keeps per image.

        Every conv+norm(+ReLU) keeps the conv output (for the norm's backward) and the norm/ReLU output
        (for the ReLU's and the next conv's backward); the downsample keeps only its conv output (its
        norm output is consumed by the residual add). The block input was counted by its producer.
        """
        _, h2, w2 = self.out_shape
        p, o = self.planes, self.outplanes
        if self.block == "bottleneck":
            elems = 2 * p * self.height * self.width + 2 * p * h2 * w2 + 2 * o * h2 * w2
            stats = 2 * (p + p + o)
        else:
            elems = 4 * p * h2 * w2
            stats = 2 * (p + p)
        if self.downsample:
            elems += o * h2 * w2
            stats += 2 * o
        return elems, stats, 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


def _sizes_code(sizes: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{w}x{h}" for h, w in sizes)


def _channels_code(channels: tuple[int, ...]) -> str:
    return "-".join(str(c) for c in channels)


def hrnet_unit_key(part: Any) -> str:
    """The table key of an HRNet unit descriptor of :mod:`bhsearch.cost_hrnet` (sizes are WxH)."""
    kind = part.kind
    if kind == "stem":
        a, b = part.strides
        return f"hrnet-stem:s{a}{b}:{part.in_channels}>{part.channels}:{part.width}x{part.height}"
    if kind == "block":
        return f"hrnet-{part.block}:{part.in_channels}>{part.planes}:s{part.stride}:{part.width}x{part.height}"
    if kind == "pool":
        return f"hrnet-pool:c{part.channels}:{part.width}x{part.height}"
    if kind == "transition":
        return (
            f"hrnet-transition:{_channels_code(part.in_channels)}>{_channels_code(part.out_channels)}:"
            f"{_sizes_code(part.sizes)}"
        )
    if kind == "fuse":
        single = "" if part.multi_scale_output else ":single"
        return f"hrnet-fuse:{_channels_code(part.channels)}:{_sizes_code(part.sizes)}{single}"
    raise UsageError(f"unknown HRNet unit {part!r}")


@dataclass(frozen=True)
class HRNetUnit:
    """One HRNet unit: ``part`` is its :mod:`bhsearch.cost_hrnet` descriptor (stem, block, pool,
    transition or fuse layers), ``key`` its table key; built by :func:`bhsearch.models.hrnet.build_unit`."""

    part: Any
    key: str

    kind = "hrnet"

    @classmethod
    def of(cls, part: Any) -> HRNetUnit:
        return cls(part, hrnet_unit_key(part))

    @property
    def in_shapes(self) -> tuple[tuple[int, int, int], ...]:
        p = self.part
        if p.kind == "stem":
            return ((p.in_channels, p.height, p.width),)
        if p.kind == "block":
            return ((p.in_channels, p.height, p.width),)
        if p.kind == "pool":
            return ((p.channels, p.height, p.width),)
        channels = p.in_channels if p.kind == "transition" else p.channels
        return tuple((c, h, w) for c, (h, w) in zip(channels, p.sizes, strict=True))

    @property
    def out_shape(self) -> tuple[int, int, int]:
        from bhsearch.cost_hrnet import unit_out_shape

        return unit_out_shape(self.part)

    @property
    def is_stem(self) -> bool:
        return self.part.kind == "stem"

    def to_dict(self) -> dict[str, Any]:
        d = self.part.to_dict()
        return {"kind": f"hrnet-{d.pop('kind')}", **d}


Unit = Union[StemUnit, BlockUnit, HRNetUnit]
UNIT_TYPES = {StemUnit.kind: StemUnit, BlockUnit.kind: BlockUnit}


def _hrnet_part(kind: str, data: dict[str, Any]) -> Any:
    from bhsearch import cost_hrnet as ch

    classes = {"stem": ch.StemUnit, "block": ch.BlockUnit, "pool": ch.PoolUnit,
               "transition": ch.TransitionUnit, "fuse": ch.FuseUnit}  # fmt: skip
    cls = classes.get(kind)
    if cls is None:
        raise UsageError(f"unknown latency unit kind hrnet-{kind}")

    def tup(v: Any) -> Any:
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    return cls(**{k: tup(v) for k, v in data.items()})


def unit_from_dict(data: dict[str, Any]) -> Unit:
    """Rebuild a unit from :meth:`to_dict` output (e.g. a lookup-table entry)."""
    data = dict(data)
    kind = data.pop("kind", None)
    try:
        if isinstance(kind, str) and kind.startswith("hrnet-"):
            return HRNetUnit.of(_hrnet_part(kind[len("hrnet-") :], data))
        cls = UNIT_TYPES.get(kind)
        if cls is None:
            raise UsageError(f"unknown latency unit kind in {data!r}")
        return cls(**data)
    except TypeError as exc:
        raise UsageError(f"invalid latency unit {data!r}: {exc}") from None


@lru_cache(maxsize=65536)
def _resnet_units(spec: ResNetSpec, height: int, width: int) -> tuple[Unit, ...]:
    stem = StemUnit.of(spec, height, width)
    units: list[Unit] = [stem]
    channels, h, w = stem.out_shape
    for n, planes, stride in zip(spec.blocks, spec.widths, spec.strides, strict=True):
        for i in range(n):
            unit = BlockUnit(spec.block, channels, planes, stride if i == 0 else 1, h, w)
            units.append(unit)
            channels, h, w = unit.out_shape
    return tuple(units)


@lru_cache(maxsize=65536)
def _hrnet_unit(part: Any) -> HRNetUnit:
    """The (shared) unit of a descriptor: its key is formatted once per distinct descriptor."""
    return HRNetUnit.of(part)


@lru_cache(maxsize=4096)
def _hrnet_front(
    sw: int, strides: tuple[int, ...], block: str, planes: int, n: int, pool: bool, height: int, width: int
) -> tuple[tuple[HRNetUnit, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Stem, stage-1 blocks and the optional max-pool: units, branch channels and sizes after them."""
    from bhsearch import cost_hrnet as ch

    _, h, w = ch.stem_cost(3, sw, strides, height, width)
    units = [
        _hrnet_unit(ch.StemUnit(3, sw, strides, height, width)),
        _hrnet_unit(ch.BlockUnit(block, sw, planes, 1, h, w)),
    ]
    cout = planes * EXPANSION[block]
    units += [_hrnet_unit(ch.BlockUnit(block, cout, planes, 1, h, w))] * (n - 1)
    if pool:
        units.append(_hrnet_unit(ch.PoolUnit(cout, h, w)))
        _, h, w = ch.pool_cost(cout, h, w)
    return tuple(units), (cout,), ((h, w),)


@lru_cache(maxsize=16384)
def _hrnet_stage(
    stage: Any, channels: tuple[int, ...], sizes: tuple[tuple[int, int], ...]
) -> tuple[tuple[HRNetUnit, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    """A multi-branch stage (its incoming transition, then per module the branch blocks and fuse layers)."""
    from bhsearch import cost_hrnet as ch

    out = tuple(wd * EXPANSION[stage.block] for wd in stage.widths)
    _, new_sizes = ch.transition_cost(channels, out, sizes)
    module: list[HRNetUnit] = []
    for wd, nb, c, (bh, bw) in zip(stage.widths, stage.blocks, out, new_sizes, strict=True):
        module += [_hrnet_unit(ch.BlockUnit(stage.block, c, wd, 1, bh, bw))] * nb
    module.append(_hrnet_unit(ch.FuseUnit(out, new_sizes, True)))
    units = (_hrnet_unit(ch.TransitionUnit(channels, out, sizes)), *module * stage.modules)
    return units, out, new_sizes


@lru_cache(maxsize=65536)
def _hrnet_units(spec: HRNetSpec, height: int, width: int) -> tuple[HRNetUnit, ...]:
    """The units in the order of :func:`bhsearch.cost_hrnet.hrnet_units`, built from cached stages (the
    solver meets many candidates that share their stem, stage 1 or a stage)."""
    units, channels, sizes = _hrnet_front(
        spec.stem_width, tuple(spec.stem_strides), spec.stage1_block, spec.stage1_width, spec.stage1_blocks,
        spec.pool_after_stage1, height, width,
    )  # fmt: skip
    for st in spec.stages:
        more, channels, sizes = _hrnet_stage(st, channels, sizes)
        units += more
    return units


def network_units(spec: Spec | str, input_size: str | tuple[int, int]) -> tuple[Unit, ...]:
    """The units of ``spec`` at ``input_size`` (``WIDTHxHEIGHT``), in execution order (cached)."""
    spec = get_spec(spec)
    width, height = parse_input_size(input_size)
    if isinstance(spec, ResNetSpec):
        return _resnet_units(spec, height, width)
    if isinstance(spec, HRNetSpec):
        return _hrnet_units(spec, height, width)
    raise UsageError(f"latency tables cover resnet- and hrnet-family specs; {spec.family} ({spec.id}) is not")


@lru_cache(maxsize=65536)
def input_elements(unit: Unit) -> int:
    """Elements of one image's input tensors of ``unit``: the data each unit timed alone reads from
    outside (and its predecessor wrote), the variable of the profile's boundary term."""
    return sum(c * h * w for c, h, w in unit.in_shapes)


def _dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPE_BYTES)}; got {dtype!r}")
    return DTYPE_BYTES[dtype]


def train_memory_breakdown(
    spec: Spec | str, input_size: str | tuple[int, int], batch_size: int = 1, dtype: str = "float32"
) -> dict[str, int]:
    """Analytic memory of one training step of the backbone (batch-norm in training mode), in bytes.

    ``activations``: tensors autograd keeps from the forward pass until backward (conv and norm
    outputs, batch-norm statistics, max-pool indices; the input image is the caller's);
    ``params`` and ``grads``: weights and their gradients in ``dtype``; ``total``: their sum.
    Transient buffers of single ops and optimizer state are not included.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    nbytes = _dtype_bytes(dtype)
    if not isinstance(get_spec(spec), ResNetSpec):
        raise UsageError(f"analytic training memory covers resnet-family specs; {get_spec(spec).id} is not one")
    elems = stats = indices = params = 0
    for unit in network_units(spec, input_size):
        e, s, i = unit.saved()
        elems, stats, indices, params = elems + e, stats + s, indices + i, params + unit.params()
    activations = batch_size * (elems * nbytes + indices * INDEX_BYTES) + stats * STATS_BYTES
    weights = params * nbytes
    return {"activations": activations, "params": weights, "grads": weights, "total": activations + 2 * weights}


def train_memory_bytes(
    spec: Spec | str, input_size: str | tuple[int, int], batch_size: int = 1, dtype: str = "float32"
) -> int:
    """Analytic training-step memory in bytes: saved activations + weights + gradients
    (see :func:`train_memory_breakdown`)."""
    return train_memory_breakdown(spec, input_size, batch_size, dtype)["total"]


__all__ = [
    "BlockUnit",
    "DTYPE_BYTES",
    "HRNetUnit",
    "StemUnit",
    "Unit",
    "conv_out",
    "input_elements",
    "hrnet_unit_key",
    "network_units",
    "train_memory_breakdown",
    "train_memory_bytes",
    "unit_from_dict",
]

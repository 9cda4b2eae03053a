"""Closed-form cost of HRNet-family specs, mirroring :mod:`bhsearch.models.hrnet` layer by layer.

Conventions are those of :mod:`bhsearch.cost` (conv MACs; paper FLOPs = MACs + 2/BN output
element + 1/ReLU output element + 1/max-pool input element + 1/up-sample output element;
residual and fuse additions not counted; params include the norm affine weights).

Stages: ``stem`` (two convs), ``stage1`` (``layer1`` and, for bottom-heavy specs, the max-pool
that follows it), then ``stage2``, ``stage3``, ... each holding the transition *into* it
(``transition1`` belongs to ``stage2``) and all its modules, fuse layers included. A stage's
``out_shape`` is its newest (lowest-resolution) branch, the one the paper's Table 4 shows.

Spatial sizes follow the convolutions: ``floor((H + 2p - k) / s) + 1``, i.e. ``ceil(H / 2)`` for
every stride-2 3x3 conv and the max-pool. The fuse up-sampling is nearest by ``2**k`` and is
counted at its full output size (before the builder crops an odd overshoot).

:func:`hrnet_units` yields every unit (stem, each block, pool, each transition, each module's
fuse layers) as a hashable descriptor with its cost; the latency profiler keys on them and
:func:`bhsearch.models.hrnet.build_unit` builds them. This module does not import torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import NamedTuple, Union

from bhsearch.cost import CostReport, StageCost
from bhsearch.spec import EXPANSION, HRNetSpec

# A cost as a plain tuple for speed: (params, conv_params, macs, flops, activations).
Cost = tuple[int, int, int, int, int]
ZERO: Cost = (0, 0, 0, 0, 0)


def _add(*costs: Cost) -> Cost:
    p = cp = m = f = a = 0
    for c in costs:
        p, cp, m, f, a = p + c[0], cp + c[1], m + c[2], f + c[3], a + c[4]
    return p, cp, m, f, a


def _out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _half(size: int) -> int:
    """Output size of a 3x3 stride-2 padding-1 conv or max-pool."""
    return _out(size, 3, 2, 1)


def _conv_bn(cin: int, cout: int, k: int, s: int, h: int, w: int, relu: bool) -> tuple[Cost, int, int]:
    """conv (no bias) + BN (+ ReLU); returns the cost and the output (H, W)."""
    p = k // 2
    ho, wo = _out(h, k, s, p), _out(w, k, s, p)
    weights = cin * cout * k * k
    elts = cout * ho * wo
    macs = weights * elts // cout
    flops = macs + 2 * elts + (elts if relu else 0)
    return (weights + 2 * cout, weights, macs, flops, elts), ho, wo


# --------------------------------------------------------------------------- unit descriptors


class _UnitMixin:
    kind = ""

    def to_dict(self) -> dict:
        """JSON-ready ``{"kind": ..., field: value}`` (tuples become lists)."""
        return {"kind": self.kind, **json.loads(json.dumps(asdict(self)))}  # type: ignore[call-overload]


@dataclass(frozen=True)
class StemUnit(_UnitMixin):
    """Two 3x3 conv-BN-ReLU of ``channels`` channels; input ``(in_channels, height, width)``."""

    in_channels: int
    channels: int
    strides: tuple[int, int]
    height: int
    width: int
    kind = "stem"


@dataclass(frozen=True)
class BlockUnit(_UnitMixin):
    """One residual block (``block`` = basic/bottleneck) on an input of ``(in_channels, height, width)``."""

    block: str
    in_channels: int
    planes: int
    stride: int
    height: int
    width: int
    kind = "block"


@dataclass(frozen=True)
class PoolUnit(_UnitMixin):
    """3x3 stride-2 max-pool on ``(channels, height, width)``."""

    channels: int
    height: int
    width: int
    kind = "pool"


@dataclass(frozen=True)
class TransitionUnit(_UnitMixin):
    """Transition from branches ``in_channels`` (sizes ``sizes``) to ``out_channels``."""

    in_channels: tuple[int, ...]
    out_channels: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    kind = "transition"


@dataclass(frozen=True)
class FuseUnit(_UnitMixin):
    """Fuse layers of one module over branches ``channels`` of sizes ``sizes``."""

    channels: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    multi_scale_output: bool = True
    kind = "fuse"


Unit = Union[StemUnit, BlockUnit, PoolUnit, TransitionUnit, FuseUnit]


class UnitCost(NamedTuple):
    """One unit of an HRNet with its stage, cost and output shape(s)."""

    stage: str
    unit: Unit
    cost: StageCost


# --------------------------------------------------------------------------- unit costs


@lru_cache(maxsize=65536)
def stem_cost(in_channels: int, channels: int, strides: tuple[int, int], h: int, w: int) -> tuple[Cost, int, int]:
    c1, h, w = _conv_bn(in_channels, channels, 3, strides[0], h, w, True)
    c2, h, w = _conv_bn(channels, channels, 3, strides[1], h, w, True)
    return _add(c1, c2), h, w


@lru_cache(maxsize=65536)
def block_cost(block: str, cin: int, planes: int, stride: int, h: int, w: int) -> tuple[Cost, int, int]:
    """Cost of one residual block and its output (H, W); output channels ``planes * expansion``."""
    out = planes * EXPANSION[block]
    if block == "basic":
        a, ho, wo = _conv_bn(cin, planes, 3, stride, h, w, True)
        b, _, _ = _conv_bn(planes, planes, 3, 1, ho, wo, False)
        parts = [a, b]
    else:
        a, _, _ = _conv_bn(cin, planes, 1, 1, h, w, True)
        b, ho, wo = _conv_bn(planes, planes, 3, stride, h, w, True)
        c, _, _ = _conv_bn(planes, out, 1, 1, ho, wo, False)
        parts = [a, b, c]
    if stride != 1 or cin != out:
        parts.append(_conv_bn(cin, out, 1, stride, h, w, False)[0])
    parts.append((0, 0, 0, out * ho * wo, 0))  # ReLU after the residual addition
    return _add(*parts), ho, wo


@lru_cache(maxsize=65536)
def pool_cost(channels: int, h: int, w: int) -> tuple[Cost, int, int]:
    return (0, 0, 0, channels * h * w, 0), _half(h), _half(w)


@lru_cache(maxsize=65536)
def transition_cost(
    in_channels: tuple[int, ...], out_channels: tuple[int, ...], sizes: tuple[tuple[int, int], ...]
) -> tuple[Cost, tuple[tuple[int, int], ...]]:
    """Cost of a transition and the output branch sizes."""
    parts: list[Cost] = []
    out_sizes = []
    n_in = len(in_channels)
    for i, cout in enumerate(out_channels):
        if i < n_in:
            h, w = sizes[i]
            if in_channels[i] != cout:
                c, h, w = _conv_bn(in_channels[i], cout, 3, 1, h, w, True)
                parts.append(c)
        else:
            (h, w), cin = sizes[-1], in_channels[-1]
            steps = i + 1 - n_in
            for k in range(steps):
                c_out = cout if k == steps - 1 else cin
                c, h, w = _conv_bn(cin, c_out, 3, 2, h, w, True)
                parts.append(c)
        out_sizes.append((h, w))
    return _add(ZERO, *parts), tuple(out_sizes)


@lru_cache(maxsize=65536)
def fuse_cost(channels: tuple[int, ...], sizes: tuple[tuple[int, int], ...], multi_scale_output: bool = True) -> Cost:
    """Cost of one module's fuse layers (1x1 conv + BN + up-sample, stride-2 conv chains, final ReLUs)."""
    n = len(channels)
    if n == 1:
        return ZERO
    parts: list[Cost] = []
    for i in range(n if multi_scale_output else 1):
        for j in range(n):
            hj, wj = sizes[j]
            if j > i:
                c, _, _ = _conv_bn(channels[j], channels[i], 1, 1, hj, wj, False)
                f = 2 ** (j - i)
                parts += [c, (0, 0, 0, channels[i] * hj * f * wj * f, 0)]
            elif j < i:
                h, w, steps = hj, wj, i - j
                for k in range(steps):
                    last = k == steps - 1
                    c, h, w = _conv_bn(channels[j], channels[i] if last else channels[j], 3, 2, h, w, not last)
                    parts.append(c)
        hi, wi = sizes[i]
        parts.append((0, 0, 0, channels[i] * hi * wi, 0))  # fuse ReLU
    return _add(*parts)


# --------------------------------------------------------------------------- walking a spec


def _stage_cost(name: str, cost: Cost, out_shape: tuple[int, int, int]) -> StageCost:
    p, cp, m, f, a = cost
    return StageCost(name, params=p, conv_params=cp, macs=m, flops=f, activations=a, out_shape=out_shape)


def _walk(spec: HRNetSpec, size: tuple[int, int], units: bool) -> Iterator[tuple[str, Unit, Cost, int]]:
    """Yield ``(stage, unit, cost, repeat)`` in forward order. With ``units=False`` identical
    consecutive units come once with their repeat count; with ``units=True`` one by one."""

    def repeat(stage: str, unit: Unit, cost: Cost, n: int) -> Iterator[tuple[str, Unit, Cost, int]]:
        if units:
            for _ in range(n):
                yield stage, unit, cost, 1
        elif n:
            yield stage, unit, cost, n

    width, height = size
    sw, strides = spec.stem_width, tuple(spec.stem_strides)
    cost, h, w = stem_cost(3, sw, strides, height, width)
    yield "stem", StemUnit(3, sw, strides, height, width), cost, 1

    block, planes = spec.stage1_block, spec.stage1_width
    cout = planes * EXPANSION[block]
    yield "stage1", BlockUnit(block, sw, planes, 1, h, w), block_cost(block, sw, planes, 1, h, w)[0], 1
    unit = BlockUnit(block, cout, planes, 1, h, w)
    yield from repeat("stage1", unit, block_cost(block, cout, planes, 1, h, w)[0], spec.stage1_blocks - 1)
    if spec.pool_after_stage1:
        cost, h2, w2 = pool_cost(cout, h, w)
        yield "stage1", PoolUnit(cout, h, w), cost, 1
        h, w = h2, w2

    channels: tuple[int, ...] = (cout,)
    sizes: tuple[tuple[int, int], ...] = ((h, w),)
    for k, st in enumerate(spec.stages, start=1):
        name = f"stage{k + 1}"
        out = tuple(wd * EXPANSION[st.block] for wd in st.widths)
        cost, new_sizes = transition_cost(channels, out, sizes)
        yield name, TransitionUnit(channels, out, sizes), cost, 1
        channels, sizes = out, new_sizes
        branch = [
            (BlockUnit(st.block, c, wd, 1, bh, bw), block_cost(st.block, c, wd, 1, bh, bw)[0], nb)
            for wd, nb, c, (bh, bw) in zip(st.widths, st.blocks, channels, sizes, strict=True)
        ]
        fuse = FuseUnit(channels, sizes, True)
        fcost = fuse_cost(channels, sizes, True)
        for _ in range(st.modules if units else 1):
            n_mod = 1 if units else st.modules
            for unit, cost, nb in branch:
                yield from repeat(name, unit, cost, nb * n_mod)
            yield from repeat(name, fuse, fcost, n_mod)


def hrnet_units(spec: HRNetSpec, size: tuple[int, int]) -> Iterator[UnitCost]:
    """Every unit of ``spec`` at input ``size`` = (width, height), in forward order, with its cost.

    Descriptors are frozen dataclasses (hashable); identical blocks repeat. The costs add up to
    :func:`count_hrnet` (``cost.out_shape`` is the unit's output: the newest branch for
    transitions and fuse layers)."""
    for stage, unit, cost, _ in _walk(spec, tuple(size), units=True):
        yield UnitCost(stage, unit, _stage_cost(stage, cost, unit_out_shape(unit)))


def unit_out_shape(unit: Unit) -> tuple[int, int, int]:
    """(C, H, W) of a unit's output (the lowest-resolution branch for transitions and fuse layers)."""
    if isinstance(unit, StemUnit):
        _, h, w = stem_cost(unit.in_channels, unit.channels, unit.strides, unit.height, unit.width)
        return unit.channels, h, w
    if isinstance(unit, BlockUnit):
        _, h, w = block_cost(unit.block, unit.in_channels, unit.planes, unit.stride, unit.height, unit.width)
        return unit.planes * EXPANSION[unit.block], h, w
    if isinstance(unit, PoolUnit):
        _, h, w = pool_cost(unit.channels, unit.height, unit.width)
        return unit.channels, h, w
    if isinstance(unit, TransitionUnit):
        _, sizes = transition_cost(unit.in_channels, unit.out_channels, unit.sizes)
        return (unit.out_channels[-1], *sizes[-1])
    if isinstance(unit, FuseUnit):
        i = len(unit.channels) - 1 if unit.multi_scale_output else 0
        return (unit.channels[i], *unit.sizes[i])
    raise TypeError(f"unknown HRNet unit {unit!r}")


@lru_cache(maxsize=65536)
def stage1_cost(
    block: str, in_channels: int, planes: int, blocks: int, pool: bool, h: int, w: int
) -> tuple[Cost, int, int, int]:
    """Cost of stage 1 (and the bottom-heavy max-pool) and its output (C, H, W)."""
    cout = planes * EXPANSION[block]
    first, _, _ = block_cost(block, in_channels, planes, 1, h, w)
    rest, _, _ = block_cost(block, cout, planes, 1, h, w)
    total = _add(first, tuple(v * (blocks - 1) for v in rest))  # type: ignore[arg-type]
    if pool:
        pc, h, w = pool_cost(cout, h, w)
        total = _add(total, pc)
    return total, cout, h, w


@lru_cache(maxsize=65536)
def multi_branch_stage_cost(
    block: str,
    modules: int,
    blocks: tuple[int, ...],
    widths: tuple[int, ...],
    in_channels: tuple[int, ...],
    sizes: tuple[tuple[int, int], ...],
) -> tuple[Cost, tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Cost of one multi-branch stage (its incoming transition included), its branch channels and sizes."""
    out = tuple(wd * EXPANSION[block] for wd in widths)
    total, sizes = transition_cost(in_channels, out, sizes)
    per_module = [fuse_cost(out, sizes, True)]
    for wd, nb, c, (bh, bw) in zip(widths, blocks, out, sizes, strict=True):
        per_module.append(tuple(v * nb for v in block_cost(block, c, wd, 1, bh, bw)[0]))  # type: ignore[arg-type]
    module_cost = _add(*per_module)
    return _add(total, tuple(v * modules for v in module_cost)), out, sizes  # type: ignore[arg-type]


def count_hrnet(spec: HRNetSpec, size: tuple[int, int]) -> CostReport:
    """Per-stage analytic cost of ``spec`` at ``size`` = (width, height); see the module docstring."""
    width, height = size
    sw = spec.stem_width
    cost, h, w = stem_cost(3, sw, tuple(spec.stem_strides), height, width)
    stages = [_stage_cost("stem", cost, (sw, h, w))]
    cost, c, h, w = stage1_cost(
        spec.stage1_block, sw, spec.stage1_width, spec.stage1_blocks, spec.pool_after_stage1, h, w
    )
    stages.append(_stage_cost("stage1", cost, (c, h, w)))
    channels: tuple[int, ...] = (c,)
    sizes: tuple[tuple[int, int], ...] = ((h, w),)
    for k, st in enumerate(spec.stages, start=2):
        cost, channels, sizes = multi_branch_stage_cost(st.block, st.modules, st.blocks, st.widths, channels, sizes)
        stages.append(_stage_cost(f"stage{k}", cost, (channels[-1], *sizes[-1])))
    return CostReport(spec_id=spec.id, input_size=(int(width), int(height)), stages=stages)


__all__ = [
    "BlockUnit",
    "FuseUnit",
    "PoolUnit",
    "StemUnit",
    "TransitionUnit",
    "Unit",
    "UnitCost",
    "block_cost",
    "count_hrnet",
    "multi_branch_stage_cost",
    "stage1_cost",
    "fuse_cost",
    "hrnet_units",
    "pool_cost",
    "stem_cost",
    "transition_cost",
    "unit_out_shape",
]

"""Closed-form cost of ResNet-family specs: the twin of :mod:`bhsearch.models.resnet`.

The network is walked unit by unit (stem, every block, optional classifier head) exactly as the
builder lays it out, layer by layer in the pycls ``complexity`` style; no torch. Conventions are in
:mod:`bhsearch.cost`. Units are hashable named tuples (the latency table keys on them)::

    StemUnit(kernel, stride, pool, deep, width, h, w)
    BlockUnit(block, inplanes, planes, stride, h, w, downsample)   # h, w: input size
    HeadUnit(channels, num_classes, h, w)                          # global average pool + linear
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import NamedTuple

from bhsearch.cost import CostReport, StageCost
from bhsearch.spec import EXPANSION, ResNetSpec


class StemUnit(NamedTuple):
    kernel: int
    stride: int
    pool: bool
    deep: bool
    width: int
    h: int
    w: int


class BlockUnit(NamedTuple):
    block: str  # "basic" or "bottleneck"
    inplanes: int
    planes: int  # bottleneck width; output channels are planes * expansion
    stride: int
    h: int  # input height
    w: int  # input width
    downsample: bool


class HeadUnit(NamedTuple):
    channels: int
    num_classes: int
    h: int
    w: int


class UnitCost(NamedTuple):
    params: int
    conv_params: int
    macs: int
    flops: int
    activations: int
    out_shape: tuple[int, int, int]  # (C, H, W)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


class _Tally:
    """Accumulates one unit's cost layer by layer (conv, norm, relu, pool, linear)."""

    __slots__ = ("params", "conv_params", "macs", "flops", "activations")

    def __init__(self) -> None:
        self.params = self.conv_params = self.macs = self.flops = self.activations = 0

    def conv(self, cin: int, cout: int, k: int, s: int, h: int, w: int) -> tuple[int, int]:
        """A bias-free k x k conv with padding k // 2; returns the output (h, w)."""
        ho, wo = conv_out(h, k, s, k // 2), conv_out(w, k, s, k // 2)
        weights = cin * cout * k * k
        self.params += weights
        self.conv_params += weights
        self.macs += weights * ho * wo
        self.flops += weights * ho * wo
        self.activations += cout * ho * wo
        return ho, wo

    def norm(self, c: int, h: int, w: int) -> None:
        self.params += 2 * c
        self.flops += 2 * c * h * w

    def relu(self, c: int, h: int, w: int) -> None:
        self.flops += c * h * w

    def pool(self, c: int, h: int, w: int) -> None:
        self.flops += c * h * w  # paper convention: one per input element

    def linear(self, cin: int, cout: int) -> None:
        self.params += cin * cout + cout
        self.conv_params += cin * cout + cout
        self.macs += cin * cout + cout  # bias counted (ptflops aten, pycls)
        self.flops += cin * cout + cout
        self.activations += cout

    def result(self, out_shape: tuple[int, int, int]) -> UnitCost:
        return UnitCost(self.params, self.conv_params, self.macs, self.flops, self.activations, out_shape)


@lru_cache(maxsize=4096)
def stem_cost(unit: StemUnit) -> UnitCost:
    t, c = _Tally(), unit.width
    if unit.deep:
        half = c // 2
        h, w = t.conv(3, half, 3, unit.stride, unit.h, unit.w)
        t.norm(half, h, w)
        t.relu(half, h, w)
        h, w = t.conv(half, half, 3, 1, h, w)
        t.norm(half, h, w)
        t.relu(half, h, w)
        h, w = t.conv(half, c, 3, 1, h, w)
    else:
        h, w = t.conv(3, c, unit.kernel, unit.stride, unit.h, unit.w)
    t.norm(c, h, w)
    t.relu(c, h, w)
    if unit.pool:
        t.pool(c, h, w)
        h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
    return t.result((c, h, w))


@lru_cache(maxsize=16384)
def block_cost(unit: BlockUnit) -> UnitCost:
    t, p, s = _Tally(), unit.planes, unit.stride
    out = p * EXPANSION[unit.block]
    if unit.block == "bottleneck":
        h, w = t.conv(unit.inplanes, p, 1, 1, unit.h, unit.w)
        t.norm(p, h, w)
        t.relu(p, h, w)
        h, w = t.conv(p, p, 3, s, h, w)
        t.norm(p, h, w)
        t.relu(p, h, w)
        h, w = t.conv(p, out, 1, 1, h, w)
    else:
        h, w = t.conv(unit.inplanes, p, 3, s, unit.h, unit.w)
        t.norm(p, h, w)
        t.relu(p, h, w)
        h, w = t.conv(p, p, 3, 1, h, w)
    t.norm(out, h, w)
    if unit.downsample:
        t.conv(unit.inplanes, out, 1, s, unit.h, unit.w)
        t.norm(out, h, w)
    t.relu(out, h, w)
    return t.result((out, h, w))


@lru_cache(maxsize=1024)
def head_cost(unit: HeadUnit) -> UnitCost:
    t = _Tally()
    t.pool(unit.channels, unit.h, unit.w)  # global average pool: one per input element
    t.linear(unit.channels, unit.num_classes)
    return t.result((unit.num_classes, 1, 1))


def unit_cost(unit: StemUnit | BlockUnit | HeadUnit) -> UnitCost:
    if isinstance(unit, BlockUnit):
        return block_cost(unit)
    if isinstance(unit, StemUnit):
        return stem_cost(unit)
    return head_cost(unit)


def resnet_units(
    spec: ResNetSpec, size: tuple[int, int], num_classes: int | None = None
) -> Iterator[tuple[str, StemUnit | BlockUnit | HeadUnit, UnitCost]]:
    """Yield ``(stage_name, unit, cost)`` for the stem, every block in order, and the head if asked.

    ``size`` is ``(width, height)``; stage names are ``stem``, ``stage1``.. and ``head``.
    """
    width, height = size
    stem = StemUnit(spec.stem_kernel, spec.stem_stride, spec.stem_pool, spec.deep_stem, spec.stem_width, height, width)
    cost = stem_cost(stem)
    yield "stem", stem, cost
    c, h, w = cost.out_shape
    expansion = spec.expansion
    for i, (n, planes, stride) in enumerate(zip(spec.blocks, spec.widths, spec.strides, strict=True)):
        out = planes * expansion
        for j in range(n):
            s = stride if j == 0 else 1
            unit = BlockUnit(spec.block, c, planes, s, h, w, s != 1 or c != out)
            cost = block_cost(unit)
            yield f"stage{i + 1}", unit, cost
            c, h, w = cost.out_shape
    if num_classes:
        unit = HeadUnit(c, num_classes, h, w)
        yield "head", unit, head_cost(unit)


def count_resnet(spec: ResNetSpec, size: tuple[int, int], num_classes: int | None = None) -> CostReport:
    """Per-stage cost of ``spec`` at ``size`` = (width, height); ``num_classes`` adds a pool + linear head."""
    stages: dict[str, StageCost] = {}
    for name, _, cost in resnet_units(spec, size, num_classes):
        st = stages.get(name)
        if st is None:
            st = stages[name] = StageCost(name)
        st.params += cost.params
        st.conv_params += cost.conv_params
        st.macs += cost.macs
        st.flops += cost.flops
        st.activations += cost.activations
        st.out_shape = cost.out_shape
    return CostReport(spec.id, tuple(size), list(stages.values()))


__all__ = [
    "BlockUnit",
    "HeadUnit",
    "StemUnit",
    "UnitCost",
    "block_cost",
    "conv_out",
    "count_resnet",
    "head_cost",
    "resnet_units",
    "stem_cost",
    "unit_cost",
]

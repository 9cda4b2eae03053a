"""Layers shared by the backbone builders."""

from __future__ import annotations

from torch import nn

from bhsearch.errors import UsageError

NORM_KINDS = ("bn", "gn", "frozen_bn")


def gn_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm group count for ``channels``: the largest divisor of ``channels`` that is at most
    ``max_groups`` and leaves at least two channels per group (32 for 64..2048 channels, 1 for 1..3)."""
    limit = max(1, min(max_groups, channels // 2))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer: ``"bn"`` (BatchNorm2d), ``"gn"`` (GroupNorm, see :func:`gn_groups`)
    or ``"frozen_bn"`` (torchvision's FrozenBatchNorm2d, fixed statistics and affine)."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(gn_groups(channels), channels)
    if kind == "frozen_bn":
        from torchvision.ops import FrozenBatchNorm2d

        return FrozenBatchNorm2d(channels)
    raise UsageError(f"norm must be one of {', '.join(NORM_KINDS)}; got {kind!r}")


__all__ = ["NORM_KINDS", "gn_groups", "make_norm"]

"""Analytic cost model: parameters, conv MACs, paper-convention FLOPs and activations.

Closed-form, per stage, with no torch import (tens of microseconds per spec). Each family
has a twin of its builder in ``cost_<family>.py``; tests hold the two together against
fvcore and ptflops on named and random specs.

Conventions (DESIGN §2):
* ``macs``: multiply-accumulates of convolutions and linear layers (ptflops ``aten``
  backend; fvcore without its batch-norm term; the paper's "GFLOPs" are MACs too).
* ``flops``: the paper's (mmcv) convention: ``macs`` + 2 per batch-norm output element
  + 1 per ReLU output element + 1 per max-pool *input* element + 1 per upsample output
  element; residual additions are not counted.
* ``params``: every parameter (BN affine included); ``conv_params``: conv and linear
  weights (and biases) only.
* ``activations``: output elements of every convolution (a proxy for memory traffic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.spec import HRNetSpec, ResNetSpec, Spec, get_spec, parse_input_size


@dataclass
class StageCost:
    """Cost of one stage (``stem``, ``stage1`` …) at a given input size."""

    name: str
    params: int = 0
    conv_params: int = 0
    macs: int = 0
    flops: int = 0
    activations: int = 0
    out_shape: tuple[int, int, int] = (0, 0, 0)  # (C, H, W) of the stage output


@dataclass
class CostReport:
    """Whole-network cost; the totals are the sums over ``stages``."""

    spec_id: str
    input_size: tuple[int, int]  # (width, height)
    stages: list[StageCost] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(s.params for s in self.stages)

    @property
    def conv_params(self) -> int:
        return sum(s.conv_params for s in self.stages)

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.stages)

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.stages)

    @property
    def activations(self) -> int:
        return sum(s.activations for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_id": self.spec_id,
            "input_size": list(self.input_size),
            "params": self.params,
            "conv_params": self.conv_params,
            "macs": self.macs,
            "flops": self.flops,
            "activations": self.activations,
            "stages": [{**asdict(s), "out_shape": list(s.out_shape)} for s in self.stages],
        }


def count(
    spec: Spec | str, input_size: str | tuple[int, int] = "640x512", num_classes: int | None = None
) -> CostReport:
    """Analytic cost of ``spec`` (a spec or anything ``get_spec`` takes) at ``input_size``.

    ``num_classes`` adds a classifier head (global average pool + linear with bias) as a
    ``head`` stage, as in pycls / torchvision classifiers (ResNet family only).
    """
    spec = get_spec(spec)
    size = parse_input_size(input_size)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(spec, ResNetSpec):
        from bhsearch.cost_resnet import count_resnet

        return count_resnet(spec, size, num_classes)
    if isinstance(spec, HRNetSpec):
        from bhsearch.cost_hrnet import count_hrnet

        if num_classes is not None:
            raise UsageError("num_classes (a classifier head) is only modelled for resnet specs")
        return count_hrnet(spec, size)
    raise TypeError(f"no cost model for {type(spec).__name__}")

"""ResNet-family backbones built from a :class:`~bhsearch.spec.ResNetSpec`.

Module names follow torchvision (``conv1, bn1, relu, maxpool, layer1..4``; blocks with
``conv1..3, bn1..3, downsample.0/.1``), so a torchvision ``resnet50(weights=None).state_dict()``
without ``fc.*`` loads into ``ResNetBackbone(get_spec("resnet50"))`` with ``strict=True``.
The stride of a block sits on its 3x3 conv (torchvision's "ResNet v1.5").

:mod:`bhsearch.cost_resnet` is the closed-form twin of this module; keep the two in step.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from bhsearch.errors import UsageError
from bhsearch.models.common import make_norm
from bhsearch.spec import ResNetSpec, get_spec


def conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (torchvision's ``BasicBlock``).

    ``BasicBlock(inplanes, planes, stride=1, downsample=None, norm="bn")``: input ``inplanes``
    channels, output ``planes`` channels; ``stride`` on the first conv.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, norm: str = "bn"
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = make_norm(norm, planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (stride here) → 1x1 ×4 with a residual connection (torchvision's ``Bottleneck``).

    ``Bottleneck(inplanes, planes, stride=1, downsample=None, norm="bn")``: input ``inplanes``
    channels, bottleneck width ``planes``, output ``planes * 4`` channels.
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, norm: str = "bn"
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = make_norm(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _block_class(block: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(block, str):
        if block not in BLOCKS:
            raise UsageError(f"resnet block must be one of {', '.join(BLOCKS)}; got {block!r}")
        return BLOCKS[block]
    return block


def make_stem(spec: ResNetSpec, norm: str = "bn") -> nn.Sequential:
    """The stem as ``Sequential(conv1, bn1, relu, maxpool)`` (``maxpool`` is ``Identity`` without pool).

    ``conv1`` is one ``stem_kernel`` conv of stride ``stem_stride``, or with ``deep_stem`` a
    ``Sequential`` of three 3x3 convs (widths ``stem_width//2, stem_width//2, stem_width``, the
    first with the stride) with norm + ReLU between them, as in timm's deep stem.
    """
    c = spec.stem_width
    if spec.deep_stem:
        half = c // 2
        conv1: nn.Module = nn.Sequential(
            conv3x3(3, half, spec.stem_stride),
            make_norm(norm, half),
            nn.ReLU(inplace=True),
            conv3x3(half, half),
            make_norm(norm, half),
            nn.ReLU(inplace=True),
            conv3x3(half, c),
        )
    else:
        k = spec.stem_kernel
        conv1 = nn.Conv2d(3, c, kernel_size=k, stride=spec.stem_stride, padding=k // 2, bias=False)
    pool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if spec.stem_pool else nn.Identity()
    return nn.Sequential(
        OrderedDict([("conv1", conv1), ("bn1", make_norm(norm, c)), ("relu", nn.ReLU(inplace=True)), ("maxpool", pool)])
    )


def make_stage(
    block: str | type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int = 1, norm: str = "bn"
) -> nn.Sequential:
    """``blocks`` blocks of width ``planes``; the first takes ``inplanes`` channels and ``stride`` and
    gets a ``downsample`` (1x1 conv + norm) when its shape changes, as in torchvision's ``_make_layer``."""
    cls = _block_class(block)
    out = planes * cls.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(conv1x1(inplanes, out, stride), make_norm(norm, out))
    layers = [cls(inplanes, planes, stride, downsample, norm)]
    layers += [cls(out, planes, 1, None, norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetBackbone(nn.Module):
    """A ResNet trunk (no classifier) returning ``OrderedDict(c2=..., c3=..., c4=..., c5=...)``.

    Attributes: ``spec``, ``out_channels`` and ``out_strides`` (one per stage output),
    ``feature_info`` (timm-style dicts with ``num_chs``, ``reduction``, ``module``), ``return_keys``.
    The direct children are, in order, ``conv1, bn1, relu, maxpool, layer1..layerN``, so
    torchvision's ``IntermediateLayerGetter`` / ``BackboneWithFPN`` can wrap it as well.
    """

    def __init__(self, spec: ResNetSpec | str, norm: str = "bn", zero_init_residual: bool = False) -> None:
        super().__init__()
        spec = get_spec(spec)
        if not isinstance(spec, ResNetSpec):
            raise UsageError(f"ResNetBackbone needs a resnet spec, got {spec.family}")
        self.spec = spec
        self.norm = norm
        for name, module in make_stem(spec, norm).named_children():
            self.add_module(name, module)
        inplanes = spec.stem_width
        expansion = spec.expansion
        for i, (n, width, stride) in enumerate(zip(spec.blocks, spec.widths, spec.strides, strict=True)):
            self.add_module(f"layer{i + 1}", make_stage(spec.block, inplanes, width, n, stride, norm))
            inplanes = width * expansion
        self.out_channels = list(spec.out_channels)
        self.out_strides = list(spec.out_strides)
        self.return_keys = [f"c{i + 2}" for i in range(len(spec.blocks))]
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": f"layer{i + 1}"}
            for i, (c, r) in enumerate(zip(self.out_channels, self.out_strides, strict=True))
        ]
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (Bottleneck, BasicBlock)) and isinstance(last, (nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.zeros_(last.weight)

    @property
    def layers(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.spec.blocks))]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for key, layer in zip(self.return_keys, self.layers, strict=True):
            x = layer(x)
            out[key] = x
        return out


__all__ = ["BLOCKS", "BasicBlock", "Bottleneck", "ResNetBackbone", "conv1x1", "conv3x3", "make_stage", "make_stem"]

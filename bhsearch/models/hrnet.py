"""HRNet-family backbones built from an :class:`~bhsearch.spec.HRNetSpec`.

The layout and module names follow timm's ``HighResolutionNet`` trunk (``head=''``):
``conv1, bn1, act1, conv2, bn2, act2`` (stem), ``layer1`` (stage 1), ``transition1``,
``stage2``, ``transition2``, ``stage3``, ... so a timm HRNet state_dict loads with
``strict=True`` into the matching named spec (``hrnet18/32/48``). Two differences, both
inert for timm configurations:

* transitions feed an existing branch whose width changes from that branch (timm feeds it
  the last branch, which only matters when a stage changes block type);
* at input sizes that are not multiples of the total stride, the nearest ``2**k``
  up-sampling in a fuse layer overshoots the target branch by a row/column; the surplus
  is cropped (timm raises a shape error there). Costs count the up-sampled map before the crop.

The building pieces are public so that single units can be profiled on their own:
:class:`HRNetStem`, :func:`make_stage1`, :class:`Transition`, :class:`HRFuse`,
:class:`HRModule`, :class:`BasicBlock`, :class:`Bottleneck` and :func:`build_unit`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from bhsearch.models.common import make_norm
from bhsearch.spec import EXPANSION, HRNetSpec

# --------------------------------------------------------------------------- blocks


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _downsample(cin: int, cout: int, stride: int, norm: str) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) with a residual; ``planes`` output channels."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, norm: str = "bn") -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = make_norm(norm, planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = make_norm(norm, planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (stride) → 1x1 convs with a residual; ``4 * planes`` output channels."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, norm: str = "bn") -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = make_norm(norm, planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = make_norm(norm, out)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act3(y + shortcut)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_blocks(block: str, in_channels: int, planes: int, blocks: int, norm: str = "bn") -> nn.Sequential:
    """``blocks`` blocks of type ``block`` ("basic"/"bottleneck"); the first adapts ``in_channels``."""
    cls = BLOCKS[block]
    layers = [cls(in_channels, planes, 1, norm)]
    layers += [cls(planes * cls.expansion, planes, 1, norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- stem and stage 1


class HRNetStem(nn.Module):
    """Two 3x3 conv-norm-ReLU layers of ``width`` channels with strides ``strides``."""

    def __init__(self, in_channels: int = 3, width: int = 64, strides: Sequence[int] = (2, 2), norm: str = "bn"):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width, strides[0])
        self.bn1 = make_norm(norm, width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width, strides[1])
        self.bn2 = make_norm(norm, width)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(x)))


def make_stage1(block: str, in_channels: int, planes: int, blocks: int, norm: str = "bn") -> nn.Sequential:
    """Stage 1 (timm's ``layer1``): one branch of ``blocks`` blocks at the stem's resolution."""
    return make_blocks(block, in_channels, planes, blocks, norm)


def make_pool() -> nn.MaxPool2d:
    """The bottom-heavy 3x3 max-pool of stride 2 (padding 1) between stage 1 and the first transition."""
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


# --------------------------------------------------------------------------- transitions and fusion


def _conv_norm(cin: int, cout: int, stride: int, norm: str, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [_conv3x3(cin, cout, stride), make_norm(norm, cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Transition(nn.ModuleList):
    """Maps the branches of one stage onto the next: a 3x3 conv where a kept branch changes
    width, identity otherwise, and a chain of stride-2 3x3 convs from the last branch for
    each new branch. ``forward(list) -> list``."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], norm: str = "bn") -> None:
        layers: list[nn.Module] = []
        n_in = len(in_channels)
        for i, cout in enumerate(out_channels):
            if i < n_in:
                cin = in_channels[i]
                layers.append(nn.Identity() if cin == cout else _conv_norm(cin, cout, 1, norm, relu=True))
            else:
                steps = i + 1 - n_in
                cin = in_channels[-1]
                chain = [_conv_norm(cin, cout if k == steps - 1 else cin, 2, norm, relu=True) for k in range(steps)]
                layers.append(nn.Sequential(*chain))
        super().__init__(layers)
        self.in_channels = list(in_channels)
        self.out_channels = list(out_channels)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        return [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(self)]


def make_fuse_layers(channels: Sequence[int], multi_scale_output: bool = True, norm: str = "bn") -> nn.ModuleList:
    """timm-layout fuse layers: for output ``i`` and input ``j``, a 1x1 conv + norm + nearest
    ``2**(j-i)`` up-sampling (j > i), identity (j == i), or ``i-j`` stride-2 3x3 convs (j < i)."""
    n = len(channels)
    outputs = nn.ModuleList()
    for i in range(n if multi_scale_output else 1):
        row = nn.ModuleList()
        for j in range(n):
            if j > i:
                row.append(
                    nn.Sequential(
                        nn.Conv2d(channels[j], channels[i], 1, bias=False),
                        make_norm(norm, channels[i]),
                        nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                    )
                )
            elif j == i:
                row.append(nn.Identity())
            else:
                steps = i - j
                row.append(
                    nn.Sequential(
                        *[
                            _conv_norm(
                                channels[j], channels[i] if k == steps - 1 else channels[j], 2, norm, k < steps - 1
                            )
                            for k in range(steps)
                        ]
                    )
                )
        outputs.append(row)
    return outputs


def _fuse(fuse_layers: nn.ModuleList, act: nn.Module, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for i, row in enumerate(fuse_layers):
        h, w = xs[i].shape[-2:]
        y = None
        for j, f in enumerate(row):
            z = f(xs[j])
            if j > i:  # nearest 2**k up-sampling overshoots odd sizes by one row/column: crop
                z = z[..., :h, :w]
            y = z if y is None else y + z
        out.append(act(y))
    return out


class HRFuse(nn.Module):
    """The fusion of one HRNet module on its own (for profiling); same layers as :class:`HRModule`."""

    def __init__(self, channels: Sequence[int], multi_scale_output: bool = True, norm: str = "bn") -> None:
        super().__init__()
        self.fuse_layers = make_fuse_layers(channels, multi_scale_output, norm)
        self.fuse_act = nn.ReLU(False)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return _fuse(self.fuse_layers, self.fuse_act, list(xs))


class HRModule(nn.Module):
    """One HRNet module: per branch ``blocks[i]`` blocks of width ``widths[i]``, then fusion.

    ``in_channels`` defaults to the branch output channels (``widths[i] * expansion``).
    With ``multi_scale_output=False`` only the highest-resolution output is produced.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        block: str = "basic",
        multi_scale_output: bool = True,
        norm: str = "bn",
        in_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"HRModule blocks {tuple(blocks)} and widths {tuple(widths)} differ in length")
        exp = EXPANSION[block]
        in_channels = list(in_channels) if in_channels is not None else [w * exp for w in widths]
        self.out_channels = [w * exp for w in widths]
        self.branches = nn.ModuleList(
            make_blocks(block, cin, w, n, norm) for cin, w, n in zip(in_channels, widths, blocks, strict=True)
        )
        if len(widths) == 1:
            self.fuse_layers = nn.Identity()
        else:
            self.fuse_layers = make_fuse_layers(self.out_channels, multi_scale_output, norm)
        self.fuse_act = nn.ReLU(False)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        ys = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if len(ys) == 1:
            return ys
        return _fuse(self.fuse_layers, self.fuse_act, ys)


class HRStageModules(nn.Sequential):
    """A stage: ``HRModule`` s applied in sequence to a list of branch tensors."""

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        for module in self:
            xs = module(xs)
        return xs


# --------------------------------------------------------------------------- the backbone


class HRNetBackbone(nn.Module):
    """HRNet trunk from ``spec``; ``forward(x)`` returns ``OrderedDict`` ``c2, c3, ...`` (final branches).

    ``norm`` is ``"bn"``, ``"gn"`` or ``"frozen_bn"`` (see :func:`bhsearch.models.common.make_norm`).
    """

    def __init__(self, spec: HRNetSpec, norm: str = "bn") -> None:
        super().__init__()
        if not isinstance(spec, HRNetSpec):
            raise TypeError(f"HRNetBackbone needs an HRNetSpec, got {type(spec).__name__}")
        self.spec = spec
        sw = spec.stem_width
        self.conv1 = _conv3x3(3, sw, spec.stem_strides[0])
        self.bn1 = make_norm(norm, sw)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(sw, sw, spec.stem_strides[1])
        self.bn2 = make_norm(norm, sw)
        self.act2 = nn.ReLU(inplace=True)
        self.layer1 = make_stage1(spec.stage1_block, sw, spec.stage1_width, spec.stage1_blocks, norm)
        self.maxpool = make_pool() if spec.pool_after_stage1 else None

        channels = [spec.stage1_channels]
        for k, st in enumerate(spec.stages, start=1):
            out = [w * EXPANSION[st.block] for w in st.widths]
            setattr(self, f"transition{k}", Transition(channels, out, norm))
            modules = [HRModule(st.blocks, st.widths, st.block, True, norm) for _ in range(st.modules)]
            setattr(self, f"stage{k + 1}", HRStageModules(*modules))
            channels = out
        self.num_stages = len(spec.stages)
        self.out_channels = list(channels)
        self.out_strides = list(spec.out_strides)
        self.out_names = [f"c{i + 2}" for i in range(len(channels))]
        last = f"stage{self.num_stages + 1}"
        self.feature_info = [
            {"num_chs": c, "reduction": s, "module": last}
            for c, s in zip(self.out_channels, self.out_strides, strict=True)
        ]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        xs = [x]
        for k in range(1, self.num_stages + 1):
            xs = getattr(self, f"transition{k}")(xs)
            xs = getattr(self, f"stage{k + 1}")(xs)
        return OrderedDict(zip(self.out_names, xs, strict=True))


# --------------------------------------------------------------------------- single units


def build_unit(unit, norm: str = "bn") -> tuple[nn.Module, object]:
    """Build the module for a unit descriptor from :func:`bhsearch.cost_hrnet.hrnet_units` and a
    matching random input (a tensor, or a list of tensors for transitions and fuse layers)."""
    from bhsearch import cost_hrnet as ch

    if isinstance(unit, ch.StemUnit):
        module = HRNetStem(unit.in_channels, unit.channels, unit.strides, norm)
        return module, torch.randn(1, unit.in_channels, unit.height, unit.width)
    if isinstance(unit, ch.BlockUnit):
        module = BLOCKS[unit.block](unit.in_channels, unit.planes, unit.stride, norm)
        return module, torch.randn(1, unit.in_channels, unit.height, unit.width)
    if isinstance(unit, ch.PoolUnit):
        return make_pool(), torch.randn(1, unit.channels, unit.height, unit.width)
    if isinstance(unit, ch.TransitionUnit):
        module = Transition(unit.in_channels, unit.out_channels, norm)
        return module, [torch.randn(1, c, h, w) for c, (h, w) in zip(unit.in_channels, unit.sizes, strict=True)]
    if isinstance(unit, ch.FuseUnit):
        module = HRFuse(unit.channels, unit.multi_scale_output, norm)
        return module, [torch.randn(1, c, h, w) for c, (h, w) in zip(unit.channels, unit.sizes, strict=True)]
    raise TypeError(f"unknown HRNet unit {unit!r}")


__all__ = [
    "BLOCKS",
    "BasicBlock",
    "Bottleneck",
    "HRFuse",
    "HRModule",
    "HRNetBackbone",
    "HRNetStem",
    "HRStageModules",
    "Transition",
    "build_unit",
    "make_blocks",
    "make_fuse_layers",
    "make_pool",
    "make_stage1",
]

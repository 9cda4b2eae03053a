"""MMDetection plugin: registers ``BHSearchBackbone`` so configs can say ``type='BHSearchBackbone'``.

Load it from a config with::

    custom_imports = dict(imports=['bhsearch.export.mmdet_plugin'], allow_failed_imports=False)

The backbone goes into mmdet 3.x's ``MODELS`` registry, mmdet 2.x's ``BACKBONES`` registry
(``mmdet.models.builder``), or, without mmdet, mmengine's root ``MODELS`` registry (which mmdet
3.x's registry falls back to as its parent).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from bhsearch.errors import UsageError
from bhsearch.spec import get_spec

try:  # pragma: no cover - mmdet is not installable on every machine
    from mmdet.registry import MODELS

    REGISTRY = "mmdet"
except ImportError:
    try:  # pragma: no cover - MMDetection 2.x (mmcv-full 1.x)
        from mmdet.models.builder import BACKBONES as MODELS

        REGISTRY = "mmdet2"
    except ImportError:
        from mmengine.registry import MODELS

        REGISTRY = "mmengine"

try:
    from mmengine.model import BaseModule
except ImportError:  # pragma: no cover - mmcv-full 1.x without mmengine
    from mmcv.runner import BaseModule

_STAGE = re.compile(r"^(layer|stage)\d+$")


@MODELS.register_module(force=True)
class BHSearchBackbone(BaseModule):
    """A bhsearch backbone for MMDetection: returns a tuple of feature maps (``out_indices`` of
    ``c2..c5``, strides 4..32).

    Args:
        spec: a spec id, a registered name, a spec dict (``spec.to_dict()``) or a spec file.
        norm: ``"bn"``, ``"gn"`` or ``"frozen_bn"``.
        norm_cfg: the MMDetection 2.x way to say it, ``dict(type='BN'|'GN', requires_grad=...)``;
            overrides ``norm`` (``BN`` with ``requires_grad=False`` is ``frozen_bn``; GroupNorm's
            groups are bhsearch's own, ``num_groups`` is informative).
        out_indices: which of the four levels to return (0 = ``c2``).
        frozen_stages: -1 trains everything; 0 freezes the stem; k freezes the stem and the first k
            stages (``layer1..k`` for ResNets; ``layer1``, ``stage2``… with their transitions for HRNets).
        norm_eval: keep BatchNorm layers in eval mode while training (for pretrained statistics).
        weights: a safetensors file with the trunk (``backbone.safetensors``) or a whole bhsearch
            torchvision detector (``model.safetensors``; its ``backbone.body.*`` tensors are used).
    """

    def __init__(
        self,
        spec: Any,
        norm: str = "bn",
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        weights: str | None = None,
        init_cfg: Any = None,
        norm_cfg: dict[str, Any] | None = None,
    ):
        super().__init__(init_cfg)
        from bhsearch.models import build_backbone

        if norm_cfg is not None:
            kind = str(norm_cfg.get("type", "")).upper()
            if kind not in ("BN", "SYNCBN", "GN"):
                raise UsageError(f"BHSearchBackbone norm_cfg type must be BN, SyncBN or GN, got {norm_cfg!r}")
            norm = "gn" if kind == "GN" else ("bn" if norm_cfg.get("requires_grad", True) else "frozen_bn")

        self.spec = get_spec(spec)
        self.body = build_backbone(self.spec, norm=norm)
        levels = len(self.spec.out_channels)
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices or any(not 0 <= i < levels for i in self.out_indices):
            raise UsageError(f"BHSearchBackbone out_indices must lie in 0..{levels - 1}, got {out_indices!r}")
        self.out_channels = [self.spec.out_channels[i] for i in self.out_indices]
        self.out_strides = [self.spec.out_strides[i] for i in self.out_indices]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        if weights:
            from bhsearch.detectors import load_state, read_safetensors
            from bhsearch.export.common import backbone_state

            load_state(self.body, backbone_state(read_safetensors(weights)), str(weights))
        self._freeze_stages()

    def _frozen_modules(self) -> list[nn.Module]:
        """Stem, then one group per stage; a module between two stages (an HRNet transition)
        belongs to the stage after it, as in mmdet's HRNet."""
        groups: list[list[nn.Module]] = [[]]
        pending: list[nn.Module] = []
        for name, module in self.body.named_children():
            if _STAGE.match(name):
                groups.append([*pending, module])
                pending = []
            elif len(groups) == 1:
                groups[0].append(module)
            else:
                pending.append(module)
        return [m for group in groups[: self.frozen_stages + 1] for m in group]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def forward(self, x):
        feats = list(self.body(x).values())
        return tuple(feats[i] for i in self.out_indices)

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


__all__ = ["REGISTRY", "BHSearchBackbone"]

"""Backbone builders: plain ``torch.nn.Module`` s from specs.

``build_backbone(spec)`` returns a module whose ``forward`` gives an ``OrderedDict`` of
feature maps ``c2..c5`` (strides 4..32) and which exposes ``out_channels``,
``out_strides`` and timm-style ``feature_info``.
"""

from __future__ import annotations

from typing import Any

from bhsearch.spec import HRNetSpec, ResNetSpec, Spec, get_spec


def build_backbone(spec: Spec | str, norm: str = "bn", **kwargs: Any):
    """Build the backbone for ``spec`` (a spec or anything ``get_spec`` takes).

    ``norm`` is ``"bn"`` (trainable BatchNorm), ``"gn"`` (GroupNorm, for small batches)
    or ``"frozen_bn"`` (torchvision's FrozenBatchNorm2d, for pretrained statistics).
    """
    spec = get_spec(spec)
    if isinstance(spec, ResNetSpec):
        from bhsearch.models.resnet import ResNetBackbone

        return ResNetBackbone(spec, norm=norm, **kwargs)
    if isinstance(spec, HRNetSpec):
        from bhsearch.models.hrnet import HRNetBackbone

        return HRNetBackbone(spec, norm=norm, **kwargs)
    raise TypeError(f"no builder for {type(spec).__name__}")


__all__ = ["build_backbone"]

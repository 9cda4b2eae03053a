"""A TinaFace-style face detector: torchvision RetinaNet on a bhsearch backbone, set up for WiderFace.

``build_face_detector(spec)`` calls :func:`bhsearch.detectors.build_detector` with ``detector="retinanet"``
and face settings (TinaFace, Zhu et al. 2020, adapted to torchvision):

* **levels** P2–P7 (strides 4 … 128: the FPN starts at the stride-4 map ``c2``, RetinaNet adds P6/P7);
* **anchors**: one aspect ratio 1.3 (height / width, faces are taller than wide), three scales per octave
  ``stride × anchor_base × 2^(k/3)``; ``anchor_base=1`` gives 4, 5.0, 6.3 px on P2 up to 203 px on P7, so
  faces from ~4 px have an anchor (TinaFace uses ``anchor_base = 2^(4/3)``, 10 px on P2);
* **GroupNorm heads** (``head_norm="gn"``, torchvision's ``RetinaNetHead(norm_layer=...)``); ``"none"`` keeps
  torchvision's plain heads;
* **box loss** ``"diou"`` (TinaFace's DIoU loss on decoded boxes; torchvision offers ``giou``, ``diou``,
  ``ciou``, ``l1``, ``smooth_l1``);
* **image size** 640×640 (training crops); the transform never resizes, so whole validation images are
  seen at their own size.

The settings (JSON-able) are kept on ``model.face_settings``; ``build_face_detector(spec, **settings)``
rebuilds the same model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import nn

from bhsearch.errors import UsageError
from bhsearch.spec import Spec, get_spec

BOX_LOSSES = ("diou", "giou", "ciou", "smooth_l1", "l1")
HEAD_NORMS = ("gn", "none")
FACE_ASPECT_RATIOS = (1.3,)
DEFAULT_IMAGE_SIZE = (640, 640)
SCALES_PER_OCTAVE = 3


def face_anchor_sizes(strides: Sequence[int], anchor_base: float = 1.0) -> list[list[float]]:
    """Per FPN level: ``stride × anchor_base × 2^(k/3)`` for k = 0, 1, 2."""
    if anchor_base <= 0:
        raise UsageError(f"anchor_base must be positive, got {anchor_base}")
    return [
        [round(s * anchor_base * 2 ** (k / SCALES_PER_OCTAVE), 3) for k in range(SCALES_PER_OCTAVE)] for s in strides
    ]


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, fewer for narrow FPNs so every group has at least 2 channels."""
    return nn.GroupNorm(math.gcd(groups, max(channels // 2, 1)), channels)


def build_face_detector(
    spec: Spec | str,
    *,
    norm: str = "gn",
    head_norm: str = "gn",
    box_loss: str = "diou",
    image_size: Sequence[int] | str = DEFAULT_IMAGE_SIZE,
    anchor_base: float = 1.0,
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    aspect_ratios: Sequence[float] = FACE_ASPECT_RATIOS,
    fpn_channels: int = 256,
    min_level: int = 2,
    backbone: nn.Module | None = None,
    **kwargs: Any,
) -> nn.Module:
    """RetinaNet face detector (one class, label 1) on ``spec``'s backbone; see the module doc.

    ``norm`` is the backbone normalisation (``bn``, ``gn``, ``frozen_bn``); ``anchor_sizes`` overrides the
    anchors (one list per level, P``min_level``…P7); other keyword arguments go to torchvision's ``RetinaNet``
    (e.g. ``fg_iou_thresh``, ``topk_candidates``, ``score_thresh``, ``detections_per_img``).
    """
    from torchvision.models.detection.retinanet import RetinaNetHead

    from bhsearch.detectors import build_detector

    spec = get_spec(spec)
    if box_loss not in BOX_LOSSES:
        raise UsageError(f"box_loss must be one of {', '.join(BOX_LOSSES)}, got {box_loss!r}")
    if head_norm not in HEAD_NORMS:
        raise UsageError(f"head_norm must be one of {', '.join(HEAD_NORMS)}, got {head_norm!r}")
    if "head" in kwargs or "detector" in kwargs:
        raise UsageError("build_face_detector always builds a RetinaNet with its own head")
    num_levels = len(spec.out_channels) - (min_level - 2) + 2
    strides = [2**lvl for lvl in range(min_level, min_level + num_levels)]
    sizes = anchor_sizes if anchor_sizes is not None else face_anchor_sizes(strides, anchor_base)
    model = build_detector(
        spec,
        "retinanet",
        num_classes=1,
        norm=norm,
        image_size=image_size,
        anchor_sizes=sizes,
        fpn_channels=fpn_channels,
        min_level=min_level,
        backbone=backbone,
        aspect_ratios=tuple(aspect_ratios),
        **kwargs,
    )
    num_anchors = model.anchor_generator.num_anchors_per_location()[0]
    norm_layer = partial(_group_norm, groups=32) if head_norm == "gn" else None
    model.head = RetinaNetHead(fpn_channels, num_anchors, 2, norm_layer=norm_layer)
    model.head.regression_head._loss_type = box_loss
    settings = model.bhsearch_settings
    model.face_settings = {
        "norm": norm,
        "head_norm": head_norm,
        "box_loss": box_loss,
        "image_size": list(settings["image_size"]),
        "anchor_base": float(anchor_base),
        "anchor_sizes": settings["anchor_sizes"],
        "aspect_ratios": list(settings["aspect_ratios"]),
        "fpn_channels": fpn_channels,
        "min_level": min_level,
        **{k: v for k, v in settings.items() if k in kwargs},
    }
    return model


def face_detector_settings(model: nn.Module) -> dict[str, Any]:
    """The keyword arguments that rebuild ``model`` with :func:`build_face_detector`."""
    settings = getattr(model, "face_settings", None)
    if settings is None:
        raise UsageError("this model was not built by bhsearch.tasks.widerface.detector.build_face_detector")
    return dict(settings)


__all__ = ["BOX_LOSSES", "HEAD_NORMS", "build_face_detector", "face_anchor_sizes", "face_detector_settings"]

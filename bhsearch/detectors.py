"""Stock torchvision detectors (Faster R-CNN, RetinaNet, FCOS) on bhsearch backbones.

``build_detector(spec, "faster_rcnn")`` returns an unmodified torchvision detection model whose
backbone is ``FPNBackbone``: our trunk (``bhsearch.build_backbone``) plus torchvision's
``FeaturePyramidNetwork`` starting at the stride-4 level ``c2``. The defaults target tiny
objects (TinyPerson persons of 2–32 px on 640x512 tiles):

* **anchors** start at 8 px on the first FPN level and double per level. Faster R-CNN: one size
  per level, ``(8, 16, 32, 64, 128)`` on P2–P6 (2x the stride, as TinyBenchmark's
  ``anchor_scales=[2]``); RetinaNet: 3 scales per octave (``8, 10.1, 12.7`` on P2 …) on P2–P7;
  FCOS: one point per location whose size is the level stride (``4 … 128``), so P2 regresses
  objects whose largest side distance is below 32 px, with ``center_sampling_radius`` 1.5
  strides (6 px on P2).
* **aspect ratios** (height / width, torchvision's convention) ``(0.5, 1.0, 2.0)``: TinyPerson
  mixes standing "earth" persons (taller than wide) with swimming and lying "sea" persons
  (wider than tall), so the symmetric set of TinyBenchmark/mmdet is kept; pass
  ``aspect_ratios=(1.0, 2.0, 3.0)`` for upright-only data.
* **native size**: the transform never resizes (``resize="native"``), so a 640x512 tile — or a
  497-pixel-wide image smaller than a tile — is seen at its own resolution; ``min_size`` /
  ``max_size`` are still set from ``image_size`` for code that reads them.
* **many, low-score detections** for AP evaluation: up to 1000 per image, score threshold 0.01.
* **trainable normalisation** (``norm="bn"`` or ``"gn"``); ``"frozen_bn"`` only with pretrained
  statistics.

Labels are 1-based (``1`` = person, ``0`` = background) for all three detectors, so every
torchvision model is built with ``num_classes + 1`` outputs.

``detector_settings(model)`` gives the JSON-able keyword arguments that rebuild the same model
(``build_detector(spec, **settings)``); ``bhsearch finetune`` stores them in ``spec.json`` under
the ``"detector"`` key (``save_spec(spec, path, detector=detector_settings(model))``).
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from bhsearch.errors import UsageError
from bhsearch.fileio import atomic_write, require_file
from bhsearch.spec import Spec, get_spec, parse_input_size

DETECTORS = ("faster_rcnn", "retinanet", "fcos")
RESIZE_MODES = ("native", "fit")
SETTINGS_KEY = "detector"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
FIRST_ANCHOR_SIZE = 8.0

# Constructor arguments that build_detector sets itself.
_RESERVED = {
    "self",
    "kwargs",
    "backbone",
    "num_classes",
    "min_size",
    "max_size",
    "image_mean",
    "image_std",
    "anchor_generator",
    "rpn_anchor_generator",
    "box_roi_pool",
    "box_head",
    "box_predictor",
}

# Per-detector defaults that differ from torchvision's (all can be overridden by keyword).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "faster_rcnn": {"box_detections_per_img": 1000, "box_score_thresh": 0.01},
    "retinanet": {"detections_per_img": 1000, "score_thresh": 0.01},
    "fcos": {"detections_per_img": 1000, "score_thresh": 0.01, "center_sampling_radius": 1.5},
}


class FPNBackbone(nn.Module):
    """A bhsearch trunk followed by torchvision's ``FeaturePyramidNetwork``.

    The trunk's maps from ``min_level`` on (``c2`` = stride 4 for ``min_level=2``) feed the FPN;
    ``forward`` returns the FPN's ``OrderedDict`` (keys ``"0"``, ``"1"``, … then ``"pool"`` or
    ``"p6"``, ``"p7"``). ``out_channels`` is the FPN width, as torchvision's detectors expect.
    """

    def __init__(self, body: nn.Module, in_channels_list: Sequence[int], out_channels: int, extra: str, min_level: int):
        super().__init__()
        self.body = body
        self.min_level = min_level
        self.first_index = min_level - 2
        self.in_channels_list = list(in_channels_list)
        extra_blocks = LastLevelMaxPool() if extra == "maxpool" else LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(self.in_channels_list, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels
        strides = list(getattr(body, "out_strides", [2**lvl for lvl in range(2, 2 + len(self.in_channels_list))]))
        strides = strides[self.first_index :]
        extras = 1 if extra == "maxpool" else 2
        self.out_strides = strides + [strides[-1] * 2**i for i in range(1, extras + 1)]

    @property
    def num_levels(self) -> int:
        return len(self.out_strides)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = list(self.body(x).values())[self.first_index :]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class NativeSizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without the resize: images keep their pixel size
    (they are still normalised and padded to a multiple of 32 in a batch)."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


def _anchor_sizes(detector: str, num_levels: int, strides: Sequence[int], given: Any) -> tuple[tuple[float, ...], ...]:
    if given is not None:
        try:
            sizes = tuple(tuple(float(s) for s in (lvl if isinstance(lvl, (list, tuple)) else (lvl,))) for lvl in given)
        except (TypeError, ValueError):
            raise UsageError(f"anchor_sizes must be a list (one entry per FPN level) of sizes, got {given!r}") from None
        if len(sizes) != num_levels:
            raise UsageError(f"anchor_sizes needs one entry per FPN level ({num_levels}), got {len(sizes)}")
        if any(s <= 0 for lvl in sizes for s in lvl) or any(not lvl for lvl in sizes):
            raise UsageError(f"anchor sizes must be positive, got {given!r}")
        return sizes
    if detector == "fcos":
        return tuple((float(s),) for s in strides)
    base = [FIRST_ANCHOR_SIZE * 2**i for i in range(num_levels)]
    if detector == "retinanet":
        return tuple(tuple(round(b * 2 ** (k / 3), 3) for k in range(3)) for b in base)
    return tuple((b,) for b in base)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise UsageError(f"detector setting {value!r} ({type(value).__name__}) cannot be stored in spec.json")


def _check_option(detector: str, key: str, value: Any, default: Any) -> None:
    """A torchvision option must have its default's type (``True`` is no number, ``"abc"`` no float)."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        kind = "a finite number"
    else:
        return
    if not ok:
        raise UsageError(f"detector option {key} of {detector} must be {kind} (default {default!r}), got {value!r}")


def check_detector_options(detector: str, kwargs: dict[str, Any]) -> None:
    """Refuse unknown torchvision options and values of the wrong type (before any data is read)."""
    if detector not in DETECTORS:
        raise UsageError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    cls = {"faster_rcnn": FasterRCNN, "retinanet": RetinaNet, "fcos": FCOS}[detector]
    params = inspect.signature(cls.__init__).parameters
    allowed = set(params) - _RESERVED
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise UsageError(f"bad option for {detector}: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    for key, value in kwargs.items():
        _check_option(detector, key, value, params[key].default)


def build_detector(
    spec: Spec | str,
    detector: str = "faster_rcnn",
    num_classes: int = 1,
    norm: str = "bn",
    image_size: tuple[int, int] | str = (640, 512),
    anchor_sizes: Sequence[Any] | None = None,
    fpn_channels: int = 256,
    min_level: int = 2,
    backbone: nn.Module | None = None,
    aspect_ratios: Sequence[float] | None = None,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    resize: str = "native",
    representation_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision ``FasterRCNN`` / ``RetinaNet`` / ``FCOS`` on the backbone of ``spec``.

    ``num_classes`` counts foreground classes (labels ``1..num_classes``). ``image_size`` is
    ``(width, height)`` or ``"640x512"``. ``backbone`` is an already built trunk (e.g. with loaded
    weights) to use instead of ``build_backbone(spec, norm=norm)``. Other keyword arguments go to
    the torchvision constructor (e.g. ``rpn_batch_size_per_image``, ``topk_candidates``).
    ``representation_size`` (Faster R-CNN only) is the width of the two-layer box head, torchvision's
    ``TwoMLPHead`` (1024 when None); on a CPU that head, not the backbone, dominates a small detector's cost.
    The result carries ``model.spec`` and the settings returned by :func:`detector_settings`.
    """
    spec = get_spec(spec)
    if detector not in DETECTORS:
        raise UsageError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer (foreground classes), got {num_classes!r}")
    if resize not in RESIZE_MODES:
        raise UsageError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    width, height = parse_input_size(image_size)
    n_stages = len(spec.out_channels)
    if not isinstance(min_level, int) or not 2 <= min_level < 2 + n_stages:
        raise UsageError(f"min_level must be an integer from 2 to {1 + n_stages} for {spec}, got {min_level!r}")
    if not isinstance(fpn_channels, int) or fpn_channels < 1:
        raise UsageError(f"fpn_channels must be a positive integer, got {fpn_channels!r}")
    if representation_size is not None and (
        detector != "faster_rcnn" or not isinstance(representation_size, int) or representation_size < 1
    ):
        raise UsageError(
            f"representation_size must be a positive integer, for faster_rcnn only, got {representation_size!r}"
        )
    if detector == "fcos" and fpn_channels % 32:
        raise UsageError(f"fcos needs fpn_channels divisible by 32 (its head uses GroupNorm(32)), got {fpn_channels}")
    ratios = tuple(float(r) for r in (aspect_ratios or DEFAULT_ASPECT_RATIOS))
    if detector == "fcos":
        ratios = (1.0,)

    if backbone is None:
        from bhsearch.models import build_backbone

        backbone = build_backbone(spec, norm=norm)
    body_channels = list(getattr(backbone, "out_channels", spec.out_channels))
    if body_channels != list(spec.out_channels):
        raise UsageError(f"backbone out_channels {body_channels} do not match the spec's {list(spec.out_channels)}")
    in_channels_list = list(spec.out_channels)[min_level - 2 :]
    extra = "maxpool" if detector == "faster_rcnn" else "p6p7"
    fpn = FPNBackbone(backbone, in_channels_list, fpn_channels, extra, min_level)
    sizes = _anchor_sizes(detector, fpn.num_levels, fpn.out_strides, anchor_sizes)
    anchors = AnchorGenerator(sizes, (ratios,) * len(sizes))

    check_detector_options(detector, kwargs)
    cls = {"faster_rcnn": FasterRCNN, "retinanet": RetinaNet, "fcos": FCOS}[detector]
    options = {**_DEFAULTS[detector], **kwargs}
    common = {
        "min_size": min(width, height),
        "max_size": max(width, height),
        "image_mean": [float(v) for v in image_mean],
        "image_std": [float(v) for v in image_std],
    }
    if detector == "faster_rcnn":
        pooler = MultiScaleRoIAlign([str(i) for i in range(len(in_channels_list))], 7, 2)
        if representation_size is not None:
            from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

            options["box_head"] = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
            options["box_predictor"] = FastRCNNPredictor(representation_size, num_classes + 1)
            num_outputs = None  # the predictor fixes the class count
        else:
            num_outputs = num_classes + 1
        model = FasterRCNN(fpn, num_outputs, rpn_anchor_generator=anchors, box_roi_pool=pooler, **common, **options)
    else:
        model = cls(fpn, num_classes + 1, anchor_generator=anchors, **common, **options)
    if resize == "native":
        old = model.transform
        model.transform = NativeSizeTransform(
            old.min_size, old.max_size, old.image_mean, old.image_std, size_divisible=old.size_divisible
        )
    model.spec = spec
    model.bhsearch_settings = _jsonable(
        {
            "detector": detector,
            "num_classes": num_classes,
            "norm": norm,
            "image_size": [width, height],
            "anchor_sizes": sizes,
            "aspect_ratios": ratios,
            "fpn_channels": fpn_channels,
            "min_level": min_level,
            "image_mean": common["image_mean"],
            "image_std": common["image_std"],
            "resize": resize,
            **({"representation_size": representation_size} if representation_size is not None else {}),
            **kwargs,
        }
    )
    return model


def detector_settings(model: nn.Module) -> dict[str, Any]:
    """The JSON-able keyword arguments that rebuild ``model``: ``build_detector(spec, **settings)``."""
    settings = getattr(model, "bhsearch_settings", None)
    if settings is None:
        raise UsageError("this model was not built by bhsearch.detectors.build_detector (no detector settings)")
    return dict(settings)


def settings_from_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """Detector settings stored under ``"detector"`` in a ``spec.json`` mapping (``{}`` when absent)."""
    settings = data.get(SETTINGS_KEY) if isinstance(data, dict) else None
    if settings is None:
        return {}
    if isinstance(settings, str):
        return {"detector": settings}
    if not isinstance(settings, dict):
        raise UsageError(f"spec.json field {SETTINGS_KEY!r} must be a mapping of detector settings")
    return dict(settings)


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file; a missing or unreadable file is a ``UsageError`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = require_file(path, "{path}: no such weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable safetensors file: {exc}") from None


def _skip(name: str) -> bool:
    return name.endswith("num_batches_tracked")  # absent in FrozenBatchNorm2d, harmless to drop


def load_state(model: nn.Module, state: dict[str, Tensor], source: str = "weights") -> nn.Module:
    """Strict ``load_state_dict`` whose ``UsageError`` names the first missing, unexpected or
    wrongly shaped tensor and both shapes (``num_batches_tracked`` entries are optional)."""
    own = model.state_dict()
    prefix = f"{source}: weights do not match the model"
    for name, tensor in own.items():
        if _skip(name):
            continue
        if name not in state:
            raise UsageError(f"{prefix}: missing tensor {name!r} (model shape {tuple(tensor.shape)})")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UsageError(
                f"{prefix}: tensor {name!r} has shape {tuple(state[name].shape)} in the file "
                f"but {tuple(tensor.shape)} in the model"
            )
    for name, tensor in state.items():
        if name not in own and not _skip(name):
            raise UsageError(f"{prefix}: unexpected tensor {name!r} (shape {tuple(tensor.shape)})")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors file into ``model`` (strict; dtypes are cast) and return ``model``.

    Works for any module: ``load_weights(detector.backbone.body, "backbone.safetensors")`` loads
    a pre-trained trunk. A mismatch raises ``UsageError`` naming the first offending tensor.
    """
    return load_state(model, read_safetensors(path), str(path))


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model.state_dict()`` to a safetensors file atomically (``bhsearch.fileio``, mode 0644)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp)))


__all__ = [
    "DETECTORS",
    "FPNBackbone",
    "NativeSizeTransform",
    "build_detector",
    "check_detector_options",
    "detector_settings",
    "load_state",
    "load_weights",
    "read_safetensors",
    "save_weights",
    "settings_from_metadata",
]

"""Export bhsearch backbones to the detectors people use: torchvision, ONNX, MMDetection, timm.

Python API::

    from bhsearch.export import build_detector, export
    model = build_detector("export/spec.json", detector="faster_rcnn", num_classes=1, weights=...)
    result = export("bh-resnet50", "onnx", "export/", input_size="640x512")

timm models (``bh_resnet50``, ``bh_hrnet18``, ``bh_hrnet32``, ``bhsearch_*``) are registered by
``import bhsearch.export.timm``. Importing this package itself does not import torch.

``build_detector`` and ``export`` take a spec, a registered name, a spec id, a ``spec.json``
path, an export or fine-tune folder (``spec.json`` + ``weights.safetensors`` /
``model.safetensors``), or a study directory (``results.csv`` + ``best_spec.json``): its best trial's
fine-tuned detector and settings, or any trial's with ``trial=``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.export.common import BODY_PREFIX, ExportSource, backbone_state, resolve_source

TARGETS = ("torchvision", "onnx", "mmdet", "timm")
MAX_EXPORT_SIDE = 4096  # pixels; the exporters run the model at the export size

# Settings that describe the backbone + FPN + input (kept when another detector type is asked for).
_SHARED_SETTINGS = ("norm", "image_size", "fpn_channels", "min_level", "image_mean", "image_std", "resize")


@dataclass
class ExportResult:
    """What an export wrote: the folder, the files (names inside it) and a report (e.g. ONNX errors)."""

    target: str
    out_dir: Path
    files: list[str]
    spec_id: str
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "out_dir": str(self.out_dir),
            "files": self.files,
            "spec_id": self.spec_id,
            "report": self.report,
        }


def detector_kwargs(
    source: ExportSource, detector: str | None = None, num_classes: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for ``bhsearch.detectors.build_detector`` from stored settings and overrides."""
    settings = dict(source.settings)
    if detector is not None and settings.get("detector", detector) != detector:
        settings = {k: v for k, v in settings.items() if k in _SHARED_SETTINGS}
    if detector is not None:
        settings["detector"] = detector
    if num_classes is not None:
        settings["num_classes"] = num_classes
    settings.update(overrides)
    settings.setdefault("detector", "faster_rcnn")
    return settings


def load_into_detector(model: Any, state: dict[str, Any], what: str) -> str:
    """Load a detector state (strict) or a trunk-only state (into ``model.backbone.body``).

    Returns ``"detector"`` or ``"backbone"`` — which part the weights covered.
    """
    from bhsearch.detectors import load_state

    if any(not k.startswith(BODY_PREFIX) for k in state) and any(k.startswith("backbone.") for k in state):
        load_state(model, state, what)
        return "detector"
    load_state(model.backbone.body, backbone_state(state), what)
    return "backbone"


def weights_note(part: str | None, path: str | Path | None) -> str:
    """How an export's weights were obtained, for reports and READMEs."""
    if part is None or path is None:
        return "random initialisation (no weights given)"
    if part == "detector":
        return f"all layers from {Path(path).name}"
    return f"backbone from {Path(path).name}; FPN and heads untrained"


def build_detector(
    spec_or_path: Any,
    detector: str | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    trial: str | None = None,
    **kwargs: Any,
):
    """A torchvision detector for ``spec_or_path``, rebuilt with its stored detector settings.

    ``detector`` / ``num_classes`` default to the stored settings (else ``faster_rcnn`` / 1);
    other keyword arguments override settings (see ``bhsearch.detectors.build_detector``).
    ``weights`` is a safetensors file with a whole detector (``bhsearch finetune``'s
    ``model.safetensors``) or a backbone only (``bhsearch pretrain``'s ``backbone.safetensors``);
    an export / fine-tune folder loads its own weights unless ``weights`` is given, a study directory its
    best trial's fine-tuned detector (or ``trial``'s) with the settings it was trained with.
    The model is returned in eval mode.
    """
    from bhsearch import detectors
    from bhsearch.detectors import read_safetensors

    source = resolve_source(spec_or_path, trial=trial, need_weights=weights is None)
    model = detectors.build_detector(source.spec, **detector_kwargs(source, detector, num_classes, **kwargs))
    path = weights if weights is not None else source.weights
    if path is not None:
        model.bhsearch_weights_scope = load_into_detector(model, read_safetensors(path), str(path))
    return model.eval()


def export(
    spec_or_path: Any,
    target: str,
    out: str | Path = "export",
    detector: str | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    input_size: Any = (640, 512),
    trial: str | None = None,
    **options: Any,
) -> ExportResult:
    """Export ``spec_or_path`` to ``target`` (one of ``TARGETS``) in the folder ``out``.

    A study directory exports its best trial (``trial``: any trial id of ``results.csv``) with its fine-tuned
    weights and detector settings; a trial without fine-tuned weights is an error unless ``weights`` is given.

    Files are written into a temporary folder beside ``out`` and moved in at the end, so a
    failure leaves ``out`` untouched.
    """
    if target not in TARGETS:
        raise UsageError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    from importlib import import_module

    from bhsearch.spec import parse_input_size

    size = parse_input_size(input_size)
    if max(size) > MAX_EXPORT_SIDE:  # the exporters trace and check the model at this size
        raise UsageError(f"export input must be at most {MAX_EXPORT_SIDE} px a side, got {size[0]}x{size[1]}")
    source = resolve_source(spec_or_path, trial=trial, need_weights=weights is None)
    if weights is not None:
        source.weights = Path(weights)
    module = import_module(f"bhsearch.export.{target}")
    return module.export(source, Path(out), detector=detector, num_classes=num_classes, input_size=size, **options)


__all__ = [
    "TARGETS",
    "ExportResult",
    "ExportSource",
    "build_detector",
    "detector_kwargs",
    "export",
    "load_into_detector",
    "weights_note",
    "resolve_source",
]

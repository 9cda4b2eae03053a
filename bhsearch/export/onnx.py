"""Export target ``onnx``: the backbone (and the torchvision detector) as ONNX with dynamic input
size, checked with onnxruntime against PyTorch (max abs error in ``onnx_report.json``).

Uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which handles
torchvision's detection models. The backbone takes ``image`` (N x 3 x H x W, normalised) and
returns ``c2..c5``; the detector takes one ``image`` (3 x H x W, float in [0, 1]) and returns
``boxes`` (x0, y0, x1, y1 in pixels), ``scores`` and ``labels`` (1 = first foreground class).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bhsearch.errors import UsageError
from bhsearch.export import ExportResult, detector_kwargs, load_into_detector, weights_note
from bhsearch.export.common import ExportSource, file_stem, readme_section, staged_output

OPSET = 17
BACKBONE_TOLERANCE = 1e-3  # max abs error the tests accept on float32 feature maps of magnitude <= 1e3


class _BackboneOutputs(nn.Module):
    """The backbone with a tuple output (ONNX graphs return tuples, not dicts)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(x).values())


class _DetectorOutputs(nn.Module):
    """A torchvision detector on one image, returning ``(boxes, scores, labels)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def _sample(channels_first_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(channels_first_shape, generator=gen)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many types; report them in one line
            raise UsageError(f"ONNX export of {path.name} failed: {type(exc).__name__}: {exc}") from None


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _other_size(width: int, height: int) -> tuple[int, int]:
    """A second input size to exercise the dynamic axes (multiples of 32, different from the first)."""
    return width + 32 if width < 2048 else width - 32, height + 64 if height < 2048 else height - 64


def export_backbone(backbone: nn.Module, path: str | Path, input_size: tuple[int, int] = (640, 512)) -> list[str]:
    """Write ``backbone`` as ONNX (dynamic batch, height, width); returns the output names."""
    path = Path(path)
    backbone = backbone.eval()
    width, height = input_size
    x = _sample((1, 3, height, width), 0)
    with torch.no_grad():
        names = list(backbone(x).keys())
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in names})
    _export(_BackboneOutputs(backbone).eval(), (x,), path, ["image"], names, axes)  # eval: export restores modes
    return names


def check_backbone(path: str | Path, backbone: nn.Module, sizes: list[tuple[int, int]]) -> dict[str, dict[str, float]]:
    """onnxruntime vs PyTorch for each ``(width, height)`` in ``sizes`` (batch of 2):
    ``max_abs_error`` over all feature maps and ``max_abs_value`` of the PyTorch maps (randomly
    initialised HRNets reach 1e6 and more, so judge the error relative to it)."""
    session = _session(Path(path))
    report = {}
    backbone = backbone.eval()
    for i, (w, h) in enumerate(sizes):
        x = _sample((2, 3, h, w), 10 + i)
        with torch.no_grad():
            ref = list(backbone(x).values())
        got = session.run(None, {"image": x.numpy()})
        error = max(float((torch.from_numpy(g) - r).abs().max()) for g, r in zip(got, ref, strict=True))
        report[f"{w}x{h}"] = {"max_abs_error": error, "max_abs_value": max(float(r.abs().max()) for r in ref)}
    return report


def export_detector(model: nn.Module, path: str | Path, input_size: tuple[int, int] = (640, 512)) -> None:
    """Write a torchvision detector as ONNX taking one image of exactly ``input_size`` (3 x H x W).

    The image size is fixed: torchvision clips boxes with ``torch.tensor(width)`` while tracing,
    which the TorchScript exporter records as a constant, so other sizes would give wrong boxes.
    """
    width, height = input_size
    axes = {"boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"}}
    image = _sample((3, height, width), 1)
    wrapper = _DetectorOutputs(model).eval()
    _export(wrapper, (image,), Path(path), ["image"], ["boxes", "scores", "labels"], axes)


def check_detector(path: str | Path, model: nn.Module, sizes: list[tuple[int, int]]) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch detections: counts and max abs error of boxes and scores."""
    session = _session(Path(path))
    model = model.eval()
    report: dict[str, Any] = {}
    for i, (w, h) in enumerate(sizes):
        image = _sample((3, h, w), 20 + i)
        with torch.no_grad():
            ref = model([image])[0]
        boxes, scores, labels = (torch.from_numpy(a) for a in session.run(None, {"image": image.numpy()}))
        entry: dict[str, Any] = {"detections": len(ref["boxes"]), "onnx_detections": len(boxes)}
        if len(boxes) == len(ref["boxes"]):
            entry.update(compare_detections(ref, {"boxes": boxes, "scores": scores, "labels": labels}))
        report[f"{w}x{h}"] = entry
    return report


def compare_detections(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Max abs box / score errors of two equally long detection lists compared as *sets*.

    Detections are matched one to one (Hungarian, on the largest coordinate difference; a label
    mismatch costs extra), so two near-equal scores that swap places between runtimes do not show
    up as a box error of the size of the image.
    """
    from scipy.optimize import linear_sum_assignment

    rb, gb = ref["boxes"].double(), got["boxes"].double()
    if not len(rb):
        return {"boxes_max_abs_error": 0.0, "scores_max_abs_error": 0.0, "labels_equal": True}
    cost = (rb[:, None, :] - gb[None, :, :]).abs().amax(dim=2)
    cost = cost + 1e6 * (ref["labels"][:, None] != got["labels"][None, :]).double()
    rows, cols = linear_sum_assignment(cost.numpy())
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    return {
        "boxes_max_abs_error": float((rb[rows] - gb[cols]).abs().max()),
        "scores_max_abs_error": float((ref["scores"][rows].double() - got["scores"][cols].double()).abs().max()),
        "labels_equal": bool(torch.equal(ref["labels"][rows], got["labels"][cols])),
    }


README = """\
## ONNX

- `{backbone}`: the backbone `{spec_id}`; input `image` (N x 3 x H x W, normalised with the
  ImageNet mean/std, H and W multiples of 32) → outputs {outputs} (strides {strides}).
{detector_line}
- `onnx_report.json`: max abs error of onnxruntime vs PyTorch (backbone at {sizes}; opset {opset}).

```python
import numpy as np, onnxruntime as ort

session = ort.InferenceSession("{folder}/{backbone}", providers=["CPUExecutionProvider"])
features = session.run(None, {{"image": np.zeros((1, 3, {height}, {width}), np.float32)}})
```
"""

DETECTOR_LINE = """\
- `{name}`: the torchvision {detector} ({scope}); input `image` (3 x {height} x {width}, float RGB
  in [0, 1]; this size only — torchvision's box clipping is traced as a constant) → `boxes`
  (x0, y0, x1, y1 pixels), `scores`, `labels` (1 = person)."""


def export(
    source: ExportSource,
    out: Path,
    detector: str | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] = (640, 512),
    backbone_only: bool = False,
    verify: bool = True,
    **options: Any,
) -> ExportResult:
    """Write ``<name>.backbone.onnx`` (and ``<name>.<detector>.onnx``) plus ``onnx_report.json``."""
    import onnxruntime

    from bhsearch import detectors
    from bhsearch.detectors import read_safetensors

    kwargs = detector_kwargs(source, detector, num_classes, **options)
    model = detectors.build_detector(source.spec, **kwargs).eval()
    part = None
    if source.weights is not None:
        part = load_into_detector(model, read_safetensors(source.weights), str(source.weights))
    scope = weights_note(part, source.weights)
    backbone = model.backbone.body
    stem = file_stem(source.spec)
    sizes = [tuple(input_size), _other_size(*input_size)]
    report: dict[str, Any] = {
        "spec_id": source.spec.id,
        "input_size": list(input_size),
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=False)",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "weights": scope,
    }
    files = [f"{stem}.backbone.onnx"]
    with staged_output(out) as tmp:
        names = export_backbone(backbone, tmp / files[0], input_size)
        if verify:
            report["backbone_check"] = check_backbone(tmp / files[0], backbone, sizes)
        detector_line = ""
        if not backbone_only:
            name = f"{stem}.{kwargs['detector']}.onnx"
            export_detector(model, tmp / name, input_size)
            files.append(name)
            if verify:
                report["detector_check"] = check_detector(tmp / name, model, sizes[:1])
            detector_line = DETECTOR_LINE.format(
                name=name, detector=kwargs["detector"], scope=scope, width=input_size[0], height=input_size[1]
            )
        (tmp / "onnx_report.json").write_text(json.dumps(report, indent=2) + "\n")
        text = README.format(
            backbone=files[0],
            spec_id=source.spec.id,
            outputs=", ".join(f"`{n}`" for n in names),
            strides=", ".join(str(s) for s in source.spec.out_strides),
            detector_line=detector_line,
            sizes=" and ".join(f"{w}x{h}" for w, h in sizes),
            opset=OPSET,
            folder=out.as_posix(),
            width=input_size[0],
            height=input_size[1],
        )
        readme_section(out, tmp, "onnx", text)
    files += ["onnx_report.json", "README.md"]
    return ExportResult("onnx", out, files, source.spec.id, report)


__all__ = [
    "BACKBONE_TOLERANCE",
    "check_backbone",
    "check_detector",
    "compare_detections",
    "export",
    "export_backbone",
    "export_detector",
]

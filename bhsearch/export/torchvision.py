"""Export target ``torchvision``: ``spec.json`` (spec + detector settings), ``weights.safetensors``
(the whole detector's state) and a README section showing how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bhsearch.export import ExportResult, detector_kwargs, load_into_detector, weights_note
from bhsearch.export.common import ExportSource, readme_section, staged_output
from bhsearch.spec import save_spec

README = """\
## torchvision ({detector})

`spec.json` holds the backbone spec `{spec_id}` and the detector settings; `weights.safetensors`
the detector's weights ({scope}). Rebuild the stock torchvision model with:

```python
from bhsearch.export import build_detector

model = build_detector("{folder}/spec.json", weights="{folder}/weights.safetensors")  # eval mode
detections = model([image])  # image: float tensor 3xHxW in [0, 1], kept at native size
```

or, without the `bhsearch.export` helpers:

```python
import json
from bhsearch.detectors import build_detector, load_weights

meta = json.load(open("{folder}/spec.json"))
model = load_weights(build_detector(meta["spec"], **meta["detector"]), "{folder}/weights.safetensors")
```
"""


def export(
    source: ExportSource,
    out: Path,
    detector: str | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] = (640, 512),
    **options: Any,
) -> ExportResult:
    """Write the torchvision export of ``source`` into ``out``."""
    from bhsearch import detectors
    from bhsearch.detectors import detector_settings, read_safetensors, save_weights

    kwargs = detector_kwargs(source, detector, num_classes, **options)
    if "image_size" not in source.settings:
        kwargs.setdefault("image_size", input_size)
    model = detectors.build_detector(source.spec, **kwargs)
    part = None
    if source.weights is not None:
        part = load_into_detector(model, read_safetensors(source.weights), str(source.weights))
    scope = weights_note(part, source.weights)
    settings = detector_settings(model)
    with staged_output(out) as tmp:
        save_spec(
            source.spec, tmp / "spec.json", detector=settings, weights="weights.safetensors", origin=source.origin
        )
        save_weights(model, tmp / "weights.safetensors")
        text = README.format(detector=settings["detector"], spec_id=source.spec.id, scope=scope, folder=out.as_posix())
        readme_section(out, tmp, "torchvision", text)
    files = ["spec.json", "weights.safetensors", "README.md"]
    return ExportResult("torchvision", out, files, source.spec.id, {"detector": settings, "weights": scope})


__all__ = ["export"]

"""WiderFace (Yang et al., CVPR 2016): reader, synthetic generator, the official evaluator, the face detector.

``reader`` (``wider_face_split`` text files and the evaluation ``.mat`` files), ``synthetic``
(``write_widerface``), ``evaluate`` (official easy / medium / hard AP), ``detector`` (TinaFace-style RetinaNet).
"""

from __future__ import annotations

from bhsearch.tasks.base import Benchmark

BENCHMARK = Benchmark(
    name="widerface",
    title="WiderFace",
    metric="AP_hard",
    metric_keys=("AP_easy", "AP_medium", "AP_hard"),
    num_classes=1,
    data_kinds=("widerface", "synthetic-widerface"),
    evaluator="bhsearch.tasks.widerface.evaluate:evaluate_widerface",
    generator="bhsearch.tasks.widerface.synthetic:write_widerface",
    reader="bhsearch.tasks.widerface.reader:WiderFaceDataset",
    splits=("train", "val"),
    detector_defaults={"detector": "retinanet", "image_size": 640},
    protocols=("official",),
)

__all__ = ["BENCHMARK"]

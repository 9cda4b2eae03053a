"""AI-TOD (Wang et al., 2021; 8 classes, mean object 12.8 px): reader, synthetic generator, toolkit evaluator."""

from __future__ import annotations

from bhsearch.tasks.base import Benchmark

BENCHMARK = Benchmark(
    name="aitod",
    title="AI-TOD",
    metric="AP50",
    metric_keys=("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m"),
    num_classes=8,
    data_kinds=("aitod", "synthetic-aitod"),
    evaluator="bhsearch.tasks.aitod.evaluate:evaluate_aitod",
    generator="bhsearch.tasks.aitod.synthetic:write_aitod",
    reader="bhsearch.tasks.aitod.reader:read_aitod",
    splits=("trainval", "test"),
    detector_defaults={"detector": "faster_rcnn", "tile": (800, 800), "overlap": 0, "max_dets": 1500, "min_level": 2},
    protocols=("aitod",),
)

__all__ = ["BENCHMARK"]

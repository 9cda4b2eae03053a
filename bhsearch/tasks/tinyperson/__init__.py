"""TinyPerson (Yu et al., WACV 2020): reader and tiler, synthetic generator, the official evaluator.

``reader`` (COCO JSON with ignore / uncertain / dense flags, tiles), ``synthetic`` (``write_tinyperson``),
``evaluate`` (the official TinyBenchmark AP protocol, ``coco`` beside it), ``miss_rate`` (the official MR).
"""

from __future__ import annotations

from bhsearch.tasks.base import Benchmark

BENCHMARK = Benchmark(
    name="tinyperson",
    title="TinyPerson",
    metric="AP50_tiny",
    metric_keys=("AP50_tiny", "AP50_tiny1", "AP50_tiny2", "AP50_tiny3", "AP50_small", "MR50_tiny"),
    num_classes=1,
    data_kinds=("tinyperson", "synthetic-tinyperson"),
    evaluator="bhsearch.tasks.tinyperson.evaluate:evaluate",
    generator="bhsearch.tasks.tinyperson.synthetic:write_tinyperson",
    reader="bhsearch.tasks.tinyperson.reader:read_tinyperson",
    splits=("train", "test"),
    detector_defaults={"detector": "faster_rcnn", "tile": (640, 512), "overlap": 30, "max_dets": 200, "min_level": 2},
    protocols=("official", "coco"),
)

__all__ = ["BENCHMARK"]

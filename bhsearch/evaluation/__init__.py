"""Detection evaluation: TinyPerson AP/MR with the TinyBenchmark rules (numpy, no torch)."""

from __future__ import annotations

from bhsearch.evaluation.tinyperson import IOU_THRESHOLDS, RANGE_NAMES, area_ranges, evaluate

__all__ = ["IOU_THRESHOLDS", "RANGE_NAMES", "area_ranges", "evaluate"]

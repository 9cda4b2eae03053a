"""The small interface every detection benchmark implements (one sub-package per benchmark)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Benchmark:
    """A detection benchmark: where its parts live and what it reports.

    The parts are named ``"module:function"`` and imported on first use, so looking a benchmark up
    costs nothing (no torch, no PIL). ``data_kinds`` are the ``KIND`` names of ``--data KIND:PATH``
    references it reads; ``metric`` is the headline key its evaluator returns (the study score).
    """

    name: str
    title: str
    metric: str
    metric_keys: tuple[str, ...]
    num_classes: int
    data_kinds: tuple[str, ...]
    evaluator: str  # evaluate(gt, dets, **options) -> metrics dict (percent) with "settings"
    generator: str  # synthesize(out_dir, **options) -> info dict
    reader: str  # read(path, split) -> dataset or split object
    splits: tuple[str, str]  # (training split, evaluation split) names of the reader
    detector_defaults: Mapping[str, Any] = field(default_factory=dict)
    protocols: tuple[str, ...] = ()

    def evaluate(self, gt: Any, dets: Any, **options: Any) -> dict[str, Any]:
        """Score COCO-style detections ``dets`` against ``gt`` with the benchmark's official protocol."""
        return _resolve(self.evaluator)(gt, dets, **options)

    def synthesize(self, out_dir: str | Path, **options: Any) -> Any:
        """Write a synthetic stand-in in the benchmark's real on-disk format."""
        return _resolve(self.generator)(out_dir, **options)

    def read(self, path: str | Path, split: str | None = None) -> Any:
        """Read ``split`` (default: the training split) of a copy of the benchmark on disk."""
        return _resolve(self.reader)(path, split or self.splits[0])


__all__ = ["Benchmark"]

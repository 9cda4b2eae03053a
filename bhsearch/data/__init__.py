"""Datasets in their real on-disk formats, synthetic stand-ins and tiling.

Importing this package is cheap (no torch, no PIL); the readers live in submodules:
``cifar.Cifar100``, ``imagenet32.ImageNet32``, ``imagenet.ImageNetFolder``, ``tinyperson.TinyPersonDataset`` /
``tinyperson.TileDataset``, ``tiling``, ``synthetic`` and ``registry`` (``KIND:PATH`` refs).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Cifar100": "bhsearch.data.cifar",
    "ImageNet32": "bhsearch.data.imagenet32",
    "ImageNetFolder": "bhsearch.data.imagenet",
    "TinyPersonDataset": "bhsearch.tasks.tinyperson.reader",
    "TileDataset": "bhsearch.tasks.tinyperson.reader",
    "collate_tiles": "bhsearch.tasks.tinyperson.reader",
    "tile_windows": "bhsearch.data.tiling",
    "clip_boxes_to_tile": "bhsearch.data.tiling",
    "merge_detections": "bhsearch.data.tiling",
    "detections_to_coco": "bhsearch.data.tiling",
    "open_classification": "bhsearch.data.registry",
    "open_detection": "bhsearch.data.registry",
    "resolve_tinyperson": "bhsearch.tasks.tinyperson.reader",
    "load_pickle": "bhsearch.data.safe_pickle",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bhsearch.data' has no attribute {name!r}")

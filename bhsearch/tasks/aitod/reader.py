"""AI-TOD on disk: the release layout and a reader (the generator is ``bhsearch.tasks.aitod.synthetic``).

Layout of the AI-TOD v1 release (as the AI-TOD toolkit and MMDetection configs read it)::

    AI-TOD/annotations/aitod_trainval_v1.json   (also aitod_train_v1.json / aitod_val_v1.json)
    AI-TOD/annotations/aitod_test_v1.json
    AI-TOD/trainval/images/*.png                (800x800)
    AI-TOD/test/images/*.png

Annotations are COCO JSON with the 8 classes of :data:`AITOD_CLASSES` (ids 1–8), ``bbox`` [x, y,
w, h], ``area`` and ``iscrowd``. Objects are tiny: mean size 12.8 px, most under 16 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.errors import DataError, UsageError
from bhsearch.tasks.aitod.evaluate import AITOD_CLASSES

SPLITS = ("trainval", "test")
ANNOTATION_FILES = {
    "trainval": ("aitod_trainval_v1.json", "aitod_train_v1.json"),
    "test": ("aitod_test_v1.json", "aitod_val_v1.json"),
}


@dataclass(frozen=True)
class AitodSplit:
    """One split: its annotation file, image folder and parsed COCO dict."""

    annotations: Path
    images: Path
    data: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        anns = self.data["annotations"]
        sizes = np.sqrt([max(float(a.get("area", 0.0)), 0.0) for a in anns]) if anns else np.zeros(0)
        per_class = {c["name"]: 0 for c in self.data.get("categories", [])}
        names = {c["id"]: c["name"] for c in self.data.get("categories", [])}
        for a in anns:
            key = names.get(a["category_id"], str(a["category_id"]))
            per_class[key] = per_class.get(key, 0) + 1
        return {
            "images": len(self.data["images"]),
            "objects": len(anns),
            "size_mean": float(sizes.mean()) if sizes.size else 0.0,
            "frac_lt_16": float((sizes < 16).mean()) if sizes.size else 0.0,
            "per_class": per_class,
        }


def resolve_aitod(path: str | Path, split: str) -> tuple[Path, Path]:
    """``(annotation_json, image_folder)`` of ``split`` (``trainval`` or ``test``) under an AI-TOD root."""
    if split not in SPLITS:
        raise UsageError(f"AI-TOD split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(path)
    if not (root / "annotations").is_dir() and (root / "AI-TOD" / "annotations").is_dir():
        root = root / "AI-TOD"
    if not (root / "annotations").is_dir():
        raise DataError(f"{path}: no AI-TOD/annotations folder (expected the AI-TOD release layout)")
    for name in ANNOTATION_FILES[split]:
        if (root / "annotations" / name).is_file():
            images = root / split / "images"
            if not images.is_dir():
                raise DataError(f"{root}: image folder {split}/images is missing")
            return root / "annotations" / name, images
    raise DataError(f"{root}/annotations: none of {', '.join(ANNOTATION_FILES[split])} found")


def read_aitod(path: str | Path, split: str = "trainval") -> AitodSplit:
    """Read and check one split: every annotation's image and category exist, boxes are [x, y, w, h] ≥ 0."""
    from bhsearch.tasks.tinyperson.reader import load_json

    ann_path, images = resolve_aitod(path, split)
    data = load_json(ann_path)
    image_ids = {img.get("id") for img in data["images"] if isinstance(img, dict)}
    cat_ids = {c.get("id") for c in data.get("categories", []) if isinstance(c, dict)}
    for i, a in enumerate(data["annotations"]):
        where = f"{ann_path}: annotations[{i}]"
        if not isinstance(a, dict) or a.get("image_id") not in image_ids:
            raise DataError(f"{where}: image_id is not in 'images'")
        if cat_ids and a.get("category_id") not in cat_ids:
            raise DataError(f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
        box = a.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or any(isinstance(v, bool) for v in box):
            raise DataError(f"{where}: 'bbox' must be [x, y, w, h]")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
            raise DataError(f"{where}: 'bbox' must hold 4 finite numbers with w, h >= 0, got {box}")
    return AitodSplit(ann_path, images, data)


__all__ = ["AITOD_CLASSES", "AitodSplit", "read_aitod", "resolve_aitod"]

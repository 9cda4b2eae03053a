"""AI-TOD on disk: the release layout, a reader, and a synthetic stand-in written in that layout.

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
from bhsearch.evaluation.aitod import AITOD_CLASSES

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
    from bhsearch.data.tinyperson import load_json

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


def write_aitod(
    out_dir: str | Path,
    n_trainval: int = 6,
    n_test: int = 3,
    seed: int = 0,
    image_size: int = 800,
    objects: tuple[int, int] = (20, 60),
) -> dict[str, Any]:
    """Write a synthetic ``out_dir/AI-TOD`` tree in the release layout; returns paths and size stats.

    Objects of the 8 classes are drawn as textured rectangles whose sizes follow a log-normal law
    with mean ≈ 12.8 px (AI-TOD's), on a noisy background; ~1 % are ``iscrowd``.
    """
    from PIL import Image

    from bhsearch.fileio import atomic_dir, atomic_write_json

    if n_trainval < 0 or n_test < 0 or objects[0] < 0 or objects[1] < objects[0] or image_size < 64:
        raise UsageError("need non-negative image counts, objects given as (min, max), image_size >= 64")
    rng = np.random.default_rng(seed)
    categories = [{"id": k, "name": name} for k, name in enumerate(AITOD_CLASSES, 1)]
    out = Path(out_dir) / "AI-TOD"
    sizes_all: list[float] = []
    with atomic_dir(out) as tmp:
        for split, n in (("trainval", n_trainval), ("test", n_test)):
            (tmp / split / "images").mkdir(parents=True)
            images, anns = [], []
            for i in range(n):
                pixels = rng.normal(110, 18, (image_size, image_size, 3))
                image_id = i + 1
                for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
                    s = float(np.clip(rng.lognormal(math.log(11.5), 0.45), 2.0, 64.0))
                    ar = float(rng.uniform(0.6, 1.6))
                    w, h = s * math.sqrt(ar), s / math.sqrt(ar)
                    x, y = rng.uniform(0, image_size - w - 1), rng.uniform(0, image_size - h - 1)
                    cat = int(rng.integers(1, len(AITOD_CLASSES) + 1))
                    shade = 30 + 25 * cat
                    x0, y0, x1, y1 = int(x), int(y), int(math.ceil(x + w)), int(math.ceil(y + h))
                    pixels[y0:y1, x0:x1] = shade + rng.normal(0, 6, (y1 - y0, x1 - x0, 3))
                    box = [round(x0, 2), round(y0, 2), float(x1 - x0), float(y1 - y0)]
                    anns.append(
                        {
                            "id": len(anns) + 1,
                            "image_id": image_id,
                            "category_id": cat,
                            "bbox": box,
                            "area": round(box[2] * box[3], 4),
                            "iscrowd": int(rng.random() < 0.01),
                        }
                    )
                    sizes_all.append(math.sqrt(box[2] * box[3]))
                name = f"syn_{split}_{i:05d}.png"
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    tmp / split / "images" / name, compress_level=1
                )
                images.append({"id": image_id, "file_name": name, "width": image_size, "height": image_size})
            atomic_write_json(
                tmp / "annotations" / ANNOTATION_FILES[split][0],
                {"images": images, "annotations": anns, "categories": categories},
                indent=None,
            )
    s = np.asarray(sizes_all)
    return {
        "root": str(out),
        "objects": int(s.size),
        "size_mean": float(s.mean()) if s.size else 0.0,
        "frac_lt_16": float((s < 16).mean()) if s.size else 0.0,
    }


__all__ = ["AITOD_CLASSES", "AitodSplit", "read_aitod", "resolve_aitod", "write_aitod"]

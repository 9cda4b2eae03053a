"""A synthetic AI-TOD written in the release layout (``bhsearch.tasks.aitod.reader``), for tests and demos."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.errors import UsageError
from bhsearch.tasks.aitod.evaluate import AITOD_CLASSES
from bhsearch.tasks.aitod.reader import ANNOTATION_FILES


def write_aitod(
    out_dir: str | Path,
    n_trainval: int = 6,
    n_test: int = 3,
    seed: int = 0,
    image_size: int = 800,
    objects: tuple[int, int] = (20, 60),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic ``out_dir/AI-TOD`` tree in the release layout; returns paths and size stats.

    Objects of the 8 classes are drawn as textured rectangles whose sizes follow a log-normal law
    with mean ≈ 12.8 px (AI-TOD's), on a noisy background; ~1 % are ``iscrowd``. The tree is built in a staging
    folder and renamed in; an existing ``AI-TOD`` folder is replaced only with ``overwrite``.
    """
    from PIL import Image

    from bhsearch.data.synthetic import building
    from bhsearch.fileio import atomic_write_json

    if n_trainval < 0 or n_test < 0 or objects[0] < 0 or objects[1] < objects[0] or image_size < 64:
        raise UsageError("need non-negative image counts, objects given as (min, max), image_size >= 64")
    rng = np.random.default_rng(seed)
    categories = [{"id": k, "name": name} for k, name in enumerate(AITOD_CLASSES, 1)]
    sizes_all: list[float] = []
    with building(out_dir, ("AI-TOD",), overwrite) as stage:
        tmp = stage / "AI-TOD"
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
        "root": str(Path(out_dir) / "AI-TOD"),
        "objects": int(s.size),
        "size_mean": float(s.mean()) if s.size else 0.0,
        "frac_lt_16": float((s < 16).mean()) if s.size else 0.0,
    }


__all__ = ["write_aitod"]

"""A synthetic TinyPerson written in the real on-disk format, so the real reader is what is tested.

``write_tinyperson``: a ``tiny_set/`` tree (JPEG/PNG + COCO JSON) of large sea/shore images with tiny
person-like objects (TinyPerson's size distribution), look-alike distractors, ignore regions, uncertain
boxes and a dense training image. Distributions are documented in ``docs/datasets.md``. All drawing is
vectorised numpy; everything is seeded and deterministic; the tree is built in a staging folder and
renamed into place (``bhsearch.data.synthetic.building``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.data.synthetic import building
from bhsearch.errors import UsageError

# --------------------------------------------------------------------------- TinyPerson-like detection

SIZE_LOGNORMAL = (2.56, 0.81)  # mu, sigma of ln(sqrt(w*h)): mean 18 px, sd ~17, ~70% <= 20 px
SIZE_CLIP = (2.5, 80.0)
SKIN = np.array([[224, 172, 140], [198, 134, 96], [141, 85, 54], [236, 192, 160]], np.float32)
CLOTHES = np.array(
    [
        [210, 40, 40],
        [240, 130, 30],
        [235, 215, 50],
        [30, 30, 35],
        [40, 70, 190],
        [235, 235, 235],
        [40, 150, 60],
        [180, 50, 160],
    ],
    np.float32,
)


def _smooth_matrix(n: int, cells: int, cell: float) -> np.ndarray:
    """(n, cells) Gaussian interpolation weights from a coarse grid of spacing ``cell`` to ``n`` pixels."""
    pos = np.arange(n, dtype=np.float32)[:, None] / cell
    grid = np.arange(cells, dtype=np.float32)[None, :] - 0.5
    wts = np.exp(-0.5 * ((pos - grid) / 0.6) ** 2)
    return wts / wts.sum(axis=1, keepdims=True)


def _lowfreq(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise of shape (h, w), roughly in [-1, 1]: a coarse random grid smoothly upsampled (2 matmuls)."""
    gh, gw = h // cell + 3, w // cell + 3
    small = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    with np.errstate(all="ignore"):  # OpenBLAS can leave stale FP flags: numpy then warns of values it did not make
        out = _smooth_matrix(h, gh, cell) @ small @ _smooth_matrix(w, gw, cell).T
    if not np.isfinite(out).all():  # a real invalid value, which the errstate would otherwise hide
        raise FloatingPointError("synthetic TinyPerson background: non-finite smooth noise")
    return out * np.float32(1.6)


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Textured sea with waves and a sandy shore; returns (float32 HxWx3 image, shore_y per column).

    The smooth fields are computed at half resolution (then repeated 2x) for speed; the pixel noise is full
    resolution.
    """
    full_h, full_w = h, w
    h, w = (h + 1) // 2, (w + 1) // 2
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    shore_frac = rng.uniform(0.0, 0.4)
    shore_y = h * (1 - shore_frac) + 0.04 * h * np.sin(x[0] / rng.uniform(150, 400) + rng.uniform(0, 6.3))
    shore_y = (shore_y + 0.02 * h * _lowfreq(rng, 1, w, 64)[0]).astype(np.float32)
    waves = np.sin(
        (2 * math.pi / rng.uniform(5, 11)) * y
        + (3 * math.pi) * _lowfreq(rng, h, w, 48)
        + np.float32(2 * math.pi * rng.uniform(-0.01, 0.01)) * x
    )
    crest = np.clip((waves - 0.93) * (0.7 / 0.07), 0, 0.7) * (_lowfreq(rng, h, w, 24) > 0.35)
    is_sand = np.clip((y - shore_y[None, :]) / 1.5 + 0.5, 0, 1)
    foam = np.clip(1 - np.abs(y - shore_y[None, :]) / 3.0, 0, 1) * 0.6
    sea_gain = (0.85 + 0.3 * y / h) * np.ones_like(waves)
    sea_add = 25 * _lowfreq(rng, h, w, 96) + 12 * waves
    sand_add = 18 * _lowfreq(rng, h, w, 40) + 8 * _lowfreq(rng, h, w, 6)
    sea_base = np.array([rng.uniform(25, 60), rng.uniform(80, 125), rng.uniform(105, 150)], np.float32)
    sand_base = np.array([rng.uniform(175, 210), rng.uniform(155, 185), rng.uniform(110, 145)], np.float32)
    img = np.empty((h, w, 3), np.float32)
    keep = (1 - crest) * (1 - is_sand) * (1 - foam)
    white = (230 * crest * (1 - is_sand) + sand_add * is_sand) * (1 - foam) + 240 * foam
    sea_term = sea_gain * keep
    sand_term = is_sand * (1 - foam)
    sea_add_term = sea_add * keep + white
    for c in range(3):
        img[..., c] = sea_base[c] * sea_term + sea_add_term + sand_base[c] * sand_term
    img = img.repeat(2, axis=0).repeat(2, axis=1)[:full_h, :full_w]
    img += (rng.random((full_h, full_w, 3), dtype=np.float32) - 0.5) * 17
    return img, np.repeat(shore_y * 2, 2)[:full_w]


def _coverage(pw: int, ph: int, ox: float, oy: float, ss: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel-centre coordinates relative to the sub-pixel object origin."""
    xs = (np.arange(pw * ss, dtype=np.float32) + 0.5) / ss - ox
    ys = (np.arange(ph * ss, dtype=np.float32) + 0.5) / ss - oy
    return np.meshgrid(xs, ys)


def _downsample(mask: np.ndarray, ss: int = 4) -> np.ndarray:
    h, w = mask.shape
    return mask.reshape(h // ss, ss, w // ss, ss).mean(axis=(1, 3))


def _paint(img: np.ndarray, x: float, y: float, bw: float, bh: float, layers, alpha: float = 1.0) -> None:
    """Composite ``layers`` [(mask_fn(X, Y) -> bool array in object units, rgb)] over box (x, y, bw, bh)."""
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = int(math.ceil(x + bw)), int(math.ceil(y + bh))
    x0c, y0c, x1c, y1c = max(x0, 0), max(y0, 0), min(x1, img.shape[1]), min(y1, img.shape[0])
    if x1c <= x0c or y1c <= y0c:
        return
    gx, gy = _coverage(x1 - x0, y1 - y0, x - x0, y - y0)
    u, v = gx / bw, gy / bh  # object units: 0..1 across the box
    patch = img[y0:y1, x0:x1] if (x0, y0, x1, y1) == (x0c, y0c, x1c, y1c) else None
    region = img[y0c:y1c, x0c:x1c]
    sl = (slice(y0c - y0, y1c - y0), slice(x0c - x0, x1c - x0))
    for fn, rgb in layers:
        m = _downsample(fn(u, v).astype(np.float32))[sl] * alpha
        region[...] = region * (1 - m[..., None]) + np.asarray(rgb, np.float32) * m[..., None]
    del patch


def _person_layers(rng: np.random.Generator, swimming: bool):
    skin = SKIN[rng.integers(len(SKIN))] + rng.normal(0, 10, 3)
    shirt = CLOTHES[rng.integers(len(CLOTHES))] + rng.normal(0, 12, 3)
    hair = np.array([40, 30, 25], np.float32) + rng.normal(0, 10, 3)
    if swimming:  # head and shoulders above water
        return [
            (lambda u, v: (np.abs(u - 0.5) < 0.45) & (v > 0.5) & (v < 1.0), shirt),
            (lambda u, v: ((u - 0.5) / 0.26) ** 2 + ((v - 0.3) / 0.28) ** 2 < 1, skin),
            (lambda u, v: ((u - 0.5) / 0.27) ** 2 + ((v - 0.18) / 0.16) ** 2 < 1, hair),
        ]
    legs = np.array([45, 55, 90], np.float32) + rng.normal(0, 15, 3) if rng.random() < 0.6 else skin
    return [
        (lambda u, v: (v > 0.52) & (np.abs(u - 0.33) < 0.13) | (v > 0.52) & (np.abs(u - 0.67) < 0.13), legs),
        (lambda u, v: (v > 0.2) & (v < 0.58) & (np.abs(u - 0.5) < 0.33), shirt),
        (lambda u, v: (v > 0.22) & (v < 0.5) & (np.abs(u - 0.5) > 0.36) & (np.abs(u - 0.5) < 0.5), skin),
        (lambda u, v: ((u - 0.5) / 0.22) ** 2 + ((v - 0.1) / 0.1) ** 2 < 1, skin),
    ]


def _distractor(rng: np.random.Generator, img: np.ndarray, x: float, y: float, s: float, on_sand: bool) -> None:
    kind = rng.choice(["buoy", "crest", "boat", "post"] + (["rock"] if on_sand else []))
    colour = CLOTHES[rng.integers(len(CLOTHES))] + rng.normal(0, 12, 3)
    if kind == "buoy":  # a round blob in clothing colours, sometimes with a band
        band = np.array([235, 235, 235], np.float32)
        layers = [(lambda u, v: (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25, colour)]
        if rng.random() < 0.5:
            layers.append((lambda u, v: ((u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25) & (np.abs(v - 0.5) < 0.1), band))
        _paint(img, x, y, s, s, layers)
    elif kind == "crest":  # an elongated white-ish streak
        white = np.array([225, 235, 240], np.float32) + rng.normal(0, 8, 3)
        _paint(
            img,
            x,
            y,
            s * 2.5,
            s * 0.6,
            [(lambda u, v: (u - 0.5) ** 2 / 0.25 + (v - 0.5) ** 2 / 0.25 < 1, white)],
            alpha=0.8,
        )
    elif kind == "boat":
        hull = np.array([rng.uniform(90, 240)] * 3, np.float32)
        _paint(
            img,
            x,
            y,
            s * 3,
            s * 1.2,
            [
                (lambda u, v: (v > 0.5) & (np.abs(u - 0.5) < 0.5 - 0.3 * (v - 0.5)), hull),
                (lambda u, v: (v > 0.15) & (v < 0.55) & (np.abs(u - 0.45) < 0.12), colour),
            ],
        )
    elif kind == "post":  # person-sized upright in clothing colours, but without a head
        _paint(
            img,
            x,
            y,
            s * 0.5,
            s * 1.8,
            [
                (lambda u, v: np.abs(u - 0.5) < 0.3, colour),
                (lambda u, v: (v < 0.2) & (np.abs(u - 0.5) < 0.5), colour * 0.6),
            ],
        )
    else:
        grey = np.array([rng.uniform(60, 110)] * 3, np.float32)
        _paint(img, x, y, s * 1.4, s, [(lambda u, v: (u - 0.5) ** 2 / 0.25 + (v - 0.6) ** 2 / 0.16 < 1, grey)])


def sample_person_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    mu, sigma = SIZE_LOGNORMAL
    return np.clip(rng.lognormal(mu, sigma, n), *SIZE_CLIP)


def _overlaps(box: tuple[float, float, float, float], placed: list) -> bool:
    if not placed:
        return False
    p = np.asarray(placed)
    x, y, w, h = box
    return bool(
        np.any(
            (p[:, 0] < x + w + 1) & (p[:, 0] + p[:, 2] + 1 > x) & (p[:, 1] < y + h + 1) & (p[:, 1] + p[:, 3] + 1 > y)
        )
    )


def _render_scene(rng: np.random.Generator, w: int, h: int, n_persons: int, dense: bool):
    """One image and its annotations (dicts without ids)."""
    img, shore_y = _background(rng, w, h)
    anns: list[dict[str, Any]] = []
    placed: list[tuple[float, float, float, float]] = []

    def person(s: float, uncertain: bool = False) -> None:
        for _ in range(30):
            cx, bottom = rng.uniform(0, w), rng.uniform(0.1 * h, h)
            swimming = bool(bottom < shore_y[int(min(cx, w - 1))])
            aspect = rng.uniform(0.9, 1.4) if swimming else rng.uniform(2.0, 3.0)  # h / w of the box
            bw, bh = s / math.sqrt(aspect), s * math.sqrt(aspect)
            x, y = cx - bw / 2, bottom - bh
            if x >= 0 and y >= 0 and x + bw <= w and not _overlaps((x, y, bw, bh), placed):
                break
        else:
            return
        placed.append((x, y, bw, bh))
        _paint(img, x, y, bw, bh, _person_layers(rng, swimming), alpha=0.4 if uncertain else 1.0)
        anns.append(
            {
                "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                "category_id": 1 if swimming else 2,
                "iscrowd": 0,
                "ignore": False,
                "uncertain": bool(uncertain),
                "logo": False,
                "in_dense_image": dense,
            }
        )

    sizes = sample_person_sizes(rng, n_persons)
    for s in sizes:
        person(float(s), uncertain=bool(rng.random() < 0.05))
    if not dense and rng.random() < 0.5:  # a crowd too packed to label one by one -> one ignore region
        cw, ch = rng.uniform(60, 140), rng.uniform(40, 90)
        if cw < w and ch < 0.9 * h:  # small images (--max-size near 64) may have no room for one
            cx, cy = rng.uniform(0, w - cw), rng.uniform(0.1 * h, h - ch)
            for _ in range(int(rng.integers(6, 14))):
                s = float(rng.uniform(6, 12))
                aspect = rng.uniform(2.0, 3.0)
                bw, bh = s / math.sqrt(aspect), s * math.sqrt(aspect)
                px, py = rng.uniform(cx, cx + cw - bw), rng.uniform(cy, cy + ch - bh)
                _paint(img, px, py, bw, bh, _person_layers(rng, False))
            placed.append((cx, cy, cw, ch))
            anns.append(
                {
                    "bbox": [round(cx, 2), round(cy, 2), round(cw, 2), round(ch, 2)],
                    "category_id": 1,
                    "iscrowd": 0,
                    "ignore": True,
                    "uncertain": False,
                    "logo": False,
                    "in_dense_image": dense,
                }
            )
    n_distract = int(max(n_persons, 10) * rng.uniform(0.8, 1.5))
    for s in sample_person_sizes(rng, n_distract):
        s = float(s)
        if 3 * s >= w or 2 * s >= 0.92 * h:
            continue  # does not fit this (small) image
        x, y = rng.uniform(0, w - 3 * s), rng.uniform(0.08 * h, h - 2 * s)
        if x < 0 or y < 0 or _overlaps((x, y, 3 * s, 2 * s), placed):
            continue
        _distractor(rng, img, x, y, s, on_sand=y > shore_y[int(min(max(x, 0), w - 1))])
    return np.clip(img, 0, 255).astype(np.uint8), anns


def write_tinyperson(
    out_dir: str | Path,
    n_train: int = 8,
    n_test: int = 4,
    seed: int = 0,
    min_size: int = 1000,
    max_size: int = 2500,
    persons: tuple[int, int] = (8, 40),
    dense: bool = True,
    image_format: str = "jpg",
    corner: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a TinyPerson-like ``out_dir/tiny_set`` tree; ``min_size``/``max_size`` bound the image width.

    Files: ``tiny_set/{train,test}/labeled_images/*.jpg``, ``annotations/tiny_set_train.json`` (no dense
    images), ``annotations/tiny_set_train_with_dense.json``, ``annotations/task/tiny_set_test_all.json``
    (merged ``person`` category) and, with ``corner``, ``annotations/task/tiny_set_test_all_corner.json``
    (each test image as 4 overlapping sub-images). With ``dense`` the first training image is dense
    (~4x the persons, every annotation ``in_dense_image``). Returns the written paths and size stats.
    """
    if image_format not in ("jpg", "png"):
        raise UsageError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if not 64 <= min_size <= max_size:
        raise UsageError(f"need 64 <= min_size <= max_size, got {min_size}, {max_size}")
    if n_train < 0 or n_test < 0 or persons[0] < 0 or persons[1] < persons[0]:
        raise UsageError("image and person counts must be non-negative and persons given as (min, max)")
    final = Path(out_dir) / "tiny_set"
    with building(out_dir, ("tiny_set",), overwrite) as stage:
        written = _write_tinyperson(
            stage / "tiny_set", n_train, n_test, seed, min_size, max_size, persons, dense, image_format, corner
        )
    staged = str(stage / "tiny_set")
    return {k: v.replace(staged, str(final), 1) if isinstance(v, str) else v for k, v in written.items()}


def _write_tinyperson(
    root: Path, n_train, n_test, seed, min_size, max_size, persons, dense, image_format, corner
) -> dict[str, Any]:
    from PIL import Image

    from bhsearch.data.tiling import split_targets, tile_windows

    rng = np.random.default_rng(seed)
    (root / "annotations" / "task").mkdir(parents=True, exist_ok=True)
    raw_categories = [
        {"id": 1, "name": "sea_person", "supercategory": "person"},
        {"id": 2, "name": "earth_person", "supercategory": "person"},
    ]
    written: dict[str, Any] = {"root": str(root)}
    all_sizes = []
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split / "labeled_images").mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            w = int(rng.integers(min_size, max_size + 1))
            h = int(w * rng.uniform(0.56, 0.8))
            is_dense = dense and i == 0 and split == "train"  # the released test file has no dense images
            k = int(rng.integers(persons[0], persons[1] + 1)) * (4 if is_dense else 1)
            pixels, img_anns = _render_scene(rng, w, h, k, is_dense)
            name = f"labeled_images/syn_{split}_{i:05d}.{image_format}"
            pil = Image.fromarray(pixels)
            if image_format == "jpg":
                pil.save(root / split / name, quality=92)
            else:
                pil.save(root / split / name, compress_level=1)
            image_id = len(images)
            images.append({"file_name": name, "height": h, "width": w, "id": image_id})
            for a in img_anns:
                a.update(image_id=image_id, id=len(anns), area=round(a["bbox"][2] * a["bbox"][3], 4))
                anns.append(a)
        sizes = [math.sqrt(a["area"]) for a in anns if not (a["ignore"] or a["uncertain"])]
        all_sizes += sizes
        if split == "train":
            dense_ids = {a["image_id"] for a in anns if a["in_dense_image"]}
            plain = {
                "images": [im for im in images if im["id"] not in dense_ids],
                "annotations": [a for a in anns if a["image_id"] not in dense_ids],
                "categories": raw_categories,
            }
            _dump(root / "annotations" / "tiny_set_train.json", plain)
            _dump(
                root / "annotations" / "tiny_set_train_with_dense.json",
                {"images": images, "annotations": anns, "categories": raw_categories},
            )
            written["train_json"] = str(root / "annotations" / "tiny_set_train.json")
        else:
            merged = [dict(a, category_id=1) for a in anns]
            task = {"images": images, "annotations": merged, "categories": [{"id": 1, "name": "person"}]}
            _dump(root / "annotations" / "task" / "tiny_set_test_all.json", task)
            written["test_json"] = str(root / "annotations" / "task" / "tiny_set_test_all.json")
            if corner:
                written["corner_json"] = str(_write_corner(task, root, split_targets, tile_windows))
    s = np.asarray(all_sizes)
    written["stats"] = {
        "boxes": int(s.size),
        "size_mean": float(s.mean()) if s.size else 0.0,
        "size_std": float(s.std()) if s.size else 0.0,
        "frac_le_20": float((s <= 20).mean()) if s.size else 0.0,
    }
    return written


def _write_corner(task: dict[str, Any], root: Path, split_targets, tile_windows) -> Path:
    images, anns = [], []
    by_image: dict[int, list] = {}
    for a in task["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in task["images"]:
        w, h = im["width"], im["height"]
        boxes = [a for a in by_image.get(im["id"], [])]
        xyxy = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in boxes],
            np.float64,
        ).reshape(-1, 4)
        tile = ((w + 1) // 2 + 25, (h + 1) // 2 + 25)
        for win in tile_windows(w, h, tile, min(50, min(tile) // 2)):  # 50 unless the image is tiny
            sub_id = len(images)
            images.append(
                {
                    "file_name": im["file_name"],
                    "id": sub_id,
                    "width": win[2] - win[0],
                    "height": win[3] - win[1],
                    "corner": list(win),
                    "origin_image_id": im["id"],
                }
            )
            t = split_targets(xyxy, np.zeros((0, 4)), win)
            for box, j in zip(t["boxes"], t["box_index"], strict=True):
                bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
                anns.append(
                    dict(
                        boxes[j],
                        id=len(anns),
                        image_id=sub_id,
                        bbox=[round(float(box[0]), 2), round(float(box[1]), 2), round(bw, 2), round(bh, 2)],
                        area=round(bw * bh, 4),
                    )
                )
    path = root / "annotations" / "task" / "tiny_set_test_all_corner.json"
    _dump(path, {"images": images, "annotations": anns, "categories": task["categories"]})
    return path


def _dump(path: Path, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh)

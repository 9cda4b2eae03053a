"""TinyPerson (Yu et al., WACV 2020) in its COCO-style JSON layout, and tiles for training/testing.

Annotation flags: ``ignore``, ``uncertain``, ``logo`` and ``iscrowd`` boxes become *ignore regions*
(never positives; the official evaluator folds ``uncertain`` into ignore); ``in_dense_image`` marks a
record as dense. Both raw categories (1 sea_person, 2 earth_person) merge into one person class (label 1).
Corner files (image entries with ``corner: [x1, y1, x2, y2]`` on the original ``file_name``) give
sub-images whose boxes are in the sub-image frame.

Validation: malformed JSON, unknown image ids, non-finite boxes or negative sizes raise ``DataError``
naming the file and annotation id. Boxes that leave the image are clipped (``out_of_bounds="clip"``,
the default, with one warning per file) or refused (``"error"``); zero-area boxes are dropped with a
warning. Missing image files raise ``DataError`` at construction. Images without annotations are kept as
negatives.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.data import tiling
from bhsearch.errors import DataError, UsageError

IGNORE_FLAGS = ("ignore", "uncertain", "logo")


@dataclass
class ImageRecord:
    """One (sub-)image: boxes are xyxy float32 in the record's own frame (width x height)."""

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # 1..K, one per box
    uncertain: int = 0
    dense: bool = False
    corner: tuple[int, int, int, int] | None = None

    @property
    def sizes(self) -> np.ndarray:
        """Absolute sizes sqrt(w*h) of the positive boxes."""
        wh = self.boxes[:, 2:] - self.boxes[:, :2]
        return np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None))


def _category_ids(data: dict[str, Any]) -> list:
    """The sorted category ids of a COCO dict (from ``categories``, else from the annotations)."""
    cats = data.get("categories")
    ids = {c.get("id") for c in cats if isinstance(c, dict)} if isinstance(cats, list) and cats else set()
    if not ids:
        ids = {a.get("category_id") for a in data["annotations"] if isinstance(a, dict)}
    try:
        return sorted(ids)
    except TypeError:
        raise DataError("category ids must all be integers") from None


def load_json(path: str | Path) -> dict[str, Any]:
    """A COCO-style annotation file; missing/corrupt files and missing sections raise ``DataError``."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing '{key}' list")
    return data


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image header ({exc})") from None


class TinyPersonDataset:
    """Per-image records of a TinyPerson annotation file; items are ``(uint8 HWC image, target)``.

    ``target`` holds numpy ``boxes`` (N, 4 xyxy), ``labels`` (N,), ``ignore_boxes`` (M, 4),
    ``image_id``. ``include_dense=False`` leaves out images flagged ``in_dense_image``. ``labels="merged"``
    (TinyPerson: one *person* class) labels every box 1; ``labels="categories"`` (AI-TOD) labels a box
    1 + the rank of its ``category_id`` among the file's categories, and ``category_ids[label - 1]`` maps
    a label back.
    """

    def __init__(
        self,
        annotation_json: str | Path,
        image_root: str | Path,
        *,
        include_dense: bool = True,
        out_of_bounds: str = "clip",
        check_images: bool = True,
        cache_size: int = 2,
        labels: str = "merged",
    ) -> None:
        if labels not in ("merged", "categories"):
            raise UsageError(f"labels must be 'merged' or 'categories', got {labels!r}")
        if out_of_bounds not in ("clip", "error"):
            raise UsageError(f"out_of_bounds must be 'clip' or 'error', got {out_of_bounds!r}")
        self.annotation_json, self.image_root = Path(annotation_json), Path(image_root)
        self.out_of_bounds = out_of_bounds
        self.counts = {"clipped": 0, "dropped_outside": 0, "dropped_zero_area": 0, "crowd": 0, "logo": 0}
        data = load_json(self.annotation_json)
        self.category_ids = _category_ids(data) if labels == "categories" else [1]
        self.records = self._parse(data, check_images)
        if not include_dense:
            self.records = [r for r in self.records if not r.dense]
        self.cache = ImageCache(cache_size)

    # ------------------------------------------------------------------ parsing
    def _parse(self, data: dict[str, Any], check_images: bool) -> list[ImageRecord]:
        src = self.annotation_json
        records: dict[int, ImageRecord] = {}
        missing = []
        for n, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise DataError(f"{src}: images[{n}] needs 'id' and 'file_name'")
            image_id = img["id"]
            if image_id in records:
                raise DataError(f"{src}: duplicate image id {image_id}")
            path = self.image_root / str(img["file_name"])
            if check_images and not path.is_file():
                missing.append(str(path))
                continue
            corner = img.get("corner")
            if corner is not None:
                if (
                    not (isinstance(corner, list) and len(corner) == 4)
                    or corner[2] <= corner[0]
                    or corner[3] <= corner[1]
                ):
                    raise DataError(f"{src}: image {image_id}: 'corner' must be [x1, y1, x2, y2] with x2>x1, y2>y1")
                corner = tuple(int(v) for v in corner)
                width, height = corner[2] - corner[0], corner[3] - corner[1]
            elif "width" in img and "height" in img:
                width, height = img["width"], img["height"]
            else:
                width, height = _image_size(path)
            if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
                raise DataError(f"{src}: image {image_id}: width/height must be positive, got {width}x{height}")
            records[image_id] = ImageRecord(
                image_id, str(img["file_name"]), path, int(width), int(height), corner=corner
            )
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"{src}: image file not found: {missing[0]}{more}")
        label_of = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        merged = len(self.category_ids) == 1 and self.category_ids == [1]
        pos: dict[int, list] = {i: [] for i in records}
        lab: dict[int, list] = {i: [] for i in records}
        ign: dict[int, list] = {i: [] for i in records}
        uncertain: dict[int, int] = dict.fromkeys(records, 0)
        oob = 0
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict):
                raise DataError(f"{src}: annotations[{n}] is not an object")
            aid = ann.get("id", f"#{n}")
            if ann.get("image_id") not in records:
                raise DataError(f"{src}: annotation {aid} refers to unknown image id {ann.get('image_id')!r}")
            rec = records[ann["image_id"]]
            bbox = ann.get("bbox")
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                raise DataError(f"{src}: annotation {aid}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}") from None
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                raise DataError(f"{src}: annotation {aid}: bbox has a non-finite value {bbox!r}")
            if w < 0 or h < 0:
                raise DataError(f"{src}: annotation {aid}: negative box size (w={w}, h={h})")
            box = [x, y, x + w, y + h]
            clipped = [
                min(max(box[0], 0.0), rec.width),
                min(max(box[1], 0.0), rec.height),
                min(max(box[2], 0.0), rec.width),
                min(max(box[3], 0.0), rec.height),
            ]
            was_clipped = clipped != box
            if was_clipped:
                if self.out_of_bounds == "error":
                    raise DataError(
                        f"{src}: annotation {aid}: box {bbox} leaves image {rec.image_id} ({rec.width}x{rec.height})"
                    )
                oob += 1
                box = clipped
            if ann.get("in_dense_image"):
                rec.dense = True
            if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
                self.counts["dropped_outside" if was_clipped else "dropped_zero_area"] += 1
                continue
            flags = [f for f in IGNORE_FLAGS if ann.get(f)]
            if ann.get("iscrowd"):
                flags.append("crowd")
                self.counts["crowd"] += 1
            if "logo" in flags:
                self.counts["logo"] += 1
            if flags:
                ign[rec.image_id].append(box)
                uncertain[rec.image_id] += "uncertain" in flags
            else:
                pos[rec.image_id].append(box)
                if not merged and ann.get("category_id") not in label_of:
                    raise DataError(
                        f"{src}: annotation {aid}: category_id {ann.get('category_id')!r} is not in 'categories'"
                    )
                lab[rec.image_id].append(1 if merged else label_of[ann.get("category_id")])
        self.counts["clipped"] = oob
        if oob:
            warnings.warn(f"{src}: {oob} boxes extend outside their image and were clipped", stacklevel=3)
        if self.counts["dropped_zero_area"]:
            warnings.warn(f"{src}: {self.counts['dropped_zero_area']} zero-area boxes dropped", stacklevel=3)
        for image_id, rec in records.items():
            rec.boxes = np.asarray(pos[image_id], np.float32).reshape(-1, 4)
            rec.ignore_boxes = np.asarray(ign[image_id], np.float32).reshape(-1, 4)
            rec.labels = np.asarray(lab[image_id], np.int64).reshape(-1)
            rec.uncertain = uncertain[image_id]
        return list(records.values())

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.records)

    def read_region(self, index: int, window: Sequence[int] | None = None) -> np.ndarray:
        """Pixels ``window`` (x0, y0, x1, y1 in the record frame; default: all) as uint8 HWC RGB."""
        rec = self.records[index]
        x0, y0, x1, y1 = window if window is not None else (0, 0, rec.width, rec.height)
        if rec.corner is not None:
            cx, cy = rec.corner[:2]
            x0, y0, x1, y1 = x0 + cx, y0 + cy, x1 + cx, y1 + cy
        full = self.cache.get(rec.path)
        if rec.corner is None and full.shape[:2] != (rec.height, rec.width):
            raise DataError(
                f"{rec.path}: image is {full.shape[1]}x{full.shape[0]} but the annotation file says "
                f"{rec.width}x{rec.height}"
            )
        if x1 > full.shape[1] or y1 > full.shape[0]:
            raise DataError(
                f"{rec.path}: region {(x0, y0, x1, y1)} lies outside the {full.shape[1]}x{full.shape[0]} image"
            )
        return full[y0:y1, x0:x1]

    def target(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        return {
            "boxes": rec.boxes,
            "labels": rec.labels,
            "ignore_boxes": rec.ignore_boxes,
            "image_id": rec.image_id,
        }

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        return self.read_region(index), self.target(index)

    def summary(self) -> dict[str, Any]:
        """Counts and absolute-size statistics (sqrt(w*h)) of the positives."""
        sizes = np.concatenate([r.sizes for r in self.records]) if self.records else np.zeros(0)
        widths = [r.width for r in self.records]
        heights = [r.height for r in self.records]
        return {
            "images": len(self.records),
            "boxes": int(sizes.size),
            "ignore_boxes": int(sum(len(r.ignore_boxes) for r in self.records)),
            "uncertain": int(sum(r.uncertain for r in self.records)),
            "dense_images": int(sum(r.dense for r in self.records)),
            "empty_images": int(sum(len(r.boxes) == 0 for r in self.records)),
            "size_mean": float(sizes.mean()) if sizes.size else 0.0,
            "size_std": float(sizes.std()) if sizes.size else 0.0,
            "frac_le_20": float((sizes <= 20).mean()) if sizes.size else 0.0,
            "size_max": float(sizes.max()) if sizes.size else 0.0,
            "image_width": [min(widths, default=0), max(widths, default=0)],
            "image_height": [min(heights, default=0), max(heights, default=0)],
            **self.counts,
        }

    def __repr__(self) -> str:
        return f"TinyPersonDataset({str(self.annotation_json)!r}, images={len(self)})"


class ImageCache:
    """LRU of decoded RGB images, per process (each DataLoader worker gets its own copy).

    JPEG/PNG cannot be decoded partially, so a tile costs one full decode unless its image is cached;
    ``TileDataset`` orders tiles image by image (see ``ImageGroupedSampler``) so each image is decoded
    about once per epoch per worker, and only ``capacity`` images are held at a time.
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = max(int(capacity), 0)
        self._items: OrderedDict[Path, np.ndarray] = OrderedDict()
        self.decodes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "_items": OrderedDict(), "decodes": 0}

    def get(self, path: Path) -> np.ndarray:
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot decode image ({exc})") from None
        self.decodes += 1
        if self.capacity:
            self._items[path] = arr
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return arr


class TileDataset:
    """Tiles of a ``TinyPersonDataset`` as ``(float CHW tensor in [0, 1], target)``.

    ``train=True``: boxes are clipped to the tile and kept when sqrt(clipped/original area) >= ``min_keep``
    and both sides >= 1 px; ignore regions are clipped and kept apart in ``ignore_boxes``; with
    ``keep_empty=False`` tiles without positives are skipped. ``train=False`` (test-time): every window,
    same target format, so detections can be shifted back with ``tiling.merge_detections``.
    Target: ``boxes`` (N, 4) float32 xyxy in tile coordinates, ``labels`` (N,) int64 = 1,
    ``ignore_boxes`` (M, 4) float32, ``image_id`` int64 scalar tensor, ``tile`` int64 tensor (x0, y0, x1, y1)
    in the image frame. ``transform(image, target) -> (image, target)`` runs last if given.
    """

    def __init__(
        self,
        dataset: TinyPersonDataset,
        tile: Sequence[int] = tiling.DEFAULT_TILE,
        overlap: int = tiling.DEFAULT_OVERLAP,
        *,
        train: bool = True,
        min_keep: float = tiling.KEEP_RATIO,
        keep_empty: bool = True,
        transform: Callable | None = None,
    ) -> None:
        self.dataset, self.tile, self.overlap, self.train = dataset, tuple(tile), overlap, train
        self.transform = transform
        self.items: list[tuple[int, tuple[int, int, int, int], dict[str, np.ndarray]]] = []
        self.kept = self.dropped = 0
        for i, rec in enumerate(dataset.records):
            for win in tiling.tile_windows(rec.width, rec.height, self.tile, overlap):
                t = tiling.split_targets(rec.boxes, rec.ignore_boxes, win, min_keep)
                if train and not keep_empty and len(t["boxes"]) == 0:
                    continue
                self.kept += len(t["boxes"])
                self.dropped += t["dropped"]
                self.items.append((i, win, t))

    def __len__(self) -> int:
        return len(self.items)

    def image_index(self, index: int) -> int:
        return self.items[index][0]

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        import torch

        i, win, t = self.items[index]
        region = self.dataset.read_region(i, win)
        image = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1), dtype=np.float32)).div_(255.0)
        target = {
            "boxes": torch.from_numpy(t["boxes"]).float().reshape(-1, 4),
            "labels": torch.from_numpy(self.dataset.records[i].labels[t["box_index"]]).long(),
            "ignore_boxes": torch.from_numpy(t["ignore_boxes"]).float().reshape(-1, 4),
            "image_id": torch.tensor(self.dataset.records[i].image_id, dtype=torch.int64),
            "tile": torch.tensor(win, dtype=torch.int64),
        }
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def stats(self) -> dict[str, int]:
        return {
            "images": len(self.dataset),
            "tiles": len(self),
            "boxes_kept": self.kept,
            "boxes_dropped": self.dropped,
            "empty_tiles": sum(len(t["boxes"]) == 0 for _, _, t in self.items),
        }


class RandomHorizontalFlip:
    """Joint ``TileDataset`` transform: flips the tile and its ``boxes``/``ignore_boxes`` with probability ``p``."""

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        self.p, self.rng = p, np.random.default_rng(seed)

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self.rng.random() >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        for key in ("boxes", "ignore_boxes"):
            b = target[key].clone()
            b[:, [0, 2]] = width - target[key][:, [2, 0]]
            target[key] = b
        return image.flip(-1), target


def collate_tiles(batch: Sequence[tuple[Any, dict[str, Any]]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """DataLoader ``collate_fn`` for detection: lists of images and targets (tiles may differ in size)."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)


class ImageGroupedSampler:
    """Shuffles images, then the tiles inside each image, so tiles of one image come together.

    Keeps the per-worker ``ImageCache`` hot: each image is decoded about once per epoch. Call
    ``set_epoch(e)`` for a new order each epoch.
    """

    def __init__(self, tiles: TileDataset, shuffle: bool = True, seed: int = 0) -> None:
        self.tiles, self.shuffle, self.seed, self.epoch = tiles, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        groups: dict[int, list[int]] = {}
        for idx, (img, _, _) in enumerate(self.tiles.items):
            groups.setdefault(img, []).append(idx)
        order = list(groups)
        if self.shuffle:
            rng = np.random.default_rng(self.seed + self.epoch)
            rng.shuffle(order)
            for g in groups.values():
                rng.shuffle(g)
        for img in order:
            yield from groups[img]


def resolve_tinyperson(path: str | Path) -> tuple[Path, Path, Path, Path]:
    """``(train_json, train_img_root, test_json, test_img_root)`` of a TinyPerson tree.

    ``path`` may be ``tiny_set`` itself or the folder that contains it. The training annotations are
    ``annotations/tiny_set_train.json`` (else ``tiny_set_train_with_dense.json``); the test annotations
    ``annotations/task/tiny_set_test_all.json`` (else ``annotations/tiny_set_test.json``).
    """
    path = Path(path)
    root = path if (path / "annotations").is_dir() else path / "tiny_set"
    if not (root / "annotations").is_dir():
        raise DataError(f"{path}: no tiny_set/annotations folder (expected the TinyPerson layout)")

    def first(*cands: str) -> Path:
        for c in cands:
            if (root / c).is_file():
                return root / c
        raise DataError(f"{root}: none of {', '.join(cands)} found")

    train_json = first("annotations/tiny_set_train.json", "annotations/tiny_set_train_with_dense.json")
    test_json = first(
        "annotations/task/tiny_set_test_all.json",
        "annotations/tiny_set_test.json",
        "annotations/tiny_set_test_all.json",
    )
    return train_json, root / "train", test_json, root / "test"


def read_tinyperson(path: str | Path, split: str = "train", **kwargs: Any) -> TinyPersonDataset:
    """The ``train`` or ``test`` split of a TinyPerson tree (see :func:`resolve_tinyperson`)."""
    if split not in ("train", "test"):
        raise UsageError(f"TinyPerson split must be 'train' or 'test', got {split!r}")
    train_json, train_root, test_json, test_root = resolve_tinyperson(path)
    ann, root = (train_json, train_root) if split == "train" else (test_json, test_root)
    return TinyPersonDataset(ann, root, **kwargs)

"""WiderFace (Yang et al., CVPR 2016) in its official on-disk layout.

Training/validation annotations: ``WIDER_{train,val}/images/<event>/<name>.jpg`` and
``wider_face_split/wider_face_{train,val}_bbx_gt.txt``: per image a file-name line, a count line, then one
``x1 y1 w h blur expression illumination invalid occlusion pose`` line per face (an image with no face still
has one all-zero line). Boxes are ``[x, y, x + w, y + h]`` (the evaluation tool's convention).

Evaluation ground truth (``eval_tools/ground_truth``): ``wider_face_val.mat`` (``event_list``, ``file_list``,
``face_bbx_list``, per event cell arrays) and ``wider_{easy,medium,hard}_val.mat`` (``gt_list``: per image the
1-based indices of the faces that count in that setting; every other face is ignored). See ``docs/widerface.md``.

Training targets follow the official tool: faces flagged ``invalid`` are never positives; they become
``ignore_boxes``. Image ids are ``1 + position`` of ``"<event>/<name>"`` in the sorted list of a split's images
(:func:`image_ids`), the same numbering the evaluator uses for COCO-format predictions.

This module imports neither torch nor PIL at module level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.errors import DataError, UsageError

SPLITS = ("train", "val")
SETTINGS = ("easy", "medium", "hard")
ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
GT_FILES = {"face": "wider_face_val.mat", **{s: f"wider_{s}_val.mat" for s in SETTINGS}}
GT_FOLDERS = (".", "ground_truth", "eval_tools/ground_truth", "wider_face_split")


def image_key(event: str, name: str) -> str:
    """``"<event>/<name>"`` with ``name`` the file stem (``.jpg`` removed)."""
    return f"{event}/{name.removesuffix('.jpg')}"


def image_ids(keys: Iterable[str]) -> dict[str, int]:
    """The image id of every key: 1 + its position in the sorted list of keys."""
    return {key: i + 1 for i, key in enumerate(sorted(set(keys)))}


# --------------------------------------------------------------------------- bbx_gt.txt


@dataclass
class WiderFaceRecord:
    """One image: ``faces`` (N, 10) holds the raw annotation lines; boxes are xyxy float32 in pixels."""

    image_id: int
    event: str
    name: str
    path: Path
    width: int = 0
    height: int = 0
    faces: np.ndarray = field(default_factory=lambda: np.zeros((0, 10), np.float64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    @property
    def key(self) -> str:
        return image_key(self.event, self.name)

    @property
    def file_name(self) -> str:
        return f"{self.event}/{self.name}.jpg"

    @property
    def sizes(self) -> np.ndarray:
        """Face sizes sqrt(w*h) of the positive boxes."""
        wh = self.boxes[:, 2:] - self.boxes[:, :2]
        return np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None))


def parse_bbx_gt(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """``[(relative file name, (N, 10) float array)]`` of a ``wider_face_*_bbx_gt.txt`` file.

    Images with no face carry ``N = 0`` (their all-zero placeholder line is consumed). Malformed files raise
    ``DataError`` naming the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    out: list[tuple[str, np.ndarray]] = []
    i, n_lines = 0, len(lines)
    while i < n_lines:
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        if not name.endswith(".jpg") or "/" not in name:
            raise DataError(f"{path}:{i + 1}: expected an image path '<event>/<name>.jpg', got {name[:80]!r}")
        if i + 1 >= n_lines:
            raise DataError(f"{path}:{i + 2}: missing face count after {name}")
        try:
            count = int(lines[i + 1].strip())
        except ValueError:
            raise DataError(
                f"{path}:{i + 2}: face count must be an integer, got {lines[i + 1].strip()[:40]!r}"
            ) from None
        if count < 0:
            raise DataError(f"{path}:{i + 2}: negative face count {count}")
        n_rows = max(count, 1)
        rows = lines[i + 2 : i + 2 + n_rows]
        if len(rows) < n_rows:
            raise DataError(f"{path}:{n_lines}: {name} announces {count} faces but the file ends after {len(rows)}")
        faces = np.zeros((count, 10), np.float64)
        for k, row in enumerate(rows[:count]):
            parts = row.split()
            try:
                values = [float(v) for v in parts[:10]]
            except ValueError:
                values = []
            if len(values) < 10 or not all(math.isfinite(v) for v in values):
                raise DataError(
                    f"{path}:{i + 3 + k}: expected 'x1 y1 w h blur expression illumination invalid occlusion pose', "
                    f"got {row.strip()[:80]!r}"
                )
            faces[k] = values
        out.append((name, faces))
        i += 2 + n_rows
    return out


def find_root(path: str | Path) -> Path:
    """The folder holding ``wider_face_split`` (``path`` itself or its ``widerface``/``WIDER_FACE`` child)."""
    path = Path(path)
    for cand in (path, path / "widerface", path / "WIDER_FACE", path / "wider_face"):
        if (cand / "wider_face_split").is_dir():
            return cand
    if not path.exists():
        raise DataError(f"{path}: no such folder")
    raise DataError(f"{path}: no wider_face_split folder (expected the official WiderFace layout)")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image header ({exc})") from None


def read_split(
    root: str | Path, split: str, *, check_images: bool = True, min_size: float = 0.0
) -> tuple[list[WiderFaceRecord], dict[str, int]]:
    """Records of ``split`` and counts (``faces``, ``invalid``, ``clipped``, ``dropped_zero_area``, ``small``).

    Boxes are clipped to the image; zero-area boxes are dropped; ``invalid`` faces and faces smaller than
    ``min_size`` (sqrt(w*h), 0 = keep all) become ignore boxes.
    """
    if split not in SPLITS:
        raise UsageError(f"WiderFace split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = find_root(root)
    ann = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    image_root = root / f"WIDER_{split}" / "images"
    entries = parse_bbx_gt(ann)
    if not entries:
        raise DataError(f"{ann}: no images listed")
    keys = [image_key(*name.split("/", 1)) for name, _ in entries]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"{ann}: image {dup} is listed twice")
    ids = image_ids(keys)
    counts = {"faces": 0, "invalid": 0, "clipped": 0, "dropped_zero_area": 0, "small": 0}
    records, missing = [], []
    for (name, faces), key in zip(entries, keys, strict=True):
        event, stem = key.split("/", 1)
        path = image_root / name
        if check_images and not path.is_file():
            missing.append(str(path))
            continue
        width, height = _image_size(path) if check_images else (0, 0)
        rec = WiderFaceRecord(ids[key], event, stem, path, width, height, faces)
        xyxy = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1)
        if width and height:
            clipped = np.clip(xyxy, 0, [width, height, width, height])
            counts["clipped"] += int(np.any(clipped != xyxy, axis=1).sum())
            xyxy = clipped
        wh = xyxy[:, 2:] - xyxy[:, :2]
        nonzero = (wh[:, 0] > 0) & (wh[:, 1] > 0)
        invalid = faces[:, 7] != 0
        small = np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None)) < min_size
        counts["faces"] += len(faces)
        counts["invalid"] += int(invalid.sum())
        counts["dropped_zero_area"] += int((~nonzero).sum())
        counts["small"] += int((small & nonzero & ~invalid).sum())
        rec.boxes = xyxy[nonzero & ~invalid & ~small].astype(np.float32).reshape(-1, 4)
        rec.ignore_boxes = xyxy[nonzero & (invalid | small)].astype(np.float32).reshape(-1, 4)
        records.append(rec)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{ann}: image file not found: {missing[0]}{more}")
    return records, counts


class WiderFaceDataset:
    """Whole images of a WiderFace split as ``(float CHW tensor in [0, 1], target)``.

    ``target`` (torch tensors): ``boxes`` (N, 4) xyxy float32, ``labels`` (N,) int64 = 1, ``ignore_boxes``
    (M, 4) for invalid faces, ``image_id`` (int64 scalar), ``tile`` (0, 0, width, height). The same format as
    TinyPerson tiles, and the dataset also offers ``records`` / ``read_region`` so ``TileDataset`` and
    ``bhsearch.train.inference.predict_tiled`` accept it. ``transform(image, target) -> (image, target)`` runs
    last if given.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: Callable | None = None,
        min_size: float = 0.0,
        check_images: bool = True,
        cache_size: int = 2,
    ) -> None:
        from bhsearch.tasks.tinyperson.reader import ImageCache

        self.root = find_root(root)
        self.split = split
        self.annotation_file = self.root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
        self.records, self.counts = read_split(self.root, split, check_images=check_images, min_size=min_size)
        self.transform = transform
        self.cache = ImageCache(cache_size)

    def __len__(self) -> int:
        return len(self.records)

    def read_region(self, index: int, window: Sequence[int] | None = None) -> np.ndarray:
        """Pixels ``window`` (x0, y0, x1, y1; default: all) as uint8 HWC RGB."""
        rec = self.records[index]
        full = self.cache.get(rec.path)
        if rec.width and full.shape[:2] != (rec.height, rec.width):
            raise DataError(f"{rec.path}: image changed size since it was indexed")
        if window is None:
            return full
        x0, y0, x1, y1 = window
        return full[y0:y1, x0:x1]

    def target(self, index: int) -> dict[str, Any]:
        import torch

        rec = self.records[index]
        return {
            "boxes": torch.from_numpy(rec.boxes).float().reshape(-1, 4),
            "labels": torch.ones(len(rec.boxes), dtype=torch.int64),
            "ignore_boxes": torch.from_numpy(rec.ignore_boxes).float().reshape(-1, 4),
            "image_id": torch.tensor(rec.image_id, dtype=torch.int64),
            "tile": torch.tensor([0, 0, rec.width, rec.height], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        import torch

        region = self.read_region(index)
        image = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1), dtype=np.float32)).div_(255.0)
        target = self.target(index)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def summary(self) -> dict[str, Any]:
        """Counts, attribute histograms and face-size statistics (sqrt(w*h) of the positives)."""
        sizes = np.concatenate([r.sizes for r in self.records]) if self.records else np.zeros(0)
        faces = np.concatenate([r.faces for r in self.records]) if self.records else np.zeros((0, 10))
        widths = [r.width for r in self.records]
        heights = [r.height for r in self.records]
        attrs = {
            name: {str(int(v)): int(c) for v, c in zip(*np.unique(faces[:, 4 + k], return_counts=True), strict=True)}
            for k, name in enumerate(ATTRIBUTES)
        }
        return {
            "split": self.split,
            "images": len(self.records),
            "events": len({r.event for r in self.records}),
            "boxes": int(sizes.size),
            "ignore_boxes": int(sum(len(r.ignore_boxes) for r in self.records)),
            "empty_images": int(sum(len(r.faces) == 0 for r in self.records)),
            "size_min": float(sizes.min()) if sizes.size else 0.0,
            "size_median": float(np.median(sizes)) if sizes.size else 0.0,
            "size_max": float(sizes.max()) if sizes.size else 0.0,
            "frac_le_10": float((sizes <= 10).mean()) if sizes.size else 0.0,
            "frac_le_32": float((sizes <= 32).mean()) if sizes.size else 0.0,
            "image_width": [min(widths, default=0), max(widths, default=0)],
            "image_height": [min(heights, default=0), max(heights, default=0)],
            "attributes": attrs,
            **self.counts,
        }

    def __repr__(self) -> str:
        return f"WiderFaceDataset({str(self.root)!r}, {self.split!r}, images={len(self)})"


def collate_images(batch: Sequence[tuple[Any, dict[str, Any]]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """DataLoader ``collate_fn``: lists of images and targets (sizes may differ)."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)


# --------------------------------------------------------------------------- evaluation ground truth


@dataclass
class EvalGroundTruth:
    """The evaluation GT in the .mat files' order: per image its event, name, boxes and kept faces.

    ``boxes[i]`` is (K, 4) ``x y w h`` float64; ``keep[s][i]`` the 0-based indices of the faces that count in
    setting ``s`` (``easy``/``medium``/``hard``).
    """

    events: list[str]
    names: list[str]
    boxes: list[np.ndarray]
    keep: dict[str, list[np.ndarray]]
    sources: dict[str, str]

    @property
    def keys(self) -> list[str]:
        return [image_key(e, n) for e, n in zip(self.events, self.names, strict=True)]

    def __len__(self) -> int:
        return len(self.names)

    def face_counts(self) -> dict[str, int]:
        return {
            "all": int(sum(len(b) for b in self.boxes)),
            **{s: int(sum(len(k) for k in self.keep[s])) for s in self.keep},
        }


def resolve_gt_files(gt: str | Path | Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
    """Paths of the four .mat files from a folder, a list of files, or a mapping ``{face, easy, medium, hard}``."""
    if isinstance(gt, Mapping):
        files = {str(k): Path(v) for k, v in gt.items()}
        unknown = sorted(set(files) - set(GT_FILES))
        if unknown:
            raise UsageError(f"unknown WiderFace GT entries {unknown}; expected {', '.join(GT_FILES)}")
    elif isinstance(gt, (str, Path)) and Path(gt).is_dir():
        base = Path(gt)
        files = {}
        for folder in GT_FOLDERS:
            if (base / folder / GT_FILES["face"]).is_file():
                base = base / folder
                break
        for role, name in GT_FILES.items():
            files[role] = base / name
    elif isinstance(gt, (str, Path)):
        raise DataError(
            f"{gt}: WiderFace ground truth must be a folder holding {GT_FILES['face']} and the setting files"
        )
    else:
        by_name = {name: role for role, name in GT_FILES.items()}
        files = {}
        for p in gt:
            role = by_name.get(Path(p).name)
            if role is None:
                raise UsageError(f"{p}: not a WiderFace GT file (expected one of {', '.join(GT_FILES.values())})")
            files[role] = Path(p)
    missing = [GT_FILES[r] for r in GT_FILES if r not in files or not files[r].is_file()]
    if missing:
        where = files.get("face", Path(GT_FILES["face"])).parent
        raise DataError(f"{where}: WiderFace ground truth file(s) not found: {', '.join(missing)}")
    return files


def _loadmat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save it with -v7") from None
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError ... on corrupt files
        raise DataError(
            f"{path}: not a readable MATLAB file ({str(exc).splitlines()[0] if str(exc) else exc})"
        ) from None
    for key in keys:
        if key not in data:
            raise DataError(f"{path}: missing variable '{key}'")
    return data


def _cells(arr: Any, path: Path, what: str) -> list[Any]:
    if not isinstance(arr, np.ndarray) or arr.dtype != object:
        raise DataError(f"{path}: '{what}' must be a cell array")
    return list(arr.reshape(-1))


def _text(cell: Any, path: Path, what: str) -> str:
    arr = np.asarray(cell)
    if arr.dtype.kind not in "US" or arr.size != 1:
        raise DataError(f"{path}: {what} must be a string, got {arr.dtype} of shape {arr.shape}")
    value = arr.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def load_eval_gt(gt: str | Path | Sequence[str | Path] | Mapping[str, str | Path]) -> EvalGroundTruth:
    """Read ``wider_face_val.mat`` and the easy/medium/hard ``gt_list`` files (see module doc)."""
    files = resolve_gt_files(gt)
    face = files["face"]
    data = _loadmat(face, ("event_list", "file_list", "face_bbx_list"))
    event_cells = _cells(data["event_list"], face, "event_list")
    file_cells = _cells(data["file_list"], face, "file_list")
    box_cells = _cells(data["face_bbx_list"], face, "face_bbx_list")
    if not len(event_cells) == len(file_cells) == len(box_cells):
        raise DataError(f"{face}: event_list, file_list and face_bbx_list differ in length")
    events, names, boxes, per_event = [], [], [], []
    for e, (ev, fl, bl) in enumerate(zip(event_cells, file_cells, box_cells, strict=True)):
        event = _text(ev, face, f"event_list{{{e + 1}}}")
        files_e = _cells(fl, face, f"file_list{{{e + 1}}}")
        boxes_e = _cells(bl, face, f"face_bbx_list{{{e + 1}}}")
        if len(files_e) != len(boxes_e):
            raise DataError(f"{face}: event {event}: {len(files_e)} files but {len(boxes_e)} box lists")
        per_event.append(len(files_e))
        for j, (fname, b) in enumerate(zip(files_e, boxes_e, strict=True)):
            events.append(event)
            names.append(_text(fname, face, f"file_list{{{e + 1}}}{{{j + 1}}}").removesuffix(".jpg"))
            arr = np.asarray(b, dtype=np.float64)
            if arr.size == 0:
                arr = np.zeros((0, 4))
            if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
                raise DataError(f"{face}: event {event}, image {names[-1]}: boxes must be a finite K x 4 array")
            boxes.append(arr)
    keep: dict[str, list[np.ndarray]] = {}
    for setting in SETTINGS:
        path = files[setting]
        cells = _cells(_loadmat(path, ("gt_list",))["gt_list"], path, "gt_list")
        if len(cells) != len(per_event):
            raise DataError(f"{path}: gt_list has {len(cells)} events but {face.name} has {len(per_event)}")
        lists: list[np.ndarray] = []
        for e, cell in enumerate(cells):
            items = _cells(cell, path, f"gt_list{{{e + 1}}}")
            if len(items) != per_event[e]:
                raise DataError(f"{path}: event {e + 1} lists {len(items)} images, {face.name} has {per_event[e]}")
            for item in items:
                i = len(lists)
                idx = np.asarray(item, dtype=np.float64).reshape(-1)
                if idx.size and (np.any(idx != np.round(idx)) or idx.min() < 1 or idx.max() > len(boxes[i])):
                    raise DataError(
                        f"{path}: image {events[i]}/{names[i]}: gt_list indices must be 1..{len(boxes[i])}, "
                        f"got {idx.astype(int).tolist()[:8]}"
                    )
                lists.append(np.unique(idx.astype(np.int64) - 1))
        keep[setting] = lists
    keys = [image_key(e, n) for e, n in zip(events, names, strict=True)]
    if len(set(keys)) != len(keys):
        raise DataError(f"{face}: an image is listed twice")
    return EvalGroundTruth(events, names, boxes, keep, {k: str(v) for k, v in files.items()})


__all__ = [
    "ATTRIBUTES",
    "EvalGroundTruth",
    "SETTINGS",
    "SPLITS",
    "WiderFaceDataset",
    "WiderFaceRecord",
    "collate_images",
    "find_root",
    "image_ids",
    "image_key",
    "load_eval_gt",
    "parse_bbx_gt",
    "read_split",
    "resolve_gt_files",
]

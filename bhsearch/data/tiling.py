"""Cutting large images into overlapping tiles and merging per-tile detections (DESIGN §5).

Windows are ``(x0, y0, x1, y1)`` in integer pixels, half-open. The stride is ``tile - overlap``; the last
window in a row/column is shifted back inside the image. Box arrays are ``(N, 4)`` xyxy float.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bhsearch.errors import UsageError

DEFAULT_TILE = (640, 512)
DEFAULT_OVERLAP = 30
KEEP_RATIO = 0.7


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def check_overlap(tile: Sequence[int], overlap: int) -> None:
    """The overlap may be at most half the tile: more makes thousands of near-identical tiles per image
    (``--tile 32x32 --overlap 31``: ~145k tiles for one TinyPerson image)."""
    half = min(int(tile[0]), int(tile[1])) // 2
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= half:
        raise UsageError(
            f"tile overlap must be an integer from 0 to {half} (half the tile {tile[0]}x{tile[1]}), got {overlap!r}"
        )


def tile_windows(
    width: int, height: int, tile: Sequence[int] = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
) -> list[tuple[int, int, int, int]]:
    """Windows covering a ``width`` x ``height`` image, row by row; ``tile`` is (width, height).

    An image smaller than the tile in one direction gets one window of the image's size there.
    """
    tw, th = int(tile[0]), int(tile[1])
    if width <= 0 or height <= 0:
        raise UsageError(f"image size must be positive, got {width}x{height}")
    if tw <= 0 or th <= 0:
        raise UsageError(f"tile size must be positive, got {tw}x{th}")
    check_overlap((tw, th), overlap)
    xs = _starts(int(width), tw, tw - overlap)
    ys = _starts(int(height), th, th - overlap)
    return [(x, y, min(x + tw, int(width)), min(y + th, int(height))) for y in ys for x in xs]


def _as_boxes(boxes: Any) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return arr


def clip_boxes_to_tile(
    boxes: Any, window: Sequence[int], min_keep: float = KEEP_RATIO, min_size: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Clip image-frame ``boxes`` to ``window``; return (kept boxes in tile coordinates, kept indices).

    A box is kept when sqrt(clipped area / original area) >= ``min_keep`` and both clipped sides are at
    least ``min_size`` pixels. ``min_keep=0`` keeps every box that overlaps the window (used for ignore
    regions, which are kept apart and never become positives).
    """
    b = _as_boxes(boxes)
    x0, y0, x1, y1 = (float(v) for v in window)
    cx0 = np.clip(b[:, 0], x0, x1)
    cy0 = np.clip(b[:, 1], y0, y1)
    cx1 = np.clip(b[:, 2], x0, x1)
    cy1 = np.clip(b[:, 3], y0, y1)
    cw, ch = cx1 - cx0, cy1 - cy0
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    clipped = np.maximum(cw, 0) * np.maximum(ch, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(area > 0, np.sqrt(clipped / np.where(area > 0, area, 1.0)), 0.0)
    keep = (cw >= min_size) & (ch >= min_size) & (ratio >= min_keep - 1e-12)
    idx = np.nonzero(keep)[0]
    out = np.stack([cx0 - x0, cy0 - y0, cx1 - x0, cy1 - y0], axis=1)[idx]
    return out.astype(np.float32), idx


def split_targets(
    boxes: Any, ignore_boxes: Any, window: Sequence[int], min_keep: float = KEEP_RATIO, min_size: float = 1.0
) -> dict[str, np.ndarray]:
    """Positives and ignore regions of one tile: ``boxes``, ``box_index``, ``ignore_boxes``, ``dropped``."""
    pos, idx = clip_boxes_to_tile(boxes, window, min_keep, min_size)
    ign, _ = clip_boxes_to_tile(ignore_boxes, window, 0.0, min_size)
    b = _as_boxes(boxes)
    x0, y0, x1, y1 = window
    touching = (b[:, 2] > x0) & (b[:, 0] < x1) & (b[:, 3] > y0) & (b[:, 1] < y1)
    return {"boxes": pos, "box_index": idx, "ignore_boxes": ign, "dropped": int(touching.sum()) - len(idx)}


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def merge_detections(
    per_tile_dets: Iterable[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    max_dets: int | None = None,
    class_aware: bool = False,
) -> dict[str, Any]:
    """Shift per-tile detections back to the image frame and merge them with NMS.

    Each item is a mapping with ``tile`` (x0, y0, x1, y1), ``boxes`` (N, 4 xyxy in tile coordinates),
    ``scores`` (N,) and optionally ``labels`` (N,). NMS is class-agnostic (TinyBenchmark's merge) unless
    ``class_aware`` (per label, for multi-class benchmarks). Returns torch tensors ``boxes``, ``scores``,
    ``labels`` sorted by decreasing score (at most ``max_dets``).
    """
    import torch
    from torchvision.ops import batched_nms, nms

    boxes, scores, labels = [], [], []
    for det in per_tile_dets:
        x0, y0 = (float(v) for v in _to_numpy(det["tile"]).reshape(-1)[:2])
        b = _to_numpy(det["boxes"]).astype(np.float32).reshape(-1, 4)
        s = _to_numpy(det["scores"]).astype(np.float32).reshape(-1)
        if len(b) != len(s):
            raise UsageError(f"detections have {len(b)} boxes but {len(s)} scores")
        lab = _to_numpy(det["labels"]).astype(np.int64).reshape(-1) if "labels" in det else np.ones(len(s), np.int64)
        boxes.append(b + np.array([x0, y0, x0, y0], np.float32))
        scores.append(s)
        labels.append(lab)
    if not boxes:
        return {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    tb = torch.from_numpy(np.concatenate(boxes))
    ts = torch.from_numpy(np.concatenate(scores))
    tl = torch.from_numpy(np.concatenate(labels))
    keep = batched_nms(tb, ts, tl, iou_threshold) if class_aware else nms(tb, ts, iou_threshold)  # by score
    if max_dets is not None:
        keep = keep[:max_dets]
    return {"boxes": tb[keep], "scores": ts[keep], "labels": tl[keep]}


def detections_to_coco(
    image_id: int,
    dets: Mapping[str, Any],
    category_id: int = 1,
    category_ids: Sequence[int] | None = None,
    ndigits: int | None = 3,
) -> list[dict[str, Any]]:
    """Merged detections (``boxes`` xyxy, ``scores``, ``labels``) as COCO results ``{image_id, category_id,
    bbox: xywh, score}``. ``category_ids[label - 1]`` names each detection's category (default: all
    ``category_id``); ``ndigits`` rounds boxes (scores to twice as many digits; None: exact)."""
    boxes = _to_numpy(dets["boxes"]).astype(np.float64).reshape(-1, 4)
    scores = _to_numpy(dets["scores"]).astype(np.float64).reshape(-1)
    if category_ids is not None and "labels" in dets:
        cats = [int(category_ids[int(k) - 1]) for k in _to_numpy(dets["labels"]).reshape(-1)]
    else:
        cats = [int(category_id)] * len(scores)

    def r(v: float, digits: int | None) -> float:
        return float(v) if digits is None else round(float(v), digits)

    d2 = None if ndigits is None else 2 * ndigits
    return [
        {
            "image_id": int(image_id),
            "category_id": c,
            "bbox": [r(b[0], ndigits), r(b[1], ndigits), r(b[2] - b[0], ndigits), r(b[3] - b[1], ndigits)],
            "score": r(s, d2),
        }
        for b, s, c in zip(boxes, scores, cats, strict=True)
    ]

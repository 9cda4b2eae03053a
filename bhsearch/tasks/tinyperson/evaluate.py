"""TinyPerson AP / MR evaluator, vectorised with numpy: the official protocol and a COCO one.

``protocol="official"`` (default) reproduces TinyBenchmark's fork of ``COCOeval``
(``maskrcnn_benchmark/data/datasets/evaluation/coco/cocoeval.py`` run with
``ignore_uncertain=True, use_iod_for_ignore=True``, the evaluator behind the paper's numbers):
one merged class; GT flagged ``ignore`` / ``uncertain`` / ``iscrowd`` and GT outside the size range
are ignored in that range; COCO's greedy IoU matching; then a detection left unmatched is ignored
(neither TP nor FP) when its IoD = v/(1+v)*(1+A_gt/A_det) — v the COCO IoU, A_gt the ``area``
field — with the first ignored GT of maximal IoD reaches the IoU threshold; that GT is then marked
matched. Every image in the file is evaluated. One upstream bug is deliberately not reproduced:
matches are stored there as GT ids, so a detection matched to a GT whose id is 0 reads as
unmatched; here matches are kept by position.

``protocol="coco"`` is stock pycocotools ``COCOeval`` (equal to it to 1e-9 when no GT is
flagged) with the IoD step restricted to flagged GT, using the true IoU.

Speed: IoU matrices are computed per image; the greedy matching, which is sequential within an
image, runs in lock-step across all images (and all IoU thresholds and size ranges at once) over
the few detections that overlap any GT at all. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.errors import DataError, UsageError

IOU_THRESHOLDS = (0.25, 0.5, 0.75)
RANGE_NAMES = ("tiny", "tiny1", "tiny2", "tiny3", "small", "all")
IOD_RULES = ("iou", "2iou/(1+iou)", "none")
PROTOCOLS = ("official", "coco")
MR_IOU = 0.5
# Same construction as pycocotools' Params.recThrs, so the floats are bit-identical.
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
FPPI_POINTS = np.logspace(-2.0, 0.0, 9)
_MIN_MISS_RATE = 1e-10
_CHUNK_ELEMENTS = 4_000_000


def area_ranges(area_lower: float = 1) -> dict[str, tuple[float, float]]:
    """Size ranges on GT ``area`` (bounds are sizes squared, both inclusive, like COCOeval)."""
    lo = float(area_lower) ** 2
    return {
        "tiny": (lo, 20.0**2),
        "tiny1": (lo, 8.0**2),
        "tiny2": (8.0**2, 12.0**2),
        "tiny3": (12.0**2, 20.0**2),
        "small": (20.0**2, 32.0**2),
        "all": (lo, 1e5**2),
    }


def iod_thresholds(iou_thresholds, rule: str) -> np.ndarray:
    """IoD threshold used for ignore regions at each (clipped) IoU threshold."""
    t = np.minimum(np.asarray(iou_thresholds, dtype=np.float64), 1 - 1e-10)
    if rule == "iou":
        return t
    if rule == "2iou/(1+iou)":
        return 2 * t / (1 + t)
    if rule == "none":  # no IoD rule: plain COCOeval semantics (crowd GT matched by intersection/det area)
        return np.full_like(t, np.inf)
    raise UsageError(f"unknown IoD threshold rule {rule!r}; choose one of {', '.join(IOD_RULES)}")


# --------------------------------------------------------------------------------------------- loading


@dataclass
class GroundTruth:
    """GT of the evaluated images, flat and grouped by image (sorted image ids)."""

    image_ids: np.ndarray  # (I,) evaluated image ids, sorted
    offsets: np.ndarray  # (I+1,) GT slice of each image
    boxes: np.ndarray  # (G, 4) xywh float64
    areas: np.ndarray  # (G,) the annotation's ``area`` (w*h when absent)
    crowd: np.ndarray  # (G,) bool
    flagged: np.ndarray  # (G,) bool: ignore | uncertain | iscrowd
    ignore_attr: np.ndarray  # (G,) bool: ignore | uncertain (the miss-rate tool's flags)
    sizes: np.ndarray  # (G,) the annotation's ``size`` (sqrt(area) when absent)
    visible: np.ndarray  # (G,) bool: visible fraction of the ``vis`` box >= 0.65 (True without one)
    all_image_ids: set  # every image id of the file, dense included
    dense_image_ids: set  # images flagged dense (skipped only with ``skip_dense``)
    skip_dense: bool = False
    source: str = "GT"


@dataclass
class Detections:
    image_index: np.ndarray  # (N,) index into GroundTruth.image_ids
    boxes: np.ndarray  # (N, 4) xywh float64
    scores: np.ndarray  # (N,)
    dropped_dense: int = 0
    source: str = "DETS"
    warnings: list = field(default_factory=list)


def _read_json(path: str | Path, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file {p} does not exist")
    try:
        with p.open("rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} file {p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{what} file {p} is not valid JSON (not UTF-8 text)") from None


def _short(obj: Any, limit: int = 120) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _truthy(value: Any) -> bool:
    return bool(value) and value not in ("0", "false", "False")


def _check_box(bbox: Any, where: str) -> list[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise DataError(f"{where}: 'bbox' must be [x, y, w, h], got {_short(bbox)}")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DataError(f"{where}: 'bbox' must hold 4 numbers, got {_short(bbox)}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DataError(f"{where}: 'bbox' has a non-finite value {_short(bbox)}")
    if w < 0:
        raise DataError(f"{where}: negative width {w:g} in bbox {_short(bbox)}")
    if h < 0:
        raise DataError(f"{where}: negative height {h:g} in bbox {_short(bbox)}")
    return [x, y, w, h]


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool):
        raise DataError(f"{where}: '{key}' must be a number, got {_short(value)}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: '{key}' must be a number, got {_short(value)}") from None
    if not math.isfinite(out):
        raise DataError(f"{where}: '{key}' is not finite")
    return out


def _visible(ann: dict, box: list[float]) -> bool:
    """CityPersons visibility rule: (vis_w / w) * (vis_h / h) >= 0.65 when a ``vis`` box is given."""
    vis = ann.get("vis")
    if vis is None or box[2] <= 0 or box[3] <= 0:
        return True
    vis = _check_box(vis, "vis")
    return (vis[2] / box[2]) * (vis[3] / box[3]) >= 0.65


def load_ground_truth(gt: dict | str | Path, skip_dense: bool = False) -> GroundTruth:
    """Read a COCO-style TinyPerson GT dict or JSON file (not modified).

    Every image is evaluated, as the official code does; ``skip_dense`` leaves out the images
    flagged dense (``in_dense_image``/``dense`` on the image or on any of its annotations).
    """
    source = "GT"
    if isinstance(gt, (str, Path)):
        source = str(gt)
        gt = _read_json(gt, "GT")
    if not isinstance(gt, dict):
        raise DataError(f"{source}: ground truth must be a COCO JSON object, got {type(gt).__name__}")
    for key in ("images", "annotations"):
        if key not in gt:
            raise DataError(f"{source}: ground truth has no '{key}' list")
        if not isinstance(gt[key], list):
            raise DataError(f"{source}: '{key}' must be a list")
    all_ids: set = set()
    dense: set = set()
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise DataError(f"{source}: images[{i}] has no 'id'")
        if isinstance(img["id"], bool) or not isinstance(img["id"], (int, str)):
            raise DataError(f"{source}: images[{i}]: 'id' must be an integer, got {_short(img['id'])}")
        if img["id"] in all_ids:
            raise DataError(f"{source}: images[{i}]: duplicate image id {img['id']!r}")
        all_ids.add(img["id"])
        if _truthy(img.get("in_dense_image")) or _truthy(img.get("dense")):
            dense.add(img["id"])
    rows = []
    for i, ann in enumerate(gt["annotations"]):
        where = f"{source}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataError(f"{where} is not an object")
        if "image_id" not in ann:
            raise DataError(f"{where} has no 'image_id'")
        if not isinstance(ann["image_id"], (int, str)) or ann["image_id"] not in all_ids:
            raise DataError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        box = _check_box(ann.get("bbox"), where)
        area = _number(ann.get("area", box[2] * box[3]), where, "area")
        if area < 0:
            raise DataError(f"{where}: 'area' must not be negative, got {area:g}")
        crowd = _truthy(ann.get("iscrowd", 0))
        ignore_attr = _truthy(ann.get("ignore", 0)) or _truthy(ann.get("uncertain", 0))
        if _truthy(ann.get("in_dense_image", 0)):
            dense.add(ann["image_id"])
        size = _number(ann["size"], where, "size") if "size" in ann else math.sqrt(max(area, 0.0))
        rows.append((ann["image_id"], box, area, crowd, crowd or ignore_attr, ignore_attr, size, _visible(ann, box)))
    try:
        image_ids = sorted(all_ids - dense if skip_dense else all_ids)
    except TypeError:
        raise DataError(f"{source}: image ids mix integers and strings") from None
    index = {img_id: k for k, img_id in enumerate(image_ids)}
    rows = [r for r in rows if r[0] in index]
    img_idx = np.array([index[r[0]] for r in rows], dtype=np.int64)
    order = np.argsort(img_idx, kind="stable")
    boxes = np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 4)[order]
    return GroundTruth(
        image_ids=np.array(image_ids, dtype=object),
        offsets=np.concatenate([[0], np.cumsum(np.bincount(img_idx, minlength=len(image_ids)))]).astype(np.int64),
        boxes=boxes,
        areas=np.array([r[2] for r in rows], dtype=np.float64)[order],
        crowd=np.array([r[3] for r in rows], dtype=bool)[order],
        flagged=np.array([r[4] for r in rows], dtype=bool)[order],
        ignore_attr=np.array([r[5] for r in rows], dtype=bool)[order],
        sizes=np.array([r[6] for r in rows], dtype=np.float64)[order],
        visible=np.array([r[7] for r in rows], dtype=bool)[order],
        all_image_ids=all_ids,
        dense_image_ids=dense,
        skip_dense=skip_dense,
        source=source,
    )


def _first_bad_detection(dets: list, gt: GroundTruth, source: str) -> DataError:
    """Slow scan that names the first malformed detection."""
    for i, d in enumerate(dets):
        where = f"{source}: detection {i}"
        if not isinstance(d, dict):
            return DataError(f"{where} is not an object: {_short(d)}")
        for key in ("image_id", "bbox", "score"):
            if key not in d:
                return DataError(f"{where} has no '{key}': {_short(d)}")
        try:
            known = d["image_id"] in gt.all_image_ids
        except TypeError:
            known = False
        if not known:
            return DataError(f"{where}: image_id {d['image_id']!r} is not an image of the ground truth")
        try:
            _check_box(d["bbox"], where)
        except DataError as exc:
            return exc
        score = d["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            return DataError(f"{where}: 'score' must be a number, got {_short(score)}")
        if math.isnan(score):
            return DataError(f"{where}: score is NaN")
        if not math.isfinite(score):
            return DataError(f"{where}: score is not finite ({score})")
    return DataError(f"{source}: malformed detections")


def _image_index(img: list, gt: GroundTruth) -> np.ndarray | None:
    """Index of each detection's image in ``gt.image_ids``; len(image_ids) for dense; None if unknown."""
    dense_mark = len(gt.image_ids)
    ids = np.array(img)
    int_ids = all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in gt.all_image_ids)
    if ids.ndim == 1 and ids.dtype.kind in "iu" and int_ids and gt.all_image_ids:
        known = np.array(sorted(gt.all_image_ids), dtype=np.int64)
        pos = np.minimum(np.searchsorted(known, ids), len(known) - 1)
        if (known[pos] != ids).any():
            return None
        lookup = np.full(len(known), dense_mark, np.int64)
        lookup[np.searchsorted(known, np.array(list(gt.image_ids), dtype=np.int64))] = np.arange(dense_mark)
        return lookup[pos]
    index = {img_id: k for k, img_id in enumerate(gt.image_ids)}
    if gt.skip_dense:
        index.update({img_id: dense_mark for img_id in gt.dense_image_ids})
    try:
        out = np.fromiter((index.get(i, -1) for i in img), dtype=np.int64, count=len(img))
    except TypeError:  # unhashable image id
        return None
    return None if (out < 0).any() else out


def load_detections(dets: list | str | Path, gt: GroundTruth) -> Detections:
    """Read COCO results (a list of {image_id, bbox, score}); categories are merged into one."""
    source = "DETS"
    if isinstance(dets, (str, Path)):
        source = str(dets)
        dets = _read_json(dets, "DETS")
    if not isinstance(dets, list):
        raise DataError(f"{source}: detections must be a JSON list in COCO results format")
    if not dets:
        return Detections(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), source=source)
    try:
        img = [d["image_id"] for d in dets]
        raw_boxes = [d["bbox"] for d in dets]
        if set(map(len, raw_boxes)) != {4}:
            raise ValueError
        boxes = np.array(list(chain.from_iterable(raw_boxes)))
        scores = np.array([d["score"] for d in dets])
        if boxes.dtype.kind not in "fiu" or scores.dtype.kind not in "fiu":
            raise ValueError
        boxes = boxes.astype(np.float64).reshape(-1, 4)
        scores = scores.astype(np.float64)
    except (KeyError, TypeError, ValueError):
        raise _first_bad_detection(dets, gt, source) from None
    bad = ~np.isfinite(boxes).all(1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0) | ~np.isfinite(scores)
    if bad.any():
        raise _first_bad_detection(dets, gt, source)
    img_idx = _image_index(img, gt)
    if img_idx is None:
        raise _first_bad_detection(dets, gt, source)
    dense_mark = len(gt.image_ids)
    keep = img_idx != dense_mark
    out = Detections(img_idx[keep], boxes[keep], scores[keep], int((~keep).sum()), source)
    if out.dropped_dense:
        out.warnings.append(f"{out.dropped_dense} detections on dense images were not evaluated")
    return out


# -------------------------------------------------------------------------------------------- matching


def _pair_matrices(dbox, gbox, garea, crowd, iod_over, crowd_iou_in_iod=True):
    """Rows of detections that touch any GT, their matching IoU and their IoD.

    Matching IoU is COCO's (crowd GT: intersection / detection area). IoD = v/(1+v)*(1+A_gt/A_det)
    with A_gt the GT ``area`` field and v the matching IoU, as the official TinyBenchmark code
    computes it (``crowd_iou_in_iod=False``: the true IoU also for crowd GT). It is -1 for GT outside
    ``iod_over`` (None: no IoD step at all) and for empty detections.
    """
    gx, gy, gw, gh = (gbox[None, :, i] for i in range(4))
    w = np.minimum(dbox[:, 2, None] + dbox[:, 0, None], gw + gx) - np.maximum(dbox[:, 0, None], gx)
    h = np.minimum(dbox[:, 3, None] + dbox[:, 1, None], gh + gy) - np.maximum(dbox[:, 1, None], gy)
    hit = (w > 0) & (h > 0)
    rows = np.flatnonzero(hit.any(1))
    w, h, hit, d = w[rows], h[rows], hit[rows], dbox[rows]
    inter = np.where(hit, w * h, 0.0)
    da = (d[:, 2] * d[:, 3])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(hit, inter / (da + gw * gh - inter), 0.0)
        match = np.where(crowd[None, :], np.where(hit, inter / da, 0.0), iou) if crowd.any() else iou
        iod = None
        if iod_over is not None and iod_over.any():
            v = match if crowd_iou_in_iod else iou
            iod = v / (1 + v) * (1 + garea[None, :] / da)
            iod = np.where(iod_over[None, :] & hit & (da > 0), iod, -1.0)
    return rows, match, iod


@dataclass
class _Bucket:
    images: list  # per image: (det global idx (K,), match (K,G), iod (K,G) | None, gt slice)
    g_pad: int


def _lockstep_match(bucket, gt, thr, iod_thr, ranges, matched, ignored):
    """Greedy COCO matching of the candidate detections of all images of one bucket at once."""
    imgs = bucket.images  # sorted by candidate count, most first
    B, G, K = len(imgs), bucket.g_pad, len(imgs[0][0])
    T, A = len(thr), len(ranges)
    # GT are stored in reverse order so that argmax (first max) picks COCO's last max.
    M = np.full((B, K, G), -1.0)
    any_iod = any(r[2] is not None for r in imgs)
    Iod = np.full((B, K, G) if any_iod else (B, 1, 1), -1.0)
    crowd = np.zeros((B, G), bool)
    ok = np.zeros((A, B, G), bool)  # non-ignore GT per size range
    det = np.full((B, K), -1, np.int64)
    counts = np.zeros(B, np.int64)
    lo = np.array([r[0] for r in ranges])[:, None]
    hi = np.array([r[1] for r in ranges])[:, None]
    for b, (didx, match, iod, (s, e)) in enumerate(imgs):
        k, g = match.shape
        counts[b] = k
        det[b, :k] = didx
        M[b, :k, :g] = match[:, ::-1]
        if iod is not None:
            Iod[b, :k, :g] = iod[:, ::-1]
        crowd[b, :g] = gt.crowd[s:e][::-1]
        area = gt.areas[s:e][::-1]
        ok[:, b, :g] = ~gt.flagged[s:e][::-1] & (area >= lo) & (area <= hi)
    active = (counts[None, :] > np.arange(K)[:, None]).sum(1)
    used = np.zeros((T, A, B, G), bool)
    out_m = np.zeros((T, A, B, K), bool)
    out_i = np.zeros((T, A, B, K), bool)
    thr_b = thr[:, None, None]
    for k in range(K):
        n = active[k]
        row = M[:n, k]
        u = used[:, :, :n]
        avail = (row >= thr_b)[:, None] & (~u | crowd[:n])
        okn = ok[:, :n]
        best_non = np.where(avail & okn, row, -1.0)
        best_ign = np.where(avail & ~okn, row, -1.0)
        i_non = best_non.argmax(-1)
        i_ign = best_ign.argmax(-1)
        has_non = np.take_along_axis(best_non, i_non[..., None], -1)[..., 0] >= 0
        has_ign = np.take_along_axis(best_ign, i_ign[..., None], -1)[..., 0] >= 0
        chosen = np.where(has_non, i_non, i_ign)
        hit = has_non | has_ign
        ig = ~has_non & has_ign
        if any_iod:
            # IoD over the GT ignored in each range (flagged or out of range), back in original GT
            # order so that argmax gives the first maximum, like the official code
            irow = np.where(~okn[:, :, ::-1], Iod[None, :n, k, ::-1], -1.0)  # (A, n, G)
            j = irow.argmax(-1)
            iod_val = np.take_along_axis(irow, j[..., None], -1)[..., 0]
            by_iod = ~hit & (iod_val[None] >= iod_thr[:, None, None])
            chosen = np.where(by_iod, G - 1 - j[None], chosen)
            hit |= by_iod
            ig |= by_iod
        prev = np.take_along_axis(u, chosen[..., None], -1)
        np.put_along_axis(u, chosen[..., None], prev | hit[..., None], -1)
        out_m[:, :, :n, k] = hit
        out_i[:, :, :n, k] = ig
    valid = det >= 0
    matched[:, :, det[valid]] = out_m[:, :, valid]
    ignored[:, :, det[valid]] = out_i[:, :, valid]


def _match_all(gt, det, thr, iod_thr, ranges, max_dets, protocol):
    """Per-detection match/ignore flags for every (IoU threshold, size range), COCO order kept."""
    # per image, score-descending (stable), cut to max_dets
    by_score = np.argsort(-det.scores, kind="stable")
    img_key = det.image_index[by_score]
    if len(gt.image_ids) < np.iinfo(np.int16).max:
        img_key = img_key.astype(np.int16)  # stable sort of 16-bit keys is a radix sort
    order = by_score[np.argsort(img_key, kind="stable")]
    img = det.image_index[order]
    n_img = len(gt.image_ids)
    counts = np.bincount(img, minlength=n_img)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rank = np.arange(len(order)) - starts[img]
    keep = rank < max_dets
    order, img = order[keep], img[keep]
    boxes, scores = det.boxes[order], det.scores[order]
    kept_counts = np.minimum(counts, max_dets)
    dstart = np.concatenate([[0], np.cumsum(kept_counts)])
    N, T, A = len(order), len(thr), len(ranges)
    matched = np.zeros((T, A, N), bool)
    ignored = np.zeros((T, A, N), bool)
    t_min = float(thr.min())
    i_min = float(iod_thr.min())
    use_iod = bool(np.isfinite(i_min))
    # official: the IoD step looks at every GT ignored in the range (out-of-range ones too);
    # coco: only at flagged GT, so that unflagged sets give stock pycocotools results
    iod_over = None if not use_iod else np.ones(len(gt.flagged), bool) if protocol == "official" else gt.flagged
    buckets: dict[int, _Bucket] = {}
    for i in range(n_img):
        s, e = gt.offsets[i], gt.offsets[i + 1]
        d0, d1 = dstart[i], dstart[i + 1]
        if s == e or d0 == d1:
            continue
        rows, match, iod = _pair_matrices(
            boxes[d0:d1],
            gt.boxes[s:e],
            gt.areas[s:e],
            gt.crowd[s:e],
            None if iod_over is None else iod_over[s:e],
            crowd_iou_in_iod=protocol == "official",
        )
        cand = match.max(1, initial=-1.0) >= t_min
        if iod is not None:
            cand |= iod.max(1, initial=-1.0) >= i_min
        if not cand.any():
            continue
        rows, match, iod = rows[cand], match[cand], None if iod is None else iod[cand]
        g_pad = max(8, 1 << int(e - s - 1).bit_length())
        bucket = buckets.setdefault(g_pad, _Bucket([], g_pad))
        bucket.images.append((rows + d0, match, iod, (s, e)))
    for bucket in buckets.values():
        # chunks of images keep the padded (images x candidates x GT) arrays under ~32 MB each
        images = sorted(bucket.images, key=lambda r: -len(r[0]))
        while images:
            n = max(1, _CHUNK_ELEMENTS // (len(images[0][0]) * bucket.g_pad))
            _lockstep_match(_Bucket(images[:n], bucket.g_pad), gt, thr, iod_thr, ranges, matched, ignored)
            images = images[n:]
    darea = boxes[:, 2] * boxes[:, 3]
    out_of_range = np.array([(darea < lo) | (darea > hi) for lo, hi in ranges]).reshape(A, N)
    ignored |= ~matched & out_of_range[None]
    return matched, ignored, scores, int((counts - kept_counts).sum())


# ---------------------------------------------------------------------------------------- accumulation


def _curves(matched, ignored):
    """Cumulative TP/FP counts over the non-ignored detections (inputs already in score order)."""
    m = matched[~ignored]
    tp = np.cumsum(m).astype(np.float64)
    fp = np.cumsum(~m).astype(np.float64)
    return tp, fp


def average_precision(tp: np.ndarray, fp: np.ndarray, npig: int) -> float:
    """COCO 101-point interpolated AP from cumulative TP/FP counts (fraction; -1 without GT)."""
    if npig == 0:
        return -1.0
    nd = len(tp)
    if nd == 0:
        return 0.0
    rc = tp / npig
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]
    inds = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
    q = np.zeros(len(RECALL_THRESHOLDS))
    ok = inds < nd
    q[ok] = pr[inds[ok]]
    return float(np.mean(q))


def log_average_miss_rate(tp: np.ndarray, fp: np.ndarray, npig: int, n_images: int) -> float:
    """Log-average miss rate over 9 FPPI points log-spaced in [0.01, 1] (fraction; -1 without GT)."""
    if npig == 0:
        return -1.0
    if len(tp) == 0 or n_images == 0:
        return 1.0
    fppi = fp / n_images
    recall = tp / npig
    inds = np.searchsorted(fppi, FPPI_POINTS, side="right") - 1
    rec = np.where(inds >= 0, recall[np.maximum(inds, 0)], 0.0)
    miss = np.maximum(1.0 - rec, _MIN_MISS_RATE)
    return float(np.exp(np.mean(np.log(miss))))


def _settings(protocol, thr, ranges, max_dets, iod_threshold, area_lower, gt, det, cut):
    return {
        "protocol": protocol,
        "iou_thresholds": [float(t) for t in thr],
        "area_ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in ranges.items()},
        "size_ranges": {name: [math.sqrt(lo), math.sqrt(hi)] for name, (lo, hi) in ranges.items()},
        "max_dets": int(max_dets),
        "iod_threshold": iod_threshold,
        "area_lower": area_lower,
        "recall_points": len(RECALL_THRESHOLDS),
        "fppi_points": [float(f) for f in FPPI_POINTS],
        "miss_rate": _mr_settings(protocol),
        "images_evaluated": len(gt.image_ids),
        "dense_images": len(gt.dense_image_ids),
        "dense_images_skipped": len(gt.dense_image_ids) if gt.skip_dense else 0,
        "gt_boxes": int(len(gt.boxes)),
        "gt_ignore_regions": int(gt.flagged.sum()),
        "detections": int(len(det.scores)),
        "detections_over_max_dets": cut,
        "detections_on_dense_images": det.dropped_dense,
    }


def _mr_settings(protocol: str) -> dict:
    if protocol == "coco":
        return {"tool": "COCO-style matching at IoU 0.5", "iou_thresholds": [MR_IOU], "max_dets": "as AP"}
    from bhsearch.tasks.tinyperson import miss_rate as m

    return {
        "tool": "TinyBenchmark CityPersons fork (eval_MR_multisetup)",
        "iou_thresholds": list(m.MR_IOU_THRESHOLDS),
        "size_ranges": {k: list(v) for k, v in m.MR_SETUPS.items()},
        "max_dets": m.MR_MAX_DETS,
        "detection_size_filter": [1 / m.MR_SIZE_EXPAND, m.MR_SIZE_EXPAND],
        "iod_threshold": m.MR_IOD_THRESHOLD,
    }


def evaluate(
    gt: dict | str | Path,
    dets: list | str | Path,
    max_dets: int = 200,
    iod_threshold: str = "iou",
    area_lower: float = 1,
    protocol: str = "official",
    skip_dense: bool = False,
) -> dict:
    """Evaluate COCO-format detections on TinyPerson GT; AP/MR in percent (None: no GT in range).

    ``protocol="official"`` reproduces TinyBenchmark's evaluator (the paper's numbers); ``"coco"``
    is stock pycocotools plus the IoD rule on flagged GT only (see the module docstring).
    Keys ``AP25_<range>``, ``AP50_<range>``, ``AP75_<range>``, ``MR50_<range>`` for the ranges
    tiny, tiny1, tiny2, tiny3, small, all; plus ``settings`` (naming the protocol) and ``warnings``.
    """
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise UsageError(f"max_dets must be a positive integer, got {max_dets!r}")
    if not isinstance(area_lower, (int, float)) or not 0 < area_lower < 20:
        raise UsageError(f"area_lower must be a size in (0, 20) pixels, got {area_lower!r}")
    thr = np.array(IOU_THRESHOLDS, dtype=np.float64)
    iod_thr = iod_thresholds(thr, iod_threshold)
    ranges = area_ranges(area_lower)
    g = load_ground_truth(gt, skip_dense=skip_dense)
    d = load_detections(dets, g)
    warnings = list(d.warnings)
    if g.dense_image_ids and not skip_dense:
        warnings.append(
            f"{len(g.dense_image_ids)} images are flagged dense and were evaluated (the official code does; "
            "--skip-dense leaves them out)"
        )
    if len(d.scores) == 0:
        warnings.append("no detections to evaluate: every AP is 0")
    rng = list(ranges.values())
    matched, ignored, scores, cut = _match_all(g, d, np.minimum(thr, 1 - 1e-10), iod_thr, rng, max_dets, protocol)
    if cut:
        warnings.append(f"{cut} detections beyond max_dets={max_dets} per image were dropped")
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[:, :, order], ignored[:, :, order]
    result: dict[str, Any] = {}
    mr: dict[str, Any] = {}
    for a, (name, (lo, hi)) in enumerate(ranges.items()):
        npig = int((~g.flagged & (g.areas >= lo) & (g.areas <= hi)).sum())
        if npig == 0:
            warnings.append(f"no ground truth in range '{name}': its AP and MR are undefined (None)")
        for t, iou in enumerate(IOU_THRESHOLDS):
            tp, fp = _curves(matched[t, a], ignored[t, a])
            ap = average_precision(tp, fp, npig)
            result[f"AP{round(iou * 100)}_{name}"] = None if ap < 0 else 100.0 * ap
            if iou == MR_IOU and protocol == "coco":
                lamr = log_average_miss_rate(tp, fp, npig, len(g.image_ids))
                mr[f"MR50_{name}"] = None if lamr < 0 else 100.0 * lamr
    if protocol == "official":
        from bhsearch.tasks.tinyperson.miss_rate import official_miss_rates

        mr = official_miss_rates(g, d)
    out = {key: result[key] for key in sorted(result, key=_key_order)}
    out.update(sorted(mr.items(), key=lambda kv: _key_order(kv[0])))
    out["settings"] = _settings(protocol, thr, ranges, max_dets, iod_threshold, area_lower, g, d, cut)
    out["warnings"] = warnings
    return out


def _key_order(key: str) -> tuple[int, int]:
    metric, name = key.split("_", 1)
    return ({"AP50": 0, "AP25": 1, "AP75": 2, "MR50": 3, "MR25": 4, "MR75": 5}[metric], RANGE_NAMES.index(name))

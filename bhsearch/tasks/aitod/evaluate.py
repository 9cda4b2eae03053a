"""AI-TOD evaluation: the AI-TOD toolkit's COCOeval (``aitodpycocotools``, ``faster-coco-eval-aitod``).

AI-TOD (Wang et al., 2021; 8 classes, mean object 12.8 px) is scored with stock COCOeval
semantics, per category, with its own size ranges and detection cap: IoU 0.50:0.05:0.95, 101
recall points, maxDets 1500, area ranges all [0, 1e5²], very tiny [0, 8²], tiny [8², 16²],
small [16², 32²], medium [32², 1e5²] (GT ``area`` field, bounds inclusive), ``iscrowd`` GT
ignored, no IoD rule. AP is the mean over categories with GT in the range (and IoU thresholds).
Keys ``AP``, ``AP50``, ``AP75``, ``AP_vt``, ``AP_t``, ``AP_s``, ``AP_m`` in percent (None where no
category has GT). The matching engine is the TinyPerson one (``bhsearch.tasks.tinyperson.evaluate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.errors import DataError, UsageError
from bhsearch.tasks.tinyperson import evaluate as engine

AITOD_IOU_THRESHOLDS = tuple(np.linspace(0.5, 0.95, 10))
AITOD_RANGES = {
    "all": (0.0, 1e5**2),
    "vt": (0.0, 8.0**2),
    "t": (8.0**2, 16.0**2),
    "s": (16.0**2, 32.0**2),
    "m": (32.0**2, 1e5**2),
}
AITOD_MAX_DETS = 1500
AITOD_CLASSES = ("airplane", "bridge", "storage-tank", "ship", "swimming-pool", "vehicle", "person", "wind-mill")


def _categories(gt: dict, source: str) -> list:
    cats = gt.get("categories")
    if isinstance(cats, list) and cats:
        try:
            return sorted({c["id"] for c in cats})
        except (TypeError, KeyError):
            raise DataError(f"{source}: every entry of 'categories' needs an 'id'") from None
    return sorted({a.get("category_id") for a in gt.get("annotations", []) if isinstance(a, dict)})


def _category_precisions(gt: dict, dets: list, cat, max_dets: int) -> np.ndarray:
    """(T, A) AP (fraction, -1 without GT) of one category, COCOeval rules."""
    sub_gt = {
        "images": gt["images"],
        "annotations": [
            {k: v for k, v in a.items() if k not in ("ignore", "uncertain", "in_dense_image")}
            for a in gt["annotations"]
            if a.get("category_id") == cat
        ],
    }
    g = engine.load_ground_truth(sub_gt)
    g.flagged = g.crowd.copy()  # COCOeval: only iscrowd makes a GT ignored
    d = engine.load_detections([x for x in dets if x.get("category_id") == cat], g)
    thr = np.minimum(np.array(AITOD_IOU_THRESHOLDS), 1 - 1e-10)
    ranges = list(AITOD_RANGES.values())
    no_iod = np.full(len(thr), np.inf)
    matched, ignored, scores, _ = engine._match_all(g, d, thr, no_iod, ranges, max_dets, "coco")
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[:, :, order], ignored[:, :, order]
    out = np.full((len(thr), len(ranges)), -1.0)
    for a, (lo, hi) in enumerate(ranges):
        npig = int((~g.flagged & (g.areas >= lo) & (g.areas <= hi)).sum())
        for t in range(len(thr)):
            out[t, a] = engine.average_precision(*engine._curves(matched[t, a], ignored[t, a]), npig)
    return out


def evaluate_aitod(gt: dict | str | Path, dets: list | str | Path, max_dets: int = AITOD_MAX_DETS) -> dict:
    """AI-TOD AP of COCO results (``category_id`` counts) on AI-TOD GT; percent, plus ``settings``."""
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise UsageError(f"max_dets must be a positive integer, got {max_dets!r}")
    gt_source = str(gt) if isinstance(gt, (str, Path)) else "GT"
    if isinstance(gt, (str, Path)):
        gt = engine._read_json(gt, "GT")
    if isinstance(dets, (str, Path)):
        dets = engine._read_json(dets, "DETS")
    if (
        not isinstance(gt, dict)
        or not isinstance(gt.get("images"), list)
        or not isinstance(gt.get("annotations"), list)
    ):
        raise DataError(f"{gt_source}: ground truth must be a COCO JSON object with 'images' and 'annotations' lists")
    if not isinstance(dets, list):
        raise DataError("DETS: detections must be a JSON list in COCO results format")
    engine.load_detections(dets, engine.load_ground_truth(gt))  # validates every detection once
    cats = _categories(gt, gt_source)
    per_cat = np.stack([_category_precisions(gt, dets, c, max_dets) for c in cats]) if cats else None
    result: dict[str, Any] = {}
    names = {"AP": ("all", None), "AP50": ("all", 0), "AP75": ("all", 5)}
    names.update({f"AP_{r}": (r, None) for r in ("vt", "t", "s", "m")})
    for key, (rng, t) in names.items():
        if per_cat is None:
            result[key] = None
            continue
        a = list(AITOD_RANGES).index(rng)
        vals = per_cat[:, :, a] if t is None else per_cat[:, t : t + 1, a]
        valid = vals[vals > -1]
        result[key] = None if valid.size == 0 else 100.0 * float(valid.mean())
    result["settings"] = {
        "benchmark": "aitod",
        "protocol": "aitod (COCOeval, AI-TOD toolkit ranges)",
        "iou_thresholds": [round(float(t), 2) for t in AITOD_IOU_THRESHOLDS],
        "area_ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in AITOD_RANGES.items()},
        "max_dets": int(max_dets),
        "categories": len(cats),
        "images": len(gt["images"]),
        "gt_boxes": len(gt["annotations"]),
        "detections": len(dets),
    }
    return result


__all__ = ["AITOD_CLASSES", "AITOD_IOU_THRESHOLDS", "AITOD_MAX_DETS", "AITOD_RANGES", "evaluate_aitod"]

"""The official TinyPerson log-average miss rate (TinyBenchmark's CityPersons-style evaluator).

TinyBenchmark reports MR with its fork of the CityPersons tool (``third/Cityscapes/
cityperson_eval.py`` → ``eval_MR_multisetup.py``, run with ``use_citypersons_standard=False,
ignore_uncertain=True, use_iod_for_ignore=True``). Its rules, reimplemented here from the public
source:

- setups by GT size = sqrt(``area``) (inclusive): tiny1 [2, 8], tiny2 [8, 12], tiny3 [12, 20],
  tiny [2, 20], small [20, 32], all [-1, 1e10]; IoU thresholds 0.25, 0.5, 0.75; maxDets 1000.
- GT is ignored when flagged ``ignore`` or ``uncertain`` (``iscrowd`` plays no part), outside the
  setup's size range, or less than 65 % visible (``vis`` box, when present).
- Detections, cut to maxDets by score, are dropped (neither TP nor FP) unless their size
  sqrt(w·h) lies in [lo/1.25, hi·1.25).
- Overlap with an ignored GT is intersection / detection area. Per detection in score order: the
  unmatched non-ignored GT of largest IoU ≥ t (last among ties); failing that, the *first* ignored
  GT whose overlap reaches t; failing that, the IoD step: the first ignored GT of largest
  v/(1+v)·(1+A_gt/A_det) (v its overlap), accepted when > 0.5. Ignored GT are never used up.
- fppi = false positives / images in the file; recall at each of 9 FPPI points log-spaced in
  [0.01, 1] is taken at the last detection with fppi ≤ the point — where none is, the upstream
  indexing (``searchsorted - 1`` = -1) takes the *final* recall, a quirk kept for equality;
  MR = exp(mean(log(1 - recall))) (0 when any recall is 1; 1 with no detections).

Not reproduced (documented in docs/evaluation.md): upstream stores matches as GT ids, so a match
to a GT with id 0 counts as a false positive there.
"""

from __future__ import annotations

import math

import numpy as np

MR_SETUPS = {
    "tiny": (2.0, 20.0),
    "tiny1": (2.0, 8.0),
    "tiny2": (8.0, 12.0),
    "tiny3": (12.0, 20.0),
    "small": (20.0, 32.0),
    "all": (-1.0, 1e5**2),
}
MR_IOU_THRESHOLDS = (0.25, 0.5, 0.75)
MR_MAX_DETS = 1000
MR_SIZE_EXPAND = 1.25
MR_IOD_THRESHOLD = 0.5
MIN_VISIBLE = 0.65


def official_fppi_points(lo: float = 0.01, hi: float = 1.0, n: int = 9) -> np.ndarray:
    """The 9 FPPI reference points, built as the official code builds them (bit-identical floats)."""
    step = np.log(hi / lo) / (n - 1)
    return np.exp(np.arange(np.log(lo), np.log(hi) + 1e-10, step))


FPPI_POINTS_OFFICIAL = official_fppi_points()


def _overlaps(dbox: np.ndarray, gbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, intersection / detection area) of every detection with every GT, 0 where disjoint."""
    w = np.minimum(dbox[:, None, 0] + dbox[:, None, 2], gbox[None, :, 0] + gbox[None, :, 2])
    w = w - np.maximum(dbox[:, None, 0], gbox[None, :, 0])
    h = np.minimum(dbox[:, None, 1] + dbox[:, None, 3], gbox[None, :, 1] + gbox[None, :, 3])
    h = h - np.maximum(dbox[:, None, 1], gbox[None, :, 1])
    hit = (w > 0) & (h > 0)
    inter = np.where(hit, w * h, 0.0)
    da = (dbox[:, 2] * dbox[:, 3])[:, None]
    ga = (gbox[:, 2] * gbox[:, 3])[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(hit, inter / (da + ga - inter), 0.0)
        iod = np.where(hit, inter / da, 0.0)
    return iou, iod


def _match_image(iou, iod, ig, garea, darea, thr):
    """Per detection (score order) and threshold: +1 TP, -1 FP, 0 ignored. Shapes (T, D)."""
    T, (D, G) = len(thr), iou.shape
    out = np.full((T, D), -1, np.int8)
    if G == 0:
        return out  # no GT: every detection is a false positive
    value = np.where(ig[None, :], iod, iou)
    with np.errstate(divide="ignore", invalid="ignore"):
        iod_step = np.where(ig[None, :], iod / (1 + iod) * (1 + garea[None, :] / darea[:, None]), -np.inf)
    iod_step = np.where(np.isnan(iod_step), -np.inf, iod_step)
    used = np.zeros((T, G), bool)
    rows = np.arange(T)
    non = ~ig
    for d in range(D):
        v = value[d]
        ok = v[None, :] >= thr[:, None]  # (T, G)
        cand = ok & non[None, :] & ~used
        has_non = cand.any(1)
        last = G - 1 - np.where(cand, v[None, :], -np.inf)[:, ::-1].argmax(1)
        has_ign = (ok & ig[None, :]).any(1)
        by_iod = iod_step[d].max(initial=-np.inf) > MR_IOD_THRESHOLD
        t_non = rows[has_non]
        used[t_non, last[has_non]] = True
        out[t_non, d] = 1
        out[~has_non & (has_ign | by_iod), d] = 0
    return out


def official_miss_rates(gt, det, iou_thresholds=MR_IOU_THRESHOLDS) -> dict[str, float | None]:
    """``MR{25,50,75}_<setup>`` in percent (None: no counted GT) for loaded GT and detections.

    ``gt`` and ``det`` are :class:`bhsearch.tasks.tinyperson.evaluate.GroundTruth` / ``Detections``.
    """
    thr = np.minimum(np.asarray(iou_thresholds, np.float64), 1 - 1e-10)
    names = list(MR_SETUPS)
    S, T = len(names), len(thr)
    n_images = len(gt.image_ids)
    by_score = np.argsort(-det.scores, kind="stable")
    order = by_score[np.argsort(det.image_index[by_score], kind="stable")]
    img_of = det.image_index[order]
    starts = np.searchsorted(img_of, np.arange(n_images + 1))
    scores, outcome, npig = [], [], np.zeros(S, np.int64)
    for i in range(n_images):
        s, e = gt.offsets[i], gt.offsets[i + 1]
        idx = order[starts[i] : starts[i + 1]][:MR_MAX_DETS]
        dbox, gbox = det.boxes[idx], gt.boxes[s:e]
        dsize = np.sqrt(dbox[:, 2] * dbox[:, 3])
        iou, iod = _overlaps(dbox, gbox)
        res = np.full((S, T, len(idx)), 2, np.int8)  # 2: dropped by the size filter
        for k, name in enumerate(names):
            lo, hi = MR_SETUPS[name]
            ig = gt.ignore_attr[s:e] | ~gt.visible[s:e] | (gt.sizes[s:e] < lo) | (gt.sizes[s:e] > hi)
            npig[k] += int((~ig).sum())
            keep = (dsize >= lo / MR_SIZE_EXPAND) & (dsize < hi * MR_SIZE_EXPAND)
            if keep.any():
                res[k][:, keep] = _match_image(
                    iou[keep], iod[keep], ig, gt.areas[s:e], dbox[keep, 2] * dbox[keep, 3], thr
                )
        scores.append(det.scores[idx])
        outcome.append(res)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_out = np.concatenate(outcome, axis=2) if outcome else np.zeros((S, T, 0), np.int8)
    rank = np.argsort(-all_scores, kind="mergesort")
    all_out = all_out[:, :, rank]
    result: dict[str, float | None] = {}
    for k, name in enumerate(names):
        for t, iou_t in enumerate(iou_thresholds):
            key = f"MR{round(iou_t * 100)}_{name}"
            if npig[k] == 0:
                result[key] = None
                continue
            o = all_out[k, t]
            o = o[o != 2]
            result[key] = 100.0 * _log_average(np.cumsum(o == 1), np.cumsum(o == -1), npig[k], n_images)
    return result


def _log_average(tp: np.ndarray, fp: np.ndarray, npig: int, n_images: int) -> float:
    """Official log-average miss rate over the 9 FPPI points (fraction)."""
    if len(tp) == 0:
        return 1.0
    fppi = fp / n_images
    recall = tp / npig
    inds = np.searchsorted(fppi, FPPI_POINTS_OFFICIAL, side="right") - 1
    miss = 1.0 - recall[inds]  # index -1 reads the final recall, as upstream does
    if (miss <= 0).any():
        return 0.0
    return float(math.exp(np.mean(np.log(miss))))


__all__ = ["FPPI_POINTS_OFFICIAL", "MR_SETUPS", "official_fppi_points", "official_miss_rates"]

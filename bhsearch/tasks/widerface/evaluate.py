"""WiderFace easy/medium/hard AP with the official evaluation protocol, vectorised with numpy.

The official MATLAB tool (``eval_tools/wider_eval.m``) and its widely used Python port do, per setting:

1. read one prediction file per GT image (``x y w h score`` lines), sorted by score (descending);
2. normalise every score over the whole dataset: ``(s - min) / (max - min)``;
3. per image, match each prediction to the GT face of highest IoU (``+1`` pixel convention, boxes
   ``[x, y, x + w, y + h]``); at IoU >= 0.5 a face *not* listed in the setting's ``gt_list`` makes the
   prediction ignored (neither TP nor FP), a listed face not yet recalled becomes recalled (TP), a listed
   face already recalled leaves the prediction a false positive; images with no GT face or no prediction are
   skipped (their predictions are not false positives);
4. sum, over images, proposals and recalled faces at 1000 score thresholds ``1 - t/1000`` (t = 1..1000);
   precision = recalled / proposals, recall = recalled / (faces listed in the setting);
5. VOC all-point AP (precision envelope, sum of recall steps times precision).

Each prediction's outcome depends only on its own best-IoU face and on whether an earlier (higher-score)
prediction already recalled that face, so everything is computed without per-prediction Python loops.
Differences from the MATLAB tool are listed in ``docs/widerface.md``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bhsearch.errors import DataError, UsageError
from bhsearch.tasks.widerface.reader import SETTINGS, EvalGroundTruth, image_ids, image_key, load_eval_gt

IOU_THRESHOLD = 0.5
THRESH_NUM = 1000

Predictions = dict[str, np.ndarray]  # image key -> (N, 5) x, y, w, h, score


# --------------------------------------------------------------------------- predictions


def _check_rows(rows: np.ndarray, where: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        return np.zeros((0, 5))
    if rows.ndim != 2 or rows.shape[1] < 5:
        raise DataError(f"{where}: predictions must be rows of 'x y w h score', got shape {rows.shape}")
    rows = rows[:, :5]
    if not np.isfinite(rows).all():
        raise DataError(f"{where}: a prediction has a non-finite value")
    if (rows[:, 2:4] < 0).any():
        raise DataError(f"{where}: a prediction has a negative width or height")
    return rows


def read_prediction_file(path: str | Path) -> np.ndarray:
    """One official prediction file: image name line, count line, ``count`` lines ``x y w h score``."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read prediction file ({exc})") from None
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) < 2:
        raise DataError(f"{path}: expected an image name line and a count line")
    try:
        count = float(lines[1])
    except ValueError:
        raise DataError(f"{path}:2: the count line must be a number, got {lines[1][:40]!r}") from None
    if count < 0 or count != int(count):
        raise DataError(f"{path}:2: the count must be a non-negative integer, got {lines[1]!r}")
    body = [ln for ln in lines[2:] if ln]
    if len(body) != int(count):
        raise DataError(f"{path}: the count line says {int(count)} boxes but the file has {len(body)} box lines")
    if all(ln.count(" ") == 4 or len(ln.split()) == 5 for ln in body):  # fast path: exactly 5 numbers a line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = np.fromstring(" ".join(body), dtype=np.float64, sep=" ")
        if values.size == 5 * len(body):
            return _check_rows(values.reshape(-1, 5), str(path))
    rows = np.zeros((len(body), 5))
    for k, line in enumerate(body):
        try:
            values = [float(v) for v in line.replace(",", " ").split()[:5]]
        except ValueError:
            values = []
        if len(values) < 5:
            raise DataError(f"{path}:{k + 3}: expected 'x y w h score', got {line[:80]!r}")
        rows[k] = values
    return _check_rows(rows, str(path))


def read_prediction_folder(folder: str | Path, keys: Sequence[str]) -> tuple[Predictions, dict[str, int]]:
    """Predictions of ``keys`` from ``folder/<event>/<name>.txt``; counts of ``missing`` and ``extra`` files."""
    folder = Path(folder)
    preds: Predictions = {}
    missing = 0
    for key in keys:
        path = folder / f"{key}.txt"
        if path.is_file():
            preds[key] = read_prediction_file(path)
        else:
            missing += 1
    wanted = set(keys)
    extra = sum(1 for p in folder.glob("*/*.txt") if f"{p.parent.name}/{p.stem}" not in wanted)
    return preds, {"missing": missing, "extra": extra}


def coco_to_predictions(
    results: Sequence[Mapping[str, Any]], keys: Sequence[str], source: str = "DETS"
) -> tuple[Predictions, dict[str, int]]:
    """Group COCO results (``image_id``, ``bbox`` [x, y, w, h], ``score``) by image key.

    ``image_id`` is an integer (1 + position of ``"<event>/<name>"`` in the sorted GT image list, see
    :func:`bhsearch.tasks.widerface.reader.image_ids`) or a string: ``"<event>/<name>"`` or the bare file name.
    """
    if not isinstance(results, (list, tuple)):
        raise DataError(f"{source}: COCO results must be a JSON list of detections")
    by_id = {v: k for k, v in image_ids(keys).items()}
    by_name = {k.split("/", 1)[1]: k for k in keys}
    wanted = set(keys)
    grouped: dict[str, list[list[float]]] = {}
    unknown = 0
    for n, det in enumerate(results):
        if not isinstance(det, Mapping) or "image_id" not in det or "bbox" not in det or "score" not in det:
            raise DataError(f"{source}: detection {n} needs 'image_id', 'bbox' and 'score'")
        image_id = det["image_id"]
        if isinstance(image_id, bool):
            raise DataError(f"{source}: detection {n}: image_id must be an integer or a string")
        if isinstance(image_id, (int, np.integer)) or (isinstance(image_id, float) and float(image_id).is_integer()):
            key = by_id.get(int(image_id))
        elif isinstance(image_id, str):
            name = image_id.removesuffix(".jpg")
            key = name if name in wanted else by_name.get(name.rsplit("/", 1)[-1])
        else:
            raise DataError(f"{source}: detection {n}: image_id must be an integer or a string, got {image_id!r}")
        bbox = det["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise DataError(f"{source}: detection {n}: 'bbox' must be [x, y, w, h], got {bbox!r}"[:200])
        try:
            row = [float(v) for v in bbox] + [float(det["score"])]
        except (TypeError, ValueError):
            raise DataError(f"{source}: detection {n}: 'bbox' and 'score' must be numbers") from None
        if key is None:
            unknown += 1
            continue
        grouped.setdefault(key, []).append(row)
    preds = {k: _check_rows(np.asarray(v), f"{source}: image {k}") for k, v in grouped.items()}
    return preds, {"unknown": unknown}


def load_predictions(predictions: Any, keys: Sequence[str]) -> tuple[Predictions, dict[str, Any]]:
    """Predictions from a folder (official text format), a COCO results JSON file or list, or a mapping
    ``{"<event>/<name>": (N, 5) array}``; plus bookkeeping (``source``, ``format``, ``missing``, ``extra``)."""
    info: dict[str, Any] = {"missing": 0, "extra": 0}
    if isinstance(predictions, (str, Path)):
        path = Path(predictions)
        info["source"] = str(path)
        if path.is_dir():
            info["format"] = "text"
            preds, counts = read_prediction_folder(path, keys)
            info.update(counts)
            return preds, info
        if not path.is_file():
            raise DataError(f"{path}: predictions not found (expected a folder of <event>/<name>.txt or a JSON file)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and "annotations" in data:
            data = data["annotations"]
        predictions = data
    else:
        info["source"] = type(predictions).__name__
    if isinstance(predictions, Mapping):
        info["format"] = "mapping"
        wanted = set(keys)
        preds = {}
        for key, rows in predictions.items():
            key = str(key).removesuffix(".jpg")
            if key in wanted:
                preds[key] = _check_rows(rows, f"predictions[{key!r}]")
            else:
                info["extra"] += 1
    else:
        info["format"] = "coco"
        preds, counts = coco_to_predictions(predictions, keys, info["source"])
        info["extra"] = counts["unknown"]
    info["missing"] = sum(1 for k in keys if k not in preds)
    return preds, info


# --------------------------------------------------------------------------- the protocol


def normalise_scores(preds: Predictions) -> tuple[Predictions, tuple[float, float] | None]:
    """Scores min-max normalised over every prediction of every image (the official ``norm_score``).

    With a single distinct score (max == min) every score becomes 1.0. Returns copies and the (min, max).
    """
    scores = [p[:, 4] for p in preds.values() if len(p)]
    if not scores:
        return {k: v.copy() for k, v in preds.items()}, None
    lo = float(min(s.min() for s in scores))
    hi = float(max(s.max() for s in scores))
    out = {}
    for key, p in preds.items():
        q = p.copy()
        if len(q):
            q[:, 4] = (q[:, 4] - lo) / (hi - lo) if hi > lo else 1.0
        out[key] = q
    return out, (lo, hi)


def box_overlaps(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """(N, K) IoU of the official tool: boxes ``[x, y, x + w, y + h]`` with the ``+1`` pixel convention."""
    p = np.asarray(pred_xywh, np.float64)
    g = np.asarray(gt_xywh, np.float64)
    px1, py1 = p[:, 0:1], p[:, 1:2]
    px2, py2 = px1 + p[:, 2:3], py1 + p[:, 3:4]
    gx1, gy1 = g[:, 0], g[:, 1]
    gx2, gy2 = gx1 + g[:, 2], gy1 + g[:, 3]
    iw = np.minimum(px2, gx2) - np.maximum(px1, gx1) + 1
    ih = np.minimum(py2, gy2) - np.maximum(py1, gy1) + 1
    inter = iw * ih
    union = (px2 - px1 + 1) * (py2 - py1 + 1) + (gx2 - gx1 + 1) * (gy2 - gy1 + 1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def image_outcomes(
    pred: np.ndarray, gt_xywh: np.ndarray, keep: Sequence[np.ndarray], iou_threshold: float = IOU_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Official ``image_eval`` for several settings at once.

    ``pred`` (N, 5) sorted by score (descending); ``keep[s]`` the 0-based GT indices that count in setting
    ``s``. Returns ``proposal`` (S, N) bool (False: matched an ignored face, not counted) and ``recalled``
    (S, N) bool (True: the first prediction to recall its face).
    """
    n, n_settings = len(pred), len(keep)
    proposal = np.ones((n_settings, n), bool)
    recalled = np.zeros((n_settings, n), bool)
    if n == 0 or len(gt_xywh) == 0:
        return proposal, recalled
    overlaps = box_overlaps(pred[:, :4], gt_xywh)
    best = overlaps.argmax(axis=1)
    hit = overlaps[np.arange(n), best] >= iou_threshold
    for s, idx in enumerate(keep):
        counted = np.zeros(len(gt_xywh), bool)
        counted[idx] = True
        kept = counted[best]
        proposal[s] = ~(hit & ~kept)
        cand = np.flatnonzero(hit & kept)
        if cand.size:
            _, first = np.unique(best[cand], return_index=True)
            recalled[s, cand[first]] = True
    return proposal, recalled


def thresholds(thresh_num: int = THRESH_NUM) -> np.ndarray:
    """The official score thresholds ``1 - t / thresh_num`` for t = 1..thresh_num (decreasing)."""
    return 1 - (np.arange(thresh_num) + 1) / thresh_num


def pr_counts(scores: np.ndarray, flags: np.ndarray, thresh_num: int = THRESH_NUM) -> np.ndarray:
    """For each threshold t, the sum of ``flags`` over predictions with ``score >= thresholds()[t]``."""
    thr_ascending = thresholds(thresh_num)[::-1]
    passed = np.searchsorted(thr_ascending, scores, side="right")  # how many thresholds each score reaches
    first = thresh_num - passed  # index of the first (highest) threshold it reaches
    hist = np.bincount(first, weights=flags.astype(np.float64), minlength=thresh_num + 1)[:thresh_num]
    return np.cumsum(hist)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: precision envelope, then sum of recall steps times precision.

    Undefined precisions (0/0 at thresholds with no counted prediction, where recall is 0 too) are treated as 0,
    which gives the MATLAB tool's result (its ``max`` skips NaN).
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], np.nan_to_num(precision, nan=0.0), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_widerface(
    gt_dir_or_mat_paths: str | Path | Sequence[str | Path] | Mapping[str, str | Path] | EvalGroundTruth,
    predictions: Any,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    thresh_num: int = THRESH_NUM,
    images: Iterable[str] | None = None,
    return_curves: bool = False,
) -> dict[str, Any]:
    """AP (percent) on the easy, medium and hard settings with the official protocol (module doc).

    ``gt_dir_or_mat_paths``: the folder holding ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``
    (or the WiderFace root / ``eval_tools`` folder above it), the four paths, or a loaded ``EvalGroundTruth``.
    ``predictions``: a folder of ``<event>/<name>.txt`` files (official format), a COCO results JSON file or
    list, or a mapping ``{"<event>/<name>": (N, 5) x, y, w, h, score}``. ``images`` restricts the evaluation to
    these ``"<event>/<name>"`` keys (e.g. a subset that was run). Result keys: ``AP_easy``, ``AP_medium``,
    ``AP_hard``, ``faces_easy`` …, ``settings``, ``warnings`` (and ``curves`` with ``return_curves``).
    """
    if not 0 < iou_threshold <= 1:
        raise UsageError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if not isinstance(thresh_num, int) or thresh_num < 1:
        raise UsageError(f"thresh_num must be a positive integer, got {thresh_num!r}")
    gt = gt_dir_or_mat_paths if isinstance(gt_dir_or_mat_paths, EvalGroundTruth) else load_eval_gt(gt_dir_or_mat_paths)
    all_keys = gt.keys
    selected = list(range(len(all_keys)))
    notes: list[str] = []
    if images is not None:
        wanted = {str(k).removesuffix(".jpg") for k in images}
        selected = [i for i, k in enumerate(all_keys) if k in wanted]
        if len(selected) < len(wanted):
            notes.append(f"{len(wanted) - len(selected)} requested images are not in the ground truth")
        if not selected:
            raise DataError("none of the requested images is in the WiderFace ground truth")
    keys = [all_keys[i] for i in selected]
    preds, info = load_predictions(predictions, all_keys)
    if images is not None:
        chosen = set(keys)
        preds = {k: v for k, v in preds.items() if k in chosen}
    if info.get("extra") and not preds:
        raise DataError(
            f"{info.get('source')}: none of the predicted images is in the ground truth "
            f"({info['extra']} unknown); wrong split or image ids?"
        )
    if info.get("extra"):
        notes.append(f"{info['extra']} predicted images (or COCO detections) are not in the ground truth; ignored")
    missing = sum(1 for k in keys if k not in preds)
    if missing:
        notes.append(f"{missing} of {len(keys)} images have no prediction (counted as no detection)")
    preds, score_range = normalise_scores(preds)
    if score_range is not None and score_range[0] == score_range[1]:
        notes.append("every prediction has the same score; normalised scores are all 1")

    scores_all, proposal_all, recalled_all = [], [], []
    face_counts = dict.fromkeys(SETTINGS, 0)
    for i in selected:
        key = all_keys[i]
        keep = [gt.keep[s][i] for s in SETTINGS]
        for s, idx in zip(SETTINGS, keep, strict=True):
            face_counts[s] += len(idx)
        pred = preds.get(key)
        if pred is None or len(pred) == 0 or len(gt.boxes[i]) == 0:
            continue
        pred = pred[np.argsort(-pred[:, 4], kind="stable")]
        proposal, recalled = image_outcomes(pred, gt.boxes[i], keep, iou_threshold)
        scores_all.append(pred[:, 4])
        proposal_all.append(proposal)
        recalled_all.append(recalled)
    scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
    proposal = np.concatenate(proposal_all, axis=1) if proposal_all else np.zeros((len(SETTINGS), 0), bool)
    recalled = np.concatenate(recalled_all, axis=1) if recalled_all else np.zeros((len(SETTINGS), 0), bool)

    result: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for s, setting in enumerate(SETTINGS):
        n_prop = pr_counts(scores, proposal[s], thresh_num)
        n_rec = pr_counts(scores, recalled[s], thresh_num)
        count = face_counts[setting]
        if count == 0:
            notes.append(f"no face counts in the {setting} setting; AP_{setting} is undefined")
            result[f"AP_{setting}"] = None
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = n_rec / n_prop
        recall = n_rec / count
        result[f"AP_{setting}"] = 100.0 * voc_ap(recall, precision)
        if return_curves:
            curves[setting] = {
                "thresholds": thresholds(thresh_num).tolist(),
                "precision": [None if math.isnan(v) else float(v) for v in precision],
                "recall": recall.tolist(),
            }
    for setting in SETTINGS:
        result[f"faces_{setting}"] = face_counts[setting]
    result["settings"] = {
        "protocol": "WiderFace official (eval_tools): min-max score normalisation, best-IoU matching, "
        f"{thresh_num} thresholds, VOC all-point AP",
        "iou_threshold": iou_threshold,
        "thresh_num": thresh_num,
        "images": len(keys),
        "images_with_predictions": len(keys) - missing,
        "detections": int(sum(len(v) for v in preds.values())),
        "score_range": list(score_range) if score_range else None,
        "predictions_format": info.get("format"),
        "gt": gt.sources,
    }
    result["warnings"] = notes
    if return_curves:
        result["curves"] = curves
    return result


def write_prediction_folder(preds: Mapping[str, np.ndarray], folder: str | Path) -> Path:
    """Write ``{"<event>/<name>": (N, 5) x, y, w, h, score}`` in the official text format.

    The event folders are staged and renamed in at the end (``bhsearch.fileio.atomic_entries``).
    """
    from bhsearch.fileio import atomic_entries

    folder = Path(folder)
    with atomic_entries(folder) as stage:
        for key, rows in preds.items():
            event, name = key.split("/", 1)
            path = stage / event / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = np.asarray(rows, np.float64).reshape(-1, 5)
            body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows)
            path.write_text(f"{name}.jpg\n{len(rows)}\n{body}")
    return folder


def predictions_to_coco(preds: Mapping[str, np.ndarray], keys: Sequence[str]) -> list[dict[str, Any]]:
    """COCO results (integer ``image_id`` as in :func:`bhsearch.tasks.widerface.reader.image_ids`) of a mapping."""
    ids = image_ids(keys)
    out = []
    for key, rows in preds.items():
        for x, y, w, h, s in np.asarray(rows, np.float64).reshape(-1, 5):
            out.append(
                {
                    "image_id": ids[key],
                    "category_id": 1,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "score": float(s),
                }
            )
    return out


__all__ = [
    "IOU_THRESHOLD",
    "THRESH_NUM",
    "box_overlaps",
    "coco_to_predictions",
    "evaluate_widerface",
    "image_key",
    "image_outcomes",
    "load_predictions",
    "normalise_scores",
    "pr_counts",
    "predictions_to_coco",
    "read_prediction_file",
    "read_prediction_folder",
    "thresholds",
    "voc_ap",
    "write_prediction_folder",
]

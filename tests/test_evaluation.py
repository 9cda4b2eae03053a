"""TinyPerson evaluator: equality with pycocotools, hand-computed ignore/IoD/MR cases, CLI."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from bhsearch.errors import DataError, UsageError
from bhsearch.tasks.tinyperson.evaluate import FPPI_POINTS, IOU_THRESHOLDS, RANGE_NAMES, area_ranges, evaluate

# ----------------------------------------------------------------------------------------------- helpers


def random_set(seed: int, n_images: int = 12, quantize: bool = False, crowd: float = 0.0, flags: float = 0.0):
    """Small random COCO GT + results; quantized boxes/scores create IoU and score ties."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []

    def q(values):
        return [float(v) for v in (np.round(values) if quantize else values)]

    for i in range(n_images):
        img_id = int(rng.integers(1, 10**6)) if seed % 2 else i + 1
        images.append({"id": img_id, "file_name": f"{i}.jpg", "width": 300, "height": 300})
        for _ in range(int(rng.integers(0, 12))):
            s, ar = rng.uniform(1, 40), rng.uniform(0.5, 2)
            x, y, w, h = q([*rng.uniform(0, 250, 2), s * ar**0.5, s / ar**0.5])
            w, h = max(w, 1.0), max(h, 1.0)
            ann = {
                "id": len(anns) + 1,
                "image_id": img_id,
                "category_id": 1,
                "bbox": [x, y, w, h],
                "area": float(w * h * rng.uniform(0.8, 1.2)),
                "iscrowd": int(rng.random() < crowd),
            }
            if rng.random() < flags:
                ann["ignore" if rng.random() < 0.6 else "uncertain"] = True
                if rng.random() < 0.5:  # big ignore regions collect many detections
                    ann["bbox"] = [x, y, w * 3, h * 3]
            anns.append(ann)
            for _ in range(int(rng.integers(0, 5))):
                j = rng.normal(0, 0.2 * s, 4)
                b = q([x + j[0], y + j[1], max(w + j[2], 0.5), max(h + j[3], 0.5)])
                score = float(np.round(rng.random(), 1) if quantize else rng.random())
                dets.append({"image_id": img_id, "category_id": 1, "bbox": b, "score": score})
        for _ in range(int(rng.integers(0, 30))):
            s = rng.uniform(1, 40)
            b = q([*rng.uniform(0, 260, 2), s, s * rng.uniform(0.5, 2)])
            score = float(np.round(rng.random(), 1) if quantize else rng.random())
            dets.append({"image_id": img_id, "category_id": 1, "bbox": b, "score": score})
    dets = [dets[k] for k in rng.permutation(len(dets))]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}, dets


def pycocotools_ap(gt: dict, dets: list, max_dets: int, area_lower: float = 1) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ranges = area_ranges(area_lower)
        ev.params.iouThrs = np.array(IOU_THRESHOLDS)
        ev.params.areaRng = [list(ranges[n]) for n in RANGE_NAMES]
        ev.params.areaRngLbl = list(RANGE_NAMES)
        ev.params.maxDets = [max_dets]
        ev.evaluate()
        ev.accumulate()
    out = {}
    for t, iou in enumerate(IOU_THRESHOLDS):
        for a, name in enumerate(RANGE_NAMES):
            s = ev.eval["precision"][t, :, 0, a, 0]
            out[f"AP{round(iou * 100)}_{name}"] = 100 * float(np.mean(s[s > -1])) if (s > -1).any() else None
    return out


def reference_loops(gt: dict, dets: list, max_dets: int, iod_rule: str, protocol: str = "official") -> dict:
    """Plain per-image loops written from the protocol's rules (DESIGN §6, docs/evaluation.md).

    official: TinyBenchmark's COCOeval fork — after COCO's greedy IoU matching, an unmatched
    detection looks at every GT ignored in the range (flagged or out of range, matched or not) and
    takes the first one of largest IoD = v/(1+v)*(1+area/A_det), v the COCO IoU (crowd:
    intersection / detection area); accepted when IoD >= the threshold, and that GT is marked matched.
    coco: the same, but only flagged GT and the true IoU enter the IoD step.
    """
    ranges = area_ranges(1)
    images = sorted(img["id"] for img in gt["images"])
    per_img_gt = {i: [a for a in gt["annotations"] if a["image_id"] == i] for i in images}
    per_img_dt = {i: [d for d in dets if d["image_id"] == i] for i in images}

    def inter_iou(d, g):
        w = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
        h = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
        if w <= 0 or h <= 0:
            return 0.0, 0.0
        i = w * h
        return i, i / (d[2] * d[3] + g[2] * g[3] - i)

    out = {}
    for thr in IOU_THRESHOLDS:
        iod_thr = min(thr, 1 - 1e-10) if iod_rule == "iou" else 2 * thr / (1 + thr)
        for name, (lo, hi) in ranges.items():
            scores, tps, npig = [], [], 0
            for img in images:
                gts = per_img_gt[img]
                flagged = [bool(g.get("iscrowd") or g.get("ignore") or g.get("uncertain")) for g in gts]
                ig = [f or not (lo <= g["area"] <= hi) for g, f in zip(gts, flagged, strict=True)]
                npig += sum(not x for x in ig)
                gorder = sorted(range(len(gts)), key=lambda k: ig[k])  # stable: ignore last
                dts = sorted(per_img_dt[img], key=lambda d: -d["score"])[:max_dets]
                used = [False] * len(gts)
                for d in dts:
                    best, m = thr, -1
                    darea = d["bbox"][2] * d["bbox"][3]
                    for k in gorder:
                        crowd = bool(gts[k].get("iscrowd"))
                        if used[k] and not crowd:
                            continue
                        if m > -1 and not ig[m] and ig[k]:
                            break
                        inter, iou = inter_iou(d["bbox"], gts[k]["bbox"])
                        value = (inter / darea if darea > 0 else 0.0) if crowd else iou
                        if value < best:
                            continue
                        best, m = value, k
                    if m == -1 and iod_rule != "none" and darea > 0:
                        iods = []
                        for k in gorder:  # ignored GT keep their file order
                            g = gts[k]
                            if (ig if protocol == "official" else flagged)[k]:
                                inter, iou = inter_iou(d["bbox"], g["bbox"])
                                v = inter / darea if protocol == "official" and g.get("iscrowd") else iou
                                iods.append((v / (1 + v) * (1 + g["area"] / darea), k))
                        if iods:
                            value = max(v for v, _ in iods)
                            if value >= iod_thr:
                                m = next(k for v, k in iods if v == value)
                    if m > -1:
                        used[m] = True
                        if not ig[m]:
                            scores.append(d["score"])
                            tps.append(True)
                    elif lo <= darea <= hi:
                        scores.append(d["score"])
                        tps.append(False)
            # accumulate (COCO 101-point interpolation) in the global stable score order
            order = np.argsort(-np.array(scores), kind="mergesort")
            tp = np.cumsum(np.array(tps, bool)[order]) if scores else np.zeros(0)
            fp = np.cumsum(~np.array(tps, bool)[order]) if scores else np.zeros(0)
            q = []
            for r in np.linspace(0, 1, 101):
                precisions = [tp[i] / (tp[i] + fp[i]) for i in range(len(tp)) if npig and tp[i] / npig >= r]
                q.append(max(precisions) if precisions else 0.0)
            out[f"AP{round(thr * 100)}_{name}"] = 100 * float(np.mean(q)) if npig else None
    return out


def reference_official_mr(gt: dict, dets: list) -> dict:
    """Plain loops written from the official miss-rate rules (docstring of bhsearch.tasks.tinyperson.miss_rate)."""
    setups = {
        "tiny": (2, 20),
        "tiny1": (2, 8),
        "tiny2": (8, 12),
        "tiny3": (12, 20),
        "small": (20, 32),
        "all": (-1, 1e10),
    }
    fppi_points = np.exp(np.arange(np.log(0.01), np.log(1.0) + 1e-10, np.log(100) / 8))
    images = sorted(img["id"] for img in gt["images"])

    def overlap(d, g, ignored):
        w = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
        h = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
        if w <= 0 or h <= 0:
            return 0.0
        return w * h / (d[2] * d[3] if ignored else d[2] * d[3] + g[2] * g[3] - w * h)

    out = {}
    for name, (lo, hi) in setups.items():
        for thr in (0.25, 0.5, 0.75):
            rows, npig = [], 0
            for img in images:
                gts = [a for a in gt["annotations"] if a["image_id"] == img]
                ig = [bool(g.get("ignore") or g.get("uncertain")) or not lo <= g["area"] ** 0.5 <= hi for g in gts]
                npig += ig.count(False)
                order = sorted(range(len(gts)), key=lambda k: ig[k])
                dts = sorted((d for d in dets if d["image_id"] == img), key=lambda d: -d["score"])[:1000]
                dts = [d for d in dts if lo / 1.25 <= (d["bbox"][2] * d["bbox"][3]) ** 0.5 < hi * 1.25]
                used = set()
                for d in dts:
                    best, m = thr, None
                    for k in order:
                        if k in used:
                            continue
                        if m is not None and ig[k]:
                            break
                        v = overlap(d["bbox"], gts[k]["bbox"], ig[k])
                        if v >= best:
                            best, m = v, k
                    if m is None:
                        darea = d["bbox"][2] * d["bbox"][3]
                        iods = [
                            overlap(d["bbox"], gts[k]["bbox"], True)
                            / (1 + overlap(d["bbox"], gts[k]["bbox"], True))
                            * (1 + gts[k]["area"] / darea)
                            for k in order
                            if ig[k] and darea > 0
                        ]
                        rows.append((d["score"], 0 if iods and max(iods) > 0.5 else -1))
                    elif ig[m]:
                        rows.append((d["score"], 0))
                    else:
                        used.add(m)
                        rows.append((d["score"], 1))
            key = f"MR{round(thr * 100)}_{name}"
            if npig == 0:
                out[key] = None
                continue
            rank = np.argsort([-r[0] for r in rows], kind="mergesort")
            tp = fp = 0
            curve = []
            for r in rank:
                tp += rows[r][1] == 1
                fp += rows[r][1] == -1
                curve.append((fp / len(images), tp / npig))
            if not curve:
                out[key] = 100.0
                continue
            recalls = []
            for f in fppi_points:
                below = [rc for fp_i, rc in curve if fp_i <= f]
                recalls.append(below[-1] if below else curve[-1][1])  # upstream's index -1
            miss = [1 - r for r in recalls]
            out[key] = 0.0 if min(miss) <= 0 else 100 * math.exp(sum(math.log(m) for m in miss) / len(miss))
    return out


def assert_close(ours: dict, ref: dict, tol: float) -> None:
    for key, value in ref.items():
        if value is None or ours[key] is None:
            assert value is None and ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(value, abs=tol), key


def tiny_gt(annotations, n_images=1):
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 640, "height": 512} for i in range(n_images)]
    anns = []
    for k, ann in enumerate(annotations):
        ann = {"image_id": 1, "category_id": 1, "iscrowd": 0, **ann, "id": k + 1}
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        anns.append(ann)
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def det(bbox, score, image_id=1):
    return {"image_id": image_id, "category_id": 1, "bbox": [float(v) for v in bbox], "score": score}


PERSON = {"bbox": [10, 10, 10, 10]}  # size 10: tiny, tiny2, all
IGNORE = {"bbox": [100, 100, 50, 50], "ignore": True}

# ------------------------------------------------------------------------------------ pycocotools equality


@pytest.mark.parametrize("seed", range(8))
def test_equals_pycocotools_without_ignore_flags(seed):
    quantize = seed % 2 == 1
    gt, dets = random_set(seed, quantize=quantize)
    max_dets = [200, 7, 15, 1000][seed % 4]
    ours = evaluate(gt, dets, max_dets=max_dets, protocol="coco")
    ref = pycocotools_ap(gt, dets, max_dets)
    assert_close(ours, ref, 1e-7)  # percent, i.e. 1e-9 in AP
    assert any(v for k, v in ref.items() if v)  # the data set is not degenerate


@pytest.mark.parametrize("seed", range(3))
def test_crowd_without_iod_rule_equals_pycocotools(seed):
    gt, dets = random_set(100 + seed, crowd=0.15, quantize=bool(seed % 2))
    assert any(a["iscrowd"] for a in gt["annotations"])
    ref = pycocotools_ap(gt, dets, 200)
    for protocol in ("coco", "official"):  # without the IoD step both protocols are stock COCOeval
        assert_close(evaluate(gt, dets, iod_threshold="none", protocol=protocol), ref, 1e-7)


def test_area_lower_two_equals_pycocotools():
    gt, dets = random_set(7)
    ours = evaluate(gt, dets, area_lower=2, protocol="coco")
    assert_close(ours, pycocotools_ap(gt, dets, 200, area_lower=2), 1e-7)


@pytest.mark.parametrize(("seed", "rule"), [(0, "iou"), (1, "2iou/(1+iou)"), (2, "iou"), (3, "2iou/(1+iou)")])
def test_coco_protocol_ignore_rules_equal_reference_loops(seed, rule):
    gt, dets = random_set(200 + seed, n_images=8, flags=0.3, quantize=bool(seed % 2))
    assert any(a.get("ignore") for a in gt["annotations"])
    max_dets = 12 if seed == 2 else 200
    assert_close(
        evaluate(gt, dets, max_dets=max_dets, iod_threshold=rule, protocol="coco"),
        reference_loops(gt, dets, max_dets, rule, protocol="coco"),
        1e-9,
    )


@pytest.mark.parametrize("seed", range(10))
def test_official_protocol_equals_reference_loops(seed):
    """Random sets with ignore / uncertain / crowd flags, ties, and several max_dets."""
    flags, crowd = (0.0, 0.0) if seed == 0 else (0.3, 0.15 * (seed % 3 == 1))
    gt, dets = random_set(300 + seed, n_images=8, flags=flags, crowd=crowd, quantize=bool(seed % 2))
    max_dets = [200, 12, 1000, 5][seed % 4]
    ours = evaluate(gt, dets, max_dets=max_dets)
    assert ours["settings"]["protocol"] == "official"
    assert_close(ours, reference_loops(gt, dets, max_dets, "iou"), 1e-9)
    assert_close(ours, reference_official_mr(gt, dets), 1e-9)
    assert any(v not in (None, 0.0, 100.0) for k, v in ours.items() if k.startswith("MR"))


def test_official_protocol_differs_from_coco_without_flags():
    """Out-of-range GT feed the IoD step in the official code, so even unflagged sets differ."""
    gt, dets = random_set(0)
    official, coco = evaluate(gt, dets), evaluate(gt, dets, protocol="coco")
    assert_close(coco, pycocotools_ap(gt, dets, 200), 1e-7)
    assert any(abs(official[k] - coco[k]) > 0.1 for k in coco if k.startswith("AP") and coco[k] is not None)


# ------------------------------------------------------------------------------------ hand-computed cases


def test_detection_inside_ignore_region_is_neither_tp_nor_fp():
    gt = tiny_gt([PERSON, IGNORE])
    dets = [det([110, 110, 10, 10], 0.95), det([10, 10, 10, 10], 0.9), det([300, 300, 10, 10], 0.5)]
    res = evaluate(gt, dets)
    # ignored, TP, FP -> precision 1 at full recall
    assert res["AP50_tiny"] == pytest.approx(100.0)
    assert res["settings"]["gt_ignore_regions"] == 1
    # without the IoD rule the ignored detection is a leading FP: precision 1/2 everywhere
    assert evaluate(gt, dets, iod_threshold="none")["AP50_tiny"] == pytest.approx(50.0)


def test_many_detections_fall_in_one_ignore_region():
    gt = tiny_gt([PERSON, IGNORE])
    dets = [det([100 + 8 * k, 105 + 5 * k, 10, 10], 0.99 - 0.01 * k) for k in range(5)]
    dets.append(det([10, 10, 10, 10], 0.5))
    assert evaluate(gt, dets)["AP50_tiny"] == pytest.approx(100.0)
    assert evaluate(gt, dets, iod_threshold="none")["AP50_tiny"] == pytest.approx(100.0 / 6)


def test_iod_threshold_variants():
    # det overlaps the ignore box by 15x10 of its 25x10: IoD = 0.6
    gt = tiny_gt([PERSON, IGNORE])
    dets = [det([135, 100, 25, 10], 0.9), det([10, 10, 10, 10], 0.8)]
    iou_rule = evaluate(gt, dets, iod_threshold="iou")
    assert (iou_rule["AP25_tiny"], iou_rule["AP50_tiny"], iou_rule["AP75_tiny"]) == pytest.approx((100, 100, 50))
    # 2iou/(1+iou): thresholds 0.4, 0.667, 0.857
    fork = evaluate(gt, dets, iod_threshold="2iou/(1+iou)")
    assert (fork["AP25_tiny"], fork["AP50_tiny"], fork["AP75_tiny"]) == pytest.approx((100, 50, 50))
    assert fork["settings"]["iod_threshold"] == "2iou/(1+iou)"


def test_uncertain_is_folded_into_ignore():
    gt = tiny_gt([PERSON, {"bbox": [50, 50, 10, 10], "uncertain": True}])
    dets = [det([50, 50, 10, 10], 0.9), det([300, 300, 10, 10], 0.85), det([10, 10, 10, 10], 0.8)]
    # uncertain det ignored; FP then TP against one counted GT -> precision 1/2
    assert evaluate(gt, dets)["AP50_tiny"] == pytest.approx(50.0)
    plain = copy.deepcopy(gt)
    del plain["annotations"][1]["uncertain"]
    assert evaluate(plain, dets)["AP50_tiny"] == pytest.approx(100 * (51 + 50 * 2 / 3) / 101)


@pytest.mark.parametrize("flag", ["image", "annotation"])
def test_dense_images_are_evaluated_unless_skipped(flag):
    gt = tiny_gt([PERSON, {"bbox": [10, 10, 10, 10], "image_id": 2}], n_images=2)
    if flag == "image":
        gt["images"][1]["in_dense_image"] = True
    else:
        gt["annotations"][1]["in_dense_image"] = True
    dets = [det([10, 10, 10, 10], 0.7), det([300, 300, 10, 10], 0.99, image_id=2)]
    res = evaluate(gt, dets)  # like the official code: every image of the file
    # FP (0.99), TP (0.7); the second GT is missed: precision 1/2 up to recall 1/2
    assert res["AP50_tiny"] == pytest.approx(100 * 0.5 * 51 / 101)
    assert res["settings"]["images_evaluated"] == 2 and res["settings"]["dense_images"] == 1
    assert any("flagged dense" in w for w in res["warnings"])
    skipped = evaluate(gt, dets, skip_dense=True)
    assert skipped["AP50_tiny"] == pytest.approx(100.0)
    assert skipped["settings"]["images_evaluated"] == 1
    assert skipped["settings"]["dense_images_skipped"] == 1
    assert any("dense images were not evaluated" in w for w in skipped["warnings"])


# ------------------------------------------------------------------ official protocol, hand-computed cases


def test_detection_inside_a_larger_person_is_not_a_false_positive_of_the_tiny_range():
    """A 12x12 detection inside a 30x30 person: IoU 0.16 matches nothing, but the person is outside
    tiny (area 900 > 400), so it is an ignored GT of that range, and IoD = 144/144 = 1 >= t."""
    gt = tiny_gt([PERSON, {"bbox": [200, 200, 30, 30]}])
    dets = [det([209, 209, 12, 12], 0.9), det([10, 10, 10, 10], 0.8)]
    official = evaluate(gt, dets)
    assert official["AP50_tiny"] == pytest.approx(100.0)
    assert official["AP75_tiny"] == pytest.approx(100.0)
    coco = evaluate(gt, dets, protocol="coco")  # stock COCOeval: an FP ahead of the TP
    assert coco["AP50_tiny"] == pytest.approx(50.0)
    assert official["settings"]["protocol"] == "official" and coco["settings"]["protocol"] == "coco"
    # in 'all' both GT count: the 12x12 detection is an FP under either protocol
    assert official["AP50_all"] == pytest.approx(coco["AP50_all"]) == pytest.approx(100 * 0.5 * 51 / 101)


def test_official_iod_uses_the_area_field_and_crowd_iou():
    # crowd GT 40x40 with area field 100: COCO's crowd IoU of a 10x10 detection inside is 1, so
    # IoD = 1/2 * (1 + 100/100) = 1; with the true IoU (0.0625) it would be 0.0588*2 = 0.118
    gt = tiny_gt([PERSON, {"bbox": [100, 100, 40, 40], "area": 100.0, "iscrowd": 1}])
    # the crowd GT matches the detection by COCO IoU already (crowd IoU 1 >= t): ignored in both
    dets = [det([110, 110, 10, 10], 0.9), det([10, 10, 10, 10], 0.8)]
    assert evaluate(gt, dets)["AP50_tiny"] == pytest.approx(100.0)
    assert evaluate(gt, dets, protocol="coco")["AP50_tiny"] == pytest.approx(100.0)
    # a non-crowd ignore GT, area field 4x the box: IoD = IoU/(1+IoU) * (1 + 4 A_box / A_det)
    gt = tiny_gt([PERSON, {"bbox": [100, 100, 20, 20], "area": 1600.0, "ignore": True}])
    dets = [det([115, 100, 10, 10], 0.9), det([10, 10, 10, 10], 0.8)]  # inter 50, IoU 50/450
    iou = 50 / 450
    iod = iou / (1 + iou) * (1 + 1600 / 100)
    assert iod == pytest.approx(1.7)  # >= every threshold: ignored
    assert evaluate(gt, dets)["AP75_tiny"] == pytest.approx(100.0)


def test_official_iod_looks_at_already_matched_ignored_gt():
    """Two identical 30x30 persons, outside tiny. At IoU 0.25, 18x18 detections A and B (IoU 0.36)
    take them by IoU (both ignored); C finds both taken and is ignored by IoD = 1 because the IoD
    step also looks at matched GT. COCO: C is a false positive ahead of the TP."""
    big = {"bbox": [200, 200, 30, 30]}
    gt = tiny_gt([PERSON, big, dict(big)])
    dets = [det([200 + 6 * k, 200 + 6 * k, 18, 18], 0.9 - 0.05 * k) for k in range(3)]
    dets.append(det([10, 10, 10, 10], 0.7))
    assert evaluate(gt, dets)["AP25_tiny"] == pytest.approx(100.0)
    assert evaluate(gt, dets, protocol="coco")["AP25_tiny"] == pytest.approx(50.0)
    # in 'all' the persons count: TP, TP, FP, TP over 3 GT -> precision 1 to recall 2/3, then 3/4
    all_range = evaluate(gt, dets)["AP25_all"]
    assert all_range == pytest.approx(100 * (67 + 34 * 0.75) / 101)


def test_gt_id_zero_counts_as_matched():
    """Upstream stores matches as GT ids, so a match to GT id 0 reads as unmatched there. Not here."""
    gt = tiny_gt([PERSON])
    gt["annotations"][0]["id"] = 0
    assert evaluate(gt, [det([10, 10, 10, 10], 0.9)])["AP50_tiny"] == pytest.approx(100.0)


def test_max_dets_cut_per_image():
    gt = tiny_gt([PERSON])
    dets = [det([300, 300, 10, 10], 0.9), det([200, 200, 10, 10], 0.8), det([10, 10, 10, 10], 0.7)]
    cut = evaluate(gt, dets, max_dets=2)
    assert cut["AP50_tiny"] == 0.0
    assert cut["settings"]["max_dets"] == 2
    assert any("max_dets=2" in w for w in cut["warnings"])
    assert evaluate(gt, dets, max_dets=3)["AP50_tiny"] == pytest.approx(100 / 3)


def test_ranges_and_undefined_ap():
    res = evaluate(tiny_gt([PERSON]), [det([10, 10, 10, 10], 0.9)])
    assert res["AP50_tiny2"] == pytest.approx(100.0)
    assert res["AP50_tiny1"] is None and res["AP50_small"] is None  # no GT there
    assert res["settings"]["area_ranges"]["tiny"] == [1.0, 400.0]
    assert evaluate(tiny_gt([PERSON]), [], area_lower=2)["settings"]["area_ranges"]["tiny"] == [4.0, 400.0]


@pytest.mark.parametrize("protocol", ["official", "coco"])
def test_log_average_miss_rate_hand_case(protocol):
    gt = tiny_gt([{**PERSON, "image_id": i} for i in (1, 2, 3, 4)], n_images=4)
    dets = [
        det([10, 10, 10, 10], 0.9, 1),  # TP  fppi 0    recall .25
        det([300, 300, 10, 10], 0.8, 2),  # FP  fppi .25
        det([10, 10, 10, 10], 0.7, 3),  # TP  fppi .25  recall .5
        det([300, 300, 10, 10], 0.6, 1),  # FP  fppi .5
        det([300, 300, 10, 10], 0.5, 3),  # FP  fppi .75
        det([10, 10, 10, 10], 0.4, 4),  # TP  fppi .75  recall .75
    ]
    miss = [0.75 if f < 0.25 else 0.5 if f < 0.75 else 0.25 for f in FPPI_POINTS]
    assert [m for m in miss] == [0.75] * 6 + [0.5, 0.5, 0.25]
    expected = 100 * math.exp(sum(math.log(m) for m in miss) / 9)
    res = evaluate(gt, dets, protocol=protocol)
    assert res["MR50_tiny"] == pytest.approx(expected, abs=1e-9)
    assert res["MR50_tiny"] == pytest.approx(60.66, abs=0.01)


def test_official_miss_rate_hand_cases():
    gt = tiny_gt([PERSON])
    dets = [det([300, 300, 10, 10], 0.9), det([10, 10, 10, 10], 0.8)]  # FP then TP: fppi 1 from the start
    # official: no detection has fppi <= 0.01 ... 0.56, and upstream's index -1 then reads the final
    # recall (1): every miss rate is 0, so MR = 0
    assert evaluate(gt, dets)["MR50_tiny"] == 0.0
    # coco protocol: recall 0 at the first 8 points, 1 at fppi 1, miss rates floored at 1e-10
    assert evaluate(gt, dets, protocol="coco")["MR50_tiny"] == pytest.approx(100 * 1e-10 ** (1 / 9))
    # a 40 px detection is outside tiny's [2/1.25, 20*1.25) and dropped: not a false positive there
    dets = [det([100, 100, 40, 40], 0.95), det([10, 10, 10, 10], 0.8)]
    res = evaluate(gt, dets)
    assert res["MR50_tiny"] == 0.0 and res["MR25_tiny"] == 0.0
    assert res["settings"]["miss_rate"]["max_dets"] == 1000


def test_empty_detections_give_zero_with_warning():
    res = evaluate(tiny_gt([PERSON]), [])
    assert res["AP50_tiny"] == 0.0 and res["AP25_all"] == 0.0
    assert res["MR50_tiny"] == 100.0
    assert any("no detections" in w for w in res["warnings"])


def test_inputs_are_not_modified():
    gt, dets = random_set(3, n_images=3, flags=0.3)
    gt0, dets0 = copy.deepcopy(gt), copy.deepcopy(dets)
    evaluate(gt, dets)
    assert gt == gt0 and dets == dets0


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"image_id": 99, "bbox": [1, 1, 5, 5], "score": 0.5}, "detection 1: image_id 99 is not an image"),
        ({"image_id": 1, "bbox": [1, 1, -5, 5], "score": 0.5}, "detection 1: negative width -5"),
        ({"image_id": 1, "bbox": [1, 1, 5, 5], "score": float("nan")}, "detection 1: score is NaN"),
        ({"image_id": 1, "bbox": [1, 1, 5], "score": 0.5}, "detection 1: 'bbox' must be [x, y, w, h]"),
        ({"image_id": 1, "bbox": [1, 1, 5, 5]}, "detection 1 has no 'score'"),
    ],
)
def test_bad_detections_name_the_entry(bad, message):
    dets = [det([10, 10, 10, 10], 0.9), bad]
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        evaluate(tiny_gt([PERSON]), dets)


def test_bad_ground_truth_and_options(tmp_path):
    with pytest.raises(DataError, match="no 'annotations'"):
        evaluate({"images": []}, [])
    bad = tmp_path / "gt.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        evaluate(bad, [])
    with pytest.raises(DataError, match="does not exist"):
        evaluate(tmp_path / "missing.json", [])
    with pytest.raises(UsageError, match="IoD threshold"):
        evaluate(tiny_gt([PERSON]), [], iod_threshold="iod")
    with pytest.raises(UsageError, match="max_dets"):
        evaluate(tiny_gt([PERSON]), [], max_dets=0)


# ------------------------------------------------------------------------------------------------- CLI


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bhsearch", "evaluate", *args], capture_output=True, text=True)


def test_cli_table_and_json(tmp_path):
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(tiny_gt([PERSON, IGNORE])))
    dets_path.write_text(json.dumps([det([110, 110, 10, 10], 0.95), det([10, 10, 10, 10], 0.9)]))
    table = _cli("--gt", str(gt_path), "--dets", str(dets_path), "--max-dets", "1000", "--area-lower", "2")
    assert table.returncode == 0, table.stderr
    assert "AP50" in table.stdout and "tiny3" in table.stdout
    assert "maxDets 1000" in table.stdout and "area_lower 2" in table.stdout
    out = _cli("--gt", str(gt_path), "--dets", str(dets_path), "--json", "--iod-threshold", "2iou/(1+iou)")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["AP50_tiny"] == pytest.approx(100.0)
    assert res["settings"]["iod_threshold"] == "2iou/(1+iou)" and res["settings"]["max_dets"] == 200


@pytest.mark.parametrize(
    ("dets", "message"),
    [
        ([{"image_id": 7, "bbox": [1, 1, 5, 5], "score": 0.5}], "image_id 7 is not an image"),
        ([{"image_id": 1, "bbox": [1, 1, 5, -1], "score": 0.5}], "negative height"),
        ("[{not json", "not valid JSON"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, dets, message):
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(tiny_gt([PERSON])))
    dets_path.write_text(dets if isinstance(dets, str) else json.dumps(dets))
    proc = _cli("--gt", str(gt_path), "--dets", str(dets_path))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_gt_without_annotations(tmp_path):
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps({"images": [{"id": 1}]}))
    dets_path.write_text("[]")
    proc = _cli("--gt", str(gt_path), "--dets", str(dets_path))
    assert proc.returncode == 2 and "no 'annotations'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_chunked_lockstep_matching_gives_the_same_result(monkeypatch):
    import bhsearch.tasks.tinyperson.evaluate as tinyperson

    gt, dets = random_set(11, n_images=10, flags=0.3, quantize=True)
    whole = evaluate(gt, dets)
    monkeypatch.setattr(tinyperson, "_CHUNK_ELEMENTS", 40)  # one or two images per chunk
    assert evaluate(gt, dets) == whole

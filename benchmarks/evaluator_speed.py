"""Speed of the TinyPerson evaluator vs pycocotools and faster-coco-eval on identical data.

A seeded, TinyPerson-sized synthetic set is generated in memory (default 816 images, ~17 GT and
1000 detections per image, no ignore flags so all three evaluators must agree), then each
evaluator runs with the same IoU thresholds (0.25/0.5/0.75), size ranges and maxDets. Prints
load+evaluate times, ratios against ours, and the max |difference| in AP (percent points).

    python benchmarks/evaluator_speed.py                 # full size (pycocotools takes minutes)
    python benchmarks/evaluator_speed.py --images 100    # quick
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import numpy as np

from bhsearch.tasks.tinyperson.evaluate import IOU_THRESHOLDS, RANGE_NAMES, area_ranges, evaluate


def synthetic_set(n_images: int = 816, gt_per_image: float = 17.0, dets_per_image: int = 1000, seed: int = 0):
    """COCO GT dict and COCO results list shaped like TinyPerson test + a detector's output."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for img_id in range(1, n_images + 1):
        width, height = int(rng.integers(1000, 2500)), int(rng.integers(700, 1900))
        images.append({"id": img_id, "file_name": f"{img_id}.jpg", "width": width, "height": height})
        n_gt = int(rng.poisson(gt_per_image))
        size = np.clip(rng.lognormal(np.log(16), 0.5, n_gt), 2, 80)
        aspect = rng.uniform(0.4, 1.0, n_gt)  # persons are taller than wide
        w, h = size * np.sqrt(aspect), size / np.sqrt(aspect)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        for k in range(n_gt):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": 1,
                    "bbox": [float(x[k]), float(y[k]), float(w[k]), float(h[k])],
                    "area": float(w[k] * h[k]),
                    "iscrowd": 0,
                }
            )
        # detections near GT (several per object, jittered), the rest background boxes
        n_near = min(dets_per_image, int(rng.integers(1, 4, n_gt).sum()) if n_gt else 0)
        src = rng.integers(0, n_gt, n_near) if n_gt else np.zeros(0, int)
        jitter = rng.normal(0, 0.15, (n_near, 4)) * size[src, None] if n_gt else np.zeros((0, 4))
        near = np.stack([x[src], y[src], w[src], h[src]], 1) + jitter if n_gt else np.zeros((0, 4))
        near[:, 2:] = np.maximum(near[:, 2:], 1.0)
        n_bg = dets_per_image - n_near
        bs = np.clip(rng.lognormal(np.log(16), 0.6, n_bg), 2, 100)
        bg = np.stack([rng.uniform(0, width, n_bg), rng.uniform(0, height, n_bg), bs * 0.7, bs], 1)
        boxes = np.concatenate([near, bg])
        scores = np.concatenate([rng.beta(5, 2, n_near), rng.beta(1, 6, n_bg)])
        for b, s in zip(np.round(boxes, 2).tolist(), np.round(scores, 4).tolist(), strict=True):
            dets.append({"image_id": img_id, "category_id": 1, "bbox": b, "score": s})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    return gt, dets


def _coco_style(module_coco, module_eval, gt, dets, max_dets):
    """Run a pycocotools-compatible implementation; returns AP dict (percent), total and evaluate-only seconds."""
    gt, dets = copy.deepcopy(gt), copy.deepcopy(dets)
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = module_coco()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = module_eval(coco_gt, coco_dt, "bbox")
        ranges = area_ranges(1)
        ev.params.iouThrs = np.array(IOU_THRESHOLDS)
        ev.params.areaRng = [list(ranges[n]) for n in RANGE_NAMES]
        ev.params.areaRngLbl = list(RANGE_NAMES)
        ev.params.maxDets = [max_dets]
        t1, c1 = time.perf_counter(), time.process_time()
        ev.evaluate()
        ev.accumulate()
    t_end, c_end = time.perf_counter(), time.process_time()
    precision = ev.eval["precision"]
    out = {}
    for t, iou in enumerate(IOU_THRESHOLDS):
        for a, name in enumerate(RANGE_NAMES):
            s = precision[t, :, 0, a, 0]
            out[f"AP{round(iou * 100)}_{name}"] = 100 * float(np.mean(s[s > -1])) if (s > -1).any() else None
    return out, (t_end - t0, c_end - c0), (t_end - t1, c_end - c1)


def _max_diff(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) for k in a if a[k] is not None and b.get(k) is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=816)
    parser.add_argument("--dets", type=int, default=1000, help="detections per image")
    parser.add_argument("--max-dets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of our evaluator (best is reported)")
    parser.add_argument("--skip-pycocotools", action="store_true")
    args = parser.parse_args()

    gt, dets = synthetic_set(args.images, dets_per_image=args.dets)
    print(f"synthetic set: {len(gt['images'])} images, {len(gt['annotations'])} GT, {len(dets)} detections")
    print(f"settings: IoU {IOU_THRESHOLDS}, {len(RANGE_NAMES)} size ranges, maxDets {args.max_dets}")

    runs = []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        ours = evaluate(gt, dets, max_dets=args.max_dets, iod_threshold="none")
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    ours_ap = {k: v for k, v in ours.items() if k.startswith("AP")}
    wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    print("times in seconds, wall (CPU); ratios = their time / ours (CPU time, robust to a busy machine)")
    print(f"bhsearch (numpy)   load+evaluate {wall:7.2f} ({cpu:7.2f})   best of {args.repeat}")

    def report(name, result):
        ap, (t_wall, t_cpu), (e_wall, e_cpu) = result
        print(
            f"{name:<18} load+evaluate {t_wall:7.2f} ({t_cpu:7.2f})  ratio {t_cpu / cpu:6.2f}x | "
            f"evaluate+accumulate alone {e_wall:7.2f} ({e_cpu:7.2f})  ratio {e_cpu / cpu:6.2f}x | "
            f"max |dAP| {_max_diff(ours_ap, ap):.1e} pp"
        )

    try:
        from faster_coco_eval import COCO as FCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        print("faster-coco-eval not installed")
    else:
        report("faster-coco-eval", _coco_style(FCOCO, COCOeval_faster, gt, dets, args.max_dets))
    if not args.skip_pycocotools:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        report("pycocotools", _coco_style(COCO, COCOeval, gt, dets, args.max_dets))
    print("AP50 tiny/tiny1/tiny2/tiny3/small/all:", " ".join(f"{ours[f'AP50_{n}']:.2f}" for n in RANGE_NAMES))


if __name__ == "__main__":
    main()

"""How far the official TinyPerson protocol moves AP / MR from the COCO one, on the same files.

    python benchmarks/protocol_difference.py [--seeds 5] [--images 40]

Seeded random GT (sizes 1–40 px; 30 % of the boxes flagged ignore/uncertain, some crowd; ignore
boxes often enlarged) with jittered and random detections. Prints one row per seed and metric: the
value under ``--protocol coco`` (stock pycocotools + IoD on flagged GT: bhsearch 0.1's evaluator),
under the official protocol (the default), and the difference.
"""

from __future__ import annotations

import argparse

import numpy as np

from bhsearch.tasks.tinyperson.evaluate import evaluate

KEYS = ("AP50_tiny", "AP50_tiny1", "AP50_tiny2", "AP50_tiny3", "AP50_small", "AP25_tiny", "AP75_tiny", "MR50_tiny")


def random_set(seed: int, n_images: int):
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 640, "height": 512})
        for _ in range(int(rng.integers(0, 25))):
            s, ar = rng.uniform(1, 40), rng.uniform(0.5, 2)
            x, y = rng.uniform(0, 600, 2)
            w, h = max(s * ar**0.5, 1.0), max(s / ar**0.5, 1.0)
            ann = {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, w, h],
                   "area": w * h, "iscrowd": int(rng.random() < 0.03)}
            if rng.random() < 0.3:
                ann["ignore" if rng.random() < 0.6 else "uncertain"] = True
                if rng.random() < 0.5:
                    ann["bbox"] = [x, y, w * 3, h * 3]
            anns.append(ann)
            for _ in range(int(rng.integers(0, 4))):
                j = rng.normal(0, 0.2 * s, 4)
                box = [x + j[0], y + j[1], max(w + j[2], 0.5), max(h + j[3], 0.5)]
                dets.append({"image_id": i + 1, "category_id": 1, "bbox": box, "score": float(rng.random())})
        for _ in range(int(rng.integers(0, 40))):
            s = rng.uniform(1, 40)
            box = [*rng.uniform(0, 600, 2), s, s * rng.uniform(0.5, 2)]
            dets.append({"image_id": i + 1, "category_id": 1, "bbox": box, "score": float(rng.random())})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}, dets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--images", type=int, default=40)
    args = ap.parse_args()
    print("| seed | metric | coco | official | official − coco |")
    print("|---|---|---|---|---|")
    diffs: dict[str, list[float]] = {k: [] for k in KEYS}
    for seed in range(args.seeds):
        gt, dets = random_set(seed, args.images)
        coco, official = evaluate(gt, dets, protocol="coco"), evaluate(gt, dets)
        for key in KEYS:
            d = official[key] - coco[key]
            diffs[key].append(d)
            print(f"| {seed} | {key} | {coco[key]:.2f} | {official[key]:.2f} | {d:+.2f} |")
    print()
    print("| metric | mean difference | min | max |")
    print("|---|---|---|---|")
    for key, d in diffs.items():
        print(f"| {key} | {np.mean(d):+.2f} | {min(d):+.2f} | {max(d):+.2f} |")


if __name__ == "__main__":
    main()

"""AI-TOD: evaluator equal to faster-coco-eval-aitod (the AI-TOD toolkit), reader and generator, CLI."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from bhsearch.errors import DataError
from bhsearch.tasks.aitod.evaluate import AITOD_CLASSES, evaluate_aitod
from bhsearch.tasks.aitod.reader import read_aitod, resolve_aitod
from bhsearch.tasks.aitod.synthetic import write_aitod

KEYS = ("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m")


def random_set(seed: int, n_images: int = 10):
    """8-class AI-TOD-like GT (2–45 px, a few crowd boxes) and noisy, partly mislabelled detections."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 800, "height": 800})
        for _ in range(int(rng.integers(0, 15))):
            s, (x, y) = rng.uniform(2, 45), rng.uniform(0, 700, 2)
            c = int(rng.integers(1, 9))
            w, h = s * rng.uniform(0.7, 1.3), s * rng.uniform(0.7, 1.3)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.05),
                }
            )
            for _ in range(int(rng.integers(0, 4))):
                j = rng.normal(0, 0.15 * s, 4)
                box = [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)]
                cat = c if rng.random() < 0.8 else int(rng.integers(1, 9))
                dets.append({"image_id": i + 1, "category_id": cat, "bbox": box, "score": float(rng.random())})
        for _ in range(int(rng.integers(0, 20))):
            s = rng.uniform(2, 45)
            box = [*rng.uniform(0, 700, 2), s, s]
            dets.append(
                {"image_id": i + 1, "category_id": int(rng.integers(1, 9)), "bbox": box, "score": float(rng.random())}
            )
    cats = [{"id": k, "name": n} for k, n in enumerate(AITOD_CLASSES, 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def toolkit(gt: dict, dets: list) -> dict:
    """The AI-TOD toolkit's numbers (faster-coco-eval-aitod, stats 0 and 2–7), in percent."""
    from faster_coco_eval_aitod import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(copy.deepcopy(gt))
        ev = COCOeval_faster(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(KEYS, (100 * ev.stats[k] for k in (0, 2, 3, 4, 5, 6, 7)), strict=True))


@pytest.mark.parametrize("seed", range(4))
def test_equals_the_aitod_toolkit(seed):
    gt, dets = random_set(seed)
    ours, ref = evaluate_aitod(gt, dets), toolkit(gt, dets)
    for key in KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-7), key
    assert ours["AP50"] > 5 and ours["settings"]["max_dets"] == 1500


def test_max_dets_cut_equals_the_toolkit():
    gt, dets = random_set(9)
    from faster_coco_eval_aitod import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(copy.deepcopy(gt))
        ev = COCOeval_faster(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.params.maxDets = [1, 3, 3]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert evaluate_aitod(gt, dets, max_dets=3)["AP"] == pytest.approx(100 * ev.stats[0], abs=1e-7)


def test_hand_case_per_class_mean():
    """Class 1: one perfect detection (AP 1); class 2: its only GT missed, an FP (AP 0) -> AP 50."""
    gt = {
        "images": [{"id": 1, "width": 800, "height": 800}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 6, 6], "area": 36, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 100, 12, 12], "area": 144, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "airplane"}, {"id": 2, "name": "bridge"}],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 6, 6], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [300, 300, 12, 12], "score": 0.8},
    ]
    res = evaluate_aitod(gt, dets)
    assert res["AP"] == pytest.approx(50.0) and res["AP50"] == pytest.approx(50.0)
    assert res["AP_vt"] == pytest.approx(100.0)  # only class 1 has a very tiny (<= 8 px) GT
    assert res["AP_t"] == pytest.approx(0.0)
    assert res["AP_s"] is None and res["AP_m"] is None


def test_synthetic_set_is_in_the_release_layout_and_evaluates(tmp_path):
    info = write_aitod(tmp_path, n_trainval=2, n_test=1, seed=3, image_size=256, objects=(30, 40))
    assert 9 < info["size_mean"] < 16 and info["frac_lt_16"] > 0.6  # AI-TOD: mean 12.8 px
    ann, images = resolve_aitod(tmp_path, "test")
    assert ann.name == "aitod_test_v1.json" and images == tmp_path / "AI-TOD" / "test" / "images"
    split = read_aitod(tmp_path / "AI-TOD", "trainval")
    assert split.summary()["images"] == 2 and sum(split.summary()["per_class"].values()) == len(
        split.data["annotations"]
    )
    assert all(
        (images.parent.parent / "trainval" / "images" / im["file_name"]).is_file() for im in split.data["images"]
    )
    gt = json.loads(ann.read_text())
    dets = [
        dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=1.0) for a in gt["annotations"]
    ]
    assert evaluate_aitod(ann, dets)["AP"] == pytest.approx(toolkit(gt, dets)["AP"], abs=1e-7)


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="AI-TOD/annotations"):
        resolve_aitod(tmp_path, "trainval")
    write_aitod(tmp_path, n_trainval=1, n_test=1, image_size=128, objects=(2, 3))
    path = tmp_path / "AI-TOD" / "annotations" / "aitod_test_v1.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 42
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="category_id 42"):
        read_aitod(tmp_path, "test")


def test_cli_aitod(tmp_path):
    gt, dets = random_set(5, n_images=4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    run = [sys.executable, "-m", "bhsearch", "evaluate", "--benchmark", "aitod"]
    proc = subprocess.run(
        [*run, "--gt", str(tmp_path / "gt.json"), "--dets", str(tmp_path / "dets.json"), "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["AP"] == pytest.approx(toolkit(gt, dets)["AP"], abs=1e-7)
    assert res["settings"]["benchmark"] == "aitod"
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 99, "bbox": [1, 1, 2, 2], "score": 1}]))
    proc = subprocess.run(
        [*run, "--gt", str(tmp_path / "gt.json"), "--dets", str(tmp_path / "bad.json")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "image_id 99" in proc.stderr and "Traceback" not in proc.stderr


def test_tiles_carry_the_category_labels(tmp_path):
    from bhsearch.data.registry import open_detection

    write_aitod(tmp_path, n_trainval=1, n_test=1, seed=1, image_size=256, objects=(20, 30))
    ds = open_detection(f"aitod:{tmp_path}", "train")
    assert ds.category_ids == list(range(1, 9))
    raw = json.loads((tmp_path / "AI-TOD" / "annotations" / "aitod_trainval_v1.json").read_text())
    labels = sorted(a["category_id"] for a in raw["annotations"] if not a["iscrowd"])  # crowd: ignore regions
    assert sorted(ds.records[0].labels.tolist()) == labels  # category ids 1..8 are labels 1..8
    tiles = open_detection(f"aitod:{tmp_path}", "train", tile=(128, 128), overlap=0, keep_empty=True)
    got = sorted(int(v) for i in range(len(tiles)) for v in tiles[i][1]["labels"])
    assert set(got) <= set(labels) and len(got) >= 0.8 * len(labels)  # boxes cut by a tile edge may drop


def test_finetune_on_synthetic_aitod_uses_its_evaluator(tmp_path):
    from bhsearch.train.finetune import FinetuneConfig, run_finetune

    cfg = FinetuneConfig(
        epochs=1,
        batch_size=2,
        width_mult=0.125,
        tile=(256, 256),
        overlap=0,
        max_train_tiles=4,
        max_eval_images=1,
        fpn_channels=16,
        progress="off",
        eval_batch_size=2,
    )
    res = run_finetune("resnet18", f"synthetic-aitod:{tmp_path / 'data'}", cfg, out_dir=tmp_path / "run")
    assert res["benchmark"] == "aitod" and res["max_dets"] == 1500
    assert {"AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "best_AP50"} <= set(res)
    meta = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert meta["run"]["benchmark"] == "aitod" and meta["run"]["category_ids"] == list(range(1, 9))
    assert meta["detector"]["num_classes"] == 8  # foreground classes (torchvision adds the background)


def test_study_on_aitod_ranks_by_ap50_and_uses_the_tiled_trainer(tmp_path):
    from bhsearch.train.finetune import FinetuneConfig, run_finetune
    from bhsearch.tune.study import load_study
    from bhsearch.tune.trial import stage_trainer

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: ai\nbase: resnet50\nwidth_mult: 0.0625\ninput_size: 800x800\n"
        "stages:\n  finetune:\n    data: synthetic-aitod:data/ai\n    epochs: 1\n    tile: [256, 256]\n    overlap: 0\n"
    )
    study = load_study(path)
    assert study.finetune_family == "aitod" and study.target_metric == "AP50"
    run, config = stage_trainer(study, "finetune", "cpu")
    assert run is run_finetune and isinstance(config, FinetuneConfig) and config.tile == (256, 256)


@pytest.mark.ray
def test_tiny_aitod_study_runs_through_ray(ray_session, tmp_path):
    import pandas as pd
    import yaml

    from bhsearch.tune.runner import run_study
    from bhsearch.tune.study import load_study

    write_aitod(tmp_path / "ai", n_trainval=2, n_test=1, seed=0, image_size=256, objects=(15, 25))
    study = {
        "name": "ai-e2e",
        "base": "resnet50",
        "width_mult": 0.0625,
        "input_size": "256x256",
        "space": {"tolerance": 2.0, "options": {"top": 4}},
        "search": {"algorithm": "random", "num_samples": 1, "seed": 0, "references": ["resnet50"]},
        "scheduler": {"type": "fifo"},
        "stages": {
            "finetune": {
                "data": f"aitod:{tmp_path / 'ai'}",
                "epochs": 1,
                "batch_size": 2,
                "tile": [128, 128],
                "overlap": 0,
                "fpn_channels": 16,
                "warmup_steps": 0,
                "max_train_tiles": 4,
                "max_eval_images": 1,
            }
        },
        "resources": {"cpu": 1},
        "latency": {"input_size": "64x64", "warmup": 0, "reps": 1},
        "storage": str(tmp_path / "runs"),
    }
    path = tmp_path / "ai.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    outcome = run_study(load_study(path), verbose=0)
    csv = pd.read_csv(outcome.run_dir / "results.csv")
    assert csv["status"].tolist() == ["completed"], csv[["status", "error"]]
    assert all(0 <= csv.iloc[0][k] <= 100 for k in ("AP50", "AP", "AP_vt"))


def test_cli_synth_aitod_refuses_to_overwrite(tmp_path):
    run = [
        sys.executable,
        "-m",
        "bhsearch",
        "data",
        "synth-aitod",
        str(tmp_path),
        "--train",
        "1",
        "--test",
        "1",
        "--image-size",
        "96",
        "--objects",
        "3",
        "5",
    ]
    first = subprocess.run([*run, "--json"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["root"] == str(tmp_path / "AI-TOD")
    assert read_aitod(tmp_path, "test").summary()["images"] == 1
    again = subprocess.run(run, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert subprocess.run([*run, "--overwrite"], capture_output=True, text=True).returncode == 0

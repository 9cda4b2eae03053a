"""WiderFace: reader, official-protocol evaluator, synthetic generator, face detector, fine-tuning, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from bhsearch.errors import DataError, UsageError
from bhsearch.tasks.widerface.evaluate import (
    box_overlaps,
    evaluate_widerface,
    predictions_to_coco,
    read_prediction_file,
    thresholds,
    voc_ap,
    write_prediction_folder,
)
from bhsearch.tasks.widerface.reader import (
    SETTINGS,
    EvalGroundTruth,
    WiderFaceDataset,
    image_ids,
    load_eval_gt,
    parse_bbx_gt,
)

# --------------------------------------------------------------------------- helpers


def _cell(items):
    arr = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        arr[i, 0] = item
    return arr


def write_gt(folder: Path, images: list[tuple[str, str, list, dict]]) -> Path:
    """The four official .mat files for ``[(event, name, boxes xywh, {setting: 1-based indices})]``."""
    folder.mkdir(parents=True, exist_ok=True)
    events = list(dict.fromkeys(e for e, *_ in images))
    per = {e: [im for im in images if im[0] == e] for e in events}
    event_list = _cell([np.array([e]) for e in events])
    file_list = _cell([_cell([np.array([n]) for _, n, _, _ in per[e]]) for e in events])
    boxes = _cell([_cell([np.asarray(b, np.float64).reshape(-1, 4) for _, _, b, _ in per[e]]) for e in events])
    scipy.io.savemat(
        folder / "wider_face_val.mat", {"event_list": event_list, "file_list": file_list, "face_bbx_list": boxes}
    )
    for s in SETTINGS:
        gt_list = _cell(
            [_cell([np.asarray(k.get(s, []), np.float64).reshape(-1, 1) for *_, k in per[e]]) for e in events]
        )
        scipy.io.savemat(
            folder / f"wider_{s}_val.mat", {"event_list": event_list, "file_list": file_list, "gt_list": gt_list}
        )
    return folder


def preds_of(*rows) -> np.ndarray:
    return np.asarray(rows, np.float64).reshape(-1, 5)


def reference_evaluation(gt: EvalGroundTruth, preds: dict[str, np.ndarray], iou=0.5, thresh_num=1000) -> dict:
    """A literal, loop-by-loop transcription of the official MATLAB tool (read_pred sort, norm_score,
    image_evaluation, image_pr_info, dataset_pr_info, VOCap) used as the reference."""
    sorted_preds = {k: v[np.argsort(-v[:, 4], kind="stable")].copy() for k, v in preds.items() if len(v)}
    lo = min(v[:, 4].min() for v in sorted_preds.values())
    hi = max(v[:, 4].max() for v in sorted_preds.values())
    for v in sorted_preds.values():
        v[:, 4] = (v[:, 4] - lo) / (hi - lo)
    out = {}
    for setting in SETTINGS:
        curve = np.zeros((thresh_num, 2))
        count_face = 0
        for i, key in enumerate(gt.keys):
            keep = gt.keep[setting][i]
            count_face += len(keep)
            g = gt.boxes[i]
            p = sorted_preds.get(key)
            if len(g) == 0 or p is None:
                continue
            ignore = np.zeros(len(g))
            ignore[keep] = 1
            recall_list = np.zeros(len(g))
            proposal = np.ones(len(p))
            pred_recall = np.zeros(len(p))
            for h in range(len(p)):
                x1, y1, x2, y2 = p[h, 0], p[h, 1], p[h, 0] + p[h, 2], p[h, 1] + p[h, 3]
                ov = np.zeros(len(g))
                for k in range(len(g)):
                    a1, b1, a2, b2 = g[k, 0], g[k, 1], g[k, 0] + g[k, 2], g[k, 1] + g[k, 3]
                    w = min(a2, x2) - max(a1, x1) + 1
                    hh = min(b2, y2) - max(b1, y1) + 1
                    if w > 0 and hh > 0:
                        inter = w * hh
                        ov[k] = inter / ((a2 - a1 + 1) * (b2 - b1 + 1) + (x2 - x1 + 1) * (y2 - y1 + 1) - inter)
                idx = int(np.argmax(ov))
                if ov[idx] >= iou:
                    if ignore[idx] == 0:
                        recall_list[idx] = -1
                        proposal[h] = -1
                    elif recall_list[idx] == 0:
                        recall_list[idx] = 1
                pred_recall[h] = np.sum(recall_list == 1)
            for t in range(1, thresh_num + 1):
                r = np.flatnonzero(p[:, 4] >= 1 - t / thresh_num)
                if len(r):
                    curve[t - 1, 0] += np.sum(proposal[: r[-1] + 1] == 1)
                    curve[t - 1, 1] += pred_recall[r[-1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = curve[:, 1] / curve[:, 0]
        rec = curve[:, 1] / count_face
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for k in range(len(mpre) - 2, -1, -1):
            if np.isnan(mpre[k]) or mpre[k + 1] > mpre[k]:  # MATLAB's max skips NaN
                mpre[k] = mpre[k + 1] if not np.isnan(mpre[k + 1]) else mpre[k]
        steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        out[f"AP_{setting}"] = 100 * float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))
    return out


# --------------------------------------------------------------------------- hand cases


A, B, C = [10, 10, 20, 24], [60, 10, 20, 24], [110, 10, 20, 24]


@pytest.fixture()
def one_image_gt(tmp_path):
    return write_gt(
        tmp_path / "gt",
        [("0--Parade", "img_a", [A, B, C], {"easy": [1], "medium": [1], "hard": [1, 2]})],
    )


def test_box_overlaps_uses_the_plus_one_pixel_convention():
    assert box_overlaps(np.array([[0, 0, 9, 9]]), np.array([[0, 0, 9, 9]]))[0, 0] == 1.0
    # x: [0, 10] vs [5, 15] -> 6 px wide (with +1), 11 px tall: 66 / (121 + 121 - 66)
    assert box_overlaps(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 10, 10]]))[0, 0] == pytest.approx(66 / 176)
    assert box_overlaps(np.array([[0, 0, 4, 4]]), np.array([[6, 0, 4, 4]]))[0, 0] == 0.0


def test_thresholds_and_all_point_ap():
    thr = thresholds()
    assert len(thr) == 1000 and thr[0] == pytest.approx(0.999) and thr[-1] == 0.0
    # precision envelope: the 0.5 at recall 0.5 is lifted to 2/3 (the best precision at higher recall)
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap(np.array([0.0, 0.5]), np.array([np.nan, 1.0])) == pytest.approx(0.5)


def test_hand_case_normalisation_and_all_point_ap(one_image_gt):
    # A kept everywhere; TP 0.9, FP 0.8, then B (kept in hard only) at 0.7
    preds = {"0--Parade/img_a": preds_of([*A, 0.9], [300, 300, 20, 20, 0.8], [*B, 0.7])}
    r = evaluate_widerface(one_image_gt, preds)
    assert r["AP_hard"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 2 / 3))
    assert r["AP_easy"] == pytest.approx(100.0)  # B is ignored in easy: its prediction is neither TP nor FP
    assert (r["faces_easy"], r["faces_medium"], r["faces_hard"]) == (1, 1, 2)
    # min-max normalisation over the dataset: an affine change of the scores changes nothing
    shifted = {k: v * [1, 1, 1, 1, 7] + [0, 0, 0, 0, -3] for k, v in preds.items()}
    assert evaluate_widerface(one_image_gt, shifted)["AP_hard"] == pytest.approx(r["AP_hard"], abs=1e-12)
    assert r["settings"]["score_range"] == [0.7, 0.9]


def test_ignored_faces_do_not_count(one_image_gt):
    # C counts in no setting: a high-score box on C is ignored, so AP stays perfect
    preds = {"0--Parade/img_a": preds_of([*C, 0.99], [*A, 0.9], [*B, 0.8])}
    r = evaluate_widerface(one_image_gt, preds)
    assert r["AP_easy"] == r["AP_hard"] == pytest.approx(100.0)
    # the same box as a false positive elsewhere costs precision
    fp = {"0--Parade/img_a": preds_of([300, 300, 20, 24, 0.99], [*A, 0.9], [*B, 0.8])}
    r = evaluate_widerface(one_image_gt, fp)
    assert r["AP_hard"] == pytest.approx(100 * 2 / 3)
    assert r["AP_easy"] == pytest.approx(50.0)  # FP, TP; B ignored


def test_duplicates_are_false_positives_and_empty_images_do_not_count(tmp_path):
    gt = write_gt(
        tmp_path / "gt",
        [
            ("0--Parade", "img_a", [A], {"easy": [1], "medium": [1], "hard": [1]}),
            ("0--Parade", "img_empty", [], {}),
        ],
    )
    dup = {"0--Parade/img_a": preds_of([*A, 0.9], [A[0] + 1, A[1], A[2], A[3], 0.8], [0, 0, 5, 5, 0.1])}
    assert evaluate_widerface(gt, dup)["AP_hard"] == pytest.approx(100.0)  # duplicate ranks below the TP
    dup_first = {"0--Parade/img_a": preds_of([*A, 0.5], [A[0] + 1, A[1], A[2], A[3], 0.9], [0, 0, 5, 5, 0.1])}
    # best-IoU match of the 0.9 box is A (TP); the exact box then is a duplicate: still 100
    assert evaluate_widerface(gt, dup_first)["AP_hard"] == pytest.approx(100.0)
    with_empty = {**dup, "0--Parade/img_empty": preds_of([1, 1, 30, 30, 1.0])}
    assert evaluate_widerface(gt, with_empty)["AP_hard"] == pytest.approx(100.0)


def test_1000_thresholds_quantise_scores(one_image_gt):
    # normalised scores 1.0 (TP) and 0.9995 (FP) fall in the same threshold bin: precision 1/2 at the
    # first PR point, where exact ranking would give 1
    preds = {"0--Parade/img_a": preds_of([*A, 1.0], [300, 300, 9, 9, 0.9995], [400, 300, 9, 9, 0.0])}
    assert evaluate_widerface(one_image_gt, preds)["AP_easy"] == pytest.approx(50.0)
    assert evaluate_widerface(one_image_gt, preds, thresh_num=100000)["AP_easy"] == pytest.approx(100.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_literal_port_of_the_official_tool(tmp_path, seed):
    rng = np.random.default_rng(seed)
    images, preds = [], {}
    for i in range(6):
        n = int(rng.integers(0, 7))
        xy = rng.integers(0, 200, (n, 2))
        wh = rng.integers(4, 60, (n, 2))
        boxes = np.concatenate([xy, wh], 1).astype(float)
        hard = [k + 1 for k in range(n) if rng.random() < 0.8]
        medium = [k for k in hard if rng.random() < 0.6]
        easy = [k for k in medium if rng.random() < 0.6]
        images.append((f"{i % 2}--Ev", f"im{i}", boxes, {"easy": easy, "medium": medium, "hard": hard}))
        jitter = boxes[rng.integers(0, max(n, 1), 2 * n)] if n else np.zeros((0, 4))
        jitter = jitter + rng.normal(0, 3, jitter.shape)
        jitter[:, 2:] = np.abs(jitter[:, 2:])
        rand = np.concatenate([rng.uniform(0, 200, (4, 2)), rng.uniform(4, 60, (4, 2))], 1)
        p = np.concatenate([jitter, rand])
        # quantised scores produce ties, as real detectors' rounded scores do
        preds[f"{i % 2}--Ev/im{i}"] = np.concatenate([p, np.round(rng.random((len(p), 1)), 2)], 1)
    gt_dir = write_gt(tmp_path / "gt", images)
    ours = evaluate_widerface(gt_dir, preds)
    ref = reference_evaluation(load_eval_gt(gt_dir), preds)
    for s in SETTINGS:
        assert ours[f"AP_{s}"] == pytest.approx(ref[f"AP_{s}"], abs=1e-9)
    assert 0 < ours["AP_hard"] < 100


# --------------------------------------------------------------------------- formats


def test_text_coco_and_mapping_predictions_agree(tmp_path):
    rng = np.random.default_rng(3)
    images = [
        ("0--Parade", f"p{i}", [[10 * i, 5, 20, 24], [50, 50, 30, 36]], {"hard": [1, 2], "medium": [2]})
        for i in range(3)
    ]
    gt = write_gt(tmp_path / "gt", images)
    keys = [f"0--Parade/p{i}" for i in range(3)]
    preds = {
        k: np.concatenate([np.asarray(im[2], float) + rng.normal(0, 2, (2, 4)), rng.random((2, 1))], 1)
        for k, im in zip(keys, images, strict=True)
    }
    preds[keys[0]] = np.concatenate([preds[keys[0]], [[100, 100, 10, 10, 0.3]]])
    by_map = evaluate_widerface(gt, preds)
    folder = write_prediction_folder(preds, tmp_path / "pred")
    by_text = evaluate_widerface(gt, folder)
    coco = predictions_to_coco(preds, keys)
    (tmp_path / "dets.json").write_text(json.dumps(coco))
    by_coco = evaluate_widerface(gt, tmp_path / "dets.json")
    by_str_ids = evaluate_widerface(gt, [{**d, "image_id": f"p{d['image_id'] - 1}.jpg"} for d in coco])
    for s in SETTINGS:
        assert by_map[f"AP_{s}"] == by_text[f"AP_{s}"] == by_coco[f"AP_{s}"] == by_str_ids[f"AP_{s}"]
    assert by_text["settings"]["predictions_format"] == "text"
    assert by_coco["settings"]["predictions_format"] == "coco"
    assert image_ids(keys) == {keys[0]: 1, keys[1]: 2, keys[2]: 3}


def test_prediction_file_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("img.jpg\n2\n1 2 3 4 0.5\n")
    with pytest.raises(DataError, match="says 2 boxes"):
        read_prediction_file(bad)
    bad.write_text("img.jpg\nx\n")
    with pytest.raises(DataError, match="count line"):
        read_prediction_file(bad)
    bad.write_text("img.jpg\n1\n1 2 3 nan 0.5\n")
    with pytest.raises(DataError, match="non-finite"):
        read_prediction_file(bad)
    ok = tmp_path / "ok.txt"
    ok.write_text("img.jpg\n1\n1 2 3 4 0.5 \n")  # trailing space as many writers emit
    assert read_prediction_file(ok).tolist() == [[1, 2, 3, 4, 0.5]]


def test_ground_truth_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        evaluate_widerface(tmp_path, {})
    gt = write_gt(tmp_path / "gt", [("0--Parade", "a", [A], {"hard": [2]})])
    with pytest.raises(DataError, match="indices must be 1..1"):
        load_eval_gt(gt)
    (gt / "wider_face_val.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match="wider_face_val.mat"):
        load_eval_gt(gt)
    with pytest.raises(UsageError):
        evaluate_widerface(gt, {}, iou_threshold=0)


# --------------------------------------------------------------------------- reader and synthetic data


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from bhsearch.tasks.widerface.synthetic import write_widerface

    return write_widerface(tmp_path_factory.mktemp("wf"), n_train=4, n_val=6, seed=0, width=192, faces=(2, 10))


def test_bbx_gt_parser_handles_empty_images_and_flags(tmp_path):
    f = tmp_path / "gt.txt"
    f.write_text(
        "0--Parade/a.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n0--Parade/b.jpg\n2\n1 2 10 12 0 0 0 0 0 0 \n5 5 8 8 2 0 0 1 0 0 \n"
    )
    entries = parse_bbx_gt(f)
    assert [e[0] for e in entries] == ["0--Parade/a.jpg", "0--Parade/b.jpg"]
    assert entries[0][1].shape == (0, 10) and entries[1][1][1, 7] == 1
    f.write_text("0--Parade/b.jpg\n2\n1 2 10 12 0 0 0 0 0 0\n")
    with pytest.raises(DataError, match="announces 2 faces"):
        parse_bbx_gt(f)
    f.write_text("0--Parade/b.jpg\n1\n1 2 10 0 0 0\n")
    with pytest.raises(DataError, match=r"gt.txt:3"):
        parse_bbx_gt(f)


def test_reader_on_synthetic_data(synth):
    ds = WiderFaceDataset(synth, "val")
    assert len(ds) == 6
    image, target = ds[1]
    rec = ds.records[1]
    assert image.shape == (3, rec.height, rec.width) and float(image.min()) >= 0 and float(image.max()) <= 1
    assert set(target) == {"boxes", "labels", "ignore_boxes", "image_id", "tile"}
    valid = rec.faces[:, 7] == 0
    assert len(target["boxes"]) == int(valid.sum()) and len(target["ignore_boxes"]) == int((~valid).sum())
    np.testing.assert_array_equal(target["boxes"][:, 2:].numpy(), (rec.faces[valid, :2] + rec.faces[valid, 2:4]))
    assert int(target["image_id"]) == image_ids(r.key for r in ds.records)[rec.key]
    summary = ds.summary()
    assert summary["empty_images"] == 1 and summary["size_min"] >= 3 and summary["size_max"] <= 110
    # the evaluation GT lists the same images and boxes, and easy ⊆ medium ⊆ hard
    gt = load_eval_gt(synth)
    assert sorted(gt.keys) == sorted(r.key for r in ds.records)
    for i, key in enumerate(gt.keys):
        faces = next(r.faces for r in ds.records if r.key == key)
        np.testing.assert_array_equal(gt.boxes[i], faces[:, :4])
        assert set(gt.keep["easy"][i]) <= set(gt.keep["medium"][i]) <= set(gt.keep["hard"][i])
        assert all(faces[k, 7] == 0 and faces[k, 3] >= 10 for k in gt.keep["hard"][i])


def test_missing_image_is_a_data_error(tmp_path):
    from bhsearch.tasks.widerface.synthetic import write_widerface

    root = write_widerface(tmp_path / "w", n_train=1, n_val=2, seed=1, width=64, faces=(1, 2))
    next((root / "WIDER_val" / "images").rglob("*.jpg")).unlink()
    with pytest.raises(DataError, match="image file not found"):
        WiderFaceDataset(root, "val")


def test_perfect_predictions_score_100_and_random_ones_score_low(synth):
    ds = WiderFaceDataset(synth, "val")
    rng = np.random.default_rng(0)
    perfect = [
        {"image_id": r.image_id, "bbox": face[:4].tolist(), "score": float(rng.uniform(0.5, 1))}
        for r in ds.records
        for face in r.faces
    ]
    r = evaluate_widerface(synth, perfect)
    assert r["AP_easy"] == r["AP_medium"] == r["AP_hard"] == pytest.approx(100.0)
    random = {
        rec.key: np.concatenate([rng.uniform(0, 150, (60, 2)), rng.uniform(4, 40, (60, 2)), rng.random((60, 1))], 1)
        for rec in ds.records
    }
    r = evaluate_widerface(synth, random)
    assert all(r[f"AP_{s}"] < 10 for s in SETTINGS)


# --------------------------------------------------------------------------- detector and training


def test_face_detector_settings_and_round_trip():
    import torch

    from bhsearch.spec import get_spec
    from bhsearch.tasks.widerface.detector import build_face_detector, face_detector_settings

    spec = get_spec("resnet18").scaled(0.25)
    torch.manual_seed(0)
    model = build_face_detector(spec, fpn_channels=32, image_size=128)
    sizes = model.anchor_generator.sizes
    assert len(sizes) == 6 and sizes[0][0] == 4.0 and sizes[-1][0] == 128.0
    assert model.anchor_generator.aspect_ratios[0] == (1.3,)
    assert model.head.regression_head._loss_type == "diou"
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.head.modules())
    rebuilt = build_face_detector(spec, **json.loads(json.dumps(face_detector_settings(model))))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.train()
    target = [{"boxes": torch.tensor([[10.0, 10, 15, 16], [40, 30, 90, 95]]), "labels": torch.tensor([1, 1])}]
    losses = model([torch.rand(3, 128, 128)], target)
    assert set(losses) == {"classification", "bbox_regression"} and all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(UsageError, match="box_loss"):
        build_face_detector(spec, box_loss="iou")


def test_random_square_crop_keeps_faces_by_centre():
    import torch

    from bhsearch.train.finetune_widerface import random_square_crop

    image = torch.rand(3, 100, 200)
    boxes = torch.tensor([[10.0, 10, 30, 30], [150, 50, 170, 80]])
    crop, kept = random_square_crop(image, boxes, torch.Generator().manual_seed(0), 64, (1.0,), 0.0, False)
    assert crop.shape == (3, 64, 64)
    # a 100x100 crop; every kept box lies inside it and is scaled by 0.64
    assert len(kept) <= 2 and bool((kept >= 0).all() and (kept <= 64).all())
    sides = (kept[:, 2:] - kept[:, :2]).max(dim=1).values
    assert bool((sides <= 0.64 * 30 + 1e-4).all())


def test_finetune_widerface_smoke(synth, tmp_path):
    from bhsearch.train.finetune_widerface import WiderFaceConfig, load_face_model, run_finetune_widerface

    cfg = WiderFaceConfig(
        epochs=1,
        batch_size=2,
        image_size=96,
        fpn_channels=32,
        width_mult=0.25,
        max_train_images=2,
        max_eval_images=2,
        progress="off",
        device="cpu",
        warmup_steps=0,
        lr=0.005,
        num_threads=1,
    )
    seen = []
    result = run_finetune_widerface("resnet18", synth, cfg, tmp_path / "run", callback=lambda *a: seen.append(a[:2]))
    assert seen == [("finetune", 1)]
    assert {"AP_easy", "AP_medium", "AP_hard", "loss", "best_AP_hard"} <= set(result)
    assert all(result[k] is None or 0 <= result[k] <= 100 for k in ("AP_easy", "AP_medium", "AP_hard"))
    for name in ("model.safetensors", "spec.json", "metrics.jsonl", "checkpoint.pt"):
        assert (tmp_path / "run" / name).is_file()
    model, meta = load_face_model(tmp_path / "run")
    assert meta["detector"]["box_loss"] == "diou" and not model.training


def test_study_file_stage_settings_are_valid():
    import yaml

    from bhsearch.train.finetune_widerface import WiderFaceConfig

    data = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("studies/widerface.yaml").read_text())
    stage = dict(data["stages"]["finetune"])
    assert stage.pop("data").startswith("widerface:")
    WiderFaceConfig.from_dict(stage)
    assert data["scheduler"]["metric"] == "AP_hard"


def test_study_file_validates():
    from bhsearch.tune.study import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "studies/widerface.yaml")
    assert study.target_metric == "AP_hard" and study.stage_trainer("finetune")[1] == "WiderFaceConfig"


# --------------------------------------------------------------------------- command line


def _bhsearch(*args):
    return subprocess.run(
        [sys.executable, "-m", "bhsearch", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_cli_synth_stats_and_evaluate(tmp_path):
    out = tmp_path / "wf"
    res = _bhsearch("widerface", "synth", out, "--train", 1, "--val", 3, "--width", 96, "--faces", 1, 4, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["val_faces"]["all"] >= 2
    res = _bhsearch("widerface", "stats", out, "--json")
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["val"]["images"] == 3 and stats["eval_gt"]["images"] == 3
    ds = WiderFaceDataset(out, "val")
    write_prediction_folder(
        {r.key: np.concatenate([r.faces[:, :4], np.ones((len(r.faces), 1))], 1) for r in ds.records}, tmp_path / "pred"
    )
    res = _bhsearch("evaluate", "--benchmark", "widerface", "--gt", out, "--dets", tmp_path / "pred", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["AP_hard"] == pytest.approx(100.0)


def test_cli_errors_exit_2_without_traceback(tmp_path):
    for args in (
        ("widerface", "stats", tmp_path / "missing"),
        ("evaluate", "--benchmark", "widerface", "--gt", tmp_path, "--dets", tmp_path / "none.json"),
    ):
        res = _bhsearch(*args)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and "error:" in res.stderr


def test_gt_lists_are_integer_index_arrays_the_public_port_can_use(synth):
    """The public Python port of the official tool indexes ``ignore[keep_index - 1]`` with gt_list values."""
    import scipy.io

    gt_dir = next(synth.rglob("wider_hard_val.mat")).parent
    face = scipy.io.loadmat(str(gt_dir / "wider_face_val.mat"))
    for setting in ("easy", "medium", "hard"):
        gt_list = scipy.io.loadmat(str(gt_dir / f"wider_{setting}_val.mat"))["gt_list"]
        kept = 0
        for i in range(len(face["event_list"])):
            boxes, sub_gt_list = face["face_bbx_list"][i][0], gt_list[i][0]
            for j in range(len(boxes)):
                keep_index = sub_gt_list[j][0]
                assert keep_index.dtype.kind == "i", keep_index.dtype
                ignore = np.zeros(boxes[j][0].shape[0])
                if len(keep_index) != 0:
                    ignore[keep_index - 1] = 1  # the port's own line: IndexError with float arrays
                kept += int(ignore.sum())
        assert kept > 0

"""WiderFace in the study machinery: validation, trainer dispatch, registry, results and a tiny study via Ray."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bhsearch.errors import UsageError
from bhsearch.tune.study import load_study

ROOT = Path(__file__).resolve().parents[1]

STUDY = """\
name: wf
base: resnet50
width_mult: 0.0625
input_size: 640x640
stages:
  pretrain:
    data: synthetic-cifar100:data/c
    epochs: 2
  finetune:
    data: synthetic-widerface:data/wf
    epochs: 1
    image_size: 96
    crop_scales: [0.5, 1.0]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(UsageError) as info:
        load_study(write(tmp_path, text))
    return str(info.value)


@pytest.fixture(scope="module")
def tiny_widerface(tmp_path_factory) -> Path:
    from bhsearch.tasks.widerface.synthetic import write_widerface

    return write_widerface(tmp_path_factory.mktemp("wf"), n_train=3, n_val=3, seed=0, width=128, faces=(2, 6))


# --------------------------------------------------------------------------- validation


def test_shipped_study_validates_and_ranks_by_ap_hard():
    study = load_study(ROOT / "studies/widerface.yaml")
    assert study.target_metric == "AP_hard" and study.finetune_family == "widerface"
    assert study.max_epochs == 42
    assert study.stage_trainer("finetune")[1:] == ("WiderFaceConfig", "run_finetune_widerface")
    assert study.stage_trainer("pretrain")[1:] == ("PretrainConfig", "run_pretrain")


def test_widerface_study_defaults_to_ap_hard(tmp_path):
    study = load_study(write(tmp_path, STUDY))
    assert study.target_metric == "AP_hard"
    assert study.stages.finetune.options == {"epochs": 1, "image_size": 96, "crop_scales": [0.5, 1.0]}
    assert study.absolute(tmp_path).stages.finetune.data == f"synthetic-widerface:{tmp_path / 'data/wf'}"
    for metric in ("AP_easy", "AP_medium"):
        assert load_study(write(tmp_path, STUDY + f"scheduler:\n  metric: {metric}\n")).target_metric == metric


def test_metrics_must_fit_the_finetune_data(tmp_path):
    msg = error_of(tmp_path, STUDY + "scheduler:\n  metric: AP50_tiny\n")
    assert ":15: scheduler.metric: metric 'AP50_tiny' is not reported when fine-tuning on widerface" in msg
    assert "allowed: AP_easy, AP_medium, AP_hard" in msg
    tiny = STUDY.replace("synthetic-widerface:data/wf", "tinyperson:data/t").replace("    image_size: 96\n", "")
    tiny = tiny.replace("    crop_scales: [0.5, 1.0]\n", "")
    msg = error_of(tmp_path, tiny + "scheduler:\n  metric: AP_hard\n")
    assert "fine-tuning on tinyperson" in msg and "AP50_tiny" in msg
    assert "use AP_hard" in error_of(tmp_path, STUDY + "scheduler:\n  metric: top1\n")
    proxy_only = STUDY.split("  finetune:")[0] + "scheduler:\n  metric: AP_hard\n"
    assert "needs a finetune stage" in error_of(tmp_path, proxy_only)


def test_finetune_options_are_checked_against_widerface_config(tmp_path):
    msg = error_of(tmp_path, STUDY.replace("image_size: 96", "tile: [128, 128]"))
    assert msg.startswith(f"{tmp_path / 'study.yaml'}:12: stages.finetune.tile: unknown finetune setting")
    assert "WiderFaceConfig" in msg and "crop_scales" in msg and "eval_max_size" in msg
    # a WiderFace setting is unknown to the TinyPerson fine-tuner
    msg = error_of(tmp_path, STUDY.replace("synthetic-widerface:data/wf", "synthetic-tinyperson:data/t"))
    assert ":12: stages.finetune.image_size: unknown finetune setting (FinetuneConfig)" in msg
    assert "width_mult: not allowed" in error_of(tmp_path, STUDY.replace("image_size: 96", "width_mult: 0.5"))


def test_data_kind_must_fit_the_stage(tmp_path):
    msg = error_of(tmp_path, STUDY.replace("synthetic-cifar100:data/c", "widerface:data/wf"))
    assert ":7: stages.pretrain.data: widerface data cannot be used to pretrain" in msg
    assert "allowed: cifar100, imagenet32, imagenet, synthetic-cifar100, synthetic-imagenet32, synthetic-imagenet" in msg
    msg = error_of(tmp_path, STUDY.replace("synthetic-widerface:data/wf", "cifar100:data/c"))
    assert ":10: stages.finetune.data:" in msg and "tinyperson, widerface" in msg
    msg = error_of(tmp_path, STUDY.replace("synthetic-widerface:data/wf", "faces:data/wf"))
    assert ":10: stages.finetune.data:" in msg and "synthetic-widerface" in msg


# --------------------------------------------------------------------------- trial dispatch, data, results


def test_trial_dispatch_picks_the_widerface_trainer(tmp_path):
    from bhsearch.train.finetune import FinetuneConfig, run_finetune
    from bhsearch.train.finetune_widerface import WiderFaceConfig, run_finetune_widerface
    from bhsearch.tune.trial import stage_trainer

    study = load_study(write(tmp_path, STUDY))
    run, config = stage_trainer(study, "finetune", "cpu")
    assert run is run_finetune_widerface and isinstance(config, WiderFaceConfig)
    assert (config.epochs, config.image_size, config.crop_scales) == (1, 96, (0.5, 1.0))
    assert (config.device, config.progress) == ("cpu", "off")
    tiny = STUDY.replace("synthetic-widerface:data/wf", "synthetic-tinyperson:data/t")
    tiny = tiny.replace("    image_size: 96\n", "").replace("    crop_scales: [0.5, 1.0]\n", "")
    run, config = stage_trainer(load_study(write(tmp_path, tiny)), "finetune")
    assert run is run_finetune and isinstance(config, FinetuneConfig)


def test_registry_reads_widerface_refs(tiny_widerface, tmp_path):
    from bhsearch.data import registry
    from bhsearch.tasks.widerface.reader import WiderFaceDataset

    val = registry.open_detection(f"widerface:{tiny_widerface}", "test")
    assert isinstance(val, WiderFaceDataset) and val.split == "val" and len(val) == 3
    assert len(registry.open_detection(f"widerface:{tiny_widerface}", "train")) == 3
    # synthetic-widerface writes the set open_widerface would write, once
    out = tmp_path / "gen"
    train = registry.open_detection(f"synthetic-widerface:{out}", "train")
    assert len(train) == 12 and (out / "eval_tools" / "ground_truth" / "wider_hard_val.mat").is_file()
    with pytest.raises(UsageError, match="does not exist"):
        registry.open_detection(f"widerface:{tmp_path / 'none'}")
    with pytest.raises(UsageError, match="KIND:PATH"):
        registry.parse_ref(f"widerface:{out}", registry.DETECTION_KINDS)  # not for the TinyPerson fine-tuner


def test_results_table_keeps_widerface_metrics():
    from bhsearch.tune.results import COLUMNS, METRIC_COLUMNS, results_table
    from bhsearch.tune.study import DETECTION_METRICS

    assert set(DETECTION_METRICS) <= set(METRIC_COLUMNS) <= set(COLUMNS)
    base = {"params": 1, "macs": 1, "flops": 1, "activations": 1, "epochs": 1, "max_epochs": 1, "status": "completed"}
    rows = [
        {**base, "spec_id": "a", "AP_hard": 12.5, "AP_easy": 30.0, "search_score": 12.5},
        {**base, "spec_id": "b", "AP_hard": 20.0, "AP_medium": 25.0, "search_score": 20.0},
    ]
    df = results_table(rows)
    assert list(df["spec_id"]) == ["b", "a"] and list(df["AP_hard"]) == [20.0, 12.5]
    assert df["AP_easy"].dtype == "float64" and pd.isna(df["AP_easy"][0]) and df["AP_easy"][1] == 30.0


# --------------------------------------------------------------------------- a tiny study through Ray


@pytest.mark.ray
def test_tiny_widerface_study_runs_through_ray(ray_session, tiny_widerface, tmp_path):
    from rich.console import Console

    from bhsearch.report import build_report, print_report
    from bhsearch.tune.runner import run_study

    study = {
        "name": "wf-e2e",
        "base": "resnet50",
        "width_mult": 0.0625,
        "input_size": "640x640",
        "space": {"tolerance": 2.0, "options": {"top": 4}},
        "search": {"algorithm": "random", "num_samples": 1, "seed": 0, "references": ["resnet50"]},
        "scheduler": {"type": "fifo"},
        "stages": {
            "finetune": {
                "data": f"synthetic-widerface:{tiny_widerface}",  # already there: nothing is generated
                "epochs": 1,
                "batch_size": 2,
                "image_size": 64,
                "fpn_channels": 16,
                "warmup_steps": 0,
                "lr": 0.005,
                "max_train_images": 2,
                "max_eval_images": 2,
            }
        },
        "resources": {"cpu": 1},
        "latency": {"input_size": "64x64", "warmup": 0, "reps": 1},
        "storage": str(tmp_path / "runs"),
    }
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    outcome = run_study(load_study(path), verbose=0)
    csv = pd.read_csv(outcome.run_dir / "results.csv")
    assert len(csv) == 1 and csv["status"].tolist() == ["completed"], csv[["status", "error"]]
    row = csv.iloc[0]
    for metric in ("AP_easy", "AP_medium", "AP_hard"):
        assert 0 <= row[metric] <= 100, metric
    assert row["search_score"] == row["AP_hard"] and pd.isna(row["AP50_tiny"]) and pd.isna(row["top1"])
    trials = list(outcome.run_dir.glob("trial_*/result.json"))
    reports = [json.loads(line) for line in trials[0].read_text().splitlines() if line.strip()]
    assert [(r["stage"], r["epochs_done"], r["max_epochs"]) for r in reports] == [("finetune", 1, 1)]
    best = json.loads((outcome.run_dir / "best_spec.json").read_text())
    assert best["metric"] == "AP_hard" and best["value"] == pytest.approx(row["AP_hard"])
    info = build_report(outcome.run_dir, plots=False)
    assert info["metric"] == "AP_hard" and info["ranking"][0]["AP_hard"] == pytest.approx(row["AP_hard"])
    out = io.StringIO()
    print_report(info, Console(file=out, width=200))
    assert "ranked by AP_hard" in out.getvalue()

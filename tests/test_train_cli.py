"""`bhsearch pretrain`, `finetune` and `evaluate-model` through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TINY_DET = [
    "--width-mult",
    "0.125",
    "--tile",
    "160x128",
    "--overlap",
    "16",
    "--fpn-channels",
    "32",
    "--batch-size",
    "2",
    "--max-train-tiles",
    "4",
    "--threads",
    "1",
    "--detector-option",
    "box_batch_size_per_image=64",
    "--detector-option",
    "rpn_post_nms_top_n_train=150",
]


def bhsearch(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "bhsearch", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_commands_are_registered_with_help():
    for command, needle in (("pretrain", "--width-mult"), ("finetune", "--init"), ("evaluate-model", "RUN_DIR")):
        res = bhsearch(command, "--help")
        assert res.returncode == 0, res.stderr
        assert needle in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "--spec", "resnet-51", "--data", "cifar100:/nowhere"], "unknown spec 'resnet-51'"),
        (["finetune", "--spec", "resnet18", "--data", "bogus:/x"], "dataset reference 'bogus:/x'"),
        (["evaluate-model", "/no/such/run", "--data", "tinyperson:/x"], "no such run folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    res = bhsearch(*args, "--out", tmp_path / "o") if args[0] != "evaluate-model" else bhsearch(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_pretrain_json_then_refuses_to_clobber(synthetic_data, tmp_path):
    out = tmp_path / "pre"
    common = ["--spec", "resnet18", "--width-mult", "0.125", "--data", synthetic_data.cifar100_ref, "--out", out]
    res = bhsearch("pretrain", *common, "--epochs", "1", "--batch-size", "100", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["epoch"] == 1 and 0 <= result["top1"] <= 100
    assert (out / "backbone.safetensors").is_file() and (out / "checkpoint.pt").is_file()
    again = bhsearch("pretrain", *common, "--epochs", "1")
    assert again.returncode == 2 and "--resume" in again.stderr


def test_nan_loss_exits_1_with_a_message(synthetic_data, tmp_path):
    res = bhsearch(
        "pretrain",
        "--spec",
        "resnet18",
        "--width-mult",
        "0.125",
        "--data",
        synthetic_data.cifar100_ref,
        "--out",
        tmp_path / "nan",
        "--epochs",
        "1",
        "--lr",
        "1e6",
        "--threads",
        "1",
    )
    assert res.returncode == 1
    assert "loss became" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_end_to_end_pretrain_finetune_evaluate(synthetic_data, tmp_path):
    pre, det = tmp_path / "pre", tmp_path / "det"
    res = bhsearch(
        "pretrain", "--spec", "bh-resnet50", "--width-mult", "0.125", "--data", synthetic_data.cifar100_ref,
        "--epochs", "3", "--out", pre, "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = bhsearch(
        "finetune", "--spec", pre / "spec.json", "--init", pre / "backbone.safetensors",
        "--data", synthetic_data.tinyperson_ref, "--epochs", "4", "--out", det, *TINY_DET[2:], "--json",
        "--max-train-tiles", "12", "--lr", "0.02",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    fine = json.loads(res.stdout)
    assert fine["epoch"] == 4 and fine["history"][-1]["loss"] < fine["history"][0]["loss"]
    res = bhsearch("evaluate-model", det, "--data", synthetic_data.tinyperson_ref, "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["AP50_tiny"] == pytest.approx(fine["AP50_tiny"])  # same tiles, same merge, same evaluator
    assert metrics["settings"]

"""``bhsearch data`` end to end through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _bhsearch(*args, check=True):
    res = subprocess.run(
        [sys.executable, "-m", "bhsearch", "data", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check:
        assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_tp")
    res = _bhsearch(
        "synth-tinyperson",
        out,
        "--train",
        2,
        "--test",
        1,
        "--min-size",
        300,
        "--max-size",
        400,
        "--persons",
        5,
        10,
        "--seed",
        2,
        "--json",
    )
    return out, json.loads(res.stdout)


def test_synth_tinyperson_and_stats(tiny):
    out, info = tiny
    assert info["boxes"] > 0 and (out / "tiny_set" / "annotations" / "task" / "tiny_set_test_all.json").is_file()
    stats = json.loads(_bhsearch("stats", f"tinyperson:{out}", "--json").stdout)
    assert stats["train_images"] == 1 and stats["test_images"] == 1  # the dense training image is only in _with_dense
    hist = sum(v for k, v in stats.items() if k.startswith("test_size ["))
    assert hist == stats["test_boxes"]
    table = _bhsearch("stats", f"tinyperson:{out}").stdout
    assert "test_boxes" in table


def test_tiles_command(tiny):
    out, _ = tiny
    res = json.loads(_bhsearch("tiles", f"tinyperson:{out}", "--tile", "128x128", "--overlap", "16", "--json").stdout)
    assert res["tile"] == "128x128" and res["train_tiles"] >= 4 and res["test_boxes_kept"] > 0


def test_synth_classification_sets(tmp_path):
    _bhsearch("synth-cifar100", tmp_path / "c", "--train", 100, "--test", 50)
    stats = json.loads(_bhsearch("stats", f"cifar100:{tmp_path / 'c'}", "--json").stdout)
    assert (stats["train_images"], stats["test_images"], stats["num_classes"]) == (100, 50, 100)
    _bhsearch("synth-imagenet32", tmp_path / "i", "--batches", 1, "--per-batch", 30, "--val", 10, "--npz")
    assert (tmp_path / "i" / "Imagenet32_train_npz" / "train_data_batch_1.npz").is_file()
    stats = json.loads(_bhsearch("stats", f"imagenet32:{tmp_path / 'i'}", "--json").stdout)
    assert (stats["train_images"], stats["test_images"]) == (30, 10)


@pytest.mark.parametrize(
    "args, message",
    [
        (("stats", "mnist:/tmp/x"), "must be KIND:PATH with KIND one of"),
        (("stats", "tinyperson:/definitely/not/here"), "does not exist"),
        (("tiles", "cifar100:/tmp"), "needs a detection dataset"),
        (("synth-tinyperson", "/tmp/never", "--min-size", "10"), "min_size"),
    ],
)
def test_errors_exit_2_one_line(args, message):
    res = _bhsearch(*args, check=False)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_corrupt_pickle_exit_2(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"\x80\x04\x95garbage")
    res = _bhsearch("stats", f"cifar100:{tmp_path}", check=False)
    assert res.returncode == 2 and "cifar-100-python/train: not a readable pickle" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

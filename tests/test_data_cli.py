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
        (
            ("tiles", "tinyperson:/tmp", "--tile", "32x32", "--overlap", "31"),
            "tile overlap must be an integer from 0 to 16 (half the tile 32x32), got 31",
        ),
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


def test_synth_refuses_to_overwrite_without_the_flag(tmp_path):
    _bhsearch("synth-cifar100", tmp_path, "--train", 20, "--test", 10)
    train = tmp_path / "cifar-100-python" / "train"
    before = train.read_bytes()
    again = _bhsearch("synth-cifar100", tmp_path, "--train", 30, "--test", 10, "--seed", 1, check=False)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert "cifar-100-python: a dataset is already there (use --overwrite to replace it)" in again.stderr
    assert train.read_bytes() == before
    _bhsearch("synth-cifar100", tmp_path, "--train", 30, "--test", 10, "--seed", 1, "--overwrite")
    stats = json.loads(_bhsearch("stats", f"cifar100:{tmp_path}", "--json").stdout)
    assert stats["train_images"] == 30 and train.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-100-python"]  # no staging folder left


def test_small_tinyperson_images_are_written(tmp_path):
    res = _bhsearch("synth-tinyperson", tmp_path, "--min-size", 100, "--max-size", 200, "--json", check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["boxes"] > 0


def test_killed_synth_leaves_nothing_a_reader_trusts(tmp_path, monkeypatch):
    from bhsearch.data import registry, synthetic

    calls = []
    real = synthetic.render_classes

    def dies_on_the_second_split(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_classes", dies_on_the_second_split)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_cifar100(tmp_path, n_train=20, n_test=10)
    assert list(tmp_path.iterdir()) == []  # train was written, but only in the staging folder
    monkeypatch.setattr(synthetic, "render_classes", real)
    ds = registry.open_classification(f"synthetic-cifar100:{tmp_path}", "train")
    assert len(ds) == registry.SYNTHETIC_DEFAULTS["synthetic-cifar100"]["n_train"]

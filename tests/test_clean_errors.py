"""Clean errors through the command line: exit 2, one line, no traceback, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "bhsearch", *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def _one_line(proc, message: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr, proc.stderr


def _writers(out: Path, data: Path, study: Path):
    """Every command that writes, pointed at ``out`` (read-only); data that would be generated lives in ``data``."""
    return {
        "pretrain": ("pretrain", "--spec", "resnet18", "--data", f"synthetic-cifar100:{data}", "--out", out / "run"),
        "finetune": ("finetune", "--spec", "resnet18", "--data", f"synthetic-tinyperson:{data}", "--out", out / "run"),
        "widerface train": (
            "widerface",
            "train",
            "resnet18",
            "--data",
            f"synthetic-widerface:{data}",
            "--out",
            out / "run",
        ),
        "widerface synth": ("widerface", "synth", out / "wf"),
        "data synth-tinyperson": ("data", "synth-tinyperson", out / "tp"),
        "data synth-cifar100": ("data", "synth-cifar100", out / "c"),
        "data synth-imagenet32": ("data", "synth-imagenet32", out / "i"),
        "data synth-imagenet": ("data", "synth-imagenet", out / "in"),
        "export": ("export", "resnet18", "--to", "torchvision", "--out", out / "exp"),
        "solve --csv": ("solve", "--csv", out / "rows.csv"),
        "profile": ("profile", "--base", "resnet18", "--out", out / "latency.json"),
        "tune --storage": ("tune", study, "--storage", out / "runs"),
    }


@pytest.mark.parametrize("name", list(_writers(Path("o"), Path("d"), Path("s"))))
def test_read_only_output_is_refused_up_front(name, readonly_dir, tmp_path):
    study = Path(__file__).resolve().parent.parent / "studies" / "demo.yaml"
    data = tmp_path / "data"
    proc = _run(*_writers(readonly_dir, data, study)[name])
    _one_line(proc, "cannot write there")
    assert not data.exists()  # refused before any data was generated or read


def test_output_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line(
        _run("export", "resnet18", "--to", "torchvision", "--out", tmp_path / "file"), "exists and is not a directory"
    )
    _one_line(_run("solve", "--csv", tmp_path), "is a directory, expected a file")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            (
                "pretrain",
                "--spec",
                "resnet18",
                "--width-mult",
                "nan",
                "--data",
                "synthetic-cifar100:{d}",
                "--out",
                "{o}",
            ),
            "width_mult must be a finite number, got nan",
        ),
        (
            (
                "finetune",
                "--spec",
                "resnet18",
                "--data",
                "synthetic-tinyperson:{d}",
                "--out",
                "{o}",
                "--detector-option",
                "box_batch_size_per_image=abc",
            ),
            "detector option box_batch_size_per_image of faster_rcnn must be an integer (default 512), got 'abc'",
        ),
        (
            (
                "finetune",
                "--spec",
                "resnet18",
                "--data",
                "synthetic-tinyperson:{d}",
                "--out",
                "{o}",
                "--tile",
                "32x32",
                "--overlap",
                "31",
            ),
            "tile overlap must be an integer from 0 to 16",
        ),
        (
            ("export", "resnet18", "--to", "onnx", "--input", "10000x10000", "--out", "{o}"),
            "export input must be at most 4096 px a side, got 10000x10000",
        ),
        (
            ("export", "resnet18", "--to", "onnx", "--input", "99999999999999x9", "--out", "{o}"),
            "input size must be at most 16384 px a side",
        ),
        (("solve", "--space", "{t}"), "is a directory, expected a JSON or YAML file"),
        (("export", "resnet18", "--to", "onnx", "--mmdet-version", "2", "--out", "{o}"), "applies to --to mmdet only"),
        (("evaluate", "--gt", "{t}", "--dets", "{t}"), "--gt {t}: is a directory, expected a COCO JSON file"),
        (("tune", "{t}"), "is a directory, expected a study file"),
    ],
)
def test_bad_values_exit_2_with_one_line(args, message, tmp_path):
    fill = {"d": tmp_path / "data", "o": tmp_path / "out", "t": tmp_path}
    proc = _run(*(a.format(**fill) for a in args))
    _one_line(proc, message.format(**fill))
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_dashboard_without_its_packages_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    from bhsearch.cli import _preflight
    from bhsearch.errors import UsageError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "aiohttp" else real(name))
    with pytest.raises(UsageError, match=r"missing aiohttp.*pip install 'bhsearch\[dashboard\]'"):
        _preflight.check_dashboard("127.0.0.1")
    _preflight.check_dashboard(None)  # no dashboard asked for: nothing needed


def test_dataloader_worker_error_is_one_line():
    torch = pytest.importorskip("torch")
    from bhsearch.cli import one_line
    from bhsearch.errors import DataError

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise DataError(f"img{i}.jpg: cannot decode image (Truncated File Read)")

    with pytest.raises(DataError) as info:
        list(torch.utils.data.DataLoader(Broken(), num_workers=2))
    assert "Original Traceback" in str(info.value)  # what the CLI printed before
    assert one_line(info.value) in {f"img{i}.jpg: cannot decode image (Truncated File Read)" for i in range(4)}

"""The GPU verification scripts run (tiny, on the CPU) and their studies validate."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_throughput_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "t.json"
    args = "--device cpu --amp off --spec resnet18 --width-mult 0.125 --batch 2 --image-size 32 --classes 10"
    args += f" --tile 128x96 --fpn-channels 16 --steps 2 --warmup 1 --repeats 1 --threads 1 --json {out}"
    assert load("gpu_throughput").main(args.split()) == 0
    result = json.loads(out.read_text())
    assert [row["stage"] for row in result["rows"]] == ["pretrain", "finetune"]
    for row in result["rows"]:
        assert row["ours_images_per_s"] > 0 and row["bare_images_per_s"] > 0
        assert row["ours_peak_bytes"] is None and row["analytic_backbone_bytes"] > 0  # no CUDA counter here
    assert result["rows"][1]["tiles_per_step"] == 2
    printed = capsys.readouterr().out
    assert "overhead" in printed and "n/a (no CUDA counter)" in printed


def test_gpu_check_script_and_studies(tmp_path):
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
    from bhsearch.tune.study import load_study

    demo, frac = (load_study(p) for p in load("gpu_studies").write_studies(tmp_path))
    assert demo.width_mult == 1.0 and demo.resources.gpu == 1 and frac.resources.gpu == 0.25
    assert demo.stages.finetune.options["tile"] == [640, 512]
    assert demo.stages.pretrain.options["channels_last"] == "on"
    assert frac.search.num_samples == 4 and str(tmp_path) in frac.storage

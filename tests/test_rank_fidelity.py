"""Ranking fidelity: the statistics against hand algebra, the benchmark's candidates and analysis, its quick preset."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import t as student_t

from bhsearch.tune.stats import paired_difference, rank_fidelity

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("rank_fidelity", ROOT / "benchmarks" / "rank_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFERENCE = {"a": [0.0, 2.0], "b": [2.0, 4.0], "c": [1.0, 3.0], "d": [4.0, 4.0]}  # means 1, 3, 2, 4


def test_rank_fidelity_point_values_match_hand_counts():
    # signal order a < b < c < d, reference order a < c < b < d: one discordant pair (b, c) of six
    out = rank_fidelity({"a": 1, "b": 2, "c": 3, "d": 4}, REFERENCE)
    assert out["kendall"] == pytest.approx((5 - 1) / 6)
    assert out["spearman"] == pytest.approx(1 - 6 * (1 + 1) / (4 * (16 - 1)))  # 0.8
    assert out["pick"] == "d" and out["regret"] == 0.0
    assert out["kendall_low"] <= out["kendall"] <= out["kendall_high"]
    assert out == rank_fidelity({"a": 1, "b": 2, "c": 3, "d": 4}, REFERENCE)  # seeded: reproducible


def test_regret_is_the_best_mean_minus_the_picks_mean_with_a_seed_interval():
    out = rank_fidelity({"a": 9, "b": 2, "c": 3, "d": 4}, REFERENCE)
    assert out["pick"] == "a" and out["regret"] == pytest.approx(4.0 - 1.0)
    # seeds resampled: a's mean is 0, 1 or 2 and d's always 4, so the regret lies in [2, 4]
    assert 2.0 <= out["regret_low"] <= 3.0 <= out["regret_high"] <= 4.0


def test_a_perfect_signal_without_seed_noise_is_perfect_in_every_resample():
    reference = {k: [float(i)] * 3 for i, k in enumerate("abcde")}
    out = rank_fidelity({k: float(i) for i, k in enumerate("abcde")}, reference)
    values = [out[k] for k in ("kendall", "kendall_low", "kendall_high", "spearman", "spearman_low", "spearman_high")]
    assert values == pytest.approx([1.0] * 6)
    assert (out["regret_low"], out["regret_high"]) == (0.0, 0.0)


def test_a_constant_signal_has_no_correlation_and_missing_values_are_left_out():
    out = rank_fidelity({"a": 1, "b": 1, "c": 1, "d": 1}, REFERENCE)
    assert out["kendall"] is None and out["spearman"] is None and out["pick"] == "d"  # ties: the last name
    out = rank_fidelity({"a": 1, "b": float("nan"), "c": 3}, REFERENCE)
    assert out["kendall"] is None and out["pick"] == "c"  # two usable candidates: no correlation


def test_paired_difference_is_a_t_interval_over_pairs():
    d = paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])  # differences 2, 3, 4: mean 3, sd 1
    half = student_t.ppf(0.975, 2) / math.sqrt(3)
    assert d["mean"] == 3.0 and d["n"] == 3 and d["diffs"] == [2.0, 3.0, 4.0]
    assert (d["low"], d["high"]) == pytest.approx((3 - half, 3 + half))
    assert half == pytest.approx(2.48414, abs=1e-5)
    one = paired_difference([1.0], [0.5])
    assert one["mean"] == 0.5 and one["low"] is None


def test_candidates_span_stems_and_the_control_is_cost_matched_and_coarse(tmp_path):
    from bhsearch.cost import count
    from bhsearch.solver import resnet_stem_code
    from bhsearch.spec import get_spec

    bench = load_benchmark()
    study = bench.load_demo_study(ROOT / "studies" / "demo.yaml", {}, tmp_path)
    candidates = bench.pick_candidates(study, 5)
    labels = [label for label, _ in candidates]
    assert labels == ["base", "paper", "control", "pick1", "pick2", "pick3", "pick4", "pick5"]
    assert candidates == bench.pick_candidates(study, 5)  # deterministic
    specs = [get_spec(sid) for _, sid in candidates]
    assert len({s.id for s in specs}) == 8
    assert len({resnet_stem_code(s) for s in specs[3:]}) == 5  # one pick per non-base stem
    base = count(specs[0], (640, 512)).flops
    for spec in specs:
        assert abs(count(spec, (640, 512)).flops / base - 1) < 0.02
    control = specs[2]
    assert control.out_strides == (8, 16, 32, 64) and specs[0].out_strides == (4, 8, 16, 32)
    assert study.stages.pretrain.data.endswith(str(tmp_path / "data" / "cifar100"))


def test_gpu_preset_overrides_validate(tmp_path):
    bench = load_benchmark()
    study = bench.load_demo_study(ROOT / "studies" / "demo.yaml", bench.PRESETS["gpu"]["study"], tmp_path)
    assert study.width_mult == 1.0 and study.stages.finetune.options["tile"] == [640, 512]
    assert study.stages.finetune.options["device"] == "cuda"


def _result(seed, ap, tiny1=None, budget="reference", evals=None, top1=10.0):
    return {"seed": seed, "budget": budget, "AP50_tiny": ap, "AP50_tiny1": tiny1, "top1": top1, "evals": evals or {}}


def test_analysis_pairs_seeds_and_reads_the_first_rung():
    bench = load_benchmark()
    rows = {
        "base": {"spec_id": "b", "reference": [_result(0, 10.0, 5.0), _result(1, 12.0, 6.0)],
                 "demo": _result(0, 8.0, budget="demo", evals={"3": 4.0, "6": 8.0}, top1=20.0)},
        "paper": {"spec_id": "p", "reference": [_result(0, 15.0), _result(1, 18.0)],
                  "demo": _result(0, 9.0, budget="demo", evals={"6": 9.0, "3": 7.0}, top1=15.0)},
        "control": {"spec_id": "c", "reference": [_result(0, 4.0, 1.0), _result(1, 5.0, 1.0)], "demo": None},
    }  # fmt: skip
    signals = bench.signal_table(rows, {"base": {"params": 2.0, "score_seconds": 1.0}, "paper": {"params": 1.0}})
    assert signals["first-rung AP"] == {"base": 4.0, "paper": 7.0}
    assert signals["proxy top-1"] == {"base": 20.0, "paper": 15.0} and "score_seconds" not in signals
    analysis = bench.analyse(rows, signals)
    assert analysis["paper_minus_base"]["diffs"] == [5.0, 6.0]
    assert analysis["control_minus_base"]["mean"] == pytest.approx(-6.5)
    assert analysis["control_minus_base_tiny1"]["diffs"] == [-4.0, -5.0]
    assert analysis["noise"]["df"] == 3
    assert analysis["fidelity"]["params"]["pick"] == "base"


@pytest.mark.slow
def test_quick_preset_runs_end_to_end(tmp_path):
    out = tmp_path / "rf"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "rank_fidelity.py"), "--preset", "quick", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    report = (out / "report.md").read_text()
    for signal in ("demo AP", "first-rung AP", "proxy top-1", "zen@320x256", "synflow@32x32", "params", "bh_share"):
        assert f"| {signal} |" in report
    assert "paper BH - base" in report and "positive control" in report
    results = json.loads((out / "results.json").read_text())
    assert all(len(row["reference"]) == 2 and row["demo"] for row in results["rows"].values())
    assert len(list((out / "plots").glob("*.png"))) >= 15
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # finished jobs are skipped
    assert rerun.returncode == 0 and "jobs to run" not in rerun.stdout

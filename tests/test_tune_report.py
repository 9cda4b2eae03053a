"""Report: ranking, Pareto front, Kendall's tau, error EDFs and PNG plots, via the API and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from scipy.stats import kendalltau

from bhsearch.errors import UsageError
from bhsearch.report import build_report, edf, kendall_tau, pareto_front
from bhsearch.spec import get_spec
from bhsearch.tune.results import COLUMNS, results_table
from bhsearch.tune.runner import STUDY_FILE
from bhsearch.tune.study import parse_study

PNG = b"\x89PNG\r\n\x1a\n"


def test_pareto_front():
    costs = [1.0, 2.0, 3.0, 2.0, 1.0]
    values = [10.0, 20.0, 15.0, 20.0, 5.0]
    # (3, 15) is beaten by (2, 20); (1, 5) by (1, 10); the two (2, 20) tie and both stay
    assert pareto_front(costs, values) == [True, True, False, True, False]


def test_kendall_tau_matches_scipy_and_needs_three_pairs():
    proxy = [10.0, 20.0, 30.0, 40.0, None]
    final = [1.0, 3.0, 2.0, 4.0, 9.0]
    tau, p, n = kendall_tau(proxy, final)
    ref = kendalltau([10, 20, 30, 40], [1, 3, 2, 4])
    assert n == 4 and tau == pytest.approx(ref.statistic) and tau == pytest.approx(4 / 6)
    assert p == pytest.approx(ref.pvalue)
    assert kendall_tau([1.0, 2.0], [2.0, 1.0]) == (None, None, 2)


def test_edf():
    xs, ys = edf([30.0, 10.0, float("nan"), 20.0])
    assert xs == [10.0, 20.0, 30.0] and ys == pytest.approx([1 / 3, 2 / 3, 1.0])


ROWS = [  # (blocks, role, top1, AP50_tiny, status, epochs, latency)
    ("resnet50", "base", 30.0, 5.0, "completed", 4, 10.0),
    ("bh-resnet50", "paper", 25.0, 8.0, "completed", 4, 14.0),
    ("resnet:bottleneck:k5s1p:4-3-3-1:s2-2-2-2", "candidate", 28.0, 7.0, "completed", 4, 12.0),
    ("resnet:bottleneck:k3s1p:8-5-2-1:s2-2-2-2", "candidate", 20.0, None, "stopped", 2, 15.0),
    ("resnet:bottleneck:k7s2p:4-2-5-5", "candidate", None, None, "error", 0, None),
]


@pytest.fixture()
def run_dir(tmp_path):
    from bhsearch.cost import count

    study = parse_study(
        {
            "name": "r",
            "base": "resnet50",
            "storage": str(tmp_path),
            "stages": {
                "pretrain": {"data": "cifar100:/d", "epochs": 2},
                "finetune": {"data": "tinyperson:/d", "epochs": 2},
            },
        }
    )
    rows = []
    for i, (ref, role, top1, ap, status, epochs, lat) in enumerate(ROWS):
        spec = get_spec(ref)
        cost = count(spec, "640x512")
        score = ap if status == "completed" else (top1 or 0) - 1000.0 * (4 - epochs)
        rows.append(
            {
                "trial_id": f"t{i}",
                "spec_id": spec.id,
                "role": role,
                "family": "resnet",
                "blocks": "-".join(map(str, spec.blocks)),
                "stem": spec.id.split(":")[2],
                "params": cost.params,
                "macs": cost.macs,
                "flops": cost.flops,
                "activations": cost.activations,
                "bh_share": 0.5,
                "bottom_heavy": spec.blocks[0] > 3,
                "latency_ms": lat,
                "top1": top1,
                "AP50_tiny": ap,
                "score": None if status == "error" else score,
                "epochs": epochs,
                "max_epochs": 4,
                "status": status,
                "error": "RuntimeError: boom" if status == "error" else None,
            }
        )
    out = tmp_path / "r"
    out.mkdir()
    (out / STUDY_FILE).write_text(json.dumps(study.model_dump()))
    df = results_table(list(reversed(rows)))
    df.to_parquet(out / "results.parquet", index=False)
    return out


def test_results_table_ranks_completed_by_score_then_the_rest(run_dir):
    import pandas as pd

    df = pd.read_parquet(run_dir / "results.parquet")
    assert list(df.columns) == COLUMNS
    assert list(df["trial_id"]) == ["t1", "t2", "t0", "t3", "t4"]
    assert list(df["rank"]) == [1, 2, 3, 4, 5]


def test_build_report_writes_plots_and_tau(run_dir):
    info = build_report(run_dir, top=3)
    assert [r["trial_id"] for r in info["ranking"]] == ["t1", "t2", "t0"]
    assert info["counts"] == {"completed": 3, "stopped": 1, "error": 1}
    assert info["epochs_spent"] == 14 and info["epochs_all_to_end"] == 20
    ref = kendalltau([30.0, 25.0, 28.0], [5.0, 8.0, 7.0]).statistic
    assert info["kendall_n"] == 3 and info["kendall_tau"] == pytest.approx(ref) == pytest.approx(-1.0)
    assert len(info["plots"]) == 4
    for path in info["plots"]:
        with open(path, "rb") as fh:
            assert fh.read(8) == PNG


def test_report_cli_json_csv_and_errors(run_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bhsearch", "report", str(run_dir), "--json", "--no-plots"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ranking"][0]["trial_id"] == "t1"
    proc = subprocess.run(
        [sys.executable, "-m", "bhsearch", "report", str(run_dir), "--csv", "--top", "2", "--no-plots"],
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines[0].startswith("rank,trial_id,spec_id") and len(lines) == 3
    proc = subprocess.run(
        [sys.executable, "-m", "bhsearch", "report", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such run folder" in proc.stderr


def test_report_on_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="not a study run folder"):
        build_report(tmp_path)

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
                "search_score": None if status == "error" else score,
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


def test_ranking_completed_then_stopped_by_epoch_reached_then_metric_there():
    from bhsearch.tune.trial import fidelity_score

    base = {"params": 1, "macs": 1, "flops": 1, "activations": 1, "max_epochs": 8}
    rows = [  # (trial, status, epochs, metric at the last epoch): the searcher's score is fidelity-aware
        ("late-weak", "stopped", 6, 5.0),
        ("early-strong", "stopped", 2, 90.0),
        ("done-weak", "completed", 8, 1.0),
        ("error", "error", 1, None),
        ("late-strong", "stopped", 6, 7.5),
        ("open", "unfinished", 3, 50.0),
        ("done-strong", "completed", 8, 4.0),
    ]
    df = results_table(
        [
            {**base, "trial_id": t, "spec_id": t, "status": s, "epochs": e, "search_score": fidelity_score(v, e, 8)}
            for t, s, e, v in rows
        ]
    )
    assert list(df["trial_id"]) == [
        "done-strong",
        "done-weak",
        "late-strong",
        "late-weak",
        "early-strong",
        "open",
        "error",
    ]
    assert "score" not in df.columns and df["search_score"].iloc[0] == 4.0


def test_status_text():
    from bhsearch.report import status_text

    assert status_text("completed", 4, 4) == "completed"
    assert status_text("stopped", 2, 8) == "stopped by ASHA at epoch 2 of 8"
    assert status_text("stopped", 2, 8, scheduler="fifo") == "stopped at epoch 2 of 8"
    assert status_text("error", 0, 4) == "error"
    assert status_text("error", 3, 4) == "error at epoch 3 of 4"
    assert status_text("unfinished", 1, 4) == "unfinished at epoch 1 of 4"
    assert status_text(None, None, None) == "unfinished"


def test_arch_legend_explains_the_codes():
    from bhsearch.report import arch_legend, short_arch

    bh = get_spec("bh-resnet50").scaled(0.0625).id
    assert short_arch(bh) == "k3s1pc4 7-6-2-1 w4-8-16-32 s2-2-2-2"
    assert arch_legend([get_spec("resnet50").id, bh, "not an id"]) == [
        "arch: k3s1pc4 = stem 3x3 conv (k3), stride 1 (s1), 3x3 max-pool (p), 4 channels (c4; 64 if absent); "
        "7-6-2-1 = bottleneck blocks per stage; w4-8-16-32 = stage widths (3x3 conv channels, output x4; "
        "64-128-256-512 if absent); s2-2-2-2 = stage strides (1-2-2-2 if absent)"
    ]
    assert arch_legend([get_spec("resnet50").id]) == [
        "arch: k7s2p = stem 7x7 conv (k7), stride 2 (s2), 3x3 max-pool (p), 64 channels; 3-4-6-3 = bottleneck "
        "blocks per stage; w.. = stage widths (3x3 conv channels, output x4; 64-128-256-512 if absent); "
        "s.. = stage strides (1-2-2-2 if absent)"
    ]
    hr = get_spec("hrnet32").id
    assert short_arch(hr) == "w32 s22 4b64 1x4.4 4x4.4.4 3x4.4.4.4"
    assert arch_legend([hr]) == [
        "arch: w32 = branch widths 32-64-128-256 (one width: doubling per branch); s22 = stem conv strides 2 and 2 "
        "(p: max-pool after stage 1; cN: N stem channels, 64 if absent); 4b64 = stage 1: 4 bottleneck blocks "
        "(b; a: basic) of width 64; 1x4.4 = a later stage: 1 module with 4 blocks on each of its 2 branches "
        "(a trailing b: bottleneck blocks)"
    ]


def test_print_report_shows_metric_epoch_readable_status_and_legend(run_dir):
    import io

    from rich.console import Console

    from bhsearch.report import print_report

    info = build_report(run_dir, plots=False)
    out = io.StringIO()
    print_report(info, Console(file=out, width=400))
    lines = out.getvalue().splitlines()
    header = next(ln for ln in lines if "rank" in ln and "arch" in ln)
    cells = [c.strip() for c in header.strip("┃ ").split("┃")]
    assert cells == [
        "rank",
        "arch",
        "role",
        "params",
        "activations",
        "latency_ms",
        "top1",
        "AP50_tiny",
        "mean (seeds)",
        "95 % interval",
        "vs base",
        "epochs",
        "status",
    ]
    rows = {ln.split("│")[2].strip(): [c.strip() for c in ln.split("│")[1:-1]] for ln in lines if ln.startswith("│")}
    stopped = rows["k3s1p 8-5-2-1 s2-2-2-2"]
    # top1 at its last epoch, no AP yet; no repeats in this study: no interval, no verdict
    assert stopped[6:] == ["20.00", "-", "-", "-", "-", "2", "stopped by ASHA at epoch 2 of 4"]
    assert rows["k3s1p 7-6-2-1 s2-2-2-2"][6:] == ["25.00", "8.00", "8.00 (1)", "-", "-", "4", "completed"]
    assert rows["k7s2p 4-2-5-5"][6:] == ["-", "-", "-", "-", "-", "0", "error"]
    assert "-1998" not in out.getvalue() and "score" not in header
    legend = [ln for ln in lines if ln.startswith("arch: ")]  # explained on the best of the ids with most parts
    assert legend == [
        "arch: k3s1p = stem 3x3 conv (k3), stride 1 (s1), 3x3 max-pool (p), 64 channels; 7-6-2-1 = bottleneck "
        "blocks per stage; w.. = stage widths (3x3 conv channels, output x4; 64-128-256-512 if absent); "
        "s2-2-2-2 = stage strides (1-2-2-2 if absent)"
    ]
    assert lines.index(legend[0]) > max(i for i, ln in enumerate(lines) if ln.startswith("└"))  # under the table


def test_tables_of_older_versions_read_score_as_search_score(run_dir):
    import pandas as pd

    from bhsearch.tune.results import load_results

    df = pd.read_parquet(run_dir / "results.parquet").rename(columns={"search_score": "score"})
    (run_dir / "results.parquet").unlink()
    df.to_csv(run_dir / "results.csv", index=False)
    again = load_results(run_dir)
    assert "score" not in again.columns and list(again["search_score"])[:3] == [8.0, 7.0, 5.0]

"""The noise floor: pooled seed spread, intervals, comparisons, best set, tau interval, and repeats in a study."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy.stats import kendalltau
from scipy.stats import t as student_t

from bhsearch.tune.results import COLUMNS, with_noise_floor
from bhsearch.tune.stats import best_set, kendall_tau_interval, noise_floor


def test_pooled_std_and_interval_match_the_textbook_formula():
    floor = noise_floor({"a": [1.0, 3.0], "b": [2.0, 4.0, 6.0], "single": [9.0]})
    # sum of squares 2 + 8 over df (2-1) + (3-1): the one-seed spec adds nothing
    assert floor.df == 3 and floor.std == pytest.approx(math.sqrt(10 / 3))
    t = student_t.ppf(0.975, 3)
    assert floor.t == pytest.approx(t) == pytest.approx(3.182446, abs=1e-6)
    assert floor.half_width(2) == pytest.approx(t * math.sqrt(10 / 3) / math.sqrt(2))
    # the pooled t-test margin for n = 1 vs n = 2: t * s * sqrt(1 + 1/2) = 7.12
    margin = t * math.sqrt(10 / 3) * math.sqrt(1.5)
    assert margin == pytest.approx(7.1160, abs=1e-3)
    assert floor.differs(10.0 + margin + 0.01, 1, 10.0, 2) == 1
    assert floor.differs(10.0 - margin - 0.01, 1, 10.0, 2) == -1
    assert floor.differs(10.0 + margin - 0.01, 1, 10.0, 2) == 0


def test_no_repeats_means_no_noise_floor():
    floor = noise_floor({"a": [1.0], "b": [float("nan"), 2.0]})
    assert floor.std is None and floor.df == 0 and floor.t is None and floor.half_width(1) is None
    assert floor.differs(100.0, 1, 0.0, 1) is None
    assert best_set({"a": (5.0, 1), "b": (7.0, 1)}, floor) == ["b"]  # without a floor only the top


def test_best_set_holds_every_spec_within_noise_of_the_top():
    floor = noise_floor({"ref": [10.0, 12.0]})  # std sqrt(2), df 1, t = 12.706
    margin_1v1 = student_t.ppf(0.975, 1) * math.sqrt(2) * math.sqrt(2)  # 25.4 points between two one-seed specs
    assert margin_1v1 == pytest.approx(25.41, abs=0.01)
    means = {"top": (50.0, 1), "close": (50.0 - margin_1v1 + 0.1, 1), "far": (50.0 - margin_1v1 - 0.1, 1)}
    assert best_set(means, floor) == ["top", "close"]


def test_tau_interval_is_a_seeded_bootstrap():
    x, y = [1, 2, 3, 4, 5, 6], [1, 3, 2, 5, 4, 6]
    lo, hi = kendall_tau_interval(x, y, seed=0)
    assert (lo, hi) == kendall_tau_interval(x, y, seed=0)  # reproducible
    tau = kendalltau(x, y).statistic
    assert lo <= tau <= hi and -1.0 <= lo < hi <= 1.0
    assert kendall_tau_interval([1, 2, 3, 4], [2, 4, 6, 8]) == (1.0, 1.0)  # concordant in every resample
    assert kendall_tau_interval([1, 2], [1, 2]) == (None, None)


def _row(trial_id, spec_id, role, value, status="completed", repeat=0):
    row = dict.fromkeys(c for c in COLUMNS if c != "rank")
    row.update(trial_id=trial_id, spec_id=spec_id, role=role, repeat=repeat, AP50_tiny=value, status=status)
    return row


def test_results_get_intervals_comparisons_and_the_best_set():
    rows = [
        _row("1", "base", "base", 20.0),
        _row("2", "base", "base", 22.0, repeat=1),
        _row("3", "paper", "paper", 30.0),
        _row("4", "paper", "paper", 28.0, repeat=1),
        _row("5", "cand", "candidate", 60.0),
        _row("6", "low", "candidate", 5.0, status="stopped"),
    ]
    df = with_noise_floor(pd.DataFrame(rows).assign(rank=0), "AP50_tiny")
    std = math.sqrt((2 + 2) / 2)  # pooled over base and paper, df 2
    t = student_t.ppf(0.975, 2)
    by = {r.trial_id: r for r in df.itertuples()}
    assert by["1"].metric_mean == 21.0 and by["2"].metric_mean == 21.0 and by["1"].metric_seeds == 2
    assert by["1"].ci95_high - 21.0 == pytest.approx(t * std / math.sqrt(2))
    assert by["5"].ci95_low == pytest.approx(60.0 - t * std)
    assert by["6"].ci95_low is None or pd.isna(by["6"].ci95_low)
    low = with_noise_floor(pd.DataFrame([*rows[:4], _row("9", "weak", "candidate", 1.0)]).assign(rank=0), "AP50_tiny")
    weak = low[low["spec_id"] == "weak"].iloc[0]
    assert weak["ci95_low"] == 0.0 and weak["ci95_high"] == pytest.approx(1.0 + t * std)  # clipped at 0 %
    assert by["1"].vs_base == "base" and by["3"].vs_base == "better"  # 9 > t * s * 1 = 6.09
    assert t * std * 1.0 == pytest.approx(6.085, abs=1e-3)
    assert by["5"].vs_base == "better" and by["6"].vs_base is None and pd.isna(by["6"].ci95_low)
    assert by["5"].in_best_set and not by["3"].in_best_set  # 60 - 29 > t * s * sqrt(1 + 1/2)
    assert list(df["trial_id"]) == ["5", "3", "4", "1", "2", "6"] and list(df["rank"]) == [1, 2, 3, 4, 5, 6]


def _first_row(run_dir, trial_id):
    import json

    return json.loads((run_dir / f"trial_{trial_id}" / "result.json").read_text().splitlines()[0])


@pytest.mark.ray
def test_repeats_run_to_the_end_with_other_seeds_and_give_the_noise_floor(ray_session, synthetic_data, tmp_path):
    from _tune_helpers import write_study

    from bhsearch.report import build_report
    from bhsearch.tune.runner import run_study
    from bhsearch.tune.study import load_study

    path = write_study(
        tmp_path,
        synthetic_data,
        "noise",
        noise={"repeats": 2},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3},
    )
    outcome = run_study(load_study(path), verbose=0)
    df = outcome.table
    repeats = df[df["repeat"] == 1]
    assert len(df) == 5 and sorted(repeats["role"]) == ["base", "paper"]
    assert (repeats["status"] == "completed").all() and (repeats["epochs"] == 2).all()  # ASHA never stops them
    for role in ("base", "paper"):
        seeds = df[(df["role"] == role) & (df["status"] == "completed")]
        assert len(seeds) == 2 and seeds["metric_seeds"].tolist() == [2, 2]
        losses = {_first_row(outcome.run_dir, t)["pretrain_loss"] for t in seeds["trial_id"]}
        assert len(losses) == 2  # another seed: another initialisation and data order
    info = build_report(outcome.run_dir, plots=False)
    noise = info["noise"]
    assert noise["df"] == 2 and set(noise["groups"]) == set(df.loc[df["repeat"] == 1, "spec_id"])
    manual = noise_floor(noise["groups"]).std
    assert noise["seed_std"] == pytest.approx(manual)
    assert noise["best_set"] and noise["best_set"][0] == df.iloc[0]["spec_id"]
    import io

    from rich.console import Console

    from bhsearch.report import print_report

    out = io.StringIO()
    print_report(info, Console(file=out, width=400))
    lines = out.getvalue().splitlines()
    floor_line = next(ln for ln in lines if ln.startswith("noise floor: "))
    assert f"seed std of AP50_tiny {noise['seed_std']:.2f} points" in floor_line and "df 2" in floor_line
    best_line = next(ln for ln in lines if ln.startswith("best: "))
    assert f"({len(noise['best_set'])} not significantly worse than the top at 95 %)" in best_line


def test_plots_draw_one_point_per_completed_spec_and_one_per_stopped_trial():
    from bhsearch.report import plot_points

    rows = [
        _row("1", "base", "base", 20.0),
        _row("2", "base", "base", 22.0, repeat=1),
        _row("3", "cand", "candidate", 30.0),
        _row("4", "low", "candidate", 5.0, status="stopped"),
        _row("5", "bad", "candidate", None, status="error"),
        _row("6", "run", "candidate", 7.0, status="unfinished"),
    ]
    # x differs between the base's two seeds (as proxy top-1 does)
    for row, x, bh in zip(rows, [1e6, 3e6, 2e6, 3e6, 4e6, 5e6], [False, False, True, True, True, False], strict=True):
        row.update(activations=x, bottom_heavy=bh)
    df = with_noise_floor(pd.DataFrame(rows).assign(rank=0), "AP50_tiny")
    points = plot_points(df, "activations", "AP50_tiny", scale=1e6)
    by = {(p["spec_id"], p["status"]): p for p in points}
    assert len(points) == 4  # the base's two seeds share one point; the errored trial has no metric
    base = by[("base", "completed")]
    half = noise_floor({"base": [20.0, 22.0]}).half_width(2)
    assert (base["x"], base["y"]) == (2.0, 21.0) and base["err"] == pytest.approx((half, half))
    one = noise_floor({"b": [20.0, 22.0]}).half_width(1)  # 12.7: the interval [17.3, 42.7] needs no clipping
    assert by[("cand", "completed")]["err"] == pytest.approx((one, one))
    stopped = by[("low", "stopped")]
    assert (stopped["y"], stopped["err"], stopped["bottom_heavy"]) == (5.0, None, True)
    assert by[("run", "unfinished")]["y"] == 7.0


def test_plots_are_written_with_every_status(tmp_path):
    from bhsearch.report import PLOTS, make_plots

    rows = [
        _row(str(i), f"s{i}", "candidate", 10.0 + i, status=st) for i, st in enumerate(["completed"] * 3 + ["stopped"])
    ]
    df = with_noise_floor(pd.DataFrame(rows).assign(rank=0), "AP50_tiny")
    for col, values in (("activations", [1e6, 2e6, 3e6, 4e6]), ("params", [1e5] * 4), ("flops", [1e9] * 4)):
        df[col] = values
    df["latency_ms"], df["top1"], df["bottom_heavy"] = [1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], False
    paths = make_plots(df, tmp_path, "AP50_tiny", noise={"seed_std": None, "df": 0})
    assert [p.rsplit("/", 1)[-1] for p in paths] == list(PLOTS)
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in PLOTS)


def test_a_proxy_only_table_shows_top1_once():
    import io

    from rich.console import Console

    from bhsearch.report import print_report

    rows = [_row("1", "base", "base", None) | {"top1": 12.5, "epochs": 2, "max_epochs": 2}]
    df = with_noise_floor(pd.DataFrame(rows).assign(rank=1), "top1")
    info = {"metric": "top1", "study": "p", "ranking": df.to_dict("records"), "counts": {"completed": 1}}
    info.update(trials=1, epochs_spent=2, epochs_all_to_end=2, best=None, noise={"repeats": 1, "seed_std": None})
    out = io.StringIO()
    print_report(info, Console(file=out, width=400))
    header = next(ln for ln in out.getvalue().splitlines() if "rank" in ln and "arch" in ln)
    assert [c.strip() for c in header.strip("┃ ").split("┃")].count("top1") == 1

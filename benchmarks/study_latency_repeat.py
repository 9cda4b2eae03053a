"""How reproducible is a study's latency column? Two back-to-back measurement runs, as the driver does them.

Takes a study file (default studies/demo.yaml), its base and paper specs plus the first N solver candidates,
and measures every spec twice with the study's latency settings (``bhsearch.tune.latency.update_latency``
into two fresh folders: one spec at a time, ``latency.threads`` threads, warm-up, repeats). Prints each
spec's two medians, their relative difference and the spread (p10-p90 in % of the median), then the worst
difference, with the load average before and after (the machine may be shared).

    python benchmarks/study_latency_repeat.py studies/demo.yaml --candidates 4 --reps 10 --clock wall
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", default="studies/demo.yaml")
    p.add_argument("--candidates", type=int, default=0, help="also the first N solver candidates (default 0)")
    p.add_argument("--reps", type=int, help="override latency.reps")
    p.add_argument("--warmup", type=int, help="override latency.warmup")
    p.add_argument("--threads", type=int, help="override latency.threads")
    p.add_argument("--clock", choices=("wall", "cpu"), help="override latency.clock")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from bhsearch.tune.latency import latency_size, update_latency
    from bhsearch.tune.runner import solver_candidates
    from bhsearch.tune.study import load_study

    study = load_study(args.study)
    overrides = {k: getattr(args, k) for k in ("reps", "warmup", "threads", "clock") if getattr(args, k) is not None}
    if overrides:
        study = study.model_copy(update={"latency": study.latency.model_copy(update=overrides)})
    specs = [(role, s.id) for role, s in study.reference_specs()]
    if args.candidates:
        specs += [("candidate", s.id) for s in solver_candidates(study)[: args.candidates]]
    ids = [s for _, s in specs]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    runs = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(update_latency(tmp, study, ids)["specs"])
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    rows = []
    for role, spec_id in specs:
        a, b = runs[0][spec_id], runs[1][spec_id]
        diff = 100.0 * abs(a["latency_ms"] - b["latency_ms"]) / min(a["latency_ms"], b["latency_ms"])
        rows.append(
            {
                "role": role,
                "spec_id": spec_id,
                "run1_ms": a["latency_ms"],
                "run2_ms": b["latency_ms"],
                "diff_pct": diff,
                "spread1_pct": a["latency_spread_pct"],
                "spread2_pct": b["latency_spread_pct"],
                "min1_ms": a["latency_min_ms"],
                "min2_ms": b["latency_min_ms"],
                "min_diff_pct": 100.0
                * abs(a["latency_min_ms"] - b["latency_min_ms"])
                / min(a["latency_min_ms"], b["latency_min_ms"]),
            }
        )
    cfg = study.latency
    summary = {
        "study": args.study,
        "input_size": latency_size(study),
        "threads": cfg.threads,
        "warmup": cfg.warmup,
        "reps": cfg.reps,
        "clock": cfg.clock,
        "loadavg_before": load0,
        "loadavg_after": load1,
        "wall_s": wall,
        "max_diff_pct": max(r["diff_pct"] for r in rows),
        "max_min_diff_pct": max(r["min_diff_pct"] for r in rows),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(
        f"{args.study}: input {summary['input_size']}, {cfg.threads} thread(s), warmup {cfg.warmup}, reps {cfg.reps}, "
        f"clock {cfg.clock}; load {load0[0]:.2f} -> {load1[0]:.2f}; {wall:.1f} s"
    )
    print(
        f"{'role':<10} {'median 1':>9} {'median 2':>9} {'diff %':>7} {'spread %':>11} {'min 1':>7} {'min 2':>7} {'diff %':>7}"
    )
    for r in rows:
        spread = f"{r['spread1_pct']:.0f}/{r['spread2_pct']:.0f}"
        print(
            f"{r['role']:<10} {r['run1_ms']:9.2f} {r['run2_ms']:9.2f} {r['diff_pct']:7.1f} {spread:>11} "
            f"{r['min1_ms']:7.2f} {r['min2_ms']:7.2f} {r['min_diff_pct']:7.1f}"
        )
    print(
        f"worst difference between the two runs: median {summary['max_diff_pct']:.1f} %, "
        f"minimum {summary['max_min_diff_pct']:.1f} %"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

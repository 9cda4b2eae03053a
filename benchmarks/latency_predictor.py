"""Validate the latency predictor against measurements, held out, over independent profiles.

For every space (ResNet-50 and HRNet-32 at ``--scale`` of their widths, their default design spaces),
runtime (``--runtimes``) and thread count (``--threads``), and for each of ``--profiles`` independent
repetitions: profile the space into a fresh lookup table and measure end-to-end inference latency of
``--train`` training networks (the base and random candidates) and ``--candidates`` held-out random
candidates in ``--rounds`` rounds, half before the profile and half after (a network's latency is combined
over its rounds as the table combines a unit's: the median of the rounds' medians, the least of their minima;
a slow drift of the machine's speed then cancels between table and measurement), then score on the held-out
networks only (MAPE, Spearman), for both statistics:

* ``predictor``: the table's prediction (sum of units + overhead term ``a + b x``, fitted by the profile on
  its own whole networks), fitted on nothing here;
* ``constant``: the sum of units + the median residual of the same whole networks (no boundary slope);
* ``flops`` / ``acts``: latency proportional to paper FLOPs / conv output elements, the factor fitted
  by least squares on the training networks (what matching on FLOPs or activations assumes);
* ``corrected``: the predictor times a per-stage correction, measured / predicted ~ sum_s c_s x
  (FLOP share of stage s), fitted by ridge least squares (towards c = 1) on the training networks;
* ``blend``: ``w`` x predictor + (1 - ``w``) x the ``flops`` baseline, ``w`` in [0, 1] fitted by least squares
  on the training networks: whether the table adds anything to FLOPs where the two score alike (``w`` is
  kept in the JSON).

Printed per space, runtime and threads: per profile the scores on ``--stat`` with the table's quality
warnings, then for each statistic (``--stat`` first) each method's mean, standard deviation and worst value
over the profiles, and the measurements' own repeatability (``repeat``: the mean relative
deviation of a held-out network's rounds from its latency, a floor under any method's MAPE). Numbers are
only meaningful on an idle machine (``uptime`` first).

    python benchmarks/latency_predictor.py --spaces resnet50,hrnet32 --scale 0.5 --threads 1 \\
        --runtimes torch,onnxruntime --profiles 3 --train 8 --candidates 20
    python benchmarks/latency_predictor.py --spaces resnet50 --scale 0.125 --input 64x48 \\
        --profiles 2 --train 3 --candidates 3 --reps 1       # smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("predictor", "constant", "corrected", "blend", "flops", "acts")
STATS = ("median", "min")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spaces", default="resnet50,hrnet32", help="comma-separated bases (default resnet50,hrnet32)")
    p.add_argument("--input", default="640x512", help="input size WIDTHxHEIGHT (default 640x512)")
    p.add_argument("--scale", type=float, default=0.5, help="width scale of every spec (default 0.5)")
    p.add_argument("--threads", default="1", help="comma-separated torch/onnxruntime thread counts (default 1)")
    p.add_argument("--runtimes", default="torch", help="comma-separated: torch, onnxruntime, compile (default torch)")
    p.add_argument(
        "--clock",
        default="auto",
        choices=["auto", "wall", "cpu"],
        help="timer: auto (the thread's CPU time with 1 thread: torch and onnxruntime then compute in the calling "
        "thread; wall time with more), wall or cpu",
    )
    p.add_argument("--profiles", type=int, default=3, help="independent profiles (and measurements) per setting")
    p.add_argument("--train", type=int, default=8, help="training networks for the fitted baselines (base first)")
    p.add_argument("--candidates", type=int, default=20, help="held-out random candidates of the space")
    p.add_argument("--max-blocks", type=int, default=8, help="cap on the depth per stage of random candidates")
    p.add_argument("--reps", type=int, default=3, help="timed end-to-end runs per network and round")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds over all networks per profile, half before it and half after (each: warm-up, --reps runs); a "
        "network's latency is the median of the rounds' medians (min: the least of their minima), so a slow drift "
        "of the machine's speed cancels between the profile and the measurements (default 2)",
    )
    p.add_argument(
        "--profile-reps", type=int, default=5, help="timed runs per unit in the profile, split over its rounds"
    )
    p.add_argument(
        "--stat",
        default="median",
        choices=["median", "min"],
        help="statistic of the repetitions printed per profile and summarised first (both are scored, for the "
        "table's prediction and the measured networks alike): median (default) or min (robust to other processes "
        "taking a core, which only ever adds time)",
    )
    p.add_argument("--ridge", type=float, default=1.0, help="ridge weight of the corrected predictor (towards 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    return p.parse_args()


def _machine() -> dict:
    """The CPU model, its count and the load average now: runs on different machines or under load are
    not comparable, so every log says which it had."""
    import os

    import torch

    from bhsearch.latency.measure import device_name
    from bhsearch.latency.profile import load_average

    return {"cpu": device_name(torch.device("cpu")), "cpus": os.cpu_count(), "load_start": load_average()}


def _candidates(base, n: int, max_blocks: int, rng: random.Random, exclude: set[str]):
    """``n`` distinct random candidates of the base's default design space (depth capped per stage)."""
    from bhsearch.solver import load_space, random_candidates

    out = random_candidates(load_space(None, base), base, n, rng.randrange(2**32), max_blocks, sorted(exclude))
    exclude.update(s.id for s in out)
    return out


def _measure_round(specs, args, size: str, threads: int, clock: str, runtime: str) -> dict[str, dict]:
    """One round: every spec measured once (warm-up, then ``--reps`` runs), in turn."""
    from bhsearch.latency import measure_latency

    return {
        spec.id: measure_latency(spec, size, threads=threads, warmup=1, reps=args.reps, clock=clock, runtime=runtime)
        for spec in specs
    }


def _rows(specs, table, rounds: list[dict[str, dict]], args, size: str, runtime: str) -> list[dict]:
    """Per spec and statistic: measured and predicted, combined over rounds as the table combines its own
    timings (median: the median of the rounds' medians; min: the least of their minima)."""
    from bhsearch.latency import predict_latency

    rows = []
    for spec in specs:
        runs = [r[spec.id] for r in rounds]
        row = {"spec": spec.id, "spread": statistics.median(m["spread"] for m in runs)}
        row["measured_median_s"] = statistics.median(m["median_s"] for m in runs)
        row["measured_min_s"] = min(m["min_s"] for m in runs)
        for stat in STATS:
            row[f"predicted_{stat}_s"] = predict_latency(spec, size, table, stat=stat, runtime=runtime)
            row[f"constant_{stat}_s"] = _constant_term_prediction(spec, table, size, runtime, stat)
        row["rounds_s"] = [m[f"{args.stat}_s"] for m in runs]
        row.update({f"{k}_s": row[f"{k}_{args.stat}_s"] for k in ("measured", "predicted", "constant")})
        rows.append(row)
    return rows


def units_time(spec, table, size: str, runtime: str, stat: str = "median") -> float:
    """The sum of the table's unit entries for ``spec`` (inference), without any overhead term."""
    from bhsearch.latency import predict_breakdown

    rows = predict_breakdown(spec, size, table, stat=stat, runtime=runtime)
    return sum(t for key, t in rows if key not in ("overhead", "boundary"))


def _constant_term_prediction(spec, table, size: str, runtime: str, stat: str) -> float:
    """The sum of the units plus the median residual of the table's whole networks: the overhead term
    without its boundary slope (the predictor before it had one), from the same measurements."""
    from bhsearch.latency.table import runtime_key

    nets = table.overhead[runtime_key(size, runtime)]["networks"]
    residual = statistics.median(n[f"inference_{stat}_measured_s"] - n[f"inference_{stat}_units_s"] for n in nets)
    return units_time(spec, table, size, runtime, stat) + residual


def _mape(pred: list[float], meas: list[float]) -> float:
    return 100 * statistics.fmean(abs(p - m) / m for p, m in zip(pred, meas, strict=True))


def _spearman(pred: list[float], meas: list[float]) -> float:
    from scipy import stats

    if len(pred) < 3:
        return float("nan")
    return float(stats.spearmanr(pred, meas).statistic)


def _fit_scale(x: list[float], y: list[float]) -> float:
    """Least-squares ``a`` of ``y ~ a x`` (through the origin)."""
    return sum(a * b for a, b in zip(x, y, strict=True)) / sum(a * a for a in x)


def _stage_shares(spec, size: str) -> list[float]:
    import bhsearch

    stages = bhsearch.count(spec, size).stages
    total = sum(s.flops for s in stages)
    return [s.flops / total for s in stages]


def _fit_correction(features: list[list[float]], ratios: list[float], ridge: float) -> list[float]:
    """Ridge least squares of ``ratio ~ features @ c`` pulled towards ``c = 1`` (no correction)."""
    import numpy as np

    x, r = np.asarray(features), np.asarray(ratios)
    k = x.shape[1]
    lhs = x.T @ x + ridge * np.eye(k)
    rhs = x.T @ r + ridge * np.ones(k)
    return list(np.linalg.solve(lhs, rhs))


def _fit_blend(pred: list[float], base: list[float], meas: list[float]) -> float:
    """Least-squares ``w`` in [0, 1] of ``meas ~ w pred + (1 - w) base``."""
    den = sum((p - b) ** 2 for p, b in zip(pred, base, strict=True))
    if den == 0:
        return 1.0
    num = sum((p - b) * (m - b) for p, b, m in zip(pred, base, meas, strict=True))
    return min(1.0, max(0.0, num / den))


def _evaluate(train_rows: list[dict], test_rows: list[dict], ridge: float, stat: str) -> dict[str, dict[str, float]]:
    """Every method's held-out MAPE and Spearman on ``stat`` (baselines and correction fitted on ``train_rows``)."""
    measured, predicted = f"measured_{stat}_s", f"predicted_{stat}_s"
    meas = [r[measured] for r in test_rows]
    a_flops = _fit_scale([r["flops"] for r in train_rows], [r[measured] for r in train_rows])
    a_acts = _fit_scale([r["acts"] for r in train_rows], [r[measured] for r in train_rows])
    coef = _fit_correction([r["shares"] for r in train_rows], [r[measured] / r[predicted] for r in train_rows], ridge)
    w = _fit_blend(
        [r[predicted] for r in train_rows],
        [a_flops * r["flops"] for r in train_rows],
        [r[measured] for r in train_rows],
    )
    preds = {
        "predictor": [r[predicted] for r in test_rows],
        "constant": [r[f"constant_{stat}_s"] for r in test_rows],
        "corrected": [r[predicted] * sum(c * s for c, s in zip(coef, r["shares"], strict=True)) for r in test_rows],
        "blend": [w * r[predicted] + (1 - w) * a_flops * r["flops"] for r in test_rows],
        "flops": [a_flops * r["flops"] for r in test_rows],
        "acts": [a_acts * r["acts"] for r in test_rows],
    }
    scores = {m: {"mape_pct": _mape(p, meas), "spearman": _spearman(p, meas)} for m, p in preds.items()}
    scores["blend"]["weight"] = w
    return scores


def _repeat_pct(rows: list[dict]) -> float:
    """Mean relative deviation (%) of the networks' rounds from their measured latency: how far the
    measurement itself moves between rounds minutes apart."""
    return 100 * statistics.fmean(
        statistics.fmean(abs(t - r["measured_s"]) for t in r["rounds_s"]) / r["measured_s"] for r in rows
    )


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3g} ± {sd:.2g}"


def _summarize(scores: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """Print and return every method's MAPE and Spearman over the profiles' ``scores``."""
    out = {}
    for m in METHODS:
        mapes = [s[m]["mape_pct"] for s in scores]
        rhos = [s[m]["spearman"] for s in scores]
        out[m] = {"mape_pct": mapes, "spearman": rhos}
        print(f"    {m:10s} MAPE {_mean_sd(mapes):>14s} % (worst {max(mapes):5.1f})   "
              f"Spearman {_mean_sd(rhos):>14s} (worst {min(rhos):.3f})")  # fmt: skip
    return out


def main() -> int:
    args = _parse()
    import torch

    import bhsearch
    from bhsearch.latency import load_table, predict_latency, profile_space
    from bhsearch.latency import units as units_mod
    from bhsearch.latency.profile import load_average

    size = args.input
    threads_list = [int(t) for t in args.threads.split(",")]
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    print(f"# torch {torch.__version__}, input {size}, widths x{args.scale}, batch 1 fp32, {args.profiles} profiles, "
          f"{args.stat} of the repetitions")  # fmt: skip
    machine = _machine()
    print(f"# {machine['cpu']} ({machine['cpus']} CPUs), load average {machine['load_start']} at the start")
    results: dict = {"settings": vars(args), "machine": machine, "settings_runs": []}
    work = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    for name in [s.strip() for s in args.spaces.split(",") if s.strip()]:
        base = bhsearch.get_spec(name).scaled(args.scale)
        rng = random.Random(args.seed)
        seen = {base.id}
        train_specs = [base, *_candidates(base, max(0, args.train - 1), args.max_blocks, rng, seen)]
        test_specs = _candidates(base, args.candidates, args.max_blocks, rng, seen)
        costs = {s.id: bhsearch.count(s, size) for s in train_specs + test_specs}
        for runtime in runtimes:
            for threads in threads_list:
                clock = args.clock
                if clock == "auto":
                    clock = "cpu" if threads == 1 else "wall"
                label = f"{name} x{args.scale} / {runtime} / {threads} thread(s) / {clock} clock"
                print(f"\n## {label}: {len(train_specs)} training + {len(test_specs)} held-out networks", flush=True)
                per_profile, specs = [], train_specs + test_specs
                for k in range(args.profiles):
                    out = work / f"{name}-{runtime}-{threads}-{k}.json"
                    measure = (specs, args, size, threads, clock, runtime)
                    before = [_measure_round(*measure) for _ in range(args.rounds - args.rounds // 2)]
                    t0 = time.perf_counter()
                    table = profile_space(base, size, device="cpu", threads=threads, clock=clock, runtime=runtime,
                                          reps=args.profile_reps, out=out, resume=False)  # fmt: skip
                    profile_s = time.perf_counter() - t0
                    after = [_measure_round(*measure) for _ in range(args.rounds // 2)]
                    rows = _rows(specs, table, before + after, args, size, runtime)
                    for row in rows:
                        row.update(flops=costs[row["spec"]].flops, acts=costs[row["spec"]].activations)
                        row["shares"] = _stage_shares(bhsearch.get_spec(row["spec"]), size)
                    train_rows, test_rows = rows[: len(train_specs)], rows[len(train_specs) :]
                    by_stat = {stat: _evaluate(train_rows, test_rows, args.ridge, stat) for stat in STATS}
                    scores, repeat = by_stat[args.stat], _repeat_pct(test_rows)
                    warnings = [w["message"] for w in load_table(out).warnings]
                    per_profile.append({"profile_s": profile_s, "units": len(table.units), "scores": scores,
                                        "scores_by_stat": by_stat, "repeat_pct": repeat, "warnings": warnings,
                                        "rows": rows})  # fmt: skip
                    line = ", ".join(
                        f"{m} {scores[m]['mape_pct']:.1f} % / {scores[m]['spearman']:.3f}" for m in METHODS
                    )
                    print(f"  profile {k + 1}: {len(table.units)} units in {profile_s:.1f} s; "
                          f"held-out MAPE / Spearman: {line}; repeat {repeat:.1f} %", flush=True)  # fmt: skip
                    for w in warnings:
                        print(f"    WARNING: {w}")
                by_stat = {}
                for stat in sorted(STATS, key=lambda st: st != args.stat):  # --stat first
                    print(f"  {stat} of the repetitions, over {args.profiles} profiles (mean ± sd, worst), "
                          f"held out on {len(test_specs)} networks:")  # fmt: skip
                    by_stat[stat] = _summarize([p["scores_by_stat"][stat] for p in per_profile])
                summary = dict(by_stat[args.stat])
                repeats = [p["repeat_pct"] for p in per_profile]
                summary["repeat_pct"] = repeats
                print(f"    repeat          {_mean_sd(repeats):>14s} %   (the measurements' own round-to-round change)")
                results["settings_runs"].append({
                    "space": name, "runtime": runtime, "threads": threads, "clock": clock,
                    "summary": summary, "summary_by_stat": by_stat, "profiles": per_profile,
                })  # fmt: skip

        # the predictor's own speed (pure Python, the solver's inner loop)
        table = load_table(next(work.glob(f"{name}-*.json")))
        rt = table.runtimes[0]
        specs = train_specs + test_specs
        t0 = time.process_time()  # CPU time: a shared machine does not inflate it
        for _ in range(20):  # cold: every candidate's units enumerated afresh, as the solver meets them
            units_mod._resnet_units.cache_clear()
            units_mod._hrnet_units.cache_clear()
            for spec in specs:
                predict_latency(spec, size, table, runtime=rt)
        per_pred = (time.process_time() - t0) / (20 * len(specs))
        results.setdefault("predict_us", {})[name] = per_pred * 1e6
        print(
            f"  predict_latency: {per_pred * 1e6:.1f} us CPU per candidate, units enumerated afresh (target <= 100 us)"
        )
    machine["load_end"] = load_average()
    print(f"# load average {machine['load_end']} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

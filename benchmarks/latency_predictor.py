"""Validate the latency predictor and the analytic training memory against measurements.

Profiles the ResNet-50 design space (spaces/resnet.yaml) into a lookup table (timed), then for the
named specs and N random candidates of the space compares predicted with measured end-to-end
latency: MAPE, Spearman and Kendall rank correlation (scipy.stats). The baseline, measured in the
same run on the same networks, is a FLOPs-proportional model (latency = paper FLOPs x the base's
measured seconds per FLOP), which is what matching on FLOPs assumes. Then analytic training memory
vs the measured autograd-saved bytes and the measured peak of a training step; then the speed of
prediction and of a latency-matched solve.

    python benchmarks/latency_predictor.py --threads 1 --scale 0.5 --input 640x512 --candidates 20
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


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default="640x512", help="input size WIDTHxHEIGHT (default 640x512)")
    p.add_argument("--scale", type=float, default=0.5, help="width scale of every spec (default 0.5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--candidates", type=int, default=20, help="random candidates of the space (default 20)")
    p.add_argument("--max-blocks", type=int, default=8, help="cap on blocks per stage of random candidates")
    p.add_argument(
        "--clock",
        default="cpu",
        choices=["wall", "cpu"],
        help="timer: thread CPU time (default; robust on a shared machine, needs --threads 1) or wall time",
    )
    p.add_argument("--reps", type=int, default=3, help="timed end-to-end runs per network (median)")
    p.add_argument("--train", type=int, default=6, help="networks also validated in train-step mode")
    p.add_argument("--additivity", type=int, default=4, help="networks for the back-to-back additivity check")
    p.add_argument("--table", default=None, help="reuse this table (profiled if missing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    return p.parse_args()


def _random_candidates(base, n: int, max_blocks: int, seed: int):
    from bhsearch.solver import load_space

    space = load_space(None, base)
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        glob = rng.choice(space.globals)
        blocks = tuple(rng.choice([o for o in ax.options if o <= max_blocks] or ax.options[:1]) for ax in space.axes)
        spec = base.replace(blocks=blocks, **glob)
        if spec.id not in seen:
            seen.add(spec.id)
            out.append(spec)
    return out


def _additivity(spec, size: str, clock: str) -> tuple[float, float]:
    """Whole network vs the sum of its units, measured back to back (min of 3 each): the method's own
    error, free of load drift between a profile and a later measurement on a shared machine."""
    import torch

    from bhsearch.latency import network_units
    from bhsearch.latency.measure import build_unit, time_module
    from bhsearch.models import build_backbone

    dev, width_height = torch.device("cpu"), size.split("x")
    w, h = int(width_height[0]), int(width_height[1])
    net = time_module(build_backbone(spec), (1, 3, h, w), dev, torch.float32, warmup=1, reps=3, clock=clock)
    cache: dict[str, float] = {}
    for unit in network_units(spec, size):
        if unit.key not in cache:
            r = time_module(build_unit(unit), (1, *unit.in_shape), dev, torch.float32, warmup=1, reps=3, clock=clock)
            cache[unit.key] = r["min_s"]
    return net["min_s"], sum(cache[u.key] for u in network_units(spec, size))


def _errors(pred: list[float], meas: list[float]) -> dict[str, float]:
    from scipy import stats

    ape = [abs(p - m) / m for p, m in zip(pred, meas, strict=True)]
    return {
        "mape_pct": 100 * statistics.fmean(ape),
        "max_ape_pct": 100 * max(ape),
        "spearman": float(stats.spearmanr(pred, meas).statistic),
        "kendall": float(stats.kendalltau(pred, meas).statistic),
    }


def main() -> int:
    args = _parse()
    import torch

    import bhsearch
    from bhsearch.latency import (
        load_table,
        measure_latency,
        measure_train_memory,
        predict_latency,
        profile_space,
        train_memory_breakdown,
    )

    torch.set_num_threads(args.threads)
    base = bhsearch.get_spec("resnet50").scaled(args.scale)
    bh = bhsearch.get_spec("bh-resnet50").scaled(args.scale)
    size = args.input
    table_path = Path(args.table or Path(tempfile.mkdtemp()) / "cpu.json")
    print(
        f"# torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock, input {size}, "
        f"widths x{args.scale}, batch 1 fp32"
    )

    t0 = time.perf_counter()
    table = profile_space(
        base, size, device="cpu", threads=args.threads, clock=args.clock, out=table_path, resume=True, progress=True
    )
    profile_s = time.perf_counter() - t0
    print(f"profile of the resnet50 space: {len(table.units)} units in {profile_s:.1f} s -> {table_path}")

    specs = [base, bh, *_random_candidates(base, args.candidates, args.max_blocks, args.seed)]
    rows = []
    for i, spec in enumerate(specs):
        row = {"spec": spec.id, "flops": bhsearch.count(spec, size).flops}
        for mode in ("inference", "train") if i < args.train else ("inference",):
            m = measure_latency(spec, size, threads=args.threads, mode=mode, warmup=1, reps=args.reps, clock=args.clock)
            for stat in ("median", "min"):
                row[f"{mode}_{stat}_measured_s"] = m[f"{stat}_s"]
                row[f"{mode}_{stat}_predicted_s"] = predict_latency(spec, size, table, mode, stat)
        rows.append(row)
        print(
            f"{i + 1:2d}/{len(specs)} {spec.id:58s} median: predicted {row['inference_median_predicted_s']:.3f} s, "
            f"measured {row['inference_median_measured_s']:.3f} s; min: {row['inference_min_predicted_s']:.3f} / "
            f"{row['inference_min_measured_s']:.3f} s",
            flush=True,
        )

    results: dict = {"settings": vars(args), "profile_s": profile_s, "units": len(table.units), "modes": {}}
    for mode in ("inference", "train"):
        for stat in ("median", "min"):
            key = f"{mode}_{stat}"
            sub = [r for r in rows if f"{key}_measured_s" in r]
            meas = [r[f"{key}_measured_s"] for r in sub]
            pred = [r[f"{key}_predicted_s"] for r in sub]
            per_flop = sub[0][f"{key}_measured_s"] / sub[0]["flops"]  # the base, measured in this run
            flops_model = [r["flops"] * per_flop for r in sub]
            ours, flops = _errors(pred, meas), _errors(flops_model, meas)
            results["modes"][key] = {"networks": len(sub), "predictor": ours, "flops_baseline": flops}
            print(
                f"\n{mode}, {stat} of reps ({len(sub)} networks): predictor MAPE {ours['mape_pct']:.1f}% "
                f"(max {ours['max_ape_pct']:.1f}%), Spearman {ours['spearman']:.3f}, Kendall {ours['kendall']:.3f}\n"
                f"  FLOPs baseline: MAPE {flops['mape_pct']:.1f}%, Spearman {flops['spearman']:.3f}, "
                f"Kendall {flops['kendall']:.3f}; MAPE ratio baseline/predictor "
                f"{flops['mape_pct'] / max(ours['mape_pct'], 1e-9):.1f}x"
            )

    print("\nadditivity, measured back to back (inference, min of 3): network / sum of its units")
    ratios = []
    for spec in specs[: args.additivity]:
        net, units_sum = _additivity(spec, size, args.clock)
        ratios.append(net / units_sum)
        print(f"  {spec.id:58s} {net:.3f} s / {units_sum:.3f} s = {net / units_sum:.3f}", flush=True)
    results["additivity_ratios"] = ratios

    print("\ntraining memory, batch 2 (analytic vs measured on CPU, tensor-level tracker):")
    mem_rows = []
    for spec in specs[:4]:
        a = train_memory_breakdown(spec, size, 2)
        m = measure_train_memory(spec, size, batch_size=2)
        peak_total = m["peak_bytes"] + m["param_bytes"]
        mem_rows.append({"spec": spec.id, "analytic": a, "measured": m})
        print(
            f"  {spec.id:55s} saved: analytic {a['activations'] / 2**20:8.1f} MiB, measured "
            f"{m['saved_bytes'] / 2**20:8.1f} MiB; step peak+weights {peak_total / 2**20:8.1f} MiB = "
            f"{peak_total / a['total']:.3f} x analytic total"
        )
    results["memory"] = mem_rows

    table = load_table(table_path)
    t0 = time.perf_counter()
    for spec in specs * 50:
        predict_latency(spec, size, table)
    per_pred = (time.perf_counter() - t0) / (50 * len(specs))
    t0 = time.perf_counter()
    solved = bhsearch.solve(base, size, match="latency", profile=table_path, tolerance=5)
    solve_s = time.perf_counter() - t0
    results.update(predict_us=per_pred * 1e6, solve_latency_s=solve_s)
    print(f"\npredict_latency: {per_pred * 1e6:.1f} us per candidate; solve --match latency: {solve_s:.3f} s "
          f"({len(getattr(solved, 'candidates', []) or [])} candidates)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

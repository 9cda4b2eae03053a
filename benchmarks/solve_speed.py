"""Speed of `bhsearch solve` and of the closed-form cost model, as ratios measured in one run.

1. Whole process: `python -m bhsearch solve --base resnet50 --input 640x512` (table output to a
   pipe), median of --reps runs, next to a bare `python -c pass` start-up as the baseline.
2. In-process `bhsearch.solve("resnet50", "640x512")` (space loading, enumeration, ranking).
3. Per candidate: closed-form `bhsearch.count` vs building the module and counting it with fvcore
   (and ptflops) — the solver must never do the latter.

    python benchmarks/solve_speed.py                   # defaults: 5 reps, 3 fvcore candidates
    python benchmarks/solve_speed.py --reps 9 --counted 5 --threads 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the timed commands (median)")
    parser.add_argument("--counted", type=int, default=3, help="candidates counted with fvcore/ptflops")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for fvcore/ptflops")
    parser.add_argument("--input", default="640x512")
    args = parser.parse_args()

    solve_cmd = [sys.executable, "-m", "bhsearch", "solve", "--base", "resnet50", "--input", args.input]
    wall([sys.executable, "-c", "pass"])  # warm the file cache
    wall(solve_cmd)
    startup = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(args.reps))
    whole = statistics.median(wall(solve_cmd) for _ in range(args.reps))
    hr_cmd = [sys.executable, "-m", "bhsearch", "solve", "--base", "hrnet32", "--input", args.input]
    whole_hr = statistics.median(wall(hr_cmd) for _ in range(args.reps))
    print(f"whole process `bhsearch solve --base resnet50 --input {args.input}`: {whole:.3f} s (target < 1 s)")
    print(f"  python start-up alone: {startup:.3f} s; solve / start-up = {whole / startup:.1f}x")
    print(f"whole process `bhsearch solve --base hrnet32`: {whole_hr:.3f} s ({whole_hr / startup:.1f}x start-up)")

    from bhsearch import count
    from bhsearch.solver import load_space, solve

    space = load_space(None, "resnet50")
    solve_s = median_time(lambda: solve("resnet50", args.input, space=space), args.reps)
    result = solve("resnet50", args.input, space=space)
    print(
        f"in-process solve(resnet50): {solve_s * 1e3:.1f} ms for {result.enumerated:,} candidates "
        f"({result.feasible:,} feasible) = {solve_s / result.enumerated * 1e9:.0f} ns per enumerated candidate"
    )

    rng = random.Random(0)
    specs = [c.spec for c in rng.sample(result.candidates, min(200, len(result.candidates)))]
    per_count = median_time(lambda: [count(s, args.input) for s in specs], args.reps) / len(specs)

    import torch

    from bhsearch.models import build_backbone
    from bhsearch.verify import measure_with_fvcore, measure_with_ptflops

    torch.set_num_threads(args.threads)
    counted = specs[: args.counted]
    measure_with_fvcore(build_backbone(counted[0]), "64x64")  # import and first-call costs out of the timing
    measure_with_ptflops(build_backbone(counted[0]), "64x64")
    fv_times, pt_times = [], []
    for spec in counted:
        t = time.perf_counter()
        fv = measure_with_fvcore(build_backbone(spec), args.input)
        fv_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        pt = measure_with_ptflops(build_backbone(spec), args.input)
        pt_times.append(time.perf_counter() - t)
        exact = count(spec, args.input)
        assert fv["macs"] == pt["macs"] == exact.macs and pt["flops"] == exact.flops, spec.id
    fv_s, pt_s = statistics.median(fv_times), statistics.median(pt_times)
    print(f"closed-form count: {per_count * 1e6:.1f} us per candidate (median over {len(specs)} candidates)")
    print(
        f"build + fvcore: {fv_s:.3f} s per candidate ({len(counted)} candidates, {args.threads} thread(s)) "
        f"-> closed form is {fv_s / per_count:,.0f}x faster (target >= 1000x)"
    )
    print(f"build + ptflops (aten + pytorch): {pt_s:.3f} s per candidate -> {pt_s / per_count:,.0f}x")


if __name__ == "__main__":
    main()

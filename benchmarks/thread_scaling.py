"""Can this machine time a network at N threads steadily? Loop-by-loop speed-up of one network, 1 vs N threads.

A latency table at N threads (`bhsearch profile --threads N`) cannot be steadier than the machine's own
multi-thread speed. This benchmark builds one network (the base of --space at --scale of its widths, at
--input), and for each runtime alternates, for --loops loops, the median of --reps passes at 1 thread and
the median of --reps passes at N threads (wall clock for both; one onnxruntime session per thread count).
Per runtime it prints

* each thread count's median time and coefficient of variation over the loops,
* the speed-up (1-thread time / N-thread time of the same loop): median, p10 and p90,
* the share of loops that ran *near-serial* (speed-up under --serial, default 1.15x: the extra threads
  took no part) — on a steady machine none; the reason a profile's tables are marked `spread`.

    python benchmarks/thread_scaling.py                                 # hrnet32 x0.5, 640x512, 2 threads
    python benchmarks/thread_scaling.py --space resnet50 --runtimes onnxruntime --loops 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="hrnet32", help="base network (resnet50, hrnet32, ...)")
    parser.add_argument("--scale", type=float, default=0.5, help="width multiplier of the base")
    parser.add_argument("--input", default="640x512", help="input WxH")
    parser.add_argument("--threads", type=int, default=2, help="N, the thread count compared with 1")
    parser.add_argument("--runtimes", default="torch,onnxruntime", help="comma-separated: torch, onnxruntime")
    parser.add_argument("--loops", type=int, default=30, help="alternations of 1 and N threads")
    parser.add_argument("--reps", type=int, default=3, help="passes per loop and thread count (their median)")
    parser.add_argument("--serial", type=float, default=1.15, help="speed-up under which a loop is near-serial")
    parser.add_argument("--json", help="write the per-loop times and the summary here")
    args = parser.parse_args()
    if args.threads < 2 or args.loops < 2 or args.reps < 1 or args.serial <= 1:
        parser.error("need --threads >= 2, --loops >= 2, --reps >= 1 and --serial > 1")
    return args


def _steps(runtime: str, module, x, threads: int) -> dict[int, Callable[[], object]]:
    """One inference pass per thread count (1 and ``threads``), ready to time."""
    import torch

    from bhsearch.latency.measure import onnx_step, set_threads

    if runtime == "onnxruntime":
        return {n: onnx_step(module, x, n) for n in (1, threads)}

    def at(n: int) -> Callable[[], object]:
        def step() -> object:
            set_threads(n)
            with torch.inference_mode():
                return module(x)

        return step

    return {n: at(n) for n in (1, threads)}


def _median_pass(step: Callable[[], object], reps: int) -> float:
    step()  # a pass after switching thread count warms its pool
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _summary(one: list[float], many: list[float], serial: float) -> dict[str, float]:
    """Medians, cvs, speed-up percentiles (interpolated, as in latency tables) and the near-serial share."""
    from bhsearch.latency.table import percentile

    speedup = sorted(a / b for a, b in zip(one, many, strict=True))

    def cv(v: list[float]) -> float:
        return 100 * statistics.pstdev(v) / statistics.fmean(v)

    return {
        "median_1_ms": 1e3 * statistics.median(one),
        "cv_1_pct": cv(one),
        "median_n_ms": 1e3 * statistics.median(many),
        "cv_n_pct": cv(many),
        "speedup_median": statistics.median(speedup),
        "speedup_p10": percentile(speedup, 0.1),
        "speedup_p90": percentile(speedup, 0.9),
        "near_serial_share": sum(s < serial for s in speedup) / len(speedup),
    }


def main() -> int:
    args = _parse()
    import torch

    from bhsearch import get_spec
    from bhsearch.errors import UsageError
    from bhsearch.latency.measure import _DictToTuple, device_name, steady_allocator
    from bhsearch.latency.profile import load_average
    from bhsearch.models import build_backbone
    from bhsearch.spec import parse_input_size

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if not runtimes or set(runtimes) - {"torch", "onnxruntime"}:
        print(f"error: --runtimes takes torch and/or onnxruntime, got {args.runtimes!r}", file=sys.stderr)
        return 2
    try:
        w, h = parse_input_size(args.input)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    steady_allocator()
    torch.manual_seed(0)
    module = _DictToTuple(build_backbone(get_spec(args.space).scaled(args.scale))).eval()
    x = torch.randn(1, 3, h, w)
    n = args.threads
    print(f"# {' '.join(sys.argv)}")
    print(
        f"# {device_name(torch.device('cpu'))}, load average {load_average()} at the start; "
        f"{args.space} x{args.scale} at {args.input}, 1 vs {n} threads, {args.loops} loops x {args.reps} passes"
    )
    report = {"args": vars(args), "runtimes": {}}
    for runtime in runtimes:
        steps = _steps(runtime, module, x, n)
        for step in steps.values():
            _median_pass(step, 2)
        one, many = [], []
        for _ in range(args.loops):
            one.append(_median_pass(steps[1], args.reps))
            many.append(_median_pass(steps[n], args.reps))
        s = _summary(one, many, args.serial)
        report["runtimes"][runtime] = {"summary": s, "one_s": one, "many_s": many}
        print(
            f"{runtime:12s} 1 thread {s['median_1_ms']:7.1f} ms (cv {s['cv_1_pct']:4.1f} %)  "
            f"{n} threads {s['median_n_ms']:7.1f} ms (cv {s['cv_n_pct']:4.1f} %)  "
            f"speed-up {s['speedup_median']:.2f}x (p10 {s['speedup_p10']:.2f}, p90 {s['speedup_p90']:.2f})  "
            f"near-serial {100 * s['near_serial_share']:.0f} % of loops"
        )
    print(f"# load average {load_average()} at the end")
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``bhsearch profile``: measure a design space's units into a latency lookup table."""

from __future__ import annotations

import argparse
import json
import sys
import time

ORDER = 30

DESCRIPTION = """\
Measure, on this machine's device, every distinct unit (stem, residual block at its resolution,
width and stride) that the design space around BASE can produce: inference time and training-step
(forward + backward) time in two rounds, passes over all units minutes apart (WARMUP runs, then half
of REPS timed runs each; one round under --runtime compile), the median of the rounds' medians kept,
and peak memory. Six whole networks (the base and random candidates of the space), each timed twice
at points spread through the sweep, give the overhead term: whole network minus the sum of its
units, fitted as a + b x (the elements of the units' inputs), since units timed alone pay for
reading their input from memory and, in onnxruntime, for converting it to and from its blocked
layout, which a network does once. The table is written after every unit; with --resume (the
default) an interrupted profile continues where it stopped.
Use the table with `bhsearch solve --profile FILE` and `bhsearch count SPEC --profile FILE`.
Bases: resnet and hrnet families. --runtime onnxruntime adds inference times of the units exported
to ONNX and run in onnxruntime (intra-op threads = --threads, sequential execution) to the same
table; --runtime compile those of torch.compile'd units (inductor; compiling takes about a
minute per unit on a CPU). `count/solve --runtime RUNTIME` predict from them.

Every unit and whole network keeps the relative spread of its repetitions, (p90 - p10) / median,
or the relative range of its two rounds where larger, so a machine that changed speed shows.
A profile is marked (one WARNING line per problem on stderr, and in the table's "quality" field,
which `count --profile` and `solve --profile` repeat) when the median spread of its units or whole
networks exceeds 10 %, when the per-network term a is negative beyond 5 % of the whole networks'
median time, when other processes used more cores on
average while it ran (read from /proc/stat; elsewhere: their 1-minute load average at its start or
end) than those free for its threads, plus 0.5, or (wall clock) when its process used < 0.9 s of
CPU time per second of its timed passes.
"""

EPILOG = """getting a clean table:
  1. check the machine is idle first: `uptime` (1-min load average well below the cores left
     free for --threads), and keep it idle while profiling;
  2. time one thread with its own CPU time, which other processes do not inflate:
       uptime && bhsearch profile --base resnet50 --input 640x512 --threads 1 --clock cpu \\
           --out profiles/cpu.json --no-resume
  3. read the summary: no WARNING lines, spread of units and networks a few percent.
  A marked table still predicts, but its ranks are not to be trusted; profile it again.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure unit latencies of a design space into a lookup table",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", default="resnet50", help="base spec (name, id or file); default resnet50")
    p.add_argument("--input", default="640x512", help="input size WIDTHxHEIGHT; default 640x512")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; default cpu")
    p.add_argument("--out", default="profiles/latency.json", help="lookup table to write (JSON)")
    p.add_argument("--space", default=None, help="design-space file (default: spaces/<family>.yaml)")
    p.add_argument("--batch-size", type=int, default=1, help="images per batch; default 1")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="default float32")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--norm", default="bn", choices=["bn", "gn", "frozen_bn"], help="normalisation; default bn")
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="CPU timer: wall time (default) or this thread's CPU time, robust on a busy machine (needs --threads 1)",
    )
    p.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnxruntime", "compile"],
        help="runtime to time the units in: torch (default), onnxruntime (CPU, inference only; needs the "
        "'export' extra) or compile (torch.compile, inference only; minutes of compiling per unit on CPU); "
        "one table holds several",
    )
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed runs before timing, lasting at least 0.25 s when >= 1; default 1"
    )
    p.add_argument("--reps", type=int, default=5, help="timed runs per unit, split over its rounds; default 5")
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep units already in --out (default) or start the table afresh",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")
    p.set_defaults(func=run)


def run(args) -> int:
    from bhsearch.fileio import check_writable
    from bhsearch.latency import network_units, predict_latency, profile_space
    from bhsearch.latency.table import spread_summary
    from bhsearch.spec import get_spec

    base = get_spec(args.base)
    check_writable(args.out, "--out", is_dir=False)
    t0 = time.perf_counter()
    table = profile_space(
        base,
        args.input,
        space=args.space,
        device=args.device,
        batch_size=args.batch_size,
        dtype=args.dtype,
        warmup=args.warmup,
        reps=args.reps,
        threads=args.threads,
        norm=args.norm,
        clock=args.clock,
        runtime=args.runtime,
        out=args.out,
        resume=args.resume,
        progress=not args.json,
    )
    elapsed = time.perf_counter() - t0
    rt = args.runtime
    warnings = [w["message"] for w in table.warnings]
    summary = {
        "table": str(table.path),
        "settings": table.settings,
        "runtime": rt,
        "runtimes": table.runtimes,
        "units": len(table.units),
        "seconds": round(elapsed, 2),
        "base": base.id,
        "base_units": len(network_units(base, args.input)),
        "predicted_inference_s": predict_latency(base, args.input, table, "inference", runtime=rt),
        "predicted_train_s": predict_latency(base, args.input, table, "train") if rt == "torch" else None,
        "overhead": {k: {m: v.get(f"{m}_s") for m in ("inference", "train")} for k, v in table.overhead.items()},
        "spread": spread_summary(table),
        "warnings": warnings,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(table, summary)
    for message in warnings:
        print(f"bhsearch profile: WARNING: {message}", file=sys.stderr)
    return 0


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _print_summary(table, summary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    units = Table(title=f"latency table {summary['table']}", show_lines=False)
    cols = ("unit", "inference ms", "spread %", "train-step ms", "spread %", "train peak MB")
    for col in cols:
        units.add_column(col, justify="left" if col == "unit" else "right", overflow="fold")
    for key, entry in table.units.items():
        train = entry.get("train_s")
        units.add_row(
            key,
            f"{entry['inference_s'] * 1e3:.2f}",
            _pct(entry.get("inference_spread")),
            "–" if train is None else f"{train * 1e3:.2f}",
            _pct(entry.get("train_spread")),
            "–" if "train_peak_bytes" not in entry else f"{entry['train_peak_bytes'] / 2**20:.1f}",
        )
    console.print(units)
    s = table.settings
    console.print(
        f"device {s['device']} ({s['device_name']}), torch {s['torch_version']}, {s['dtype']}, "
        f"batch {s['batch_size']}, {s['threads']} thread(s), norm {s['norm']}; "
        f"{summary['units']} units, profiled in {summary['seconds']:.1f} s"
    )
    for size, terms in summary["overhead"].items():
        parts = [f"{m} {terms[m] * 1e3:.2f} ms" for m in ("inference", "train") if terms.get(m) is not None]
        console.print(f"overhead term at {size}: {', '.join(parts)}")
        for net in table.overhead[size].get("networks", []):
            spreads = [f"{m} {_pct(net.get(f'{m}_spread'))} %" for m in ("inference", "train") if f"{m}_spread" in net]
            if spreads:
                console.print(f"  whole network {net['spec']}: spread {', '.join(spreads)}")
    for runtime, row in summary["spread"].items():
        parts = [f"{k.replace('_', ' ')} {_pct(v)} %" for k, v in row.items()]
        console.print(f"median spread (p90-p10)/median, {runtime}: {', '.join(parts)}")
    train = summary["predicted_train_s"]
    console.print(
        f"predicted {summary['base']} ({summary['runtime']}): inference {summary['predicted_inference_s'] * 1e3:.1f} ms"
        + ("" if train is None else f", train step {train * 1e3:.1f} ms")
    )
    if summary["warnings"]:
        console.print(f"[bold red]{len(summary['warnings'])} quality warning(s): see stderr[/]")
    else:
        console.print("quality: no warnings")

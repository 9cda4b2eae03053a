"""``bhsearch profile``: measure a design space's units into a latency lookup table."""

from __future__ import annotations

import argparse
import json
import time

ORDER = 30

DESCRIPTION = """\
Measure, on this machine's device, every distinct unit (stem, residual block at its resolution,
width and stride) that the design space around BASE can produce, once each: inference time and
training-step (forward + backward) time as the median of REPS runs after WARMUP runs, and peak
memory. A per-network overhead term is measured on whole networks. The table is written after
every unit; with --resume (the default) an interrupted profile continues where it stopped.
Use the table with `bhsearch solve --profile FILE` and `bhsearch count SPEC --profile FILE`.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure unit latencies of a design space into a lookup table",
        description=DESCRIPTION,
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
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing; default 1")
    p.add_argument("--reps", type=int, default=5, help="timed runs, the median is kept; default 5")
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
        out=args.out,
        resume=args.resume,
        progress=not args.json,
    )
    elapsed = time.perf_counter() - t0
    summary = {
        "table": str(table.path),
        "settings": table.settings,
        "units": len(table.units),
        "seconds": round(elapsed, 2),
        "base": base.id,
        "base_units": len(network_units(base, args.input)),
        "predicted_inference_s": predict_latency(base, args.input, table, "inference"),
        "predicted_train_s": predict_latency(base, args.input, table, "train"),
        "overhead": {k: {m: v.get(f"{m}_s") for m in ("inference", "train")} for k, v in table.overhead.items()},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_summary(table, summary)
    return 0


def _print_summary(table, summary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    units = Table(title=f"latency table {summary['table']}", show_lines=False)
    for col in ("unit", "inference ms", "train-step ms", "train peak MB"):
        units.add_column(col, justify="left" if col == "unit" else "right", overflow="fold")
    for key, entry in table.units.items():
        units.add_row(
            key,
            f"{entry['inference_s'] * 1e3:.2f}",
            f"{entry['train_s'] * 1e3:.2f}",
            f"{entry.get('train_peak_bytes', 0) / 2**20:.1f}",
        )
    console.print(units)
    s = table.settings
    console.print(
        f"device {s['device']} ({s['device_name']}), torch {s['torch_version']}, {s['dtype']}, "
        f"batch {s['batch_size']}, {s['threads']} thread(s), norm {s['norm']}; "
        f"{summary['units']} units, profiled in {summary['seconds']:.1f} s"
    )
    for size, terms in summary["overhead"].items():
        console.print(
            f"overhead term at {size}: inference {terms['inference'] * 1e3:.2f} ms, train {terms['train'] * 1e3:.2f} ms"
        )
    console.print(
        f"predicted {summary['base']}: inference {summary['predicted_inference_s'] * 1e3:.1f} ms, "
        f"train step {summary['predicted_train_s'] * 1e3:.1f} ms"
    )

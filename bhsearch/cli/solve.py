"""``bhsearch solve``: FLOP-matched bottom-heavy candidates for a base backbone."""

from __future__ import annotations

import argparse
import re
import sys

from bhsearch.errors import UsageError

ORDER = 10

DESCRIPTION = """\
Enumerate every candidate of a design space (spaces/<family>.yaml, or --space FILE) around a
base backbone, keep those whose cost matches the base's within --tolerance percent and that
meet the constraints, and rank them. The paper's bottom-heavy spec (e.g. bh-resnet50) is marked
and always shown, with its rank or the reason it is excluded.

Units: "GMACs" are 10^9 multiply-accumulates of convolutions and linear layers (what the paper
and fvcore call "GFLOPs"); "paper GFLOPs" add the elementwise terms of the mmcv convention (2 per
batch-norm, 1 per ReLU and 1 per max-pool input element). "acts" are conv output elements, a
proxy for memory traffic. For ResNet, conv MACs barely depend on how blocks are distributed over
the stages (docs/solver.md), so compare activations and paper FLOPs too (--match).

Bottom-heavy ordering (default): at least as many blocks as the base before the third 2x
down-sampling (stride <= 4), and from every later stage to the end at most as many blocks as the
base (the deep end never grows); not the base itself. The BH score is the share of paper FLOPs
spent before the third down-sampling (stem included).
"""

EPILOG = """\
examples:
  bhsearch solve --base resnet50 --input 640x512
  bhsearch solve --base resnet50 --match activations --tolerance 5 --any-order
  bhsearch solve --base hrnet32 --input 640x512 --json
  bhsearch solve --base resnet50 --stems k3s1p --max-blocks 12,12,6,3 --sort bh --csv out.csv
  bhsearch solve --base resnet50 --profile profiles/cpu.json --max-latency-ratio 1.2
"""

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BYTES = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_count(text: str, what: str) -> int:
    """``25M`` / ``25.5m`` / ``2500000`` -> int."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmMgGtT]?)\s*", str(text))
    if not m:
        raise UsageError(f"{what} must be a number with an optional K/M/G suffix, got {text!r}")
    return int(round(float(m[1]) * _SUFFIX[m[2].lower()]))


def parse_bytes(text: str, what: str) -> int:
    """``8GB`` (10^9) / ``8GiB`` (2^30) / ``512MB`` / a plain number of bytes -> int."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m[2].lower() not in _BYTES:
        raise UsageError(f"{what} must be a size such as 8GB, 7.5GiB or 512MB, got {text!r}")
    return int(round(float(m[1]) * _BYTES[m[2].lower()]))


def parse_float(text: str, what: str, minimum: float | None = 0.0, strict: bool = False) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number, got {text!r}") from None
    if value != value or (minimum is not None and (value < minimum or (strict and value == minimum))):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise UsageError(f"{what} must be {bound}, got {text!r}")
    return value


def parse_int(text: str, what: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"{what} must be >= {minimum}, got {text!r}")
    return value


def parse_per_stage(text: str | None, what: str) -> list[int | None] | int | None:
    """``3`` (all stages) or ``1,1,-,2`` (``-`` = no limit for that stage)."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        return parse_int(parts[0], what)
    return [None if p in ("-", "") else parse_int(p, what) for p in parts]


def human(value: float, unit: str = "", digits: int = 2) -> str:
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.{digits}f} {prefix}{unit}".rstrip()
    return f"{value:.0f} {unit}".rstrip()


def make_console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=200)
    return console


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "solve",
        help="FLOP-matched bottom-heavy candidates for a base backbone (analytic, < 1 s)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", default="resnet50", help="base spec: name (resnet50, hrnet32, ...), id or file")
    p.add_argument("--input", default="640x512", metavar="WxH", help="input size WIDTHxHEIGHT (default 640x512)")
    p.add_argument("--space", metavar="FILE", help="design-space YAML (default spaces/<family>.yaml)")
    p.add_argument(
        "--match",
        default="flops",
        metavar="COST",
        help="cost to match: flops (paper GFLOPs, default), macs, activations, latency (needs --profile)",
    )
    p.add_argument("--tolerance", default="2", metavar="PCT", help="allowed cost difference in percent (default 2)")
    p.add_argument("--top", metavar="N", help="rows to show (default 20 in the table, all with --json/--csv)")
    p.add_argument(
        "--sort",
        default="error",
        metavar="KEY",
        help="ranking: error (|cost error| in 0.1%% steps, then BH score; default), bh, params, "
        "activations, flops, macs, latency, memory",
    )
    p.add_argument("--any-order", action="store_true", help="drop the bottom-heavy ordering constraint")
    p.add_argument(
        "--min-blocks", metavar="N[,N...]", help="min blocks per stage (one value, or one per stage; - = none)"
    )
    p.add_argument(
        "--max-blocks", metavar="N[,N...]", help="max blocks per stage (one value, or one per stage; - = none)"
    )
    p.add_argument("--max-params", metavar="N", help="max parameters, e.g. 25M")
    p.add_argument("--max-activations-ratio", metavar="R", help="max conv output elements as a ratio to the base's")
    p.add_argument("--stems", metavar="CODES", help="allowed stems, comma-separated codes (k7s2p, k3s1p, s22, s12p...)")
    p.add_argument("--profile", metavar="FILE", help="latency table from 'bhsearch profile': adds predicted latency")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnxruntime", "compile"],
        help="runtime of the --profile entries to predict from (default torch)",
    )
    p.add_argument(
        "--stat",
        default="median",
        choices=["median", "min"],
        help="statistic of the --profile entries: median (default) or min of the repetitions; docs/latency.md "
        "says which predicted better where (onnxruntime at 2 threads: min)",
    )
    p.add_argument("--max-latency-ratio", metavar="R", help="max predicted latency as a ratio to the base's")
    p.add_argument("--max-train-memory", metavar="SIZE", help="max analytic training-step memory, e.g. 8GB or 7.5GiB")
    p.add_argument("--batch-size", default="2", metavar="N", help="batch size for --max-train-memory (default 2)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV to FILE ('-' for stdout)")
    p.set_defaults(func=run)


def solve_from_args(args):
    from bhsearch.solver import solve

    stems = [s for s in args.stems.split(",") if s.strip()] if args.stems else None
    json_or_csv = args.json or args.csv
    top = parse_int(args.top, "--top") if args.top is not None else (None if json_or_csv else 20)
    return solve(
        args.base,
        args.input,
        space=args.space,
        match=args.match,
        tolerance=parse_float(args.tolerance, "--tolerance"),
        order="any" if args.any_order else "bottom-heavy",
        min_blocks=parse_per_stage(args.min_blocks, "--min-blocks"),
        max_blocks=parse_per_stage(args.max_blocks, "--max-blocks"),
        max_params=parse_count(args.max_params, "--max-params") if args.max_params else None,
        max_activations_ratio=parse_float(args.max_activations_ratio, "--max-activations-ratio", strict=True)
        if args.max_activations_ratio
        else None,
        stems=stems,
        top=top,
        sort=args.sort,
        profile=args.profile,
        runtime=args.runtime,
        stat=args.stat,
        max_latency_ratio=parse_float(args.max_latency_ratio, "--max-latency-ratio", strict=True)
        if args.max_latency_ratio
        else None,
        max_train_memory=parse_bytes(args.max_train_memory, "--max-train-memory") if args.max_train_memory else None,
        batch_size=parse_int(args.batch_size, "--batch-size"),
    )


def write_csv(result, target: str) -> None:
    import csv

    from bhsearch.solver import CSV_FIELDS, csv_rows

    rows = csv_rows(result)
    if target == "-":
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    from bhsearch.fileio import atomic_write

    def write(tmp) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    try:
        atomic_write(target, write)
    except OSError as exc:
        raise UsageError(f"{target}: cannot write CSV: {exc.strerror or exc}") from None


def print_table(result, console) -> None:
    from rich.table import Table

    has_lat = result.base.latency is not None
    has_mem = result.base.train_memory is not None
    w, h = result.input_size
    base = result.base
    table = Table(
        title=f"{result.match}-matched candidates for {base.name or base.id} at {w}x{h} "
        f"(±{result.tolerance:g}%, sorted by {result.sort})",
        caption=f"{result.enumerated:,} enumerated in {result.space_path}, {result.within_tolerance:,} within "
        f"tolerance, {result.feasible:,} feasible. GMACs = conv+linear multiply-accumulates (paper/fvcore "
        "'GFLOPs'); paper GFLOPs = MACs + BN/ReLU/pool elements; acts = conv output elements; "
        "BH = share of paper FLOPs before the 3rd down-sampling. ★ = named (paper) spec.",
        caption_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("name")
    table.add_column("stem")
    table.add_column("depths")
    table.add_column("GMACs", justify="right")
    table.add_column("paper GFLOPs", justify="right")
    table.add_column(f"{result.match} err", justify="right")
    table.add_column("params M", justify="right")
    table.add_column("params ×", justify="right")
    table.add_column("acts M", justify="right")
    table.add_column("acts ×", justify="right")
    table.add_column("BH", justify="right")
    if has_lat:
        table.add_column("pred. ms", justify="right")
        table.add_column("lat ×", justify="right")
    if has_mem:
        table.add_column("train GB", justify="right")
    table.add_column("id / note", overflow="fold")

    def add(c, style: str | None = None) -> None:
        if c.is_base:
            name = f"{c.name or ''} (base)".strip()
        elif c.name:
            name = f"★ {c.name}"
        else:
            name = ""
        row = [
            "base" if c.is_base else (str(c.rank) if c.rank else "–"),
            name,
            c.stem,
            "-".join(map(str, c.depths)),
            f"{c.macs / 1e9:.3f}",
            f"{c.flops / 1e9:.3f}",
            f"{100 * c.error:+.2f}%",
            f"{c.params / 1e6:.2f}",
            f"{c.params_ratio:.2f}",
            f"{c.activations / 1e6:.1f}",
            f"{c.activations_ratio:.2f}",
            f"{c.bh_score:.3f}",
        ]
        if has_lat:
            row += [f"{1e3 * c.latency:.1f}", f"{c.latency_ratio:.2f}" if c.latency_ratio else "–"]
        if has_mem:
            row += [f"{c.train_memory / 1e9:.2f}"]
        row.append(c.id if not c.note or c.is_base else f"{c.id} ({c.note})")
        table.add_row(*row, style=style)

    add(base, "dim")
    for c in result.candidates:
        add(c, "bold yellow" if c.is_paper else None)
    for c in result.references:
        add(c, "yellow")
    console.print(table)


def run(args) -> int:
    import json

    if args.csv and args.csv != "-":
        from bhsearch.fileio import check_writable

        check_writable(args.csv, "--csv", is_dir=False)  # before solving
    if args.profile:
        from bhsearch.cli.count import warn_marked_table
        from bhsearch.latency import load_table

        warn_marked_table(load_table(args.profile), "solve")
    result = solve_from_args(args)
    if args.csv:
        write_csv(result, args.csv)
        if args.csv == "-":
            return 0
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print_table(result, make_console())
    if args.csv:
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0

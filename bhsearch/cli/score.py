"""``bhsearch score``: training-free scores of the solver's candidates (or of given specs)."""

from __future__ import annotations

import argparse
import sys

ORDER = 14

DESCRIPTION = """\
Score backbones at initialisation, without training: SynFlow (log10), NASWOT (log|K|), grad-norm and
Zen-score (definitions and papers: bhsearch.scores.zero_cost), each at the detector's input (--input,
a batch of Gaussian tiles through every level c2..c5 an FPN reads) and at 32x32 (--small), beside the
analytic baselines params, paper FLOPs, activations and bh_share (share of paper FLOPs before the
third down-sampling, the solver's BH score). Larger is better for every zero-cost score.

The candidates are the solver's (same options as `bhsearch solve`: --base, --input, --match,
--tolerance, --top), or the --spec arguments. Networks are built width-scaled (--width-mult, 0.25 by
default, so a CPU scores a candidate in seconds); scores are deterministic for a --seed.
"""

EPILOG = """\
examples:
  bhsearch score --base resnet50 --input 640x512 --score zen,synflow,naswot,gradnorm --top 50
  bhsearch score --spec resnet50 --spec bh-resnet50 --json
  bhsearch score --base resnet50 --top 20 --score zen,params,bh_share --csv scores.csv
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="training-free scores (SynFlow, NASWOT, grad-norm, Zen) of candidate backbones",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", default="resnet50", help="base backbone of the solver (default resnet50)")
    p.add_argument("--spec", action="append", metavar="SPEC", help="score this spec instead (repeatable)")
    p.add_argument("--input", default="640x512", metavar="WxH", help="detector input size (default 640x512)")
    p.add_argument("--small", default="32x32", metavar="WxH", help="second, proxy-size input ('none': skip)")
    p.add_argument("--score", default="zen,synflow,naswot,gradnorm,params,flops,activations,bh_share")
    p.add_argument("--top", default="20", help="solver candidates to score (default 20)")
    p.add_argument("--match", default="flops", choices=("flops", "macs", "activations"))
    p.add_argument("--tolerance", default="2", help="solver cost tolerance in percent (default 2)")
    p.add_argument("--width-mult", default="0.25", help="width multiplier of the built networks (default 0.25)")
    p.add_argument("--batch", default="2", help="inputs per batch at --input (default 2)")
    p.add_argument("--batch-small", default="16", help="inputs per batch at --small (default 16)")
    p.add_argument("--seed", default="0", help="seed of inputs, initialisation and random heads (default 0)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the rows as CSV ('-': stdout only)")
    p.set_defaults(func=run)


def _specs(args) -> list:
    from bhsearch.cli.solve import parse_float, parse_int
    from bhsearch.solver import solve
    from bhsearch.spec import get_spec

    if args.spec:
        return [get_spec(s) for s in args.spec]
    result = solve(
        args.base,
        args.input,
        match=args.match,
        tolerance=parse_float(args.tolerance, "--tolerance"),
        top=parse_int(args.top, "--top"),
    )
    specs = [result.base.spec] + [c.spec for c in result.candidates] + [c.spec for c in result.references]
    return list({s.id: s for s in specs}.values())


def run(args) -> int:
    import json
    import math

    from bhsearch.cli.solve import parse_float, parse_int
    from bhsearch.errors import UsageError
    from bhsearch.scores.candidates import parse_scores, score_specs
    from bhsearch.spec import parse_input_size

    scores = parse_scores(args.score)
    width = parse_float(args.width_mult, "--width-mult", strict=True)
    if not math.isfinite(width):
        raise UsageError(f"--width-mult must be a finite number, got {args.width_mult}")
    sizes = [parse_input_size(args.input)]
    batches = [parse_int(args.batch, "--batch")]
    if args.small.lower() != "none":
        sizes.append(parse_input_size(args.small))
        batches.append(parse_int(args.batch_small, "--batch-small"))
    specs = _specs(args)
    progress = _Progress(len(specs), enabled=not args.json and sys.stderr.isatty())
    rows = score_specs(
        specs,
        scores,
        sizes,
        width_mult=width,
        batch=batches,
        seed=parse_int(args.seed, "--seed", minimum=0),
        on_row=progress,
    )
    progress.close()
    if args.csv:
        _write_csv(rows, args.csv)
        if args.csv == "-":
            return 0
    if args.json:
        print(json.dumps(rows))
    else:
        _print_table(rows, sizes, width)
    return 0


class _Progress:
    """One stderr line: candidates scored / total, elapsed, ETA."""

    def __init__(self, total: int, enabled: bool):
        import time

        self.total, self.enabled, self.t0, self.clock = total, enabled, time.monotonic(), time.monotonic

    def __call__(self, i: int, row: dict) -> None:
        if not self.enabled:
            return
        done = i + 1
        elapsed = self.clock() - self.t0
        eta = elapsed / done * (self.total - done)
        print(
            f"\rscored {done}/{self.total} candidates, {elapsed:.0f} s elapsed, ETA {eta:.0f} s ",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _write_csv(rows: list[dict], target: str) -> None:
    import csv
    import io

    from bhsearch.fileio import atomic_write_text

    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if target == "-":
        sys.stdout.write(buf.getvalue())
    else:
        atomic_write_text(target, buf.getvalue())


def _print_table(rows: list[dict], sizes, width: float) -> None:
    from rich.table import Table

    from bhsearch.cli.solve import make_console

    fields = [k for k in rows[0] if k not in ("id", "seconds")]
    sizes_text = ", ".join(f"{w}x{h}" for w, h in sizes)
    table = Table(
        title="Training-free scores (larger is better)",
        caption=f"networks at width x{width:g}; inputs {sizes_text}; s = seconds to score; "
        "costs at the detector input (params, paper FLOPs in G, activations in M)",
        caption_justify="left",
    )
    table.add_column("candidate", no_wrap=True)
    for f in fields:
        table.add_column(f, justify="right")
    table.add_column("s", justify="right")
    scale = {"params": 1e6, "flops": 1e9, "activations": 1e6}
    for r in rows:
        cells = []
        for f in fields:
            v = r.get(f)
            cells.append("—" if v is None else f"{v / scale[f]:.2f}" if f in scale else f"{v:.3f}")
        table.add_row(r["id"].split(":", 2)[-1], *cells, f"{r['seconds']:.1f}")
    make_console().print(table)

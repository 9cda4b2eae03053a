"""``bhsearch report RUN_DIR``: ranked table, best spec and plots of a study."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 72

DESCRIPTION = """\
Show a study's results: the ranked table (metrics at each trial's last epoch, that epoch and its
status in words; completed trials by the target metric first, then those ASHA stopped by the epoch
they reached and their metric there, then unfinished and failed trials) with a legend of the arch
codes, the best spec (written to RUN_DIR/best_spec.json), Kendall's tau of proxy top-1 vs final AP,
and PNG plots in RUN_DIR/plots: AP vs cost with the Pareto front, AP vs latency, proxy vs final,
error EDFs (bottom-heavy vs standard-like).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="ranked table, best spec and plots of a study run folder",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a study's run folder, e.g. runs/demo")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--csv", action="store_true", help="print the ranked results table as CSV")
    p.add_argument("--top", type=int, metavar="N", help="show only the N best trials")
    p.add_argument("--no-plots", action="store_true", help="skip writing PNG plots")
    p.add_argument("--refresh", action="store_true", help="rebuild results from the trial folders first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from bhsearch.errors import UsageError

    if args.top is not None and args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    from bhsearch.fileio import check_writable
    from bhsearch.report import build_report, print_report

    if Path(args.run_dir).is_dir():  # a missing folder is reported by build_report
        if args.refresh:
            check_writable(args.run_dir, "run folder (--refresh rewrites results.csv)")
        if not args.no_plots:
            check_writable(Path(args.run_dir) / "plots", "plots folder (or pass --no-plots)")

    info = build_report(args.run_dir, top=args.top, plots=not args.no_plots, refresh=args.refresh)
    if args.csv:
        import pandas as pd

        pd.DataFrame(info["ranking"]).to_csv(sys.stdout, index=False)
    elif args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print_report(info)
    return 0

"""``bhsearch tune STUDY.yaml``: rank candidates with Ray Tune (docs/tuning.md)."""

from __future__ import annotations

import argparse

ORDER = 70

DESCRIPTION = """\
Run a study: proxy pre-train -> detector fine-tune -> TinyPerson evaluation for candidates of a
FLOP-matched design space, searched with Optuna TPE (or random / grid) and pruned with ASHA.
Results go to STORAGE/NAME: results.csv, results.parquet, best_spec.json (then `bhsearch report`).

Ray: a local Ray with this machine's resources by default (no dashboard unless --dashboard-host);
--address (or RAY_ADDRESS) joins an existing cluster (given up after --connect-timeout seconds).
--resume continues an interrupted study (Ctrl-C or kill -9) without losing or repeating finished
trials; errored and unfinished trials run again. Resume reads only JSON, the Optuna journal and
weights-only checkpoints, never a pickle from the run folder.

Output: one progress line on stderr (trials done / running / pending, trial-epochs, best metric, elapsed, ETA;
rewritten in place on a terminal, a line per finished trial and at most one a minute otherwise), one line per
failed trial, then the ranked table. --quiet drops the progress line, --verbose adds Ray Tune's own output,
--json prints the report as JSON on stdout (everything else goes to stderr).

Exit status: 0 done, 1 every trial failed, 2 bad input (checked before Ray starts), 130 interrupted.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune",
        help="run a Ray Tune study over bottom-heavy candidates (studies/*.yaml)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", metavar="STUDY.yaml", help="study file, e.g. studies/demo.yaml")
    p.add_argument("--address", help="Ray cluster to join: 'auto' or HOST:PORT (default: RAY_ADDRESS, else local)")
    p.add_argument(
        "--connect-timeout",
        type=float,
        metavar="S",
        help="seconds to wait for the cluster given by --address (default: BHSEARCH_RAY_CONNECT_TIMEOUT_S, else 30)",
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted study in STORAGE/NAME")
    p.add_argument("--storage", metavar="DIR", help="where run folders go (overrides the study's storage)")
    p.add_argument("--num-samples", type=int, metavar="N", help="number of trials (overrides search.num_samples)")
    p.add_argument(
        "--dashboard-host", metavar="HOST", help="start the Ray dashboard on HOST (e.g. 127.0.0.1); off by default"
    )
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true", help="no progress line: failed trials and the final ranking only")
    talk.add_argument(
        "--verbose", action="store_true", help="Ray Tune's own output too: status tables, result boxes, checkpoints"
    )
    p.add_argument("--json", action="store_true", help="print the final report as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys

    from bhsearch.tune.study import load_study

    study = load_study(args.study)
    from bhsearch.cli._preflight import check_tune  # writable storage, dashboard packages: before Ray starts

    check_tune(study, args.storage, args.dashboard_host)
    if args.storage:
        study = study.model_copy(update={"storage": args.storage})
    study = study.absolute()

    from bhsearch.cli import _exit_now
    from bhsearch.report import build_report, print_report
    from bhsearch.tune.runner import StudyInterrupted, check_data, run_study

    check_data(study)  # before Ray is even imported
    # with --json, stdout carries only the JSON report: Tune's own printing (--verbose) goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        try:
            outcome = run_study(
                study,
                address=args.address,
                resume=args.resume,
                num_samples=args.num_samples,
                dashboard_host=args.dashboard_host,
                verbose=1 if args.verbose else 0,
                connect_timeout=args.connect_timeout,
                progress=not args.quiet,
            )
        except StudyInterrupted as exc:
            again = f"bhsearch tune {args.study}" + (f" --storage {args.storage}" if args.storage else "")
            print(f"bhsearch tune: {exc}: resume with `{again} --resume`", file=sys.stderr)
            # state and results are on disk: leave now. A thread that Tune started and Ctrl-C left behind can keep
            # interpreter shutdown waiting for ever (once in CI: the hint printed, the process still there 120 s later)
            _exit_now(exc.exit_code)
        info = build_report(outcome.run_dir)
    info["wall_s"] = round(outcome.wall_s, 2)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print_report(info)
        print(f"study took {outcome.wall_s:.1f} s; results in {outcome.run_dir}")
    return 0

"""The ``bhsearch`` command line.

Every sub-command lives in its own module in this package and exposes::

    ORDER: int                      # position in ``bhsearch --help``
    def register(subparsers) -> None  # adds its parser, sets ``func=run``
    def run(args) -> int | None

Modules are discovered automatically, so adding a command never touches this file.
Command modules must keep heavy imports (torch, ray, pandas) inside ``run`` so that
``bhsearch solve`` starts in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys

from bhsearch.errors import BhsearchError

DESCRIPTION = """\
bhsearch — design bottom-heavy CNN backbones for tiny object detection.

Units: "MACs" are multiply-accumulates of convolutions and linear layers (what the paper
and fvcore call "GFLOPs"); "FLOPs" (paper convention) add 2 per batch-norm output,
1 per ReLU output, 1 per max-pool input and 1 per upsample output element. Input sizes
are written WIDTHxHEIGHT, e.g. 640x512.
"""


def _command_modules():
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "register"):
            mods.append(mod)
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; an error re-raised from a DataLoader worker (whose message
    carries the worker's traceback) is reduced to the original error's own message."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and any("Original Traceback" in ln for ln in lines):
        return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception): ", "", lines[-1].strip())
    return " ".join(ln.strip() for ln in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bhsearch", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from bhsearch import __version__

    parser.add_argument("--version", action="version", version=f"bhsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        mod.register(sub)
    return parser


def _exit_now(code: int) -> None:
    """End the process with ``code`` without interpreter shutdown (atexit hooks, thread teardown)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except BhsearchError as exc:
        print(f"bhsearch {args.command}: error: {one_line(exc)}", file=sys.stderr)
        if exc.exit_at_once:
            _exit_now(exc.exit_code)
        return exc.exit_code
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        print(f"bhsearch {args.command}: error: {one_line(exc)}", file=sys.stderr)  # e.g. a worker was killed
        return 1
    except KeyboardInterrupt:
        print(f"bhsearch {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

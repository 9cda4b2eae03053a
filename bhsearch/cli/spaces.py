"""``bhsearch spaces``: named specs and design-space files."""

from __future__ import annotations

import argparse

ORDER = 14

DESCRIPTION = """\
List the named backbone specs (usable as SPEC or --base anywhere) with their ids and
descriptions, and the design-space files in spaces/ that `bhsearch solve` enumerates
(with the number of candidates each holds for the default base of its family).
"""

DEFAULT_BASES = {"resnet": "resnet50", "hrnet": "hrnet32"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "spaces",
        help="list named specs and design-space files",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(func=run)


def collect() -> dict:
    from bhsearch.errors import UsageError
    from bhsearch.solver import load_space, spaces_dir
    from bhsearch.spec import NAMED_SPECS, SPEC_DESCRIPTIONS, load_mapping

    specs = [
        {"name": name, "family": spec.family, "id": spec.id, "description": SPEC_DESCRIPTIONS.get(name, "")}
        for name, spec in NAMED_SPECS.items()
    ]
    spaces = []
    for path in sorted(spaces_dir().glob("*.y*ml")):
        entry = {"path": str(path), "family": None, "description": "", "candidates": None, "base": None, "error": None}
        try:
            data = load_mapping(path)
            entry["family"] = data.get("family")
            entry["description"] = " ".join(str(data.get("description", "")).split())
            base = DEFAULT_BASES.get(entry["family"])
            if base:
                entry["base"] = base
                entry["candidates"] = load_space(path, base).size
        except UsageError as exc:
            entry["error"] = str(exc)
        spaces.append(entry)
    return {"specs": specs, "spaces": spaces}


def run(args) -> int:
    import json

    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.table import Table

    from bhsearch.cli.solve import make_console

    console = make_console()
    t = Table(title="named specs")
    for col in ("name", "family", "id", "description"):
        t.add_column(col, overflow="fold")
    for s in info["specs"]:
        t.add_row(s["name"], s["family"], s["id"], s["description"])
    console.print(t)
    t = Table(title="design spaces (bhsearch solve --space FILE)")
    for col in ("file", "family", "candidates", "description"):
        t.add_column(col, overflow="fold", justify="right" if col == "candidates" else "left")
    for s in info["spaces"]:
        n = f"{s['candidates']:,} (base {s['base']})" if s["candidates"] is not None else "–"
        t.add_row(s["path"], s["family"] or "?", n, s["error"] or s["description"])
    console.print(t)
    return 0

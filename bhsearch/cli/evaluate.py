"""``bhsearch evaluate``: TinyPerson AP/MR (TinyBenchmark rules) or WiderFace AP of a detection file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = 50

DESCRIPTION = """\
Evaluate COCO-format detections ([{"image_id", "bbox": [x, y, w, h], "score"}, ...]).

tinyperson (default): AP at IoU 0.25/0.5/0.75 on the size ranges tiny [L,20], tiny1 [L,8],
tiny2 [8,12], tiny3 [12,20], small [20,32] and all (size = sqrt(area); L = --area-lower, 1 as in
the official TinyBenchmark code, 2 as in the paper), 101 recall points, one merged class, and
the log-average miss rate (MR, 9 FPPI points in [0.01, 1]) at IoU 0.5. GT flagged ignore,
uncertain or iscrowd are ignore regions: a detection that matches no GT but whose
intersection-over-detection with one reaches the threshold (--iod-threshold) counts neither as
TP nor as FP. Dense images are not evaluated. Results are in percent.

widerface: --gt is the WiderFace ground-truth folder (wider_face_val.mat ...), --dets a
predictions folder or COCO results JSON.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="TinyPerson AP/MR (or WiderFace AP) of a detection file",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--gt", required=True, metavar="GT", help="ground truth: COCO JSON (TinyPerson) or folder (WiderFace)"
    )
    p.add_argument(
        "--dets", required=True, metavar="DETS", help="detections: COCO results JSON, or a WiderFace prediction folder"
    )
    p.add_argument("--benchmark", choices=("tinyperson", "widerface"), default="tinyperson")
    p.add_argument(
        "--max-dets", type=int, default=200, help="detections kept per image (200: paper-era code; 1000: TOV)"
    )
    p.add_argument(
        "--iod-threshold",
        choices=("iou", "2iou/(1+iou)", "none"),
        default="iou",
        help="IoD threshold for ignore regions: the IoU threshold (TinyBenchmark, default), 2iou/(1+iou) "
        "(a later fork) or none (plain COCOeval)",
    )
    p.add_argument(
        "--area-lower",
        type=float,
        default=1,
        help="lower size bound of tiny/tiny1/all in pixels (1: official code, default; 2: paper)",
    )
    p.add_argument("--json", action="store_true", help="print the result dict as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from bhsearch.errors import DataError, UsageError

    if args.benchmark == "tinyperson":  # both are JSON files; a folder would be reported as missing
        for flag, value in (("--gt", args.gt), ("--dets", args.dets)):
            if Path(value).is_dir():
                raise DataError(f"{flag} {value}: is a directory, expected a COCO JSON file")

    if args.benchmark == "widerface":
        try:
            from bhsearch.evaluation.widerface import evaluate_widerface
        except ImportError:
            raise UsageError("WiderFace evaluation is not available in this version of bhsearch") from None
        result = evaluate_widerface(args.gt, args.dets)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            _print_flat(result, "WiderFace")
        return 0

    from bhsearch.evaluation.tinyperson import evaluate

    if args.max_dets < 1:
        raise UsageError(f"--max-dets must be positive, got {args.max_dets}")
    area_lower = int(args.area_lower) if float(args.area_lower).is_integer() else args.area_lower
    result = evaluate(
        args.gt, args.dets, max_dets=args.max_dets, iod_threshold=args.iod_threshold, area_lower=area_lower
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_tinyperson(result)
    return 0


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def _print_tinyperson(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from bhsearch.evaluation.tinyperson import RANGE_NAMES

    console = Console()
    s = result["settings"]
    lo = s["size_ranges"]["tiny"][0]
    table = Table(title="TinyPerson (TinyBenchmark rules), percent")
    table.add_column("metric")
    for name in RANGE_NAMES:
        table.add_column(name, justify="right")
    for metric in ("AP50", "AP25", "AP75", "MR50"):
        label = metric + (" (lower is better)" if metric == "MR50" else "")
        table.add_row(label, *(_fmt(result.get(f"{metric}_{name}")) for name in RANGE_NAMES))
    console.print(table)
    console.print(
        f"settings: IoU {s['iou_thresholds']}, maxDets {s['max_dets']}, IoD threshold rule '{s['iod_threshold']}', "
        f"area_lower {s['area_lower']} (tiny = [{lo:g}, 20] px), {s['recall_points']} recall points; "
        f"{s['images_evaluated']} images evaluated, {s['dense_images_skipped']} dense skipped, "
        f"{s['gt_boxes']} GT ({s['gt_ignore_regions']} ignore), {s['detections']} detections",
        highlight=False,
    )
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def _print_flat(result: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if isinstance(value, (int, float)) or value is None:
            table.add_row(str(key), _fmt(value) if not isinstance(value, int) else str(value))
        elif not isinstance(value, (dict, list)):
            table.add_row(str(key), str(value))
    Console().print(table)
    for key in ("settings", "warnings"):
        if result.get(key):
            print(f"{key}: {json.dumps(result[key])}")

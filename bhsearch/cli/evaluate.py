"""``bhsearch evaluate``: TinyPerson AP/MR (TinyBenchmark rules) or WiderFace AP of a detection file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bhsearch.tasks.registry import benchmark_names

ORDER = 50

DESCRIPTION = """\
Evaluate COCO-format detections ([{"image_id", "bbox": [x, y, w, h], "score"}, ...]).

tinyperson (default): AP at IoU 0.25/0.5/0.75 on the size ranges tiny [L,20], tiny1 [L,8],
tiny2 [8,12], tiny3 [12,20], small [20,32] and all (size = sqrt(area); L = --area-lower, 1 as in
the official TinyBenchmark code, 2 as in the paper), 101 recall points, one merged class, and
the log-average miss rate (MR, 9 FPPI points in [0.01, 1]) at IoU 0.5. Results are in percent.

  --protocol official (default) reproduces TinyBenchmark's evaluator, which produced the paper's
  numbers: GT flagged ignore/uncertain/iscrowd and GT outside the size range are ignored in that
  range, and a detection that matches no GT but whose IoD with an ignored GT reaches the threshold
  counts neither as TP nor as FP (so a detection on a 30 px person is no FP of 'tiny').
  --protocol coco is stock pycocotools COCOeval, with the IoD rule on flagged GT only.
  Every image is evaluated, as the official code does; --skip-dense leaves out dense images.

aitod: the AI-TOD toolkit's COCOeval (aitodpycocotools / faster-coco-eval-aitod): per class,
IoU 0.50:0.95, maxDets 1500, ranges very tiny [0,8], tiny [8,16], small [16,32], medium [32,1e5];
keys AP, AP50, AP75, AP_vt, AP_t, AP_s, AP_m.

widerface: --gt is the WiderFace ground-truth folder (wider_face_val.mat ...), --dets a
predictions folder or COCO results JSON.

examples:
  bhsearch evaluate --gt tiny_set/annotations/task/tiny_set_test_all.json --dets dets.json
  bhsearch evaluate --gt GT.json --dets DETS.json --protocol coco --max-dets 1000 --json
  bhsearch evaluate --benchmark aitod --gt AI-TOD/annotations/aitod_test_v1.json --dets dets.json

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
    p.add_argument(
        "--benchmark",
        choices=benchmark_names(),
        default="tinyperson",
        help="tinyperson (default), aitod (AI-TOD toolkit COCOeval) or widerface",
    )
    p.add_argument(
        "--protocol",
        choices=("official", "coco"),
        default="official",
        help="official: TinyBenchmark's evaluator (the paper's numbers, default); coco: stock pycocotools "
        "plus the IoD rule on flagged GT",
    )
    p.add_argument("--skip-dense", action="store_true", help="leave out images flagged dense (in_dense_image)")
    p.add_argument(
        "--max-dets",
        type=int,
        default=None,
        help="detections kept per image (TinyPerson: 200 as the paper-era code, default; 1000 as TOV; AI-TOD: 1500)",
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


def _options(args) -> dict:
    """The evaluator options of ``args.benchmark`` (only TinyPerson has protocol variants)."""
    from bhsearch.errors import UsageError

    if args.max_dets is not None and args.max_dets < 1:
        raise UsageError(f"--max-dets must be positive, got {args.max_dets}")
    if args.benchmark == "widerface":
        return {}
    options = {} if args.max_dets is None else {"max_dets": args.max_dets}
    if args.benchmark == "tinyperson":
        area_lower = int(args.area_lower) if float(args.area_lower).is_integer() else args.area_lower
        options.update(
            iod_threshold=args.iod_threshold, area_lower=area_lower, protocol=args.protocol, skip_dense=args.skip_dense
        )
    return options


def run(args) -> int:
    from bhsearch.errors import DataError
    from bhsearch.tasks import get_benchmark

    if args.benchmark != "widerface":  # both are JSON files; a folder would be reported as missing
        for flag, value in (("--gt", args.gt), ("--dets", args.dets)):
            if Path(value).is_dir():
                raise DataError(f"{flag} {value}: is a directory, expected a COCO JSON file")
    bench = get_benchmark(args.benchmark)
    result = bench.evaluate(args.gt, args.dets, **_options(args))
    if args.json:
        print(json.dumps(result, indent=2))
    elif bench.name == "tinyperson":
        _print_tinyperson(result)
    else:
        _print_flat(
            result, f"{bench.title} ({result.get('settings', {}).get('protocol', 'official protocol')}), percent"
        )
    return 0


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def _print_tinyperson(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from bhsearch.tasks.tinyperson.evaluate import RANGE_NAMES

    console = Console()
    s = result["settings"]
    lo = s["size_ranges"]["tiny"][0]
    title = {"official": "official TinyBenchmark protocol", "coco": "COCO protocol"}[s["protocol"]]
    table = Table(title=f"TinyPerson, {title}, percent")
    table.add_column("metric")
    for name in RANGE_NAMES:
        table.add_column(name, justify="right")
    for metric in ("AP50", "AP25", "AP75", "MR50", "MR25", "MR75"):
        if not any(f"{metric}_{name}" in result for name in RANGE_NAMES):
            continue
        label = metric + (" (lower is better)" if metric.startswith("MR") else "")
        table.add_row(label, *(_fmt(result.get(f"{metric}_{name}")) for name in RANGE_NAMES))
    console.print(table)
    console.print(
        f"settings: protocol {s['protocol']}, IoU {s['iou_thresholds']}, maxDets {s['max_dets']}, IoD threshold rule '{s['iod_threshold']}', "
        f"area_lower {s['area_lower']} (tiny = [{lo:g}, 20] px), {s['recall_points']} recall points; "
        f"{s['images_evaluated']} images evaluated ({s['dense_images']} flagged dense, "
        f"{s['dense_images_skipped']} skipped), "
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

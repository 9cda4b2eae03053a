"""``bhsearch evaluate-model``: tiled whole-image inference of a fine-tuned detector + TinyPerson AP."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = 64

DESCRIPTION = """\
Evaluate the detector of a `bhsearch finetune` run folder (spec.json + model.safetensors) on
whole images: each image is cut into tiles (the run's tile size and overlap unless given), the
per-tile detections are shifted back and merged with class-agnostic NMS at IoU 0.5, and the
TinyPerson evaluator reports AP (IoU 0.25/0.5/0.75) and MR on tiny, tiny1-3, small and all,
in percent.

examples:
  bhsearch evaluate-model runs/det --data tinyperson:~/data/tiny_set
  bhsearch evaluate-model runs/det --data synthetic-tinyperson:/tmp/tp --json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate-model",
        help="tiled inference of a fine-tuned detector + TinyPerson AP",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `bhsearch finetune` output folder")
    p.add_argument("--data", required=True, help="tinyperson:PATH or synthetic-tinyperson:DIR")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split (default test)")
    p.add_argument("--tile", help="tile WIDTHxHEIGHT (default: the run's)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: the run's)")
    p.add_argument("--max-dets", type=int, default=200, help="detections per image (default 200; TOV uses 1000)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--save-detections", metavar="FILE", help="also write the COCO results JSON to FILE")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bhsearch.data.registry import DETECTION_KINDS, parse_ref
    from bhsearch.errors import UsageError

    if not Path(args.run_dir).is_dir():  # cheap checks before importing torch
        raise UsageError(f"{args.run_dir}: no such run folder")
    if args.save_detections:
        from bhsearch.fileio import check_writable

        check_writable(args.save_detections, "--save-detections", is_dir=False)
    parse_ref(args.data, DETECTION_KINDS)
    import torch
    from rich.console import Console
    from rich.table import Table

    from bhsearch.data.registry import open_detection
    from bhsearch.spec import parse_input_size
    from bhsearch.train import loop
    from bhsearch.train.inference import evaluate_model, load_run_model

    device = loop.select_device(args.device)
    model, meta = load_run_model(Path(args.run_dir), device)
    config = meta.get("config") or {}
    tile = parse_input_size(args.tile) if args.tile else tuple(config.get("tile", (640, 512)))
    overlap = args.overlap if args.overlap is not None else int(config.get("overlap", 30))
    dataset = open_detection(args.data, args.split, include_dense=False)  # dense images are not evaluated
    with torch.inference_mode():
        metrics = evaluate_model(
            model,
            dataset,
            tile=tile,
            overlap=overlap,
            max_dets=args.max_dets,
            batch_size=args.batch_size,
            device=device,
            num_workers=args.num_workers,
            detections_out=args.save_detections,
        )
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
        return 0
    console = Console()
    table = Table(title=f"TinyPerson evaluation of {args.run_dir} (maxDets {args.max_dets}, tile {tile[0]}x{tile[1]})")
    table.add_column("range")
    for col in ("AP50", "AP25", "AP75", "MR50"):
        table.add_column(col, justify="right")
    for rng in ("tiny", "tiny1", "tiny2", "tiny3", "small", "all"):
        cells = [metrics.get(f"{col}_{rng}") for col in ("AP50", "AP25", "AP75", "MR50")]
        table.add_row(rng, *["-" if v is None else f"{v:.2f}" for v in cells])
    console.print(table)
    for warning in metrics.get("warnings", []):
        console.print(f"note: {warning}")
    return 0

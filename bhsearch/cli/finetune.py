"""``bhsearch finetune``: train a torchvision detector on a backbone with TinyPerson tiles."""

from __future__ import annotations

import argparse
from pathlib import Path

from bhsearch.cli.pretrain import COMMON_FIELDS, add_run_options, build_config, check_out_dir, finish, interrupted

ORDER = 62

DESCRIPTION = """\
Fine-tune Faster R-CNN, RetinaNet or FCOS (torchvision, FPN from the stride-4 level) on a
backbone, training on 640x512 tiles (30 px overlap) and evaluating every epoch on whole test
images by tiled inference + NMS with the TinyPerson evaluator (AP50_tiny ...).

Default schedule = the paper's (TinyBenchmark): SGD momentum 0.9, weight decay 1e-4, 12 epochs,
lr 0.01 for batch 4 (scaled linearly with --batch-size x --accumulation), x0.1 after epochs 8
and 11 (scaled with --epochs), 500 warm-up steps.

--init takes a `bhsearch pretrain` backbone.safetensors (norm auto -> trainable BN), a
torchvision ResNet state_dict (.pth; norm auto -> frozen BN, stem + stage 1 frozen) or nothing
(scratch; norm auto -> GroupNorm). Writes OUT/model.safetensors, OUT/spec.json (with the
detector settings), OUT/metrics.jsonl and OUT/checkpoint.pt.

examples:
  bhsearch finetune --spec bh-resnet50 --init runs/pre/backbone.safetensors \\
      --data tinyperson:~/data/tiny_set --detector faster_rcnn --out runs/det
  bhsearch finetune --spec runs/pre/spec.json --init runs/pre/backbone.safetensors \\
      --data synthetic-tinyperson:/tmp/tp --epochs 2 --tile 320x256 --fpn-channels 64
"""


def _option(text: str):
    import yaml

    from bhsearch.errors import UsageError
    from bhsearch.safeload import load_yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--detector-option must be KEY=VALUE, got {text!r}")
    try:
        return key.strip(), load_yaml(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"--detector-option {key.strip()}: malformed value: {problem}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a detector (Faster R-CNN / RetinaNet / FCOS) on TinyPerson tiles",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="tinyperson:PATH or synthetic-tinyperson:DIR")
    p.add_argument("--init", help="backbone weights: a pretrain backbone.safetensors or a torchvision .pth")
    p.add_argument("--detector", choices=("faster_rcnn", "retinanet", "fcos"), help="default faster_rcnn")
    add_run_options(p, "runs/det")
    p.add_argument("--tile", help="training/test tile WIDTHxHEIGHT (default 640x512)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default 30)")
    p.add_argument("--max-dets", type=int, help="detections per image for evaluation (default 200)")
    p.add_argument("--eval-every", type=int, help="evaluate every N epochs (0: only after the last; default 1)")
    p.add_argument("--freeze-stages", type=int, help="-1 none, 0 stem, k stem + stages 1..k")
    p.add_argument("--fpn-channels", type=int, help="FPN width (default 256)")
    p.add_argument("--max-train-tiles", type=int, help="use a seeded subset of the training tiles")
    p.add_argument("--max-eval-images", type=int, help="evaluate on a seeded subset of the test images")
    p.add_argument(
        "--detector-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra torchvision detector argument (repeatable), e.g. box_batch_size_per_image=128",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bhsearch.data.registry import DETECTION_KINDS, parse_ref
    from bhsearch.spec import get_spec, parse_input_size

    spec = get_spec(args.spec)  # cheap checks first: no torch import for a bad spec, --data or --out
    parse_ref(args.data, DETECTION_KINDS)
    out = Path(args.out)
    check_out_dir(out, args.resume, args.overwrite)
    from bhsearch.train.finetune import FinetuneConfig, run_finetune

    names = dict(COMMON_FIELDS)
    names.update(
        detector="detector",
        overlap="overlap",
        max_dets="max_dets",
        eval_every="eval_every",
        freeze_stages="freeze_stages",
        fpn_channels="fpn_channels",
        max_train_tiles="max_train_tiles",
        max_eval_images="max_eval_images",
    )
    if args.tile:
        args.tile_size = list(parse_input_size(args.tile))
        names["tile_size"] = "tile"
    if args.detector_option:
        args.detector_kwargs = dict(_option(text) for text in args.detector_option)
        from bhsearch.detectors import check_detector_options

        check_detector_options(args.detector or "faster_rcnn", args.detector_kwargs)
        names["detector_kwargs"] = "detector_kwargs"
    config = build_config(FinetuneConfig, args, names)
    try:
        result = run_finetune(spec, args.data, config, out, init=args.init, resume=args.resume)
    except KeyboardInterrupt:
        interrupted(out)
        raise
    keys = ("loss", "lr", "AP50_tiny", "AP50_tiny1", "AP50_tiny2", "AP50_tiny3", "AP50_small", "train_images_per_s")
    finish(result, keys, f"finetune {config.detector} {result['spec_id']}", args.json)
    return 0

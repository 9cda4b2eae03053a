"""``bhsearch export``: a spec (and trained weights) for torchvision, ONNX, MMDetection or timm."""

from __future__ import annotations

import argparse

ORDER = 80
TARGETS = ("torchvision", "onnx", "mmdet", "timm")
DETECTORS = ("faster_rcnn", "retinanet", "fcos")

DESCRIPTION = """\
Export SOURCE to the detectors people use. SOURCE is a spec name (bh-resnet50), a spec id, a
spec JSON/YAML file, an export or fine-tune folder (spec.json + weights), or a study directory
(a `bhsearch tune` run folder: its best trial is exported with the weights it was fine-tuned to
and the detector settings it was trained with: FPN channels, anchors, heads, tile size, classes,
norm; --trial ID exports any trial of results.csv). The weights are those of the trial's last
fine-tuning epoch (trial_<id>/checkpoint_*/finetune/); a trial that never finished one (it
failed, or was stopped while pre-training) has none and the export stops (exit 2) instead of
writing random weights: pass --weights, or RUN_DIR/best_spec.json for the spec alone.

Targets (files go into --out, default ./export; written to a temporary folder beside it first,
so a failure leaves --out untouched):
  torchvision  spec.json (spec + detector settings), weights.safetensors, README.md section;
               load with bhsearch.export.build_detector("OUT/spec.json")
  onnx         NAME.backbone.onnx (dynamic batch/height/width) and NAME.DETECTOR.onnx (the
               torchvision detector at --input size), checked with onnxruntime against PyTorch:
               max abs errors in onnx_report.json
  mmdet        NAME_DETECTOR_tinyperson.py, an MMDetection 3.x config using the BHSearchBackbone
               plugin (bhsearch.export.mmdet_plugin) and the paper's TinyPerson schedule
  timm         NAME.timm.safetensors for timm.create_model("bhsearch_spec", spec=...,
               features_only=True) after `import bhsearch.export.timm`

--weights takes a detector file (bhsearch finetune's model.safetensors) or a backbone file
(bhsearch pretrain's backbone.safetensors); weights that do not fit the spec are an error that
names the first mismatched tensor. Examples:
  bhsearch export runs/tinyperson --to torchvision --out export/
  bhsearch export runs/tinyperson --trial 1a2b3_00004 --to onnx --out export-4/
  bhsearch export bh-resnet50 --weights runs/det/model.safetensors --to onnx --input 640x512
  bhsearch export bh-hrnet32 --to mmdet --detector faster_rcnn --out export/
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a spec / search result to torchvision, ONNX, MMDetection or timm",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="spec name, spec id, spec file, export folder or study directory")
    p.add_argument("--to", required=True, choices=TARGETS, help="export target")
    p.add_argument(
        "--detector", choices=DETECTORS, help="detector type (default: the stored settings, else faster_rcnn)"
    )
    p.add_argument("--weights", metavar="FILE", help="trained weights (.safetensors): detector or backbone")
    p.add_argument(
        "--trial", metavar="ID", help="study directory: export this trial (trial_id of results.csv), not the best"
    )
    p.add_argument("--input", default="640x512", metavar="WxH", help="input (tile) size WIDTHxHEIGHT (default 640x512)")
    p.add_argument("--out", default="export", metavar="DIR", help="output folder (default ./export)")
    p.add_argument("--num-classes", type=int, metavar="N", help="foreground classes (default: stored, else 1)")
    p.add_argument("--norm", choices=("bn", "gn", "frozen_bn"), help="normalisation layers (default: stored, else bn)")
    p.add_argument(
        "--mmdet-version",
        type=int,
        choices=(2, 3),
        help="with --to mmdet: a 3.x config (default) or a 2.x (mmcv-full 1.x) one, as SSPNet/RFLA/TOV use",
    )
    p.add_argument("--backbone-only", action="store_true", help="onnx: export the backbone only")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def _summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bhsearch export --to {result.target}: {result.spec_id}", caption_justify="left")
    table.add_column("file")
    table.add_column("size", justify="right")
    for name in result.files:
        path = result.out_dir / name
        size = path.stat().st_size if path.is_file() else 0
        table.add_row(str(path), f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB")
    console = Console()
    console.print(table)
    report = result.report
    for size, entry in report.get("backbone_check", {}).items():
        console.print(
            f"backbone ONNX vs PyTorch at {size}: max abs error {entry['max_abs_error']:.2e} "
            f"(feature values up to {entry['max_abs_value']:.2e})"
        )
    for size, entry in report.get("detector_check", {}).items():
        if "boxes_max_abs_error" in entry:
            console.print(
                f"detector ONNX vs PyTorch at {size}: {entry['detections']} detections, max abs error boxes "
                f"{entry['boxes_max_abs_error']:.2e} px, scores {entry['scores_max_abs_error']:.2e}"
            )
        else:
            console.print(
                f"detector ONNX vs PyTorch at {size}: [yellow]{entry['onnx_detections']} vs "
                f"{entry['detections']} detections[/yellow]"
            )
    if "weights" in report and isinstance(report["weights"], str):
        console.print(f"weights: {report['weights']}")


def run(args) -> int:
    import json

    from bhsearch.export import export
    from bhsearch.fileio import check_writable

    check_writable(args.out, "--out")  # before the model is built
    options = {}
    if args.norm:
        options["norm"] = args.norm
    if args.mmdet_version:
        if args.to != "mmdet":
            from bhsearch.errors import UsageError

            raise UsageError("--mmdet-version applies to --to mmdet only")
        options["mmdet_version"] = args.mmdet_version
    if args.backbone_only:
        if args.to != "onnx":
            from bhsearch.errors import UsageError

            raise UsageError("--backbone-only applies to --to onnx only")
        options["backbone_only"] = True
    result = export(
        args.source,
        args.to,
        args.out,
        detector=args.detector,
        num_classes=args.num_classes,
        weights=args.weights,
        input_size=args.input,
        trial=args.trial,
        **options,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _summary(result)
    return 0

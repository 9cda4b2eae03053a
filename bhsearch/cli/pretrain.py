"""``bhsearch pretrain``: classification pre-training of a backbone (CIFAR-100, ImageNet32, ImageNet, synthetic)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ORDER = 60

DESCRIPTION = """\
Pre-train a backbone as a classifier (global pool + linear) on 32x32 images, as the paper's
proxy task (random crop + flip, SGD, cosine or step schedule), or on ImageNet JPEG folders
(imagenet:PATH: 224x224 RandomResizedCrop + flip, evaluation Resize(256) + CenterCrop(224); set
--image-size for smaller runs). Writes OUT/backbone.safetensors
(loads into the backbone, and into `bhsearch finetune --init`), OUT/spec.json,
OUT/metrics.jsonl (top-1/top-5 per epoch, percent) and OUT/checkpoint.pt.

Ctrl-C saves a checkpoint after the current step; --resume continues to the same result.

Data-parallel on N processes (one per GPU, or N CPU processes): start the same command with
`torchrun --nproc_per_node N -m bhsearch pretrain ...`; --batch-size is then per process
(global batch = N x batch size), and rank 0 writes the run folder.

examples:
  bhsearch pretrain --spec bh-resnet50 --data cifar100:~/data --epochs 30 --out runs/pre
  bhsearch pretrain --spec resnet18 --width-mult 0.25 --data synthetic-cifar100:/tmp/c100 --epochs 2
  bhsearch pretrain --spec bh-resnet50 --data imagenet:~/data/ILSVRC2012 --num-workers 8 --epochs 90
  torchrun --standalone --nproc_per_node 2 -m bhsearch pretrain --spec bh-resnet50 \
      --data cifar100:~/data --batch-size 64 --out runs/pre
"""


def add_run_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by `pretrain` and `finetune`."""
    p.add_argument("--spec", required=True, help="a spec name (e.g. bh-resnet50), a spec id or a spec JSON/YAML file")
    p.add_argument("--out", default=default_out, help=f"run folder (default {default_out})")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON mapping of settings; command-line options win")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="images (or tiles) per step and process (torchrun: x processes)")
    p.add_argument("--accumulation", type=int, help="micro-batches per optimizer step (gradient accumulation)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--weight-decay", type=float, help="SGD weight decay")
    p.add_argument("--width-mult", type=float, help="scale every width of the spec (e.g. 0.25 for quick CPU runs)")
    p.add_argument("--norm", help="normalisation: bn, gn or frozen_bn")
    p.add_argument(
        "--sync-bn",
        action="store_true",
        default=None,
        help="torchrun on GPUs: BatchNorm statistics over all processes (SyncBatchNorm)",
    )
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), help="mixed precision (auto: bf16/fp16 on CUDA)")
    p.add_argument("--threads", type=int, dest="num_threads", help="CPU threads for torch")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes (default 0)")
    p.add_argument("--seed", type=int, help="random seed (runs with one seed are reproducible)")
    p.add_argument("--progress", choices=("auto", "on", "off"), help="progress bars (auto: on a terminal)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again even if --out holds a run")
    p.add_argument("--json", action="store_true", help="print the final result as JSON")


def build_config(cls, args: argparse.Namespace, names: dict[str, str], defaults: dict[str, Any] | None = None):
    """``cls`` from ``defaults`` (the data's recipe), then ``--config`` (if any), then the command-line options."""
    from bhsearch.spec import load_mapping

    values: dict[str, Any] = dict(defaults or {})
    values.update(load_mapping(args.config) if args.config else {})
    for attr, field in names.items():
        value = getattr(args, attr, None)
        if value is not None:
            values[field] = value
    return cls.from_dict(values)


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a bad ``--out`` before any data is read or epoch is run (exists as a file, read-only)."""
    from bhsearch.errors import UsageError
    from bhsearch.fileio import check_writable

    check_writable(out, "--out")
    if (out / "checkpoint.pt").is_file() and not (resume or overwrite):
        raise UsageError(f"{out} already holds a run (checkpoint.pt); pass --resume to continue or --overwrite")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")


def finish(result: dict[str, Any], keys: tuple[str, ...], title: str, as_json: bool) -> None:
    """Print the per-epoch summary table (or the result as JSON); in a data-parallel run rank 0 only."""
    from bhsearch.train import distributed

    if not distributed.is_main():
        return
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    from rich.console import Console

    from bhsearch.train.loop import summary_table

    console = Console()
    console.print(summary_table(result.get("history", []), keys, title))
    console.print(f"run folder: {result['out_dir']}")


def interrupted(out: Path) -> None:
    from bhsearch.train import distributed

    if distributed.is_main() and (out / "checkpoint.pt").is_file():
        print(f"checkpoint saved in {out}; continue with --resume", file=sys.stderr)


COMMON_FIELDS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "accumulation": "accumulation",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "width_mult": "width_mult",
    "norm": "norm",
    "sync_bn": "sync_bn",
    "device": "device",
    "amp": "amp",
    "num_threads": "num_threads",
    "num_workers": "num_workers",
    "seed": "seed",
    "progress": "progress",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pre-training of a backbone as a classifier (32x32 proxy sets or ImageNet)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        help="cifar100:PATH, imagenet32:PATH, imagenet:PATH (train/<wnid>/*.JPEG + val/), or synthetic-cifar100:DIR, "
        "synthetic-imagenet32:DIR, synthetic-imagenet:DIR",
    )
    add_run_options(p, "runs/pre")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), help="learning-rate schedule (default cosine)")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up length in epochs (default 0)")
    p.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (default 0)")
    p.add_argument(
        "--crop",
        choices=("pad", "resize", "none"),
        help="random crop: pad (default), resize (ImageNet default) or none",
    )
    p.add_argument("--image-size", type=int, help="training/eval resolution (default 32 = native; ImageNet 224)")
    p.add_argument("--crop-pct", type=float, help="image files: eval resize = image size / crop-pct (default 0.875)")
    p.add_argument(
        "--decode",
        choices=("auto", "worker", "device"),
        help="image files: decode JPEGs in the loader workers or on the device (auto: device on CUDA)",
    )
    p.add_argument("--max-train-samples", type=int, help="use a seeded subset of the training split")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bhsearch.data.registry import CLASSIFICATION_KINDS, parse_ref
    from bhsearch.errors import UsageError
    from bhsearch.spec import get_spec

    spec = get_spec(args.spec)  # cheap checks first: no torch import for a bad spec, --data or --out
    kind, path = parse_ref(args.data, CLASSIFICATION_KINDS)
    if not kind.startswith("synthetic-") and not path.exists():
        raise UsageError(f"{kind}: path {path} does not exist")
    out = Path(args.out)
    check_out_dir(out, args.resume, args.overwrite)
    from bhsearch.train.pretrain import PretrainConfig, data_defaults, run_pretrain

    names = dict(COMMON_FIELDS)
    names.update(
        schedule="schedule",
        warmup_epochs="warmup_epochs",
        label_smoothing="label_smoothing",
        crop="crop",
        image_size="image_size",
        crop_pct="crop_pct",
        decode="decode",
        max_train_samples="max_train_samples",
    )
    config = build_config(PretrainConfig, args, names, data_defaults(args.data))
    try:
        result = run_pretrain(spec, args.data, config, out, resume=args.resume)
    except KeyboardInterrupt:
        interrupted(out)
        raise
    finish(result, ("loss", "lr", "top1", "top5", "train_images_per_s"), f"pretrain {result['spec_id']}", args.json)
    return 0

"""``bhsearch widerface``: synthetic WiderFace data, dataset statistics, face-detector training and prediction."""

from __future__ import annotations

import argparse
import json

ORDER = 90

DESCRIPTION = """\
WiderFace (the paper's second benchmark) in its official layout:
WIDER_{train,val}/images/<event>/*.jpg, wider_face_split/wider_face_{train,val}_bbx_gt.txt and the
evaluation ground truth wider_face_val.mat + wider_{easy,medium,hard}_val.mat (eval_tools/ground_truth).

  synth OUT                     write a synthetic WiderFace-like tree (faces of 4 to ~100 px) into OUT
  stats ROOT                    images, faces, attribute counts, face sizes, easy/medium/hard face counts
  train SPEC --data ROOT --out DIR
                                fine-tune a TinaFace-style RetinaNet (P2-P7, 4 px anchors, GN heads,
                                DIoU loss, 640x640 crops) and evaluate easy/medium/hard AP
  predict RUN --data ROOT --out PRED
                                run a trained detector on the val images; writes the official text format
                                (PRED/<event>/<name>.txt) or COCO results (--format coco)

Score predictions with: bhsearch evaluate --benchmark widerface --gt ROOT --dets PRED
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "widerface",
        help="WiderFace: synthetic data, statistics, face-detector training and prediction",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="widerface_command", metavar="ACTION", required=True)

    s = sub.add_parser(
        "synth",
        help="write a synthetic WiderFace-format set",
        description="Write a synthetic "
        "WiderFace tree in the official layout (images, bbx_gt.txt files, .mat ground truth).",
    )
    s.add_argument("out", metavar="OUT")
    s.add_argument("--train", type=int, default=12, metavar="N", help="training images (default 12)")
    s.add_argument("--val", type=int, default=8, metavar="N", help="validation images (default 8)")
    s.add_argument("--width", type=int, default=320, help="image width in pixels (default 320; real set: 1024)")
    s.add_argument("--faces", type=int, nargs=2, default=(0, 12), metavar=("MIN", "MAX"), help="faces per image")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace an existing set in OUT")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=run)

    st = sub.add_parser(
        "stats",
        help="dataset statistics",
        description="Counts, attributes and face sizes "
        "(sqrt(w*h) in pixels) of a WiderFace tree, and the faces of each evaluation setting.",
    )
    st.add_argument("root", metavar="ROOT")
    st.add_argument("--split", choices=("train", "val", "both"), default="both")
    st.add_argument("--json", action="store_true", help="print the statistics as JSON")
    st.set_defaults(func=run)

    t = sub.add_parser(
        "train",
        help="fine-tune a face detector",
        description="Fine-tune a TinaFace-style "
        "RetinaNet on SPEC's backbone (bhsearch.train.finetune_widerface) and evaluate it with the "
        "official WiderFace protocol after every --eval-every epochs.",
    )
    t.add_argument("spec", metavar="SPEC", help="backbone: a name (resnet50, bh-resnet50 ...), spec id or file")
    t.add_argument("--data", required=True, help="WiderFace root, widerface:PATH or synthetic-widerface:PATH")
    t.add_argument("--out", required=True, help="run folder (model.safetensors, spec.json, metrics.jsonl ...)")
    t.add_argument("--init", default=None, help="backbone weights (backbone.safetensors or a torchvision .pth)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--batch-size", type=int, default=4, help="crops per step and process (torchrun: x processes)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.01 x batch / 4)")
    t.add_argument("--image-size", type=int, default=640, help="training crop size (default 640)")
    t.add_argument("--width-mult", type=float, default=1.0, help="scale the backbone widths (CPU runs)")
    t.add_argument("--fpn-channels", type=int, default=256)
    t.add_argument("--head-norm", choices=("gn", "none"), default="gn")
    t.add_argument("--box-loss", choices=("diou", "giou", "ciou", "smooth_l1", "l1"), default="diou")
    t.add_argument("--anchor-base", type=float, default=1.0, help="anchor = stride x base x 2^(k/3) (1: 4 px on P2)")
    t.add_argument("--norm", choices=("auto", "bn", "gn", "frozen_bn"), default="auto")
    t.add_argument("--sync-bn", action="store_true", help="torchrun on GPUs: SyncBatchNorm over all processes")
    t.add_argument("--max-train-images", type=int, default=None)
    t.add_argument("--max-eval-images", type=int, default=None)
    t.add_argument("--eval-max-size", type=int, default=None, help="shrink val images to this long side")
    t.add_argument("--eval-every", type=int, default=1)
    t.add_argument("--gt", default=None, help="evaluation GT folder (default: found under the data root)")
    t.add_argument("--device", default="auto")
    t.add_argument("--num-workers", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--progress", choices=("auto", "on", "off"), default="auto")
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    t.set_defaults(func=run)

    pr = sub.add_parser(
        "predict",
        help="predict the val images with a trained run",
        description="Run the face detector of a `bhsearch widerface train` folder on the validation images.",
    )
    pr.add_argument("run_dir", metavar="RUN")
    pr.add_argument("--data", required=True, help="WiderFace root")
    pr.add_argument("--out", required=True, help="output folder (text) or .json file (coco)")
    pr.add_argument("--format", choices=("text", "coco"), default="text")
    pr.add_argument("--max-images", type=int, default=None)
    pr.add_argument("--max-size", type=int, default=None, help="shrink images to this long side")
    pr.add_argument("--device", default="auto")
    pr.set_defaults(func=run)


def run(args) -> int:
    return {"synth": _synth, "stats": _stats, "train": _train, "predict": _predict}[args.widerface_command](args)


def _synth(args) -> int:
    from bhsearch.tasks.widerface.reader import load_eval_gt
    from bhsearch.tasks.widerface.synthetic import write_widerface

    out = write_widerface(
        args.out,
        n_train=args.train,
        n_val=args.val,
        seed=args.seed,
        width=args.width,
        faces=tuple(args.faces),
        overwrite=args.overwrite,
    )
    counts = load_eval_gt(out).face_counts()
    result = {"out": str(out), "train_images": args.train, "val_images": args.val, "val_faces": counts}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {args.train} train + {args.val} val images to {out}; val faces {counts}")
    return 0


def _stats(args) -> int:
    from bhsearch.errors import DataError
    from bhsearch.tasks.widerface.reader import WiderFaceDataset, load_eval_gt, resolve_gt_files

    splits = ("train", "val") if args.split == "both" else (args.split,)
    result = {split: WiderFaceDataset(args.root, split).summary() for split in splits}
    try:
        resolve_gt_files(args.root)
    except DataError:
        result["eval_gt"] = None
    else:
        gt = load_eval_gt(args.root)
        result["eval_gt"] = {"images": len(gt), "faces": gt.face_counts(), "files": gt.sources}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"WiderFace {args.root}")
    table.add_column("")
    for split in splits:
        table.add_column(split, justify="right")
    rows = ("images", "events", "empty_images", "boxes", "invalid", "dropped_zero_area", "clipped")
    for key in rows:
        table.add_row(key, *(str(result[s][key]) for s in splits))
    for key in ("size_min", "size_median", "size_max", "frac_le_10", "frac_le_32"):
        table.add_row(key, *(f"{result[s][key]:.3g}" for s in splits))
    console = Console()
    console.print(table)
    if result["eval_gt"]:
        console.print(f"evaluation GT: {result['eval_gt']['images']} images, faces {result['eval_gt']['faces']}")
    else:
        console.print("no evaluation GT (wider_face_val.mat + wider_{easy,medium,hard}_val.mat) found")
    return 0


def _train(args) -> int:
    from bhsearch.fileio import check_writable
    from bhsearch.train.finetune_widerface import WiderFaceConfig, run_finetune_widerface

    check_writable(args.out, "--out")
    config = WiderFaceConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
        width_mult=args.width_mult,
        fpn_channels=args.fpn_channels,
        norm=args.norm,
        sync_bn=args.sync_bn,
        max_train_images=args.max_train_images,
        max_eval_images=args.max_eval_images,
        eval_max_size=args.eval_max_size,
        eval_every=args.eval_every,
        gt=args.gt,
        device=args.device,
        num_workers=args.num_workers,
        seed=args.seed,
        progress=args.progress,
        detector_kwargs={"head_norm": args.head_norm, "box_loss": args.box_loss, "anchor_base": args.anchor_base},
    )
    result = run_finetune_widerface(args.spec, args.data, config, args.out, init=args.init, resume=args.resume)
    from bhsearch.train import distributed

    if not distributed.is_main():  # torchrun: rank 0 prints
        return 0
    summary = {k: v for k, v in result.items() if k != "history"}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        aps = ", ".join(f"{k} {_fmt(summary.get(k))}" for k in ("AP_easy", "AP_medium", "AP_hard"))
        print(f"{summary['out_dir']}: {aps} (percent, official WiderFace protocol)")
    return 0


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def _predict(args) -> int:
    from pathlib import Path

    from bhsearch.fileio import check_writable
    from bhsearch.tasks.widerface.evaluate import predictions_to_coco, write_prediction_folder
    from bhsearch.tasks.widerface.reader import WiderFaceDataset
    from bhsearch.train import loop
    from bhsearch.train.finetune_widerface import load_face_model, predict_widerface

    check_writable(args.out, "--out", is_dir=args.format == "text")
    device = loop.select_device(args.device)
    model, _ = load_face_model(args.run_dir, device)
    dataset = WiderFaceDataset(args.data, "val")
    indices = list(range(len(dataset)))[: args.max_images] if args.max_images else None
    preds = predict_widerface(model, dataset, indices, max_size=args.max_size, device=device)
    if args.format == "text":
        write_prediction_folder(preds, args.out)
    else:
        keys = [r.key for r in dataset.records]
        loop.atomic_write_text(Path(args.out), json.dumps(predictions_to_coco(preds, keys)))
    print(f"wrote predictions of {len(preds)} images to {args.out}")
    return 0

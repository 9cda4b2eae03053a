"""``bhsearch data``: generate synthetic datasets in the real formats, inspect datasets and their tiles."""

from __future__ import annotations

import argparse
import json

ORDER = 40

DESCRIPTION = """\
Datasets in their real on-disk formats.

  synth-tinyperson OUT   write a TinyPerson-like tiny_set/ tree (JPEG + COCO JSON) into OUT
  synth-aitod OUT        write an AI-TOD-like AI-TOD/ tree (PNG + COCO JSON, 8 classes) into OUT
  synth-cifar100 OUT     write cifar-100-python/{train,test,meta} into OUT
  synth-imagenet32 OUT   write ImageNet32 batches (Imagenet32_train/, Imagenet32_val/) into OUT
  synth-imagenet OUT     write ILSVRC2012-layout JPEG folders (train/<wnid>/, val/) into OUT
  stats KIND:PATH        counts and the object-size histogram (size = sqrt(w*h) in pixels)
  tiles KIND:PATH        how many training/test tiles, boxes kept/dropped by the 0.7 rule

KIND is one of cifar100, imagenet32, imagenet, tinyperson, aitod, synthetic-cifar100,
synthetic-imagenet32, synthetic-imagenet, synthetic-tinyperson, synthetic-aitod (synthetic-* generate a
small set into PATH if it is absent).
"""

SIZE_BINS = (0, 8, 12, 20, 32, 64, float("inf"))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="generate synthetic datasets; dataset and tiling statistics",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    tp = sub.add_parser(
        "synth-tinyperson",
        help="write a synthetic TinyPerson-format set",
        description="Write OUT/tiny_set/{train,test}/... and OUT/tiny_set/annotations/... "
        "(sea/shore scenes with tiny persons, distractors, ignore regions, a dense image).",
    )
    tp.add_argument("out", metavar="OUT")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--train", type=int, default=8, metavar="N", help="training images (default 8)")
    tp.add_argument("--test", type=int, default=4, metavar="N", help="test images (default 4)")
    tp.add_argument("--min-size", type=int, default=1000, help="smallest image width in pixels (default 1000)")
    tp.add_argument("--max-size", type=int, default=2500, help="largest image width in pixels (default 2500)")
    tp.add_argument(
        "--persons",
        type=int,
        nargs=2,
        default=(8, 40),
        metavar=("MIN", "MAX"),
        help="persons per image (default 8 40; the dense image gets 4x)",
    )
    tp.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image format (default jpg)")
    tp.add_argument("--overwrite", action="store_true", help="replace an existing OUT/tiny_set")
    tp.add_argument("--json", action="store_true", help="print the written paths and stats as JSON")
    tp.set_defaults(func=run)

    a = sub.add_parser(
        "synth-aitod",
        help="write a synthetic AI-TOD-format set",
        description="Write OUT/AI-TOD/annotations/aitod_{trainval,test}_v1.json and OUT/AI-TOD/{trainval,test}/images "
        "(8 classes, objects of mean size ~12 px, like AI-TOD's 12.8).",
    )
    a.add_argument("out", metavar="OUT")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--train", type=int, default=6, metavar="N", help="trainval images (default 6)")
    a.add_argument("--test", type=int, default=3, metavar="N", help="test images (default 3)")
    a.add_argument("--image-size", type=int, default=800, help="image side in pixels (default 800, as AI-TOD)")
    a.add_argument(
        "--objects", type=int, nargs=2, default=(20, 60), metavar=("MIN", "MAX"), help="objects per image (20 60)"
    )
    a.add_argument("--overwrite", action="store_true", help="replace an existing OUT/AI-TOD")
    a.add_argument("--json", action="store_true", help="print the written path and stats as JSON")
    a.set_defaults(func=run)

    c = sub.add_parser(
        "synth-cifar100",
        help="write a synthetic CIFAR-100-format set",
        description="Write OUT/cifar-100-python/{train,test,meta}: 100 classes of (shape, colour, texture), 32x32.",
    )
    c.add_argument("out", metavar="OUT")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--train", type=int, default=5000, metavar="N", help="training images (default 5000)")
    c.add_argument("--test", type=int, default=1000, metavar="N", help="test images (default 1000)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing OUT/cifar-100-python")
    c.add_argument("--json", action="store_true", help="print the written path as JSON")
    c.set_defaults(func=run)

    i = sub.add_parser(
        "synth-imagenet32",
        help="write a synthetic ImageNet32-format set",
        description="Write OUT/Imagenet32_train/train_data_batch_K and OUT/Imagenet32_val/val_data "
        "(labels 1..1000; .npz files in *_npz folders with --npz).",
    )
    i.add_argument("out", metavar="OUT")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--batches", type=int, default=2, help="training batch files, 1..10 (default 2)")
    i.add_argument("--per-batch", type=int, default=2000, help="images per training batch (default 2000)")
    i.add_argument("--val", type=int, default=1000, metavar="N", help="validation images (default 1000)")
    i.add_argument("--npz", action="store_true", help="write .npz files instead of pickles")
    i.add_argument("--overwrite", action="store_true", help="replace existing OUT/Imagenet32_* folders")
    i.add_argument("--json", action="store_true", help="print the written path as JSON")
    i.set_defaults(func=run)

    n = sub.add_parser(
        "synth-imagenet",
        help="write a synthetic ImageNet (ILSVRC2012 JPEG folders) set",
        description="Write OUT/train/<wnid>/<wnid>_K.JPEG and the validation JPEGs ILSVRC2012_val_NNNNNNNN.JPEG: "
        "in OUT/val/<wnid>/ (--val-layout folders), flat in OUT/val/ with the devkit's "
        "ILSVRC2012_devkit_t12/data/{ILSVRC2012_validation_ground_truth.txt,meta.mat} (devkit) or flat with "
        "OUT/LOC_val_solution.csv (kaggle). Images are 64..96 px by default.",
    )
    n.add_argument("out", metavar="OUT")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--classes", type=int, default=10, help="number of classes (wnids), 1..1000 (default 10)")
    n.add_argument("--train", type=int, default=8, metavar="N", help="training images per class (default 8)")
    n.add_argument("--val", type=int, default=4, metavar="N", help="validation images per class (default 4)")
    n.add_argument("--min-size", type=int, default=64, help="smallest image side in pixels (default 64)")
    n.add_argument("--max-size", type=int, default=96, help="largest image side in pixels (default 96)")
    n.add_argument(
        "--val-layout",
        choices=("folders", "devkit", "kaggle"),
        default="folders",
        help="validation layout (default folders)",
    )
    n.add_argument("--overwrite", action="store_true", help="replace existing OUT/train, OUT/val (and label files)")
    n.add_argument("--json", action="store_true", help="print the written path as JSON")
    n.set_defaults(func=run)

    s = sub.add_parser(
        "stats",
        help="dataset counts and object-size histogram",
        description="Counts per split and, for detection sets, the histogram of object sizes "
        "sqrt(w*h) in the TinyPerson ranges.",
    )
    s.add_argument("ref", metavar="KIND:PATH")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=run)

    t = sub.add_parser(
        "tiles",
        help="tile counts and boxes kept/dropped",
        description="Cut every image into tiles (default 640x512, 30 px overlap) and count tiles "
        "and boxes kept/dropped by the sqrt(clipped/original area) >= 0.7 rule.",
    )
    t.add_argument("ref", metavar="KIND:PATH")
    t.add_argument("--tile", default="640x512", help="tile size WIDTHxHEIGHT (default 640x512)")
    t.add_argument("--overlap", type=int, default=30, help="overlap in pixels (default 30)")
    t.add_argument("--json", action="store_true", help="print JSON instead of a table")
    t.set_defaults(func=run)


def _print(obj, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in obj.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        table.add_row(str(key), str(value))
    Console().print(table)


def _histogram(sizes) -> dict[str, int]:
    import numpy as np

    counts, _ = np.histogram(sizes, bins=np.array(SIZE_BINS))
    labels = [f"[{lo:g},{hi:g})" for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:], strict=True)]
    return {f"size {lab}": int(n) for lab, n in zip(labels, counts, strict=True)}


def _stats(ref: str) -> dict:
    from bhsearch.data import registry

    kind, _ = registry.parse_ref(ref)
    out: dict = {"ref": ref}
    if kind in registry.CLASSIFICATION_KINDS:
        import numpy as np

        for split in ("train", "test"):
            ds = registry.open_classification(ref, split)
            out[f"{split}_images"] = len(ds)
            out[f"{split}_classes_present"] = int(np.unique(ds.targets).size)
        out["num_classes"] = ds.num_classes
        return out
    import numpy as np

    for split in ("train", "test"):
        ds = registry.open_detection(ref, split)
        summary = ds.summary()
        for key, value in summary.items():
            out[f"{split}_{key}"] = value
        sizes = np.concatenate([r.sizes for r in ds.records]) if ds.records else np.zeros(0)
        out.update({f"{split}_{k}": v for k, v in _histogram(sizes).items()})
    return out


def run(args) -> int:
    from bhsearch.errors import UsageError

    cmd = args.data_command
    if cmd == "synth-tinyperson":
        from bhsearch.tasks.tinyperson.synthetic import write_tinyperson

        res = write_tinyperson(
            args.out,
            n_train=args.train,
            n_test=args.test,
            seed=args.seed,
            min_size=args.min_size,
            max_size=args.max_size,
            persons=tuple(args.persons),
            image_format=args.format,
            overwrite=args.overwrite,
        )
        _print({**{k: v for k, v in res.items() if k != "stats"}, **res["stats"]}, args.json, "synthetic TinyPerson")
    elif cmd == "synth-aitod":
        from bhsearch.tasks.aitod.synthetic import write_aitod

        res = write_aitod(
            args.out,
            n_trainval=args.train,
            n_test=args.test,
            seed=args.seed,
            image_size=args.image_size,
            objects=tuple(args.objects),
            overwrite=args.overwrite,
        )
        _print(res, args.json, "synthetic AI-TOD")
    elif cmd == "synth-cifar100":
        from bhsearch.data.synthetic import write_cifar100

        path = write_cifar100(args.out, n_train=args.train, n_test=args.test, seed=args.seed, overwrite=args.overwrite)
        _print({"path": str(path), "train": args.train, "test": args.test}, args.json, "synthetic CIFAR-100")
    elif cmd == "synth-imagenet32":
        from bhsearch.data.synthetic import write_imagenet32

        path = write_imagenet32(
            args.out,
            n_batches=args.batches,
            per_batch=args.per_batch,
            n_val=args.val,
            seed=args.seed,
            fmt="npz" if args.npz else "pickle",
            overwrite=args.overwrite,
        )
        _print(
            {"path": str(path), "train": args.batches * args.per_batch, "val": args.val},
            args.json,
            "synthetic ImageNet32",
        )
    elif cmd == "synth-imagenet":
        from bhsearch.data.synthetic import write_imagenet

        path = write_imagenet(
            args.out,
            n_classes=args.classes,
            n_train=args.train,
            n_val=args.val,
            seed=args.seed,
            min_size=args.min_size,
            max_size=args.max_size,
            val_layout=args.val_layout,
            overwrite=args.overwrite,
        )
        _print(
            {
                "path": str(path),
                "classes": args.classes,
                "train": args.classes * args.train,
                "val": args.classes * args.val,
                "val_layout": args.val_layout,
            },
            args.json,
            "synthetic ImageNet",
        )
    elif cmd == "stats":
        _print(_stats(args.ref), args.json, f"dataset {args.ref}")
    elif cmd == "tiles":
        from bhsearch.data import registry
        from bhsearch.data.tiling import check_overlap
        from bhsearch.spec import parse_input_size

        tile = parse_input_size(args.tile)
        check_overlap(tile, args.overlap)
        kind, _ = registry.parse_ref(args.ref)
        if kind not in registry.DETECTION_KINDS:
            raise UsageError(
                f"data tiles needs a detection dataset ({', '.join(registry.DETECTION_KINDS)}), got {kind}"
            )
        out = {"ref": args.ref, "tile": f"{tile[0]}x{tile[1]}", "overlap": args.overlap}
        for split in ("train", "test"):
            tiles = registry.open_detection(args.ref, split, tile=tile, overlap=args.overlap)
            out.update({f"{split}_{k}": v for k, v in tiles.stats().items()})
        _print(out, args.json, f"tiles of {args.ref}")
    return 0

"""Standard vs bottom-heavy backbone at equal cost: proxy pre-training → detector fine-tuning → AP50_tiny.

Both backbones (ResNet-50 and the paper's BH-ResNet-50 by default, width-scaled for the CPU) are
pre-trained on the synthetic 100-class set and fine-tuned on synthetic TinyPerson with identical
settings, for every seed; the table gives AP50_tiny (and tiny1-3) for each and the difference.

    python benchmarks/bh_vs_standard.py                       # default size (< 1 h on 2 cores)
    python benchmarks/bh_vs_standard.py --preset quick        # a few minutes, for a smoke run
    python benchmarks/bh_vs_standard.py --width 0.25 --seeds 0 1 2 --pre-epochs 6 --ft-epochs 8

Every setting is printed; the data are generated into --out/data once and reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PRESETS = {
    # n_cifar_train, n_cifar_test, tp_train, tp_test, tp_min, tp_max, pre_epochs, ft_epochs, tile
    "quick": dict(
        cifar_train=2000, cifar_test=500, tp_train=6, tp_test=4, tp_min=500, tp_max=700, pre_epochs=2, ft_epochs=3,
        tile="320x256",
    ),
    "default": dict(
        cifar_train=5000, cifar_test=1000, tp_train=16, tp_test=6, tp_min=640, tp_max=1000, pre_epochs=4, ft_epochs=6,
        tile="320x256",
    ),
}  # fmt: skip

SMALL_HEADS = {  # cheaper torchvision heads for CPU runs; identical for both backbones
    "box_batch_size_per_image": 128,
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 500,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_test": 500,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--specs", nargs=2, default=["resnet50", "bh-resnet50"], metavar=("STANDARD", "BOTTOM_HEAVY"))
    p.add_argument("--width", type=float, default=0.25, help="width multiplier for both specs (default 1/4)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--pre-epochs", type=int)
    p.add_argument("--ft-epochs", type=int)
    p.add_argument("--cifar-train", type=int)
    p.add_argument("--cifar-test", type=int)
    p.add_argument("--tp-train", type=int, help="synthetic TinyPerson training images")
    p.add_argument("--tp-test", type=int, help="synthetic TinyPerson test images")
    p.add_argument("--tp-min", type=int, help="smallest synthetic image width")
    p.add_argument("--tp-max", type=int, help="largest synthetic image width")
    p.add_argument("--tile", help="fine-tuning tile WIDTHxHEIGHT")
    p.add_argument("--detector", default="faster_rcnn")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("runs/bh_vs_standard"))
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def ensure_data(args) -> tuple[str, str]:
    from bhsearch.tasks.tinyperson import synthetic

    cifar, tiny = args.out / "data" / "cifar100", args.out / "data" / "tinyperson"
    if not (cifar / "cifar-100-python" / "train").is_file():
        synthetic.write_cifar100(cifar, n_train=args.cifar_train, n_test=args.cifar_test, seed=1234)
    if not (tiny / "tiny_set" / "annotations" / "task" / "tiny_set_test_all.json").is_file():
        synthetic.write_tinyperson(
            tiny, n_train=args.tp_train, n_test=args.tp_test, seed=1234, min_size=args.tp_min, max_size=args.tp_max
        )
    return f"cifar100:{cifar}", f"tinyperson:{tiny}"


def run_one(args, name: str, seed: int, cifar_ref: str, tiny_ref: str) -> dict:
    from bhsearch.cost import count
    from bhsearch.spec import get_spec, parse_input_size
    from bhsearch.train.finetune import FinetuneConfig, run_finetune
    from bhsearch.train.pretrain import PretrainConfig, run_pretrain

    spec = get_spec(name).scaled(args.width)
    tile = parse_input_size(args.tile)
    run_dir = args.out / f"{name}-w{args.width:g}-s{seed}"
    t0 = time.perf_counter()
    pre = run_pretrain(
        spec,
        cifar_ref,
        PretrainConfig(
            epochs=args.pre_epochs, batch_size=128, lr=0.05, warmup_epochs=0.5, seed=seed, num_threads=args.threads
        ),
        run_dir / "pre",
        resume=True,
    )
    t1 = time.perf_counter()
    fine = run_finetune(
        spec,
        tiny_ref,
        FinetuneConfig(
            detector=args.detector,
            epochs=args.ft_epochs,
            batch_size=4,
            tile=tile,
            overlap=30,
            fpn_channels=64,
            warmup_steps=50,
            eval_every=args.ft_epochs,
            seed=seed,
            num_threads=args.threads,
            detector_kwargs=SMALL_HEADS,
        ),
        run_dir / "det",
        init=run_dir / "pre" / "backbone.safetensors",
        resume=True,
    )
    t2 = time.perf_counter()
    cost = count(spec, f"{tile[0]}x{tile[1]}")
    return {
        "spec": name,
        "seed": seed,
        "spec_id": spec.id,
        "gflops_tile": cost.flops / 1e9,
        "activations_M": cost.activations / 1e6,
        "top1": pre["top1"],
        **{
            k: fine.get(k)
            for k in ("AP50_tiny", "AP50_tiny1", "AP50_tiny2", "AP50_tiny3", "AP50_small", "AP25_tiny", "AP50_all")
        },
        "det_loss": fine.get("loss"),
        "pre_s": t1 - t0,
        "ft_s": t2 - t1,
    }


def _f(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def main(argv=None) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=160)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    console.print(f"settings: {json.dumps(settings)}")
    console.print(f"heads (both): {SMALL_HEADS}")
    cifar_ref, tiny_ref = ensure_data(args)
    rows = []
    t_start = time.perf_counter()
    for seed in args.seeds:
        for name in args.specs:
            row = run_one(args, name, seed, cifar_ref, tiny_ref)
            rows.append(row)
            console.print(
                f"{name} seed {seed}: top1 {_f(row['top1'])}  AP50_tiny {_f(row['AP50_tiny'])}  "
                f"({row['pre_s']:.0f} s + {row['ft_s']:.0f} s)"
            )
    table = Table(title=f"standard vs bottom-heavy, width x{args.width:g}, {args.detector}, tile {args.tile}")
    columns = ("spec", "seed", "GFLOPs/tile", "act. M", "proxy top1", "AP50_tiny", "tiny1", "tiny2", "tiny3")
    for col in (*columns, "AP25_tiny", "AP50_all", "time s"):
        table.add_column(col, justify="right" if col != "spec" else "left")
    for r in rows:
        table.add_row(
            r["spec"], str(r["seed"]), _f(r["gflops_tile"], 3), _f(r["activations_M"], 1), _f(r["top1"]),
            _f(r["AP50_tiny"]), _f(r["AP50_tiny1"]), _f(r["AP50_tiny2"]), _f(r["AP50_tiny3"]),
            _f(r["AP25_tiny"]), _f(r["AP50_all"]), f"{r['pre_s'] + r['ft_s']:.0f}",
        )  # fmt: skip
    std, bh = args.specs
    diffs = []
    for seed in args.seeds:
        a = next(r for r in rows if r["spec"] == std and r["seed"] == seed)["AP50_tiny"]
        b = next(r for r in rows if r["spec"] == bh and r["seed"] == seed)["AP50_tiny"]
        if a is not None and b is not None:
            diffs.append(b - a)
    console.print(table)
    for name in args.specs:
        aps = [r["AP50_tiny"] for r in rows if r["spec"] == name and r["AP50_tiny"] is not None]
        sd = statistics.stdev(aps) if len(aps) > 1 else 0.0
        console.print(f"{name}: AP50_tiny mean {_f(statistics.mean(aps) if aps else None)} ± {sd:.2f} (n={len(aps)})")
    if diffs:
        console.print(
            f"difference {bh} - {std}: per seed {[round(d, 2) for d in diffs]}, mean {statistics.mean(diffs):+.2f}"
        )
    console.print(f"total time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training-loop overhead, loader vs step rate, and R50 vs BH-R50 training throughput (CPU-sized).

1. ``Trainer.train_epoch`` (LR per step, finite-loss check, bookkeeping) against a minimal
   hand-written loop (zero_grad / forward / backward / step) on the same model and batches:
   classification (32x32 batches) and Faster R-CNN (tiles). Overhead in percent.
2. Data loading vs training: batches/s of the pre-training loader and tiles/s of the detection
   tile loader, each against the training step rate on the same data.
3. Images/s of ResNet-50 vs BH-ResNet-50 (equal FLOPs) at one width scale (printed), as
   classifier training at 32x32 and as backbone forward+backward on a 640x512 tile.

Timings alternate between the two contenders and report medians; ratios are within this run.

    python benchmarks/train_overhead.py [--width 0.25] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def say(text: str) -> None:
    print(text, flush=True)


def alternate(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, interleaved so machine noise hits all of them alike."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def minimal_loop(model, opt, batches, loss_of):
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        loss = loss_of(batch)
        loss.backward()
        opt.step()


def our_loop(model, opt, batches, loss_of):
    from bhsearch.train import loop

    trainer = loop.Trainer(
        stage="bench",
        model=model,
        optimizer=opt,
        schedule=loop.LRSchedule(base_lr=opt.param_groups[0]["lr"], total_steps=10**6, kind="cosine"),
        device=torch.device("cpu"),
        amp_dtype=None,
        accumulation=1,
        reporter=loop.Reporter("bench", "off"),
        save=lambda st, rng: None,
        checkpoint_interval_s=0,
    )

    def loss_fn(batch, b):
        loss = loss_of(batch)
        return loss, {}, 1

    trainer.train_epoch(loop.LoopState(), 1, len(batches), batches, loss_fn)


def classification_overhead(width: float, repeats: int, steps: int = 5) -> None:
    from bhsearch.models import build_backbone
    from bhsearch.spec import get_spec
    from bhsearch.train.pretrain import Classifier

    torch.manual_seed(0)
    model = Classifier(build_backbone(get_spec("resnet50").scaled(width)), 100)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(32, 3, 32, 32), torch.randint(0, 100, (32,))) for _ in range(steps)]

    def loss_of(b):
        return F.cross_entropy(model(b[0]), b[1])

    minimal_loop(model, opt, batches[:2], loss_of)  # warm-up
    t = alternate(
        {
            "minimal": lambda: minimal_loop(model, opt, batches, loss_of),
            "ours": lambda: our_loop(model, opt, batches, loss_of),
        },
        repeats,
    )
    say(
        f"classification R50 x{width:g}, batch 32, {steps} steps: minimal {steps * 32 / t['minimal']:.0f} img/s, "
        f"ours {steps * 32 / t['ours']:.0f} img/s, overhead {100 * (t['ours'] / t['minimal'] - 1):+.1f}%"
    )


def detection_overhead(width: float, repeats: int, steps: int = 2) -> None:
    from bhsearch.detectors import build_detector
    from bhsearch.spec import get_spec

    torch.manual_seed(0)
    model = build_detector(get_spec("resnet50").scaled(width), "faster_rcnn", fpn_channels=64, image_size=(320, 256))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    boxes = torch.tensor([[20.0, 30.0, 32.0, 52.0], [100.0, 100.0, 108.0, 116.0], [200.0, 50.0, 215.0, 80.0]])
    batches = [
        (
            [torch.rand(3, 256, 320) for _ in range(2)],
            [{"boxes": boxes, "labels": torch.ones(3, dtype=torch.int64)}] * 2,
        )
        for _ in range(steps)
    ]

    def loss_of(b):
        return sum(model(b[0], b[1]).values())

    minimal_loop(model, opt, batches[:1], loss_of)
    t = alternate(
        {
            "minimal": lambda: minimal_loop(model, opt, batches, loss_of),
            "ours": lambda: our_loop(model, opt, batches, loss_of),
        },
        repeats,
    )
    say(
        f"Faster R-CNN R50 x{width:g}, 2 tiles 320x256, {steps} steps: minimal {2 * steps / t['minimal']:.2f} tiles/s, "
        f"ours {2 * steps / t['ours']:.2f} tiles/s, overhead {100 * (t['ours'] / t['minimal'] - 1):+.1f}%"
    )


def loader_vs_step(width: float, tmp: Path) -> None:
    from bhsearch.data import synthetic
    from bhsearch.data.registry import open_classification, open_detection
    from bhsearch.detectors import build_detector
    from bhsearch.models import build_backbone
    from bhsearch.spec import get_spec
    from bhsearch.tasks.tinyperson.reader import collate_tiles
    from bhsearch.tasks.tinyperson.synthetic import write_tinyperson
    from bhsearch.train import loop
    from bhsearch.train.pretrain import Classifier, PretrainConfig, _as_batches, augment_batch

    synthetic.write_cifar100(tmp / "c", n_train=1024, n_test=64, seed=0)
    ds, collate = _as_batches(open_classification(f"cifar100:{tmp / 'c'}", "train"), None, 0, "train")
    sampler = loop.EpochBatchSampler(len(ds), 128, seed=0)
    loader = loop.make_loader(ds, sampler, collate_fn=collate, num_workers=0, device=torch.device("cpu"))
    config = PretrainConfig()
    t_load = timed(lambda: [augment_batch(x, config, loop.generator(0, b)) for b, (x, _) in enumerate(loader)])
    model = Classifier(build_backbone(get_spec("resnet50").scaled(width)), 100)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = next(iter(loader))
    xb = augment_batch(x, config, loop.generator(0))
    minimal_loop(model, opt, [(xb, y)], lambda b: F.cross_entropy(model(b[0]), b[1]))
    t_step = timed(lambda: minimal_loop(model, opt, [(xb, y)] * 2, lambda b: F.cross_entropy(model(b[0]), b[1]))) / 2
    n = sampler.num_batches
    say(
        f"pretrain loader+augment (0 workers): {n / t_load:.1f} batches/s of 128 vs training {1 / t_step:.1f} steps/s "
        f"(R50 x{width:g}) -> loader is {t_step * n / t_load:.1f}x faster than training"
    )

    write_tinyperson(tmp / "t", n_train=4, n_test=1, seed=0, min_size=1000, max_size=1400)
    tiles = open_detection(f"tinyperson:{tmp / 't'}", "train", tile=(640, 512), overlap=30)
    groups = [item[0] for item in tiles.items]
    tsampler = loop.EpochBatchSampler(len(tiles), 2, seed=0, groups=groups)
    tloader = loop.make_loader(tiles, tsampler, collate_fn=collate_tiles, num_workers=0, device=torch.device("cpu"))
    t_tiles = timed(lambda: list(tloader))
    det = build_detector(get_spec("resnet50").scaled(width), "faster_rcnn", fpn_channels=64)
    det.train()
    dopt = torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=0.001)
    images, targets = next(iter(tloader))
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
    minimal_loop(det, dopt, [(images, targets)], lambda b: sum(det(b[0], b[1]).values()))
    t_det = timed(lambda: minimal_loop(det, dopt, [(images, targets)] * 2, lambda b: sum(det(b[0], b[1]).values())))
    tile_rate, train_rate = len(tiles) / t_tiles, 2 * len(images) / t_det
    say(
        f"tile loader (0 workers, 640x512 from 1000-1400 px JPEGs): {tile_rate:.1f} tiles/s vs Faster R-CNN "
        f"R50 x{width:g} training {train_rate:.2f} tiles/s -> loader is {tile_rate / train_rate:.0f}x faster"
    )


def r50_vs_bh(width: float, repeats: int) -> None:
    from bhsearch.cost import count
    from bhsearch.models import build_backbone
    from bhsearch.spec import get_spec
    from bhsearch.train.pretrain import Classifier

    specs = {name: get_spec(name).scaled(width) for name in ("resnet50", "bh-resnet50")}
    for name, spec in specs.items():
        c = count(spec, "640x512")
        say(f"  {name} x{width:g}: {c.flops / 1e9:.3f} GFLOPs (paper conv.), {c.activations / 1e6:.1f} M activations")
    torch.manual_seed(0)
    cls = {n: Classifier(build_backbone(s), 100) for n, s in specs.items()}
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01) for n, m in cls.items()}
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 100, (32,))

    def cls_step(n):
        return lambda: minimal_loop(cls[n], opts[n], [(x, y)] * 2, lambda b: F.cross_entropy(cls[n](b[0]), b[1]))

    for n in cls:
        cls_step(n)()
    t = alternate({n: cls_step(n) for n in cls}, repeats)
    a, b = (64 / t[n] for n in ("resnet50", "bh-resnet50"))
    say(f"classifier training 32x32, batch 32: R50 {a:.0f} img/s, BH-R50 {b:.0f} img/s (BH/R50 = {b / a:.2f})")

    bbs = {n: build_backbone(s) for n, s in specs.items()}
    tile = torch.randn(1, 3, 512, 640)

    def bb_step(n):
        return lambda: sum(v.float().mean() for v in bbs[n](tile).values()).backward()

    for n in bbs:
        bb_step(n)()
    t = alternate({n: bb_step(n) for n in bbs}, repeats)
    a, b = (1 / t[n] for n in ("resnet50", "bh-resnet50"))
    say(f"backbone fwd+bwd on a 640x512 tile: R50 {a:.2f} img/s, BH-R50 {b:.2f} img/s (BH/R50 = {b / a:.2f})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.25, help="width multiplier of the specs (default 1/4)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, width scale x{args.width:g}")
    say("1. loop overhead (ours vs minimal hand-written loop, same model and batches)")
    classification_overhead(args.width, args.repeats)
    detection_overhead(args.width, max(3, args.repeats // 2))
    say("2. data loading vs training step rate")
    with tempfile.TemporaryDirectory() as tmp:
        loader_vs_step(args.width, Path(tmp))
    say("3. ResNet-50 vs BH-ResNet-50 at equal FLOPs")
    r50_vs_bh(args.width, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

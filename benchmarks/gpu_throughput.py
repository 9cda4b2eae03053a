"""Training throughput of bhsearch's training step vs a bare torchvision-style loop, and peak memory.

For each stage, on the same model, batch, device, AMP dtype and memory format:

* ``pretrain``: ``Classifier(build_backbone(spec))`` on uint8 ``(B, S, S, 3)`` batches already on the device
  (as image files arrive after decoding and cropping). *ours* = ``loop.Trainer.train_epoch`` with the
  pre-training step of ``bhsearch.train.pretrain.run_pretrain`` (``augment_batch``: flip + normalise on the
  device, channels_last, autocast, GradScaler for fp16, per-step LR, finite-loss check); *bare* = the
  torchvision reference loop (zero_grad, autocast forward, cross-entropy, backward, step) on a batch that is
  already normalised float.
* ``finetune``: ``build_detector(spec)`` Faster R-CNN on ``--tile`` tiles with a few small boxes; *ours* =
  ``Trainer`` with the fine-tuning step (``hflip_batch``, sum of the loss dict), *bare* = the plain loop.

Prints images/s of both, the overhead ``bare / ours - 1`` (target <= 10 %) and, on CUDA, the peak memory of a
training step (``torch.cuda.max_memory_allocated``) next to bhsearch's analytic training memory of the backbone
(``bhsearch.latency.train_memory_breakdown``: saved activations + weights + gradients of the backbone only; the
classifier/detector head, optimizer state, the input batch and cuDNN workspaces are not in it). On CPU there
is no peak-memory counter: the column says so. ``--json FILE`` writes the numbers.

    python benchmarks/gpu_throughput.py --device cuda --spec bh-resnet50 --batch 128 --image-size 224
    python benchmarks/gpu_throughput.py --device cpu --spec resnet18 --width-mult 0.125 --batch 2 \\
        --image-size 64 --tile 128x96 --steps 2 --warmup 1 --repeats 1      # smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def make_trainer(model, opt, device, amp_dtype):
    from bhsearch.train import loop

    return loop.Trainer(
        stage="bench",
        model=model,
        optimizer=opt,
        schedule=loop.LRSchedule(base_lr=opt.param_groups[0]["lr"], total_steps=10**6, kind="cosine"),
        device=device,
        amp_dtype=amp_dtype,
        accumulation=1,
        reporter=loop.Reporter("bench", "off"),
        save=lambda st, rng: None,
        checkpoint_interval_s=0,
    )


def ours(model, opt, device, amp_dtype, batches, loss_fn) -> None:
    from bhsearch.train import loop

    make_trainer(model, opt, device, amp_dtype).train_epoch(loop.LoopState(), 1, len(batches), batches, loss_fn)


def bare(model, opt, device, amp_dtype, batches, loss_of) -> None:
    from bhsearch.train import loop

    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    model.train()
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        with loop.autocast(device, amp_dtype):
            loss = loss_of(batch)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def peak_memory(fn, device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return int(torch.cuda.max_memory_allocated(device))


def compare(name: str, fns: dict, device: torch.device, images: int, repeats: int, warmup) -> dict:
    warmup()
    times = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {f"{k}_images_per_s": images / med[k] for k in fns}
    row["overhead_pct"] = 100.0 * (med["ours"] / med["bare"] - 1)
    row.update({f"{k}_peak_bytes": peak_memory(fn, device) for k, fn in fns.items()})
    row["stage"] = name
    return row


def pretrain_stage(args, spec, device, amp_dtype, channels_last) -> dict:
    from bhsearch.latency import train_memory_breakdown
    from bhsearch.models import build_backbone
    from bhsearch.train import loop
    from bhsearch.train.pretrain import Classifier, PretrainConfig, augment_batch

    torch.manual_seed(0)
    model = Classifier(build_backbone(spec), args.classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True)
    config = PretrainConfig(image_size=args.image_size, crop="none", hflip=True)  # crops happened at decode
    s, b = args.image_size, args.batch
    gen = torch.Generator().manual_seed(0)
    raw = [
        (
            torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, generator=gen).to(device),
            torch.randint(0, args.classes, (b,), generator=gen).to(device),
        )
        for _ in range(args.steps)
    ]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ready = [
        (augment_batch(x, config, loop.generator(0, i)).contiguous(memory_format=fmt), y)
        for i, (x, y) in enumerate(raw)
    ]

    def loss_fn(batch, i):
        images, labels = batch
        x = augment_batch(images, config, loop.generator(0, "augment", 0, i))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.cross_entropy(model(x).float(), labels), {}, labels.shape[0]

    def loss_of(batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    row = compare(
        "pretrain",
        {
            "bare": lambda: bare(model, opt, device, amp_dtype, ready, loss_of),
            "ours": lambda: ours(model, opt, device, amp_dtype, raw, loss_fn),
        },
        device,
        b * args.steps,
        args.repeats,
        lambda: bare(model, opt, device, amp_dtype, ready[: args.warmup], loss_of),
    )
    dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(amp_dtype, "float32")
    row["analytic_backbone_bytes"] = train_memory_breakdown(spec, (s, s), b, dtype)["total"]
    row["analytic_dtype"] = dtype
    return row


def finetune_stage(args, spec, device, amp_dtype, channels_last) -> dict:
    from bhsearch.detectors import build_detector
    from bhsearch.latency import train_memory_breakdown
    from bhsearch.spec import parse_input_size
    from bhsearch.train import loop
    from bhsearch.train.finetune import hflip_batch

    w, h = parse_input_size(args.tile)
    torch.manual_seed(0)
    model = build_detector(spec, "faster_rcnn", image_size=(w, h), fpn_channels=args.fpn_channels).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.1, 0.2, 0.14, 0.28], [0.5, 0.5, 0.53, 0.56], [0.8, 0.3, 0.86, 0.4]]) * torch.tensor(
        [w, h, w, h]
    )
    tiles = max(1, args.batch // 8) if device.type == "cuda" else args.batch
    batches = [
        (
            [torch.rand(3, h, w, generator=gen) for _ in range(tiles)],
            [{"boxes": boxes.clone(), "labels": torch.ones(3, dtype=torch.int64)} for _ in range(tiles)],
        )
        for _ in range(args.steps)
    ]
    on_device = [(loop.to_device(x, device), loop.to_device(t, device)) for x, t in batches]

    def loss_fn(batch, i):
        images, targets = batch
        images, targets = hflip_batch(images, targets, loop.generator(0, "flip", 0, i))
        losses = model(loop.to_device(images, device), loop.to_device(targets, device))
        return sum(losses.values()), losses, len(images)

    def loss_of(batch):
        return sum(model(batch[0], batch[1]).values())

    row = compare(
        "finetune",
        {
            "bare": lambda: bare(model, opt, device, amp_dtype, on_device, loss_of),
            "ours": lambda: ours(model, opt, device, amp_dtype, on_device, loss_fn),
        },
        device,
        tiles * args.steps,
        args.repeats,
        lambda: bare(model, opt, device, amp_dtype, on_device[: args.warmup], loss_of),
    )
    dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(amp_dtype, "float32")
    row["analytic_backbone_bytes"] = train_memory_breakdown(spec, (w, h), tiles, dtype)["total"]
    row["analytic_dtype"] = dtype
    row["tiles_per_step"] = tiles
    return row


def _mib(n) -> str:
    return "n/a (no CUDA counter)" if n is None else f"{n / 2**20:.0f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="bh-resnet50", help="spec name, id or file (default bh-resnet50)")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"))
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    p.add_argument(
        "--batch", type=int, default=128, help="pre-training images per step (fine-tuning: batch/8 tiles on CUDA)"
    )
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--tile", default="640x512", help="fine-tuning tile WIDTHxHEIGHT (default 640x512)")
    p.add_argument("--fpn-channels", type=int, default=256, help="fine-tuning detector FPN width (default 256)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stages", default="pretrain,finetune")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)

    from bhsearch.spec import get_spec
    from bhsearch.train import loop

    device = loop.select_device(args.device)
    loop.configure_runtime(device, seed=0, deterministic=False, num_threads=args.threads)
    amp_dtype = loop.resolve_amp(device, args.amp)
    channels_last = loop.resolve_channels_last(device, args.channels_last)
    spec = get_spec(args.spec)
    if args.width_mult != 1.0:
        spec = spec.scaled(args.width_mult)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, amp {amp_dtype}, channels_last {channels_last}, spec {args.spec} x{args.width_mult:g}")
    stages = {"pretrain": pretrain_stage, "finetune": finetune_stage}
    rows = []
    for stage in args.stages.split(","):
        if stage not in stages:
            p.error(f"unknown stage {stage!r}; choose from {', '.join(stages)}")
        row = stages[stage](args, spec, device, amp_dtype, channels_last)
        rows.append(row)
        ok = "ok" if row["overhead_pct"] <= 10 else "ABOVE the 10 % target"
        print(
            f"{stage:9s} ours {row['ours_images_per_s']:9.1f} img/s  bare {row['bare_images_per_s']:9.1f} img/s  "
            f"overhead {row['overhead_pct']:+6.1f} % ({ok})  peak ours {_mib(row['ours_peak_bytes'])}, "
            f"bare {_mib(row['bare_peak_bytes'])}, analytic backbone ({row['analytic_dtype']}) "
            f"{_mib(row['analytic_backbone_bytes'])}",
            flush=True,
        )
    result = {
        "device": name,
        "amp": str(amp_dtype),
        "channels_last": channels_last,
        "spec": args.spec,
        "width_mult": args.width_mult,
        "batch": args.batch,
        "image_size": args.image_size,
        "tile": args.tile,
        "rows": rows,
    }
    if args.json:
        from bhsearch.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the TinyPerson tile loader keep a training loop fed?

Measures, in one run on the same synthetic tiles: (1) tiles/s of the training loader (DataLoader with
workers, image-grouped sampler so each worker decodes each image about once), (2) the same with a plain
random order (cache misses: one full decode per tile), (3) tiles/s of a small backbone's forward-backward
step, and prints loader/model ratios (> 1: the loader is not the bottleneck). Also times one full JPEG
decode against one tile crop from the decoded-image cache.

    python benchmarks/loader_speed.py [--images 6] [--workers 2] [--width 1500 2500] [--backbone resnet18]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _loader_rate(tiles, workers: int, batch: int, sampler, limit: int) -> float:
    from torch.utils.data import DataLoader

    from bhsearch.tasks.tinyperson.reader import collate_tiles

    loader = DataLoader(
        tiles,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_tiles,
        persistent_workers=False,
    )
    seen, start = 0, None
    for images, _ in loader:
        if start is None:  # exclude worker start-up
            start, first = time.perf_counter(), len(images)
            continue
        seen += len(images)
        if seen + first >= limit:
            break
    return seen / (time.perf_counter() - start)


def _model_rate(tiles, backbone: str, batch: int, steps: int) -> float:
    import torch

    from bhsearch.models import build_backbone
    from bhsearch.spec import get_spec

    model = build_backbone(get_spec(backbone))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.stack([tiles[i][0] for i in range(batch)])
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        feats = model(images)
        loss = sum(f.float().mean() for f in feats.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return batch / times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--width", type=int, nargs=2, default=(1500, 2500))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", help="existing synthetic output dir (default: generate into a temp dir)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import RandomSampler

    from bhsearch.tasks.tinyperson import synthetic
    from bhsearch.tasks.tinyperson.reader import ImageGroupedSampler, TileDataset, TinyPersonDataset, resolve_tinyperson

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    out = Path(args.data or tmp.name)
    if not (out / "tiny_set").is_dir():
        t0 = time.perf_counter()
        synthetic.write_tinyperson(
            out, n_train=args.images, n_test=1, seed=0, min_size=args.width[0], max_size=args.width[1]
        )
        print(f"generated {args.images + 1} images in {time.perf_counter() - t0:.1f} s")
    train_json, train_root, _, _ = resolve_tinyperson(out)
    ds = TinyPersonDataset(train_json.with_name("tiny_set_train_with_dense.json"), train_root)
    tiles = TileDataset(ds)
    rec = max(ds.records, key=lambda r: r.width * r.height)
    t0 = time.perf_counter()
    with Image.open(rec.path) as im:
        arr = np.asarray(im.convert("RGB"))
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(20):
        np.ascontiguousarray(arr[0:512, 0:640])
    crop = (time.perf_counter() - t0) / 20
    print(
        f"{len(ds)} images, {len(tiles)} tiles; full decode of {rec.width}x{rec.height} JPEG {decode * 1e3:.0f} ms, "
        f"tile crop from cache {crop * 1e3:.2f} ms"
    )

    limit = len(tiles)
    grouped = _loader_rate(tiles, args.workers, args.batch, ImageGroupedSampler(tiles, seed=0), limit)
    shuffled = _loader_rate(tiles, args.workers, args.batch, RandomSampler(tiles), limit)
    model = _model_rate(tiles, args.backbone, args.batch, args.steps)
    print(f"loader (image-grouped, {args.workers} workers): {grouped:.1f} tiles/s")
    print(f"loader (random order, {args.workers} workers):  {shuffled:.1f} tiles/s")
    print(f"{args.backbone} forward+backward, batch {args.batch}, {args.threads} threads: {model:.2f} tiles/s")
    print(
        f"ratio loader/model: grouped {grouped / model:.1f}x, random {shuffled / model:.1f}x "
        "(> 1 means the loader keeps the step fed)"
    )


if __name__ == "__main__":
    main()

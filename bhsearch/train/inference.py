"""Tiled whole-image inference and TinyPerson evaluation of a detector.

Large images are cut into the training tile size with the same overlap (DESIGN §5); each tile
runs through the detector, boxes are shifted back to the image frame and merged with
class-agnostic NMS at IoU 0.5 (:func:`bhsearch.data.tiling.merge_detections`). The result is a
COCO results list (``image_id``, ``bbox`` xywh, ``score``, ``category_id`` 1) that
:func:`bhsearch.tasks.tinyperson.evaluate.evaluate` scores on the whole images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bhsearch.errors import UsageError
from bhsearch.train import loop

NMS_IOU = 0.5


def _tile_loader(dataset, tile: Sequence[int], overlap: int, batch_size: int, num_workers: int, device):
    from bhsearch.tasks.tinyperson.reader import TileDataset, collate_tiles

    tiles = TileDataset(dataset, tuple(tile), overlap, train=False)
    sampler = loop.EpochBatchSampler(len(tiles), batch_size, seed=0, shuffle=False)
    return tiles, loop.make_loader(tiles, sampler, collate_fn=collate_tiles, num_workers=num_workers, device=device)


def detections_to_coco(image_id: int, merged: dict[str, torch.Tensor], category_ids=None) -> list[dict[str, Any]]:
    """Merged ``boxes`` (xyxy) / ``scores`` / ``labels`` of one image → exact COCO result dicts."""
    from bhsearch.data import tiling

    return tiling.detections_to_coco(image_id, merged, category_ids=category_ids, ndigits=None)


@torch.no_grad()
def predict_tiled(
    model: torch.nn.Module,
    dataset,
    *,
    tile: Sequence[int] = (640, 512),
    overlap: int = 30,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    nms_iou: float = NMS_IOU,
    max_per_image: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """COCO results for every image of ``dataset`` (a ``TinyPersonDataset``) by tiled inference.

    ``max_per_image`` keeps the best merged detections per image (None: all). ``on_batch(n)``
    is called after each batch of ``n`` tiles (progress).
    """
    from bhsearch.data import tiling

    if batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    tiles, loader = _tile_loader(dataset, tile, overlap, batch_size, num_workers, device)
    results: list[dict[str, Any]] = []
    current: int | None = None
    pending: list[dict[str, Any]] = []

    category_ids = list(getattr(dataset, "category_ids", [1]))
    multi_class = len(category_ids) > 1

    def flush() -> None:
        if current is None:
            return
        merged = tiling.merge_detections(
            pending, iou_threshold=nms_iou, max_dets=max_per_image, class_aware=multi_class
        )
        results.extend(detections_to_coco(dataset.records[current].image_id, merged, category_ids))

    index = 0
    try:
        for images, targets in loader:
            images = [loop.to_device(img, device) for img in images]
            with loop.autocast(device, amp_dtype):
                outputs = model(images)
            for out, target in zip(outputs, targets, strict=True):
                img_idx = tiles.image_index(index)
                index += 1
                if img_idx != current:
                    flush()
                    current, pending = img_idx, []
                pending.append(
                    {
                        "tile": target["tile"],
                        "boxes": out["boxes"].float().cpu(),
                        "scores": out["scores"].float().cpu(),
                        "labels": out["labels"].cpu() if "labels" in out else torch.ones(len(out["scores"])),
                    }
                )
            if on_batch is not None:
                on_batch(len(images))
        flush()
    finally:
        model.train(was_training)
    return results


def evaluate_model(
    model: torch.nn.Module,
    dataset,
    *,
    gt: dict | str | Path | None = None,
    tile: Sequence[int] = (640, 512),
    overlap: int = 30,
    max_dets: int = 200,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    detections_out: str | Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    benchmark: str = "tinyperson",
) -> dict[str, Any]:
    """Tiled inference on ``dataset`` + the ``benchmark``'s official evaluator (AP/MR in percent).

    ``gt`` defaults to the dataset's own annotation file. The result is the evaluator's dict
    (TinyPerson: ``AP50_tiny``, ``AP50_tiny1`` …, ``MR50_tiny`` …; AI-TOD: ``AP``, ``AP50`` …; plus
    ``settings``, ``warnings``) and ``num_detections``. ``detections_out`` also writes the COCO
    results JSON there.
    """
    import json

    from bhsearch.tasks import get_benchmark

    dets = predict_tiled(
        model,
        dataset,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        amp_dtype=amp_dtype,
        num_workers=num_workers,
        on_batch=on_batch,
    )
    if detections_out is not None:
        loop.atomic_write_text(detections_out, json.dumps(dets))
    gt = gt if gt is not None else dataset.annotation_json
    metrics = get_benchmark(benchmark).evaluate(gt, dets, max_dets=max_dets)
    metrics["num_detections"] = len(dets)
    return metrics


def load_run_model(run_dir: str | Path, device: torch.device | str = "cpu"):
    """The detector of a ``bhsearch finetune`` run folder (``spec.json`` + ``model.safetensors``)
    in eval mode, and the ``spec.json`` mapping (its ``config`` holds the tile settings)."""
    from bhsearch.detectors import build_detector, load_weights, settings_from_metadata
    from bhsearch.spec import get_spec, load_mapping

    run_dir = Path(run_dir)
    spec_path, weights = run_dir / "spec.json", run_dir / "model.safetensors"
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    for path in (spec_path, weights):
        if not path.is_file():
            raise UsageError(f"{run_dir}: missing {path.name} (not a finished `bhsearch finetune` run?)")
    meta = load_mapping(spec_path)
    settings = settings_from_metadata(meta)
    if not settings:
        raise UsageError(f"{spec_path}: no detector settings (written by `bhsearch pretrain`, not `finetune`?)")
    model = build_detector(get_spec(spec_path), **settings)
    load_weights(model, weights)
    return model.to(device).eval(), meta


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The AP/MR figures of an evaluator result (numbers or None), without settings and warnings."""
    return {k: v for k, v in metrics.items() if k.startswith(("AP", "MR")) or k == "num_detections"}


__all__ = ["detections_to_coco", "evaluate_model", "load_run_model", "predict_tiled", "scalar_metrics"]

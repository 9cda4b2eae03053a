"""Face-detector fine-tuning on WiderFace (TinaFace-style RetinaNet, 640×640 crops) with official evaluation.

``bhsearch.train.finetune`` is built around TinyPerson tiles and the TinyPerson evaluator, so this module
runs the WiderFace variant on the same machinery (``bhsearch.train.loop``: sampler, LR schedule, trainer,
checkpoints, resume, reporter) and the same initialisation helpers (``read_init_weights``,
``load_backbone_state``, ``freeze_stages``, ``resolve_norm``).

Training data: RetinaFace/TinaFace-style square crops: a side of ``crop_scales`` × the image's short side at
a random position, faces kept when their centre lies in the crop (then clipped), the crop resized to
``image_size`` and flipped with probability 0.5; faces below ``min_face`` px after resizing and invalid faces
are not trained on. Evaluation: whole validation images at native size (or shrunk so the long side is at
most ``eval_max_size``), scored by :func:`bhsearch.tasks.widerface.evaluate.evaluate_widerface`.

Outputs in ``out_dir``: ``model.safetensors``, ``spec.json`` (spec + ``detector`` face settings that rebuild
the model with ``build_face_detector``), ``metrics.jsonl`` (losses, lr, ``AP_easy``/``AP_medium``/``AP_hard``
per evaluated epoch), ``checkpoint.pt``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bhsearch.errors import DataError, UsageError
from bhsearch.spec import Spec, get_spec, save_spec
from bhsearch.train import distributed, loop
from bhsearch.train.finetune import freeze_stages, load_backbone_state, read_init_weights
from bhsearch.train.pretrain import _from_dict, _plain, _positive

NORMS = ("auto", "bn", "gn", "frozen_bn")
RESUMABLE_CHANGES = ("device", "num_workers", "num_threads", "progress", "checkpoint_interval_s", "eval_batch_size")
DEFAULT_CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
METRIC_KEYS = ("AP_easy", "AP_medium", "AP_hard")

Callback = Callable[[str, int, dict, Path], None]


@dataclass
class WiderFaceConfig:
    """Settings of a WiderFace fine-tuning run (defaults: a TinaFace-like recipe scaled for short runs).

    ``lr=None`` scales ``base_lr`` linearly with the global batch ``batch_size × processes × accumulation /
    base_batch`` (``batch_size`` is per process under torchrun; ``sync_bn``: SyncBatchNorm, CUDA only). ``milestones``
    are fractions of the run where the LR drops by ``gamma``. ``detector_kwargs`` go to
    ``build_face_detector`` (e.g. ``anchor_base``, ``head_norm``, ``box_loss``).
    """

    epochs: int = 12
    batch_size: int = 4
    lr: float | None = None
    base_lr: float = 0.01
    base_batch: int = 4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (2 / 3, 11 / 12)
    gamma: float = 0.1
    warmup_steps: int = 500
    warmup_ratio: float = 0.001
    image_size: int = 640
    crop_scales: tuple[float, ...] = DEFAULT_CROP_SCALES
    min_face: float = 2.0
    hflip: bool = True
    norm: str = "auto"
    sync_bn: bool = False
    freeze_stages: int | None = None
    width_mult: float = 1.0
    accumulation: int = 1
    eval_every: int = 1
    eval_batch_size: int = 1
    eval_max_size: int | None = None
    max_train_images: int | None = None
    max_eval_images: int | None = None
    fpn_channels: int = 256
    gt: str | None = None
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    deterministic: bool = True
    num_threads: int | None = None
    grad_clip: float | None = 35.0
    checkpoint_interval_s: float = 600.0
    progress: str = "auto"

    def __post_init__(self) -> None:
        self.milestones = tuple(float(m) for m in self.milestones)
        self.crop_scales = tuple(float(s) for s in self.crop_scales)
        self.detector_kwargs = dict(self.detector_kwargs or {})
        _positive(self, "epochs", "batch_size", "accumulation", "eval_batch_size", "base_batch", "image_size")
        if self.lr is not None and self.lr <= 0:
            raise UsageError(f"lr must be positive, got {self.lr}")
        if self.norm not in NORMS:
            raise UsageError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not self.crop_scales or not all(0 < s <= 1 for s in self.crop_scales):
            raise UsageError(f"crop_scales must be fractions in (0, 1], got {self.crop_scales}")
        if self.image_size < 32:
            raise UsageError(f"image_size must be at least 32 px, got {self.image_size}")
        if self.eval_every < 0 or self.num_workers < 0 or self.warmup_steps < 0:
            raise UsageError("eval_every, num_workers and warmup_steps must not be negative")
        if self.width_mult <= 0:
            raise UsageError(f"width_mult must be positive, got {self.width_mult}")

    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return self.base_lr * self.batch_size * distributed.world_size() * self.accumulation / self.base_batch

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WiderFaceConfig:
        return _from_dict(cls, data, "widerface fine-tune")


# --------------------------------------------------------------------------- data


def random_square_crop(
    image: torch.Tensor, boxes: torch.Tensor, gen: torch.Generator, size: int, scales, min_face: float, hflip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """RetinaFace-style crop (see module doc): returns a ``size``×``size`` image and its boxes (xyxy)."""
    _, h, w = image.shape
    short = min(h, w)
    scale = scales[int(torch.randint(len(scales), (1,), generator=gen))]
    side = max(int(short * scale), 1)
    x0 = int(torch.randint(w - side + 1, (1,), generator=gen))
    y0 = int(torch.randint(h - side + 1, (1,), generator=gen))
    crop = image[:, y0 : y0 + side, x0 : x0 + side]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (centres[:, 0] >= x0) & (centres[:, 0] < x0 + side) & (centres[:, 1] >= y0) & (centres[:, 1] < y0 + side)
    kept = boxes[inside] - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    kept = kept.clamp(0, side) * (size / side)
    crop = torch.nn.functional.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    wh = kept[:, 2:] - kept[:, :2]
    kept = kept[(wh[:, 0] >= min_face) & (wh[:, 1] >= min_face)]
    if hflip and bool(torch.rand((), generator=gen) < 0.5):
        crop = crop.flip(-1)
        kept = torch.stack([size - kept[:, 2], kept[:, 1], size - kept[:, 0], kept[:, 3]], dim=1)
    return crop.contiguous(), kept.reshape(-1, 4)


class TrainCrops(torch.utils.data.Dataset):
    """Random crops of a ``WiderFaceDataset``; items are indexed by ``(epoch, index)`` so the crop of an
    image depends only on (seed, epoch, index), whatever the worker count or resume point."""

    def __init__(self, dataset, config: WiderFaceConfig, indices: list[int] | None = None):
        self.dataset, self.config = dataset, config
        self.indices = indices if indices is not None else list(range(len(dataset)))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        epoch, i = item
        cfg = self.config
        image, target = self.dataset[self.indices[i]]
        gen = loop.generator(cfg.seed, "crop", epoch, i)
        crop, boxes = random_square_crop(
            image, target["boxes"], gen, cfg.image_size, cfg.crop_scales, cfg.min_face, cfg.hflip
        )
        return crop, {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}


class _EpochTagged(torch.utils.data.Sampler):
    """Wraps an ``EpochBatchSampler``: every index becomes ``(epoch, index)``."""

    def __init__(self, sampler: loop.EpochBatchSampler):
        self.sampler = sampler

    def __iter__(self):
        for batch in self.sampler:
            yield [(self.sampler.epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)


def open_widerface(data: Any, config: WiderFaceConfig):
    """(train dataset, val dataset, GT files) from a WiderFace root, ``widerface:PATH`` or
    ``synthetic-widerface:PATH`` (generated there first when absent)."""
    from bhsearch.tasks.widerface.reader import WiderFaceDataset, resolve_gt_files

    text = str(data)
    kind, sep, rest = text.partition(":")
    if sep and kind in ("widerface", "synthetic-widerface") and rest:
        root = Path(rest).expanduser()
        if kind == "synthetic-widerface" and not (root / "wider_face_split" / "wider_face_val_bbx_gt.txt").is_file():
            from bhsearch.tasks.widerface.synthetic import write_widerface

            write_widerface(root, overwrite=True)  # no complete set there
    else:
        root = Path(text).expanduser()
    train = WiderFaceDataset(root, "train")
    val = WiderFaceDataset(root, "val")
    gt = resolve_gt_files(config.gt if config.gt else root)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{root}: the train or val split has no images")
    return train, val, gt


def _subset(n: int, limit: int | None, seed: int, what: str) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=loop.generator(seed, "subset", what))[:limit].tolist())


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def predict_widerface(
    model: torch.nn.Module,
    dataset,
    indices: list[int] | None = None,
    *,
    batch_size: int = 1,
    max_size: int | None = None,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, np.ndarray]:
    """``{"<event>/<name>": (N, 5) x, y, w, h, score}`` for whole images of ``dataset``.

    With ``max_size`` an image whose long side exceeds it is shrunk for inference and boxes are scaled back.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    indices = indices if indices is not None else list(range(len(dataset)))
    was_training = model.training
    model.eval()
    out: dict[str, np.ndarray] = {}
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            images, scales = [], []
            for i in chunk:
                image, _ = dataset[i]
                scale = 1.0
                if max_size and max(image.shape[-2:]) > max_size:
                    scale = max_size / max(image.shape[-2:])
                    size = [max(1, round(d * scale)) for d in image.shape[-2:]]
                    image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear")[0]
                images.append(image.to(device))
                scales.append(scale)
            with loop.autocast(device, amp_dtype):
                outputs = model(images)
            for i, o, scale in zip(chunk, outputs, scales, strict=True):
                boxes = o["boxes"].float().cpu().numpy() / scale
                scores = o["scores"].float().cpu().numpy()
                xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
                out[dataset.records[i].key] = np.concatenate([xywh, scores[:, None]], axis=1).astype(np.float64)
    finally:
        model.train(was_training)
    return out


def evaluate_face_model(model, dataset, gt, indices: list[int] | None = None, **predict_kwargs) -> dict[str, Any]:
    """Predict whole images and score them with the official protocol (only the predicted images count)."""
    from bhsearch.tasks.widerface.evaluate import evaluate_widerface

    preds = predict_widerface(model, dataset, indices, **predict_kwargs)
    keys = [dataset.records[i].key for i in (indices if indices is not None else range(len(dataset)))]
    result = evaluate_widerface(gt, preds, images=keys)
    result["num_detections"] = int(sum(len(v) for v in preds.values()))
    return result


# --------------------------------------------------------------------------- the run


def run_finetune_widerface(
    spec: Spec | str,
    data: Any,
    config: WiderFaceConfig | None = None,
    out_dir: str | Path = "runs/widerface",
    init: str | Path | None = None,
    resume: bool = False,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Fine-tune ``build_face_detector(spec)`` on WiderFace ``data`` (root or ``[synthetic-]widerface:PATH``).

    Same contract as :func:`bhsearch.train.finetune.run_finetune`: ``init`` backbone weights, ``resume`` from
    ``out_dir/checkpoint.pt``, ``callback(stage, epoch, metrics, out_dir)`` after every epoch. Returns the
    last epoch's metrics plus ``best_AP_hard``, ``history`` and paths.
    """
    from bhsearch.models import build_backbone
    from bhsearch.tasks.widerface.detector import build_face_detector, face_detector_settings
    from bhsearch.tasks.widerface.reader import collate_images

    config = config or WiderFaceConfig()
    spec = get_spec(spec)
    if config.width_mult != 1.0:
        spec = spec.scaled(config.width_mult)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    init_state, init_kind = read_init_weights(init) if init is not None else (None, None)
    norm = config.norm if config.norm != "auto" else {"torchvision": "frozen_bn", "pretrain": "bn"}.get(init_kind, "gn")
    frozen_stages = config.freeze_stages
    if frozen_stages is None:
        frozen_stages = 1 if init_kind == "torchvision" else -1

    device = distributed.setup(config.device, sync_bn=config.sync_bn)  # joins the process group under torchrun
    loop.configure_runtime(device, seed=config.seed, deterministic=config.deterministic, num_threads=config.num_threads)
    amp_dtype = loop.resolve_amp(device, config.amp)

    train_full, val_ds, gt = open_widerface(data, config)
    train_ds = TrainCrops(train_full, config, _subset(len(train_full), config.max_train_images, config.seed, "train"))
    eval_indices = _subset(len(val_ds), config.max_eval_images, config.seed, "val")

    torch.manual_seed(loop.derive_seed(config.seed, "init"))
    backbone = build_backbone(spec, norm=norm)
    if init_state is not None:
        load_backbone_state(backbone, init_state, f"--init {init}")
    model = build_face_detector(
        spec,
        norm=norm,
        image_size=(config.image_size, config.image_size),
        fpn_channels=config.fpn_channels,
        backbone=backbone,
        **config.detector_kwargs,
    )
    frozen = freeze_stages(model.backbone.body, frozen_stages)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.effective_lr, momentum=config.momentum, weight_decay=config.weight_decay
    )

    sampler = loop.EpochBatchSampler(
        len(train_ds),
        config.batch_size,
        seed=config.seed,
        shuffle=True,
        rank=distributed.rank(),
        world=distributed.world_size(),
    )
    schedule = loop.step_schedule(
        config.effective_lr,
        sampler,
        config.accumulation,
        config.epochs,
        config.milestones,
        config.gamma,
        warmup_steps=config.warmup_steps,
        warmup_ratio=config.warmup_ratio,
    )
    reporter = loop.Reporter("widerface", config.progress)
    settings = face_detector_settings(model)
    run_info = {"init": str(init) if init else None, "init_kind": init_kind, "norm": norm, "frozen": frozen}

    trainer, state, resumed_rng, checkpoint = loop.start_training(
        stage="widerface",
        checkpoint_stage="finetune-widerface",
        description="WiderFace fine-tuning",
        out_dir=out,
        config=config,
        spec=spec,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        device=device,
        amp_dtype=amp_dtype,
        reporter=reporter,
        resume=resume,
        resumable=RESUMABLE_CHANGES,
        weights_file="model.safetensors",
        detector=settings,
        run=run_info,
    )
    save_spec(
        spec, out / "spec.json", stage="finetune-widerface", detector=settings, run=run_info, config=config.to_dict()
    )

    loader = loop.make_loader(
        train_ds, _EpochTagged(sampler), collate_fn=collate_images, num_workers=config.num_workers, device=device
    )

    net = trainer.net  # the model, or its DistributedDataParallel wrapper

    def loss_fn(batch, b: int):
        images, targets = batch
        losses = net(loop.to_device(images, device), loop.to_device(targets, device))
        return sum(losses.values()), losses, len(images)

    def evaluate(epoch: int) -> dict[str, Any]:
        if not ((config.eval_every and epoch % config.eval_every == 0) or epoch == config.epochs):
            return {}
        reporter.phase(f"widerface epoch {epoch}/{config.epochs}: evaluating")
        t_eval = time.perf_counter()
        metrics = evaluate_face_model(
            model,
            val_ds,
            gt,
            eval_indices,
            batch_size=config.eval_batch_size,
            max_size=config.eval_max_size,
            device=device,
            amp_dtype=amp_dtype,
        )
        record = {k: metrics[k] for k in METRIC_KEYS}
        return {**record, "num_detections": metrics["num_detections"], "eval_time_s": time.perf_counter() - t_eval}

    weights_meta = {"format": "bhsearch-face-detector", "spec_id": spec.id}
    history = loop.run_epochs(
        loop.EpochLoop(
            stage="finetune-widerface",
            epochs=config.epochs,
            seed=config.seed,
            state=state,
            resumed_rng=resumed_rng,
            sampler=sampler,
            loader=loader,
            loss_fn=loss_fn,
            trainer=trainer,
            reporter=reporter,
            keys=("loss", "lr", *METRIC_KEYS, "train_images_per_s", "epoch_time_s"),
            evaluate=evaluate,
            save_weights=lambda: loop.save_safetensors(
                out / "model.safetensors", model.state_dict(), metadata=weights_meta
            ),
            checkpoint=checkpoint,
            out_dir=out,
            weights_file="model.safetensors",
            callback=callback,
            callback_stage="finetune",
        )
    )
    last = dict(history[-1]) if history else {}
    scores = [row["AP_hard"] for row in history if row.get("AP_hard") is not None]
    return {
        **last,
        "best_AP_hard": max(scores, default=None),
        "spec_id": spec.id,
        "out_dir": str(out),
        "model": str(out / "model.safetensors"),
        "history": history,
    }


def load_face_model(run_dir: str | Path, device: torch.device | str = "cpu"):
    """The face detector of a ``run_finetune_widerface`` folder in eval mode, and its ``spec.json`` mapping."""
    from bhsearch.detectors import load_weights
    from bhsearch.spec import load_mapping
    from bhsearch.tasks.widerface.detector import build_face_detector

    run_dir = Path(run_dir)
    spec_path, weights = run_dir / "spec.json", run_dir / "model.safetensors"
    for path in (spec_path, weights):
        if not path.is_file():
            raise UsageError(f"{run_dir}: missing {path.name} (not a finished WiderFace fine-tuning run?)")
    meta = load_mapping(spec_path)
    if meta.get("stage") != "finetune-widerface" or not isinstance(meta.get("detector"), dict):
        raise UsageError(f"{spec_path}: not written by a WiderFace fine-tuning run")
    model = build_face_detector(get_spec(spec_path), **meta["detector"])
    load_weights(model, weights)
    return model.to(device).eval(), meta


__all__ = [
    "WiderFaceConfig",
    "evaluate_face_model",
    "load_face_model",
    "open_widerface",
    "predict_widerface",
    "random_square_crop",
    "run_finetune_widerface",
]

"""Proxy pre-training: backbone + global average pool of the last feature map + linear classifier.

The paper pre-trains on 32×32 CIFAR-100 / ImageNet32 with random horizontal flips and random
crops with resizing (§4.1). Augmentation runs on whole batches on the training device, from a
generator seeded by ``(seed, epoch, batch)``, so it is cheap, identical across worker counts
and exactly reproducible on resume.
Image files (ImageNet folders, ``_FileBatches``) are decoded and cropped per image first, in the
loader workers or on the device (``decode``); ImageNet's recipe defaults are ``DATA_DEFAULTS``.

Outputs in ``out_dir``: ``backbone.safetensors`` (backbone keys only; loads into
``build_backbone(spec)``), ``spec.json``, ``metrics.jsonl`` (one line per epoch: ``loss``,
``top1``, ``top5`` in percent, …) and ``checkpoint.pt`` (resumable, ``weights_only``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bhsearch.errors import DataError, UsageError
from bhsearch.spec import Spec, get_spec, save_spec
from bhsearch.train import distributed, loop

IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as torchvision detectors use them
IMAGE_STD = (0.229, 0.224, 0.225)
CROPS = ("pad", "resize", "none")
DECODES = ("auto", "worker", "device")
SCHEDULES = ("cosine", "step", "constant")
# settings that may change between a run and its resumption (they do not change the result on CPU)
RESUMABLE_CHANGES = (
    "device",
    "num_workers",
    "num_threads",
    "progress",
    "checkpoint_interval_s",
    "eval_batch_size",
    "decode",
)
#: Recipe defaults per data kind, under any explicit setting (``data_defaults``): ImageNet trains at 224 px
#: with torchvision's RandomResizedCrop (area 8-100 %) and evaluates Resize(256) + CenterCrop(224).
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "imagenet": {"image_size": 224, "crop": "resize", "resize_scale": (0.08, 1.0)}
}

Callback = Callable[[str, int, dict, Path], None]


@dataclass
class PretrainConfig:
    """Settings of a proxy pre-training run (defaults: a common CIFAR recipe, 30 epochs).

    ``lr`` is for ``batch_size × accumulation`` images per step; ``batch_size`` is per process, so under
    ``torchrun --nproc_per_node N`` a step sees ``N × batch_size × accumulation`` images (``lr`` is for
    those). ``sync_bn`` uses SyncBatchNorm across the processes (CUDA only). ``milestones`` are fractions
    of ``epochs`` (step schedule). ``crop``: ``pad`` (random crop of ``padding``-padded images),
    ``resize`` (random resized crop, area in ``resize_scale``) or ``none``. ``image_size``
    resizes inputs (32 = native). ``width_mult`` scales the spec's widths before building.

    Image-file data (ImageNet folders) is decoded and cropped to ``image_size`` per image where it is
    loaded: ``resize`` is torchvision's ``RandomResizedCrop(image_size, scale=resize_scale)``, ``pad`` and
    ``none`` (and evaluation) take ``Resize(image_size / crop_pct)`` + ``CenterCrop(image_size)`` (``pad``
    then pads and crops that). ``decode``: ``worker`` (CPU, in the DataLoader workers), ``device`` (on the
    training device; nvJPEG batches on CUDA) or ``auto`` (``device`` on CUDA, else ``worker``).
    ``data_defaults`` gives the per-dataset recipe defaults (ImageNet: 224 px, ``resize``, scale 0.08-1).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    crop: str = "pad"
    padding: int = 4
    resize_scale: tuple[float, float] = (0.35, 1.0)
    crop_pct: float = 0.875
    hflip: bool = True
    image_size: int = 32
    norm: str = "bn"
    sync_bn: bool = False
    width_mult: float = 1.0
    accumulation: int = 1
    eval_batch_size: int = 512
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    num_workers: int = 0
    decode: str = "auto"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    deterministic: bool = True
    num_threads: int | None = None
    grad_clip: float | None = None
    checkpoint_interval_s: float = 600.0
    progress: str = "auto"

    def __post_init__(self) -> None:
        self.milestones = tuple(float(m) for m in self.milestones)
        self.resize_scale = tuple(float(s) for s in self.resize_scale)
        _positive(self, "epochs", "batch_size", "accumulation", "eval_batch_size", "image_size")
        if self.lr <= 0:
            raise UsageError(f"pretrain lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"pretrain schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.crop not in CROPS:
            raise UsageError(f"pretrain crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.decode not in DECODES:
            raise UsageError(f"pretrain decode must be one of {', '.join(DECODES)}, got {self.decode!r}")
        if not 0 < self.crop_pct <= 1:
            raise UsageError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.width_mult <= 0:
            raise UsageError(f"width_mult must be positive, got {self.width_mult}")
        if len(self.resize_scale) != 2 or not 0 < self.resize_scale[0] <= self.resize_scale[1] <= 1:
            raise UsageError(f"resize_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.resize_scale}")
        if self.num_workers < 0 or self.padding < 0 or self.warmup_epochs < 0:
            raise UsageError("num_workers, padding and warmup_epochs must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        return _from_dict(cls, data, "pretrain")


def _finite(cfg: Any) -> None:
    """Every number of a config is finite (``--width-mult nan`` would pass ``<= 0`` checks)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise UsageError(f"{f.name} must be a finite number, got {value!r}")


def _positive(cfg: Any, *names: str) -> None:
    """Integers >= 1 for ``names``; every float field finite (all configs call this first)."""
    _finite(cfg)
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}")


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _from_dict(cls, data: dict[str, Any], what: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"unknown {what} setting(s) {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise UsageError(f"invalid {what} settings: {exc}") from None


# --------------------------------------------------------------------------- model


class Classifier(nn.Module):
    """``backbone`` → global average pool of its last feature map → ``fc``."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(int(backbone.out_channels[-1]), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        last = next(reversed(feats.values()))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(last, 1), 1))


# --------------------------------------------------------------------------- data


class _ArrayBatches(torch.utils.data.Dataset):
    """Indexable uint8 images ``(N, H, W, 3)`` + labels; ``__getitems__`` returns whole batches."""

    def __init__(self, images, labels):
        self.images = torch.as_tensor(images)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[idx], self.labels[idx]


class _ItemBatches(torch.utils.data.Dataset):
    """Any dataset of ``(uint8 HWC image, label)`` pairs, batched by :func:`_collate_items`."""

    def __init__(self, dataset, indices: list[int] | None = None):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index] if self.indices is not None else index]


@dataclass
class EncodedBatch:
    """A batch of still-encoded image files, decoded and cropped on the training device (``decode="device"``)."""

    data: list[torch.Tensor]
    sources: list[str]
    seed: int
    train: bool


class _FileBatches(torch.utils.data.Dataset):
    """Image files (``read(i)`` + ``samples``, e.g. ImageNet folders), loaded a batch at a time.

    ``__getitems__`` reads the batch's files and either decodes and crops them to uint8 ``(B, S, S, 3)``
    right there (a DataLoader worker, or the main process) or, with ``on_device``, returns them as an
    ``EncodedBatch``. The crops' random numbers are seeded by ``(seed, the batch's indices)``, so they do
    not depend on the worker count, the decode place or a resume.
    """

    def __init__(self, dataset, indices: list[int] | None, config: PretrainConfig, train: bool, on_device: bool):
        self.dataset, self.indices, self.config = dataset, indices, config
        self.train, self.on_device = train, on_device

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def __getitem__(self, index: int):
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]):
        real = [self.indices[i] for i in indices] if self.indices is not None else list(indices)
        labels = torch.as_tensor([int(self.dataset.targets[i]) for i in real], dtype=torch.int64)
        batch = EncodedBatch(
            [self.dataset.read(i) for i in real],
            [str(self.dataset.samples[i][0]) for i in real],
            loop.derive_seed(self.config.seed, "crop", tuple(indices)),
            self.train,
        )
        return (batch if self.on_device else decode_crop(batch, self.config, "cpu")), labels


def decode_crop(batch: EncodedBatch, config: PretrainConfig, device: Any) -> torch.Tensor:
    """Decode ``batch`` on ``device`` and crop every image to ``image_size``: uint8 ``(B, S, S, 3)``."""
    from bhsearch.data.imagenet import center_crops, decode_batch, random_resized_crops

    images = decode_batch(batch.data, batch.sources, device)
    if batch.train and config.crop == "resize":
        out = random_resized_crops(images, config.image_size, config.resize_scale, batch.seed)
    else:
        out = center_crops(images, config.image_size, config.crop_pct)
    return out.permute(0, 2, 3, 1)  # a view: augment_batch / eval_batch permute back to contiguous NCHW


def _decoded(images: Any, config: PretrainConfig, device: torch.device) -> torch.Tensor:
    return decode_crop(images, config, device) if isinstance(images, EncodedBatch) else images


def _collate_items(items):
    import numpy as np

    images = torch.from_numpy(np.stack([np.asarray(img, dtype=np.uint8) for img, _ in items]))
    return images, torch.as_tensor([int(lbl) for _, lbl in items], dtype=torch.int64)


def _identity(batch):
    return batch


def _subset_indices(n: int, limit: int | None, seed: int, split: str) -> list[int] | None:
    if limit is None or limit >= n:
        return None
    return sorted(torch.randperm(n, generator=loop.generator(seed, "subset", split))[:limit].tolist())


def _as_batches(dataset, limit: int | None, seed: int, split: str, config: PretrainConfig | None = None, device=None):
    """Wrap a classification dataset for batched loading (fast path for array-backed readers; image files
    are decoded and cropped a batch at a time, see ``_FileBatches``)."""
    if len(dataset) == 0:
        raise DataError(f"the {split} split is empty")
    keep = _subset_indices(len(dataset), limit, seed, split)
    if config is not None and hasattr(dataset, "read") and hasattr(dataset, "samples"):
        on_device = config.decode == "device" or (config.decode == "auto" and getattr(device, "type", "") == "cuda")
        return _FileBatches(dataset, keep, config, split == "train", on_device), _identity
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if data is not None and targets is not None and getattr(dataset, "transform", None) is None:
        if keep is not None:
            data, targets = data[keep], targets[keep]
        return _ArrayBatches(data, targets), _identity
    return _ItemBatches(dataset, keep), _collate_items


def data_defaults(data: Any) -> dict[str, Any]:
    """The recipe defaults (``DATA_DEFAULTS``) for a ``KIND:PATH`` reference; explicit settings go on top."""
    if not isinstance(data, (str, Path)):
        return {}
    return dict(DATA_DEFAULTS.get(str(data).partition(":")[0].removeprefix("synthetic-"), {}))


def open_classification_data(data: Any, split: str):
    """``data``: a ``KIND:PATH`` ref, a ``{"train": ds, "test": ds}`` mapping or a ``(train, test)`` pair."""
    if isinstance(data, (str, Path)):
        from bhsearch.data.registry import open_classification

        return open_classification(str(data), split)
    if isinstance(data, dict):
        return data[split]
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0 if split == "train" else 1]
    raise UsageError(f"data must be a KIND:PATH reference or a (train, test) pair, got {type(data).__name__}")


def _num_classes(train_ds, test_ds) -> int:
    n = getattr(train_ds, "num_classes", None)
    if n is None:
        targets = getattr(train_ds, "targets", None)
        if targets is None:
            raise DataError("the classification dataset has neither 'num_classes' nor 'targets'")
        n = int(max(targets)) + 1
    return int(n)


# --------------------------------------------------------------------------- augmentation


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGE_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def augment_batch(
    images: torch.Tensor, config: PretrainConfig, gen: torch.Generator, part: tuple[int, int] | None = None
) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` → augmented, normalised float ``(B, 3, S, S)`` (S = ``image_size``).

    Random numbers come from ``gen`` (CPU), so results do not depend on the device's RNG. ``part``
    ``(start, total)``: ``images`` are rows ``start…start+B`` of a batch of ``total`` (a data-parallel
    slice); the draws are made for all ``total`` and sliced, so each image is augmented as in the whole batch.
    """
    x = images.permute(0, 3, 1, 2).float().div_(255)
    b, _, h, w = x.shape
    dev = x.device
    lo, total = part if part is not None else (0, b)

    def rand(*args, **kwargs) -> torch.Tensor:  # ``torch.rand(total)`` (or randint), rows lo…lo+b
        draw = torch.randint if args else torch.rand
        return draw(*args, (total,), generator=gen, **kwargs)[lo : lo + b]

    if config.crop == "pad" and config.padding > 0:
        p = config.padding
        padded = F.pad(x, (p, p, p, p))
        oy = rand(0, 2 * p + 1).to(dev)
        ox = rand(0, 2 * p + 1).to(dev)
        rows = oy[:, None] + torch.arange(h, device=dev)
        cols = ox[:, None] + torch.arange(w, device=dev)
        bidx = torch.arange(b, device=dev)[:, None, None]
        # (B, H, W, C) gather → NCHW; made contiguous below (a channels-last input crashes some
        # oneDNN CPU backward kernels in torch 2.14 on tiny widths)
        x = padded[bidx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    elif config.crop == "resize":
        from torchvision.ops import roi_align

        s_lo, s_hi = config.resize_scale
        area = (s_lo + (s_hi - s_lo) * rand()) * h * w
        log_ratio = (rand() * 2 - 1) * torch.log(torch.tensor(4 / 3))
        ratio = torch.exp(log_ratio)
        cw = torch.sqrt(area * ratio).clamp(1, w)
        ch = torch.sqrt(area / ratio).clamp(1, h)
        x0 = rand() * (w - cw)
        y0 = rand() * (h - ch)
        boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1).to(dev)
        size = config.image_size
        x = roi_align(x, boxes, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    if config.hflip:
        flip = (rand() < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if x.shape[-1] != config.image_size or x.shape[-2] != config.image_size:
        x = F.interpolate(x, size=(config.image_size,) * 2, mode="bilinear", align_corners=False)
    return _normalise(x).contiguous()


def eval_batch(images: torch.Tensor, config: PretrainConfig) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != config.image_size or x.shape[-2] != config.image_size:
        x = F.interpolate(x, size=(config.image_size,) * 2, mode="bilinear", align_corners=False)
    return _normalise(x).contiguous()


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, loader, config: PretrainConfig, device: torch.device, amp_dtype, channels_last: bool
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy on ``loader``."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for images, labels in loader:
        images = _decoded(loop.to_device(images, device), config, device)
        labels = loop.to_device(labels, device)
        x = eval_batch(images, config)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with loop.autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(labels[:, None])
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(dim=1).sum())
        total += labels.numel()
    model.train()
    return {
        "top1": 100.0 * correct1 / max(1, total),
        "top5": 100.0 * correct5 / max(1, total),
        "eval_loss": loss_sum / max(1, total),
    }


# --------------------------------------------------------------------------- the run


def run_pretrain(
    spec: Spec | str,
    data: Any,
    config: PretrainConfig | None = None,
    out_dir: str | Path = "runs/pre",
    resume: bool = False,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Pre-train ``spec`` as a classifier on ``data`` and write the run to ``out_dir``.

    ``resume=True`` continues from ``out_dir/checkpoint.pt`` when there is one (and starts
    fresh otherwise); the result equals an uninterrupted run. ``callback(stage, epoch,
    metrics, out_dir)`` runs after every epoch, once the checkpoint is on disk.
    Returns the final epoch's metrics plus ``best_top1``, ``history`` and file paths.
    """
    from bhsearch.models import build_backbone

    config = config or PretrainConfig(**data_defaults(data))
    spec = get_spec(spec)
    if config.width_mult != 1.0:
        spec = spec.scaled(config.width_mult)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    device = distributed.setup(config.device, sync_bn=config.sync_bn)  # joins the process group under torchrun
    loop.configure_runtime(device, seed=config.seed, deterministic=config.deterministic, num_threads=config.num_threads)
    amp_dtype = loop.resolve_amp(device, config.amp)
    channels_last = loop.resolve_channels_last(device, config.channels_last)

    train_raw = open_classification_data(data, "train")
    test_raw = open_classification_data(data, "test")
    num_classes = _num_classes(train_raw, test_raw)
    train_ds, train_collate = _as_batches(train_raw, config.max_train_samples, config.seed, "train", config, device)
    test_ds, test_collate = _as_batches(test_raw, config.max_eval_samples, config.seed, "test", config, device)
    # image files: the crops happen when decoding (``_FileBatches``), augment_batch only flips (or pads)
    augment = (
        dataclasses.replace(config, crop="none")
        if isinstance(train_ds, _FileBatches) and config.crop == "resize"
        else config
    )

    torch.manual_seed(loop.derive_seed(config.seed, "init"))
    model = Classifier(build_backbone(spec, norm=config.norm), num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov and config.momentum > 0,
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
        config.lr,
        sampler,
        config.accumulation,
        config.epochs,
        config.milestones,
        config.gamma,
        kind=config.schedule,
        warmup_epochs=config.warmup_epochs,
    )
    reporter = loop.Reporter("pretrain", config.progress)

    trainer, state, resumed_rng, checkpoint = loop.start_training(
        stage="pretrain",
        checkpoint_stage="pretrain",
        description="pretrain",
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
        weights_file="backbone.safetensors",
        num_classes=num_classes,
    )
    save_spec(spec, out / "spec.json", stage="pretrain", num_classes=num_classes, config=config.to_dict())

    train_loader = loop.make_loader(
        train_ds, sampler, collate_fn=train_collate, num_workers=config.num_workers, device=device
    )
    test_sampler = loop.EpochBatchSampler(len(test_ds), config.eval_batch_size, seed=config.seed, shuffle=False)
    test_workers = config.num_workers if isinstance(test_ds, _FileBatches) else 0  # decoding is the work
    test_loader = loop.make_loader(
        test_ds, test_sampler, collate_fn=test_collate, num_workers=test_workers, device=device
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    net = trainer.net  # the model, or its DistributedDataParallel wrapper

    def loss_fn(batch, b: int):
        images, labels = loop.to_device(batch, device)
        images = _decoded(images, config, device)
        gen = loop.generator(config.seed, "augment", state.epoch, b)
        x = augment_batch(images, augment, gen, part=sampler.batch_span(b))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = net(x)
        return criterion(logits.float(), labels), {}, labels.shape[0]

    history = loop.run_epochs(
        loop.EpochLoop(
            stage="pretrain",
            epochs=config.epochs,
            seed=config.seed,
            state=state,
            resumed_rng=resumed_rng,
            sampler=sampler,
            loader=train_loader,
            loss_fn=loss_fn,
            trainer=trainer,
            reporter=reporter,
            keys=("loss", "lr", "top1", "top5", "train_images_per_s", "epoch_time_s"),
            evaluate=lambda epoch: evaluate_classifier(model, test_loader, config, device, amp_dtype, channels_last),
            save_weights=lambda: _save_backbone(model, spec, out),
            checkpoint=checkpoint,
            out_dir=out,
            weights_file="backbone.safetensors",
            callback=callback,
        )
    )
    return _result(history, spec, out)


def _save_backbone(model: Classifier, spec: Spec, out: Path) -> None:
    loop.save_safetensors(
        out / "backbone.safetensors",
        model.backbone.state_dict(),
        metadata={"format": "bhsearch-backbone", "spec_id": spec.id, "stage": "pretrain"},
    )


def _result(history: list[dict[str, Any]], spec: Spec, out: Path) -> dict[str, Any]:
    last = dict(history[-1]) if history else {}
    return {
        **last,
        "best_top1": max((row["top1"] for row in history), default=0.0),
        "spec_id": spec.id,
        "out_dir": str(out),
        "backbone": str(out / "backbone.safetensors"),
        "history": history,
    }


__all__ = ["Classifier", "PretrainConfig", "augment_batch", "evaluate_classifier", "run_pretrain"]

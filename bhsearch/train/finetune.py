"""Detector fine-tuning on TinyPerson tiles with evaluation on whole images.

Paper §4.2 (TinyBenchmark's Faster R-CNN schedule): 640×512 tiles with 30 px overlap, SGD,
momentum 0.9, weight decay 1e-4, 12 epochs, lr 0.01 for 2 GPUs × 2 images (batch 4), ×0.1 after
epochs 8 and 11. Here ``lr=None`` means ``base_lr × (batch_size × accumulation) / base_batch``
(the linear scaling rule anchored at the paper's 0.01 for 4 images); the milestones scale with
``epochs`` (8/12 and 11/12 of the run); warm-up is mmdet's linear 500 steps from 0.001×lr,
capped at a third of the run for short runs.

Initialisation (``init``): ``None`` (scratch), a pre-training ``backbone.safetensors``, or a
torchvision ResNet ``state_dict`` file (``.pth``/``.pt``/``.safetensors``; ``fc.*`` dropped).
``norm="auto"`` picks frozen BN (and frozen stem + stage 1, as mmdet) for torchvision/ImageNet
weights, trainable BN for a proxy-pretrained backbone, and GroupNorm from scratch.

Outputs in ``out_dir``: ``model.safetensors`` (detector ``state_dict``), ``spec.json`` (spec +
``detector`` settings that rebuild the model), ``metrics.jsonl`` (losses, lr, ``AP50_tiny`` …
per epoch), ``checkpoint.pt``.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bhsearch.errors import DataError, UsageError
from bhsearch.spec import Spec, get_spec, save_spec
from bhsearch.train import distributed, loop
from bhsearch.train.inference import evaluate_model, scalar_metrics
from bhsearch.train.pretrain import _from_dict, _plain, _positive

NORMS = ("auto", "bn", "gn", "frozen_bn")
RESUMABLE_CHANGES = (
    "device",
    "num_workers",
    "num_threads",
    "progress",
    "checkpoint_interval_s",
    "eval_batch_size",
)
PAPER_EPOCHS = 12
PAPER_MILESTONES = (8, 11)

Callback = Callable[[str, int, dict, Path], None]


@dataclass
class FinetuneConfig:
    """Settings of a detector fine-tuning run (defaults: the paper's TinyPerson schedule).

    ``milestones`` are epochs of a 12-epoch schedule, scaled to ``epochs``. ``lr=None`` scales
    ``base_lr`` linearly with the global batch ``batch_size × processes × accumulation / base_batch``
    (``batch_size`` is per process; ``torchrun --nproc_per_node N`` runs N). ``sync_bn``: SyncBatchNorm
    across processes (CUDA only). ``freeze_stages``:
    -1 none, 0 the stem, k the stem and stages 1..k (None: 1 with torchvision weights, else -1).
    ``max_train_tiles`` / ``max_eval_images`` cut the data for quick runs (seeded subsets).
    ``detector_kwargs`` go to ``bhsearch.detectors.build_detector`` (e.g. ``anchor_sizes``).
    ``benchmark`` (None: the one whose data ``data`` names, TinyPerson for dataset pairs) picks the
    evaluator, the number of classes and the headline metric; ``max_dets`` None is its protocol's
    (TinyPerson 200, AI-TOD 1500).
    """

    benchmark: str | None = None
    detector: str = "faster_rcnn"
    epochs: int = PAPER_EPOCHS
    batch_size: int = 4
    lr: float | None = None
    base_lr: float = 0.01
    base_batch: int = 4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = PAPER_MILESTONES
    gamma: float = 0.1
    warmup_steps: int = 500
    warmup_ratio: float = 0.001
    tile: tuple[int, int] = (640, 512)
    overlap: int = 30
    hflip: bool = True
    keep_empty: bool = False
    norm: str = "auto"
    sync_bn: bool = False
    freeze_stages: int | None = None
    width_mult: float = 1.0
    accumulation: int = 1
    max_dets: int | None = None
    eval_every: int = 1
    eval_batch_size: int = 4
    max_train_tiles: int | None = None
    max_eval_images: int | None = None
    fpn_channels: int = 256
    min_level: int = 2
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
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
        from bhsearch.detectors import DETECTORS

        self.milestones = tuple(float(m) for m in self.milestones)
        self.tile = tuple(int(v) for v in self.tile)
        self.detector_kwargs = dict(self.detector_kwargs or {})
        if self.detector not in DETECTORS:
            raise UsageError(f"unknown detector {self.detector!r}; choose one of {', '.join(DETECTORS)}")
        _positive(self, "epochs", "batch_size", "accumulation", "eval_batch_size", "base_batch")
        if self.max_dets is not None:
            _positive(self, "max_dets")
        if self.benchmark is not None:
            from bhsearch.tasks import get_benchmark

            if get_benchmark(self.benchmark).name == "widerface":
                raise UsageError("WiderFace is fine-tuned by run_finetune_widerface (bhsearch widerface finetune)")
        if self.lr is not None and self.lr <= 0:
            raise UsageError(f"finetune lr must be positive, got {self.lr}")
        if self.norm not in NORMS:
            raise UsageError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if len(self.tile) != 2 or min(self.tile) < 32:
            raise UsageError(f"tile must be (width, height) of at least 32 px, got {self.tile}")
        from bhsearch.data.tiling import check_overlap

        check_overlap(self.tile, self.overlap)
        if self.width_mult <= 0:
            raise UsageError(f"width_mult must be positive, got {self.width_mult}")
        if self.eval_every < 0 or self.num_workers < 0 or self.warmup_steps < 0:
            raise UsageError("eval_every, num_workers and warmup_steps must not be negative")

    @property
    def effective_lr(self) -> float:
        """``lr``, else ``base_lr`` scaled to the global batch (all processes of a data-parallel run)."""
        if self.lr is not None:
            return self.lr
        return self.base_lr * self.batch_size * distributed.world_size() * self.accumulation / self.base_batch

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        return _from_dict(cls, data, "finetune")


# --------------------------------------------------------------------------- initialisation


def read_init_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Backbone weights from ``path`` and their kind: ``"pretrain"`` (a bhsearch backbone file) or
    ``"torchvision"`` (an ImageNet classifier ``state_dict``; ``fc.*`` dropped)."""
    from bhsearch.fileio import require_file

    if Path(path).is_dir():
        raise UsageError(f"--init {path}: is a directory, expected a weights file")
    path = require_file(path, "--init {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        state = loop.load_safetensors(path)
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        kind = "pretrain" if meta.get("format") == "bhsearch-backbone" else "torchvision"
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"--init {path}: not a readable state_dict ({str(exc).splitlines()[0]})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if isinstance(state, dict) and state.get("format") == loop.CHECKPOINT_FORMAT:
            raise UsageError(f"--init {path}: a bhsearch checkpoint; pass the run's backbone.safetensors instead")
        kind = "torchvision"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"--init {path}: expected a mapping of tensor names to tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.body.") for k in state):  # a detector: take its trunk
        state = {k[len("backbone.body.") :]: v for k, v in state.items() if k.startswith("backbone.body.")}
    elif any(k.startswith("backbone.") for k in state):  # a bhsearch classifier
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    if "fc.weight" in state:
        kind = "torchvision"
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return state, kind


def load_backbone_state(backbone: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; a mismatch raises UsageError naming the first differing tensor and both shapes."""
    own = backbone.state_dict()
    skip = re.compile(r"num_batches_tracked$")
    for name, tensor in own.items():
        if skip.search(name):
            continue
        if name not in state:
            raise UsageError(f"{source}: missing tensor {name!r} (model shape {tuple(tensor.shape)}); wrong spec?")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UsageError(
                f"{source}: tensor {name!r} has shape {tuple(state[name].shape)} in the file but "
                f"{tuple(tensor.shape)} in the model; wrong spec or --width-mult?"
            )
    extra = [k for k in state if k not in own and not skip.search(k)]
    if extra:
        raise UsageError(f"{source}: unexpected tensor {extra[0]!r} (shape {tuple(state[extra[0]].shape)})")
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def freeze_stages(body: torch.nn.Module, stages: int) -> list[str]:
    """Freeze the stem (``stages >= 0``) and stages 1..``stages``; returns the frozen child names."""
    if stages < 0:
        return []
    marker = re.compile(r"^(layer|stage)(\d+)$")
    frozen = []
    for name, child in body.named_children():
        m = marker.match(name)
        if m and int(m.group(2)) > stages:
            break
        for p in child.parameters():
            p.requires_grad_(False)
        frozen.append(name)
        if m and int(m.group(2)) == stages:
            break
    return frozen


# --------------------------------------------------------------------------- data


def resolve_benchmark(data: Any, config: FinetuneConfig):
    """The benchmark of a run: ``config.benchmark``, else the one whose data ``data`` names."""
    from bhsearch.tasks import benchmark_for_kind, get_benchmark

    if config.benchmark is not None:
        return get_benchmark(config.benchmark)
    if isinstance(data, (str, Path)):
        from bhsearch.data.registry import parse_ref

        return benchmark_for_kind(parse_ref(str(data))[0])
    return get_benchmark("tinyperson")


def open_detection_data(data: Any, config: FinetuneConfig):
    """(training tiles, whole test images) from a ``KIND:PATH`` ref or a ``(train, test)`` pair."""
    from bhsearch.tasks.tinyperson.reader import TileDataset

    if isinstance(data, (str, Path)):
        from bhsearch.data.registry import open_detection

        train = open_detection(
            str(data), "train", tile=config.tile, overlap=config.overlap, keep_empty=config.keep_empty
        )
        # the official protocol evaluates every image of the test file (the released one has no dense images)
        test = open_detection(str(data), "test")
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        train, test = data
        if not isinstance(train, TileDataset):
            train = TileDataset(train, config.tile, config.overlap, train=True, keep_empty=config.keep_empty)
    else:
        raise UsageError(f"data must be a KIND:PATH reference or a (train, test) pair, got {type(data).__name__}")
    if len(train) == 0:
        raise DataError("no training tiles (every tile is empty or the training set has no images)")
    if len(test) == 0:
        raise DataError("the test split has no images")
    return train, test


class _Subset:
    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices
        if hasattr(dataset, "records"):
            self.records = [dataset.records[i] for i in indices]
            self.annotation_json = dataset.annotation_json
            self.category_ids = list(getattr(dataset, "category_ids", [1]))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def read_region(self, i: int, window=None):
        return self.dataset.read_region(self.indices[i], window)


def _limit(dataset, limit: int | None, seed: int, what: str):
    if limit is None or limit >= len(dataset):
        return dataset, None
    keep = sorted(torch.randperm(len(dataset), generator=loop.generator(seed, "subset", what))[:limit].tolist())
    return _Subset(dataset, keep), keep


def _groups(train, keep: list[int] | None) -> list[int] | None:
    """Image index of every training tile, so tiles of one image are read together (decode cache)."""
    items = getattr(train, "items", None)
    if items is None:
        return None
    groups = [item[0] for item in items]
    return [groups[i] for i in keep] if keep is not None else groups


def _gt_subset(test) -> Any:
    """The test annotation restricted to the evaluated images (for ``max_eval_images``)."""
    if not isinstance(test, _Subset):
        return test.annotation_json
    from bhsearch.tasks.tinyperson.evaluate import _read_json

    gt = _read_json(test.annotation_json, "GT")
    ids = {r.image_id for r in test.records}
    return {
        **gt,
        "images": [im for im in gt["images"] if im["id"] in ids],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
    }


def hflip_batch(
    images: list[torch.Tensor], targets: list[dict], gen: torch.Generator, part: tuple[int, int] | None = None
):
    """Flip each tile (and its boxes) horizontally with probability 0.5.

    ``part`` ``(start, total)``: the tiles are a data-parallel slice of a batch of ``total``; the draws are
    made for the whole batch and sliced, so each tile is flipped as it would be in one process.
    """
    lo, total = part if part is not None else (0, len(images))
    flips = (torch.rand(total, generator=gen)[lo : lo + len(images)] < 0.5).tolist()
    out_i, out_t = [], []
    for img, tgt, flip in zip(images, targets, flips, strict=True):
        if flip:
            w = img.shape[-1]
            boxes = tgt["boxes"].clone()
            boxes[:, [0, 2]] = w - tgt["boxes"][:, [2, 0]]
            img, tgt = img.flip(-1), {**tgt, "boxes": boxes}
        out_i.append(img)
        out_t.append(tgt)
    return out_i, out_t


# --------------------------------------------------------------------------- the run


def resolve_norm(config: FinetuneConfig, init_kind: str | None) -> str:
    if config.norm != "auto":
        return config.norm
    return {"torchvision": "frozen_bn", "pretrain": "bn"}.get(init_kind or "", "gn")


def run_finetune(
    spec: Spec | str,
    data: Any,
    config: FinetuneConfig | None = None,
    out_dir: str | Path = "runs/det",
    init: str | Path | None = None,
    resume: bool = False,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Fine-tune a detector on ``spec`` (tiles of ``data``'s train split), evaluating on its test split.

    ``init``: a backbone file (see module doc) or None. ``resume=True`` continues from
    ``out_dir/checkpoint.pt`` (fresh start when absent) to the same final result.
    ``callback(stage, epoch, metrics, out_dir)`` runs after every epoch, once the checkpoint
    is written. Returns the last epoch's metrics plus ``best_<metric>`` (``best_AP50_tiny`` on TinyPerson,
    ``best_AP50`` on AI-TOD), ``benchmark``, ``history`` and paths.
    """
    from bhsearch.detectors import build_detector, detector_settings
    from bhsearch.models import build_backbone
    from bhsearch.tasks.tinyperson.reader import collate_tiles

    config = config or FinetuneConfig()
    bench = resolve_benchmark(data, config)
    max_dets = config.max_dets or bench.detector_defaults.get("max_dets", 200)
    spec = get_spec(spec)
    if config.width_mult != 1.0:
        spec = spec.scaled(config.width_mult)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    init_state, init_kind = read_init_weights(init) if init is not None else (None, None)
    norm = resolve_norm(config, init_kind)
    frozen_stages = config.freeze_stages
    if frozen_stages is None:
        frozen_stages = 1 if init_kind == "torchvision" else -1

    device = distributed.setup(config.device, sync_bn=config.sync_bn)  # joins the process group under torchrun
    loop.configure_runtime(device, seed=config.seed, deterministic=config.deterministic, num_threads=config.num_threads)
    amp_dtype = loop.resolve_amp(device, config.amp)
    channels_last = loop.resolve_channels_last(device, config.channels_last)

    train_ds, test_ds = open_detection_data(data, config)
    train_ds, train_keep = _limit(train_ds, config.max_train_tiles, config.seed, "train")
    test_ds, _ = _limit(test_ds, config.max_eval_images, config.seed, "test")
    gt = _gt_subset(test_ds)

    torch.manual_seed(loop.derive_seed(config.seed, "init"))
    backbone = build_backbone(spec, norm=norm)
    if init_state is not None:
        load_backbone_state(backbone, init_state, f"--init {init}")
    model = build_detector(
        spec,
        config.detector,
        num_classes=len(getattr(test_ds, "category_ids", [1])),
        norm=norm,
        image_size=config.tile,
        fpn_channels=config.fpn_channels,
        min_level=config.min_level,
        backbone=backbone,
        **config.detector_kwargs,
    )
    frozen = freeze_stages(model.backbone.body, frozen_stages)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.effective_lr, momentum=config.momentum, weight_decay=config.weight_decay
    )

    sampler = loop.EpochBatchSampler(
        len(train_ds),
        config.batch_size,
        seed=config.seed,
        shuffle=True,
        groups=_groups(train_ds, train_keep),
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
        milestone_scale=PAPER_EPOCHS,
        warmup_steps=config.warmup_steps,
        warmup_ratio=config.warmup_ratio,
    )
    reporter = loop.Reporter("finetune", config.progress)
    settings = detector_settings(model)
    run_info = {
        "init": str(init) if init is not None else None,
        "init_kind": init_kind,
        "norm": norm,
        "frozen": frozen,
        "lr": config.effective_lr,
        "benchmark": bench.name,
        "category_ids": list(getattr(test_ds, "category_ids", [1])),
    }

    trainer, state, resumed_rng, checkpoint = loop.start_training(
        stage="finetune",
        checkpoint_stage="finetune",
        description="finetune",
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
    save_spec(spec, out / "spec.json", stage="finetune", detector=settings, run=run_info, config=config.to_dict())

    loader = loop.make_loader(
        train_ds, sampler, collate_fn=collate_tiles, num_workers=config.num_workers, device=device
    )

    net = trainer.net  # the model, or its DistributedDataParallel wrapper

    def loss_fn(batch, b: int):
        images, targets = batch
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        if config.hflip:
            gen = loop.generator(config.seed, "flip", state.epoch, b)
            images, targets = hflip_batch(images, targets, gen, part=sampler.batch_span(b))
        images = loop.to_device(images, device)
        targets = loop.to_device(targets, device)
        losses = net(images, targets)
        return sum(losses.values()), losses, len(images)

    def evaluate(epoch: int) -> dict[str, Any]:
        if not ((config.eval_every and epoch % config.eval_every == 0) or epoch == config.epochs):
            return {}
        reporter.phase(f"finetune epoch {epoch}/{config.epochs}: evaluating ({bench.title})")
        t_eval = time.perf_counter()
        metrics = evaluate_model(
            model,
            test_ds,
            gt=gt,
            tile=config.tile,
            overlap=config.overlap,
            max_dets=max_dets,
            batch_size=config.eval_batch_size,
            device=device,
            amp_dtype=amp_dtype,
            num_workers=config.num_workers,
            benchmark=bench.name,
        )
        return {**scalar_metrics(metrics), "max_dets": max_dets, "eval_time_s": time.perf_counter() - t_eval}

    weights_meta = {"format": "bhsearch-detector", "spec_id": spec.id}
    history = loop.run_epochs(
        loop.EpochLoop(
            stage="finetune",
            epochs=config.epochs,
            seed=config.seed,
            state=state,
            resumed_rng=resumed_rng,
            sampler=sampler,
            loader=loader,
            loss_fn=loss_fn,
            trainer=trainer,
            reporter=reporter,
            keys=("loss", "lr", *bench.metric_keys[:3], "train_images_per_s", "epoch_time_s"),
            evaluate=evaluate,
            save_weights=lambda: loop.save_safetensors(
                out / "model.safetensors", model.state_dict(), metadata=weights_meta
            ),
            checkpoint=checkpoint,
            out_dir=out,
            weights_file="model.safetensors",
            callback=callback,
        )
    )
    last = dict(history[-1]) if history else {}
    scores = [row[bench.metric] for row in history if row.get(bench.metric) is not None]
    return {
        **last,
        f"best_{bench.metric}": max(scores, default=None),
        "benchmark": bench.name,
        "spec_id": spec.id,
        "out_dir": str(out),
        "model": str(out / "model.safetensors"),
        "history": history,
    }


__all__ = [
    "FinetuneConfig",
    "freeze_stages",
    "hflip_batch",
    "load_backbone_state",
    "read_init_weights",
    "run_finetune",
]

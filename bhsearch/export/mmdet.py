"""Export target ``mmdet``: an MMDetection 3.x config for a bhsearch backbone on TinyPerson.

The config mirrors the torchvision detector that ``bhsearch.detectors.build_detector`` builds
(FPN from stride 4, the same anchors / FCOS ranges, 1000 detections at score 0.01), uses the
``BHSearchBackbone`` of ``bhsearch.export.mmdet_plugin`` through ``custom_imports``, and the
paper's TinyPerson schedule: SGD lr 0.01 (batch 4 = 2 GPUs x 2 images), momentum 0.9,
weight decay 1e-4, 12 epochs, lr x0.1 after epochs 8 and 11, linear warm-up, 640x512 tiles.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.export import ExportResult, detector_kwargs
from bhsearch.export.common import ExportSource, file_stem, readme_section, staged_output

MEAN_255 = [123.675, 116.28, 103.53]
STD_255 = [58.395, 57.12, 57.375]
WIDTH = 100


class Raw(str):
    """Python source inserted as is (e.g. a variable name)."""

    def __repr__(self) -> str:
        return str(self)


def _num(value: float) -> Any:
    return int(value) if float(value).is_integer() and abs(value) < 1e6 else round(float(value), 6)


def py(obj: Any, indent: int = 0) -> str:
    """Format ``obj`` as mmengine-style Python source (``dict(key=...)``), wrapped at ``WIDTH``."""
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(obj, dict):
        items = [f"{k}={py(v, indent + 4)}" for k, v in obj.items()]
        opener, closer = "dict(", ")"
    elif isinstance(obj, (list, tuple)):
        items = [py(v, indent + 4) for v in obj]
        opener, closer = ("[", "]") if isinstance(obj, list) else ("(", ")")
        if isinstance(obj, tuple) and len(obj) == 1:
            items[0] += ","
    elif isinstance(obj, float):
        return repr(round(obj, 6))
    else:
        return repr(obj)
    flat = opener + ", ".join(items) + closer
    if len(flat) + indent <= WIDTH and "\n" not in flat:
        return flat
    return opener + "\n" + "".join(f"{inner}{item},\n" for item in items) + pad + closer


def _anchor_generator(sizes: list[list[float]], ratios: list[float], strides: list[int]) -> dict[str, Any]:
    """mmdet ``AnchorGenerator`` arguments giving exactly torchvision's anchors (same centres:
    torchvision and mmdet with ``center_offset=0`` both centre anchors on ``k * stride``)."""
    rel = [[s / level[0] for s in level] for level in sizes]
    same = all(
        len(r) == len(rel[0]) and all(math.isclose(a, b, rel_tol=1e-3) for a, b in zip(r, rel[0], strict=True))
        for r in rel
    )
    if not same:
        raise UsageError("mmdet export needs the same relative anchor scales on every FPN level")
    multiple = [level[0] / s for level, s in zip(sizes, strides, strict=True)]
    gen: dict[str, Any] = {"type": "AnchorGenerator"}
    n = len(rel[0])
    if all(math.isclose(m, multiple[0], rel_tol=1e-3) for m in multiple):
        if n > 1 and all(math.isclose(r, 2 ** (k / n), rel_tol=1e-3) for k, r in enumerate(rel[0])):
            gen.update(octave_base_scale=_num(multiple[0]), scales_per_octave=n)
        else:
            gen["scales"] = [_num(multiple[0] * r) for r in rel[0]]
    else:
        gen["base_sizes"] = [_num(level[0]) for level in sizes]
        gen["scales"] = [_num(r) for r in rel[0]]
    gen["ratios"] = [float(r) for r in ratios]
    gen["strides"] = list(strides)
    return gen


def _fpn(in_channels: list[int], channels: int, num_outs: int, p6p7: bool) -> dict[str, Any]:
    neck: dict[str, Any] = {"type": "FPN", "in_channels": in_channels, "out_channels": channels, "num_outs": num_outs}
    if p6p7:  # torchvision's LastLevelP6P7 on P5: conv(P5) then conv(relu(P6))
        neck.update(start_level=0, add_extra_convs="on_output", relu_before_extra_convs=True)
    return neck


def _nms(iou: float) -> dict[str, Any]:
    return {"type": "nms", "iou_threshold": iou}


def model_config(settings: dict[str, Any], strides: list[int], backbone: dict[str, Any], in_channels: list[int]):
    """The ``model`` dict of the config for torchvision-detector ``settings``."""
    det, classes, channels = settings["detector"], settings["num_classes"], settings["fpn_channels"]
    sizes, ratios = settings["anchor_sizes"], settings["aspect_ratios"]
    preprocessor = {
        "type": "DetDataPreprocessor",
        "mean": [round(m * 255, 3) for m in settings["image_mean"]],
        "std": [round(s * 255, 3) for s in settings["image_std"]],
        "bgr_to_rgb": True,
        "pad_size_divisor": 32,
    }
    coder = {"type": "DeltaXYWHBBoxCoder", "target_means": [0.0] * 4, "target_stds": [1.0] * 4}
    if det == "faster_rcnn":
        return {
            "type": "FasterRCNN",
            "data_preprocessor": preprocessor,
            "backbone": backbone,
            "neck": _fpn(in_channels, channels, len(strides), p6p7=False),
            "rpn_head": {
                "type": "RPNHead",
                "in_channels": channels,
                "feat_channels": channels,
                "anchor_generator": _anchor_generator(sizes, ratios, strides),
                "bbox_coder": coder,
                "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 1.0},
                "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0},
            },
            "roi_head": {
                "type": "StandardRoIHead",
                "bbox_roi_extractor": {
                    "type": "SingleRoIExtractor",
                    "roi_layer": {"type": "RoIAlign", "output_size": 7, "sampling_ratio": 0},
                    "out_channels": channels,
                    "featmap_strides": strides[:-1],
                },
                "bbox_head": {
                    "type": "Shared2FCBBoxHead",
                    "in_channels": channels,
                    "fc_out_channels": 1024,
                    "roi_feat_size": 7,
                    "num_classes": classes,
                    "bbox_coder": {**coder, "target_stds": [0.1, 0.1, 0.2, 0.2]},
                    "reg_class_agnostic": False,
                    "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0},
                    "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0},
                },
            },
            "train_cfg": {
                "rpn": {
                    "assigner": _assigner(0.7, 0.3, 0.3, True),
                    "sampler": _sampler(settings.get("rpn_batch_size_per_image", 256), 0.5, False),
                    "allowed_border": -1,
                    "pos_weight": -1,
                    "debug": False,
                },
                "rpn_proposal": {"nms_pre": 2000, "max_per_img": 1000, "nms": _nms(0.7), "min_bbox_size": 0},
                "rcnn": {
                    "assigner": _assigner(0.5, 0.5, 0.5, False),
                    "sampler": _sampler(settings.get("box_batch_size_per_image", 512), 0.25, True),
                    "pos_weight": -1,
                    "debug": False,
                },
            },
            "test_cfg": {
                "rpn": {"nms_pre": 1000, "max_per_img": 1000, "nms": _nms(0.7), "min_bbox_size": 0},
                "rcnn": {
                    "score_thr": settings.get("box_score_thresh", 0.01),
                    "nms": _nms(settings.get("box_nms_thresh", 0.5)),
                    "max_per_img": settings.get("box_detections_per_img", 1000),
                },
            },
        }
    focal = {"type": "FocalLoss", "use_sigmoid": True, "gamma": 2.0, "alpha": 0.25, "loss_weight": 1.0}
    test_cfg = {
        "nms_pre": settings.get("topk_candidates", 1000),
        "min_bbox_size": 0,
        "score_thr": settings.get("score_thresh", 0.01),
        "nms": _nms(settings.get("nms_thresh", 0.5 if det == "retinanet" else 0.6)),
        "max_per_img": settings.get("detections_per_img", 1000),
    }
    common = {
        "data_preprocessor": preprocessor,
        "backbone": backbone,
        "neck": _fpn(in_channels, channels, len(strides), True),
    }
    if det == "retinanet":
        head = {
            "type": "RetinaHead",
            "num_classes": classes,
            "in_channels": channels,
            "stacked_convs": 4,
            "feat_channels": channels,
            "anchor_generator": _anchor_generator(sizes, ratios, strides),
            "bbox_coder": coder,
            "loss_cls": focal,
            "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0},
        }
        train = {
            "assigner": {**_assigner(0.5, 0.4, 0.0, True), "ignore_iof_thr": -1},
            "sampler": {"type": "PseudoSampler"},
            "allowed_border": -1,
            "pos_weight": -1,
            "debug": False,
        }
        return {"type": "RetinaNet", **common, "bbox_head": head, "train_cfg": train, "test_cfg": test_cfg}
    # FCOS: torchvision regresses level i for max(l, t, r, b) in [4 * size_i, 8 * size_i)
    point = [level[0] for level in sizes]
    ranges = [(-1 if i == 0 else _num(4 * p), 1e8 if i == len(point) - 1 else _num(8 * p)) for i, p in enumerate(point)]
    head = {
        "type": "FCOSHead",
        "num_classes": classes,
        "in_channels": channels,
        "stacked_convs": 4,
        "feat_channels": channels,
        "strides": list(strides),
        "regress_ranges": tuple(ranges),
        "center_sampling": True,
        "center_sample_radius": settings.get("center_sampling_radius", 1.5),
        "norm_on_bbox": True,
        "centerness_on_reg": True,
        "norm_cfg": {"type": "GN", "num_groups": 32, "requires_grad": True},
        "loss_cls": focal,
        "loss_bbox": {"type": "GIoULoss", "loss_weight": 1.0},
        "loss_centerness": {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 1.0},
    }
    train = {"assigner": _assigner(0.5, 0.4, 0.0, True), "allowed_border": -1, "pos_weight": -1, "debug": False}
    return {"type": "FCOS", **common, "bbox_head": head, "train_cfg": train, "test_cfg": test_cfg}


def _assigner(pos: float, neg: float, min_pos: float, low_quality: bool) -> dict[str, Any]:
    return {
        "type": "MaxIoUAssigner",
        "pos_iou_thr": pos,
        "neg_iou_thr": neg,
        "min_pos_iou": min_pos,
        "match_low_quality": low_quality,
        "ignore_iof_thr": -1,
    }


def _sampler(num: int, fraction: float, gt_proposals: bool) -> dict[str, Any]:
    return {
        "type": "RandomSampler",
        "num": num,
        "pos_fraction": fraction,
        "neg_pos_ub": -1,
        "add_gt_as_proposals": gt_proposals,
    }


HEADER = """\
# MMDetection 3.x config written by `bhsearch export --to mmdet`.
# Backbone: {name} ({spec_id}); detector: {detector}, {classes} class(es); FPN from stride {stride0}.
# Needs bhsearch importable (it registers BHSearchBackbone) next to mmdet >= 3.0, mmengine, mmcv >= 2.0.
#
# Data: TinyPerson (Yu et al. 2020) in COCO format. The paper (like TinyBenchmark) trains on
# 640x512 tiles cut with 30 px overlap; point `train_ann_file` at such a tiled ("corner") file
# and drop RandomCrop, or keep RandomCrop to sample 640x512 tiles from whole images.
# Images keep their native size (no resizing). CocoMetric reports COCO size ranges; compute
# AP50_tiny with bhsearch's TinyPerson evaluator (`bhsearch evaluate`) or TinyBenchmark.
# Schedule (paper, 2 GPUs x 2 images): SGD lr 0.01, momentum 0.9, wd 1e-4, 12 epochs,
# lr x0.1 after epochs 8 and 11. Pass --auto-scale-lr to scale lr from base batch 4.

"""


def config_text(
    source: ExportSource,
    detector: str | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] = (640, 512),
    weights_file: str | None = None,
    frozen_stages: int = -1,
    data_root: str = "data/tiny_set/",
    mmdet_version: int = 3,
    **options: Any,
) -> str:
    """The config file text (Python) for ``source``: MMDetection 3.x, or 2.x with ``mmdet_version=2``."""
    from bhsearch import detectors
    from bhsearch.spec import spec_name

    kwargs = detector_kwargs(source, detector, num_classes, **options)
    if "image_size" not in source.settings:
        kwargs.setdefault("image_size", input_size)
    model = detectors.build_detector(source.spec, **kwargs)
    settings = detectors.detector_settings(model)
    spec, first = source.spec, settings["min_level"] - 2
    indices = tuple(range(first, len(spec.out_channels)))
    backbone = {
        "type": "BHSearchBackbone",
        "spec": spec.id,
        "norm": settings["norm"],
        "out_indices": indices,
        "frozen_stages": frozen_stages,
        "norm_eval": settings["norm"] == "frozen_bn",
        "weights": Raw(f"'{{{{ fileDirname }}}}/{weights_file}'") if weights_file else None,
    }
    in_channels = [spec.out_channels[i] for i in indices]
    strides = list(model.backbone.out_strides)
    width, height = settings["image_size"]
    header = {
        "name": spec_name(spec) or "search result",
        "spec_id": spec.id,
        "detector": settings["detector"],
        "classes": settings["num_classes"],
        "stride0": strides[0],
    }
    if mmdet_version == 2:
        from bhsearch.export.mmdet2 import config_text_v2

        model = model_config(settings, strides, backbone, in_channels)
        return config_text_v2(model, settings, (width, height), header, data_root, settings_max(settings))
    if mmdet_version != 3:
        raise UsageError(f"mmdet_version must be 2 or 3, got {mmdet_version!r}")
    lines = [HEADER.format(**header)]

    def put(name: str, value: Any) -> None:
        lines.append(f"{name} = {py(value)}\n")

    put("custom_imports", {"imports": ["bhsearch.export.mmdet_plugin"], "allow_failed_imports": False})
    put("default_scope", "mmdet")
    put("bhsearch_detector_settings", settings)
    lines.append("\n")
    put("model", model_config(settings, strides, backbone, in_channels))
    lines.append("\n# --------------------------------------------------------------------------- data\n")
    put("dataset_type", "CocoDataset")
    put("data_root", data_root)
    put("metainfo", {"classes": ("person",)})
    put("train_ann_file", "annotations/tiny_set_train.json")
    put("train_img_prefix", "train/")
    put("test_ann_file", "annotations/task/tiny_set_test_all.json")
    put("test_img_prefix", "test/")
    put("tile_size", (width, height))
    put("backend_args", None)
    put(
        "train_pipeline",
        [
            {"type": "LoadImageFromFile", "backend_args": Raw("backend_args")},
            {"type": "LoadAnnotations", "with_bbox": True},
            {"type": "RandomCrop", "crop_size": (height, width), "allow_negative_crop": True},
            {"type": "RandomFlip", "prob": 0.5},
            {"type": "PackDetInputs"},
        ],
    )
    put(
        "test_pipeline",
        [
            {"type": "LoadImageFromFile", "backend_args": Raw("backend_args")},
            {"type": "Resize", "scale_factor": 1.0, "keep_ratio": True},
            {"type": "LoadAnnotations", "with_bbox": True},
            {
                "type": "PackDetInputs",
                "meta_keys": ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
            },
        ],
    )
    dataset = {"type": Raw("dataset_type"), "data_root": Raw("data_root"), "metainfo": Raw("metainfo")}
    put(
        "train_dataloader",
        {
            "batch_size": 2,
            "num_workers": 2,
            "persistent_workers": True,
            "sampler": {"type": "DefaultSampler", "shuffle": True},
            "batch_sampler": {"type": "AspectRatioBatchSampler"},
            "dataset": {
                **dataset,
                "ann_file": Raw("train_ann_file"),
                "data_prefix": {"img": Raw("train_img_prefix")},
                "filter_cfg": {"filter_empty_gt": True, "min_size": 1},
                "pipeline": Raw("train_pipeline"),
                "backend_args": Raw("backend_args"),
            },
        },
    )
    put(
        "val_dataloader",
        {
            "batch_size": 1,
            "num_workers": 2,
            "persistent_workers": True,
            "drop_last": False,
            "sampler": {"type": "DefaultSampler", "shuffle": False},
            "dataset": {
                **dataset,
                "ann_file": Raw("test_ann_file"),
                "data_prefix": {"img": Raw("test_img_prefix")},
                "test_mode": True,
                "pipeline": Raw("test_pipeline"),
                "backend_args": Raw("backend_args"),
            },
        },
    )
    put("test_dataloader", Raw("val_dataloader"))
    put(
        "val_evaluator",
        {
            "type": "CocoMetric",
            "ann_file": Raw("data_root + test_ann_file"),
            "metric": "bbox",
            "proposal_nums": (100, 300, settings_max(settings)),
            "format_only": False,
            "backend_args": Raw("backend_args"),
        },
    )
    put("test_evaluator", Raw("val_evaluator"))
    lines.append("\n# --------------------------------------------------------------------------- schedule\n")
    put("train_cfg", {"type": "EpochBasedTrainLoop", "max_epochs": 12, "val_interval": 12})
    put("val_cfg", {"type": "ValLoop"})
    put("test_cfg", {"type": "TestLoop"})
    put(
        "param_scheduler",
        [
            {"type": "LinearLR", "start_factor": 0.001, "by_epoch": False, "begin": 0, "end": 500},
            {"type": "MultiStepLR", "begin": 0, "end": 12, "by_epoch": True, "milestones": [8, 11], "gamma": 0.1},
        ],
    )
    put(
        "optim_wrapper",
        {"type": "OptimWrapper", "optimizer": {"type": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001}},
    )
    put("auto_scale_lr", {"enable": False, "base_batch_size": 4})
    lines.append("\n# --------------------------------------------------------------------------- runtime\n")
    put(
        "default_hooks",
        {
            "timer": {"type": "IterTimerHook"},
            "logger": {"type": "LoggerHook", "interval": 50},
            "param_scheduler": {"type": "ParamSchedulerHook"},
            "checkpoint": {"type": "CheckpointHook", "interval": 1},
            "sampler_seed": {"type": "DistSamplerSeedHook"},
            "visualization": {"type": "DetVisualizationHook"},
        },
    )
    put(
        "env_cfg",
        {
            "cudnn_benchmark": False,
            "mp_cfg": {"mp_start_method": "fork", "opencv_num_threads": 0},
            "dist_cfg": {"backend": "nccl"},
        },
    )
    put("vis_backends", [{"type": "LocalVisBackend"}])
    put("visualizer", {"type": "DetLocalVisualizer", "vis_backends": Raw("vis_backends"), "name": "visualizer"})
    put("log_processor", {"type": "LogProcessor", "window_size": 50, "by_epoch": True})
    put("log_level", "INFO")
    put("load_from", None)
    put("resume", False)
    return "".join(lines)


def settings_max(settings: dict[str, Any]) -> int:
    return int(settings.get("box_detections_per_img", settings.get("detections_per_img", 1000)))


README = """\
## MMDetection ({detector})

`{config}` is an MMDetection 3.x config: backbone `BHSearchBackbone` (`{spec_id}`), registered by
`bhsearch.export.mmdet_plugin` through `custom_imports`; FPN `in_channels` {in_channels}; the paper's
TinyPerson schedule (SGD lr 0.01, 12 epochs, steps at 8 and 11, 640x512 tiles).{weights_line}

```bash
pip install bhsearch mmengine "mmcv>=2.0.0rc4,<2.2.0" "mmdet>=3.0"
python tools/train.py {folder}/{config}   # from an MMDetection checkout
```
"""


def export(
    source: ExportSource,
    out: Path,
    detector: str | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] = (640, 512),
    **options: Any,
) -> ExportResult:
    """Write ``<name>_<detector>_tinyperson.py`` (and the trunk's weights when given) into ``out``."""
    from bhsearch.detectors import load_state, read_safetensors, save_weights
    from bhsearch.export.common import backbone_state
    from bhsearch.models import build_backbone

    version = options.pop("mmdet_version", 3)
    kwargs = detector_kwargs(source, detector, num_classes, **options)
    det = kwargs["detector"]
    stem = file_stem(source.spec).replace("-", "_").replace(".", "_")
    config = f"{stem}_{det}_tinyperson{'_mmdet2' if version == 2 else ''}.py"
    files = [config]
    weights_file = None
    with staged_output(out) as tmp:
        if source.weights is not None:
            weights_file = f"{stem}_backbone.safetensors"
            trunk = build_backbone(source.spec, norm="gn" if kwargs.get("norm") == "gn" else "bn")  # as trained
            load_state(trunk, backbone_state(read_safetensors(source.weights)), str(source.weights))
            save_weights(trunk, tmp / weights_file)
            files.append(weights_file)
        text = config_text(
            source, detector, num_classes, input_size, weights_file=weights_file, mmdet_version=version, **options
        )
        (tmp / config).write_text(text)
        spec = source.spec
        in_channels = list(spec.out_channels)[kwargs.get("min_level", 2) - 2 :]
        weights_line = f"\n`{weights_file}` holds the trained backbone; the config loads it." if weights_file else ""
        readme_section(
            out,
            tmp,
            "mmdet",
            README.format(
                detector=det,
                config=config,
                spec_id=spec.id,
                in_channels=in_channels,
                weights_line=weights_line,
                folder=out.as_posix(),
            ),
        )
    files.append("README.md")
    return ExportResult(
        "mmdet", out, files, source.spec.id, {"config": config, "detector": det, "mmdet_version": version}
    )


__all__ = ["config_text", "export", "model_config", "py"]

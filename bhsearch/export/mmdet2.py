"""MMDetection 2.x (mmcv-full 1.x) config text for ``bhsearch export --to mmdet --mmdet-version 2``.

The tiny-object frameworks built on MMDetection 2.x (TinyBenchmark's successors, SSPNet, RFLA,
TOV_mmdetection) take a 2.x config: ``model`` with ``train_cfg``/``test_cfg`` inside, ``data`` with
``samples_per_gpu``, ``img_norm_cfg`` in the pipelines, ``optimizer``/``lr_config``/``runner``.
The model heads are the 3.x ones (their types and arguments did not change); the backbone gets a
``norm_cfg`` (``dict(type='BN'|'GN', num_groups=..., requires_grad=True)``) and ``init_cfg=None``
(the trained trunk is loaded from ``weights``, a safetensors file, by the plugin itself).
"""

from __future__ import annotations

from typing import Any

HEADER = """\
# MMDetection 2.x config (mmcv-full 1.x) written by `bhsearch export --to mmdet --mmdet-version 2`.
# Backbone: {name} ({spec_id}); detector: {detector}, {classes} class(es); FPN from stride {stride0}.
# Needs bhsearch importable next to mmdet 2.x: the plugin registers BHSearchBackbone in
# mmdet.models.builder.BACKBONES. Data, tiles and schedule as in the 3.x config (paper, TinyBenchmark):
# SGD lr 0.01, momentum 0.9, wd 1e-4, 12 epochs, lr x0.1 after epochs 8 and 11, batch 2 x 2 GPUs.

"""


def norm_cfg(norm: str) -> dict[str, Any]:
    """The 2.x ``norm_cfg`` of a bhsearch norm (GroupNorm's groups follow ``models.common.gn_groups``)."""
    if norm == "gn":
        return {"type": "GN", "num_groups": 32, "requires_grad": True}
    return {"type": "BN", "requires_grad": norm != "frozen_bn"}


def config_text_v2(
    model: dict[str, Any],
    settings: dict[str, Any],
    tile: tuple[int, int],
    header: dict[str, Any],
    data_root: str,
    max_dets: int,
) -> str:
    """The 2.x config for a 3.x-style ``model`` dict (from ``mmdet.model_config``)."""
    from bhsearch.export.mmdet import Raw, py

    model = {k: v for k, v in model.items() if k != "data_preprocessor"}
    backbone = dict(model["backbone"])
    backbone["norm_cfg"] = norm_cfg(backbone.pop("norm"))
    backbone["init_cfg"] = None
    model["backbone"] = backbone
    width, height = tile
    lines = [HEADER.format(**header)]

    def put(name: str, value: Any) -> None:
        lines.append(f"{name} = {py(value)}\n")

    put("custom_imports", {"imports": ["bhsearch.export.mmdet_plugin"], "allow_failed_imports": False})
    put("bhsearch_detector_settings", settings)
    lines.append("\n")
    put("model", model)
    lines.append("\n# --------------------------------------------------------------------------- data\n")
    put("dataset_type", "CocoDataset")
    put("data_root", data_root)
    put("classes", ("person",))
    put(
        "img_norm_cfg",
        {
            "mean": [round(m * 255, 3) for m in settings["image_mean"]],
            "std": [round(s * 255, 3) for s in settings["image_std"]],
            "to_rgb": True,
        },
    )
    pad = {"type": "Pad", "size_divisor": 32}
    norm = Raw("dict(type='Normalize', **img_norm_cfg)")
    put(
        "train_pipeline",
        [
            {"type": "LoadImageFromFile"},
            {"type": "LoadAnnotations", "with_bbox": True},
            {"type": "RandomCrop", "crop_size": (height, width), "allow_negative_crop": True},
            {"type": "RandomFlip", "flip_ratio": 0.5},
            norm,
            pad,
            {"type": "DefaultFormatBundle"},
            {"type": "Collect", "keys": ["img", "gt_bboxes", "gt_labels"]},
        ],
    )
    put(
        "test_pipeline",
        [
            {"type": "LoadImageFromFile"},
            {
                "type": "MultiScaleFlipAug",
                "scale_factor": 1.0,
                "flip": False,
                "transforms": [
                    {"type": "Resize", "keep_ratio": True},
                    {"type": "RandomFlip"},
                    norm,
                    pad,
                    {"type": "ImageToTensor", "keys": ["img"]},
                    {"type": "Collect", "keys": ["img"]},
                ],
            },
        ],
    )

    def split(ann: str, prefix: str, pipeline: str) -> dict[str, Any]:
        return {
            "type": Raw("dataset_type"),
            "classes": Raw("classes"),
            "ann_file": Raw(f"data_root + '{ann}'"),
            "img_prefix": Raw(f"data_root + '{prefix}'"),
            "pipeline": Raw(pipeline),
        }

    test = split("annotations/task/tiny_set_test_all.json", "test/", "test_pipeline")
    put(
        "data",
        {
            "samples_per_gpu": 2,
            "workers_per_gpu": 2,
            "train": split("annotations/tiny_set_train.json", "train/", "train_pipeline"),
            "val": test,
            "test": test,
        },
    )
    put("evaluation", {"interval": 12, "metric": "bbox", "proposal_nums": (100, 300, max_dets)})
    lines.append("\n# --------------------------------------------------------------------------- schedule\n")
    put("optimizer", {"type": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001})
    put("optimizer_config", {"grad_clip": None})
    put(
        "lr_config", {"policy": "step", "warmup": "linear", "warmup_iters": 500, "warmup_ratio": 0.001, "step": [8, 11]}
    )
    put("runner", {"type": "EpochBasedRunner", "max_epochs": 12})
    put("auto_scale_lr", {"enable": False, "base_batch_size": 4})
    lines.append("\n# --------------------------------------------------------------------------- runtime\n")
    put("checkpoint_config", {"interval": 1})
    put("log_config", {"interval": 50, "hooks": [{"type": "TextLoggerHook"}]})
    put("dist_params", {"backend": "nccl"})
    put("log_level", "INFO")
    put("load_from", None)
    put("resume_from", None)
    put("workflow", [("train", 1)])
    return "".join(lines)


__all__ = ["config_text_v2", "norm_cfg"]

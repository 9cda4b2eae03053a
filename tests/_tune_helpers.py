"""Tiny study files for the tuning tests (shared by tests/test_tune_*.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

PRETRAIN = {"epochs": 1, "batch_size": 64, "lr": 0.05, "max_train_samples": 128, "max_eval_samples": 64}
FINETUNE = {
    "epochs": 1,
    "batch_size": 2,
    "tile": [128, 128],
    "max_train_tiles": 4,
    "fpn_channels": 16,
    "warmup_steps": 2,
}


def write_study(tmp_path: Path, data, name: str, *, finetune: bool = True, **overrides) -> Path:
    """A width-1/16 ResNet-50 study on the shared synthetic data; returns the YAML path."""
    study = {
        "name": name,
        "base": "resnet50",
        "width_mult": 0.0625,
        "input_size": "640x512",
        "space": {"tolerance": 2.0, "options": {"top": 6}},
        "search": {"algorithm": "random", "num_samples": 3, "seed": 0},
        "scheduler": {"type": "fifo"},
        "stages": {"pretrain": {"data": data.cifar100_ref, **PRETRAIN}},
        "resources": {"cpu": 1},
        "latency": {"input_size": "64x64", "warmup": 0, "reps": 1},
        "ray": {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024},
        "storage": str(tmp_path / "runs"),
    }
    if finetune:
        study["stages"]["finetune"] = {"data": data.tinyperson_ref, **FINETUNE}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path

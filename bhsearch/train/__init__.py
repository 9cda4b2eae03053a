"""Training: classification proxy pre-training, detector fine-tuning, tiled evaluation.

* :mod:`bhsearch.train.pretrain` — ``PretrainConfig``, ``run_pretrain(spec, data, config, out_dir, ...)``
* :mod:`bhsearch.train.finetune` — ``FinetuneConfig``, ``run_finetune(spec, data, config, out_dir, ...)``
* :mod:`bhsearch.train.inference` — tiled whole-image inference and ``evaluate_model``
* :mod:`bhsearch.train.loop` — devices, seeding, checkpoints, schedules, progress (shared helpers)
* :mod:`bhsearch.train.distributed` — data-parallel runs under ``torchrun`` (DDP process group, sharding)

Submodules import torch; this package file does not, so importing it stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PretrainConfig": "bhsearch.train.pretrain",
    "run_pretrain": "bhsearch.train.pretrain",
    "FinetuneConfig": "bhsearch.train.finetune",
    "run_finetune": "bhsearch.train.finetune",
    "evaluate_model": "bhsearch.train.inference",
    "predict_tiled": "bhsearch.train.inference",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bhsearch.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

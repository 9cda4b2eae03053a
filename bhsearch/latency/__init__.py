"""Latency and memory as costs: lookup tables of measured units, an additive predictor, and
analytic training memory (docs/latency.md).

Prediction and memory are pure Python (no torch), so ``bhsearch solve`` can rank every candidate
by predicted latency; measuring and profiling import torch lazily::

    table = load_table("profiles/cpu.json", device="cpu", batch_size=1)
    seconds = predict_latency("bh-resnet50", "640x512", table)
    measured = measure_latency("bh-resnet50", "640x512", **table.measure_kwargs())["median_s"]
    profile_space("resnet50", "640x512", device="cpu", out="profiles/cpu.json")
"""

from __future__ import annotations

import importlib
from typing import Any

from bhsearch.latency.table import (
    FORMAT,
    MATCH_KEYS,
    MODES,
    RUNTIMES,
    VERSION,
    LatencyTable,
    assess,
    fit_overhead,
    load_table,
    predict_breakdown,
    predict_latency,
)
from bhsearch.latency.units import (
    BlockUnit,
    HRNetUnit,
    StemUnit,
    input_elements,
    network_units,
    train_memory_breakdown,
    train_memory_bytes,
)

_LAZY = {
    "measure_latency": "bhsearch.latency.measure",
    "measure_latencies": "bhsearch.latency.measure",
    "measure_train_memory": "bhsearch.latency.measure",
    "TensorMemoryTracker": "bhsearch.latency.measure",
    "profile_space": "bhsearch.latency.profile",
    "space_specs": "bhsearch.latency.profile",
    "distinct_units": "bhsearch.latency.profile",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bhsearch.latency' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BlockUnit",
    "FORMAT",
    "HRNetUnit",
    "LatencyTable",
    "MATCH_KEYS",
    "MODES",
    "RUNTIMES",
    "StemUnit",
    "VERSION",
    "assess",
    "fit_overhead",
    "input_elements",
    "load_table",
    "network_units",
    "predict_breakdown",
    "predict_latency",
    "train_memory_breakdown",
    "train_memory_bytes",
    *_LAZY,
]

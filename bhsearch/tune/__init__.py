"""Ranking candidates with Ray Tune (docs/tuning.md).

* :mod:`bhsearch.tune.study` — the study file schema (pydantic): ``load_study``, ``Study``
* :mod:`bhsearch.tune.runner` — ``run_study`` (Tuner, OptunaSearch/random/grid, ASHA, resume)
* :mod:`bhsearch.tune.state` — the JSON trial record (``tune_state.json``) and the pickle-free resume plan
* :mod:`bhsearch.tune.trial` — the trial: pre-train → fine-tune → evaluation, fidelity-aware score
* :mod:`bhsearch.tune.results` — the tidy results table (CSV, Parquet) and ``best_spec.json``

Importing this package imports neither torch nor ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Study": "bhsearch.tune.study",
    "load_study": "bhsearch.tune.study",
    "parse_study": "bhsearch.tune.study",
    "run_study": "bhsearch.tune.runner",
    "candidate_pool": "bhsearch.tune.runner",
    "fidelity_score": "bhsearch.tune.trial",
    "load_results": "bhsearch.tune.results",
    "write_results": "bhsearch.tune.results",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bhsearch.tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

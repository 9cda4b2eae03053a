"""Benchmarks by name: ``get_benchmark("tinyperson" | "widerface" | "aitod")``.

Adding a benchmark (VisDrone, SODA-D, …) is one new sub-package of ``bhsearch.tasks`` that defines
``BENCHMARK`` (a :class:`bhsearch.tasks.base.Benchmark`) and one line in ``_PACKAGES``.
"""

from __future__ import annotations

import importlib

from bhsearch.errors import UsageError
from bhsearch.tasks.base import Benchmark

_PACKAGES = {
    "tinyperson": "bhsearch.tasks.tinyperson",
    "widerface": "bhsearch.tasks.widerface",
    "aitod": "bhsearch.tasks.aitod",
}


def benchmark_names() -> tuple[str, ...]:
    """The registered benchmark names, in registration order."""
    return tuple(_PACKAGES)


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; an unknown name raises ``UsageError`` listing the known ones."""
    if name not in _PACKAGES:
        raise UsageError(f"unknown benchmark {name!r}; choose one of {', '.join(_PACKAGES)}")
    return importlib.import_module(_PACKAGES[name]).BENCHMARK


def benchmark_for_kind(kind: str) -> Benchmark:
    """The benchmark whose data a ``--data KIND:PATH`` reference names (``synthetic-`` kinds included)."""
    for name in _PACKAGES:
        bench = get_benchmark(name)
        if kind in bench.data_kinds:
            return bench
    raise UsageError(f"no benchmark reads data of kind {kind!r}")


__all__ = ["benchmark_for_kind", "benchmark_names", "get_benchmark"]

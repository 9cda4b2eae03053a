"""Detection benchmarks, one sub-package each: reader, synthetic generator, evaluator, detector defaults.

``bhsearch.tasks.get_benchmark(name)`` returns a :class:`~bhsearch.tasks.base.Benchmark`; the CLI
(``--benchmark NAME``, ``--data KIND:PATH``), studies and export look benchmarks up by name. (Not to be
confused with the repository's top-level ``benchmarks/`` folder of speed scripts.)

- ``tinyperson``: TinyPerson (Yu et al., WACV 2020), the official TinyBenchmark AP / MR protocol.
- ``widerface``: WiderFace (Yang et al., CVPR 2016), the official easy / medium / hard AP.
- ``aitod``: AI-TOD (Wang et al., 2021), the AI-TOD toolkit's COCOeval.
"""

from __future__ import annotations

from bhsearch.tasks.base import Benchmark
from bhsearch.tasks.registry import benchmark_for_kind, benchmark_names, get_benchmark

__all__ = ["Benchmark", "benchmark_for_kind", "benchmark_names", "get_benchmark"]

"""bhsearch: bottom-heavy CNN backbones for tiny object detection.

The public API is imported lazily so that ``import bhsearch`` (and ``bhsearch solve``)
never pulls in torch::

    import bhsearch
    spec = bhsearch.get_spec("bh-resnet50")
    cost = bhsearch.count(spec, "640x512")          # analytic, no torch
    model = bhsearch.build_backbone(spec)           # torch.nn.Module
    table = bhsearch.solve("resnet50", "640x512")   # FLOP-matched bottom-heavy candidates
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "get_spec": "bhsearch.spec",
    "parse_input_size": "bhsearch.spec",
    "ResNetSpec": "bhsearch.spec",
    "HRNetSpec": "bhsearch.spec",
    "HRStage": "bhsearch.spec",
    "NAMED_SPECS": "bhsearch.spec",
    "count": "bhsearch.cost",
    "solve": "bhsearch.solver",
    "build_backbone": "bhsearch.models",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bhsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

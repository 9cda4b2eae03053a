"""Count a built module with fvcore and ptflops and compare with the analytic cost model.

Conventions (see :mod:`bhsearch.cost`):

* fvcore: ``macs`` is the sum of its multiply-accumulate operators (convolutions, linear and
  matrix products); its batch-norm, pooling and upsample terms are left out. fvcore does not
  count linear biases, ptflops' ``aten`` backend does: ``linear_bias`` reports the difference.
* ptflops: ``macs`` from the ``aten`` backend; ``flops`` (paper convention) from the ``pytorch``
  backend with ``count_functional=False``.

Torch, fvcore and ptflops are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

from bhsearch.spec import Spec, get_spec, parse_input_size

FVCORE_MAC_OPS = ("conv", "linear", "matmul", "addmm", "bmm", "einsum", "mm")


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _input(size: str | tuple[int, int]):
    import torch

    width, height = parse_input_size(size)
    return torch.zeros(1, 3, height, width)


def measure_with_fvcore(model: Any, size: str | tuple[int, int]) -> dict[str, Any]:
    """fvcore's count of ``model`` on one ``size`` (WIDTHxHEIGHT) input: params, macs, by_operator."""
    import torch
    from torch import nn

    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, _input(size))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        by_op = {k: int(v) for k, v in analysis.by_operator().items()}
        total = int(analysis.total())
    linear_bias = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    return {
        "params": _params(model),
        "macs": sum(v for k, v in by_op.items() if k in FVCORE_MAC_OPS),
        "total": total,
        "linear_bias": linear_bias,
        "by_operator": by_op,
    }


def measure_with_ptflops(model: Any, size: str | tuple[int, int]) -> dict[str, int]:
    """ptflops' count of ``model``: params, macs (aten backend), flops (paper convention)."""
    import torch
    from ptflops import get_model_complexity_info

    width, height = parse_input_size(size)
    model.eval()
    out: dict[str, int] = {"params": _params(model)}
    sink = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        macs, _ = get_model_complexity_info(
            model, (3, height, width), as_strings=False, print_per_layer_stat=False, backend="aten", ost=sink
        )
        flops, _ = get_model_complexity_info(
            model,
            (3, height, width),
            as_strings=False,
            print_per_layer_stat=False,
            backend="pytorch",
            backend_specific_config={"count_functional": False},
            ost=sink,
        )
    out["macs"] = int(macs)
    out["flops"] = int(flops)
    return out


def verify_counts(spec: Spec | str, input_size: str | tuple[int, int], norm: str = "bn") -> dict[str, Any]:
    """Build ``spec`` (any family) and compare the analytic cost with fvcore and ptflops.

    Returns ``{"spec_id", "input_size", "analytic", "fvcore", "ptflops", "checks", "ok"}``;
    ``checks`` maps e.g. ``"macs: analytic == fvcore"`` to a bool.
    """
    import torch

    from bhsearch.cost import count
    from bhsearch.models import build_backbone

    spec = get_spec(spec)
    size = parse_input_size(input_size)
    report = count(spec, size)
    torch.manual_seed(0)
    model = build_backbone(spec, norm=norm)
    fv = measure_with_fvcore(model, size)
    pt = measure_with_ptflops(model, size)
    analytic = {
        "params": report.params,
        "conv_params": report.conv_params,
        "macs": report.macs,
        "flops": report.flops,
        "activations": report.activations,
    }
    checks = {
        "macs: analytic == fvcore": analytic["macs"] == fv["macs"] + fv["linear_bias"],
        "macs: analytic == ptflops(aten)": analytic["macs"] == pt["macs"],
    }
    if norm != "frozen_bn":  # frozen BN holds buffers, not parameters, and ptflops does not count it
        checks["params: analytic == model"] = analytic["params"] == fv["params"]
        checks["flops: analytic == ptflops(pytorch)"] = analytic["flops"] == pt["flops"]
    return {
        "spec_id": spec.id,
        "input_size": list(size),
        "analytic": analytic,
        "fvcore": fv,
        "ptflops": pt,
        "checks": checks,
        "ok": all(checks.values()),
    }


__all__ = ["measure_with_fvcore", "measure_with_ptflops", "verify_counts"]

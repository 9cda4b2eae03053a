"""Score specs: zero-cost scores of the built (width-scaled) backbone at one or more input sizes,
and the analytic cost baselines (params, paper FLOPs, activations, bottom-heavy share)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.scores import ALL_SCORES, COST_SCORES, ZERO_COST_SCORES
from bhsearch.spec import Spec, get_spec, parse_input_size


def parse_scores(text: str | Sequence[str]) -> list[str]:
    """``"zen,synflow"`` -> ``["zen", "synflow"]``; unknown names raise ``UsageError``."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    bad = [s for s in names if s not in ALL_SCORES]
    if bad or not names:
        raise UsageError(f"unknown score {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_SCORES)}")
    return list(dict.fromkeys(names))


def cost_scores(spec: Spec, input_size: tuple[int, int]) -> dict[str, float]:
    """Params, paper FLOPs, conv activations and the share of paper FLOPs spent at output stride
    <= 4, i.e. before the third down-sampling, stem included (the solver's BH score), at ``input_size``."""
    from bhsearch.cost import count

    report = count(spec, input_size)
    h = input_size[1]
    bottom = sum(st.flops for st in report.stages if h // st.out_shape[1] <= 4)
    return {
        "params": float(report.params),
        "flops": float(report.flops),
        "activations": float(report.activations),
        "bh_share": bottom / report.flops,
    }


def score_spec(
    spec: Spec | str,
    scores: Sequence[str],
    input_sizes: Sequence[tuple[int, int]],
    *,
    width_mult: float = 0.25,
    batch: int | Sequence[int] = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """One row: ``<score>@<W>x<H>`` for every zero-cost score and size, the cost scores at the first
    size, and ``seconds`` (the zero-cost scoring time). ``batch``: one size for all inputs or one per
    input size."""
    import torch

    from bhsearch.models import build_backbone
    from bhsearch.scores.zero_cost import SCORERS, SEEDED

    spec = get_spec(spec)
    row: dict[str, Any] = {"id": spec.id}
    zero = [s for s in scores if s in ZERO_COST_SCORES]
    t0 = time.perf_counter()
    if zero:
        scaled = spec.scaled(width_mult) if width_mult != 1.0 else spec
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_backbone(scaled)
        gen = torch.Generator().manual_seed(seed)
        batches = [batch] * len(input_sizes) if isinstance(batch, int) else list(batch)
        for (w, h), n in zip(input_sizes, batches, strict=True):
            inputs = torch.randn(n, 3, h, w, generator=gen)
            for name in zero:
                fn = SCORERS[name]
                row[f"{name}@{w}x{h}"] = fn(model, inputs, seed=seed) if name in SEEDED else fn(model, inputs)
    row["seconds"] = time.perf_counter() - t0
    costs = cost_scores(spec, tuple(input_sizes[0]))
    row.update({k: v for k, v in costs.items() if k in scores})
    return row


def score_specs(
    specs: Sequence[Spec | str],
    scores: Sequence[str],
    input_sizes: Sequence[str | tuple[int, int]],
    *,
    width_mult: float = 0.25,
    batch: int | Sequence[int] = 4,
    seed: int = 0,
    on_row: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows of :func:`score_spec` for every spec; ``on_row(i, row)`` after each (progress)."""
    batches = [batch] if isinstance(batch, int) else list(batch)
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in batches):
        raise UsageError(f"batch must be at least 2 (NASWOT compares inputs), got {batch}")
    if not isinstance(batch, int) and len(batches) != len(input_sizes):
        raise UsageError(f"give one batch size per input size, got {len(batches)} for {len(input_sizes)}")
    if not (width_mult > 0 and width_mult <= 4):
        raise UsageError(f"width_mult must be in (0, 4], got {width_mult}")
    sizes = [parse_input_size(s) if isinstance(s, str) else tuple(s) for s in input_sizes]
    rows = []
    for i, spec in enumerate(specs):
        rows.append(score_spec(spec, scores, sizes, width_mult=width_mult, batch=batch, seed=seed))
        if on_row is not None:
            on_row(i, rows[-1])
    return rows


__all__ = ["COST_SCORES", "cost_scores", "parse_scores", "score_spec", "score_specs"]

"""Rescore a ``latency_predictor.py --json`` run with the current overhead fit, from its own measurements.

The benchmark's tables stay in its work folder (``latency-bench-*`` under the temp directory). For every
space, runtime, thread count and profile this refits each table's overhead term with
:func:`bhsearch.latency.fit_overhead` from the whole networks the profile measured, and prints held-out MAPE
and Spearman of: ``fitted`` (units + a + b x, the current predictor), ``recorded`` (the prediction the run
recorded), ``const6`` / ``const2`` (units + the median residual of all / the first two whole networks: the
predictor without a boundary slope), and the run's own ``flops``, ``acts`` and ``corrected`` scores; then the
mean ± sd (worst) over the profiles. No timing happens here.

    python benchmarks/latency_rescore.py results.json /tmp/latency-bench-XXXX
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _scores(pred: list[float], meas: list[float]) -> tuple[float, float]:
    from latency_predictor import _mape, _spearman  # this folder: the benchmark's own scoring

    return _mape(pred, meas), _spearman(pred, meas)


def _profile_scores(run: dict, k: int, prof: dict, work: Path, size: str) -> dict[str, tuple[float, float]]:
    from latency_predictor import units_time

    from bhsearch.latency import fit_overhead, input_elements, load_table, network_units
    from bhsearch.latency.table import runtime_key

    rt = run["runtime"]
    table = load_table(work / f"{run['space']}-{rt}-{run['threads']}-{k}.json")
    nets = table.overhead[runtime_key(size, rt)]["networks"]
    rows = prof["rows"][run["train"] :]  # held out: after the training networks
    meas = [r["measured_s"] for r in rows]
    units = [units_time(r["spec"], table, size, rt) for r in rows]
    x = [sum(map(input_elements, network_units(r["spec"], size))) for r in rows]
    resid = [n["inference_median_measured_s"] - n["inference_median_units_s"] for n in nets]
    a, b = fit_overhead(resid, [n["elements"] for n in nets])
    preds = {
        "fitted": [u + a + b * e for u, e in zip(units, x, strict=True)],
        "recorded": [r["predicted_s"] for r in rows],
        "const6": [u + statistics.median(resid) for u in units],
        "const2": [u + statistics.median(resid[:2]) for u in units],
    }
    out = {name: _scores(p, meas) for name, p in preds.items()}
    out.update({m: (prof["scores"][m]["mape_pct"], prof["scores"][m]["spearman"]) for m in ("flops", "acts", "corrected")})
    print(f"{run['space']} {rt} t{run['threads']} p{k + 1}: a = {a * 1e3:.1f} ms, b = {b * 1e9:.2f} ns/element; "
          + ", ".join(f"{n} {v[0]:.1f} % / {v[1]:.3f}" for n, v in out.items()))  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    results, work = json.loads(Path(argv[0]).read_text()), Path(argv[1])
    size = results["settings"]["input"]
    for run in results["settings_runs"]:
        run["train"] = results["settings"]["train"]
        per = [_profile_scores(run, k, prof, work, size) for k, prof in enumerate(run["profiles"])]
        for name in per[0]:
            mapes, rhos = [p[name][0] for p in per], [p[name][1] for p in per]
            sd = statistics.stdev(mapes) if len(mapes) > 1 else 0.0
            print(f"    {name:9s} MAPE {statistics.fmean(mapes):5.1f} ± {sd:.1f} % (worst {max(mapes):.1f})   "
                  f"Spearman {statistics.fmean(rhos):.3f} (worst {min(rhos):.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

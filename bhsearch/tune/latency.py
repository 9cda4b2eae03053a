"""Latency of a study's trained specs, kept in ``RUN_DIR/latency.json`` (docs/tuning.md, "Latency").

No network is timed while trials train (a trial measured next to another trial's training measures the
machine's load). After ``tuner.fit()`` returns, the driver (with Ray shut down) measures the backbone of
every distinct spec that trained, one spec at a time, with ``study.latency.threads`` intra-op threads
(restored afterwards), ``warmup`` untimed and ``reps`` timed forward passes, interleaved across the specs
(``bhsearch.latency.measure_latencies``: every round times each spec once, so a slow spell of the machine
hits all specs alike). With ``study.latency.profile`` the latency is predicted from that
``bhsearch profile`` table instead (``bhsearch.latency.predict_latency``, pure Python).

``latency.json`` holds the settings it was made under and one entry per spec id::

    {"format": "bhsearch-study-latency", "version": 1, "settings": {...},
     "specs": {"SPEC_ID": {"latency_ms": 12.3, "latency_spread_pct": 4.1, "latency_source": "measured"}}}

``latency_ms`` is the repeats' median (``latency.statistic: median``, the default) or their minimum
(``min``: the least disturbed pass, the most reproducible figure on a shared or frequency-scaling machine),
``latency_spread_pct`` the 10th-90th percentile range in percent of the median (None for predictions). Entries are reused (a resumed study measures only specs it did not
measure yet; ``bhsearch report`` measures nothing); when the settings differ (another machine, torch
version, thread count, input size …) every spec is measured again, so one file never mixes conditions.
The file is rewritten atomically once the specs missing from it are measured.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.fileio import atomic_write_json

LATENCY_FILE = "latency.json"
FORMAT = "bhsearch-study-latency"
VERSION = 1
SOURCES = ("measured", "predicted", "in-trial")


def latency_size(study: Any) -> str:
    return study.latency.input_size or study.input_size


def load_profile(study: Any):
    """The ``study.latency.profile`` table; a missing or malformed file is a one-line ``UsageError``."""
    from bhsearch.latency import load_table

    try:
        return load_table(study.latency.profile)
    except UsageError as exc:
        raise UsageError(f"latency.profile: {exc}") from None


def check_latency(study: Any, specs: Iterable[Any] = ()) -> None:
    """Before Ray: a profile table must predict every spec in ``specs`` at the latency input size; a measuring
    device must exist on this (the driver's) machine. Errors are one line."""
    cfg = study.latency
    if not cfg.enabled:
        return
    if cfg.profile:
        from bhsearch.latency import predict_latency

        table = load_profile(study)
        for spec in specs:
            try:
                predict_latency(spec, latency_size(study), table)
            except UsageError as exc:
                raise UsageError(f"latency.profile: {exc}") from None
        return
    from bhsearch.latency.measure import resolve_device

    try:
        resolve_device(cfg.device)
    except UsageError as exc:
        raise UsageError(f"latency.device: {exc} (latency is measured on the driver's machine)") from None


def settings(study: Any) -> dict[str, Any]:
    """What makes two latency figures comparable (``latency.json``'s ``settings``)."""
    cfg = study.latency
    size = latency_size(study)
    if cfg.profile:
        table = load_profile(study)
        return {"source": "predicted", "input_size": size, "profile": str(cfg.profile), "table": table.settings}
    import torch

    from bhsearch.latency.measure import device_name, resolve_device

    dev = resolve_device(cfg.device)
    return {
        "source": "measured",
        "input_size": size,
        "device": dev.type,
        "device_name": device_name(dev),
        "torch_version": torch.__version__,
        "threads": cfg.threads,
        "warmup": cfg.warmup,
        "reps": cfg.reps,
        "clock": cfg.clock,
        "statistic": cfg.statistic,
        "batch_size": 1,
    }


def read_latency(run_dir: str | Path) -> dict[str, Any]:
    """``latency.json`` of ``run_dir`` (an empty record when absent, truncated or not ours: it is remade)."""
    path = Path(run_dir) / LATENCY_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"format": FORMAT, "version": VERSION, "settings": None, "specs": {}}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("specs"), dict):
        return {"format": FORMAT, "version": VERSION, "settings": None, "specs": {}}
    return data


def trained_specs(run_dir: str | Path) -> list[str]:
    """Spec ids of the trial folders of ``run_dir`` that reported at least one epoch, in folder order."""
    from bhsearch.tune.state import _result_rows

    out: dict[str, None] = {}
    for params in sorted(Path(run_dir).glob("*/params.json")):
        try:
            spec_id = json.loads(params.read_text()).get("spec_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(spec_id, str) and _result_rows(params.parent / "result.json"):
            out.setdefault(spec_id, None)
    return list(out)


def _measure(spec_ids: list[str], study: Any) -> dict[str, dict[str, Any]]:
    """The ``latency.json`` entries of ``spec_ids``, measured interleaved (``measure_latencies``)."""
    from bhsearch.latency.measure import measure_latencies

    cfg = study.latency
    results = measure_latencies(
        spec_ids,
        latency_size(study),
        device=cfg.device,
        warmup=cfg.warmup,
        reps=cfg.reps,
        threads=cfg.threads,
        clock=cfg.clock,
    )
    entries = {}
    for spec_id, result in zip(spec_ids, results.values(), strict=True):
        median = result["median_s"]
        spread = 100.0 * (result["p90_s"] - result["p10_s"]) / median if median > 0 else None
        value = result["min_s"] if cfg.statistic == "min" else median
        entries[spec_id] = {
            "latency_ms": 1000.0 * value,
            "latency_median_ms": 1000.0 * median,
            "latency_spread_pct": spread,
            "latency_p10_ms": 1000.0 * result["p10_s"],
            "latency_p90_ms": 1000.0 * result["p90_s"],
            "latency_min_ms": 1000.0 * result["min_s"],
            "latency_source": "measured",
        }
    return entries


def update_latency(run_dir: str | Path, study: Any, spec_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Measure (or predict) every spec of ``spec_ids`` (default: :func:`trained_specs`) that ``latency.json``
    does not hold under the current settings, one at a time; returns the record. The torch thread count
    in effect before is restored."""
    run_dir = Path(run_dir)
    cfg = study.latency
    record = read_latency(run_dir)
    if not cfg.enabled:
        return record
    spec_ids = list(trained_specs(run_dir) if spec_ids is None else spec_ids)
    current = settings(study)
    if record.get("settings") != current:
        record = {"format": FORMAT, "version": VERSION, "settings": current, "specs": {}}
    missing = [s for s in dict.fromkeys(spec_ids) if s not in record["specs"]]
    if not missing:
        return record
    path = run_dir / LATENCY_FILE
    if cfg.profile:
        from bhsearch.latency import predict_latency

        table = load_profile(study)
        for spec_id in missing:
            seconds = predict_latency(spec_id, latency_size(study), table)
            record["specs"][spec_id] = {
                "latency_ms": 1000.0 * seconds,
                "latency_spread_pct": None,
                "latency_source": "predicted",
            }
        atomic_write_json(path, record, indent=1)
        return record
    import torch

    threads = torch.get_num_threads()
    try:
        record["specs"].update(_measure(missing, study))
        atomic_write_json(path, record, indent=1)
    finally:
        torch.set_num_threads(threads)
    return record


def latency_entries(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Spec id -> ``{"latency_ms", "latency_spread_pct", "latency_source"}`` from ``latency.json``."""
    return {k: v for k, v in read_latency(run_dir)["specs"].items() if isinstance(v, dict)}


__all__ = [
    "LATENCY_FILE",
    "check_latency",
    "latency_entries",
    "read_latency",
    "settings",
    "trained_specs",
    "update_latency",
]

"""Latency lookup tables (versioned JSON) and the additive latency predictor.

A table holds, for one measurement setting (device, torch version, dtype, batch size, threads,
norm), the median time of every profiled unit in inference and in a training step, and a
per-network overhead term per input size, for one or several runtimes (``torch``, and
``onnxruntime``: inference only). Prediction is a sum of dictionary look-ups: pure Python, no
torch, microseconds per candidate.

Every table also carries its *quality* (:func:`assess`): the spread of its repetitions, the sign
of its overhead terms and the load of the machine while it was profiled; a table with problems
has ``warnings`` that ``bhsearch profile``, ``count --profile`` and ``solve --profile`` print.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.fileio import atomic_write_text, require_file
from bhsearch.latency.units import input_elements, network_units
from bhsearch.spec import Spec, get_spec, parse_input_size

FORMAT = "bhsearch-latency-table"
VERSION = 1
MODES = ("inference", "train")
# Unit statistics kept per mode: the median (``<mode>_s``, what predictions use by default) and the
# minimum (``<mode>_min_s``, robust to other processes on a shared machine).
STATS = ("median", "min")
# Settings that make two measurements incomparable; a table is refused when any of these differ.
MATCH_KEYS = ("device", "device_name", "torch_version", "dtype", "batch_size", "threads", "norm", "clock")
# Runtimes a table can hold side by side (unit and overhead keys of other runtimes than torch end in
# ``@<runtime>``); onnxruntime and compile (``torch.compile``, default inductor backend) entries hold
# inference only.
RUNTIMES = ("torch", "onnxruntime", "compile")
INFERENCE_ONLY_RUNTIMES = ("onnxruntime", "compile")

# Quality thresholds (docs/latency.md, "Measurements that know when they are bad").
#: relative spread of a measurement: (p90 - p10) / median over its repetitions; a profile whose median
#: spread over its units (or over its whole networks) exceeds this is marked.
SPREAD_LIMIT = 0.10
#: a profile is marked as taken on a loaded machine when other processes used more cores on average
#: while it ran (``/proc/stat``; tables without that reading: the 1-minute load average of other
#: processes at the start, or at the end less this profile's own threads) than the cores left free for
#: it (cores - threads) by more than this.
LOAD_SLACK = 0.5
#: an overhead term is marked negative when its per-network part (``a`` of ``a + b x``) says whole
#: networks ran faster than the sum of their units by more than this fraction of their measured time
#: (any negative term where the networks' times are not in the table): on an idle machine the terms of
#: ResNet-50 x0.5 at 640x512 (before the boundary slope) were -1.6 to +0.2 % of it in inference and
#: -3.4 to +3.3 % in a training step, within the noise.
NEGATIVE_OVERHEAD_TOLERANCE = 0.05
#: with the wall clock, process CPU time / wall time over the timed passes below this means the
#: profile was off the CPU (waiting for a core) for the rest of the time.
CPU_WALL_MIN = 0.9


def size_key(input_size: str | tuple[int, int]) -> str:
    width, height = parse_input_size(input_size)
    return f"{width}x{height}"


def runtime_key(key: str, runtime: str = "torch") -> str:
    """The table key of a unit key or input size under ``runtime`` (torch: the key itself)."""
    if runtime == "torch":
        return key
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    return f"{key}@{runtime}"


def split_runtime(key: str) -> tuple[str, str]:
    """``(key, runtime)`` of a table key (inverse of :func:`runtime_key`)."""
    base, sep, runtime = key.rpartition("@")
    return (base, runtime) if sep else (key, "torch")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def spread(p10: float | None, p90: float | None, median: float | None) -> float | None:
    """Relative spread (p90 - p10) / median of a measurement, None when unknown."""
    if p10 is None or p90 is None or not median or median <= 0:
        return None
    return (p90 - p10) / median


def _check_runtime(runtime: str, mode: str) -> None:
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if mode != "inference" and runtime in INFERENCE_ONLY_RUNTIMES:
        raise UsageError(f"runtime {runtime} is profiled for inference only; got mode {mode!r}")


def slope_field(name: str) -> str:
    """The boundary-slope field beside an overhead field: ``inference_s`` -> ``inference_per_element_s``."""
    return name[: -len("_s")] + "_per_element_s"


def fit_overhead(residuals: list[float], elements: list[int]) -> tuple[float, float]:
    """``(a, b)`` of ``residual ~ a + b x elements`` over whole networks (measured minus the sum of their
    units; elements: :func:`~bhsearch.latency.units.input_elements` summed over the network's units).

    Theil-Sen: ``b`` the median of the pairwise slopes, ``a`` the median of ``residual - b x elements``,
    so one network timed during a load spike does not tilt the line. ``b`` is at most 0: a unit timed
    alone can only pay for its boundary (reading its input, layout conversions), never gain from it, so a
    positive slope is noise. With fewer than 3 distinct element counts there is no slope to trust:
    ``(median residual, 0)``.
    """
    if len(set(elements)) < 3:
        return statistics.median(residuals), 0.0
    pairs = list(zip(elements, residuals, strict=True))
    slopes = [(r2 - r1) / (e2 - e1) for i, (e1, r1) in enumerate(pairs) for e2, r2 in pairs[i + 1 :] if e2 != e1]
    b = min(0.0, statistics.median(slopes))
    return statistics.median(r - b * e for e, r in pairs), b


def _field(mode: str, stat: str = "median") -> str:
    """The entry field of ``mode`` and ``stat``: ``inference_s``, ``train_min_s`` …"""
    if mode not in MODES:
        raise UsageError(f"latency mode must be one of {', '.join(MODES)}; got {mode!r}")
    if stat not in STATS:
        raise UsageError(f"latency statistic must be one of {', '.join(STATS)}; got {stat!r}")
    return f"{mode}_s" if stat == "median" else f"{mode}_{stat}_s"


@dataclass
class LatencyTable:
    """Measured unit latencies for one setting; see docs/latency.md for the JSON layout."""

    settings: dict[str, Any]
    units: dict[str, dict[str, Any]] = field(default_factory=dict)
    overhead: dict[str, dict[str, Any]] = field(default_factory=dict)  # by input size "WxH"
    quality: dict[str, Any] = field(default_factory=dict)  # "runs" (machine readings), "warnings", "spread"
    path: Path | None = None

    # -- quality --------------------------------------------------------------------------------
    @property
    def warnings(self) -> list[dict[str, str]]:
        """The table's problems, ``{"code", "message"}`` each (:func:`assess`; empty when clean)."""
        return assess(self)

    @property
    def runtimes(self) -> list[str]:
        """Runtimes with at least one unit in the table (torch first)."""
        found = {split_runtime(k)[1] for k in self.units}
        return [r for r in RUNTIMES if r in found]

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "settings": self.settings,
            "units": self.units,
            "overhead": self.overhead,
            "quality": {
                **self.quality,
                "spread": spread_summary(self),
                "warnings": [w["message"] for w in assess(self)],
            },
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write the table atomically (a killed writer never leaves a truncated file)."""
        path = Path(path or self.path or "")
        if not str(path):
            raise UsageError("no path to save the latency table to")
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n")
        self.path = path
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "latency table") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"{source}: not a bhsearch latency table (missing 'format': {FORMAT!r})")
        version = data.get("version")
        if version != VERSION:
            raise UsageError(f"{source}: latency table version {version!r} is not supported (expected {VERSION})")
        settings, units, overhead = data.get("settings"), data.get("units", {}), data.get("overhead", {})
        quality = data.get("quality", {})  # absent from tables written before the quality checks
        for name, value in (("settings", settings), ("units", units), ("overhead", overhead), ("quality", quality)):
            if not isinstance(value, dict):
                raise UsageError(f"{source}: field {name!r} must be a mapping")
        for key, entry in units.items():
            for mode in MODES:
                value = entry.get(f"{mode}_s") if isinstance(entry, dict) else None
                if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                    raise UsageError(f"{source}: unit {key!r} has an invalid {mode}_s {value!r}")
        runs = quality.get("runs", [])
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise UsageError(f"{source}: field 'quality.runs' must be a list of mappings")
        return cls(settings=settings, units=units, overhead=overhead, quality=quality)

    # -- settings -------------------------------------------------------------------------------
    def mismatches(self, **expected: Any) -> list[str]:
        """``"name: table X, requested Y"`` for every expected setting (None = any) that differs."""
        out = []
        for name, want in expected.items():
            if want is None:
                continue
            if name not in MATCH_KEYS:
                raise UsageError(f"unknown latency-table setting {name!r}; known: {', '.join(MATCH_KEYS)}")
            have = self.settings.get(name)
            if have != want:
                out.append(f"{name}: table {have!r}, requested {want!r}")
        return out

    def check(self, allow_mismatch: bool = False, **expected: Any) -> None:
        """Raise UsageError when the table was measured under other settings than ``expected``."""
        bad = self.mismatches(**expected)
        if bad and not allow_mismatch:
            where = f"{self.path}: " if self.path else ""
            raise UsageError(
                f"{where}latency table was measured under other settings ({'; '.join(bad)}); "
                "profile again for this setting or allow the mismatch explicitly"
            )

    def measure_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`bhsearch.latency.measure_latency` in this table's setting."""
        s = self.settings
        out = {k: s[k] for k in ("device", "batch_size", "dtype", "threads", "norm") if k in s}
        if s.get("clock") in ("wall", "cpu"):
            out["clock"] = s["clock"]
        return out

    # -- look-ups -------------------------------------------------------------------------------
    def unit_time(self, key: str, mode: str = "inference", stat: str = "median", runtime: str = "torch") -> float:
        _check_runtime(runtime, mode)
        entry = self.units.get(runtime_key(key, runtime))
        value = None if entry is None else entry.get(_field(mode, stat))
        if value is None:
            where = f" {self.path}" if self.path else ""
            sizes = ", ".join(sorted(self.overhead)) or "none"
            rt = "" if runtime == "torch" else f" under runtime {runtime}"
            flag = "" if runtime == "torch" else f" --runtime {runtime}"
            raise UsageError(
                f"latency table{where} has no {_field(mode, stat)} entry for unit {key}{rt} (profiled sizes: {sizes}); "
                f"run `bhsearch profile{flag}` for this base/space/input size"
            )
        return float(value)

    def overhead_time(
        self, input_size: str | tuple[int, int], mode: str = "inference", stat: str = "median", runtime: str = "torch"
    ) -> float:
        _check_runtime(runtime, mode)
        key = runtime_key(size_key(input_size), runtime)
        entry = self.overhead.get(key)
        value = None if entry is None else entry.get(_field(mode, stat))
        if value is None:
            flag = "" if runtime == "torch" else f" --runtime {runtime}"
            raise UsageError(
                f"latency table {self.path or ''} has no {_field(mode, stat)} overhead term for input {key}; "
                f"run `bhsearch profile{flag}` at this input size"
            )
        return float(value)

    def overhead_slope(
        self, input_size: str | tuple[int, int], mode: str = "inference", stat: str = "median", runtime: str = "torch"
    ) -> float:
        """Seconds per unit-input element of the overhead term's boundary part (0 in tables fitted without one)."""
        entry = self.overhead.get(runtime_key(size_key(input_size), runtime)) or {}
        value = entry.get(slope_field(_field(mode, stat)))
        return float(value) if isinstance(value, (int, float)) else 0.0


def load_table(path: str | Path, allow_mismatch: bool = False, **expected: Any) -> LatencyTable:
    """Read a latency table; with ``expected`` settings (``device=``, ``dtype=``, ``batch_size=`` …,
    see ``MATCH_KEYS``) refuse one measured otherwise unless ``allow_mismatch``."""
    path = require_file(path, "{path}: no such latency table (create one with `bhsearch profile`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    table = LatencyTable.from_dict(data, source=str(path))
    table.path = path
    table.check(allow_mismatch=allow_mismatch, **expected)
    return table


def predict_breakdown(
    spec: Spec | str,
    input_size: str | tuple[int, int],
    table: LatencyTable,
    mode: str = "inference",
    stat: str = "median",
    runtime: str = "torch",
) -> list[tuple[str, float]]:
    """``(unit key, seconds)`` for every unit of ``spec`` in order, then ``("overhead", seconds)`` (the
    per-network term) and ``("boundary", seconds)`` (slope x the units' input elements; 0 in tables
    without a slope). The seconds add up to :func:`predict_latency`."""
    _field(mode, stat)
    units = network_units(get_spec(spec), input_size)
    rows = [(u.key, table.unit_time(u.key, mode, stat, runtime)) for u in units]
    rows.append(("overhead", table.overhead_time(input_size, mode, stat, runtime)))
    slope = table.overhead_slope(input_size, mode, stat, runtime)
    rows.append(("boundary", slope * sum(input_elements(u) for u in units)))
    return rows


def predict_latency(
    spec: Spec | str,
    input_size: str | tuple[int, int],
    table: LatencyTable,
    mode: str = "inference",
    stat: str = "median",
    runtime: str = "torch",
) -> float:
    """Predicted end-to-end latency in seconds: the sum of the unit entries plus the table's overhead
    term ``a + b x``, fitted on whole networks (``x``: the elements of the units' inputs, what units timed
    alone read from outside and a network passes from one unit to the next; ``b`` is usually negative).
    ``mode`` is ``"inference"`` or ``"train"`` (forward + backward); ``stat`` is ``"median"`` or ``"min"``
    of the repetitions; ``runtime`` one of ``RUNTIMES`` the table was profiled under."""
    name = _field(mode, stat)
    units = table.units
    total = table.overhead_time(input_size, mode, stat, runtime)
    slope = table.overhead_slope(input_size, mode, stat, runtime)
    suffix = "" if runtime == "torch" else f"@{runtime}"
    elements = 0
    for unit in network_units(spec, input_size):
        entry = units.get(unit.key + suffix if suffix else unit.key)
        value = None if entry is None else entry.get(name)
        total += value if value is not None else table.unit_time(unit.key, mode, stat, runtime)
        if slope:
            elements += input_elements(unit)
    return total + slope * elements


# --------------------------------------------------------------------------- quality


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def spread_summary(table: LatencyTable) -> dict[str, dict[str, Any]]:
    """Per runtime: the median relative spread of its units per mode and of its whole networks
    (None where the table has no spread, e.g. written before it was recorded)."""
    out: dict[str, dict[str, Any]] = {}
    for runtime in table.runtimes or ["torch"]:
        modes = ("inference",) if runtime in INFERENCE_ONLY_RUNTIMES else MODES
        entries = [e for k, e in table.units.items() if split_runtime(k)[1] == runtime and isinstance(e, dict)]
        row: dict[str, Any] = {}
        for mode in modes:
            row[f"units_{mode}"] = _median([e.get(f"{mode}_spread") for e in entries])
            nets = [
                n.get(f"{mode}_spread")
                for k, o in table.overhead.items()
                if split_runtime(k)[1] == runtime and isinstance(o, dict)
                for n in o.get("networks", [])
                if isinstance(n, dict)
            ]
            row[f"networks_{mode}"] = _median(nets)
        out[runtime] = row
    return out


def _other_load(run: dict[str, Any], at: str) -> float | None:
    """The 1-minute load average of other processes at the start or end of a profiling run. At the
    end the run's own contribution, ``threads * (1 - exp(-wall / 60))`` (the kernel's exponential
    average over its wall time), is subtracted."""
    load = run.get(f"load_{at}")
    if not isinstance(load, (int, float)):
        return None
    if at == "end":
        wall = float(run.get("wall_s") or 0.0)
        load -= float(run.get("threads") or 1) * (1 - math.exp(-wall / 60.0))
    return max(0.0, float(load))


def _networks_time(entry: dict[str, Any], mode: str) -> float:
    """The median measured time of an overhead term's whole networks (0 where the table has none)."""
    times = [n.get(f"{mode}_median_measured_s") for n in entry.get("networks", []) if isinstance(n, dict)]
    return _median([t for t in times if isinstance(t, (int, float))]) or 0.0


def _loaded(run: dict[str, Any], cpus: int, threads: int) -> str | None:
    """What made a profiling run loaded, or None: the cores other processes used while it ran where it
    was read (``other_cores``), else the load averages at its start and end."""
    free = max(0, cpus - threads)
    other = run.get("other_cores")
    if isinstance(other, (int, float)):
        if other > free + LOAD_SLACK:
            return f"ran while other processes used {other:.2f} cores on average"
        return None
    loaded = []
    for at in ("start", "end"):
        value = _other_load(run, at)
        if value is not None and value > free + LOAD_SLACK:
            loaded.append(f"{at} {run[f'load_{at}']:.2f} ({value:.2f} from other processes)")
    return f"had a 1-min load average at its {' and '.join(loaded)}" if loaded else None


def assess(table: LatencyTable) -> list[dict[str, str]]:
    """The problems of a table, one ``{"code", "message"}`` per problem (pure Python).

    * ``spread``: the median relative spread (p90 - p10) / median of a runtime's units, per mode,
      or of its whole networks exceeds ``SPREAD_LIMIT``;
    * ``negative-overhead``: the per-network part ``a`` of an overhead term (whole networks minus the sum
      of their units, less the boundary part ``b x``) is negative by more than
      ``NEGATIVE_OVERHEAD_TOLERANCE`` of the whole networks' time;
    * ``loaded``: while a profiling run ran, other processes used more cores on average than those left
      free for its threads by more than ``LOAD_SLACK`` (older tables: the 1-minute load average of other
      processes at its start or end);
    * ``off-cpu``: with the wall clock, process CPU time / wall time over the timed passes was below
      ``CPU_WALL_MIN``.
    """
    out: list[dict[str, str]] = []
    for runtime, row in spread_summary(table).items():
        high = [
            f"{'units' if name.startswith('units') else 'whole networks'} {name.split('_', 1)[1]} {100 * value:.0f} %"
            for name, value in row.items()
            if value is not None and value > SPREAD_LIMIT
        ]
        if high:
            rt = "" if runtime == "torch" else f" ({runtime})"
            out.append(
                {
                    "code": "spread",
                    "message": f"high spread{rt}: median (p90-p10)/median of the repetitions {', '.join(high)} "
                    f"(limit {100 * SPREAD_LIMIT:.0f} %)",
                }
            )
    for size in sorted(table.overhead):
        entry = table.overhead[size]
        if not isinstance(entry, dict):
            continue
        neg = [
            f"{mode} {1e3 * entry[f'{mode}_s']:+.2f} ms"
            for mode in MODES
            if isinstance(entry.get(f"{mode}_s"), (int, float))
            and entry[f"{mode}_s"] < -NEGATIVE_OVERHEAD_TOLERANCE * _networks_time(entry, mode)
        ]
        if neg:
            base, runtime = split_runtime(size)
            rt = "" if runtime == "torch" else f" ({runtime})"
            out.append(
                {
                    "code": "negative-overhead",
                    "message": f"negative overhead term at {base}{rt} ({', '.join(neg)}): whole networks ran faster "
                    "than the sum of their units, beyond what their boundary term explains (load changed while "
                    "profiling, or units alone miss the cache reuse they get inside a network)",
                }
            )
    for i, run in enumerate(table.quality.get("runs", [])):
        cpus, threads = run.get("cpus"), run.get("threads") or 1
        label = f"profiling run {i + 1} ({run.get('started', '?')}, {run.get('runtime', 'torch')})"
        if cpus:
            problem = _loaded(run, cpus, threads)
            if problem:
                out.append(
                    {
                        "code": "loaded",
                        "message": f"loaded machine: {label} {problem} on {cpus} cores for {threads} thread(s) "
                        f"(limit: cores - threads + {LOAD_SLACK})",
                    }
                )
        cpu_s, wall_s = run.get("timed_cpu_s"), run.get("timed_wall_s")
        if run.get("clock", "wall") == "wall" and cpu_s is not None and wall_s:
            ratio = cpu_s / wall_s
            if ratio < CPU_WALL_MIN:
                out.append(
                    {
                        "code": "off-cpu",
                        "message": f"off CPU: {label} used {ratio:.2f} s of process CPU time per second of wall time "
                        f"in its timed passes (< {CPU_WALL_MIN}): it waited for a core; use --clock cpu --threads 1 "
                        "or an idle machine",
                    }
                )
    return out


__all__ = [
    "CPU_WALL_MIN",
    "FORMAT",
    "LOAD_SLACK",
    "NEGATIVE_OVERHEAD_TOLERANCE",
    "RUNTIMES",
    "SPREAD_LIMIT",
    "assess",
    "runtime_key",
    "split_runtime",
    "spread",
    "spread_summary",
    "LatencyTable",
    "MATCH_KEYS",
    "MODES",
    "STATS",
    "VERSION",
    "load_table",
    "predict_breakdown",
    "predict_latency",
    "size_key",
]

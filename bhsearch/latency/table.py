"""Latency lookup tables (versioned JSON) and the additive latency predictor.

A table holds, for one measurement setting (device, torch version, dtype, batch size, threads,
norm), the median time of every profiled unit in inference and in a training step, and a
per-network overhead term per input size. Prediction is a sum of dictionary look-ups: pure
Python, no torch, microseconds per candidate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.fileio import atomic_write_text, require_file
from bhsearch.latency.units import network_units
from bhsearch.spec import Spec, get_spec, parse_input_size

FORMAT = "bhsearch-latency-table"
VERSION = 1
MODES = ("inference", "train")
# Unit statistics kept per mode: the median (``<mode>_s``, what predictions use by default) and the
# minimum (``<mode>_min_s``, robust to other processes on a shared machine).
STATS = ("median", "min")
# Settings that make two measurements incomparable; a table is refused when any of these differ.
MATCH_KEYS = ("device", "device_name", "torch_version", "dtype", "batch_size", "threads", "norm", "clock")


def size_key(input_size: str | tuple[int, int]) -> str:
    width, height = parse_input_size(input_size)
    return f"{width}x{height}"


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
    path: Path | None = None

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "settings": self.settings,
            "units": self.units,
            "overhead": self.overhead,
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
        for name, value in (("settings", settings), ("units", units), ("overhead", overhead)):
            if not isinstance(value, dict):
                raise UsageError(f"{source}: field {name!r} must be a mapping")
        for key, entry in units.items():
            for mode in MODES:
                value = entry.get(f"{mode}_s") if isinstance(entry, dict) else None
                if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                    raise UsageError(f"{source}: unit {key!r} has an invalid {mode}_s {value!r}")
        return cls(settings=settings, units=units, overhead=overhead)

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
    def unit_time(self, key: str, mode: str = "inference", stat: str = "median") -> float:
        entry = self.units.get(key)
        value = None if entry is None else entry.get(_field(mode, stat))
        if value is None:
            where = f" {self.path}" if self.path else ""
            sizes = ", ".join(sorted(self.overhead)) or "none"
            raise UsageError(
                f"latency table{where} has no {_field(mode, stat)} entry for unit {key} (profiled sizes: {sizes}); "
                "run `bhsearch profile` for this base/space/input size"
            )
        return float(value)

    def overhead_time(self, input_size: str | tuple[int, int], mode: str = "inference", stat: str = "median") -> float:
        key = size_key(input_size)
        entry = self.overhead.get(key)
        value = None if entry is None else entry.get(_field(mode, stat))
        if value is None:
            raise UsageError(
                f"latency table {self.path or ''} has no {_field(mode, stat)} overhead term for input {key}; "
                "run `bhsearch profile` at this input size"
            )
        return float(value)


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
) -> list[tuple[str, float]]:
    """``(unit key, seconds)`` for every unit of ``spec`` in order, then ``("overhead", seconds)``."""
    _field(mode, stat)
    rows = [(u.key, table.unit_time(u.key, mode, stat)) for u in network_units(get_spec(spec), input_size)]
    rows.append(("overhead", table.overhead_time(input_size, mode, stat)))
    return rows


def predict_latency(
    spec: Spec | str,
    input_size: str | tuple[int, int],
    table: LatencyTable,
    mode: str = "inference",
    stat: str = "median",
) -> float:
    """Predicted end-to-end latency in seconds: the sum of the unit entries plus the measured
    per-network overhead term of ``table``. ``mode`` is ``"inference"`` or ``"train"`` (forward +
    backward); ``stat`` is ``"median"`` or ``"min"`` of the repetitions."""
    name = _field(mode, stat)
    units = table.units
    total = table.overhead_time(input_size, mode, stat)
    for unit in network_units(spec, input_size):
        entry = units.get(unit.key)
        value = None if entry is None else entry.get(name)
        total += value if value is not None else table.unit_time(unit.key, mode, stat)
    return total


__all__ = [
    "FORMAT",
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

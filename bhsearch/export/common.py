"""Shared pieces of the exporters: where a spec comes from, weights, and atomic output folders."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.fileio import atomic_entries, check_writable
from bhsearch.spec import Spec, get_spec, load_mapping, spec_name

STUDY_FILES = ("results.csv", "best_spec.json")
WEIGHT_FILES = ("weights.safetensors", "model.safetensors")
BODY_PREFIX = "backbone.body."


@dataclass
class ExportSource:
    """A resolved export input: the spec, stored detector settings and a default weights file."""

    spec: Spec
    settings: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    origin: str = ""


def _settings(data: dict[str, Any]) -> dict[str, Any]:
    from bhsearch.detectors import settings_from_metadata

    return settings_from_metadata(data)


def _from_spec_file(path: Path, origin: str) -> ExportSource:
    data = load_mapping(path)
    source = ExportSource(get_spec(data), _settings(data), None, origin)
    ref = data.get("weights")
    if isinstance(ref, str) and ref:
        candidate = Path(ref) if Path(ref).is_absolute() else path.parent / ref
        if candidate.is_file():
            source.weights = candidate
    return source


def _results_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    try:
        with open(run_dir / "results.csv", newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _is_study(path: Path, trial: str | None) -> bool:
    from bhsearch.tune.state import STATE_FILE

    names = STUDY_FILES + (("study.json", STATE_FILE) if trial is not None else ())
    return any((path / name).exists() for name in names)


def study_source(run_dir: Path, trial: str | None = None, need_weights: bool = True) -> ExportSource:
    """A trial of a study (default: the best, ``best_spec.json``'s ``trial_id``): its fine-tuned detector
    (``model.safetensors``) and the settings it was trained with (``spec.json``), from the trial's newest
    checkpoint (``bhsearch.tune.state.trial_weights``). A trial without fine-tuned weights is a one-line
    ``UsageError`` unless ``need_weights`` is False (weights come from elsewhere: the spec alone)."""
    from bhsearch.tune import state as state_mod

    record = None
    if (run_dir / state_mod.STATE_FILE).is_file():
        try:
            record = state_mod.load_state(run_dir)
        except UsageError:
            record = None
    rows = _results_rows(run_dir)
    what = "trial"
    if trial is None:
        missing = [name for name in STUDY_FILES if not (run_dir / name).is_file()]
        if missing:
            raise UsageError(
                f"{run_dir}: study directory without results ({', '.join(missing)} missing); "
                "let `bhsearch tune` finish, pass --trial ID or a spec"
            )
        best = load_mapping(run_dir / "best_spec.json")
        trial, what = best.get("trial_id"), "best trial"
        if not isinstance(trial, str) or not trial:  # not written by `bhsearch tune`: a spec file with a name
            source = _from_spec_file(run_dir / "best_spec.json", f"best spec of study {run_dir}")
            if source.weights is None and need_weights:
                raise UsageError(
                    f"{run_dir / 'best_spec.json'}: names no trial and no weights; nothing trained to export "
                    "(pass --trial ID, --weights FILE, or the spec file itself for the spec alone)"
                )
            return source
    folder = state_mod.trial_folder(run_dir, trial, record)
    if folder is None or not (folder / "params.json").is_file():
        known = [r["trial_id"] for r in rows if r.get("trial_id") and not r["trial_id"].startswith("planned-")]
        listed = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise UsageError(f"{run_dir}: no trial {trial!r} in this study (trials: {listed or 'none'})")
    origin = f"{what} {trial} of study {run_dir}"
    weights = state_mod.trial_weights(folder)
    if weights is None:
        if need_weights:
            status = next((r.get("status") for r in rows if r.get("trial_id") == trial), None) or "unknown"
            with_weights = [r["trial_id"] for r in rows if r.get("weights")]
            hint = f"trials with weights: {', '.join(with_weights[:8])}" if with_weights else "no trial has any"
            raise UsageError(
                f"{run_dir}: {what} {trial} ({status}) has no fine-tuned weights: it never finished a "
                f"fine-tuning epoch ({hint}; `bhsearch export {run_dir / 'best_spec.json'}` exports the spec alone)"
            )
        import json

        try:
            spec_id = json.loads((folder / "params.json").read_text()).get("spec_id")
        except (OSError, ValueError, AttributeError):
            spec_id = None
        if not isinstance(spec_id, str):
            raise UsageError(f"{folder / 'params.json'}: names no spec_id")
        return ExportSource(get_spec(spec_id), origin=origin)
    meta = load_mapping(weights / "spec.json")
    if meta.get("stage") == "finetune-widerface":
        raise UsageError(
            f"{run_dir}: {what} {trial} is a WiderFace face detector (bhsearch.tasks.widerface.detector), which "
            f"bhsearch export does not write; load it with bhsearch.train.finetune_widerface from {weights}"
        )
    return ExportSource(get_spec(meta), _settings(meta), weights / "model.safetensors", origin)


def resolve_source(ref: Any, trial: str | None = None, need_weights: bool = True) -> ExportSource:
    """Resolve a spec, name, id, ``spec.json`` file, export / fine-tune folder or study directory (its best
    trial, or ``trial``: see :func:`study_source`)."""
    if trial is not None and not (isinstance(ref, (str, os.PathLike)) and _is_study(Path(ref), trial)):
        raise UsageError(f"--trial applies to a study directory (a `bhsearch tune` run folder), not {ref}")
    if not isinstance(ref, (str, os.PathLike)):
        return ExportSource(get_spec(ref), origin="spec")
    path = Path(ref)
    if path.is_dir():
        if _is_study(path, trial):
            return study_source(path, trial, need_weights)
        if (path / "spec.json").is_file():
            source = _from_spec_file(path / "spec.json", f"folder {path}")
            if source.weights is None:
                source.weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
            return source
        raise UsageError(
            f"{path}: directory holds neither results.csv + best_spec.json (a study) nor spec.json (an export)"
        )
    if path.is_file():
        return _from_spec_file(path, f"file {path}")
    if "/" in str(ref) or os.sep in str(ref):
        raise UsageError(f"{path}: no such file or directory (expected a spec, export folder or study directory)")
    return ExportSource(get_spec(str(ref)), origin=str(ref))


def file_stem(spec: Spec) -> str:
    """A file-name-safe short name for ``spec`` (its registered name, else its id)."""
    name = spec_name(spec) or spec.id
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace(":", "_")).strip("_")


def backbone_state(state: dict[str, Any]) -> dict[str, Any]:
    """The trunk's tensors from a detector state (``backbone.body.*``) or a backbone-only state."""
    if any(k.startswith(BODY_PREFIX) for k in state):
        return {k[len(BODY_PREFIX) :]: v for k, v in state.items() if k.startswith(BODY_PREFIX)}
    return dict(state)


@contextmanager
def staged_output(out: str | Path) -> Iterator[Path]:
    """Yield a staging folder; on success its files replace theirs in ``out`` as one set.

    ``bhsearch.fileio.atomic_entries``: a new ``out`` appears in one rename; in an existing folder
    (even a mount point) the staging folder lives inside it, and a failure restores the old files.
    """
    out = Path(out)
    check_writable(out, "export folder")
    with atomic_entries(out) as tmp:
        yield tmp
        for item in tmp.iterdir():
            if (out / item.name).is_dir() and not item.is_dir():
                raise UsageError(f"{out / item.name}: is a directory, cannot replace it")


def readme_section(out: Path, staging: Path, target: str, text: str) -> None:
    """Write ``README.md`` into ``staging`` with ``text`` as the ``target`` section, keeping the
    other targets' sections of an existing ``out/README.md``."""
    begin, end = f"<!-- bhsearch-export:{target} -->", f"<!-- /bhsearch-export:{target} -->"
    block = f"{begin}\n{text.strip()}\n{end}\n"
    old = (out / "README.md").read_text() if (out / "README.md").is_file() else ""
    if "<!-- bhsearch-export:" not in old:
        old = ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old)
    else:
        header = "# bhsearch export\n\nFiles written by `bhsearch export`; one section per target.\n\n"
        new = (old or header).rstrip("\n") + "\n\n" + block
    (staging / "README.md").write_text(new, encoding="utf-8")


__all__ = [
    "ExportSource",
    "backbone_state",
    "file_stem",
    "readme_section",
    "resolve_source",
    "staged_output",
    "study_source",
]

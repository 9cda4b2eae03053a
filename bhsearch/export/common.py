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


def resolve_source(ref: Any) -> ExportSource:
    """Resolve a spec, name, id, ``spec.json`` file, export / fine-tune folder or study directory."""
    if not isinstance(ref, (str, os.PathLike)):
        return ExportSource(get_spec(ref), origin="spec")
    path = Path(ref)
    if path.is_dir():
        if any((path / name).exists() for name in STUDY_FILES):
            missing = [name for name in STUDY_FILES if not (path / name).is_file()]
            if missing:
                raise UsageError(
                    f"{path}: study directory without results ({', '.join(missing)} missing); "
                    "let `bhsearch tune` finish or pass a spec"
                )
            return _from_spec_file(path / "best_spec.json", f"best spec of study {path}")
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
]

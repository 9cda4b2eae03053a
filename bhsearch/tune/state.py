"""The study's own record of its trials (``tune_state.json``) and how ``--resume`` continues from it.

Resume never reads a file that can carry code. Ray Tune's own state (``tuner.pkl``, the searcher's
``*.pkl``, ``params.pkl``, the pickled trials inside ``experiment_state-*.json``) is written by Tune
but never read back by bhsearch: a resumed study is a *new* Tuner in the same run folder, planned
from JSON only:

* ``study.json`` and ``candidates.json`` — the resolved study and its candidate pool;
* ``tune_state.json`` (this module) — every trial's id, spec, folder and status, written atomically
  by a Tune callback on the driver whenever a status changes;
* ``trial_*/result.json`` — the rows a trial reported (JSON lines);
* ``trial_*/checkpoint_*/trial_state.json`` plus the trainers' ``checkpoint.pt`` (read with
  ``torch.load(weights_only=True)``) and ``*.safetensors``;
* for ``search.algorithm: optuna`` the Optuna study in ``optuna.journal`` (``JournalStorage``, JSON
  lines; open it with ``optuna-dashboard optuna.journal``).

Statuses (Tune's words): ``TERMINATED`` (completed, or stopped by ASHA: both are final), ``ERROR`` (retried on
resume), ``RUNNING`` / ``PENDING`` (the study was interrupted: ``unfinished``, continued on resume),
``RETRIED`` (an errored or unfinished trial whose folder moved to ``retried/`` when a resume took it
up again).

This module imports neither torch nor ray at import time.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.fileio import atomic_write_json

STATE_FILE = "tune_state.json"
RESUME_FILE = "resume_checkpoints.json"
JOURNAL_FILE = "optuna.journal"
RETRIED_DIR = "retried"
FORMAT = "bhsearch-tune-state"

FINAL = "TERMINATED"
ERROR = "ERROR"
RETRIED = "RETRIED"
OPEN = ("RUNNING", "PENDING", "PAUSED")


def read_json(path: Path, what: str) -> Any:
    """``path`` parsed as JSON; a missing, truncated or unreadable file is a one-line ``UsageError``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{path}: missing ({what}); the run folder is incomplete") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}: {what} is truncated or corrupt ({exc.msg} at line {exc.lineno}); cannot resume from it"
        ) from None


def new_state(study_name: str, plan: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": 1, "study": study_name, "plan": plan, "runs": [], "trials": {}}


def load_state(run_dir: Path) -> dict[str, Any]:
    """``tune_state.json`` of ``run_dir``, checked; errors are one line."""
    path = run_dir / STATE_FILE
    state = read_json(path, "the study's trial record")
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("trials"), dict):
        raise UsageError(f"{path}: not a bhsearch trial record (format {FORMAT!r} expected); cannot resume from it")
    for trial_id, trial in state["trials"].items():
        if not isinstance(trial, dict) or not isinstance(trial.get("spec_id"), str) or "status" not in trial:
            raise UsageError(f"{path}: trial {trial_id!r} is malformed; cannot resume from it")
    return state


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_json(run_dir / STATE_FILE, state, indent=1)


def statuses(state: dict[str, Any]) -> dict[str, str]:
    """Tune-style status of every current (not retried) trial, for ``bhsearch.tune.results``."""
    return {tid: t["status"] for tid, t in state["trials"].items() if t["status"] != RETRIED}


def pending_rows(state: dict[str, Any]) -> list[dict[str, str]]:
    """``{"trial_id", "spec_id"}`` of unfinished trials that may have no trial folder (``params.json``) yet: open
    trials (the table keeps the folder's row where there is one), and the specs of a random/grid plan and the
    seed repeats that no trial took yet (``trial_id`` ``planned-K``). An
    optuna study's trials not asked for yet have no spec, so they have no row."""
    rows = [
        {"trial_id": tid, "spec_id": t["spec_id"], "repeat": t.get("repeat") or 0}
        for tid, t in state["trials"].items()
        if t["status"] in OPEN
    ]
    taken = {entry_key(t) for t in state["trials"].values() if t["status"] != RETRIED}
    plan = state.get("plan") or {}
    waiting = [(s, 0) for s in plan.get("specs") or []] + [(s, int(k)) for s, k in plan.get("repeats") or []]
    waiting += [(t["spec_id"], t.get("repeat") or 0) for t in state["trials"].values() if t["status"] == RETRIED]
    for k, (spec_id, repeat) in enumerate(dict.fromkeys(waiting)):
        if entry_key({"spec_id": spec_id, "repeat": repeat}) not in taken:
            rows.append({"trial_id": f"planned-{k}", "spec_id": spec_id, "repeat": repeat})
    return rows


def _result_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(row, dict):
                rows.append(row)
    return rows


def latest_checkpoint(trial_dir: Path) -> Path | None:
    """The newest ``checkpoint_*`` folder of a trial that holds our ``trial_state.json``."""
    from bhsearch.tune.trial import STATE_FILE as TRIAL_STATE

    found = sorted(p for p in trial_dir.glob("checkpoint_*") if (p / TRIAL_STATE).is_file())
    return found[-1] if found else None


#: Where a trial's fine-tuned detector is inside one of its checkpoints (``bhsearch.train.finetune``'s out_dir).
WEIGHTS_DIR = "finetune"
WEIGHTS_FILES = ("model.safetensors", "spec.json")


def trial_weights(trial_dir: Path) -> Path | None:
    """The ``finetune/`` folder (``model.safetensors`` + ``spec.json``) of the newest checkpoint of a trial that
    has one: the fine-tuned detector as of the trial's last reported fine-tuning epoch (completed, stopped
    by ASHA or interrupted alike). None when the trial never finished a fine-tuning epoch (it failed, or was
    stopped while pre-training).

    Tune keeps the newest ``checkpoint_keep`` checkpoints of a trial, so the newest one is never pruned, and a
    resumed trial reports a checkpoint of its own (a retried trial's folder, with its checkpoints, moves to
    ``retried/``). The newest checkpoint wins; an older one is used only when a newer one lacks the files (a
    copy cut short by a kill).
    """
    found = sorted((p for p in Path(trial_dir).glob("checkpoint_*") if p.is_dir()), reverse=True)
    for checkpoint in found:
        folder = checkpoint / WEIGHTS_DIR
        if all((folder / name).is_file() for name in WEIGHTS_FILES):
            return folder
    return None


def trial_folder(run_dir: Path, trial_id: str, state: dict[str, Any] | None = None) -> Path | None:
    """The folder of trial ``trial_id`` of ``run_dir`` (``tune_state.json``'s ``dir``, else ``trial_<id>``)."""
    entry = (state or {}).get("trials", {}).get(trial_id) if state else None
    rel = entry.get("dir") if isinstance(entry, dict) and isinstance(entry.get("dir"), str) else f"trial_{trial_id}"
    folder = (Path(run_dir) / rel).resolve()
    if Path(run_dir).resolve() not in folder.parents or not folder.is_dir():
        return None
    return folder


def checkpoint_epochs(checkpoint: Path) -> int:
    from bhsearch.tune.trial import STATE_FILE as TRIAL_STATE

    try:
        data = json.loads((checkpoint / TRIAL_STATE).read_text())
        return int(data.get("epochs_done", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


class ResumePlan:
    """What a resumed study does: which trials are final, which run again (and from which checkpoint).

    Trials are told apart by their key (``bhsearch.tune.noise.trial_key``: the spec id, plus ``#rK`` for a seed
    repeat), so a repeat of the base never stands in for the base's search trial."""

    def __init__(self, run_dir: Path, state: dict[str, Any], max_epochs: int):
        self.run_dir = run_dir
        self.state = state
        self.done: dict[str, dict[str, Any]] = {}  # trial id -> entry (final)
        self.redo: list[str] = []  # trial keys to run again, in first-seen order
        self.checkpoints: dict[str, str] = {}  # trial key -> checkpoint folder, relative to run_dir
        trials = state["trials"]
        for tid, t in trials.items():
            if t["status"] == FINAL:
                self.done[tid] = t
                continue
            if t["status"] == RETRIED:
                continue
            folder = run_dir / t.get("dir", f"trial_{tid}")
            rows = _result_rows(folder / "result.json")
            if rows and int(rows[-1].get("epochs_done", 0) or 0) >= max_epochs and t["status"] in OPEN:
                t["status"] = FINAL  # finished, the kill came before Tune marked it so
                self.done[tid] = t
        done_keys = {entry_key(t) for t in self.done.values()}
        for tid, t in trials.items():
            if t["status"] in (FINAL,) or entry_key(t) in done_keys:
                continue
            key = entry_key(t)
            if key not in self.redo:
                self.redo.append(key)
            folder = run_dir / t.get("dir", f"trial_{tid}")
            if t["status"] != RETRIED and folder.is_dir():
                target = run_dir / RETRIED_DIR / folder.name
                target.parent.mkdir(exist_ok=True)
                if target.exists():
                    shutil.rmtree(target)
                folder.rename(target)
                t["dir"] = f"{RETRIED_DIR}/{folder.name}"
            if t["status"] != RETRIED:
                t["status"] = RETRIED
                t["retried_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            moved = run_dir / t.get("dir", "")
            ckpt = latest_checkpoint(moved) if t.get("dir") and moved.is_dir() else None
            best = self.checkpoints.get(key)
            if ckpt is not None and (best is None or checkpoint_epochs(ckpt) > checkpoint_epochs(run_dir / best)):
                self.checkpoints[key] = str(ckpt.relative_to(run_dir))

    @property
    def done_keys(self) -> list[str]:
        return [entry_key(t) for t in self.done.values()]


def entry_key(entry: dict[str, Any]) -> str:
    """The trial key of a ``tune_state.json`` entry (``bhsearch.tune.noise.trial_key``)."""
    from bhsearch.tune.noise import trial_key

    return trial_key(entry["spec_id"], entry.get("repeat") or 0)


def write_resume_checkpoints(run_dir: Path, checkpoints: dict[str, str]) -> None:
    atomic_write_json(run_dir / RESUME_FILE, checkpoints)


def resume_checkpoint(run_dir: Path, key: str) -> Path | None:
    """The checkpoint folder a resumed trial of ``key`` (spec id, ``#rK`` for a repeat) continues from
    (``resume_checkpoints.json``)."""
    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return None
    try:
        rel = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(rel, str):
        return None
    folder = (Path(run_dir) / rel).resolve()
    if Path(run_dir).resolve() not in folder.parents or not folder.is_dir():
        return None  # only folders inside this run folder
    return folder


def make_recorder(run_dir: Path, state: dict[str, Any], run_index: int):
    """A Tune ``Callback`` that keeps ``state['trials']`` current and saves it on every change."""
    from ray.tune import Callback

    from bhsearch.tune.runner import trial_dirname

    class StateRecorder(Callback):
        def _set(self, trial: Any, status: str, **extra: Any) -> None:
            entry = state["trials"].setdefault(
                trial.trial_id,
                {"spec_id": str(trial.config.get("spec_id")), "dir": trial_dirname(trial), "run": run_index},
            )
            if trial.config.get("repeat"):
                entry["repeat"] = int(trial.config["repeat"])
            before = dict(entry)
            entry["status"] = status
            entry.update(extra)
            if entry != before:
                save_state(run_dir, state)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            for trial in trials:
                if trial.trial_id not in state["trials"] and trial.status in OPEN:
                    self._set(trial, "PENDING")

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._set(trial, "RUNNING", started=True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._set(trial, FINAL)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._set(trial, ERROR)

    return StateRecorder()


__all__ = [
    "JOURNAL_FILE",
    "RESUME_FILE",
    "STATE_FILE",
    "ResumePlan",
    "entry_key",
    "load_state",
    "make_recorder",
    "new_state",
    "pending_rows",
    "read_json",
    "resume_checkpoint",
    "save_state",
    "statuses",
    "trial_folder",
    "trial_weights",
]

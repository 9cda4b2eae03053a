"""The live progress of a study: one line on stderr, and one line per failed trial.

::

    trials 3/8 done (1 stopped), 2 running, 3 pending | trial-epochs 21/~48 | best AP50_tiny 12.34 | 2m05s elapsed, ETA 4m10s

* ``trials``: finished trials of this run (completed, stopped by ASHA, failed) of the trials it trains;
* ``trial-epochs``: epochs trained (pre-train + fine-tune, a resumed trial's restored epochs included) of the
  epochs the run will train: exact for FIFO, ``~`` an ASHA estimate (every trial reaches the first rung, a
  ``1/reduction_factor`` share of them each further rung; reference points and seed repeats, which ASHA never
  stops, run every epoch; finished trials count what they ran). The upper bound is ``trials x max_epochs``;
* ``best``: the target metric of the best *completed* trial; before any trial completed, the best value
  reported so far among the trials that got furthest, and at which epoch;
* the ETA is the remaining trial-epochs at the rate this run has trained them so far.

On a terminal the line is rewritten in place (``\\r``, at most once a second; on a narrow terminal in a
compact form, times first, cut at the edge); when stderr is a file or a
pipe a line is written when a trial ends and otherwise at most every ``interval_s`` seconds, so a log
stays short. A failed trial is always one line of its own (the last line of its error, and where
``error.txt`` is), also with the progress line off (``bhsearch tune --quiet``).

:class:`ProgressTracker` (counting) and :func:`format_progress` (the line) are pure and import neither
ray nor torch; :func:`make_progress_callback` wraps them in a Ray Tune ``Callback``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Where a study stands, for :func:`format_progress`."""

    trials: int  # trials this run trains
    completed: int
    stopped: int  # by ASHA
    failed: int
    running: int
    epochs_done: int  # trial-epochs trained, restored epochs of resumed trials included
    epochs_total: float  # trial-epochs the run will train (estimate unless ``epochs_exact``)
    epochs_exact: bool
    metric: str
    best: float | None  # target metric of the best completed trial, else of the best partial one
    best_epoch: int | None  # None: ``best`` is a completed trial's; else the epoch of that partial value
    max_epochs: int
    elapsed_s: float
    eta_s: float | None  # None: no epoch trained yet

    @property
    def done(self) -> int:
        return self.completed + self.stopped + self.failed

    @property
    def pending(self) -> int:
        return max(0, self.trials - self.done - self.running)


def format_duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h02m`` (seconds rounded; hours keep minutes only)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_metric(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def format_progress(p: Snapshot, compact: bool = False) -> str:
    """The progress line of ``p`` (module docstring); ``compact``: a shorter one for a narrow terminal, times
    first (what is cut off at the terminal's edge matters least), without the pending count."""
    ended = [f"{n} {what}" for n, what in ((p.stopped, "stopped"), (p.failed, "failed")) if n]
    trials = f"{p.done}/{p.trials} done" + (f" ({', '.join(ended)})" if ended else "") + f", {p.running} running"
    total = f"{'' if p.epochs_exact else '~'}{int(round(p.epochs_total))}"
    best = f"best {p.metric} {format_metric(p.best)}"
    eta = ", ETA " + ("-" if p.eta_s is None else format_duration(p.eta_s)) if p.done < p.trials else ""
    partial = p.best is not None and p.best_epoch is not None
    if compact:
        best += f" (epoch {p.best_epoch}, partial)" if partial else ""
        return " | ".join((format_duration(p.elapsed_s) + eta, trials, f"epochs {p.epochs_done}/{total}", best))
    best += f" at epoch {p.best_epoch}/{p.max_epochs} (none completed yet)" if partial else ""
    trials = f"trials {trials}, {p.pending} pending"
    clock = f"{format_duration(p.elapsed_s)} elapsed{eta}"
    return " | ".join((trials, f"trial-epochs {p.epochs_done}/{total}", best, clock))


def asha_rungs(max_epochs: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which Tune's ``ASHAScheduler`` (one bracket) judges a trial, below ``max_epochs``."""
    grace = max(1, min(grace_period, max_epochs))
    n = int(math.log(max_epochs / grace) / math.log(reduction_factor) + 1) if max_epochs > grace else 1
    return [r for r in (int(grace * reduction_factor**k) for k in range(n)) if r < max_epochs]


def expected_epochs(at: int, max_epochs: int, rungs: Sequence[int] = (), reduction_factor: float = 2.0) -> float:
    """Expected trial-epochs of a trial that has trained ``at`` epochs and goes on: each rung above ``at`` lets
    a ``1/reduction_factor`` share through (no rungs: FIFO, ``max_epochs``)."""
    bounds = [0, *sorted(r for r in rungs if 0 < r < max_epochs), max_epochs]
    total, share = float(at), 1.0
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if hi <= at:
            continue
        if lo > at:  # a rung between: only a share of the trials get past it
            share /= reduction_factor
        total += share * (hi - max(lo, at))
    return total


@dataclasses.dataclass
class _Trial:
    status: str = "running"  # running, completed, stopped, failed
    epochs: int = 0
    restored: int | None = None  # epochs a resumed trial had before this run
    value: float | None = None  # target metric at the last result that carried it
    value_epoch: int = 0
    protected: bool = False  # a reference point or a seed repeat: ASHA never stops it


class ProgressTracker:
    """Counts of a study from its trials' events (no Ray): started, result rows, completed, failed.

    ``protected`` trials (``protected_specs``, or a row with ``repeat`` > 0) run every epoch under ASHA;
    ``protected_trials`` of the ``trials`` are such trials.
    """

    def __init__(
        self,
        trials: int,
        max_epochs: int,
        metric: str,
        *,
        rungs: Sequence[int] = (),
        reduction_factor: float = 2.0,
        protected_specs: Sequence[str] = (),
        protected_trials: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.n_trials, self.max_epochs, self.metric = trials, max_epochs, metric
        self.rungs, self.reduction_factor = list(rungs), reduction_factor
        self.protected_specs, self.protected_trials = set(protected_specs), protected_trials
        self.clock = clock
        self.t0 = clock()
        self.trials: dict[str, _Trial] = {}

    def _get(self, trial_id: str) -> _Trial:
        return self.trials.setdefault(trial_id, _Trial())

    def started(self, trial_id: str) -> None:
        t = self._get(trial_id)
        if t.status not in ("completed", "stopped", "failed"):
            t.status = "running"

    def result(self, trial_id: str, row: dict[str, Any]) -> None:
        t = self._get(trial_id)
        epochs = row.get("epochs_done")
        if isinstance(epochs, int) and not isinstance(epochs, bool):
            if t.restored is None:
                t.restored = max(0, epochs - 1)
            t.epochs = max(t.epochs, epochs)
        if row.get("repeat") or row.get("spec_id") in self.protected_specs:
            t.protected = True
        value = row.get(self.metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            t.value, t.value_epoch = float(value), t.epochs

    def completed(self, trial_id: str) -> str:
        """The trial ended without error: ``completed`` when it ran every epoch, else ``stopped`` (ASHA)."""
        t = self._get(trial_id)
        t.status = "completed" if t.epochs >= self.max_epochs else "stopped"
        return t.status

    def failed(self, trial_id: str) -> None:
        self._get(trial_id).status = "failed"

    def _expected(self, at: int, protected: bool) -> float:
        """Expected trial-epochs of a running (or, ``at`` 0, a pending) trial."""
        return (
            float(self.max_epochs)
            if protected
            else expected_epochs(at, self.max_epochs, self.rungs, self.reduction_factor)
        )

    def snapshot(self) -> Snapshot:
        counts = {s: 0 for s in ("running", "completed", "stopped", "failed")}
        for t in self.trials.values():
            counts[t.status] += 1
        n_trials = max(self.n_trials, len(self.trials))
        done = sum(t.epochs for t in self.trials.values())
        trained = sum(t.epochs - (t.restored or 0) for t in self.trials.values())
        total = float(sum(t.epochs for t in self.trials.values() if t.status != "running"))
        total += sum(self._expected(t.epochs, t.protected) for t in self.trials.values() if t.status == "running")
        unseen = n_trials - len(self.trials)
        unseen_protected = min(unseen, max(0, self.protected_trials - sum(t.protected for t in self.trials.values())))
        total += unseen_protected * self.max_epochs + (unseen - unseen_protected) * self._expected(0, False)
        total = max(total, float(done))
        elapsed = self.clock() - self.t0
        eta = (total - done) * elapsed / trained if trained > 0 else None
        finished = [t for t in self.trials.values() if t.status == "completed" and t.value is not None]
        if finished:
            best, best_epoch = max(t.value for t in finished), None
        else:
            partial = [t for t in self.trials.values() if t.value is not None]
            lead = max(partial, key=lambda t: (t.value_epoch, t.value), default=None)
            best, best_epoch = (lead.value, lead.value_epoch) if lead else (None, None)
        return Snapshot(
            trials=n_trials,
            completed=counts["completed"],
            stopped=counts["stopped"],
            failed=counts["failed"],
            running=counts["running"],
            epochs_done=done,
            epochs_total=total,
            epochs_exact=not self.rungs,
            metric=self.metric,
            best=best,
            best_epoch=best_epoch,
            max_epochs=self.max_epochs,
            elapsed_s=elapsed,
            eta_s=eta,
        )


class ProgressLine:
    """Writes the tracker's line to ``stream``: rewritten in place on a terminal, else a line when a trial ends
    and at most every ``interval_s`` seconds. ``enabled=False`` writes only :meth:`note` lines (errors)."""

    def __init__(
        self,
        tracker: ProgressTracker,
        stream: IO[str] | None = None,
        *,
        enabled: bool = True,
        tty: bool | None = None,
        interval_s: float = 60.0,
        redraw_s: float = 1.0,
        width: int | None = None,
    ):
        self.tracker = tracker
        self._stream = stream  # None: sys.stderr at the time of writing
        self.enabled = enabled
        self.tty = self._isatty() if tty is None else tty
        self.interval_s = interval_s if not self.tty else redraw_s
        self.width = width
        self.last_at: float | None = None
        self.last_line: str | None = None
        self.drawn = False  # a rewritable line is on the terminal
        self.closed = False

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the Tuner (tuner.pkl, never read by bhsearch): not the stream
        return {**self.__dict__, "_stream": None}

    def _isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def _width(self) -> int:
        if self.width is not None:
            return self.width
        import shutil

        return shutil.get_terminal_size((100, 20)).columns

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not fail the study
            pass

    def update(self, force: bool = False) -> None:
        """Write the line if due (``force``: a trial ended)."""
        if not self.enabled or self.closed:
            return
        now = self.tracker.clock()
        if not force and self.last_at is not None and now - self.last_at < self.interval_s:
            return
        snapshot = self.tracker.snapshot()
        line = format_progress(snapshot)
        self.last_at = now
        if self.tty:
            room = max(1, self._width() - 1)  # the last column would wrap on some terminals
            if len(line) > room:
                line = format_progress(snapshot, compact=True)
            self._write("\r" + line[:room] + "\x1b[K")
            self.drawn = True
        elif line != self.last_line:
            self._write(line + "\n")
        self.last_line = line

    def note(self, text: str) -> None:
        """A line of its own (a failed trial), above the progress line; written even when disabled."""
        if self.drawn:
            self._write("\r\x1b[K")
            self.drawn = False
        self._write(text + "\n")
        if self.enabled and self.tty:
            self.update(force=True)

    def close(self) -> None:
        """The final line (once): ends the terminal line with a newline."""
        if self.closed:
            return
        self.update(force=True)
        self.closed = True
        if self.drawn:
            self._write("\n")
            self.drawn = False


def error_line(trial_id: str, arch: str, error: str | None, error_file: str | Path | None) -> str:
    """The one line a failed trial gets."""
    where = f"; see {error_file}" if error_file else ""
    return f"trial {trial_id} failed ({arch}): {error or 'error'}{where}"


def make_progress_callback(printer: ProgressLine, run_dir: str | Path):
    """A Ray Tune ``Callback`` that feeds ``printer`` (and its tracker) from the trials' events."""
    from ray.tune import Callback

    from bhsearch.report import short_arch
    from bhsearch.tune.results import _error_line
    from bhsearch.tune.runner import trial_dirname

    tracker = printer.tracker

    class ProgressCallback(Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            tracker.started(trial.trial_id)
            printer.update()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            tracker.result(trial.trial_id, result)
            printer.update()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if trial.last_result:
                tracker.result(trial.trial_id, trial.last_result)
            tracker.completed(trial.trial_id)
            printer.update(force=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            tracker.failed(trial.trial_id)
            local = Path(trial.error_file).parent if getattr(trial, "error_file", None) else None
            error = _error_line(local) if local is not None else None
            shown = Path(run_dir) / trial_dirname(trial) / "error.txt"
            arch = short_arch(str((trial.config or {}).get("spec_id", "")))
            printer.note(error_line(trial.trial_id, arch, error, shown))
            printer.update(force=True)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            printer.update()

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            printer.close()

    return ProgressCallback()


__all__ = [
    "ProgressLine",
    "ProgressTracker",
    "Snapshot",
    "asha_rungs",
    "error_line",
    "expected_epochs",
    "format_duration",
    "format_progress",
    "make_progress_callback",
]

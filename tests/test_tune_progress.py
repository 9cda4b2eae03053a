"""The live progress line of a study: formatter, tracker, printer and the Tune callback on fake trial events."""

from __future__ import annotations

import io
import sys
import types

import pytest

from bhsearch.tune.progress import (
    ProgressLine,
    ProgressTracker,
    Snapshot,
    asha_rungs,
    expected_epochs,
    format_duration,
    format_progress,
)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def snap(**kw) -> Snapshot:
    base = dict(
        trials=8,
        completed=2,
        stopped=1,
        failed=0,
        running=2,
        epochs_done=21,
        epochs_total=48.0,
        epochs_exact=False,
        metric="AP50_tiny",
        best=12.344,
        best_epoch=None,
        max_epochs=8,
        elapsed_s=125.0,
        eta_s=250.0,
    )
    return Snapshot(**{**base, **kw})


def test_format_duration():
    assert [format_duration(s) for s in (0, 44.6, 60, 125, 3599, 3600, 3725, 90061)] == [
        "0s",
        "45s",
        "1m00s",
        "2m05s",
        "59m59s",
        "1h00m",
        "1h02m",
        "25h01m",
    ]


def test_format_progress_exact_strings():
    assert format_progress(snap()) == (
        "trials 3/8 done (1 stopped), 2 running, 3 pending | trial-epochs 21/~48 | best AP50_tiny 12.34 | "
        "2m05s elapsed, ETA 4m10s"
    )
    assert format_progress(snap(failed=1, stopped=0, epochs_exact=True, epochs_total=64.0, eta_s=None, best=None)) == (
        "trials 3/8 done (1 failed), 2 running, 3 pending | trial-epochs 21/64 | best AP50_tiny - | "
        "2m05s elapsed, ETA -"
    )
    partial = snap(completed=0, stopped=0, running=2, best=3.21, best_epoch=5, eta_s=30.0)
    assert format_progress(partial) == (
        "trials 0/8 done, 2 running, 6 pending | trial-epochs 21/~48 | "
        "best AP50_tiny 3.21 at epoch 5/8 (none completed yet) | 2m05s elapsed, ETA 30s"
    )
    assert format_progress(snap(), compact=True) == (
        "2m05s, ETA 4m10s | 3/8 done (1 stopped), 2 running | epochs 21/~48 | best AP50_tiny 12.34"
    )
    assert format_progress(partial, compact=True) == (
        "2m05s, ETA 30s | 0/8 done, 2 running | epochs 21/~48 | best AP50_tiny 3.21 (epoch 5, partial)"
    )
    finished = snap(completed=4, stopped=4, running=0, epochs_done=48)
    assert format_progress(finished) == (
        "trials 8/8 done (4 stopped), 0 running, 0 pending | trial-epochs 48/~48 | best AP50_tiny 12.34 | 2m05s elapsed"
    )


def test_asha_rungs_and_expected_epochs():
    # Tune's ASHAScheduler(max_t, grace_period, reduction_factor) judges at grace * rf**k (below max_t)
    assert asha_rungs(8, 4, 2) == [4]  # the demo study: 2 pre-train + 6 fine-tune epochs, one rung
    assert asha_rungs(8, 1, 2) == [1, 2, 4]
    assert asha_rungs(9, 1, 3) == [1, 3]
    assert asha_rungs(2, 4, 2) == []  # grace period past the end: no rung
    assert expected_epochs(0, 8, [4], 2) == 6.0  # 4 epochs for all, 4 more for half of them
    assert expected_epochs(4, 8, [4], 2) == 8.0  # past the rung: runs to the end
    assert expected_epochs(2, 8, [4], 2) == 6.0
    assert expected_epochs(0, 8, [1, 2, 4], 2) == pytest.approx(1 + 1 / 2 + 2 / 4 + 4 / 8)
    assert expected_epochs(3, 8) == 8.0  # FIFO


def test_reference_points_and_repeats_are_expected_to_run_every_epoch():
    # 4 trials, 2 of them protected (a reference point and its seed repeat); ASHA with one rung at 4 of 8
    tr = ProgressTracker(4, 8, "AP50_tiny", rungs=[4], reduction_factor=2, protected_specs=["ref"], protected_trials=2)
    assert tr.snapshot().epochs_total == 2 * 8 + 2 * 6.0
    tr.started("a")
    tr.result("a", {"epochs_done": 1, "spec_id": "ref", "repeat": 0})
    tr.started("b")
    tr.result("b", {"epochs_done": 1, "spec_id": "cand", "repeat": 0})
    assert tr.snapshot().epochs_total == 8 + 6.0 + 8 + 6.0  # a protected, b not; one of each still pending
    tr.started("c")
    tr.result("c", {"epochs_done": 1, "spec_id": "ref", "repeat": 1})
    assert tr.snapshot().epochs_total == 8 + 6.0 + 8 + 6.0  # the pending one is now a candidate


def test_tracker_counts_epochs_best_and_eta():
    clock = Clock()
    tr = ProgressTracker(4, 8, "AP50_tiny", rungs=[4], reduction_factor=2, clock=clock)
    first = tr.snapshot()
    assert (first.trials, first.running, first.pending, first.epochs_done, first.epochs_total) == (4, 0, 4, 0, 24.0)
    assert first.eta_s is None and first.best is None
    for tid in ("a", "b"):
        tr.started(tid)
    for e in range(1, 5):
        tr.result("a", {"epochs_done": e, "top1": 10.0 + e, **({"AP50_tiny": 2.0 * e} if e > 2 else {})})
    tr.result("b", {"epochs_done": 4, "AP50_tiny": 1.0})  # a resumed trial: 3 epochs restored, one trained here
    clock.t += 50.0
    s = tr.snapshot()
    # a and b passed the rung (8 each expected), two trials not started (6 each)
    assert (s.running, s.pending, s.epochs_done, s.epochs_total, s.epochs_exact) == (2, 2, 8, 28.0, False)
    assert s.best == 8.0 and s.best_epoch == 4  # nothing completed: the furthest trial's value
    assert s.eta_s == pytest.approx((28 - 8) * 50.0 / 5)  # 5 epochs trained in 50 s by this run
    assert tr.completed("b") == "stopped"
    for e in range(5, 9):
        tr.result("a", {"epochs_done": e, "AP50_tiny": 10.0 + e})
    assert tr.completed("a") == "completed"
    tr.started("c")
    tr.failed("c")
    s = tr.snapshot()
    assert (s.completed, s.stopped, s.failed, s.running, s.pending) == (1, 1, 1, 0, 1)
    assert s.epochs_done == 12 and s.epochs_total == 12 + 6  # a: 8, b: 4, c: 0; one to go
    assert s.best == 18.0 and s.best_epoch is None


def test_progress_line_on_a_terminal_rewrites_one_line():
    clock = Clock()
    tr = ProgressTracker(2, 2, "top1", clock=clock)
    out = io.StringIO()
    line = ProgressLine(tr, out, tty=True, width=60)
    line.update()
    tr.started("a")
    clock.t += 0.5
    line.update()  # within a second of the last draw: nothing
    clock.t += 0.6
    line.update()
    line.note("trial b failed (k7s2p 3-4-6-3): RuntimeError: boom; see runs/x/trial_b/error.txt")
    line.close()
    line.close()
    k = "\x1b[K"  # erase to the end of the line
    first = "0s, ETA - | 0/2 done, 0 running | epochs 0/4 | best top1 -"  # the full line is too wide: compact
    later = "1s, ETA - | 0/2 done, 1 running | epochs 0/4 | best top1 -"
    note = "trial b failed (k7s2p 3-4-6-3): RuntimeError: boom; see runs/x/trial_b/error.txt"
    assert out.getvalue() == (
        f"\r{first}{k}\r{later}{k}"  # drawn, then redrawn a second later
        f"\r{k}{note}\n"  # the note on a line of its own, the progress line drawn again under it
        f"\r{later}{k}\r{later}{k}\n"  # closing: the final line, ended
    )
    wide = io.StringIO()
    ProgressLine(tr, wide, tty=True, width=120).update()
    assert wide.getvalue() == (
        "\rtrials 0/2 done, 1 running, 1 pending | trial-epochs 0/4 | best top1 - | 1s elapsed, ETA -" + k
    )
    narrow = io.StringIO()
    ProgressLine(tr, narrow, tty=True, width=40).update()
    assert narrow.getvalue() == "\r1s, ETA - | 0/2 done, 1 running | epoch" + k  # 39 columns: cut at the edge


def test_progress_line_in_a_log_writes_on_trial_ends_and_every_interval():
    clock = Clock()
    tr = ProgressTracker(2, 2, "top1", clock=clock)
    out = io.StringIO()
    line = ProgressLine(tr, out, tty=False, interval_s=60.0)
    line.update()
    tr.started("a")
    tr.result("a", {"epochs_done": 1, "top1": 5.0})
    clock.t += 30
    line.update()  # not due
    clock.t += 31
    line.update()  # due
    tr.result("a", {"epochs_done": 2, "top1": 7.5})
    tr.completed("a")
    line.update(force=True)  # a trial ended
    line.close()  # the same line again: not repeated
    assert out.getvalue().splitlines() == [
        "trials 0/2 done, 0 running, 2 pending | trial-epochs 0/4 | best top1 - | 0s elapsed, ETA -",
        "trials 0/2 done, 1 running, 1 pending | trial-epochs 1/4 | best top1 5.00 at epoch 1/2 (none completed yet) | "
        "1m01s elapsed, ETA 3m03s",
        "trials 1/2 done, 0 running, 1 pending | trial-epochs 2/4 | best top1 7.50 | 1m01s elapsed, ETA 1m01s",
    ]


def test_disabled_progress_line_still_writes_failed_trials():
    out = io.StringIO()
    line = ProgressLine(ProgressTracker(1, 1, "top1"), out, enabled=False, tty=True)
    line.update(force=True)
    line.note("trial a failed (x): boom")
    line.close()
    assert out.getvalue() == "trial a failed (x): boom\n"


def fake_trial(trial_id: str, spec_id: str, error_file=None, last_result=None):
    return types.SimpleNamespace(
        trial_id=trial_id, config={"spec_id": spec_id}, error_file=error_file, last_result=last_result or {}
    )


@pytest.mark.ray
def test_callback_on_fake_trial_events(tmp_path):
    pytest.importorskip("ray")
    from bhsearch.tune.progress import make_progress_callback

    clock = Clock()
    tr = ProgressTracker(3, 4, "AP50_tiny", rungs=[2], reduction_factor=2, clock=clock)
    out = io.StringIO()
    printer = ProgressLine(tr, out, tty=False, interval_s=60.0)
    cb = make_progress_callback(printer, tmp_path / "runs" / "demo")
    a = fake_trial("t_00000", "resnet:bottleneck:k7s2pc4:3-4-6-3:w4-8-16-32")
    b = fake_trial("t_00001", "resnet:bottleneck:k3s1pc4:7-6-2-1:w4-8-16-32:s2-2-2-2")
    staging = tmp_path / "staging" / "trial_t_00002"
    staging.mkdir(parents=True)
    (staging / "error.txt").write_text(
        'Failure # 1\nTraceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: injected failure\n'
    )
    c = fake_trial("t_00002", "resnet:bottleneck:k5s1p:4-3-3-1:s2-2-2-2", error_file=str(staging / "error.txt"))
    cb.on_trial_start(iteration=1, trials=[a, b], trial=a)  # the first event draws the line
    cb.on_trial_start(iteration=1, trials=[a, b], trial=b)
    for e in (1, 2):
        clock.t += 10
        cb.on_trial_result(iteration=e, trials=[a, b], trial=a, result={"epochs_done": e, "top1": 20.0})
        cb.on_trial_result(iteration=e, trials=[a, b], trial=b, result={"epochs_done": e, "top1": 10.0})
    clock.t += 10
    cb.on_trial_complete(iteration=3, trials=[a, b], trial=b)  # stopped by ASHA at the rung
    cb.on_step_end(iteration=3, trials=[a, b])  # not due
    cb.on_trial_start(iteration=4, trials=[a, c], trial=c)
    cb.on_trial_error(iteration=4, trials=[a, c], trial=c)
    for e in (3, 4):
        clock.t += 10
        cb.on_trial_result(iteration=5, trials=[a], trial=a, result={"epochs_done": e, "AP50_tiny": 3.5 * e})
    cb.on_trial_complete(iteration=6, trials=[a], trial=a)
    cb.on_experiment_end(trials=[a, b, c])
    error_path = tmp_path / "runs" / "demo" / "trial_t_00002" / "error.txt"
    assert out.getvalue().splitlines() == [
        "trials 0/3 done, 1 running, 2 pending | trial-epochs 0/~9 | best AP50_tiny - | 0s elapsed, ETA -",
        "trials 1/3 done (1 stopped), 1 running, 1 pending | trial-epochs 4/~9 | best AP50_tiny - | "
        "30s elapsed, ETA 38s",
        f"trial t_00002 failed (k5s1p 4-3-3-1 s2-2-2-2): RuntimeError: injected failure; see {error_path}",
        "trials 2/3 done (1 stopped, 1 failed), 1 running, 0 pending | trial-epochs 4/~6 | best AP50_tiny - | "
        "30s elapsed, ETA 15s",
        "trials 3/3 done (1 stopped, 1 failed), 0 running, 0 pending | trial-epochs 6/~6 | best AP50_tiny 14.00 | "
        "50s elapsed",
    ]


@pytest.mark.ray
def test_cli_is_quiet_by_default_and_verbose_on_request(synthetic_data, tmp_path):
    """A one-trial, two-epoch study through ``bhsearch tune``: by default stderr holds the progress line only and
    stdout the ranking; ``--verbose`` brings back Tune's status tables and the per-epoch checkpoint lines."""
    import os
    import subprocess

    from _tune_helpers import PRETRAIN, write_study

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    procs = {}
    for mode in ("default", "verbose"):
        path = write_study(
            tmp_path,
            synthetic_data,
            mode,
            finetune=False,
            search={"num_samples": 1, "references": ["resnet50"]},
            stages={"pretrain": {"data": synthetic_data.cifar100_ref, **PRETRAIN, "epochs": 2}},
        )
        cmd = [sys.executable, "-m", "bhsearch", "tune", str(path), *(["--verbose"] if mode == "verbose" else [])]
        procs[mode] = subprocess.Popen(  # both at once: two Ray start-ups in the time of one
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    out = {mode: proc.communicate(timeout=400) for mode, proc in procs.items()}
    for mode, proc in procs.items():
        assert proc.returncode == 0, out[mode][1][-3000:]

    stdout, stderr = out["default"]
    assert stderr.splitlines() == [line for line in stderr.splitlines() if line.startswith("trials ")], (
        stderr
    )  # nothing but the progress line: no Ray output at all
    last = stderr.splitlines()[-1]
    assert last.startswith("trials 1/1 done, 0 running, 0 pending | trial-epochs 2/2 | best top1 "), last
    for noise in ("Checkpoint successfully created", "Trial status", "╭", "View detailed results", "Token auth"):
        assert noise not in stdout + stderr, noise
    assert "study default: ranked by top1" in stdout
    assert any(line.startswith("arch: k") for line in stdout.splitlines())  # the legend under the table
    assert "score" not in stdout

    v_stdout, v_stderr = out["verbose"]
    both = v_stdout + v_stderr
    # worker lines reach the driver through Ray's log monitor, which may not forward the last one before exit
    assert both.count("Checkpoint successfully created") >= 1 and "Trial status" in both
    assert "trials 1/1 done" in v_stderr  # the progress line too, as plain lines between Tune's
    assert len(both.splitlines()) > len((stdout + stderr).splitlines()) + 20


def test_progress_line_pickles_without_its_stream():
    import pickle

    line = ProgressLine(ProgressTracker(1, 1, "top1"), io.StringIO(), tty=False)
    copy = pickle.loads(pickle.dumps(line))  # Tune pickles its callbacks with the Tuner
    assert copy.stream is sys.stderr and copy.tracker.n_trials == 1


def test_protected_trials_left_count_references_and_repeats_not_done(tmp_path):
    from bhsearch.spec import get_spec
    from bhsearch.tune.noise import trial_key
    from bhsearch.tune.runner import Candidate, _protected_left
    from bhsearch.tune.study import parse_study

    study = parse_study({"name": "p", "base": "resnet18", "noise": {"repeats": 3}, "stages": {"pretrain": {
        "data": f"synthetic-cifar100:{tmp_path}", "epochs": 1}}})  # fmt: skip
    base, paper = (
        Candidate(get_spec("resnet18"), "base"),
        Candidate(get_spec("resnet:basic:k3s1p:3-2-2-1:s2-2-2-2"), "paper"),
    )
    pool = [base, paper, Candidate(get_spec("resnet34"), "candidate")]
    assert _protected_left(study, pool, [], 9) == 2 + 2 * 2  # two references, two extra seeds each
    done = [base.id, trial_key(base.id, 1), trial_key(paper.id, 2)]
    assert _protected_left(study, pool, done, 9) == 6 - 3
    assert _protected_left(study, pool, [], 2) == 2  # never more than the trials left


_FINALISERS = """
import sys, weakref
from bhsearch.tune.runner import drop_exit_noise
class Box: pass
def stop(_): raise SystemExit(1)  # what Ray's SIGTERM handler raises when the signal lands in a callback
def fail(_): raise ValueError("a real error")
if sys.argv[1] == "quiet":
    sys.unraisablehook = drop_exit_noise(drop_exit_noise(sys.unraisablehook))
a, b = Box(), Box()
refs = [weakref.ref(a, stop), weakref.ref(b, fail)]
del a, b
print("still running")
"""


@pytest.mark.parametrize("mode", ["plain", "quiet"])
def test_quiet_worker_drops_the_sigterm_traceback_and_keeps_real_errors(mode):
    """A quiet trial worker's ``sys.unraisablehook`` swallows the "Exception ignored ... SystemExit" that Ray's
    SIGTERM handler leaves when it fires inside a weakref callback (it reached a CI run's terminal after the
    study had ended); any other exception raised where Python cannot raise it is still printed."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", _FINALISERS, mode], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout == "still running\n"
    ignored = [line for line in proc.stderr.splitlines() if line.startswith("Exception ignored")]
    assert len(ignored) == (2 if mode == "plain" else 1), proc.stderr
    assert "ValueError: a real error" in proc.stderr
    assert ("SystemExit" in proc.stderr) == (mode == "plain"), proc.stderr


def test_drop_exit_noise_wraps_once():
    from bhsearch.tune.runner import drop_exit_noise

    once = drop_exit_noise(sys.__unraisablehook__)
    assert once is not sys.__unraisablehook__
    assert drop_exit_noise(once) is once

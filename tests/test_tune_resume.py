"""Resume and interrupt semantics of `bhsearch tune` (docs/tuning.md, "Resume" and "Interrupts").

* resume never unpickles a file of the run folder (a malicious pickle planted in every one of them);
* Ctrl-C (SIGINT) exits 130, labels running/pending trials ``unfinished``, marks best_spec.json partial and
  prints a one-line hint; ``--resume`` then finishes the study, the interrupted trial from its checkpoint;
* an errored trial is retried on resume and the table updated; a study whose trials all fail exits 1;
* bad input fails before Ray starts (exit 2, one line): stage settings, data paths, a truncated run folder,
  a Ray address that does not answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _tune_helpers import write_study

from bhsearch.errors import DataError, UsageError
from bhsearch.tune.runner import StudyFailed, check_data, run_study
from bhsearch.tune.study import load_study

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_DEDUP_LOGS"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _tune(*args: str, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bhsearch", "tune", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


class _Evil:
    """Unpickling this creates ``path`` (stands in for ``os.system``)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant_pickles(run_dir: Path, marker: Path) -> list[Path]:
    """Overwrite every pickle-like file of ``run_dir`` with a malicious pickle and add a few more; returns the
    pickles Tune itself had written."""
    payload = pickle.dumps(_Evil(marker))
    written = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    planted = list(written)
    planted += [run_dir / "tuner.pkl", run_dir / "searcher-state.pkl", run_dir / "evil.pickle"]
    planted += [d / "params.pkl" for d in run_dir.glob("trial_*")]
    planted += [d / "evil.pt" for d in run_dir.glob("trial_*")]  # a .pt no trainer wrote
    for path in set(planted):
        path.write_bytes(payload)
    # Tune's JSON state embeds pickled trials and searcher state: resume must not need it at all
    for path in [*run_dir.glob("experiment_state-*.json"), *run_dir.glob("basic-variant-state-*.json")]:
        path.write_bytes(payload)
    with pytest.raises(FileNotFoundError):  # the marker does not exist yet, and unpickling would make it
        marker.stat()
    pickle.loads(payload)  # the payload works: unpickling it makes the marker
    assert marker.is_file()
    marker.unlink()
    return sorted(written)


def _state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "tune_state.json").read_text())
    except (OSError, ValueError):
        return {}


def _checkpoint_epochs(trial_dir: Path) -> int:
    best = 0
    for path in trial_dir.glob("checkpoint_*/trial_state.json"):
        with contextlib.suppress(OSError, ValueError):
            best = max(best, int(json.loads(path.read_text())["epochs_done"]))
    return best


def _ray_processes(temp_dir: str) -> list[int]:
    """Processes whose command line names ``temp_dir`` (the session folder of the Ray we started)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
    return pids


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- before Ray starts


def test_bad_stage_setting_and_data_fail_before_ray(synthetic_data, tmp_path):
    path = write_study(tmp_path, synthetic_data, "bad", finetune=False)
    study = yaml.safe_load(path.read_text())
    study["stages"]["pretrain"]["batch_size"] = "abc"
    path.write_text(yaml.safe_dump(study))
    t0 = time.perf_counter()
    proc = _tune(str(path), cwd=tmp_path, RAY_TMPDIR=str(tmp_path / "no-ray"))
    assert proc.returncode == 2, proc.stderr
    assert _lines(proc.stderr) == [
        f"bhsearch tune: error: {path}:{_line_of(path, 'batch_size')}: stages.pretrain.batch_size: "
        "Input should be a valid integer, unable to parse string as an integer (got 'abc')"
    ]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "no-ray").exists()  # no run folder, no Ray
    assert time.perf_counter() - t0 < 60
    # the same checks in-process (run_study checks data before it imports Ray)
    study["stages"]["pretrain"]["batch_size"] = 64
    study["stages"]["pretrain"]["data"] = "cifar100:/nonexistent"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(DataError) as info:
        run_study(load_study(path), verbose=0)
    assert str(info.value) == "stages.pretrain.data: cifar100:/nonexistent: /nonexistent does not exist"
    assert info.value.exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"^stages.pretrain.data: cifar100:.*empty: .*no cifar-100-python"):
        check_data(load_study(path).model_copy(update={"stages": _stages(study, f"cifar100:{empty}")}))
    study["stages"]["pretrain"]["data"] = synthetic_data.cifar100_ref
    study["stages"]["finetune"] = {"data": synthetic_data.tinyperson_ref, "epochs": 1, "detector_kwargs": {"foo": 1}}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(UsageError, match=r"stages.finetune: detector: bad option for faster_rcnn: foo \(allowed"):
        load_study(path)
    study["stages"]["finetune"] = {"data": synthetic_data.tinyperson_ref, "epochs": 1, "detector": "yolo"}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(UsageError, match="stages.finetune: unknown detector 'yolo'; choose one of faster_rcnn"):
        load_study(path)
    assert not (tmp_path / "runs").exists()


def _stages(study: dict, data: str):
    from bhsearch.tune.study import StagesConfig

    return StagesConfig.model_validate({"pretrain": {**study["stages"]["pretrain"], "data": data}})


def _line_of(path: Path, key: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip().startswith(f"{key}:"))


def test_truncated_run_folder_is_a_clear_error_on_resume(synthetic_data, tmp_path):
    path = write_study(tmp_path, synthetic_data, "cut", finetune=False)
    study = load_study(path).absolute(tmp_path)
    run_dir = tmp_path / "runs" / "cut"
    run_dir.mkdir(parents=True)
    full = json.dumps(study.model_dump())
    (run_dir / "study.json").write_text(full[: len(full) // 2])
    proc = _tune(str(path), "--resume", cwd=tmp_path)
    assert proc.returncode == 2
    assert len(_lines(proc.stderr)) == 1, proc.stderr
    assert proc.stderr.startswith(f"bhsearch tune: error: {run_dir / 'study.json'}: the resolved study is truncated")
    assert proc.stderr.rstrip().endswith("cannot resume from it")
    (run_dir / "study.json").write_text(full)
    (run_dir / "candidates.json").write_text("[]")
    (run_dir / "tune_state.json").write_text('{"format": "bhsearch-tune-state", "trials": {"a": {"spec')
    with pytest.raises(UsageError) as info:  # in-process: the same check, without another interpreter
        run_study(load_study(path), resume=True, verbose=0)
    message = str(info.value)
    assert message.startswith(f"{run_dir / 'tune_state.json'}: the study's trial record is truncated or corrupt (")
    assert message.endswith("; cannot resume from it") and "\n" not in message
    (run_dir / "tune_state.json").write_text('{"format": "something-else", "trials": {}}')
    with pytest.raises(UsageError, match="not a bhsearch trial record"):
        run_study(load_study(path), resume=True, verbose=0)


def test_unreachable_address_fails_fast(synthetic_data, tmp_path):
    path = write_study(tmp_path, synthetic_data, "addr", finetune=False)
    t0 = time.perf_counter()
    proc = _tune(str(path), "--address", "127.0.0.1:1", cwd=tmp_path)
    assert proc.returncode == 2 and time.perf_counter() - t0 < 60
    assert _lines(proc.stderr) == [
        "bhsearch tune: error: cannot connect to the Ray cluster at '127.0.0.1:1': Connection refused"
    ]
    # a port that accepts TCP but never speaks Ray's protocol: Ray alone would retry for many minutes
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.perf_counter()
        proc = _tune(str(path), "--address", address, cwd=tmp_path, BHSEARCH_RAY_CONNECT_TIMEOUT_S="4")
        took = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in _lines(proc.stderr) if ln.startswith("bhsearch tune:")]
    assert errors == [
        f"bhsearch tune: error: cannot connect to the Ray cluster at '{address}': no answer within 4 s "
        "(is it a Ray head's GCS port? --connect-timeout or BHSEARCH_RAY_CONNECT_TIMEOUT_S sets the wait)"
    ]
    assert 4 <= took < 60
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- with Ray


@pytest.mark.ray
def test_errored_trial_is_retried_on_resume_without_unpickling(ray_session, synthetic_data, tmp_path):
    path = write_study(
        tmp_path, synthetic_data, "retry", finetune=False, search={"algorithm": "optuna", "num_samples": 3}
    )
    study = load_study(path)
    paper_id = next(s.id for role, s in study.reference_specs() if role == "paper")

    def flaky_trial(config, study):
        from bhsearch.tune.trial import run_trial

        if config["spec_id"] == paper_id:
            raise RuntimeError("injected failure for this candidate")
        run_trial(config, study)

    first = run_study(study, verbose=0, trial_fn=flaky_trial)
    run_dir = first.run_dir
    csv = pd.read_csv(run_dir / "results.csv")
    assert len(csv) == 3 and csv["spec_id"].is_unique
    failed = csv[csv["spec_id"] == paper_id].iloc[0]
    assert failed["status"] == "error" and "injected failure" in failed["error"]
    assert (run_dir / "optuna.journal").is_file()
    kept = {t: r for t, r in csv.set_index("trial_id").iterrows() if r["status"] != "error"}

    marker = tmp_path / "PWNED"
    written = {p.name for p in plant_pickles(run_dir, marker)}
    # Tune pickled its state; bhsearch's searcher saves none (FixedFirst.save), a planted searcher-state.pkl
    # is still there to be ignored
    assert "tuner.pkl" in written and (run_dir / "searcher-state.pkl").is_file(), written
    second = run_study(study, resume=True, verbose=0)  # the real trial: the failure is gone
    assert not marker.exists(), "resume unpickled a file of the run folder"
    csv = pd.read_csv(run_dir / "results.csv")
    assert len(csv) == 3 and csv["spec_id"].is_unique
    assert (csv["status"] == "completed").all(), csv[["spec_id", "status", "error"]]
    assert csv["error"].isna().all()
    retried = csv[csv["spec_id"] == paper_id].iloc[0]
    assert retried["trial_id"] != failed["trial_id"]  # a new trial; the failed one's folder moved aside
    assert (run_dir / "retried" / f"trial_{failed['trial_id']}" / "error.txt").is_file()
    for trial_id, row in kept.items():  # finished trials were neither lost nor run again
        again = csv[csv["trial_id"] == trial_id].iloc[0]
        assert again["search_score"] == row["search_score"] and again["spec_id"] == row["spec_id"]
    assert second.table["status"].tolist() == ["completed"] * 3
    state = json.loads((run_dir / "tune_state.json").read_text())
    assert state["trials"][failed["trial_id"]]["status"] == "RETRIED"
    assert [r["outcome"] for r in state["runs"]] == ["complete", "complete"]
    best = json.loads((run_dir / "best_spec.json").read_text())
    assert "partial" not in best

    import optuna

    from bhsearch.tune.runner import optuna_storage

    trials = optuna.load_study(study_name="retry", storage=optuna_storage(run_dir / "optuna.journal")).trials
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]  # the journal holds the whole history


@pytest.mark.ray
def test_study_where_every_trial_fails_exits_1(ray_session, synthetic_data, tmp_path):
    study = load_study(write_study(tmp_path, synthetic_data, "allfail", finetune=False, search={"num_samples": 2}))

    def broken(config, study):
        raise RuntimeError(f"broken trial {config['spec_id']}")

    with pytest.raises(StudyFailed) as info:
        run_study(study, verbose=0, trial_fn=broken)
    assert info.value.exit_code == 1
    message = str(info.value)
    assert message.startswith("all 2 trials failed; first error: ") and "RuntimeError: broken trial" in message
    assert "\n" not in message
    csv = pd.read_csv(tmp_path / "runs" / "allfail" / "results.csv")  # the table is still written
    assert (csv["status"] == "error").all() and len(csv) == 2
    with pytest.raises(UsageError, match="pass --resume"):
        run_study(study, verbose=0)


def _ctrl_c_reaches_the_child() -> None:
    """A job a shell started in the background (``cmd &``, ``nohup``) ignores SIGINT, and its children inherit
    that: Python then never installs its Ctrl-C handler. The test is about what a user's Ctrl-C does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_LINGERING_THREAD = """
import sys, threading
from pathlib import Path
import bhsearch.tune.runner as runner
from bhsearch.cli import main

def interrupted(study, **kwargs):
    threading.Thread(target=threading.Event().wait, daemon=False).start()  # as a thread Tune leaves behind
    raise runner.StudyInterrupted(Path("runs/demo"), {"completed": 1, "unfinished": 2})

runner.check_data, runner.run_study = (lambda study: None), interrupted
sys.exit(main(["tune", sys.argv[1], "--quiet"]))
"""


def test_interrupted_tune_exits_130_even_if_a_thread_lingers(tmp_path):
    """Ctrl-C: once the study's state is written, ``bhsearch tune`` leaves with 130 at once. A non-daemon thread
    left running (Tune's, in one CI run) used to keep interpreter shutdown waiting for ever."""
    study = Path(__file__).resolve().parents[1] / "studies" / "demo.yaml"
    proc = subprocess.run(
        [sys.executable, "-c", _LINGERING_THREAD, str(study)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.startswith(
        "bhsearch tune: interrupted (1 completed, 2 unfinished; partial results in runs/demo)"
    )
    assert proc.stderr.rstrip().endswith(f"resume with `bhsearch tune {study} --resume`"), proc.stderr


def test_sigint_exits_130_labels_unfinished_and_resume_finishes(synthetic_data, tmp_path):
    path = write_study(
        tmp_path,
        synthetic_data,
        "sigint",
        finetune=False,
        search={"max_concurrent": 1, "num_samples": 3},
        stages={"pretrain": {"data": synthetic_data.cifar100_ref, "epochs": 4, "batch_size": 64,
                             "max_train_samples": 128, "max_eval_samples": 64}},
    )  # fmt: skip
    run_dir = tmp_path / "runs" / "sigint"
    ray_tmp = tempfile.mkdtemp(prefix="bhs", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    cmd = [sys.executable, "-m", "bhsearch", "tune", str(path), "--quiet"]
    try:
        with open(tmp_path / "first.log", "w") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=_env(RAY_TMPDIR=ray_tmp),
                stdout=log,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=_ctrl_c_reaches_the_child,
            )
        deadline = time.time() + 300
        running = None
        while time.time() < deadline:
            trials = _state(run_dir).get("trials", {})
            done = [t for t in trials.values() if t["status"] == "TERMINATED"]
            for trial_id, t in trials.items():
                epochs = _checkpoint_epochs(run_dir / t["dir"])
                if done and t["status"] == "RUNNING" and 1 <= epochs < 4:
                    running = trial_id
            if running:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("no trial was running with a checkpoint after a finished one")
        t_sig = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        stop_s = time.perf_counter() - t_sig
        assert proc.returncode == 130, stderr[-3000:]
        hint = [ln for ln in _lines(stderr) if ln.startswith("bhsearch tune:")]
        assert len(hint) == 1 and hint[0].endswith(f"resume with `bhsearch tune {path} --resume`"), stderr[-3000:]
        assert hint[0].startswith("bhsearch tune: interrupted (")
        assert "Traceback" not in stderr
        deadline = time.time() + 15  # the local Ray died with the driver
        while _ray_processes(ray_tmp) and time.time() < deadline:
            time.sleep(0.5)
        assert _ray_processes(ray_tmp) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_all(_ray_processes(ray_tmp))
    assert stop_s < 60

    csv = pd.read_csv(run_dir / "results.csv")
    statuses = dict(zip(csv["trial_id"], csv["status"], strict=True))
    assert statuses[running] == "unfinished"
    assert len(csv) == 3 and csv["spec_id"].is_unique  # the pending trial is listed too
    assert "stopped" not in statuses.values() and "error" not in statuses.values()
    assert sorted(statuses.values()).count("unfinished") == 3 - list(statuses.values()).count("completed")
    best = json.loads((run_dir / "best_spec.json").read_text())
    assert best["partial"] is True and best["counts"]["completed"] >= 1 and best["counts"]["unfinished"] >= 1
    completed = {t: r for t, r in csv.set_index("trial_id").iterrows() if r["status"] == "completed"}

    # the running trial's last checkpoint survives but its result rows are lost (killed between the two)
    ckpt_epochs = _checkpoint_epochs(run_dir / f"trial_{running}")
    (run_dir / f"trial_{running}" / "result.json").write_text("")
    marker = tmp_path / "PWNED"
    assert "tuner.pkl" in {p.name for p in plant_pickles(run_dir, marker)}

    t0 = time.perf_counter()
    resumed = subprocess.run(
        [*cmd, "--resume", "--json"], cwd=tmp_path, env=_env(RAY_TMPDIR=ray_tmp), capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip
    resume_s = time.perf_counter() - t0
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not marker.exists(), "resume unpickled a file of the run folder"
    info = json.loads(resumed.stdout)
    assert info["trials"] == 3 and info["counts"] == {"completed": 3}
    csv = pd.read_csv(run_dir / "results.csv")
    assert (csv["status"] == "completed").all() and csv["spec_id"].is_unique
    for trial_id, row in completed.items():
        assert csv[csv["trial_id"] == trial_id].iloc[0]["search_score"] == row["search_score"]
    spec_of = _state(run_dir)["trials"][running]["spec_id"]
    again = csv[csv["spec_id"] == spec_of].iloc[0]
    rows = [json.loads(ln) for ln in (run_dir / f"trial_{again['trial_id']}" / "result.json").read_text().splitlines()]
    assert [r["epochs_done"] for r in rows] == list(range(ckpt_epochs + 1, 5))  # continued from its checkpoint
    assert {r["attempt"] for r in rows} == {2}
    assert "partial" not in json.loads((run_dir / "best_spec.json").read_text())
    print(f"\nSIGINT to exit: {stop_s:.1f} s; resume: {resume_s:.1f} s")
    shutil.rmtree(ray_tmp, ignore_errors=True)

"""Studies through Ray Tune with real (tiny) trials: results, failures, resume after kill -9, a cluster."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from _tune_helpers import PRETRAIN, write_study

from bhsearch.errors import UsageError
from bhsearch.export import export
from bhsearch.report import short_arch
from bhsearch.spec import get_spec
from bhsearch.tune.results import COLUMNS
from bhsearch.tune.runner import run_study
from bhsearch.tune.study import load_study
from bhsearch.tune.trial import work_root

pytestmark = pytest.mark.ray


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_DEDUP_LOGS"] = "0"
    return env


def _trial_rows(run_dir: Path) -> dict[str, list[dict]]:
    """Every trial's reported results, by trial folder."""
    out = {}
    for path in sorted(run_dir.glob("trial_*/result.json")):
        out[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def _export(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bhsearch", "export", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_env(), timeout=300)


def _detections(model, image):
    import torch

    model.roi_heads.score_thresh = 0.0  # every box the heads keep, not only the confident ones of a 1-epoch model
    with torch.no_grad():
        return model.eval()([image])[0]


def test_tiny_study_runs_end_to_end(ray_session, synthetic_data, tmp_path):
    def _untimed_trial(config, study):
        """``run_trial`` in a worker where timing a network fails the trial (a closure: Ray pickles it by value)."""
        import bhsearch.latency
        import bhsearch.latency.measure
        from bhsearch.tune.trial import run_trial

        def refuse(*args, **kwargs):
            raise AssertionError("latency measured inside a trial")

        bhsearch.latency.measure.measure_latency = refuse
        bhsearch.latency.measure_latency = refuse
        run_trial(config, study)

    study = load_study(write_study(tmp_path, synthetic_data, "e2e"))
    outcome = run_study(study, verbose=0, trial_fn=_untimed_trial)
    run_dir = outcome.run_dir
    csv = pd.read_csv(run_dir / "results.csv")
    parquet = pd.read_parquet(run_dir / "results.parquet")
    assert list(csv.columns) == COLUMNS and list(parquet.columns) == COLUMNS
    assert len(csv) == 3 and csv["spec_id"].is_unique
    assert set(csv["role"]) == {"base", "paper", "candidate"}
    assert (csv["status"] == "completed").all(), csv[["spec_id", "status", "error"]]
    assert (csv["epochs"] == 2).all() and (csv["max_epochs"] == 2).all()
    # fidelity-aware score at the final epoch is the target metric itself
    assert (csv["search_score"] == csv["AP50_tiny"]).all()
    for col in ("top1", "AP50_tiny", "AP50_tiny1", "AP50_small", "latency_ms", "flops", "params"):
        assert csv[col].notna().all() and (csv[col] >= 0).all(), col
    # latency: measured by the driver after the trials, once per spec, one thread, the study's 64x64 input
    latency = json.loads((run_dir / "latency.json").read_text())
    assert set(latency["specs"]) == set(csv["spec_id"])
    assert latency["settings"]["threads"] == 1 and latency["settings"]["input_size"] == "64x64"
    assert (csv["latency_source"] == "measured").all() and csv["latency_spread_pct"].notna().all()
    for _, row in csv.iterrows():
        assert row["latency_ms"] == pytest.approx(latency["specs"][row["spec_id"]]["latency_ms"])
    assert not any("latency_ms" in r for rows in _trial_rows(run_dir).values() for r in rows)
    paper = csv[csv["role"] == "paper"].iloc[0]
    assert paper["blocks"] == "7-6-2-1" and bool(paper["bottom_heavy"])
    assert not bool(csv[csv["role"] == "base"].iloc[0]["bottom_heavy"])
    assert list(csv["rank"]) == [1, 2, 3]
    assert list(csv["search_score"]) == sorted(csv["search_score"], reverse=True)
    best = json.loads((run_dir / "best_spec.json").read_text())
    assert best["id"] == csv.iloc[0]["spec_id"] and get_spec(best["spec"]).id == best["id"]
    # every epoch of both stages was reported, in order, with one attempt each
    for rows in _trial_rows(run_dir).values():
        assert [r["stage"] for r in rows] == ["pretrain", "finetune"]
        assert [r["attempt"] for r in rows] == [1, 1]
        assert rows[0]["score"] == pytest.approx(rows[0]["top1"] - 1000.0)
    # trials trained in node-local scratch folders, removed when the study ended
    assert not list(work_root(run_dir).parent.glob(f"{run_dir.name}-*"))
    # every trial kept its fine-tuned detector: its newest checkpoint's finetune/ folder
    for _, row in csv.iterrows():
        assert re.fullmatch(rf"trial_{row['trial_id']}/checkpoint_\d+/finetune", row["weights"]), row["weights"]
        assert (run_dir / row["weights"] / "model.safetensors").is_file()
    _check_exports(run_dir, csv, tmp_path)
    # a finished study is not silently re-run, and there is nothing to resume under another name
    with pytest.raises(UsageError, match="pass --resume"):
        run_study(study, verbose=0)
    with pytest.raises(UsageError, match="no study to resume"):
        run_study(study.model_copy(update={"name": "other"}), resume=True, verbose=0)


def _check_exports(run_dir: Path, csv: pd.DataFrame, tmp_path: Path) -> None:
    """``bhsearch export RUN_DIR`` (best trial) and ``--trial ID``: the trained detector with the study's
    detector settings, giving that trial's detections."""
    import torch

    from bhsearch.export import build_detector
    from bhsearch.train.inference import load_run_model

    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))
    last = csv.iloc[-1]["trial_id"]
    for out, extra, trial_id in (("best", (), csv.iloc[0]["trial_id"]), ("other", ("--trial", last), last)):
        proc = _export(str(run_dir), "--to", "torchvision", "--out", out, "--json", *extra, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        meta = json.loads((tmp_path / out / "spec.json").read_text())
        assert meta["origin"].startswith(("best trial " if not extra else "trial ") + trial_id)
        row = csv[csv["trial_id"] == trial_id].iloc[0]
        assert meta["id"] == row["spec_id"]
        settings = meta["detector"]  # the study's (tests/_tune_helpers.FINETUNE), not export's defaults
        assert settings["fpn_channels"] == 16 and settings["image_size"] == [128, 128]
        assert settings == json.loads((run_dir / row["weights"] / "spec.json").read_text())["detector"]
        assert json.loads(proc.stdout)["report"]["weights"] == "all layers from model.safetensors"
        trained, _ = load_run_model(run_dir / row["weights"])
        exported = build_detector(tmp_path / out / "spec.json")
        want, got = _detections(trained, image), _detections(exported, image)
        assert len(want["boxes"]) > 0
        assert torch.allclose(got["boxes"], want["boxes"], atol=1e-4)
        assert torch.allclose(got["scores"], want["scores"], atol=1e-6)
        assert torch.equal(got["labels"], want["labels"])


def test_failing_trial_is_recorded_and_study_completes(ray_session, synthetic_data, tmp_path, capfd):
    study = load_study(write_study(tmp_path, synthetic_data, "fail", finetune=False))
    paper_id = next(s.id for role, s in study.reference_specs() if role == "paper")

    def flaky_trial(config, study):
        from bhsearch.tune.trial import run_trial

        if config["spec_id"] == paper_id:
            raise RuntimeError("injected failure for this candidate")
        run_trial(config, study)

    capfd.readouterr()
    outcome = run_study(study, verbose=0, trial_fn=flaky_trial)
    err = capfd.readouterr().err
    df = outcome.table
    assert len(df) == 3
    failed = df[df["spec_id"] == paper_id].iloc[0]
    assert failed["status"] == "error" and "injected failure" in failed["error"]
    ok = df[df["spec_id"] != paper_id]
    assert (ok["status"] == "completed").all() and ok["error"].isna().all()
    assert failed["rank"] == 3  # failed trials rank last
    # the failure is one line on stderr (Tune's logged traceback is off), naming the error and error.txt
    error_file = outcome.run_dir / f"trial_{failed['trial_id']}" / "error.txt"
    assert [ln for ln in err.splitlines() if "injected failure" in ln] == [
        f"trial {failed['trial_id']} failed ({short_arch(paper_id)}): RuntimeError: injected failure for this "
        f"candidate; see {error_file}"
    ], err
    assert "Traceback" not in err and "Trials did not complete" not in err and error_file.is_file()
    assert json.loads((outcome.run_dir / "best_spec.json").read_text())["id"] != paper_id
    # a proxy-only study fine-tunes nothing: exporting it is one line, not random weights
    assert df["weights"].isna().all() and pd.isna(failed["latency_ms"])
    best = _export(str(outcome.run_dir), "--to", "torchvision", "--out", "x", cwd=tmp_path)
    assert best.returncode == 2 and "Traceback" not in best.stderr and not (tmp_path / "x").exists()
    line = best.stderr.strip()
    assert "\n" not in line and f"best trial {df.iloc[0]['trial_id']} (completed) has no fine-tuned weights" in line
    with pytest.raises(UsageError, match=rf"trial {failed['trial_id']} \(error\) has no fine-tuned weights"):
        export(outcome.run_dir, "torchvision", tmp_path / "y", trial=failed["trial_id"])
    with pytest.raises(UsageError, match=r"no trial 'nope' in this study \(trials: "):
        export(outcome.run_dir, "torchvision", tmp_path / "y", trial="nope")


def _ray_processes(temp_dir: str) -> list[int]:
    """Processes whose command line names ``temp_dir`` (the session folder of the Ray a driver started)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
    return pids


def test_resume_after_kill_loses_and_repeats_nothing(synthetic_data, tmp_path):
    pretrain = {"data": synthetic_data.cifar100_ref, **PRETRAIN, "epochs": 8}  # the 2nd trial outlives the poll (with 3 it sometimes finished first)
    path = write_study(
        tmp_path,
        synthetic_data,
        "killed",
        finetune=False,
        search={"max_concurrent": 1, "num_samples": 2},
        stages={"pretrain": pretrain},
    )
    run_dir = tmp_path / "runs" / "killed"
    ray_tmp = tempfile.mkdtemp(prefix="bhs", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    cmd = [sys.executable, "-m", "bhsearch", "tune", str(path), "--quiet"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**_env(), "RAY_TMPDIR": ray_tmp},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            rows = _trial_rows(run_dir)
            finished = [t for t, r in rows.items() if r and r[-1]["epochs_done"] == r[-1]["max_epochs"]]
            if finished and len(list(run_dir.glob("trial_*/params.json"))) >= 2:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.3)
        else:
            pytest.fail("no trial finished in time")
        assert _ray_processes(ray_tmp), "the study's Ray should run under RAY_TMPDIR"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the local Ray (gcs_server, raylet, workers, agents) shares the driver's fate: none survives it
        deadline = time.time() + 20
        while _ray_processes(ray_tmp) and time.time() < deadline:
            time.sleep(0.5)
        assert _ray_processes(ray_tmp) == []
    finally:
        _kill_session(proc.pid)
    before = _trial_rows(run_dir)
    finished = {t: r for t, r in before.items() if r and r[-1]["epochs_done"] == r[-1]["max_epochs"]}
    assert len(finished) == 1  # killed mid-study: one trial finished, the other not

    resumed = subprocess.run(
        [*cmd, "--resume", "--json"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["trials"] == 2
    after = _trial_rows(run_dir)
    for trial, rows in finished.items():
        assert after[trial] == rows  # a finished trial was neither lost nor run again
    df = pd.read_csv(run_dir / "results.csv")
    assert len(df) == 2 and df["spec_id"].is_unique
    assert (df["status"] == "completed").all(), df[["spec_id", "status", "error"]]
    for rows in after.values():
        epochs = [r["epochs_done"] for r in rows]
        assert epochs == sorted(set(epochs))  # no epoch reported twice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_session(pid: int) -> None:
    """SIGKILL what is left of the process session we started (Ray helpers of a killed driver)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        child, sid = (int(v) for v in line.split())
        if sid == pid and child != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


@pytest.mark.slow  # two Ray start-ups (head + driver): ~100 s on a busy 2-core machine
def test_study_on_a_local_cluster_through_address(synthetic_data, tmp_path):
    port = _free_port()
    with open(tmp_path / "head.log", "w") as log:
        head = subprocess.Popen(
            [
                sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--include-dashboard=false",
                "--object-store-memory=100000000",
            ],
            cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.time() + 180
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        node_ip = re.search(r"Local node IP: (\S+)", (tmp_path / "head.log").read_text())[1]
        path = write_study(tmp_path, synthetic_data, "cluster", finetune=False, search={"num_samples": 2})
        proc = subprocess.run(
            [sys.executable, "-m", "bhsearch", "tune", str(path), "--address", f"127.0.0.1:{port}", "--json"],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:] + (tmp_path / "head.log").read_text()[-2000:]
        info = json.loads(proc.stdout)
        assert info["trials"] == 2 and info["counts"] == {"completed": 2}
        nodes = {r["node_ip"] for rows in _trial_rows(tmp_path / "runs" / "cluster").values() for r in rows}
        assert nodes == {node_ip}
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        _kill_session(head.pid)

"""One Ray Tune trial: proxy pre-train → detector fine-tune → TinyPerson (or WiderFace) evaluation.

Which trainer runs a stage follows from its data kind (``bhsearch.tune.study.STAGE_TRAINERS``): CIFAR-100 /
ImageNet32 pre-training, TinyPerson fine-tuning (``run_finetune``) or WiderFace face-detector fine-tuning
(``run_finetune_widerface``); all share the same report, checkpoint and resume mechanics.

The trial reports to Tune after every epoch of every stage (``training_iteration`` counts
trial-epochs across stages, which is ASHA's time axis) with a checkpoint of its working
folder, so ASHA can stop weak candidates early and an interrupted trial resumes from its
last epoch. The newest checkpoint's ``finetune/`` folder (``model.safetensors`` + ``spec.json``) holds the
trial's fine-tuned detector as of its last epoch; ``bhsearch export RUN_DIR [--trial ID]`` exports it
(``bhsearch.tune.state.trial_weights``). A trial times nothing: latency is measured by the driver after
all trials (``bhsearch.tune.latency``).

Fidelity-aware score
--------------------
Every report carries ``score = value - 1000 * (max_epochs - epochs_done)`` where ``value`` is
the stage's metric in percent (proxy ``top1`` while pre-training, the study's detection metric,
``AP50_tiny`` or ``AP_hard`` by default, while fine-tuning) and ``max_epochs`` the trial-epochs of a full trial.
At the final epoch ``score`` *is* the target metric. Why this shape:

* ASHA only compares trials at the same ``training_iteration``, where every trial carries the
  same offset, so its decisions are exactly those it would make on the raw metric.
* OptunaSearch tells Optuna the *last* reported score of a trial, also for trials that ASHA
  stopped. A raw low-fidelity value (e.g. a proxy top-1 of 40 %) would look better than a
  finished trial's AP of 10 % and mislead TPE. With the offset a trial stopped after ``k``
  epochs scores in ``[-1000 (max-k), -1000 (max-k) + 100]``: below every trial that went
  further, ordered by its partial result within its fidelity. That matches ASHA's own verdict
  (the trial lost a rung), so Optuna learns "worse than the survivors" instead of a number on
  another scale.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Score penalty per trial-epoch not run (metrics are percentages in [0, 100], so levels never touch).
FIDELITY_STEP = 1000.0
STATE_FILE = "trial_state.json"


def fidelity_score(value: float | None, epochs_done: int, max_epochs: int) -> float:
    """The score reported after ``epochs_done`` of ``max_epochs`` trial-epochs (module docstring)."""
    value = 0.0 if value is None or value != value else float(value)
    return value - FIDELITY_STEP * (max_epochs - epochs_done)


def _read_state(work: Path) -> dict[str, Any]:
    path = work / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(work: Path, state: dict[str, Any]) -> None:
    from bhsearch.fileio import atomic_write_json

    atomic_write_json(work / STATE_FILE, state, indent=1)


def _restore_work(
    work: Path, checkpoint: Any = None, run_dir: str | Path | None = None, key: str | None = None
) -> bool:
    """Copy this trial's last checkpoint into ``work``; True when there was one.

    Tune's own checkpoint of the trial (``checkpoint``: ``tune.get_checkpoint()``) comes first; else, in a resumed
    study, the checkpoint an interrupted trial of the same spec left (``bhsearch.tune.state.resume_checkpoint``: a
    folder inside the run folder, named in ``resume_checkpoints.json``). Only ``trial_state.json`` (JSON) and the
    trainers' weights-only checkpoints are read from it.
    """
    if checkpoint is not None:
        with checkpoint.as_directory() as src:
            shutil.copytree(src, work, dirs_exist_ok=True)
        return (work / STATE_FILE).is_file()
    if run_dir is None or key is None:
        return False
    from bhsearch.tune.state import resume_checkpoint

    src = resume_checkpoint(run_dir, key)
    if src is None:
        return False
    shutil.copytree(src, work, dirs_exist_ok=True)
    if _read_state(work).get("spec_id") != key:  # not this trial's (spec id, #rK for a repeat): start afresh
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        return False
    return True


def work_root(run_dir: str | Path) -> Path:
    """Node-local scratch root of one study's trials (``$BHSEARCH_TRIAL_WORK``, default under the
    temp dir), keyed by the run folder so studies of the same name never share it."""
    import hashlib
    import tempfile

    run_dir = Path(run_dir)
    key = hashlib.sha1(str(run_dir).encode()).hexdigest()[:10]
    root = Path(os.environ.get("BHSEARCH_TRIAL_WORK", Path(tempfile.gettempdir()) / "bhsearch-trials"))
    return root / f"{run_dir.name}-{key}"


def trial_work_dir(run_dir: str | Path, trial_id: str) -> Path:
    """A node-local scratch folder for the trial's training runs, outside Tune's synced trial folder
    (Tune uploads the trial folder in the background, which would race with checkpoint writes);
    what must survive is reported as a Tune checkpoint. Emptied on every (re)start."""
    work = work_root(run_dir) / trial_id
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def stage_trainer(study: Any, stage: str, device: str | None = None, repeat: int = 0) -> tuple[Any, Any]:
    """``(run function, config)`` that train ``stage`` of ``study`` on its data (``STAGE_TRAINERS``); the config is
    validated as when the study was loaded (``bhsearch.tune.study.stage_config``). A seed repeat ``repeat`` > 0
    offsets the stage's seed by ``repeat``."""
    import importlib

    from bhsearch.tune.study import stage_config

    module_name, _, run_name = study.stage_trainer(stage)
    module = importlib.import_module(module_name)
    extra: dict[str, Any] = {"progress": "off"}
    options = getattr(study.stages, stage).options
    if device and "device" not in options:
        extra["device"] = device
    if repeat:
        extra["seed"] = int(options.get("seed", 0)) + repeat
    return getattr(module, run_name), stage_config(study, stage, extra)


def _result(state: dict[str, Any], spec_id: str, max_epochs: int, target: str) -> dict[str, Any]:
    """The row reported to Tune after an epoch, from the trial's state."""
    value = state.get("value", state["metrics"].get(target))
    return {
        **{k: v for k, v in state["metrics"].items() if v is not None},
        "score": fidelity_score(value, state["epochs_done"], max_epochs),
        "stage": state.get("stage"),
        "stage_epoch": state.get("stage_epoch"),
        "epochs_done": state["epochs_done"],
        "max_epochs": max_epochs,
        "spec_id": spec_id,
        "repeat": state.get("repeat", 0),
        "attempt": state.get("attempts", 1),
        "train_time_s": state.get("train_time_s"),
    }


def run_trial(config: dict[str, Any], study: dict[str, Any]) -> None:
    """Ray Tune function trainable: train ``config["spec_id"]`` through the study's stages; with
    ``resources.workers > 1`` data-parallel on that many Ray Train workers (``bhsearch.tune.ray_train``)."""
    from ray import tune

    from bhsearch.tune.noise import config_key
    from bhsearch.tune.study import Study

    study_obj = Study.model_validate(study)
    context = tune.get_context()
    run_dir = context.get_storage().experiment_fs_path
    if study_obj.resources.workers > 1:
        from bhsearch.tune.ray_train import run_data_parallel

        run_data_parallel(config, study, context, tune.get_checkpoint())
        return
    work = trial_work_dir(run_dir, context.get_trial_id())
    restored = _restore_work(work, tune.get_checkpoint(), run_dir, config_key(config))

    import torch

    resources = context.get_trial_resources().required_resources if hasattr(context, "get_trial_resources") else {}
    torch.set_num_threads(max(1, int(resources.get("CPU", study_obj.resources.cpu))))
    device = "cuda" if resources.get("GPU", 0) > 0 and torch.cuda.is_available() else "cpu"

    def send(result: dict[str, Any]) -> None:
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(work)))

    train_stages(study_obj, config, work, restored, device, send)


def train_stages(
    study_obj: Any, config: dict[str, Any], work: Path, restored: bool, device: str, send: Callable[[dict], None]
) -> None:
    """Train the trial's stages in ``work`` (restored from its checkpoint when ``restored``), calling
    ``send(result)`` after every epoch once ``work`` holds the epoch's checkpoint; ``work`` is removed at the end.

    In a data-parallel trial every process calls this with the same ``work`` (one node): rank 0 writes the
    trial's state, and every process sends (``send`` attaches rank 0's checkpoint).
    """
    from bhsearch.spec import get_spec
    from bhsearch.train import distributed
    from bhsearch.tune.noise import REPEAT_KEY, config_key

    spec = get_spec(config["spec_id"])
    repeat, key = int(config.get(REPEAT_KEY) or 0), config_key(config)
    state = _read_state(work) if restored else {}
    max_epochs, target = study_obj.max_epochs, study_obj.target_metric
    if state.get("complete"):  # finished before an interruption: report its result once, train nothing
        # with the checkpoint it finished with, so this trial's folder holds its fine-tuned weights too
        send(_result(state, spec.id, max_epochs, target))
        _remove_work(work)
        return
    state.setdefault("spec_id", key)
    state["repeat"] = repeat
    state.setdefault("epochs_done", 0)
    state.setdefault("metrics", {})
    state.setdefault("stages_done", [])
    state["attempts"] = state.get("attempts", 0) + 1
    t_start = time.perf_counter() - state.get("train_time_s", 0.0)

    def report(stage: str, epoch: int, metrics: dict[str, Any], out_dir: Path) -> None:
        state["epochs_done"] += 1
        state["stage"], state["stage_epoch"] = stage, epoch
        kept = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if stage == "pretrain":
            state["metrics"].update({k: kept[k] for k in ("top1", "top5") if k in kept})
            state["metrics"]["pretrain_loss"] = kept.get("loss")
            value = state["metrics"].get(target if target in ("top1", "top5") else "top1")
        else:
            state["metrics"].update({k: v for k, v in kept.items() if k.startswith(("AP", "MR"))})
            state["metrics"]["finetune_loss"] = kept.get("loss")
            value = state["metrics"].get(target)
        last_epoch_of_stage = epoch >= getattr(study_obj.stages, stage).epochs
        if last_epoch_of_stage and stage not in state["stages_done"]:
            state["stages_done"].append(stage)
        state["complete"] = state["epochs_done"] >= max_epochs
        state["train_time_s"] = time.perf_counter() - t_start
        state["value"] = value
        if distributed.is_main():
            _write_state(work, state)
        send(_result(state, spec.id, max_epochs, target))

    pre_dir = work / "pretrain"
    for name in ("pretrain", "finetune"):
        stage = getattr(study_obj.stages, name)
        if stage is None or name in state["stages_done"]:
            continue
        run, stage_config = stage_trainer(study_obj, name, device, repeat)
        out_dir = work / name
        extra = {}
        if name == "finetune":
            extra["init"] = pre_dir / "backbone.safetensors" if study_obj.stages.pretrain is not None else None
        run(
            spec,
            stage.data,
            stage_config,
            out_dir,
            resume=restored and (out_dir / "checkpoint.pt").is_file(),
            callback=report,
            **extra,
        )
    _remove_work(work)  # everything worth keeping is in Tune's checkpoint


def _remove_work(work: Path) -> None:
    """Remove the trial's scratch folder (rank 0, once every process is done with it)."""
    from bhsearch.train import distributed

    distributed.barrier()
    if distributed.is_main():
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["FIDELITY_STEP", "fidelity_score", "run_trial", "stage_trainer", "train_stages", "work_root"]

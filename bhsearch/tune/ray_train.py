"""Data-parallel trials: a Tune trial that trains on ``resources.workers`` processes through Ray Train.

Ray Train V2 (the default since Ray 2.5x) no longer takes a Trainer as a Tune trainable; a Tune function trainable
starts a ``TorchTrainer`` itself (Ray's "Tune + Train" pattern). So with ``workers > 1``
:func:`bhsearch.tune.trial.run_trial` becomes the trial's *driver* (:func:`run_data_parallel`): it asks Tune for
next to nothing (``DRIVER_RESOURCES``) and starts a ``TorchTrainer`` with ``ScalingConfig(num_workers=N,
use_gpu=gpu > 0, resources_per_worker={CPU: cpu, GPU: gpu}, placement_strategy="STRICT_PACK")``. Ray Train
creates the torch process group (gloo on CPU, nccl on CUDA) and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, which
``bhsearch.train.distributed.setup`` takes as it is, so the trainers run exactly their torchrun code path
(global-batch slicing, loss weighting, rank-0 outputs).

Every worker runs :func:`bhsearch.tune.trial.train_stages` in the same node-local work folder (the workers of a
trial are packed onto one node) and calls ``ray.train.report`` after every epoch, rank 0 with the work folder as
its checkpoint (Ray Train uploads it to ``TRAIN_DIR`` inside the trial's folder before the call returns). A
Ray Train callback (:func:`forward_reports`, in Train's controller) hands rank 0's metrics and that checkpoint
to the driver through a Ray queue; the driver reports them to Tune with ``tune.report(..., checkpoint=...)``
(Tune copies it to the trial's ``checkpoint_*`` folder) and deletes Train's copy. So Tune, ASHA, the
pickle-free resume (``bhsearch.tune.state``) and the results see a data-parallel trial like any other.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

#: What the driver of a data-parallel trial asks of Tune: Tune needs a non-empty bundle, and one byte of memory
#: is nothing another trial could miss; the workers hold the trial's CPUs and GPUs (Ray Train's own placement).
DRIVER_RESOURCES = {"cpu": 0, "gpu": 0, "memory": 1}
#: Ray Train's storage (its uploaded checkpoints) inside the trial's folder; emptied as Tune takes them over.
TRAIN_DIR = "ray-train"
_POLL_S = 0.5


def worker_resources(study: Any) -> dict[str, float]:
    """``resources_per_worker`` of the study's Ray Train workers."""
    resources = {"CPU": float(study.resources.cpu)}
    if study.resources.gpu > 0:
        resources["GPU"] = float(study.resources.gpu)
    return resources


def run_data_parallel(config: dict[str, Any], study: dict[str, Any], context: Any, checkpoint: Any) -> None:
    """Drive one data-parallel trial (module docstring): train on Ray Train workers, forward every epoch's
    report and checkpoint to Tune. ``checkpoint``: Tune's last checkpoint of the trial (None when new)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    from bhsearch.train.distributed import _timeout_s
    from bhsearch.tune.study import Study

    study_obj = Study.model_validate(study)
    storage = context.get_storage()
    fs, trial_path = storage.storage_filesystem, storage.trial_fs_path
    train_path = f"{trial_path}/{TRAIN_DIR}"
    _delete(fs, train_path)  # never let Ray Train restore a run of an earlier attempt
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    loop_config = {
        "config": config,
        "study": study,
        "run_dir": storage.experiment_fs_path,
        "trial_id": context.get_trial_id(),
        "checkpoint": checkpoint,
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(timeout_s=int(_timeout_s())),
        scaling_config=ray.train.ScalingConfig(
            num_workers=study_obj.resources.workers,
            use_gpu=study_obj.resources.gpu > 0,
            resources_per_worker=worker_resources(study_obj),
            placement_strategy="STRICT_PACK",
        ),
        run_config=ray.train.RunConfig(
            name=TRAIN_DIR,
            storage_path=trial_path,
            storage_filesystem=fs,
            callbacks=[forward_reports(queue)],
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )
    outcome: dict[str, BaseException] = {}
    thread = threading.Thread(target=_fit, args=(trainer, outcome), name="bhsearch-ray-train", daemon=True)
    thread.start()
    while thread.is_alive() or not queue.empty():
        try:
            metrics, persisted = queue.get(timeout=_POLL_S)
        except Empty:
            continue
        tune.report(metrics, checkpoint=tune.Checkpoint(persisted.path, persisted.filesystem) if persisted else None)
        if persisted is not None:
            _delete(persisted.filesystem, persisted.path)  # Tune holds its own copy now
    thread.join()
    _delete(fs, train_path)
    if "error" in outcome:
        raise outcome["error"]


def _fit(trainer: Any, outcome: dict[str, BaseException]) -> None:
    try:
        trainer.fit()
    except BaseException as exc:  # noqa: BLE001 - re-raised by the driver
        outcome["error"] = _worker_error(exc)


def _worker_error(exc: BaseException) -> BaseException:
    """The first (lowest-rank) worker's own exception of a failed Ray Train run, else ``exc``: the trial's
    error then reads as in a single-process trial."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        first = failures[min(failures)]
        return getattr(first, "_base_exc", None) or first  # Ray Train wraps it with its traceback text
    return exc


def _delete(fs: Any, path: str) -> None:
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


def forward_reports(queue: Any) -> Any:
    """A Ray Train callback (it runs in Train's controller) that puts rank 0's metrics and the uploaded checkpoint
    of every report on the driver's ``queue``; a full queue holds the controller until the driver took the last."""
    from ray.train.v2.api.callback import UserCallback

    class ForwardReports(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            queue.put((dict(metrics[0]), checkpoint))

    return ForwardReports()


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial: rank 0 restores the work folder, every rank trains it."""
    import ray.train
    import torch

    from bhsearch.train import distributed
    from bhsearch.tune.noise import config_key
    from bhsearch.tune.runner import drop_exit_noise
    from bhsearch.tune.study import Study
    from bhsearch.tune.trial import _restore_work, train_stages, trial_work_dir, work_root

    sys.unraisablehook = drop_exit_noise(sys.unraisablehook)  # Ray's SIGTERM at shutdown: no stray traceback
    study_obj = Study.model_validate(loop_config["study"])
    config, run_dir, trial_id = loop_config["config"], loop_config["run_dir"], loop_config["trial_id"]
    work = work_root(run_dir) / trial_id
    restored = False
    if distributed.is_main():
        trial_work_dir(run_dir, trial_id)
        restored = _restore_work(work, loop_config["checkpoint"], run_dir, config_key(config))
    restored = distributed.broadcast_object(restored)  # the others wait until the folder is ready
    torch.set_num_threads(max(1, int(study_obj.resources.cpu)))
    device = "cuda" if study_obj.resources.gpu > 0 and torch.cuda.is_available() else "cpu"

    def send(result: dict[str, Any]) -> None:
        main = distributed.is_main()
        checkpoint = ray.train.Checkpoint.from_directory(str(work)) if main else None
        ray.train.report(result, checkpoint=checkpoint, delete_local_checkpoint_after_upload=False)

    train_stages(study_obj, config, Path(work), restored, device, send)


__all__ = ["DRIVER_RESOURCES", "TRAIN_DIR", "forward_reports", "run_data_parallel", "train_worker", "worker_resources"]

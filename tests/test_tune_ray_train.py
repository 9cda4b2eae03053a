"""Data-parallel study trials (``resources.workers``): validation, preflight and a 2-worker gloo trial on CPU.

The trial test pre-trains a 1/16-width ResNet-50 with GroupNorm on 384 synthetic CIFAR-100 images for 2 epochs,
once as a plain trial (batch 64) and once on 2 Ray Train workers (batch 32 each, the same global batch 64), and
asserts the same agreement as tests/test_train_ddp.py (1e-5 relative: the same function up to the order of
floating-point sums).
"""

from __future__ import annotations

import json

import pytest
from _tune_helpers import PRETRAIN, write_study

from bhsearch.errors import UsageError
from bhsearch.tune.study import load_study

TOL = 1e-5  # relative; as tests/test_train_ddp.py (measured there: 6e-8 in the loss, identical metrics)
#: test_train_ddp.py's run: 384 images, 6 steps per epoch (with 128 images, 2 steps, torchrun's 2 x 32 and 1 x 64
#: already differ by 5e-6 in the first epoch's loss and 0.2 % in the second's; a Ray Train trial matches torchrun)
SETTINGS = {"epochs": 2, "norm": "gn", "max_train_samples": 384, "max_eval_samples": 128}


def _study(tmp_path, data, name: str, *, workers: int = 1, batch_size: int = 64, **resources):
    return write_study(
        tmp_path,
        data,
        name,
        finetune=False,
        search={"num_samples": 1, "references": ["resnet50"]},
        stages={"pretrain": {"data": data.cifar100_ref, **PRETRAIN, **SETTINGS, "batch_size": batch_size}},
        resources={"workers": workers, "cpu": 1, **resources},
        latency={"enabled": False},
    )


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        (0, "greater than or equal to 1"),
        (-2, "greater than or equal to 1"),
        (True, "must be a number"),
        (1.5, "integer"),
    ],
)
def test_workers_must_be_a_positive_integer(tmp_path, synthetic_data, workers, message):
    with pytest.raises(UsageError, match=rf"resources\W+workers.*{message}"):
        load_study(_study(tmp_path, synthetic_data, "w", workers=workers))


def test_workers_default_to_one_and_gpu_or_sync_bn_rules(tmp_path, synthetic_data):
    study = load_study(write_study(tmp_path, synthetic_data, "default"))
    assert study.resources.workers == 1
    with pytest.raises(UsageError, match="whole GPUs"):
        load_study(_study(tmp_path, synthetic_data, "frac", workers=2, gpu=0.5))
    path = _study(tmp_path, synthetic_data, "sbn", workers=2)
    text = path.read_text().replace("norm: gn", "norm: bn\n    sync_bn: true")
    path.write_text(text)
    with pytest.raises(UsageError, match="sync_bn needs CUDA"):
        load_study(path)
    load_study(path.write_text(text.replace("workers: 2", "workers: 1")) and path)  # one process: sync_bn is moot


def test_preflight_refuses_more_worker_cpus_than_the_cluster_has(ray_session, tmp_path, synthetic_data):
    from bhsearch.tune.runner import check_resources, run_study, trial_concurrency

    study = load_study(_study(tmp_path, synthetic_data, "big", workers=3))
    with pytest.raises(UsageError) as info:
        run_study(study)
    assert (
        str(info.value) == ("resources.cpu: trials ask for 3 workers x 1 = 3 CPUs but the Ray cluster has 2")
        and info.value.exit_code == 2
    )
    assert not study.absolute().run_dir.exists()  # refused before anything was written
    fits = load_study(_study(tmp_path, synthetic_data, "fits", workers=2))
    check_resources(fits)
    assert trial_concurrency(fits) == 1  # 2 CPUs hold one trial of 2 x 1 CPU
    assert trial_concurrency(load_study(_study(tmp_path, synthetic_data, "one", workers=1))) is None


def test_driver_asks_tune_for_next_to_nothing(tmp_path, synthetic_data):
    from bhsearch.tune.ray_train import DRIVER_RESOURCES, worker_resources
    from bhsearch.tune.runner import make_trainable

    study = load_study(_study(tmp_path, synthetic_data, "drv", workers=2, gpu=1))
    bundles = make_trainable(study)._resources.bundles
    assert bundles == [{"memory": 1.0}] and DRIVER_RESOURCES["cpu"] == 0
    assert worker_resources(study) == {"CPU": 1.0, "GPU": 1.0}


def _rows(run_dir):
    """The reports of a study's only trial, in order."""
    (path,) = run_dir.glob("trial_*/result.json")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_worker_trial_matches_one_worker_trial_with_the_same_global_batch(ray_session, tmp_path, synthetic_data):
    from bhsearch.tune.runner import run_study
    from bhsearch.tune.state import latest_checkpoint

    one = run_study(load_study(_study(tmp_path, synthetic_data, "one")))
    two = run_study(load_study(_study(tmp_path, synthetic_data, "two", workers=2, batch_size=32)))
    assert list(one.table["status"]) == list(two.table["status"]) == ["completed"], list(two.table["error"])
    rows_one, rows_two = _rows(one.run_dir), _rows(two.run_dir)
    assert [r["epochs_done"] for r in rows_one] == [r["epochs_done"] for r in rows_two] == [1, 2]
    for a, b in zip(rows_one, rows_two, strict=True):  # every epoch's report
        for key in ("top1", "top5", "pretrain_loss", "score"):
            assert abs(a[key] - b[key]) <= TOL * max(abs(a[key]), abs(b[key]), 1e-12), (key, a[key], b[key])
    assert two.table["top1"].iloc[0] == rows_two[-1]["top1"]
    (trial,) = two.run_dir.glob("trial_*")
    assert not (trial / "ray-train").exists()  # Ray Train's uploads were handed over to Tune and removed
    ckpt = latest_checkpoint(trial)
    state = json.loads((ckpt / "trial_state.json").read_text())
    assert state["complete"] and state["epochs_done"] == 2
    from bhsearch.train import loop

    saved = loop.load_checkpoint(ckpt / "pretrain" / "checkpoint.pt")
    assert saved["world_size"] == 2 and len(saved["rng_ranks"]) == 2  # it really trained on 2 processes


def test_callback_forwards_rank_zero_metrics_and_the_checkpoint_and_worker_errors_unwrap():
    from bhsearch.tune.ray_train import _worker_error, forward_reports

    box = []
    queue = type("Q", (), {"put": lambda self, item: box.append(item)})()
    forward_reports(queue).after_report(None, [{"score": 1.0, "rank": 0}, {"score": 1.0, "rank": 1}], "ckpt")
    assert box == [({"score": 1.0, "rank": 0}, "ckpt")]
    failed = type("WorkerGroupError", (Exception,), {})("2 workers failed")
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback as Wrapped

    failed.worker_failures = {1: Wrapped(ValueError("rank 1"), "tb"), 0: Wrapped(UsageError("rank 0: bad"), "tb")}
    assert isinstance(_worker_error(failed), UsageError) and str(_worker_error(failed)) == "rank 0: bad"
    other = RuntimeError("controller died")
    assert _worker_error(other) is other

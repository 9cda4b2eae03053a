"""Data-parallel training: torchrun with 2 CPU processes (gloo) against one process with the same global batch.

Parity (``PARITY``): a ResNet-50 at 1/4 width, GroupNorm (no batch statistics), 2 steps on 128 synthetic
CIFAR-100 images: one process with batch 64 against 2 processes with batch 32 each compute the same function
up to the order of floating-point sums. Measured 2026-12-06: weights 7.6e-6 apart (relative, whole model;
6e-5 for the worst weight tensor), training loss 1e-7, evaluation loss 8e-6 — the same size as one process
at 1 against 2 threads (1e-5 / 7e-5). Each step moves the weights ~1 % (parameter norm 67.2 -> 68.0),
so a gradient not averaged over the processes would show far above these tolerances.
Parity is checked over 2 steps of a 1/4-width net because a 1/16-width net on 32-px images is
ill-conditioned: its float32 gradients are 0.7 % from float64 at initialisation and 12 steps at lr 0.05
take two summation orders 3 % apart (one process at 1 and 2 threads as much as 2 against 1 processes).

The other fast tests (``SETTINGS``: 1/16 width, 2 epochs, 12 steps) check the run folder, the checkpoint
and resume. With BatchNorm each process normalises its 32 images with their own statistics, a different
(noisier) model than BN over 64, so only a loose agreement is expected (slow test). Each fast test here
takes 15-50 s (torchrun starts plus training on 2 cores).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bhsearch.errors import UsageError
from bhsearch.train import distributed, loop
from bhsearch.train.finetune import hflip_batch
from bhsearch.train.pretrain import PretrainConfig, augment_batch, run_pretrain

ROOT = Path(__file__).resolve().parents[1]
TIME_KEYS = ("train_images_per_s", "epoch_time_s")
SETTINGS = dict(
    epochs=2,
    lr=0.05,
    width_mult=0.0625,
    norm="gn",
    progress="off",
    num_threads=1,
    seed=0,
    max_train_samples=384,
    max_eval_samples=128,
)
PARITY = {**SETTINGS, "epochs": 1, "width_mult": 0.25, "max_train_samples": 128, "max_eval_samples": 64}
# relative, per epoch: measured 1.5 % (fine-tuning, per-process RPN/ROI sampling) and 0.45 % (BatchNorm)
FINETUNE_LOSS_TOL = 0.1
BN_LOSS_TOL = 0.02
TORCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """The torchrun command line of this interpreter (``torch.distributed.run``)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def cli_pretrain(out: Path, data: str, settings: dict, *extra: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m bhsearch pretrain ...`` with ``settings`` in a --config file."""
    cfg = out.parent / f"{out.name}.json"
    cfg.write_text(json.dumps(settings))
    cmd = torchrun("-m", "bhsearch", "pretrain", "--spec", "resnet50", "--data", data, "--out", str(out))
    proc = subprocess.run([*cmd, "--config", str(cfg), *extra], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def strip(history):
    return [{k: v for k, v in row.items() if k not in TIME_KEYS} for row in history]


def max_rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.fixture(scope="module")
def gn_runs(synthetic_data, tmp_path_factory):
    """A 2-process GroupNorm run with ``SETTINGS`` (batch 32 each): its out folder, history and process."""
    root = tmp_path_factory.mktemp("ddp-gn")
    t0 = time.perf_counter()
    proc = cli_pretrain(root / "two", synthetic_data.cifar100_ref, {**SETTINGS, "batch_size": 32})
    wall = time.perf_counter() - t0
    two = loop.read_metrics(root / "two" / "metrics.jsonl")
    return {"two": (root / "two", two), "proc": proc, "wall_s": wall}


def weight_distance(a: Path, b: Path) -> tuple[float, float]:
    """(whole-model, worst weight tensor) relative L2 distance between two ``backbone.safetensors``."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "backbone.safetensors")), load_file(str(b / "backbone.safetensors"))
    assert wa.keys() == wb.keys()
    diff = sum(float((wa[k] - wb[k]).double().pow(2).sum()) for k in wa) ** 0.5
    whole = diff / sum(float(wa[k].double().pow(2).sum()) for k in wa) ** 0.5
    worst = max(float((wa[k] - wb[k]).norm() / wa[k].norm()) for k in wa if wa[k].dim() > 1)
    return whole, worst


def test_two_processes_match_one_process_with_the_same_global_batch(synthetic_data, tmp_path):
    data = synthetic_data.cifar100_ref
    one = run_pretrain("resnet50", data, PretrainConfig(**PARITY, batch_size=64), tmp_path / "one")["history"]
    cli_pretrain(tmp_path / "two", data, {**PARITY, "batch_size": 32})
    two = loop.read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 1
    for key in ("loss", "eval_loss", "lr"):
        assert max_rel(one[0][key], two[0][key]) < 1e-4, (key, one[0][key], two[0][key])  # measured 8e-6
    for key in ("top1", "top5"):  # a near-tied logit may flip: at most one of the 64 evaluation images
        assert abs(one[0][key] - two[0][key]) <= 100 / 64 + 1e-9, (key, one[0][key], two[0][key])
    whole, worst = weight_distance(tmp_path / "one", tmp_path / "two")
    assert whole < 1e-4 and worst < 1e-3, (whole, worst)  # measured 7.6e-6 and 6e-5


def test_rank_zero_writes_the_run_and_the_checkpoint_holds_every_rank(gn_runs):
    out, two = gn_runs["two"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["backbone.safetensors", "checkpoint.pt", "metrics.jsonl", "spec.json"]  # no temporaries left
    ckpt = loop.load_checkpoint(out / "checkpoint.pt")  # weights_only=True
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert ckpt["config"]["batch_size"] == 32 and ckpt["loop"]["epoch"] == 2 and ckpt["loop"]["step"] == 12
    # per-rank seeds: the two processes' global torch RNGs differ
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])
    assert strip(ckpt["loop"]["history"]) == strip(two)
    # rank 0 alone prints the summary table
    assert gn_runs["proc"].stdout.count("run folder:") == 1


def test_resume_after_kill_9_matches_the_uninterrupted_run(gn_runs, synthetic_data, tmp_path):
    out = tmp_path / "run"
    marker, pids = tmp_path / "stalled", tmp_path / "pids"
    # rank 0 reads 192 images per epoch (6 steps of 32); stall at the 4th batch of epoch 2, after 3 of its steps
    stall_at = 192 + 3 * 32 + 1
    config = {**SETTINGS, "batch_size": 32, "checkpoint_interval_s": 1e-6}  # a checkpoint after every step
    args = dict(
        spec="resnet50",
        data=synthetic_data.cifar100_ref,
        out=str(out),
        config=config,
        stall_at=stall_at,
        marker=str(marker),
        pids=str(pids),
    )
    cmd = torchrun(str(ROOT / "tests" / "ddp_pretrain_worker.py"), json.dumps(args))
    job = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert job.poll() is None, job.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its stall point"
            time.sleep(0.2)
        time.sleep(0.5)  # rank 1 is blocked in the step's all-reduce by now
    finally:
        # kill -9 the whole job: torchrun's agent (its own session) and both workers (sessions of their own)
        workers = [int(p.read_text()) for p in pids.glob("rank*")] if pids.is_dir() else []
        _kill(job.pid, group=True)
        for pid in workers:
            _kill(pid)
        job.wait(timeout=60)
        job.stderr.close()
        for pid in workers:
            _wait_dead(pid)
    assert len(workers) == 2
    saved = loop.load_checkpoint(out / "checkpoint.pt")["loop"]
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 3, 9)
    assert len(loop.read_metrics(out / "metrics.jsonl")) == 1
    # the 2-process checkpoint does not resume on one process
    with pytest.raises(UsageError, match="2 process"):
        run_pretrain(
            "resnet50", synthetic_data.cifar100_ref, PretrainConfig(**SETTINGS, batch_size=32), out, resume=True
        )
    cli_pretrain(out, synthetic_data.cifar100_ref, {**SETTINGS, "batch_size": 32}, "--resume")
    resumed = loop.read_metrics(out / "metrics.jsonl")
    assert strip(resumed) == strip(gn_runs["two"][1])  # exactly: same processes, same sums
    from safetensors.torch import load_file

    a = load_file(str(gn_runs["two"][0] / "backbone.safetensors"))
    b = load_file(str(out / "backbone.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _kill(pid: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)


def _wait_dead(pid: int, timeout: float = 30) -> None:
    """Wait until ``pid`` is gone (or a zombie: killed, not yet reaped by its new parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still runs")


@pytest.mark.slow
def test_batchnorm_two_processes_close_to_one_process(synthetic_data, tmp_path):
    """BN over 32 images per process is not BN over 64: the training losses agree within 2 % (measured
    0.39 % and 0.45 %), not 1e-5. Evaluation uses BN running statistics (rank 0's, from 32-image batches),
    which after 12 steps of a 1/16-width net are far from settled in either run (eval_loss 10 to 330), so
    only the training loss is compared."""
    bn = {**SETTINGS, "norm": "bn"}
    one = run_pretrain("resnet50", synthetic_data.cifar100_ref, PretrainConfig(**bn, batch_size=64), tmp_path / "one")
    cli_pretrain(tmp_path / "two", synthetic_data.cifar100_ref, {**bn, "batch_size": 32})
    two = loop.read_metrics(tmp_path / "two" / "metrics.jsonl")
    for a, b in zip(one["history"], two, strict=True):
        assert max_rel(a["loss"], b["loss"]) < BN_LOSS_TOL, (a["loss"], b["loss"])
        assert math.isfinite(b["eval_loss"]) and 0 <= b["top1"] <= b["top5"] <= 100


# --------------------------------------------------------------------------- in-process pieces


@pytest.mark.parametrize("size,batch,world", [(10, 3, 1), (10, 2, 2), (11, 2, 2), (13, 2, 3), (384, 32, 2), (7, 4, 2)])
def test_sampler_shards_are_disjoint_slices_of_the_one_process_batches(size, batch, world):
    one = loop.EpochBatchSampler(size, batch * world, seed=3)
    one.set_epoch(1)
    full = list(one)
    shards = []
    for r in range(world):
        s = loop.EpochBatchSampler(size, batch, seed=3, rank=r, world=world)
        s.set_epoch(1)
        shards.append(list(s))
        assert s.num_batches == len(shards[-1])
        assert [s.batch_span(b)[1] for b in range(s.num_batches)] == [len(x) for x in full[: s.num_batches]]
    for b in range(len(shards[0])):
        parts = [shards[r][b] for r in range(world)]
        assert all(parts), parts  # every process has data in every step
        assert sum(parts, []) == full[b]  # rank order, contiguous: the one-process batch
    # only a tail smaller than the number of processes is skipped
    skipped = full[len(shards[0]) :]
    assert sum(len(x) for x in skipped) < world
    # resuming mid-epoch skips whole global batches
    s = loop.EpochBatchSampler(size, batch, seed=3, rank=world - 1, world=world)
    s.set_epoch(1, start=1)
    assert list(s) == shards[world - 1][1:]


def test_sampler_refuses_fewer_items_than_processes():
    from bhsearch.errors import DataError

    with pytest.raises(DataError, match="fewer than the 3"):
        loop.EpochBatchSampler(2, 4, seed=0, rank=0, world=3)
    with pytest.raises(UsageError, match="rank 2 of 2"):
        loop.EpochBatchSampler(8, 4, seed=0, rank=2, world=2)


@pytest.mark.parametrize("crop", ["pad", "resize", "none"])
def test_augmenting_a_slice_equals_slicing_the_augmented_batch(crop):
    images = torch.randint(0, 256, (7, 32, 32, 3), dtype=torch.uint8)
    config = PretrainConfig(crop=crop)
    whole = augment_batch(images, config, loop.generator(0, "aug"))
    parts = [
        augment_batch(images[lo:hi], config, loop.generator(0, "aug"), part=(lo, 7)) for lo, hi in ((0, 4), (4, 7))
    ]
    assert torch.allclose(torch.cat(parts), whole, atol=1e-6)
    if crop != "none":  # a slice's draws are its own rows', not the first rows' of the batch
        alone = augment_batch(images[4:7], config, loop.generator(0, "aug"))
        assert not torch.allclose(alone, parts[1], atol=1e-3)


def test_flipping_a_slice_equals_slicing_the_flipped_batch():
    images = [torch.arange(12.0).view(1, 3, 4) + i for i in range(6)]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0]]), "labels": torch.ones(1, dtype=torch.int64)}] * 6
    whole, whole_t = hflip_batch(images, targets, loop.generator(1, "flip"))
    lo, lo_t = hflip_batch(images[:3], targets[:3], loop.generator(1, "flip"), part=(0, 6))
    hi, hi_t = hflip_batch(images[3:], targets[3:], loop.generator(1, "flip"), part=(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(lo + hi, whole, strict=True))
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(lo_t + hi_t, whole_t, strict=True))
    flipped = [not torch.equal(a, b) for a, b in zip(whole, images, strict=True)]
    assert any(flipped) and not all(flipped)


def test_setup_without_torchrun_is_one_process(monkeypatch):
    for key in TORCH_ENV:
        monkeypatch.delenv(key, raising=False)
    assert distributed.setup("cpu") == torch.device("cpu")
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard(7, 0, 2) == (0, 4) and distributed.shard(7, 1, 2) == (4, 3)


def test_sync_bn_on_cpu_processes_is_refused_before_joining(monkeypatch):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UsageError, match="sync_bn needs CUDA"):
        distributed.setup("cpu", sync_bn=True)
    with pytest.raises(UsageError, match="cuda:LOCAL_RANK"):
        distributed.setup("cuda:1")
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(UsageError, match="MASTER_PORT not set; start multi-process runs with torchrun"):
        distributed.setup("cpu")
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_finetune_on_two_processes_runs_with_the_global_batch_lr(synthetic_data, tmp_path):
    """Faster R-CNN, 2 processes × 1 tile against 1 process × 2 tiles: the same steps and learning rates;
    the losses differ somewhat (RPN / ROI sampling draws from per-process RNGs), so only a loose check."""
    from bhsearch.train.finetune import FinetuneConfig, run_finetune

    settings = dict(
        epochs=2,
        width_mult=0.125,
        tile=[160, 128],
        overlap=16,
        fpn_channels=32,
        max_train_tiles=6,
        max_eval_images=1,
        warmup_steps=2,
        norm="gn",
        progress="off",
        num_threads=1,
        detector_kwargs={"box_batch_size_per_image": 64, "rpn_post_nms_top_n_train": 150},
    )
    data = synthetic_data.tinyperson_ref
    one = run_finetune("resnet18", data, FinetuneConfig(**settings, batch_size=2), tmp_path / "one")["history"]
    cfg = tmp_path / "two.json"
    cfg.write_text(json.dumps({**settings, "batch_size": 1}))
    cmd = torchrun("-m", "bhsearch", "finetune", "--spec", "resnet18", "--data", data, "--out", str(tmp_path / "two"))
    proc = subprocess.run([*cmd, "--config", str(cfg)], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = loop.read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["lr"] for r in two] == [r["lr"] for r in one]  # lr=None scales with the global batch
    assert loop.load_checkpoint(tmp_path / "two" / "checkpoint.pt")["loop"]["step"] == 6
    for a, b in zip(one, two, strict=True):
        assert max_rel(a["loss"], b["loss"]) < FINETUNE_LOSS_TOL, (a["loss"], b["loss"])
        assert b["AP50_tiny"] is not None or a["AP50_tiny"] is None

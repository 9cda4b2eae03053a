"""Proxy pre-training on small synthetic CIFAR-100-format data with tiny width-scaled backbones."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from bhsearch.errors import TrainingError, UsageError
from bhsearch.spec import get_spec
from bhsearch.train import loop
from bhsearch.train.pretrain import PretrainConfig, augment_batch, run_pretrain

TIME_KEYS = ("train_images_per_s", "epoch_time_s")


def cfg(**kw) -> PretrainConfig:
    base = dict(epochs=2, batch_size=64, lr=0.05, width_mult=0.125, progress="off", num_threads=1, seed=0)
    base.update(max_train_samples=384, max_eval_samples=128)
    base.update(kw)
    return PretrainConfig(**base)


def strip(history):
    return [{k: v for k, v in row.items() if k not in TIME_KEYS} for row in history]


class Plain:
    """A classification dataset without the array fast path; can send SIGINT at its n-th item."""

    def __init__(self, ds, interrupt_at=None):
        self.ds, self.num_classes, self.calls, self.interrupt_at = ds, ds.num_classes, 0, interrupt_at

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.ds[i]


@pytest.fixture(scope="module")
def cifar(synthetic_data):
    from bhsearch.data.registry import open_classification

    return open_classification(synthetic_data.cifar100_ref, "train"), open_classification(
        synthetic_data.cifar100_ref, "test"
    )


@pytest.fixture(scope="module")
def reference_run(cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre-ref")
    return out, run_pretrain("resnet18", cifar, cfg(), out)


def test_loss_falls_and_outputs_are_written(reference_run):
    out, result = reference_run
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < losses[0] - 0.1, losses
    assert {p.name for p in out.iterdir()} >= {"backbone.safetensors", "spec.json", "metrics.jsonl", "checkpoint.pt"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in rows)
    assert result["top1"] == rows[-1]["top1"] and result["best_top1"] == max(r["top1"] for r in rows)


def test_backbone_file_loads_into_build_backbone(reference_run):
    from safetensors.torch import load_file

    from bhsearch.models import build_backbone

    out, result = reference_run
    spec = get_spec(out / "spec.json")
    assert spec == get_spec("resnet18").scaled(0.125) and spec.id == result["spec_id"]
    state = load_file(str(out / "backbone.safetensors"))
    assert not any(k.startswith(("fc.", "backbone.")) for k in state)
    backbone = build_backbone(spec)
    backbone.load_state_dict(state, strict=True)
    ckpt = loop.load_checkpoint(out / "checkpoint.pt")  # weights_only=True
    assert torch.equal(ckpt["model"]["backbone.conv1.weight"], state["conv1.weight"])


def test_same_seed_gives_identical_metrics(cifar, reference_run, tmp_path):
    again = run_pretrain("resnet18", cifar, cfg(), tmp_path)
    assert strip(again["history"]) == strip(reference_run[1]["history"])


def test_resume_after_mid_epoch_interrupt_matches_uninterrupted_run(cifar, reference_run, tmp_path):
    train, test = cifar
    n = 384  # interrupt in the middle of the second epoch (6 batches of 64)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain("resnet18", (Plain(train, interrupt_at=n + n // 2), test), cfg(), tmp_path)
    saved = loop.load_checkpoint(tmp_path / "checkpoint.pt")["loop"]
    assert saved["epoch"] == 1 and 0 < saved["batch"] < 6
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = run_pretrain("resnet18", (Plain(train), test), cfg(), tmp_path, resume=True)
    assert strip(resumed["history"]) == strip(reference_run[1]["history"])
    from safetensors.torch import load_file

    a = load_file(str(reference_run[0] / "backbone.safetensors"))
    b = load_file(str(tmp_path / "backbone.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_crash_at_epoch_end_and_callback(cifar, reference_run, tmp_path):
    calls = []

    def crash_after_first(stage, epoch, metrics, out_dir):
        assert (out_dir / "checkpoint.pt").is_file()
        calls.append((stage, epoch, metrics["top1"]))
        if epoch == 1:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        run_pretrain("resnet18", cifar, cfg(), tmp_path, callback=crash_after_first)
    resumed = run_pretrain("resnet18", cifar, cfg(), tmp_path, resume=True, callback=crash_after_first)
    assert [c[:2] for c in calls] == [("pretrain", 1), ("pretrain", 2)]
    assert strip(resumed["history"]) == strip(reference_run[1]["history"])
    done = run_pretrain("resnet18", cifar, cfg(), tmp_path, resume=True)  # already finished: no training
    assert strip(done["history"]) == strip(reference_run[1]["history"]) and len(calls) == 2


def test_resume_refuses_changed_settings(cifar, reference_run):
    with pytest.raises(UsageError, match="lr"):
        run_pretrain("resnet18", cifar, cfg(lr=0.1), reference_run[0], resume=True)


def test_resume_of_a_checkpoint_written_before_crop_pct(cifar, tmp_path):
    """An older checkpoint has no ``crop_pct``: it resumes as the default it ran with (0.875), not others."""
    import shutil

    c = cfg(epochs=1)
    run_pretrain("resnet18", cifar, c, tmp_path / "run")
    ckpt = loop.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    del ckpt["config"]["crop_pct"]
    loop.save_checkpoint(tmp_path / "run" / "checkpoint.pt", ckpt)
    shutil.copytree(tmp_path / "run", tmp_path / "other")
    done = run_pretrain("resnet18", cifar, c, tmp_path / "run", resume=True)  # finished: resumes, trains nothing
    assert len(done["history"]) == 1
    with pytest.raises(UsageError, match="crop_pct: 0.875 -> 0.9"):
        run_pretrain("resnet18", cifar, cfg(epochs=1, crop_pct=0.9), tmp_path / "other", resume=True)


def test_huge_learning_rate_is_caught(cifar, tmp_path):
    with pytest.raises(TrainingError, match="loss became"):
        run_pretrain("bh-resnet50", cifar, cfg(epochs=1, lr=1e6, width_mult=0.0625), tmp_path)


def test_config_validation():
    with pytest.raises(UsageError, match="schedule"):
        PretrainConfig(schedule="linear")
    with pytest.raises(UsageError, match="crop"):
        PretrainConfig(crop="zoom")
    with pytest.raises(UsageError, match="epochs"):
        PretrainConfig(epochs=0)
    with pytest.raises(UsageError, match="unknown pretrain setting"):
        PretrainConfig.from_dict({"epoch": 3})
    assert PretrainConfig.from_dict(PretrainConfig(milestones=(0.3,)).to_dict()).milestones == (0.3,)


def test_augmentation_is_seeded_and_shapes_are_right():
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    for crop, size in (("pad", 32), ("resize", 32), ("none", 40)):
        c = PretrainConfig(crop=crop, image_size=size)
        a = augment_batch(images, c, loop.generator(0, "a"))
        b = augment_batch(images, c, loop.generator(0, "a"))
        assert a.shape == (6, 3, size, size) and a.is_contiguous()
        assert torch.equal(a, b)
    # no crop, no flip: plain normalisation
    x = augment_batch(images, PretrainConfig(crop="none", hflip=False), loop.generator(0))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expect = (images.permute(0, 3, 1, 2).float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(x, expect, atol=1e-6)
    # pad-crop keeps the pixels: every output row is a shifted window of the padded input
    one = torch.arange(32 * 32 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(1, 32, 32, 3)
    out = augment_batch(one, PretrainConfig(crop="pad", hflip=False), loop.generator(5))
    raw = out * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(
        1, 3, 1, 1
    )
    padded = torch.nn.functional.pad(one.permute(0, 3, 1, 2).float() / 255, (4, 4, 4, 4))
    hits = [
        (dy, dx)
        for dy in range(9)
        for dx in range(9)
        if torch.allclose(padded[..., dy : dy + 32, dx : dx + 32], raw, atol=1e-5)
    ]
    assert len(hits) == 1

"""Shared training helpers: schedules, data order, checkpoints, RNG, devices, the NaN check."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from bhsearch.errors import DataError, TrainingError, UsageError
from bhsearch.train import loop


def test_cosine_schedule_endpoints_and_midpoint():
    s = loop.LRSchedule(base_lr=0.1, total_steps=100, kind="cosine")
    assert s(0) == pytest.approx(0.1)
    assert s(50) == pytest.approx(0.05)
    assert s(100) == pytest.approx(0.0, abs=1e-12)
    assert s(25) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_step_schedule_with_mmdet_linear_warmup():
    s = loop.LRSchedule(base_lr=0.01, total_steps=120, kind="step", milestones=(80, 110), warmup_steps=10)
    assert s(0) == pytest.approx(0.01 * 0.001)  # warm-up starts at warmup_ratio * lr
    assert s(5) == pytest.approx(0.01 * (1 - 0.5 * 0.999))
    assert s(10) == pytest.approx(0.01)
    assert s(79) == pytest.approx(0.01)
    assert s(80) == pytest.approx(0.001)
    assert s(110) == pytest.approx(0.0001)


def test_schedule_rejects_unknown_kind():
    with pytest.raises(UsageError, match="schedule"):
        loop.LRSchedule(base_lr=0.1, total_steps=10, kind="poly")


def test_derive_seed_is_stable_and_distinct():
    assert loop.derive_seed(0, "order", 3) == loop.derive_seed(0, "order", 3)
    assert loop.derive_seed(0, "order", 3) != loop.derive_seed(0, "order", 4)
    assert loop.derive_seed(1, "x") == 3018615150380585113  # sha256-based: identical on every machine


def test_sampler_is_deterministic_and_resumes_mid_epoch():
    s = loop.EpochBatchSampler(10, 3, seed=7)
    s.set_epoch(2)
    full = list(s)
    assert [len(b) for b in full] == [3, 3, 3, 1]
    assert sorted(i for b in full for i in b) == list(range(10))
    s.set_epoch(2, start=2)
    assert list(s) == full[2:] and len(s) == 2
    s.set_epoch(3)
    assert list(s) != full


def test_sampler_keeps_groups_together():
    groups = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    s = loop.EpochBatchSampler(9, 2, seed=1, groups=groups)
    order = s.order()
    seen = [groups[i] for i in order]
    runs = [g for k, g in enumerate(seen) if k == 0 or seen[k - 1] != g]
    assert sorted(runs) == [0, 1, 2]  # each group appears as one contiguous run
    assert sorted(order) == list(range(9))


def test_sampler_rejects_empty_dataset():
    with pytest.raises(DataError):
        loop.EpochBatchSampler(0, 4, seed=0)


def test_checkpoint_round_trip_is_weights_only_loadable(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "format": loop.CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "loop": loop.LoopState(epoch=2, batch=3, step=7, sums={"loss": 1.5}).to_dict(),
        "rng": loop.capture_rng(),
        "config": {"milestones": [0.5, 0.75], "lr": None},
    }
    path = loop.save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
    back = torch.load(path, weights_only=True)
    assert torch.equal(back["model"]["weight"], model.weight)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(back["optimizer"])
    buf = opt2.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt.state_dict()["state"][0]["momentum_buffer"])
    assert loop.LoopState.from_dict(back["loop"]).step == 7
    assert loop.load_checkpoint(path)["config"] == {"milestones": [0.5, 0.75], "lr": None}


def test_load_checkpoint_refuses_garbage_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        loop.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(DataError, match="not a bhsearch checkpoint"):
        loop.load_checkpoint(foreign)
    with pytest.raises(DataError, match="no such checkpoint"):
        loop.load_checkpoint(tmp_path / "missing.pt")


def test_rng_capture_and_restore(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    state = loop.capture_rng()
    path = loop.save_checkpoint(tmp_path / "c.pt", {"format": 1, "rng": state})
    first = (torch.rand(3), random.random(), np.random.rand())
    loop.restore_rng(loop.load_checkpoint(path)["rng"])
    second = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_device_and_amp_choices():
    assert loop.select_device("cpu").type == "cpu"
    with pytest.raises(UsageError, match="--device"):
        loop.select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            loop.select_device("cuda")
        assert loop.select_device("auto").type == "cpu"
    cpu = torch.device("cpu")
    assert loop.resolve_amp(cpu, "auto") is None
    assert loop.resolve_amp(cpu, "bf16") is torch.bfloat16
    with pytest.raises(UsageError, match="fp16"):
        loop.resolve_amp(cpu, "fp16")
    assert loop.resolve_channels_last(cpu, "auto") is False


def _trainer(model, lr=0.1, accumulation=1, saves=None):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return loop.Trainer(
        stage="test",
        model=model,
        optimizer=opt,
        schedule=loop.LRSchedule(base_lr=lr, total_steps=100, kind="constant"),
        device=torch.device("cpu"),
        amp_dtype=None,
        accumulation=accumulation,
        reporter=loop.Reporter("test", "off"),
        save=(lambda st, rng: saves.append(st.to_dict())) if saves is not None else (lambda st, rng: None),
        checkpoint_interval_s=0,
    )


def test_non_finite_loss_raises_training_error_before_the_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    before = model.weight.detach().clone()
    trainer = _trainer(model)
    batches = [torch.ones(4, 2), torch.full((4, 2), float("inf"))]

    def loss_fn(x, b):
        return model(x).pow(2).mean(), {}, len(x)

    state = loop.LoopState()
    with pytest.raises(TrainingError, match="loss became (inf|nan) at epoch 1, batch 2"):
        trainer.train_epoch(state, 1, len(batches), batches, loss_fn)
    assert state.step == 1  # the finite first batch was applied, the infinite one was not
    assert not torch.equal(before, model.weight)
    assert torch.isfinite(model.weight).all()


def test_gradient_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    big, small = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    small.load_state_dict(big.state_dict())

    def make_loss(model):
        return lambda batch, b: (torch.nn.functional.mse_loss(model(batch[0]), batch[1]), {}, len(batch[0]))

    _trainer(big).train_epoch(loop.LoopState(), 1, 1, [(x, y)], make_loss(big))
    st = loop.LoopState()
    _trainer(small, accumulation=2).train_epoch(st, 1, 2, [(x[:4], y[:4]), (x[4:], y[4:])], make_loss(small))
    assert st.step == 1 and st.count == 2
    assert torch.allclose(big.weight, small.weight, atol=1e-6)


def test_reporter_and_summary_table():
    from rich.console import Console

    console = Console(record=True, width=100, force_terminal=False)
    rep = loop.Reporter("pretrain", "auto", console=console)
    rep.start()
    rep.epoch_start(0, 2, 5)
    rep.advance(5, 1.25)
    rep.epoch_end({"epoch": 1, "epochs": 2, "loss": 1.25, "top1": 50.0}, ("loss", "top1"))
    rep.stop()
    assert "pretrain epoch 1/2: loss 1.25, top1 50" in console.export_text()
    table = loop.summary_table([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}], ("loss", "top1"), "t")
    assert [c.header for c in table.columns] == ["epoch", "loss"]
    assert table.row_count == 2

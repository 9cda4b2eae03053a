"""Detector fine-tuning on synthetic TinyPerson tiles with tiny width-scaled backbones."""

from __future__ import annotations

import json

import pytest
import torch

from bhsearch.errors import UsageError
from bhsearch.spec import get_spec
from bhsearch.train import loop
from bhsearch.train.finetune import (
    FinetuneConfig,
    freeze_stages,
    hflip_batch,
    load_backbone_state,
    read_init_weights,
    resolve_norm,
    run_finetune,
)
from bhsearch.train.pretrain import PretrainConfig, run_pretrain

SPEC = get_spec("resnet18").scaled(0.125)
SMALL_HEADS = {
    "box_batch_size_per_image": 64,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 150,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 150,
}
TIME_KEYS = ("train_images_per_s", "epoch_time_s", "eval_time_s")


def cfg(**kw) -> FinetuneConfig:
    base = dict(
        epochs=2,
        batch_size=2,
        tile=(160, 128),
        overlap=16,
        fpn_channels=32,
        max_train_tiles=6,
        max_eval_images=1,
        warmup_steps=2,
        progress="off",
        num_threads=1,
        detector_kwargs=SMALL_HEADS,
    )
    base.update(kw)
    return FinetuneConfig(**base)


def strip(history):
    return [{k: v for k, v in row.items() if k not in TIME_KEYS} for row in history]


@pytest.fixture(scope="module")
def pretrained(synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    config = PretrainConfig(
        epochs=1, batch_size=100, width_mult=0.125, progress="off", num_threads=1, max_train_samples=200
    )
    run_pretrain("resnet18", synthetic_data.cifar100_ref, config, out)
    return out


@pytest.fixture(scope="module")
def reference(synthetic_data, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("det-ref")
    result = run_finetune(SPEC, synthetic_data.tinyperson_ref, cfg(), out, init=pretrained / "backbone.safetensors")
    return out, result


def test_finetune_from_pretrain_writes_a_rebuildable_run(reference, pretrained):
    from bhsearch.detectors import build_detector, load_weights, settings_from_metadata
    from bhsearch.spec import load_mapping

    out, result = reference
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "spec.json", "metrics.jsonl", "checkpoint.pt"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "lr", "AP50_tiny"} <= set(row)
        assert row["max_dets"] == 200 and 0 <= row["AP50_tiny"] <= 100
    meta = load_mapping(out / "spec.json")
    assert meta["run"]["init_kind"] == "pretrain" and meta["run"]["norm"] == "bn"
    assert meta["config"]["tile"] == [160, 128]
    settings = settings_from_metadata(meta)
    assert settings["detector"] == "faster_rcnn" and settings["fpn_channels"] == 32
    model = build_detector(get_spec(out / "spec.json"), **settings)
    load_weights(model, out / "model.safetensors")
    ckpt = loop.load_checkpoint(out / "checkpoint.pt")
    assert torch.equal(model.state_dict()["backbone.body.conv1.weight"], ckpt["model"]["backbone.body.conv1.weight"])
    assert result["best_AP50_tiny"] == max(r["AP50_tiny"] for r in rows)


def test_pretrained_backbone_is_what_training_started_from(pretrained, tmp_path, synthetic_data):
    seen = {}

    def grab(stage, epoch, metrics, out_dir):
        seen["lr"] = metrics["lr"]

    # lr tiny and one step: the trunk stays (numerically) where the pretrain run left it
    run_finetune(
        SPEC,
        synthetic_data.tinyperson_ref,
        cfg(epochs=1, lr=1e-12, max_train_tiles=2, eval_every=0, max_eval_images=1),
        tmp_path,
        init=pretrained / "backbone.safetensors",
        callback=grab,
    )
    from safetensors.torch import load_file

    pre = load_file(str(pretrained / "backbone.safetensors"))
    det = load_file(str(tmp_path / "model.safetensors"))
    assert torch.allclose(det["backbone.body.layer1.0.conv1.weight"], pre["layer1.0.conv1.weight"], atol=1e-8)
    assert seen["lr"] < 1e-11


def test_same_seed_and_resume_give_identical_metrics(reference, pretrained, synthetic_data, tmp_path):
    init = pretrained / "backbone.safetensors"

    def stop_after_first(stage, epoch, metrics, out_dir):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(SPEC, synthetic_data.tinyperson_ref, cfg(), tmp_path, init=init, callback=stop_after_first)
    assert loop.load_checkpoint(tmp_path / "checkpoint.pt")["loop"]["epoch"] == 1
    resumed = run_finetune(SPEC, synthetic_data.tinyperson_ref, cfg(), tmp_path, init=init, resume=True)
    assert strip(resumed["history"]) == strip(reference[1]["history"])


def test_detection_loss_falls_from_scratch(synthetic_data, tmp_path):
    result = run_finetune(
        "bh-resnet50",
        synthetic_data.tinyperson_ref,
        cfg(epochs=3, width_mult=0.0625, max_train_tiles=4, eval_every=0, lr=0.02),
        tmp_path,
    )
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < losses[0], losses
    assert "AP50_tiny" in result["history"][-1] and "AP50_tiny" not in result["history"][0]


def test_init_from_the_wrong_spec_names_the_tensor(pretrained):
    from bhsearch.models import build_backbone

    state, kind = read_init_weights(pretrained / "backbone.safetensors")
    assert kind == "pretrain"
    with pytest.raises(UsageError, match=r"tensor 'conv1.weight' has shape \(8, 3, 7, 7\) in the file"):
        load_backbone_state(build_backbone(get_spec("resnet18").scaled(0.25)), state, "init")


def test_torchvision_state_dict_init_and_auto_norm(tmp_path):
    import torchvision

    from bhsearch.models import build_backbone

    path = tmp_path / "resnet18.pth"
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), path)
    state, kind = read_init_weights(path)
    assert kind == "torchvision" and "fc.weight" not in state
    config = FinetuneConfig()
    assert resolve_norm(config, kind) == "frozen_bn"
    assert resolve_norm(config, "pretrain") == "bn" and resolve_norm(config, None) == "gn"
    backbone = build_backbone("resnet18", norm="frozen_bn")
    load_backbone_state(backbone, state, str(path))
    assert torch.equal(backbone.layer1[0].conv1.weight, tv.layer1[0].conv1.weight)
    assert torch.equal(backbone.bn1.running_var, tv.bn1.running_var)
    assert freeze_stages(backbone, 1) == ["conv1", "bn1", "relu", "maxpool", "layer1"]
    assert not backbone.layer1[0].conv1.weight.requires_grad and backbone.layer2[0].conv1.weight.requires_grad


def test_freeze_stages_on_hrnet():
    from bhsearch.models import build_backbone

    body = build_backbone(get_spec("hrnet18").scaled(0.25))
    frozen = freeze_stages(body, 1)
    assert frozen[-1] == "layer1" and "stage2" not in frozen and "conv1" in frozen
    assert freeze_stages(build_backbone(get_spec("hrnet18").scaled(0.25)), -1) == []


def test_hflip_moves_boxes_with_the_pixels():
    img = torch.zeros(3, 10, 20)
    img[:, 2:5, 3:7] = 1.0
    target = {"boxes": torch.tensor([[3.0, 2.0, 7.0, 5.0]]), "labels": torch.tensor([1])}
    for seed in range(6):
        (out,), (tgt,) = hflip_batch([img], [target], loop.generator(seed))
        x0, y0, x1, y1 = tgt["boxes"][0].int().tolist()
        assert out[:, y0:y1, x0:x1].min() == 1.0 and out.sum() == img.sum()
    flipped = {tuple(hflip_batch([img], [target], loop.generator(s))[1][0]["boxes"][0].tolist()) for s in range(6)}
    assert flipped == {(3.0, 2.0, 7.0, 5.0), (13.0, 2.0, 17.0, 5.0)}


def test_config_defaults_follow_the_paper_and_validate():
    c = FinetuneConfig()
    assert (c.epochs, c.milestones, c.momentum, c.weight_decay, c.tile, c.overlap) == (
        12,
        (8.0, 11.0),
        0.9,
        1e-4,
        (640, 512),
        30,
    )
    assert c.effective_lr == pytest.approx(0.01)
    assert FinetuneConfig(batch_size=8).effective_lr == pytest.approx(0.02)
    assert FinetuneConfig(batch_size=2, accumulation=4).effective_lr == pytest.approx(0.02)
    with pytest.raises(UsageError, match="detector"):
        FinetuneConfig(detector="yolo")
    with pytest.raises(UsageError, match="overlap"):
        FinetuneConfig(tile=(64, 64), overlap=64)
    with pytest.raises(UsageError, match="norm"):
        FinetuneConfig(norm="ln")

"""torchvision detectors on bhsearch backbones (bhsearch.detectors)."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from bhsearch.detectors import (  # noqa: E402
    NativeSizeTransform,
    build_detector,
    detector_settings,
    load_weights,
    save_weights,
    settings_from_metadata,
)
from bhsearch.errors import UsageError  # noqa: E402
from bhsearch.spec import ResNetSpec, get_spec  # noqa: E402

SIZE = (128, 96)  # width, height
SMALL_RESNET = get_spec("resnet18").scaled(0.25)
SMALL_BH = get_spec("bh-resnet50").scaled(0.125)


def _fpn(detector: str) -> int:
    return 64 if detector == "fcos" else 32  # FCOS's head has GroupNorm(32)


def _sample():
    torch.manual_seed(0)
    image = torch.rand(3, SIZE[1], SIZE[0])
    target = {
        "boxes": torch.tensor([[10.0, 20.0, 14.0, 30.0], [50.0, 40.0, 58.0, 56.0], [100.0, 60.0, 103.0, 66.0]]),
        "labels": torch.tensor([1, 1, 1]),
    }
    return image, target


EXPECTED_LOSSES = {
    "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "retinanet": {"classification", "bbox_regression"},
    "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
}


def _train_and_eval(model, detector):
    image, target = _sample()
    model.train()
    losses = model([image], [target])
    assert set(losses) == EXPECTED_LOSSES[detector]
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:3])  # gradients reach the trunk's stem
    model.eval()
    with torch.no_grad():
        (out,) = model([image])
    assert set(out) == {"boxes", "scores", "labels"}
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) > 0
    assert out["boxes"][:, 2].max() <= SIZE[0] and out["boxes"][:, 3].max() <= SIZE[1]  # native coordinates
    assert out["scores"].min() >= 0.01
    return out


@pytest.mark.parametrize("detector", ["faster_rcnn", "retinanet", "fcos"])
@pytest.mark.parametrize("spec", [SMALL_RESNET, SMALL_BH], ids=["resnet18", "bh-resnet50"])
def test_detector_trains_and_detects(detector, spec):
    torch.manual_seed(0)
    model = build_detector(spec, detector, image_size=SIZE, fpn_channels=_fpn(detector))
    assert model.spec == spec
    # the FPN's inputs are the spec's channels, from the stride-4 level on
    assert [blk[0].in_channels for blk in model.backbone.fpn.inner_blocks] == list(spec.out_channels)
    assert model.backbone.out_channels == _fpn(detector)
    _train_and_eval(model, detector)


def test_hrnet_detector_trains_and_detects():
    spec = get_spec("bh-hrnet18").scaled(0.25)
    torch.manual_seed(0)
    model = build_detector(spec, "faster_rcnn", image_size=SIZE, fpn_channels=32, norm="gn")
    assert [blk[0].in_channels for blk in model.backbone.fpn.inner_blocks] == list(spec.out_channels)
    assert model.backbone.out_strides == [4, 8, 16, 32, 64]
    _train_and_eval(model, "faster_rcnn")


def test_fpn_channels_come_from_the_spec_not_inplanes():
    spec = ResNetSpec(block="basic", blocks=(1, 1, 1, 1), widths=(8, 12, 20, 36), stem_width=8)
    model = build_detector(spec, image_size=SIZE, fpn_channels=16)
    assert [blk[0].in_channels for blk in model.backbone.fpn.inner_blocks] == [8, 12, 20, 36]
    _train_and_eval(model, "faster_rcnn")


def test_input_stays_native_size():
    image, _ = _sample()
    for image_size in (SIZE, (640, 512)):
        model = build_detector(SMALL_RESNET, image_size=image_size, fpn_channels=32).eval()
        assert isinstance(model.transform, NativeSizeTransform)
        batch, _ = model.transform([image])
        assert batch.image_sizes == [(SIZE[1], SIZE[0])]
    model = build_detector(SMALL_RESNET, image_size=(640, 512), fpn_channels=32)
    assert (model.transform.min_size, model.transform.max_size) == ((512,), 640)
    # torchvision's own resize would have scaled the small image by min(512/96, 640/128) = 5
    fit = build_detector(SMALL_RESNET, image_size=(640, 512), fpn_channels=32, resize="fit").eval()
    batch, _ = fit.transform([image])
    assert batch.image_sizes == [(480, 640)]


def test_anchors_start_small():
    frcnn = build_detector(SMALL_RESNET, "faster_rcnn", image_size=SIZE, fpn_channels=32)
    gen = frcnn.rpn.anchor_generator
    assert gen.sizes == ((8.0,), (16.0,), (32.0,), (64.0,), (128.0,))
    assert gen.aspect_ratios[0] == (0.5, 1.0, 2.0)
    square = gen.cell_anchors[0][1]  # ratio 1 on P2: an 8x8 box around the cell origin
    assert square.tolist() == [-4.0, -4.0, 4.0, 4.0]
    tall = gen.cell_anchors[0][2]  # ratio 2 = height / width
    assert (tall[3] - tall[1]) / (tall[2] - tall[0]) == pytest.approx(2.0, rel=0.05)
    assert frcnn.backbone.out_strides == [4, 8, 16, 32, 64]

    retina = build_detector(SMALL_RESNET, "retinanet", image_size=SIZE, fpn_channels=32)
    sizes = retina.anchor_generator.sizes
    assert len(sizes) == 6 and retina.backbone.out_strides == [4, 8, 16, 32, 64, 128]
    assert sizes[0] == pytest.approx((8.0, 8 * 2 ** (1 / 3), 8 * 2 ** (2 / 3)), abs=1e-3)
    assert sizes[1][0] == 16.0

    fcos = build_detector(SMALL_RESNET, "fcos", image_size=SIZE, fpn_channels=64)
    assert fcos.anchor_generator.sizes == ((4.0,), (8.0,), (16.0,), (32.0,), (64.0,), (128.0,))
    assert fcos.center_sampling_radius == 1.5

    for model in (frcnn, retina, fcos):
        settings = detector_settings(model)
        assert settings["image_size"] == list(SIZE)


def test_detection_settings_for_crowded_tiles():
    frcnn = build_detector(SMALL_RESNET, image_size=SIZE, fpn_channels=32)
    assert frcnn.roi_heads.detections_per_img == 1000 and frcnn.roi_heads.score_thresh == 0.01
    retina = build_detector(SMALL_RESNET, "retinanet", image_size=SIZE, fpn_channels=32, score_thresh=0.2)
    assert retina.detections_per_img == 1000 and retina.score_thresh == 0.2
    assert detector_settings(retina)["score_thresh"] == 0.2


def test_min_level_three_and_num_classes():
    model = build_detector(SMALL_RESNET, image_size=SIZE, fpn_channels=32, min_level=3, num_classes=3)
    assert [blk[0].in_channels for blk in model.backbone.fpn.inner_blocks] == list(SMALL_RESNET.out_channels[1:])
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert model.rpn.anchor_generator.sizes[0] == (8.0,)
    _train_and_eval(model, "faster_rcnn")


@pytest.mark.parametrize("detector", ["faster_rcnn", "fcos"])
def test_settings_rebuild_the_same_model(detector, tmp_path):
    torch.manual_seed(1)
    model = build_detector(SMALL_BH, detector, image_size=SIZE, fpn_channels=_fpn(detector), norm="gn").eval()
    settings = json.loads(json.dumps(detector_settings(model)))  # through spec.json
    assert settings["detector"] == detector and settings["norm"] == "gn"
    path = save_weights(model, tmp_path / "model.safetensors")
    rebuilt = load_weights(build_detector(SMALL_BH, **settings_from_metadata({"detector": settings})), path).eval()
    image, _ = _sample()
    with torch.no_grad():
        a, b = model([image])[0], rebuilt([image])[0]
    assert len(a["boxes"]) > 0
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_load_weights_names_the_first_mismatch(tmp_path):
    small = build_detector(SMALL_RESNET, image_size=SIZE, fpn_channels=32)
    path = save_weights(small, tmp_path / "w.safetensors")
    wider = build_detector(SMALL_RESNET, image_size=SIZE, fpn_channels=48)
    with pytest.raises(
        UsageError, match=r"'backbone\.fpn\.inner_blocks\.0\.0\.weight'.*\(32, 16, 1, 1\).*\(48, 16, 1, 1\)"
    ):
        load_weights(wider, path)
    trunk_only = tmp_path / "trunk.safetensors"
    save_weights(small.backbone.body, trunk_only)
    with pytest.raises(UsageError, match=r"missing tensor 'backbone\.body\.conv1\.weight'"):
        load_weights(small, trunk_only)
    with pytest.raises(UsageError, match=r"missing tensor 'conv1\.weight' \(model shape \(16, 3, 7, 7\)\)"):
        load_weights(small.backbone.body, path)
    from safetensors.torch import load_file, save_file

    extra = tmp_path / "extra.safetensors"
    save_file({**load_file(str(path)), "head.extra": torch.zeros(2, 3)}, str(extra))
    with pytest.raises(UsageError, match=r"unexpected tensor 'head\.extra' \(shape \(2, 3\)\)"):
        load_weights(small, extra)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="junk.safetensors"):
        load_weights(small, junk)
    with pytest.raises(UsageError, match="no such weights file"):
        load_weights(small, tmp_path / "absent.safetensors")


def test_frozen_bn_loads_weights_trained_with_bn(tmp_path):
    torch.manual_seed(2)
    trained = build_detector(SMALL_RESNET, image_size=SIZE, fpn_channels=32, norm="bn")
    path = save_weights(trained, tmp_path / "bn.safetensors")
    frozen = load_weights(build_detector(SMALL_RESNET, image_size=SIZE, fpn_channels=32, norm="frozen_bn"), path)
    trained.eval(), frozen.eval()
    image, _ = _sample()
    with torch.no_grad():
        a = trained.backbone(image[None])["0"]
        b = frozen.backbone(image[None])["0"]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"detector": "yolo"}, "unknown detector 'yolo'"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"min_level": 6}, "min_level must be an integer from 2 to 5"),
        ({"detector": "fcos", "fpn_channels": 48}, "divisible by 32"),
        ({"anchor_sizes": [8, 16]}, r"one entry per FPN level \(5\)"),
        ({"image_size": "640by512"}, "WIDTHxHEIGHT"),
        ({"norm": "ln"}, "norm must be one of"),
        ({"resize": "stretch"}, "resize must be one of"),
        ({"not_an_option": 1}, "bad option for faster_rcnn"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(UsageError, match=message):
        build_detector(SMALL_RESNET, **{"fpn_channels": 32, **kwargs})


def test_custom_anchor_sizes_and_ratios():
    sizes = [[4, 6], [8, 12], [16, 24], [32, 48], [64, 96]]
    model = build_detector(SMALL_RESNET, image_size=SIZE, fpn_channels=32, anchor_sizes=sizes, aspect_ratios=(1, 2, 3))
    gen = model.rpn.anchor_generator
    assert gen.sizes[0] == (4.0, 6.0) and gen.num_anchors_per_location() == [6] * 5
    tall = gen.cell_anchors[0][-1]  # size 6, ratio 3
    assert tall.tolist() == [-2.0, -5.0, 2.0, 5.0]  # 6 / sqrt(3) wide, 6 * sqrt(3) tall, rounded by torchvision
    assert math.isclose(detector_settings(model)["aspect_ratios"][2], 3.0)
    _train_and_eval(model, "faster_rcnn")


def test_representation_size_sets_the_box_head_width_and_survives_a_rebuild():
    spec = get_spec("resnet50").scaled(0.0625)
    model = build_detector(spec, fpn_channels=16, representation_size=48, num_classes=3)
    head, predictor = model.roi_heads.box_head, model.roi_heads.box_predictor
    assert (head.fc6.in_features, head.fc6.out_features, head.fc7.out_features) == (16 * 7 * 7, 48, 48)
    assert (predictor.cls_score.in_features, predictor.cls_score.out_features) == (48, 4)  # 3 classes + background
    settings = detector_settings(model)
    assert settings["representation_size"] == 48
    again = build_detector(spec, **settings)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in again.state_dict().items()}
    assert "representation_size" not in detector_settings(build_detector(spec, fpn_channels=16))
    with pytest.raises(UsageError, match="representation_size"):
        build_detector(spec, detector="retinanet", representation_size=48)

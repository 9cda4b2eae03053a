"""bhsearch export: torchvision round trip, ONNX numerics, MMDetection config, timm, bad input, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bhsearch.detectors import build_detector as tv_build_detector  # noqa: E402
from bhsearch.detectors import detector_settings, load_weights, save_weights  # noqa: E402
from bhsearch.errors import UsageError  # noqa: E402
from bhsearch.export import build_detector, export, resolve_source  # noqa: E402
from bhsearch.models import build_backbone  # noqa: E402
from bhsearch.spec import get_spec, save_spec  # noqa: E402

SIZE = (128, 96)
SPEC = get_spec("resnet18").scaled(0.25)
SMALL = {"image_size": SIZE, "fpn_channels": 32}


def _image(seed: int = 0, size=SIZE):
    return torch.rand(3, size[1], size[0], generator=torch.Generator().manual_seed(seed))


def _detect(model, image):
    with torch.no_grad():
        return model.eval()([image])[0]


@pytest.fixture(scope="module")
def finetune_dir(tmp_path_factory):
    """A folder like ``bhsearch finetune`` writes: spec.json with detector settings + model.safetensors."""
    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    model = tv_build_detector(SPEC, "faster_rcnn", **SMALL).eval()
    save_spec(SPEC, root / "spec.json", detector=detector_settings(model))
    save_weights(model, root / "model.safetensors")
    return root, model


def test_torchvision_round_trip(finetune_dir, tmp_path):
    run_dir, model = finetune_dir
    result = export(run_dir, "torchvision", tmp_path / "export")
    out = tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "spec.json", "weights.safetensors"]
    assert result.report["weights"] == "all layers from model.safetensors"
    meta = json.loads((out / "spec.json").read_text())
    assert meta["id"] == SPEC.id and meta["detector"]["fpn_channels"] == 32
    assert "build_detector" in (out / "README.md").read_text()
    image = _image()
    ref = _detect(model, image)
    assert len(ref["boxes"]) > 0
    for loaded in (
        build_detector(out / "spec.json", detector="faster_rcnn", num_classes=1, weights=out / "weights.safetensors"),
        build_detector(out),  # the folder loads its own weights
        load_weights(tv_build_detector(meta["spec"], **meta["detector"]), out / "weights.safetensors"),
    ):
        got = _detect(loaded, image)
        assert torch.equal(got["boxes"], ref["boxes"]) and torch.equal(got["scores"], ref["scores"])


def test_backbone_only_weights_load_into_the_trunk(tmp_path):
    torch.manual_seed(3)
    trunk = build_backbone(SPEC)
    save_weights(trunk, tmp_path / "backbone.safetensors")
    model = build_detector(SPEC, weights=tmp_path / "backbone.safetensors", **SMALL)
    assert model.bhsearch_weights_scope == "backbone"
    for name, tensor in trunk.state_dict().items():
        assert torch.equal(model.backbone.body.state_dict()[name], tensor), name


def test_stored_settings_and_detector_override(finetune_dir):
    run_dir, _ = finetune_dir
    source = resolve_source(run_dir)
    assert source.spec == SPEC and source.weights == run_dir / "model.safetensors"
    retina = build_detector(run_dir / "spec.json", detector="retinanet")
    assert type(retina).__name__ == "RetinaNet"
    assert retina.backbone.out_channels == 32  # backbone / FPN settings kept, anchors from RetinaNet defaults
    assert retina.anchor_generator.sizes[0][0] == 8.0


def test_onnx_backbone_and_detector_match_pytorch(finetune_dir, tmp_path):
    import onnxruntime as ort

    from bhsearch.export.onnx import BACKBONE_TOLERANCE

    run_dir, model = finetune_dir
    out = tmp_path / "onnx"
    result = export(run_dir, "onnx", out, input_size=SIZE)
    report = json.loads((out / "onnx_report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert set(report["backbone_check"]) == {"128x96", "160x160"}  # two sizes: dynamic axes work
    for entry in report["backbone_check"].values():
        assert entry["max_abs_error"] < BACKBONE_TOLERANCE and 0.1 < entry["max_abs_value"] < 1e3
    check = report["detector_check"]["128x96"]
    assert check["detections"] == check["onnx_detections"] > 0
    assert check["boxes_max_abs_error"] < 0.05 and check["scores_max_abs_error"] < 1e-3 and check["labels_equal"]
    # independent check of the backbone file at a third size with a batch of 2
    stem = "resnet_basic_k7s2pc16_2-2-2-2_w16-32-64-128"
    session = ort.InferenceSession(str(out / f"{stem}.backbone.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = list(model.backbone.body.eval()(x).values())
    got = session.run(None, {"image": x.numpy()})
    assert [o.name for o in session.get_outputs()] == ["c2", "c3", "c4", "c5"]
    for g, r in zip(got, ref, strict=True):
        assert g.shape == tuple(r.shape)
        assert float((torch.from_numpy(g) - r).abs().max()) < BACKBONE_TOLERANCE
    assert (out / f"{stem}.faster_rcnn.onnx").is_file()


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_onnx_hrnet_backbone(norm, tmp_path):
    from bhsearch.export.onnx import BACKBONE_TOLERANCE

    spec = get_spec("bh-hrnet18").scaled(0.25)
    result = export(spec, "onnx", tmp_path, input_size=SIZE, backbone_only=True, norm=norm)
    assert result.files[0].endswith(".backbone.onnx") and len(result.files) == 3  # + report, README
    for entry in result.report["backbone_check"].values():
        # a randomly initialised BN HRNet sums many branches into values around 1e5..1e7: compare relatively
        assert entry["max_abs_error"] <= 1e-5 * entry["max_abs_value"] or entry["max_abs_error"] < BACKBONE_TOLERANCE


def _tv_anchor_shapes(model):
    gen = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
    return [[(float(a[2] - a[0]), float(a[3] - a[1])) for a in cell] for cell in gen.cell_anchors]


def _mmdet_anchor_shapes(gen):
    """Width and height of mmdet AnchorGenerator base anchors (its documented formula, ratio = h / w)."""
    strides = gen["strides"]
    bases = gen.get("base_sizes", strides)
    if "octave_base_scale" in gen:
        n = gen["scales_per_octave"]
        scales = [gen["octave_base_scale"] * 2 ** (k / n) for k in range(n)]
    else:
        scales = gen["scales"]
    shapes = []
    for base in bases:
        level = []
        for r in gen["ratios"]:  # torchvision orders ratios first, then scales
            for s in scales:
                level.append((base * s / math.sqrt(r), base * s * math.sqrt(r)))
        shapes.append(level)
    return shapes


@pytest.mark.parametrize("detector", ["faster_rcnn", "retinanet", "fcos"])
def test_mmdet_config_parses_and_builds_backbone(detector, finetune_dir, tmp_path):
    from mmengine.config import Config

    run_dir, model = finetune_dir
    fpn = 64 if detector == "fcos" else 32
    result = export(
        run_dir, "mmdet", tmp_path / "mm", detector=detector, weights=run_dir / "model.safetensors", fpn_channels=fpn
    )
    config_path = tmp_path / "mm" / result.report["config"]
    cfg = Config.fromfile(str(config_path))  # imports bhsearch.export.mmdet_plugin via custom_imports
    assert cfg.custom_imports == {"imports": ["bhsearch.export.mmdet_plugin"], "allow_failed_imports": False}
    assert cfg.model.backbone.type == "BHSearchBackbone" and cfg.model.backbone.spec == SPEC.id
    assert cfg.model.neck.in_channels == list(SPEC.out_channels)
    assert cfg.model.neck.out_channels == fpn
    assert cfg.optim_wrapper.optimizer.lr == 0.01 and cfg.train_cfg.max_epochs == 12
    assert cfg.param_scheduler[1].milestones == [8, 11]
    assert cfg.train_pipeline[2].crop_size == (96, 128)  # (h, w) of the tile

    from bhsearch.export import mmdet_plugin

    backbone = mmdet_plugin.MODELS.build(cfg.model.backbone).eval()
    assert backbone.body.conv1.weight.data_ptr() != 0
    trunk = model.backbone.body.eval()
    for name, tensor in trunk.state_dict().items():  # the config's weights file is the trained trunk
        assert torch.equal(backbone.body.state_dict()[name], tensor), name
    x = _image(1)[None]
    with torch.no_grad():
        feats = backbone(x)
    assert [f.shape[1] for f in feats] == cfg.model.neck.in_channels
    assert [x.shape[-1] // f.shape[-1] for f in feats] == [4, 8, 16, 32]

    tv = tv_build_detector(SPEC, detector, **{**SMALL, "fpn_channels": fpn})
    if detector == "fcos":
        head = cfg.model.bbox_head
        assert head.strides == [4, 8, 16, 32, 64, 128]
        assert head.regress_ranges[0] == (-1, 32) and head.regress_ranges[1] == (32, 64)
        assert head.center_sample_radius == 1.5 and cfg.model.neck.num_outs == 6
    else:
        gen = (cfg.model.rpn_head if detector == "faster_rcnn" else cfg.model.bbox_head).anchor_generator
        mm = _mmdet_anchor_shapes(gen)
        ref = _tv_anchor_shapes(tv)
        assert len(mm) == len(ref)
        for mm_level, tv_level in zip(mm, ref, strict=True):
            for (mw, mh), (tw, th) in zip(mm_level, tv_level, strict=True):
                assert abs(mw - tw) <= 1.0 and abs(mh - th) <= 1.0  # torchvision rounds its anchors


def test_mmdet_min_level_three_and_frozen_stages(tmp_path):
    from mmengine.config import Config

    from bhsearch.export import mmdet_plugin

    result = export("bh-hrnet18", "mmdet", tmp_path, min_level=3)
    cfg = Config.fromfile(str(tmp_path / result.report["config"]))
    assert cfg.model.backbone.out_indices == (1, 2, 3)
    assert cfg.model.neck.in_channels == [36, 72, 144]
    assert cfg.model.rpn_head.anchor_generator.strides == [8, 16, 32, 64]
    assert cfg.model.roi_head.bbox_roi_extractor.featmap_strides == [8, 16, 32]
    small = {**cfg.model.backbone, "spec": get_spec("bh-hrnet18").scaled(0.25).to_dict(), "frozen_stages": 1}
    backbone = mmdet_plugin.MODELS.build(small)
    frozen = {n for n, m in backbone.body.named_children() if any(True for _ in m.parameters())}
    frozen = {n for n in frozen if not any(p.requires_grad for p in getattr(backbone.body, n).parameters())}
    assert frozen == {"conv1", "bn1", "conv2", "bn2", "layer1"}
    backbone.train()
    assert not backbone.body.layer1.training and backbone.body.stage2.training


def test_timm_features_only():
    import timm
    import torchvision

    import bhsearch.export.timm  # noqa: F401  (registers the timm models)

    assert {"bh_resnet50", "bh_hrnet18", "bh_hrnet32", "bhsearch_resnet50", "bhsearch_spec"} <= set(
        timm.list_models("bh*")
    )
    model = timm.create_model("bh_resnet50", features_only=True)
    assert model.feature_info.channels() == [256, 512, 1024, 2048]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    hr = timm.create_model("bh_hrnet18", features_only=True, out_indices=(1, 3))
    assert hr.feature_info.channels() == [36, 144] and hr.feature_info.reduction() == [8, 32]
    feats = hr(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 36, 8, 12), (1, 144, 2, 3)]
    classifier = timm.create_model("bhsearch_resnet18", num_classes=10)
    reference = torchvision.models.resnet18(num_classes=10)
    assert sum(p.numel() for p in classifier.parameters()) == sum(p.numel() for p in reference.parameters())
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_timm_export_loads_as_pretrained(finetune_dir, tmp_path):
    import timm

    run_dir, model = finetune_dir
    result = export(run_dir, "timm", tmp_path)
    weights = tmp_path / result.files[0]
    features = timm.create_model(
        "bhsearch_spec",
        spec=SPEC.id,
        features_only=True,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(weights)},
    ).eval()
    x = _image(2)[None]
    with torch.no_grad():
        ref = list(model.backbone.body.eval()(x).values())
        got = features(x)
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))


def test_bad_input(finetune_dir, tmp_path):
    run_dir, _ = finetune_dir
    with pytest.raises(UsageError, match="unknown export target 'tflite'"):
        export(SPEC, "tflite", tmp_path / "x")
    study = tmp_path / "study"
    study.mkdir()
    (study / "results.csv").write_text("spec_id\n")
    with pytest.raises(UsageError, match=r"study directory without results \(best_spec.json missing\)"):
        export(study, "torchvision", tmp_path / "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="neither results.csv"):
        build_detector(empty)
    with pytest.raises(UsageError, match="no such file or directory"):
        export(str(tmp_path / "runs" / "missing"), "torchvision", tmp_path / "x")
    other = get_spec("resnet18").scaled(0.125)
    with pytest.raises(
        UsageError, match=r"'backbone\.body\.conv1\.weight' has shape \(16, 3, 7, 7\) in the file but \(8, 3, 7, 7\)"
    ):
        export(other, "torchvision", tmp_path / "x", weights=run_dir / "model.safetensors", **SMALL)
    assert not (tmp_path / "x").exists()


def test_failed_export_leaves_out_untouched(finetune_dir, tmp_path, monkeypatch):
    import bhsearch.detectors

    run_dir, _ = finetune_dir
    out = tmp_path / "out"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bhsearch.detectors, "save_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        export(run_dir, "torchvision", out)
    assert not out.exists()
    out.mkdir()
    (out / "spec.json").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        export(run_dir, "torchvision", out)
    assert [p.name for p in out.iterdir()] == ["spec.json"] and (out / "spec.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def _cli(*args: str, cwd: Path):
    return subprocess.run(
        [sys.executable, "-m", "bhsearch", "export", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_study_to_torchvision_and_errors(finetune_dir, tmp_path):
    run_dir, model = finetune_dir
    study = tmp_path / "runs" / "tinyperson"
    study.mkdir(parents=True)
    meta = json.loads((run_dir / "spec.json").read_text())
    save_spec(SPEC, study / "best_spec.json", detector=meta["detector"], weights=str(run_dir / "model.safetensors"))
    (study / "results.csv").write_text(f"spec_id,AP50_tiny\n{SPEC.id},1.0\n")
    proc = _cli("runs/tinyperson", "--to", "torchvision", "--out", "export/", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["files"] == ["spec.json", "weights.safetensors", "README.md"] and result["spec_id"] == SPEC.id
    got = _detect(build_detector(tmp_path / "export"), _image())
    assert torch.equal(got["boxes"], _detect(model, _image())["boxes"])

    wrong = _cli("resnet18", "--weights", str(run_dir / "model.safetensors"), "--to", "onnx", cwd=tmp_path)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "'backbone.body.conv1.weight' has shape (16, 3, 7, 7) in the file but (64, 3, 7, 7)" in wrong.stderr
    bad_target = _cli("resnet18", "--to", "tflite", cwd=tmp_path)
    assert bad_target.returncode == 2 and "invalid choice: 'tflite'" in bad_target.stderr
    (study / "best_spec.json").unlink()
    no_results = _cli("runs/tinyperson", "--to", "mmdet", "--out", "mm/", cwd=tmp_path)
    assert no_results.returncode == 2 and "study directory without results" in no_results.stderr
    assert not (tmp_path / "mm").exists()


def test_export_into_a_mount_point_renames_only_inside_it(finetune_dir, tmp_path, monkeypatch):
    """``out`` acts as a mount point: a rename between it and anything outside fails with EXDEV."""
    import errno
    import os
    import stat

    run_dir, _ = finetune_dir
    out = tmp_path / "mnt"
    out.mkdir()
    (out / "spec.json").write_text("old")
    (out / "keep.txt").write_text("someone else's")
    real = os.replace
    renames = []

    def inside(p) -> bool:
        return Path(p).absolute().is_relative_to(out)

    def replace(src, dst):
        renames.append((Path(src), Path(dst)))
        if inside(src) != inside(dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)
    old = os.umask(0o022)
    try:
        export(run_dir, "torchvision", out)
    finally:
        os.umask(old)
    assert renames and all(inside(s) and inside(d) for s, d in renames)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "keep.txt", "spec.json", "weights.safetensors"]
    assert json.loads((out / "spec.json").read_text())["id"] == SPEC.id
    assert {stat.S_IMODE((out / n).stat().st_mode) for n in ("README.md", "spec.json", "weights.safetensors")} == {
        0o644
    }


def test_failed_export_into_an_existing_folder_keeps_the_old_set(finetune_dir, tmp_path, monkeypatch):
    """The last rename fails: the new spec.json must not stay beside the old weights."""
    import os

    run_dir, _ = finetune_dir
    out = tmp_path / "out"
    out.mkdir()
    for name in ("README.md", "spec.json", "weights.safetensors"):
        (out / name).write_text(f"old {name}")
    real = os.replace

    def replace(src, dst):
        if Path(dst) == out / "weights.safetensors" and ".tmp" in Path(src).parent.name:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        export(run_dir, "torchvision", out)
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        n: f"old {n}" for n in ("README.md", "spec.json", "weights.safetensors")
    }


def test_detections_are_compared_as_sets():
    from bhsearch.export.onnx import compare_detections

    ref = {
        "boxes": torch.tensor([[10.0, 10, 20, 30], [50, 40, 60, 70], [5, 5, 9, 9]]),
        "scores": torch.tensor([0.9, 0.80001, 0.8]),
        "labels": torch.tensor([1, 1, 1]),
    }
    swapped = [0, 2, 1]  # the two near-equal scores change places in the other runtime
    got = {
        "boxes": ref["boxes"][swapped] + 3e-5,
        "scores": torch.tensor([0.9, 0.80002, 0.80001])[[0, 1, 2]],
        "labels": ref["labels"][swapped],
    }
    result = compare_detections(ref, got)
    assert result["boxes_max_abs_error"] == pytest.approx(3e-5, abs=1e-5)
    assert result["scores_max_abs_error"] == pytest.approx(2e-5, abs=1e-6) and result["labels_equal"]
    moved = dict(got, boxes=got["boxes"].clone())
    moved["boxes"][2, 0] += 4.0  # a real difference still shows
    assert compare_detections(ref, moved)["boxes_max_abs_error"] == pytest.approx(4.0, abs=1e-4)
    other = dict(got, labels=torch.tensor([1, 2, 1]))
    assert compare_detections(ref, other)["labels_equal"] is False


def test_mmdet_export_of_a_groupnorm_run(tmp_path):
    """A run trained from scratch uses GroupNorm: its weights must load, and the config says gn."""
    from mmengine.config import Config

    torch.manual_seed(4)
    run = tmp_path / "gn-run"
    model = tv_build_detector(SPEC, "faster_rcnn", norm="gn", **SMALL).eval()
    save_spec(SPEC, run / "spec.json", detector=detector_settings(model))
    save_weights(model, run / "model.safetensors")
    result = export(run, "mmdet", tmp_path / "mm")
    cfg = Config.fromfile(str(tmp_path / "mm" / result.report["config"]))
    assert cfg.model.backbone.norm == "gn" and cfg.model.backbone.norm_eval is False
    from bhsearch.export import mmdet_plugin

    backbone = mmdet_plugin.MODELS.build(cfg.model.backbone).eval()
    for name, tensor in model.backbone.body.state_dict().items():
        assert torch.equal(backbone.body.state_dict()[name], tensor), name


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_mmdet2_config_parses_and_builds_backbone(norm, tmp_path):
    """``--mmdet-version 2``: an MMDetection 2.x python config (checked with mmengine's parser)."""
    from mmengine.config import Config

    from bhsearch.export import mmdet_plugin

    torch.manual_seed(5)
    run = tmp_path / "run"
    model = tv_build_detector(SPEC, "faster_rcnn", norm=norm, **SMALL).eval()
    save_spec(SPEC, run / "spec.json", detector=detector_settings(model))
    save_weights(model, run / "model.safetensors")
    result = export(run, "mmdet", tmp_path / "mm", mmdet_version=2)
    assert result.report["mmdet_version"] == 2 and result.report["config"].endswith("_tinyperson_mmdet2.py")
    text = (tmp_path / "mm" / result.report["config"]).read_text()
    assert text.startswith("# MMDetection 2.x config") and "data_preprocessor" not in text
    cfg = Config.fromfile(str(tmp_path / "mm" / result.report["config"]))
    assert cfg.custom_imports == {"imports": ["bhsearch.export.mmdet_plugin"], "allow_failed_imports": False}
    assert cfg.model.type == "FasterRCNN" and cfg.model.neck.type == "FPN"
    backbone = cfg.model.backbone
    assert backbone.type == "BHSearchBackbone" and backbone.spec == SPEC.id and backbone.init_cfg is None
    expected = (
        {"type": "GN", "num_groups": 32, "requires_grad": True}
        if norm == "gn"
        else {"type": "BN", "requires_grad": True}
    )
    assert backbone.norm_cfg == expected and "norm" not in backbone
    assert cfg.model.train_cfg.rpn.assigner.type == "MaxIoUAssigner" and "rcnn" in cfg.model.test_cfg
    assert cfg.model.neck.in_channels == list(SPEC.out_channels)
    assert cfg.data.samples_per_gpu == 2 and cfg.data.train.img_prefix == "data/tiny_set/train/"
    assert cfg.data.test.ann_file == "data/tiny_set/annotations/task/tiny_set_test_all.json"
    assert cfg.data.train.pipeline[2] == {"type": "RandomCrop", "crop_size": (96, 128), "allow_negative_crop": True}
    assert cfg.data.train.pipeline[4].type == "Normalize" and cfg.data.train.pipeline[4].to_rgb is True
    assert cfg.lr_config.step == [8, 11] and cfg.runner == {"type": "EpochBasedRunner", "max_epochs": 12}
    assert cfg.optimizer.lr == 0.01
    built = mmdet_plugin.MODELS.build(dict(backbone)).eval()
    for name, tensor in model.backbone.body.state_dict().items():
        assert torch.equal(built.body.state_dict()[name], tensor), name
    with torch.no_grad():
        assert [f.shape[1] for f in built(_image(2)[None])] == cfg.model.neck.in_channels

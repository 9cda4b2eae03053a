"""ResNet builder: torchvision weight compatibility, parameter counts, shapes, strides, norms."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from bhsearch import build_backbone, count, get_spec
from bhsearch.errors import UsageError
from bhsearch.models.common import gn_groups, make_norm
from bhsearch.models.resnet import BasicBlock, Bottleneck, ResNetBackbone, make_stage, make_stem

torch.set_num_threads(1)

TORCHVISION = {
    "resnet18": (torchvision.models.resnet18, 11_176_512),
    "resnet34": (torchvision.models.resnet34, 21_284_672),
    "resnet50": (torchvision.models.resnet50, 23_508_032),
}


def trunk_state_dict(fn) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v for k, v in fn(weights=None).state_dict().items() if not k.startswith("fc.")}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_state_dict_loads_strict(name):
    fn, params = TORCHVISION[name]
    sd = trunk_state_dict(fn)
    model = build_backbone(name)
    assert set(model.state_dict()) == set(sd)
    model.load_state_dict(sd, strict=True)
    assert n_params(model) == params == count(name, "64x64").params
    frozen = build_backbone(name, norm="frozen_bn")
    frozen.load_state_dict(sd, strict=True)
    assert n_params(frozen) == count(name, "64x64").conv_params  # frozen BN holds buffers only
    torch.testing.assert_close(frozen.layer1[0].bn1.weight, sd["layer1.0.bn1.weight"])


def test_same_features_as_torchvision():
    tv = torchvision.models.resnet50(weights=None).eval()
    ours = build_backbone("resnet50").eval()
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}, strict=True)
    x = torch.randn(1, 3, 75, 61)
    with torch.no_grad():
        feats = ours(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = {}
        for i, layer in enumerate([tv.layer1, tv.layer2, tv.layer3, tv.layer4]):
            y = layer(y)
            expected[f"c{i + 2}"] = y
    assert list(feats) == ["c2", "c3", "c4", "c5"]
    for key, value in expected.items():
        torch.testing.assert_close(feats[key], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    "ref",
    ["resnet18", "bh-resnet50", "resnet:bottleneck:k3s2:2-3-1-1:s2-2-2-2", "resnet:basic:deeps2pc32:1-2-1-1"],
)
def test_output_shapes_and_attributes(ref):
    spec = get_spec(ref).scaled(0.25) if "bottleneck" in get_spec(ref).block else get_spec(ref)
    model = build_backbone(spec).eval()
    assert model.spec == spec
    assert model.out_channels == list(spec.out_channels)
    assert model.out_strides == list(spec.out_strides) == [4, 8, 16, 32]
    assert [f["num_chs"] for f in model.feature_info] == model.out_channels
    assert [f["reduction"] for f in model.feature_info] == model.out_strides
    assert [f["module"] for f in model.feature_info] == ["layer1", "layer2", "layer3", "layer4"]
    assert [name for name, _ in model.named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    for (key, feat), c, s in zip(out.items(), model.out_channels, model.out_strides, strict=True):
        assert feat.shape == (2, c, 64 // s, 96 // s), key
    report = count(spec, "96x64")
    assert n_params(model) == report.params
    assert [tuple(v.shape[1:]) for v in out.values()] == [st.out_shape for st in report.stages[1:]]


def test_odd_input_sizes_match_cost_model():
    spec = get_spec("bh-resnet50").scaled(0.125)
    model = build_backbone(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 37, 53))
    assert [tuple(v.shape[1:]) for v in out.values()] == [st.out_shape for st in count(spec, "53x37").stages[1:]]


def test_deep_stem_structure():
    model = build_backbone(get_spec("resnet50").replace(deep_stem=True, stem_width=32).scaled(0.5))
    convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]


@pytest.mark.parametrize("norm", ["bn", "gn", "frozen_bn"])
def test_norms(norm):
    spec = get_spec("resnet50").scaled(0.125)
    model = build_backbone(spec, norm=norm)
    kinds = {type(m).__name__ for m in model.modules()} & {"BatchNorm2d", "GroupNorm", "FrozenBatchNorm2d"}
    assert kinds == {"bn": {"BatchNorm2d"}, "gn": {"GroupNorm"}, "frozen_bn": {"FrozenBatchNorm2d"}}[norm]
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    out["c5"].sum().backward()
    if norm != "frozen_bn":
        assert n_params(model) == count(spec, "32x32").params


def test_make_norm_and_groups():
    assert [gn_groups(c) for c in (1, 2, 4, 16, 18, 36, 64, 256, 2048, 100)] == [1, 1, 2, 8, 9, 18, 32, 32, 32, 25]
    for c in range(1, 300):
        g = gn_groups(c)
        assert c % g == 0 and g <= 32 and (c < 2 or c // g >= 2)
    gn = make_norm("gn", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    assert isinstance(make_norm("bn", 8), nn.BatchNorm2d)
    with pytest.raises(UsageError, match="norm must be one of"):
        make_norm("ln", 8)


def test_public_blocks():
    b = Bottleneck(
        64, 64, stride=2, downsample=nn.Sequential(nn.Conv2d(64, 256, 1, 2, bias=False), make_norm("bn", 256))
    )
    assert b(torch.randn(1, 64, 16, 16)).shape == (1, 256, 8, 8)
    assert BasicBlock(8, 8)(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)
    stage = make_stage("bottleneck", 64, 32, 3, stride=2, norm="gn")
    assert len(stage) == 3 and stage[0].downsample is not None and stage[1].downsample is None
    assert stage(torch.randn(1, 64, 8, 8)).shape == (1, 128, 4, 4)
    assert make_stage(BasicBlock, 16, 16, 2)[0].downsample is None
    stem = make_stem(get_spec("bh-resnet50"), "bn")
    assert [n for n, _ in stem.named_children()] == ["conv1", "bn1", "relu", "maxpool"]
    assert stem(torch.randn(1, 3, 32, 40)).shape == (1, 64, 16, 20)
    with pytest.raises(UsageError):
        make_stage("wide", 8, 8, 1)


def test_fpn_wrapper_compatible():
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    spec = get_spec("bh-resnet50").scaled(0.125)
    body = build_backbone(spec)
    fpn = BackboneWithFPN(
        body, {f"layer{i + 1}": str(i) for i in range(4)}, list(spec.out_channels), out_channels=16
    ).eval()
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 64, 64))
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2, 1]


def test_not_a_resnet():
    with pytest.raises(UsageError, match="resnet spec"):
        ResNetBackbone(get_spec("hrnet18"))

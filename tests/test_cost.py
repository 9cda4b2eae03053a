"""Analytic cost model: golden values, and exact agreement with fvcore and ptflops on built modules."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision

from bhsearch import count, get_spec
from bhsearch.cost_resnet import BlockUnit, HeadUnit, StemUnit, resnet_units, unit_cost
from bhsearch.errors import UsageError
from bhsearch.spec import ResNetSpec
from bhsearch.verify import measure_with_fvcore, measure_with_ptflops, verify_counts

torch.set_num_threads(1)

# (params, conv_params, conv MACs, paper FLOPs, conv output elements) at 640x512
GOLDEN_640x512 = {
    "resnet50": (23_508_032, 23_454_912, 26_691_502_080, 26_904_657_920, 72_581_120),
    "bh-resnet50": (10_948_160, 10_913_472, 26_738_688_000, 27_115_028_480, 121_733_120),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_640x512))
def test_golden_values(name):
    r = count(name, "640x512")
    assert (r.params, r.conv_params, r.macs, r.flops, r.activations) == GOLDEN_640x512[name]


def test_paper_table4_resnet_rows():
    # Table 4 of the paper: ResNet50 26.905 GFLOPs, BH-ResNet50 27.115 GFLOPs and 10.91M conv weights.
    assert round(count("resnet50", "640x512").flops / 1e9, 3) == 26.905
    bh = count("bh-resnet50", "640x512")
    assert round(bh.flops / 1e9, 3) == 27.115
    assert round(bh.conv_params / 1e6, 2) == 10.91
    # mmdet frozen_stages=1 (stem and stage 1 frozen, BN frozen): the paper's 23.23M trainable for ResNet50
    r = count("resnet50", "640x512")
    trainable_convs = sum(s.conv_params for s in r.stages[2:])
    assert round(trainable_convs / 1e6, 2) == 23.23


def test_pycls_resnet50_with_classifier():
    r = count("resnet50", "224x224", num_classes=1000)
    assert r.macs == 4_089_185_256
    assert r.params == 25_557_032
    assert r.flops == 4_121_925_096
    assert [s.name for s in r.stages] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]


def test_classifier_head_matches_ptflops_and_fvcore():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    r = count("resnet18", "45x33", num_classes=10)
    pt = measure_with_ptflops(model, "45x33")
    fv = measure_with_fvcore(model, "45x33")
    assert (r.params, r.macs, r.flops) == (pt["params"], pt["macs"], pt["flops"])
    assert r.macs == fv["macs"] + fv["linear_bias"]


def test_stage_breakdown_sums_and_shapes():
    r = count("bh-resnet50", "640x512")
    assert [s.name for s in r.stages] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert [s.out_shape for s in r.stages] == [
        (64, 256, 320),
        (256, 128, 160),
        (512, 64, 80),
        (1024, 32, 40),
        (2048, 16, 20),
    ]
    d = r.to_dict()
    assert d["macs"] == sum(s["macs"] for s in d["stages"]) == r.macs


def test_conv_macs_are_degenerate_over_block_counts():
    # DESIGN §2: every non-first bottleneck costs the same conv MACs in every stage.
    base = count("resnet50", "640x512")
    other = count(get_spec("resnet50").replace(blocks=(7, 6, 2, 1)), "640x512")
    assert other.macs == base.macs
    assert other.flops != base.flops and other.activations > base.activations


def test_units_are_hashable_and_sum_to_count():
    spec = get_spec("bh-resnet50")
    units = list(resnet_units(spec, (640, 512), num_classes=5))
    assert isinstance(units[0][1], StemUnit) and isinstance(units[-1][1], HeadUnit)
    assert all(isinstance(u, BlockUnit) for _, u, _ in units[1:-1])
    assert len(units) == 2 + sum(spec.blocks)
    first = units[1][1]
    assert first == BlockUnit("bottleneck", 64, 64, 2, 256, 320, True)
    assert len({u for _, u, _ in units}) == 1 + 3 * 2 + 1 + 1  # stem, first + repeat (stage 4: one block), head
    r = count(spec, (640, 512), num_classes=5)
    assert sum(c.macs for _, _, c in units) == r.macs
    assert sum(c.flops for _, _, c in units) == r.flops
    assert unit_cost(first) == units[1][2]


def test_count_errors():
    with pytest.raises(UsageError, match="num_classes"):
        count("resnet50", "64x64", num_classes=0)
    with pytest.raises(UsageError, match="input size"):
        count("resnet50", "640x")
    with pytest.raises(UsageError, match="unknown spec"):
        count("resnet500", "64x64")


def random_small_resnet(rng: random.Random) -> ResNetSpec:
    n = rng.randint(1, 4)
    deep = rng.random() < 0.2
    return ResNetSpec(
        block=rng.choice(["basic", "bottleneck"]),
        blocks=tuple(rng.randint(1, 3) for _ in range(n)),
        widths=tuple(rng.randint(1, 12) for _ in range(n)),
        strides=tuple(rng.choice([1, 2]) for _ in range(n)),
        stem_width=rng.randint(2, 12),
        stem_kernel=3 if deep else rng.choice([1, 3, 5, 7]),
        stem_stride=rng.choice([1, 2]),
        stem_pool=rng.random() < 0.6,
        deep_stem=deep,
    )


def assert_verified(spec, size, norm="bn"):
    result = verify_counts(spec, size, norm=norm)
    assert result["ok"], (spec.id, size, result["checks"], result["analytic"], result["fvcore"], result["ptflops"])
    return result


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "bh-resnet50", "resnet101"])
def test_named_specs_exact_against_fvcore_and_ptflops(name):
    spec = get_spec(name).scaled(0.25)
    result = assert_verified(spec, "67x45")
    assert result["fvcore"]["macs"] == result["ptflops"]["macs"] == result["analytic"]["macs"]


def test_named_resnet50_exact_at_small_full_width():
    result = assert_verified(get_spec("bh-resnet50"), "64x48")
    assert result["ptflops"]["params"] == 10_948_160


def test_random_specs_exact_against_fvcore_and_ptflops():
    rng = random.Random(2024)
    for _ in range(50):
        spec = random_small_resnet(rng)
        size = (rng.randint(9, 71), rng.randint(9, 71))
        assert_verified(spec, size, norm=rng.choice(["bn", "gn"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "bh-resnet50"])
def test_full_size_exact(name):
    result = assert_verified(get_spec(name), "640x512")
    params, _, macs, flops, _ = GOLDEN_640x512[name]
    assert (result["ptflops"]["params"], result["ptflops"]["macs"], result["ptflops"]["flops"]) == (params, macs, flops)

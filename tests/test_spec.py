"""Specs: ids round-trip, dict/JSON/YAML round-trip, validation errors, input sizes."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from bhsearch.errors import UsageError
from bhsearch.spec import (
    NAMED_SPECS,
    HRNetSpec,
    HRStage,
    ResNetSpec,
    get_spec,
    hrnet,
    parse_input_size,
    parse_spec_id,
    save_spec,
    spec_from_dict,
    spec_name,
)


def random_resnet(rng: random.Random) -> ResNetSpec:
    n = rng.randint(1, 5)
    deep = rng.random() < 0.2
    return ResNetSpec(
        block=rng.choice(["basic", "bottleneck"]),
        blocks=tuple(rng.randint(1, 9) for _ in range(n)),
        widths=tuple(rng.randint(1, 300) for _ in range(n)),
        strides=tuple(rng.choice([1, 2]) for _ in range(n)),
        stem_width=rng.randint(2, 130),
        stem_kernel=3 if deep else rng.choice([1, 3, 5, 7]),
        stem_stride=rng.choice([1, 2]),
        stem_pool=rng.random() < 0.5,
        deep_stem=deep,
    )


def random_hrnet(rng: random.Random) -> HRNetSpec:
    n = rng.randint(1, 3)
    widths = tuple(rng.randint(1, 80) for _ in range(n + 1))
    stages = tuple(
        HRStage(
            rng.randint(1, 4),
            tuple(rng.randint(1, 5) for _ in range(i + 2)),
            widths[: i + 2],
            rng.choice(["basic", "bottleneck"]),
        )
        for i in range(n)
    )
    return HRNetSpec(
        stages=stages,
        stem_width=rng.randint(1, 96),
        stem_strides=(rng.choice([1, 2]), rng.choice([1, 2])),
        pool_after_stage1=rng.random() < 0.5,
        stage1_blocks=rng.randint(1, 6),
        stage1_width=rng.randint(1, 96),
        stage1_block=rng.choice(["basic", "bottleneck"]),
    )


@pytest.mark.parametrize("name", sorted(NAMED_SPECS))
def test_named_spec_ids_round_trip(name):
    spec = NAMED_SPECS[name]
    assert parse_spec_id(spec.id) == spec
    assert get_spec(spec.id) == spec
    assert get_spec(name) == spec
    assert get_spec(name.upper().replace("-", "_")) == spec
    assert spec_from_dict(spec.to_dict()) == spec
    assert spec_name(spec) == name
    assert str(spec) == name


def test_known_ids():
    assert NAMED_SPECS["resnet50"].id == "resnet:bottleneck:k7s2p:3-4-6-3"
    assert NAMED_SPECS["bh-resnet50"].id == "resnet:bottleneck:k3s1p:7-6-2-1:s2-2-2-2"
    assert NAMED_SPECS["hrnet32"].id == "hrnet:w32:s22:4b64:1x4.4:4x4.4.4:3x4.4.4.4"
    assert get_spec("resnet:basic:k7s2p:2-2-2-2") == NAMED_SPECS["resnet18"]


def test_random_specs_round_trip():
    rng = random.Random(1234)
    for _ in range(150):
        spec = random_resnet(rng) if rng.random() < 0.6 else random_hrnet(rng)
        assert parse_spec_id(spec.id) == spec, spec.id
        assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        assert spec_from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec


def test_scaled_specs_round_trip():
    for name in ("resnet50", "bh-resnet50", "hrnet18", "bh-hrnet32"):
        small = NAMED_SPECS[name].scaled(0.25)
        assert get_spec(small.id) == small
        assert small.out_strides == NAMED_SPECS[name].out_strides


def test_file_round_trip(tmp_path):
    spec = NAMED_SPECS["bh-resnet50"]
    path = save_spec(spec, tmp_path / "spec.json", note="x")
    assert get_spec(str(path)) == spec
    ypath = tmp_path / "spec.yaml"
    ypath.write_text(yaml.safe_dump(spec.to_dict()))
    assert get_spec(ypath) == spec


def test_derived_properties():
    r50, bh = NAMED_SPECS["resnet50"], NAMED_SPECS["bh-resnet50"]
    assert r50.out_strides == bh.out_strides == (4, 8, 16, 32)
    assert r50.out_channels == bh.out_channels == (256, 512, 1024, 2048)
    assert NAMED_SPECS["resnet18"].out_channels == (64, 128, 256, 512)
    assert NAMED_SPECS["hrnet32"].out_strides == NAMED_SPECS["bh-hrnet32"].out_strides == (4, 8, 16, 32)
    assert hrnet(18).branch_widths == (18, 36, 72, 144)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block": "wide"}, "block must be one of"),
        ({"blocks": (3, 0, 6, 3)}, "at least one block"),
        ({"blocks": (3, 4, 6)}, "same length"),
        ({"strides": (1, 3, 2, 2)}, "strides must be 1 or 2"),
        ({"stem_kernel": 4}, "stem_kernel"),
        ({"stem_stride": 4}, "stem_stride"),
        ({"widths": (64, -1, 256, 512)}, "widths must be positive"),
        ({"blocks": "abc"}, "must be integers"),
    ],
)
def test_resnet_validation(kwargs, message):
    with pytest.raises(UsageError, match=message):
        ResNetSpec(**kwargs)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("resnet5O", "unknown spec"),
        ("resnet:bottleneck:q7s2p:3-4-6-3", "bad stem code"),
        ("resnet:bottleneck:k7s2p:3-x-6-3", "expected integers"),
        ("resnet:bottleneck", "at least 4"),
        ("hrnet:w32:s33:4b64:1x4.4", "bad stem code"),
        ("hrnet:w32:s22:4b64:1x4.4.4", "same length"),
        ("vgg:16", "unknown spec"),
        ({"family": "resnet", "depth": 50}, "unknown resnet spec field"),
        ({"family": "alexnet"}, "family"),
    ],
)
def test_bad_refs(ref, message):
    with pytest.raises(UsageError, match=message):
        get_spec(ref)


def test_unknown_name_suggests():
    with pytest.raises(UsageError, match="did you mean resnet50"):
        get_spec("resnet05")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        get_spec(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: resnet\nblocks: [3, 4\n")
    with pytest.raises(UsageError, match="bad.yaml: malformed YAML"):
        get_spec(str(bad))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("640x512", (640, 512)), (" 32X48 ", (32, 48)), ((7, 9), (7, 9)), (224, (224, 224))],
)
def test_parse_input_size(text, expected):
    assert parse_input_size(text) == expected


@pytest.mark.parametrize("text", ["640x", "x512", "640*512", "0x512", "-1x3", "abc", (0, 4), (1, 2, 3)])
def test_parse_input_size_errors(text):
    with pytest.raises(UsageError, match="input size"):
        parse_input_size(text)

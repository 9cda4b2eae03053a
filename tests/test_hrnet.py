"""HRNet builder (timm parity, shapes, norms) and HRNet cost model (exact against fvcore / ptflops)."""

from __future__ import annotations

import contextlib
import io
import random
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from bhsearch.cost_hrnet import (
    FuseUnit,
    TransitionUnit,
    count_hrnet,
    hrnet_units,
)
from bhsearch.models import build_backbone
from bhsearch.models.hrnet import HRModule, HRNetBackbone, build_unit
from bhsearch.spec import HRNetSpec, HRStage, get_spec

torch.set_num_threads(1)

# Pinned at 640x512: analytic, equal to ptflops (pytorch backend, count_functional=False) and to the
# paper's Table 4 (DESIGN §2/§3); test_golden_paper_flops_ptflops_640x512 (slow) re-measures them.
GOLDEN_640x512 = {
    # name: (params, conv MACs, paper FLOPs)
    "hrnet18": (9_562_260, 21_433_359_360, 21_711_312_640),
    "hrnet32": (29_305_536, 51_536_199_680, 51_933_491_200),
    "bh-hrnet18": (5_845_396, 21_216_107_520, 21_655_545_600),
    "bh-hrnet32": (12_361_664, 51_205_898_240, 51_894_005_760),
}
PAPER = {"hrnet18": (9.56, 21.71), "hrnet32": (29.31, 51.93), "bh-hrnet18": (5.85, 21.66), "bh-hrnet32": (12.36, 51.89)}


# --------------------------------------------------------------------------- counting helpers


def _ptflops(model: nn.Module, width: int, height: int, backend: str) -> int:
    from ptflops import get_model_complexity_info

    cfg = {"count_functional": False} if backend == "pytorch" else {}
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flops, _ = get_model_complexity_info(
            model,
            (3, height, width),
            as_strings=False,
            print_per_layer_stat=False,
            backend=backend,
            backend_specific_config=cfg,
            ost=io.StringIO(),
        )
    return int(flops)


def _fvcore(model: nn.Module, width: int, height: int):
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, height, width))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return analysis.by_operator(), analysis.by_module_and_operator()


def _conv_activations(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def _stage_prefixes(spec: HRNetSpec) -> dict[str, tuple[str, ...]]:
    out = {"stem": ("conv1", "bn1", "conv2", "bn2"), "stage1": ("layer1",)}
    for k in range(1, len(spec.stages) + 1):
        out[f"stage{k + 1}"] = (f"transition{k}", f"stage{k + 1}")
    return out


def _check_exact(spec: HRNetSpec, width: int, height: int, fvcore: bool = True) -> None:
    """Analytic cost == fvcore (conv MACs, per stage too) == ptflops (MACs, paper FLOPs) == module."""
    torch.manual_seed(0)
    model = HRNetBackbone(spec).eval()
    report = count_hrnet(spec, (width, height))
    assert report.params == sum(p.numel() for p in model.parameters())
    conv_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert report.conv_params == conv_params

    for stage in report.stages:
        prefixes = _stage_prefixes(spec)[stage.name]
        params = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in prefixes)
        assert (stage.name, stage.params) == (stage.name, params)
    if fvcore:  # jit tracing makes fvcore the slowest counter
        by_op, by_module = _fvcore(model, width, height)
        assert report.macs == by_op["conv"]
        for stage in report.stages:
            macs = sum(by_module.get(p, {}).get("conv", 0) for p in _stage_prefixes(spec)[stage.name])
            assert (stage.name, stage.macs) == (stage.name, macs)

    assert report.macs == _ptflops(model, width, height, "aten")
    assert report.flops == _ptflops(model, width, height, "pytorch")

    x = torch.zeros(1, 3, height, width)
    assert report.activations == _conv_activations(model, x)
    with torch.no_grad():
        out = model(x)
    last = report.stages[-1].out_shape
    assert tuple(list(out.values())[-1].shape[1:]) == last


def random_hrnet_spec(rng: random.Random) -> HRNetSpec:
    """A small random valid HRNet spec (every field exercised)."""
    n_stages = rng.randint(1, 3)
    widths = [rng.randint(2, 10) for _ in range(n_stages + 1)]
    stages = tuple(
        HRStage(
            modules=rng.randint(1, 2),
            blocks=tuple(rng.randint(1, 2) for _ in range(i + 2)),
            widths=tuple(widths[: i + 2]),
            block=rng.choice(["basic", "basic", "bottleneck"]),
        )
        for i in range(n_stages)
    )
    return HRNetSpec(
        stages=stages,
        stem_width=rng.randint(3, 12),
        stem_strides=(rng.choice([1, 2]), rng.choice([1, 2])),
        pool_after_stage1=rng.random() < 0.5,
        stage1_blocks=rng.randint(1, 3),
        stage1_width=rng.randint(2, 8),
        stage1_block=rng.choice(["basic", "bottleneck"]),
    )


# --------------------------------------------------------------------------- timm parity


def _timm_trunk(name: str):
    from timm.models.hrnet import HighResolutionNet, cfg_cls

    torch.manual_seed(0)
    return HighResolutionNet(cfg_cls[f"hrnet_w{name[5:]}"], head="")


@pytest.mark.parametrize(
    "name,params",
    [("hrnet18", 9_562_260), ("hrnet32", 29_305_536), pytest.param("hrnet48", 65_325_120, marks=pytest.mark.slow)],
)
def test_param_parity_and_state_dict_with_timm(name, params):
    timm_model = _timm_trunk(name)
    ours = build_backbone(name)
    assert sum(p.numel() for p in timm_model.parameters()) == params
    assert sum(p.numel() for p in ours.parameters()) == params
    assert count_hrnet(get_spec(name), (640, 512)).params == params
    result = ours.load_state_dict(timm_model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_timm_weights_give_timm_outputs():
    timm_model = _timm_trunk("hrnet18").eval()
    ours = build_backbone("hrnet18").eval()
    ours.load_state_dict(timm_model.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = timm_model.forward_features(x)
        got = ours(x)
    assert list(got) == ["c2", "c3", "c4", "c5"]
    for a, b in zip(expected, got.values(), strict=True):
        assert torch.equal(a, b)


def test_frozen_bn_loads_timm_weights():
    timm_model = _timm_trunk("hrnet18")
    ours = build_backbone("hrnet18", norm="frozen_bn")
    ours.load_state_dict(timm_model.state_dict(), strict=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours.modules())


# --------------------------------------------------------------------------- builder contract


@pytest.mark.parametrize("name", ["hrnet18", "bh-hrnet18", "bh-hrnet32"])
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_outputs_strides_channels(name, norm):
    spec = get_spec(name).scaled(0.25)
    model = build_backbone(spec, norm=norm).eval()
    assert model.spec == spec
    assert model.out_channels == list(spec.out_channels)
    assert model.out_strides == [4, 8, 16, 32] == list(spec.out_strides)
    assert [f["num_chs"] for f in model.feature_info] == model.out_channels
    assert [f["reduction"] for f in model.feature_info] == model.out_strides
    assert sum(p.numel() for p in model.parameters()) == count_hrnet(spec, (96, 64)).params  # GN affine == BN affine
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 96))
    assert list(out) == ["c2", "c3", "c4", "c5"]
    for t, c, s in zip(out.values(), model.out_channels, model.out_strides, strict=True):
        assert tuple(t.shape) == (2, c, 64 // s, 96 // s)


def test_odd_input_sizes_crop_upsampling():
    spec = get_spec("hrnet18").scaled(0.25)
    model = build_backbone(spec).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 37, 53))
    sizes = [tuple(t.shape[-2:]) for t in out.values()]
    assert sizes == [(10, 14), (5, 7), (3, 4), (2, 2)]  # ceil halvings of the stride-4 map


def test_bottleneck_last_stage_channels():
    spec = get_spec("hrnet:w4:s22:1b4:1x1.1b").replace(stem_width=8)
    model = build_backbone(spec).eval()
    assert spec.out_channels == (16, 32)
    assert model.out_channels == [16, 32]
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 32, 32))
    assert [t.shape[1] for t in out.values()] == [16, 32]


def test_hrmodule_single_scale_output():
    module = HRModule(blocks=(1, 1, 1), widths=(4, 8, 16), multi_scale_output=False).eval()
    xs = [torch.zeros(1, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate((4, 8, 16))]
    with torch.no_grad():
        ys = module(xs)
    assert len(ys) == 1 and tuple(ys[0].shape) == (1, 4, 16, 16)


def test_bh_specs_pool_after_stage1():
    spec = get_spec("bh-hrnet18")
    model = build_backbone(spec.scaled(0.25))
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert model.maxpool.kernel_size == 3 and model.maxpool.stride == 2 and model.maxpool.padding == 1
    assert spec.stem_strides == (1, 2) and spec.stage1_width == 36
    assert [s.modules for s in spec.stages] == [1, 4, 3]
    assert [s.blocks[0] for s in spec.stages] == [4, 3, 2]


# --------------------------------------------------------------------------- cost model


@pytest.mark.parametrize("name", list(GOLDEN_640x512))
def test_golden_paper_values_640x512(name):
    report = count_hrnet(get_spec(name), (640, 512))
    assert (report.params, report.macs, report.flops) == GOLDEN_640x512[name]
    params_m, gflops = PAPER[name]
    assert round(report.params / 1e6, 2) == params_m
    assert round(report.flops / 1e9, 2) == gflops
    assert [s.name for s in report.stages] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert report.stages[-1].out_shape == (get_spec(name).out_channels[-1], 16, 20)


def test_bh_hrnet_stage_shapes_640x512():
    report = count_hrnet(get_spec("bh-hrnet18"), (640, 512))
    shapes = [s.out_shape for s in report.stages]
    assert shapes == [(64, 256, 320), (144, 128, 160), (36, 64, 80), (72, 32, 40), (144, 16, 20)]


@pytest.mark.parametrize("name", ["hrnet18", "hrnet32", "bh-hrnet18", "bh-hrnet32"])
def test_exact_against_fvcore_ptflops_named(name):
    _check_exact(get_spec(name).scaled(0.5), 64, 48)


@pytest.mark.parametrize("name,size", [("hrnet18", (53, 37)), ("bh-hrnet32", (45, 70))])
def test_exact_at_odd_sizes(name, size):
    _check_exact(get_spec(name).scaled(0.25), *size, fvcore=False)  # random specs run fvcore at odd sizes


@pytest.mark.parametrize("seed", range(25))
def test_exact_on_random_specs(seed):
    rng = random.Random(1000 + seed)
    spec = random_hrnet_spec(rng)
    width, height = rng.randint(9, 72), rng.randint(9, 72)
    _check_exact(spec, width, height)


@pytest.mark.parametrize("name", ["hrnet32", "bh-hrnet18"])
def test_units_add_up_to_count(name):
    spec = get_spec(name)
    report = count_hrnet(spec, (640, 512))
    units = list(hrnet_units(spec, (640, 512)))
    for field in ("params", "conv_params", "macs", "flops", "activations"):
        assert sum(getattr(u.cost, field) for u in units) == getattr(report, field)
    for stage in report.stages:
        assert sum(u.cost.flops for u in units if u.stage == stage.name) == stage.flops
    n_blocks = spec.stage1_blocks + sum(st.modules * sum(st.blocks) for st in spec.stages)
    assert sum(u.unit.kind == "block" for u in units) == n_blocks
    assert sum(u.unit.kind == "fuse" for u in units) == sum(st.modules for st in spec.stages)
    assert sum(u.unit.kind == "transition" for u in units) == len(spec.stages)
    assert len({u.unit for u in units}) < len(units)  # hashable, repeated blocks share a key


def test_build_unit_matches_unit_cost():
    spec = random_hrnet_spec(random.Random(7)).replace(pool_after_stage1=True)
    seen = set()
    for item in hrnet_units(spec, (41, 30)):
        if item.unit in seen:
            continue
        seen.add(item.unit)
        module, inputs = build_unit(item.unit)
        module.eval()
        assert sum(p.numel() for p in module.parameters()) == item.cost.params
        with torch.no_grad():
            out = module(inputs)
        out = out[-1] if isinstance(out, list) else out
        assert tuple(out.shape[1:]) == item.cost.out_shape
        if isinstance(item.unit, (FuseUnit, TransitionUnit)):
            assert len(inputs) == len(item.unit.sizes)
        assert item.unit.to_dict()["kind"] == item.unit.kind
    assert {type(u).__name__ for u in seen} >= {"StemUnit", "BlockUnit", "PoolUnit", "TransitionUnit", "FuseUnit"}


def test_cost_model_does_not_import_torch():
    code = (
        "import sys, bhsearch.cost_hrnet as c, bhsearch.spec as s; "
        "c.count_hrnet(s.get_spec('bh-hrnet32'), (640, 512)); "
        "list(c.hrnet_units(s.get_spec('hrnet18'), (64, 64))); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GOLDEN_640x512))
def test_golden_paper_flops_ptflops_640x512(name):
    model = build_backbone(name).eval()
    assert _ptflops(model, 640, 512, "pytorch") == GOLDEN_640x512[name][2]
    assert sum(p.numel() for p in model.parameters()) == GOLDEN_640x512[name][0]

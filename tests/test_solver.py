"""Solver: exhaustive agreement with brute force on small spaces, constraints, ranking, errors."""

from __future__ import annotations

import itertools
import json
import zlib

import pytest
import yaml

from bhsearch import count, get_spec
from bhsearch.errors import InfeasibleError, UsageError
from bhsearch.solver import SORT_KEYS, csv_rows, load_space, random_candidates, solve
from bhsearch.spec import HRStage

SMALL_RESNET = {
    "family": "resnet",
    "description": "test space",
    "blocks": [[1, 4], [2, 5], [1, 6], [1, 3]],
    "stems": ["k7s2p", "k3s1p", {"kernel": 3, "stride": 2, "pool": False}, "k3s1"],
    "stage_strides": [[1, 2, 2, 2], [2, 2, 2, 2]],
}
SMALL_HRNET = {
    "family": "hrnet",
    "stage1_blocks": [3, 5],
    "stages": [
        {"modules": 1, "blocks": [2, 7]},
        {"modules": [2, 4], "blocks": [1, 4]},
        {"modules": [1, 3], "blocks": [1, 3]},
    ],
    "stems": ["s22", "s12p"],
}


def write_space(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def bottom_heavy(depths, base_depths, bottom=1):
    if tuple(depths) == tuple(base_depths) or sum(depths[:bottom]) < sum(base_depths[:bottom]):
        return False
    return all(sum(depths[k:]) <= sum(base_depths[k:]) for k in range(bottom, len(depths)))


def brute_force_resnet(base, size, space, tol, order=True):
    base = get_spec(base)
    target = count(base, size).flops
    ids = set()
    for stem, strides in itertools.product(space["stems"], space["stage_strides"]):
        kw = load_space_stem(stem)
        for blocks in itertools.product(*(range(lo, hi + 1) for lo, hi in space["blocks"])):
            spec = base.replace(blocks=blocks, strides=tuple(strides), **kw)
            if spec.out_strides != base.out_strides:
                continue
            if abs(count(spec, size).flops / target - 1) > tol / 100 + 1e-12:
                continue
            if order and not bottom_heavy(blocks, base.blocks):
                continue
            ids.add(spec.id)
    return ids


def load_space_stem(stem):
    if isinstance(stem, dict):
        return {"stem_kernel": stem["kernel"], "stem_stride": stem["stride"], "stem_pool": stem["pool"]}
    k, rest = stem[1:].split("s")
    return {"stem_kernel": int(k), "stem_stride": int(rest[0]), "stem_pool": rest.endswith("p")}


@pytest.mark.parametrize(("match", "tol"), [("flops", 3.0), ("macs", 1.0), ("activations", 10.0)])
def test_resnet_matches_brute_force(tmp_path, match, tol):
    path = write_space(tmp_path, SMALL_RESNET)
    result = solve("resnet50", "160x128", space=path, match=match, tolerance=tol)
    base = get_spec("resnet50")
    target = getattr(count(base, "160x128"), match)
    expected = set()
    for stem, strides in itertools.product(SMALL_RESNET["stems"], SMALL_RESNET["stage_strides"]):
        kw = load_space_stem(stem)
        for blocks in itertools.product(*(range(lo, hi + 1) for lo, hi in SMALL_RESNET["blocks"])):
            spec = base.replace(blocks=blocks, strides=tuple(strides), **kw)
            if spec.out_strides != base.out_strides:
                continue
            value = getattr(count(spec, "160x128"), match)
            if abs(value / target - 1) <= tol / 100 and bottom_heavy(blocks, base.blocks):
                expected.add(spec.id)
    assert expected, "the test space should have feasible candidates"
    assert {c.id for c in result.candidates} == expected
    assert result.feasible == len(expected)
    for c in result.candidates:  # costs are exact
        r = count(c.spec, "160x128")
        assert (c.macs, c.flops, c.params, c.activations) == (r.macs, r.flops, r.params, r.activations)
        assert c.error == pytest.approx(getattr(r, match) / target - 1)
        assert abs(c.error) <= tol / 100 + 1e-12
        assert c.bh_score == pytest.approx((r.stages[0].flops + r.stages[1].flops) / r.flops)


def test_hrnet_matches_brute_force(tmp_path):
    path = write_space(tmp_path, SMALL_HRNET)
    base = get_spec("hrnet18")
    size = "96x64"
    result = solve(base, size, space=path, tolerance=10.0)
    target = count(base, size).flops
    base_depths = (4, 4, 16, 12)
    expected = set()
    s2, s3, s4 = SMALL_HRNET["stages"]
    for stem_strides, pool in (((2, 2), False), ((1, 2), True)):
        for b1, (m2, b2), (m3, b3), (m4, b4) in itertools.product(
            range(3, 6),
            itertools.product([1], range(2, 8)),
            itertools.product(range(2, 5), range(1, 5)),
            itertools.product(range(1, 4), range(1, 4)),
        ):
            stages = tuple(
                HRStage(m, (b,) * st.branches, st.widths, st.block)
                for st, (m, b) in zip(base.stages, [(m2, b2), (m3, b3), (m4, b4)], strict=True)
            )
            spec = base.replace(stem_strides=stem_strides, pool_after_stage1=pool, stage1_blocks=b1, stages=stages)
            r = count(spec, size)
            depths = (b1, m2 * b2, m3 * b3, m4 * b4)
            if abs(r.flops / target - 1) <= 0.10 and bottom_heavy(depths, base_depths):
                expected.add(spec.id)
    assert expected
    assert {c.id for c in result.candidates} == expected
    for c in result.candidates[:20]:
        assert c.flops == count(c.spec, size).flops


def test_default_resnet50_contains_paper_spec():
    result = solve("resnet50", "640x512")
    assert result.space_path.endswith("resnet.yaml")
    papers = [c for c in result.candidates if c.is_paper]
    assert [c.name for c in papers] == ["bh-resnet50"]
    bh = papers[0]
    assert bh.id == get_spec("bh-resnet50").id
    assert bh.flops == 27_115_028_480 and bh.macs == 26_738_688_000
    assert bh.error == pytest.approx(27_115_028_480 / 26_904_657_920 - 1)
    assert bh.params_ratio == pytest.approx(10_948_160 / 23_508_032)
    assert bh.activations_ratio == pytest.approx(121_733_120 / 72_581_120)
    assert bh.blocks_before == 7 and bh.blocks_after == 9
    assert result.base.is_base and result.base.name == "resnet50" and result.base.error == 0
    assert result.base.depths == (3, 4, 6, 3)
    assert result.enumerated == 16 * 16 * 24 * 6 * 6  # 6 stem x stride patterns keep strides 4..32
    # bottom-heaviness: stem + stage 1 share of paper FLOPs
    r = count("bh-resnet50", "640x512")
    assert bh.bh_score == pytest.approx((r.stages[0].flops + r.stages[1].flops) / r.flops)


def test_top_keeps_paper_spec_as_reference():
    result = solve("resnet50", "640x512", top=5)
    assert len(result.candidates) == 5
    assert [c.rank for c in result.candidates] == [1, 2, 3, 4, 5]
    refs = {c.name: c for c in result.references}
    assert refs["bh-resnet50"].rank is not None and refs["bh-resnet50"].rank > 5
    assert refs["bh-resnet50"].note == ""


def test_reference_outside_constraints_says_why():
    result = solve("resnet50", "640x512", tolerance=0.5, top=3)
    ref = {c.name: c for c in result.references}["bh-resnet50"]
    assert ref.rank is None and "outside ±0.5%" in ref.note
    result = solve("resnet50", "640x512", stems=["k7s2p"], top=3)
    ref = {c.name: c for c in result.references}["bh-resnet50"]
    assert ref.rank is None and "excluded by --stems" in ref.note


def test_hrnet32_default_contains_paper_spec():
    result = solve("hrnet32", "640x512")
    bh = [c for c in result.candidates if c.is_paper]
    assert [c.name for c in bh] == ["bh-hrnet32"]
    assert bh[0].depths == (4, 7, 8, 3)
    assert bh[0].params == count("bh-hrnet32", "640x512").params


def test_hrnet18_stage1_width_space():
    from bhsearch.solver import spaces_dir

    default = solve("hrnet18", "640x512", top=3)
    ref = {c.name: c for c in default.references}["bh-hrnet18"]
    assert ref.rank is None and "widths or stem differ" in ref.note
    wide = solve("hrnet18", "640x512", space=spaces_dir() / "hrnet-stage1-width.yaml", top=3)
    ref = {c.name: c for c in wide.references}["bh-hrnet18"]
    assert ref.rank is not None and ref.note == "" and ref.params == 5_845_396
    assert wide.enumerated == 2 * default.enumerated


@pytest.mark.parametrize("sort", SORT_KEYS)
def test_sort_orders(sort, tmp_path):
    kwargs = {}
    if sort == "latency":
        kwargs["profile"] = synthetic_table(tmp_path, "resnet50", "160x128", SMALL_RESNET)
    result = solve("resnet50", "160x128", space=write_space(tmp_path, SMALL_RESNET), tolerance=5, sort=sort, **kwargs)
    cands = result.candidates
    key = {
        "error": lambda c: round(abs(c.error), 3),
        "bh": lambda c: -c.bh_score,
        "params": lambda c: c.params,
        "activations": lambda c: c.activations,
        "flops": lambda c: c.flops,
        "macs": lambda c: c.macs,
        "latency": lambda c: c.latency,
        "memory": lambda c: c.train_memory,
    }[sort]
    values = [key(c) for c in cands]
    assert values == sorted(values)


def test_constraints(tmp_path):
    path = write_space(tmp_path, SMALL_RESNET)
    size = "160x128"
    everything = solve("resnet50", size, space=path, tolerance=20, order="any")
    assert any(c.is_base for c in everything.candidates)  # the base itself is in the space
    bh = solve("resnet50", size, space=path, tolerance=20)
    assert bh.feasible < everything.feasible
    assert all(bottom_heavy(c.depths, (3, 4, 6, 3)) for c in bh.candidates)
    split = solve("resnet50", size, space=path, tolerance=20, order="split")
    assert bh.feasible <= split.feasible <= everything.feasible

    limit = sorted(c.params for c in everything.candidates)[len(everything.candidates) // 2]
    capped = solve("resnet50", size, space=path, tolerance=20, order="any", max_params=limit)
    assert capped.candidates and all(c.params <= limit for c in capped.candidates)
    assert {c.id for c in capped.candidates} == {c.id for c in everything.candidates if c.params <= limit}

    acts = solve("resnet50", size, space=path, tolerance=20, order="any", max_activations_ratio=1.1)
    assert {c.id for c in acts.candidates} == {c.id for c in everything.candidates if c.activations_ratio <= 1.1}

    stems = solve("resnet50", size, space=path, tolerance=20, order="any", stems=["k3s1p"])
    assert {c.stem for c in stems.candidates} == {"k3s1p"}
    assert stems.constraints["stems"] == ["k3s1p"]

    blocks = solve("resnet50", size, space=path, tolerance=20, order="any", min_blocks=[2, None, None, 2], max_blocks=5)
    assert blocks.candidates
    assert all(c.depths[0] >= 2 and c.depths[3] >= 2 and max(c.depths) <= 5 for c in blocks.candidates)
    assert {c.id for c in blocks.candidates} == {
        c.id for c in everything.candidates if c.depths[0] >= 2 and c.depths[3] >= 2 and max(c.depths) <= 5
    }


def synthetic_table(tmp_path, base, size, space_data):
    """A latency table covering every unit of the space, with made-up but deterministic times."""
    from bhsearch.latency import network_units
    from bhsearch.latency.table import FORMAT, VERSION

    base = get_spec(base)
    ds = load_space(write_space(tmp_path, space_data, "lat_space.yaml"), base)
    from bhsearch.solver import _FAMILIES

    adapter = _FAMILIES[ds.family]
    units = {}
    for glob in ds.globals:
        for choice in itertools.product(*(ax.options for ax in ds.axes)):
            for u in network_units(adapter.make_spec(base, glob, choice), size):
                if u.key not in units:
                    t = 1e-4 + 1e-7 * (zlib.crc32(u.key.encode()) % 1000)
                    units[u.key] = {"inference_s": t, "train_s": 3 * t}
    w, h = size.split("x")
    table = {
        "format": FORMAT,
        "version": VERSION,
        "settings": {"device": "cpu", "batch_size": 1, "dtype": "float32", "norm": "bn"},
        "units": units,
        "overhead": {f"{w}x{h}": {"inference_s": 0.002, "train_s": 0.005}},
    }
    path = tmp_path / "lat.json"
    path.write_text(json.dumps(table))
    return path


def test_latency_and_memory(tmp_path):
    from bhsearch.latency import load_table, predict_latency, train_memory_bytes

    size = "160x128"
    profile = synthetic_table(tmp_path, "resnet50", size, SMALL_RESNET)
    path = write_space(tmp_path, SMALL_RESNET)
    table = load_table(profile)
    result = solve("resnet50", size, space=path, tolerance=10, order="any", profile=profile, max_latency_ratio=1.05)
    base_lat = predict_latency("resnet50", size, table)
    assert result.base.latency == pytest.approx(base_lat)
    assert result.candidates
    for c in result.candidates:
        assert c.latency == pytest.approx(predict_latency(c.spec, size, table))
        assert c.latency_ratio <= 1.05 + 1e-9
    by_lat = solve("resnet50", size, space=path, match="latency", tolerance=2, order="any", profile=profile)
    ids = set()
    ds = load_space(path, "resnet50")
    from bhsearch.solver import _FAMILIES

    for glob in ds.globals:
        for choice in itertools.product(*(ax.options for ax in ds.axes)):
            spec = _FAMILIES["resnet"].make_spec(get_spec("resnet50"), glob, choice)
            if abs(predict_latency(spec, size, table) / base_lat - 1) <= 0.02:
                ids.add(spec.id)
    assert {c.id for c in by_lat.candidates} == ids

    budget = train_memory_bytes("resnet50", size, 2)
    mem = solve("resnet50", size, space=path, tolerance=10, order="any", max_train_memory=budget, batch_size=2)
    assert mem.candidates
    for c in mem.candidates:
        assert c.train_memory == train_memory_bytes(c.spec, size, 2) <= budget


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tolerance": -1}, UsageError, "tolerance"),
        ({"match": "energy"}, UsageError, "match must be one of"),
        ({"sort": "speed"}, UsageError, "sort must be one of"),
        ({"order": "top-heavy"}, UsageError, "order must be one of"),
        ({"top": 0}, UsageError, "top"),
        ({"match": "latency"}, UsageError, "needs a latency profile"),
        ({"max_latency_ratio": 1.1}, UsageError, "needs a latency profile"),
        ({"stems": ["k9s9"]}, UsageError, "not in the design space"),
        ({"min_blocks": [1, 2]}, UsageError, "4 values"),
        ({"max_blocks": 0}, UsageError, "positive"),
        ({"tolerance": 0.0001}, InfeasibleError, "no candidate"),
        ({"max_params": 1000}, InfeasibleError, "no candidate"),
        ({"max_params": -5}, UsageError, "max_params"),
    ],
)
def test_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        solve("resnet50", "640x512", **kwargs)


def test_unknown_base_and_bad_size():
    with pytest.raises(UsageError, match="unknown spec"):
        solve("resnet5", "640x512")
    with pytest.raises(UsageError, match="input size"):
        solve("resnet50", "640x")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**SMALL_RESNET, "blocks": [[1, 4], [2, 5]]}, "field 'blocks': has 2 stages"),
        ({**SMALL_RESNET, "blocks": [[4, 1], [2, 5], [1, 6], [1, 3]]}, "field 'blocks\\[0\\]': min 4"),
        ({**SMALL_RESNET, "stems": ["k9s2p"]}, "field 'stems\\[0\\]'"),
        ({**SMALL_RESNET, "stems": [{"kernel": 3, "stride": 3}]}, "stride must be 1 or 2"),
        ({**SMALL_RESNET, "stage_strides": [[1, 2, 2]]}, "field 'stage_strides\\[0\\]'"),
        ({**SMALL_RESNET, "depth": 50}, "field 'depth': unknown field"),
        ({**SMALL_RESNET, "family": "vgg"}, "field 'family'"),
        ({**SMALL_RESNET, "family": "hrnet"}, "field 'family'"),
        ({k: v for k, v in SMALL_RESNET.items() if k != "stems"}, "field 'stems'"),
        ({**SMALL_RESNET, "stems": ["k3s1"], "stage_strides": [[1, 2, 2, 2]]}, "no stem / stride pattern"),
        ({**SMALL_HRNET, "family": "resnet"}, "field"),
    ],
)
def test_malformed_spaces(tmp_path, data, message):
    path = write_space(tmp_path, data)
    with pytest.raises(UsageError, match=message) as info:
        solve("resnet50", "640x512", space=path)
    assert str(path) in str(info.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: resnet\nblocks: [[1, 2]\n")
    with pytest.raises(UsageError, match="bad.yaml: malformed YAML"):
        solve("resnet50", "640x512", space=bad)
    with pytest.raises(UsageError, match="no such file"):
        solve("resnet50", "640x512", space=tmp_path / "missing.yaml")


def test_result_serialisation():
    result = solve("resnet50", "640x512", top=3)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["base"]["name"] == "resnet50" and len(d["candidates"]) == 3
    assert d["references"][0]["name"] == "bh-resnet50"
    assert get_spec(d["candidates"][0]["spec"]).id == d["candidates"][0]["id"]
    rows = csv_rows(result)
    assert rows[0]["is_base"] and rows[-1]["name"] == "bh-resnet50" and rows[-1]["depths"] == "7-6-2-1"


@pytest.mark.parametrize("base", ["resnet50", "hrnet32"])
def test_random_candidates_are_distinct_seeded_members_of_the_space(base):
    space = load_space(None, base)
    base_id = get_spec(base).id
    specs = random_candidates(space, base, 12, seed=3, max_depth=8, exclude=[base_id])
    ids = [s.id for s in specs]
    assert len(ids) == 12 and len(set(ids)) == 12 and base_id not in ids
    assert ids == [s.id for s in random_candidates(space, base, 12, seed=3, max_depth=8, exclude=[base_id])]
    assert ids[:5] != [s.id for s in random_candidates(space, base, 5, seed=4, max_depth=8, exclude=[base_id])]
    for spec in specs:
        assert count(spec, "640x512").flops > 0
        if base == "resnet50":  # depth per stage capped; stems and stride patterns from the space
            assert max(spec.blocks) <= 8
    if base == "resnet50":  # more than one stem of the space drawn
        from bhsearch.solver import resnet_stem_code

        assert len({resnet_stem_code(s) for s in specs}) > 1

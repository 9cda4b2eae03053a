"""Bounded input: YAML alias bombs, huge spec integers, deep nesting and booleans are refused fast."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bhsearch.errors import UsageError
from bhsearch.safeload import MAX_NODES, load_yaml
from bhsearch.spec import ResNetSpec, get_spec, load_mapping, spec_from_dict


def _bomb(key: str, levels: int = 9, extra: str = "") -> str:
    """``levels`` anchors each ten aliases of the previous: 10**levels strings once expanded."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return extra + "\n".join(lines) + f"\n{key}: *l{levels - 1}\n"


def _timed(fn, *args):
    start = time.perf_counter()
    with pytest.raises(UsageError) as info:
        fn(*args)
    return time.perf_counter() - start, str(info.value)


def test_yaml_bomb_in_a_space_file_is_refused_fast(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(_bomb("description", extra="family: resnet\n"))
    elapsed, message = _timed(load_mapping, path)
    assert elapsed < 1.0, elapsed
    assert f"more than {MAX_NODES} values once aliases are expanded" in message and str(path) in message


def test_yaml_bomb_in_a_study_is_refused_fast(tmp_path):
    from bhsearch.tune.study import load_study

    path = tmp_path / "study.yaml"
    path.write_text(_bomb("milestones", extra="name: bomb\n"))
    elapsed, message = _timed(load_study, path)
    assert elapsed < 1.0, elapsed
    assert "malformed YAML: more than" in message and "alias bomb" in message


def test_yaml_bomb_in_a_detector_option_is_refused_fast():
    from bhsearch.cli.finetune import _option

    text = "x=[" + ", ".join(["&a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"] + ["*a"] * 2000) + "]"
    elapsed, message = _timed(_option, text)
    assert elapsed < 1.0 and "--detector-option x: malformed value: more than 1000 alias uses" in message
    assert _option("rpn_batch_size_per_image=128") == ("rpn_batch_size_per_image", 128)


def test_small_aliases_recursion_and_nesting():
    assert load_yaml("a: &a [1, 2]\nb: *a\n") == {"a": [1, 2], "b": [1, 2]}
    import yaml

    with pytest.raises(yaml.YAMLError, match="recursive alias"):
        load_yaml("a: &a [1, *a]\n")
    with pytest.raises(yaml.YAMLError, match="nested deeper than 64 levels"):
        load_yaml("[" * 100 + "]" * 100)
    with pytest.raises(yaml.YAMLError, match="nested deeper than 64 levels"):
        load_yaml("[" * 20000 + "]" * 20000)  # PyYAML's composer would hit the recursion limit


def test_bomb_through_the_cli_exits_2_with_one_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(_bomb("description", extra="family: resnet\n"))
    proc = subprocess.run(
        [sys.executable, "-m", "bhsearch", "solve", "--space", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "alias bomb" in proc.stderr and "Traceback" not in proc.stderr


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(UsageError, match=r"spec.json: invalid JSON: JSON nested too deeply"):
        get_spec(path)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(UsageError, match="folder.json: is a directory, expected a JSON or YAML file"):
        get_spec(tmp_path / "folder.json")


@pytest.mark.parametrize(
    "ref, message",
    [
        ("resnet:bottleneck:k7s2p:99999999999999999999-4-6-3", "number 999999999999... is too large"),
        ("resnet:bottleneck:k7s2p:100000000-4-6-3", "resnet blocks per stage must be from 1 to 1000, got 100000000"),
        ("resnet:bottleneck:k7s2p:3-4-6-3:w64-128-256-9999999", "resnet widths must be from 1 to 65536"),
        ("resnet:bottleneck:k7s2p:" + "-".join(["1"] * 100), "at most 16 values, got 100"),
        ("hrnet:w32:s22:4b64:" + ":".join(["1x4.4"] * 40), "hrnet id has 40 stages, at most 15"),
        ("hrnet:w32:s22:4b64:1x4.4:2000x4.4.4", "hrnet stage modules must be from 1 to 1000, got 2000"),
        ("resnet:bottleneck:k7s2p:3-4-6-3:w8-8-8-8:w16-16-16-16", "widths given twice"),
        ("resnet:bottleneck:k7s2p:3-4-6-3:s1-2-2-2:s2-2-2-2", "strides given twice"),
    ],
)
def test_huge_or_duplicate_spec_ids_refused_fast(ref, message):
    elapsed, got = _timed(get_spec, ref)
    assert elapsed < 1.0 and message in got


def test_huge_block_id_through_count_exits_2_fast():
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bhsearch", "count", "resnet:bottleneck:k7s2p:99999999999999999999-4-6-3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "is too large" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - start < 30  # interpreter start included; it never returned before


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"stem_kernel": True}, "stem_kernel must be an integer, got True"),
        ({"stem_stride": True}, "stem_stride must be an integer, got True"),
        ({"stem_width": 2.5}, "stem_width must be an integer, got 2.5"),
        ({"blocks": [True, 4, 6, 3]}, "resnet blocks must be integers"),
    ],
)
def test_booleans_and_floats_where_integers_belong(fields, message):
    with pytest.raises(UsageError, match=message):
        spec_from_dict({"family": "resnet", **fields})
    with pytest.raises(UsageError, match="hrnet stage modules must be an integer, got True"):
        get_spec("hrnet32").stages[0].__class__(modules=True, blocks=(4, 4), widths=(32, 64))
    assert ResNetSpec(stem_kernel=3, stem_stride=1).id == "resnet:bottleneck:k3s1p:3-4-6-3"


def test_space_ranges_are_capped_and_booleans_refused(tmp_path):
    from bhsearch.solver import load_space

    path = tmp_path / "space.yaml"
    path.write_text("family: resnet\nblocks: [[1, 1000000000], 4, 6, 3]\nstems: [k7s2p]\n")
    elapsed, message = _timed(load_space, path, "resnet50")
    assert elapsed < 1.0 and "field 'blocks[0]': expected an integer from 1 to 1000, got 1000000000" in message
    path.write_text("family: resnet\nblocks: [true, 4, 6, 3]\nstems: [k7s2p]\n")
    with pytest.raises(UsageError, match=r"'blocks\[0\]': expected \[min, max\] or an integer, got True"):
        load_space(path, "resnet50")

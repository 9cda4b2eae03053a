"""Latency tables, the additive predictor, analytic training memory and `bhsearch profile`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bhsearch.errors import UsageError
from bhsearch.latency import (
    LatencyTable,
    load_table,
    network_units,
    predict_breakdown,
    predict_latency,
    train_memory_breakdown,
    train_memory_bytes,
)
from bhsearch.spec import get_spec

TINY = get_spec("resnet18").scaled(0.125)  # widths 8-16-32-64, stem 8
TINY_BOTTLENECK = get_spec("resnet50").scaled(0.125)
SIZE = "64x48"


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Measuring with ``threads=`` sets torch's global thread count; put it back for other tests."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    if before is not None:
        torch.set_num_threads(before)


def _synthetic_table(specs, size=SIZE, overhead=(0.005, 0.02)) -> LatencyTable:
    """A hand-made table: the i-th distinct unit takes (i + 1) ms in inference and 3 (i + 1) ms to train."""
    units = {}
    for spec in specs:
        for unit in network_units(spec, size):
            if unit.key not in units:
                i = len(units)
                units[unit.key] = {"unit": unit.to_dict(), "inference_s": (i + 1) * 1e-3, "train_s": 3 * (i + 1) * 1e-3}
    settings = {"device": "cpu", "device_name": "test-cpu", "torch_version": "0.0", "dtype": "float32",
                "batch_size": 1, "threads": 1, "norm": "bn"}  # fmt: skip
    w, h = size.split("x")
    return LatencyTable(
        settings=settings,
        units=units,
        overhead={f"{w}x{h}": {"inference_s": overhead[0], "train_s": overhead[1]}},
    )


# --------------------------------------------------------------------------- units (pure Python)


def test_units_chain_shapes_and_count():
    units = network_units("resnet50", "640x512")
    assert len(units) == 1 + 3 + 4 + 6 + 3
    assert units[0].key == "resnet-stem:k7s2p:c64:640x512"
    assert units[0].out_shape == (64, 128, 160)
    for prev, nxt in zip(units[:-1], units[1:], strict=True):
        assert prev.out_shape == nxt.in_shape
    assert units[-1].out_shape == (2048, 16, 20)
    # the paper's BH-ResNet50: stride-1 3x3 stem, stride 2 in every stage, same output
    bh = network_units("bh-resnet50", "640x512")
    assert bh[0].key == "resnet-stem:k3s1p:c64:640x512"
    assert bh[1].key == "resnet-bottleneck:64>64:s2:320x256"
    assert bh[-1].out_shape == (2048, 16, 20)
    # repeated blocks of a stage are one unit
    assert len({u.key for u in units}) == 1 + 2 * 4


def test_units_odd_sizes_match_builder():
    torch = pytest.importorskip("torch")
    from bhsearch.latency.measure import build_unit
    from bhsearch.models import build_backbone

    torch.manual_seed(0)
    for spec in (TINY, TINY_BOTTLENECK.replace(deep_stem=True), TINY.replace(stem_pool=False, strides=(2, 2, 2, 2))):
        units = network_units(spec, "61x37")
        with torch.no_grad():
            x = torch.randn(1, 3, 37, 61)
            for unit in units:
                x = build_unit(unit).eval()(x)
                assert tuple(x.shape[1:]) == unit.out_shape, unit.key
            out = build_backbone(spec).eval()(torch.randn(1, 3, 37, 61))
        assert tuple(out["c5"].shape[1:]) == units[-1].out_shape


def test_unsupported_family_is_a_usage_error():
    with pytest.raises(UsageError, match="hrnet"):
        network_units("hrnet18", "64x64")


# --------------------------------------------------------------------------- predictor


def test_predictor_is_additive_and_exact_on_synthetic_table():
    spec = TINY_BOTTLENECK
    longer = spec.replace(blocks=(3, 4, 7, 3))
    table = _synthetic_table([spec])
    units = network_units(spec, SIZE)
    ms = {key: entry["inference_s"] for key, entry in table.units.items()}
    expected = sum(ms[u.key] for u in units) + 0.005
    assert predict_latency(spec, SIZE, table) == pytest.approx(expected, abs=1e-12)
    # hand count: stem 1 ms; stage 1: 2 + 2*3; stage 2: 4 + 3*5; stage 3: 6 + 5*7; stage 4: 8 + 2*9; overhead 5
    assert predict_latency(spec, SIZE, table) == pytest.approx((1 + 8 + 19 + 41 + 26 + 5) * 1e-3, abs=1e-12)
    assert predict_latency(spec, SIZE, table, mode="train") == pytest.approx(3 * 95e-3 + 0.02, abs=1e-12)
    # one more block in stage 3 adds exactly that stage's repeated block (unit 7 -> 7 ms)
    assert predict_latency(longer, SIZE, table) - predict_latency(spec, SIZE, table) == pytest.approx(7e-3, abs=1e-12)
    rows = predict_breakdown(spec, SIZE, table)
    assert rows[-1] == ("overhead", 0.005)
    assert sum(t for _, t in rows) == pytest.approx(predict_latency(spec, SIZE, table), abs=1e-12)


def test_predictor_refuses_missing_units_and_sizes():
    table = _synthetic_table([TINY_BOTTLENECK])
    with pytest.raises(UsageError, match="no inference_s entry for unit resnet-stem:k3s1p"):
        predict_latency(get_spec("bh-resnet50").scaled(0.125), SIZE, table)
    with pytest.raises(UsageError, match="96x64"):
        predict_latency(TINY_BOTTLENECK, "96x64", table)
    with pytest.raises(UsageError, match="mode"):
        predict_latency(TINY_BOTTLENECK, SIZE, table, mode="fast")


def test_prediction_needs_no_torch():
    code = (
        "import sys; from bhsearch.latency import predict_latency, train_memory_bytes, network_units;"
        "train_memory_bytes('bh-resnet50', '640x512', 2); network_units('resnet50', '640x512');"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- table files


def test_table_round_trips(tmp_path):
    table = _synthetic_table([TINY, TINY_BOTTLENECK])
    path = table.save(tmp_path / "sub" / "t.json")
    loaded = load_table(path)
    assert loaded.to_dict() == table.to_dict()
    assert loaded.path == path
    assert predict_latency(TINY, SIZE, loaded) == predict_latency(TINY, SIZE, table)
    assert loaded.measure_kwargs() == {"device": "cpu", "batch_size": 1, "dtype": "float32", "threads": 1, "norm": "bn"}
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_mismatched_or_malformed_tables_are_refused(tmp_path):
    path = _synthetic_table([TINY]).save(tmp_path / "t.json")
    with pytest.raises(UsageError, match=r"batch_size: table 1, requested 2"):
        load_table(path, batch_size=2)
    with pytest.raises(UsageError, match="device"):
        load_table(path, device="cuda", dtype="float32")
    assert load_table(path, batch_size=2, allow_mismatch=True).settings["batch_size"] == 1
    assert load_table(path, batch_size=1, dtype="float32").settings["dtype"] == "float32"
    with pytest.raises(UsageError, match="unknown latency-table setting"):
        load_table(path, colour="red")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="invalid JSON"):
        load_table(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UsageError, match="not a bhsearch latency table"):
        load_table(bad)
    data = json.loads(path.read_text())
    bad.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(UsageError, match="version 99"):
        load_table(bad)
    with pytest.raises(UsageError, match="no such latency table"):
        load_table(tmp_path / "missing.json")


# --------------------------------------------------------------------------- memory


def test_train_memory_hand_count():
    # ResNet-18 trunk at 64x48, batch 1, float32, counted by hand from the builder:
    # stem conv out + bn/relu out (64x24x32 each), pooled out (64x12x16) + int64 indices,
    # BN statistics 2x64 float32
    stem = 2 * 64 * 24 * 32 * 4 + 64 * 12 * 16 * (4 + 8) + 2 * 64 * 4
    mem = train_memory_breakdown("resnet18", SIZE, 1)
    assert mem["params"] == 11_176_512 * 4 and mem["grads"] == mem["params"]
    units = network_units("resnet18", SIZE)
    assert units[0].saved() == (2 * 64 * 24 * 32 + 64 * 12 * 16, 2 * 64, 64 * 12 * 16)
    # batch size scales activations but not the norm statistics
    mem2 = train_memory_breakdown("resnet18", SIZE, 2)
    stats = sum(u.saved()[1] for u in units) * 4
    assert mem2["activations"] - stats == 2 * (mem["activations"] - stats)
    assert stem < mem["activations"]
    assert train_memory_bytes("resnet18", SIZE, 1) == mem["total"]
    half = train_memory_breakdown("resnet18", SIZE, 1, dtype="bfloat16")
    assert half["params"] == mem["params"] // 2
    with pytest.raises(UsageError, match="batch size"):
        train_memory_bytes("resnet18", SIZE, 0)
    with pytest.raises(UsageError, match="dtype"):
        train_memory_bytes("resnet18", SIZE, 1, dtype="int8")


@pytest.mark.parametrize(
    "spec",
    [TINY, TINY_BOTTLENECK.replace(deep_stem=True), get_spec("bh-resnet50").scaled(0.125)],
    ids=lambda s: s.id,
)
def test_train_memory_matches_measured_saved_tensors(spec):
    pytest.importorskip("torch")
    from bhsearch.latency import measure_train_memory

    analytic = train_memory_breakdown(spec, "40x32", 2)
    measured = measure_train_memory(spec, "40x32", batch_size=2)
    assert measured["saved_bytes"] == analytic["activations"]  # exact: what autograd keeps
    assert measured["param_bytes"] == analytic["params"]
    # the step's peak (grads and transient buffers of backward included) stays near the analytic total
    assert analytic["activations"] < measured["peak_bytes"] + measured["param_bytes"] <= 1.1 * analytic["total"]


# --------------------------------------------------------------------------- measuring and profiling


def test_measure_latency_reports_median_and_percentiles():
    pytest.importorskip("torch")
    from bhsearch.latency import measure_latency

    for mode in ("inference", "train"):
        r = measure_latency(TINY, "64x64", mode=mode, warmup=1, reps=3, threads=1)
        assert 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"]
        assert r["reps"] == 3 and r["mode"] == mode and r["threads"] == 1 and r["device"] == "cpu"
    r = measure_latency(TINY, "64x64", warmup=0, reps=2, threads=1, clock="cpu")
    assert r["clock"] == "cpu" and r["median_s"] > 0
    with pytest.raises(UsageError, match="threads 1"):
        measure_latency(TINY, "64x64", warmup=0, reps=1, threads=2, clock="cpu")
    with pytest.raises(UsageError, match="clock"):
        measure_latency(TINY, "64x64", warmup=0, reps=1, threads=1, clock="sundial")
    with pytest.raises(UsageError, match="CUDA is not available|device"):
        import torch

        if torch.cuda.is_available():
            raise UsageError("device skipped: CUDA present")
        measure_latency(TINY, "32x32", device="cuda")


class _Killed(Exception):
    pass


def test_profile_resumes_after_being_killed(tmp_path):
    pytest.importorskip("torch")
    from bhsearch.latency import distinct_units, profile_space, space_specs

    out = tmp_path / "tiny.json"
    kwargs = dict(out=out, warmup=0, reps=1, threads=1)
    total = len(distinct_units(space_specs(TINY), SIZE))
    seen: list[str] = []

    def kill_after_three(key, entry, done, n):
        seen.append(key)
        if done == 3:
            raise _Killed

    with pytest.raises(_Killed):
        profile_space(TINY, SIZE, on_unit=kill_after_three, **kwargs)
    partial = load_table(out)
    assert list(partial.units) == seen and len(seen) == 3 and not partial.overhead

    resumed: list[str] = []
    table = profile_space(TINY, SIZE, on_unit=lambda key, *a: resumed.append(key), **kwargs)
    assert len(resumed) == total - 3 and not set(resumed) & set(seen)
    for key in seen:  # what was measured before the kill is kept as it was
        assert table.units[key] == partial.units[key]
    assert len(table.units) == total and "64x48" in table.overhead
    assert table.settings["threads"] == 1 and table.settings["batch_size"] == 1
    # timing values are not asserted (under load a prediction, units minus overhead, can go negative):
    # only that every spec gets a finite prediction from the resumed table and entries are complete
    for spec in space_specs(TINY):
        assert math.isfinite(predict_latency(spec, SIZE, load_table(out)))
    entry = table.units[network_units(TINY, SIZE)[1].key]
    assert entry["train_peak_bytes"] > 0
    assert all(isinstance(entry[k], float) and math.isfinite(entry[k]) for k in ("train_s", "inference_s"))

    # a profile of another setting must not be mixed into this table
    with pytest.raises(UsageError, match="batch_size"):
        profile_space(TINY, SIZE, batch_size=2, **kwargs)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "bhsearch", *args], capture_output=True, text=True, **kw)


def test_cli_profile_and_refusal(tmp_path):
    out = tmp_path / "cli.json"
    common = ["profile", "--base", TINY.id, "--input", "64x64", "--out", str(out), "--warmup", "0", "--reps", "1"]
    r = _cli(*common, "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["units"] == len(load_table(out).units) and math.isfinite(summary["predicted_inference_s"])
    r = _cli(*common, "--threads", "1", "--batch-size", "2")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "batch_size" in r.stderr and "Traceback" not in r.stderr
    r = _cli("profile", "--base", "hrnet18", "--input", "32x32", "--out", str(tmp_path / "h.json"))
    assert r.returncode == 2 and "Traceback" not in r.stderr

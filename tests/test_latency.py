"""Latency tables, the additive predictor, analytic training memory and `bhsearch profile`."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time

import pytest

from bhsearch.errors import UsageError
from bhsearch.latency import (
    LatencyTable,
    fit_overhead,
    input_elements,
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


def test_hrnet_training_memory_is_a_usage_error():
    assert network_units("hrnet18", "64x64")  # hrnet specs are profiled; their training memory is not modelled
    with pytest.raises(UsageError, match="resnet-family"):
        train_memory_bytes("hrnet18", "64x64")


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
    assert rows[-2:] == [("overhead", 0.005), ("boundary", 0.0)]  # no slope in this table
    assert sum(t for _, t in rows) == pytest.approx(predict_latency(spec, SIZE, table), abs=1e-12)


def test_boundary_slope_adds_per_input_element_of_every_unit():
    spec = TINY_BOTTLENECK
    table = _synthetic_table([spec])
    table.overhead[SIZE]["inference_per_element_s"] = -1e-9
    units = network_units(spec, SIZE)
    # by hand: the stem reads the image, every block its input feature map
    elements = sum(c * h * w for u in units for c, h, w in u.in_shapes)
    assert elements == input_elements(units[0]) + sum(input_elements(u) for u in units[1:])
    assert input_elements(units[0]) == 3 * units[0].height * units[0].width
    no_slope = (1 + 8 + 19 + 41 + 26 + 5) * 1e-3
    assert predict_latency(spec, SIZE, table) == pytest.approx(no_slope - 1e-9 * elements, abs=1e-15)
    rows = predict_breakdown(spec, SIZE, table)
    assert rows[-1] == ("boundary", pytest.approx(-1e-9 * elements))
    assert sum(t for _, t in rows) == pytest.approx(predict_latency(spec, SIZE, table), abs=1e-15)
    # the train mode has no boundary slope
    assert predict_latency(spec, SIZE, table, mode="train") == pytest.approx(3 * 95e-3 + 0.02, abs=1e-12)


def test_overhead_fit_is_a_robust_line_through_the_networks():
    elements = [10, 20, 30, 40, 50, 60]
    line = [0.002 - 1e-4 * e for e in elements]
    a, b = fit_overhead(line, elements)
    assert (a, b) == (pytest.approx(0.002), pytest.approx(-1e-4))
    # one network timed during a load spike does not tilt it (least squares: b = +4.3e-5, a = -1.3e-3)
    spiked = [*line[:5], line[5] + 0.01]
    assert fit_overhead(spiked, elements) == (pytest.approx(0.002), pytest.approx(-1e-4))
    # a positive slope (units alone faster than inside a network, per element) is noise: none
    rising = [0.001, 0.004, 0.002, 0.005, 0.003, 0.006]
    assert fit_overhead(rising, elements) == (pytest.approx(0.0035), 0.0)
    # fewer than 3 distinct element counts: the median residual and no slope (the earlier tables' term)
    assert fit_overhead([0.001, 0.003], [10, 20]) == (pytest.approx(0.002), 0.0)
    assert fit_overhead([0.001, 0.002, 0.006], [10, 10, 20]) == (0.002, 0.0)


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
        "network_units('hrnet32', '640x512'); from bhsearch.latency import assess, LatencyTable;"
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


def test_network_slots_spread_every_network_over_the_sweep():
    from bhsearch.latency.profile import network_slots

    for units, networks, rounds in [(40, 6, 2), (7, 6, 2), (3, 1, 3), (0, 6, 2), (100, 5, 1)]:
        slots = network_slots(units, networks, rounds)
        timed = [(after, i) for after, ids in sorted(slots.items()) for i in ids]
        assert sorted(i for _, i in timed) == sorted(list(range(networks)) * rounds)
        assert all(0 <= after <= units for after, _ in timed)
        for r in range(rounds):  # round r sits in the r-th part of the sweep, in network order
            part = timed[r * networks : (r + 1) * networks]
            assert [i for _, i in part] == list(range(networks))
            assert all(r * units / rounds - 0.5 <= after <= (r + 1) * units / rounds + 0.5 for after, _ in part)
    assert network_slots(0, 6, 2) == {0: [0, 1, 2, 3, 4, 5] * 2}
    assert network_slots(12, 6, 2) == {k: [k % 6] for k in range(12)}  # one after each unit but the last


def test_profile_times_overhead_networks_through_the_unit_sweep(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from bhsearch.latency import profile as prof

    events: list[str] = []
    rounds_seen: dict[str, int] = {}

    def fake_network(m, spec, size, settings, warmup, reps, runtime, account):
        r = rounds_seen[spec.id] = rounds_seen.get(spec.id, -1) + 1
        events.append("network")
        median = 0.010 * (1 + r)  # the machine is twice as slow in the second round
        return {mode: {"median_s": median, "min_s": 0.9 * median, "spread": 0.05} for mode in ("inference", "train")}

    monkeypatch.setattr(prof, "_time_network", fake_network)
    table = prof.profile_space(TINY, SIZE, out=tmp_path / "p.json", warmup=0, reps=1, threads=1, overhead_networks=3,
                               on_unit=lambda *a: events.append("unit"))  # fmt: skip
    units = events.count("unit")
    assert events.count("network") == 3 * prof.ROUNDS and units > 6
    slots = prof.network_slots(units, 3, prof.ROUNDS)  # the networks sit where the slots say
    expected = ["network"] * len(slots.get(0, []))
    for k in range(1, units + 1):
        expected += ["unit"] + ["network"] * len(slots.get(k, []))
    assert events == expected and len(slots) > 1
    assert events[: len(events) // 2].count("network") == 3  # one round per half of the sweep
    assert units == prof.ROUNDS * len(table.units)  # every unit timed once per round, a pass apart
    assert all(len(e["rounds"]) == prof.ROUNDS for e in table.units.values())
    for net in table.overhead[SIZE]["networks"]:
        assert net["inference_rounds_s"] == [0.010, 0.020]
        assert net["inference_median_measured_s"] == pytest.approx(0.015)  # median of the rounds
        assert net["inference_min_measured_s"] == pytest.approx(0.009)
        assert net["inference_spread"] == pytest.approx(0.8 * (0.020 - 0.010) / 0.015)  # the drift shows as spread
    assert "spread" in _codes(load_table(tmp_path / "p.json"))


def test_combine_rounds_keeps_the_median_the_least_minimum_and_the_drift():
    from bhsearch.latency.profile import combine_rounds

    a = {"median_s": 0.010, "min_s": 0.009, "p10_s": 0.0095, "p90_s": 0.0105, "spread": 0.1}
    b = {"median_s": 0.012, "min_s": 0.0085, "p10_s": 0.011, "p90_s": 0.013, "spread": 0.12}
    c = combine_rounds([a, b])
    assert c["median_s"] == pytest.approx(0.011) and c["min_s"] == 0.0085 and c["rounds_s"] == [0.010, 0.012]
    assert (c["p10_s"], c["p90_s"]) == (0.0095, 0.013)
    # the rounds' medians as repetitions: (p90 - p10) / median = 0.8 x 0.002 / 0.011 beats their own spreads
    assert c["spread"] == pytest.approx(0.8 * 2 / 11)
    assert combine_rounds([a])["spread"] == 0.1 and combine_rounds([a, a, b])["median_s"] == 0.010
    # many rounds (onnxruntime sessions): one outlying session moves p90 - p10 less than the range
    rounds = [{**a, "median_s": t, "spread": 0.0} for t in (0.010, 0.0101, 0.0099, 0.0102, 0.0098, 0.013)]
    many = combine_rounds(rounds)
    assert many["median_s"] == pytest.approx(0.01005)
    assert many["spread"] == pytest.approx((0.0116 - 0.00985) / 0.01005)  # the range would be 0.32
    assert "p10_s" not in combine_rounds([{"median_s": 1.0, "min_s": 0.9, "spread": None}])


def test_sweep_takes_the_missing_rounds_in_passes():
    from bhsearch.latency import distinct_units, space_specs
    from bhsearch.latency.profile import ROUNDS, sweep, unit_rounds

    units = distinct_units(space_specs(TINY), SIZE)
    keys = [u.key for u in units]
    assert ROUNDS == 2 and [u.key for u in sweep(units, {})] == keys + keys
    done = {keys[0]: 2, keys[1]: 1, "legacy": 5}
    assert [u.key for u in sweep(units, done)] == keys[2:] + keys[1:]
    # other runtimes count their own entries; onnxruntime units are timed in six rounds (a fresh session
    # each), torch.compile in one (it would compile again)
    assert unit_rounds("onnxruntime") == 6 and [u.key for u in sweep(units, done, "onnxruntime")] == keys * 6
    assert unit_rounds("compile") == 1 and [u.key for u in sweep(units, {}, "compile")] == keys


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
    assert all(len(e["rounds"]) == 1 for e in partial.units.values())

    resumed: list[str] = []
    table = profile_space(TINY, SIZE, on_unit=lambda key, *a: resumed.append(key), **kwargs)
    first, second = resumed[: total - 3], resumed[total - 3 :]  # round 1 of the other units, then round 2 of all
    assert first == [k for k in table.units if k not in seen] and second == list(table.units)
    for key in seen:  # what was measured before the kill is kept as it was
        assert table.units[key]["rounds"][0] == partial.units[key]["rounds"][0]
        assert len(table.units[key]["rounds"]) == 2
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
    # the overhead term: the base and 5 random candidates of the default space, a line through them
    term = load_table(out).overhead["64x64"]
    nets = term["networks"]
    assert len(nets) == OVERHEAD_NETWORKS and nets[0]["spec"] == TINY.id and len({n["spec"] for n in nets}) == len(nets)
    assert [n["elements"] for n in nets] == [sum(map(input_elements, network_units(n["spec"], "64x64"))) for n in nets]
    for mode in ("inference", "train"):
        residuals = [n[f"{mode}_median_measured_s"] - n[f"{mode}_median_units_s"] for n in nets]
        fitted = fit_overhead(residuals, [n["elements"] for n in nets])
        assert (term[f"{mode}_s"], term[f"{mode}_per_element_s"]) == fitted
        assert len({n["elements"] for n in nets}) >= 3 and fitted[1] <= 0.0  # a slope was fitted (maybe clipped)
    r = _cli(*common, "--threads", "1", "--batch-size", "2")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "batch_size" in r.stderr and "Traceback" not in r.stderr
    r = _cli("profile", "--base", "hrnet18", "--input", "32x32", "--out", str(tmp_path / "h.json"), "--clock", "cpu")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--threads 1" in r.stderr
    r = _cli("profile", "--help")
    assert r.returncode == 0 and "--clock cpu" in r.stdout and "uptime" in r.stdout and "--threads 1" in r.stdout


# --------------------------------------------------------------------------- quality of a table

from bhsearch.latency.profile import OVERHEAD_NETWORKS  # noqa: E402
from bhsearch.latency.table import (  # noqa: E402
    CPU_WALL_MIN,
    LOAD_SLACK,
    NEGATIVE_OVERHEAD_TOLERANCE,
    SPREAD_LIMIT,
    assess,
)


def _codes(table) -> list[str]:
    return [w["code"] for w in assess(table)]


def _with_spreads(table, unit_spread, network_spread=None):
    for entry in table.units.values():
        entry["inference_spread"] = entry["train_spread"] = unit_spread
    if network_spread is not None:
        for entry in table.overhead.values():
            entry["networks"] = [{"spec": "a", "inference_spread": network_spread, "train_spread": 0.0}]
    return table


def test_clean_table_has_no_warnings_and_quality_round_trips(tmp_path):
    table = _with_spreads(_synthetic_table([TINY]), 0.02, 0.03)
    table.quality["runs"] = [
        {"started": "t0", "runtime": "torch", "threads": 1, "clock": "wall", "cpus": 4, "load_start": 0.1,
         "load_end": 1.05, "wall_s": 600.0, "timed_wall_s": 10.0, "timed_cpu_s": 9.95}
    ]  # fmt: skip
    assert assess(table) == [] and table.warnings == []
    path = table.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["quality"]["warnings"] == [] and data["quality"]["runs"] == table.quality["runs"]
    assert data["quality"]["spread"]["torch"]["units_inference"] == pytest.approx(0.02)
    assert load_table(path).quality["runs"] == table.quality["runs"]


def test_high_spread_warns_once_per_runtime():
    table = _with_spreads(_synthetic_table([TINY]), SPREAD_LIMIT + 0.05)
    warnings = assess(table)
    assert [w["code"] for w in warnings] == ["spread"]
    assert "units inference 15 %" in warnings[0]["message"] and "units train 15 %" in warnings[0]["message"]
    # a few noisy units do not mark the table: the median over its units does
    table = _with_spreads(_synthetic_table([TINY]), 0.01)
    next(iter(table.units.values()))["inference_spread"] = 3.0
    assert _codes(table) == []
    # whole networks alone
    table = _with_spreads(_synthetic_table([TINY]), 0.01, network_spread=0.4)
    warnings = assess(table)
    assert _codes(table) == ["spread"] and "whole networks inference 40 %" in warnings[0]["message"]


def test_negative_overhead_warns():
    table = _synthetic_table([TINY], overhead=(0.001, -0.004))
    warnings = assess(table)
    assert _codes(table) == ["negative-overhead"]
    assert "64x48" in warnings[0]["message"] and "train -4.00 ms" in warnings[0]["message"]
    assert "inference" not in warnings[0]["message"].split("(")[1]
    # with its whole networks' times in the table, only a term beyond the noise tolerance marks it
    networks = [{"spec": TINY.id, "inference_median_measured_s": 0.1, "train_median_measured_s": 0.3}]
    table.overhead[SIZE]["networks"] = networks
    assert _codes(table) == []  # -4 ms on 300 ms networks: -1.3 %, within the noise
    table.overhead[SIZE]["train_s"] = -(NEGATIVE_OVERHEAD_TOLERANCE + 0.001) * 0.3
    assert _codes(table) == ["negative-overhead"]


def _run(**kw):
    return {"started": "t0", "runtime": "torch", "threads": 1, "clock": "wall", "cpus": 2, "load_start": 0.0,
            "load_end": 0.0, "wall_s": 120.0, "timed_wall_s": 1.0, "timed_cpu_s": 1.0, **kw}  # fmt: skip


@pytest.mark.parametrize(
    ("run", "codes"),
    [
        (_run(), []),
        (_run(load_start=1.0 + LOAD_SLACK - 0.01), []),  # one free core for one thread, other load just under it
        (_run(load_start=1.0 + LOAD_SLACK + 0.01), ["loaded"]),
        # at the end the profile's own thread counts: 1 - exp(-2) = 0.865 of it after 120 s
        (_run(load_end=1.0 + LOAD_SLACK + 0.8), []),
        (_run(load_end=1.0 + LOAD_SLACK + 0.9), ["loaded"]),
        (_run(threads=2, load_start=0.6), ["loaded"]),  # all cores used by the profile: any other load counts
        (_run(timed_cpu_s=CPU_WALL_MIN - 0.01), ["off-cpu"]),
        (_run(timed_cpu_s=0.5, clock="cpu"), []),  # the thread CPU clock is not inflated by waiting
        (_run(load_start=3.0, load_end=3.0, timed_cpu_s=0.4), ["loaded", "off-cpu"]),
        (_run(cpus=None, load_start=None, load_end=None), []),  # readings unavailable: nothing to judge
        # the cores other processes used while the run ran (/proc/stat) decide over the load average,
        # which an earlier busy spell of the same process (a benchmark measuring networks) inflates
        (_run(other_cores=1.0 + LOAD_SLACK - 0.01, load_start=3.0, load_end=3.0), []),
        (_run(other_cores=1.0 + LOAD_SLACK + 0.01), ["loaded"]),
        (_run(threads=2, other_cores=0.4), []),
        (_run(threads=2, other_cores=0.6), ["loaded"]),
        (_run(other_cores="busy", load_start=3.0), ["loaded"]),  # not a number: the load average decides
    ],
)
def test_load_and_cpu_time_warnings(run, codes):
    table = _synthetic_table([TINY])
    table.quality["runs"] = [run]
    assert _codes(table) == codes
    if codes:
        assert all("\n" not in w["message"] for w in assess(table))


def test_old_table_without_quality_fields_loads(tmp_path):
    table = _synthetic_table([TINY], overhead=(0.005, -0.001))
    data = table.to_dict()
    del data["quality"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = load_table(path)
    assert old.quality == {} and predict_latency(TINY, SIZE, old) == predict_latency(TINY, SIZE, table)
    assert _codes(old) == ["negative-overhead"]  # spread and load are unknown; the overhead sign is not
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "quality": {"runs": "yesterday"}}))
    with pytest.raises(UsageError, match="quality.runs"):
        load_table(bad)


def test_profile_records_spread_and_machine_readings(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from bhsearch.latency import profile as prof

    loads = iter([0.25, 7.5, 0.0, 0.0])
    monkeypatch.setattr(prof, "load_average", lambda: next(loads))
    monkeypatch.setattr(prof, "cpu_busy_seconds", lambda: None)  # no /proc/stat: the load average decides
    monkeypatch.setattr(prof, "available_cpus", lambda: 2)
    out = tmp_path / "p.json"
    table = prof.profile_space(TINY, SIZE, space=[TINY], out=out, warmup=0, reps=3, threads=1, overhead_networks=1)
    (run,) = table.quality["runs"]
    assert (run["load_start"], run["load_end"], run["cpus"], run["threads"], run["clock"]) == (0.25, 7.5, 2, 1, "wall")
    assert run["timed_wall_s"] > 0 and run["timed_cpu_s"] > 0
    for entry in table.units.values():
        for mode in ("inference", "train"):
            rounds = [r[mode] for r in entry["rounds"]]
            assert len(rounds) == 2 and all(
                r["spread"] == pytest.approx((r["p90_s"] - r["p10_s"]) / r["median_s"]) for r in rounds
            )
            assert entry[f"{mode}_s"] == pytest.approx(statistics.median(r["median_s"] for r in rounds))
            assert entry[f"{mode}_min_s"] == min(r["min_s"] for r in rounds)
            assert entry[f"{mode}_spread"] >= max(r["spread"] for r in rounds)
    (net,) = table.overhead[SIZE]["networks"]
    assert net["inference_spread"] >= 0 and net["train_spread"] >= 0
    assert "loaded" in _codes(load_table(out))  # injected end load: 7.5 on 2 cores
    assert any("end 7.50" in w for w in json.loads(out.read_text())["quality"]["warnings"])
    # resuming with nothing left to measure adds no run
    prof.profile_space(TINY, SIZE, space=[TINY], out=out, warmup=0, reps=3, threads=1, overhead_networks=1)
    assert len(load_table(out).quality["runs"]) == 1


def test_other_cores_from_proc_stat(monkeypatch):
    from bhsearch.latency import profile as prof

    stat = (
        "cpu  900 0 300 5000 50 0 10 5 0 0\n"
        "cpu0 400 0 100 2500 25 0 5 5 0 0\n"  # busy: user + nice + system + irq + softirq + steal
        "cpu1 500 0 200 2500 25 0 5 0 0 0\n"
        "intr 12345 0\n"
    )
    monkeypatch.setattr(prof.os, "sysconf", lambda name: 100)  # clock ticks per second
    assert prof.cpu_busy_seconds([0], stat) == pytest.approx(5.1)
    assert prof.cpu_busy_seconds([0, 1], stat) == pytest.approx(5.1 + 7.05)
    assert prof.cpu_busy_seconds([7], stat) == 0.0
    # 3 busy core-seconds on the process's cores in 2 s, 1 of them its own: 1 core of other processes
    assert prof.other_cores(3.0, 1.0, 2.0) == 1.0
    assert prof.other_cores(1.0, 1.2, 2.0) == 0.0  # clock-tick rounding never goes negative
    assert prof.other_cores(None, 1.0, 2.0) is None


def test_profile_records_other_cores(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from bhsearch.latency import profile as prof

    busy = iter([100.0, 100.0 + 1e6])  # the process's cores were saturated by someone else
    monkeypatch.setattr(prof, "cpu_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(prof, "available_cpus", lambda: 2)
    out = tmp_path / "p.json"
    table = prof.profile_space(TINY, SIZE, space=[TINY], out=out, warmup=0, reps=1, threads=1, overhead_networks=1)
    (run,) = table.quality["runs"]
    assert run["other_cores"] > 2
    (warning,) = [w for w in assess(load_table(out)) if w["code"] == "loaded"]
    assert "other processes used" in warning["message"]


def test_cli_warns_about_a_marked_table(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from bhsearch.cli import main
    from bhsearch.latency import profile as prof

    busy = iter([0.0, 1e6])  # the cores were saturated by other processes while it ran
    monkeypatch.setattr(prof, "cpu_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(prof, "available_cpus", lambda: 2)
    out = tmp_path / "cli.json"
    code = main(["profile", "--base", TINY.id, "--input", SIZE, "--out", str(out), "--warmup", "0", "--reps", "1",
                 "--threads", "1", "--clock", "cpu", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    lines = [ln for ln in captured.err.splitlines() if "WARNING" in ln]
    assert any(ln.startswith("bhsearch profile: WARNING: loaded machine") for ln in lines)
    summary = json.loads(captured.out)
    assert summary["warnings"] and summary["spread"]["torch"]["units_inference"] is not None

    # count and solve warn when they predict from a marked table (here: a hand-made negative overhead)
    marked = _synthetic_table([TINY, *_space_of(TINY)], overhead=(-0.001, 0.02)).save(tmp_path / "marked.json")
    assert main(["count", TINY.id, "--input", SIZE, "--profile", str(marked), "--json"]) == 0
    captured = capsys.readouterr()
    assert "bhsearch count: WARNING: latency table" in captured.err and "negative overhead" in captured.err
    assert json.loads(captured.out)["latency"]["table_warnings"]
    assert (
        main(["solve", "--base", TINY.id, "--input", SIZE, "--profile", str(marked), "--json", "--tolerance", "50"])
        == 0
    )
    captured = capsys.readouterr()
    assert captured.err.count("bhsearch solve: WARNING: latency table") == 1
    clean = _synthetic_table([TINY, *_space_of(TINY)]).save(tmp_path / "clean.json")
    assert (
        main(["solve", "--base", TINY.id, "--input", SIZE, "--profile", str(clean), "--json", "--tolerance", "50"]) == 0
    )
    assert "WARNING" not in capsys.readouterr().err


def _space_of(spec):
    from bhsearch.latency import space_specs

    return space_specs(spec)


def test_solve_and_count_predict_from_the_chosen_statistic(tmp_path, capsys):
    """``--stat min`` predicts from the entries' minima (here half the medians) in ``solve`` and ``count``, and
    ``count`` compares them with the measurement's minimum; a table without minima is a one-line error."""
    from bhsearch.cli import main
    from bhsearch.solver import solve

    table = _synthetic_table([TINY, *_space_of(TINY)])
    medians = table.save(tmp_path / "medians.json")
    for entry in [*table.units.values(), *table.overhead.values()]:
        entry["inference_min_s"], entry["train_min_s"] = entry["inference_s"] / 2, entry["train_s"] / 2
    path = table.save(tmp_path / "t.json")
    loaded = load_table(path)
    for stat in ("median", "min"):
        result = solve(TINY, SIZE, profile=path, tolerance=50, stat=stat)
        assert result.candidates
        for c in [result.base, *result.candidates]:
            assert c.latency == pytest.approx(predict_latency(c.spec, SIZE, loaded, stat=stat))
    assert solve(TINY, SIZE, profile=path, tolerance=50, stat="min").base.latency == pytest.approx(
        predict_latency(TINY, SIZE, loaded) / 2
    )
    with pytest.raises(UsageError, match="stat must be median or min"):
        solve(TINY, SIZE, profile=path, stat="mean")

    assert main(["count", TINY.id, "--input", SIZE, "--profile", str(path), "--stat", "min", "--json"]) == 0
    lat = json.loads(capsys.readouterr().out)["latency"]
    assert lat["stat"] == "min"
    assert lat["predicted_inference_s"] == pytest.approx(predict_latency(TINY, SIZE, loaded, stat="min"))
    assert lat["measured_inference_s"] == lat["measured"]["min_s"]
    assert lat["error"] == pytest.approx(lat["predicted_inference_s"] / lat["measured"]["min_s"] - 1)
    assert lat["predicted_train_s"] == pytest.approx(predict_latency(TINY, SIZE, loaded, "train", "min"))

    cmd = [sys.executable, "-m", "bhsearch", "solve", "--base", TINY.id, "--input", SIZE, "--profile", str(medians)]
    r = subprocess.run([*cmd, "--stat", "min", "--match", "latency"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "inference_min_s" in r.stderr, r.stderr


# --------------------------------------------------------------------------- HRNet units

TINY_HRNET = get_spec("hrnet:w4:s22c8:2b8:1x2.2:2x1.1.1:1x1.1.1.1")


def _hook_flops(module, inputs):
    """Paper FLOPs, conv MACs and params of ``module`` on ``inputs`` counted by forward hooks on the
    built torch modules (an independent route from the closed form of bhsearch.cost)."""
    import torch
    from torch import nn

    totals = {"macs": 0, "flops": 0}

    def hook(mod, args, out):
        if isinstance(mod, nn.Conv2d):
            macs = out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            totals["macs"] += macs
            totals["flops"] += macs
        elif isinstance(mod, nn.BatchNorm2d):
            totals["flops"] += 2 * out.numel()
        elif isinstance(mod, nn.ReLU):
            totals["flops"] += out.numel()
        elif isinstance(mod, nn.MaxPool2d):
            totals["flops"] += args[0].numel()
        elif isinstance(mod, nn.Upsample):
            totals["flops"] += out.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    with torch.no_grad():
        module.eval()(inputs)
    for h in handles:
        h.remove()
    totals["params"] = sum(p.numel() for p in module.parameters())
    return totals


@pytest.mark.parametrize("pool", [False, True], ids=["s22", "s12p"])
def test_hrnet_units_cover_the_whole_network(pool):
    torch = pytest.importorskip("torch")
    from bhsearch.cost import count
    from bhsearch.latency.measure import _input, build_unit, unit_input_shape
    from bhsearch.models import build_backbone

    spec = TINY_HRNET.replace(stem_strides=(1, 2), pool_after_stage1=True) if pool else TINY_HRNET
    size = "41x30"  # odd sizes: every stride-2 conv rounds up, fuse up-sampling overshoots and is cropped
    units = network_units(spec, size)
    from bhsearch.cost_hrnet import hrnet_units
    from bhsearch.latency.units import hrnet_unit_key

    w, h = (int(v) for v in size.split("x"))
    assert [u.key for u in units] == [hrnet_unit_key(item.unit) for item in hrnet_units(spec, (w, h))]  # same order
    torch.manual_seed(0)
    per_unit = {}
    for unit in units:
        if unit.key not in per_unit:
            shape = unit_input_shape(unit, 1)
            per_unit[unit.key] = _hook_flops(build_unit(unit), _input(shape, torch.device("cpu"), torch.float32, False))
    summed = {k: sum(per_unit[u.key][k] for u in units) for k in ("macs", "flops", "params")}
    whole = _hook_flops(build_backbone(spec), torch.randn(1, 3, 30, 41))
    report = count(spec, size)
    assert summed == whole  # the units are the network, module for module
    assert (summed["macs"], summed["flops"], summed["params"]) == (report.macs, report.flops, report.params)
    # the kinds of unit a table needs, each timed once and reused
    kinds = {u.to_dict()["kind"] for u in units}
    assert kinds >= {"hrnet-stem", "hrnet-block", "hrnet-transition", "hrnet-fuse"} | (
        {"hrnet-pool"} if pool else set()
    )
    assert len({u.key for u in units}) < len(units)


def test_hrnet_units_round_trip_and_predict_from_a_table(tmp_path):
    from bhsearch.latency.units import unit_from_dict

    units = network_units(TINY_HRNET, SIZE)
    for unit in units:
        assert unit_from_dict(json.loads(json.dumps(unit.to_dict()))) == unit
    table = _synthetic_table([TINY_HRNET])
    ms = {key: entry["inference_s"] for key, entry in table.units.items()}
    assert predict_latency(TINY_HRNET, SIZE, table) == pytest.approx(sum(ms[u.key] for u in units) + 0.005)
    # one more module in stage 3 adds its branch blocks and its fuse layers, nothing else
    st = TINY_HRNET.stages[1]
    deeper = TINY_HRNET.replace(stages=(TINY_HRNET.stages[0], st.__class__(st.modules + 1, st.blocks, st.widths, st.block),
                                        TINY_HRNET.stages[2]))  # fmt: skip
    extra = [u for u in network_units(deeper, SIZE) if u.key.startswith(("hrnet-basic", "hrnet-fuse"))]
    added = sum(ms[u.key] for u in extra) - sum(
        ms[u.key] for u in units if u.key.startswith(("hrnet-basic", "hrnet-fuse"))
    )
    assert predict_latency(deeper, SIZE, table) - predict_latency(TINY_HRNET, SIZE, table) == pytest.approx(added)
    # the solver ranks the hrnet space by predicted latency from a table of the space's units
    import bhsearch

    space_table = _synthetic_table(_space_of(TINY_HRNET))
    result = bhsearch.solve(
        TINY_HRNET, SIZE, match="latency", profile=space_table.save(tmp_path / "t.json"), tolerance=80
    )
    assert result.base.latency == pytest.approx(predict_latency(TINY_HRNET, SIZE, space_table))


def test_profile_hrnet_space(tmp_path):
    pytest.importorskip("torch")
    from bhsearch.latency import distinct_units, profile_space, space_specs

    specs = space_specs(TINY_HRNET)
    assert len(specs) == 3  # the base and one per stem of spaces/hrnet.yaml
    table = profile_space(TINY_HRNET, SIZE, out=tmp_path / "h.json", warmup=0, reps=1, threads=1, overhead_networks=1)
    assert set(table.units) == {u.key for u in distinct_units(specs, SIZE)}
    for spec in specs:  # every representative, hence every candidate of the space, is predicted
        assert math.isfinite(predict_latency(spec, SIZE, table))
        assert math.isfinite(predict_latency(spec, SIZE, table, mode="train"))
    entry = next(e for k, e in table.units.items() if k.startswith("hrnet-fuse"))
    assert entry["train_peak_bytes"] > 0 and entry["inference_s"] > 0


# --------------------------------------------------------------------------- runtimes


def test_onnxruntime_entries_live_beside_torch_ones(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from bhsearch.cli import main
    from bhsearch.latency import profile_space

    out = tmp_path / "rt.json"
    kw = dict(space=[TINY_HRNET], out=out, warmup=0, reps=1, threads=1, overhead_networks=1)
    profile_space(TINY_HRNET, SIZE, **kw)
    table = profile_space(TINY_HRNET, SIZE, runtime="onnxruntime", **kw)
    keys = {u.key for u in network_units(TINY_HRNET, SIZE)}
    assert set(table.units) == keys | {f"{k}@onnxruntime" for k in keys}
    assert table.runtimes == ["torch", "onnxruntime"] and f"{SIZE}@onnxruntime" in table.overhead
    assert table.settings["onnxruntime_version"]
    assert all("train_s" not in e for k, e in table.units.items() if k.endswith("@onnxruntime"))
    # each onnxruntime unit is timed in six rounds (sessions), torch units in two
    assert {len(e["rounds"]) for k, e in table.units.items() if k.endswith("@onnxruntime")} == {6}
    assert {len(e["rounds"]) for k, e in table.units.items() if not k.endswith("@onnxruntime")} == {2}
    loaded = load_table(out)
    assert math.isfinite(predict_latency(TINY_HRNET, SIZE, loaded, runtime="onnxruntime"))
    assert predict_latency(TINY_HRNET, SIZE, loaded) == predict_latency(TINY_HRNET, SIZE, table)
    with pytest.raises(UsageError, match="inference only"):
        predict_latency(TINY_HRNET, SIZE, loaded, mode="train", runtime="onnxruntime")
    with pytest.raises(UsageError, match="runtime"):
        predict_latency(TINY_HRNET, SIZE, loaded, runtime="tensorrt")
    with pytest.raises(UsageError, match="--runtime onnxruntime"):
        predict_latency(TINY, SIZE, _synthetic_table([TINY]), runtime="onnxruntime")
    assert len(loaded.quality["runs"]) == 2 and loaded.quality["runs"][1]["runtime"] == "onnxruntime"
    code = main(["count", TINY_HRNET.id, "--input", SIZE, "--profile", str(out), "--runtime", "onnxruntime", "--json"])
    latency = json.loads(capsys.readouterr().out)["latency"]
    assert code == 0 and latency["runtime"] == "onnxruntime" and latency["measured"]["runtime"] == "onnxruntime"
    assert latency["predicted_train_s"] is None and math.isfinite(latency["predicted_inference_s"])
    # onnxruntime units are timed in context; a table whose onnxruntime units were timed alone is not resumed
    assert table.settings["onnxruntime_units"] == "in-context"
    assert all("context_s" in e["rounds"][0]["inference"] for k, e in table.units.items() if "@" in k)
    data = json.loads(out.read_text())
    del data["settings"]["onnxruntime_units"]
    out.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="timed alone"):
        profile_space(TINY_HRNET, SIZE, runtime="onnxruntime", **kw)


def _optimized_ops(module, x, tmp_path) -> list[str]:
    """The operators of onnxruntime's optimized CPU graph of ``module`` (``domain:op``)."""
    import onnx
    import onnxruntime as ort
    import torch

    from bhsearch.latency.measure import _Flat

    path, opt = str(tmp_path / "m.onnx"), str(tmp_path / "m.opt.onnx")
    with torch.no_grad():
        torch.onnx.export(_Flat(module.eval(), False), (x,), path, opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = opt
    ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return [f"{n.domain}:{n.op_type}" for n in onnx.load(opt).graph.node]


@pytest.mark.filterwarnings("ignore")
def test_a_unit_in_context_keeps_the_blocked_layout_inside_and_adds_its_shortcut_there(tmp_path):
    """Alone, onnxruntime adds a basic block's shortcut in the plain layout after converting back to it;
    between depthwise 1x1 convolutions (:class:`_InContext`) the whole block stays in the blocked layout, as inside
    a network: one conversion in, one out, and those belong to the context."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from bhsearch.latency.measure import _InContext, build_unit
    from bhsearch.latency.units import BlockUnit

    torch.manual_seed(0)
    block = build_unit(BlockUnit("basic", 16, 16, 1, 32, 32))
    x = torch.randn(1, 16, 32, 32)
    alone = _optimized_ops(block, x, tmp_path)
    if not any(op.endswith("ReorderInput") for op in alone):
        pytest.skip("this CPU has no blocked (NCHWc) convolution layout in onnxruntime")
    assert ":Add" in alone  # the shortcut, in the plain layout after a ReorderOutput
    inside = _optimized_ops(_InContext(block, False, [16], [16]), x, tmp_path)
    assert ":Add" not in inside and ":Relu" not in inside  # fused into the blocked convolutions
    assert inside.count("com.microsoft.nchwc:ReorderInput") == 1
    assert inside.count("com.microsoft.nchwc:ReorderOutput") == 1


def test_time_in_context_subtracts_half_the_context_on_each_side(monkeypatch):
    """``time_in_context`` = the unit between depthwise 1x1 convolutions - (context on its inputs + on its outputs) / 2;
    a stem gets none on its input, and a unit with inputs shaped like its outputs times its context once."""
    torch = pytest.importorskip("torch")
    from bhsearch.latency import measure

    calls = []

    def fake(module, shape, device, dtype, **kw):
        calls.append((type(module).__name__, shape))
        t = {"_InContext": 0.010, "_Context": 0.004 if shape == [(1, 8, 16, 16)] else 0.002}[type(module).__name__]
        return {"median_s": t, "min_s": t / 2, "p10_s": t * 0.9, "p90_s": t * 1.1, "mean_s": t, "spread": 0.2}

    monkeypatch.setattr(measure, "time_module", fake)
    cpu, f32 = torch.device("cpu"), torch.float32
    down = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
    r = measure.time_in_context(down, (1, 8, 16, 16), cpu, f32)
    assert r["median_s"] == pytest.approx(0.010 - (0.004 + 0.002) / 2) and r["context_s"] == pytest.approx(0.003)
    assert r["min_s"] == pytest.approx(0.005 - 0.0015)
    assert r["spread"] == pytest.approx((0.011 - 0.009) / 0.007)  # the unit's own range, relative to its time
    assert [c[0] for c in calls] == ["_InContext", "_Context", "_Context"]
    calls.clear()
    same = measure.time_in_context(torch.nn.Conv2d(8, 8, 3, padding=1), (1, 8, 16, 16), cpu, f32)
    assert same["median_s"] == pytest.approx(0.006) and [c[0] for c in calls] == ["_InContext", "_Context"]
    calls.clear()
    stem = measure.time_in_context(down, (1, 8, 16, 16), cpu, f32, reads_input=True)
    assert stem["median_s"] == pytest.approx(0.010 - 0.002 / 2) and len(calls) == 2


def test_missing_onnxruntime_is_one_line_exit_2(tmp_path):
    code = (
        "import sys; sys.modules['onnxruntime'] = None; from bhsearch.cli import main;"
        f"sys.exit(main(['profile', '--base', {TINY.id!r}, '--input', '32x32', '--out', {str(tmp_path / 'x.json')!r},"
        "'--runtime', 'onnxruntime', '--threads', '1']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "onnxruntime" in r.stderr and "pip install" in r.stderr and "Traceback" not in r.stderr


def test_warm_up_lasts_its_least_time_and_units_get_the_steady_allocator(monkeypatch):
    """One warm-up call left onnxruntime / oneDNN units 30-50 % spread: warm-ups last ``warmup_s``."""
    torch = pytest.importorskip("torch")
    from bhsearch.latency import measure

    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    cpu = torch.device("cpu")
    assert len(measure.time_callable(fn, cpu, 1, 2, warmup_s=0.1)) == 2
    assert len(calls) >= 2 + 0.1 / 0.011  # timed runs + warm-ups filling 0.1 s
    calls.clear()
    measure.time_callable(fn, cpu, 0, 2, warmup_s=0.1)
    assert len(calls) == 2  # warmup=0 means none, whatever warmup_s
    used = []
    monkeypatch.setattr(measure, "steady_allocator", lambda: used.append(1) or True)
    unit = network_units(TINY, "32x32")[1]
    measure.time_module(measure.build_unit(unit), (1, *unit.in_shape), cpu, torch.float32, warmup=0, reps=1)
    assert used  # units are timed with the same allocator settings as whole networks


def test_cuda_event_timing_path_with_mocked_cuda(monkeypatch):
    """The CUDA branch of time_callable (events, synchronize), exercised without a GPU."""
    torch = pytest.importorskip("torch")
    from bhsearch.latency import measure

    elapsed = iter([2.0, 4.0, 3.0])  # milliseconds, as CUDA events report

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self):
            pass

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return next(elapsed)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    calls = []
    account = measure.CpuAccount()
    times = measure.time_callable(lambda: calls.append(1), torch.device("cuda", 0), 1, 3, account=account)
    assert times == [0.002, 0.004, 0.003] and len(calls) == 4 and account.wall_s > 0
    assert measure.summarize(times)["median_s"] == 0.003
    with pytest.raises(UsageError, match="cpu only"):
        measure.check_runtime("onnxruntime", "inference", torch.device("cuda", 0))


@pytest.mark.slow
def test_compile_runtime_times_a_unit():
    """``--runtime compile``: torch.compile (inductor) of one unit; compiling takes ~1-2 min on this CPU."""
    torch = pytest.importorskip("torch")
    from bhsearch.latency.measure import build_unit, time_module

    unit = network_units(TINY, "32x32")[1]
    r = time_module(build_unit(unit), (1, *unit.in_shape), torch.device("cpu"), torch.float32, warmup=0, reps=2,
                    runtime="compile")  # fmt: skip
    assert r["reps"] == 2 and r["median_s"] > 0
    with pytest.raises(UsageError, match="inference only"):
        time_module(build_unit(unit), (1, *unit.in_shape), torch.device("cpu"), torch.float32, "train",
                    runtime="compile")  # fmt: skip


def test_solve_with_an_hrnet_profile_does_not_import_torch(tmp_path):
    path = _synthetic_table(_space_of(TINY_HRNET), overhead=(-0.001, 0.0)).save(tmp_path / "h.json")
    code = (
        "import sys, io, contextlib\n"
        "from bhsearch.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['solve', '--base', {TINY_HRNET.id!r}, '--input', {SIZE!r}, '--profile', {str(path)!r},"
        " '--match', 'latency', '--tolerance', '80', '--json']) == 0\n"
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert "bhsearch solve: WARNING" in proc.stderr and "negative overhead" in proc.stderr

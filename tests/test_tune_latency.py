"""Study latency (``bhsearch.tune.latency``): measured after the trials, once per spec, kept in latency.json and
reused; predicted from a profile table; the study's latency settings are checked."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

import bhsearch.latency
from bhsearch.errors import UsageError
from bhsearch.latency import LatencyTable, network_units, predict_latency
from bhsearch.spec import get_spec
from bhsearch.tune.latency import LATENCY_FILE, check_latency, read_latency, trained_specs, update_latency
from bhsearch.tune.results import collect_rows, results_table
from bhsearch.tune.study import Study, load_study

BASE = get_spec("resnet50").scaled(0.0625)
PAPER = get_spec("bh-resnet50").scaled(0.0625)
OTHER = get_spec("resnet18").scaled(0.0625)


def _study(tmp_path: Path, **latency) -> Study:
    return Study.model_validate(
        {
            "name": "lat",
            "base": "resnet50",
            "width_mult": 0.0625,
            "stages": {"pretrain": {"data": "synthetic-cifar100:data/c", "epochs": 1}},
            "latency": {"input_size": "64x64", "warmup": 0, "reps": 3, **latency},
            "storage": str(tmp_path / "runs"),
        }
    )


def _run_dir(tmp_path: Path) -> Path:
    """Trial folders as Tune leaves them: two trials of BASE, one of PAPER, one of OTHER that reported nothing."""
    run_dir = tmp_path / "runs" / "lat"
    for name, spec, rows in (
        ("trial_a", BASE, 1),
        ("trial_b", BASE, 2),
        ("trial_c", PAPER, 1),
        ("trial_d", OTHER, 0),
    ):
        folder = run_dir / name
        folder.mkdir(parents=True)
        (folder / "params.json").write_text(json.dumps({"spec_id": spec.id}))
        lines = [{"trial_id": name[-1], "epochs_done": k + 1, "score": -1000.0 + k, "top1": 1.0} for k in range(rows)]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir


@pytest.fixture
def counted(monkeypatch):
    """The real ``measure_latencies``, counting the specs it measured and the settings they asked for."""
    import bhsearch.latency.measure as measure

    real = measure.measure_latencies
    calls = []

    def wrapper(specs, input_size, **kwargs):
        calls.extend((get_spec(spec).id, input_size, kwargs) for spec in specs)
        return real(specs, input_size, **kwargs)

    monkeypatch.setattr(measure, "measure_latencies", wrapper)
    return calls


def test_measured_once_per_trained_spec_then_reused(tmp_path, counted):
    run_dir = _run_dir(tmp_path)
    study = _study(tmp_path)
    assert trained_specs(run_dir) == [BASE.id, PAPER.id]  # OTHER never reported an epoch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        record = update_latency(run_dir, study)
        assert torch.get_num_threads() == 2  # the caller's thread count is restored
    finally:
        torch.set_num_threads(before)
    assert [c[0] for c in counted] == [BASE.id, PAPER.id]  # one measurement per distinct spec, in order
    assert all(c[1] == "64x64" and c[2]["threads"] == 1 and c[2]["reps"] == 3 for c in counted)
    assert record["settings"]["threads"] == 1 and record["settings"]["input_size"] == "64x64"
    assert record["settings"]["source"] == "measured" and record["settings"]["torch_version"] == torch.__version__
    for spec in (BASE, PAPER):
        entry = record["specs"][spec.id]
        assert entry["latency_source"] == "measured"
        assert 0 < entry["latency_p10_ms"] <= entry["latency_ms"] <= entry["latency_p90_ms"]
        assert entry["latency_spread_pct"] == pytest.approx(
            100 * (entry["latency_p90_ms"] - entry["latency_p10_ms"]) / entry["latency_ms"]
        )
    text = (run_dir / LATENCY_FILE).read_text()
    assert json.loads(text) == record

    # a resumed study or a report: nothing is measured again, the file is untouched
    assert update_latency(run_dir, study) == record
    assert len(counted) == 2 and (run_dir / LATENCY_FILE).read_text() == text
    # the table takes latency from latency.json, for every trial of the spec
    df = results_table(collect_rows(run_dir, study))
    by_trial = df.set_index("trial_id")
    assert by_trial.loc["a", "latency_ms"] == record["specs"][BASE.id]["latency_ms"]
    assert by_trial.loc["b", "latency_ms"] == record["specs"][BASE.id]["latency_ms"]
    assert by_trial.loc["c", "latency_ms"] == record["specs"][PAPER.id]["latency_ms"]
    assert list(by_trial.loc[["a", "b", "c"], "latency_source"]) == ["measured"] * 3
    assert (
        by_trial.loc["d", "latency_source"] is None
        and by_trial.loc["d", "latency_ms"] != by_trial.loc["d", "latency_ms"]
    )
    assert df["weights"].isna().all()  # no trial of this folder has a checkpoint

    # other settings (here: reps): every spec is measured again, the file never mixes conditions
    update_latency(run_dir, _study(tmp_path, reps=2))
    assert [c[0] for c in counted[2:]] == [BASE.id, PAPER.id] and counted[-1][2]["reps"] == 2
    assert read_latency(run_dir)["settings"]["reps"] == 2


def test_disabled_measures_nothing_and_old_runs_keep_their_in_trial_figure(tmp_path, counted):
    run_dir = _run_dir(tmp_path)
    update_latency(run_dir, _study(tmp_path, enabled=False))
    assert counted == [] and not (run_dir / LATENCY_FILE).exists()
    # a run folder of an older bhsearch: trials reported latency_ms, measured while other trials trained
    rows = [{"trial_id": "a", "epochs_done": 1, "score": 1.0, "latency_ms": 3.5}]
    (run_dir / "trial_a" / "result.json").write_text(json.dumps(rows[0]) + "\n")
    df = results_table(collect_rows(run_dir, _study(tmp_path))).set_index("trial_id")
    assert df.loc["a", "latency_ms"] == 3.5 and df.loc["a", "latency_source"] == "in-trial"


def _profile(path: Path, specs, size: str = "64x64") -> Path:
    """A latency table with made-up unit times: unit k of the distinct units takes (k + 1) ms."""
    units = {}
    for spec in specs:
        for unit in network_units(spec, size):
            units.setdefault(unit.key, {"inference_s": (len(units) + 1) / 1000.0})
    settings = {"device": "cpu", "device_name": "test", "torch_version": "x", "dtype": "float32", "batch_size": 1}
    table = LatencyTable(settings={**settings, "threads": 1, "norm": "bn"}, units=units)
    table.overhead = {size: {"inference_s": 0.5 / 1000.0}}
    return table.save(path)


def test_predicted_from_a_profile_table(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a study with a profile table must not time anything")

    monkeypatch.setattr(bhsearch.latency, "measure_latency", never, raising=False)
    import bhsearch.latency.measure as measure

    monkeypatch.setattr(measure, "measure_latencies", never)
    run_dir = _run_dir(tmp_path)
    profile = _profile(tmp_path / "cpu.json", [BASE, PAPER])
    study = _study(tmp_path, profile=str(profile))
    check_latency(study, [BASE, PAPER])
    record = update_latency(run_dir, study)
    assert record["settings"]["source"] == "predicted" and record["settings"]["profile"] == str(profile)
    table = bhsearch.latency.load_table(profile)
    for spec in (BASE, PAPER):
        expected = 1000.0 * predict_latency(spec, "64x64", table)
        assert record["specs"][spec.id] == {
            "latency_ms": pytest.approx(expected),
            "latency_spread_pct": None,
            "latency_source": "predicted",
        }
    df = results_table(collect_rows(run_dir, study)).set_index("trial_id")
    assert list(df.loc[["a", "b", "c"], "latency_source"]) == ["predicted"] * 3
    assert df.loc["c", "latency_ms"] == pytest.approx(1000.0 * predict_latency(PAPER, "64x64", table))

    # before Ray: a table that cannot predict a candidate, or no table at all, is one line
    with pytest.raises(UsageError, match=r"^latency\.profile: .*no inference_s entry for unit"):
        check_latency(study, [BASE, OTHER])
    with pytest.raises(UsageError, match=r"^latency\.profile: .*no such latency table"):
        check_latency(_study(tmp_path, profile=str(tmp_path / "missing.json")), [BASE])


def test_profile_error_stops_the_study_before_ray(tmp_path):
    from bhsearch.tune.runner import run_study

    study = _study(tmp_path, profile=str(tmp_path / "missing.json"))
    with pytest.raises(UsageError, match="latency.profile: .*no such latency table"):
        run_study(study, verbose=0)
    assert not (tmp_path / "runs").exists()


BAD = {
    "{threads: 0}": "latency.threads: Input should be greater than or equal to 1",
    "{threads: true}": "threads must be a number, got true",
    "{clock: cpu, threads: 2}": "clock 'cpu' times the measuring thread only: use it with threads: 1, not 2",
    "{clock: sundial}": "latency.clock: Input should be 'wall' or 'cpu'",
    "{device: tpu}": "latency.device: device must be cpu, cuda or cuda:N, got 'tpu'",
    "{input_size: huge}": "latency.input_size:",
    "{profile: ''}": "profile must be the path of a `bhsearch profile` table",
    "{warmup: -1}": "latency.warmup: Input should be greater than or equal to 0",
}


@pytest.mark.parametrize("setting", list(BAD))
def test_latency_settings_are_checked(tmp_path, setting):
    text = textwrap.dedent(
        f"""\
        name: t
        base: resnet50
        stages:
          pretrain:
            data: synthetic-cifar100:data/c
            epochs: 1
        latency: {setting}
        """
    )
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_study(path)
    assert BAD[setting] in str(info.value) and "\n" not in str(info.value)


def test_defaults_and_relative_profile(tmp_path):
    study = _study(tmp_path, profile="profiles/cpu.json")
    default = Study.model_validate({**study.model_dump(), "latency": {}}).latency
    assert (default.threads, default.warmup, default.reps, default.clock, default.profile) == (1, 2, 10, "wall", None)
    assert study.absolute(tmp_path).latency.profile == str(tmp_path / "profiles" / "cpu.json")


def test_statistic_min_reports_the_fastest_pass_and_the_allocator_is_pinned(tmp_path):
    from bhsearch.latency.measure import measure_latencies, steady_allocator

    run_dir = _run_dir(tmp_path)
    record = update_latency(run_dir, _study(tmp_path, statistic="min"))
    assert record["settings"]["statistic"] == "min"
    for entry in record["specs"].values():
        assert entry["latency_ms"] == entry["latency_min_ms"] <= entry["latency_median_ms"]
    # interleaved rounds: every spec gets exactly `reps` timed passes
    out = measure_latencies([BASE.id, PAPER.id], "64x64", warmup=0, reps=4, threads=1)
    assert list(out) == [BASE.id, PAPER.id] and all(v["reps"] == 4 for v in out.values())
    assert steady_allocator() is True  # glibc (Linux CI): mallopt accepted both thresholds

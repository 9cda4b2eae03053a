"""Profile a design space into a latency lookup table (imports torch).

Every distinct unit the space can produce is timed in ``ROUNDS`` passes over the units (each: warm-up,
repetitions) in inference and in a training step, with its memory; a unit's time is the median of its
rounds' medians (min: the least of their minima), so a slow minute of the machine weighs on one of its
timings, not on all. The table is rewritten after every unit, so a killed profile keeps what it measured
and ``resume=True`` measures only what is missing (whole units or their later rounds). The per-network
overhead term comes from whole networks (end-to-end minus the sum of their units), each timed in
``ROUNDS`` rounds spread through the sweep (a slow minute then weighs on networks and units alike).
Each run records the machine's load (the cores other processes used while it ran, from ``/proc/stat``,
and the load average) and, for the wall clock, the process CPU time per wall second of its timed passes in ``table.quality["runs"]`` (see :func:`bhsearch.latency.table.assess`).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.latency.table import (
    INFERENCE_ONLY_RUNTIMES,
    RUNTIMES,
    STATS,
    LatencyTable,
    fit_overhead,
    load_table,
    percentile,
    runtime_key,
    size_key,
    slope_field,
)
from bhsearch.latency.units import DTYPE_BYTES, Unit, input_elements, network_units
from bhsearch.spec import HRNetSpec, HRStage, ResNetSpec, Spec, get_spec, parse_input_size


def space_specs(base: Spec | str, space: Any = None) -> list[Spec]:
    """Specs whose units cover a design space: the base, then one spec per stem / stride pattern /
    widths of the space with two blocks in every stage (so each stage's first and repeated block
    appear; HRNet: two stage-1 blocks, one module of one block per branch in every stage, which has
    every branch block, transition and fuse unit of the space). ``space`` is a ``spaces/*.yaml`` file
    or None (the family's default space, both read by :func:`bhsearch.solver.load_space`), or an
    iterable of specs / spec references."""
    base = get_spec(base)
    if not isinstance(base, (ResNetSpec, HRNetSpec)):
        raise UsageError(f"latency profiles cover resnet- and hrnet-family bases; {base} is {base.family}")
    if space is None or isinstance(space, (str, Path)):
        from bhsearch.solver import load_space

        design = load_space(space, base)
        if isinstance(base, HRNetSpec):
            stages = tuple(HRStage(1, (1,) * len(st.widths), st.widths, st.block) for st in base.stages)
            reps = [base.replace(stage1_blocks=2, stages=stages, **glob) for glob in design.globals]
        else:
            reps = [base.replace(blocks=(2,) * len(base.blocks), **glob) for glob in design.globals]
    else:
        reps = [get_spec(s) for s in space]
    out = [base]
    for spec in reps:
        if spec not in out:
            out.append(spec)
    return out


#: Whole networks timed for the overhead term: enough to fit its boundary slope robustly.
OVERHEAD_NETWORKS = 6
#: The deepest stage of an overhead network (random candidates), as in the accuracy benchmark.
OVERHEAD_MAX_DEPTH = 8
#: Times every unit (one pass over all units per round) and every overhead network (at evenly spaced
#: points of the passes, one per part) is timed: each is then taken in several machine states, and the
#: networks in the same states as the units they are compared with.
ROUNDS = 2
#: Runtimes whose units are timed in other numbers of rounds than ``ROUNDS``. torch.compile: one, as it
#: would compile every unit again. onnxruntime: six, each in a fresh session. A unit's time varies from
#: session to session far more than within one: an HRNet-32 x0.5 fuse unit at 1 thread had a coefficient
#: of variation of 8-10 % over 8 consecutive sessions with 3 or with 60 repetitions each, and the same
#: unit differed by 4 % (median over units) between the two rounds of a profile, while whole networks,
#: which average many operators, repeated within 1.4 %.
UNIT_ROUNDS = {"compile": 1, "onnxruntime": 6}


#: Runtimes whose units are timed in context (:func:`bhsearch.latency.measure.time_in_context`), between
#: depthwise 1x1 convolutions whose own time is subtracted, rather than alone: onnxruntime, where a unit alone
#: converts its tensors between the plain and the blocked layout at its boundary and a network does not.
IN_CONTEXT_RUNTIMES = ("onnxruntime",)


def unit_rounds(runtime: str) -> int:
    """Rounds each unit is timed in under ``runtime``."""
    return UNIT_ROUNDS.get(runtime, ROUNDS)


def overhead_specs(specs: list[Spec], space: Any, n: int) -> list[Spec]:
    """The ``n`` whole networks of the overhead term: the base (``specs[0]``), then random candidates of the
    design space (seed 0, at most ``OVERHEAD_MAX_DEPTH`` blocks per stage: their element counts spread
    from top- to bottom-heavy, which the boundary slope needs), or, for a space given as specs, ``specs``."""
    if space is not None and not isinstance(space, (str, Path)):
        return specs[:n]
    from bhsearch.solver import load_space, random_candidates

    design = load_space(space, specs[0])
    return [specs[0], *random_candidates(design, specs[0], n - 1, 0, OVERHEAD_MAX_DEPTH, [specs[0].id])][:n]


def distinct_units(specs: Iterable[Spec], input_size: str | tuple[int, int]) -> list[Unit]:
    """The distinct units of ``specs`` at ``input_size``, in first-seen order."""
    seen: dict[str, Unit] = {}
    for spec in specs:
        for unit in network_units(spec, input_size):
            seen.setdefault(unit.key, unit)
    return list(seen.values())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def profile_space(
    base: Spec | str,
    input_size: str | tuple[int, int],
    space: Any = None,
    device: str = "cpu",
    batch_size: int = 1,
    dtype: str = "float32",
    warmup: int = 1,
    reps: int = 5,
    threads: int | None = None,
    norm: str = "bn",
    clock: str = "wall",
    runtime: str = "torch",
    out: str | Path = "profiles/latency.json",
    resume: bool = True,
    overhead_networks: int = OVERHEAD_NETWORKS,
    progress: bool = False,
    on_unit: Callable[[str, dict[str, Any], int, int], None] | None = None,
) -> LatencyTable:
    """Time every distinct unit of the design space in rounds and write a lookup table to ``out``.

    With ``resume`` an existing table at ``out`` is kept and only missing units (and the overhead
    term, if missing) are measured; it must have been measured under the same settings. Without
    ``resume`` an existing table is replaced. ``on_unit(key, entry, done, total)`` is called after each
    unit round is saved. ``reps`` timed runs per unit are split over its rounds (:func:`unit_rounds`; at
    least one each). ``overhead_networks`` whole networks (the base, then random candidates of the space,
    :func:`overhead_specs`), each timed ``ROUNDS`` times at points spread through the sweep
    (:func:`network_slots`), give the overhead term and its boundary slope (:func:`fit_overhead`).
    ``runtime`` (``RUNTIMES``) adds that runtime's entries to the table (onnxruntime: inference only,
    keys ending in ``@onnxruntime``), so one table holds several.
    """
    width, height = parse_input_size(input_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    if dtype not in DTYPE_BYTES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPE_BYTES)}; got {dtype!r}")
    if not isinstance(warmup, int) or warmup < 0 or not isinstance(reps, int) or reps < 1:
        raise UsageError(f"warmup must be >= 0 and reps >= 1, got warmup={warmup!r}, reps={reps!r}")
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    specs = space_specs(base, space)
    out = Path(out)
    table = load_table(out) if resume and out.exists() else None
    requested = {"dtype": dtype, "batch_size": batch_size, "norm": norm, "threads": threads}
    if table is not None and str(device).startswith("cpu"):
        requested["clock"] = clock
    if table is not None:  # refuse early, before torch is imported
        _check_resumable(table, out, device=str(device).split(":")[0], **requested)

    import torch

    from bhsearch.latency import measure as m

    dev, tdtype = m.resolve_device(device), m.resolve_dtype(dtype)
    m.check_runtime(runtime, device=dev)
    settings = {
        **requested,
        "device": dev.type,
        "device_name": m.device_name(dev),
        "torch_version": torch.__version__,
        "threads": m.set_threads(threads),
        "clock": "cuda-events" if dev.type == "cuda" else clock,
    }
    if dev.type == "cpu":
        m.check_clock(clock)
    if table is not None:
        _check_resumable(table, out, **settings)
    else:
        table = LatencyTable(settings={**settings, "created": _now()}, path=out)
    if runtime == "onnxruntime":
        version = m.onnxruntime_version()
        have = table.settings.get("onnxruntime_version")
        if have is not None and have != version and any(k.endswith("@onnxruntime") for k in table.units):
            raise UsageError(
                f"{out}: its onnxruntime entries were measured with onnxruntime {have}, this is {version}; "
                "use another --out, or --no-resume to replace it"
            )
        table.settings["onnxruntime_version"] = version
        if table.settings.get("onnxruntime_units", "alone") != "in-context" and any(
            k.endswith("@onnxruntime") for k in table.units
        ):
            raise UsageError(
                f"{out}: its onnxruntime units were timed alone, this version times them in context; "
                "use another --out, or --no-resume to replace it"
            )
        table.settings["onnxruntime_units"] = "in-context"
    table.settings.update(warmup=warmup, reps=reps, updated=_now())
    table.settings.setdefault("bases", [])
    if specs[0].id not in table.settings["bases"]:
        table.settings["bases"].append(specs[0].id)

    units = distinct_units(specs, (width, height))
    steps = sweep(units, {k: rounds_done(e) for k, e in table.units.items()}, runtime)
    skey = runtime_key(size_key((width, height)), runtime)
    networks = overhead_specs(specs, space, overhead_networks) if skey not in table.overhead else []
    slots = network_slots(len(steps), len(networks), ROUNDS)
    timings: list[list[dict[str, Any]]] = [[] for _ in networks]
    total = len(steps) + len(networks) * ROUNDS
    unit_reps = max(1, -(-reps // unit_rounds(runtime)))
    table.save(out)

    account = m.CpuAccount()
    run = {"started": _now(), "runtime": runtime, "threads": settings["threads"], "clock": settings["clock"],
           "cpus": available_cpus(), "load_start": load_average()}  # fmt: skip
    t_run, busy0, own0 = time.perf_counter(), cpu_busy_seconds(), process_cpu_seconds()
    bar = _progress(progress, total, f"profiling {len({u.key for u in steps})} of {len(units)} units")

    def time_networks(after: int) -> None:
        for i in slots.get(after, []):
            bar.update(f"overhead: whole network {networks[i]}")
            timings[i].append(_time_network(m, networks[i], (width, height), settings, warmup, reps, runtime, account))
            bar.advance()

    try:
        time_networks(0)
        for done, unit in enumerate(steps, start=1):
            bar.update(f"{unit.key}")
            key = runtime_key(unit.key, runtime)
            entry = _measure_unit(m, unit, dev, tdtype, batch_size, warmup, unit_reps, norm, clock, runtime, account,
                                  table.units.get(key))  # fmt: skip
            table.units[key] = entry
            table.save(out)
            bar.advance()
            if on_unit is not None:
                on_unit(unit.key, entry, done, total)
            time_networks(done)
        if networks:
            table.overhead[skey] = _overhead_entry(table, networks, timings, (width, height), runtime)
    finally:
        bar.close()
        if total and account.wall_s > 0:  # a run that measured something: keep its machine readings
            wall, busy1 = time.perf_counter() - t_run, cpu_busy_seconds()
            busy = None if busy0 is None or busy1 is None else busy1 - busy0
            run.update(
                ended=_now(),
                wall_s=round(wall, 3),
                other_cores=other_cores(busy, process_cpu_seconds() - own0, wall),
                load_end=load_average(),
                timed_wall_s=round(account.wall_s, 6),
                timed_cpu_s=round(account.cpu_s, 6),
            )
            table.quality.setdefault("runs", []).append(run)
            table.save(out)
    return table


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 3)
    except (OSError, AttributeError):
        return None


def cpu_busy_seconds(cpus: Iterable[int] | None = None, stat_text: str | None = None) -> float | None:
    """Seconds the cores ``cpus`` (default: those this process may run on) have been busy since boot,
    from ``/proc/stat``: all but idle and iowait, steal included (a hypervisor running other guests
    takes the core). None where there is no ``/proc/stat``. ``stat_text`` replaces the file (tests)."""
    if stat_text is None:
        try:
            stat_text = Path("/proc/stat").read_text()
        except OSError:
            return None
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            cpus = range(os.cpu_count() or 1)
    wanted = {f"cpu{c}" for c in cpus}
    ticks = 0
    for line in stat_text.splitlines():
        name, *fields = line.split()
        if name in wanted and len(fields) >= 8:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK") if wanted else None


def process_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def other_cores(busy_s: float | None, own_s: float, wall_s: float) -> float | None:
    """Cores used on average by other processes over ``wall_s`` seconds, from the busy seconds of this
    process's cores and its own CPU seconds over the same interval (None without readings)."""
    if busy_s is None or wall_s <= 0:
        return None
    return round(max(0.0, busy_s - own_s) / wall_s, 3)


def available_cpus() -> int | None:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _check_resumable(table: LatencyTable, out: Path, **settings: Any) -> None:
    bad = table.mismatches(**settings)
    if bad:
        raise UsageError(
            f"{out}: cannot resume a latency table measured under other settings ({'; '.join(bad)}); "
            "use another --out, or --no-resume to replace it"
        )


def _modes(runtime: str) -> tuple[str, ...]:
    return ("inference",) if runtime in INFERENCE_ONLY_RUNTIMES else ("inference", "train")


def rounds_done(entry: dict[str, Any]) -> int:
    """Rounds a unit entry holds (an entry written before units were timed in rounds counts as complete)."""
    return len(entry["rounds"]) if "rounds" in entry else ROUNDS


def sweep(units: list[Unit], done: dict[str, int], runtime: str = "torch") -> list[Unit]:
    """The unit timings still to take, in order: round r is one pass over the units with fewer than r + 1
    rounds in ``done`` (table key -> rounds held; a missing unit holds none), ``unit_rounds(runtime)``
    rounds in all."""
    rounds = range(unit_rounds(runtime))
    return [u for r in rounds for u in units if done.get(runtime_key(u.key, runtime), 0) <= r]


def combine_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One time from rounds of timings (:func:`time_module` / :func:`measure_latency` results): the median
    of their medians, the least of their minima, the outermost p10 / p90, and as spread the largest of
    their own spreads and of their medians' (p90 - p10) / median, the rounds' medians taken as repetitions
    (a machine that changed speed shows; two rounds: 0.8 x their relative range)."""
    medians = [r["median_s"] for r in rounds]
    center = statistics.median(medians)
    spreads = [r.get("spread") or 0.0 for r in rounds]
    ordered = sorted(medians)
    between = (percentile(ordered, 0.9) - percentile(ordered, 0.1)) / center if center > 0 else 0.0
    out = {
        "median_s": center,
        "min_s": min(r["min_s"] for r in rounds),
        "spread": max([*spreads, between]),
        "rounds_s": medians,
    }
    if all(r.get("p10_s") is not None and r.get("p90_s") is not None for r in rounds):
        out.update(p10_s=min(r["p10_s"] for r in rounds), p90_s=max(r["p90_s"] for r in rounds))
    return out


def _measure_unit(
    m, unit: Unit, dev, tdtype, batch_size: int, warmup: int, reps: int, norm: str, clock: str,
    runtime: str = "torch", account=None, entry: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One more round of ``unit``'s timings added to ``entry`` (a new entry when None); its memory is
    measured with the first round."""
    import torch

    torch.manual_seed(0)
    module = m.build_unit(unit, norm)
    shape = m.unit_input_shape(unit, batch_size)
    grad = m.unit_input_grad(unit)
    t0 = time.perf_counter()
    entry = dict(entry) if entry is not None else {"unit": unit.to_dict()}
    if runtime != "torch":
        entry["runtime"] = runtime
    timings = {}
    for mode in _modes(runtime):
        if runtime in IN_CONTEXT_RUNTIMES:
            r = m.time_in_context(module, shape, dev, tdtype, not grad, warmup, reps, clock, account)
        else:
            r = m.time_module(
                module, shape, dev, tdtype, mode, warmup, reps, input_grad=grad and mode == "train", clock=clock,
                runtime=runtime, account=account,
            )  # fmt: skip
        timings[mode] = {k: r[k] for k in ("median_s", "min_s", "p10_s", "p90_s", "spread", "context_s") if k in r}
    entry["rounds"] = [*entry.get("rounds", []), timings]
    for mode in timings:
        c = combine_rounds([t[mode] for t in entry["rounds"]])
        entry.update({
            f"{mode}_s": c["median_s"], f"{mode}_p10_s": c["p10_s"], f"{mode}_p90_s": c["p90_s"],
            f"{mode}_min_s": c["min_s"], f"{mode}_spread": c["spread"],
        })  # fmt: skip
    if runtime == "torch" and "train_peak_bytes" not in entry:
        mem_train = m.memory_module(module, shape, dev, tdtype, "train", input_grad=grad)
        entry.update(train_saved_bytes=mem_train["saved_bytes"], train_peak_bytes=mem_train["peak_bytes"])
    elapsed = time.perf_counter() - t0 + entry.get("profile_s", 0.0)
    entry.update(profile_s=round(elapsed, 3), measured=_now())
    return entry


def network_slots(units: int, networks: int, rounds: int) -> dict[int, list[int]]:
    """When to time each overhead network during a sweep of ``units`` unit timings: ``{after timing k:
    [network indices]}``, every network once per round, the ``networks * rounds`` timings evenly spaced
    through the sweep (round r in its r-th part), so each network meets the machine states the units met."""
    slots: dict[int, list[int]] = {}
    count = networks * rounds
    for j in range(count):
        slots.setdefault(int((j + 0.5) * units / count), []).append(j % networks)
    return slots


def _time_network(m, spec, size, settings, warmup: int, reps: int, runtime: str, account) -> dict[str, Any]:
    """One round of end-to-end timings of ``spec``, per mode (:func:`measure_latency` results)."""
    out = {}
    for mode in _modes(runtime):
        out[mode] = m.measure_latency(
            spec, size, settings["device"], settings["batch_size"], settings["dtype"], mode,
            max(1, warmup), max(3, reps // 2 + 1), None, settings["norm"], settings["clock"],
            runtime=runtime, account=account,
        )  # fmt: skip
    return out


def _overhead_entry(table, specs, timings, size, runtime: str) -> dict[str, Any]:
    """End-to-end time minus the sum of the units, per mode and statistic, on whole networks, fitted
    as ``a + b x elements`` (:func:`fit_overhead`); a network's rounds are combined as a unit's are
    (:func:`combine_rounds`)."""
    networks = []
    modes = _modes(runtime)
    for spec, rounds in zip(specs, timings, strict=True):
        units = network_units(spec, size)
        row: dict[str, Any] = {"spec": spec.id, "elements": sum(input_elements(u) for u in units)}
        for mode in modes:
            c = combine_rounds([r[mode] for r in rounds])
            row[f"{mode}_rounds_s"] = c["rounds_s"]
            row[f"{mode}_spread"] = c["spread"]
            measured = {"median": c["median_s"], "min": c["min_s"]}
            for stat in STATS:
                name = f"{mode}_s" if stat == "median" else f"{mode}_{stat}_s"
                row[f"{mode}_{stat}_measured_s"] = measured[stat]
                row[f"{mode}_{stat}_units_s"] = sum(table.units[runtime_key(u.key, runtime)][name] for u in units)
        networks.append(row)
    entry: dict[str, Any] = {"networks": networks, "measured": _now()}
    if runtime != "torch":
        entry["runtime"] = runtime
    elements = [r["elements"] for r in networks]
    for mode in modes:
        for stat in STATS:
            residuals = [r[f"{mode}_{stat}_measured_s"] - r[f"{mode}_{stat}_units_s"] for r in networks]
            name = f"{mode}_s" if stat == "median" else f"{mode}_{stat}_s"
            entry[name], entry[slope_field(name)] = fit_overhead(residuals, elements)
    return entry


class _Bar:
    """A rich progress bar, or nothing."""

    def __init__(self, enabled: bool, total: int, title: str) -> None:
        self._progress = None
        if enabled and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[unit]}"), transient=False,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task(title, total=total, unit="")

    def update(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, unit=text)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, unit="")
            self._progress.stop()


def _progress(enabled: bool, total: int, title: str) -> _Bar:
    return _Bar(enabled, total, title)


__all__ = ["available_cpus", "distinct_units", "load_average", "profile_space", "space_specs"]

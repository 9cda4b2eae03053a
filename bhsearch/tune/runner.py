"""Run a study with Ray Tune: candidates from the solver, a searcher, ASHA, resume.

* ``optuna``: TPE, define-by-run over the FLOP-matched space (``PoolSampler``): the searcher
  picks a layout (stem and stage strides) and the block counts of every stage but the last;
  the solver's candidate list closes the cost constraint (the candidate of that layout whose
  leading block counts are nearest is trained).
* ``random``: a seeded sample, without repeats, of the solver's candidates.
* ``grid``: every candidate the solver returns (``num_samples`` is ignored).

The base and the paper's bottom-heavy config are always evaluated first (``points_to_evaluate``
for Optuna). A trial that fails is recorded with its error and the study goes on; a study that
is interrupted (Ctrl-C, ``kill -9``) continues with ``resume=True``: a new Tuner in the same run
folder, planned from bhsearch's own JSON record of the trials, the Optuna journal and the trials'
weights-only checkpoints (``bhsearch.tune.state``). Tune's pickled state is never read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bhsearch.errors import BhsearchError, UsageError
from bhsearch.fileio import atomic_write_json
from bhsearch.spec import HRNetSpec, ResNetSpec, Spec, get_spec
from bhsearch.tune import state as state_mod
from bhsearch.tune.study import Study

CANDIDATES_FILE = "candidates.json"
STUDY_FILE = "study.json"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A spec the study may train and why it is there (``base``, ``paper``, ``reference``, ``candidate``)."""

    spec: Spec
    role: str = "candidate"

    @property
    def id(self) -> str:
        return self.spec.id


# --------------------------------------------------------------------------- candidates


def solver_candidates(study: Study) -> list[Spec]:
    """Specs of the FLOP-matched design space around the (width-scaled) base, solver's order."""
    from bhsearch import solver

    kwargs: dict[str, Any] = dict(study.space.options)
    if study.space.file:
        kwargs["space"] = study.space.file
    if study.space.match:
        kwargs["match"] = study.space.match
    if study.space.tolerance is not None:
        kwargs["tolerance"] = study.space.tolerance
    try:
        result = solver.solve(study.base_spec(), study.input_size, **kwargs)
    except TypeError as exc:
        raise UsageError(f"space.options: the solver refused an option: {exc}") from None
    specs = [row.spec for row in getattr(result, "candidates", result)]
    return prefilter(study, specs) if study.prefilter is not None else specs


def prefilter(study: Study, specs: list[Spec]) -> list[Spec]:
    """The ``study.prefilter.keep`` specs of best training-free score at the study's input size
    (ties keep the solver's order)."""
    from bhsearch.scores.candidates import score_specs

    cfg = study.prefilter
    rows = score_specs(
        specs, [cfg.score], [study.input_size], width_mult=cfg.width_mult, batch=cfg.batch, seed=cfg.seed
    )
    key = next(k for k in rows[0] if k == cfg.score or k.startswith(f"{cfg.score}@")) if rows else cfg.score
    order = sorted(range(len(specs)), key=lambda i: -rows[i][key])
    return [specs[i] for i in order[: cfg.keep]]


def candidate_pool(study: Study, solved: list[Spec] | None = None) -> list[Candidate]:
    """Reference points first (base, paper BH), then the solver's candidates, without repeats."""
    pool: dict[str, Candidate] = {}
    for role, spec in study.reference_specs():
        pool.setdefault(spec.id, Candidate(spec, role))
    for spec in solver_candidates(study) if solved is None else solved:
        pool.setdefault(spec.id, Candidate(spec, "candidate"))
    return list(pool.values())


def genome(spec: Spec) -> tuple[str, tuple[int, ...]]:
    """``(layout, genes)``: the spec without its block counts, and the block counts in order.

    ResNet genes are the blocks per stage; HRNet genes are stage-1 blocks, then for every later
    stage its module count and blocks per branch.
    """
    if isinstance(spec, ResNetSpec):
        return spec.replace(blocks=(1,) * len(spec.blocks)).id, tuple(spec.blocks)
    if isinstance(spec, HRNetSpec):
        genes = [spec.stage1_blocks]
        stages = []
        for st in spec.stages:
            genes += [st.modules, *st.blocks]
            stages.append(dataclasses.replace(st, modules=1, blocks=(1,) * len(st.blocks)))
        return spec.replace(stage1_blocks=1, stages=tuple(stages)).id, tuple(genes)
    raise UsageError(f"no genome for {type(spec).__name__}")


class PoolSampler:
    """Optuna define-by-run space over a fixed candidate pool (picklable for Tune's resume).

    Suggests ``layout`` (categorical) and ``g0..g{n-2}`` (integers over the pool's range); the
    last gene is closed by the pool: the trained candidate is the one of that layout nearest (L1)
    to the suggested genes, preferring candidates not yet issued so a study never trains a spec
    twice while others remain.
    """

    def __init__(self, pool: list[Candidate]):
        self.entries = [(c.id, *genome(c.spec)) for c in pool]
        self.layouts = sorted({layout for _, layout, _ in self.entries})
        n = max(len(genes) for _, _, genes in self.entries)
        self.n_free = max(0, n - 1)
        self.bounds = [
            (min(g[i] for _, _, g in self.entries if len(g) > i), max(g[i] for _, _, g in self.entries if len(g) > i))
            for i in range(self.n_free)
        ]
        self.issued: list[str] = []

    def params_of(self, spec_id: str) -> dict[str, Any]:
        """The parameters that make ``__call__`` pick ``spec_id`` (for ``points_to_evaluate``)."""
        for sid, layout, genes in self.entries:
            if sid == spec_id:
                params: dict[str, Any] = {"layout": layout} if len(self.layouts) > 1 else {}
                params.update({f"g{i}": genes[i] for i in range(min(self.n_free, len(genes)))})
                return params
        raise KeyError(spec_id)

    def pick(self, layout: str, genes: list[int]) -> str:
        def distance(entry) -> int:
            return sum(abs(a - b) for a, b in zip(entry[2], genes, strict=False))

        same = [e for e in self.entries if e[1] == layout] or self.entries
        fresh = [e for e in same if e[0] not in self.issued] or [e for e in self.entries if e[0] not in self.issued]
        choice = min(fresh or same, key=distance)  # min is stable: ties go to the solver's order
        self.issued.append(choice[0])
        return choice[0]

    def __call__(self, trial: Any) -> dict[str, Any]:
        layout = trial.suggest_categorical("layout", self.layouts) if len(self.layouts) > 1 else self.layouts[0]
        genes = [trial.suggest_int(f"g{i}", lo, hi) for i, (lo, hi) in enumerate(self.bounds)]
        return {"spec_id": self.pick(layout, genes)}


def plan_specs(study: Study, pool: list[Candidate]) -> list[str] | None:
    """The spec ids a ``random`` or ``grid`` study trains, in order (None for ``optuna``)."""
    refs = [c.id for c in pool if c.role != "candidate"]
    algorithm, n = study.search.algorithm, study.search.num_samples
    if algorithm == "grid":
        return [c.id for c in pool]
    if algorithm == "random":
        rest = [c.id for c in pool if c.role == "candidate"]
        random.Random(study.search.seed).shuffle(rest)
        return refs + rest[: max(0, n - len(refs))]
    return None


def optuna_storage(path: str | Path):
    """Optuna's journal storage (JSON lines, no pickles) in ``path``; ``optuna-dashboard PATH`` opens it."""
    import optuna

    try:
        from optuna.storages.journal import JournalFileBackend as Backend  # optuna >= 4.0
    except ImportError:  # pragma: no cover - optuna 3.x
        from optuna.storages import JournalFileStorage as Backend
    return optuna.storages.JournalStorage(Backend(str(path)))


def close_stale_optuna_trials(storage: Any, study_name: str) -> int:
    """Mark the trials an interrupted run left RUNNING or WAITING in the journal as FAIL (their specs are
    queued again explicitly); returns how many."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for t in stale:
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(stale)


def plan_search(
    study: Study,
    pool: list[Candidate],
    *,
    storage: Any = None,
    done: list[str] | tuple[str, ...] = (),
    redo: list[str] | tuple[str, ...] = (),
    specs: list[str] | None = None,
) -> tuple[Any, int]:
    """``(search_alg, num_samples)``: a ``Searcher`` that issues the seed repeats of the reference points first
    (``bhsearch.tune.noise``), then the study's search algorithm's trials.

    For a resumed study ``done`` are the trial keys already final (never proposed again), ``redo`` those that
    run again first (errored or unfinished trials) and ``specs`` the saved plan of a random/grid study;
    ``storage`` is the Optuna storage that holds the study (``optuna_storage``). ``num_samples`` may be 0:
    nothing left to run.
    """
    from bhsearch.tune.noise import config_key, fixed_first, repeat_configs

    refs = [c.id for c in pool if c.role != "candidate"]
    repeats = [c for c in repeat_configs(refs, study.noise.repeats) if config_key(c) not in set(done)]
    repeats.sort(key=lambda c: config_key(c) not in set(redo))  # interrupted repeats first (stable)
    done_specs = [k for k in done if "#" not in k]
    redo_specs = [k for k in redo if "#" not in k]
    algorithm, n = study.search.algorithm, study.search.num_samples
    if algorithm in ("grid", "random"):
        chosen = specs if specs is not None else plan_specs(study, pool)
        remaining = [{"spec_id": s} for s in chosen if s not in set(done_specs)]
        return fixed_first(repeats + remaining), len(repeats) + len(remaining)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = PoolSampler(pool)
    sampler.issued = list(done_specs)
    left = max(0, n - len(done_specs))
    first = list(dict.fromkeys([*redo_specs, *(r for r in refs if r not in set(done_specs))]))[:left]
    points = [sampler.params_of(r) for r in first]
    tpe = optuna.samplers.TPESampler(seed=study.search.seed, n_startup_trials=min(10, max(2, n // 2)))
    kwargs: dict[str, Any] = {"study_name": study.name, "storage": storage} if storage is not None else {}
    search = OptunaSearch(
        space=sampler, metric="score", mode="max", points_to_evaluate=points or None, sampler=tpe, **kwargs
    )
    return fixed_first(repeats, search if left else None), len(repeats) + left


# --------------------------------------------------------------------------- Ray


#: Seconds ``connect_ray`` waits for a Ray cluster given by address (``$BHSEARCH_RAY_CONNECT_TIMEOUT_S``).
DEFAULT_CONNECT_TIMEOUT_S = 30.0


def connect_timeout_s(value: float | None = None) -> float:
    """``value``, else ``$BHSEARCH_RAY_CONNECT_TIMEOUT_S``, else 30 s."""
    if value is None:
        raw = os.environ.get("BHSEARCH_RAY_CONNECT_TIMEOUT_S")
        if raw is None:
            return DEFAULT_CONNECT_TIMEOUT_S
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"BHSEARCH_RAY_CONNECT_TIMEOUT_S must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise UsageError(f"the Ray connect timeout must be positive, got {value}")
    return float(value)


def _probe_address(address: str, timeout: float) -> None:
    """A plain TCP connect to ``HOST:PORT`` first: a refused or unreachable address fails in seconds
    (``ray.init`` itself retries for many minutes)."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return  # let Ray judge an address of another shape
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=min(timeout, 10.0)).close()
    except OSError as exc:
        raise UsageError(f"cannot connect to the Ray cluster at {address!r}: {exc.strerror or exc}") from None


def _init_with_timeout(address: str, timeout: float) -> None:
    """``ray.init(address=...)`` that gives up after ``timeout`` seconds (Ray blocks in C++ while it retries,
    where no signal reaches Python, so the call runs in a helper thread)."""
    import threading

    import ray

    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            ray.init(address=address, logging_level="WARNING")
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="bhsearch-ray-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        error = UsageError(
            f"cannot connect to the Ray cluster at {address!r}: no answer within {timeout:g} s "
            "(is it a Ray head's GCS port? --connect-timeout or BHSEARCH_RAY_CONNECT_TIMEOUT_S sets the wait)"
        )
        error.exit_at_once = True  # the thread still retries in C++: shutting Python down beside it can abort
        raise error
    exc = box.get("error")
    if isinstance(exc, (ConnectionError, RuntimeError, ValueError)):
        raise UsageError(f"cannot connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from None
    if exc is not None:
        raise exc


def connect_ray(
    study: Study,
    address: str | None = None,
    dashboard_host: str | None = None,
    connect_timeout: float | None = None,
) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``) or start a local Ray; True when we started it.

    A cluster that does not answer within ``connect_timeout`` seconds (default 30) is a ``UsageError``.
    A local Ray is started in-process (``ray.init``): its GCS and raylet share the driver's fate (Ray sets a
    parent-death signal), so a ``kill -9`` of ``bhsearch tune`` takes them down; its node address is
    ``ray.node_ip_address`` (127.0.0.1 by default).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or study.address or os.environ.get("RAY_ADDRESS")
    if address:
        _token_auth_if_available()
        timeout = connect_timeout_s(connect_timeout)
        _probe_address(address, timeout)
        _init_with_timeout(address, timeout)
        return True
    kwargs: dict[str, Any] = {
        "address": "local",  # always a new local instance, never one left by `ray start`
        "num_cpus": study.ray.num_cpus,
        "num_gpus": study.ray.num_gpus,
        "object_store_memory": study.ray.object_store_memory,
        "include_dashboard": dashboard_host is not None,
        "logging_level": "WARNING",
        "_node_ip_address": study.ray.node_ip_address,
    }
    if dashboard_host is not None:
        kwargs["dashboard_host"] = dashboard_host
    ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    return True


def _token_auth_if_available() -> None:
    """Ray 2.5x clusters started with ``ray start`` require token authentication; a client
    connecting by address only sends the token (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN`` or
    ``RAY_AUTH_TOKEN_PATH``) when ``RAY_AUTH_MODE=token``. Set that when a token is available
    and the user has not chosen a mode. A local Ray does the same by itself when a token exists, with a
    warning on every start ("Token authentication is enabled for this Ray cluster"); choosing it here
    changes nothing but that line."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def check_resources(study: Study) -> None:
    """Refuse per-trial resources the cluster can never grant (trials would wait forever); a data-parallel trial's
    workers must also fit on one node (they are packed onto one)."""
    import ray

    res = study.resources
    total = ray.cluster_resources()
    for kind, per_worker in (("gpu", res.gpu), ("cpu", res.cpu)):
        need, have = res.workers * per_worker, total.get(kind.upper(), 0)
        if need > 0 and need > have:
            raise UsageError(
                f"resources.{kind}: trials ask for {_asked(res.workers, per_worker, kind)} but the Ray cluster has {have:g}"
            )
    if res.workers > 1:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        for kind, per_worker in (("gpu", res.gpu), ("cpu", res.cpu)):
            need, most = res.workers * per_worker, max((n.get(kind.upper(), 0) for n in nodes), default=0)
            if need > most:
                raise UsageError(
                    f"resources.{kind}: a trial's {_asked(res.workers, per_worker, kind)} must fit on one node, "
                    f"but the largest Ray node has {most:g}"
                )


def _asked(workers: int, per_worker: float, kind: str) -> str:
    unit = "GPU" if kind == "gpu" else "CPUs"
    if workers == 1:
        return f"{per_worker:g} {unit}"
    return f"{workers} workers x {per_worker:g} = {workers * per_worker:g} {unit}"


def trial_concurrency(study: Study) -> int | None:
    """``max_concurrent_trials``: the study's ``search.max_concurrent``; for data-parallel trials, whose workers Tune
    does not count (Ray Train places them), also at most as many trials as the cluster can hold at once."""
    import ray

    res, limit = study.resources, study.search.max_concurrent
    if res.workers == 1:
        return limit
    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 0) // (res.workers * res.cpu))]
    if res.gpu > 0:
        fits.append(int(total.get("GPU", 0) // (res.workers * res.gpu)))
    return max(1, min([*fits, *([limit] if limit else [])]))


def prepare_data(study: Study) -> None:
    """Generate synthetic datasets once on the driver, before trials race to create them."""
    from bhsearch.data import registry

    if study.stages.pretrain is not None and study.stages.pretrain.data.startswith("synthetic-"):
        registry.open_classification(study.stages.pretrain.data, "train")
    if study.stages.finetune is not None and study.stages.finetune.data.startswith("synthetic-"):
        registry.open_detection(study.stages.finetune.data, "train")


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def make_trainable(study: Study, trial_fn: Callable | None = None, quiet: bool = False):
    """``trial_fn(config, study=dict)`` (default ``run_trial``) with the study's per-trial resources; ``quiet``:
    Ray's INFO logging in the trial's worker is off (its "Checkpoint successfully created" line per epoch)."""
    from ray import tune

    from bhsearch.tune.trial import run_trial

    fn = trial_fn or run_trial
    if quiet:
        fn = _quiet_worker(fn)
    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    if study.resources.workers > 1:  # the trial drives Ray Train workers, which hold the resources
        from bhsearch.tune.ray_train import DRIVER_RESOURCES

        resources = dict(DRIVER_RESOURCES)
    return tune.with_resources(tune.with_parameters(fn, study=study.model_dump()), resources)


def _quiet_worker(fn: Callable) -> Callable:
    """``fn`` run with the worker's ``ray`` logger at WARNING: Ray Train's session logs every checkpoint it
    persists at INFO, and the worker forwards that to the driver's terminal. Warnings and errors still show,
    except the one shutdown artefact ``drop_exit_noise`` describes."""
    import functools

    @functools.wraps(fn)
    def trial(config: dict[str, Any], study: dict[str, Any]) -> Any:
        import logging

        logging.getLogger("ray").setLevel(logging.WARNING)
        sys.unraisablehook = drop_exit_noise(sys.unraisablehook)
        return fn(config, study=study)

    return trial


def drop_exit_noise(hook: Callable) -> Callable:
    """``hook`` (a ``sys.unraisablehook``) that stays silent on ``SystemExit``. Ray stops an idle worker with
    SIGTERM, and its handler raises ``SystemExit``; when the signal lands while a finaliser or weakref callback
    runs, Python cannot raise it there and prints "Exception ignored in ..." with a traceback, which Ray forwards
    to the driver's terminal after the study has finished. Every other unraisable exception goes to ``hook``.
    Wrapping twice (a reused worker) keeps one wrapper."""
    if getattr(hook, "drops_exit_noise", False):
        return hook

    def unraisable(args: Any) -> None:
        if not isinstance(args.exc_value, SystemExit):
            hook(args)

    unraisable.drops_exit_noise = True  # type: ignore[attr-defined]
    return unraisable


class _DropRecords:
    """A logging filter that drops records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        self.prefixes = prefixes

    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def ray_output(verbose: int):
    """Ray Tune's own printing for ``tuner.fit()``: ``verbose >= 1`` leaves it as Tune has it (status tables,
    result boxes; ``verbose`` is Tune's verbosity); ``0`` silences it. Tune's new output engine prints the
    experiment's configuration box even at verbosity 0, so the legacy engine (``RAY_AIR_NEW_OUTPUT=0``), silent
    at 0, is used then; Tune's logged traceback of a failed trial (``TUNE_PRINT_ALL_TRIAL_ERRORS``) and its
    closing "Trials did not complete" line are off too: bhsearch prints one line per failed trial
    (``bhsearch.tune.progress``) and keeps the error in ``error.txt`` and the results. Other warnings and errors
    of Ray still show."""
    import logging

    if verbose >= 1:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("RAY_AIR_NEW_OUTPUT", "TUNE_PRINT_ALL_TRIAL_ERRORS")}
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    tune_logger = logging.getLogger("ray.tune.tune")
    drop = _DropRecords("Trials did not complete")
    tune_logger.addFilter(drop)
    try:
        yield
    finally:
        tune_logger.removeFilter(drop)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tune_env() -> None:
    # bhsearch keeps its own JSON record of the trials (bhsearch.tune.state) and never restores Tune's
    # pickled experiment state, so Tune may snapshot that at its own pace.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C must reach us as KeyboardInterrupt: Tune's own handler ends the run quietly, labels running trials
    # as terminated and returns as if the study had finished.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"


def _protected_left(study: Study, pool: list[Candidate], done: list[str] | tuple[str, ...], n: int) -> int:
    """How many of the ``n`` trials left to run are reference points or their seed repeats (``plan_search``
    issues those first)."""
    from bhsearch.tune.noise import config_key, repeat_configs

    refs = [c.id for c in pool if c.role != "candidate"]
    repeats = [c for c in repeat_configs(refs, study.noise.repeats) if config_key(c) not in set(done)]
    return min(n, len(repeats) + len([r for r in refs if r not in set(done)]))


def _progress_printer(study: Study, trials: int, protected: int, enabled: bool, interval_s: float, verbose: int):
    """The progress line of a run that trains ``trials`` trials, ``protected`` of them reference points or seed
    repeats (never stopped by ASHA); rewritten in place on a terminal unless Tune prints its own output too
    (``verbose``)."""
    from bhsearch.tune.progress import ProgressLine, ProgressTracker, asha_rungs

    rungs: list[int] = []
    if study.scheduler.type == "asha":
        rungs = asha_rungs(study.max_epochs, study.scheduler.grace_period, study.scheduler.reduction_factor)
    tracker = ProgressTracker(
        trials,
        study.max_epochs,
        study.target_metric,
        rungs=rungs,
        reduction_factor=study.scheduler.reduction_factor,
        protected_specs=[spec.id for _, spec in study.reference_specs()],
        protected_trials=protected,
    )
    return ProgressLine(tracker, enabled=enabled, interval_s=interval_s, tty=False if verbose >= 1 else None)


class StudyInterrupted(BhsearchError):
    """The study was interrupted (Ctrl-C); results so far are written and ``--resume`` continues (exit 130)."""

    exit_code = 130

    def __init__(self, run_dir: Path, counts: dict[str, int]):
        self.run_dir, self.counts = run_dir, counts
        done = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no trials yet"
        super().__init__(f"interrupted ({done}; partial results in {run_dir})")


class StudyFailed(BhsearchError):
    """Every trial of the study failed (exit 1); the results table is written."""

    exit_code = 1


@dataclasses.dataclass
class StudyOutcome:
    run_dir: Path
    table: Any  # pandas.DataFrame
    resumed: bool
    wall_s: float


def has_study(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a study (ours, or Tune experiment state of an older bhsearch)."""
    return run_dir.is_dir() and (
        (run_dir / STUDY_FILE).exists()
        or (run_dir / state_mod.STATE_FILE).exists()
        or any(run_dir.glob("experiment_state-*.json"))
    )


def _saved_study(run_dir: Path, study: Study) -> Study:
    """The study saved in ``run_dir/study.json`` (the study that was started), checked; errors are one line."""
    from pydantic import ValidationError

    saved = state_mod.read_json(run_dir / STUDY_FILE, "the resolved study")
    if not isinstance(saved, dict):
        raise UsageError(f"{run_dir / STUDY_FILE}: not a study (a JSON object expected); cannot resume from it")
    if saved.get("name") != study.name:
        raise UsageError(f"{run_dir}: holds study {saved.get('name')!r}, not {study.name!r}")
    try:
        return Study.model_validate({**saved, "storage": study.storage})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UsageError(f"{run_dir / STUDY_FILE}: {field}: {first['msg']}; cannot resume from it") from None


def _saved_pool(run_dir: Path) -> list[Candidate]:
    rows = state_mod.read_json(run_dir / CANDIDATES_FILE, "the candidate pool")
    try:
        return [Candidate(get_spec(row["spec"]), row["role"]) for row in rows]
    except (TypeError, KeyError, UsageError) as exc:
        raise UsageError(
            f"{run_dir / CANDIDATES_FILE}: malformed candidate pool ({exc}); cannot resume from it"
        ) from None


def _scheduler(study: Study, run_dir: Path, done: dict[str, dict[str, Any]]):
    """ASHA over ``epochs_done`` (which a resumed trial continues, unlike Tune's ``training_iteration``), its
    rungs seeded with the results of the trials that are already final; or FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    from bhsearch.tune.noise import repeat_aware_asha

    if study.scheduler.type != "asha":
        return FIFOScheduler()
    scheduler = repeat_aware_asha(
        protected={spec.id for _, spec in study.reference_specs()},
        time_attr="epochs_done",
        max_t=study.max_epochs,
        grace_period=min(study.scheduler.grace_period, study.max_epochs),
        reduction_factor=study.scheduler.reduction_factor,
    )
    brackets = getattr(scheduler, "_brackets", None)
    if done and brackets:
        import types

        for trial_id, entry in done.items():
            if entry.get("repeat"):
                continue  # seed repeats never enter the rungs
            shim = types.SimpleNamespace(trial_id=f"previous-{trial_id}")
            for row in state_mod._result_rows(run_dir / entry.get("dir", f"trial_{trial_id}") / "result.json"):
                if isinstance(row.get("epochs_done"), int) and isinstance(row.get("score"), (int, float)):
                    brackets[0].on_result(shim, row["epochs_done"], float(row["score"]))
    return scheduler


def check_data(study: Study) -> None:
    """Every stage's ``data`` resolves to a readable dataset (cheap checks of the readers; synthetic kinds are
    generated later): a ``DataError`` naming the stage otherwise. Runs before Ray starts."""
    from bhsearch.errors import DataError

    for name in ("pretrain", "finetune"):
        stage = getattr(study.stages, name)
        if stage is None:
            continue
        kind, _, raw = stage.data.partition(":")
        if kind.startswith("synthetic-"):
            continue
        path = Path(raw).expanduser()
        try:
            if not path.exists():
                raise DataError(f"{path} does not exist")
            if not os.access(path, os.R_OK | os.X_OK):
                raise DataError(f"{path} is not readable")
            if kind == "cifar100":
                from bhsearch.data.cifar import find_cifar_dir

                root = find_cifar_dir(path)
                for split in ("train", "test"):
                    if not os.access(root / split, os.R_OK):
                        raise DataError(f"{root / split}: missing or not readable")
            elif kind == "imagenet32":
                from bhsearch.data.imagenet32 import batch_files

                batch_files(path, "train")
                batch_files(path, "val")
            elif kind == "imagenet":
                from bhsearch.data.imagenet import find_root, train_classes

                root = find_root(path)
                train_classes(root)
                if not (root / "val").is_dir():
                    raise DataError(f"{root}: no val/ folder")
            elif kind == "tinyperson":
                from bhsearch.tasks.tinyperson.reader import resolve_tinyperson

                for item in resolve_tinyperson(path):
                    if not os.access(item, os.R_OK):
                        raise DataError(f"{item}: missing or not readable")
            elif kind == "aitod":
                from bhsearch.tasks.aitod.reader import resolve_aitod

                for split in ("trainval", "test"):
                    for item in resolve_aitod(path, split):
                        if not os.access(item, os.R_OK):
                            raise DataError(f"{item}: missing or not readable")
            elif kind == "widerface":
                from bhsearch.tasks.widerface.reader import find_root

                find_root(path)
        except DataError as exc:
            raise DataError(f"stages.{name}.data: {stage.data}: {exc}") from None


def run_study(
    study: Study,
    *,
    address: str | None = None,
    resume: bool = False,
    num_samples: int | None = None,
    dashboard_host: str | None = None,
    verbose: int = 0,
    trial_fn: Callable | None = None,
    connect_timeout: float | None = None,
    progress: bool = False,
    progress_interval_s: float = 60.0,
) -> StudyOutcome:
    """Run (or resume) ``study`` and write ``results.csv``/``results.parquet``/``best_spec.json``.

    ``verbose``: Tune's verbosity; 0 (default) keeps Ray's status tables, result boxes and checkpoint lines off
    (:func:`ray_output`). ``progress``: the live progress line on stderr (``bhsearch.tune.progress``; written
    every ``progress_interval_s`` seconds and when a trial ends when stderr is no terminal). A failed trial is
    one line on stderr either way.
    ``trial_fn(config, study=dict)`` replaces :func:`bhsearch.tune.trial.run_trial` (custom trials).
    Ctrl-C raises :class:`StudyInterrupted` after the partial results are written; a study whose every
    trial failed raises :class:`StudyFailed` after writing them. Resume reads only JSON, the Optuna journal
    and weights-only checkpoints (``bhsearch.tune.state``), never Tune's pickles.
    """
    import time

    _token_auth_if_available()  # before Ray is imported: it reads RAY_AUTH_MODE once

    if num_samples is not None and num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    study = study.absolute()
    run_dir = study.run_dir
    t0 = time.perf_counter()
    exists = has_study(run_dir)
    if resume and not exists:
        raise UsageError(f"{run_dir}: no study to resume there (run it without --resume first)")
    if not resume and exists:
        raise UsageError(
            f"{run_dir}: a study already ran there; pass --resume to continue it, or change name/--storage"
        )
    if resume:
        study = _saved_study(run_dir, study)  # continue exactly the study that was started
        if not (run_dir / state_mod.STATE_FILE).exists():
            raise UsageError(
                f"{run_dir}: no {state_mod.STATE_FILE} (a run folder of an older bhsearch, whose resume unpickled "
                "Tune's state); start the study afresh under another name"
            )
        state = state_mod.load_state(run_dir)
        pool = _saved_pool(run_dir)
    else:
        state = None
        pool = candidate_pool(study)
    if num_samples is not None:
        study = study.model_copy(update={"search": study.search.model_copy(update={"num_samples": num_samples})})
    check_data(study)  # before Ray: a missing dataset is one line, not a study of failed trials
    from bhsearch.tune.latency import check_latency, update_latency

    check_latency(study, [c.spec for c in pool])  # a profile that cannot predict a candidate: one line, now
    _tune_env()
    from ray import tune

    from bhsearch.tune.progress import make_progress_callback
    from bhsearch.tune.results import write_results

    started = False
    interrupted = False
    printer = None
    try:
        started = connect_ray(study, address, dashboard_host, connect_timeout)
        check_resources(study)
        prepare_data(study)
        trainable = make_trainable(study, trial_fn, quiet=verbose < 1)
        if resume:
            plan = state_mod.ResumePlan(run_dir, state, study.max_epochs)
            state_mod.write_resume_checkpoints(run_dir, plan.checkpoints)
            done, redo, specs = plan.done, plan.redo, state["plan"].get("specs")
            done_keys = plan.done_keys
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / STUDY_FILE, study.model_dump())
            save_pool(run_dir, pool)
            specs = plan_specs(study, pool)
            from bhsearch.tune.noise import repeat_configs

            refs = [c.id for c in pool if c.role != "candidate"]
            repeats = [[c["spec_id"], c["repeat"]] for c in repeat_configs(refs, study.noise.repeats)]
            plan_record = {"algorithm": study.search.algorithm, "specs": specs, "repeats": repeats}
            state = state_mod.new_state(study.name, plan_record)
            state_mod.write_resume_checkpoints(run_dir, {})
            done, redo, done_keys = {}, [], []
        storage = None
        if study.search.algorithm == "optuna":
            storage = optuna_storage(run_dir / state_mod.JOURNAL_FILE)
            close_stale_optuna_trials(storage, study.name)
        search, n = plan_search(study, pool, storage=storage, done=done_keys, redo=redo, specs=specs)
        run_index = len(state["runs"])
        state["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resume": resume, "outcome": "running"})
        state_mod.save_state(run_dir, state)
        if n > 0:
            protected = _protected_left(study, pool, done_keys, n)
            printer = _progress_printer(study, n, protected, progress, progress_interval_s, verbose)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric="score",
                    mode="max",
                    search_alg=search,
                    scheduler=_scheduler(study, run_dir, done),
                    num_samples=n,
                    max_concurrent_trials=trial_concurrency(study),
                    reuse_actors=study.search.reuse_actors,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=study.name,
                    storage_path=str(Path(study.storage).resolve()),
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=study.checkpoint_keep),
                    callbacks=[
                        state_mod.make_recorder(run_dir, state, run_index),
                        make_progress_callback(printer, run_dir),
                    ],
                    verbose=verbose,
                ),
            )
            with ray_output(verbose):
                tuner.fit()
        state["runs"][-1]["outcome"] = "complete"
    except KeyboardInterrupt:
        interrupted = True
        if state is not None and state["runs"]:
            state["runs"][-1]["outcome"] = "interrupted"
    finally:
        import shutil

        if printer is not None:
            printer.close()  # ends the terminal line before anything else is printed

        from bhsearch.tune.trial import work_root

        shutil.rmtree(work_root(run_dir), ignore_errors=True)  # scratch of stopped/failed trials (this node)
        if started:
            import ray

            ray.shutdown()
        if state is not None and state["runs"] and run_dir.is_dir():
            state["runs"][-1]["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            state_mod.save_state(run_dir, state)
    if state is None or not (run_dir / STUDY_FILE).exists():
        if interrupted:
            raise StudyInterrupted(run_dir, {})
        raise UsageError(f"{run_dir}: the study did not start")  # pragma: no cover - defensive
    if not interrupted or study.latency.profile:  # predictions are instant; measuring waits for --resume
        try:
            update_latency(run_dir, study)  # after the trials, Ray shut down: nothing else runs on the CPUs
        except KeyboardInterrupt:
            interrupted = True  # what was measured is kept in latency.json; --resume measures the rest
        except (BhsearchError, RuntimeError, OSError) as exc:  # the trials' results still get written
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"bhsearch tune: warning: latency not measured ({line}); --resume measures it", file=sys.stderr)
    table = write_results(run_dir, study, statuses=state_mod.statuses(state))
    counts = {str(k): int(v) for k, v in table["status"].value_counts().items()} if len(table) else {}
    if interrupted:
        raise StudyInterrupted(run_dir, counts)
    if len(table) and (table["status"] == "error").all():
        first = next((e for e in table["error"] if e), "unknown error")
        raise StudyFailed(f"all {len(table)} trials failed; first error: {first}")
    return StudyOutcome(run_dir=run_dir, table=table, resumed=resume, wall_s=time.perf_counter() - t0)


def save_pool(run_dir: Path, pool: list[Candidate]) -> None:
    rows = [{"spec_id": c.id, "role": c.role, "spec": c.spec.to_dict()} for c in pool]
    atomic_write_json(run_dir / CANDIDATES_FILE, rows, indent=1)


def load_pool(run_dir: Path) -> list[Candidate]:
    path = run_dir / CANDIDATES_FILE
    if not path.is_file():
        return []
    return [Candidate(get_spec(row["spec"]), row["role"]) for row in json.loads(path.read_text())]


__all__ = [
    "Candidate",
    "PoolSampler",
    "StudyOutcome",
    "candidate_pool",
    "connect_ray",
    "genome",
    "plan_search",
    "run_study",
    "solver_candidates",
]

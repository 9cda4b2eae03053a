"""Run a study with Ray Tune: candidates from the solver, a searcher, ASHA, resume.

* ``optuna``: TPE, define-by-run over the FLOP-matched space (``PoolSampler``): the searcher
  picks a layout (stem and stage strides) and the block counts of every stage but the last;
  the solver's candidate list closes the cost constraint (the candidate of that layout whose
  leading block counts are nearest is trained).
* ``random``: a seeded sample, without repeats, of the solver's candidates.
* ``grid``: every candidate the solver returns (``num_samples`` is ignored).

The base and the paper's bottom-heavy config are always evaluated first (``points_to_evaluate``
for Optuna). A trial that fails is recorded with its error and the study goes on; a study that
is interrupted (Ctrl-C, ``kill -9``) continues with ``resume=True`` from Tune's experiment state
and the trials' last checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.spec import HRNetSpec, ResNetSpec, Spec, get_spec
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
    rows = getattr(result, "candidates", result)
    return [row.spec for row in rows]


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


def plan_search(study: Study, pool: list[Candidate]) -> tuple[Any, dict[str, Any], int]:
    """``(search_alg, param_space, num_samples)`` for the study's search algorithm."""
    from ray import tune

    refs = [c.id for c in pool if c.role != "candidate"]
    algorithm, n = study.search.algorithm, study.search.num_samples
    if algorithm == "grid":
        return None, {"spec_id": tune.grid_search([c.id for c in pool])}, 1
    if algorithm == "random":
        rest = [c.id for c in pool if c.role == "candidate"]
        random.Random(study.search.seed).shuffle(rest)
        chosen = refs + rest[: max(0, n - len(refs))]
        return None, {"spec_id": tune.grid_search(chosen)}, 1
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = PoolSampler(pool)
    points = [sampler.params_of(r) for r in refs]
    tpe = optuna.samplers.TPESampler(seed=study.search.seed, n_startup_trials=min(10, max(2, n // 2)))
    search = OptunaSearch(space=sampler, metric="score", mode="max", points_to_evaluate=points or None, sampler=tpe)
    return search, {}, n


# --------------------------------------------------------------------------- Ray


def connect_ray(study: Study, address: str | None = None, dashboard_host: str | None = None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``) or start a local Ray; True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or study.address or os.environ.get("RAY_ADDRESS")
    if address:
        _token_auth_if_available()
        try:
            ray.init(address=address, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
        return True
    kwargs: dict[str, Any] = {
        "address": "local",  # always a new local instance, never one left by `ray start`
        "num_cpus": study.ray.num_cpus,
        "num_gpus": study.ray.num_gpus,
        "object_store_memory": study.ray.object_store_memory,
        "include_dashboard": dashboard_host is not None,
        "logging_level": "WARNING",
    }
    if dashboard_host is not None:
        kwargs["dashboard_host"] = dashboard_host
    ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    return True


def _token_auth_if_available() -> None:
    """Ray 2.5x clusters started with ``ray start`` require token authentication; a client
    connecting by address only sends the token (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN`` or
    ``RAY_AUTH_TOKEN_PATH``) when ``RAY_AUTH_MODE=token``. Set that when a token is available
    and the user has not chosen a mode."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def check_resources(study: Study) -> None:
    """Refuse per-trial resources the cluster can never grant (trials would wait forever)."""
    import ray

    total = ray.cluster_resources()
    if study.resources.gpu > 0 and total.get("GPU", 0) < study.resources.gpu:
        raise UsageError(
            f"resources.gpu: trials ask for {study.resources.gpu} GPU but the Ray cluster has {total.get('GPU', 0)}"
        )
    if study.resources.cpu > total.get("CPU", 0):
        raise UsageError(
            f"resources.cpu: trials ask for {study.resources.cpu} CPUs but the Ray cluster has {total.get('CPU', 0)}"
        )


def prepare_data(study: Study) -> None:
    """Generate synthetic datasets once on the driver, before trials race to create them."""
    from bhsearch.data import registry

    if study.stages.pretrain is not None and study.stages.pretrain.data.startswith("synthetic-"):
        registry.open_classification(study.stages.pretrain.data, "train")
    if study.stages.finetune is not None and study.stages.finetune.data.startswith("synthetic-"):
        registry.open_detection(study.stages.finetune.data, "train")


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def make_trainable(study: Study, trial_fn: Callable | None = None):
    """``trial_fn(config, study=dict)`` (default ``run_trial``) with the study's per-trial resources."""
    from ray import tune

    from bhsearch.tune.trial import run_trial

    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    return tune.with_resources(tune.with_parameters(trial_fn or run_trial, study=study.model_dump()), resources)


def _tune_env() -> None:
    # Snapshot the experiment state at every controller step so a kill -9 loses no finished trial.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclasses.dataclass
class StudyOutcome:
    run_dir: Path
    table: Any  # pandas.DataFrame
    resumed: bool
    wall_s: float


def run_study(
    study: Study,
    *,
    address: str | None = None,
    resume: bool = False,
    num_samples: int | None = None,
    dashboard_host: str | None = None,
    verbose: int = 1,
    trial_fn: Callable | None = None,
) -> StudyOutcome:
    """Run (or resume) ``study`` and write ``results.csv``/``results.parquet``/``best_spec.json``.

    ``trial_fn(config, study=dict)`` replaces :func:`bhsearch.tune.trial.run_trial` (custom trials).
    """
    import time

    if address or study.address or os.environ.get("RAY_ADDRESS"):
        _token_auth_if_available()  # before Ray is imported: it reads RAY_AUTH_MODE once
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from bhsearch.tune.results import write_results

    if num_samples is not None:
        if num_samples < 1:
            raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
        study = study.model_copy(update={"search": study.search.model_copy(update={"num_samples": num_samples})})
    study = study.absolute()
    run_dir = study.run_dir
    _tune_env()
    t0 = time.perf_counter()
    can_restore = run_dir.is_dir() and tune.Tuner.can_restore(str(run_dir))
    if resume and not can_restore:
        raise UsageError(f"{run_dir}: no study to resume there (run it without --resume first)")
    if not resume and can_restore:
        raise UsageError(
            f"{run_dir}: a study already ran there; pass --resume to continue it, or change name/--storage"
        )

    if resume:
        saved = json.loads((run_dir / STUDY_FILE).read_text()) if (run_dir / STUDY_FILE).is_file() else None
        if saved is not None and saved.get("name") != study.name:
            raise UsageError(f"{run_dir}: holds study {saved.get('name')!r}, not {study.name!r}")
        if saved is not None:  # continue exactly the study that was started, wherever it lives now
            study = Study.model_validate({**saved, "storage": study.storage})
        pool = []  # the searcher's state and candidates.json already hold it
    else:
        pool = candidate_pool(study)
    started = connect_ray(study, address, dashboard_host)
    try:
        check_resources(study)
        prepare_data(study)
        trainable = make_trainable(study, trial_fn)
        if resume:
            tuner = tune.Tuner.restore(
                str(run_dir), trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
            )
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / STUDY_FILE).write_text(json.dumps(study.model_dump(), indent=2) + "\n")
            save_pool(run_dir, pool)
            search, param_space, n = plan_search(study, pool)
            if study.scheduler.type == "asha":
                scheduler = ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=study.max_epochs,
                    grace_period=min(study.scheduler.grace_period, study.max_epochs),
                    reduction_factor=study.scheduler.reduction_factor,
                )
            else:
                scheduler = FIFOScheduler()
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric="score",
                    mode="max",
                    search_alg=search,
                    scheduler=scheduler,
                    num_samples=n,
                    max_concurrent_trials=study.search.max_concurrent,
                    reuse_actors=study.search.reuse_actors,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=study.name,
                    storage_path=str(Path(study.storage).resolve()),
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=study.checkpoint_keep),
                    verbose=verbose,
                ),
            )
        grid = tuner.fit()
        statuses = _statuses(grid)
    finally:
        import shutil

        from bhsearch.tune.trial import work_root

        shutil.rmtree(work_root(run_dir), ignore_errors=True)  # scratch of stopped/failed trials (this node)
        if started:
            import ray

            ray.shutdown()
    table = write_results(run_dir, study, statuses=statuses)
    return StudyOutcome(run_dir=run_dir, table=table, resumed=resume, wall_s=time.perf_counter() - t0)


def _statuses(grid: Any) -> dict[str, str]:
    """Tune's status of every trial (TERMINATED, ERROR, …) keyed by trial id, when available."""
    try:
        return {t.trial_id: t.status for t in grid._experiment_analysis.trials}
    except AttributeError:
        return {}


def save_pool(run_dir: Path, pool: list[Candidate]) -> None:
    rows = [{"spec_id": c.id, "role": c.role, "spec": c.spec.to_dict()} for c in pool]
    (run_dir / CANDIDATES_FILE).write_text(json.dumps(rows, indent=1) + "\n")


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

"""The study file: a pydantic (v2) schema for ``studies/*.yaml`` (docs/tuning.md).

A study names a base network, the design space the solver enumerates, how to search it
(Optuna TPE, random or an exhaustive grid), the ASHA scheduler, the training stages of a
trial, the resources a trial gets, and where results go. Validation errors name the file,
the YAML line, the field and what is allowed. The YAML is read with a ``yaml.SafeLoader``
(the same safety as ``yaml.safe_load``) through ``bhsearch.safeload``, which refuses alias bombs; node
marks give the line numbers.

This module imports neither torch nor ray.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bhsearch.errors import UsageError

#: Metrics a study may rank by; all are percentages where higher is better.
TINYPERSON_METRICS = ("AP50_tiny", "AP50_tiny1", "AP50_tiny2", "AP50_tiny3", "AP50_small", "AP25_tiny", "AP75_tiny")
WIDERFACE_METRICS = ("AP_easy", "AP_medium", "AP_hard")
AITOD_METRICS = ("AP50", "AP", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m")
DETECTION_METRICS = TINYPERSON_METRICS + WIDERFACE_METRICS + AITOD_METRICS
PROXY_METRICS = ("top1", "top5")

#: Paper bottom-heavy counterparts of the named bases (reference points of every study).
PAPER_BH = {"resnet50": "bh-resnet50", "hrnet18": "bh-hrnet18", "hrnet32": "bh-hrnet32"}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DATA_KINDS = (
    "cifar100",
    "imagenet32",
    "imagenet",
    "tinyperson",
    "widerface",
    "aitod",
    "synthetic-cifar100",
    "synthetic-imagenet32",
    "synthetic-imagenet",
    "synthetic-tinyperson",
    "synthetic-widerface",
    "synthetic-aitod",
)
#: Dataset family of each data kind (the ``synthetic-`` variants read like the real ones).
DATA_FAMILIES = {
    "cifar100": "classification",
    "imagenet32": "classification",
    "imagenet": "classification",
    "tinyperson": "tinyperson",
    "widerface": "widerface",
    "aitod": "aitod",
}

#: ``(stage, data family) -> (module, config dataclass, run function)``: what trains a stage on its data.
#: Every run function takes ``(spec, data, config, out_dir, resume=..., callback=...)`` (fine-tuning: ``init=``).
STAGE_TRAINERS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("pretrain", "classification"): ("bhsearch.train.pretrain", "PretrainConfig", "run_pretrain"),
    ("finetune", "tinyperson"): ("bhsearch.train.finetune", "FinetuneConfig", "run_finetune"),
    ("finetune", "widerface"): ("bhsearch.train.finetune_widerface", "WiderFaceConfig", "run_finetune_widerface"),
    ("finetune", "aitod"): ("bhsearch.train.finetune", "FinetuneConfig", "run_finetune"),
}
#: The default metric and the metrics a study may rank by, per fine-tuning data family.
FAMILY_METRICS = {"tinyperson": TINYPERSON_METRICS, "widerface": WIDERFACE_METRICS, "aitod": AITOD_METRICS}
DEFAULT_METRIC = {"tinyperson": "AP50_tiny", "widerface": "AP_hard", "aitod": "AP50"}


def data_family(ref: str) -> str:
    """``classification``, ``tinyperson``, ``aitod`` or ``widerface`` for a ``KIND:PATH`` reference."""
    return DATA_FAMILIES[ref.partition(":")[0].removeprefix("synthetic-")]


_NUMBER_TYPES = (int, float, int | None, float | None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """YAML ``true`` where a number belongs is an error (pydantic would read it as 1)."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if isinstance(data.get(name), bool) and field.annotation in _NUMBER_TYPES:
                    raise ValueError(f"{name} must be a number, got {str(data[name]).lower()}")
        return data


class SpaceConfig(_Strict):
    """Design space handed to ``bhsearch.solver.solve``."""

    file: str | None = None
    match: Literal["flops", "macs", "activations", "latency"] | None = None
    tolerance: float | None = Field(default=None, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)


class PrefilterConfig(_Strict):
    """Keep the ``keep`` solver candidates of best training-free ``score`` before any trial starts
    (``bhsearch score``: zen, synflow, naswot, gradnorm, or params / flops / activations / bh_share).

    The default score, ``activations``, is the training-free signal that ranked the trained candidates best in
    the ranking-fidelity benchmark (docs/results/rank-fidelity.md), with no torch and no network to build."""

    score: str = "activations"
    keep: int = Field(ge=1)
    width_mult: float = Field(default=1.0, gt=0, le=4)  # relative to the study's (width-scaled) specs
    batch: int = Field(default=2, ge=2)
    seed: int = 0

    @field_validator("score")
    @classmethod
    def _score(cls, value: str) -> str:
        from bhsearch.scores import ALL_SCORES

        if value not in ALL_SCORES:
            raise ValueError(f"unknown score {value!r}; choose one of {', '.join(ALL_SCORES)}")
        return value


class SearchConfig(_Strict):
    """How candidates are proposed."""

    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    num_samples: int = Field(default=8, ge=1)
    seed: int = 0
    max_concurrent: int | None = Field(default=None, ge=1)
    references: list[str] | None = None  # None: the base and the paper's BH config (when one exists)
    reuse_actors: bool = True


class SchedulerConfig(_Strict):
    """ASHA over trial-epochs (``fifo`` runs every trial to the end)."""

    type: Literal["asha", "fifo"] = "asha"
    metric: str | None = None  # default: AP50_tiny (TinyPerson) / AP_hard (WiderFace) fine-tuning, else top1
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        allowed = DETECTION_METRICS + PROXY_METRICS
        if value is not None and value not in allowed:
            raise ValueError(f"unknown metric {value!r}; allowed: {', '.join(allowed)}")
        return value


class NoiseConfig(_Strict):
    """The seed noise floor: every reference point (the base and the paper's BH config, or ``search.references``)
    is trained ``repeats`` times in all, with seeds offset by 1 .. repeats-1 from its stages' own seeds, run to the
    end (ASHA never stops them) and never shown to the searcher (``bhsearch.tune.noise``)."""

    repeats: int = Field(default=1, ge=1, le=20)


class StageConfig(BaseModel):
    """One training stage: ``data`` (``KIND:PATH``), ``epochs`` and any other setting of the
    stage's config dataclass (``PretrainConfig``, ``FinetuneConfig`` or, on WiderFace, ``WiderFaceConfig``;
    see ``STAGE_TRAINERS``), checked by ``check_stage_options``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    data: str
    epochs: int = Field(ge=1)

    @field_validator("data")
    @classmethod
    def _data_ref(cls, value: str) -> str:
        kind, sep, path = value.partition(":")
        if not sep or not path or kind not in _DATA_KINDS:
            raise ValueError(f"data must be KIND:PATH with KIND one of {', '.join(_DATA_KINDS)}; got {value!r}")
        return value

    @property
    def options(self) -> dict[str, Any]:
        """The settings passed on to the stage's config dataclass (everything except ``data``)."""
        return {"epochs": self.epochs, **(self.model_extra or {})}


class StagesConfig(_Strict):
    pretrain: StageConfig | None = None
    finetune: StageConfig | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> StagesConfig:
        if self.pretrain is None and self.finetune is None:
            raise ValueError("a study needs at least one stage: pretrain and/or finetune")
        return self


class ResourcesConfig(_Strict):
    """Per-trial resources (fractional GPUs share one device's memory). ``workers > 1``: the trial trains
    data-parallel on that many Ray Train workers of ``cpu`` CPUs and ``gpu`` GPUs each (``bhsearch.tune.ray_train``)."""

    workers: int = Field(default=1, ge=1)
    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _whole_gpus_per_worker(self) -> ResourcesConfig:
        if self.workers > 1 and self.gpu != int(self.gpu):
            raise ValueError(
                f"gpu: data-parallel workers need whole GPUs each (nccl: one device per process), got {self.gpu}"
            )
        return self


class LatencyConfig(_Strict):
    """Backbone forward time of every trained spec (``bhsearch.tune.latency``): measured by the driver after
    the trials, one spec at a time with ``threads`` intra-op threads, or predicted from a ``bhsearch profile``
    table (``profile``). Never timed while trials train."""

    enabled: bool = True
    input_size: str | None = None  # default: the study's input_size
    device: str = "cpu"
    warmup: int = Field(default=2, ge=0)
    reps: int = Field(default=10, ge=1)
    threads: int = Field(default=1, ge=1)  # intra-op CPU threads while measuring (restored afterwards)
    clock: Literal["wall", "cpu"] = "wall"  # cpu: the measuring thread's CPU time (needs threads: 1)
    statistic: Literal["median", "min"] = "median"  # latency_ms: the repeats' median, or their minimum
    profile: str | None = None  # a `bhsearch profile` table: predicted latency instead of measured

    @field_validator("input_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        from bhsearch.spec import parse_input_size

        if value is not None:
            try:
                parse_input_size(value)
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("profile must be the path of a `bhsearch profile` table")
        return value

    @model_validator(mode="after")
    def _clock_threads(self) -> LatencyConfig:
        if self.clock == "cpu" and self.threads != 1:
            raise ValueError(f"clock 'cpu' times the measuring thread only: use it with threads: 1, not {self.threads}")
        return self


class RayConfig(_Strict):
    """Settings for a local Ray started by ``bhsearch tune`` (ignored with ``address``)."""

    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)
    object_store_memory: int | None = Field(default=None, ge=78643200)
    #: the local node's address (what Ray advertises and where its Python servers listen); Ray 2.x's GCS and
    #: raylet gRPC servers listen on every interface regardless (docs/tuning.md)
    node_ip_address: str = "127.0.0.1"


class Study(_Strict):
    """A whole study file."""

    name: str
    base: str
    input_size: str = "640x512"
    width_mult: float = Field(default=1.0, gt=0, le=4)
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    prefilter: PrefilterConfig | None = None
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    stages: StagesConfig
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    storage: str = "runs"
    address: str | None = None
    checkpoint_keep: int = Field(default=1, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("name must be letters, digits, '.', '_' or '-' (it names the run folder)")
        return value

    @field_validator("base")
    @classmethod
    def _base(cls, value: str) -> str:
        from bhsearch.spec import get_spec

        try:
            get_spec(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("input_size")
    @classmethod
    def _size(cls, value: str) -> str:
        from bhsearch.spec import parse_input_size

        try:
            parse_input_size(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _sync_bn_needs_gpus(self) -> Study:
        if self.resources.workers > 1 and self.resources.gpu == 0:
            for name in ("pretrain", "finetune"):
                stage = getattr(self.stages, name)
                if stage is not None and stage.options.get("sync_bn"):
                    raise ValueError(
                        f"stages.{name}.sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation); "
                        "drop it or give the workers GPUs (resources.gpu)"
                    )
        return self

    @model_validator(mode="after")
    def _metric_fits_stages(self) -> Study:
        metric, family = self.scheduler.metric, self.finetune_family
        if metric in DETECTION_METRICS and family is None:
            raise ValueError(f"scheduler.metric {metric!r} needs a finetune stage; proxy-only studies rank by top1")
        if metric in PROXY_METRICS and family is not None:
            default = DEFAULT_METRIC[family]
            raise ValueError(f"scheduler.metric {metric!r} is a proxy metric but the study fine-tunes; use {default}")
        allowed = FAMILY_METRICS.get(family or "")
        if metric is not None and allowed is not None and metric not in allowed:
            raise ValueError(
                f"scheduler.metric {metric!r} is not reported when fine-tuning on {family}; allowed: {', '.join(allowed)}"
            )
        return self

    # derived -------------------------------------------------------------------------
    @property
    def finetune_family(self) -> str | None:
        """Data family of the fine-tuning stage (``tinyperson`` / ``widerface``), None without one."""
        return data_family(self.stages.finetune.data) if self.stages.finetune is not None else None

    @property
    def target_metric(self) -> str:
        """The metric the final score is: AP50_tiny (TinyPerson) or AP_hard (WiderFace) by default, top1 for
        proxy-only studies."""
        if self.scheduler.metric:
            return self.scheduler.metric
        family = self.finetune_family
        return DEFAULT_METRIC.get(family, "top1") if family else "top1"

    def stage_trainer(self, stage: str) -> tuple[str, str, str]:
        """``(module, config dataclass, run function)`` that trains ``stage`` on its data (``STAGE_TRAINERS``)."""
        return STAGE_TRAINERS[(stage, data_family(getattr(self.stages, stage).data))]

    @property
    def stage_epochs(self) -> dict[str, int]:
        return {
            name: stage.epochs
            for name, stage in (("pretrain", self.stages.pretrain), ("finetune", self.stages.finetune))
            if stage
        }

    @property
    def max_epochs(self) -> int:
        """Trial-epochs of a trial run to the end (pre-train + fine-tune): ASHA's ``max_t``."""
        return sum(self.stage_epochs.values())

    def base_spec(self):
        """The base spec, width-scaled by ``width_mult``."""
        from bhsearch.spec import get_spec

        spec = get_spec(self.base)
        return spec.scaled(self.width_mult) if self.width_mult != 1.0 else spec

    def reference_specs(self) -> list[tuple[str, Any]]:
        """``(role, spec)`` reference points: the base and the paper's BH config, width-scaled."""
        from bhsearch.spec import get_spec, spec_name

        if self.search.references is not None:
            refs = [("reference", get_spec(r)) for r in self.search.references]
        else:
            base = get_spec(self.base)
            refs = [("base", base)]
            paper = PAPER_BH.get(spec_name(base) or "")
            if paper:
                refs.append(("paper", get_spec(paper)))
        if self.width_mult != 1.0:
            refs = [(role, s.scaled(self.width_mult)) for role, s in refs]
        return refs

    def absolute(self, cwd: str | Path | None = None) -> Study:
        """A copy with ``storage``, ``space.file`` and data paths made absolute (relative to ``cwd``)."""
        root = Path(cwd or Path.cwd())

        def fix(path: str) -> str:
            p = Path(path).expanduser()
            return str(p if p.is_absolute() else (root / p).resolve())

        def fix_stage(stage: StageConfig | None) -> dict | None:
            if stage is None:
                return None
            kind, _, path = stage.data.partition(":")
            return {**stage.model_dump(), "data": f"{kind}:{fix(path)}"}

        data = self.model_dump()
        data["storage"] = fix(self.storage)
        if self.space.file:
            data["space"]["file"] = fix(self.space.file)
        if self.latency.profile:
            data["latency"]["profile"] = fix(self.latency.profile)
        data["stages"] = {"pretrain": fix_stage(self.stages.pretrain), "finetune": fix_stage(self.stages.finetune)}
        return Study.model_validate(data)

    @property
    def run_dir(self) -> Path:
        return Path(self.storage) / self.name


# --------------------------------------------------------------------------- loading


def _line_map(text: str) -> dict[tuple, int]:
    """1-based line of every key/item path in a YAML document (composed, never constructed)."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(node: Any, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (key.value,)
                walk(value, sub)
                lines[sub] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    from bhsearch.safeload import compose_yaml

    root = compose_yaml(text)  # refuses alias bombs before the walk below would expand them
    if root is not None:
        walk(root, ())
    return lines


def _allowed_fields(loc: tuple) -> list[str] | None:
    """Field names the model at ``loc`` (the parent of an unknown key) accepts."""
    model: Any = Study
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return list(model.model_fields)


def _format_error(err: dict, lines: dict[tuple, int], source: str) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    field = ".".join(str(p) for p in loc) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    head, _, rest = msg.partition(" ")
    if not loc and tuple(head.split(".")) in lines:  # a whole-study check about one field: report it there
        loc, msg = tuple(head.split(".")), f"{head.split('.')[-1]} {rest}"
        field = head
    line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), None)
    where = f"{source}:{line}" if line else source
    if err["type"] == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        msg = f"unknown field {loc[-1]!r}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif err["type"] == "missing":
        msg = "required field is missing"
    return f"{where}: {field}: {msg}"


def parse_study(data: Any, source: str = "<study>", lines: dict[tuple, int] | None = None) -> Study:
    """Validate a study mapping; errors name ``source``, the line, the field and what is allowed."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a study must be a mapping at the top level, got {type(data).__name__}")
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        msgs = [_format_error(e, lines, source) for e in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise UsageError(" | ".join(msgs) + more) from None
    check_stage_options(study, source, lines)
    return study


def load_study(path: str | Path) -> Study:
    """Read and validate a study YAML (or JSON) file (``bhsearch.safeload``: alias bombs are refused)."""
    import yaml

    from bhsearch.safeload import load_yaml

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, expected a study file")
    if not path.is_file():
        raise UsageError(f"{path}: no such study file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    try:
        lines = _line_map(text)
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"{path}{where}: malformed YAML: {problem}") from None
    return parse_study(data, str(path), lines)


def _stage_fields(module: str, cls: str) -> list[str] | None:
    """Fields of a stage's config dataclass, or None while that training module is unavailable."""
    import importlib

    try:
        return [f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))]
    except ImportError:
        return None


#: Stage settings a study controls itself (the trial sets them), so a stage may not set them.
RESERVED_STAGE_OPTIONS = ("width_mult", "progress")


def check_stage_options(study: Study, source: str = "<study>", lines: dict[tuple, int] | None = None) -> None:
    """Check every stage's data kind and settings against its trainer's config dataclass (``STAGE_TRAINERS``;
    imports the training module)."""
    lines = lines or {}
    for name in ("pretrain", "finetune"):
        stage = getattr(study.stages, name)
        if stage is None:
            continue
        if (name, data_family(stage.data)) not in STAGE_TRAINERS:
            loc = ("stages", name, "data")
            where = f"{source}:{lines[loc]}" if loc in lines else source
            kinds = [k for k in _DATA_KINDS if (name, data_family(f"{k}:")) in STAGE_TRAINERS]
            raise UsageError(
                f"{where}: stages.{name}.data: {stage.data.partition(':')[0]} data cannot be used to {name}; "
                f"allowed: {', '.join(kinds)}"
            )
        module, cls, _ = study.stage_trainer(name)
        fields = _stage_fields(module, cls)
        for key in stage.options:
            loc = ("stages", name, key)
            where = f"{source}:{lines[loc]}" if loc in lines else source
            if key in RESERVED_STAGE_OPTIONS:
                hint = "use the study's top-level width_mult" if key == "width_mult" else "the trial sets it"
                raise UsageError(f"{where}: stages.{name}.{key}: not allowed in a study ({hint})")
            if fields is not None and key not in fields:
                raise UsageError(
                    f"{where}: stages.{name}.{key}: unknown {name} setting ({cls}); allowed: data, {', '.join(fields)}"
                )
        if fields is None:
            continue  # the training module is unavailable: names only
        where = f"{source}:{lines[('stages', name)]}" if ("stages", name) in lines else source
        config = stage_config(study, name, where=where, lines=lines, source=source)
        if name == "finetune":
            _check_detector(study, config, where)


@functools.cache
def _adapter(module: str, cls: str) -> Any:
    import importlib

    from pydantic import TypeAdapter

    return TypeAdapter(getattr(importlib.import_module(module), cls))


def stage_config(
    study: Study,
    stage: str,
    extra: dict[str, Any] | None = None,
    *,
    where: str | None = None,
    source: str = "<study>",
    lines: dict[tuple, int] | None = None,
) -> Any:
    """The config dataclass of ``stage`` (``STAGE_TRAINERS``) built from the study's settings plus ``extra``,
    type-checked by pydantic against the dataclass's annotations (``batch_size: abc`` is an error, ``"64"`` is
    64) and by the dataclass's own checks. Errors are one ``UsageError`` line naming the setting."""
    import importlib

    from pydantic import ValidationError

    module, cls, _ = study.stage_trainer(stage)
    stage_obj = getattr(study.stages, stage)
    # the trainer's recipe defaults for this data (e.g. ImageNet: 224 px), under the study's settings
    defaults = getattr(importlib.import_module(module), "data_defaults", lambda _data: {})(stage_obj.data)
    options = {**defaults, **stage_obj.options, **(extra or {})}
    lines = lines or {}
    where = where or source
    try:
        return _adapter(module, cls).validate_python(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        field = f"stages.{stage}" + (f".{'.'.join(loc)}" if loc else "")
        line = lines.get(("stages", stage, loc[0])) if loc else None
        at = f"{source}:{line}" if line else where
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if loc and not isinstance(err.get("input"), dict) else ""
        raise UsageError(f"{at}: {field}: {msg}{got}") from None
    except (UsageError, TypeError) as exc:
        raise UsageError(f"{where}: stages.{stage}: {exc}") from None


def _num_classes(family: str | None) -> int:
    from bhsearch.tasks import get_benchmark

    return get_benchmark(family).num_classes if family in ("tinyperson", "aitod") else 1


def _check_detector(study: Study, config: Any, where: str) -> None:
    """Build the fine-tuning detector of the base spec on PyTorch's ``meta`` device (no memory, ~0.1 s): unknown
    ``detector_kwargs``, a bad ``min_level`` or ``fpn_channels`` fail here instead of in every trial."""
    import torch

    spec = study.base_spec()
    try:
        with torch.device("meta"):
            if study.finetune_family == "widerface":
                from bhsearch.tasks.widerface.detector import build_face_detector

                build_face_detector(
                    spec,
                    image_size=(config.image_size, config.image_size),
                    fpn_channels=config.fpn_channels,
                    **config.detector_kwargs,
                )
            else:
                from bhsearch.detectors import build_detector

                build_detector(
                    spec,
                    config.detector,
                    num_classes=_num_classes(study.finetune_family),
                    image_size=config.tile,
                    fpn_channels=config.fpn_channels,
                    min_level=config.min_level,
                    **config.detector_kwargs,
                )
    except (UsageError, TypeError, ValueError) as exc:
        raise UsageError(f"{where}: stages.finetune: detector: {str(exc).splitlines()[0]}") from None


__all__ = [
    "DETECTION_METRICS",
    "PAPER_BH",
    "PROXY_METRICS",
    "STAGE_TRAINERS",
    "TINYPERSON_METRICS",
    "WIDERFACE_METRICS",
    "Study",
    "check_stage_options",
    "stage_config",
    "data_family",
    "load_study",
    "parse_study",
]

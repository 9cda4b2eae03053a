"""FLOP-matching enumeration of bottom-heavy candidates over a design space (``spaces/*.yaml``).

``solve(base, input_size)`` enumerates *every* candidate of a design space — block counts per
stage (ResNet) or stage-1 blocks and modules x blocks per stage (HRNet), under every allowed stem
and stage-stride pattern that keeps the base's output strides — keeps those whose matched cost
(``macs``, paper ``flops``, ``activations`` or predicted ``latency``) is within ``tolerance``
percent of the base's and that meet the constraints, and ranks them.

Speed: with the widths fixed, a stage's cost depends only on that stage's own setting (and on the
stem / stride pattern, enumerated outside), so the cost is additive over stages. For each stem and
stride pattern the solver costs every per-stage option once with :func:`bhsearch.count` (as a
difference against a reference candidate), checks additivity on one far-away candidate, then
combines the stages meet-in-the-middle: the half-combinations of the last stages are sorted by
matched cost and each half-combination of the first stages bisects its tolerance window. Rows
that are returned are re-counted exactly. No torch, numpy or pandas import.

Bottom-heaviness: a stage is *bottom* when its deepest feature map has an output stride <= 4,
i.e. it runs before the third 2x down-sampling (paper §3: ResNet ``stage1``; HRNet ``stage1``,
whose deepest branch stays at stride 4 while stage 2 adds a stride-8 branch). ``depth`` is the
number of blocks along the deepest path (ResNet: blocks per stage; HRNet: stage-1 blocks, then
modules x blocks per branch). The bottom-heavy ordering constraint asks for at least as many bottom
blocks as the base and at most as many others, not both equal. The score ``bh_score`` is the share
of paper FLOPs spent in the stem and the bottom stages.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bhsearch.cost import count
from bhsearch.errors import InfeasibleError, UsageError
from bhsearch.spec import (
    MAX_BLOCKS,
    MAX_WIDTH,
    NAMED_SPECS,
    HRNetSpec,
    HRStage,
    ResNetSpec,
    Spec,
    get_spec,
    parse_input_size,
    spec_name,
)

MATCH_KEYS = ("flops", "macs", "activations", "latency")
SORT_KEYS = ("error", "bh", "params", "activations", "flops", "macs", "latency", "memory")
ORDERS = ("bottom-heavy", "split", "any")

# metric vector layout
_MACS, _FLOPS, _PARAMS, _CONV_PARAMS, _ACTS, _BOTTOM, _LAT, _MEM = range(8)
_MATCH_INDEX = {"macs": _MACS, "flops": _FLOPS, "activations": _ACTS, "latency": _LAT}
_NMETRICS = 8


def spaces_dir() -> Path:
    """The packaged design spaces (``bhsearch/resources/spaces``, shipped in the wheel)."""
    from importlib.resources import files

    return Path(str(files("bhsearch.resources") / "spaces"))


def resolve_space_path(path: str | Path) -> Path:
    """``path`` itself, or, when it does not exist and reads ``.../spaces/NAME.yaml`` with NAME a packaged
    space, the packaged file: the studies' ``file: spaces/resnet.yaml`` works from any directory."""
    path = Path(path)
    if not path.exists() and path.parent.name == "spaces" and (spaces_dir() / path.name).is_file():
        return spaces_dir() / path.name
    return path


def default_space_path(family: str) -> Path:
    return spaces_dir() / f"{family}.yaml"


# --------------------------------------------------------------------------- design spaces


@dataclass
class Axis:
    """One depth stage of a design space: its options and each option's depth (blocks on the deepest path)."""

    name: str
    options: list[Any]
    depths: list[int]


@dataclass
class DesignSpace:
    """A parsed ``spaces/*.yaml`` file bound to a base spec."""

    path: Path | None
    family: str
    description: str
    axes: list[Axis]
    globals: list[dict[str, Any]]  # spec field changes per stem / stride pattern / widths
    stem_codes: list[str]  # one per entry of ``globals``
    bottom_stages: int | None = None  # override of the stride rule

    @property
    def size(self) -> int:
        return len(self.globals) * math.prod(len(a.options) for a in self.axes)


def _space_error(path: Path | None, field_name: str, msg: str) -> UsageError:
    where = f"{path}: " if path else "design space: "
    return UsageError(f"{where}field {field_name!r}: {msg}")


def _int(value: Any, path: Path | None, name: str, lo: int = 1, hi: int = MAX_WIDTH) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _space_error(path, name, f"expected an integer from {lo} to {hi}, got {value!r}")
    return value


def _range(value: Any, path: Path | None, name: str) -> list[int]:
    """``[min, max]`` (inclusive), a single integer, or an explicit list of 3+ integers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [_int(value, path, name, hi=MAX_BLOCKS)]
    if not isinstance(value, list) or not value:
        raise _space_error(path, name, f"expected [min, max] or an integer, got {value!r}")
    vals = [_int(v, path, name, hi=MAX_BLOCKS) for v in value]
    if len(vals) == 2:
        if vals[0] > vals[1]:
            raise _space_error(path, name, f"min {vals[0]} is larger than max {vals[1]}")
        return list(range(vals[0], vals[1] + 1))
    return sorted(set(vals))


def _list(value: Any, path: Path | None, name: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise _space_error(path, name, f"expected a non-empty list, got {value!r}")
    return value


_RESNET_STEM_CODE = re.compile(r"^(?:k(?P<k>\d+)|(?P<deep>deep))s(?P<s>\d+)(?P<p>p?)$")
_HRNET_STEM_CODE = re.compile(r"^s(?P<a>[12])(?P<b>[12])(?P<p>p?)$")


def resnet_stem_code(spec: ResNetSpec) -> str:
    return (
        ("deep" if spec.deep_stem else f"k{spec.stem_kernel}")
        + f"s{spec.stem_stride}"
        + ("p" if spec.stem_pool else "")
    )


def hrnet_stem_code(spec: HRNetSpec) -> str:
    return "s" + "".join(map(str, spec.stem_strides)) + ("p" if spec.pool_after_stage1 else "")


class _ResNetFamily:
    linear_depth = True  # a stage's cost is linear in its block count
    fields = {"family", "description", "blocks", "stems", "stage_strides", "out_strides", "widths", "bottom_stages"}

    @staticmethod
    def stem(value: Any, path: Path | None, name: str) -> dict[str, Any]:
        if isinstance(value, str):
            m = _RESNET_STEM_CODE.match(value.strip())
            if not m:
                raise _space_error(path, name, f"bad stem code {value!r} (expected e.g. k7s2p, k3s1p, deeps2p)")
            value = {"kernel": int(m["k"] or 3), "stride": int(m["s"]), "pool": bool(m["p"]), "deep": bool(m["deep"])}
        if not isinstance(value, dict):
            raise _space_error(path, name, f"expected a mapping {{kernel, stride, pool}} or a code, got {value!r}")
        unknown = set(value) - {"kernel", "stride", "pool", "deep"}
        if unknown:
            raise _space_error(path, name, f"unknown key(s) {sorted(unknown)}; allowed: kernel, stride, pool, deep")
        kernel, stride = value.get("kernel", 7), value.get("stride", 2)
        pool, deep = value.get("pool", True), value.get("deep", False)
        if kernel not in (1, 3, 5, 7) or isinstance(kernel, bool):
            raise _space_error(path, name, f"kernel must be 1, 3, 5 or 7, got {kernel!r}")
        if stride not in (1, 2) or isinstance(stride, bool):
            raise _space_error(path, name, f"stride must be 1 or 2, got {stride!r}")
        if not isinstance(pool, bool) or not isinstance(deep, bool):
            raise _space_error(path, name, "pool and deep must be true or false")
        return {"stem_kernel": 3 if deep else kernel, "stem_stride": stride, "stem_pool": pool, "deep_stem": deep}

    def parse(self, data: dict[str, Any], path: Path | None, base: ResNetSpec) -> DesignSpace:
        n = len(base.blocks)
        blocks = _list(data.get("blocks"), path, "blocks")
        if len(blocks) != n:
            raise _space_error(path, "blocks", f"has {len(blocks)} stages but base {base} has {n}")
        axes = []
        for i, r in enumerate(blocks):
            opts = _range(r, path, f"blocks[{i}]")
            axes.append(Axis(f"stage{i + 1}", opts, list(opts)))
        stems = [self.stem(s, path, f"stems[{i}]") for i, s in enumerate(_list(data.get("stems"), path, "stems"))]
        patterns = []
        for i, pat in enumerate(_list(data.get("stage_strides", [list(base.strides)]), path, "stage_strides")):
            if not isinstance(pat, list) or len(pat) != n or any(s not in (1, 2) or isinstance(s, bool) for s in pat):
                raise _space_error(path, f"stage_strides[{i}]", f"expected {n} strides of 1 or 2, got {pat!r}")
            patterns.append(tuple(pat))
        widths_opt = data.get("widths", "base")
        width_list = []
        for i, w in enumerate(
            widths_opt
            if isinstance(widths_opt, list) and widths_opt and isinstance(widths_opt[0], (list, str))
            else [widths_opt]
        ):
            if w == "base":
                width_list.append(base.widths)
            elif (
                isinstance(w, list)
                and len(w) == n
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in w)
            ):
                width_list.append(tuple(w))
            else:
                raise _space_error(path, f"widths[{i}]", f"expected 'base' or {n} positive integers, got {w!r}")
        out_strides = data.get("out_strides", "base")
        if out_strides == "base":
            out_strides = base.out_strides
        elif not isinstance(out_strides, list) or len(out_strides) != n:
            raise _space_error(path, "out_strides", f"expected 'base' or {n} integers, got {out_strides!r}")
        globs, codes = [], []
        for stem, pat, widths in itertools.product(stems, patterns, width_list):
            glob = {**stem, "strides": pat, "widths": widths}
            probe = base.replace(**glob)
            if probe.out_strides == tuple(out_strides):
                globs.append(glob)
                codes.append(resnet_stem_code(probe))
        return DesignSpace(
            path, "resnet", str(data.get("description", "")), axes, globs, codes, data.get("bottom_stages")
        )

    @staticmethod
    def make_spec(base: ResNetSpec, glob: dict[str, Any], choice: tuple[int, ...]) -> ResNetSpec:
        return base.replace(blocks=tuple(choice), **glob)

    @staticmethod
    def choice_of(spec: ResNetSpec) -> tuple[Any, ...]:
        return tuple(spec.blocks)

    @staticmethod
    def stage_strides(spec: ResNetSpec) -> tuple[int, ...]:
        return spec.out_strides

    @staticmethod
    def depths(spec: ResNetSpec) -> tuple[int, ...]:
        return tuple(spec.blocks)

    @staticmethod
    def stem_code(spec: ResNetSpec) -> str:
        return resnet_stem_code(spec)


class _HRNetFamily:
    fields = {"family", "description", "stage1_blocks", "stage1_widths", "stages", "stems", "bottom_stages"}

    @staticmethod
    def stem(value: Any, path: Path | None, name: str) -> dict[str, Any]:
        if isinstance(value, str):
            m = _HRNET_STEM_CODE.match(value.strip())
            if not m:
                raise _space_error(path, name, f"bad stem code {value!r} (expected e.g. s22 or s12p)")
            value = {"strides": [int(m["a"]), int(m["b"])], "pool_after_stage1": bool(m["p"])}
        if not isinstance(value, dict) or set(value) - {"strides", "pool_after_stage1"}:
            raise _space_error(
                path, name, f"expected {{strides: [a, b], pool_after_stage1: bool}} or a code, got {value!r}"
            )
        strides = value.get("strides", [2, 2])
        pool = value.get("pool_after_stage1", False)
        if (
            not isinstance(strides, list)
            or len(strides) != 2
            or any(s not in (1, 2) or isinstance(s, bool) for s in strides)
        ):
            raise _space_error(path, name, f"strides must be two of 1 or 2, got {strides!r}")
        if not isinstance(pool, bool):
            raise _space_error(path, name, "pool_after_stage1 must be true or false")
        return {"stem_strides": tuple(strides), "pool_after_stage1": pool}

    def parse(self, data: dict[str, Any], path: Path | None, base: HRNetSpec) -> DesignSpace:
        s1 = _range(data.get("stage1_blocks"), path, "stage1_blocks")
        axes = [Axis("stage1", s1, list(s1))]
        stages = _list(data.get("stages"), path, "stages")
        if len(stages) != len(base.stages):
            raise _space_error(path, "stages", f"has {len(stages)} entries but base {base} has {len(base.stages)}")
        for i, st in enumerate(stages):
            name = f"stages[{i}]"
            if not isinstance(st, dict) or set(st) != {"modules", "blocks"}:
                raise _space_error(path, name, f"expected {{modules: [min, max], blocks: [min, max]}}, got {st!r}")
            mods = _range(st["modules"], path, f"{name}.modules")
            blks = _range(st["blocks"], path, f"{name}.blocks")
            opts = list(itertools.product(mods, blks))
            axes.append(Axis(f"stage{i + 2}", opts, [m * b for m, b in opts]))
        stems = [self.stem(s, path, f"stems[{i}]") for i, s in enumerate(_list(data.get("stems"), path, "stems"))]
        widths = []
        for i, w in enumerate(_list(data.get("stage1_widths", ["base"]), path, "stage1_widths")):
            if w == "base":
                widths.append(base.stage1_width)
            else:
                widths.append(_int(w, path, f"stage1_widths[{i}]"))
        globs, codes = [], []
        for stem, width in itertools.product(stems, dict.fromkeys(widths)):
            glob = {**stem, "stage1_width": width}
            probe = base.replace(**glob)
            if probe.out_strides == base.out_strides:
                globs.append(glob)
                codes.append(hrnet_stem_code(probe))
        return DesignSpace(
            path, "hrnet", str(data.get("description", "")), axes, globs, codes, data.get("bottom_stages")
        )

    @staticmethod
    def make_spec(base: HRNetSpec, glob: dict[str, Any], choice: tuple[Any, ...]) -> HRNetSpec:
        stages = tuple(
            HRStage(m, (b,) * st.branches, st.widths, st.block)
            for st, (m, b) in zip(base.stages, choice[1:], strict=True)
        )
        return base.replace(stage1_blocks=choice[0], stages=stages, **glob)

    @staticmethod
    def choice_of(spec: HRNetSpec) -> tuple[Any, ...] | None:
        if any(len(set(st.blocks)) != 1 for st in spec.stages):
            return None
        return (spec.stage1_blocks, *((st.modules, st.blocks[0]) for st in spec.stages))

    @staticmethod
    def stage_strides(spec: HRNetSpec) -> tuple[int, ...]:
        s1 = spec.stem_strides[0] * spec.stem_strides[1]
        return (s1, *spec.out_strides[1 : len(spec.stages) + 1])

    @staticmethod
    def depths(spec: HRNetSpec) -> tuple[int, ...]:
        return (spec.stage1_blocks, *(st.modules * max(st.blocks) for st in spec.stages))

    @staticmethod
    def stem_code(spec: HRNetSpec) -> str:
        return hrnet_stem_code(spec)


_FAMILIES = {"resnet": _ResNetFamily(), "hrnet": _HRNetFamily()}


def load_space(path: str | Path | None, base: Spec | str) -> DesignSpace:
    """Load a design space for ``base`` (``path=None``: ``spaces/<family>.yaml``); errors name file and field."""
    from bhsearch.spec import load_mapping

    base = get_spec(base)
    path = resolve_space_path(path) if path is not None else default_space_path(base.family)
    data = load_mapping(path)
    family = data.get("family")
    if family not in _FAMILIES:
        raise _space_error(path, "family", f"must be one of {sorted(_FAMILIES)}, got {family!r}")
    if family != base.family:
        raise _space_error(path, "family", f"space is for {family} but base {base} is a {base.family}")
    adapter = _FAMILIES[family]
    unknown = sorted(set(data) - adapter.fields)
    if unknown:
        raise _space_error(path, unknown[0], f"unknown field; allowed: {', '.join(sorted(adapter.fields))}")
    space = adapter.parse(data, path, base)
    if space.bottom_stages is not None:
        _int(space.bottom_stages, path, "bottom_stages", lo=0)
    if not space.globals:
        raise InfeasibleError(f"{path}: no stem / stride pattern keeps the output strides {base.out_strides}")
    return space


def random_candidates(
    space: DesignSpace, base: Spec | str, n: int, seed: int = 0, max_depth: int | None = None,
    exclude: Sequence[str] = (),
) -> list[Spec]:
    """``n`` distinct random specs of ``space`` (uniform over stem / stride pattern and over each stage's
    options, those deeper than ``max_depth`` blocks left out), none of whose ids is in ``exclude``;
    fewer when the space has fewer. Deterministic for a ``seed``."""
    import random

    base = get_spec(base)
    rng = random.Random(seed)
    adapter = _FAMILIES[space.family]
    options = [
        [o for o, d in zip(ax.options, ax.depths, strict=True) if max_depth is None or d <= max_depth] or ax.options[:1]
        for ax in space.axes
    ]
    seen, out = set(exclude), []
    for _ in range(100 * n + 100):
        if len(out) == n:
            break
        spec = adapter.make_spec(base, rng.choice(space.globals), tuple(rng.choice(o) for o in options))
        if spec.id not in seen:
            seen.add(spec.id)
            out.append(spec)
    return out


# --------------------------------------------------------------------------- results


@dataclass
class Candidate:
    """One ranked row. Costs are exact (re-counted); ratios and ``error`` are relative to the base."""

    spec: Spec
    id: str
    name: str | None
    stem: str
    depths: tuple[int, ...]
    macs: int
    flops: int
    params: int
    conv_params: int
    activations: int
    error: float  # signed relative error of the matched cost vs the base (0.01 = +1 %)
    macs_ratio: float
    flops_ratio: float
    params_ratio: float
    activations_ratio: float
    bh_score: float  # share of paper FLOPs in the stem and the bottom stages
    blocks_before: int
    blocks_after: int
    is_base: bool = False
    is_paper: bool = False
    rank: int | None = None  # 1-based rank among all feasible candidates; None if not feasible
    latency: float | None = None  # predicted seconds (with a profile)
    latency_ratio: float | None = None
    train_memory: int | None = None  # analytic bytes for a training step
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "spec"}
        d["depths"] = list(self.depths)
        d["spec"] = self.spec.to_dict()
        return d


@dataclass
class SolveResult:
    base: Candidate
    input_size: tuple[int, int]
    match: str
    tolerance: float  # percent
    sort: str
    space_path: str | None
    space_description: str
    enumerated: int  # candidates in the design space (after stem/stride filtering)
    within_tolerance: int  # of those, cost-matched
    feasible: int  # of those, meeting every constraint
    candidates: list[Candidate]  # ranked, cut to ``top``
    references: list[Candidate] = field(default_factory=list)  # paper specs not among ``candidates``
    constraints: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None

    def __iter__(self):
        return iter(self.candidates)

    def __len__(self) -> int:
        return len(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.to_dict(),
            "input_size": list(self.input_size),
            "match": self.match,
            "tolerance_percent": self.tolerance,
            "sort": self.sort,
            "space": self.space_path,
            "space_description": self.space_description,
            "enumerated": self.enumerated,
            "within_tolerance": self.within_tolerance,
            "feasible": self.feasible,
            "constraints": self.constraints,
            "profile": self.profile,
            "candidates": [c.to_dict() for c in self.candidates],
            "references": [c.to_dict() for c in self.references],
        }


CSV_FIELDS = (
    "rank",
    "name",
    "id",
    "stem",
    "depths",
    "macs",
    "flops",
    "params",
    "conv_params",
    "activations",
    "error",
    "macs_ratio",
    "flops_ratio",
    "params_ratio",
    "activations_ratio",
    "bh_score",
    "blocks_before",
    "blocks_after",
    "latency",
    "latency_ratio",
    "train_memory",
    "is_base",
    "is_paper",
    "note",
)


def csv_rows(result: SolveResult) -> list[dict[str, Any]]:
    """Flat rows (base first, then candidates, then references) for CSV output."""
    rows = []
    for c in [result.base, *result.candidates, *result.references]:
        d = c.to_dict()
        row = {k: d.get(k) for k in CSV_FIELDS}
        row["depths"] = "-".join(str(v) for v in c.depths)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- solving


def _per_stage(value: int | Sequence[int | None] | None, n: int, what: str) -> list[int | None]:
    if value is None:
        return [None] * n
    vals = [value] * n if isinstance(value, int) and not isinstance(value, bool) else list(value)
    if len(vals) != n:
        raise UsageError(f"{what} needs {n} values (one per stage), got {len(vals)}")
    for v in vals:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UsageError(f"{what} values must be positive integers, got {v!r}")
    return vals


class _Costing:
    """Metric vectors of specs: exact counts plus optional latency / train memory."""

    def __init__(
        self,
        size,
        family,
        profile_table,
        need_memory: bool,
        batch_size: int,
        runtime: str = "torch",
        stat: str = "median",
    ) -> None:
        self.size = size
        self.runtime = runtime
        self.stat = stat
        self.family = family
        self.table = profile_table
        self.need_memory = need_memory
        self.batch_size = batch_size
        self._lat = self._mem = None
        if profile_table is not None or need_memory:
            import bhsearch.latency as latency

            self._lat, self._mem = latency.predict_latency, latency.train_memory_bytes

    def vector(self, spec: Spec, bottom: int) -> list[float]:
        rep = count(spec, self.size)
        bottom_flops = sum(s.flops for s in rep.stages[: 1 + bottom])
        lat, mem = self.extra(spec)
        return [rep.macs, rep.flops, rep.params, rep.conv_params, rep.activations, bottom_flops, lat, mem]

    def extra(self, spec: Spec) -> tuple[float, int]:
        """Predicted latency (0 without a profile) and training memory (0 unless asked for)."""
        lat = 0.0
        if self.table is not None:
            lat = self._lat(spec, self.size, self.table, stat=self.stat, runtime=self.runtime)
        mem = self._mem(spec, self.size, self.batch_size) if self.need_memory else 0
        return lat, mem


def _stage_vector(stage: Any, bottom_stage: bool) -> list[float]:
    return [
        stage.macs,
        stage.flops,
        stage.params,
        stage.conv_params,
        stage.activations,
        stage.flops if bottom_stage else 0,
        0.0,
        0,
    ]


def _option_deltas(
    costing: _Costing, adapter: Any, base: Spec, glob: dict[str, Any], axes: list[Axis], bottom: int
) -> tuple[list[float], list[list[list[float]]]]:
    """The metric vector of the reference choice (every axis at its first option) and, per axis and
    option, the change of the vector when only that axis takes that option.

    Count metrics are read per stage from a few counts (``report.stages`` is ``[stem, stage1, ...]``,
    one stage per axis): ResNet stages are linear in their block count (one first block plus
    identical repeats), so two counts suffice; otherwise one count per option index sets every
    axis at once. Latency and memory, when asked for, are predicted per option.
    """
    n = len(axes)

    def count_stages(choice: tuple[Any, ...]) -> list[Any]:
        stages = count(adapter.make_spec(base, glob, choice), costing.size).stages
        if len(stages) != n + 1:
            raise RuntimeError(f"expected {n + 1} cost stages (stem + one per axis), got {len(stages)}")
        return stages

    per_axis: list[list[list[float]]] = [[] for _ in axes]
    if getattr(adapter, "linear_depth", False) and all(isinstance(o, int) for ax in axes for o in ax.options):
        one, two = count_stages((1,) * n), count_stages((2,) * n)
        stem = _stage_vector(one[0], True)
        for k, ax in enumerate(axes):
            v1, v2 = _stage_vector(one[k + 1], k < bottom), _stage_vector(two[k + 1], k < bottom)
            per_axis[k] = [[a + (opt - 1) * (b - a) for a, b in zip(v1, v2, strict=True)] for opt in ax.options]
    else:
        stem = None
        for j in range(max(len(ax.options) for ax in axes)):
            choice = tuple(ax.options[min(j, len(ax.options) - 1)] for ax in axes)
            stages = count_stages(choice)
            stem = stem or _stage_vector(stages[0], True)
            for k, ax in enumerate(axes):
                if j < len(ax.options):
                    per_axis[k].append(_stage_vector(stages[k + 1], k < bottom))
    ref_vec = list(stem)
    for rows in per_axis:
        ref_vec = [a + b for a, b in zip(ref_vec, rows[0], strict=True)]
    deltas = [[[a - b for a, b in zip(row, rows[0], strict=True)] for row in rows] for rows in per_axis]
    if costing.table is not None or costing.need_memory:
        ref_choice = tuple(ax.options[0] for ax in axes)
        ref_extra = costing.extra(adapter.make_spec(base, glob, ref_choice))
        ref_vec[_LAT], ref_vec[_MEM] = ref_extra
        for k, ax in enumerate(axes):
            for i, opt in enumerate(ax.options[1:], start=1):
                lat, mem = costing.extra(adapter.make_spec(base, glob, ref_choice[:k] + (opt,) + ref_choice[k + 1 :]))
                deltas[k][i][_LAT], deltas[k][i][_MEM] = lat - ref_extra[0], mem - ref_extra[1]
    return ref_vec, deltas


def _bottom_count(space: DesignSpace, adapter: Any, spec: Spec) -> int:
    if space.bottom_stages is not None:
        return min(space.bottom_stages, len(space.axes))
    return sum(1 for s in adapter.stage_strides(spec) if s <= 4)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def solve(
    base: Spec | str,
    input_size: str | tuple[int, int] = "640x512",
    space: str | Path | DesignSpace | None = None,
    match: str = "flops",
    tolerance: float = 2.0,
    *,
    order: str = "bottom-heavy",
    min_blocks: int | Sequence[int | None] | None = None,
    max_blocks: int | Sequence[int | None] | None = None,
    max_params: int | None = None,
    max_activations_ratio: float | None = None,
    stems: Sequence[str] | None = None,
    top: int | None = None,
    sort: str = "error",
    profile: str | Path | None = None,
    max_latency_ratio: float | None = None,
    max_train_memory: int | None = None,
    batch_size: int = 2,
    runtime: str = "torch",
    stat: str = "median",
) -> SolveResult:
    """Enumerate the design space around ``base`` and return the cost-matched, constrained, ranked candidates.

    ``tolerance`` is in percent of the base's matched cost. ``min_blocks``/``max_blocks`` bound the
    depth of each stage (an int for all stages, or one value or None per stage). ``stems`` limits
    the stems (codes like ``k3s1p`` / ``s12p``). ``profile`` is a latency table
    (:func:`bhsearch.latency.load_table`); it enables ``match="latency"``, ``sort="latency"``
    and ``max_latency_ratio``, predicted from the table's ``runtime`` entries (torch or onnxruntime) and their
    ``stat`` (``"median"`` or ``"min"`` of the repetitions).
    ``max_train_memory`` (bytes) bounds the analytic training-step memory at ``batch_size``. Raises :class:`InfeasibleError` when nothing is left.
    """
    base = get_spec(base)
    size = parse_input_size(input_size)
    if match not in MATCH_KEYS:
        raise UsageError(f"match must be one of {', '.join(MATCH_KEYS)}; got {match!r}")
    if sort not in SORT_KEYS:
        raise UsageError(f"sort must be one of {', '.join(SORT_KEYS)}; got {sort!r}")
    if order not in ORDERS:
        raise UsageError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise UsageError(f"tolerance must be a non-negative percentage, got {tolerance!r}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise UsageError(f"top must be a positive integer, got {top!r}")
    for name, value in (
        ("max_params", max_params),
        ("max_activations_ratio", max_activations_ratio),
        ("max_latency_ratio", max_latency_ratio),
        ("max_train_memory", max_train_memory),
    ):
        if value is not None and not value > 0:
            raise UsageError(f"{name} must be positive, got {value!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if stat not in ("median", "min"):
        raise UsageError(f"stat must be median or min, got {stat!r}")
    needs_profile = [
        w
        for w, on in (
            ("--match latency", match == "latency"),
            ("--sort latency", sort == "latency"),
            ("--max-latency-ratio", max_latency_ratio is not None),
        )
        if on
    ]
    if needs_profile and profile is None:
        raise UsageError(f"{needs_profile[0]} needs a latency profile (--profile FILE, see 'bhsearch profile')")

    ds = space if isinstance(space, DesignSpace) else load_space(space, base)
    adapter = _FAMILIES[ds.family]
    n_axes = len(ds.axes)

    # constraints that prune per-stage options
    lo_blocks = _per_stage(min_blocks, n_axes, "min_blocks")
    hi_blocks = _per_stage(max_blocks, n_axes, "max_blocks")
    axes = []
    for ax, lo, hi in zip(ds.axes, lo_blocks, hi_blocks, strict=True):
        keep = [
            (o, d)
            for o, d in zip(ax.options, ax.depths, strict=True)
            if (lo is None or d >= lo) and (hi is None or d <= hi)
        ]
        if not keep:
            raise InfeasibleError(f"no option of {ax.name} lies within the min/max blocks ({lo}..{hi})")
        axes.append(Axis(ax.name, [o for o, _ in keep], [d for _, d in keep]))
    glob_ids = list(range(len(ds.globals)))
    if stems:
        wanted = {s.strip() for s in stems if s.strip()}
        unknown = wanted - set(ds.stem_codes)
        if unknown:
            raise UsageError(
                f"stem(s) {sorted(unknown)} not in the design space; available: {sorted(set(ds.stem_codes))}"
            )
        glob_ids = [g for g in glob_ids if ds.stem_codes[g] in wanted]

    table = None
    if profile is not None:
        import bhsearch.latency as latency

        table = latency.load_table(profile)
    need_memory = max_train_memory is not None or sort == "memory"
    costing = _Costing(size, ds.family, table, need_memory, batch_size, runtime, stat)

    base_bottom = _bottom_count(ds, adapter, base)
    base_vec = costing.vector(base, base_bottom)
    base_depths = adapter.depths(base)
    ordered = _order_check(order, base_depths, base_bottom)
    mi = _MATCH_INDEX[match]
    target = base_vec[mi]
    if target <= 0:
        raise UsageError(f"base {base} has no {match} to match")
    lo_m, hi_m = target * (1 - tolerance / 100), target * (1 + tolerance / 100)
    eps = 1e-9 * target
    lim_params = max_params if max_params is not None else math.inf
    lim_acts = max_activations_ratio * base_vec[_ACTS] if max_activations_ratio is not None else math.inf
    lim_lat = max_latency_ratio * base_vec[_LAT] if max_latency_ratio is not None else math.inf
    lim_mem = max_train_memory if max_train_memory is not None else math.inf

    def violation(vec: Sequence[float], depths: tuple[int, ...]) -> str:
        if not lo_m - eps <= vec[mi] <= hi_m + eps:
            return f"{match} {100 * (vec[mi] / target - 1):+.2f}% is outside ±{tolerance:g}%"
        if not ordered(depths):
            shown = "-".join(map(str, depths))
            return f"depths {shown} not {order} vs the base's {'-'.join(map(str, base_depths))}"
        if vec[_PARAMS] > lim_params:
            return f"params {vec[_PARAMS]:,} > {max_params:,}"
        if vec[_ACTS] > lim_acts:
            return f"activations {vec[_ACTS] / base_vec[_ACTS]:.2f}x > {max_activations_ratio}x"
        if vec[_LAT] > lim_lat:
            return f"latency {vec[_LAT] / base_vec[_LAT]:.2f}x > {max_latency_ratio}x"
        if vec[_MEM] > lim_mem:
            return f"train memory {vec[_MEM]:,} B > {max_train_memory:,} B"
        return ""

    hits: list[tuple[int, tuple[Any, ...], list[float]]] = []
    within = 0
    half = max(1, n_axes // 2)
    for g in glob_ids:
        glob = ds.globals[g]
        ref_choice = tuple(ax.options[0] for ax in axes)
        ref_spec = adapter.make_spec(base, glob, ref_choice)
        bottom = _bottom_count(ds, adapter, ref_spec)
        ref_vec, deltas = _option_deltas(costing, adapter, base, glob, axes, bottom)
        # additivity check on the far corner of the space
        far = tuple(ax.options[-1] for ax in axes)
        exact = costing.vector(adapter.make_spec(base, glob, far), bottom)
        summed = [r + sum(d[-1][j] for d in deltas) for j, r in enumerate(ref_vec)]
        if not all(_close(a, b) for a, b in zip(exact, summed, strict=True)):
            raise RuntimeError(f"cost of {ds.family} specs is not additive over stages ({exact} != {summed})")

        left = _combos(axes, deltas, range(half), ref_vec[mi], mi)
        right = _combos(axes, deltas, range(half, n_axes), 0, mi)
        right.sort(key=operator.itemgetter(1))
        keys = [r[1] for r in right]
        for lidx, lval, ldep in left:
            a = bisect.bisect_left(keys, lo_m - eps - lval)
            b = bisect.bisect_right(keys, hi_m + eps - lval)
            within += b - a
            for ridx, _rval, rdep in right[a:b]:
                if not ordered(ldep + rdep):
                    continue
                vec = ref_vec
                for k, i in enumerate(lidx + ridx):
                    vec = list(map(operator.add, vec, deltas[k][i]))
                if not (
                    vec[_PARAMS] <= lim_params
                    and vec[_ACTS] <= lim_acts
                    and vec[_LAT] <= lim_lat
                    and vec[_MEM] <= lim_mem
                ):
                    continue
                choice = tuple(axes[k].options[i] for k, i in enumerate(lidx + ridx))
                hits.append((g, choice, vec))

    sort_key = _sort_key(sort, mi, target)
    hits.sort(key=sort_key)
    feasible = len(hits)
    enumerated = len(glob_ids) * math.prod(len(a.options) for a in axes)
    constraints = {
        "order": order,
        "min_blocks": lo_blocks,
        "max_blocks": hi_blocks,
        "max_params": max_params,
        "max_activations_ratio": max_activations_ratio,
        "stems": sorted({ds.stem_codes[g] for g in glob_ids}),
        "max_latency_ratio": max_latency_ratio,
        "max_train_memory": max_train_memory,
        "batch_size": batch_size,
    }
    space_path = str(ds.path) if ds.path else None
    if not hits:
        raise InfeasibleError(
            f"no candidate in {space_path or 'the design space'} satisfies the constraints "
            f"({enumerated:,} enumerated, {within:,} within ±{tolerance:g}% {match}); "
            "loosen --tolerance or the constraints"
        )

    def build(spec: Spec, rank: int | None, note: str = "", vec: list[float] | None = None) -> Candidate:
        bottom = _bottom_count(ds, adapter, spec)
        if vec is None:
            vec = costing.vector(spec, bottom)
        depths = adapter.depths(spec)
        name = spec_name(spec)
        if rank is None and not note:  # a reference outside the feasible set: say why
            note = violation(vec, tuple(depths))
        return Candidate(
            spec=spec,
            id=spec.id,
            name=name,
            stem=adapter.stem_code(spec),
            depths=depths,
            macs=int(vec[_MACS]),
            flops=int(vec[_FLOPS]),
            params=int(vec[_PARAMS]),
            conv_params=int(vec[_CONV_PARAMS]),
            activations=int(vec[_ACTS]),
            error=vec[mi] / target - 1,
            macs_ratio=vec[_MACS] / base_vec[_MACS],
            flops_ratio=vec[_FLOPS] / base_vec[_FLOPS],
            params_ratio=vec[_PARAMS] / base_vec[_PARAMS],
            activations_ratio=vec[_ACTS] / base_vec[_ACTS],
            bh_score=vec[_BOTTOM] / vec[_FLOPS],
            blocks_before=sum(depths[:bottom]),
            blocks_after=sum(depths[bottom:]),
            is_base=spec == base,
            is_paper=name is not None and spec != base,
            rank=rank,
            latency=vec[_LAT] if table is not None else None,
            latency_ratio=vec[_LAT] / base_vec[_LAT] if table is not None and base_vec[_LAT] else None,
            train_memory=int(vec[_MEM]) if costing.need_memory else None,
            note=note,
        )

    shown = hits if top is None else hits[:top]
    candidates = [
        build(adapter.make_spec(base, ds.globals[g], choice), i + 1, vec=vec)
        for i, (g, choice, vec) in enumerate(shown)
    ]
    base_row = build(base, None, "base")

    references = []
    shown_ids = {c.id for c in candidates}
    base_name = spec_name(base)
    for name, ref in NAMED_SPECS.items():
        if base_name is None or name != f"bh-{base_name}" or ref.id in shown_ids:
            continue
        rank, note = _locate(ref, ds, adapter, base, axes, glob_ids, hits)
        references.append(build(ref, rank, note))

    return SolveResult(
        base=base_row,
        input_size=size,
        match=match,
        tolerance=float(tolerance),
        sort=sort,
        space_path=space_path,
        space_description=ds.description,
        enumerated=enumerated,
        within_tolerance=within,
        feasible=feasible,
        candidates=candidates,
        references=references,
        constraints=constraints,
        profile=str(profile) if profile is not None else None,
    )


def _combos(axes: list[Axis], deltas: list[list[list[float]]], ks: range, start: float, mi: int):
    """Every combination of the options of axes ``ks``: (option indices, matched cost, depths)."""
    columns = [[(i, deltas[k][i][mi], axes[k].depths[i]) for i in range(len(axes[k].options))] for k in ks]
    out = []
    for combo in itertools.product(*columns):
        idx = tuple(c[0] for c in combo)
        out.append((idx, start + sum(c[1] for c in combo), tuple(c[2] for c in combo)))
    return out


def _order_check(order: str, base_depths: Sequence[int], bottom: int):
    """A predicate on a candidate's depths tuple for the ordering constraint (see the module docstring)."""
    base_depths = tuple(base_depths)
    n = len(base_depths)
    base_before = sum(base_depths[:bottom])
    base_suffix = [sum(base_depths[k:]) for k in range(n)]

    if order == "any":
        return lambda depths: True
    if order == "split":
        base_after = base_suffix[bottom] if bottom < n else 0

        def split(depths: tuple[int, ...]) -> bool:
            before, after = sum(depths[:bottom]), sum(depths[bottom:])
            return before >= base_before and after <= base_after and depths != base_depths

        return split

    def bottom_heavy(depths: tuple[int, ...]) -> bool:
        if depths == base_depths or sum(depths[:bottom]) < base_before:
            return False
        tail = 0
        for k in range(n - 1, bottom - 1, -1):
            tail += depths[k]
            if tail > base_suffix[k]:
                return False
        return True

    return bottom_heavy


def _sort_key(sort: str, mi: int, target: float):
    def err(h):
        return abs(h[2][mi] / target - 1)

    def bh(h):
        return -h[2][_BOTTOM] / h[2][_FLOPS]

    keys = {
        "error": lambda h: (round(err(h), 3), bh(h), err(h)),
        "bh": lambda h: (bh(h), err(h)),
        "params": lambda h: (h[2][_PARAMS], err(h)),
        "activations": lambda h: (h[2][_ACTS], err(h)),
        "flops": lambda h: (h[2][_FLOPS], err(h)),
        "macs": lambda h: (h[2][_MACS], err(h)),
        "latency": lambda h: (h[2][_LAT], err(h)),
        "memory": lambda h: (h[2][_MEM], err(h)),
    }
    return keys[sort]


def _locate(ref, ds, adapter, base, axes, glob_ids, hits) -> tuple[int | None, str]:
    """Rank of a named spec among the feasible hits, or why it is not there."""
    choice = adapter.choice_of(ref)
    if choice is None:
        return None, "not in the design space (blocks differ between branches)"
    if not all(c in ax.options for c, ax in zip(choice, ds.axes, strict=True)):
        return None, "not in the design space (block counts outside its ranges)"
    if not all(c in ax.options for c, ax in zip(choice, axes, strict=True)):
        return None, "excluded by the min/max blocks"
    globs = [g for g in range(len(ds.globals)) if adapter.make_spec(base, ds.globals[g], choice) == ref]
    if not globs:
        return None, "not in the design space (its widths or stem differ from the space's)"
    if globs[0] not in glob_ids:
        return None, "excluded by --stems"
    for i, (g, c, _vec) in enumerate(hits):
        if g == globs[0] and c == choice:
            return i + 1, ""
    return None, ""  # the violated constraint is filled in by build()


__all__ = [
    "CSV_FIELDS",
    "Candidate",
    "DesignSpace",
    "MATCH_KEYS",
    "ORDERS",
    "SORT_KEYS",
    "SolveResult",
    "csv_rows",
    "random_candidates",
    "default_space_path",
    "resolve_space_path",
    "load_space",
    "solve",
]

"""Backbone specs: the single currency of bhsearch.

A spec is a frozen dataclass that fully describes a backbone. The cost model, the builder,
the solver, a tuning trial and the exporter all take one. Specs round-trip through
dicts/JSON/YAML and have a short, stable, parseable id::

    resnet:bottleneck:k7s2p:3-4-6-3                 # ResNet-50
    resnet:bottleneck:k3s1p:7-6-2-1:s2-2-2-2        # BH-ResNet-50 (paper Table 4)
    hrnet:w32:s22:4b64:1x4.4:4x4.4.4:3x4.4.4.4      # HRNet-W32

This module imports neither torch nor numpy.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

from bhsearch.errors import UsageError

BLOCK_TYPES = ("basic", "bottleneck")
EXPANSION = {"basic": 1, "bottleneck": 4}


# Sane caps: far above any real backbone, low enough that cost, solver and builder answer in well
# under a second for any spec that passes (a 10**20-block stage would otherwise never return).
MAX_STAGES = 16
MAX_BLOCKS = 1000  # blocks per stage / branch, HRNet modules per stage
MAX_WIDTH = 65536  # channels
MAX_INPUT_SIDE = 16384  # pixels, for WIDTHxHEIGHT sizes


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UsageError(msg)


def _int_field(value: Any, what: str, lo: int, hi: int) -> int:
    """An integer (``True`` is not one) in ``[lo, hi]``."""
    _check(isinstance(value, int) and not isinstance(value, bool), f"{what} must be an integer, got {value!r}")
    _check(lo <= value <= hi, f"{what} must be from {lo} to {hi}, got {value}")
    return value


def _capped(values: tuple[int, ...], what: str, lo: int, hi: int) -> None:
    _check(len(values) <= MAX_STAGES, f"{what}: at most {MAX_STAGES} entries, got {len(values)}")
    for v in values:
        _check(lo <= v <= hi, f"{what} must be from {lo} to {hi}, got {v}")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise UsageError(f"{what} must be a list of integers, got {value!r}") from None
    for v in out:
        _check(isinstance(v, int) and not isinstance(v, bool), f"{what} must be integers, got {value!r}")
    return out


def _dashed(values: tuple[int, ...], sep: str = "-") -> str:
    return sep.join(str(v) for v in values)


# --------------------------------------------------------------------------- ResNet


@dataclass(frozen=True)
class ResNetSpec:
    """A ResNet-family backbone.

    ``widths`` are the bottleneck (3x3) widths per stage; a stage's output has
    ``width * expansion`` channels (4 for bottleneck, 1 for basic blocks). ``strides``
    apply to the first block of each stage (torchvision puts it on the 3x3 conv).
    The stem is one ``stem_kernel`` conv (or, with ``deep_stem``, three 3x3 convs of
    widths ``stem_width/2, stem_width/2, stem_width``), BN, ReLU, then an optional
    3x3 max-pool of stride 2.
    """

    family: ClassVar[str] = "resnet"

    block: str = "bottleneck"
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem_width: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True
    deep_stem: bool = False

    def __post_init__(self) -> None:
        for name in ("blocks", "widths", "strides"):
            object.__setattr__(self, name, _int_tuple(getattr(self, name), f"resnet {name}"))
        _check(self.block in BLOCK_TYPES, f"resnet block must be one of {BLOCK_TYPES}, got {self.block!r}")
        n = len(self.blocks)
        _check(n >= 1, "resnet needs at least one stage")
        _check(
            len(self.widths) == n and len(self.strides) == n,
            f"resnet blocks, widths and strides must have the same length "
            f"(got {len(self.blocks)}, {len(self.widths)}, {len(self.strides)})",
        )
        _check(all(b >= 1 for b in self.blocks), f"every stage needs at least one block, got {self.blocks}")
        _check(all(w >= 1 for w in self.widths), f"widths must be positive, got {self.widths}")
        _capped(self.blocks, "resnet blocks per stage", 1, MAX_BLOCKS)
        _capped(self.widths, "resnet widths", 1, MAX_WIDTH)
        _check(all(s in (1, 2) for s in self.strides), f"stage strides must be 1 or 2, got {self.strides}")
        _int_field(self.stem_width, "stem_width", 2, MAX_WIDTH)
        _int_field(self.stem_kernel, "stem_kernel", 1, 7)
        _int_field(self.stem_stride, "stem_stride", 1, 2)
        _check(self.stem_kernel in (1, 3, 5, 7), f"stem_kernel must be 1, 3, 5 or 7, got {self.stem_kernel}")
        _check(self.stem_stride in (1, 2), f"stem_stride must be 1 or 2, got {self.stem_stride}")
        _check(isinstance(self.stem_pool, bool), "stem_pool must be true or false")
        _check(isinstance(self.deep_stem, bool), "deep_stem must be true or false")

    # derived ------------------------------------------------------------
    @property
    def expansion(self) -> int:
        return EXPANSION[self.block]

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each stage's output feature map."""
        return tuple(w * self.expansion for w in self.widths)

    @property
    def stem_reduction(self) -> int:
        return self.stem_stride * (2 if self.stem_pool else 1)

    @property
    def out_strides(self) -> tuple[int, ...]:
        """Output stride (reduction w.r.t. the input) of each stage."""
        out, r = [], self.stem_reduction
        for s in self.strides:
            r *= s
            out.append(r)
        return tuple(out)

    @property
    def id(self) -> str:
        stem = ("deep" if self.deep_stem else f"k{self.stem_kernel}") + f"s{self.stem_stride}"
        stem += "p" if self.stem_pool else ""
        stem += f"c{self.stem_width}" if self.stem_width != 64 else ""
        parts = ["resnet", self.block, stem, _dashed(self.blocks)]
        if self.widths != _default_resnet_widths(len(self.blocks)):
            parts.append("w" + _dashed(self.widths))
        if self.strides != _default_resnet_strides(len(self.blocks)):
            parts.append("s" + _dashed(self.strides))
        return ":".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("blocks", "widths", "strides"):
            d[k] = list(d[k])
        return {"family": self.family, **d}

    def replace(self, **changes: Any) -> ResNetSpec:
        return dataclasses.replace(self, **changes)

    def scaled(self, factor: float) -> ResNetSpec:
        """The same topology with every width multiplied by ``factor`` (for quick CPU work)."""
        return self.replace(
            widths=tuple(_scale(w, factor) for w in self.widths), stem_width=max(2, _scale(self.stem_width, factor))
        )

    def __str__(self) -> str:
        return spec_name(self) or self.id


def _default_resnet_widths(n: int) -> tuple[int, ...]:
    return tuple(64 * 2**i for i in range(n))


def _default_resnet_strides(n: int) -> tuple[int, ...]:
    return (1,) + (2,) * (n - 1)


def _scale(w: int, factor: float) -> int:
    return max(1, int(round(w * factor)))


_RESNET_STEM = re.compile(r"^(?:k(?P<k>\d+)|(?P<deep>deep))s(?P<s>\d+)(?P<p>p?)(?:c(?P<c>\d+))?$")


def _parse_resnet_id(text: str) -> ResNetSpec:
    parts = text.split(":")
    _check(len(parts) >= 4, f"resnet id needs at least 4 ':'-separated parts: {text!r}")
    _, block, stem, blocks, *rest = parts
    m = _RESNET_STEM.match(stem)
    _check(m is not None, f"bad stem code {stem!r} in {text!r} (expected e.g. k7s2p or deeps2p)")
    blk = _parse_dashed(blocks, text)
    kw: dict[str, Any] = {
        "block": block,
        "blocks": blk,
        "stem_kernel": int(m["k"]) if m["k"] else 3,
        "deep_stem": bool(m["deep"]),
        "stem_stride": int(m["s"]),
        "stem_pool": bool(m["p"]),
        "stem_width": int(m["c"]) if m["c"] else 64,
        "widths": _default_resnet_widths(len(blk)),
        "strides": _default_resnet_strides(len(blk)),
    }
    seen: set[str] = set()
    for part in rest:
        _check(part[:1] in ("w", "s") and len(part) > 1, f"bad part {part!r} in {text!r}")
        what = "widths" if part[0] == "w" else "strides"
        _check(part[0] not in seen, f"{what} given twice in {text!r}")
        seen.add(part[0])
        kw["widths" if part[0] == "w" else "strides"] = _parse_dashed(part[1:], text)
    return ResNetSpec(**kw)


def _parse_dashed(text: str, whole: str, sep: str = "-") -> tuple[int, ...]:
    values = text.split(sep)
    _check(len(values) <= MAX_STAGES, f"at most {MAX_STAGES} values, got {len(values)} in {whole!r}")
    for v in values:
        _check(len(v.strip()) <= 9, f"number {v.strip()[:12]}... is too large in {whole[:80]!r}")
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise UsageError(f"expected integers separated by {sep!r}, got {text!r} in {whole!r}") from None


# --------------------------------------------------------------------------- HRNet


@dataclass(frozen=True)
class HRStage:
    """One HRNet stage (2, 3 or 4): ``modules`` repeated modules, each with
    ``blocks[i]`` basic blocks on branch ``i`` of width ``widths[i]``, then fusion."""

    modules: int
    blocks: tuple[int, ...]
    widths: tuple[int, ...]
    block: str = "basic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", _int_tuple(self.blocks, "hrnet stage blocks"))
        object.__setattr__(self, "widths", _int_tuple(self.widths, "hrnet stage widths"))
        _int_field(self.modules, "hrnet stage modules", 1, MAX_BLOCKS)
        _capped(self.blocks, "hrnet blocks per branch", 1, MAX_BLOCKS)
        _capped(self.widths, "hrnet widths", 1, MAX_WIDTH)
        _check(len(self.blocks) == len(self.widths), "hrnet stage blocks and widths must have the same length")
        _check(all(b >= 1 for b in self.blocks), f"every branch needs at least one block, got {self.blocks}")
        _check(all(w >= 1 for w in self.widths), f"hrnet widths must be positive, got {self.widths}")
        _check(self.block in BLOCK_TYPES, f"hrnet stage block must be one of {BLOCK_TYPES}, got {self.block!r}")

    @property
    def branches(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class HRNetSpec:
    """An HRNet-family backbone (timm's ``HighResolutionNet`` trunk, no classification head).

    Stem: two 3x3 convs of ``stem_width`` with strides ``stem_strides``. Stage 1: one
    branch of ``stage1_blocks`` blocks (``stage1_block``, width ``stage1_width``). With
    ``pool_after_stage1`` a 3x3 max-pool of stride 2 follows stage 1 (the bottom-heavy
    reading of the paper's Table 4). Stages 2.. each add one branch at twice the stride.
    The outputs are the final branches at strides 4, 8, 16, 32 (for the standard stem).
    """

    family: ClassVar[str] = "hrnet"

    stages: tuple[HRStage, ...] = ()
    stem_width: int = 64
    stem_strides: tuple[int, ...] = (2, 2)
    pool_after_stage1: bool = False
    stage1_blocks: int = 4
    stage1_width: int = 64
    stage1_block: str = "bottleneck"

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, HRStage) else HRStage(**s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "stem_strides", _int_tuple(self.stem_strides, "hrnet stem_strides"))
        _check(len(stages) >= 1, "hrnet needs at least one multi-branch stage")
        for i, st in enumerate(stages):
            _check(
                st.branches == i + 2,
                f"hrnet stage {i + 2} must have {i + 2} branches, got {st.branches}",
            )
            if i:
                _check(
                    st.widths[: i + 1] == stages[i - 1].widths,
                    f"hrnet stage {i + 2} must keep the branch widths of stage {i + 1} "
                    f"({stages[i - 1].widths}), got {st.widths}",
                )
        _check(len(self.stem_strides) == 2, "hrnet stem_strides must have two entries")
        _check(all(s in (1, 2) for s in self.stem_strides), f"stem strides must be 1 or 2, got {self.stem_strides}")
        _int_field(self.stem_width, "hrnet stem_width", 1, MAX_WIDTH)
        _int_field(self.stage1_width, "hrnet stage1_width", 1, MAX_WIDTH)
        _int_field(self.stage1_blocks, "hrnet stage1_blocks", 1, MAX_BLOCKS)
        _check(len(stages) <= MAX_STAGES, f"hrnet: at most {MAX_STAGES} stages, got {len(stages)}")
        _check(self.stage1_block in BLOCK_TYPES, f"stage1_block must be one of {BLOCK_TYPES}")
        _check(isinstance(self.pool_after_stage1, bool), "pool_after_stage1 must be true or false")

    @property
    def branch_widths(self) -> tuple[int, ...]:
        return self.stages[-1].widths

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each final branch (``width * expansion`` of the last stage's block)."""
        expansion = EXPANSION[self.stages[-1].block]
        return tuple(w * expansion for w in self.branch_widths)

    @property
    def stage1_channels(self) -> int:
        return self.stage1_width * EXPANSION[self.stage1_block]

    @property
    def out_strides(self) -> tuple[int, ...]:
        base = self.stem_strides[0] * self.stem_strides[1] * (2 if self.pool_after_stage1 else 1)
        return tuple(base * 2**i for i in range(len(self.branch_widths)))

    @property
    def id(self) -> str:
        w = self.branch_widths
        wcode = f"w{w[0]}" if w == tuple(w[0] * 2**i for i in range(len(w))) else "w" + _dashed(w)
        stem = "s" + "".join(str(s) for s in self.stem_strides) + ("p" if self.pool_after_stage1 else "")
        stem += f"c{self.stem_width}" if self.stem_width != 64 else ""
        s1 = f"{self.stage1_blocks}{'b' if self.stage1_block == 'bottleneck' else 'a'}{self.stage1_width}"
        stages = [
            f"{st.modules}x{_dashed(st.blocks, '.')}" + ("" if st.block == "basic" else "b") for st in self.stages
        ]
        return ":".join(["hrnet", wcode, stem, s1, *stages])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stem_strides"] = list(d["stem_strides"])
        d["stages"] = [
            {"modules": s.modules, "blocks": list(s.blocks), "widths": list(s.widths), "block": s.block}
            for s in self.stages
        ]
        return {"family": self.family, **d}

    def replace(self, **changes: Any) -> HRNetSpec:
        return dataclasses.replace(self, **changes)

    def scaled(self, factor: float) -> HRNetSpec:
        """The same topology with every width multiplied by ``factor``."""
        stages = tuple(dataclasses.replace(s, widths=tuple(_scale(w, factor) for w in s.widths)) for s in self.stages)
        return self.replace(
            stages=stages,
            stem_width=_scale(self.stem_width, factor),
            stage1_width=_scale(self.stage1_width, factor),
        )

    def __str__(self) -> str:
        return spec_name(self) or self.id


_HR_S1 = re.compile(r"^(?P<n>\d+)(?P<b>[ab])(?P<w>\d+)$")
_HR_STEM = re.compile(r"^s(?P<a>[12])(?P<b>[12])(?P<p>p?)(?:c(?P<c>\d+))?$")
_HR_STAGE = re.compile(r"^(?P<m>\d+)x(?P<blocks>[\d.]+)(?P<b>b?)$")


def _parse_hrnet_id(text: str) -> HRNetSpec:
    parts = text.split(":")
    _check(len(parts) >= 5, f"hrnet id needs at least 5 ':'-separated parts: {text!r}")
    _, wcode, stem, s1, *stage_codes = parts
    _check(len(stage_codes) < MAX_STAGES, f"hrnet id has {len(stage_codes)} stages, at most {MAX_STAGES - 1}")
    _check(wcode.startswith("w") and len(wcode) > 1, f"bad width code {wcode!r} in {text!r}")
    ms, m1 = _HR_STEM.match(stem), _HR_S1.match(s1)
    _check(ms is not None, f"bad stem code {stem!r} in {text!r} (expected e.g. s22 or s12p)")
    _check(m1 is not None, f"bad stage-1 code {s1!r} in {text!r} (expected e.g. 4b64)")
    widths = _parse_dashed(wcode[1:], text)
    nbranch = len(stage_codes) + 1
    if len(widths) == 1:
        widths = tuple(widths[0] * 2**i for i in range(nbranch))
    _check(len(widths) == nbranch, f"{text!r} has {nbranch} branches but {len(widths)} widths")
    stages = []
    for i, code in enumerate(stage_codes):
        m = _HR_STAGE.match(code)
        _check(m is not None, f"bad stage code {code!r} in {text!r} (expected e.g. 4x4.4.4)")
        blocks = _parse_dashed(m["blocks"], text, sep=".")
        stages.append(HRStage(int(m["m"]), blocks, widths[: i + 2], "bottleneck" if m["b"] else "basic"))
    return HRNetSpec(
        stages=tuple(stages),
        stem_width=int(ms["c"]) if ms["c"] else 64,
        stem_strides=(int(ms["a"]), int(ms["b"])),
        pool_after_stage1=bool(ms["p"]),
        stage1_blocks=int(m1["n"]),
        stage1_block="bottleneck" if m1["b"] == "b" else "basic",
        stage1_width=int(m1["w"]),
    )


def hrnet(width: int, stage_blocks: tuple[tuple[int, int], ...] = ((1, 4), (4, 4), (3, 4)), **kw: Any) -> HRNetSpec:
    """An HRNet with branch widths ``width * 2**i`` and ``(modules, blocks-per-branch)`` per stage."""
    stages = tuple(
        HRStage(m, (b,) * (i + 2), tuple(width * 2**j for j in range(i + 2))) for i, (m, b) in enumerate(stage_blocks)
    )
    return HRNetSpec(stages=stages, **kw)


Spec = Union[ResNetSpec, HRNetSpec]
FAMILIES: dict[str, type] = {"resnet": ResNetSpec, "hrnet": HRNetSpec}

# --------------------------------------------------------------------------- named specs

NAMED_SPECS: dict[str, Spec] = {
    "resnet18": ResNetSpec(block="basic", blocks=(2, 2, 2, 2)),
    "resnet34": ResNetSpec(block="basic", blocks=(3, 4, 6, 3)),
    "resnet50": ResNetSpec(blocks=(3, 4, 6, 3)),
    "resnet101": ResNetSpec(blocks=(3, 4, 23, 3)),
    "hrnet18": hrnet(18),
    "hrnet32": hrnet(32),
    "hrnet48": hrnet(48),
    # Paper Table 4: 3x3 stem of stride 1, max-pool, stride 2 in the first block of every stage.
    "bh-resnet50": ResNetSpec(blocks=(7, 6, 2, 1), strides=(2, 2, 2, 2), stem_kernel=3, stem_stride=1),
    # Paper Table 4, read as: stem s1 + s2, stage 1 at stride 2, max-pool after stage 1
    # (docs/bottom-heavy.md explains the reading and compares its cost with the paper's).
    "bh-hrnet18": hrnet(18, ((1, 4), (4, 3), (3, 2)), stem_strides=(1, 2), pool_after_stage1=True, stage1_width=36),
    "bh-hrnet32": hrnet(32, ((1, 7), (4, 2), (3, 1)), stem_strides=(1, 2), pool_after_stage1=True),
}

SPEC_DESCRIPTIONS: dict[str, str] = {
    "resnet18": "torchvision ResNet-18 trunk",
    "resnet34": "torchvision ResNet-34 trunk",
    "resnet50": "torchvision ResNet-50 trunk",
    "resnet101": "torchvision ResNet-101 trunk",
    "hrnet18": "timm HRNet-W18 trunk",
    "hrnet32": "timm HRNet-W32 trunk",
    "hrnet48": "timm HRNet-W48 trunk",
    "bh-resnet50": "paper's BH-ResNet50 (Table 4)",
    "bh-hrnet18": "paper's BH-HRNet18 (Table 4, pool after stage 1)",
    "bh-hrnet32": "paper's BH-HRNet32 (Table 4, pool after stage 1, 7 blocks in stage 2)",
}


def spec_name(spec: Spec) -> str | None:
    """The registered name of ``spec``, or None."""
    for name, s in NAMED_SPECS.items():
        if s == spec:
            return name
    return None


def spec_from_dict(data: dict[str, Any]) -> Spec:
    """Build a spec from ``to_dict()`` output (unknown keys are an error)."""
    if not isinstance(data, dict):
        raise UsageError(f"a spec must be a mapping, got {type(data).__name__}")
    data = dict(data)
    if "spec" in data and isinstance(data["spec"], dict):  # e.g. an exported spec.json with metadata
        data = dict(data["spec"])
    family = data.pop("family", None)
    _check(family in FAMILIES, f"spec 'family' must be one of {sorted(FAMILIES)}, got {family!r}")
    cls = FAMILIES[family]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    _check(not unknown, f"unknown {family} spec field(s) {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise UsageError(f"invalid {family} spec: {exc}") from None


def parse_spec_id(text: str) -> Spec:
    _check(len(text) <= 1000, f"spec id too long ({len(text)} characters): {text[:60]!r}...")
    big = re.search(r"\d{10,}", text)
    _check(big is None, f"number {big[0][:12] if big else ''}... is too large in spec id {text[:80]!r}")
    family = text.split(":", 1)[0]
    if family == "resnet":
        return _parse_resnet_id(text)
    if family == "hrnet":
        return _parse_hrnet_id(text)
    raise UsageError(f"unknown spec family {family!r} in id {text!r}")


def get_spec(ref: Spec | str | Path | dict[str, Any]) -> Spec:
    """Resolve a spec from a spec object, a registered name, a spec id, a dict, or a JSON/YAML file."""
    if isinstance(ref, (ResNetSpec, HRNetSpec)):
        return ref
    if isinstance(ref, dict):
        return spec_from_dict(ref)
    text = str(ref).strip()
    key = text.lower().replace("_", "-")
    if key in NAMED_SPECS:
        return NAMED_SPECS[key]
    if ":" in text and text.split(":", 1)[0] in FAMILIES:
        return parse_spec_id(text)
    path = Path(text)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.is_file():
        return spec_from_dict(load_mapping(path))
    close = difflib.get_close_matches(key, list(NAMED_SPECS), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UsageError(
        f"unknown spec {text!r}{hint}; use a name ({', '.join(NAMED_SPECS)}), a spec id, or a JSON/YAML file"
    )


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML mapping (``bhsearch.safeload``: no alias bombs, bounded nesting); errors name the file."""
    from bhsearch.safeload import load_json, load_yaml

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, expected a JSON or YAML file")
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = load_json(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        except ValueError as exc:
            raise UsageError(f"{path}: invalid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UsageError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def save_spec(spec: Spec, path: str | Path, **metadata: Any) -> Path:
    """Write ``spec`` as JSON (with its id, name and any metadata) atomically and return the path."""
    path = Path(path)
    payload = {"id": spec.id, "name": spec_name(spec), **metadata, "spec": spec.to_dict()}
    from bhsearch.fileio import atomic_write_text

    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------- input sizes

_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_input_size(text: str | tuple[int, int] | int) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (e.g. ``640x512``) into ``(width, height)``."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = (text, text)
    if isinstance(text, (tuple, list)):
        if len(text) == 2 and all(isinstance(v, int) and v > 0 for v in text):
            return int(text[0]), int(text[1])
        raise UsageError(f"input size must be two positive integers, got {text!r}")
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"input size must be WIDTHxHEIGHT, e.g. 640x512; got {text!r}")
    if len(m[1]) > 6 or len(m[2]) > 6:
        raise UsageError(f"input size must be at most {MAX_INPUT_SIDE} px a side, got {str(text)[:40]!r}")
    w, h = int(m[1]), int(m[2])
    if w <= 0 or h <= 0:
        raise UsageError(f"input size must be positive, got {text!r}")
    if max(w, h) > MAX_INPUT_SIDE:
        raise UsageError(f"input size must be at most {MAX_INPUT_SIDE} px a side, got {w}x{h}")
    return w, h


__all__ = [
    "BLOCK_TYPES",
    "HRNetSpec",
    "HRStage",
    "NAMED_SPECS",
    "ResNetSpec",
    "Spec",
    "get_spec",
    "hrnet",
    "load_mapping",
    "parse_input_size",
    "parse_spec_id",
    "save_spec",
    "spec_from_dict",
    "spec_name",
]

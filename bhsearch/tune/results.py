"""The tidy results table of a study: one row per trial, written as CSV and Parquet.

Built from the files Tune leaves in the run folder (``trial_*/params.json``, ``result.json``,
``error.txt``) and bhsearch's own trial record (``tune_state.json``: statuses, trials that never
started), so it also works for an interrupted study and needs no running Ray. Only JSON is read.
Latency comes from ``latency.json`` (``bhsearch.tune.latency``, measured by the driver after the trials, or
predicted from a profile table); ``weights`` is the folder, relative to the run folder, of the trial's
fine-tuned detector (``bhsearch.tune.state.trial_weights``), empty when it has none.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError

#: Columns of ``results.csv`` / ``results.parquet``, in order.
COLUMNS = [
    "rank",
    "trial_id",
    "spec_id",
    "role",
    "repeat",
    "family",
    "blocks",
    "stem",
    "params",
    "macs",
    "flops",
    "activations",
    "bh_share",
    "bottom_heavy",
    "latency_ms",
    "latency_spread_pct",
    "latency_source",
    "top1",
    "AP50_tiny",
    "AP50_tiny1",
    "AP50_tiny2",
    "AP50_tiny3",
    "AP50_small",
    "AP25_tiny",
    "AP75_tiny",
    "AP_easy",
    "AP_medium",
    "AP_hard",
    "AP50",
    "AP",
    "AP75",
    "AP_vt",
    "AP_t",
    "AP_s",
    "AP_m",
    "metric_mean",
    "metric_seeds",
    "ci95_low",
    "ci95_high",
    "vs_base",
    "in_best_set",
    "search_score",
    "epochs",
    "max_epochs",
    "status",
    "error",
    "train_time_s",
    "weights",
]
#: ``top1`` and every metric a study may rank by (``bhsearch.tune.study.DETECTION_METRICS``), TinyPerson's,
#: WiderFace's and AI-TOD's; a study fills those of its fine-tuning data.
METRIC_COLUMNS = ("top1", *(c for c in COLUMNS if c.startswith("AP")))
#: Numeric noise-floor columns (``with_noise_floor``).
NOISE_NUMBERS = ("metric_mean", "metric_seeds", "ci95_low", "ci95_high")
STATUS_ORDER = {"completed": 0, "stopped": 1, "unfinished": 2, "error": 3}


def _read_results(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
    return rows


def _error_line(trial_dir: Path) -> str | None:
    path = trial_dir / "error.txt"
    if not path.is_file():
        return None
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines:
        return "error"
    for line in reversed(lines):
        if ":" in line and not line.startswith(("File ", "^", "~")):
            return line[:500]
    return lines[-1][:500]


def bottom_heavy_share(cost: Any) -> float:
    """Share of paper FLOPs spent before the third down-sampling (output stride <= 8)."""
    width, height = cost.input_size
    early = sum(s.flops for s in cost.stages if s.out_shape[1] and height / s.out_shape[1] <= 8)
    return early / cost.flops if cost.flops else 0.0


def _status(tune_status: str | None, error: str | None, epochs: int, max_epochs: int) -> str:
    if error or tune_status == "ERROR":
        return "error"
    if tune_status in ("RUNNING", "PENDING", "PAUSED"):
        return "unfinished"
    return "completed" if epochs >= max_epochs else "stopped"


def _spec_columns(spec_id: str, input_size: str, base_share: float) -> dict[str, Any]:
    from bhsearch.cost import count
    from bhsearch.spec import get_spec

    spec = get_spec(spec_id)
    cost = count(spec, input_size)
    parts = spec.id.split(":")
    if spec.family == "resnet":
        blocks = "-".join(str(b) for b in spec.blocks)
    else:
        from bhsearch.tune.runner import genome

        blocks = "-".join(str(g) for g in genome(spec)[1])
    share = bottom_heavy_share(cost)
    return {
        "family": spec.family,
        "blocks": blocks,
        "stem": parts[2] if len(parts) > 2 else "",
        "params": cost.params,
        "macs": cost.macs,
        "flops": cost.flops,
        "activations": cost.activations,
        "bh_share": round(share, 6),
        "bottom_heavy": share > base_share + 1e-9,
    }


def collect_rows(run_dir: str | Path, study: Any, statuses: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One dict per trial folder of ``run_dir`` (see ``COLUMNS``)."""
    from bhsearch.cost import count
    from bhsearch.tune import state as state_mod
    from bhsearch.tune.latency import latency_entries
    from bhsearch.tune.runner import load_pool

    run_dir = Path(run_dir)
    record = _record(run_dir)
    latency = latency_entries(run_dir)
    if statuses is None and record is not None:
        statuses = state_mod.statuses(record)
    statuses = statuses or {}
    roles = {c.id: c.role for c in load_pool(run_dir)}
    base_share = bottom_heavy_share(count(study.base_spec(), study.input_size))
    rows = []
    for params_path in sorted(run_dir.glob("*/params.json")):
        trial_dir = params_path.parent
        config = json.loads(params_path.read_text())
        spec_id = config.get("spec_id")
        if not spec_id:
            continue
        results = _read_results(trial_dir / "result.json")
        last = results[-1] if results else {}
        trial_id = last.get("trial_id") or trial_dir.name.removeprefix("trial_")
        error = _error_line(trial_dir)
        epochs = int(last.get("epochs_done", 0) or 0)
        weights = state_mod.trial_weights(trial_dir)
        row: dict[str, Any] = {
            "trial_id": trial_id,
            "spec_id": spec_id,
            "role": roles.get(spec_id, "candidate"),
            "repeat": int(config.get("repeat") or 0),
            **_spec_columns(spec_id, study.input_size, base_share),
            **_latency(latency.get(spec_id), last),
            **{m: last.get(m) for m in METRIC_COLUMNS},
            "search_score": last.get("score"),  # the searcher's fidelity-aware score (bhsearch.tune.trial)
            "epochs": epochs,
            "max_epochs": study.max_epochs,
            "status": _status(statuses.get(trial_id), error, epochs, study.max_epochs),
            "error": error,
            "train_time_s": last.get("train_time_s"),
            "weights": weights.relative_to(run_dir).as_posix() if weights is not None else None,
        }
        rows.append(row)
    seen = {row["trial_id"] for row in rows}
    for pending in state_mod.pending_rows(record) if record is not None else []:
        if pending["trial_id"] in seen:
            continue
        rows.append(
            {
                "trial_id": pending["trial_id"],
                "spec_id": pending["spec_id"],
                "role": roles.get(pending["spec_id"], "candidate"),
                "repeat": pending.get("repeat", 0),
                **_spec_columns(pending["spec_id"], study.input_size, base_share),
                "epochs": 0,
                "max_epochs": study.max_epochs,
                "status": "unfinished",
            }
        )
    return rows


def _latency(entry: dict[str, Any] | None, last: dict[str, Any]) -> dict[str, Any]:
    """The latency columns of a spec: ``latency.json``'s entry; else, in run folders of older bhsearch versions,
    the figure a trial measured while other trials trained (``latency_source`` ``in-trial``)."""
    if entry is not None:
        return {k: entry.get(k) for k in ("latency_ms", "latency_spread_pct", "latency_source")}
    if last.get("latency_ms") is not None:
        return {"latency_ms": last["latency_ms"], "latency_spread_pct": None, "latency_source": "in-trial"}
    return {"latency_ms": None, "latency_spread_pct": None, "latency_source": None}


def _record(run_dir: Path) -> dict[str, Any] | None:
    """``tune_state.json`` of ``run_dir`` (None when absent or unreadable: the table is still built)."""
    from bhsearch.tune import state as state_mod

    if not (run_dir / state_mod.STATE_FILE).is_file():
        return None
    try:
        return state_mod.load_state(run_dir)
    except UsageError:
        return None


def _partial(run_dir: Path) -> bool:
    """True when the study's last run was interrupted (or is still running): its results are partial."""
    record = _record(run_dir)
    runs = record.get("runs") if record else None
    return bool(runs) and runs[-1].get("outcome") != "complete"


def results_table(rows: list[dict[str, Any]]):
    """A pandas DataFrame of ``rows`` ranked: completed trials by their metric, then trials stopped by ASHA by the
    epoch they reached and their metric there (both: ``search_score``; ties: proxy top-1), then unfinished and
    failed trials."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    if len(df):
        df["_order"] = df["status"].map(STATUS_ORDER).fillna(9)
        df["_score"] = pd.to_numeric(df["search_score"], errors="coerce").fillna(float("-inf"))
        df["_proxy"] = pd.to_numeric(df["top1"], errors="coerce").fillna(float("-inf"))
        keys = ["_order", "_score", "_proxy", "spec_id"]  # ties on the score go to the better proxy
        df = df.sort_values(keys, ascending=[True, False, False, True], kind="stable")
        df = df.drop(columns=["_order", "_score", "_proxy"]).reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    for col in ("params", "macs", "flops", "activations", "epochs", "max_epochs"):
        df[col] = df[col].astype("int64")
    df["repeat"] = pd.to_numeric(df["repeat"], errors="coerce").fillna(0).astype("int64")
    for col in (
        "latency_ms",
        "latency_spread_pct",
        *METRIC_COLUMNS,
        *NOISE_NUMBERS,
        "search_score",
        "train_time_s",
        "bh_share",
    ):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df["bottom_heavy"] = df["bottom_heavy"].astype(bool)
    df["in_best_set"] = df["in_best_set"].fillna(False).astype(bool)
    for col in ("error", "latency_source", "weights", "vs_base"):
        df[col] = df[col].astype("object").where(df[col].notna(), None)
    return df


def reference_spec(df) -> str | None:
    """The spec the others are compared with: the base, else the first reference point."""
    for role in ("base", "reference", "paper"):
        ids = df.loc[df["role"] == role, "spec_id"]
        if len(ids):
            return str(ids.iloc[0])
    return None


def spec_means(df, metric: str) -> dict[str, list[float]]:
    """The final ``metric`` of every completed trial, grouped by spec (one value per seed)."""
    import pandas as pd

    done = df[(df["status"] == "completed") & pd.to_numeric(df[metric], errors="coerce").notna()]
    groups: dict[str, list[float]] = {}
    for spec_id, value in zip(done["spec_id"], done[metric], strict=True):
        groups.setdefault(str(spec_id), []).append(float(value))
    return groups


def with_noise_floor(df, metric: str):
    """``df`` with the noise-floor columns (``bhsearch.tune.stats``) filled for completed trials and re-ranked.

    ``metric_mean`` / ``metric_seeds``: the spec's mean final metric over its completed seeds; ``ci95_low`` /
    ``ci95_high``: its 95 % interval from the pooled seed spread, clipped to [0, 100]; ``vs_base``: ``better`` / ``worse`` / ``within
    noise`` than the base's mean (``base`` on the base's rows, empty without a noise floor); ``in_best_set``: not
    significantly worse than the top spec. Completed trials rank by ``metric_mean`` (ties: their own value).
    """
    from bhsearch.tune.stats import best_set, noise_floor

    df = df.copy()
    for col in (*NOISE_NUMBERS, "vs_base", "in_best_set"):  # recomputed from scratch (older tables lack them)
        df[col] = None if col == "vs_base" else False if col == "in_best_set" else float("nan")
    df["vs_base"] = df["vs_base"].astype("object")
    groups = spec_means(df, metric)
    floor = noise_floor(groups)
    means = {k: (sum(v) / len(v), len(v)) for k, v in groups.items()}
    best = set(best_set(means, floor))
    ref = reference_spec(df)
    words = {1: "better", -1: "worse", 0: "within noise", None: None}
    done = df["status"] == "completed"
    for i in df.index[done]:
        spec_id = str(df.at[i, "spec_id"])
        if spec_id not in means:
            continue
        mean, n = means[spec_id]
        half = floor.half_width(n)
        df.at[i, "metric_mean"], df.at[i, "metric_seeds"] = mean, n
        if half is not None:  # clipped to the range of a percentage
            df.at[i, "ci95_low"], df.at[i, "ci95_high"] = max(0.0, mean - half), min(100.0, mean + half)
        if spec_id == ref:
            df.at[i, "vs_base"] = "base"
        elif ref in means:
            df.at[i, "vs_base"] = words[floor.differs(mean, n, *means[ref])]
        df.at[i, "in_best_set"] = spec_id in best
    if len(df):
        import pandas as pd

        order = df["status"].map(STATUS_ORDER).fillna(9)
        mean_key = pd.to_numeric(df["metric_mean"], errors="coerce").fillna(float("-inf"))
        df = df.assign(_o=order, _m=mean_key).sort_values(["_o", "_m"], ascending=[True, False], kind="stable")
        df = df.drop(columns=["_o", "_m"]).reset_index(drop=True)
        df["rank"] = range(1, len(df) + 1)
    return df


def write_results(run_dir: str | Path, study: Any, statuses: dict[str, str] | None = None):
    """Write ``results.csv``, ``results.parquet`` and ``best_spec.json`` into ``run_dir``."""
    from bhsearch.fileio import atomic_write
    from bhsearch.spec import get_spec, save_spec

    run_dir = Path(run_dir)
    df = with_noise_floor(results_table(collect_rows(run_dir, study, statuses)), study.target_metric)
    atomic_write(run_dir / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(run_dir / "results.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    best_path = run_dir / "best_spec.json"
    done = df[df["status"] == "completed"]
    partial: dict[str, Any] = {}
    if _partial(run_dir):
        counts = {str(k): int(v) for k, v in df["status"].value_counts().items()}
        partial = {"partial": True, "counts": counts}  # an interrupted study: `bhsearch tune STUDY --resume`
    if len(done):
        best = done.iloc[0]
        save_spec(
            get_spec(best["spec_id"]),
            best_path,
            study=study.name,
            trial_id=best["trial_id"],
            metric=study.target_metric,
            value=_plain(best[study.target_metric]),
            input_size=study.input_size,
            **partial,
        )
    elif best_path.exists():
        best_path.unlink()
    return df


def _plain(value: Any) -> Any:
    with contextlib.suppress(AttributeError):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def load_study_of(run_dir: str | Path):
    """The study saved in ``run_dir/study.json`` by ``bhsearch tune``."""
    from bhsearch.tune.runner import STUDY_FILE
    from bhsearch.tune.study import Study

    path = Path(run_dir) / STUDY_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a study run folder (no {STUDY_FILE}); run `bhsearch tune STUDY.yaml` first")
    return Study.model_validate(json.loads(path.read_text()))


def load_results(run_dir: str | Path, refresh: bool = False):
    """The results table of ``run_dir`` (``results.parquet``, else ``results.csv``, else rebuilt)."""
    import pandas as pd

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    if not refresh:
        if (run_dir / "results.parquet").is_file():
            return _renamed(pd.read_parquet(run_dir / "results.parquet"))
        if (run_dir / "results.csv").is_file():
            return _renamed(pd.read_csv(run_dir / "results.csv"))
    return write_results(run_dir, load_study_of(run_dir))


def _renamed(df):
    """Tables written before ``score`` was renamed ``search_score`` read as the new ones."""
    return df.rename(columns={"score": "search_score"}) if "score" in df and "search_score" not in df else df


__all__ = [
    "COLUMNS",
    "bottom_heavy_share",
    "collect_rows",
    "load_results",
    "results_table",
    "spec_means",
    "with_noise_floor",
    "write_results",
]

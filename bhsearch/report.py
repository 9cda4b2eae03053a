"""Study reports: the ranked table, the best spec, and PNG plots (matplotlib, Agg backend).

Plots written into ``RUN_DIR/plots/``:

* ``ap_vs_cost.png`` — the target metric vs the costs that vary between FLOP-matched candidates:
  activations, parameters and the FLOPs relative to the base (%), Pareto front marked;
* ``ap_vs_latency.png`` — the target metric vs backbone latency (measured after the trials, or predicted);
* ``proxy_vs_final.png`` — proxy top-1 vs the final detection metric with Kendall's tau and its bootstrap
  95 % interval (how well the cheap proxy ranks the candidates);
* ``error_edf.png`` — pycls-style empirical distribution functions of the error (100 - metric)
  of bottom-heavy vs standard-like candidates.

Every trial with a metric is drawn: completed specs at their mean over seeds with the noise floor's 95 %
interval (``bhsearch.tune.stats``), stopped trials at their last rung with their own marker; the legend sits
below the axes and the titles carry the input size, the budget and the trial counts.

No torch import; pandas, matplotlib and scipy are imported inside the functions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PLOTS = ("ap_vs_cost.png", "ap_vs_latency.png", "proxy_vs_final.png", "error_edf.png")
TABLE_COLUMNS = (
    "rank",
    "arch",
    "role",
    "params",
    "activations",
    "latency_ms",
    "top1",
    "epochs",
    "status",
)
#: Columns printed right after the target metric: the spec's mean over seeds, its 95 % interval, the verdict.
NOISE_COLUMNS = ("mean (seeds)", "95 % interval", "vs base")


def pareto_front(costs: list[float], values: list[float]) -> list[bool]:
    """True for points no other point beats (cost <= and value >=, one of them strictly)."""
    flags = []
    for i, (c, v) in enumerate(zip(costs, values, strict=False)):
        dominated = any(
            (c2 <= c and v2 >= v) and (c2 < c or v2 > v)
            for j, (c2, v2) in enumerate(zip(costs, values, strict=False))
            if j != i
        )
        flags.append(not dominated)
    return flags


def kendall_tau(proxy: list[float], final: list[float]) -> tuple[float | None, float | None, int]:
    """Kendall's tau-b (and its p-value) between proxy and final scores; None with < 3 pairs."""
    from scipy.stats import kendalltau

    pairs = [(p, f) for p, f in zip(proxy, final, strict=False) if _finite(p) and _finite(f)]
    if len(pairs) < 3:
        return None, None, len(pairs)
    res = kendalltau([p for p, _ in pairs], [f for _, f in pairs])
    tau, pvalue = float(res.statistic), float(res.pvalue)
    return (None if math.isnan(tau) else tau), (None if math.isnan(pvalue) else pvalue), len(pairs)


def edf(errors: list[float]) -> tuple[list[float], list[float]]:
    """pycls' error EDF: sorted errors and the fraction of models with error <= each."""
    xs = sorted(e for e in errors if _finite(e))
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


#: Marker of each trial status in the plots (errored trials have no metric and are counted in the caption).
STATUS_STYLE = {
    "completed": {"marker": "o", "label": "completed"},
    "stopped": {"marker": "v", "label": "stopped by ASHA (metric at its last rung)"},
    "unfinished": {"marker": "s", "label": "unfinished (last reported metric)"},
}
COLORS = {True: "tab:red", False: "tab:blue"}


def plot_points(df, xcol: str, target: str, scale: float = 1.0) -> list[dict[str, Any]]:
    """What a scatter draws: one point per completed spec (its mean over seeds, with the noise floor's 95 %
    interval as ``err``), one per stopped or unfinished trial (its metric at its last epoch, no interval).

    Completed specs sit at the mean of ``xcol`` and of the metric over their seeds. Each point: ``x``, ``y``,
    ``err`` (``(below, above)`` the point, the interval clipped to the metric's range, or None), ``status``,
    ``bottom_heavy``, ``role``, ``spec_id``.
    """
    points: dict[str, dict[str, Any]] = {}
    rows = _records(df)
    for row in rows:
        x, y, status = row.get(xcol), row.get(target), row.get("status")
        if status not in STATUS_STYLE or not (_finite(x) and _finite(y)):
            continue
        err, lo, hi = None, None, None
        if status == "completed":
            key = f"spec:{row['spec_id']}"
            if key in points:
                continue  # the spec's seed repeats share one point: its means
            seeds = [r for r in rows if r.get("status") == "completed" and r.get("spec_id") == row["spec_id"]]
            xs = [float(r[xcol]) for r in seeds if _finite(r.get(xcol))]
            x = sum(xs) / len(xs)
            y = row.get("metric_mean") if _finite(row.get("metric_mean")) else y
            if _finite(row.get("ci95_low")) and _finite(row.get("ci95_high")):
                lo, hi = float(y) - float(row["ci95_low"]), float(row["ci95_high"]) - float(y)
                err = (lo, hi)
        else:
            key = f"trial:{row['trial_id']}"
        points[key] = {
            "x": float(x) / scale,
            "y": float(y),
            "err": err,
            "status": status,
            "bottom_heavy": bool(row.get("bottom_heavy")),
            "role": row.get("role"),
            "spec_id": row.get("spec_id"),
        }
    return list(points.values())


def _scatter(ax, df, xcol: str, target: str, xlabel: str, scale: float = 1.0, pareto: bool = True) -> None:
    points = plot_points(df, xcol, target, scale)
    if not points:
        ax.text(0.5, 0.5, f"no trials with {xcol} and {target}", ha="center", va="center", transform=ax.transAxes)
    for status, style in STATUS_STYLE.items():
        for bh in (True, False):
            pts = [p for p in points if p["status"] == status and p["bottom_heavy"] == bh]
            if not pts:
                continue
            errs = [p["err"] or (0.0, 0.0) for p in pts]
            filled = status == "completed"
            ax.errorbar(
                [p["x"] for p in pts],
                [p["y"] for p in pts],
                yerr=[[e[0] for e in errs], [e[1] for e in errs]] if any(p["err"] for p in pts) else None,
                fmt=style["marker"],
                color=COLORS[bh],
                mfc=COLORS[bh] if filled else "none",
                ms=7,
                capsize=3,
                lw=1,
                alpha=0.85,
            )
    done = [p for p in points if p["status"] == "completed"]
    if pareto and len(done) > 1:
        front = pareto_front([p["x"] for p in done], [p["y"] for p in done])
        pts = sorted((p["x"], p["y"]) for p, f in zip(done, front, strict=True) if f)
        ax.plot([q[0] for q in pts], [q[1] for q in pts], "k--", lw=0.8, zorder=0)
    for p in points:
        if p["role"] in ("base", "paper") and p["status"] == "completed":
            ax.annotate(p["role"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{target} (%)")
    ax.grid(alpha=0.3)


def _legend(fig, pareto: bool = True) -> None:
    """One legend for the figure, below the axes (never over a point)."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", color=COLORS[True], label="bottom-heavy"),
        Line2D([], [], ls="", marker="o", color=COLORS[False], label="standard-like"),
    ]
    for status, style in STATUS_STYLE.items():
        face = "0.3" if status == "completed" else "none"  # as drawn: completed filled, the others hollow
        handles.append(Line2D([], [], ls="", marker=style["marker"], color="0.3", mfc=face, label=style["label"]))
    if pareto:
        handles.append(Line2D([], [], ls="--", color="k", lw=0.8, label="Pareto front (completed)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)


def _caption(df, study: Any | None, noise: dict[str, Any] | None = None) -> str:
    """Input size, budget, trial counts and the noise floor behind the error bars, for the plot titles."""
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    parts = [f"{int(v)} {k}" for k, v in sorted(counts.items())]
    text = f"{len(df)} trials ({', '.join(parts)})"
    if study is not None:
        epochs = "+".join(str(e) for e in study.stage_epochs.values())
        text = f"{study.name}: {study.input_size} input, {epochs} trial-epochs per trial, " + text
    if noise is not None:
        std = noise.get("seed_std")
        text += (
            f"\nerror bars: 95 % intervals from the seed noise floor (std {std:.2f}, df {noise['df']})"
            if std is not None
            else "\nno error bars: no noise floor (noise.repeats < 2 or no repeat completed)"
        )
    return text


def _save(fig, path: Path) -> None:
    from bhsearch.fileio import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def make_plots(
    df,
    out_dir: str | Path,
    target: str,
    study: Any | None = None,
    tau: dict | None = None,
    noise: dict | None = None,
) -> list[str]:
    """Write the four PNGs into ``out_dir`` and return their paths.

    Every trial with a metric is drawn (``plot_points``): completed specs at their mean over seeds with the
    noise floor's 95 % interval, stopped trials at their last rung with their own marker; errored trials are
    counted in the title. Cost axes are the ones that vary between FLOP-matched candidates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    caption = _caption(df, study, noise)
    df = df.copy()
    base = df.loc[df["role"] == "base", "flops"]
    ref_flops = float(base.iloc[0]) if len(base) else float(df["flops"].median()) if len(df) else 1.0
    df["cost_error_pct"] = 100.0 * (df["flops"].astype(float) - ref_flops) / ref_flops

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
    _scatter(axes[0], df, "activations", target, "conv activations (M elements)", scale=1e6)
    _scatter(axes[1], df, "params", target, "parameters (M)", scale=1e6)
    _scatter(axes[2], df, "cost_error_pct", target, "FLOPs relative to the base (%)", pareto=False)
    fig.suptitle(f"{target} vs cost — {caption}", fontsize=10)
    _legend(fig)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _save(fig, out / "ap_vs_cost.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    source = ""
    if "latency_source" in df and df["latency_source"].notna().any():
        source = f" ({', '.join(sorted(set(df['latency_source'].dropna())))})"
    _scatter(ax, df, "latency_ms", target, f"backbone forward latency (ms){source}")
    ax.set_title(f"{target} vs latency\n{caption}", fontsize=9)
    _legend(fig)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    _save(fig, out / "ap_vs_latency.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    if target != "top1":
        _scatter(ax, df, "top1", target, "proxy top-1 (%)", pareto=False)
        tau = tau or {}
        if tau.get("tau") is None:
            text = f"undefined (n={tau.get('n', 0)})"
        else:
            lo, hi = tau.get("ci95") or (None, None)
            ci = f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else ""
            text = f"{tau['tau']:+.2f}{ci} (n={tau['n']} specs)"
        ax.set_title(f"proxy vs final: Kendall tau {text}\n{caption}", fontsize=9)
        _legend(fig, pareto=False)
        fig.tight_layout(rect=(0, 0.14, 1, 1))
    else:
        ax.text(0.5, 0.5, "proxy-only study: no final detection metric", ha="center", va="center")
    _save(fig, out / "proxy_vs_final.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    done = df[df["status"] == "completed"].drop_duplicates("spec_id")
    for flag, name in ((True, "bottom-heavy"), (False, "standard-like")):
        values = done.loc[done["bottom_heavy"] == flag, "metric_mean"] if "metric_mean" in done else []
        errors = [100.0 - float(v) for v in values if _finite(v)]
        if errors:
            xs, ys = edf(errors)
            ax.step(
                [xs[0], *xs],
                [0.0, *ys],
                where="post",
                color=COLORS[flag],
                label=f"{name} (n={len(xs)}, min {xs[0]:.1f})",
            )
    ax.set_xlabel(f"error = 100 - {target} (%), completed specs (mean over seeds)")
    ax.set_ylabel("cumulative prob.")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"error EDF\n{caption}", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    _save(fig, out / "error_edf.png")
    plt.close(fig)
    return [str(out / name) for name in PLOTS]


def rank_agreement(df, target: str, seed: int = 0) -> dict[str, Any]:
    """Kendall's tau between proxy top-1 and the final metric over completed specs (means over seeds), with its
    p-value and bootstrap 95 % interval (``bhsearch.tune.stats.kendall_tau_interval``)."""
    from bhsearch.tune.stats import kendall_tau_interval

    done = df[df["status"] == "completed"]
    proxy, final = [], []
    for _, group in done.groupby("spec_id", sort=True):
        p = [float(v) for v in group["top1"] if _finite(v)]
        f = [float(v) for v in group[target] if _finite(v)]
        if p and f:
            proxy.append(sum(p) / len(p))
            final.append(sum(f) / len(f))
    tau, pvalue, n = kendall_tau(proxy, final)
    lo, hi = kendall_tau_interval(proxy, final, seed=seed) if tau is not None else (None, None)
    return {"tau": tau, "p": pvalue, "n": n, "ci95": [lo, hi] if lo is not None else None}


def noise_summary(df, target: str, repeats: int) -> dict[str, Any]:
    """The study's noise floor: pooled seed std of ``target``, its degrees of freedom, the repeat groups, the
    t quantile and the best set (``bhsearch.tune.stats``)."""
    from bhsearch.tune.results import reference_spec, spec_means
    from bhsearch.tune.stats import best_set, noise_floor

    groups = spec_means(df, target)
    floor = noise_floor(groups)
    means = {k: (sum(v) / len(v), len(v)) for k, v in groups.items()}
    return {
        "metric": target,
        "repeats": repeats,
        "seed_std": floor.std,
        "df": floor.df,
        "t95": floor.t,
        "groups": {k: v for k, v in groups.items() if len(v) >= 2},
        "reference": reference_spec(df),
        "best_set": best_set(means, floor),
    }


def _records(df) -> list[dict[str, Any]]:
    rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows]


def build_report(
    run_dir: str | Path, top: int | None = None, plots: bool = True, refresh: bool = False
) -> dict[str, Any]:
    """Everything ``bhsearch report`` shows: ranking, best spec, status counts, tau, plot paths."""
    import json

    from bhsearch.errors import UsageError
    from bhsearch.tune.results import load_results, load_study_of

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    study = load_study_of(run_dir)
    target = study.target_metric
    from bhsearch.tune.results import with_noise_floor

    df = with_noise_floor(load_results(run_dir, refresh=refresh), target)  # also for tables of older versions
    info: dict[str, Any] = {"run_dir": str(run_dir), "study": study.name, "metric": target}
    agreement = rank_agreement(df, target) if target != "top1" else {"tau": None, "p": None, "n": 0, "ci95": None}
    info.update(
        kendall_tau=agreement["tau"], kendall_p=agreement["p"], kendall_n=agreement["n"], kendall_ci95=agreement["ci95"]
    )
    info["noise"] = noise_summary(df, target, study.noise.repeats)
    info["plots"] = make_plots(df, run_dir / "plots", target, study, agreement, info["noise"]) if plots else []
    best_path = run_dir / "best_spec.json"
    info["scheduler"] = study.scheduler.type
    info["best"] = json.loads(best_path.read_text()) if best_path.is_file() else None
    info["best_spec_path"] = str(best_path) if best_path.is_file() else None
    info["counts"] = {str(k): int(v) for k, v in df["status"].value_counts().items()}
    info["trials"] = len(df)
    info["epochs_spent"] = int(df["epochs"].sum())
    info["epochs_all_to_end"] = int(df["max_epochs"].sum())
    info["ranking"] = _records(df.head(top) if top else df)
    return info


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def short_arch(spec_id: str) -> str:
    """A spec id without the family (and a ResNet's block type), e.g. ``k3s1pc8 7-6-2-1 w8-16-32-64 s2-2-2-2``
    or ``w32 s22 4b64 1x4.4 4x4.4.4 3x4.4.4.4``."""
    parts = spec_id.split(":")
    if parts[0] == "hrnet" and len(parts) > 1:
        return " ".join(parts[1:])
    return " ".join(parts[2:]) if len(parts) > 2 else spec_id


def _noise_cell(col: str, row: dict[str, Any]) -> str:
    """The role (with the seed repeat), mean over seeds, 95 % interval and verdict cells of a table row."""
    if col == "role":
        role = str(row.get("role") or "-")
        return f"{role} (seed +{row['repeat']})" if row.get("repeat") else role
    mean, n, lo, hi = (row.get(k) for k in ("metric_mean", "metric_seeds", "ci95_low", "ci95_high"))
    if col == "mean (seeds)":
        return f"{mean:.2f} ({int(n)})" if _finite(mean) and _finite(n) else "-"
    if col == "95 % interval":
        return f"[{lo:.1f}, {hi:.1f}]" if _finite(lo) and _finite(hi) else "-"
    return str(row.get("vs_base") or "-")


def print_noise(info: dict[str, Any], console: Any) -> None:
    """The noise floor and the best set, in two lines."""
    noise = info.get("noise") or {}
    metric = info["metric"]
    if noise.get("seed_std") is None:
        hint = "set noise: {repeats: 2} or more in the study" if noise.get("repeats", 1) < 2 else "no repeat completed"
        console.print(f"noise floor: unknown ({hint}); differences between trials carry no error bars")
    else:
        groups = noise.get("groups") or {}
        seeds = sorted({len(v) for v in groups.values()})
        console.print(
            f"noise floor: seed std of {metric} {noise['seed_std']:.2f} points (pooled over {len(groups)} specs with "
            f"{'/'.join(map(str, seeds))} seeds, df {noise['df']}); intervals are 95 % (t = {noise['t95']:.2f})"
        )
    best = noise.get("best_set") or []
    if best:
        names = ", ".join(short_arch(b) for b in best)
        console.print(f"best: {names}  ({len(best)} not significantly worse than the top at 95 %)")


def status_text(status: str | None, epochs: Any, max_epochs: Any, scheduler: str | None = "asha") -> str:
    """``completed``, ``stopped by ASHA at epoch 4 of 8``, ``unfinished at epoch 2 of 8``, ``error`` (at epoch N
    when it had trained any): a trial's status in words (``epochs`` are trial-epochs, pre-train + fine-tune)."""
    status = status or "unfinished"
    try:
        at = f" at epoch {int(epochs)} of {int(max_epochs)}" if int(epochs) > 0 else ""
    except (TypeError, ValueError):
        at = ""
    if status == "stopped":
        return ("stopped by ASHA" if scheduler == "asha" else "stopped") + at
    if status in ("error", "unfinished"):
        return status + at
    return status


def _resnet_legend(spec: Any) -> str:
    from bhsearch.spec import _default_resnet_strides, _default_resnet_widths

    parts = spec.id.split(":")
    stem = parts[2]
    if spec.deep_stem:
        what = f"deep stem (three 3x3 convs), stride {spec.stem_stride} (s{spec.stem_stride})"
    else:
        k = spec.stem_kernel
        what = f"stem {k}x{k} conv (k{k}), stride {spec.stem_stride} (s{spec.stem_stride})"
    what += ", 3x3 max-pool (p)" if spec.stem_pool else ""
    what += f", {spec.stem_width} channels (c{spec.stem_width}; 64 if absent)" if "c" in stem else ", 64 channels"
    n = len(spec.blocks)
    widths = "-".join(map(str, _default_resnet_widths(n)))
    strides = "-".join(map(str, _default_resnet_strides(n)))
    w = next((p for p in parts[4:] if p.startswith("w")), "w..")
    st = next((p for p in parts[4:] if p.startswith("s")), "s..")
    channels = "3x3 conv channels, output x4" if spec.block == "bottleneck" else "channels"
    return (
        f"arch: {stem} = {what}; {parts[3]} = {spec.block} blocks per stage; {w} = stage widths "
        f"({channels}; {widths} if absent); {st} = stage strides ({strides} if absent)"
    )


def _hrnet_legend(spec: Any) -> str:
    parts = spec.id.split(":")
    wcode, stem, s1, first = parts[1], parts[2], parts[3], parts[4] if len(parts) > 4 else "1x4.4"
    widths = "-".join(map(str, spec.branch_widths))
    st = spec.stages[0] if spec.stages else None
    if st is None:
        stage = "MxB.B = a later stage: M modules with B blocks per branch"
    else:
        each = (
            f"{st.blocks[0]} blocks on each of its {len(st.blocks)} branches"
            if len(set(st.blocks)) == 1
            else f"{'/'.join(map(str, st.blocks))} blocks on its {len(st.blocks)} branches"
        )
        modules = f"{st.modules} module{'s' if st.modules != 1 else ''}"
        stage = f"{first} = a later stage: {modules} with {each} (a trailing b: bottleneck blocks)"
    return (
        f"arch: {wcode} = branch widths {widths} (one width: doubling per branch); {stem} = stem conv strides "
        f"{' and '.join(map(str, spec.stem_strides))} (p: max-pool after stage 1; cN: N stem channels, 64 if absent); "
        f"{s1} = stage 1: {spec.stage1_blocks} {spec.stage1_block} blocks (b; a: basic) of width {spec.stage1_width}; "
        f"{stage}"
    )


def arch_legend(spec_ids: list[str]) -> list[str]:
    """What the ``arch`` column's codes mean, one line per family in ``spec_ids``, explained on the id with the
    most parts (so widths and strides show when any candidate has them); ``bhsearch.spec`` has the format."""
    from bhsearch.errors import UsageError
    from bhsearch.spec import HRNetSpec, ResNetSpec, get_spec

    examples: dict[str, Any] = {}
    for spec_id in spec_ids:
        try:
            spec = get_spec(spec_id)
        except UsageError:
            continue
        best = examples.get(spec.family)
        if best is None or len(spec.id.split(":")) > len(best.id.split(":")):
            examples[spec.family] = spec
    lines = []
    for spec in examples.values():
        if isinstance(spec, ResNetSpec):
            lines.append(_resnet_legend(spec))
        elif isinstance(spec, HRNetSpec):
            lines.append(_hrnet_legend(spec))
    return lines


def print_report(info: dict[str, Any], console: Any = None) -> None:
    """A rich ranked table and summary lines."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if Console().is_terminal else 200)
    metric = info["metric"]
    table = Table(
        title=f"study {info['study']}: ranked by {metric}; metrics and epochs are each trial's last reported",
        caption="completed trials first, then stopped ones by the epoch they reached and their metric there",
    )
    own = [metric] if metric not in TABLE_COLUMNS else []  # a proxy-only study ranks by top1, already a column
    cols = [*TABLE_COLUMNS[:7], *own, *NOISE_COLUMNS, *TABLE_COLUMNS[7:]]
    for col in cols:
        table.add_column(col, justify="left" if col in ("arch", "role", "status", "vs base") else "right")
    for row in info["ranking"]:
        cells = []
        for col in cols:
            v = short_arch(row.get("spec_id", "")) if col == "arch" else row.get(col)
            if col in NOISE_COLUMNS or col == "role":
                cells.append(_noise_cell(col, row))
                continue
            if col == "status":
                v = status_text(v, row.get("epochs"), row.get("max_epochs"), info.get("scheduler", "asha"))
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("-")
            elif col == "params":
                cells.append(f"{v / 1e6:.3f} M")
            elif col == "activations":
                cells.append(f"{v / 1e6:.2f} M")
            elif isinstance(v, float):
                cells.append(f"{v:.2f}")
            else:
                cells.append(str(v))
        table.add_row(*cells, style="bold" if row.get("rank") == 1 and row.get("status") == "completed" else None)
    console.print(table)
    for line in arch_legend([row.get("spec_id", "") for row in info["ranking"]]):
        console.print(line, highlight=False)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(info["counts"].items()))
    console.print(
        f"trials: {info['trials']} ({counts}); trial-epochs spent {info['epochs_spent']} of {info['epochs_all_to_end']} if all ran to the end"
    )
    if info.get("best"):
        best = info["best"]
        console.print(f"top: {best['id']}  {metric} = {_fmt(best.get('value'))}  → {info['best_spec_path']}")
    else:
        console.print("best: no trial completed yet")
    print_noise(info, console)
    tau = info.get("kendall_tau")
    if metric != "top1":
        n = info.get("kendall_n") or 0
        if tau is not None:
            ci = info.get("kendall_ci95")
            tau_text = (
                f"{tau:+.3f}" + (f", 95 % interval [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "") + f" (n={n} specs)"
            )
        else:
            tau_text = f"undefined (n={n}: {'fewer than 3 completed trials' if n < 3 else 'all values tied'})"
        console.print(f"proxy top-1 vs final {metric}: Kendall tau {tau_text}")
    if info.get("plots"):
        console.print("plots: " + ", ".join(info["plots"]))


__all__ = [
    "arch_legend",
    "build_report",
    "edf",
    "kendall_tau",
    "make_plots",
    "pareto_front",
    "print_report",
    "short_arch",
    "status_text",
]

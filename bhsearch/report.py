"""Study reports: the ranked table, the best spec, and PNG plots (matplotlib, Agg backend).

Plots written into ``RUN_DIR/plots/``:

* ``ap_vs_cost.png`` — the target metric vs paper FLOPs and vs activations, Pareto front marked
  (higher metric, lower cost);
* ``ap_vs_latency.png`` — the target metric vs measured forward latency, Pareto front marked;
* ``proxy_vs_final.png`` — proxy top-1 vs the final detection metric with Kendall's tau (how well
  the cheap proxy ranks the candidates);
* ``error_edf.png`` — pycls-style empirical distribution functions of the error (100 - metric)
  of bottom-heavy vs standard-like candidates.

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
    "flops",
    "activations",
    "latency_ms",
    "top1",
    "epochs",
    "status",
)


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


def _scatter_pareto(ax, df, xcol: str, ycol: str, xlabel: str, ylabel: str, scale: float = 1.0) -> None:
    sub = df[df[xcol].map(_finite) & df[ycol].map(_finite)]
    if sub.empty:
        ax.text(0.5, 0.5, f"no trials with {xcol} and {ycol}", ha="center", va="center", transform=ax.transAxes)
    else:
        xs = [float(x) / scale for x in sub[xcol]]
        ys = [float(y) for y in sub[ycol]]
        front = pareto_front(xs, ys)
        colors = ["tab:red" if bh else "tab:blue" for bh in sub["bottom_heavy"]]
        ax.scatter(xs, ys, c=colors, s=28, alpha=0.8, edgecolors="none")
        pts = sorted((x, y) for x, y, f in zip(xs, ys, front, strict=False) if f)
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], "k--", lw=1, marker="o", mfc="none", ms=9, label="Pareto front"
        )
        for x, y, role in zip(xs, ys, sub["role"], strict=False):
            if role in ("base", "paper"):
                ax.annotate(role, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.ticklabel_format(axis="both", style="plain", useOffset=False)  # FLOP-matched costs differ by < 1%
    ax.grid(alpha=0.3)


def make_plots(df, out_dir: str | Path, target: str) -> dict[str, Any]:
    """Write the four PNGs into ``out_dir``; returns their paths and Kendall's tau."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bhsearch.fileio import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = df[df["status"] == "completed"]
    label = f"{target} (%)"

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _scatter_pareto(axes[0], done, "flops", target, "paper FLOPs (G)", label, scale=1e9)
    _scatter_pareto(axes[1], done, "activations", target, "conv activations (M elements)", label, scale=1e6)
    fig.suptitle(f"{target} vs cost (red: bottom-heavy, blue: standard-like)")
    fig.tight_layout()
    atomic_write(out / "ap_vs_cost.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    _scatter_pareto(ax, done, "latency_ms", target, "measured forward latency (ms)", label)
    ax.set_title(f"{target} vs latency")
    fig.tight_layout()
    atomic_write(out / "ap_vs_latency.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    proxy_ok = target != "top1"
    tau = pvalue = None
    n = 0
    if proxy_ok:
        tau, pvalue, n = kendall_tau(list(done["top1"]), list(done[target]))
        ax.scatter(done["top1"], done[target], c="tab:purple", s=28)
        ax.set_xlabel("proxy top-1 (%)")
        ax.set_ylabel(label)
        tau_text = f"undefined (n={n})" if tau is None else f"{tau:+.3f} (p={pvalue:.3g}, n={n})"
        ax.set_title(f"proxy vs final: Kendall tau {tau_text}")
    else:
        ax.text(0.5, 0.5, "proxy-only study: no final detection metric", ha="center", va="center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out / "proxy_vs_final.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for flag, name, color in ((True, "bottom-heavy", "tab:red"), (False, "standard-like", "tab:blue")):
        errors = [100.0 - float(v) for v in done[done["bottom_heavy"] == flag][target] if _finite(v)]
        if errors:
            xs, ys = edf(errors)
            ax.step([xs[0], *xs], [0.0, *ys], where="post", color=color, label=f"{name} (n={len(xs)}, min {xs[0]:.1f})")
    ax.set_xlabel(f"error = 100 - {target} (%)")
    ax.set_ylabel("cumulative prob.")
    ax.set_ylim(0, 1.02)
    ax.set_title("error EDF")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(out / "error_edf.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return {
        "plots": [str(out / name) for name in PLOTS],
        "kendall_tau": tau,
        "kendall_p": pvalue,
        "kendall_n": n,
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
    df = load_results(run_dir, refresh=refresh)
    target = study.target_metric
    info: dict[str, Any] = {"run_dir": str(run_dir), "study": study.name, "metric": target}
    info.update(make_plots(df, run_dir / "plots", target) if plots else {"plots": [], "kendall_tau": None})
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

    console = console or Console(width=None if Console().is_terminal else 150)
    metric = info["metric"]
    table = Table(
        title=f"study {info['study']}: ranked by {metric}; metrics and epochs are each trial's last reported",
        caption="completed trials first, then stopped ones by the epoch they reached and their metric there",
    )
    cols = [*TABLE_COLUMNS[:7], metric, *TABLE_COLUMNS[7:]] if metric != "top1" else list(TABLE_COLUMNS)
    for col in cols:
        table.add_column(col, justify="left" if col in ("arch", "role", "status") else "right")
    for row in info["ranking"]:
        cells = []
        for col in cols:
            v = short_arch(row.get("spec_id", "")) if col == "arch" else row.get(col)
            if col == "status":
                v = status_text(v, row.get("epochs"), row.get("max_epochs"), info.get("scheduler", "asha"))
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("-")
            elif col == "flops":
                cells.append(f"{v / 1e9:.3f} G")
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
        console.print(f"best: {best['id']}  {metric} = {_fmt(best.get('value'))}  → {info['best_spec_path']}")
    else:
        console.print("best: no trial completed yet")
    tau = info.get("kendall_tau")
    if metric != "top1":
        n = info.get("kendall_n") or 0
        if tau is not None:
            tau_text = f"{tau:+.3f} (n={n})"
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

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
    "score",
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
    """A spec id without the family and block type, e.g. ``k3s1pc8 7-6-2-1 w8-16-32-64 s2-2-2-2``."""
    parts = spec_id.split(":")
    return " ".join(parts[2:]) if len(parts) > 2 else spec_id


def print_report(info: dict[str, Any], console: Any = None) -> None:
    """A rich ranked table and summary lines."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if Console().is_terminal else 150)
    metric = info["metric"]
    table = Table(title=f"study {info['study']}: ranked by {metric} (score = {metric} at the final epoch)")
    cols = [*TABLE_COLUMNS[:7], metric, *TABLE_COLUMNS[7:]] if metric != "top1" else list(TABLE_COLUMNS)
    for col in cols:
        table.add_column(col, justify="left" if col in ("arch", "role", "status") else "right")
    for row in info["ranking"]:
        cells = []
        for col in cols:
            v = short_arch(row.get("spec_id", "")) if col == "arch" else row.get(col)
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


__all__ = ["build_report", "edf", "kendall_tau", "make_plots", "pareto_front", "print_report"]

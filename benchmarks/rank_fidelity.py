"""Ranking fidelity: does a short study's ranking predict which backbone is better after a longer training?

K candidates spread over the ResNet-50 design space (the base, the paper's BH-ResNet50, a positive control
and solver picks that differ in stem and bottom-heavy share) are each trained

* at the **reference budget** (the demo study's epochs x ``--scale``, default 3) with ``--seeds`` seeds,
  giving the reference AP50_tiny mean and spread per candidate, and
* once at the **demo budget** (seed 0, the demo study's own settings), giving the cheap signals a study
  sees: the demo-budget AP, the AP at ASHA's first rung and the proxy top-1;

and scored without training (zen, synflow, naswot, gradnorm at the detector tile and at 32x32; params,
FLOPs, activations, bottom-heavy share). Every signal is compared with the reference: Kendall's tau and
Spearman's rho with hierarchical-bootstrap 95 % intervals and the top-1 regret
(``bhsearch.tune.stats.rank_fidelity``); BH vs standard and the control vs the base are paired differences
over seeds with t-intervals.

The **positive control** is the base with its early down-sampling made more aggressive (stride 2 in stage 1:
output strides 8-64) and the lost FLOPs given back by doubling every stage's width (0.99x the base's FLOPs):
it is expected to lose on tiny objects, so a benchmark that cannot see that difference cannot be trusted
with a null result.

    python benchmarks/rank_fidelity.py --preset quick     # smoke run, ~5 min on 2 cores
    python benchmarks/rank_fidelity.py --preset full      # the committed results, ~2 h on 2 cores
    python benchmarks/rank_fidelity.py --preset gpu       # full width, 640x512 tiles, on a CUDA GPU
    python benchmarks/rank_fidelity.py --preset full --report-only   # tables and plots from finished jobs

Jobs are resumable: each writes ``--out/jobs/<candidate>/<budget>-s<seed>/result.json`` when it finishes,
and a rerun skips finished jobs. The output is ``--out/report.md``, ``--out/results.json``,
``--out/signals.csv`` and one scatter per signal in ``--out/plots/``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = "AP50_tiny"
SCORES = ("zen", "synflow", "naswot", "gradnorm")
COSTS = ("params", "flops", "activations", "bh_share")
CONTROL = "resnet:bottleneck:k7s2p:3-4-6-3:w128-256-512-1024:s2-2-2-2"

PRESETS = {
    # picks: solver picks besides base, paper and control; scale: reference epochs / demo epochs;
    # study: overrides of the demo study (stages.<stage>.<key> or top-level keys)
    "quick": dict(
        picks=1, seeds=2, scale=2, workers=2, threads=1, score_batch=(1, 8),
        study={"stages.pretrain.epochs": 2, "stages.pretrain.max_train_samples": 1000,
               "stages.pretrain.max_eval_samples": 500, "stages.finetune.epochs": 2,
               "stages.finetune.eval_every": 1, "stages.finetune.max_train_tiles": 24},
    ),
    "full": dict(picks=5, seeds=3, scale=3, workers=2, threads=1, score_batch=(2, 16), study={}),
    "gpu": dict(
        picks=5, seeds=3, scale=3, workers=1, threads=None, score_batch=(2, 16),
        study={"width_mult": 1.0, "input_size": "640x512", "stages.finetune.tile": [640, 512],
               "stages.finetune.fpn_channels": 256, "stages.finetune.max_train_tiles": None,
               "stages.pretrain.max_train_samples": None, "stages.pretrain.device": "cuda",
               "stages.finetune.device": "cuda"},
    ),
}  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--study", type=Path, default=ROOT / "studies" / "demo.yaml", help="the demo-budget study")
    p.add_argument("--seeds", type=int, help="reference seeds per candidate (preset's)")
    p.add_argument("--scale", type=float, help="reference epochs / demo epochs (preset's)")
    p.add_argument("--picks", type=int, help="solver picks besides base, paper and control (preset's)")
    p.add_argument("--workers", type=int, help="jobs at a time (preset's; 1 CPU thread each on a CPU)")
    p.add_argument("--out", type=Path, help="output folder (default runs/rank_fidelity_<preset>)")
    p.add_argument("--report-only", action="store_true", help="tables and plots from the finished jobs only")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("seeds", "scale", "picks", "workers"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.threads, args.score_batch, args.overrides = preset["threads"], preset["score_batch"], preset["study"]
    args.out = args.out or ROOT / "runs" / f"rank_fidelity_{args.preset}"
    return args


# ---- the study and the candidates -------------------------------------------------------------------------


def load_demo_study(path: Path, overrides: dict, out: Path):
    """The demo study with the preset's overrides, its data folders moved under ``out/data``."""
    from bhsearch.safeload import load_yaml
    from bhsearch.tune.study import parse_study

    data = load_yaml(path.read_text())
    for dotted, value in overrides.items():
        node, *keys = dotted.split(".")
        target = data
        for key in [node, *keys][:-1]:
            target = target.setdefault(key, {})
        target[([node, *keys])[-1]] = value
    for stage in data["stages"].values():
        kind, _, folder = stage["data"].partition(":")
        stage["data"] = f"{kind}:{(out / 'data' / Path(folder).name).resolve()}"
    return parse_study(data, str(path))


def pick_candidates(study, n_picks: int) -> list[tuple[str, str]]:
    """``(label, spec id)``: base, paper, control, then ``n_picks`` solver candidates, one per stem other than
    the base's (cycled), at evenly spaced quantiles of that stem's bottom-heavy share."""
    from bhsearch.scores.candidates import cost_scores
    from bhsearch.solver import resnet_stem_code, solve
    from bhsearch.spec import get_spec, parse_input_size

    size = parse_input_size(study.input_size)
    base = get_spec(study.base)
    chosen = [("base", base.id), ("paper", get_spec("bh-resnet50").id), ("control", get_spec(CONTROL).id)]
    by_stem: dict[str, list[tuple[float, str]]] = {}
    space = study.space.file if study.space else None
    for cand in solve(base, size, space=space, match="flops", tolerance=study.space.tolerance or 2.0):
        by_stem.setdefault(resnet_stem_code(cand.spec), []).append(
            (cost_scores(cand.spec, size)["bh_share"], cand.spec.id)
        )
    stems = [s for s in by_stem if s != resnet_stem_code(base)] or list(by_stem)
    taken = {sid for _, sid in chosen}
    for i in range(n_picks):
        pool = sorted(x for x in by_stem[stems[i % len(stems)]] if x[1] not in taken)
        share, sid = pool[min(len(pool) - 1, int((i + 0.5) / n_picks * len(pool)))]
        chosen.append((f"pick{i + 1}", sid))
        taken.add(sid)
    return chosen


# ---- one training job (run in a worker process) ------------------------------------------------------------


def job_dir(out: Path, label: str, budget: str, seed: int) -> Path:
    return out / "jobs" / label / f"{budget}-s{seed}"


def run_job(study_data: dict, spec_id: str, budget: str, scale: float, seed: int, folder: str, threads) -> dict:
    """Pre-train and fine-tune ``spec_id`` at ``budget`` (``demo``: the study's epochs; ``reference``:
    x ``scale``, evaluated once at the end) with ``seed`` for both stages; writes and returns result.json."""
    import torch

    from bhsearch.fileio import atomic_write_json
    from bhsearch.spec import get_spec
    from bhsearch.tune.study import Study, stage_config

    if threads:
        torch.set_num_threads(threads)
    study = Study.model_validate(study_data)
    spec, work = get_spec(spec_id), Path(folder)
    if study.width_mult != 1.0:
        spec = spec.scaled(study.width_mult)
    t0 = time.perf_counter()
    configs = {}
    for stage in ("pretrain", "finetune"):
        epochs = getattr(study.stages, stage).epochs
        extra = {"progress": "off", "seed": seed}
        if budget == "reference":
            extra["epochs"] = max(1, round(epochs * scale))
            if stage == "finetune":
                extra["eval_every"] = extra["epochs"]
        configs[stage] = stage_config(study, stage, extra)
    from bhsearch.train.finetune import run_finetune
    from bhsearch.train.pretrain import run_pretrain

    pre = run_pretrain(spec, study.stages.pretrain.data, configs["pretrain"], work / "pretrain", resume=True)
    evals: dict[int, float] = {}

    def on_epoch(stage: str, epoch: int, metrics: dict, _out: Path) -> None:
        if metrics.get(TARGET) is not None:
            evals[epoch] = float(metrics[TARGET])

    fine = run_finetune(
        spec, study.stages.finetune.data, configs["finetune"], work / "finetune",
        init=work / "pretrain" / "backbone.safetensors", resume=True, callback=on_epoch,
    )  # fmt: skip
    result = {
        "spec_id": spec.id, "budget": budget, "seed": seed, "top1": pre.get("top1"),
        **{k: fine.get(k) for k in (TARGET, "AP50_tiny1", "AP50_tiny2", "AP50_tiny3", "AP50_small")},
        "evals": {str(k): v for k, v in sorted(evals.items())},
        "pretrain_epochs": configs["pretrain"].epochs, "finetune_epochs": configs["finetune"].epochs,
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    atomic_write_json(work / "result.json", result)
    return result


def _init_worker(threads) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads or ""))


def run_jobs(args, study, candidates) -> None:
    """Every unfinished job, longest first (paper-FLOP activations as the cost estimate), ``args.workers`` at a
    time; one line per finished job with the elapsed time and an ETA."""
    from bhsearch.cost import count

    jobs = []
    for label, sid in candidates:
        weight = count(sid, study.input_size).activations
        for budget, seeds, factor in (("reference", range(args.seeds), args.scale), ("demo", [0], 1.0)):
            for seed in seeds:
                folder = job_dir(args.out, label, budget, seed)
                if not (folder / "result.json").is_file():
                    jobs.append((weight * factor, label, sid, budget, seed, folder))
    # two reference seeds of every candidate first, then the demo budget, then the other seeds (a run cut
    # short still gives every signal and a noise floor), longest first within each group
    jobs.sort(key=lambda j: (min(j[4], 2) if j[3] == "reference" else 1.5, -j[0]))
    if not jobs:
        return
    total_weight, done_weight, t0 = sum(j[0] for j in jobs), 0.0, time.perf_counter()
    print(f"{len(jobs)} jobs to run, {args.workers} at a time", flush=True)
    context = multiprocessing.get_context("spawn")
    study_data = study.model_dump(mode="json")
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context, initializer=_init_worker,
                                                initargs=(args.threads,)) as pool:  # fmt: skip
        futures = {
            pool.submit(run_job, study_data, sid, budget, args.scale, seed, str(folder), args.threads): (w, label, budget, seed)
            for w, label, sid, budget, seed, folder in jobs
        }  # fmt: skip
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            weight, label, budget, seed = futures[future]
            result = future.result()
            done_weight += weight
            elapsed = time.perf_counter() - t0
            eta = elapsed * (total_weight - done_weight) / done_weight
            print(
                f"[{n}/{len(jobs)}] {label} {budget} seed {seed}: {TARGET} {_f(result[TARGET])}, top1 "
                f"{_f(result['top1'])} ({result['seconds']:.0f} s)  elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
                flush=True,
            )


# ---- signals and analysis -----------------------------------------------------------------------------------


def load_results(out: Path, candidates) -> dict[str, dict]:
    """Per candidate label: ``reference`` (list of results over seeds) and ``demo`` (the seed-0 result or None)."""
    rows = {}
    for label, sid in candidates:
        ref, demo = [], None
        for path in sorted((out / "jobs" / label).glob("*/result.json")):
            result = json.loads(path.read_text())
            if result["budget"] == "reference":
                ref.append(result)
            else:
                demo = result
        rows[label] = {"spec_id": sid, "reference": sorted(ref, key=lambda r: r["seed"]), "demo": demo}
    return rows


def training_free_signals(study, candidates, batches) -> dict[str, dict[str, float]]:
    """Per candidate label: every zero-cost score at the detector tile and at 32x32 (the study's width), and
    the cost scores at the study's input size."""
    import torch

    from bhsearch.scores.candidates import cost_scores, score_spec
    from bhsearch.spec import parse_input_size

    torch.set_num_threads(1)
    tile = tuple(study.stages.finetune.options.get("tile", (640, 512)))
    out = {}
    for label, sid in candidates:
        row = score_spec(sid, SCORES, [tile, (32, 32)], width_mult=study.width_mult, batch=list(batches), seed=0)
        costs = cost_scores(sid, parse_input_size(study.input_size))
        out[label] = {**{k: v for k, v in row.items() if "@" in k}, **costs, "score_seconds": row["seconds"]}
    return out


def signal_table(rows: dict[str, dict], scores: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Signal name -> candidate label -> value (larger = predicted better)."""
    signals: dict[str, dict[str, float]] = {}

    def put(name: str, label: str, value) -> None:
        if value is not None and math.isfinite(float(value)):
            signals.setdefault(name, {})[label] = float(value)

    for label, row in rows.items():
        demo = row["demo"] or {}
        evals = demo.get("evals") or {}
        put("demo AP", label, demo.get(TARGET))
        put("first-rung AP", label, evals[min(evals, key=int)] if evals else None)
        put("proxy top-1", label, demo.get("top1"))
        for name, value in scores.get(label, {}).items():
            if name != "score_seconds":
                put(name, label, value)
    return signals


def analyse(rows, signals) -> dict:
    from bhsearch.tune.stats import noise_floor, paired_difference, rank_fidelity

    reference = {label: [r[TARGET] for r in row["reference"]] for label, row in rows.items() if row["reference"]}
    floor = noise_floor(reference)
    fidelity = {name: rank_fidelity(values, reference) for name, values in signals.items()}

    def paired(a: str, b: str, key: str = TARGET) -> dict:
        """The paired difference over common seeds, plus the interval from the seed std pooled over every
        candidate (``pooled_low`` / ``pooled_high``: the study report's test, df from all candidates)."""
        by_seed = {label: {r["seed"]: r[key] for r in rows[label]["reference"]} for label in (a, b)}
        seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
        out = paired_difference([by_seed[a][s] for s in seeds], [by_seed[b][s] for s in seeds])
        pooled = noise_floor({k: [r[key] for r in row["reference"]] for k, row in rows.items()})
        half = pooled.t * pooled.std * math.sqrt(2 / len(seeds)) if pooled.t is not None and seeds else None
        out["pooled_low"] = None if half is None else out["mean"] - half
        out["pooled_high"] = None if half is None else out["mean"] + half
        out["pooled_df"] = pooled.df
        return out

    return {
        "reference": reference,
        "noise": {"std": floor.std, "df": floor.df},
        "fidelity": fidelity,
        "paper_minus_base": paired("paper", "base"),
        "control_minus_base": paired("control", "base"),
        "control_minus_base_tiny1": paired("control", "base", "AP50_tiny1"),
    }


# ---- output ---------------------------------------------------------------------------------------------------


COLORS = {"base": "tab:blue", "paper": "tab:red", "control": "tab:gray"}


def _f(value, nd: int = 2) -> str:
    return "-" if value is None else f"{value:.{nd}f}"


def _interval(d: dict, key: str, nd: int = 2) -> str:
    lo, hi = d.get(f"{key}_low"), d.get(f"{key}_high")
    return f"{_f(d.get(key), nd)} [{_f(lo, nd)}, {_f(hi, nd)}]" if lo is not None else _f(d.get(key), nd)


def _diff_line(name: str, d: dict) -> str:
    if d["mean"] is None:
        return f"{name}: no paired seeds"
    verdict = ""
    if d["low"] is not None:
        verdict = " (exceeds the noise)" if d["low"] > 0 or d["high"] < 0 else " (within the noise)"
    per_seed = ", ".join(f"{x:+.2f}" for x in d["diffs"])
    line = f"{name}: {d['mean']:+.2f}, per seed {per_seed}; paired 95 % interval [{_f(d['low'])}, {_f(d['high'])}]"
    line += f"{verdict}"
    lo, hi = d.get("pooled_low"), d.get("pooled_high")
    if lo is not None:
        pooled = "exceeds the noise" if lo > 0 or hi < 0 else "within the noise"
        line += f"; with the pooled seed std (df {d['pooled_df']}) [{_f(lo)}, {_f(hi)}] ({pooled})"
    return line


def candidate_table(rows, scores, analysis) -> list[str]:
    lines = [
        f"| candidate | spec | reference {TARGET} mean ± std (seeds) | tiny1 mean | demo AP | first-rung AP | proxy top-1 | GFLOPs¹ | params M¹ | bh_share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for label, row in rows.items():
        ref = analysis["reference"].get(label, [])
        mean = sum(ref) / len(ref) if ref else None
        sd = statistics.stdev(ref) if len(ref) > 1 else None
        tiny1 = [r["AP50_tiny1"] for r in row["reference"] if r.get("AP50_tiny1") is not None]
        demo = row["demo"] or {}
        evals = demo.get("evals") or {}
        sc = scores.get(label, {})
        lines.append(
            f"| {label} | `{row['spec_id']}` | {_f(mean)} ± {_f(sd)} ({', '.join(_f(v) for v in ref)}) | "
            f"{_f(sum(tiny1) / len(tiny1) if tiny1 else None)} | {_f(demo.get(TARGET))} | "
            f"{_f(evals[min(evals, key=int)] if evals else None)} | {_f(demo.get('top1'))} | "
            f"{_f(sc.get('flops', 0) / 1e9, 1)} | {_f(sc.get('params', 0) / 1e6, 1)} | {_f(sc.get('bh_share'), 3)} |"
        )
    return lines


def fidelity_table(analysis) -> list[str]:
    lines = [
        "| signal | Kendall tau [95 %] | Spearman rho [95 %] | pick | top-1 regret [95 %] |",
        "|---|---|---|---|---|",
    ]
    order = sorted(
        analysis["fidelity"].items(), key=lambda kv: -(kv[1]["kendall"] if kv[1]["kendall"] is not None else -9)
    )
    for name, d in order:
        lines.append(
            f"| {name} | {_interval(d, 'kendall')} | {_interval(d, 'spearman')} | {d['pick'] or '-'} | "
            f"{_interval(d, 'regret')} |"
        )
    return lines


AXES = {  # signal -> (divisor, axis label) for the scatter plots
    "params": (1e6, "params (M, full width)"),
    "flops": (1e9, "paper GFLOPs (full width, 640x512)"),
    "activations": (1e6, "activations (M, full width, 640x512)"),
}


def plot_signals(out: Path, signals, analysis) -> list[Path]:
    """One scatter per signal: the signal against the reference mean, with the 95 % interval of each mean
    (pooled seed std, clipped to [0, 100]) as an error bar; the title carries tau and its interval. Then
    ``fidelity.png``: every signal's Kendall tau with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bhsearch.tune.stats import noise_floor

    reference = analysis["reference"]
    floor = noise_floor(reference)
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, values in signals.items():
        labels = [k for k in values if k in reference]
        if not labels:
            continue
        divisor, xlabel = AXES.get(name, (1.0, name))
        fig, ax = plt.subplots(figsize=(5.2, 4.0), dpi=110)
        for label in labels:
            mean = sum(reference[label]) / len(reference[label])
            half = floor.half_width(len(reference[label])) or 0.0
            yerr = [[mean - max(0.0, mean - half)], [min(100.0, mean + half) - mean]]
            x = values[label] / divisor
            ax.errorbar(x, mean, yerr=yerr, fmt="o", color=COLORS.get(label, "tab:green"), capsize=3)
            ax.annotate(label, (x, mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.margins(x=0.18)
        ax.set_title(f"{name}: Kendall tau {_interval(analysis['fidelity'][name], 'kendall')}", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"reference {TARGET} (mean, 95 % interval)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(folder / f"{plot_name(name)}.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    paths.append(_plot_taus(folder / "fidelity.png", analysis["fidelity"], plt))
    return paths


def _plot_taus(path: Path, fidelity: dict, plt) -> Path:
    """Kendall tau and its 95 % interval per signal, best first."""
    rows = sorted(((n, d) for n, d in fidelity.items() if d["kendall"] is not None), key=lambda r: r[1]["kendall"])
    fig, ax = plt.subplots(figsize=(6.0, 0.32 * len(rows) + 1.2), dpi=110)
    for i, (_, d) in enumerate(rows):
        lo, hi = d["kendall_low"], d["kendall_high"]
        ax.errorbar(
            d["kendall"], i, xerr=[[d["kendall"] - lo], [hi - d["kendall"]]], fmt="o", color="tab:blue", capsize=3
        )
    ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=8)
    ax.axvline(0.0, color="gray", lw=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(f"Kendall tau vs the reference {TARGET} (95 % interval)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_name(signal: str) -> str:
    return signal.replace(" ", "_").replace("@", "_at_").replace("-", "_")


def write_report(args, study, rows, scores, signals, analysis, wall_s: float | None) -> str:
    from bhsearch.fileio import atomic_write_json, atomic_write_text

    pre, fine = study.stages.pretrain, study.stages.finetune
    n_ref = sum(len(r["reference"]) for r in rows.values())
    noise = analysis["noise"]
    load = os.getloadavg()
    lines = [
        f"# Ranking fidelity ({args.preset} preset)",
        "",
        f"Command: `python benchmarks/rank_fidelity.py --preset {args.preset}`"
        + (f" (seeds {args.seeds}, scale {args.scale:g}, picks {args.picks})" if args.preset else ""),
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{args.workers} jobs at a time; load average at the report {load[0]:.2f}. "
        + (f"Wall time of the training run: {wall_s / 60:.1f} min." if wall_s else ""),
        f"Demo budget: {pre.epochs} pre-train + {fine.epochs} fine-tune epochs, evaluated every "
        f"{fine.options.get('eval_every', 1)} (the first evaluation is ASHA's first rung), width x{study.width_mult:g}. "
        f"Reference budget: x{args.scale:g} the epochs of both stages, evaluated at the end, {args.seeds} seeds "
        f"({n_ref} reference trainings).",
        "",
        "## Candidates",
        "",
        *candidate_table(rows, scores, analysis),
        "",
        "¹ At full width and the study's input size (the analytic cost model); trained at width "
        f"x{study.width_mult:g}.",
        "",
        f"Noise floor: pooled seed std of the reference {TARGET} {_f(noise['std'])} (df {noise['df']}).",
        "",
        "## Signals against the reference",
        "",
        "Kendall's tau-b and Spearman's rho between each signal (larger = predicted better) and the reference "
        "mean; 95 % intervals from a hierarchical bootstrap (candidates, then each candidate's seeds). Top-1 "
        "regret: the best reference mean minus that of the signal's pick, with its interval over resampled seeds.",
        "",
        *fidelity_table(analysis),
        "",
        "## Paired differences over seeds",
        "",
        "- " + _diff_line(f"paper BH - base, {TARGET}", analysis["paper_minus_base"]),
        "- " + _diff_line(f"control - base, {TARGET} (positive control)", analysis["control_minus_base"]),
        "- " + _diff_line("control - base, AP50_tiny1", analysis["control_minus_base_tiny1"]),
        "",
        "## Plots",
        "",
        "![Kendall tau per signal](plots/fidelity.png)",
        "",
        *(f"![{name}](plots/{plot_name(name)}.png)" for name in signals),
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(args.out / "report.md", text)
    atomic_write_json(args.out / "results.json", {"rows": rows, "scores": scores, "analysis": analysis})
    with open(args.out / "signals.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["signal", *rows])
        for name, values in signals.items():
            writer.writerow([name, *(values.get(label, "") for label in rows)])
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    args.out.mkdir(parents=True, exist_ok=True)
    study = load_demo_study(args.study, args.overrides, args.out)
    candidates = pick_candidates(study, args.picks)
    print("candidates: " + ", ".join(f"{label} {sid}" for label, sid in candidates), flush=True)
    wall = None
    if not args.report_only:
        from bhsearch.data.registry import ensure_synthetic, parse_ref

        for stage in (study.stages.pretrain, study.stages.finetune):
            kind, path = parse_ref(stage.data)
            if kind.startswith("synthetic-"):
                ensure_synthetic(kind, path)
        t0 = time.perf_counter()
        run_jobs(args, study, candidates)
        wall = time.perf_counter() - t0
        timing = args.out / "wall_time.json"
        if wall > 60 or not timing.is_file():
            timing.write_text(json.dumps({"seconds": wall, "load_end": os.getloadavg()}))
    if (args.out / "wall_time.json").is_file():
        wall = json.loads((args.out / "wall_time.json").read_text())["seconds"]
    scores_path = args.out / "scores.json"
    if scores_path.is_file():
        scores = json.loads(scores_path.read_text())
    else:
        scores = training_free_signals(study, candidates, args.score_batch)
        scores_path.write_text(json.dumps(scores, indent=2))
    rows = load_results(args.out, candidates)
    signals = signal_table(rows, scores)
    analysis = analyse(rows, signals)
    plot_signals(args.out, signals, analysis)
    print(write_report(args, study, rows, scores, signals, analysis, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())

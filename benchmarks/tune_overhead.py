"""Ray Tune's overhead per trial, and what ASHA saves, on a small synthetic study.

Runs the same candidate set (a seeded random sample of the solver's candidates plus the base and
the paper's BH config) twice, one trial at a time so times add up:

* FIFO: every candidate to the end;
* ASHA: weak candidates stopped at the rungs.

Prints (1) Tune's overhead = study wall time - sum of trial times (``time_total_s``), per trial
and as a share of the wall time, (2) the trial-epochs ASHA spent vs running all to the end, and
(3) whether both runs pick the same winner. Ray is started once, before both studies, and its
start-up is reported separately.

    python benchmarks/tune_overhead.py                   # proxy-only, 6 candidates, ~3-6 min on 2 cores
    python benchmarks/tune_overhead.py --finetune        # with the detector stage (slower)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def make_study(name: str, args: argparse.Namespace, root: Path, scheduler: str):
    from bhsearch.tune.study import parse_study

    stages = {
        "pretrain": {
            "data": f"synthetic-cifar100:{root / 'cifar100'}",
            "epochs": args.epochs,
            "batch_size": 64,
            "lr": 0.05,
            "max_train_samples": args.train_samples,
            "max_eval_samples": 300,
        }
    }
    if args.finetune:
        stages["finetune"] = {
            "data": f"synthetic-tinyperson:{root / 'tinyperson'}",
            "epochs": args.epochs,
            "batch_size": 4,
            "lr": 0.02,
            "warmup_steps": 5,
            "tile": [256, 256],
            "max_train_tiles": 16,
            "max_eval_images": 2,
            "fpn_channels": 32,
        }
    return parse_study(
        {
            "name": name,
            "base": "resnet50",
            "width_mult": args.width,
            "space": {"tolerance": 2.0, "options": {"top": 30}},
            "search": {"algorithm": "random", "num_samples": args.samples, "seed": args.seed, "max_concurrent": 1},
            "scheduler": {"type": scheduler, "grace_period": 1, "reduction_factor": 2},
            "stages": stages,
            "resources": {"cpu": 1},
            "latency": {"input_size": "320x256", "reps": 2},
            "storage": str(root / "runs"),
        }
    )


def summarize(outcome) -> dict:
    import json

    df = outcome.table
    trial_s = 0.0
    for path in Path(outcome.run_dir).glob("trial_*/result.json"):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if lines:
            trial_s += json.loads(lines[-1])["time_total_s"]
    done = df[df["status"] == "completed"]
    return {
        "wall_s": outcome.wall_s,
        "trial_s": trial_s,
        "overhead_s": outcome.wall_s - trial_s,
        "trials": len(df),
        "epochs": int(df["epochs"].sum()),
        "epochs_all": int(df["max_epochs"].sum()),
        "winner": done.iloc[0]["spec_id"] if len(done) else None,
        "ranking": list(done["spec_id"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=6, help="candidates (including the 2 reference points)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage")
    parser.add_argument("--width", type=float, default=0.125, help="width multiplier of the candidates")
    parser.add_argument("--train-samples", type=int, default=600, help="pre-training images per epoch")
    parser.add_argument("--finetune", action="store_true", help="add the detector fine-tuning stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    import ray

    from bhsearch.tune.runner import prepare_data, run_study

    root = args.out or Path(tempfile.mkdtemp(prefix="bhsearch-tune-bench-"))
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        fifo_study = make_study("fifo", args, root, "fifo")
        prepare_data(fifo_study)
        fifo = summarize(run_study(fifo_study, verbose=0))
        asha = summarize(run_study(make_study("asha", args, root, "asha"), verbose=0))
    finally:
        ray.shutdown()

    print(
        f"setting: {args.samples} candidates, {args.epochs} epoch(s) per stage, width x{args.width}, "
        f"{'pre-train + fine-tune' if args.finetune else 'pre-train only'}, one trial at a time; work in {root}"
    )
    print(f"Ray start-up (once): {ray_start:.1f} s")
    for name, r in (("FIFO", fifo), ("ASHA", asha)):
        share = r["overhead_s"] / r["wall_s"] if r["wall_s"] else float("nan")
        print(
            f"{name}: wall {r['wall_s']:.1f} s, trials {r['trial_s']:.1f} s, Tune overhead {r['overhead_s']:.1f} s "
            f"= {r['overhead_s'] / max(1, r['trials']):.2f} s/trial = {100 * share:.1f} % of the wall time"
        )
    print(
        f"trial-epochs: ASHA {asha['epochs']} vs all to the end {fifo['epochs']} "
        f"(ratio {asha['epochs'] / max(1, fifo['epochs']):.2f}); wall-time ratio ASHA/FIFO "
        f"{asha['wall_s'] / fifo['wall_s']:.2f}"
    )
    same = asha["winner"] == fifo["winner"]
    print(f"winner FIFO: {fifo['winner']}\nwinner ASHA: {asha['winner']}\nsame winner: {same}")


if __name__ == "__main__":
    main()

"""Write the GPU-check studies (``benchmarks/gpu_check.sh``), derived from the shipped ``studies/demo.yaml``.

* ``OUT/gpu-demo.yaml``: the demo at full width (``width_mult: 1``), 640x512 fine-tuning tiles, full-width FPN
  and torchvision's default heads, AMP + channels_last, one GPU per trial.
* ``OUT/gpu-fraction.yaml``: the same, shorter (2 + 2 epochs, FIFO), with ``resources: {gpu: 0.25}`` so four
  trials share the GPU.

Data is generated under ``OUT/data`` on first use, runs go to ``OUT/runs/studies``.

    python benchmarks/gpu_studies.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_studies(out: str | Path) -> tuple[Path, Path]:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    demo = yaml.safe_load((ROOT / "studies" / "demo.yaml").read_text())
    demo["name"] = "gpu-demo"
    demo["space"]["file"] = str(ROOT / "bhsearch" / "resources" / "spaces" / "resnet.yaml")
    demo["width_mult"] = 1.0
    demo["storage"] = str(out / "runs" / "studies")
    demo["stages"]["pretrain"]["data"] = f"synthetic-cifar100:{out / 'data' / 'cifar100'}"
    demo["stages"]["finetune"]["data"] = f"synthetic-tinyperson:{out / 'data' / 'tinyperson'}"
    finetune = demo["stages"]["finetune"]
    finetune["tile"] = [640, 512]
    finetune["fpn_channels"] = 256
    finetune.pop("detector_kwargs", None)  # torchvision's default heads at full width
    for stage in ("pretrain", "finetune"):
        demo["stages"][stage]["amp"] = "auto"  # bf16 where supported, else fp16 + GradScaler
        demo["stages"][stage]["channels_last"] = "on"
    demo["resources"] = {"cpu": 4, "gpu": 1}
    demo["latency"]["input_size"] = "640x512"

    frac = yaml.safe_load(yaml.safe_dump(demo))
    frac["name"] = "gpu-fraction"
    frac["resources"] = {"cpu": 2, "gpu": 0.25}  # four trials at a time on one GPU
    frac["search"]["num_samples"] = 4
    frac["noise"] = {"repeats": 1}  # no extra seeds
    frac["scheduler"] = {"type": "fifo", "metric": "AP50_tiny"}
    frac["stages"]["pretrain"]["epochs"] = 2
    frac["stages"]["finetune"]["epochs"] = 2
    frac["stages"]["finetune"]["eval_every"] = 2

    paths = out / "gpu-demo.yaml", out / "gpu-fraction.yaml"
    from bhsearch.fileio import atomic_write_text

    for path, study in zip(paths, (demo, frac), strict=True):
        atomic_write_text(path, yaml.safe_dump(study, sort_keys=False))
    return paths


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for written in write_studies(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(written)

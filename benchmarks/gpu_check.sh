#!/usr/bin/env bash
# GPU verification, one prepared script (at most ~11 min, typically less, on one CUDA GPU). Run from the repository root:
#
#     OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh        # OUT defaults to ./gpu-check-out
#
# Steps (each under its own time limit; a failing step is recorded and the next one runs):
#   1. gpu_throughput.py: images/s of bhsearch's pre-training and fine-tuning steps vs a bare loop
#      (AMP, channels_last), overhead ratio (target <= 10 %), peak vs analytic memory
#   2. pretrain on synthetic ImageNet JPEGs at 224 px (nvJPEG decode on the GPU), AMP + channels_last,
#      then finetune from it on synthetic TinyPerson with 640x512 tiles, AMP + channels_last
#   3. the demo study at full width (width_mult 1) with 640x512 tiles, one GPU per trial
#   4. a fractional-GPU study (resources: {gpu: 0.25}: four trials share the GPU)
#   5. bhsearch profile --device cuda (latency lookup table of the ResNet space at 640x512)
# Everything goes to $OUT: logs (*.log), JSON results, run folders, summary.txt (one line per step).
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export RAY_DEDUP_LOGS=0
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
cd "$OUT"

step() {  # step NAME SECONDS COMMAND...
  local name="$1" limit="$2"
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/$name.log"
  timeout --kill-after=20 "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s (limit ${limit}s)" | tee -a "$SUMMARY"
  tail -n 5 "$OUT/$name.log"
}

{
  echo "date $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 4
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available(), torch.version.cuda)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. throughput and memory of our training step vs a bare loop
step throughput 100 "$PY" "$ROOT/benchmarks/gpu_throughput.py" --device cuda --spec bh-resnet50 --batch 128 \
  --image-size 224 --steps 15 --warmup 5 --repeats 3 --json "$OUT/throughput.json"

# 2. pretrain (ImageNet layout, GPU JPEG decode) + finetune, AMP and channels_last
cat >"$OUT/amp_cl.yaml" <<'EOF'
amp: auto            # bf16 where supported, else fp16 with a GradScaler
channels_last: "on"
EOF
"$PY" -m bhsearch data synth-imagenet "$OUT/data/imagenet" --classes 20 --train 40 --val 10 --min-size 160 \
  --max-size 320 --overwrite >"$OUT/synth_imagenet.log" 2>&1
step pretrain 90 "$PY" -m bhsearch pretrain --spec bh-resnet50 --data "imagenet:$OUT/data/imagenet" --epochs 2 \
  --batch-size 64 --lr 0.1 --num-workers 4 --decode auto --device cuda --config "$OUT/amp_cl.yaml" \
  --progress off --out "$OUT/runs/pre" --overwrite --json
step finetune 100 "$PY" -m bhsearch finetune --spec bh-resnet50 --data "synthetic-tinyperson:$OUT/data/tinyperson" \
  --init "$OUT/runs/pre/backbone.safetensors" --tile 640x512 --epochs 2 --batch-size 8 --num-workers 4 \
  --device cuda --config "$OUT/amp_cl.yaml" --progress off --out "$OUT/runs/ft" --overwrite --json

# 3 + 4. studies derived from the shipped demo: full width, 640x512 tiles; and a fractional-GPU one
"$PY" "$ROOT/benchmarks/gpu_studies.py" "$OUT" >"$OUT/studies.log" 2>&1 || echo "gpu_studies.py failed" >>"$SUMMARY"
step study_demo 170 "$PY" -m bhsearch tune "$OUT/gpu-demo.yaml" --json
step study_fraction 110 "$PY" -m bhsearch tune "$OUT/gpu-fraction.yaml" --json
nvidia-smi --query-gpu=memory.used,memory.total --format=csv >>"$OUT/env.txt" 2>&1

# 5. latency lookup table on the GPU
step profile 80 "$PY" -m bhsearch profile --device cuda --base resnet50 --input 640x512 --warmup 2 --reps 5 \
  --out "$OUT/profile_cuda.json" --json

echo "== summary ($SUMMARY)"
cat "$SUMMARY"

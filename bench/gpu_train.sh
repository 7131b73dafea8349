#!/usr/bin/env bash
# Issue 17's one GPU call: every training run at once on one GPU (training/gpu_runs.py), each with
# the same wall-time budget, then metrics + chosen weights as tar parts under $OUT.
# From the repo root, with .gpu-data/{fashion-mnist,kjv} carried:  bash bench/gpu_train.sh [SECONDS]
# Back on the CPU machine: python -m training.gpu_runs apply --parts <folder of the parts>
set -uo pipefail
budget=${1:-220}
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))' || exit 1
python3 -m training.gpu_runs launch --runs gpu-runs --data .gpu-data --budget "$budget" \
    ${GPU_RUNS_ARGS:-} 2>&1 | tee "$out/launch.log"
if ! python3 -m training.gpu_runs pack --runs gpu-runs --out "$out"; then
    # Packing failed: bring back what is small (logs, metrics) rather than nothing.
    tar -cf "$out/gpu-runs-small.tar" --exclude='*.safetensors' --exclude='*.pt' gpu-runs
fi

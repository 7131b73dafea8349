#!/usr/bin/env bash
# Issue 17's one GPU call: every training run at once on one GPU (models/gpu_runs.py), each with
# the same wall-time budget, then metrics + chosen weights as tar parts under $OUT.
# From the repo root, with .gpu-data/{fashion-mnist,kjv} carried:  bash bench/gpu_train.sh [SECONDS]
set -euo pipefail
budget=${1:-240}
out=${OUT:-gpu-out}
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'
python3 -m models.gpu_runs launch --runs gpu-runs --data .gpu-data --budget "$budget" ${GPU_RUNS_ARGS:-}
python3 -m models.gpu_runs pack --runs gpu-runs --out "$out"

#!/usr/bin/env bash
# GPU/TPU readiness: correctness (bf16 logits vs a float32 CPU reference, sharded vs unsharded samples), then the
# sampler's bandwidth fraction and the trainer's MFU with and without the hand-written backward passes, into one
# JSON ($OUT/gpu_check.json when $OUT is set, else benchmarks/results/gpu_check.json). See benchmarks/gpu_check.py.
#
#   benchmarks/gpu_check.sh            # on one GPU: a random 1B Llama, under 8 minutes
#   benchmarks/gpu_check.sh --smoke    # the tiny model on whatever backend is here (CI runs it on the CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
start=$(date +%s)
"$PYTHON" -m benchmarks.gpu_check "$@"
echo "[gpu_check.sh] $(( $(date +%s) - start )) s"

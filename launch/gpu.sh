#!/usr/bin/env bash
# Runs `python -m lsi.main ...` on one host with N GPUs: one process, every chosen GPU in the mesh.
#
#   launch/gpu.sh [--dry-run] [--gpus=N] [--mesh=FILE|none] --run_dir=DIR -- LSI_MAIN_ARGS...
#
# Example (Table 3, GSM8K, with a 1B model on 8 GPUs):
#   launch/gpu.sh --gpus=8 --run_dir=runs/table3_gsm8k_llama_1b -- \
#       --gin_file=gin_configs/runs/table3_gsm8k.gin --gin_file=gin_configs/models/llama_1b.gin \
#       --gin_param="lsi.Experiment.model='/models/Llama-3.2-1B-Instruct'" --stage=self_improve --stage=report
#
# It runs, from the repository root:
#   CUDA_VISIBLE_DEVICES=0,...,N-1 $LSI_PYTHON -m lsi.main LSI_MAIN_ARGS... --gin_file=MESH \
#       '--gin_param=lsi.Experiment.run_dir="DIR"' --gin_param=lsi.Experiment.distributed=False
# The mesh file comes after the run's own gin files, so it replaces a run file's TPU mesh; --gin_param bindings
# (yours and the launcher's) are applied after every file, so they win over it.
#
# Arguments:
#   --gpus=N          use GPUs 0..N-1 (default: CUDA_VISIBLE_DEVICES if set, else every GPU nvidia-smi lists)
#   --mesh=FILE       the mesh gin file (default: gin_configs/meshes/gpu_1.gin for one GPU, gpu_8.gin, FSDP over
#                     all of them, for more); --mesh=none adds none (the run file's own mesh stays)
#   --run_dir=DIR     the experiment's run directory (created by lsi.main)                          [LSI_RUN_DIR]
#   --dry-run         print the command instead of running it
#   --                everything after it goes to lsi.main unchanged (--gin_file, --gin_param, --stage, ...)
# Environment:
#   LSI_PYTHON        the interpreter (default: .venv/bin/python in this repository)
#   LSI_DATA_DIR      datasets (default: lsi's own default)
#   XLA_PYTHON_CLIENT_MEM_FRACTION   share of each GPU's memory JAX reserves (default here: 0.9; JAX's is 0.75)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gpus=""
mesh=""
run_dir="${LSI_RUN_DIR:-}"
dry_run=0
main_args=()

while (($#)); do
  case "$1" in
    --gpus=*) gpus="${1#*=}" ;;
    --mesh=*) mesh="${1#*=}" ;;
    --run_dir=*) run_dir="${1#*=}" ;;
    --dry-run | --dry_run) dry_run=1 ;;
    -h | --help) usage 0 ;;
    --) shift; main_args=("$@"); break ;;
    *) echo "gpu.sh: unknown argument '$1' (lsi.main's flags go after --)." >&2; usage ;;
  esac
  shift
done

[[ -n "$run_dir" ]] || { echo "gpu.sh: --run_dir=DIR (or LSI_RUN_DIR) is required." >&2; usage; }
check_run_dir_quotable gpu.sh "$run_dir"

if [[ -n "$gpus" ]]; then
  [[ "$gpus" =~ ^[1-9][0-9]*$ ]] || { echo "gpu.sh: --gpus must be a positive integer, got '$gpus'." >&2; exit 2; }
  visible="$(seq -s, 0 $((gpus - 1)))"
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  visible="$CUDA_VISIBLE_DEVICES"
  gpus="$(tr ',' '\n' <<<"$visible" | grep -c .)"
elif command -v nvidia-smi >/dev/null 2>&1; then
  gpus="$(nvidia-smi -L | grep -c '^GPU ')"
  ((gpus > 0)) || { echo "gpu.sh: nvidia-smi lists no GPU." >&2; exit 2; }
  visible="$(seq -s, 0 $((gpus - 1)))"
else
  echo "gpu.sh: no nvidia-smi here; say how many GPUs with --gpus=N." >&2
  exit 2
fi

if [[ -z "$mesh" ]]; then
  if ((gpus == 1)); then
    mesh="gin_configs/meshes/gpu_1.gin"
  else
    mesh="gin_configs/meshes/gpu_8.gin"
  fi
fi

cmd=(env "CUDA_VISIBLE_DEVICES=$visible"
  "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
  # TensorFlow (SeqIO's data pipeline) must not take GPU memory from JAX.
  "TF_FORCE_GPU_ALLOW_GROWTH=true" "TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}")
if [[ -n "${LSI_DATA_DIR:-}" ]]; then
  cmd+=("LSI_DATA_DIR=$LSI_DATA_DIR")
fi
cmd+=("${LSI_PYTHON:-.venv/bin/python}" -m lsi.main "${main_args[@]}")
if [[ "$mesh" != "none" ]]; then
  cmd+=("--gin_file=$mesh")
fi
cmd+=("--gin_param=lsi.Experiment.run_dir=\"$run_dir\"" "--gin_param=lsi.Experiment.distributed=False")

cd "$repo_root"
if ((dry_run)); then
  line="cd $(shq "$repo_root") &&"
  for word in "${cmd[@]}"; do
    line+=" $(shq "$word")"
  done
  printf '%s\n' "$line"
  exit 0
fi
exec "${cmd[@]}"

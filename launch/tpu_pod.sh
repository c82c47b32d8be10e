#!/usr/bin/env bash
# Runs one `python -m lsi.main ...` command on every worker of a TPU VM pod slice, one process per host.
#
#   launch/tpu_pod.sh [--dry-run] --tpu=NAME --zone=ZONE [--project=PROJECT] --run_dir=DIR -- LSI_MAIN_ARGS...
#
# Example (Table 3, GSM8K, on a v4-1024 slice):
#   launch/tpu_pod.sh --tpu=lmsi-v4-1024 --zone=us-central2-b --run_dir=gs://lmsi-runs/table3_gsm8k -- \
#       --gin_file=gin_configs/runs/table3_gsm8k.gin --stage=self_improve --stage=report
#
# Every worker runs, through `gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command=...`:
#   cd $LSI_REPO_DIR && $LSI_PYTHON -m lsi.main LSI_MAIN_ARGS... \
#       '--gin_param=lsi.Experiment.run_dir="DIR"' --gin_param=lsi.Experiment.distributed=True
# lsi.Experiment.distributed=True makes lsi.main call jax.distributed.initialize(), which finds the coordinator,
# the process count and this host's index from the TPU metadata on its own; the mesh then spans every chip of the
# slice (gin_configs/meshes/tpu_v4_*.gin). The --gin_param flags come after LSI_MAIN_ARGS, so they win.
#
# Arguments (each may also come from the environment variable named in brackets):
#   --tpu=NAME        TPU VM name                                   [TPU_NAME]
#   --zone=ZONE       its zone                                      [TPU_ZONE]
#   --project=ID      Google Cloud project (default: gcloud's)      [TPU_PROJECT]
#   --run_dir=DIR     the experiment's run directory. Every host writes its sample shards there and reads the
#                     others' files, so it must be one place all workers reach under the same name: a GCS URL
#                     (gs://BUCKET/PATH: lsi reads and writes it through etils.epath, Orbax and TensorFlow, see
#                     docs/architecture.md for what GCS guarantees), or an absolute path on a filesystem every
#                     worker mounts at that path (Filestore / NFS, a gcsfuse mount).                [LSI_RUN_DIR]
#   --dry-run         print the gcloud command instead of running it
#   --                everything after it goes to lsi.main unchanged (--gin_file, --gin_param, --stage, ...)
# Environment on the workers:
#   LSI_REPO_DIR      this repository's checkout on every worker (default: ~/lsi); with its .venv installed
#                     (`make install`), e.g. once with --worker=all --command='git clone ... ~/lsi && cd ~/lsi &&
#                     make install'
#   LSI_PYTHON        the interpreter, relative to LSI_REPO_DIR or absolute (default: .venv/bin/python)
#   LSI_DATA_DIR      datasets on every worker (default: the workers' own LSI_DATA_DIR, else lsi's default)
#   LSI_EXTRA_ENV     extra VAR=value words put before the command (e.g. "TPU_STDERR_LOG_LEVEL=0")
# Environment here:
#   GCLOUD_SSH_FLAGS  extra flags for `gcloud compute tpus tpu-vm ssh` (e.g. "--tunnel-through-iap")
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
project="${TPU_PROJECT:-}"
run_dir="${LSI_RUN_DIR:-}"
dry_run=0
main_args=()

while (($#)); do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --run_dir=*) run_dir="${1#*=}" ;;
    --dry-run | --dry_run) dry_run=1 ;;
    -h | --help) usage 0 ;;
    --) shift; main_args=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument '$1' (lsi.main's flags go after --)." >&2; usage ;;
  esac
  shift
done

[[ -n "$tpu" ]] || { echo "tpu_pod.sh: --tpu=NAME (or TPU_NAME) is required." >&2; usage; }
[[ -n "$zone" ]] || { echo "tpu_pod.sh: --zone=ZONE (or TPU_ZONE) is required." >&2; usage; }
[[ -n "$run_dir" ]] || { echo "tpu_pod.sh: --run_dir=DIR (or LSI_RUN_DIR) is required." >&2; usage; }
case "$run_dir" in
  gs://?*/?*) ;;
  gs://*) echo "tpu_pod.sh: run_dir '$run_dir' must name a bucket and a folder in it: gs://BUCKET/PATH." >&2
    exit 2 ;;
  *://*) echo "tpu_pod.sh: run_dir '$run_dir': of object stores only gs:// is supported." >&2
    exit 2 ;;
  /*) ;;
  *) echo "tpu_pod.sh: run_dir '$run_dir' must be a gs:// URL or an absolute path on a filesystem every worker" \
      "mounts." >&2
    exit 2 ;;
esac
check_run_dir_quotable tpu_pod.sh "$run_dir"

# shellcheck disable=SC2088  # the ~ is meant for the workers' shell, not this one
repo_dir="${LSI_REPO_DIR:-~/lsi}"
python="${LSI_PYTHON:-.venv/bin/python}"

# The command every worker runs. A leading ~/ of the repo dir stays unquoted so that it expands on the worker.
case "$repo_dir" in
  \~/*) remote="cd ~/$(shq "${repo_dir#\~/}") &&" ;;
  *) remote="cd $(shq "$repo_dir") &&" ;;
esac
if [[ -n "${LSI_DATA_DIR:-}" ]]; then
  remote+=" LSI_DATA_DIR=$(shq "$LSI_DATA_DIR")"
fi
if [[ -n "${LSI_EXTRA_ENV:-}" ]]; then
  read -r -a extra_env <<<"$LSI_EXTRA_ENV"
  for assignment in "${extra_env[@]}"; do
    remote+=" $(shq "$assignment")"
  done
fi
remote+=" $(shq "$python") -m lsi.main"
for arg in "${main_args[@]}" "--gin_param=lsi.Experiment.run_dir=\"$run_dir\"" \
  "--gin_param=lsi.Experiment.distributed=True"; do
  remote+=" $(shq "$arg")"
done

cmd=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone")
if [[ -n "$project" ]]; then
  cmd+=("--project=$project")
fi
if [[ -n "${GCLOUD_SSH_FLAGS:-}" ]]; then
  read -r -a ssh_flags <<<"$GCLOUD_SSH_FLAGS"
  cmd+=("${ssh_flags[@]}")
fi
cmd+=(--worker=all "--command=$remote")

if ((dry_run)); then
  printf '# on every worker: %s\n' "$remote"
  line=""
  for word in "${cmd[@]}"; do
    line+="$(shq "$word") "
  done
  printf '%s\n' "${line% }"
  exit 0
fi
exec "${cmd[@]}"

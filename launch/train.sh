#!/usr/bin/env bash
# Train on this machine with N processes (default: one per GPU, or 2 on a CPU-only machine):
#   NPROC=8 bash launch/train.sh --config configs/llama-3.1-8b-mpo.yaml --set model.path=/models/Llama-3.1-8B-Instruct
# It runs `mpo-dist check` once first (CHECK=0 skips it), so a run that would fail stops with one message instead of
# one per rank plus torchrun's failure report. A user error the ranks find (e.g. no intact resume tag) is printed once
# and exits 2. For clusters use slurm/train.sbatch instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c "import torch; print(torch.cuda.device_count() or 2)")
fi
if [ "${CHECK:-1}" != 0 ]; then
  device_args=(--gpus-per-node "$NPROC")
  if [ "$(python -c "import torch; print(torch.cuda.is_available())")" != True ]; then device_args+=(--cpu); fi
  # --resume none: the trainer verifies the resume tag itself, its ranks sharing the reading (docs/checkpoints.md)
  python -m mpo_dist.cli check "${device_args[@]}" "$@" --resume none || exit $?
fi
# The ranks append a user error (bad resume tag, ...) to this file instead of each printing it; it is printed once,
# last, and the exit code is 2 (torchrun turns every failed rank into 1).
MPO_DIST_ERROR_FILE="$(mktemp)"
export MPO_DIST_ERROR_FILE
trap 'rm -f "$MPO_DIST_ERROR_FILE"' EXIT
status=0
python -m torch.distributed.run --standalone --nproc-per-node="$NPROC" -m mpo_dist.cli train "$@" || status=$?
if [ -s "$MPO_DIST_ERROR_FILE" ]; then
  awk '!seen[$0]++' "$MPO_DIST_ERROR_FILE" >&2
  exit 2
fi
exit "$status"

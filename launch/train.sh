#!/usr/bin/env bash
# Train on this machine with N processes (default: one per GPU, or 2 on a CPU-only machine):
#   NPROC=8 bash launch/train.sh --config configs/llama-3.1-8b-mpo.yaml --set model.path=/models/Llama-3.1-8B-Instruct
# It runs `mpo-dist check` once first with the run's own arguments, --resume included (CHECK=0 skips it), so a run that
# would fail stops with one message instead of one per rank plus torchrun's failure report. Exit codes
# (docs/quickstart.md, "Exit codes"): 0 done; 75 stopped early (STOP file or SIGTERM) after every rank saved: resume
# with --resume auto; 2 a user error, printed once as the last line; 1 a crash. torchrun's own report goes to a log
# file whose path is printed when it matters. For clusters use slurm/train.sbatch instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c "import torch; print(torch.cuda.device_count() or 2)")
fi
if [ "${CHECK:-1}" != 0 ]; then
  device_args=(--gpus-per-node "$NPROC")
  if [ "$(python -c "import torch; print(torch.cuda.is_available())")" != True ]; then device_args+=(--cpu); fi
  # The tag's files are checksummed by the ranks, who share the reading; check reads its marker and world size.
  python -m mpo_dist.cli check "${device_args[@]}" --skip-tag-checksums "$@" || exit $?
fi
exec python -m mpo_dist.train.launcher --standalone --nproc-per-node="$NPROC" -m mpo_dist.cli train "$@"

#!/usr/bin/env bash
# Train on this machine with N processes (default: one per GPU, or 2 on a CPU-only machine):
#   NPROC=8 bash launch/train.sh --config configs/llama-3.1-8b-mpo.yaml --set model.path=/models/Llama-3.1-8B-Instruct
# For clusters use slurm/train.sbatch instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c "import torch; print(torch.cuda.device_count() or 2)")
fi
exec python -m torch.distributed.run --standalone --nproc-per-node="$NPROC" -m mpo_dist.cli train "$@"

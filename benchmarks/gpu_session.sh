#!/usr/bin/env bash
# The GPU measurements of the kernel and train-step goals, in as few device calls as possible (docs/benchmarks.md).
#
# On the development machine, once:  bash ../shared/device/make-wheels.sh pytest pluggy iniconfig packaging pygments
#   (DeepSpeed, datasets, liger-kernel, cut-cross-entropy and pytest as wheels in ./.whl, which git ignores)
# On the GPU machine, from the repository root, carrying .whl:
#   bash benchmarks/gpu_session.sh "$OUT" kernel        # kernel vs peers, all rows live, N = 16384 and the train-step
#                                                        #   batch's 3072 live rows                          (~1 min)
#   bash benchmarks/gpu_session.sh "$OUT" tests         # kernel tests compiled on the GPU, packed == padded with
#                                                        #   flex_attention, the compacted head vs full logits (~2-4 min)
#   bash benchmarks/gpu_session.sh "$OUT" sweep         # tile-config sweep of the Triton kernel            (~1.5 min)
#   bash benchmarks/gpu_session.sh "$OUT" train         # MPO train step, --rounds 3, + a profile per method (~9 min)
#   bash benchmarks/gpu_session.sh "$OUT" train-varlen  # lengths 256..1024, packing on                     (~3 min)
#   bash benchmarks/gpu_session.sh "$OUT" plan          # issue 13: planned vs measured memory, three configurations
#                                                        #   (1.5B, 3B offload, 8B one GPU); `plan --configs 8b-cache`
#                                                        #   runs one (docs/plan.md)
#   bash benchmarks/gpu_session.sh "$OUT" kernel,tests,train-varlen   # several parts in one device call, in that order
#   bash benchmarks/gpu_session.sh "$OUT" kernel,tests,train,train-varlen --cpu-smoke   # check this script on a CPU
# Arguments after the parts go to every benchmark script run (e.g. `train --methods mpo-dist-no-ckpt naive`), except
# --cpu-smoke: tiny shapes on the CPU, no wheels, no nvidia-smi, the kernel benchmark (CUDA only) skipped.
# STEP_TIMEOUT (seconds, default 540) bounds each step, so one hung step cannot eat a whole device call.
# Full logs go to OUT; the tables are printed last. The exit status is the number of failed steps.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT_DIR kernel|tests|sweep|train|train-varlen|plan[,...] [--cpu-smoke] [ARGS...]}
parts=${2:?usage: gpu_session.sh OUT_DIR kernel|tests|sweep|train|train-varlen|plan[,...] [--cpu-smoke] [ARGS...]}
shift 2
smoke=0
args=()  # the rest goes to the benchmark scripts
for arg in "$@"; do
  if [ "$arg" = --cpu-smoke ]; then smoke=1; else args+=("$arg"); fi
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."

if [ "$smoke" -eq 0 ]; then
  if [ -d .whl ] && [ ! -d /tmp/site/deepspeed ]; then  # once per machine
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "installing .whl failed"; exit 1; }
  fi
  [ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD
  # The image's "9.0a" breaks DeepSpeed's op builder (int("0a")) when it JIT-builds FusedAdam.
  export TORCH_CUDA_ARCH_LIST=9.0
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.csv" 2>&1
fi
export PYTHONUNBUFFERED=1
train_smoke=()
[ "$smoke" -eq 1 ] && train_smoke=(--cpu-smoke)

failures=0
step() {  # step NAME LOG COMMAND...: run, keep the log, count a failure
  local name=$1 log=$2; shift 2
  local started=$SECONDS
  timeout "${STEP_TIMEOUT:-540}" "$@" > "$out/$log" 2>&1
  local status=$?
  echo "$name: exit $status after $((SECONDS - started)) s (log: $log)"
  [ "$status" -eq 0 ] || failures=$((failures + 1))
}

for part in ${parts//,/ }; do
  case "$part" in
    kernel)
      if [ "$smoke" -eq 1 ]; then echo "kernel benchmark: CUDA only, skipped in --cpu-smoke"; continue; fi
      # 3072 = the live rows of the train-step batch (2 pairs x training chosen/rejected x 768 response tokens)
      step "kernel benchmark" logprob_kernel.log \
        python3 benchmarks/logprob_kernel.py --n 3072 16384 --ignore-fraction 0 "${args[@]}"
      grep "reference gradients" "$out/logprob_kernel.log"; sed -n '/^| N |/,$p' "$out/logprob_kernel.log"
      ;;
    tests)
      step "kernel, packing and head tests (on the GPU: compiled kernels, flex_attention)" gpu_tests.log \
        python3 -m pytest -q -p no:cacheprovider -m "not multiprocess" tests/test_kernel_logprob_triton.py \
        tests/test_kernel_logprob_torch.py tests/test_packing.py tests/test_head_compaction.py
      tail -n 3 "$out/gpu_tests.log"
      ;;
    sweep)
      if [ "$smoke" -eq 1 ]; then echo "tile sweep: CUDA only, skipped in --cpu-smoke"; continue; fi
      step "tile sweep" logprob_sweep.log python3 benchmarks/logprob_kernel.py --n 16384 --sweep --repeats 5 "${args[@]}"
      grep "reference gradients" "$out/logprob_sweep.log"; sed -n '/^| N |/,$p' "$out/logprob_sweep.log"
      ;;
    train)
      step "train-step benchmark" train_step.log python3 benchmarks/train_step.py --rounds 3 \
        --json "$out/train_step.json" --profile "$out/profile" "${train_smoke[@]}" "${args[@]}"
      tail -n 12 "$out/train_step.log"
      ;;
    train-varlen)
      step "train-step benchmark, lengths 256..1024, packed" train_step_varlen.log python3 benchmarks/train_step.py \
        --min-length 256 --packing on --json "$out/train_step_varlen.json" "${train_smoke[@]}" "${args[@]}"
      tail -n 12 "$out/train_step_varlen.log"
      ;;
    plan)
      step "planned vs measured memory" plan_vs_measured.log python3 benchmarks/plan_vs_measured.py \
        --json "$out/plan_vs_measured.json" "${train_smoke[@]}" "${args[@]}"
      sed -n '/^### /,$p' "$out/plan_vs_measured.log"
      ;;
    *)
      echo "unknown part '$part': expected kernel, tests, sweep, train, train-varlen or plan"; exit 2 ;;
  esac
done
exit "$failures"

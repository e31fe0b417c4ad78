#!/usr/bin/env bash
# The GPU measurements of the kernel and scale goals, in as few device calls as possible (docs/benchmarks.md).
#
# On the development machine, once:  bash ../shared/device/make-wheels.sh pytest pluggy iniconfig packaging pygments
#   (DeepSpeed, datasets, liger-kernel, cut-cross-entropy and pytest as wheels in ./.whl, which git ignores)
# On the GPU machine, from the repository root, carrying .whl:
#   bash benchmarks/gpu_session.sh "$OUT" kernel   # kernel benchmark (ours, torch, liger, cce)  (~1 min on an H100)
#   bash benchmarks/gpu_session.sh "$OUT" tests    # kernel tests, compiled on the GPU            (> 100 s: set STEP_TIMEOUT)
#   bash benchmarks/gpu_session.sh "$OUT" sweep    # tile-config sweep of the Triton kernel      (~1.5 min)
#   bash benchmarks/gpu_session.sh "$OUT" train    # MPO train-step benchmark                    (~3 min)
#   bash benchmarks/gpu_session.sh "$OUT" kernel,train,tests   # several parts in one device call, in that order
# Arguments after the parts go to every benchmark script run (e.g. `train --methods mpo-dist naive`).
# STEP_TIMEOUT (seconds, default 540) bounds each step, so one hung step cannot eat a whole device call.
# Full logs go to OUT; the tables are printed last. The exit status is the number of failed steps.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT_DIR kernel|tests|sweep|train[,...]}
parts=${2:?usage: gpu_session.sh OUT_DIR kernel|tests|sweep|train[,...]}
shift 2  # the rest goes to the benchmark script
mkdir -p "$out"
cd "$(dirname "$0")/.."

if [ -d .whl ] && [ ! -d /tmp/site/deepspeed ]; then  # once per machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl failed"; exit 1; }
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD
# The image's "9.0a" breaks DeepSpeed's op builder (int("0a")) when it JIT-builds FusedAdam.
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.csv" 2>&1

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
      step "kernel benchmark" logprob_kernel.log python3 benchmarks/logprob_kernel.py --n 4096 16384 "$@"
      grep "reference gradients" "$out/logprob_kernel.log"; sed -n '/^| N |/,$p' "$out/logprob_kernel.log"
      ;;
    tests)
      step "kernel tests (compiled on the GPU)" kernel_tests.log \
        python3 -m pytest -q -p no:cacheprovider tests/test_kernel_logprob_triton.py tests/test_kernel_logprob_torch.py
      tail -n 3 "$out/kernel_tests.log"
      ;;
    sweep)
      step "tile sweep" logprob_sweep.log python3 benchmarks/logprob_kernel.py --n 16384 --sweep --repeats 5 "$@"
      grep "reference gradients" "$out/logprob_sweep.log"; sed -n '/^| N |/,$p' "$out/logprob_sweep.log"
      ;;
    train)
      step "train-step benchmark" train_step.log python3 benchmarks/train_step.py --json "$out/train_step.json" "$@"
      tail -n 12 "$out/train_step.log"
      ;;
    *)
      echo "unknown part '$part': expected kernel, tests, sweep or train"; exit 2 ;;
  esac
done
exit "$failures"

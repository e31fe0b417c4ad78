#!/usr/bin/env bash
# launch/install_torch.sh VENV: install into VENV the torch wheel that requirements/torch-cpu.lock names, its hash
# checked (--require-hashes), for launch/setup_env.sh. The pin's +cpu label lets no other build match, so the package
# index's CUDA build of the same version is never a candidate. A wheel that pip's own configuration offers (a
# find-links folder) is used without asking any index, so a machine with such a folder never waits on an index it may
# not reach; otherwise the wheel comes from PyTorch's CPU index, or from MPO_DIST_TORCH_INDEX (a mirror of it) when set.
# docs/quickstart.md, "Install".
set -euo pipefail
DEFAULT_TORCH_INDEX=https://download.pytorch.org/whl/cpu
VENV="$1"
LOCK="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/requirements/torch-cpu.lock"
INDEX="${MPO_DIST_TORCH_INDEX:-$DEFAULT_TORCH_INDEX}"
install=("$VENV/bin/python" -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r "$LOCK")
"${install[@]}" --no-index || {
  echo "[install_torch] no local wheel with the locked hash: installing torch from $INDEX"
  "${install[@]}" --index-url "$INDEX"
}

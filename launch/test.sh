#!/usr/bin/env bash
# One command: set up the virtualenv from the lock, then run the whole test suite (what CI runs). Extra arguments go to
# pytest (e.g. -k resume, -m "not slurm").
#   bash launch/test.sh --latest   the drift canary: a separate venv (.venv-latest) with the newest versions setup.py's
#                                  ranges allow, the version differences against the lock, then the tests marked
#                                  `canary` (one per integration point; docs/quickstart.md, "The drift canary")
set -uo pipefail
cd "$(dirname "$0")/.."
pytest_args=("$@")
if [ "${1:-}" = "--latest" ]; then
  MPO_DIST_LATEST=1  # read by setup_env.sh below; not exported, so the tests never see it
  pytest_args=(-m canary "${@:2}")
fi
source launch/setup_env.sh || exit $?
if [ "${MPO_DIST_LATEST:-0}" = 1 ]; then
  python -m mpo_dist.versions diff requirements/cpu.lock
fi
python -m pytest -q "${pytest_args[@]}"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"

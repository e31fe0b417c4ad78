#!/usr/bin/env bash
# One command: set up the virtualenv, then run the whole test suite. Extra arguments go to pytest (e.g. -k resume, -m "not slurm").
set -uo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh || exit 1
python -m pytest -q "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"

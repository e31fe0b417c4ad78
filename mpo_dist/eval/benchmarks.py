"""Benchmarks through lm-evaluation-harness (the optional `lmeval` extra): `mpo-dist eval --lm-eval-tasks` runs the
harness's own CLI on each model directory, offline, and reads back each task's metrics with their standard errors.

It runs as a subprocess, `python -m lm_eval run ...`, so that HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE
are set before huggingface_hub and datasets read them (they are read once, at import): tasks come from the user's local
datasets cache or from local task files (`--include_path`), never from the hub. We write no benchmark code of our own.

The user's `--lm-eval-args` are parsed by lm-eval's own `run` parser, so prefixes (`--model_arg`), short forms (`-a`) and
`-aVALUE` mean here what they mean to lm-eval; only the options in ALLOWED_OPTIONS pass, since anything that sets the
model, the tasks, the output or a cache would make the numbers another model's (docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mpo_dist.eval.errors import EvalError

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# What torchrun sets for our ranks. The harness runs alone (on rank 0); given these it starts a process group of its
# own on the job's MASTER_PORT, which is taken, and fails with EADDRINUSE.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
                "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")
# lm-eval `run` options (argparse dests) a user may add: how the tasks are run and logged locally
ALLOWED_OPTIONS = ("limit", "num_fewshot", "batch_size", "max_batch_size", "gen_kwargs", "apply_chat_template",
                   "fewshot_as_multiturn", "system_instruction", "include_path", "log_samples", "samples",
                   "check_integrity", "write_out", "show_config", "verbosity", "seed", "trust_remote_code",
                   "confirm_run_unsafe_code", "metadata", "model_args")
# options refused with a reason of their own; any other option outside ALLOWED_OPTIONS is refused too
REFUSED_OPTIONS = {
    "model": "mpo-dist runs each model directory with lm-eval's hf model",
    "tasks": "give the tasks with --lm-eval-tasks, which are checked before anything is generated",
    "output_path": "mpo-dist reads the results from a fresh folder of its own for each model",
    "use_cache": "lm-eval's response cache would hand one model's answers to the other",
    "cache_requests": "mpo-dist builds each run's requests afresh",
    "config": "a config file can set the model, its arguments, the tasks and the output path",
    "device": "mpo-dist runs the harness on rank 0's device",
    "predict_only": "it computes no metrics to report",
}
# --model_args keys that pick other weights or another tokenizer than the model directory's
MODEL_IDENTITY_ARGS = ("pretrained", "peft", "delta", "tokenizer", "gguf_file")
LOG_FILE = "lm_eval.log"
INSTALL_HINT = "pip install 'mpo-dist[lmeval]' (lm-evaluation-harness 0.4)"

Scores = dict[str, dict[str, tuple[float, float | None]]]  # task -> metric -> (value, standard error)


@dataclass(frozen=True)
class LmEvalOptions:
    tasks: list[str]  # --lm-eval-tasks
    extra: list[str]  # --lm-eval-args, split like a shell would and checked against ALLOWED_OPTIONS


class _RaisingParser(argparse.ArgumentParser):
    """The class lm-eval's `run` parser is built with here: a mistake raises instead of exiting, and there is no -h."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**{**kwargs, "add_help": False})

    def error(self, message: str):
        raise EvalError(f"--lm-eval-args: lm-eval's parser says: {message}")


def run_parser() -> argparse.ArgumentParser:
    """lm-eval's own `lm-eval run` argument parser, as the installed version builds it."""
    try:
        from lm_eval._cli.run import Run
    except ImportError as error:
        raise EvalError(f"--lm-eval-tasks needs lm-eval's `run` command ({error}); {INSTALL_HINT}") from None
    subparsers = argparse.ArgumentParser(add_help=False).add_subparsers(parser_class=_RaisingParser)
    Run(subparsers)
    return subparsers.choices["run"]


def given_options(parser: argparse.ArgumentParser, words: list[str]) -> dict[str, object]:
    """The options `words` set (argparse dest -> value): those whose parsed value differs from the parser's default."""
    parsed, defaults = vars(parser.parse_args(words)), vars(parser.parse_args([]))
    return {dest: value for dest, value in parsed.items() if dest not in defaults or defaults[dest] != value}


def refusals(given: dict[str, object]) -> list[str]:
    """Why each given option may not pass, one phrase per option."""
    refused = []
    for dest, value in given.items():
        if dest == "model_args":
            keys = [key for key in MODEL_IDENTITY_ARGS if isinstance(value, dict) and key in value]
            refused += [f"--model_args {key}= (mpo-dist sets the model for each run)" for key in keys]
        elif dest in REFUSED_OPTIONS:
            refused.append(f"--{dest} ({REFUSED_OPTIONS[dest]})")
        elif dest not in ALLOWED_OPTIONS:
            refused.append(f"--{dest} (mpo-dist passes on only --{', --'.join(ALLOWED_OPTIONS)})")
    return refused


def parse_lm_eval_options(tasks: str, extra: str | None) -> LmEvalOptions:
    """--lm-eval-tasks as a list and --lm-eval-args read by lm-eval's own parser; checked before any model loads."""
    names = [task.strip() for task in tasks.split(",") if task.strip()]
    if not names:
        raise EvalError(f"--lm-eval-tasks {tasks!r} names no task; expected a comma-separated list such as mgsm_direct,arc_easy")
    try:
        words = shlex.split(extra or "")
    except ValueError as error:
        raise EvalError(f"--lm-eval-args {extra!r}: {error}") from None
    if importlib.util.find_spec("lm_eval") is None:
        raise EvalError(f"--lm-eval-tasks needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}")
    refused = refusals(given_options(run_parser(), words))
    if refused:
        raise EvalError(f"--lm-eval-args must not contain {'; '.join(refused)}")
    return LmEvalOptions(names, words)


def quick_task_lookup(tasks: list[str], include_path: str | None) -> tuple[list[str], list[str]]:
    """(names the user's --include_path tasks define, names lm-eval cannot know), in about a second instead of the
    seconds lm-eval's full index of its ~14,000 task files takes. Only plain names are looked at (no glob pattern, YAML
    file or folder). A plain name is unknown when the --include_path index lacks it and its text occurs in none of
    lm-eval's own task files, whose every task, group and tag name is written out in them. The rest is left to the
    full index."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    plain = [task for task in tasks if not (task.endswith(".yaml") or Path(task).is_dir() or any(c in task for c in "*?["))]
    local = TaskManager(include_path=include_path, include_defaults=False).match_tasks(plain) if include_path and plain else []
    unmentioned = {task: task.encode() for task in plain if task not in local}
    for task_file in Path(lm_eval.tasks.__file__).parent.rglob("*.yaml"):
        if not unmentioned:
            break
        text = task_file.read_bytes()
        for task in [task for task, name in unmentioned.items() if name in text]:
            del unmentioned[task]
    return local, list(unmentioned)


def check_tasks(options: LmEvalOptions, out_dir: Path) -> None:
    """Resolve the task list as `lm-eval run` does first (its task index, the user's --include_path and --metadata), so
    an unknown task stops the command before any reward gap or generation instead of after them."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    def refuse(reason: str) -> EvalError:
        return EvalError(f"--lm-eval-tasks {','.join(options.tasks)}: {reason} (`lm-eval ls tasks` lists its tasks; "
                         "local task files need --lm-eval-args='--include_path DIR')")

    namespace = run_parser().parse_args(["--tasks", ",".join(options.tasks), "--output_path", str(out_dir), *options.extra])
    try:
        config = EvaluatorConfig.from_cli(namespace)
    except (ValueError, OSError) as error:
        raise EvalError(f"--lm-eval-args: lm-evaluation-harness says: {' '.join(str(error).split())}") from None
    local, unknown = quick_task_lookup(config.tasks, config.include_path)
    if unknown:
        raise refuse(f"lm-evaluation-harness has no task, group or tag named {', '.join(unknown)}")
    if set(local) == set(config.tasks):
        return  # the --include_path tasks are in the full index too: later paths override lm-eval's own
    try:
        config.process_tasks(config.metadata)
    except (ValueError, OSError) as error:
        raise refuse(f"lm-evaluation-harness says: {' '.join(str(error).split())}") from None


def metric_name(key: str) -> str:
    """lm-eval's "acc,none" -> "acc"; a filtered metric keeps its filter: "exact_match,strict-match" ->
    "exact_match (strict-match)"."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else f"{metric} ({filter_name})"


def written_results_file(out_dir: Path) -> Path:
    """The one results_*.json a run wrote into its fresh `out_dir` (lm-eval puts it in a subfolder named after the model)."""
    files = sorted(out_dir.rglob("results_*.json"))
    if len(files) != 1:
        found = "no results_*.json" if not files else f"{len(files)} results files ({', '.join(map(str, files))})"
        raise EvalError(f"lm-evaluation-harness wrote {found} under {out_dir}, expected one; see {out_dir / LOG_FILE}")
    return files[0]


def read_results(path: Path) -> Scores:
    """Every numeric metric of every task (and group) in one lm-eval results file, with its `<metric>_stderr` when
    lm-eval computed one (it writes "N/A" when it did not)."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))["results"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise EvalError(f"{path}: not a readable lm-eval results file ({type(error).__name__}: {error})") from None
    scores: Scores = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)) or not filter_name:
                continue
            error = values.get(f"{metric}_stderr,{filter_name}")
            scores.setdefault(task, {})[metric_name(key)] = (float(value), float(error) if isinstance(error, (int, float)) else None)
    return scores


def harness_command(model_dir: Path, options: LmEvalOptions, *, device: str, dtype: str, out_dir: Path) -> list[str]:
    """`python -m lm_eval run` on one model directory. Its model arguments are JSON, which lm-eval reads whole, so a
    path with commas, '=' or quotes stays one path (key=value,... would split it)."""
    model_args = json.dumps({"pretrained": str(model_dir), "dtype": dtype})
    return [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", model_args,
            "--tasks", ",".join(options.tasks), "--device", device, "--output_path", str(out_dir), *options.extra]


def run_lm_eval(model_dir: Path, options: LmEvalOptions, *, device: str, dtype: str, out_dir: Path) -> Scores:
    """Run the harness on one Hugging Face directory, offline, in a fresh `out_dir` (an earlier run's folder is
    replaced), and read the results file this run wrote; its output goes to OUT_DIR/lm_eval.log."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    command = harness_command(model_dir, options, device=device, dtype=dtype, out_dir=out_dir)
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
    return read_results(written_results_file(out_dir))

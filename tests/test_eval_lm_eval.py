"""The lm-evaluation-harness bridge: `mpo-dist eval --lm-eval-tasks` on a local task (a task YAML over a small local
JSONL file) on two tiny models, offline. The report holds what lm-eval itself wrote, each task's score ± its stderr,
and the change with the error of the difference; option mistakes are one-line errors."""
from __future__ import annotations

import importlib.util
import json
import math
import socket
from pathlib import Path

import pytest

from mpo_dist.eval.benchmarks import metric_name, parse_lm_eval_options, read_results
from mpo_dist.eval.errors import EvalError

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-evaluation-harness is not installed (pip install 'mpo-dist[lmeval]')")
TASK_DIR = Path(__file__).parent / "data" / "lm_eval_task"
QUESTIONS = 4


def local_task(tmp_path: Path) -> Path:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    yaml = (TASK_DIR / "tiny_qa.yaml").read_text().replace("DATA_FILE", str(TASK_DIR / "tiny_qa.jsonl"))
    (tasks / "tiny_qa.yaml").write_text(yaml)
    return tasks


@needs_lm_eval
@pytest.mark.canary
def test_lm_eval_bridge_on_a_local_task(tiny_models: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mpo_dist.cli import main

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))  # nothing from a shared cache
    # rank 0 of a torchrun job: its launcher variables name a rendezvous port that is taken (here by this socket); the
    # harness must not try to start a process group on it
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(taken.getsockname()[1])}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "report"
    assert main(["eval", "--model", str(tiny_models["llama"]), "--reference", str(tiny_models["qwen2"]),
                 "--data", "sample:heldout", "--limit", "1", "--languages", "en", "--max-new-tokens", "2",
                 "--lm-eval-tasks", "tiny_qa", f"--lm-eval-args=--include_path {local_task(tmp_path)} --batch_size 4",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    written = {}
    for role in ("model", "reference"):
        log = (out / "lm_eval" / role / "lm_eval.log").read_text()
        assert "--include_path" in log and "HF_HUB_OFFLINE" not in log  # the command line is logged, the env is not
        (results_file,) = (out / "lm_eval" / role).rglob("results_*.json")
        written[role] = json.loads(results_file.read_text())["results"]["tiny_qa"]
        acc, stderr = written[role]["acc,none"], written[role]["acc_stderr,none"]
        # accuracy on 4 questions moves in steps of 1/4; lm-eval's stderr is the sample one, sqrt(p (1 - p) / (n - 1))
        assert acc * QUESTIONS == round(acc * QUESTIONS)
        assert stderr == pytest.approx(math.sqrt(acc * (1 - acc) / (QUESTIONS - 1)))
        assert metrics["results"][role]["benchmarks"] == {"tiny_qa": {"acc": {"value": acc, "stderr": stderr}}}
    change = metrics["benchmark_change"]["tiny_qa"]["acc"]
    assert change["change"] == pytest.approx(written["model"]["acc,none"] - written["reference"]["acc,none"])
    assert change["se"] == pytest.approx(math.hypot(written["model"]["acc_stderr,none"], written["reference"]["acc_stderr,none"]))
    report = (out / "report.md").read_text()
    section = report.split("## Benchmarks (lm-evaluation-harness)")[1].split("\n\n")[1].splitlines()
    assert section[0] == "| task | metric | reference | model | change |"
    assert section[2] == (f"| tiny_qa | acc | {written['reference']['acc,none']:.4f} ± {written['reference']['acc_stderr,none']:.4f} "
                          f"| {written['model']['acc,none']:.4f} ± {written['model']['acc_stderr,none']:.4f} "
                          f"| {change['change']:+.4f} ± {change['se']:.4f} |")


def test_results_reader_and_metric_names(tmp_path: Path) -> None:
    run = tmp_path / "model_dir_sanitised"
    run.mkdir()
    (run / "results_2026-01-01.json").write_text(json.dumps({"results": {
        "mgsm_direct_sw": {"alias": "mgsm_direct_sw", "sample_len": 250, "exact_match,remove_whitespace": 0.124,
                           "exact_match_stderr,remove_whitespace": 0.0209, "exact_match,flexible-extract": 0.2,
                           "exact_match_stderr,flexible-extract": "N/A"}}}))
    assert read_results(tmp_path) == {"mgsm_direct_sw": {"exact_match (remove_whitespace)": (0.124, 0.0209),
                                                         "exact_match (flexible-extract)": (0.2, None)}}
    assert metric_name("acc,none") == "acc" and metric_name("acc_norm,none") == "acc_norm"
    with pytest.raises(EvalError, match="wrote no results"):
        read_results(tmp_path / "empty")


@needs_lm_eval
def test_a_failing_lm_eval_run_is_one_line_naming_its_log(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from mpo_dist.eval.benchmarks import run_lm_eval

    with pytest.raises(EvalError, match=r"lm-evaluation-harness failed on .* \(full log: .*lm_eval\.log\)") as failure:
        run_lm_eval(tiny_models["llama"], ["no_such_task"], [], device="cpu", dtype="float32", out_dir=tmp_path)
    assert "\n" not in str(failure.value)


def test_missing_lm_eval_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mpo_dist.eval.benchmarks.importlib.util.find_spec", lambda name: None)
    with pytest.raises(EvalError, match=r"pip install 'mpo-dist\[lmeval\]'"):
        parse_lm_eval_options("arc_easy", None)


@pytest.mark.parametrize("tasks, extra, message", [
    (" , ", None, "names no task"),
    ("arc_easy", "--model_args pretrained=x", r"must not contain \['--model_args'\]"),
    ("arc_easy", "--tasks=mmlu", r"must not contain \['--tasks=mmlu'\]"),
    ("arc_easy", "--limit '3", "No closing quotation"),
])
def test_lm_eval_option_mistakes(tasks: str, extra: str | None, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mpo_dist.eval.benchmarks.importlib.util.find_spec", lambda name: object())  # installed or not
    with pytest.raises(EvalError, match=message):
        parse_lm_eval_options(tasks, extra)

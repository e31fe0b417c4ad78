"""The lm-evaluation-harness bridge: `mpo-dist eval --lm-eval-tasks` on a local task (a task YAML over a small local
JSONL file) on two tiny models, offline. The report holds what lm-eval itself wrote, each task's score ± its stderr,
and the change with the error of the difference; `--lm-eval-args` is read by lm-eval's own parser and only the allowed
options pass; an unknown task stops the command before anything is generated; option mistakes are one-line errors."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
from pathlib import Path

import pytest

from mpo_dist.eval.benchmarks import (
    LmEvalOptions,
    harness_command,
    metric_name,
    parse_lm_eval_options,
    read_results,
    written_results_file,
)
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
    # a model path with a comma and '=' (key=value,... model arguments would split it), and an earlier run's results
    # file, newer and impossible (not a multiple of 1/4), in the model's folder: it must not be read
    model = tmp_path / "llama,dtype=bfloat16"
    model.symlink_to(tiny_models["llama"], target_is_directory=True)
    stale = out / "lm_eval" / "model" / "old_run" / "results_2099-01-01.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"results": {"tiny_qa": {"acc,none": 0.3, "acc_stderr,none": 0.1}}}))
    os.utime(stale, (4102444800, 4102444800))
    assert main(["eval", "--model", str(model), "--reference", str(tiny_models["qwen2"]),
                 "--data", "sample:heldout", "--limit", "1", "--languages", "en", "--max-new-tokens", "2",
                 "--lm-eval-tasks", "tiny_qa", f"--lm-eval-args=--include_path {local_task(tmp_path)} --batch_size 4",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    written = {}
    for role in ("model", "reference"):
        log = (out / "lm_eval" / role / "lm_eval.log").read_text()
        assert "--include_path" in log and "HF_HUB_OFFLINE" not in log  # the command line is logged, the env is not
        assert (role == "reference") == ("llama,dtype=bfloat16" not in log)
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
    assert read_results(written_results_file(tmp_path)) == {
        "mgsm_direct_sw": {"exact_match (remove_whitespace)": (0.124, 0.0209), "exact_match (flexible-extract)": (0.2, None)}}
    assert metric_name("acc,none") == "acc" and metric_name("acc_norm,none") == "acc_norm"
    with pytest.raises(EvalError, match="wrote no results_"):
        written_results_file(tmp_path / "empty")
    (run / "results_2026-01-02.json").write_text("{}")  # one run, one file: two are never guessed between
    with pytest.raises(EvalError, match="wrote 2 results files"):
        written_results_file(tmp_path)
    with pytest.raises(EvalError, match=r"results_2026-01-02\.json: not a readable lm-eval results file \(KeyError"):
        read_results(run / "results_2026-01-02.json")


@needs_lm_eval
def test_a_failing_lm_eval_run_is_one_line_naming_its_log(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """lm-eval's own parser fails the run within a second of its start (an unknown task would fail it only after
    lm-eval indexed every task it ships, ~10 s); the message carries the log's last line."""
    from mpo_dist.eval.benchmarks import run_lm_eval

    with pytest.raises(EvalError, match=r"lm-evaluation-harness failed on .* \(exit 2\): .*unrecognized arguments: "
                                        r"--no_such_option \(full log: .*lm_eval\.log\)") as failure:
        run_lm_eval(tiny_models["llama"], LmEvalOptions(["tiny_qa"], ["--no_such_option"]), device="cpu",
                    dtype="float32", out_dir=tmp_path / "lm_eval")
    assert "\n" not in str(failure.value)


def test_missing_lm_eval_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mpo_dist.eval.benchmarks.importlib.util.find_spec", lambda name: None)
    with pytest.raises(EvalError, match=r"pip install 'mpo-dist\[lmeval\]'"):
        parse_lm_eval_options("arc_easy", None)


@needs_lm_eval
@pytest.mark.parametrize("extra, named", [
    ("--model_arg pretrained=/other", "--model_args pretrained="),  # a prefix of --model_args
    ("-apretrained=/other", "--model_args pretrained="),  # the short form with its value attached
    ("-a dtype=float16 -a pretrained=/other", "--model_args pretrained="),  # merged over several uses
    ("--model_args '{\"pretrained\": \"/other\"}'", "--model_args pretrained="),  # JSON model arguments
    ("--model_args max_length=64,peft=/adapter", "--model_args peft="),  # an adapter is another model too
    ("--output X", "--output_path"), ("-oX", "--output_path"), ("--output_path=X", "--output_path"),
    ("--use_cache C", "--use_cache"), ("-c C", "--use_cache"), ("--use_c=C", "--use_cache"),
    ("--cache_requests", "--cache_requests"), ("--cache_req refresh", "--cache_requests"),
    ("--tasks X", "--tasks"), ("-t X", "--tasks"), ("--task=X", "--tasks"),
    ("--model hf", "--model "), ("-M vllm", "--model "), ("--config c.yaml", "--config"), ("-C c.yaml", "--config"),
    ("--device cuda:1", "--device"), ("--predict_only", "--predict_only"),
    ("--wandb_args project=x", "--wandb_args (mpo-dist passes on only --limit"),  # not on the allow-list
])
def test_lm_eval_args_that_change_what_is_measured_are_refused(extra: str, named: str) -> None:
    with pytest.raises(EvalError, match="must not contain") as refused:
        parse_lm_eval_options("arc_easy", extra)
    message = str(refused.value)
    assert named in message and "\n" not in message, message


@needs_lm_eval
def test_allowed_lm_eval_args_pass_unchanged() -> None:
    extra = "--num_fewshot 0 -L 3 -b 4 --include_path my_tasks/ --model_args max_length=64 --apply_chat_template --seed 1"
    options = parse_lm_eval_options(" arc_easy, mgsm_direct_sw ", extra)
    assert options == LmEvalOptions(["arc_easy", "mgsm_direct_sw"], extra.split())


@needs_lm_eval
def test_model_path_with_commas_reaches_lm_eval_whole(tmp_path: Path) -> None:
    """lm-eval's own CLI and config read the command mpo-dist builds: the path stays one path, and an allowed
    --model_args of the user's is merged with it."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.config.evaluate_config import EvaluatorConfig

    model_dir = tmp_path / 'a,b=c "quoted", dtype=bfloat16'
    options = parse_lm_eval_options("arc_easy", "--model_args max_length=64")
    command = harness_command(model_dir, options, device="cpu", dtype="float32", out_dir=tmp_path / "out")
    assert command[1:3] == ["-m", "lm_eval"]
    config = EvaluatorConfig.from_cli(HarnessCLI()._parser.parse_args(command[3:]))
    assert config.model == "hf" and config.tasks == ["arc_easy"] and config.output_path == str(tmp_path / "out")
    assert config.model_args == {"pretrained": str(model_dir), "dtype": "float32", "max_length": 64}


@needs_lm_eval
def test_an_unknown_task_stops_eval_before_anything_is_generated(tiny_models: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from mpo_dist.cli import main

    def never(*args, **kwargs):
        raise AssertionError("a model was evaluated before the task names were checked")

    monkeypatch.setattr("mpo_dist.eval.pipeline.evaluate_model", never)
    monkeypatch.setattr("mpo_dist.eval.pipeline.init_context", never)
    assert main(["eval", "--model", str(tiny_models["llama"]), "--data", "sample:heldout", "--limit", "1",
                 "--lm-eval-tasks", "tiny_qa,no_such_task", f"--lm-eval-args=--include_path {local_task(tmp_path)}",
                 "--out", str(tmp_path / "out")]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("mpo-dist eval: error: --lm-eval-tasks tiny_qa,no_such_task: ")
    assert "has no task, group or tag named no_such_task (" in stderr  # tiny_qa, from --include_path, is found


@needs_lm_eval
def test_task_names_that_only_look_known_go_to_lm_evals_own_index(tmp_path: Path) -> None:
    """"acc" is written in many of lm-eval's task files (as a metric), so only lm-eval's full index can refuse it."""
    from mpo_dist.eval.benchmarks import check_tasks

    with pytest.raises(EvalError, match=r"^--lm-eval-tasks acc: lm-evaluation-harness says: Tasks not found: acc \("):
        check_tasks(LmEvalOptions(["acc"], []), tmp_path)


def test_missing_lm_eval_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mpo_dist.eval.benchmarks.importlib.util.find_spec", lambda name: None)
    with pytest.raises(EvalError, match=r"pip install 'mpo-dist\[lmeval\]'"):
        parse_lm_eval_options("arc_easy", None)


@needs_lm_eval
@pytest.mark.parametrize("tasks, extra, message", [
    (" , ", None, "names no task"),
    ("arc_easy", "--limit '3", "No closing quotation"),
    ("arc_easy", "--no_such_option 1", "unrecognized arguments: --no_such_option 1"),
    ("arc_easy", "-h", "unrecognized arguments: -h"),  # lm-eval's help would print and exit
    ("arc_easy", "--mod x", "ambiguous option: --mod could match --model, --model_args"),
    ("arc_easy", "--model_args novalue", "expected `key=value`"),
])
def test_lm_eval_option_mistakes(tasks: str, extra: str | None, message: str) -> None:
    with pytest.raises(EvalError, match=message) as mistake:
        parse_lm_eval_options(tasks, extra)
    assert "\n" not in str(mistake.value)

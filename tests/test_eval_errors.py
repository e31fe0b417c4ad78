"""Every `mpo-dist eval` input mistake is an EvalError (a UserError): one line on stderr, exit 2, no traceback. The
command has no catch-all of its own any more, so a mistake raised as a plain ValueError would show up here as a
traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from mpo_dist.cli import main


def _cases(tiny: Path, tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "run" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp / "bad_eval_run").mkdir(exist_ok=True)
    (tmp / "bad_eval_run" / "eval.jsonl").write_text("{not json\n")
    data = ["--data", "sample:heldout"]
    (tmp / "pku.jsonl").write_text('{"prompt": "q", "prompt_de": "f"}\n')
    return [
        (["--model", str(tmp / "missing")] + data, "is not a Hugging Face model directory"),
        (["--model", str(tmp / "run")] + data, "export it first"),
        (["--model", str(tiny), "--greedy", "--temperature", "0.7"] + data, "--greedy cannot be combined"),
        (["--model", str(tiny), "--max-prompt-length", "64", "--max-length", "64"] + data, "need 0 < --max-prompt-length"),
        (["--model", str(tiny), "--limit", "0"] + data, "--limit must be at least 1"),
        (["--model", str(tiny), "--languages", "de"] + data, r"--languages asks for ['de']"),
        (["--model", str(tiny), "--format", "multijail", "--data", "sample:heldout"], "no language columns"),
        (["--model", str(tiny), "--judge", "no_such_module:judge"] + data, "cannot import no_such_module"),
        (["--model", str(tiny), "--judge-template", "t.txt"] + data, "need --judge-model"),
        (["--model", str(tiny), "--judge-refusal-template", "r.txt"] + data, "--judge-refusal-template grades the --benign"),
        (["--model", str(tiny), "--run-dir", str(tmp / "bad_eval_run")] + data, "row 1: invalid JSON"),
        (["--model", str(tiny), "--run-dir", str(tmp)] + data, "no evaluations found"),
        (["--model", str(tiny), "--lm-eval-args=--limit 2"] + data, "--lm-eval-args needs --lm-eval-tasks"),
        (["--model", str(tiny), "--data", "sample:benign"], "a benign-prompt file (like sample:benign); pass it with --benign"),
        (["--model", str(tiny), "--out", str(tmp / "pku.jsonl")] + data, "is a file; the report needs a directory"),
        (["--model", str(tiny), "--lm-eval-tasks", "arc_easy", "--lm-eval-args=--device cuda"] + data, "must not contain"),
        (["--model", str(tiny), "--benign", "sample:benign", "--languages", "en,de", "--data", str(tmp / "pku.jsonl")],
         "--benign has no prompts in ['de']"),
    ]


def test_eval_input_mistakes_are_one_line_and_exit_2(tiny_models: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    for args, message in _cases(tiny_models["llama"], tmp_path):
        out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
        assert main(["eval", *args, *out]) == 2, args
        stderr = capsys.readouterr().err
        assert stderr.startswith("mpo-dist eval: error: ") and stderr.count("\n") == 1, stderr
        assert message in stderr, (message, stderr)

"""The front door is thin: `mpo-dist --help`, every sub-command's `--help` and `check` on a model.path that is no model
directory run with torch, transformers, DeepSpeed, datasets and Triton unimportable, and mpo_dist.cli.main is the one
place in the package where a user's mistake becomes exit 2."""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpo_dist.cli import build_parser

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "mpo_dist"
HEAVY = ("torch", "transformers", "deepspeed", "datasets", "triton")

# Installed before anything else runs in the child: importing a heavy module (or one of its submodules) fails, and the
# names asked for are printed at exit, so an ImportError some code catches and steps around is still seen.
PRELUDE = f"""
import atexit, importlib.abc, runpy, sys
HEAVY = {HEAVY!r}
asked = []
class Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            asked.append(name)
            raise ImportError(f"{{name}} is unimportable in this test")
        return None
sys.meta_path.insert(0, Unimportable())
atexit.register(lambda: asked and print("heavy imports asked for:", sorted(set(asked)), file=sys.stderr))
"""
RUN_CLI = PRELUDE + """
sys.argv[0] = "mpo-dist"
runpy.run_module("mpo_dist.cli", run_name="__main__")
"""
COLUMNS = "120"  # argparse wraps help to the terminal width, read from COLUMNS


def light_child(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("MPO_DIST_DEBUG", "MPO_DIST_ERROR_FILE")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env=dict(env, COLUMNS=COLUMNS), cwd=PACKAGE_ROOT.parent)


def command_parsers(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(words, parser) for the top-level parser and every sub-command, nested ones (checkpoints list) included."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from command_parsers(subparser, (*words, name))


def test_the_prelude_makes_each_heavy_module_unimportable() -> None:
    for module in HEAVY:
        child = light_child(PRELUDE + f"import {module}")
        assert child.returncode == 1 and f"ImportError: {module} is unimportable in this test" in child.stderr, module
        assert f"heavy imports asked for: ['{module}']" in child.stderr


@pytest.mark.parametrize("words", [words for words, _ in command_parsers(build_parser())], ids=" ".join)
def test_help_loads_no_heavy_module(words: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", COLUMNS)
    expected = dict(command_parsers(build_parser()))[words].format_help()  # formatted here, every module importable
    child = light_child(RUN_CLI, *words, "--help")
    assert (child.returncode, child.stderr) == (0, ""), child.stderr
    assert child.stdout == expected


def test_check_answers_a_missing_model_path_before_loading_torch(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  path: {tmp_path / 'in-yaml'}\ntrain:\n  output_dir: {tmp_path / 'run'}\n")
    missing = tmp_path / "no-such-model"
    child = light_child(RUN_CLI, "check", "--config", str(config), "--set", f"model.path={missing}")
    assert (child.returncode, child.stderr) == (2, ""), child.stderr
    assert child.stdout == (
        "checked    model.path only: the config's values, data, resume path and memory are checked once it is a model "
        "directory, or with --plan-model NAME\n"
        f"error: model.path: {missing} does not exist; expected a local Hugging Face model directory (make a tiny one "
        "with `mpo-dist init-tiny DIR`, or see docs/models.md)\n"
        "1 error(s), 0 warning(s): the run would fail\n")
    assert not (tmp_path / "run").exists()


# ---- exit 2 has one home -------------------------------------------------------------------------------------------
EXIT_2_HOME = PACKAGE_ROOT / "cli" / "__init__.py"
ALLOWED = {
    # `python -m mpo_dist.train.launcher`, launch/train.sh's own entry point around torchrun: it maps the job's outcome
    # files (a rank's user error line, a graceful stop, a crash) to the job's exit code, 2 among them.
    PACKAGE_ROOT / "train" / "launcher.py",
}


def _is_exit_2(node: ast.expr | None) -> bool:
    """2 or EXIT_USER_ERROR, also as either branch of `a if c else b`."""
    if isinstance(node, ast.IfExp):
        return _is_exit_2(node.body) or _is_exit_2(node.orelse)
    return ((isinstance(node, ast.Constant) and node.value == 2 and not isinstance(node.value, bool))
            or (isinstance(node, ast.Name) and node.id == "EXIT_USER_ERROR")
            or (isinstance(node, ast.Attribute) and node.attr == "EXIT_USER_ERROR"))


def exit_2_lines(source: str) -> list[int]:
    """Lines of `return 2`, `return EXIT_USER_ERROR`, `sys.exit(2)`, `exit(2)`, `os._exit(2)` and `SystemExit(2)`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Return) and _is_exit_2(node.value):
            found.append(node.lineno)
        elif isinstance(node, ast.Call) and node.args and _is_exit_2(node.args[0]):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("exit", "_exit", "SystemExit"):
                found.append(node.lineno)
    return sorted(found)


def test_the_reader_finds_each_spelling_of_exit_2() -> None:
    source = ("import sys\nfrom mpo_dist.errors import EXIT_USER_ERROR\n"
              "def a(): return 2\n"
              "def b(ok): return 0 if ok else EXIT_USER_ERROR\n"
              "def c(): sys.exit(2)\n"
              "def d(): exit(2)\n"
              "def e(): raise SystemExit(EXIT_USER_ERROR)\n"
              "def f(): return min(2, 3)\n"
              "def g(): sys.exit(1)\n"
              "def h(): return [2]\n")
    assert exit_2_lines(source) == [3, 4, 5, 6, 7]


def test_only_the_cli_entry_turns_a_user_error_into_exit_2() -> None:
    found = [f"{path.relative_to(PACKAGE_ROOT.parent)}:{line}" for path in sorted(PACKAGE_ROOT.rglob("*.py"))
             if path != EXIT_2_HOME and path not in ALLOWED
             for line in exit_2_lines(path.read_text(encoding="utf-8"))]
    assert not found, ("exit 2 outside mpo_dist/cli/__init__.py (raise a UserError; main prints it and exits 2):\n"
                       + "\n".join(found))
    assert exit_2_lines(EXIT_2_HOME.read_text(encoding="utf-8")), "main's own exit 2 is no longer where this test looks"

"""engine/process_exit.py: a process that joined a process group ends with its code after its exit handlers and
its buffered output, but without the interpreter's teardown (where a gloo worker thread could abort the finished rank);
any other process exits as usual, teardown included. Observed from outside, in a child process: its exit code, its
stdout, a file written by an atexit handler and one written by an object's __del__ during the teardown."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

CHILD = """
import atexit, sys
from pathlib import Path
from mpo_dist.engine.process_exit import exit_process, note_process_group_joined

out = Path(sys.argv[1])


class WrittenAtTeardown:
    def __init__(self) -> None:
        self.write = (out / "teardown").write_text  # bound now: module globals are gone by the time __del__ runs

    def __del__(self) -> None:
        self.write("ran")


kept_until_teardown = WrittenAtTeardown()
atexit.register((out / "atexit").write_text, "ran")
print("buffered, no newline", end="")
if sys.argv[2] == "joined":
    note_process_group_joined()
exit_process(3)
"""


@pytest.mark.parametrize(("joined", "teardown_runs"), [("joined", False), ("alone", True)])
def test_exit_code_handlers_and_output_kept_teardown_only_without_a_group(joined: str, teardown_runs: bool,
                                                                           tmp_path: Path) -> None:
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), joined], cwd=REPO_ROOT, env=buffered,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "buffered, no newline"  # a pipe: block-buffered, so only a flush gets it out
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "teardown").exists() == teardown_runs

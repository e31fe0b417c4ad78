"""A DeepSpeed op build killed part way leaves torch's `lock` file in the extensions directory; torch then waits on it
forever, silently. `mpo-dist check` names such a lock with the `rm` that clears it, a run refuses it in seconds
instead of hanging, and a lock a live build holds is waited for with a line every 30 s (mpo_dist/engine/op_builds.py).
A stale lock is made by hand: an unheld file dated 10 minutes back, as a killed build leaves it."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpo_dist.cli import main
from mpo_dist.engine.op_builds import STALE_AFTER_S, BuildLockError, find_build_locks, wait_for_build_locks

from conftest import REPO_ROOT


def leave_lock(extensions: Path, age_s: float) -> Path:
    """The lock of the CPU communication op, as torch's FileBaton creates it, `age_s` old."""
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def run_settings(model: Path, run: Path) -> list[str]:
    settings = [f"model.path={model}", f"train.output_dir={run}", "train.max_steps=1", "train.micro_batch_size=2",
                "data.languages=[sw]", "data.max_length=64", "data.max_prompt_length=32", "data.eval_files=[]",
                "logging.progress_bar=false", "logging.tensorboard=false"]
    return [part for setting in settings for part in ("--set", setting)]


def test_check_names_a_stale_lock_and_the_rm_that_clears_it(tiny_models: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    lock = leave_lock(tmp_path / "extensions", age_s=600)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    assert main(["check", *run_settings(tiny_models["llama"], tmp_path / "run"), "--cpu"]) == 2
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: DeepSpeed's op build lock {lock} is 10 min old and no process on this host holds it: a "
                      f"build was killed part way, and every run would wait on it forever; clear it with `rm {lock}`"]
    lock.unlink()  # the command it names
    assert main(["check", *run_settings(tiny_models["llama"], tmp_path / "run"), "--cpu"]) == 0


def test_a_run_after_a_killed_build_refuses_at_once_instead_of_hanging(tiny_models: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    lock = leave_lock(tmp_path / "extensions", age_s=600)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MPO_DIST_DEBUG")}
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "extensions")
    result = subprocess.run([sys.executable, "-m", "mpo_dist.cli", "train",
                             *run_settings(tiny_models["llama"], tmp_path / "run")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)  # hung forever before
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("mpo-dist train: error: DeepSpeed's op build lock ")
    assert result.stderr.strip().endswith(f"clear it with `rm {lock}`")
    assert lock.exists()  # named, never removed behind the user's back


def test_the_engine_refuses_a_stale_lock_with_the_line_check_prints(tmp_path: Path) -> None:
    lock = leave_lock(tmp_path, age_s=STALE_AFTER_S + 60)
    with pytest.raises(BuildLockError, match=f"is 6 min old .* clear it with `rm {lock}`$"):
        wait_for_build_locks(tmp_path, sleep=lambda _: pytest.fail("waited on a stale lock"))


def test_a_young_or_held_lock_is_not_stale(tmp_path: Path) -> None:
    young = leave_lock(tmp_path / "young", age_s=STALE_AFTER_S - 60)  # a build on another host may still hold it
    held = leave_lock(tmp_path / "held", age_s=STALE_AFTER_S * 10)
    with open(held):  # a live build keeps the lock's descriptor open
        [lock] = find_build_locks(tmp_path / "held")
        assert lock.holders == (os.getpid(),) and not lock.stale
    [lock] = find_build_locks(tmp_path / "young")
    assert lock.holders == () and not lock.stale and lock.path == young


def test_a_live_build_is_waited_for_with_a_line_every_30_s(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = leave_lock(tmp_path, age_s=STALE_AFTER_S * 10)
    now = [0.0]

    def sleep(seconds: float) -> None:  # 7 polls of a build that then finishes: 70 s of waiting on a fake clock
        now[0] += 10
        if now[0] >= 70:
            holder.close()
            lock.unlink()

    holder = open(lock)
    with caplog.at_level(logging.WARNING, logger="mpo_dist"):
        wait_for_build_locks(tmp_path, clock=lambda: now[0], sleep=sleep)
    assert not lock.exists() and now[0] == 70
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2  # at 30 s and 60 s; none for the moment ranks wait on each other's load of a built op
    assert all(line.startswith("waiting for a DeepSpeed op build to finish before starting: ") and
               f"{lock} held by pid {os.getpid()}" in line for line in lines), lines

"""A rank that dies or hangs must not hold the job forever, and a relaunch with --resume auto must continue from the
newest COMPLETE checkpoint, skipping a save that was cut off half way.

What happens under torchrun (measured on this machine, 2 CPU ranks, gloo): when rank 1 is SIGKILLed, rank 0's next
collective fails at once ("Connection reset by peer") and torchrun, seeing a failed worker, SIGTERMs the rest and exits
non-zero, about 2 s after the kill. A rank that hangs instead (SIGSTOP: alive, sockets open) is only noticed through the
collective timeout, MPO_DIST_COLLECTIVE_TIMEOUT_S, after which its peers fail and torchrun stops the job.
Synchronisation is by polling files and /proc, never by fixed sleeps.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest

from mpo_dist.engine.engines import collective_timeout
from mpo_dist.engine.checkpoint_resume import resolve_resume

from conftest import REPO_ROOT, read_jsonl, train_cli

GUARD_S = 300  # only stops a broken test from polling forever; nothing is asserted about durations
STEPS = 16


def overrides(model: Path, output_dir: Path, steps: int) -> list[str]:
    return [f"model.path={model}", f"train.output_dir={output_dir}", f"train.max_steps={steps}", "checkpoint.every_steps=2",
            "checkpoint.keep_last=2", "train.micro_batch_size=2", "data.languages=[sw]", "data.max_length=64",
            "data.max_prompt_length=32", "data.eval_files=[]", "loss.name=mpo", "logging.progress_bar=false",
            "logging.tensorboard=false"]


def launch(settings: list[str], log_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "mpo_dist.cli", "train"]
    for setting in settings:
        command += ["--set", setting]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    with open(log_file, "w") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def poll_until(condition: Callable[[], bool], what: str, process: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"torchrun exited {process.returncode} before {what}:\n{log_file.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}:\n{log_file.read_text()[-4000:]}")
        time.sleep(0.1)


def worker_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of the worker torchrun started with RANK=rank (read from /proc)."""
    for task in Path(f"/proc/{torchrun_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if f"\0RANK={rank}\0".encode() in b"\0" + Path(f"/proc/{child}/environ").read_bytes():
                return int(child)
    raise AssertionError(f"no worker with RANK={rank} under torchrun pid {torchrun_pid}")


def has_exited(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def stop_group(process: subprocess.Popen) -> None:
    """Cleanup after a failed assertion: end the torchrun session this test started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def newest_complete_step(root: Path) -> int:
    return max(int(d.name.split("_")[1]) for d in root.glob("step_*") if (d / "COMPLETE").is_file())


def test_collective_timeout_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPO_DIST_COLLECTIVE_TIMEOUT_S", raising=False)
    assert collective_timeout() == timedelta(seconds=1800)
    monkeypatch.setenv("MPO_DIST_COLLECTIVE_TIMEOUT_S", "90")
    assert collective_timeout() == timedelta(seconds=90)
    for bad in ("0", "-5", "ten"):
        monkeypatch.setenv("MPO_DIST_COLLECTIVE_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="MPO_DIST_COLLECTIVE_TIMEOUT_S.*positive number of seconds"):
            collective_timeout()


@pytest.mark.multiprocess
def test_killed_rank_ends_the_job_and_auto_resume_skips_a_half_written_save(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    run, log_file = tmp_path / "run", tmp_path / "crashed.log"
    checkpoints = run / "checkpoints"
    process = launch(overrides(tiny_models["llama"], run, STEPS), log_file)
    try:
        poll_until(lambda: (checkpoints / "latest").is_file(), "the first checkpoint", process, log_file)
        os.kill(worker_pid(process.pid, rank=1), signal.SIGKILL)
        returncode = process.wait(timeout=GUARD_S)
    finally:
        stop_group(process)
    log = log_file.read_text()
    assert returncode != 0 and "exitcode  : -9" in log, log[-4000:]
    assert not (run / "COMPLETED").exists()

    # the crash may or may not have hit a save; make sure the newest step directory is a cut-off one pointed to by latest
    resumable = newest_complete_step(checkpoints)
    assert resumable < STEPS
    cut_off = checkpoints / f"step_{resumable + 2:08d}"
    shutil.rmtree(cut_off, ignore_errors=True)
    shutil.copytree(checkpoints / f"step_{resumable:08d}", cut_off)
    (cut_off / "COMPLETE").unlink()
    shard = next(cut_off.glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (checkpoints / "latest").write_text(cut_off.name)

    assert resolve_resume("auto", checkpoints) == checkpoints / f"step_{resumable:08d}"
    with pytest.raises(ValueError, match="no COMPLETE marker"):
        resolve_resume(str(cut_off), checkpoints)

    result = train_cli(2, overrides(tiny_models["llama"], run, STEPS) + ["checkpoint.resume=auto"], REPO_ROOT)
    assert f"resumed from {checkpoints / f'step_{resumable:08d}'} at step {resumable}" in result.stdout + result.stderr
    assert [row["step"] for row in read_jsonl(run / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert (run / "COMPLETED").is_file() and (checkpoints / f"step_{STEPS:08d}" / "COMPLETE").is_file()


@pytest.mark.multiprocess
def test_hung_rank_is_cut_off_by_the_collective_timeout(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Rank 1 is frozen (SIGSTOP), not dead: only the 5 s collective timeout can end rank 0's wait. With the 30 min
    default the poll below would run into its guard instead."""
    run, log_file = tmp_path / "run", tmp_path / "hung.log"
    process = launch(overrides(tiny_models["llama"], run, 10_000), log_file, env={"MPO_DIST_COLLECTIVE_TIMEOUT_S": "5"})
    try:
        poll_until(lambda: (run / "checkpoints" / "latest").is_file(), "the first checkpoint", process, log_file)
        rank0, rank1 = worker_pid(process.pid, rank=0), worker_pid(process.pid, rank=1)
        os.kill(rank1, signal.SIGSTOP)
        poll_until(lambda: has_exited(rank0), "rank 0 to give up on the frozen rank", process, log_file)
        os.kill(rank1, signal.SIGCONT)  # lets torchrun's SIGTERM act now instead of after its 30 s grace period
        returncode = process.wait(timeout=GUARD_S)
    finally:
        stop_group(process)
    log = log_file.read_text()
    rank0_errors = [line for line in log.splitlines() if line.startswith("[rank0]:") and "Error" in line]
    assert returncode != 0
    # Rank 0 gave up within the 300 s guard, which the 30 min default timeout could not do. Gloo words the error
    # "Timed out waiting 5000ms for recv/send operation" or "Application timeout caused pair closure", the store
    # "wait timeout after 5000ms".
    assert any(re.search(r"(?i)\btime[ds]? ?out\b", line) for line in rank0_errors), rank0_errors or log[-4000:]

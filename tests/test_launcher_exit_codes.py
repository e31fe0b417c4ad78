"""Exit codes users can script (docs/quickstart.md, "Exit codes"): under `launch/train.sh` (mpo_dist.train.launcher) a
graceful stop is 75 once every rank saved and left, a user error is 2 with our one line last, a crash is 1, and
torchrun's ChildFailedError report stays out of the way (it goes to a log file). Two kinds of test: stand-in workers
under the launcher, for the contract itself (a slower rank is not killed while it finishes); and the real trainer, two
ranks on a tiny model, through `bash launch/train.sh`. Two-rank trainings cost tens of seconds each, so the real
trainer's cases ride on runs other tests make anyway: a STOP file ends a run with 75 once both ranks saved
(tests/test_run_directory.py, the run a second training is refused from), and a user error both ranks meet is 2 with
our line last (tests/test_checkpoint_lifecycle.py, a refused resume). Synchronisation is by polling files and /proc,
never sleeps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from slurm_cluster import LAUNCHER_VARIABLES

GUARD_S = 300  # only stops a broken test from polling forever; nothing is asserted about durations

# A stand-in training rank: `error` (rank 0 reports a user error as mpo_dist.cli.main does, rank 1 would go on),
# `crash` (rank 1 raises), `signal` (both ranks stop on SIGTERM), or `stop` (a graceful stop where rank 1, like a slower rank finishing its share of a save,
# writes its part only once torchrun has reaped rank 0: the moment torchrun used to SIGTERM it; it records a SIGTERM
# instead of dying of it).
WORKER = r'''
import os, signal, sys, time
from pathlib import Path
from mpo_dist.train.launcher import EXIT_REQUEUE, rank_exit_code

mode, out = sys.argv[1], Path(sys.argv[2])
rank = int(os.environ["RANK"])

def wait_for(condition):
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)

if mode == "error":
    if rank == 0:
        with open(os.environ["MPO_DIST_ERROR_FILE"], "a") as handle:
            handle.write("mpo-dist train: error: optim.lr: must be a finite number > 0, got -1\n")
        sys.exit(2)
    wait_for(lambda: False)  # ended by torchrun
if mode == "crash":
    if rank == 1:
        raise RuntimeError("a bug")
    wait_for(lambda: False)
if mode == "stop":
    signal.signal(signal.SIGTERM, lambda *_: (out / f"rank{rank}.sigterm").write_text("signalled"))
    pid_file = out / "rank0.pid"
    if rank == 0:
        pid_file.write_text(str(os.getpid()))
    else:
        wait_for(lambda: pid_file.is_file() and not Path(f"/proc/{pid_file.read_text()}").exists())
        (out / "rank1.saved").write_text("its part of the checkpoint")
    sys.exit(rank_exit_code(EXIT_REQUEUE, 6))
if mode == "signal":  # as the trainer's StopRequest: note SIGTERM, finish the step, save, stop
    signalled = []
    signal.signal(signal.SIGTERM, lambda *_: signalled.append(True))
    (out / f"rank{rank}.ready").write_text("training")
    wait_for(lambda: signalled)
    sys.exit(rank_exit_code(EXIT_REQUEUE, 3))
'''


def launcher_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES} | {"OMP_NUM_THREADS": "1", **extra}


def run_stand_in(mode: str, tmp_path: Path) -> subprocess.CompletedProcess:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    return subprocess.run([sys.executable, "-m", "mpo_dist.train.launcher", "--standalone", "--nproc-per-node=2",
                           str(worker), mode, str(tmp_path)], cwd=REPO_ROOT, env=launcher_env(), capture_output=True,
                          text=True, timeout=GUARD_S)


def torchrun_log(stderr: str) -> Path:
    [line] = [line for line in stderr.splitlines() if line.startswith("torchrun's ")]
    return Path(line.rsplit(": ", 1)[1])


def test_a_stop_is_75_and_the_slower_rank_finishes_its_part(tmp_path: Path) -> None:
    result = run_stand_in("stop", tmp_path)
    assert result.returncode == 75, result.stderr
    assert (tmp_path / "rank1.saved").is_file()
    assert not list(tmp_path.glob("*.sigterm"))  # before: rank 0's exit 75 made torchrun SIGTERM rank 1 mid-save
    assert result.stderr.strip().splitlines() == [
        "mpo-dist train: stopped at step 6: every rank saved it and exited; continue with --resume auto (exit 75)"]


def test_sigterm_to_the_launcher_is_a_graceful_stop(tmp_path: Path) -> None:
    """SIGTERM to launch/train.sh (which execs the launcher) reaches the ranks through torchrun; they save and stop."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    launch = subprocess.Popen([sys.executable, "-m", "mpo_dist.train.launcher", "--standalone", "--nproc-per-node=2",
                               str(worker), "signal", str(tmp_path)], cwd=REPO_ROOT, env=launcher_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + GUARD_S
    while not all((tmp_path / f"rank{rank}.ready").is_file() for rank in range(2)):
        assert launch.poll() is None and time.monotonic() < deadline, launch.communicate()
        time.sleep(0.05)
    launch.send_signal(signal.SIGTERM)
    _, stderr = launch.communicate(timeout=GUARD_S)
    assert launch.returncode == 75, stderr
    assert stderr.strip().splitlines()[-1].startswith("mpo-dist train: stopped at step 3: every rank saved it")


def test_a_user_error_is_2_with_our_line_last_and_no_traceback(tmp_path: Path) -> None:
    result = run_stand_in("error", tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "ChildFailedError" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "mpo-dist train: error: optim.lr: must be a finite number > 0, got -1"
    report = torchrun_log(result.stderr).read_text()  # torchrun's own account is kept, in its log file
    assert "ChildFailedError" in report and "exitcode  : 2" in report
    torchrun_log(result.stderr).unlink()


def test_a_crash_is_1_with_torchruns_report(tmp_path: Path) -> None:
    result = run_stand_in("crash", tmp_path)
    assert result.returncode == 1, result.stderr
    assert "RuntimeError: a bug" in result.stderr  # the rank's own traceback
    assert "Root Cause" in result.stderr and "exitcode  : 1" in result.stderr  # torchrun's report names the rank
    torchrun_log(result.stderr).unlink()


# ---- the real trainer under launch/train.sh ----------------------------------------------------------------------
def settings(model: Path, run: Path, steps: int) -> list[str]:
    overrides = [f"model.path={model}", f"train.output_dir={run}", f"train.max_steps={steps}", "train.log_every=1",
                 "train.micro_batch_size=2", "data.languages=[sw]", "data.max_length=64", "data.max_prompt_length=32",
                 "data.eval_files=[]", "loss.name=simpo", "logging.progress_bar=false", "logging.tensorboard=false"]
    return [part for setting in overrides for part in ("--set", setting)]


def train_sh(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(REPO_ROOT / "launch/train.sh"), *args], cwd=REPO_ROOT, text=True,
                            env=launcher_env(NPROC="2", MPO_DIST_VENV=sys.prefix, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.multiprocess
def test_the_pre_check_uses_the_runs_own_resume(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "step_00000005"
    launch = train_sh(settings(tiny_models["llama"], tmp_path / "run", steps=2) + ["--resume", str(missing)])
    stdout, stderr = launch.communicate(timeout=GUARD_S)
    assert launch.returncode == 2, stdout[-3000:] + stderr[-3000:]
    assert any(line.startswith("error: checkpoint.resume") and str(missing) in line for line in stdout.splitlines()), stdout
    assert "mpo-dist train" not in stderr and not (tmp_path / "run").exists()  # found before any rank started

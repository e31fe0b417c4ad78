"""The run directory's rules (engine/run_directory.py, engine/run_lock.py; docs/checkpoints.md, "The run directory"):
one job owns it, a fresh start never buries tags silently, set-aside lines are bounded, a line continues where it
left off, any tag directory resumes, and a resume proves its data. Real Trainer runs on a tiny model (one process
where ranks do not matter, two where they do); expectations are worked out by hand."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mpo_dist.data.loading import resolve_path
from mpo_dist.engine.run_directory import RunDirectoryError
from mpo_dist.engine.run_lock import LOCK_FILE, RunDirectoryBusy, RunLock, read_holder
from mpo_dist.train.data_identity import ChangedDataError

from conftest import REPO_ROOT, read_jsonl
from slurm_cluster import LAUNCHER_VARIABLES, wait_for
# and the fixture `run`: a copy of a finished run, tags 2, 4, 6
from shared_runs import settings, tag, tags, train_overrides

QUIET = ["data.eval_files=[]"]  # no held-out evaluation: these tests are about tags and lines


def run_trainer(model: Path, run: Path, *extra: str, **options) -> int:
    return train_overrides(settings(model, run, **options) + QUIET + list(extra))


def steps_logged(run: Path) -> list[int]:
    return [row["step"] for row in read_jsonl(run / "samples.jsonl")]


# ---- a fresh start over earlier tags ---------------------------------------------------------------------------------
def test_a_fresh_start_over_tags_is_refused_and_changes_nothing(run: Path, tiny_models: dict[str, Path]) -> None:
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.name != LOCK_FILE)
    with pytest.raises(RunDirectoryError, match=r"already holds checkpoints \(step_00000002, step_00000004, "
                                                r"step_00000006\).*checkpoint.on_existing=set_aside"):
        run_trainer(tiny_models["llama"], run)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.name != LOCK_FILE) == before
    assert read_holder(run / LOCK_FILE) is None  # released: the next run has nothing to take over


def test_on_existing_set_aside_keeps_the_old_line_and_delete_removes_it(run: Path, tiny_models: dict[str, Path]) -> None:
    assert run_trainer(tiny_models["llama"], run, "checkpoint.on_existing=set_aside", steps=2) == 0
    assert tags(run) == ["step_00000002"]
    assert tags(run, "checkpoints/abandoned/line_0001") == ["step_00000002", "step_00000004", "step_00000006"]
    assert steps_logged(run) == [1, 2]  # the old line's log lines are gone with it, not mixed with the new ones
    assert run_trainer(tiny_models["llama"], run, "checkpoint.on_existing=delete", steps=2) == 0
    assert tags(run) == ["step_00000002"] and not list((run / "checkpoints" / "abandoned").iterdir())


# ---- set-aside lines are bounded -------------------------------------------------------------------------------------
def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_three_resumes_of_an_older_tag_keep_one_set_aside_line(run: Path, tiny_models: dict[str, Path],
                                                               capsys: pytest.CaptureFixture) -> None:
    one_tag = tree_bytes(tag(run, 2))
    for _ in range(3):  # each resume from step 2 saves step 3 and sets aside what was newer than 2
        assert run_trainer(tiny_models["llama"], run, steps=3, resume=str(tag(run, 2)), every=1) == 0
    abandoned = run / "checkpoints" / "abandoned"
    assert sorted(p.name for p in abandoned.iterdir()) == ["line_0003"]  # keep_abandoned=1: lines 1 and 2 deleted
    assert tags(run, "checkpoints/abandoned/line_0003") == ["step_00000003"]
    assert tree_bytes(abandoned) <= 1.1 * one_tag
    assert tags(run) == ["step_00000002", "step_00000003"]
    assert "checkpoint.keep_abandoned=1: deleted the older set-aside line(s) line_0001, freeing" in capsys.readouterr().out


def test_checkpoints_prune_deletes_set_aside_lines(run: Path, tiny_models: dict[str, Path],
                                                   capsys: pytest.CaptureFixture) -> None:
    from mpo_dist.cli import main

    assert run_trainer(tiny_models["llama"], run, steps=3, resume=str(tag(run, 2)), every=1) == 0
    assert main(["checkpoints", "list", str(run)]) == 0
    listing = capsys.readouterr().out
    assert "step_00000003" in listing and "line_0001" in listing and "set aside" in listing
    assert main(["checkpoints", "prune", str(run)]) == 0
    assert not list((run / "checkpoints" / "abandoned").iterdir())
    assert "deleted line_0001" in capsys.readouterr().out
    assert tags(run) == ["step_00000002", "step_00000003"]  # live tags are never pruned here


# ---- a line continues; any tag directory resumes ---------------------------------------------------------------------
def test_a_tag_in_any_directory_resumes_and_auto_returns_to_it_before_the_first_save(
        run: Path, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    best = Path(shutil.copytree(tag(run, 4), tmp_path / "best"))  # not named step_<digits>
    fresh = tmp_path / "fresh"
    assert run_trainer(tiny_models["llama"], fresh, steps=5, resume=str(best), every=0) == 0
    assert steps_logged(fresh) == [5]  # resumed at step 4, from the marker, not the folder's name
    # the same line, requeued before it saved: auto goes back to where the line started, not to a fresh start
    shutil.rmtree(fresh / "checkpoints" / "step_00000005")
    (fresh / "COMPLETED").unlink()
    assert run_trainer(tiny_models["llama"], fresh, steps=6, resume="auto", every=0) == 0
    assert steps_logged(fresh) == [5, 6]


def test_a_set_aside_tag_resumes_directly(run: Path, tiny_models: dict[str, Path]) -> None:
    assert run_trainer(tiny_models["llama"], run, steps=3, resume=str(tag(run, 2)), every=1) == 0
    set_aside = run / "checkpoints" / "abandoned" / "line_0001" / "step_00000006"
    assert run_trainer(tiny_models["llama"], run, steps=7, resume=str(set_aside), every=1) == 0
    assert steps_logged(run)[-1] == 7 and (tag(run, 7) / "COMPLETE").is_file()
    assert set_aside.is_dir()  # the line it started from stays, whatever the budget


def test_naming_the_lines_origin_again_continues_the_line(run: Path, tiny_models: dict[str, Path],
                                                          capsys: pytest.CaptureFixture) -> None:
    """A resubmission after a preemption repeats its arguments: --resume step_2 again must not throw away steps 3-4."""
    assert run_trainer(tiny_models["llama"], run, steps=4, resume=str(tag(run, 2)), every=1) == 0
    (run / "COMPLETED").unlink()  # as if preempted right after the save of step 4
    assert run_trainer(tiny_models["llama"], run, steps=6, resume=str(tag(run, 2)), every=1) == 0
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]
    assert "is where this run's line started: continuing the line from its newest intact tag" in capsys.readouterr().out
    assert tags(run, "checkpoints/abandoned/line_0001") == ["step_00000004", "step_00000006"]  # the first start's only
    # checkpoint.new_line=true does start again from the named tag
    assert run_trainer(tiny_models["llama"], run, "checkpoint.new_line=true", steps=3, resume=str(tag(run, 2))) == 0


def test_a_requeued_slurm_job_continues_its_line_whatever_its_resume_says(run: Path, tiny_models: dict[str, Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert run_trainer(tiny_models["llama"], run, "checkpoint.on_existing=delete", steps=3, every=1) == 0
    (run / "COMPLETED").unlink()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # SLURM requeued job 4242: same arguments, --resume none included
    assert run_trainer(tiny_models["llama"], run, "checkpoint.on_existing=delete", steps=5, every=1) == 0
    assert steps_logged(run) == [1, 2, 3, 4, 5] and tags(run)[-1] == "step_00000005"


# ---- a resume proves its data ----------------------------------------------------------------------------------------
def write_data(path: Path, swap: bool) -> Path:
    rows = [json.loads(line) for line in resolve_path("sample:train").read_text().splitlines() if line.strip()]
    if swap:
        for row in rows:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def test_a_resume_with_chosen_and_rejected_swapped_is_refused_naming_the_file(tiny_models: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    data = write_data(tmp_path / "pairs.jsonl", swap=False)
    run = tmp_path / "run"
    files = f"data.train_files=[{data}]"
    assert run_trainer(tiny_models["llama"], run, files, steps=2, every=2) == 0
    write_data(data, swap=True)
    with pytest.raises(ChangedDataError, match=rf"{data} changed.*data.allow_changed=true"):
        run_trainer(tiny_models["llama"], run, files, steps=4, resume="auto")
    assert tags(run) == ["step_00000002"] and steps_logged(run) == [1, 2]
    assert run_trainer(tiny_models["llama"], run, files, "data.allow_changed=true", steps=3, resume="auto") == 0
    assert steps_logged(run) == [1, 2, 3]


# ---- one owner -------------------------------------------------------------------------------------------------------
HOLD_LOCK = """
import os, signal, sys
from pathlib import Path
from mpo_dist.engine.run_lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
{after}
"""


def test_the_lock_of_a_killed_run_is_taken_over_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    killed = subprocess.run([sys.executable, "-c", HOLD_LOCK.format(after="os.kill(os.getpid(), signal.SIGKILL)"),
                             str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL and killed.stdout == "held\n"
    holder = read_holder(tmp_path / LOCK_FILE)
    assert holder is not None and holder.pid != os.getpid()  # its record outlived it
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.INFO, logger="mpo_dist"):
        lock.acquire()
    assert [r.message for r in caplog.records] == [
        f"took over the run directory {tmp_path} from a run on host {holder.host} (pid {holder.pid}, since "
        f"{holder.started}), which is gone"]
    assert read_holder(tmp_path / LOCK_FILE).pid == os.getpid()
    lock.release()


def test_a_live_holder_is_named_and_a_lingering_lock_of_this_requeued_job_is_taken_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(after="sys.stdin.read()"), str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirectoryBusy, match=rf"in use by a run on host \S+ \(pid {holder.pid}, since"):
            RunLock(tmp_path).acquire()
        # The lock as a dead node leaves it on NFS: still held, its record naming this SLURM job on another host.
        record = json.loads((tmp_path / LOCK_FILE).read_text()) | {"job": "777", "host": "node-that-died"}
        (tmp_path / LOCK_FILE).write_text(json.dumps(record))
        monkeypatch.setenv("SLURM_JOB_ID", "777")
        lock = RunLock(tmp_path)
        lock.acquire()
        assert read_holder(tmp_path / LOCK_FILE).pid == os.getpid()
        lock.release()
    finally:
        holder.communicate("", timeout=60)


def two_rank_train(run: Path, model: Path, steps: int) -> subprocess.Popen:
    """`bash launch/train.sh` with 2 ranks on this test's virtualenv, its pre-check off (these tests are about the
    ranks)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES} | {
        "NPROC": "2", "MPO_DIST_VENV": sys.prefix, "OMP_NUM_THREADS": "1", "CHECK": "0"}
    overrides = [part for s in settings(model, run, steps=steps, every=steps) + QUIET for part in ("--set", s)]
    return subprocess.Popen(["bash", str(REPO_ROOT / "launch/train.sh"), *overrides], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.multiprocess
def test_a_second_training_into_the_same_directory_is_refused_and_the_first_completes(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Both under launch/train.sh. The first, ended by a STOP file, also carries the launcher's contract for a graceful
    stop of the real trainer (tests/test_launcher_exit_codes.py): exit 75 once both ranks saved, one last line."""
    run = tmp_path / "run"
    first = two_rank_train(run, tiny_models["llama"], steps=200)
    try:
        wait_for(lambda: first.poll() is not None or ((run / "samples.jsonl").is_file() and steps_logged(run)),
                 300, "the first run's first step")
        assert first.poll() is None, first.communicate()
        second = two_rank_train(run, tiny_models["llama"], steps=200)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err[-3000:]
        assert err.rstrip().splitlines()[-1].startswith(f"mpo-dist train: error: train.output_dir {run} is in use by "
                                                        f"a run on host "), err[-3000:]
        (run / "STOP").touch()  # end the first run early: it saves and stops at a step boundary
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    done = steps_logged(run)
    assert done == list(range(1, len(done) + 1)), out[-2000:] + err[-2000:]  # every step once, in order
    assert len(done) < 200
    metrics = [row["step"] for row in read_jsonl(run / "metrics.jsonl") if "train/loss" in row]
    assert metrics == done
    assert first.returncode == 75, out[-3000:] + err[-3000:]
    assert err.strip().splitlines()[-1] == (f"mpo-dist train: stopped at step {done[-1]}: every rank saved it and "
                                            "exited; continue with --resume auto (exit 75)")
    assert "Traceback" not in out + err and "SIGTERM" not in out + err
    tag_dir = run / "checkpoints" / f"step_{done[-1]:08d}"
    assert (tag_dir / "COMPLETE").is_file()
    assert {p.name for p in tag_dir.glob("*_optim_states.pt")} == {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
                                                                   for r in range(2)}

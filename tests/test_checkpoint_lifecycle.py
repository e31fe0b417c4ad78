"""The checkpoint lifecycle end to end (docs/checkpoints.md, "Which tags are kept" and the faults table): no run loses
its last intact tag, a resume from an older tag sets the newer ones aside, every rank resumes from the tag rank 0
chose, a refused resume changes nothing, and the launcher reports a user error once with exit 2. Runs of the real
Trainer on a tiny model (one process where ranks do not matter); expectations are tag names worked out by hand."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpo_dist.engine.checkpoint_layout import record_files, tag_files, verify, write_marker
from mpo_dist.engine.checkpoint_resume import resolve_resume

from conftest import REPO_ROOT, read_jsonl, torchrun
# the fixtures `finished` (a one-rank run: tags 2, 4, 6) and `run` (a copy of it for each test) come from there too
from shared_runs import STEPS, settings, tag, tags, train
from slurm_cluster import LAUNCHER_VARIABLES

SHARD = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_keep_last_1_with_a_damaged_newest_tag_keeps_the_fallback_runs_save(run: Path, tiny_models: dict[str, Path],
                                                                           capsys: pytest.CaptureFixture) -> None:
    flip_byte(tag(run, 6) / SHARD)
    half_written = tag(run, 8)  # a save that crashed before its marker, of a step never saved again
    half_written.mkdir()
    (half_written / SHARD).write_bytes(b"\0" * 3 * 2**20)
    # The fallback run falls back to step 4 and ends at step 5 (its last save, followed by pruning, as a stop's is).
    assert train(tiny_models["llama"], run, steps=5, resume="auto", keep_last=1) == 0
    assert tags(run) == ["step_00000005"]  # before: step 9's analogue kept, 4 and 5 deleted, latest dangling
    assert tags(run, "checkpoints/abandoned/line_0001") == ["step_00000006"]
    assert (run / "checkpoints" / "latest").read_text() == "step_00000005"
    assert resolve_resume("auto", run / "checkpoints") == tag(run, 5) and verify(tag(run, 5)).problems == []
    messages = capsys.readouterr().out.splitlines()  # the trainer's console log
    assert any("removed 1 half-written checkpoint tag(s) (step_00000008" in m and "freeing 0.00293 GiB" in m
               for m in messages), messages
    assert any("set aside 1 checkpoint tag(s) newer than the one this run continues from (step 4): step_00000006"
               in m for m in messages), messages


def test_resuming_an_older_tag_keeps_its_new_save_and_auto_continues_it(run: Path, tiny_models: dict[str, Path]) -> None:
    # the 200/300/400 case in small: resume from 2 (tags 4 and 6 newer), save 3 with keep_last=2
    assert train(tiny_models["llama"], run, steps=3, resume=str(tag(run, 2)), keep_last=2, every=1) == 0
    assert tags(run) == ["step_00000002", "step_00000003"]
    assert tags(run, "checkpoints/abandoned/line_0001") == ["step_00000004", "step_00000006"]
    assert resolve_resume("auto", run / "checkpoints") == tag(run, 3)


def test_a_resume_at_the_final_step_writes_no_second_evaluation(run: Path, tiny_models: dict[str, Path]) -> None:
    assert [line["step"] for line in read_jsonl(run / "eval.jsonl")] == [0, STEPS]
    assert train(tiny_models["llama"], run, resume="auto") == 0
    assert [line["step"] for line in read_jsonl(run / "eval.jsonl")] == [0, STEPS]


def test_completed_records_the_config_it_was_written_for(finished: Path) -> None:
    completed = json.loads((finished / "COMPLETED").read_text())
    assert completed == {"steps": STEPS,
                         "config_sha256": hashlib.sha256((finished / "config.json").read_bytes()).hexdigest()}


def write_tag(root: Path, step: int, files: dict[str, int]) -> Path:
    tag_dir = root / f"step_{step:08d}"
    tag_dir.mkdir(parents=True)
    for name, size in files.items():
        (tag_dir / name).write_bytes(os.urandom(size))
    write_marker(tag_dir, step, record_files(tag_dir, tag_files(tag_dir)))
    return tag_dir


def test_ranks_that_list_different_tags_all_resume_from_the_tag_rank_0_chose(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    files = {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt": 300_000 for r in range(2)} | {"rng_rank0.pt": 10}
    for step in (1, 2, 3):
        write_tag(root, step, files)
    flip_byte(root / "step_00000003" / "zero_pp_rank_1_mp_rank_00_optim_states.pt")  # found by the rank that reads it
    result = torchrun(2, [str(REPO_ROOT / "tests/workers/resume_listing.py"), str(root), str(tmp_path)], REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"resume_rank{r}.json").read_text()) for r in range(2)]
    assert [r["chosen"] for r in reports] == ["step_00000002", "step_00000002"]
    assert reports[1]["listed_itself"] is False  # rank 1's (empty) listing was never asked
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "skipping damaged checkpoint" in line]
    assert len(warnings) == 1 and "[rank0]" in warnings[0]  # one voice for the job


def launch_train(run: Path, model: Path) -> subprocess.CompletedProcess:
    """`bash launch/train.sh` with 2 ranks on this test's virtualenv, resuming `run` with --resume auto. Its pre-check
    is off (CHECK=0): it would find the same problem first (with the run's --resume); these tests are about the ranks."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES} | {
        "NPROC": "2", "MPO_DIST_VENV": sys.prefix, "OMP_NUM_THREADS": "1", "CHECK": "0"}
    overrides = [part for setting in settings(model, run, resume="auto") for part in ("--set", setting)]
    return subprocess.run(["bash", str(REPO_ROOT / "launch/train.sh"), *overrides], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def snapshot(run: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of the run directory but its lock, which the refused run held while it looked (docs/checkpoints.md)."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir() if p.is_file() and p.name != ".lock"}


def test_a_refused_resume_changes_nothing_and_the_launcher_exits_2_once(run: Path,
                                                                        tiny_models: dict[str, Path]) -> None:
    """Also the launcher's contract for a user error both ranks meet (tests/test_launcher_exit_codes.py): exit 2, our
    line once and last, right after the line naming torchrun's report, no traceback."""
    # tags written by 1 rank, a 2-rank launch: refused before any engine or file is touched
    before = snapshot(run)
    result = launch_train(run, tiny_models["llama"])
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith("mpo-dist train: error: ")]
    assert len(ours) == 1 and "was written by 1 ranks and this run has 2" in ours[0], result.stderr[-3000:]
    lines = result.stderr.rstrip().splitlines()
    assert lines[-1] == ours[0] and lines[-2].startswith("torchrun's report")  # the last word, after torchrun's report
    assert [line for line in lines if "error:" in line] == [ours[0]]  # two ranks met it, printed once
    assert "Traceback" not in result.stdout + result.stderr and "ChildFailedError" not in result.stdout + result.stderr
    Path(lines[-2].rsplit(": ", 1)[1]).unlink()  # torchrun's report, a temporary file the launcher leaves for a look
    assert snapshot(run) == before  # config.json, versions.json, COMPLETED, logs: untouched
    assert not (run / "checkpoints" / "abandoned").exists() and tags(run) == ["step_00000002", "step_00000004",
                                                                             "step_00000006"]


def test_no_intact_tag_the_launcher_exits_2_with_one_error_line(run: Path, tiny_models: dict[str, Path]) -> None:
    for step in (2, 4, 6):
        flip_byte(tag(run, step) / SHARD)
    result = launch_train(run, tiny_models["llama"])
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith("mpo-dist train: error: ")]
    assert len(ours) == 1 and "checkpoint.resume=auto: no intact checkpoint in" in ours[0], result.stderr[-3000:]


def test_check_refuses_a_checkpoint_of_another_world_size(finished: Path, tiny_models: dict[str, Path],
                                                          capsys: pytest.CaptureFixture) -> None:
    from mpo_dist.cli import main

    overrides = [part for setting in settings(tiny_models["llama"], finished) for part in ("--set", setting)]
    assert main(["check", *overrides, "--resume", "auto", "--gpus-per-node", "2", "--cpu"]) == 2
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: checkpoint {tag(finished, STEPS)} was written by 1 ranks and this run has 2: convert it "
                      f"with `mpo-dist convert-universal {tag(finished, STEPS)} OUT_DIR` and resume from "
                      f"OUT_DIR/step_{STEPS:08d}, or resume with 1 ranks"]
    assert main(["check", *overrides, "--resume", "auto", "--gpus-per-node", "1", "--cpu"]) == 0
    assert f"resume     {tag(finished, STEPS)} (checkpoint.resume=auto)" in capsys.readouterr().out

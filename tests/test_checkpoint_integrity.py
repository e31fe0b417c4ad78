"""Checkpoints that prove themselves: the COMPLETE record, verification at resume, export and convert-universal,
and a save that runs out of disk. Single-process runs of the real Trainer on a tiny model; the reference for "nothing
lost or repeated" is the uninterrupted run's own samples.jsonl, and for the record the file bytes read by the test.
"""
from __future__ import annotations

import binascii
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpo_dist.cli import main as cli_main
from mpo_dist.engine.checkpoint_layout import CheckpointError, verify
from mpo_dist.engine.offline_export import read_client_state
from mpo_dist.engine.checkpoint_resume import resolve_resume

from conftest import REPO_ROOT, read_jsonl, train_cli
from shared_runs import tag, train_overrides

STEPS = 4
SHARD = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"


def settings(model: Path, run: Path, steps: int = STEPS, resume: str = "none") -> list[str]:
    return [f"model.path={model}", f"train.output_dir={run}", f"train.max_steps={steps}", "checkpoint.every_steps=2",
            "checkpoint.keep_last=3", f"checkpoint.resume={resume}", "loss.name=simpo", "data.languages=[en]",
            "data.eval_files=[]", "data.max_length=64", "data.max_prompt_length=32", "logging.tensorboard=false",
            "logging.progress_bar=false"]


def train(model: Path, run: Path, steps: int = STEPS, resume: str = "none") -> int:
    return train_overrides(settings(model, run, steps, resume))


@pytest.fixture(scope="module")
def finished(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run: tags step 2 and step 4, samples.jsonl of steps 1-4."""
    run = tmp_path_factory.mktemp("intact") / "run"
    assert train(tiny_models["llama"], run) == 0
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run that a test may damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_marker_records_every_file_with_size_and_crc32(finished: Path) -> None:
    tag_dir = tag(finished, STEPS)
    marker = json.loads((tag_dir / "COMPLETE").read_text())
    on_disk = sorted(p.name for p in tag_dir.iterdir() if p.name != "COMPLETE")
    assert marker["step"] == STEPS and sorted(marker["files"]) == on_disk
    assert {SHARD, MODEL_STATES, "rng_rank0.pt"} <= set(on_disk)
    for name, entry in marker["files"].items():
        data = (tag_dir / name).read_bytes()
        assert entry == {"size": len(data), "crc32": f"{binascii.crc32(data):08x}"}


@pytest.mark.parametrize(("damage", "expected"), [
    (truncate, f"{SHARD} is \\d+ bytes, written with \\d+ \\(cut short"),
    (flip_byte, f"{SHARD} has crc32 [0-9a-f]{{8}}, written with [0-9a-f]{{8}} \\(damaged or edited\\)"),
    (Path.unlink, f"{SHARD} is missing \\(written with \\d+ bytes\\)"),
])
def test_auto_resume_skips_a_damaged_tag_and_continues_without_repeating_a_sample(
        run: Path, finished: Path, tiny_models: dict[str, Path], damage, expected: str,
        caplog: pytest.LogCaptureFixture) -> None:
    damage(tag(run, STEPS) / SHARD)
    (run / "COMPLETED").unlink()
    with caplog.at_level(logging.WARNING, logger="mpo_dist"):
        assert resolve_resume("auto", run / "checkpoints") == tag(run, 2)
    assert any(f"skipping damaged checkpoint {tag(run, STEPS)}: " in r.message for r in caplog.records), caplog.text
    assert any(re.search(expected, r.message) for r in caplog.records), caplog.text
    with pytest.raises(CheckpointError, match=f"{tag(run, STEPS)} is damaged: {expected}"):
        resolve_resume(str(tag(run, STEPS)), run / "checkpoints")

    # the resumed run redoes steps 3-4 from step 2: the same samples as the uninterrupted run, each step once
    assert train(tiny_models["llama"], run, resume="auto") == 0
    assert read_jsonl(run / "samples.jsonl") == read_jsonl(finished / "samples.jsonl")
    assert verify(tag(run, STEPS)).problems == []  # step 4 was written again, whole


def test_no_intact_tag_is_one_error_naming_each(run: Path, tiny_models: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    truncate(tag(run, 2) / MODEL_STATES)
    flip_byte(tag(run, STEPS) / SHARD)
    args = ["train"] + [a for s in settings(tiny_models["llama"], run, resume="auto") for a in ("--set", s)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"no intact checkpoint in {run / 'checkpoints'}" in err
    assert f"step_00000002: {MODEL_STATES} is" in err and f"step_00000004: {SHARD} has crc32" in err


def test_checkpoints_without_a_record_still_load_and_truncation_is_still_found(
        run: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The marker of checkpoints written before the record held only the step."""
    for step in (2, STEPS):
        (tag(run, step) / "COMPLETE").write_text(f"{step}\n")
    with caplog.at_level(logging.WARNING, logger="mpo_dist"):
        assert resolve_resume("auto", run / "checkpoints") == tag(run, STEPS)
    assert "written before checkpoints recorded their files" in caplog.text
    truncate(tag(run, STEPS) / SHARD)
    assert resolve_resume("auto", run / "checkpoints") == tag(run, 2)
    (tag(run, 2) / SHARD).unlink()
    with pytest.raises(CheckpointError, match="optim_states.pt \\(the optimizer shard of rank 0\\) is missing"):
        resolve_resume(str(tag(run, 2)), run / "checkpoints")


def test_an_unreadable_marker_is_a_damaged_tag(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tag(run, STEPS) / "COMPLETE"
    marker.write_text(marker.read_text()[:40])  # cut off by a copy
    with caplog.at_level(logging.WARNING, logger="mpo_dist"):
        assert resolve_resume("auto", run / "checkpoints") == tag(run, 2)
    assert f"{marker} is not a valid marker" in caplog.text


def test_resume_at_the_checkpoint_folder_lists_its_tags(run: Path) -> None:
    folder = run / "checkpoints"
    with pytest.raises(CheckpointError, match=f"{folder} is a checkpoint folder, not a checkpoint tag; complete tags in "
                                              "it: step_00000002, step_00000004. .*--resume auto"):
        resolve_resume(str(folder), folder)
    with pytest.raises(CheckpointError, match="is not a checkpoint tag directory"):
        resolve_resume(str(run), folder)  # the run directory above it


def test_export_and_convert_universal_refuse_a_damaged_tag(run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    flip_byte(tag(run, STEPS) / MODEL_STATES)
    with pytest.raises(CheckpointError, match=f"is damaged: {MODEL_STATES} has crc32"):
        read_client_state(tag(run, STEPS))
    for command in (["export", str(tag(run, STEPS)), str(tmp_path / "hf")],
                    ["convert-universal", str(tag(run, STEPS)), str(tmp_path / "universal")]):
        assert cli_main(command) == 2
        assert f"is damaged: {MODEL_STATES} has crc32" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "universal").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 9 MiB tmpfs: room for one tag of the tiny model (about 5.5 MB), not two."""
    mount_point = tmp_path / "run" / "checkpoints"
    mount_point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_full_disk_stops_with_one_error_keeps_the_previous_tag_and_resume_works(
        small_disk: Path, finished: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = small_disk.parent
    args = ["train"] + [a for s in settings(tiny_models["llama"], run) for a in ("--set", s)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"could not write checkpoint {tag(run, STEPS)}" in err[0], err
    assert "stays the newest" in err[0] and "resume with --resume auto" in err[0]
    assert sorted(p.name for p in small_disk.iterdir() if p.name.startswith("step_")) == ["step_00000002"]
    assert (small_disk / "latest").read_text() == "step_00000002"
    assert verify(tag(run, 2)).problems == [] and not (run / "COMPLETED").exists()

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert train(tiny_models["llama"], run, resume="auto") == 0
    assert read_jsonl(run / "samples.jsonl") == read_jsonl(finished / "samples.jsonl")
    assert (run / "COMPLETED").is_file() and (small_disk / "latest").read_text() == f"step_{STEPS:08d}"


@pytest.mark.multiprocess
def test_full_disk_on_two_ranks_stops_every_rank_with_the_error(small_disk: Path, tiny_models: dict[str, Path]) -> None:
    """A rank whose write fails must still meet the others in DeepSpeed's collectives after the writes; if it did not,
    they would wait for it until the collective timeout (60 s here) and end with a timeout instead of this error."""
    run = small_disk.parent
    result = train_cli(2, settings(tiny_models["llama"], run), REPO_ROOT, check=False,
                       env={"MPO_DIST_COLLECTIVE_TIMEOUT_S": "60"})
    errors = [line for line in result.stderr.splitlines() if "mpo-dist train: error:" in line]
    # Each rank prints the error; torchrun may stop the second one before it does (it ends the group on the first exit).
    assert result.returncode != 0 and 1 <= len(errors) <= 2, result.stderr[-4000:]
    assert "timeout" not in result.stderr.lower() and "timed out" not in result.stderr.lower(), result.stderr[-4000:]
    assert all(f"could not write checkpoint {tag(run, STEPS)}" in line for line in errors), errors
    assert sorted(p.name for p in small_disk.iterdir() if p.name.startswith("step_")) == ["step_00000002"]
    assert (small_disk / "latest").read_text() == "step_00000002" and verify(tag(run, 2)).problems == []


def test_a_resume_at_the_last_step_keeps_its_complete_tag(run: Path, tiny_models: dict[str, Path]) -> None:
    """A job requeued after its final save (e.g. preempted during save_hf_at_end) must not rewrite, and so for a
    moment destroy, the one complete tag of its last step."""
    last = tag(run, STEPS)
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in last.iterdir()}
    assert train(tiny_models["llama"], run, resume="auto") == 0
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in last.iterdir()} == before
    assert verify(last).problems == [] and (run / "COMPLETED").is_file()

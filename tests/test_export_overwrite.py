"""`mpo-dist export TAG OUT --overwrite` replaces OUT as a whole: it must refuse an OUT that is or holds the tag or its run
directory, or lies inside the tag or the run's checkpoints/ folder, and leave everything as it was. The tag here is a
hand-made one (a COMPLETE marker over small torch files) with the client state `export` reads; every refusal comes
before anything is consolidated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpo_dist.cli import main as cli_main
from mpo_dist.engine.checkpoint_layout import record_files, tag_files, write_marker

STEP = 4


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """runs/mpo with one intact tag at step 4, a metrics log, and the source model beside it."""
    source = tmp_path / "models" / "base"
    source.mkdir(parents=True)
    (source / "config.json").write_text(json.dumps({"model_type": "llama"}))
    run = tmp_path / "runs" / "mpo"
    tag = run / "checkpoints" / f"step_{STEP:08d}"
    tag.mkdir(parents=True)
    config = {"model": {"path": str(source), "tokenizer": None}, "train": {"output_dir": str(run)}}
    torch.save({"step": STEP, "config": config}, tag / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    torch.save({"optimizer": "shard"}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    write_marker(tag, STEP, record_files(tag, tag_files(tag)))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    return run


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("out, refusal", [
    (".", "is or contains the run directory"),  # the review's case: the whole run deleted
    ("..", "is or contains the run directory"),
    ("checkpoints", "is or contains the checkpoint"),
    ("checkpoints/step_00000004", "is or contains the checkpoint"),
    ("checkpoints/step_00000004/hf", "is inside"),
    ("checkpoints/step_00000009", "is inside"),  # would pass for a tag of the run
    ("../../models", "is or contains the source model"),
])
def test_overwrite_refuses_an_output_over_the_run_or_tag(run: Path, out: str, refusal: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = run.parent.parent
    before = tree(root)
    tag = run / "checkpoints" / f"step_{STEP:08d}"
    assert cli_main(["export", str(tag), str(run / out), "--overwrite"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mpo-dist export: error: output directory") and refusal in error, error
    assert len(error.splitlines()) == 1
    assert tree(root) == before


def test_a_moved_run_is_protected_by_where_its_tag_lies(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    moved = run.parent / "moved"
    run.rename(moved)  # the recorded train.output_dir no longer exists; the tag's own location still names its run
    assert cli_main(["export", str(moved / "checkpoints" / f"step_{STEP:08d}"), str(moved), "--overwrite"]) == 2
    assert f"is or contains the run directory {moved}" in capsys.readouterr().err
    assert (moved / "metrics.jsonl").is_file()


def test_an_output_elsewhere_in_the_run_directory_is_not_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """<output_dir>/hf (docs/evaluation.md) gets past the refusals, to consolidation, where DeepSpeed finds that this
    hand-made tag holds no real ZeRO shards."""
    with pytest.raises(ValueError, match="is not a model state checkpoint"):
        cli_main(["export", str(run / "checkpoints" / f"step_{STEP:08d}"), str(run / "hf"), "--overwrite"])
    assert "error" not in capsys.readouterr().err

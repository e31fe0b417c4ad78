"""Resume at another world size: a 2-rank checkpoint -> `mpo-dist convert-universal` -> 1 rank with gradient accumulation 2
(the same global batch of 4) continues the uninterrupted 2-rank run: same samples, same learning rates, same losses.

Tolerance: the 2-rank run averages the two ranks' gradients with an all-reduce, the 1-rank run sums two micro-batches
in its accumulation buffer; the fp32 additions happen in a different order, so the weights after each step differ by
rounding (~1e-7 relative per operation) and the next losses by a few 1e-6 relative; 1e-4 leaves room for that and still
fails on any real error (a lost optimizer state or a skipped batch changes the loss by far more).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mpo_dist.cli import main as cli_main
from mpo_dist.engine.checkpoint_layout import CheckpointError

from conftest import read_jsonl
from shared_runs import (TWO_RANK_SAVED_STEP as SAVED_STEP, TWO_RANK_STEPS as STEPS, tag, train_overrides,
                         two_rank_mpo_settings)

pytestmark = pytest.mark.multiprocess


def per_step(run: Path, file_name: str, key: str) -> dict[int, object]:
    return {row["step"]: row[key] for row in read_jsonl(run / file_name) if key in row}


def test_two_ranks_to_universal_to_one_rank_continues_the_run(two_rank_mpo_run: Path, tiny_models: dict[str, Path],
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The 2-rank run is tests/shared_runs.py's (it saves step SAVED_STEP on the way); Qwen2 ties its embeddings, so
    the shared weight must survive the conversion too."""
    full, resumed, universal = two_rank_mpo_run, tmp_path / "resumed", tmp_path / "universal"
    checkpoint = tag(full, SAVED_STEP)

    assert cli_main(["convert-universal", str(checkpoint), str(universal), "--workers", "1"]) == 0
    converted = universal / checkpoint.name
    assert (converted / "COMPLETE").is_file() and (converted / "zero" / "optimizer_state.pt").is_file()
    assert (universal / "latest_universal").read_text().strip() == checkpoint.name
    assert not list(universal.glob(".*partial*"))

    # 1 rank x micro-batch 2 x accumulation 2: the 2-rank run's global batch of 4
    one_rank = two_rank_mpo_settings(tiny_models["qwen2"]) + ["train.gradient_accumulation=2"]
    capsys.readouterr()
    assert train_overrides(one_rank + [f"train.output_dir={resumed}", f"checkpoint.resume={converted}"]) == 0
    assert f"resumed from {converted} at step {SAVED_STEP}" in capsys.readouterr().out

    later = list(range(SAVED_STEP + 1, STEPS + 1))
    full_losses, resumed_losses = per_step(full, "metrics.jsonl", "train/loss"), per_step(resumed, "metrics.jsonl", "train/loss")
    assert sorted(resumed_losses) == later
    for step in later:
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-4), step
    full_lr, resumed_lr = per_step(full, "metrics.jsonl", "train/lr"), per_step(resumed, "metrics.jsonl", "train/lr")
    assert [resumed_lr[s] for s in later] == pytest.approx([full_lr[s] for s in later], rel=1e-9)
    full_ids, resumed_ids = per_step(full, "samples.jsonl", "ids"), per_step(resumed, "samples.jsonl", "ids")
    assert [resumed_ids[s] for s in later] == [full_ids[s] for s in later]

    # the converter refuses what it cannot convert, with a reason
    assert cli_main(["convert-universal", str(checkpoint), str(universal)]) == 2
    assert "already exists" in capsys.readouterr().err
    incomplete = tmp_path / "incomplete" / checkpoint.name
    shutil.copytree(checkpoint, incomplete)
    (incomplete / "COMPLETE").unlink()
    assert cli_main(["convert-universal", str(incomplete), str(tmp_path / "out")]) == 2
    assert "no COMPLETE marker" in capsys.readouterr().err
    assert not (tmp_path / "out" / checkpoint.name).exists()


def test_resuming_sharded_checkpoint_at_other_world_size_says_convert(two_rank_mpo_run: Path,
                                                                     tiny_models: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """The plain ZeRO-3 shards fit only the world size that wrote them; the error names the fix."""
    checkpoint = tag(two_rank_mpo_run, SAVED_STEP)
    one_rank = two_rank_mpo_settings(tiny_models["qwen2"]) + ["train.gradient_accumulation=2"]
    with pytest.raises(CheckpointError) as refused:
        train_overrides(one_rank + [f"train.output_dir={tmp_path}", f"checkpoint.resume={checkpoint}"])
    assert f"checkpoint {checkpoint} was written by 2 ranks and this run has 1" in str(refused.value)
    assert f"mpo-dist convert-universal {checkpoint}" in str(refused.value)

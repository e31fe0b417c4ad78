"""Save policies: the wall-clock policy beside the step policy, keep-last-K retention, and the `latest` pointer."""
from __future__ import annotations

from pathlib import Path

from mpo_dist.config import load_config
from mpo_dist.engine.checkpoint_resume import resume_candidates
from mpo_dist.train.trainer import Trainer


def test_wall_clock_saves_and_keep_last(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    config = load_config(None, [
        f"model.path={tiny_models['llama']}", f"train.output_dir={tmp_path}", "train.max_steps=4", "loss.name=simpo",
        "data.languages=[en]", "data.eval_files=[]", "data.max_length=64", "data.max_prompt_length=32",
        "checkpoint.every_minutes=1e-9",  # due after every step: each step is far longer than 60 ns
        "checkpoint.keep_last=2", "logging.tensorboard=false", "logging.progress_bar=false",
    ])
    assert Trainer(config).train().exit_code == 0
    root = tmp_path / "checkpoints"
    kept = sorted(d.name for d in root.glob("step_*"))
    assert kept == ["step_00000003", "step_00000004"]  # steps 1-3 by the clock, 4 at the end; 1 and 2 pruned
    assert all((root / name / "COMPLETE").is_file() for name in kept)
    assert (root / "latest").read_text() == "step_00000004"
    assert resume_candidates(root) == [root / "step_00000004", root / "step_00000003"]

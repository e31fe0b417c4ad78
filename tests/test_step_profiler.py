"""logging.profile_steps: the trainer profiles the steps after its first and writes each phase of them."""
from __future__ import annotations

import re
from pathlib import Path

from mpo_dist.config import load_config
from mpo_dist.train.trainer import Trainer


def test_profile_covers_the_steps_after_the_first(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """4 optimiser steps of 2 micro-steps, profile_steps=2: steps 2 and 3 are profiled (step 1 is the warm-up, step 4
    comes after), so each micro-step phase ran 4 times under the profiler and the optimiser step twice."""
    config = load_config(None, [
        f"model.path={tiny_models['llama']}", f"train.output_dir={tmp_path}", "train.max_steps=4",
        "train.micro_batch_size=1", "train.gradient_accumulation=2", "data.max_length=64", "data.max_prompt_length=32",
        "data.eval_files=[]", "loss.name=dpo", "logging.progress_bar=false", "logging.tensorboard=false",
        "logging.profile_steps=2",
    ])
    assert Trainer(config).train().exit_code == 0
    report = (tmp_path / "profile" / "rank0.txt").read_text()
    calls = {name: int(count) for name, count in re.findall(r"^(\w+) .*\((\d+) calls\)$", report, flags=re.M)}
    assert calls == {"optimizer_step": 2, "collate": 4, "reference": 4, "policy_forward": 4, "loss": 4, "backward": 4,
                     "engine_step": 4, "metrics_reduce": 2}
    assert report.startswith("2 optimiser steps profiled") and "aten::mm" in report  # the operator table follows


"""A CPU rank spawns no process per gradient bucket: DeepSpeed's CPU accelerator learns its device count from
LOCAL_SIZE, which init_distributed sets, instead of running `numactl --hardware` each time ZeRO-3 asks."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mpo_dist.config import load_config
from mpo_dist.train.trainer import Trainer


def test_training_steps_spawn_no_numactl(tiny_models: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    spawned: list[str] = []
    popen_init = subprocess.Popen.__init__

    def recording_init(self, args, *rest, **options):  # type: ignore[no-untyped-def]
        spawned.append(str(args))
        popen_init(self, args, *rest, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_init)
    config = load_config(None, [
        f"model.path={tiny_models['llama']}", f"train.output_dir={tmp_path}", "train.max_steps=2",
        "train.micro_batch_size=1", "data.max_length=64", "data.max_prompt_length=32", "data.eval_files=[]",
        "loss.name=dpo", "logging.progress_bar=false", "logging.tensorboard=false",
    ])
    assert Trainer(config).train().exit_code == 0
    assert not [command for command in spawned if "numactl" in command]

"""Every shipped run config loads and every shipped DeepSpeed template renders to a config DeepSpeed itself accepts, with
no "auto" left (single process, no training)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mpo_dist.config import load_config
from mpo_dist.engine.ds_config import render_policy_config, render_reference_config

from conftest import REPO_ROOT

RUN_CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
DEEPSPEED_TEMPLATES = sorted((REPO_ROOT / "deepspeed_configs").glob("*.json"))
MODEL_PLACEHOLDER = "model.path=/models/placeholder"  # load_config checks that a path is set, not that it exists
RELEASED_MPO = {  # docs/methods/mpo.md, paper settings: beta, learning rate, dominant language
    "llama-3.1-8b-mpo.yaml": (1.0, 6e-7, "en"),
    "gemma-2-9b-mpo.yaml": (1.5, 4e-7, "en"),
    "qwen2.5-7b-mpo.yaml": (1.5, 6e-7, "zh"),
}


def _auto_paths(node: object, path: str = "") -> list[str]:
    if node == "auto":
        return [path]
    if isinstance(node, dict):
        return [found for key, value in node.items() for found in _auto_paths(value, f"{path}.{key}" if path else key)]
    return []


@pytest.mark.parametrize("config_path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_loads(config_path: Path) -> None:
    config = load_config(config_path, [MODEL_PLACEHOLDER])
    for template in (config.engine.policy_config, config.engine.reference_config):
        assert (REPO_ROOT / template).is_file(), f"{config_path.name} names a missing DeepSpeed template {template}"


@pytest.mark.parametrize("name", sorted(RELEASED_MPO))
def test_released_mpo_hyperparameters(name: str) -> None:
    config = load_config(REPO_ROOT / "configs" / name, [MODEL_PLACEHOLDER])
    beta, lr, dominant = RELEASED_MPO[name]
    assert (config.loss.name, config.loss.mpo.beta, config.optim.lr, config.data.dominant_language) == ("mpo", beta, lr, dominant)
    assert (config.model.dtype, config.model.gradient_checkpointing, config.data.max_length) == ("bf16", True, 1024)
    assert (config.train.epochs, config.train.micro_batch_size, config.train.gradient_accumulation) == (2, 1, 1)
    assert (config.optim.warmup_ratio, config.optim.min_lr_ratio) == (0.1, 0.0)


@pytest.mark.parametrize("template", DEEPSPEED_TEMPLATES, ids=lambda p: p.name)
def test_deepspeed_template_renders_without_auto(template: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))
    from deepspeed.runtime.config import DeepSpeedConfig

    is_policy = "optimizer" in json.loads(template.read_text())
    key = "engine.policy_config" if is_policy else "engine.reference_config"
    config = load_config(None, [MODEL_PLACEHOLDER, f"{key}={template}", "model.dtype=bf16"])
    # world size 1: DeepSpeedConfig checks train_batch_size against the (absent) process group's size
    common = dict(world_size=1, dtype="bf16", hidden_size=8192, on_gpu=True)
    if is_policy:
        rendered = render_policy_config(config, **common)
    else:
        rendered = render_reference_config(config, **common)
    assert _auto_paths(rendered) == []
    parsed = DeepSpeedConfig(rendered)  # DeepSpeed's own schema: unknown or mistyped keys are errors
    assert parsed.zero_optimization_stage == 3 and parsed.bfloat16_config.enabled

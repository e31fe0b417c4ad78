"""Render DeepSpeed JSON templates: every "auto" is filled from the run config, as the HF Trainer would do.

DeepSpeed itself rejects "auto"; users keep editing the JSON they know, and mpo-dist fills the values that must agree with
the run (batch sizes, lr, schedule length, dtype, buckets sized from the model's hidden size).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpo_dist.config_files import load_json_config
from mpo_dist.errors import UserError

if TYPE_CHECKING:  # annotations only: the CLI's parsers read DEEPSPEED_DEFAULT_REDUCE_BUCKET_SIZE without loading torch
    from mpo_dist.config import Config


class DeepSpeedConfigError(UserError):
    """A template keeps an "auto" that mpo-dist cannot fill, or a section mpo-dist owns (an unreadable or invalid
    template file is a ConfigError from mpo_dist.config_files)."""


REPO_ROOT = Path(__file__).resolve().parents[2]


def read_template(path: str | Path) -> dict:
    """A relative path is tried from the working directory, then from the mpo-dist checkout (where the templates ship)."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
        path = REPO_ROOT / path
    return load_json_config(path, "DeepSpeed config template")  # a key given twice is refused, not silently dropped


DEEPSPEED_DEFAULT_REDUCE_BUCKET_SIZE = 500_000_000  # zero_optimization.reduce_bucket_size when the key is absent


def auto_reduce_bucket_size(hidden_size: int) -> int:
    """What "auto" renders for reduce_bucket_size: H², the Hugging Face convention."""
    return hidden_size * hidden_size


def reduce_bucket_elements(configured: int, trainable_params: int) -> int:
    """The reduce bucket the engine is given: DeepSpeed allocates the whole bucket at start-up, so a bucket larger
    than all the model's gradients (5e8 elements: a 2 GiB fp32 buffer for a 135M model) is capped at the parameter
    count. Large buckets stay as configured: fewer, larger reduces are faster (docs/benchmarks.md)."""
    return min(configured, trainable_params)


def with_reduce_bucket_capped(rendered: dict, trainable_params: int) -> dict:
    """`rendered` with its reduce bucket (the template's, or DeepSpeed's default) capped by `reduce_bucket_elements`."""
    updated = copy.deepcopy(rendered)
    zero = updated.setdefault("zero_optimization", {})
    configured = int(zero.get("reduce_bucket_size", DEEPSPEED_DEFAULT_REDUCE_BUCKET_SIZE))
    zero["reduce_bucket_size"] = reduce_bucket_elements(configured, trainable_params)
    return updated


def _fill(node: dict, key: str, value: Any) -> None:
    if node.get(key) == "auto":
        node[key] = value


def _fill_common(rendered: dict, config: Config, world_size: int, dtype: str, hidden_size: int, on_gpu: bool) -> None:
    micro, accum = config.train.micro_batch_size, config.train.gradient_accumulation
    _fill(rendered, "train_micro_batch_size_per_gpu", micro)
    _fill(rendered, "gradient_accumulation_steps", accum)
    _fill(rendered, "train_batch_size", micro * accum * world_size)
    for precision in ("bf16", "fp16"):
        if precision in rendered:
            _fill(rendered[precision], "enabled", dtype == precision)
    zero = rendered.get("zero_optimization", {})
    _fill(zero, "reduce_bucket_size", auto_reduce_bucket_size(hidden_size))
    _fill(zero, "stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size))
    _fill(zero, "stage3_param_persistence_threshold", 10 * hidden_size)
    for offload in ("offload_param", "offload_optimizer"):
        if offload in zero:
            _fill(zero[offload], "pin_memory", on_gpu)


def _reject_leftover_auto(node: Any, source: str, path: str = "") -> None:
    if node == "auto":
        raise DeepSpeedConfigError(f"{source}: {path or 'value'} is \"auto\" but mpo-dist has no value for it; set it explicitly")
    if isinstance(node, dict):
        for key, value in node.items():
            _reject_leftover_auto(value, source, f"{path}.{key}" if path else key)


def render_policy_config(config: Config, *, world_size: int, dtype: str, hidden_size: int, on_gpu: bool) -> dict:
    rendered = copy.deepcopy(read_template(config.engine.policy_config))
    _fill_common(rendered, config, world_size, dtype, hidden_size, on_gpu)
    _fill(rendered, "gradient_clipping", config.optim.max_grad_norm)
    optimizer = rendered.get("optimizer", {}).get("params", {})
    _fill(optimizer, "lr", config.optim.lr)
    _fill(optimizer, "betas", list(config.optim.betas))
    _fill(optimizer, "eps", config.optim.eps)
    _fill(optimizer, "weight_decay", config.optim.weight_decay)
    if "scheduler" in rendered:
        raise DeepSpeedConfigError(
            f"{config.engine.policy_config}: remove the 'scheduler' section; mpo-dist schedules the lr itself "
            "(optim.warmup_ratio, optim.min_lr_ratio: linear warmup then cosine, see mpo_dist/train/schedule.py)"
        )
    _reject_leftover_auto(rendered, config.engine.policy_config)
    return rendered


def render_reference_config(config: Config, *, world_size: int, dtype: str, hidden_size: int, on_gpu: bool) -> dict:
    rendered = copy.deepcopy(read_template(config.engine.reference_config))
    _fill_common(rendered, config, world_size, dtype, hidden_size, on_gpu)
    for key in ("optimizer", "scheduler"):
        if key in rendered:
            raise DeepSpeedConfigError(f"{config.engine.reference_config}: the reference engine is frozen; remove its '{key}' section")
    _reject_leftover_auto(rendered, config.engine.reference_config)
    return rendered


def with_universal_loading(rendered: dict) -> dict:
    """The policy config for resuming from a universal checkpoint (`mpo-dist convert-universal`): DeepSpeed then re-shards
    the saved full tensors for the current world size instead of expecting one shard file per old rank."""
    updated = copy.deepcopy(rendered)
    updated.setdefault("checkpoint", {})["load_universal"] = True
    return updated

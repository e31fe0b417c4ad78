"""One typed configuration for a run: YAML file + `--set key=value` overrides, validated before any process group starts.

Every section is a dataclass; unknown keys and values of the wrong type are errors that name the dotted key, so a typo in
a 70B job fails on the login node instead of after the queue wait.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpo_dist.errors import UserError
from mpo_dist.losses import LOSSES
from mpo_dist.losses.cpo import CPOOptions
from mpo_dist.losses.dpo import DPOOptions
from mpo_dist.losses.ipo import IPOOptions
from mpo_dist.losses.mlc import MLCOptions
from mpo_dist.losses.mpo import MPOOptions
from mpo_dist.losses.orpo import ORPOOptions
from mpo_dist.losses.simpo import SimPOOptions
from mpo_dist.runtime import DTYPE_CHOICES


class ConfigError(UserError):
    """A configuration value is missing, unknown or invalid; the message names the dotted key."""


@dataclass
class ModelConfig:
    path: str = ""  # local Hugging Face model directory (no hub access); `mpo-dist init-tiny` makes tiny ones
    tokenizer: str = ""  # tokenizer directory; empty = same as `path`
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16; auto = bf16 on GPU, fp32 on CPU
    logprob_backend: str = "auto"  # auto | triton | torch; auto = triton on GPU, chunked torch on CPU
    logprob_chunk_size: int = 1024  # rows per chunk of the torch log-prob twin
    gradient_checkpointing: bool = False
    checkpointed_layers: int = -1  # with gradient_checkpointing: recompute only the first N decoder layers; -1 = all
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2


@dataclass
class DataFile:
    path: str
    format: str = "auto"  # auto | unified | mpo | mlc
    source_language: str = ""  # released MPO format only: language of source_* fields (default: data.dominant_language)
    target_language: str = ""  # released MPO format only: language of target_* fields (required for that format)


@dataclass
class DataConfig:
    train_files: list[DataFile] = field(default_factory=lambda: [DataFile("sample:train")])
    eval_files: list[DataFile] = field(default_factory=lambda: [DataFile("sample:heldout")])
    dominant_language: str = "en"
    languages: list[str] = field(default_factory=list)  # training languages; empty = every language in the data
    max_length: int = 1024  # prompt + response tokens per sequence
    max_prompt_length: int = 512
    skip_bad_rows: bool = False  # True: skip invalid rows and log how many; False: first bad row is an error
    system_prompt: str = ""
    packing: bool = False  # one row per micro-batch, sequences end to end (no padding compute); same results as padded


@dataclass
class LossConfig:
    name: str = "mpo"  # mpo | dpo | ipo | simpo | orpo | cpo
    mpo: MPOOptions = field(default_factory=MPOOptions)
    dpo: DPOOptions = field(default_factory=DPOOptions)
    ipo: IPOOptions = field(default_factory=IPOOptions)
    simpo: SimPOOptions = field(default_factory=SimPOOptions)
    orpo: ORPOOptions = field(default_factory=ORPOOptions)
    cpo: CPOOptions = field(default_factory=CPOOptions)

    def options(self) -> Any:
        return getattr(self, self.name)


@dataclass
class MLCConfig(MLCOptions):
    enabled: bool = False


@dataclass
class OptimConfig:
    lr: float = 6e-7
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    max_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    output_dir: str = "runs/mpo"
    epochs: int = 2
    max_steps: int = 0  # optimiser steps; 0 = derived from epochs
    micro_batch_size: int = 1  # preference examples per rank per micro-step
    gradient_accumulation: int = 1
    seed: int = 42
    eval_every: int = 0  # optimiser steps between held-out reward-gap evaluations; 0 = only at start and end
    log_every: int = 1
    save_hf_at_end: bool = False  # also write a Hugging Face directory (<output_dir>/hf) when training completes


@dataclass
class EngineConfig:
    policy_config: str = "deepspeed_configs/zero3_policy.json"
    reference_config: str = "deepspeed_configs/zero3_reference_offload.json"
    reference: str = "online"  # online: a second ZeRO-3 engine offloaded to CPU | cache: precomputed terms | none
    reference_cache: str = ""  # engine.reference=cache: directory written by `mpo-dist precompute-ref`


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0 = no step-based saves
    every_minutes: float = 0.0  # wall-clock save policy; 0 = off
    keep_last: int = 2
    resume: str = "none"  # none | auto (newest complete checkpoint in output_dir) | PATH to a checkpoint tag directory


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress_bar: bool = True
    log_samples: bool = True  # write the example ids of every step to <output_dir>/samples.jsonl


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mlc: MLCConfig = field(default_factory=MLCConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir)


_CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("auto", *DTYPE_CHOICES),
    "model.logprob_backend": ("auto", "triton", "torch"),
    "model.attn_implementation": ("sdpa", "eager", "flash_attention_2"),
    "loss.name": tuple(LOSSES),
    "loss.mpo.gap": ("length_normalized", "dpo"),
    "loss.mpo.pooling": ("masked", "all_positions"),
    "engine.reference": ("online", "cache", "none"),
}
_FILE_FORMATS = ("auto", "unified", "mpo", "mlc")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, str) and annotation is DataFile:
            return DataFile(path=value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(annotation, value, key)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_type,) = typing.get_args(annotation)[:1]
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError("; ".join(errors))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]} (valid keys here: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix or 'config'}: {error}") from None


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


def validate(config: Config) -> None:
    """Cross-field checks that a dataclass alone cannot express."""
    for key, choices in _CHOICES.items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    for section in ("train_files", "eval_files"):
        for i, data_file in enumerate(getattr(config.data, section)):
            if data_file.format not in _FILE_FORMATS:
                raise ConfigError(f"data.{section}[{i}].format: {data_file.format!r} is not one of {', '.join(_FILE_FORMATS)}")
    if not config.data.train_files:
        raise ConfigError("data.train_files: at least one training file is needed")
    if not config.model.path:
        raise ConfigError("model.path: a local Hugging Face model directory is required (make a tiny one with `mpo-dist init-tiny`)")
    positive = {
        "train.micro_batch_size": config.train.micro_batch_size,
        "train.gradient_accumulation": config.train.gradient_accumulation,
        "train.log_every": config.train.log_every,
        "data.max_length": config.data.max_length,
        "data.max_prompt_length": config.data.max_prompt_length,
        "model.logprob_chunk_size": config.model.logprob_chunk_size,
        "mlc.every": config.mlc.every,
        "mlc.dim": config.mlc.dim,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    if config.model.checkpointed_layers < -1:
        raise ConfigError(f"model.checkpointed_layers: must be -1 (all layers) or a number of layers >= 0, "
                          f"got {config.model.checkpointed_layers}")
    if config.model.checkpointed_layers != -1 and not config.model.gradient_checkpointing:
        raise ConfigError("model.checkpointed_layers: only applies with model.gradient_checkpointing=true")
    if config.train.epochs <= 0 and config.train.max_steps <= 0:
        raise ConfigError("train.epochs / train.max_steps: one of them must be > 0")
    if config.data.max_prompt_length >= config.data.max_length:
        raise ConfigError(
            f"data.max_prompt_length ({config.data.max_prompt_length}) must be smaller than data.max_length "
            f"({config.data.max_length}) so every response keeps at least one token"
        )
    if not 0.0 <= config.optim.warmup_ratio < 1.0:
        raise ConfigError(f"optim.warmup_ratio: must be in [0, 1), got {config.optim.warmup_ratio}")
    if len(config.optim.betas) != 2:
        raise ConfigError(f"optim.betas: expected two numbers, got {config.optim.betas}")
    if config.checkpoint.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last: must be >= 1, got {config.checkpoint.keep_last}")
    if config.mlc.enabled and len(config.mlc.languages) < 2:
        raise ConfigError(f"mlc.languages: MLC needs at least two languages, got {config.mlc.languages}")
    if config.data.packing and config.loss.name == "mpo" and config.loss.mpo.pooling == "all_positions":
        raise ConfigError("loss.mpo.pooling: 'all_positions' (mean including right padding) has no meaning with "
                          "data.packing=true, where there is no padding; use pooling 'masked' or turn packing off")
    if config.engine.reference == "none" and needs_reference(config):
        raise ConfigError(f"engine.reference: loss {config.loss.name!r} with these options needs a reference model; "
                          "use 'online' or 'cache'")
    if config.engine.reference == "cache":
        _check_reference_cache_settings(config)


def _check_reference_cache_settings(config: Config) -> None:
    if not config.engine.reference_cache:
        raise ConfigError("engine.reference_cache: engine.reference=cache needs the directory written by "
                          "`mpo-dist precompute-ref`")
    options = config.loss.options()
    if config.loss.name == "mpo" and options.alpha > 0 and options.pooling == "all_positions":
        raise ConfigError("engine.reference=cache: loss.mpo.pooling=all_positions averages over the batch's padding, which "
                          "depends on which examples share a micro-batch, so it cannot be precomputed; use "
                          "pooling=masked or engine.reference=online")


def needs_reference(config: Config) -> bool:
    """Whether the configured loss reads reference-model terms (MPO always does: its dominant-language gap)."""
    from mpo_dist.losses import build_loss

    loss = build_loss(config.loss.name, config.loss.options())
    return loss.needs_reference or loss.needs_anchor


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply `key=value` overrides (values parsed as YAML), build and validate the Config."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path}: invalid YAML: {error}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: expected key=value")
        key, raw = override.split("=", 1)
        _set_dotted(tree, key.strip(), raw)
    config = _build(Config, tree, "")
    validate(config)
    return config


def to_dict(config: Config) -> dict:
    """Plain nested dict, for saving next to checkpoints and for TensorBoard's text panel."""
    return dataclasses.asdict(config)

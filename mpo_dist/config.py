"""One typed configuration for a run: YAML file + `--set key=value` overrides, validated before any process group starts.

Every section is a dataclass; unknown keys and values of the wrong type are errors that name the dotted key, so a typo in
a 70B job fails on the login node instead of after the queue wait.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpo_dist.config_files import ConfigError, read_config_tree
from mpo_dist.data.data_file import DataFile
from mpo_dist.data.schema import KNOWN_LANGUAGES
from mpo_dist.losses import LOSSES
from mpo_dist.losses.cpo import CPOOptions
from mpo_dist.losses.dpo import DPOOptions
from mpo_dist.losses.ipo import IPOOptions
from mpo_dist.losses.mlc import MLCOptions
from mpo_dist.losses.mpo import MPOOptions
from mpo_dist.losses.orpo import ORPOOptions
from mpo_dist.losses.simpo import SimPOOptions
from mpo_dist.option import option
from mpo_dist.runtime import DTYPE_CHOICES


@dataclass
class ModelConfig:
    path: str = option("", "local Hugging Face model directory (no hub access); `mpo-dist init-tiny` makes tiny ones")
    tokenizer: str = option("", "tokenizer directory; empty = same as model.path")
    dtype: str = option("auto", "auto | fp32 | bf16 | fp16; auto = bf16 on GPU, fp32 on CPU")
    logprob_backend: str = option("auto", "auto | triton | torch; auto = triton on GPU, chunked torch on CPU")
    logprob_chunk_size: int = option(1024, "rows per chunk of the torch log-prob twin")
    gradient_checkpointing: bool = option(False, "recompute decoder layers in backward (activation checkpointing)")
    checkpointed_layers: int = option(-1, "with gradient_checkpointing: recompute only the first N decoder layers; "
                                          "-1 = all")
    attn_implementation: str = option("sdpa", "sdpa | eager | flash_attention_2")


@dataclass
class DataConfig:
    train_files: list[DataFile] = option([DataFile("sample:train")], "training files (paths or {path, format, "
                                                                      "source_language, target_language})")
    eval_files: list[DataFile] = option([DataFile("sample:heldout")], "held-out files for per-language reward gaps")
    dominant_language: str = option("en", "MPO's anchor language (the one the model is already aligned in)")
    languages: list[str] = option([], "training languages; empty = every language in the data")
    max_length: int = option(1024, "prompt + response tokens per sequence (longer ones are truncated)")
    max_prompt_length: int = option(512, "prompt tokens kept (from the end of the prompt)")
    skip_bad_rows: bool = option(False, "true: skip invalid rows and log how many; false: the first bad row is an error")
    system_prompt: str = option("", "system message rendered before every prompt")
    packing: bool = option(False, "one row per micro-batch, sequences end to end (no padding compute); "
                                  "same results as padded")
    allow_changed: bool = option(False, "resume even though the training examples differ from those the checkpoint "
                                        "was trained on (the sampler restarts its epoch); false: such a resume is refused")


@dataclass
class LossConfig:
    name: str = option("mpo", "mpo | dpo | ipo | simpo | orpo | cpo")
    mpo: MPOOptions = option(MPOOptions(), "MPO options (docs/methods/mpo.md)")
    dpo: DPOOptions = option(DPOOptions(), "DPO options (docs/methods/baselines.md)")
    ipo: IPOOptions = option(IPOOptions(), "IPO options (docs/methods/baselines.md)")
    simpo: SimPOOptions = option(SimPOOptions(), "SimPO options (docs/methods/baselines.md)")
    orpo: ORPOOptions = option(ORPOOptions(), "ORPO options (docs/methods/baselines.md)")
    cpo: CPOOptions = option(CPOOptions(), "CPO options (docs/methods/baselines.md)")

    def options(self) -> Any:
        return getattr(self, self.name)


@dataclass
class MLCConfig(MLCOptions):
    enabled: bool = option(False, "add the MLC consistency loss (docs/methods/mlc.md)")


@dataclass
class OptimConfig:
    lr: float = option(6e-7, "peak learning rate (AdamW), > 0")
    weight_decay: float = option(0.0, "AdamW weight decay, >= 0")
    betas: list[float] = option([0.9, 0.95], "AdamW betas, two numbers in [0, 1)")
    eps: float = option(1e-8, "AdamW epsilon, > 0")
    warmup_ratio: float = option(0.1, "fraction of the optimiser steps with linear warmup, in [0, 1)")
    min_lr_ratio: float = option(0.0, "cosine floor as a fraction of lr, in [0, 1]")
    max_grad_norm: float = option(1.0, "gradient clipping norm, > 0")


@dataclass
class TrainConfig:
    output_dir: str = option("runs/mpo", "checkpoints, logs and metrics go here")
    epochs: int = option(2, "passes over the training examples (when train.max_steps is 0)")
    max_steps: int = option(0, "optimiser steps; 0 = derived from epochs")
    micro_batch_size: int = option(1, "preference examples per rank per micro-step")
    gradient_accumulation: int = option(1, "micro-steps per optimiser step")
    seed: int = option(42, "data order, initialisation and dropout seed")
    eval_every: int = option(0, "optimiser steps between held-out reward-gap evaluations; 0 = only at start and end")
    log_every: int = option(1, "optimiser steps between metric log lines")
    save_hf_at_end: bool = option(False, "also write a Hugging Face directory (<output_dir>/hf) when training completes")


@dataclass
class EngineConfig:
    policy_config: str = option("deepspeed_configs/zero3_policy.json", "DeepSpeed template of the trained policy")
    reference_config: str = option("deepspeed_configs/zero3_reference_offload.json",
                                   "DeepSpeed template of the frozen reference")
    reference: str = option("online", "online: a second ZeRO-3 engine offloaded to CPU | cache: precomputed terms | none")
    reference_cache: str = option("", "engine.reference=cache: directory written by `mpo-dist precompute-ref`")


@dataclass
class CheckpointConfig:
    every_steps: int = option(0, "save every N optimiser steps; 0 = no step-based saves")
    every_minutes: float = option(0.0, "save every N minutes of wall-clock time; 0 = off")
    keep_last: int = option(2, "tags of the current line kept, the new save included; older ones are pruned")
    resume: str = option("none", "none | auto (newest complete checkpoint in output_dir) | PATH to a checkpoint tag")
    on_existing: str = option("refuse", "a fresh start (resume none) in an output_dir that holds tags: refuse | "
                                        "set_aside (move them to checkpoints/abandoned/) | delete")
    keep_abandoned: int = option(1, "set-aside lines kept under checkpoints/abandoned/ (older ones are deleted); "
                                    "0 = delete what a resume or fresh start sets aside")
    new_line: bool = option(False, "an explicit resume of the tag this run's unfinished line started from starts a new "
                                   "line instead of continuing it (never on a SLURM requeue)")


@dataclass
class LoggingConfig:
    tensorboard: bool = option(True, "write TensorBoard event files")
    progress_bar: bool = option(True, "show a progress bar on rank 0")
    log_samples: bool = option(True, "write the example ids of every step to <output_dir>/samples.jsonl")
    profile_steps: int = option(0, "profile this many optimiser steps after the run's first with torch.profiler: "
                                   "a table per rank in <output_dir>/profile/ (0 = off)")


@dataclass
class Config:
    model: ModelConfig = option(ModelConfig(), "the model to train (docs/models.md)")
    data: DataConfig = option(DataConfig(), "training and held-out data (docs/data.md)")
    loss: LossConfig = option(LossConfig(), "the preference loss and its options (docs/methods/)")
    mlc: MLCConfig = option(MLCConfig(), "the MLC auxiliary loss; its options are described in docs/methods/mlc.md")
    optim: OptimConfig = option(OptimConfig(), "AdamW and the warmup + cosine schedule")
    train: TrainConfig = option(TrainConfig(), "the loop: length, batch sizes, evaluation")
    engine: EngineConfig = option(EngineConfig(), "DeepSpeed templates and the reference model (docs/scaling.md)")
    checkpoint: CheckpointConfig = option(CheckpointConfig(), "saving and resuming (docs/checkpoints.md)")
    logging: LoggingConfig = option(LoggingConfig(), "TensorBoard, progress bar, sample log")

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir)

    @property
    def checkpoints_dir(self) -> Path:
        """Where the run's checkpoint tags go, and where `checkpoint.resume: auto` looks."""
        return self.output_dir / "checkpoints"


_CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("auto", *DTYPE_CHOICES),
    "model.logprob_backend": ("auto", "triton", "torch"),
    "model.attn_implementation": ("sdpa", "eager", "flash_attention_2"),
    "loss.name": tuple(LOSSES),
    "engine.reference": ("online", "cache", "none"),
    "checkpoint.on_existing": ("refuse", "set_aside", "delete"),
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


def _is_list_key(parts: list[str]) -> bool:
    """Whether the dotted key `parts` names a list-valued field of Config (e.g. data.train_files)."""
    cls: Any = Config
    for part in parts:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
    return typing.get_origin(cls) is list


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
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    for key, value in {"train.epochs": config.train.epochs, "train.max_steps": config.train.max_steps,
                       "train.eval_every": config.train.eval_every,
                       "checkpoint.every_steps": config.checkpoint.every_steps,
                       "logging.profile_steps": config.logging.profile_steps}.items():
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0 (0 = off / derived), got {value}")
    _check_optimizer(config.optim)
    if not (math.isfinite(config.checkpoint.every_minutes) and config.checkpoint.every_minutes >= 0):
        raise ConfigError(f"checkpoint.every_minutes: must be a finite number >= 0 (0 = off), "
                          f"got {config.checkpoint.every_minutes}")
    _check_languages(config)
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
    if config.checkpoint.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last: must be >= 1, got {config.checkpoint.keep_last}")
    if config.checkpoint.keep_abandoned < 0:
        raise ConfigError(f"checkpoint.keep_abandoned: must be >= 0, got {config.checkpoint.keep_abandoned}")
    if config.data.packing and config.loss.name == "mpo" and config.loss.mpo.pooling == "all_positions":
        raise ConfigError("loss.mpo.pooling: 'all_positions' (mean including right padding) has no meaning with "
                          "data.packing=true, where there is no padding; use pooling 'masked' or turn packing off")
    if config.engine.reference == "none" and needs_reference(config):
        raise ConfigError(f"engine.reference: loss {config.loss.name!r} with these options needs a reference model; "
                          "use 'online' or 'cache'")
    if config.engine.reference == "cache":
        _check_reference_cache_settings(config)


def _check_optimizer(optim: OptimConfig) -> None:
    """Ranges of the optimiser and schedule settings: a negative or NaN lr would otherwise fail late inside torch."""
    ranges = {  # key: (value, allowed, expected)
        "optim.lr": (optim.lr, optim.lr > 0, "a finite number > 0"),
        "optim.weight_decay": (optim.weight_decay, optim.weight_decay >= 0, "a finite number >= 0"),
        "optim.eps": (optim.eps, optim.eps > 0, "a finite number > 0"),
        "optim.max_grad_norm": (optim.max_grad_norm, optim.max_grad_norm > 0, "a finite number > 0"),
        "optim.warmup_ratio": (optim.warmup_ratio, 0.0 <= optim.warmup_ratio < 1.0, "in [0, 1)"),
        "optim.min_lr_ratio": (optim.min_lr_ratio, 0.0 <= optim.min_lr_ratio <= 1.0, "in [0, 1]"),
    }
    for key, (value, allowed, expected) in ranges.items():
        if not (allowed and math.isfinite(value)):
            raise ConfigError(f"{key}: must be {expected}, got {value}")
    if len(optim.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {optim.betas}")


def _check_languages(config: Config) -> None:
    """Every configured language code must be one mpo-dist knows: a typo ('jp') would otherwise drop a language
    silently or surface as an error in row 1 of a data file."""
    keys: dict[str, list[str]] = {"data.dominant_language": [config.data.dominant_language],
                                  "data.languages": config.data.languages, "mlc.languages": config.mlc.languages}
    for section in ("train_files", "eval_files"):
        for i, data_file in enumerate(getattr(config.data, section)):
            for name in ("source_language", "target_language"):
                keys[f"data.{section}[{i}].{name}"] = [code for code in [getattr(data_file, name)] if code]
    for key, codes in keys.items():
        unknown = [code for code in codes if code not in KNOWN_LANGUAGES]
        if unknown:
            raise ConfigError(f"{key}: unknown language code(s) {', '.join(map(repr, unknown))}; known codes: "
                              f"{', '.join(sorted(KNOWN_LANGUAGES))}")
    repeated = sorted({code for code in config.data.languages if config.data.languages.count(code) > 1})
    if repeated:
        raise ConfigError(f"data.languages: {', '.join(repeated)} listed more than once")


def _check_reference_cache_settings(config: Config) -> None:
    if not config.engine.reference_cache:
        raise ConfigError("engine.reference_cache: engine.reference=cache needs the cache directory; set this key "
                          "(precompute-ref writes there, or to its --out DIR)")
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
    """Read YAML (optional; a key given twice is an error), apply `key=value` overrides (values parsed as YAML), build
    and validate the Config."""
    config = _build(Config, read_config_tree(path, overrides or [], is_list_key=_is_list_key), "")
    validate(config)
    return config


def to_dict(config: Config) -> dict:
    """Plain nested dict, for saving next to checkpoints and for TensorBoard's text panel."""
    return dataclasses.asdict(config)

"""The model directory: a local Hugging Face model whose config, weights and tokenizer load and agree.

Without this check a missing model.path reaches Hugging Face as a hub "repo id" and fails with "Repo id must be in the
form ...", and a directory without a tokenizer fails with a sentencepiece / tiktoken message; neither names the path.
Weight files the running user cannot read would pass everything else and fail only when the engine loads them, minutes
later, as a FileNotFoundError; they are opened here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mpo_dist.check.model_path import model_path_problem
from mpo_dist.check.report import CheckReport
from mpo_dist.config import Config
from mpo_dist.file_access import read_problem, this_user
from mpo_dist.models.alignment_model import mlc_layer_problem
from mpo_dist.models.tokenizer import load_tokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class ModelInputs:
    """What the run reads from the model directory: its config (hidden and vocabulary sizes) and the tokenizer."""

    hf_config: Any
    tokenizer: PreTrainedTokenizerBase


def _weights_problem(model_dir: Path) -> str | None:
    """None when the weights are there and readable: a single file, or an index whose every shard exists. The first
    name found in WEIGHT_INDEX_FILES, then WEIGHT_FILES, is the one Hugging Face loads."""
    for index_name in WEIGHT_INDEX_FILES:
        index_path = model_dir / index_name
        if index_path.is_file():
            problem = read_problem(index_path)
            if problem:
                return f"{index_path} {problem}"
            try:
                shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                return f"{index_path} is not a weight index (expected JSON with a 'weight_map')"
            missing = [shard for shard in shards if not (model_dir / shard).is_file()]
            if missing:
                return f"{index_path} lists {len(missing)} missing shard file(s), e.g. {missing[0]}"
            return _unreadable_weights([model_dir / shard for shard in shards])
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            return _unreadable_weights([model_dir / name])
    return f"{model_dir} has no weights ({', '.join(WEIGHT_FILES + WEIGHT_INDEX_FILES)})"


def _unreadable_weights(files: list[Path]) -> str | None:
    problems = [(path, problem) for path in files if (problem := read_problem(path))]
    if not problems:
        return None
    path, problem = problems[0]
    more = f" (and {len(problems) - 1} more of the {len(files)} weight files)" if len(problems) > 1 else ""
    return f"{path} {problem}{more}"


def _load_config(model_dir: Path, report: CheckReport) -> Any | None:
    from transformers import AutoConfig

    problem = read_problem(model_dir / "config.json")
    if problem:
        report.error(f"model.path: {model_dir / 'config.json'} {problem}")
        return None
    try:
        return AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        report.error(f"model.path: {model_dir}/config.json does not load as a Hugging Face config: "
                     f"{str(error).splitlines()[0]}")
        return None


def run_tokenizer(config: Config) -> PreTrainedTokenizerBase:
    """The run's tokenizer (model.tokenizer, else the model's own), with a pad token."""
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    if tokenizer.pad_token_id is None:  # padding is masked out everywhere, any id will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_tokenizer(config: Config, report: CheckReport) -> PreTrainedTokenizerBase | None:
    key = "model.tokenizer" if config.model.tokenizer else "model.path"
    tokenizer_dir = Path(config.model.tokenizer or config.model.path)
    if not tokenizer_dir.is_dir():
        report.error(f"{key}: tokenizer directory {tokenizer_dir} does not exist")
        return None
    problem = read_problem(tokenizer_dir)
    if problem:
        report.error(f"{key}: tokenizer directory {tokenizer_dir} {problem}")
        return None
    try:
        tokenizer = run_tokenizer(config)
    except PermissionError as error:  # one of the files the tokenizer reads
        report.error(f"{key}: {error.filename} is not readable by {this_user()}")
        return None
    except Exception as error:  # noqa: BLE001 - each tokenizer backend fails its own way on a wrong directory
        first_line = (str(error).splitlines() or [""])[0]
        report.error(f"{key}: no tokenizer loads from {tokenizer_dir} ({type(error).__name__}: {first_line}); expected "
                     "tokenizer.json or tokenizer.model with tokenizer_config.json")
        return None
    if tokenizer.chat_template is None:
        report.error(f"{key}: the tokenizer in {tokenizer_dir} has no chat template; set one in tokenizer_config.json "
                     "or chat_template.jinja (responses are rendered with it)")
        return None
    return tokenizer


def check_model_directory(config: Config, report: CheckReport) -> ModelInputs | None:
    """The model's config and tokenizer, or None after recording what is wrong (naming the path)."""
    model_dir = Path(config.model.path)
    problem = model_path_problem(model_dir)
    if problem:
        report.error(problem)
        return None
    weights_problem = _weights_problem(model_dir)
    if weights_problem:
        report.error(f"model.path: {weights_problem}")
    hf_config = _load_config(model_dir, report)
    tokenizer = _load_tokenizer(config, report)
    if hf_config is None or tokenizer is None or weights_problem:
        return None
    vocab_size = getattr(hf_config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        report.error(f"model.tokenizer: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                     f"{vocab_size} rows (config.json vocab_size); ids beyond it cannot be embedded - is it the "
                     "model's own tokenizer?")
        return None
    layer_problem = mlc_layer_problem(config.mlc.layer, hf_config.num_hidden_layers) if config.mlc.enabled else None
    if layer_problem:
        report.error(layer_problem)
        return None
    return ModelInputs(hf_config, tokenizer)

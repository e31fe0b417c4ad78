"""Exact shape of a Hugging Face causal LM, counted on a model built on the meta device.

Building the real module tree (instead of re-deriving parameter formulas per architecture) keeps the
count exact for every architecture transformers knows, and the meta device means no weight is ever
allocated, so a 70B model is counted in about a second on a laptop.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mpo_dist.errors import UserError
from mpo_dist.plan.choices import BUNDLED_MODELS_DIR, bundled_model_names


class ModelSpecError(UserError):
    """--model does not name a usable config: the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers the memory planner needs, taken from the config and the meta-built model."""

    name: str
    model_type: str
    total_params: int  # tied embeddings counted once
    largest_module_params: int  # most parameters owned directly by one module: ZeRO-3's gather unit
    n_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    norms_per_layer: int
    tied_embeddings: bool
    final_logit_softcap: float | None
    attention_logit_softcap: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_config_path(model: str) -> Path:
    """A config.json file, a local HF model directory, or a bundled name -> the config.json to read."""
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ModelSpecError(f"--model directory {path} has no config.json; expected a Hugging Face model "
                                 f"directory, a config.json file or a bundled name "
                                 f"({', '.join(bundled_model_names())})")
        return config_path
    bundled = BUNDLED_MODELS_DIR / f"{model}.json"
    if bundled.is_file():
        return bundled
    raise ModelSpecError(f"--model {model!r} is neither an existing config.json file, nor a model directory, nor a "
                         f"bundled model name; bundled names: {', '.join(bundled_model_names())}")


def load_hf_config(model: str):
    """Read the config JSON and turn it into the transformers config class its model_type names."""
    from transformers import AutoConfig

    config_path = resolve_config_path(model)
    try:
        config_dict = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelSpecError(f"cannot read {config_path} as JSON: {error}") from error
    if not isinstance(config_dict, dict) or "model_type" not in config_dict:
        raise ModelSpecError(f"{config_path} has no 'model_type' key; expected a Hugging Face config.json")
    model_type = config_dict.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **config_dict)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelSpecError(f"{config_path}: transformers cannot build a config of model_type "
                             f"{model_type!r}: {error}") from error


def build_meta_model(config) -> nn.Module:
    """The full causal-LM module tree with every tensor on the meta device (shapes only, no storage)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelSpecError(f"model_type {config.model_type!r} is not a causal LM transformers can build: "
                             f"{error}") from error


def _largest_module_params(model: nn.Module) -> int:
    return max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())


def _norms_per_layer(model: nn.Module, hidden_size: int) -> int:
    """Hidden-sized norms in one decoder layer: Llama/Qwen have 2, Gemma-2 has 4 (pre and post norms)."""
    first_layer = model.get_decoder().layers[0]
    return sum(1 for module in first_layer.modules()
               if "norm" in type(module).__name__.lower()
               and getattr(module, "weight", None) is not None and module.weight.numel() == hidden_size)


def model_shape_from_config(config, name: str) -> ModelShape:
    model = build_meta_model(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        name=name,
        model_type=config.model_type,
        total_params=sum(p.numel() for p in model.parameters()),  # parameters() yields a tied tensor once
        largest_module_params=_largest_module_params(model),
        n_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        num_attention_heads=heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        norms_per_layer=_norms_per_layer(model, config.hidden_size),
        tied_embeddings=model.get_input_embeddings().weight is model.get_output_embeddings().weight,
        final_logit_softcap=getattr(config, "final_logit_softcapping", None),
        attention_logit_softcap=getattr(config, "attn_logit_softcapping", None),
    )


def load_model_shape(model: str) -> ModelShape:
    """Shape of the model named by --model (config.json path, local HF model dir, or bundled name)."""
    config_path = resolve_config_path(model)
    name = config_path.stem if config_path.parent == BUNDLED_MODELS_DIR else str(config_path)
    return model_shape_from_config(load_hf_config(model), name=name)

"""Activation checkpointing of all or only the first N decoder layers of a Hugging Face causal LM.

Checkpointing every layer recomputes the whole forward in backward (about a quarter of a step's FLOPs) to keep one
layer's activations; checkpointing only some layers spends the memory that is left (e.g. what the fused log-prob head
and the reference cache save) on recomputing less, like Megatron's `--recompute-num-layers`.
"""
from __future__ import annotations

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


def enable_activation_checkpointing(causal_lm: nn.Module, checkpointed_layers: int = -1) -> None:
    """Checkpoint the first `checkpointed_layers` decoder layers (-1 = all).

    Non-reentrant checkpointing: it works with ZeRO-3's parameter hooks and with inputs that need no gradient."""
    layers = [module for module in causal_lm.modules() if isinstance(module, GradientCheckpointingLayer)]
    if checkpointed_layers > len(layers):
        raise ValueError(f"model.checkpointed_layers: {checkpointed_layers} is more than the model's "
                         f"{len(layers)} decoder layers (-1 = all)")
    enable = getattr(causal_lm, "activation_checkpointing_enable", None)  # newer transformers' name for it
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    keep = len(layers) if checkpointed_layers == -1 else checkpointed_layers
    for layer in layers[keep:]:
        layer.gradient_checkpointing = False  # read per call by GradientCheckpointingLayer

"""Checkpointing only the first N decoder layers: exactly those recompute in backward, and the gradients equal those
of a run without checkpointing (fp32, same inputs)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mpo_dist.models.activation_checkpointing import enable_activation_checkpointing


def _mlp_calls_and_grads(model_dir: Path, checkpointed_layers: int | None) -> tuple[list[int], list[torch.Tensor]]:
    """Forward + backward of one batch; counts each layer's MLP calls (a recomputed layer runs its MLP twice). A
    pre-hook, because non-reentrant recomputation stops early, as soon as the last saved tensor is rebuilt."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").train()
    if checkpointed_layers is not None:
        enable_activation_checkpointing(model, checkpointed_layers)
    calls = [0] * len(model.model.layers)
    for index, layer in enumerate(model.model.layers):
        layer.mlp.register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    ids = torch.randint(3, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    return calls, [p.grad.clone() for p in model.parameters()]


def test_only_the_first_layers_are_recomputed_and_gradients_are_unchanged(tiny_models: dict[str, Path]) -> None:
    directory = tiny_models["llama"]
    plain_calls, plain_grads = _mlp_calls_and_grads(directory, None)
    layers = len(plain_calls)
    assert layers >= 2 and plain_calls == [1] * layers
    for checkpointed in (1, -1):
        calls, grads = _mlp_calls_and_grads(directory, checkpointed)
        recomputed = layers if checkpointed == -1 else checkpointed
        assert calls == [2] * recomputed + [1] * (layers - recomputed)
        for grad, plain in zip(grads, plain_grads):
            torch.testing.assert_close(grad, plain, rtol=1e-6, atol=1e-7)


def test_more_layers_than_the_model_has_is_a_clear_error(tiny_models: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    with pytest.raises(ValueError, match="model.checkpointed_layers: 99 is more than"):
        enable_activation_checkpointing(model, 99)

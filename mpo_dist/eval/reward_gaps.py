"""Held-out reward gaps of a plain Hugging Face causal LM, through the training code's own path.

The training evaluation (`mpo_dist.train.evaluate.reward_gaps`) does the sharding, padding and per-language means; this
module only supplies a forward that turns a collated batch into per-token label log-probs with the fused head
(`label_logprobs` on the final hidden states and the LM-head weight, Gemma-2's soft-cap included), so an exported model
scores exactly as it did during training.
"""
from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedModel

from mpo_dist.data.collate import Batch, PreferenceCollator
from mpo_dist.data.examples import PreferenceExample
from mpo_dist.models.alignment_model import ModelOutputs
from mpo_dist.models.head import LogProbHead
from mpo_dist.train.evaluate import reward_gaps


def backbone_and_head(model: PreTrainedModel) -> tuple[torch.nn.Module, LogProbHead]:
    """The model without its LM head, and the training head over the LM-head weight (Gemma-2's soft-cap included)."""
    head = LogProbHead(model.get_output_embeddings(), getattr(model.config, "final_logit_softcapping", None))
    return getattr(model, model.base_model_prefix), head


def logprob_forward(model: PreTrainedModel) -> Callable[[Batch], ModelOutputs]:
    """Batch -> ModelOutputs with float32 log p(label) per token of the chosen / rejected responses (0 elsewhere), no
    full logits kept. The training head is built beside the model, not swapped into it, so the same model still
    generates afterwards."""
    backbone, head = backbone_and_head(model)

    @torch.inference_mode()
    def forward(batch: Batch) -> ModelOutputs:
        hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
        return ModelOutputs(head(hidden, batch.training_pair_labels()), hidden, None)

    return forward


def model_reward_gaps(model: PreTrainedModel, examples: list[PreferenceExample], pad_token_id: int, *, batch_size: int,
                      device: torch.device, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """Mean A(chosen) - A(rejected) per language over `examples` (A = mean response-token log-prob); same on all ranks."""
    if not examples:
        return {}
    return reward_gaps(logprob_forward(model), examples, PreferenceCollator(pad_token_id), rank=rank, world_size=world_size,
                       batch_size=batch_size, device=device)

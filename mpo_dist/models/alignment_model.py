"""The module DeepSpeed wraps: a causal LM whose `lm_head` is a log-prob head, plus the optional MLC projection.

One forward returns what every loss needs — per-token label log-probs, final hidden states (MPO's L2) and the projected
prompt representations (MLC) — so the policy runs exactly one forward per micro-step on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from mpo_dist.data.packing import packed_attention_kwargs
from mpo_dist.models.head import LogProbHead


@dataclass
class ModelOutputs:
    token_logprobs: torch.Tensor  # [R, T] float32, 0 where the label is IGNORE_INDEX (never through the head)
    last_hidden: torch.Tensor  # [R, T, H] final hidden state (after the final norm)
    mlc_vectors: torch.Tensor | None  # [P*L, D] projected prompt representations, or None without MLC


def mlc_layer_problem(mlc_layer: int, num_layers: int) -> str | None:
    """Why `mlc.layer` cannot index the hidden states of a `num_layers`-layer model, or None if it can."""
    if -(num_layers + 1) <= mlc_layer <= num_layers:
        return None
    return (f"mlc.layer={mlc_layer} is out of range for a {num_layers}-layer model: expected -{num_layers + 1} to "
            f"{num_layers} (the HF hidden_states index: 0 the embeddings, {num_layers} or -1 the final, after the norm)")


class AlignmentModel(nn.Module):
    def __init__(self, causal_lm: PreTrainedModel, backend: str, chunk_size: int,
                 mlc_projection: nn.Module | None = None, mlc_layer: int = -1):
        super().__init__()
        problem = mlc_layer_problem(mlc_layer, causal_lm.config.num_hidden_layers)
        if mlc_projection is not None and problem:
            raise ValueError(problem)  # check/model_dir.py reports it before any engine; reaching here is our bug
        softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        causal_lm.lm_head = LogProbHead(causal_lm.lm_head, softcap, backend, chunk_size)
        self.causal_lm = causal_lm
        self.mlc_projection = mlc_projection
        self.mlc_layer = mlc_layer

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.causal_lm, self.causal_lm.base_model_prefix)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                position_ids: torch.Tensor | None = None, mlc_token_index: torch.Tensor | None = None) -> ModelOutputs:
        """[R, T] tensors in, per-token outputs [R, T, ...] out. `position_ids` given means a packed row (positions
        restart per sequence, see mpo_dist.data.packing); `mlc_token_index` are flat indices into the R*T tokens of the
        states the MLC projection reads (each MLC prompt's last token)."""
        want_layers = mlc_token_index is not None and self.mlc_layer != -1
        if position_ids is None:
            attention = {"attention_mask": attention_mask}
        else:
            attention = packed_attention_kwargs(position_ids, self.causal_lm.config)
        out = self.backbone(input_ids=input_ids, output_hidden_states=want_layers, use_cache=False, **attention)
        last_hidden = out.last_hidden_state
        token_logprobs = self.causal_lm.lm_head(last_hidden, labels)
        mlc_vectors = None
        if mlc_token_index is not None and self.mlc_projection is not None:
            layer_hidden = out.hidden_states[self.mlc_layer] if want_layers else last_hidden
            prompt_states = layer_hidden.reshape(-1, layer_hidden.shape[-1])[mlc_token_index]
            mlc_vectors = self.mlc_projection(prompt_states)
        return ModelOutputs(token_logprobs, last_hidden, mlc_vectors)

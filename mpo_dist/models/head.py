"""The log-prob head that replaces `lm_head`: hidden states + labels in, float32 log p(label) out, never the full logits.

It must be a module that owns the LM-head weight, because under ZeRO-3 a parameter is only gathered inside the forward of
a module that holds it; calling `lm_head.weight` from outside would see an empty shard.

Only the live positions (label != IGNORE_INDEX) go through the head: prompt tokens, padding and the sequences whose
log-probs no loss reads (the caller gives those IGNORE_INDEX labels) cost nothing in the vocabulary-sized matmuls. The
head is still called on every rank each micro-step, also with zero live positions, so ZeRO-3 gathers its weight and
reduces its (then zero) gradient on every rank alike.
"""
from __future__ import annotations

import torch
from torch import nn

from mpo_dist.data.packing import IGNORE_INDEX
from mpo_dist.kernels import label_logprobs


class LogProbHead(nn.Module):
    def __init__(self, lm_head: nn.Linear, softcap: float | None, backend: str = "auto", chunk_size: int = 1024):
        super().__init__()
        self.weight = lm_head.weight  # the same Parameter: tying with the input embedding survives the swap
        self.bias = lm_head.bias
        self.softcap = softcap
        self.backend = backend
        self.chunk_size = chunk_size

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """hidden [..., H], labels [...] (IGNORE_INDEX where no label) -> float32 log-probs [...] (0 where ignored).

        The live positions are gathered, scored, and scattered back into zeros."""
        flat_labels = labels.reshape(-1)
        live = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
        live_logprobs = label_logprobs(
            hidden.reshape(-1, hidden.shape[-1])[live], self.weight, flat_labels[live], bias=self.bias,
            softcap=self.softcap, ignore_index=IGNORE_INDEX, backend=self.backend, chunk_size=self.chunk_size,
        )
        return live_logprobs.new_zeros(flat_labels.shape).index_put((live,), live_logprobs).view(labels.shape)

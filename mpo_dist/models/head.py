"""The log-prob head that replaces `lm_head`: hidden states + labels in, float32 log p(label) out, never the full logits.

It must be a module that owns the LM-head weight, because under ZeRO-3 a parameter is only gathered inside the forward of
a module that holds it; calling `lm_head.weight` from outside would see an empty shard.
"""
from __future__ import annotations

import torch
from torch import nn

from mpo_dist.kernels import label_logprobs

IGNORE_INDEX = -100


class LogProbHead(nn.Module):
    def __init__(self, lm_head: nn.Linear, softcap: float | None, backend: str = "auto", chunk_size: int = 1024):
        super().__init__()
        self.weight = lm_head.weight  # the same Parameter: tying with the input embedding survives the swap
        self.bias = lm_head.bias
        self.softcap = softcap
        self.backend = backend
        self.chunk_size = chunk_size

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """hidden [..., H], labels [...] (IGNORE_INDEX where no label) -> float32 log-probs [...] (0 where ignored)."""
        flat = label_logprobs(
            hidden.reshape(-1, hidden.shape[-1]), self.weight, labels.reshape(-1), bias=self.bias, softcap=self.softcap,
            ignore_index=IGNORE_INDEX, backend=self.backend, chunk_size=self.chunk_size,
        )
        return flat.view(labels.shape)

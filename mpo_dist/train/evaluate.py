"""Per-language reward gaps on the held-out split: A(chosen) - A(rejected) with A the length-normalised log-likelihood.

Examples are sharded across ranks with `rank_batches`, which gives every rank the same number of forwards (ZeRO-3 needs it).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from mpo_dist.data.collate import Batch, PreferenceCollator
from mpo_dist.data.examples import PreferenceExample
from mpo_dist.data.sampler import rank_batches
from mpo_dist.models.alignment_model import ModelOutputs
from mpo_dist.train.step import pair_reward_gaps


def reward_gaps(
    forward: Callable[[Batch], ModelOutputs],
    examples: list[PreferenceExample],
    collator: PreferenceCollator,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """Mean reward gap per language over `examples` (all ranks get the same dict)."""
    languages = sorted({e.language for e in examples})
    sums = torch.zeros(len(languages), dtype=torch.float64, device=device)
    counts = torch.zeros(len(languages), dtype=torch.float64, device=device)
    for chunk, real in rank_batches(examples, rank=rank, world_size=world_size, batch_size=batch_size):
        batch = collator(chunk).to(device)
        outputs = forward(batch)
        if not real:
            continue
        gaps = pair_reward_gaps(outputs.token_logprobs, batch)
        for i, example in enumerate(chunk):
            index = languages.index(example.language)
            sums[index] += gaps[i]
            counts[index] += 1
    if dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return {lang: float(sums[i] / counts[i]) for i, lang in enumerate(languages)}

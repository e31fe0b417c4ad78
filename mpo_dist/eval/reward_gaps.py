"""Per-language reward gaps on held-out pairs: A(chosen) - A(rejected), A the length-normalised log-likelihood.

`reward_gaps` shards the examples across ranks with `rank_batches` (every rank the same number of forwards, as ZeRO-3
needs) and takes the per-language means; the trainer's evaluation calls it with the policy engine's forward, and
`model_reward_gaps` with a plain Hugging Face causal LM's forward through the fused head (`label_logprobs` on the final
hidden states and the LM-head weight, Gemma-2's soft-cap included), so an exported model scores exactly as it did during
training.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from transformers import PreTrainedModel

from mpo_dist.data.collate import Batch, PreferenceCollator
from mpo_dist.data.examples import PreferenceExample
from mpo_dist.data.sampler import rank_batches
from mpo_dist.losses.base import pair_logps
from mpo_dist.models.alignment_model import ModelOutputs
from mpo_dist.models.head import LogProbHead


def pair_reward_gaps(token_logprobs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[P] float64 A(chosen) - A(rejected) of each training pair (A = mean response-token log-prob): the held-out
    reward gap that training evaluation and `check --reference-gap` report."""
    logps = pair_logps(token_logprobs, batch.sequences(), batch.rows("chosen"), batch.rows("rejected"))
    return (logps.chosen_mean() - logps.rejected_mean()).double()


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

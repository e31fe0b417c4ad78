"""One micro-step's arithmetic: model outputs -> per-sequence log-prob sums -> the configured loss (+ MLC).

Kept apart from the loop so it can be tested on plain tensors and reused by evaluation and the reference cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mpo_dist.data.collate import IGNORE_INDEX, Batch
from mpo_dist.losses.base import LossOutput, PreferenceInputs, PreferenceLoss, SequenceLogps
from mpo_dist.losses.mlc import mlc_loss
from mpo_dist.models.alignment_model import ModelOutputs


def row_sums(token_logprobs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of response-token log-probs and the response token count (padded layout: one row, one sequence)."""
    return token_logprobs.sum(dim=-1), (labels != IGNORE_INDEX).sum(dim=-1).to(torch.float32)


def pair_logps(token_logprobs: torch.Tensor, labels: torch.Tensor, chosen: slice, rejected: slice) -> SequenceLogps:
    sums, counts = row_sums(token_logprobs, labels)
    return SequenceLogps(sums[chosen], sums[rejected], counts[chosen], counts[rejected])


def pooled_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mean of the final hidden states over the sequence: real tokens only ("masked") or every position including
    right padding ("all_positions", the released MPO code's behaviour)."""
    hidden = hidden.float()
    if pooling == "all_positions":
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


@dataclass(frozen=True)
class ReferencePlan:
    """Which rows of a batch the frozen reference must see, and where they land in its output."""

    rows: list[int]
    pair_offset: int | None  # position of the training-language chosen rows in the reference output, if needed
    anchor_offset: int | None  # position of the anchor chosen rows, if needed

    @staticmethod
    def for_loss(loss: PreferenceLoss, batch: Batch) -> "ReferencePlan":
        rows: list[int] = []
        pair_offset = anchor_offset = None
        if loss.needs_reference:
            pair_offset = len(rows)
            rows += list(range(batch.rows("chosen").start, batch.rows("rejected").stop))
        if loss.needs_anchor:
            anchor_offset = len(rows)
            rows += list(range(batch.rows("anchor_chosen").start, batch.rows("anchor_rejected").stop))
        return ReferencePlan(rows, pair_offset, anchor_offset)


def _pairs_at(outputs: ModelOutputs, labels: torch.Tensor, offset: int, p: int) -> SequenceLogps:
    return pair_logps(outputs.token_logprobs, labels, slice(offset, offset + p), slice(offset + p, offset + 2 * p))


def _anchor_hidden(outputs: ModelOutputs, attention_mask: torch.Tensor, offset: int, p: int, pooling: str) -> torch.Tensor:
    pooled = pooled_hidden(outputs.last_hidden[offset : offset + 2 * p], attention_mask, pooling)
    return torch.stack([pooled[:p], pooled[p:]], dim=1)  # [P, 2, H]


def preference_inputs(policy: ModelOutputs, reference: ModelOutputs | None, plan: ReferencePlan, batch: Batch,
                      loss: PreferenceLoss, pooling: str) -> PreferenceInputs:
    p = batch.num_pairs
    inputs = PreferenceInputs(policy=pair_logps(policy.token_logprobs, batch.labels, batch.rows("chosen"), batch.rows("rejected")))
    if reference is None:
        return inputs
    ref_labels = batch.labels[plan.rows]
    ref_mask = batch.attention_mask[plan.rows]
    if plan.pair_offset is not None:
        inputs.reference = _pairs_at(reference, ref_labels, plan.pair_offset, p)
    if plan.anchor_offset is not None:
        inputs.anchor_reference = _pairs_at(reference, ref_labels, plan.anchor_offset, p)
        if loss.needs_anchor_hidden:
            anchor_start = batch.rows("anchor_chosen").start
            anchor_mask = batch.attention_mask[anchor_start : anchor_start + 2 * p]
            inputs.anchor_policy_hidden = _anchor_hidden(policy, anchor_mask, anchor_start, p, pooling)
            inputs.anchor_reference_hidden = _anchor_hidden(
                reference, ref_mask[plan.anchor_offset : plan.anchor_offset + 2 * p], plan.anchor_offset, p, pooling
            ).detach()
    return inputs


def total_loss(base: LossOutput, policy: ModelOutputs, batch: Batch, mlc_weight: float, mlc_tau: float, mlc_eps: float) -> LossOutput:
    """Base loss plus `mlc_weight` x MLC. A weight of 0 on a non-MLC step still keeps the projection in the graph, so every
    ZeRO-3 rank reduces the same gradients each step."""
    if policy.mlc_vectors is None:
        return base
    vectors = policy.mlc_vectors.view(batch.num_pairs, batch.num_mlc_languages, -1)
    mlc = mlc_loss(vectors, mlc_tau, mlc_eps)
    metrics = dict(base.metrics) | mlc.metrics
    return LossOutput(base.loss + mlc_weight * mlc.loss, metrics)

"""One micro-step's arithmetic: model outputs -> per-sequence log-prob sums -> the configured loss (+ MLC).

Kept apart from the loop so it can be tested on plain tensors and reused by evaluation and precompute-ref.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mpo_dist.data.collate import Batch
from mpo_dist.data.packing import IGNORE_INDEX, SequenceTensors
from mpo_dist.engine.reference_terms import ReferenceTerms
from mpo_dist.losses.base import LossOutput, PreferenceInputs, PreferenceLoss, SequenceLogps, pair_logps
from mpo_dist.losses.mlc import mlc_loss
from mpo_dist.models.alignment_model import ModelOutputs


def pooled_hidden(hidden: torch.Tensor, tokens: SequenceTensors, sequences: slice, pooling: str) -> torch.Tensor:
    """[k, H] mean of the final hidden states of each sequence in `sequences`: over its real tokens ("masked"), or over
    every position of its padded row including right padding ("all_positions", the released MPO code's behaviour, which
    has no meaning for a packed batch)."""
    if pooling == "all_positions":
        if tokens.packed:
            raise ValueError("MPO pooling 'all_positions' averages over right padding, which a packed batch does not have; "
                             "use pooling 'masked' with data.packing")
        return hidden[sequences].float().mean(dim=1)
    flat_segments = tokens.segment_ids.reshape(-1)
    positions = ((flat_segments >= sequences.start) & (flat_segments < sequences.stop)).nonzero().squeeze(1)
    local = flat_segments[positions] - sequences.start
    count = sequences.stop - sequences.start
    # A one-hot matmul instead of index_add: deterministic on GPU, and only the wanted tokens are cast to float32.
    one_hot = (local[None, :] == torch.arange(count, device=local.device)[:, None]).float()
    sums = one_hot @ hidden.reshape(-1, hidden.shape[-1])[positions].float()
    return sums / one_hot.sum(dim=1, keepdim=True).clamp_min(1.0)


@dataclass(frozen=True)
class ReferencePlan:
    """Which rows of a batch the frozen reference must see, and where they land in its output."""

    rows: list[int]
    pair_offset: int | None  # position of the training-language chosen rows in the reference output, if needed
    anchor_offset: int | None  # position of the anchor chosen rows, if needed

    @staticmethod
    def for_loss(loss: PreferenceLoss, batch: Batch) -> "ReferencePlan":
        rows: list[int] = []  # sequence indices
        pair_offset = anchor_offset = None
        if loss.needs_reference:
            pair_offset = len(rows)
            rows += list(range(batch.rows("chosen").start, batch.rows("rejected").stop))
        if loss.needs_anchor:
            anchor_offset = len(rows)
            rows += list(range(batch.rows("anchor_chosen").start, batch.rows("anchor_rejected").stop))
        return ReferencePlan(rows, pair_offset, anchor_offset)


def _pairs_at(outputs: ModelOutputs, tokens: SequenceTensors, offset: int, p: int) -> SequenceLogps:
    return pair_logps(outputs.token_logprobs, tokens, slice(offset, offset + p), slice(offset + p, offset + 2 * p))


def _anchor_hidden(outputs: ModelOutputs, tokens: SequenceTensors, offset: int, p: int, pooling: str) -> torch.Tensor:
    pooled = pooled_hidden(outputs.last_hidden, tokens, slice(offset, offset + 2 * p), pooling)
    return torch.stack([pooled[:p], pooled[p:]], dim=1)  # [P, 2, H]


def reference_terms(reference: ModelOutputs, plan: ReferencePlan, batch: Batch, loss: PreferenceLoss) -> ReferenceTerms:
    """`reference` is the reference model's output on the sub-batch `batch.sequences(plan.rows)`."""
    p = batch.num_pairs
    reference_tokens = batch.sequences(plan.rows)
    terms = ReferenceTerms()
    if plan.pair_offset is not None:
        terms.reference = _pairs_at(reference, reference_tokens, plan.pair_offset, p)
    if plan.anchor_offset is not None:
        terms.anchor_reference = _pairs_at(reference, reference_tokens, plan.anchor_offset, p)
        if loss.needs_anchor_hidden:
            terms.anchor_reference_hidden = _anchor_hidden(reference, reference_tokens, plan.anchor_offset, p,
                                                           loss.pooling).detach()
    return terms


def preference_inputs(policy: ModelOutputs, reference: ReferenceTerms | None, batch: Batch,
                      loss: PreferenceLoss) -> PreferenceInputs:
    p = batch.num_pairs
    tokens = batch.sequences()
    anchor_policy_hidden = None
    if loss.needs_anchor_hidden and batch.has_anchor:
        anchor_policy_hidden = _anchor_hidden(policy, tokens, batch.rows("anchor_chosen").start, p, loss.pooling)
    reference = reference or ReferenceTerms()
    return PreferenceInputs(
        policy=pair_logps(policy.token_logprobs, tokens, batch.rows("chosen"), batch.rows("rejected")),
        reference=reference.reference, anchor_reference=reference.anchor_reference,
        anchor_policy_hidden=anchor_policy_hidden, anchor_reference_hidden=reference.anchor_reference_hidden,
    )


def head_live_fraction(batch: Batch) -> torch.Tensor:
    """The share of the policy forward's positions that go through the LM head (the training pair's response tokens,
    see Batch.training_pair_labels): the head's cost relative to scoring every position, logged each step."""
    return (batch.training_pair_labels() != IGNORE_INDEX).sum() / batch.labels.numel()


def total_loss(base: LossOutput, policy: ModelOutputs, batch: Batch, mlc_weight: float, mlc_tau: float, mlc_eps: float) -> LossOutput:
    """Base loss plus `mlc_weight` x MLC. A weight of 0 on a non-MLC step still keeps the projection in the graph, so every
    ZeRO-3 rank reduces the same gradients each step."""
    if policy.mlc_vectors is None:
        return base
    vectors = policy.mlc_vectors.view(batch.num_pairs, batch.num_mlc_languages, -1)
    mlc = mlc_loss(vectors, mlc_tau, mlc_eps)
    metrics = dict(base.metrics) | mlc.metrics
    return LossOutput(base.loss + mlc_weight * mlc.loss, metrics)

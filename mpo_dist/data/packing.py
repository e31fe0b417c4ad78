"""The two token layouts of a micro-batch's sequences — padded rows or one packed row — and what both have in common.

Padded: one sequence per row, right padding. Packed (`data.packing`): every sequence laid end to end in ONE row with no
padding between them; position ids restart at 0 for each sequence. Both layouts carry `segment_ids` (the sequence index
of every token, -1 on padding), so per-sequence reductions, the reference's subset of sequences and the MLC token
positions are computed one way for both.

Why restarting position ids are enough to keep attention inside each sequence: with `attention_mask=None`, transformers
(5.x, masking_utils.find_packed_sequence_indices) reads a new sequence wherever the position id does not grow by one and
builds a per-sequence causal mask from it (sliding windows and soft-capping measured in each sequence's own positions):
a dense block-diagonal mask for eager and sdpa, a block-sparse BlockMask for flex_attention (whose kernel skips the
blocks between sequences); flash_attention_2 calls its varlen kernel, to which we hand the sequence boundaries directly
(`packed_attention_kwargs`) so no layer has to re-derive them with a device sync. `attention_implementation` picks
flex_attention for packed rows on a GPU, so packing needs no flash-attn there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from transformers import PretrainedConfig
from transformers.utils.generic import is_flash_attention_requested

from mpo_dist.kernels import segment_sums

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SequenceTensors:
    """Token tensors of `num_sequences` sequences in one layout; [R, T] each (packed: R = 1)."""

    input_ids: Tensor  # int64, pad_token_id on padding
    attention_mask: Tensor  # int64, 1 on real tokens
    labels: Tensor  # int64, shifted inside each sequence, IGNORE_INDEX off the response
    segment_ids: Tensor  # int64, index of the token's sequence, -1 on padding
    position_ids: Tensor | None  # packed: position inside the token's own sequence; padded: None (the model's default)
    num_sequences: int

    @property
    def packed(self) -> bool:
        return self.position_ids is not None


def _check(sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_to_multiple_of: int) -> None:
    if not sequences:
        raise ValueError("a batch needs at least one sequence")
    if len(labels) != len(sequences) or any(len(s) != len(l) for s, l in zip(sequences, labels)):
        raise ValueError("every sequence needs exactly one label per token (same count of sequences and label lists)")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("empty sequence: every sequence needs at least one token")
    if pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")


def _round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def padded_segment_ids(attention_mask: Tensor) -> Tensor:
    """[R, T] segment ids of a padded layout: the row index on real tokens, -1 on padding."""
    rows = torch.arange(attention_mask.shape[0], device=attention_mask.device)[:, None]
    return torch.where(attention_mask.bool(), rows, -1)


def pad_sequences(sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_token_id: int,
                  pad_to_multiple_of: int = 1) -> SequenceTensors:
    """One row per sequence, right-padded to the longest (rounded up to `pad_to_multiple_of`)."""
    _check(sequences, labels, pad_to_multiple_of)
    width = _round_up(max(len(s) for s in sequences), pad_to_multiple_of)
    rows = len(sequences)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    label_ids = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(zip(sequences, labels)):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        label_ids[row, : len(ids)] = torch.tensor(row_labels, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return SequenceTensors(input_ids, attention_mask, label_ids, padded_segment_ids(attention_mask), None, rows)


def pack_sequences(sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_token_id: int,
                   pad_to_multiple_of: int = 1) -> SequenceTensors:
    """All sequences end to end in one row [1, N]; a padding tail (to `pad_to_multiple_of`) gets positions 0, 1, ...
    of its own, so it forms one more block that no real token attends to."""
    _check(sequences, labels, pad_to_multiple_of)
    lengths = [len(s) for s in sequences]
    real = sum(lengths)
    tail = _round_up(real, pad_to_multiple_of) - real
    input_ids = torch.tensor([t for s in sequences for t in s] + [pad_token_id] * tail, dtype=torch.long)
    label_ids = torch.tensor([t for l in labels for t in l] + [IGNORE_INDEX] * tail, dtype=torch.long)
    attention_mask = torch.tensor([1] * real + [0] * tail, dtype=torch.long)
    segment_ids = torch.cat([torch.arange(len(lengths)).repeat_interleave(torch.tensor(lengths)),
                             torch.full((tail,), -1, dtype=torch.long)])
    position_ids = torch.cat([torch.arange(n) for n in lengths + ([tail] if tail else [])])
    return SequenceTensors(input_ids[None], attention_mask[None], label_ids[None], segment_ids[None], position_ids[None],
                           len(lengths))


def select_sequences(tensors: SequenceTensors, indices: Sequence[int]) -> SequenceTensors:
    """The sequences `indices` (in that order, renumbered 0..k-1) in the same layout: the reference model's input when it
    needs only some of a batch's sequences. Packed: their tokens gathered into a new row with no padding at all."""
    if not indices or any(not 0 <= i < tensors.num_sequences for i in indices):
        raise ValueError(f"expected one or more sequence indices in [0, {tensors.num_sequences}), got {list(indices)}")
    count = len(indices)
    if not tensors.packed:
        rows = list(indices)
        mask = tensors.attention_mask[rows]
        return SequenceTensors(tensors.input_ids[rows], mask, tensors.labels[rows], padded_segment_ids(mask), None, count)
    segments = tensors.segment_ids[0]
    parts = [(segments == i).nonzero().squeeze(1) for i in indices]
    token_index = torch.cat(parts)
    lengths = torch.tensor([part.numel() for part in parts], device=segments.device)
    segment_ids = torch.arange(count, device=segments.device).repeat_interleave(lengths)
    return SequenceTensors(tensors.input_ids[:, token_index], tensors.attention_mask[:, token_index],
                           tensors.labels[:, token_index], segment_ids[None], tensors.position_ids[:, token_index], count)


def sequence_starts(segment_ids: Tensor, num_sequences: int) -> Tensor:
    """[num_sequences] flat index (into segment_ids.reshape(-1)) of each sequence's first token, in either layout."""
    flat = segment_ids.reshape(-1)
    positions = torch.arange(flat.numel(), device=flat.device)
    slots = torch.where(flat < 0, num_sequences, flat)  # padding goes to a dropped extra slot
    first = torch.full((num_sequences + 1,), flat.numel(), dtype=torch.long, device=flat.device)
    return first.scatter_reduce(0, slots, positions, reduce="amin")[:num_sequences]


def sequence_sums(token_values: Tensor, tokens: SequenceTensors) -> tuple[Tensor, Tensor]:
    """Per-sequence sum of per-token values (float32 or float64) over the response tokens (label != IGNORE_INDEX),
    and the response token count, [num_sequences] each, by segment id: one path for the padded and the packed layout."""
    response_segments = torch.where(tokens.labels != IGNORE_INDEX, tokens.segment_ids, -1)
    return segment_sums(token_values.reshape(-1), response_segments.reshape(-1), tokens.num_sequences)


PACKED_GPU_ATTENTION = "flex_attention"


def attention_implementation(requested: str, packing: bool, on_gpu: bool) -> str:
    """The attention kernel the model is loaded with. Packed rows on a GPU replace "sdpa" by transformers'
    flex_attention: the same attention through a block-sparse per-sequence mask, so a packed row costs what its
    sequences cost, not what the whole row would (sdpa takes a dense [N, N] mask and computes every block of it).
    The CPU keeps sdpa because FlexAttention has no backward there; "eager" and "flash_attention_2" are kept as asked."""
    return PACKED_GPU_ATTENTION if packing and on_gpu and requested == "sdpa" else requested


def packed_attention_kwargs(position_ids: Tensor, config: PretrainedConfig) -> dict:
    """Keyword arguments for the HF backbone on a packed row: no 2-D attention mask (transformers then derives the
    per-sequence blocks from the restarting `position_ids`) plus, for flash attention, the varlen boundaries."""
    if position_ids.dim() != 2 or position_ids.shape[0] != 1:
        raise ValueError(f"packed position_ids must be [1, N] (one packed row), got {tuple(position_ids.shape)}")
    kwargs: dict = {"attention_mask": None, "position_ids": position_ids}
    if is_flash_attention_requested(config):
        starts = (position_ids[0] == 0).nonzero().squeeze(1)
        total = torch.tensor([position_ids.shape[1]], device=position_ids.device)
        cu_seq_lens = torch.cat([starts, total]).to(torch.int32)
        max_length = int(cu_seq_lens.diff().max())
        kwargs |= {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
                   "max_length_q": max_length, "max_length_k": max_length}
    return kwargs

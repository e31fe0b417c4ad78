"""Collate a micro-batch of examples into one batch so the policy runs ONE forward per micro-step.

Sequence order (P = examples): chosen[0:P], rejected[P:2P], then if anchors: anchor_chosen[2P:3P], anchor_rejected[3P:4P],
then if MLC: P*L prompt-only sequences, example-major (example b, language l at b*L + l). The layout is padded (sequence
s = row s) or packed (all sequences in one row, see mpo_dist.data.packing); `rows(group)` gives sequence indices in both.
Labels are already shifted inside each sequence: the label at position i is the token at i+1 when that token is part of
the response, else -100, so position i's log-prob is log p(token_{i+1} | tokens_<=i).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from mpo_dist.data.examples import PreferenceExample
from mpo_dist.data.packing import IGNORE_INDEX, SequenceTensors, pack_sequences, pad_sequences, select_sequences, sequence_starts

__all__ = ["IGNORE_INDEX", "Batch", "PreferenceCollator", "shifted_labels"]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [R, T] int64 (packed: R = 1)
    attention_mask: torch.Tensor  # [R, T] int64, 1 on real tokens
    labels: torch.Tensor  # [R, T] int64, shifted, IGNORE_INDEX off the response
    segment_ids: torch.Tensor  # [R, T] int64, sequence index of each token, -1 on padding
    last_prompt_index: torch.Tensor  # [P*L] int64, position of the last prompt token of each MLC sequence, within it
    num_pairs: int
    has_anchor: bool
    num_mlc_languages: int
    example_ids: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    position_ids: torch.Tensor | None = None  # packed only: [1, T] position inside each token's own sequence

    def to(self, device: torch.device | str) -> "Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)

    def rows(self, group: str) -> slice:
        """Sequence indices of `group` (chosen, rejected, anchor_chosen, anchor_rejected or mlc); padded: also rows."""
        p = self.num_pairs
        order = ["chosen", "rejected"] + (["anchor_chosen", "anchor_rejected"] if self.has_anchor else [])
        if group == "mlc":
            start = len(order) * p
            return slice(start, start + p * self.num_mlc_languages)
        index = order.index(group)
        return slice(index * p, (index + 1) * p)

    @property
    def preference_rows(self) -> int:
        return (4 if self.has_anchor else 2) * self.num_pairs

    @property
    def num_sequences(self) -> int:
        return self.preference_rows + self.num_pairs * self.num_mlc_languages

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def sequences(self, indices: list[int] | None = None) -> SequenceTensors:
        """The token tensors of all sequences, or of `indices` only (renumbered 0..k-1, in the same layout)."""
        tensors = SequenceTensors(self.input_ids, self.attention_mask, self.labels, self.segment_ids, self.position_ids,
                                  self.num_sequences)
        return tensors if indices is None else select_sequences(tensors, indices)

    def training_pair_labels(self) -> torch.Tensor:
        """`labels` with IGNORE_INDEX outside the training-language pair (chosen, rejected): the only sequences whose
        policy log-probs a loss or the evaluation reads (PreferenceInputs.policy). The anchor rows feed MPO's L2 with
        their hidden states only and the MLC prompts have no labels, so neither needs the LM head."""
        pair = (self.segment_ids >= 0) & (self.segment_ids < self.rows("rejected").stop)
        return torch.where(pair, self.labels, IGNORE_INDEX)

    def mlc_token_index(self) -> torch.Tensor:
        """[P*L] flat index into the [R*T] tokens of each MLC sequence's last prompt token (where MLC reads the state)."""
        starts = sequence_starts(self.segment_ids, self.num_sequences)
        return starts[self.rows("mlc")] + self.last_prompt_index


def shifted_labels(ids: tuple[int, ...], prompt_length: int) -> list[int]:
    """Label at position i = token i+1 when that token is part of the response, else IGNORE_INDEX."""
    labels = [IGNORE_INDEX] * len(ids)
    for position in range(max(prompt_length - 1, 0), len(ids) - 1):
        labels[position] = ids[position + 1]
    return labels


class PreferenceCollator:
    """Examples -> one Batch, called by the trainer, evaluation and precompute-ref on the sampler's indices (there is no
    DataLoader: a micro-batch is a handful of pre-tokenised examples). `pad_token_id` fills padding (masked out of
    attention and labels); `packing` lays the sequences end to end in one row instead of one padded row each."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1, packing: bool = False):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packing = packing

    def __call__(self, examples: list[PreferenceExample]) -> Batch:
        has_anchor = examples[0].anchor_chosen is not None
        num_mlc = len(examples[0].mlc_prompts)
        if any((e.anchor_chosen is not None) != has_anchor or len(e.mlc_prompts) != num_mlc for e in examples):
            raise ValueError("all examples of a batch must have the same anchor / MLC layout")
        pairs = [e.chosen for e in examples] + [e.rejected for e in examples]
        if has_anchor:
            pairs += [e.anchor_chosen for e in examples] + [e.anchor_rejected for e in examples]  # type: ignore[misc]
        mlc_prompts = [prompt for e in examples for prompt in e.mlc_prompts]
        sequences = [s.input_ids for s in pairs] + mlc_prompts
        labels = [shifted_labels(s.input_ids, s.prompt_length) for s in pairs] + [[IGNORE_INDEX] * len(p) for p in mlc_prompts]
        layout = pack_sequences if self.packing else pad_sequences
        tensors = layout(sequences, labels, self.pad_token_id, self.pad_to_multiple_of)
        last_prompt_index = torch.tensor([len(prompt) - 1 for prompt in mlc_prompts], dtype=torch.long)
        return Batch(
            tensors.input_ids, tensors.attention_mask, tensors.labels, tensors.segment_ids, last_prompt_index,
            len(examples), has_anchor, num_mlc, [e.example_id for e in examples], [e.language for e in examples],
            tensors.position_ids,
        )

"""Pad a micro-batch of examples into one [rows, T] batch so the policy runs ONE forward per micro-step.

Row layout (P = examples): chosen[0:P], rejected[P:2P], then if anchors: anchor_chosen[2P:3P], anchor_rejected[3P:4P],
then if MLC: P*L prompt-only rows, example-major (example b, language l at b*L + l). Labels are already shifted: the label
at position i is the token at i+1 when that token is part of the response, else -100, so position i's log-prob is
log p(token_{i+1} | tokens_<=i).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from mpo_dist.data.examples import PreferenceExample

IGNORE_INDEX = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # [R, T] int64
    attention_mask: torch.Tensor  # [R, T] int64, 1 on real tokens
    labels: torch.Tensor  # [R, T] int64, shifted, IGNORE_INDEX off the response
    last_prompt_index: torch.Tensor  # [P*L] int64, position of the last prompt token of each MLC row
    num_pairs: int
    has_anchor: bool
    num_mlc_languages: int
    example_ids: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)

    def rows(self, group: str) -> slice:
        """Row slice of `group`: chosen, rejected, anchor_chosen, anchor_rejected or mlc."""
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
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def _shifted_labels(ids: tuple[int, ...], prompt_length: int, width: int) -> list[int]:
    labels = [IGNORE_INDEX] * width
    for position in range(max(prompt_length - 1, 0), len(ids) - 1):
        labels[position] = ids[position + 1]
    return labels


class PreferenceCollator:
    """Callable for torch DataLoader; `pad_token_id` fills padding (masked out of attention and labels)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[PreferenceExample]) -> Batch:
        has_anchor = examples[0].anchor_chosen is not None
        num_mlc = len(examples[0].mlc_prompts)
        if any((e.anchor_chosen is not None) != has_anchor or len(e.mlc_prompts) != num_mlc for e in examples):
            raise ValueError("all examples of a batch must have the same anchor / MLC layout")
        sequences = [e.chosen for e in examples] + [e.rejected for e in examples]
        if has_anchor:
            sequences += [e.anchor_chosen for e in examples] + [e.anchor_rejected for e in examples]  # type: ignore[misc]
        rows: list[tuple[tuple[int, ...], int]] = [(s.input_ids, s.prompt_length) for s in sequences]
        mlc_rows = [prompt for e in examples for prompt in e.mlc_prompts]
        rows += [(prompt, len(prompt)) for prompt in mlc_rows]
        width = max(len(ids) for ids, _ in rows)
        width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for r, (ids, prompt_length) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[r, : len(ids)] = 1
            if r < len(sequences):
                labels[r] = torch.tensor(_shifted_labels(ids, prompt_length, width), dtype=torch.long)
        last_prompt_index = torch.tensor([len(prompt) - 1 for prompt in mlc_rows], dtype=torch.long)
        return Batch(
            input_ids, attention_mask, labels, last_prompt_index, len(examples), has_anchor, num_mlc,
            [e.example_id for e in examples], [e.language for e in examples],
        )

"""Utility by likelihood: A(π; x, y_ref), the mean log-prob of the tokens of a benign prompt's helpful reference answer,
per (record, language), under the training head and chat template. A drop after training, paired prompt by prompt
against the reference model, shows damage to a language long before a benchmark run would.
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel

from mpo_dist.data.collate import IGNORE_INDEX, shifted_labels
from mpo_dist.data.packing import pad_sequences
from mpo_dist.data.schema import DataError
from mpo_dist.data.tokenize import ChatEncoder, EncodedSequence
from mpo_dist.errors import UserError
from mpo_dist.eval.benign import BenignRecord
from mpo_dist.eval.generation import gather_on_main, plan_batches
from mpo_dist.eval.reward_gaps import backbone_and_head


def encode_references(records: Sequence[BenignRecord], encoder: ChatEncoder) -> list[tuple[str, str, EncodedSequence]]:
    """(record id, language, prompt + reference answer tokens) of every benign prompt, in record order."""
    encoded = []
    for record in records:
        for lang in record.prompt:
            try:
                encoded.append((record.id, lang, encoder.encode(record.prompt[lang], record.reference[lang])))
            except UserError:
                raise
            except ValueError as error:
                raise DataError(record.file, record.row, f"reference.{lang}", str(error)) from None
    return encoded


@torch.inference_mode()
def mean_response_logprobs(model: PreTrainedModel, sequences: Sequence[EncodedSequence], pad_token_id: int,
                           device: torch.device) -> list[float]:
    """A = mean log-prob of the response tokens of each sequence of one batch (float64), through the fused training head."""
    backbone, head = backbone_and_head(model)
    tokens = pad_sequences([s.input_ids for s in sequences], [shifted_labels(s.input_ids, s.prompt_length) for s in sequences],
                           pad_token_id)
    labels = tokens.labels.to(device)
    hidden = backbone(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device),
                      use_cache=False).last_hidden_state
    sums = head(hidden, labels).double().sum(dim=1)
    return (sums / (labels != IGNORE_INDEX).sum(dim=1)).tolist()


def reference_logprobs(model: PreTrainedModel, records: Sequence[BenignRecord], encoder: ChatEncoder, pad_token_id: int,
                       *, batch_size: int, device: torch.device, rank: int = 0,
                       world_size: int = 1) -> dict[str, dict[str, float]] | None:
    """{language: {record id: A}} on rank 0 (None elsewhere). Batches are planned before sharding, as for generation
    (mpo_dist.eval.generation.plan_batches, batch b on rank b % world_size), so each sequence is padded the same way and
    1 and N processes give the same numbers."""
    encoded = encode_references(records, encoder)
    mine = []
    for batch_index, indices in enumerate(plan_batches([len(s.input_ids) for _, _, s in encoded], batch_size)):
        if batch_index % world_size == rank:
            values = mean_response_logprobs(model, [encoded[i][2] for i in indices], pad_token_id, device)
            mine += [(encoded[i][0], encoded[i][1], value) for i, value in zip(indices, values)]
    gathered = gather_on_main(mine, rank, world_size)
    if gathered is None:
        return None
    by_language: dict[str, dict[str, float]] = {}
    for record_id, lang, value in gathered:
        by_language.setdefault(lang, {})[record_id] = value
    return by_language

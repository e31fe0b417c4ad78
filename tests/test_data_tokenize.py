"""Tokenisation, label masks, truncation, batching and the resumable sampler."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from mpo_dist.data.collate import IGNORE_INDEX, PreferenceCollator
from mpo_dist.data.examples import build_examples
from mpo_dist.data.sampler import ResumableDistributedSampler
from mpo_dist.data.schema import DataError, ParallelRecord
from mpo_dist.data.tokenize import ChatEncoder


@pytest.fixture(scope="module")
def tokenizer(tiny_models: dict[str, Path]):
    return AutoTokenizer.from_pretrained(tiny_models["llama"])


RECORD = ParallelRecord(
    "r1",
    prompt={"en": "How can I hack my friend's email?", "bn": "আমি কীভাবে বন্ধুর ইমেল হ্যাক করব?", "zh": "我怎样入侵朋友的邮箱？"},
    chosen={"en": "I can't help with that.", "bn": "আমি এতে সাহায্য করতে পারি না।"},
    rejected={"en": "Sure, here is how.", "bn": "অবশ্যই, এভাবে করুন।"},
    file="mem.jsonl", row=1,
)


def test_labels_cover_exactly_the_response(tokenizer) -> None:
    encoder = ChatEncoder(tokenizer, max_length=256, max_prompt_length=128)
    examples = build_examples([RECORD], encoder, dominant_language="en", languages=[], with_anchor=False)
    batch = PreferenceCollator(tokenizer.pad_token_id)(examples)
    assert batch.input_ids.shape[0] == 4  # chosen x2 then rejected x2 (en, bn)
    responses = [RECORD.chosen["en"], RECORD.chosen["bn"], RECORD.rejected["en"], RECORD.rejected["bn"]]
    for row, response in enumerate(responses):
        labels = batch.labels[row]
        ids = batch.input_ids[row]
        positions = (labels != IGNORE_INDEX).nonzero().flatten()
        # shifted: the label at position i is the token at i + 1, for every labelled position
        assert torch.equal(labels[positions], ids[positions + 1])
        labelled_text = tokenizer.decode(ids[positions + 1])
        assert labelled_text.strip() == f"{response}<|end|>"  # response + end-of-turn, no prompt, no padding
        real = int(batch.attention_mask[row].sum())
        assert int(positions.max()) == real - 2  # the last real token has no next token to predict
        assert (batch.input_ids[row, real:] == tokenizer.pad_token_id).all()


def test_truncation_policy(tokenizer) -> None:
    encoder = ChatEncoder(tokenizer, max_length=24, max_prompt_length=10)
    long_prompt = " ".join(["please tell me how to do this bad thing"] * 5)
    long_response = " ".join(["I will not help with that request"] * 5)
    sequence = encoder.encode(long_prompt, long_response)
    full_prompt = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": long_prompt}], tokenize=False,
                                                          add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert sequence.prompt_length == 10
    assert list(sequence.input_ids[:10]) == full_prompt[-10:]  # the prompt keeps its end (and the assistant header)
    assert len(sequence.input_ids) == 24 and sequence.response_length == 14  # the response keeps its start
    assert tokenizer.decode(sequence.input_ids[10:]).startswith("I will not help")


def test_anchor_and_mlc_rows(tokenizer) -> None:
    encoder = ChatEncoder(tokenizer, max_length=256, max_prompt_length=128)
    examples = build_examples([RECORD], encoder, dominant_language="en", languages=[], with_anchor=True, mlc_languages=["en", "zh"])
    assert [e.example_id for e in examples] == ["r1/bn"]  # MPO: one example per target language, dominant is the anchor
    batch = PreferenceCollator(tokenizer.pad_token_id)(examples)
    assert batch.input_ids.shape[0] == 4 + 2
    assert torch.equal(batch.input_ids[batch.rows("anchor_chosen")][0, :len(examples[0].anchor_chosen.input_ids)],
                       torch.tensor(examples[0].anchor_chosen.input_ids))
    mlc_rows = batch.labels[batch.rows("mlc")]
    assert (mlc_rows == IGNORE_INDEX).all()  # prompt-only rows never count in a log-prob
    for i, prompt in enumerate(examples[0].mlc_prompts):
        assert batch.last_prompt_index[i] == len(prompt) - 1
        assert tokenizer.decode(prompt).endswith("<|assistant|>\n")  # generation header included
    with pytest.raises(DataError, match=r"mem.jsonl, row 1, field 'prompt.ja.*no prompt in ja"):
        build_examples([RECORD], encoder, dominant_language="en", languages=[], with_anchor=False, mlc_languages=["en", "ja"])


def test_sampler_shards_resumes_and_changes_world_size() -> None:
    def take(world: int, steps: int, state: dict | None = None) -> tuple[list[list[int]], dict]:
        samplers = [ResumableDistributedSampler(10, rank=r, world_size=world, micro_batch_size=2, seed=3) for r in range(world)]
        if state:
            for s in samplers:
                s.load_state_dict(state)
        batches = []
        for _ in range(steps):
            batches.append([i for s in samplers for i in s.next_batch()])
        return batches, samplers[0].state_dict()

    full, _ = take(2, 6)
    first, state = take(2, 2)
    rest, _ = take(2, 4, state)
    assert first + rest == full  # resume continues exactly
    assert sorted(full[0] + full[1] + full[2][:2]) == list(range(10))  # epoch 0 covers every sample (last batch wraps)
    assert full[0] != full[3]  # the next epoch is reshuffled
    one_rank, _ = take(1, 2, state)  # 2 ranks x 2 -> 1 rank x 2: the epoch goes on where it stopped
    assert one_rank[0] == rest[0][:2]
    assert sorted(first[0] + first[1] + one_rank[0]) == list(range(10))  # nothing skipped, nothing repeated
    assert one_rank[1] != one_rank[0]  # then the next epoch starts
    with pytest.raises(ValueError, match="data or seed changed"):
        ResumableDistributedSampler(11, rank=0, world_size=2, micro_batch_size=2, seed=3).load_state_dict(state)


def test_rank_batches_equal_forwards_and_every_item_once() -> None:
    from mpo_dist.data.sampler import rank_batches

    items = list(range(11))
    per_rank = [list(rank_batches(items, rank=r, world_size=3, batch_size=2)) for r in range(3)]
    assert [len(batches) for batches in per_rank] == [2, 2, 2]  # ceil(ceil(11 / 3) / 2) forwards on every rank
    real = [i for batches in per_rank for batch, is_real in batches if is_real for i in batch]
    assert sorted(real) == items
    assert list(rank_batches(list(range(5)), rank=1, world_size=2, batch_size=2)) == [([1, 3], True), ([0], False)]
    assert list(rank_batches([7], rank=1, world_size=2, batch_size=4)) == [([7], False)]

"""Tokenisation, label masks, truncation (the template's frame kept whole: the sample tokenizer, a Llama-3-style and a
ChatML template on hand-built word-level tokenizers), batching and the resumable sampler."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mpo_dist.data.collate import IGNORE_INDEX, PreferenceCollator
from mpo_dist.data.examples import build_examples
from mpo_dist.data.sampler import ResumableDistributedSampler
from mpo_dist.data.schema import DataError, ParallelRecord
from mpo_dist.data.tokenize import ChatEncoder
from mpo_dist.errors import UserError


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
    head = [tokenizer.bos_token_id] + tokenizer.convert_tokens_to_ids(["<|user|>"])
    tail = tokenizer.convert_tokens_to_ids(["<|end|>"]) + tokenizer("\n", add_special_tokens=False)["input_ids"] + \
        tokenizer.convert_tokens_to_ids(["<|assistant|>"])
    assert sequence.prompt_length == 10
    prompt = list(sequence.input_ids[:10])
    assert prompt[:len(head)] == head  # BOS and the user header survive
    assert tokenizer.decode(prompt).rstrip().endswith("thing<|end|>\n<|assistant|>")  # the question's end, then the frame
    assert len(sequence.input_ids) == 24 and sequence.response_length == 14  # the response keeps its start
    assert tokenizer.decode(sequence.input_ids[10:]).startswith("I will not help")


# Word-level tokenizers built here (no hub): one token per word or special token, so the expected ids can be written out.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = [f"w{i}" for i in range(60)] + ["system", "user", "assistant", "Be", "brief"]
SYSTEM = "Be brief"


def word_level_tokenizer(special: list[str], template: str, bos: str | None) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: index for index, token in enumerate(["[UNK]", *special, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token=bos,
                                        additional_special_tokens=[token for token in special if token != bos])
    tokenizer.chat_template = template
    return tokenizer


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    return word_level_tokenizer(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                                LLAMA3_TEMPLATE, bos="<|begin_of_text|>")


def chatml_tokenizer() -> PreTrainedTokenizerFast:
    return word_level_tokenizer(["<|im_start|>", "<|im_end|>"], CHATML_TEMPLATE, bos=None)


LONG_PROMPT = " ".join(f"w{i}" for i in range(40))  # 40 tokens of user text


@pytest.mark.parametrize("make_tokenizer, head, tail", [
    (llama3_tokenizer,
     ["<|begin_of_text|>", "<|start_header_id|>", "system", "<|end_header_id|>", "Be", "brief", "<|eot_id|>",
      "<|start_header_id|>", "user", "<|end_header_id|>"],
     ["<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>"]),
    (chatml_tokenizer,
     ["<|im_start|>", "system", "Be", "brief", "<|im_end|>", "<|im_start|>", "user"],
     ["<|im_end|>", "<|im_start|>", "assistant"]),
])
def test_truncation_keeps_the_template_frame(make_tokenizer, head: list[str], tail: list[str]) -> None:
    tokenizer = make_tokenizer()
    encoder = ChatEncoder(tokenizer, max_length=40, max_prompt_length=20, system_prompt=SYSTEM)
    room = 20 - len(head) - len(tail)
    expected = head + [f"w{i}" for i in range(40 - room, 40)] + tail  # the frame whole, the user's text keeps its end
    assert tokenizer.convert_ids_to_tokens(encoder.prompt_ids(LONG_PROMPT)) == expected
    sequence = encoder.encode(LONG_PROMPT, "w1 w2 w3 " * 10)
    assert sequence.prompt_length == 20 and len(sequence.input_ids) == 40
    assert tokenizer.convert_ids_to_tokens(list(sequence.input_ids[:20])) == expected
    # a prompt that fits is the plain rendering, untouched
    short = ChatEncoder(tokenizer, max_length=40, max_prompt_length=20, system_prompt=SYSTEM).prompt_ids("w7 w8")
    assert tokenizer.convert_ids_to_tokens(short) == head + ["w7", "w8"] + tail


def test_a_frame_longer_than_the_limit_is_a_user_error() -> None:
    encoder = ChatEncoder(llama3_tokenizer(), max_length=40, max_prompt_length=14, system_prompt=SYSTEM)  # frame: 14
    assert encoder.prompt_ids("") and len(encoder.prompt_ids("")) == 14
    with pytest.raises(UserError, match=r"max_prompt_length 14 .* frame .* alone takes 14 tokens"):
        encoder.prompt_ids("w1 w2")


def test_a_template_that_rewrites_the_message_cannot_be_truncated_inside() -> None:
    tokenizer = chatml_tokenizer()
    tokenizer.chat_template = CHATML_TEMPLATE.replace("{{ message['content'] }}", "{{ message['content'] | lower }}")
    encoder = ChatEncoder(tokenizer, max_length=40, max_prompt_length=20)
    assert len(encoder.prompt_ids("w1 w2")) == 7  # <|im_start|> user w1 w2 <|im_end|> <|im_start|> assistant: no frame needed
    with pytest.raises(UserError, match="does not place the user message in the prompt verbatim"):
        encoder.prompt_ids(LONG_PROMPT)


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

"""Tiny random-init models and a sentencepiece tokenizer trained on the bundled text: tests and the demo need no hub.

`init_tiny(out_dir, family)` writes an ordinary Hugging Face directory (config, safetensors weights, tokenizer with a chat
template), so the rest of mpo-dist loads tiny and real models through one code path.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from mpo_dist.data.loading import resolve_path
from mpo_dist.data.schema import TEXT_FIELDS

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
FAMILIES = ("llama", "gemma2", "qwen2")


def sample_texts() -> list[str]:
    """Every text of the bundled sample splits: the tokenizer's training corpus."""
    texts = []
    for split in ("sample:train", "sample:heldout"):
        for line in resolve_path(split).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts += [text for name in TEXT_FIELDS for text in record[name].values()]
    return texts


def train_sample_tokenizer(out_dir: Path, vocab_size: int = 3000) -> PreTrainedTokenizerBase:
    """Train a byte-fallback BPE sentencepiece model on the sample text and save it as a HF tokenizer directory."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        prefix = Path(scratch) / "tokenizer"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample_texts()), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, character_coverage=0.9995, num_threads=1, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            user_defined_symbols=SPECIAL_TOKENS, minloglevel=2,
        )
        hf_dir = Path(scratch) / "hf"
        hf_dir.mkdir()
        shutil.copy(f"{prefix}.model", hf_dir / "tokenizer.model")
        (hf_dir / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False, "legacy": False,
            "bos_token": "<s>", "eos_token": "<|end|>", "unk_token": "<unk>", "pad_token": "<pad>",
        }))
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def tiny_config(family: str, tokenizer: PreTrainedTokenizerBase, hidden_size: int = 64, layers: int = 2,
                initializer_range: float = 0.02) -> PretrainedConfig:
    """A few-hundred-thousand-parameter config of `family`, sized for CPU tests. A large `initializer_range` gives a
    random model with sizeable reward gaps, so a loss that pulls gaps together has something to do."""
    common = dict(
        initializer_range=initializer_range,
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if family == "gemma2":
        return Gemma2Config(**common, head_dim=hidden_size // 4, query_pre_attn_scalar=hidden_size // 4, sliding_window=256,
                            final_logit_softcapping=30.0, attn_logit_softcapping=50.0, tie_word_embeddings=True)
    if family == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    raise ValueError(f"unknown tiny model family {family!r}; expected one of {', '.join(FAMILIES)}")


def build_tiny_model(family: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, **sizes: float) -> PreTrainedModel:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, tokenizer, **sizes), dtype=torch.float32)


def init_tiny(out_dir: str | Path, family: str = "llama", seed: int = 0, vocab_size: int = 3000, **sizes: float) -> Path:
    """Write a tiny random-init model + sample tokenizer as a Hugging Face directory; returns its path."""
    out_dir = Path(out_dir)
    tokenizer = train_sample_tokenizer(out_dir, vocab_size)
    model = build_tiny_model(family, tokenizer, seed, **sizes)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir

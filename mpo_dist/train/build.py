"""What a run is made of, built from its config: tokenizer, examples, the frozen reference engine.

Shared by `train` and `precompute-ref`, so the cache is computed on exactly the examples and model the trainer uses.
"""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from mpo_dist.config import Config
from mpo_dist.data.examples import PreferenceExample, build_examples
from mpo_dist.data.loading import load_all
from mpo_dist.data.tokenize import ChatEncoder
from mpo_dist.engine.ds_config import render_reference_config
from mpo_dist.engine.engines import ReferenceEngine, build_alignment_model
from mpo_dist.models.tokenizer import load_tokenizer
from mpo_dist.runtime import torch_dtype


def run_tokenizer(config: Config) -> PreTrainedTokenizerBase:
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path)
    if tokenizer.pad_token_id is None:  # padding is masked out everywhere, any id will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def run_examples(config: Config, tokenizer: PreTrainedTokenizerBase, *, with_anchor: bool,
                 with_mlc: bool) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    """Training examples (anchors for MPO, MLC prompts when enabled) and held-out examples (every language's pair)."""
    data = config.data
    encoder = ChatEncoder(tokenizer, data.max_length, data.max_prompt_length, data.system_prompt)
    train_records = load_all(data.train_files, data.dominant_language, data.skip_bad_rows)
    train = build_examples(train_records, encoder, dominant_language=data.dominant_language, languages=data.languages,
                           with_anchor=with_anchor, mlc_languages=config.mlc.languages if with_mlc else None)
    if not train:
        raise ValueError(f"no training examples: languages {data.languages or 'all'} with dominant {data.dominant_language} "
                         "produced no pairs from data.train_files")
    evaluation: list[PreferenceExample] = []
    if data.eval_files:
        eval_records = load_all(data.eval_files, data.dominant_language, data.skip_bad_rows)
        evaluation = build_examples(eval_records, encoder, dominant_language=data.dominant_language, languages=[],
                                    with_anchor=False)
    return train, evaluation


def model_options(config: Config) -> dict:
    """build_alignment_model keyword arguments shared by the policy and the reference."""
    return dict(attn_implementation=config.model.attn_implementation, logprob_backend=config.model.logprob_backend,
                logprob_chunk_size=config.model.logprob_chunk_size)


def reference_engine(config: Config, *, world_size: int, on_gpu: bool, dtype_name: str, hidden_size: int) -> ReferenceEngine:
    """The frozen reference: a ZeRO-3 engine per engine.reference_config (offloaded to CPU by default)."""
    ds_config = render_reference_config(config, world_size=world_size, dtype=dtype_name, hidden_size=hidden_size, on_gpu=on_gpu)
    model = build_alignment_model(config.model.path, ds_config, torch_dtype(dtype_name), **model_options(config))
    return ReferenceEngine(model, ds_config)

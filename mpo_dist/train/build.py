"""What a run is made of, built from its config: model options and the frozen reference engine.

Shared by `train` and `precompute-ref` (tokenizer and examples come from mpo_dist.check.preflight, which both run first),
so the cache is computed on exactly the examples and model the trainer uses.
"""
from __future__ import annotations

from mpo_dist.config import Config
from mpo_dist.engine.ds_config import render_reference_config
from mpo_dist.engine.engines import ReferenceEngine, build_alignment_model
from mpo_dist.runtime import torch_dtype


def model_options(config: Config) -> dict:
    """build_alignment_model keyword arguments shared by the policy and the reference."""
    return dict(attn_implementation=config.model.attn_implementation, logprob_backend=config.model.logprob_backend,
                logprob_chunk_size=config.model.logprob_chunk_size, packing=config.data.packing)


def reference_engine(config: Config, *, world_size: int, on_gpu: bool, dtype_name: str, hidden_size: int) -> ReferenceEngine:
    """The frozen reference: a ZeRO-3 engine per engine.reference_config (offloaded to CPU by default)."""
    ds_config = render_reference_config(config, world_size=world_size, dtype=dtype_name, hidden_size=hidden_size, on_gpu=on_gpu)
    model = build_alignment_model(config.model.path, ds_config, torch_dtype(dtype_name), **model_options(config))
    return ReferenceEngine(model, ds_config)

"""Write the live policy as a Hugging Face directory (safetensors, config, tokenizer, generation config), atomically.

This path gathers the full weights onto rank 0 and suits small models (the demo's warm-up hand-off, tests). Large models
are exported offline from the sharded checkpoint instead, without any GPU gather (`mpo-dist export`).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerBase

from mpo_dist.engine.engines import PolicyEngine, barrier

MODEL_PREFIX = "causal_lm."


def hf_state_dict(wrapped: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AlignmentModel parameter names -> the causal LM's own names; the MLC projection is not part of the HF model."""
    return {name[len(MODEL_PREFIX):]: tensor for name, tensor in wrapped.items() if name.startswith(MODEL_PREFIX)}


def write_hf_directory(state: dict[str, torch.Tensor], source_model_dir: Path, out_dir: Path,
                       tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> None:
    """Build the architecture of `source_model_dir`, load `state` strictly, save into a temp dir, then rename into place."""
    config = AutoConfig.from_pretrained(source_model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"export: state does not match {source_model_dir}: missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    model.tie_weights()
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    generation_file = source_model_dir / "generation_config.json"
    if generation_file.is_file():
        GenerationConfig.from_pretrained(source_model_dir).save_pretrained(staging)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def export_live_policy(policy: PolicyEngine, source_model_dir: Path, out_dir: Path, tokenizer: PreTrainedTokenizerBase,
                       dtype: torch.dtype, rank: int) -> None:
    state = policy.gathered_state_dict()
    if rank == 0:
        write_hf_directory(hf_state_dict(state), source_model_dir, out_dir, tokenizer, dtype)
    barrier()

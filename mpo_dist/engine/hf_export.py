"""Write the live policy as a Hugging Face directory (safetensors, config, tokenizer, generation config), atomically.

This path gathers the full weights onto rank 0 and suits small models (the demo's warm-up hand-off, tests). Large models
are exported offline from the sharded checkpoint instead, without any GPU gather (`mpo-dist export`).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerBase

from mpo_dist.atomic_write import publish_directory
from mpo_dist.engine.engines import PolicyEngine, barrier

MODEL_PREFIX = "causal_lm."


def hf_state_dict(wrapped: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AlignmentModel parameter names -> the causal LM's own names; the MLC projection is not part of the HF model."""
    return {name[len(MODEL_PREFIX):]: tensor for name, tensor in wrapped.items() if name.startswith(MODEL_PREFIX)}


def _readable_as_umask_allows(directory: Path) -> None:
    """safetensors writes its files 0600; a model exported on a cluster is shared, so give every file the usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def write_hf_directory(state: dict[str, torch.Tensor], source_model_dir: Path, out_dir: Path,
                       tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype, *, max_shard_size: str = "5GB",
                       extra_safetensors: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Build the architecture of `source_model_dir`, load `state` strictly, save into a temp dir, then rename into place.

    `extra_safetensors` (file name -> tensors) are written into the same temp dir, so they appear with the model or not at all.
    """
    config = AutoConfig.from_pretrained(source_model_dir)
    with torch.device("meta"):  # no random init and no second copy of the weights: `state` is assigned in place
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {name: tensor.to(dtype) for name, tensor in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"export: state does not match {source_model_dir}: missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    model.tie_weights()
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(staging)
    for file_name, tensors in (extra_safetensors or {}).items():
        save_file({name: tensor.to(dtype).contiguous() for name, tensor in tensors.items()}, staging / file_name)
    generation_file = source_model_dir / "generation_config.json"
    if generation_file.is_file():
        GenerationConfig.from_pretrained(source_model_dir).save_pretrained(staging)
    _readable_as_umask_allows(staging)
    publish_directory(staging, out_dir)


def export_live_policy(policy: PolicyEngine, source_model_dir: Path, out_dir: Path, tokenizer: PreTrainedTokenizerBase,
                       dtype: torch.dtype, rank: int) -> None:
    state = policy.gathered_state_dict()
    if rank == 0:
        write_hf_directory(hf_state_dict(state), source_model_dir, out_dir, tokenizer, dtype)
    barrier()

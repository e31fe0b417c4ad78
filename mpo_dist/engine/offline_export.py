"""`mpo-dist export`: a Hugging Face directory consolidated OFFLINE from a checkpoint's ZeRO-3 shards.

No process group, no GPU: DeepSpeed's zero_to_fp32 machinery rebuilds the full fp32 weights from the per-rank optimizer
shards (the fp32 master copy, so nothing is lost to the training dtype), which is how a 70B run is exported on a CPU node
after training instead of gathering 140 GB through rank 0. The source model directory, tokenizer and generation config
come from the run config the trainer stored in the checkpoint's client state.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mpo_dist.engine.checkpoint_layout import (COMPLETE_MARKER, CheckpointError, describe, is_complete, verify,
                                              warn_unrecorded)
from mpo_dist.engine.hf_export import MODEL_PREFIX, hf_state_dict, write_hf_directory
from mpo_dist.models.tokenizer import load_tokenizer

MLC_PREFIX = "mlc_projection."
MLC_FILE = "mlc_projection.safetensors"  # written next to the HF model; training-only, unused at inference
EXAMPLE_TAG_DIR = "<output_dir>/checkpoints/step_00000100"
RANK0_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"


def read_client_state(tag_dir: Path) -> dict:
    """The trainer's client state (step, sampler, config) of a COMPLETE and intact checkpoint tag directory (every file
    checked against the marker's record before anything is read); clear errors otherwise."""
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir} is not a directory; expected a checkpoint tag directory such as {EXAMPLE_TAG_DIR}")
    rank0_states = tag_dir / RANK0_MODEL_STATES  # DeepSpeed stores the client state in every rank's file; rank 0 always exists
    if not rank0_states.is_file():
        raise CheckpointError(f"{tag_dir} holds no DeepSpeed {RANK0_MODEL_STATES}; expected a checkpoint tag directory "
                              f"such as {EXAMPLE_TAG_DIR}")
    if not is_complete(tag_dir):
        raise CheckpointError(f"{tag_dir} has no {COMPLETE_MARKER} marker: its save did not finish (crash or preemption "
                              "while saving); use an earlier checkpoint")
    check = verify(tag_dir, readers=os.cpu_count() or 1)  # one process: parallel readers share the bytes
    if check.problems:
        raise CheckpointError(f"{tag_dir} is damaged: {describe(check.problems)}; use an earlier checkpoint")
    if not check.recorded:
        warn_unrecorded(tag_dir)
    state = torch.load(rank0_states, map_location="cpu", weights_only=False, mmap=True)
    if "config" not in state or "step" not in state:
        raise CheckpointError(f"{rank0_states} has no mpo-dist client state (step, config); was it written by `mpo-dist train`?")
    return {key: state[key] for key in ("step", "sampler", "config") if key in state}


def _source_dirs(run_config: dict, model_dir: Path | None) -> tuple[Path, Path]:
    """(model dir, tokenizer dir): the recorded model.path / model.tokenizer, or `model_dir` for both when the checkpoint
    moved to another machine."""
    recorded = run_config["model"]
    if model_dir is not None:
        source, tokenizer, origin = model_dir, model_dir, "given by --model-dir"
    else:
        source, origin = Path(recorded["path"]), "recorded in the checkpoint (model.path)"
        tokenizer = Path(recorded["tokenizer"]) if recorded.get("tokenizer") else source
    if not (source / "config.json").is_file():
        raise CheckpointError(f"source model directory {source} {origin} is missing or has no config.json; pass --model-dir "
                              "with the Hugging Face directory (model + tokenizer) the run started from")
    if not tokenizer.is_dir():
        raise CheckpointError(f"tokenizer directory {tokenizer} recorded in the checkpoint (model.tokenizer) is missing; pass "
                              "--model-dir with a directory that holds the source model and its tokenizer")
    return source, tokenizer


def consolidated_fp32_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of the wrapped model ("causal_lm.*", "mlc_projection.*") rebuilt from the rank shards."""
    if not any(tag_dir.glob("*optim_states.pt")):
        raise CheckpointError(f"{tag_dir} has no *_optim_states.pt shards to consolidate; export the original ZeRO checkpoint "
                              "(a universal checkpoint from `mpo-dist convert-universal` is for resuming only)")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


def _refuse_output_over_inputs(out_dir: Path, tag_dir: Path, run_dir: Path, source: Path, tokenizer_dir: Path) -> None:
    """--overwrite replaces OUT as a whole, so OUT must not be or hold the checkpoint, its run directory (the recorded
    train.output_dir, and the one the tag sits in), the source model or the tokenizer; nor lie inside the tag or the
    run's checkpoints/ folder, where it would damage a tag or pass for one. Elsewhere in the run directory is fine
    (<output_dir>/hf)."""
    out = out_dir.resolve()
    kept = [("run directory", run_dir)]
    not_inside = [tag_dir.resolve()]
    tags_dir = tag_dir.resolve().parent
    if tags_dir.name == "checkpoints":  # <output_dir>/checkpoints/step_N: the run it belongs to, wherever it moved
        kept.append(("run directory", tags_dir.parent))
        not_inside.append(tags_dir)
    kept += [("checkpoint", tag_dir), ("source model", source), ("tokenizer", tokenizer_dir)]
    for what, path in kept:
        if out == path.resolve() or out in path.resolve().parents:
            raise CheckpointError(f"output directory {out_dir} is or contains the {what} {path}, which writing it "
                                  "(with --overwrite: deleting it first) would destroy; choose a new directory")
    for folder in not_inside:
        if out.is_relative_to(folder):
            raise CheckpointError(f"output directory {out_dir} is inside {folder}, where it would damage a checkpoint tag "
                                  "or pass for one; choose a directory outside it (e.g. <output_dir>/hf)")


def export_checkpoint(tag_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float32, *, model_dir: Path | None = None,
                      max_shard_size: str = "5GB", overwrite: bool = False) -> Path:
    """Write `out_dir` (safetensors shards, config, tokenizer, generation config, and mlc_projection.safetensors when the
    run trained one) atomically: it is built in a hidden sibling directory and renamed into place at the end."""
    client_state = read_client_state(tag_dir)
    source, tokenizer_dir = _source_dirs(client_state["config"], model_dir)
    _refuse_output_over_inputs(out_dir, tag_dir, Path(client_state["config"]["train"]["output_dir"]), source, tokenizer_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"output directory {out_dir} already exists; remove it or pass --overwrite")
    state = consolidated_fp32_state(tag_dir)
    unknown = sorted(name for name in state if not name.startswith((MODEL_PREFIX, MLC_PREFIX)))
    if unknown:
        raise CheckpointError(f"{tag_dir}: parameters {unknown[:5]} are neither {MODEL_PREFIX}* nor {MLC_PREFIX}*; "
                              "not an mpo-dist policy checkpoint")
    mlc = {name[len(MLC_PREFIX):]: tensor for name, tensor in state.items() if name.startswith(MLC_PREFIX)}
    write_hf_directory(hf_state_dict(state), source, out_dir, load_tokenizer(tokenizer_dir), dtype,
                       max_shard_size=max_shard_size, extra_safetensors={MLC_FILE: mlc} if mlc else None)
    return out_dir

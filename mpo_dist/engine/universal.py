"""`mpo-dist convert-universal`: turn a checkpoint into DeepSpeed's universal format so training resumes at another
world size (ZeRO-3 shards are cut for the world size that wrote them; a universal checkpoint holds every parameter and
its Adam moments whole, and DeepSpeed re-cuts them at load time).

Layout written under OUT_DIR:
    OUT_DIR/<tag>/zero/<param name>/{fp32,exp_avg,exp_avg_sq}.pt, zero/optimizer_state.pt   (DeepSpeed's conversion)
    OUT_DIR/<tag>/*_model_states.pt   per-rank files copied by DeepSpeed; they carry mpo-dist's client state
                                      (step, sampler position, run config), so the run continues where it stopped
    OUT_DIR/<tag>/rng_rank*.pt        the RNG states of the old ranks (ranks beyond them start from the seeded state)
    OUT_DIR/<tag>/COMPLETE            written last, like a training save, with the size and checksum of every file
                                      above; the directory appears by an atomic rename
    OUT_DIR/latest_universal          DeepSpeed's pointer to <tag>
Resume with `mpo-dist train ... --resume OUT_DIR/<tag>`; the trainer sees the zero/ folder and sets
`"checkpoint": {"load_universal": true}` in the policy's DeepSpeed config.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from unittest import mock

from mpo_dist.atomic_write import atomic_write_text, publish_directory
from mpo_dist.engine.checkpoint_layout import (
    CheckpointError,
    is_universal,
    read_marker,
    record_files,
    tag_files,
    write_marker,
)
from mpo_dist.engine.offline_export import read_client_state

LATEST_UNIVERSAL_FILE = "latest_universal"


def convert_to_universal(tag_dir: Path, out_root: Path, *, workers: int = 2) -> Path:
    """Convert the COMPLETE, intact checkpoint `tag_dir` into OUT_DIR/<tag> (layout above); returns that directory."""
    read_client_state(tag_dir)  # complete, intact, written by mpo-dist, with the client state the resume needs
    if is_universal(tag_dir):
        raise CheckpointError(f"{tag_dir} is already a universal checkpoint; resume from it directly")
    if not any(tag_dir.glob("*optim_states.pt")):
        raise CheckpointError(f"{tag_dir} has no *_optim_states.pt shards; the universal conversion needs the optimizer shards")
    out_dir = out_root / tag_dir.name
    if out_dir.exists():
        raise CheckpointError(f"{out_dir} already exists; remove it or choose another output directory")
    out_root.mkdir(parents=True, exist_ok=True)
    staging = out_root / f".{tag_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)

    from deepspeed.checkpoint import ds_to_universal

    # DeepSpeed's own command-line parser builds the options, so options it adds later keep their defaults.
    argv = ["ds_to_universal", "--input_folder", str(tag_dir), "--output_folder", str(staging),
            "--num_extract_workers", str(workers), "--num_merge_workers", str(workers)]
    with mock.patch.object(sys, "argv", argv):
        options = ds_to_universal.parse_arguments()
    ds_to_universal.main(options)
    for rng_file in tag_dir.glob("rng_rank*.pt"):
        shutil.copy2(rng_file, staging / rng_file.name)
    write_marker(staging, read_marker(tag_dir).step, record_files(staging, tag_files(staging)))
    publish_directory(staging, out_dir)
    atomic_write_text(out_root / LATEST_UNIVERSAL_FILE, f"{tag_dir.name}\n")  # DeepSpeed pointed it at the staging name
    return out_dir

"""`mpo-dist export` and `mpo-dist convert-universal`: offline tools that read a checkpoint tag directory
(<output_dir>/checkpoints/step_XXXXXXXX). Neither starts a process group or needs a GPU. Exit status 2 on bad input."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpo_dist.runtime import DTYPE_CHOICES


def _export(args: argparse.Namespace) -> int:
    from mpo_dist.engine.offline_export import CheckpointError, export_checkpoint
    from mpo_dist.runtime import torch_dtype

    try:
        out = export_checkpoint(args.checkpoint, args.out, torch_dtype(args.dtype), model_dir=args.model_dir,
                                max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    except CheckpointError as error:
        print(f"mpo-dist export: {error}", file=sys.stderr)
        return 2
    print(f"wrote Hugging Face model ({args.dtype}) to {out}")
    return 0


def _convert_universal(args: argparse.Namespace) -> int:
    from mpo_dist.engine.offline_export import CheckpointError
    from mpo_dist.engine.universal import convert_to_universal

    if args.workers < 1:
        print("mpo-dist convert-universal: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        out = convert_to_universal(args.checkpoint, args.out_dir, workers=args.workers)
    except CheckpointError as error:
        print(f"mpo-dist convert-universal: {error}", file=sys.stderr)
        return 2
    print(f"wrote universal checkpoint {out}; resume at any world size with: mpo-dist train ... --resume {out}")
    return 0


def register(subparsers) -> None:
    """Add `export` and `convert-universal` to the CLI's sub-command parsers; the CLI then calls args.func(args)."""
    export = subparsers.add_parser(
        "export", help="write a Hugging Face model directory from a ZeRO-3 checkpoint (offline, CPU only)",
        description="Consolidate the ZeRO-3 shards of a checkpoint into a Hugging Face directory: safetensors shards, "
                    "config, tokenizer, generation config; plus mlc_projection.safetensors when the run trained MLC.")
    export.add_argument("checkpoint", type=Path, help="checkpoint tag directory, e.g. runs/mpo/checkpoints/step_00000100")
    export.add_argument("out", type=Path, help="output directory (created atomically)")
    export.add_argument("--dtype", choices=DTYPE_CHOICES, default="bf16", help="weight dtype (default bf16)")
    export.add_argument("--model-dir", type=Path,
                        help="source Hugging Face directory with its tokenizer, when the recorded model.path / model.tokenizer moved")
    export.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.set_defaults(func=_export)

    universal = subparsers.add_parser(
        "convert-universal", help="convert a checkpoint to DeepSpeed's universal format to resume at another world size",
        description="Write OUT_DIR/<tag>, a DeepSpeed universal checkpoint with mpo-dist's resume state; then resume "
                    "on any number of ranks with `mpo-dist train ... --resume OUT_DIR/<tag>`.")
    universal.add_argument("checkpoint", type=Path, help="checkpoint tag directory, e.g. runs/mpo/checkpoints/step_00000100")
    universal.add_argument("out_dir", type=Path, help="directory that receives <tag>/ and latest_universal")
    universal.add_argument("--workers", type=int, default=2, help="processes for DeepSpeed's extract/merge passes (default 2)")
    universal.set_defaults(func=_convert_universal)

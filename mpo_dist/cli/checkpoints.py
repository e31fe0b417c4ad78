"""`mpo-dist export` and `mpo-dist convert-universal`: offline tools that read a checkpoint tag directory
(<output_dir>/checkpoints/step_XXXXXXXX), verified against its COMPLETE record first. Neither starts a process group or
needs a GPU. Their CheckpointErrors reach mpo_dist.cli.main, which prints them on one line and exits 2."""
from __future__ import annotations

import argparse
from pathlib import Path

from mpo_dist.errors import UserError
from mpo_dist.runtime import DTYPE_CHOICES


def _export(args: argparse.Namespace) -> int:
    from mpo_dist.engine.offline_export import export_checkpoint
    from mpo_dist.runtime import torch_dtype

    out = export_checkpoint(args.checkpoint, args.out, torch_dtype(args.dtype), model_dir=args.model_dir,
                            max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(f"wrote Hugging Face model ({args.dtype}) to {out}")
    return 0


def _convert_universal(args: argparse.Namespace) -> int:
    from mpo_dist.engine.universal import convert_to_universal

    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected at least 1")
    out = convert_to_universal(args.checkpoint, args.out_dir, workers=args.workers)
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
    export.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it exists; refused when OUT is or holds the checkpoint, its run directory, "
                             "the source model or tokenizer, or lies inside the tag or the run's checkpoints/")
    export.set_defaults(func=_export)

    universal = subparsers.add_parser(
        "convert-universal", help="convert a checkpoint to DeepSpeed's universal format to resume at another world size",
        description="Write OUT_DIR/<tag>, a DeepSpeed universal checkpoint with mpo-dist's resume state; then resume "
                    "on any number of ranks with `mpo-dist train ... --resume OUT_DIR/<tag>`.")
    universal.add_argument("checkpoint", type=Path, help="checkpoint tag directory, e.g. runs/mpo/checkpoints/step_00000100")
    universal.add_argument("out_dir", type=Path, help="directory that receives <tag>/ and latest_universal")
    universal.add_argument("--workers", type=int, default=2, help="processes for DeepSpeed's extract/merge passes (default 2)")
    universal.set_defaults(func=_convert_universal)

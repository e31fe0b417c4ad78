"""`mpo-dist precompute-ref`: the options; mpo_dist.train.precompute runs the pass (docs/scaling.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mpo_dist.cli.run_options import add_run_options, run_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "precompute-ref", help="compute the reference model's loss terms once into a cache (run under torchrun or srun)",
        description="Run the frozen reference once over the training examples and write the terms the loss reads (MPO: "
                    "dominant-language sums, token counts and pooled hidden states; DPO family: the training pair's "
                    "sums and counts). Then train with --set engine.reference=cache --set engine.reference_cache=DIR.")
    add_run_options(parser, resume=False)
    parser.add_argument("--out", type=Path, help="cache directory (default: engine.reference_cache of the config)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mpo_dist.config import load_config
    from mpo_dist.train.precompute import precompute_reference

    overrides = run_overrides(args, "engine.reference=cache",
                              *([f"engine.reference_cache={args.out}"] if args.out is not None else []))
    config = load_config(args.config, overrides)  # validates the settings a cache supports, before any process group
    precompute_reference(config, Path(config.engine.reference_cache))
    return 0

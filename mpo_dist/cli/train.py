"""`mpo-dist train`: the options; mpo_dist.train.trainer.Trainer runs the loop (docs/configuration.md)."""
from __future__ import annotations

import argparse

from mpo_dist.cli.run_options import add_run_options, run_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train MPO / MLC / a baseline (run under torchrun or srun)",
        description="Train with a YAML config and --set overrides. Every config key with its type, default and "
                    "meaning: `mpo-dist config-keys`. Check a run first with `mpo-dist check` (same --config/--set).")
    add_run_options(parser, resume=True)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mpo_dist.config import load_config
    from mpo_dist.train.launcher import rank_exit_code
    from mpo_dist.train.trainer import Trainer

    result = Trainer(load_config(args.config, run_overrides(args))).train()
    return rank_exit_code(result.exit_code, result.steps_done)

"""`mpo-dist` command line: train | init-tiny | demo | plan | ... Each sub-command lives in its own module and registers
itself here; this file only dispatches."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mpo_dist.errors import DEBUG_ENV, EXIT_USER_ERROR, UserError


def _train(args: argparse.Namespace) -> int:
    from mpo_dist.config import load_config
    from mpo_dist.train.trainer import Trainer

    overrides = list(args.set or [])
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")
    config = load_config(args.config, overrides)
    return Trainer(config).train().exit_code


def _init_tiny(args: argparse.Namespace) -> int:
    from mpo_dist.models.tiny import init_tiny

    path = init_tiny(args.out, args.family, seed=args.seed, hidden_size=args.hidden_size, layers=args.layers)
    print(f"wrote tiny {args.family} model to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mpo_dist import checkpoint_commands, config_keys, demo, import_command, precompute_command
    from mpo_dist.check_command import register as register_check
    from mpo_dist.plan.command import register as register_plan
    from mpo_dist.eval.command import register as register_eval

    parser = argparse.ArgumentParser(prog="mpo-dist", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of a user error too (or {DEBUG_ENV}=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train MPO / MLC / a baseline (run under torchrun or srun)",
                                description="Train with a YAML config and --set overrides. Every config key with its "
                                            "type, default and meaning: `mpo-dist config-keys`. Check a run first "
                                            "with `mpo-dist check` (same --config/--set).")
    train.add_argument("--config", type=Path, help="YAML config (see docs/configuration.md)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=1e-6 (all keys: mpo-dist config-keys)")
    train.add_argument("--resume", help="none | auto | PATH (shortcut for --set checkpoint.resume=...)")
    train.set_defaults(func=_train)

    tiny = commands.add_parser("init-tiny", help="write a tiny random-init model + sample tokenizer (tests, demo)")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--family", default="llama", choices=["llama", "gemma2", "qwen2"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.set_defaults(func=_init_tiny)

    register_check(commands)
    config_keys.register(commands)
    demo.register(commands)
    precompute_command.register(commands)
    import_command.register(commands)
    register_plan(commands)
    register_eval(commands)
    checkpoint_commands.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. A UserError (bad config, data, path, checkpoint) is one line on stderr and exit 2; its
    traceback only with --debug or MPO_DIST_DEBUG=1. Any other exception is our bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"mpo-dist {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

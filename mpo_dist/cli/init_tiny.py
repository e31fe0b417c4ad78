"""`mpo-dist init-tiny`: a tiny random-init model with the sample tokenizer (mpo_dist.models.tiny; docs/models.md)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("init-tiny", help="write a tiny random-init model + sample tokenizer (tests, demo)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--family", default="llama", choices=["llama", "gemma2", "qwen2"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mpo_dist.models.tiny import init_tiny

    path = init_tiny(args.out, args.family, seed=args.seed, hidden_size=args.hidden_size, layers=args.layers)
    print(f"wrote tiny {args.family} model to {path}")
    return 0

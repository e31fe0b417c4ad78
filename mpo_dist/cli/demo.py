"""`mpo-dist demo`: the options; mpo_dist.train.demo runs the tiny-model warm-up, MPO and the reward-gap table.
Exit status: 0 every target language moved towards the target gap, 1 one did not."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="tiny-model MPO demo on the bundled sample data (CPU, 2 processes)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mpo_dist.train.demo import run_demo

    return 0 if run_demo(args.out, nproc=args.nproc, hidden_size=args.hidden_size, layers=args.layers) else 1

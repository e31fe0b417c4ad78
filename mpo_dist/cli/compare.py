"""`mpo-dist compare`: several `mpo-dist eval` outputs in one table per metric (docs/evaluation.md)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="several evaluations' before -> after and changes side by side (markdown)",
        description="Read each EVAL_DIR's metrics.json (the --out of an `mpo-dist eval` with --reference) and print one "
                    "table per metric, one column per evaluation: reference -> model (change ± its error).")
    parser.add_argument("eval_dirs", nargs="+", type=Path, metavar="EVAL_DIR", help="`mpo-dist eval` output directories")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mpo_dist.atomic_write import atomic_write_text
    from mpo_dist.eval.comparison import comparison_markdown, read_evaluation

    text = comparison_markdown([read_evaluation(directory) for directory in args.eval_dirs])
    if args.out is not None:
        atomic_write_text(args.out, text)
    print(text, end="")
    return 0

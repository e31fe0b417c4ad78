"""`mpo-dist compare`: several `mpo-dist eval` outputs in one table per metric (docs/evaluation.md)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="several evaluations' before -> after and changes side by side (markdown)",
        description="Read each EVAL_DIR's metrics.json (the --out of an `mpo-dist eval` with --reference) and print one "
                    "table per metric, one column per evaluation: reference -> model (change ± its error); means are "
                    "over the languages every evaluation measured. Evaluations made with different settings (data, "
                    "--limit, judge, generation, ...) are refused. Exit status: 0 done, 2 bad input.")
    parser.add_argument("eval_dirs", nargs="+", type=Path, metavar="EVAL_DIR", help="`mpo-dist eval` output directories")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--allow-different-settings", action="store_true",
                        help="compare evaluations whose recorded settings differ, listing the differences above the "
                             "tables (default: refuse them)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mpo_dist.atomic_write import atomic_write_text
    from mpo_dist.eval.comparison import comparison_markdown, read_evaluation

    text = comparison_markdown([read_evaluation(directory) for directory in args.eval_dirs],
                               allow_different_settings=args.allow_different_settings)
    if args.out is not None:
        atomic_write_text(args.out, text)
    print(text, end="")
    return 0

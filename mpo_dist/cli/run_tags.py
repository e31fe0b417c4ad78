"""`mpo-dist checkpoints list|prune RUN`: what a run directory's checkpoints take on disk, and removing the lines a
resume or a fresh start set aside (docs/checkpoints.md, "Set-aside lines and their budget"). Prune takes the run
directory's lock, so it never deletes under a live run."""
from __future__ import annotations

import argparse
from pathlib import Path

from mpo_dist.errors import UserError


def _directory(run: Path):
    from mpo_dist.engine.run_directory import RunDirectory

    if not (run / "checkpoints").is_dir():
        raise UserError(f"{run}: no checkpoints/ folder; expected a run directory (a run's train.output_dir)")
    return RunDirectory(run, keep_abandoned=0)


def _list(args: argparse.Namespace) -> int:
    from mpo_dist.engine.checkpoint_layout import is_complete, tag_dirs
    from mpo_dist.engine.run_directory import gib, tree_size

    run_dir = _directory(args.run)
    line = run_dir.line()
    print(f"{args.run}: line started from {line.origin if line and line.origin else 'scratch'}" if line else
          f"{args.run}: no line record (written by mpo-dist before 2026-12-07, or no run yet)")
    for tag_dir in tag_dirs(run_dir.checkpoints):
        state = "live" if is_complete(tag_dir) else "half-written (removed at the next start)"
        print(f"  {tag_dir.name:<24} {gib(tree_size(tag_dir)):>12}  {state}")
    for entry in run_dir.set_aside_entries():
        print(f"  abandoned/{entry.name:<14} {gib(tree_size(entry)):>12}  set aside: "
              f"{', '.join(sorted(p.name for p in entry.iterdir()))}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from mpo_dist.engine.run_directory import gib
    from mpo_dist.engine.run_lock import RunLock

    if args.keep < 0:
        raise UserError(f"--keep {args.keep}: expected 0 or more set-aside lines to keep")
    run_dir = _directory(args.run)
    lock = RunLock(args.run)
    lock.acquire()
    try:
        doomed, size = run_dir.prune_set_aside(args.keep)
    finally:
        lock.release()
    print(f"deleted {', '.join(d.name for d in doomed)}, freeing {gib(size)}" if doomed else "nothing to prune")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "checkpoints", help="list a run directory's checkpoint tags and set-aside lines, or prune the set-aside ones",
        description="list: every live tag and set-aside line of RUN with its size. prune: delete set-aside lines "
                    "(checkpoints/abandoned/) but the --keep newest, never the line the current run started from, "
                    "under the run directory's lock (a live run is refused).")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="live tags and set-aside lines with their sizes")
    listing.add_argument("run", type=Path, help="the run directory (train.output_dir)")
    listing.set_defaults(func=_list)
    prune = actions.add_parser("prune", help="delete set-aside lines")
    prune.add_argument("run", type=Path, help="the run directory (train.output_dir)")
    prune.add_argument("--keep", type=int, default=0, help="set-aside lines kept, newest first (default 0)")
    prune.set_defaults(func=_prune)

"""`mpo-dist`, the only entry layer: this module builds the parser and runs one sub-command; each sub-command is a
module of this package (its options, then one call into the library, imported inside the call so that `--help` loads
no torch). `main` is the one place where a user's mistake becomes exit 2: one line, or `check`'s whole report; `run`
is the program (`mpo-dist`, `python -m mpo_dist.cli`), which ends a rank as engine/process_exit.py says."""
from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from mpo_dist.cli import (check, checkpoints, compare, config_keys, demo, evaluate, import_gguf, init_tiny, plan,
                          precompute_ref, run_tags, train)
from mpo_dist.check.report import CheckReportFailed
from mpo_dist.engine.process_exit import exit_process
from mpo_dist.errors import DEBUG_ENV, ERROR_FILE_ENV, EXIT_USER_ERROR, UserError

# In the order `mpo-dist --help` lists them.
SUBCOMMANDS = (train, check, init_tiny, demo, config_keys, precompute_ref, import_gguf, plan, evaluate, compare, checkpoints, run_tags)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpo-dist", description="Distributed multilingual safety alignment: "
                                     "MPO, MLC and the DPO family on DeepSpeed ZeRO-3 (docs/quickstart.md).")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of a user error too (or {DEBUG_ENV}=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. A UserError (bad config, data, path, checkpoint) is one line on stderr and exit 2; its
    traceback only with --debug or MPO_DIST_DEBUG=1. Any other exception is our bug and keeps its traceback. Under our
    launchers (MPO_DIST_ERROR_FILE set) every rank appends the line to that file instead, and the launcher prints it
    once for the job and exits 2. A failed `check` prints its whole report, on stdout as a passing one, and exits 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CheckReportFailed as failed:  # every finding, each already naming its key, file or row: no traceback to add
        print(failed)
        return EXIT_USER_ERROR
    except UserError as error:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        line = f"mpo-dist {args.command}: error: {error}"
        error_file = os.environ.get(ERROR_FILE_ENV)
        if error_file:
            with open(error_file, "a", encoding="utf-8") as handle:  # one write of one line: ranks do not interleave
                handle.write(" ".join(line.split("\n")) + "\n")
        else:
            print(line, file=sys.stderr)
        return EXIT_USER_ERROR


def run() -> NoReturn:
    """The program: main() with the command line, then the exit of engine/process_exit.py (main itself returns, so
    that tests and tests/workers/in_sequence.py can call it in-process)."""
    exit_process(main())

"""torchrun worker, the one every 2-rank test launch starts (conftest.torchrun): one or several workers, one after
the other in the same processes and process group, so that one launch serves them all (starting two ranks costs more
than the small runs the tests make them do), and the ranks end as `mpo-dist` ends them (engine/process_exit.py).
Each worker builds its own trainer or engine; the process group stays up from the first to the last.

argv: groups separated by `--`, each a worker script (a .py path, run as `python SCRIPT ARGS` would run it) or
`-m MODULE` with MODULE.main(ARGS) (`-m mpo_dist.cli train ...` is what `python -m mpo_dist.cli train ...` runs, less
its exit), then its arguments. The first that exits non-zero ends the sequence with its code."""
from __future__ import annotations

import importlib
import runpy
import sys

from mpo_dist.engine.process_exit import exit_process


def run(group: list[str]) -> int:
    module = group[0] == "-m"
    target, args = (group[1], group[2:]) if module else (group[0], group[1:])
    sys.argv = [target, *args]
    try:
        if module:
            return int(importlib.import_module(target).main(args) or 0)
        runpy.run_path(target, run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)  # sys.exit("message"), as the interpreter would print it
        return 1
    return 0


def main() -> int:
    groups: list[list[str]] = [[]]
    for argument in sys.argv[1:]:
        if argument == "--":
            groups.append([])
        else:
            groups[-1].append(argument)
    for group in groups:
        code = run(group)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    exit_process(main())

"""torchrun worker: several workers, one after the other in the same processes and process group, so that one launch
serves them all (starting two ranks costs more than the small runs the tests make them do). Each builds its own
trainer or engine; the process group stays up from the first to the last.

argv: groups separated by `--`, each a worker script (a .py path) or `-m MODULE` (e.g. `-m mpo_dist.cli train ...`),
then its arguments. Each runs as `python SCRIPT ARGS` would run it; the first that exits non-zero ends the sequence
with its code."""
from __future__ import annotations

import runpy
import sys


def run(group: list[str]) -> int:
    module = group[0] == "-m"
    target, args = (group[1], group[2:]) if module else (group[0], group[1:])
    sys.argv = [target, *args]
    try:
        if module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
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
    sys.exit(main())

"""How a process that joined a process group ends: its exit handlers run as at any exit (leaving the process group,
flushing the logs), then the process ends without the interpreter's teardown.

Why: a CI run had a finished rank abort after its last log line, "terminate called without an active exception",
exit -6, a completed job reported as failed. What still runs at that point are gloo's worker threads: they outlive
`destroy_process_group`, since DeepSpeed's engines, groups and partitioned parameters still hold the group. The known
way to that message at exit is such a thread asking for the interpreter's lock once the teardown has begun: the
interpreter ends the thread from inside C++ code that may not be unwound, and the C++ runtime aborts the process. It
did not happen on demand here (38 launches of the failed test's run under load, none aborted), so the test of this
module checks what it does, not the race. Without a teardown, no thread can meet one.

Deliberately light (no torch): mpo_dist.cli imports it, and `mpo-dist --help` stays fast.
"""
from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

_joined_process_group = False


def note_process_group_joined() -> None:
    """Called by init_distributed: from now on this process has gloo threads that the teardown must not meet."""
    global _joined_process_group
    _joined_process_group = True


def exit_process(code: int) -> NoReturn:
    """End the process with `code`; a process that never joined a process group exits as usual (sys.exit)."""
    if not _joined_process_group:
        sys.exit(code)
    atexit._run_exitfuncs()  # every handler registered with atexit, in the order the interpreter would run them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

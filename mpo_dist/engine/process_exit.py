"""How a process that joined a process group ends: its exit handlers run as at any exit (leaving the process group,
flushing the logs), then the process ends without the interpreter's teardown.

Why: gloo's worker threads outlive `destroy_process_group` (DeepSpeed's engines, groups and partitioned parameters
still hold the group), and such a thread drops its last collective's tensors when it next runs. A tensor Python still
knows needs the interpreter's lock to be dropped; once the teardown has begun, the interpreter ends a thread that asks
for the lock from inside C++, and the C++ runtime aborts the finished rank: "terminate called without an active
exception", exit -6, a completed job reported as failed (seen in CI under load, about one launch in a few hundred).
Without a teardown there is nothing for the thread to meet. Deliberately light (no torch): `mpo-dist --help` ends here.
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

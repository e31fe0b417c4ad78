"""`check`: a DeepSpeed op build lock that a killed build left behind would hang the run (mpo_dist/engine/op_builds.py)."""
from __future__ import annotations

from mpo_dist.check.report import CheckReport
from mpo_dist.engine.op_builds import find_build_locks, stale_lock_message


def check_build_locks(report: CheckReport) -> None:
    """Each stale lock in the extensions directory in use is an error naming the `rm` that clears it."""
    for lock in find_build_locks():
        if lock.stale:
            report.error(stale_lock_message(lock))

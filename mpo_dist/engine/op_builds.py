"""A lock file left by a killed DeepSpeed op build: refused by a run (not waited on forever), named by `mpo-dist check`.

DeepSpeed JIT-builds its C++ ops (a CPU run needs `deepspeed_shm_comm`) through torch, which takes a `lock` file in the
op's build directory for the build and even to load an op that is already built. A build killed part way (scancel,
Ctrl-C, a timeout) leaves the file behind, and every later run that loads the op waits on it forever, printing nothing.
A lock that no process on this host holds open and that is older than any build takes is such a leftover. A lock held
by a live build is waited for, with a line every 30 s (docs/quickstart.md, "Set-up").
"""
from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mpo_dist.errors import UserError

log = logging.getLogger("mpo_dist")

EXTENSIONS_DIR_ENV = "TORCH_EXTENSIONS_DIR"
STALE_AFTER_S = 300.0  # the op builds in 1-2 minutes on 2 busy cores (docs/benchmarks.md); a held lock is never stale
WAIT_LOG_EVERY_S = 30.0
POLL_S = 0.5


class BuildLockError(UserError):
    """A stale build lock: the message names it and the command that clears it."""


@dataclass(frozen=True)
class BuildLock:
    path: Path
    age_s: float
    holders: tuple[int, ...]  # pids on this host with the lock open: the build in progress

    @property
    def stale(self) -> bool:
        return not self.holders and self.age_s >= STALE_AFTER_S


def extensions_dir() -> Path:
    """Where torch builds JIT ops: TORCH_EXTENSIONS_DIR (launch/setup_env.sh sets it inside the venv), else torch's
    per-user default (~/.cache/torch_extensions), which every venv of the user shares."""
    configured = os.environ.get(EXTENSIONS_DIR_ENV)
    if configured:
        return Path(configured)
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def _holders(lock: Path) -> tuple[int, ...]:
    """Pids whose open files include `lock` (torch keeps the lock's descriptor open until the build releases it).
    Processes of other users, whose descriptors cannot be read, are not seen."""
    target = str(lock.resolve())
    pids = []
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (process / "fd").iterdir()):
                pids.append(int(process.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return tuple(pids)


def find_build_locks(root: Path | None = None) -> list[BuildLock]:
    """The lock of every op under `root` (default: the extensions directory in use): <root>/<op>/lock, or
    <root>/py311_cpu/<op>/lock under torch's default root."""
    root = extensions_dir() if root is None else root
    locks = []
    for path in sorted([*root.glob("*/lock"), *root.glob("*/*/lock")]):
        try:
            age_s = time.time() - path.stat().st_mtime
        except FileNotFoundError:  # released while we looked
            continue
        locks.append(BuildLock(path, age_s, _holders(path)))
    return locks


def stale_lock_message(lock: BuildLock) -> str:
    """One line for `mpo-dist check` and a refused run alike."""
    return (f"DeepSpeed's op build lock {lock.path} is {lock.age_s / 60:.0f} min old and no process on this host holds "
            "it: a build was killed part way, and every run would wait on it forever; clear it with "
            f"`rm {shlex.quote(str(lock.path))}`")


def wait_for_build_locks(root: Path | None = None, *, clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], None] = time.sleep) -> None:
    """Before DeepSpeed loads its ops (mpo_dist.engine.engines.init_distributed): refuse a stale lock with the line
    `check` prints, and wait for a live build's lock to go, saying so every 30 s, instead of torch's silent wait. The
    first line comes after 30 s: the ranks of one job take the lock in turn to load a built op, which takes a moment."""
    last_line = clock()
    while locks := find_build_locks(root):
        stale = [lock for lock in locks if lock.stale]
        if stale:
            raise BuildLockError(stale_lock_message(stale[0]))
        if clock() - last_line >= WAIT_LOG_EVERY_S:
            last_line = clock()
            log.warning("waiting for a DeepSpeed op build to finish before starting: %s",
                        "; ".join(_describe(lock) for lock in locks))
        sleep(POLL_S)


def _describe(lock: BuildLock) -> str:
    if lock.holders:
        return f"{lock.path} held by pid {', '.join(map(str, lock.holders))} for {lock.age_s:.0f} s"
    return (f"{lock.path}, {lock.age_s:.0f} s old, held by no process on this host (a build on another host, or a "
            f"killed one: refused once {STALE_AFTER_S:.0f} s old)")

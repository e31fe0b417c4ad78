"""One job owns a run directory: rank 0 holds an exclusive `flock` on `<output_dir>/.lock` from before anything in
the directory changes until the run ends, and the file names the holder (job id, host, pid, start time).

Why flock and a record: the kernel (or the NFS server's lock manager) releases a flock when its process dies, however it
dies, so a killed run never blocks the next one on the same host; the record lets a refusal name the holder and lets
the next owner say whose lock it took over. Where a lock outlives its holder (a node that died while holding a lock on
NFS, whose server keeps it until the client's lease or reboot), the record decides: a holder on another host whose
SLURM job is no longer running, or this very SLURM job before a requeue, is gone, and its lock is taken over. See
docs/checkpoints.md, "One job owns a run directory".
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mpo_dist.errors import UserError

log = logging.getLogger("mpo_dist")

LOCK_FILE = ".lock"
# SLURM states in which a job's processes may still be running (squeue prints nothing once a job has left the queue).
SLURM_LIVE_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "STOPPED", "SUSPENDED", "RESIZING", "SIGNALING",
                     "STAGE_OUT"}


class RunDirectoryBusy(UserError):
    """Another live job owns the run directory."""


@dataclass(frozen=True)
class Holder:
    job: str | None  # SLURM_JOB_ID, None outside SLURM
    host: str
    pid: int
    started: str  # local time, ISO 8601

    @classmethod
    def this_process(cls) -> "Holder":
        return cls(os.environ.get("SLURM_JOB_ID") or None, socket.gethostname(), os.getpid(),
                   time.strftime("%Y-%m-%dT%H:%M:%S"))

    def describe(self) -> str:
        job = f"SLURM job {self.job}" if self.job else "a run"
        return f"{job} on host {self.host} (pid {self.pid}, since {self.started})"


def read_holder(path: Path) -> Holder | None:
    """The record in a lock file, or None when it is empty (released cleanly) or not ours."""
    try:
        payload = json.loads(path.read_text())
        return Holder(payload["job"], str(payload["host"]), int(payload["pid"]), str(payload["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _slurm_job_running(job: str) -> bool | None:
    """Whether SLURM still runs `job` (None: squeue is not available here, so nobody can tell)."""
    try:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return state in SLURM_LIVE_STATES


def holder_is_gone(holder: Holder, me: Holder) -> bool:
    """Only for a lock that is still held: whether its recorded holder provably no longer runs. On this host a held
    flock means a live process holds it (the kernel drops a dead one's), so never; on another host, when the holder is
    this SLURM job before a requeue, or a SLURM job that is no longer running."""
    if holder.host == me.host:
        return False
    if holder.job is not None and holder.job == me.job:
        return True
    return holder.job is not None and _slurm_job_running(holder.job) is False


def live_holder(output_dir: Path) -> Holder | None:
    """`mpo-dist check`: the live job that owns `output_dir` (None: free), found without creating or taking anything
    (a shared lock held for the moment of the probe). A holder that `holder_is_gone` says is gone counts as free."""
    path = output_dir / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError:  # held (or no locks on this file system, which the run itself reports)
        holder = read_holder(path)
        return holder if holder is not None and not holder_is_gone(holder, Holder.this_process()) else None
    finally:
        os.close(descriptor)


class RunLock:
    """The exclusive lock on one run directory, held by rank 0 from `acquire` to `release` (or the process's end)."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / LOCK_FILE
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunDirectoryBusy naming the live holder. Logs one line when it takes over the lock
        of a holder that is gone, or when a requeued job takes its own lock back."""
        me = Holder.this_process()
        descriptor = self._open_locked()
        if descriptor is None:
            holder = read_holder(self.path)
            if holder is None or not holder_is_gone(holder, me):
                raise RunDirectoryBusy(
                    f"train.output_dir {self.path.parent} is in use by "
                    f"{holder.describe() if holder else 'another process'} (it holds {self.path}); one job owns a run "
                    "directory: wait for that job, cancel it, or set another train.output_dir")
            # Its lock lingers on the file server: move the file away (one taker wins the rename) and lock a new one.
            try:
                os.replace(self.path, self.path.with_name(f"{LOCK_FILE}.stale-{me.host}-{me.pid}"))
            except FileNotFoundError:
                pass
            descriptor = self._open_locked()
            if descriptor is None:
                raise RunDirectoryBusy(f"train.output_dir {self.path.parent} was taken by another job at the same "
                                       f"moment ({self.path}); one job owns a run directory")
            previous = holder
        else:
            previous = read_holder(self.path)
        self._descriptor = descriptor
        if previous is not None:
            if previous.job is not None and previous.job == me.job:
                log.info("SLURM job %s (requeued) takes its run directory %s back", me.job, self.path.parent)
            else:
                log.warning("took over the run directory %s from %s, which is gone", self.path.parent,
                            previous.describe())
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(asdict(me)) + "\n").encode(), 0)
        os.fsync(descriptor)

    def _open_locked(self) -> int | None:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            os.close(descriptor)
            return None
        except OSError as error:
            os.close(descriptor)
            if error.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise UserError(f"train.output_dir {self.path.parent}: its file system does not support file locks "
                                f"({error.strerror}); mount Lustre with -o flock and NFS without nolock, or put the "
                                "run directory on a file system that has them (docs/checkpoints.md)") from None
            raise

    def release(self) -> None:
        """Empty the record (a clean end: the next owner has nothing to take over) and drop the lock."""
        if self._descriptor is None:
            return
        os.ftruncate(self._descriptor, 0)
        os.close(self._descriptor)  # closing the last descriptor drops the flock
        self._descriptor = None

"""Graceful stop on SIGTERM / SIGUSR1 or a STOP file: finish the step, save, exit with EXIT_REQUEUE.

SLURM's `--signal=B:USR1@T` warns the batch shell, which touches <output_dir>/STOP (signals do not cross torchrun reliably);
SIGTERM from a preemption reaches the workers through torchrun. Every rank decides together, so all save the same step.
"""
from __future__ import annotations

import signal
from pathlib import Path

import torch

from mpo_dist.engine.engines import all_ranks_agree
from mpo_dist.train.launcher import EXIT_REQUEUE  # noqa: F401  (the trainer's stop code; under launchers see there)

STOP_FILE = "STOP"


class StopRequest:
    def __init__(self, output_dir: Path):
        self.stop_file = output_dir / STOP_FILE
        self.signalled: int | None = None
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signalled = signum

    def requested(self, device: torch.device) -> bool:
        """Collective: true on all ranks if any rank got a signal or sees the STOP file."""
        return all_ranks_agree(self.signalled is not None or self.stop_file.exists(), device)

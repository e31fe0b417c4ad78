"""Graceful stop on SIGTERM / SIGUSR1 or a STOP file: finish the step, save, exit with EXIT_REQUEUE.

SLURM's `--signal=B:USR1@T` warns the batch shell, which touches <output_dir>/STOP (signals do not cross torchrun reliably);
SIGTERM from a preemption reaches the workers through torchrun. Every rank decides together, so all save the same step.
"""
from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import torch

from mpo_dist.engine.engines import all_ranks_agree

EXIT_REQUEUE = 75  # EX_TEMPFAIL: "stopped early, resume me"
STOP_FILE = "STOP"
COMPLETED_FILE = "COMPLETED"


def completed_marker(steps: int, config_text: str) -> str:
    """COMPLETED's content: the steps done and the SHA-256 of the config.json text they were trained with. A COMPLETED
    counts only beside that config (slurm/train.sbatch compares the two), so one left by an earlier run, or a run
    refused before it rewrote config.json, never makes a job look finished (docs/checkpoints.md)."""
    return json.dumps({"steps": steps, "config_sha256": hashlib.sha256(config_text.encode()).hexdigest()}) + "\n"


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

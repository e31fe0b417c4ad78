"""Rank-0 run logging: TensorBoard scalars, a tqdm progress bar, and plain log lines for batch logs (SLURM .out files)."""
from __future__ import annotations

import json
import logging
import resource
import sys
import time
import warnings
from pathlib import Path

import torch

from mpo_dist.engine.waits import wait_log
from mpo_dist.run_files import METRICS_FILE

log = logging.getLogger("mpo_dist")


def setup_console_logging(rank: int) -> None:
    """Rank 0 speaks for the job: info and warnings once (every rank decides the same), the other ranks only errors."""
    # DeepSpeed calls a torch collective that torch marks deprecated once per step; it would drown the step log.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.ERROR,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(message)s",
        stream=sys.stdout,
        force=True,
    )
    wait_log.setLevel(logging.WARNING)  # a waiting rank says so whatever its rank (engine/waits.py)


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak memory so far, named for what it measures, since the two are not comparable: on CUDA the
    caching allocator's peak of live tensors (`peak_gpu_allocated_gib`), on CPU the peak resident set size of the
    whole process (`peak_rss_gib`: every tensor, plus the interpreter, libraries, communication buffers and what
    malloc keeps)."""
    if device.type == "cuda":
        return {"peak_gpu_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # ru_maxrss is in KiB


class RunLogger:
    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: bool, progress_bar: bool, total_steps: int, start_step: int):
        self.enabled = enabled
        self.metrics_file = output_dir / METRICS_FILE
        self.writer = None
        self.bar = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True, file=sys.stderr)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}{name}", value, step)
        named = {f"{prefix}{k}": v for k, v in values.items()}
        with open(self.metrics_file, "a", encoding="utf-8") as handle:
            # "time" (seconds since the epoch, when the line was written) lines steps up with outside measurements
            handle.write(json.dumps({"step": step, "time": round(time.time(), 3), **named}) + "\n")
        log.info("step %d %s", step, json.dumps({k: round(v, 6) for k, v in named.items()}))

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def text(self, tag: str, text: str) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()

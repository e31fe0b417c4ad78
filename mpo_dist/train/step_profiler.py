"""`logging.profile_steps`: torch.profiler over a few optimiser steps, one table per rank (docs/configuration.md).

The first step of a run is never profiled: it pays one-off costs (allocator growth, lazy initialisation) that say
nothing about the steps after it, so it serves as the profiler's warm-up. The table ranks operators by their own CPU
time, and lists the trainer's phases (the `mpo_dist/...` ranges of train/trainer.py) with their share of the step.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function, schedule

from mpo_dist.atomic_write import atomic_write_text

PHASE_PREFIX = "mpo_dist/"
PROFILE_DIR = "profile"


def phase(name: str) -> contextlib.AbstractContextManager:
    """A named range of the step (a no-op unless a profiler runs): the phases of the profile table."""
    return record_function(PHASE_PREFIX + name)


class StepProfiler:
    """Profiles the `steps` optimiser steps after the first one this process runs (that one is the warm-up); a run
    that ends sooner reports the steps it profiled."""

    def __init__(self, output_dir: Path, rank: int, steps: int, on_gpu: bool):
        self.report = output_dir / PROFILE_DIR / f"rank{rank}.txt"
        self.profiler = None
        if steps > 0:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
            self.profiler = profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                                    on_trace_ready=self._write_table)

    def running(self) -> contextlib.AbstractContextManager:
        """The profiler's own context, or nothing to enter when profiling is off."""
        return self.profiler if self.profiler is not None else contextlib.nullcontext()

    def step_done(self) -> None:
        if self.profiler is not None:
            self.profiler.step()

    def _write_table(self, finished: profile) -> None:
        averages = finished.key_averages()
        phases = sorted((event for event in averages if event.key.startswith(PHASE_PREFIX)),
                        key=lambda event: -event.cpu_time_total)
        step = next((event for event in phases if event.key == PHASE_PREFIX + "optimizer_step"), None)
        step_us, profiled = (step.cpu_time_total, step.count) if step is not None else (0.0, 0)
        lines = [f"{profiled} optimiser steps profiled. Phases: wall time on this rank's main thread per step, and "
                 "the share of the optimiser step (a phase's time includes the phases inside it):", ""]
        for event in phases:
            share = f"{100.0 * event.cpu_time_total / step_us:7.1f} %" if step_us else ""
            per_step_ms = event.cpu_time_total / 1e3 / max(profiled, 1)
            lines.append(f"{event.key[len(PHASE_PREFIX):]:<20} {per_step_ms:10.1f} ms{share}  ({event.count} calls)")
        table = averages.table(sort_by="self_cpu_time_total", row_limit=40)
        self.report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.report, "\n".join(lines) + "\n\noperators by their own CPU time:\n" + table + "\n")

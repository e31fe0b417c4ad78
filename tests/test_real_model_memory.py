"""The step log's CPU memory figure is what its name says: this process's peak resident set size (the kernel's VmHWM)."""
from __future__ import annotations

from pathlib import Path

import torch

from mpo_dist.train.logger import peak_memory


def vm_hwm_gib() -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20  # kB


def test_cpu_figure_is_named_peak_rss_and_equals_the_kernels_high_water_mark() -> None:
    block = torch.ones(64 * 2**20 // 4)  # touch 64 MiB so the peak is this process's own, not the interpreter's start
    figure = peak_memory(torch.device("cpu"))
    assert list(figure) == ["peak_rss_gib"]
    assert abs(figure["peak_rss_gib"] - vm_hwm_gib()) < 16 / 1024  # same counter, read a moment apart
    assert figure["peak_rss_gib"] >= block.numel() * 4 / 2**30

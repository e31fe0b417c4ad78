"""The learning-rate schedule: linear warmup, then cosine decay to `min_ratio` x lr.

mpo-dist schedules the lr itself instead of using DeepSpeed's WarmupCosineLR, which sets a factor of 0 for the first
two optimiser steps whatever the warmup (it forces >= 2 warmup steps and starts its counter at -1).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable


def warmup_cosine_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """lr multiplier for 0-based optimiser step `step`; never 0 during warmup, 1 at its end, `min_ratio` at the last step."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(warmup_ratio: float, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    warmup_steps = int(round(warmup_ratio * total_steps))
    return partial(warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)

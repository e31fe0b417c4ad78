"""Sampling error of a mean over prompts, and of a paired before/after change, for per-prompt scores such as the
utility log-likelihood (rates have their binomial error in mpo_dist.eval.binomial)."""
from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence


def mean_and_error(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and its standard error s / sqrt(n) (s: sample standard deviation, n - 1); no error for one value."""
    if not values:
        raise ValueError("need at least one value")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def paired_change(before: Mapping[str, float], after: Mapping[str, float]) -> tuple[float, float | None]:
    """Mean of after - before over the keys both have, and its standard error from the per-key differences (a paired
    error: the prompt-to-prompt spread that before and after share cancels)."""
    keys = [key for key in before if key in after]
    if not keys:
        raise ValueError("no key is in both before and after")
    return mean_and_error([after[key] - before[key] for key in keys])

"""Sampling error of a rate measured on n prompts, so a before/after change can be told from noise.

A safety rate from 50 prompts moves in steps of 2 % and has a standard error of up to 7 %; the report prints every rate
with its standard error and metrics.json adds the 95 % Wilson score interval, which stays inside [0, 1] and is sensible
at rates of 0 and 1, where the plain standard error is 0.
"""
from __future__ import annotations

import math

Z_95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def standard_error(successes: int, trials: int) -> float:
    """sqrt(p (1 - p) / n) with p = successes / n: the binomial standard error of the observed rate."""
    _check(successes, trials)
    rate = successes / trials
    return math.sqrt(rate * (1.0 - rate) / trials)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    _check(successes, trials)
    rate = successes / trials
    scale = 1.0 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / scale
    half_width = z * math.sqrt(rate * (1.0 - rate) / trials + z * z / (4 * trials * trials)) / scale
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def difference_standard_error(first: float, second: float) -> float:
    """Standard error of the difference of two independent estimates; for rates of one model before and after on the
    same prompts the outcomes are positively correlated, so this overstates the error (a conservative yardstick)."""
    return math.sqrt(first * first + second * second)


def _check(successes: int, trials: int) -> None:
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")

"""The lr schedule against hand-computed values."""
from __future__ import annotations

import math

import pytest

from mpo_dist.train.schedule import warmup_cosine


def test_warmup_then_cosine_hand_values() -> None:
    factor = warmup_cosine(warmup_ratio=0.2, total_steps=10, min_ratio=0.1)  # W = 2 warmup steps, 7 decay intervals
    assert [factor(s) for s in (0, 1)] == pytest.approx([1 / 3, 2 / 3])
    assert factor(2) == pytest.approx(1.0)
    assert factor(5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 7)))
    assert factor(9) == pytest.approx(0.1)


def test_no_warmup_starts_at_full_lr() -> None:
    factor = warmup_cosine(warmup_ratio=0.0, total_steps=4, min_ratio=0.0)
    assert [factor(s) for s in range(4)] == pytest.approx([1.0, 0.75, 0.25, 0.0])

"""A wait inside a run says what it waits for (engine/waits.py): a line while the body blocks, none after it ended."""
from __future__ import annotations

import logging
import threading

import pytest

from mpo_dist.engine.waits import announced_wait
from slurm_cluster import wait_for


def test_a_blocked_wait_names_what_it_waits_for_until_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    released = threading.Event()
    lines = lambda: [r.getMessage() for r in caplog.records if r.name == "mpo_dist.wait"]  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="mpo_dist.wait"):
        blocked = threading.Thread(target=lambda: _wait(released))
        blocked.start()
        wait_for(lambda: len(lines()) >= 2, 60, "two wait lines")  # every 0.01 s while the body blocks
        released.set()
        blocked.join(timeout=60)
        assert not blocked.is_alive()
        seen = len(lines())
        assert all(line.startswith("still waiting for rank 0 to decide (") and line.endswith(" s)") for line in lines())
        with announced_wait("nothing", every_s=60):
            pass  # a wait that ends at once logs nothing
        assert len(lines()) == seen


def _wait(released: threading.Event) -> None:
    with announced_wait("rank 0 to decide", every_s=0.01):
        released.wait(60)

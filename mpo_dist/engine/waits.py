"""Waits inside a run that say what they wait for: a rank blocked in a start-up collective (the process group forming,
rank 0 deciding about the run directory, rank 0 setting aside or deleting old tags) logs a line every 30 s, on every
rank, instead of sitting silent until the collective timeout. See docs/configuration.md, "Environment variables"."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

WAIT_LOG_EVERY_S = 30.0
# Its own logger, kept at WARNING on every rank (setup_console_logging lets the other ranks log only errors otherwise):
# the rank that waits is the one that can say so.
wait_log = logging.getLogger("mpo_dist.wait")


@contextmanager
def announced_wait(what: str, every_s: float = WAIT_LOG_EVERY_S) -> Iterator[None]:
    """While the body runs, log "still waiting for <what> (N s)" every `every_s` seconds."""
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(every_s):
            wait_log.warning("still waiting for %s (%.0f s)", what, time.monotonic() - started)

    reporter = threading.Thread(target=report, daemon=True, name="announced-wait")
    reporter.start()
    try:
        yield
    finally:
        done.set()
        reporter.join()

"""`check`: the reference cache the pre-flight opened, every shard's bytes checksummed as `train` checks them at its
start (engine/reference_cache.verify_reference_cache), here in this one process with parallel readers."""
from __future__ import annotations

import os

from mpo_dist.check.report import CheckReport
from mpo_dist.engine.reference_cache import ReferenceCache, verify_reference_cache
from mpo_dist.errors import UserError


def check_reference_cache(cache: ReferenceCache | None, report: CheckReport) -> None:
    """Nothing to do without an open cache (none configured, or the pre-flight already reported why it is unusable)."""
    if cache is None:
        return
    try:
        verify_reference_cache(cache, readers=os.cpu_count() or 1)
    except UserError as error:
        report.error(f"engine.reference_cache: {error}")
        return
    size = sum(record.size for record in cache.records.values())
    report.line(f"cache      {cache.directory}: {len(cache.records)} shard(s), {size / 2**20:.1f} MiB, checksums match")

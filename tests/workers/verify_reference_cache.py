"""torchrun worker: open the reference cache CACHE_DIR as training does and verify it collectively, recording which
shards this rank read and the error it raised, if any.

argv: CACHE_DIR OUT_DIR. Writes OUT_DIR/verify_rank<r>.json: {"rank", "read": [shard names], "error": str | None}."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import mpo_dist.engine.reference_cache as reference_cache
from mpo_dist.artefact import read_sealed
from mpo_dist.engine.engines import init_distributed
from mpo_dist.errors import UserError


def main() -> None:
    directory, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    ctx = init_distributed()
    read: list[str] = []
    checked = reference_cache.payload_problems

    def recording(where: Path, records: dict, readers: int = 1) -> list[str]:
        read.extend(sorted(records))
        return checked(where, records, readers)

    reference_cache.payload_problems = recording
    fingerprint = read_sealed(directory / reference_cache.INDEX_FILE)["fingerprint"]
    cache = reference_cache.ReferenceCache.open(directory, fingerprint, torch.device("cpu"))
    error = None
    try:
        reference_cache.verify_reference_cache(cache)
    except UserError as raised:
        error = str(raised)
    (out_dir / f"verify_rank{ctx.rank}.json").write_text(json.dumps({"rank": ctx.rank, "read": read, "error": error}))


if __name__ == "__main__":
    main()

"""What fingerprints and stored-artefact checks cost: the full-content digest of a weight file on its first read and
when remembered (mpo_dist/file_digest.py), the CRC-32 check of a stored payload, the verification of a reference cache
(engine/reference_cache.verify_reference_cache) with 1 and 2 reader threads, and sealing / reading a stored-scores file.

    python benchmarks/fingerprint_cost.py --gib 1 --dir /tmp

"cold" rows first evict the file from the page cache (posix_fadvise DONTNEED after an fsync, no root needed), so the
read comes from the disk; "warm" rows read it from memory, where the cost is the hash alone. Prints a markdown table;
the results go to docs/evaluation.md ("Fingerprints") and docs/scaling.md (the reference cache).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

import mpo_dist.file_digest as file_digest_module  # noqa: E402
from mpo_dist.artefact import payload_problem, read_sealed, write_payload, write_sealed  # noqa: E402
from mpo_dist.engine.reference_cache import (ReferenceCache, term_tensors, verify_reference_cache,  # noqa: E402
                                             write_index, write_shard)
from mpo_dist.engine.reference_terms import ReferenceTerms  # noqa: E402

HIDDEN = 4096  # an 8B model's hidden size: a cached row of pooled hidden states is 2 x 4096 float32 = 32 KiB
SHARDS = 4


def evict(path: Path) -> None:
    """Drop `path`'s pages from the page cache (they are clean after the fsync), so the next read goes to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def write_random(path: Path, size: int) -> None:
    block = os.urandom(16 << 20)
    with open(path, "wb") as handle:
        for offset in range(0, size, len(block)):
            handle.write(block[: min(len(block), size - offset)])
        handle.flush()
        os.fsync(handle.fileno())


def build_cache(directory: Path, size: int) -> ReferenceCache:
    """A reference cache of SHARDS shards, `size` bytes in all, as precompute-ref writes it (pooled hidden states)."""
    directory.mkdir()
    rows = size // SHARDS // (2 * HIDDEN * 4)
    shards = []
    for rank in range(SHARDS):
        terms = ReferenceTerms(anchor_reference_hidden=torch.randn(rows, 2, HIDDEN))
        name, record = write_shard(directory, rank, SHARDS, [term_tensors(terms)])
        shards.append((name, record, [f"r{rank}-{row}/sw" for row in range(rows)]))
    write_index(directory, {"format": 0}, ["anchor_reference_hidden"], shards)
    return ReferenceCache.open(directory, {"format": 0}, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the weight file and of the cache (default 1)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where to write them (default /tmp)")
    args = parser.parse_args()
    size = int(args.gib * 2**30)
    work = Path(tempfile.mkdtemp(prefix="fingerprint_cost.", dir=args.dir))
    rows: list[tuple[str, int, float]] = []
    try:
        weights = work / "model.safetensors"
        write_random(weights, size)
        # a file changed within the racy window is hashed but not remembered: age it past the window first
        time.sleep(file_digest_module.RACY_WINDOW_NS / 1e9 + 0.1)
        for state in ("cold", "warm"):
            os.environ[file_digest_module.CACHE_ENV] = str(work / f"digests-{state}")
            if state == "cold":
                evict(weights)
            rows.append((f"weight digest, first read ({state})", size,
                         timed(lambda: file_digest_module.file_digest(weights))))
        evict(weights)
        rows.append(("weight digest, remembered (any later run; reads no byte)", 0,
                     timed(lambda: file_digest_module.file_digest(weights))))
        record = write_payload(work / "payload.bin", weights.read_bytes())
        for state in ("cold", "warm"):
            if state == "cold":
                evict(work / "payload.bin")
            rows.append((f"crc32 check of a payload file ({state})", size,
                         timed(lambda: payload_problem(work / "payload.bin", record))))
        (work / "payload.bin").unlink()

        cache = build_cache(work / "cache", size)
        cache_bytes = sum(r.size for r in cache.records.values())
        for readers in (1, 2):
            for shard in cache.records:
                evict(cache.directory / shard)
            rows.append((f"reference cache verification, {SHARDS} shards, {readers} reader(s) (cold)", cache_bytes,
                         timed(lambda: verify_reference_cache(cache, readers=readers))))
        rows.append((f"reference cache verification, {SHARDS} shards, 2 readers (warm)", cache_bytes,
                     timed(lambda: verify_reference_cache(cache, readers=2))))

        responses = [{"record_id": f"p{i:05d}", "language": "sw", "prompt": "x" * 200, "response": "y" * 400,
                      "verdict": "safe", "is_safe": True} for i in range(20000)]
        content = {"fingerprint": {"model": {"model.safetensors": "0" * 32}}, "responses": responses}
        scores = work / "scores.json"
        write_seconds = timed(lambda: write_sealed(scores, content))
        rows.append(("stored scores: seal and write (20,000 responses)", scores.stat().st_size, write_seconds))
        rows.append(("stored scores: read and check", scores.stat().st_size, timed(lambda: read_sealed(scores))))
    finally:
        shutil.rmtree(work)

    print(f"| what | size | seconds | GiB/s |\n|---|---:|---:|---:|")
    for name, nbytes, seconds in rows:
        rate = f"{nbytes / 2**30 / seconds:.2f}" if nbytes and seconds > 0 else ""
        shown = f"{nbytes / 2**20:.0f} MiB" if nbytes else ""
        print(f"| {name} | {shown} | {seconds:.3f} | {rate} |")


if __name__ == "__main__":
    main()

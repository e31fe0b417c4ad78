"""What the checkpoint integrity record costs: write a shard-sized file, then time the checksum a save computes over it
(mpo_dist.artefact.file_crc32, CRC-32 in 16 MiB blocks) beside other hashes the standard library
offers, and the plain read that any verification needs. Prints a table; numbers go to docs/checkpoints.md.

    python benchmarks/checkpoint_checksum.py --gib 4 --dir /tmp

The file is read right after it is written, as in a save (page cache warm). A resume on another node reads it cold;
`--drop-caches` (root on Linux) measures that case.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from mpo_dist.artefact import READ_BLOCK, file_crc32


def read_blocks(path: Path):
    with open(path, "rb") as handle:
        while block := handle.read(READ_BLOCK):
            yield block


def read_only(path: Path) -> None:
    for _ in read_blocks(path):
        pass


def adler32(path: Path) -> int:
    value = 1
    for block in read_blocks(path):
        value = zlib.adler32(block, value)
    return value


def hashed(name: str) -> Callable[[Path], str]:
    def run(path: Path) -> str:
        digest = hashlib.new(name)
        for block in read_blocks(path):
            digest.update(block)
        return digest.hexdigest()
    return run


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=4.0, help="size of the test file in GiB (default 4)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where to write it (default /tmp)")
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache before each pass (root)")
    args = parser.parse_args()

    path = args.dir / "checkpoint_checksum.bench"
    size = int(args.gib * 2**30)
    block = os.urandom(READ_BLOCK)
    started = time.perf_counter()
    with open(path, "wb") as handle:
        for offset in range(0, size, READ_BLOCK):
            handle.write(block[: min(READ_BLOCK, size - offset)])
        handle.flush()
        os.fsync(handle.fileno())
    write_s = time.perf_counter() - started
    passes: dict[str, Callable[[Path], object]] = {
        "read only": read_only,
        "crc32 (used)": file_crc32,
        "adler32": adler32,
        "blake2b": hashed("blake2b"),
        "sha256": hashed("sha256"),
    }
    try:
        print(f"file: {size / 2**30:.2f} GiB in {args.dir}; write + fsync {write_s:.2f} s ({size / 2**30 / write_s:.2f} GiB/s)")
        print(f"{'pass':<14} {'seconds':>8} {'GiB/s':>7}")
        for name, run in passes.items():
            if args.drop_caches:
                drop_page_cache()
            started = time.perf_counter()
            run(path)
            seconds = time.perf_counter() - started
            print(f"{name:<14} {seconds:>8.2f} {size / 2**30 / seconds:>7.2f}")
    finally:
        path.unlink()


if __name__ == "__main__":
    main()

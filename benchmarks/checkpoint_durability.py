"""What durable saves and parallel verification cost: write a tag of FILES shards (GIB in all), then time

  1. a save's checksum pass as it runs now (record_files: CRC-32 and fsync of each file, then the marker written
     atomically and durably) against the same pass without the fsyncs, over freshly written (dirty) files each time:
     the difference is what durability adds to a save;
  2. verification of the tag (checkpoint_layout.verify) with 1, 2, 4 reader threads, as `mpo-dist check --resume`,
     `export` and `convert-universal` run it in one process: the rate gives the time for a 1 TB tag.

    python benchmarks/checkpoint_durability.py --gib 2 --files 8 --dir /tmp

Prints a table; the results go to docs/checkpoints.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from mpo_dist.artefact import READ_BLOCK, FileRecord, file_crc32
from mpo_dist.engine.checkpoint_layout import record_files, tag_files, verify, write_marker


def write_tag(tag_dir: Path, files: int, size: int) -> None:
    shutil.rmtree(tag_dir, ignore_errors=True)
    tag_dir.mkdir(parents=True)
    block = os.urandom(READ_BLOCK)
    for index in range(files):
        with open(tag_dir / f"zero_pp_rank_{index}_mp_rank_00_optim_states.pt", "wb") as handle:
            for offset in range(0, size, READ_BLOCK):
                handle.write(block[: min(READ_BLOCK, size - offset)])


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the tag in GiB (default 2)")
    parser.add_argument("--files", type=int, default=8, help="shard files in the tag (default 8)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where to write it (default /tmp)")
    parser.add_argument("--repeats", type=int, default=3, help="passes of each kind; the median is printed")
    args = parser.parse_args()

    tag_dir = args.dir / "step_00000001"
    size = int(args.gib * 2**30) // args.files
    gib = size * args.files / 2**30

    def durable_pass() -> None:
        write_marker(tag_dir, 1, record_files(tag_dir, tag_files(tag_dir)))

    def plain_pass() -> None:
        {name: FileRecord((tag_dir / name).stat().st_size, file_crc32(tag_dir / name)) for name in tag_files(tag_dir)}

    results: dict[str, list[float]] = {"checksum only": [], "checksum + fsync + durable marker": []}
    try:
        for _ in range(args.repeats):
            for name, action in (("checksum only", plain_pass), ("checksum + fsync + durable marker", durable_pass)):
                write_tag(tag_dir, args.files, size)  # fresh dirty pages for every pass, as right after a save
                results[name].append(timed(action))
        write_marker(tag_dir, 1, record_files(tag_dir, tag_files(tag_dir)))
        print(f"tag: {args.files} files, {gib:.2f} GiB in {args.dir}; {os.cpu_count()} CPU cores")
        print(f"{'save pass':<36} {'seconds':>8} {'GiB/s':>7}")
        medians = {name: sorted(times)[len(times) // 2] for name, times in results.items()}
        for name, seconds in medians.items():
            print(f"{name:<36} {seconds:>8.2f} {gib / seconds:>7.2f}")
        added = medians["checksum + fsync + durable marker"] - medians["checksum only"]
        print(f"added by durability: {added:+.2f} s for {gib:.2f} GiB ({added / gib:+.2f} s per GiB)")
        print(f"{'verify (page cache warm)':<36} {'seconds':>8} {'GiB/s':>7} {'1 TB at this rate':>18}")
        for readers in (1, 2, 4):
            seconds = sorted(timed(lambda: verify(tag_dir, readers=readers)) for _ in range(args.repeats))[args.repeats // 2]
            rate = gib / seconds
            print(f"{f'{readers} reader thread(s)':<36} {seconds:>8.2f} {rate:>7.2f} {1024 / rate / 60:>14.1f} min")
    finally:
        shutil.rmtree(tag_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

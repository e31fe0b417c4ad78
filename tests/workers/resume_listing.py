"""torchrun worker: resolve `--resume auto` under ROOT while rank 1's file system shows no checkpoint tags at all (a
stale NFS listing), and report which tag each rank chose and whether rank 1 listed the directory itself.

argv: ROOT OUT_DIR. Writes OUT_DIR/resume_rank<r>.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import mpo_dist.engine.checkpoint_resume as checkpoint_resume
from mpo_dist.engine.engines import init_distributed
from mpo_dist.train.logger import setup_console_logging


def main() -> None:
    root, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    ctx = init_distributed()
    setup_console_logging(ctx.rank)  # as the trainer: rank 0 speaks for the job
    listed: list[Path] = []
    if ctx.rank == 1:
        def stale_listing(directory: Path) -> list[Path]:
            listed.append(directory)
            return []

        checkpoint_resume.resume_candidates = stale_listing
    chosen = checkpoint_resume.resolve_resume("auto", root, world_size=None)
    report = {"rank": ctx.rank, "chosen": chosen.name if chosen else None, "listed_itself": bool(listed)}
    (out_dir / f"resume_rank{ctx.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()

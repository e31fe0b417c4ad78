"""Which checkpoint tag a run resumes from, decided once for the whole job: rank 0 lists the tags and reads the marker,
every rank checksums its share of the recorded bytes, and all get the same answer, even where their file systems show
them different listings (NFS attribute caches). `mpo-dist check` runs the same code in one process with parallel
readers. Engine layer: the trainer, `check`, `export` and `convert-universal` share it. See docs/checkpoints.md.
"""
from __future__ import annotations

import logging
from pathlib import Path

from mpo_dist.engine.checkpoint_layout import (
    LATEST_FILE,
    CheckpointError,
    Marker,
    describe,
    is_complete,
    looks_like_tag,
    marker_or_problem,
    saved_world_size,
    tag_dirs,
    tag_for,
    verify,
    warn_unrecorded,
)
from mpo_dist.engine.engines import broadcast_from_rank0, gather_objects, rank_and_world

log = logging.getLogger("mpo_dist")


def verified_problems(tag_dir: Path, readers: int = 1, checksums: bool = True) -> tuple[list[str], Marker | None]:
    """Collective: the problems of `tag_dir` and its marker (None if it has no readable one). Rank 0 reads the marker
    and hands it to every rank, so all check against one record; each rank checksums its share of the recorded bytes
    with `readers` threads; every rank gets every problem. `checksums=False` stops at the marker (`check
    --skip-tag-checksums` on a login node, when the run's ranks will read the tag anyway)."""
    rank, world_size = rank_and_world()
    marker = broadcast_from_rank0(marker_or_problem(tag_dir) if rank == 0 else None)
    if isinstance(marker, str):
        return [marker], None
    if not checksums:
        return [], marker
    checks = gather_objects(verify(tag_dir, rank=rank, world_size=world_size, readers=readers, marker=marker))
    return list(dict.fromkeys(p for check in checks for p in check.problems)), marker


def resume_candidates(root: Path) -> list[Path]:
    """Tags with a COMPLETE marker, newest first. `latest` is not consulted: a crash between the marker and the pointer
    leaves a newer complete tag than the one it names (the pointer is kept for DeepSpeed's own tools)."""
    return [d for d in reversed(tag_dirs(root)) if is_complete(d)]


def resolve_resume(resume: str, root: Path, *, world_size: int | None = None, readers: int = 1,
                   line_origin: Path | None = None, checksums: bool = True) -> Path | None:
    """`none` -> None; `auto` -> the newest intact checkpoint under root, else `line_origin` (the tag outside root the
    current line started from: engine/run_directory.py), else None; damaged ones are skipped with a warning, an error
    if all are damaged; else an explicit tag dir of any name, which must be intact. A sharded tag must have been
    written by `world_size` ranks (None: not checked). Collective when a process group exists: rank 0 lists the
    directory and decides, every rank verifies the same tag and gets the same answer."""
    if resume == "none":
        return None
    if resume == "auto":
        listed = None
        if rank_and_world()[0] == 0:  # one listing for the job: other ranks' file systems may show other tags
            listed = [str(d) for d in resume_candidates(root) + ([line_origin] if line_origin is not None else [])]
        paths = broadcast_from_rank0(listed)
        tag_dir, marker = _newest_intact(root, [Path(p) for p in paths], readers, checksums)
    else:
        tag_dir = Path(resume)
        refusal = broadcast_from_rank0(_explicit_tag_problem(tag_dir) if rank_and_world()[0] == 0 else None)
        if refusal:
            raise CheckpointError(refusal)
        problems, marker = verified_problems(tag_dir, readers, checksums)
        if problems:
            raise CheckpointError(f"checkpoint.resume: {tag_dir} is damaged: {describe(problems)}; resume from an "
                                  "earlier tag, or with --resume auto, which skips damaged tags")
    if tag_dir is None or marker is None:
        return None
    if marker.files is None:
        warn_unrecorded(tag_dir)
    saved = saved_world_size(marker, tag_dir)
    if world_size is not None and saved is not None and saved != world_size:
        raise CheckpointError(f"checkpoint {tag_dir} was written by {saved} ranks and this run has {world_size}: "
                              f"convert it with `mpo-dist convert-universal {tag_dir} OUT_DIR` and resume from "
                              f"OUT_DIR/{tag_dir.name}, or resume with {saved} ranks")
    return tag_dir


def _newest_intact(root: Path, candidates: list[Path], readers: int,
                   checksums: bool) -> tuple[Path | None, Marker | None]:
    damaged = []
    for tag_dir in candidates:
        problems, marker = verified_problems(tag_dir, readers, checksums)
        if not problems:
            return tag_dir, marker
        log.warning("skipping damaged checkpoint %s: %s", tag_dir, describe(problems))
        damaged.append(f"{tag_dir.name if tag_dir.parent == root else tag_dir}: {describe(problems)}")
    if damaged:
        raise CheckpointError(f"checkpoint.resume=auto: no intact checkpoint in {root}; found {'; '.join(damaged)}. "
                              "Restore the files from a copy, or move the damaged tags away and start from scratch "
                              "with --resume none")
    return None, None


def _explicit_tag_problem(path: Path) -> str | None:
    """Why an explicit --resume PATH cannot be a tag to resume from (before reading any of it), or None."""
    if not path.is_dir():
        return (f"checkpoint.resume: {path} is not a directory; expected a checkpoint tag directory such as "
                f"<output_dir>/checkpoints/{tag_for(200)}, `auto` or `none`")
    if not is_complete(path):
        return _incomplete_problem(path)
    return None


def _incomplete_problem(path: Path) -> str:
    """What a directory without a COMPLETE marker is instead of a resumable tag."""
    complete = [d.name for d in tag_dirs(path) if is_complete(d)]
    if complete:
        return (f"checkpoint.resume: {path} is a checkpoint folder, not a checkpoint tag; complete tags in it: "
                f"{', '.join(complete)}. Pass one of them (e.g. --resume {path / complete[-1]}) or "
                "--resume auto for the newest intact one")
    if tag_dirs(path) or (path / LATEST_FILE).is_file():
        return (f"checkpoint.resume: {path} is a checkpoint folder, not a checkpoint tag, and holds no "
                "complete tag; --resume auto starts from scratch when there is none")
    if not looks_like_tag(path):
        return (f"checkpoint.resume: {path} is not a checkpoint tag directory (no COMPLETE marker and no "
                f"DeepSpeed *_model_states.pt); expected e.g. <output_dir>/checkpoints/{tag_for(200)}")
    return (f"checkpoint.resume: {path} has no COMPLETE marker; it was not fully written (crash or "
            "preemption during the save): resume from an earlier tag or with --resume auto")

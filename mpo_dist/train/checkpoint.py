"""Checkpoints that cannot be half-written and prove themselves at resume.

A save: every rank writes its files and checksums them (in parallel, while they are still in the page cache); rank 0
gathers the records and writes them into the COMPLETE marker, last and atomically; then it replaces `latest`
atomically and prunes old tags. A crash at any point leaves the previous complete checkpoint as the one `--resume auto`
picks; a save that fails for lack of space (or any other storage error) is discarded on every rank and stops the run
with one CheckpointError. At resume the ranks verify the chosen tag against its record before any engine is built, each
rank a share of the files, and `auto` falls back to the newest intact tag. See docs/checkpoints.md.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mpo_dist.engine.checkpoint_layout import (
    LATEST_FILE,
    CheckpointError,
    FileRecord,
    describe,
    is_complete,
    looks_like_tag,
    owner_rank,
    record_files,
    tag_dirs,
    tag_files,
    tag_for,
    verify,
    warn_unrecorded,
    write_atomically,
    write_marker,
)
from mpo_dist.engine.engines import PolicyEngine, barrier

log = logging.getLogger("mpo_dist")


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _gather(value: object) -> list:
    """`value` of every rank, on every rank (a list of one outside a process group)."""
    if not dist.is_initialized():
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def verified_problems(tag_dir: Path) -> tuple[list[str], bool]:
    """Collective: the problems of `tag_dir` (each rank checks a share of its files; every rank gets all problems),
    and whether the marker held a file record."""
    rank, world_size = _rank_and_world()
    checks = _gather(verify(tag_dir, rank=rank, world_size=world_size))
    problems = dict.fromkeys(p for check in checks for p in check.problems)  # an unreadable marker: once, not per rank
    return list(problems), checks[0].recorded


def resume_candidates(root: Path) -> list[Path]:
    """Tags with a COMPLETE marker, newest first. `latest` is not consulted: a crash between the marker and the pointer
    leaves a newer complete tag than the one it names (the pointer is kept for DeepSpeed's own tools)."""
    return [d for d in reversed(tag_dirs(root)) if is_complete(d)]


def resolve_resume(resume: str, root: Path) -> Path | None:
    """`none` -> None; `auto` -> the newest intact checkpoint under root (None if there is no complete one; damaged ones
    are skipped with a warning, an error if all are damaged); else an explicit tag dir, which must be intact.
    Collective when a process group exists (the verification is shared among the ranks)."""
    if resume == "none":
        return None
    if resume == "auto":
        return _newest_intact(root)
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint.resume: {path} is not a directory; expected a checkpoint tag directory such as "
                              f"<output_dir>/checkpoints/{tag_for(200)}, `auto` or `none`")
    if not is_complete(path):
        _refuse_incomplete(path)
    problems, recorded = verified_problems(path)
    if problems:
        raise CheckpointError(f"checkpoint.resume: {path} is damaged: {describe(problems)}; resume from an earlier tag, "
                              "or with --resume auto, which skips damaged tags")
    if not recorded:
        warn_unrecorded(path)
    return path


def _newest_intact(root: Path) -> Path | None:
    damaged = []
    for tag_dir in resume_candidates(root):
        problems, recorded = verified_problems(tag_dir)
        if not problems:
            if not recorded:
                warn_unrecorded(tag_dir)
            return tag_dir
        log.warning("skipping damaged checkpoint %s: %s", tag_dir, describe(problems))
        damaged.append(f"{tag_dir.name}: {describe(problems)}")
    if damaged:
        raise CheckpointError(f"checkpoint.resume=auto: no intact checkpoint in {root}; found {'; '.join(damaged)}. "
                              "Restore the files from a copy, or move the damaged tags away and start from scratch "
                              "with --resume none")
    return None


def _refuse_incomplete(path: Path) -> None:
    """The error for an explicit --resume at a directory without a COMPLETE marker, saying what it is instead."""
    complete = [d.name for d in tag_dirs(path) if is_complete(d)]
    if complete:
        raise CheckpointError(f"checkpoint.resume: {path} is a checkpoint folder, not a checkpoint tag; complete tags in it: "
                              f"{', '.join(complete)}. Pass one of them (e.g. --resume {path / complete[-1]}) or "
                              "--resume auto for the newest intact one")
    if tag_dirs(path) or (path / LATEST_FILE).is_file():
        raise CheckpointError(f"checkpoint.resume: {path} is a checkpoint folder, not a checkpoint tag, and holds no "
                              "complete tag; --resume auto starts from scratch when there is none")
    if not looks_like_tag(path):
        raise CheckpointError(f"checkpoint.resume: {path} is not a checkpoint tag directory (no COMPLETE marker and no "
                              f"DeepSpeed *_model_states.pt); expected e.g. <output_dir>/checkpoints/{tag_for(200)}")
    raise CheckpointError(f"checkpoint.resume: {path} has no COMPLETE marker; it was not fully written (crash or "
                          "preemption during the save): resume from an earlier tag or with --resume auto")


# How torch.save's zip writer words a failed write (it raises RuntimeError, not OSError): its own message, or the
# "unexpected pos" of the end-of-file record after an iostream error.
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "file write failed", "iostream error", "unexpected pos")


def _storage_failure(error: Exception) -> str:
    """The one-line reason of a failed write, or re-raise `error` if it is not a storage problem (then it is a bug)."""
    text = f"{error} {error.__context__ or ''}"
    if isinstance(error, OSError) or any(fragment in text for fragment in TORCH_WRITE_FAILURES):
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise error


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int, rank: int):
        self.root = root
        self.keep_last = keep_last
        self.rank = rank

    def save(self, engine: PolicyEngine, step: int, client_state: dict) -> Path:
        """Collective. Raises CheckpointError on every rank (after removing the partial tag) if any rank could not write."""
        tag = tag_for(step)
        tag_dir = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():  # a save of this step that crashed before its marker
                shutil.rmtree(tag_dir)
        barrier()
        failure, records = self._write_rank_files(engine, tag_dir, client_state)
        reports = _gather((failure, records))
        failures = {rank: failure for rank, (failure, _) in enumerate(reports) if failure}
        if not failures and self.rank == 0:
            merged = {name: record for _, rank_records in reports for name, record in rank_records.items()}
            try:
                write_marker(tag_dir, step, merged)
                write_atomically(self.root / LATEST_FILE, tag)
            except OSError as error:
                failures[0] = _storage_failure(error)
        failures = _gather(failures)[0]  # rank 0's view, which has every rank's
        if failures:
            self._discard(tag_dir, failures)
        if self.rank == 0:
            self._prune()
        barrier()
        return tag_dir

    def _write_rank_files(self, engine: PolicyEngine, tag_dir: Path,
                          client_state: dict) -> tuple[str | None, dict[str, FileRecord]]:
        """This rank's part of a save: DeepSpeed's files, its RNG state, and the size + checksum of each file it wrote."""
        try:
            engine.save(self.root, tag_dir.name, client_state)
        except (OSError, RuntimeError) as error:  # engine.save finished its collectives with the other ranks
            return _storage_failure(error), {}
        try:
            torch.save(rng_state(), tag_dir / f"rng_rank{self.rank}.pt")
            return None, record_files(tag_dir, [n for n in tag_files(tag_dir) if owner_rank(n) == self.rank])
        except (OSError, RuntimeError) as error:
            return _storage_failure(error), {}

    def _discard(self, tag_dir: Path, failures: dict[int, str]) -> None:
        if self.rank == 0:
            shutil.rmtree(tag_dir, ignore_errors=True)  # frees the space; without its marker it never counted
        barrier()
        latest = self.root / LATEST_FILE
        previous = self.root / latest.read_text().strip() if latest.is_file() else None
        space = f"{_gib(shutil.disk_usage(self.root).free)} free there now"
        if previous is not None:
            space += f", the previous checkpoint takes {_gib(sum(p.stat().st_size for p in previous.rglob('*') if p.is_file()))}"
        by_reason: dict[str, list[str]] = {}
        for rank, reason in sorted(failures.items()):
            by_reason.setdefault(reason, []).append(str(rank))
        reasons = "; ".join(f"rank{'s' * (len(r) > 1)} {', '.join(r)}: {reason}" for reason, r in by_reason.items())
        raise CheckpointError(f"could not write checkpoint {tag_dir} ({reasons}); {space}. The partial save "
                              f"was removed and {previous.name if previous else 'no earlier checkpoint'} stays the newest "
                              "(`latest`). Free space (or set train.output_dir on a larger file system) and resume with "
                              "--resume auto")

    def load(self, engine: PolicyEngine, tag_dir: Path) -> dict:
        client_state = engine.load(tag_dir.parent, tag_dir.name)
        rng_file = tag_dir / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():  # absent when resuming at a larger world size: that rank starts from the seeded state
            restore_rng_state(torch.load(rng_file, weights_only=False))
        return client_state

    def _prune(self) -> None:
        complete = [d for d in tag_dirs(self.root) if is_complete(d)]
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

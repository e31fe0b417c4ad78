"""Checkpoints that cannot be half-written, are on the disk before anything points at them, and are kept by one rule.

A save: every rank writes its files, then checksums and fsyncs each (while it is still in the page cache); rank 0
gathers the records and writes them into the COMPLETE marker, last, atomically and durably; then it replaces `latest`
the same way and prunes old tags. A crash at any point leaves the previous complete checkpoint as the one `--resume
auto` picks; a save that fails for lack of space (or any other storage error) is discarded on every rank and stops the
run with one CheckpointError. Which tag a run resumes from is decided in engine/checkpoint_resume.py; the tags of the
run directory outside a save (its line, set-aside lines, half-written tags) are engine/run_directory.py's. See
docs/checkpoints.md.
"""
from __future__ import annotations

import logging
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from mpo_dist.atomic_write import atomic_write_text, fsync_directory
from mpo_dist.engine.checkpoint_layout import (
    LATEST_FILE,
    CheckpointError,
    FileRecord,
    is_complete,
    owner_rank,
    record_files,
    step_of,
    tag_dirs,
    tag_files,
    tag_for,
    write_marker,
)
from mpo_dist.engine.engines import PolicyEngine, barrier, gather_objects
from mpo_dist.engine.run_directory import delete_tree, gib, tree_size
from mpo_dist.engine.tag_lifecycle import pruned_after_save

log = logging.getLogger("mpo_dist")


def rng_state() -> dict:
    """Every RNG state as tensors, lists and numbers only, so it loads with torch.load(weights_only=True): a checkpoint
    file of ours never runs code when it is read (DeepSpeed's own shards are pickles: docs/checkpoints.md)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# How torch.save's zip writer words a failed write (it raises RuntimeError, not OSError): its own message, or the
# "unexpected pos" of the end-of-file record after an iostream error.
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "file write failed", "iostream error", "unexpected pos")


def _storage_failure(error: Exception) -> str:
    """The one-line reason of a failed write, or re-raise `error` if it is not a storage problem (then it is a bug)."""
    text = f"{error} {error.__context__ or ''}"
    if isinstance(error, OSError) or any(fragment in text for fragment in TORCH_WRITE_FAILURES):
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise error


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
        reports = gather_objects((failure, records))
        failures = {rank: failure for rank, (failure, _) in enumerate(reports) if failure}
        if not failures and self.rank == 0:
            # every rank fsynced its files while recording them; the marker, then `latest`, each durable before the next
            merged = {name: record for _, rank_records in reports for name, record in rank_records.items()}
            try:
                fsync_directory(tag_dir)
                write_marker(tag_dir, step, merged)
                atomic_write_text(self.root / LATEST_FILE, tag)
            except OSError as error:
                failures[0] = _storage_failure(error)
        failures = gather_objects(failures)[0]  # rank 0's view, which has every rank's
        if failures:
            self._discard(tag_dir, failures)
        if self.rank == 0:
            self._prune(step)
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
        space = f"{gib(shutil.disk_usage(self.root).free)} free there now"
        if previous is not None:
            space += f", the previous checkpoint takes {gib(tree_size(previous))}"
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
            try:
                state = torch.load(rng_file, weights_only=True)
            except pickle.UnpicklingError:  # numpy arrays inside: written before 2026-12-07, or not by mpo-dist
                log.warning("%s holds more than tensors and numbers, so it is not unpickled (that could run code): "
                            "this rank continues from the seeded RNG state", rng_file)
                return client_state
            restore_rng_state(state)
        return client_state

    def _prune(self, saved_step: int) -> None:
        complete = {step_of(d.name): d for d in tag_dirs(self.root) if is_complete(d)}
        for step in pruned_after_save(list(complete), saved_step, self.keep_last):
            delete_tree(complete[step])

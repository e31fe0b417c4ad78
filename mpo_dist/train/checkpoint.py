"""Checkpoints that cannot be half-written: a tag counts only once every rank has written and rank 0 has put a
COMPLETE marker in it; the `latest` pointer is replaced atomically after that, and old tags are pruned last.

A crash during a save therefore leaves the previous complete checkpoint as the one `--resume auto` picks.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from mpo_dist.engine.engines import PolicyEngine, barrier

COMPLETE_MARKER = "COMPLETE"
LATEST_FILE = "latest"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.split("_")[-1])


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / COMPLETE_MARKER).is_file()


def newest_complete(root: Path) -> Path | None:
    """The checkpoint `latest` names if it is complete, else the newest complete tag directory."""
    latest = root / LATEST_FILE
    if latest.is_file():
        candidate = root / latest.read_text().strip()
        if is_complete(candidate):
            return candidate
    complete = sorted((d for d in root.glob("step_*") if d.is_dir() and is_complete(d)), key=lambda d: step_of(d.name))
    return complete[-1] if complete else None


def resolve_resume(resume: str, root: Path) -> Path | None:
    """`none` -> None; `auto` -> newest complete checkpoint under root (None if there is none); else an explicit tag dir."""
    if resume == "none":
        return None
    if resume == "auto":
        return newest_complete(root) if root.is_dir() else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint.resume: {path} is not a directory")
    if not is_complete(path):
        raise ValueError(f"checkpoint.resume: {path} has no {COMPLETE_MARKER} marker; it was not fully written")
    return path


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int, rank: int):
        self.root = root
        self.keep_last = keep_last
        self.rank = rank

    def save(self, engine: PolicyEngine, step: int, client_state: dict) -> Path:
        tag = tag_for(step)
        tag_dir = self.root / tag
        if self.rank == 0 and tag_dir.exists():  # a save of this step that crashed before its marker
            shutil.rmtree(tag_dir)
        barrier()
        engine.save(self.root, tag, client_state)
        torch.save(rng_state(), tag_dir / f"rng_rank{self.rank}.pt")
        barrier()
        if self.rank == 0:
            (tag_dir / COMPLETE_MARKER).write_text(f"{step}\n")
            _write_atomically(self.root / LATEST_FILE, tag)
            self._prune()
        barrier()
        return tag_dir

    def load(self, engine: PolicyEngine, tag_dir: Path) -> dict:
        client_state = engine.load(tag_dir.parent, tag_dir.name)
        rng_file = tag_dir / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():  # absent when resuming at a larger world size: that rank starts from the seeded state
            restore_rng_state(torch.load(rng_file, weights_only=False))
        return client_state

    def _prune(self) -> None:
        complete = sorted((d for d in self.root.glob("step_*") if is_complete(d)), key=lambda d: step_of(d.name))
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

"""Writes that are whole or absent, and on the disk before anything points at them.

Every file and directory mpo-dist publishes goes through here: it is written under a temporary name, its data is
fsynced, it is renamed into place, and the directory holding it is fsynced, so a crash (or a node losing power) leaves
either the old version or the new one, never a prefix, and never a pointer (`latest`, a marker) to data still in a
page cache. A module of the base layer: the checkpoint code, the reference cache and the exports all use it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush `path`'s data to the disk (a read-only descriptor is enough on Linux)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(path: Path) -> None:
    """Make the names in `path` (a file created or renamed there) durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def publish_directory(staging: Path, out_dir: Path) -> None:
    """Move a fully written `staging` directory to `out_dir` (replacing one that exists): every file under it is
    fsynced first, the rename is made durable after."""
    for path in staging.rglob("*"):
        if path.is_file():
            fsync_file(path)
    for directory in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
        fsync_directory(directory)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    fsync_directory(out_dir.parent)

"""The SHA-256 of every byte of a file, remembered beside the file's identity, so a second run over unchanged files
(a 140 GB checkpoint) does not read them again.

A remembered digest is used only while the file's identity (resolved path, device, inode, size, modification and
status-change times in nanoseconds) is the one recorded when it was hashed. Every write through the file system moves
the status-change time (ctime), which no user tool can set back (`touch -d`, `cp -p` and `rsync -t` restore the
modification time, not it), so an edit that keeps the size and the mtime still misses the cache. A file changed less
than RACY_WINDOW_NS before it was hashed is not remembered: on a file system with coarse timestamps a second change
inside the same tick would keep every field. What the cache cannot see (docs/evaluation.md, "Fingerprints"): bytes
changed beneath the file system (a failing disk, a write to the block device), and a file changed on another host
while this one's NFS attribute cache still shows the old times. Delete the cache directory to read every file again.

Entries are sealed records (mpo_dist/artefact.py), one per file, named by a hash of its path, device and inode, in
file-digests/ under mpo-dist's cache root: $MPO_DIST_CACHE, else $XDG_CACHE_HOME/mpo-dist, else ~/.cache/mpo-dist
(the imported models live there too). A damaged entry is hashed again; a cache that cannot be written only costs the
reading.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mpo_dist.artefact import READ_BLOCK, DamagedArtefactError, read_sealed, write_sealed

log = logging.getLogger("mpo_dist")

CACHE_ENV = "MPO_DIST_CACHE"  # mpo-dist's cache root
DIGESTS_DIR = "file-digests"
CACHED_FROM_BYTES = 16 << 20  # smaller files (configs, tokenizers, most data) are hashed each time: it costs less
RACY_WINDOW_NS = 2_000_000_000  # coarser than the timestamps of any file system mpo-dist runs on (FAT: 2 s)
DIGEST_HEX = 32  # 128 bits of the SHA-256


@dataclass(frozen=True)
class FileIdentity:
    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def identity_of(path: Path) -> FileIdentity:
    stat = path.stat()
    return FileIdentity(str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def sha256_file(path: Path) -> str:
    """SHA-256 of every byte, read in blocks (hashlib releases the GIL, so threads hash files in parallel)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()[:DIGEST_HEX]


def cache_root() -> Path:
    """mpo-dist's cache root: the remembered digests and the imported models (models/gguf_import.py)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mpo-dist"


def cache_directory() -> Path:
    return cache_root() / DIGESTS_DIR


def entry_name(identity: FileIdentity) -> str:
    """One entry per file as this host sees it: nodes that share a home directory but number an NFS mount's device
    differently keep one entry each instead of overwriting each other's at every run."""
    return hashlib.sha256(f"{identity.path}\0{identity.device}\0{identity.inode}".encode()).hexdigest()[:DIGEST_HEX]


def file_digest(path: Path) -> str:
    """The file's content digest: remembered for a file of CACHED_FROM_BYTES or more whose identity is unchanged,
    computed (and remembered where it can be) otherwise."""
    path = path.resolve()
    identity = identity_of(path)
    if identity.size < CACHED_FROM_BYTES:
        return sha256_file(path)
    entry = cache_directory() / f"{entry_name(identity)}.json"
    remembered = _remembered(entry, identity)
    if remembered is not None:
        return remembered
    digest = sha256_file(path)
    settled = time.time_ns() - max(identity.mtime_ns, identity.ctime_ns) > RACY_WINDOW_NS
    if settled and identity_of(path) == identity:  # unchanged while it was read
        _remember(entry, identity, digest)
    return digest


def _remembered(entry: Path, identity: FileIdentity) -> str | None:
    if not entry.is_file():
        return None
    try:
        content = read_sealed(entry)
    except DamagedArtefactError as error:
        log.warning("file digest cache: %s; hashing the file again", error)
        return None
    return content.get("sha256") if content.get("identity") == asdict(identity) else None


def _remember(entry: Path, identity: FileIdentity, digest: str) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_sealed(entry, {"identity": asdict(identity), "sha256": digest})
    except OSError as error:
        log.warning("file digest cache: cannot write %s (%s); files are read again on every run", entry,
                    error.strerror or error)

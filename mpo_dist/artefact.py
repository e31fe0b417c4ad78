"""Files mpo-dist writes and later trusts, written with a checksum of what they hold and read back only through a check
of it, so that one damaged on the disk or edited by hand is refused by name instead of believed.

Two kinds, both published through the one durable write (mpo_dist/atomic_write.py):
- a *sealed record*, a JSON file whose content carries its own CRC-32 (`write_sealed`, `read_sealed`): stored scores,
  the reference cache's index. The checksum covers the content as JSON values, taken in one canonical form, so a
  changed digit is caught and a change of layout (indentation, `1.50` for `1.5`) is not a change;
- a *payload file*, binary data recorded by size and CRC-32 (`write_payload`, `FileRecord`) in the record that lists
  it and is written after it: the reference cache's shards (in its sealed index) and every file of a checkpoint tag
  (in its COMPLETE marker, engine/checkpoint_layout.py). `payload_problem` compares a file with its record.

CRC-32 (zlib, about 2 GiB/s per core from the page cache on the 2-core test machine; benchmarks/fingerprint_cost.py)
finds every change of up to 32 consecutive bits, so every replaced byte and every single bit flip, and any other
change but one in 2^32. It guards against damage and hand edits, not forgery: whoever can edit a file can recompute its
checksum. Base layer: any package may use it.
"""
from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpo_dist.atomic_write import atomic_write_bytes, atomic_write_text
from mpo_dist.errors import UserError

CHECKSUM = "crc32"
READ_BLOCK = 16 << 20


class DamagedArtefactError(UserError):
    """A stored file that cannot be read, is cut short, or fails its checksum; the message names the file."""


@dataclass(frozen=True)
class FileRecord:
    """What a payload file held when it was written."""

    size: int
    crc32: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, CHECKSUM: self.crc32}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> FileRecord:
        return cls(int(entry["size"]), str(entry[CHECKSUM]))


def crc32_hex(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def file_crc32(path: Path, *, fsync: bool = False) -> str:
    """CRC-32 of a file, read in blocks (zlib releases the GIL while it checksums, so threads read in parallel);
    `fsync` also flushes its data to the disk (a checkpoint save's checksum pass, while the pages are hot)."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(READ_BLOCK):
            crc = zlib.crc32(block, crc)
        if fsync:
            os.fsync(handle.fileno())
    return f"{crc:08x}"


def canonical_json(content: Any) -> bytes:
    """The one byte form a JSON value is checksummed in: sorted keys, no spaces. Python writes back every float it
    read unchanged (shortest round-trip repr), so the form of a record read from disk equals the form it was written
    from."""
    return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_sealed(path: Path, content: dict[str, Any], indent: int | None = None) -> None:
    """Write `content` with its checksum, whole or not at all."""
    record = {"checksum": CHECKSUM, CHECKSUM: crc32_hex(canonical_json(content)), "content": content}
    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=indent) + "\n")


def read_sealed(path: Path) -> dict[str, Any]:
    """The content of a sealed record after its checksum is checked; DamagedArtefactError, naming the file and what
    is wrong with it, otherwise."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DamagedArtefactError(f"{path} cannot be read ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise DamagedArtefactError(f"{path} is not UTF-8 text (byte {error.start}): damaged") from error
    except json.JSONDecodeError as error:
        raise DamagedArtefactError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}): damaged "
                                   "or cut short") from error
    if not (isinstance(record, dict) and record.get("checksum") == CHECKSUM and isinstance(record.get(CHECKSUM), str)
            and isinstance(record.get("content"), dict)):
        raise DamagedArtefactError(f"{path} carries no {CHECKSUM} of its content: written by an older mpo-dist, or not "
                                   "one of its files")
    actual = crc32_hex(canonical_json(record["content"]))
    if actual != record[CHECKSUM]:
        raise DamagedArtefactError(f"{path} has {CHECKSUM} {actual}, written as {record[CHECKSUM]}: edited or damaged "
                                   "since it was written")
    return record["content"]


def write_payload(path: Path, data: bytes) -> FileRecord:
    """Write `data` whole or not at all; its record is computed from the bytes in memory, not read back."""
    atomic_write_bytes(path, data)
    return FileRecord(len(data), crc32_hex(data))


def payload_problem(directory: Path, name: str, expected: FileRecord) -> str | None:
    """None when `directory / name` has the recorded size and checksum; else one line naming the file (`name`, a path
    relative to `directory`) and the difference."""
    path = directory / name
    try:
        size = path.stat().st_size
        actual = file_crc32(path) if size == expected.size else None
    except FileNotFoundError:
        return f"{name} is missing (written with {expected.size} bytes)"
    except OSError as error:  # a failing disk: reported like any other damage, so a collective caller still joins
        return f"{name} cannot be read ({error.strerror or error})"
    if size != expected.size:
        return f"{name} is {size} bytes, written with {expected.size} (cut short or still being copied)"
    if actual != expected.crc32:
        return f"{name} has {CHECKSUM} {actual}, written with {expected.crc32} (damaged or edited)"
    return None


def payload_problems(directory: Path, records: dict[str, FileRecord], readers: int = 1) -> list[str]:
    """`payload_problem` of each named file under `directory`, in name order, read by `readers` threads."""
    names = sorted(records)
    with ThreadPoolExecutor(max_workers=max(readers, 1)) as pool:
        found = pool.map(lambda name: payload_problem(directory, name, records[name]), names)
        return [problem for problem in found if problem]

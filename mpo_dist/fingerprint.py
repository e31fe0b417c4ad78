"""Readable fingerprints of the files a stored result depends on (model weights, tokenizer, data), so a stale result
is refused or recomputed with what differs named, not silently reused: the reference cache (docs/scaling.md) and the
stored scores of `mpo-dist eval` (docs/evaluation.md)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "added_tokens", "vocab", "merges", "chat_template")
SAMPLED_BYTES = 1 << 20  # weight files: size + first and last MiB (a 70B checkpoint is too large to hash at job start)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def sampled_digest(path: Path) -> str:
    """Size plus a hash of the first and last MiB: a safetensors header (names, shapes, offsets) and real weight bytes,
    cheap even for 140 GB of shards, and unchanged by copying the model to another file system."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(SAMPLED_BYTES))
        if size > SAMPLED_BYTES:
            handle.seek(max(size - SAMPLED_BYTES, SAMPLED_BYTES))
            digest.update(handle.read())
    return f"{size}:{digest.hexdigest()[:32]}"


def data_digest(path: Path) -> str:
    """A data file's hash; a `datasets` saved directory hashes every file, in a stable order."""
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path)}\0{sha256_file(file)}\0".encode())
        return digest.hexdigest()[:32]
    return sha256_file(path)


def model_fingerprint(model_dir: Path, tokenizer_dir: Path | None = None) -> dict[str, dict[str, str]]:
    """{"model": config.json hash and each weight file's sampled digest, "tokenizer": each tokenizer file's hash}."""
    tokenizer_dir = tokenizer_dir or model_dir
    model = {"config.json": sha256_file(model_dir / "config.json")}
    model |= {p.name: sampled_digest(p) for p in sorted(model_dir.iterdir()) if p.name.endswith(WEIGHT_SUFFIXES)}
    tokenizer = {p.name: sha256_file(p) for p in sorted(tokenizer_dir.iterdir())
                 if p.is_file() and p.name.startswith(TOKENIZER_PREFIXES)}
    return {"model": model, "tokenizer": tokenizer}


def fingerprint_differences(stored: Any, current: Any, path: str = "", stored_as: str = "cached",
                            place: str = "the cache") -> list[str]:
    """One line per differing leaf, e.g. "encoding.max_length: cached 96, now 80"."""
    if isinstance(stored, dict) and isinstance(current, dict):
        lines = []
        for key in sorted(set(stored) | set(current)):
            where = f"{path}.{key}" if path else key
            if key not in current:
                lines.append(f"{where}: in {place}, absent now")
            elif key not in stored:
                lines.append(f"{where}: absent in {place}, now {json.dumps(current[key])}")
            else:
                lines += fingerprint_differences(stored[key], current[key], where, stored_as, place)
        return lines
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        return [line for i, (a, b) in enumerate(zip(stored, current))
                for line in fingerprint_differences(a, b, f"{path}[{i}]", stored_as, place)]
    return [] if stored == current else [f"{path}: {stored_as} {json.dumps(stored)}, now {json.dumps(current)}"]

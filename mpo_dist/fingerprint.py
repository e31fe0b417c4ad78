"""Readable fingerprints of everything a stored result depends on (model files, tokenizer, data, the software and the
code that computed it), so a stale result is refused or recomputed with every difference named, not silently reused:
the reference cache (docs/scaling.md) and the stored scores of `mpo-dist eval` (docs/evaluation.md, "Fingerprints").

Every file is known by the SHA-256 of all its bytes (mpo_dist/file_digest.py remembers those of large files, so a
second run over an unchanged 140 GB checkpoint reads nothing). Code is known by its syntax tree without docstrings,
so an edited comment or docstring keeps the fingerprint and any change to what the code does changes it.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from mpo_dist.file_digest import DIGEST_HEX, file_digest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "added_tokens", "vocab", "merges", "chat_template")
MODEL_FILES = ("config.json", "generation_config.json")  # generation_config.json: eos_token_id decides where generation stops
VERSIONED = ("mpo-dist", "torch", "transformers")
PACKAGE_ROOT = Path(__file__).resolve().parent
# Source files (under mpo_dist/) from a text to the log-probs of its response tokens: tokenisation, the fused head and
# both its kernels, the per-sequence sums. The stored scores and the reference cache add their own code to these.
LOGPROB_CODE = ("data/tokenize.py", "models/head.py", "kernels/__init__.py", "kernels/logprob_torch.py",
                "kernels/logprob_triton.py", "kernels/segment.py", "losses/base.py")


def data_digest(path: Path) -> str:
    """A data file's content digest; a `datasets` saved directory hashes every file, in a stable order."""
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path)}\0{file_digest(file)}\0".encode())
        return digest.hexdigest()[:DIGEST_HEX]
    return file_digest(path)


def model_fingerprint(model_dir: Path, tokenizer_dir: Path | None = None) -> dict[str, dict[str, str]]:
    """{"model": the digest of config.json, generation_config.json (where present) and each weight file, "tokenizer":
    each tokenizer file's digest}. Files are hashed in parallel threads: a first run over a sharded checkpoint reads
    its shards at the speed of the disk, not of one core."""
    tokenizer_dir = tokenizer_dir or model_dir
    model_files = [p for p in sorted(model_dir.iterdir())
                   if p.is_file() and (p.name in MODEL_FILES or p.name.endswith(WEIGHT_SUFFIXES))]
    tokenizer_files = [p for p in sorted(tokenizer_dir.iterdir()) if p.is_file() and p.name.startswith(TOKENIZER_PREFIXES)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(model_files), os.cpu_count() or 1))) as pool:
        model = dict(zip((p.name for p in model_files), pool.map(file_digest, model_files)))
    return {"model": model, "tokenizer": {p.name: file_digest(p) for p in tokenizer_files}}


def code_digest(path: Path) -> str:
    """The digest of a Python source file's syntax tree without docstrings: what the code does, not how it is
    commented or laid out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:DIGEST_HEX]


def _installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:  # mpo-dist run from a source tree on PYTHONPATH
        return "not installed"


def software_fingerprint(code: tuple[str, ...]) -> dict[str, Any]:
    """The versions of Python, mpo-dist, torch and transformers, and the digest of each source file in `code` (paths
    under mpo_dist/): an upgrade or a changed judge, log-prob or loss module is a difference, named."""
    versions = {"python": platform.python_version()} | {name: _installed_version(name) for name in VERSIONED}
    return {"versions": versions, "code": {path: code_digest(PACKAGE_ROOT / path) for path in code}}


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

"""Whether model.path names a local Hugging Face model directory, asked of the file system alone: a directory this user
can enter, holding a config.json. Cheap and free of torch, so `mpo-dist check` asks it before it loads anything heavy
(check/run_check.py); check/model_dir.py asks it first too, then loads the config and the tokenizer."""
from __future__ import annotations

from pathlib import Path

from mpo_dist.file_access import read_problem

INIT_TINY_HINT = "make a tiny one with `mpo-dist init-tiny DIR`, or see docs/models.md"


def model_path_problem(model_dir: Path) -> str | None:
    """The error for a model.path that is not a readable directory with a config.json, naming the path; else None."""
    if not model_dir.is_dir():
        what = "is a file, not a directory" if model_dir.exists() else "does not exist"
        return f"model.path: {model_dir} {what}; expected a local Hugging Face model directory ({INIT_TINY_HINT})"
    problem = read_problem(model_dir)
    if problem:
        return f"model.path: {model_dir} {problem}"
    if not (model_dir / "config.json").is_file():
        return f"model.path: {model_dir} is not a Hugging Face model directory (no config.json; {INIT_TINY_HINT})"
    return None

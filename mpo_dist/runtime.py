"""Process-wide run settings every command shares: the one dtype vocabulary and seeding.

Kept free of module-level torch imports so the CLI can offer the dtype names in `--help` without loading torch.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("fp32", "bf16", "fp16")  # the names the code uses internally (DeepSpeed's config keys)
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # torch's spellings, accepted too
DTYPE_CHOICES = (*DTYPE_NAMES, *DTYPE_ALIASES)  # what every --dtype option and model.dtype accept (besides "auto")


def canonical_dtype(name: str) -> str:
    """"bfloat16" -> "bf16" and so on; a canonical name is returned as is."""
    canonical = DTYPE_ALIASES.get(name, name)
    if canonical not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPE_CHOICES)}")
    return canonical


def resolve_dtype(name: str, on_gpu: bool) -> str:
    """The canonical dtype a run uses: "auto" is bf16 on a GPU and fp32 on a CPU (which has no fast bf16 matmul)."""
    if name == "auto":
        return "bf16" if on_gpu else "fp32"
    return canonical_dtype(name)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[canonical_dtype(name)]


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators: data order, random init and dropout repeat from run to run."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

"""`option`: a dataclass field that carries its one-line meaning, so `mpo-dist config-keys` prints what the code holds,
not a second copy of it in prose. A module of its own, below the losses and the config that both declare options."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import field
from typing import Any


def option(default: Any, meaning: str) -> Any:
    """Mutable defaults (lists, sections) are copied per instance; dataclasses.MISSING makes the key required."""
    if default is dataclasses.MISSING:
        return field(metadata={"meaning": meaning})
    if isinstance(default, list) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"meaning": meaning})
    return field(default=default, metadata={"meaning": meaning})

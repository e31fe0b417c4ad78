"""What `mpo-dist config-keys` prints: every config key with its type, default and one-line meaning, read from the config
dataclasses themselves (the meanings are their fields' metadata), so the list cannot drift from the code."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterator


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(map(str, typing.get_args(annotation)))
    if typing.get_origin(annotation) is list:
        return f"list[{_type_name(typing.get_args(annotation)[0])}]"
    return getattr(annotation, "__name__", str(annotation))


def config_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) for every leaf key; a section yields its own line first (type "section")."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for item in dataclasses.fields(cls):
        key, annotation = f"{prefix}{item.name}", hints[item.name]
        meaning = item.metadata.get("meaning", "")
        if dataclasses.is_dataclass(annotation):
            yield key, "section", "", meaning
            yield from config_keys(annotation, f"{key}.")
            continue
        default = getattr(defaults, item.name)
        if isinstance(default, list):
            default = [getattr(d, "path", d) for d in default]  # a data file by its path
        yield key, _type_name(annotation), repr(default), meaning


def render_config_keys() -> str:
    from mpo_dist.config import Config

    rows = list(config_keys(Config))
    leaves = [row for row in rows if row[1] != "section"]
    # columns as wide as their longest entry up to a cap; a longer cell overflows but keeps two spaces before the next
    widths = [min(max(len(row[column]) for row in leaves), cap) + 2 for column, cap in enumerate((40, 24, 24))]
    lines = []
    for key, type_name, default, meaning in rows:
        if type_name == "section":
            lines += ["", f"{key}: {meaning}" if meaning else f"{key}:"]
        else:
            cells = "".join(cell.ljust(width) if len(cell) + 2 <= width else cell + "  "
                            for cell, width in zip((key, type_name, default), widths))
            lines.append(f"  {cells}{meaning}".rstrip())
    return "\n".join(lines).lstrip("\n")

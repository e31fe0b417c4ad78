"""Reading the files users edit by hand: the run's YAML config (with its --set overrides) and the DeepSpeed JSON
templates.

What a plain `yaml.safe_load` / `json.loads` lets through is refused here with the file and line: a key given twice
(both parsers keep the last value silently, so a second `train:` section drops the first one whole), and a path that is a
directory or that the running user cannot read (a traceback otherwise). A module of the base layer, below the config
and the engine's template renderer that both read through it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import yaml

from mpo_dist.errors import UserError
from mpo_dist.file_access import this_user


class ConfigError(UserError):
    """A configuration value or file is missing, unknown or invalid; the message names the dotted key or the file."""


def read_config_text(path: Path, what: str) -> str:
    """The text of `path`, or a ConfigError naming it as `what` ("config file") and saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory; expected a file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} is not readable by {this_user()}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read ({error.strerror})") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping giving one key twice is an error naming both lines. Keys a merge
    (`<<: *anchor`) brings in may still be overridden: only the keys written in the mapping itself are compared."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._compared: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # The first call for a node sees its keys as written; later calls (a merged node met again) see merged ones too.
        if id(node) not in self._compared:
            self._compared.add(id(node))
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):  # refused by the base constructor with its own message
                    continue
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice, first at line {first_line[key]}", key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
        super().flatten_mapping(node)


def parse_yaml(text: str) -> Any:
    """`text` as YAML (safe types only), a key given twice in any mapping being an error."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message on one line: the problem and where, without the quoted source lines."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def _set_dotted(tree: dict, dotted: str, raw: str, is_list_key: Callable[[list[str]], bool]) -> None:
    parts = dotted.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        if is_list_key(parts[:depth + 1]):
            whole = ".".join(parts[:depth + 1])
            raise ConfigError(f"--set {dotted}: {whole} is a list, set as a whole: --set {whole}=[a,b] "
                              "(YAML flow syntax; the items cannot be set one by one)")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    try:
        node[parts[-1]] = parse_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {dotted}: the value {raw!r} is not valid YAML: {yaml_problem(error)}") from None


def read_config_tree(path: str | Path | None, overrides: list[str], *,
                     is_list_key: Callable[[list[str]], bool]) -> dict:
    """The YAML config file (optional; a key given twice is an error) with the `key=value` overrides applied (values
    parsed as YAML): the plain tree mpo_dist.config builds its Config from. `is_list_key(parts)` says whether a dotted
    key names a list, which --set replaces as a whole. Here, below the config, so `mpo-dist check` can read model.path
    before it loads the config's dependencies (torch)."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        text = read_config_text(path, "config file")
        try:
            tree = parse_yaml(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path}: invalid YAML: {yaml_problem(error)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: expected key=value")
        key, raw = override.split("=", 1)
        _set_dotted(tree, key.strip(), raw, is_list_key)
    return tree


_STRING_OR_BRACE = re.compile(r'["{}]')
_COLON = re.compile(r"\s*:")


def _repeated_json_key(text: str) -> tuple[str, int, int] | None:
    """(key, offset of its first use, offset of its second use) of the first key that one object of `text` gives
    twice; `text` is valid JSON (it has been parsed), so a string followed by a colon is a key of the innermost object."""
    open_objects: list[dict[str, int]] = []
    match = _STRING_OR_BRACE.search(text)
    while match:
        at = match.start()
        if match.group() == '"':
            string, end = json.decoder.scanstring(text, at + 1)
            if _COLON.match(text, end):
                seen = open_objects[-1]
                if string in seen:
                    return string, seen[string], at
                seen[string] = at
            match = _STRING_OR_BRACE.search(text, end)
            continue
        if match.group() == "{":
            open_objects.append({})
        else:
            open_objects.pop()
        match = _STRING_OR_BRACE.search(text, at + 1)
    return None


def load_json_config(path: Path, what: str) -> Any:
    """The JSON in `path`; a ConfigError naming `what` and `path` if it cannot be read, is not JSON or gives a key twice
    in one object."""
    text = read_config_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} {path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    repeated = _repeated_json_key(text)
    if repeated is not None:
        key, first, second = repeated
        raise ConfigError(f"{what} {path}: key {key!r} given twice in one object, at lines {_line(text, first)} and "
                          f"{_line(text, second)} (a JSON parser keeps only the last)")
    return data


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1

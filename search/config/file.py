"""Reading a config file, bounded: a config is kilobytes of plain YAML.

Refused with a ``ConfigError`` naming the file (and the line where there is one):
files over ``MAX_BYTES``, text that is not UTF-8, an empty document, duplicate keys,
and aliases that expand to more than ``MAX_VALUES`` values (an "alias bomb": ten
nested aliases in 545 bytes expand to a billion values in anything that walks them,
such as validation or an error message).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from pipeline.errors import InputError


class ConfigError(InputError):
    """The configuration is invalid; the message names the field (``search.config``
    re-exports it: config reading and validation raise the same error)."""


MAX_BYTES = 256 * 1024
MAX_VALUES = 20_000


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of the YAML config at ``path``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{p} is {size / 1024:.0f} KiB; a config is at most {MAX_BYTES // 1024} KiB of YAML (is this the right file?)")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{p} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save it as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=_StrictLoader)
        if node is not None:
            _check_expansion(node, p)
        data = yaml.load(text, Loader=_StrictLoader) if node is not None else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {_short(e)}") from None
    if data is None:
        raise ConfigError(
            f"{p} is empty: it sets nothing, so it would run the default search; write the sections you want "
            "(see configs/digits.yaml), or run `prunesearch demo` for the default search"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML keeps the last one silently)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:60]!r} on line {line} (first on line {seen[key]}); keep one", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: Node, path: Path) -> None:
    """Refuse a document whose aliases expand beyond ``MAX_VALUES`` values."""
    sizes: dict[int, int] = {}

    def size(node: Node, depth: int) -> int:
        if id(node) in sizes:  # an alias: the same node again, counted again in full
            return sizes[id(node)]
        if depth > 100:
            raise ConfigError(f"{path}: nested more than 100 levels deep")
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        sizes[id(node)] = total
        if total > MAX_VALUES:
            raise ConfigError(
                f"{path}: its aliases (*name) expand to more than {MAX_VALUES} values (line {node.start_mark.line + 1}); "
                "write the values out instead of nesting aliases"
            )
        return total

    size(root, 0)


def _short(e: yaml.YAMLError, limit: int = 300) -> str:
    text = str(e)
    return text if len(text) <= limit else text[:limit] + " ..."

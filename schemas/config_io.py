"""Reading a config file as plain data, bounded: every failure is one `ConfigError` line.

A YAML file is composed into nodes first and its size counted *with aliases expanded* before any
object is built, so an alias bomb ("billion laughs", at any depth) is refused in microseconds
instead of expanding in validation. Tags beyond YAML's plain types are refused by `SafeLoader`.
See docs/reliability.md, "Configs".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from schemas.errors import VipoError


class ConfigError(VipoError, ValueError):
    """A configuration problem, phrased as one line: `<file>: <key>: <what is wrong>`."""


MAX_CONFIG_BYTES = 4 * 2**20  # a config is a few KB; a prompt list belongs in a prompt file
MAX_EXPANDED_NODES = 100_000  # scalars + collections after expanding every alias
MAX_DEPTH = 64


def _expanded_size(root: yaml.Node, source: str) -> int:
    """Nodes of the document with every alias expanded (shared nodes counted at each use)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        if key in on_path:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: a YAML alias refers to itself")
        on_path.add(key)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v, depth + 1) for v in node.value)
        else:
            total = 1
        on_path.discard(key)
        if total > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"{source}: line {node.start_mark.line + 1}: YAML aliases expand to more than "
                f"{MAX_EXPANDED_NODES:,} values; write the values out"
            )
        sizes[key] = total
        return total

    return size(root, 0)


def parse_yaml_text(text: str, source: str) -> Any:
    """Plain data from YAML text (one document), bounded in size, depth and alias expansion."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_size(root, source)
        return loader.construct_document(root)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "<root>"
        raise ConfigError(f"{source}: {where}: invalid YAML ({getattr(err, 'problem', None) or err})") from None
    except RecursionError:
        raise ConfigError(f"{source}: <root>: nested too deeply to read") from None
    finally:
        loader.dispose()


def read_config_text(path: str | Path) -> str:
    """The text of a config file, or one line saying why it cannot be read."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, expected a YAML file")
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: not a regular file")
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; a config is a few KB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from None


def read_yaml(path: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """Plain data from a YAML config file, top-level keys overridden."""
    data = parse_yaml_text(read_config_text(path), str(path))
    if isinstance(data, dict) and overrides:
        data = {**data, **overrides}
    return data

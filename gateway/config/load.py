"""Reads the config file: YAML or JSON, environment overrides, ENC(...) secrets.

Every problem is reported with the file, the line and the key path, e.g.
`config/gateway.yaml:14: sinks.warehouse.table: 'read-ings' is not a valid SQL
identifier`. Environment variables `EDGE_STREAM__SECTION__NAME__KEY=value`
override `section.name.key` (the value is read as YAML, so `5`, `true`, `10s` work).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from gateway.config import secrets
from gateway.config.model import Config
from gateway.config.schema import Path as KeyPath
from gateway.config.schema import Problems, build_dataclass
from gateway.core.errors import ConfigError

ENV_PREFIX = "EDGE_STREAM__"


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers where each key is and refuses duplicate keys."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    lines: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {lines[key]})",
                key_node.start_mark,
            )
        result[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    loader.key_lines[id(result)] = lines  # type: ignore[attr-defined]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _collect_lines(
    data: Any, key_lines: dict[int, dict[Any, int]], path: KeyPath, out: dict[KeyPath, int]
) -> None:
    if isinstance(data, dict):
        for key, line in key_lines.get(id(data), {}).items():
            out[(*path, str(key))] = line
        for key, value in data.items():
            _collect_lines(value, key_lines, (*path, str(key)), out)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _collect_lines(value, key_lines, (*path, i), out)


def parse_text(text: str, source: str) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Parse YAML or JSON text into data plus a map of key path -> line number."""
    if source.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{source}:{err.lineno}: invalid JSON: {err.msg}") from err
        return (data if data is not None else {}), {}
    loader = _LineLoader(text)
    loader.key_lines = {}  # type: ignore[attr-defined]
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {err.problem or err.context}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}") from err
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping of sections")
    lines: dict[KeyPath, int] = {}
    _collect_lines(data, loader.key_lines, (), lines)  # type: ignore[attr-defined]
    return data, lines


def apply_env(data: dict[str, Any], environ: dict[str, str]) -> list[str]:
    """Apply EDGE_STREAM__A__B=value overrides in place; return the keys changed."""
    changed = []
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = [p for p in var[len(ENV_PREFIX) :].split("__") if p]
        node: dict[str, Any] = data
        for part in parts[:-1]:
            key = _match_key(node, part)
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if parts:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
            node[_match_key(node, parts[-1])] = value
            changed.append(".".join(p.lower() for p in parts))
    return changed


def _match_key(node: dict[str, Any], part: str) -> str:
    for key in node:
        if str(key).lower() == part.lower():
            return str(key)
    return part.lower()


def _reveal_secrets(data: Any, key: bytes | None, path: KeyPath, problems: Problems) -> Any:
    if isinstance(data, dict):
        return {k: _reveal_secrets(v, key, (*path, str(k)), problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_reveal_secrets(v, key, (*path, i), problems) for i, v in enumerate(data)]
    if isinstance(data, str) and secrets.has_secret(data):
        try:
            return secrets.reveal(data, key)
        except secrets.SecretError as err:
            problems.add(path, str(err))
    return data


def format_problem(source: str, lines: dict[KeyPath, int], path: KeyPath, message: str) -> str:
    line = None
    for n in range(len(path), 0, -1):
        line = lines.get(path[:n])
        if line is not None:
            break
    where = f"{source}:{line}" if line else source
    dotted = ".".join(str(p) for p in path)
    return f"{where}: {dotted}: {message}" if dotted else f"{where}: {message}"


def load_data(
    data: dict[str, Any],
    source: str = "<config>",
    lines: dict[KeyPath, int] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Validate config data (already parsed) into a Config, or raise ConfigError."""
    lines = lines or {}
    apply_env(data, dict(os.environ) if environ is None else environ)
    problems = Problems()
    raw_gateway = data.get("gateway")
    gateway: dict[str, Any] = raw_gateway if isinstance(raw_gateway, dict) else {}
    key_file = gateway.get("secret_key_file") or os.path.join(
        str(gateway.get("data_dir", "./data")), "secret.key"
    )
    try:
        key = secrets.load_key(key_file)
    except secrets.SecretError as err:
        raise ConfigError(f"{source}: {err}") from err
    data = _reveal_secrets(data, key, (), problems)
    config = None
    if not problems:
        config = build_dataclass(Config, data, (), problems)
    if problems or config is None:
        raise ConfigError([format_problem(source, lines, p, m) for p, m in problems.items])
    return config  # type: ignore[no-any-return]


def load(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read and validate the config file at `path`, or raise ConfigError."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the config file: {err.strerror}") from err
    data, lines = parse_text(text, source)
    return load_data(data, source, lines, environ)

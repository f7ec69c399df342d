"""Reads the config file: YAML or JSON, environment overrides, ENC(...) secrets.

Every problem is reported with the file, the line and the key path, e.g.
`config/gateway.yaml:14: sinks.warehouse.table: 'read-ings' is not a valid SQL
identifier`. Environment variables `EDGE_STREAM__SECTION__NAME__KEY=value`
override `section.name.key` (the value is read as YAML, so `5`, `true`, `10s` work);
a problem with such a value names the variable instead of a line.

A config file is at most 1 MiB of UTF-8 text, nested at most 64 levels deep, and its
YAML aliases (`*name`) may repeat at most 100,000 values in all: a file past these
limits is refused with one line saying which limit, so that a mistaken or hostile
file cannot freeze the gateway while it is read (the file is read off the event loop
on a reload, and the running config stays).
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from gateway.config import secrets
from gateway.config.model import Config
from gateway.config.schema import Path as KeyPath
from gateway.config.schema import Problems, build_dataclass
from gateway.core.errors import ConfigError

ENV_PREFIX = "EDGE_STREAM__"


MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_ALIAS_VALUES = 100_000


class _LimitError(yaml.MarkedYAMLError):
    """The document is past one of the limits; the message says which."""


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers where each key is and refuses duplicate keys.

    While composing it counts how deep the nodes nest and how many values the
    aliases repeat (an alias to a list of 10 repeats 10 values, however often the
    list is itself made of aliases): a few lines of nested aliases otherwise stand
    for billions of values, which every later walk over the config would visit.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.key_lines: dict[int, dict[Any, int]] = {}
        self._depth = 0
        self._values = 0  # values composed so far, counting each alias as what it repeats
        self._alias_values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it stands for

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node), 1)
            self._values += size
            self._alias_values += size
            if self._alias_values > MAX_ALIAS_VALUES:
                raise _LimitError(
                    None,
                    None,
                    f"too many aliases: they repeat more than {MAX_ALIAS_VALUES} values"
                    f" (limit {MAX_ALIAS_VALUES}); write the values out or use fewer aliases",
                    event.start_mark,
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _LimitError(
                None,
                None,
                f"nested more than {MAX_DEPTH} levels deep (limit {MAX_DEPTH})",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        before = self._values
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._values += 1
        self._sizes[id(node)] = self._values - before
        return node


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
    loader.key_lines[id(result)] = lines
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


def _json_depth(data: Any) -> int:
    """How deep JSON data nests, found without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                items = value.values() if isinstance(value, dict) else value
                stack.extend((item, depth + 1) for item in items)
    return deepest


def _parse_json(text: str, source: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}:{err.lineno}: invalid JSON: {err.msg}") from err
    except RecursionError as err:
        raise ConfigError(
            f"{source}: nested more than {MAX_DEPTH} levels deep (limit {MAX_DEPTH})"
        ) from err
    except ValueError as err:  # e.g. an integer longer than 4300 digits
        raise ConfigError(f"{source}: invalid JSON: {err}") from err
    if _json_depth(data) > MAX_DEPTH:
        raise ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep (limit {MAX_DEPTH})")
    return data


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[int, dict[Any, int]]]:
    loader = _LineLoader(text)
    try:
        return loader.get_single_data(), loader.key_lines
    except _LimitError as err:
        mark = err.problem_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: {err.problem}") from err
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {err.problem or err.context}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}") from err
    finally:
        loader.dispose()


def parse_text(text: str, source: str) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Parse YAML or JSON text into data plus a map of key path -> line number.

    ConfigError if the text is not YAML/JSON, not a mapping, or past the limits
    on size, nesting and aliases (MAX_BYTES, MAX_DEPTH, MAX_ALIAS_VALUES).
    """
    if len(text) > MAX_BYTES:  # characters: at least as many bytes
        raise ConfigError(
            f"{source}: the config is larger than {MAX_BYTES >> 20} MiB (limit {MAX_BYTES >> 20}"
            " MiB): is this the right file?"
        )
    key_lines: dict[int, dict[Any, int]] = {}
    if source.endswith(".json"):
        data = _parse_json(text, source)
    else:
        data, key_lines = _parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping of sections")
    lines: dict[KeyPath, int] = {}
    _collect_lines(data, key_lines, (), lines)
    return data, lines


def _env_value(var: str, raw: str) -> Any:
    """An override's value read as YAML (so 5, true, 10s work), within the file's limits."""
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{var}: the value is longer than {MAX_BYTES >> 20} MiB")
    loader = _LineLoader(raw)
    try:
        return loader.get_single_data()
    except _LimitError as err:
        raise ConfigError(f"{var}: {err.problem}") from err
    except yaml.YAMLError:
        return raw  # not YAML: the text as it is
    finally:
        loader.dispose()


def apply_env(data: dict[str, Any], environ: dict[str, str]) -> dict[KeyPath, str]:
    """Apply EDGE_STREAM__A__B=value overrides in place; return {key path: variable}."""
    changed: dict[KeyPath, str] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = [p for p in var[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node: dict[str, Any] = data
        path: list[str] = []
        for part in parts[:-1]:
            key = _match_key(node, part)
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
            path.append(key)
        key = _match_key(node, parts[-1])
        node[key] = _env_value(var, raw)
        changed[(*path, key)] = var
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


def format_problem(
    source: str,
    lines: dict[KeyPath, int],
    path: KeyPath,
    message: str,
    env: dict[KeyPath, str] | None = None,
) -> str:
    """`file:line: key.path: message`, or `VARIABLE: key.path: message` when the value
    came from an environment override."""
    where = None
    for n in range(len(path), 0, -1):
        if env and path[:n] in env:
            where = env[path[:n]]
            break
        line = lines.get(path[:n])
        if line is not None:
            where = f"{source}:{line}"
            break
    dotted = ".".join(str(p) for p in path)
    where = where or source
    return f"{where}: {dotted}: {message}" if dotted else f"{where}: {message}"


def _key_problem(
    source: str, lines: dict[KeyPath, int], gateway: dict[str, Any], err: Exception
) -> str:
    if str(err).startswith(secrets.ENV_KEY):
        return str(err)
    if gateway.get("secret_key_file"):
        return format_problem(source, lines, ("gateway", "secret_key_file"), str(err))
    return f"{source}: {err} (the default key file, <data_dir>/secret.key)"


def load_data(
    data: dict[str, Any],
    source: str = "<config>",
    lines: dict[KeyPath, int] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Validate config data (already parsed) into a Config, or raise ConfigError.

    Every problem is reported at once, each naming the file and line (or the
    environment variable) and the key it concerns.
    """
    lines = lines or {}
    env = apply_env(data, dict(os.environ) if environ is None else environ)
    problems = Problems()
    raw_gateway = data.get("gateway")
    gateway: dict[str, Any] = raw_gateway if isinstance(raw_gateway, dict) else {}
    key_file = gateway.get("secret_key_file") or os.path.join(
        str(gateway.get("data_dir", "./data")), "secret.key"
    )
    try:
        key = secrets.load_key(str(key_file))
    except secrets.SecretError as err:
        raise ConfigError(_key_problem(source, lines, gateway, err)) from err
    data = _reveal_secrets(data, key, (), problems)
    secret_problems = list(problems.items)
    config = build_dataclass(Config, data, (), problems)
    # A value whose secret could not be revealed is reported once, for the secret.
    items = secret_problems + [
        (path, message)
        for path, message in problems.items[len(secret_problems) :]
        if not any(path[: len(s)] == s for s, _ in secret_problems)
    ]
    if items or config is None:
        raise ConfigError([format_problem(source, lines, p, m, env) for p, m in items])
    return config  # type: ignore[no-any-return]


def read_text(path: str | os.PathLike[str]) -> str:
    """The config file's text; ConfigError if it cannot be read, is too large or not UTF-8."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the config file: {err.strerror or err}") from err
    if len(raw) > MAX_BYTES:
        raise ConfigError(
            f"{source}: the config is larger than {MAX_BYTES >> 20} MiB (limit {MAX_BYTES >> 20}"
            " MiB): is this the right file?"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError(
            f"{source}:{line}: the config is not UTF-8 text: byte {raw[err.start]:#04x} at"
            f" column {column}; save the file as UTF-8"
        ) from err


def parse_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Read and parse the config file (data, key path -> line), without validating it."""
    source = str(path)
    data, lines = parse_text(read_text(path), source)
    if not data:
        raise ConfigError(
            f"{source}:1: the config file is empty: it needs at least sources, routes and"
            " sinks (config/gateway.yaml is an example to start from)"
        )
    return data, lines


def load(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read and validate the config file at `path`, or raise ConfigError.

    It reads and walks the whole file: call it off the event loop in a running gateway.
    """
    data, lines = parse_file(path)
    return load_data(data, str(path), lines, environ)

"""Reads the config file: YAML or JSON, environment overrides, ENC(...) secrets.

Every problem is reported with the file, the line and the key path, e.g.
`config/gateway.yaml:14: sinks.warehouse.table: 'read-ings' is not a valid SQL
identifier`. Environment variables `EDGE_STREAM__SECTION__NAME__KEY=value`
override `section.name.key` (the value is read as YAML, so `5`, `true`, `10s` work);
a problem with such a value names the variable instead of a line.

A config file is at most 256 KiB of UTF-8 text holding at most 50,000 values (each
key, value, list and mapping counts one), nested at most 64 levels deep, and its YAML
aliases (`*name`) may repeat at most 100,000 values in all: a file past these limits
is refused with one line saying which limit, so that a mistaken or hostile file cannot
freeze the gateway or fill its memory while it is read (the file is read off the event
loop on a reload, and the running config stays). An environment override's value has
the same limits. A real config is a few hundred lines: a large Modbus register map
stays far below them.

A value YAML cannot build (a mapping or list used as a key, `2024-02-30`, `!!int
"0x"`) is refused with its line, or with the variable's name in an override.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import re
import urllib.parse
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from gateway.config import files, secrets
from gateway.config.model import Config, GatewaySection
from gateway.config.schema import Path as KeyPath
from gateway.config.schema import Problems, WrittenFloat, WrittenInt, build_dataclass
from gateway.config.units import ascii_int
from gateway.core.errors import ConfigError
from gateway.core.redact import written_forms

ENV_PREFIX = "EDGE_STREAM__"


MAX_BYTES = 256 << 10
MAX_NODES = 50_000
MAX_DEPTH = 64
MAX_ALIAS_VALUES = 100_000
_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep (limit {MAX_DEPTH})"
_LIBYAML_TOO_DEEP = "exceeded maximum nesting depth"
_TOO_LARGE = f"larger than {MAX_BYTES >> 10} KiB (limit {MAX_BYTES >> 10} KiB)"


class _LimitError(yaml.MarkedYAMLError):
    """The document is past one of the limits; the message says which."""


class _ValueError(yaml.constructor.ConstructorError):
    """YAML read a value fine but cannot build it: the message says why, at its line."""


# Reading a 256 KiB file with PyYAML's pure-Python scanner and parser takes seconds on
# a Pi; libyaml's (C) parser hands over the same events, with the same line marks, in
# a fraction of that. Our composer and constructor stay in Python: they count the
# limits below as the nodes arrive, and remember each key's line.
if TYPE_CHECKING or not yaml.__with_libyaml__:
    _Base = yaml.SafeLoader
else:

    class _Base(Composer, yaml.cyaml.CParser, SafeConstructor, Resolver):
        def __init__(self, stream: str) -> None:
            yaml.cyaml.CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


_KINDS = {
    "timestamp": "date or time",
    "int": "integer",
    "float": "number",
    "bool": "true or false",
}


class _LineLoader(_Base):
    """A YAML loader that remembers where each key is and refuses duplicate keys.

    While composing it counts the nodes, how deep they nest and how many values
    the aliases repeat (an alias to a list of 10 repeats 10 values, however often
    the list is itself made of aliases): a few lines of nested aliases otherwise
    stand for billions of values, which every later walk over the config would visit.
    A value that cannot be built (TypeError, ValueError... from the constructor)
    becomes a _ValueError at the node's line.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.key_lines: dict[int, dict[Any, int]] = {}
        self._depth = 0
        self._nodes = 0
        self._values = 0  # values composed so far, counting each alias as what it repeats
        self._alias_values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it stands for

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            # The constructor's own message may quote the value (a password, say): only
            # the kind of value is named, and a date's reason (which quotes nothing).
            short = node.tag.rpartition(":")[2] if node.tag.startswith("tag:yaml.org,") else ""
            kind = _KINDS.get(short, f"!!{short}" if short else node.tag)
            why = f" ({err})" if short == "timestamp" and isinstance(err, ValueError) else ""
            raise _ValueError(
                None,
                None,
                f"this value is not a valid {kind}{why}; to keep it as text, write it in quotes",
                node.start_mark,
            ) from err

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
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _LimitError(
                None,
                None,
                f"more than {MAX_NODES} keys and values (limit {MAX_NODES}):"
                " is this the right file?",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _LimitError(
                None,
                None,
                _TOO_DEEP,
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        before = self._values
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._values += 1
        self._sizes[id(node)] = self._values - before
        return node


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # A key written here overrides the same key merged in by `<<: *anchor` (YAML's
    # merge keys); only a key written twice here is a duplicate.
    own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    lines: dict[Any, int] = {}
    merged: set[Any] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise _ValueError(
                None,
                None,
                f"a key must be a name, not a {'mapping' if isinstance(key, dict) else 'list'}"
                " (is a ':' or '?' out of place?)",
                key_node.start_mark,
            )
        if id(key_node) not in own:
            merged.add(key)
        elif key in merged:
            merged.discard(key)
        elif key in result:
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

# YAML 1.1 (PyYAML) reads `1e-3`, `1e6` and `2.5e3` as text: its floats need a dot and
# a signed exponent (`1.0e-3`). YAML 1.2, JSON and ruamel.yaml, which writes the config
# API's edits, take them as numbers: without this, `scale: {temp: 1e-3}` was refused
# and an API edit holding 0.00001 (written `1e-05`) did not read back.
# Such a number remembers its text (WrittenFloat), so that a text key given `1e5`
# unquoted, a password say, still reads "1e5" and not "100000.0".
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
_EXPONENT_TAG = "tag:edge-stream,2026:exponent-float"
_LineLoader.add_implicit_resolver(_EXPONENT_TAG, _EXPONENT_FLOAT, list("-+0123456789."))


def _construct_written_float(loader: _LineLoader, node: yaml.ScalarNode) -> WrittenFloat:
    return WrittenFloat(loader.construct_scalar(node))


_LineLoader.add_constructor(_EXPONENT_TAG, _construct_written_float)


# YAML 1.1 reads 007 as 7, 0123 as the octal 83, 0x1F as 31, 1_000 as 1000 and 12:30 as
# 750: a gateway id written 007 became "7", a password 0123 "83". A number written
# otherwise than Python writes it remembers its text, for a key that takes text.
def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)
    return value if node.value == str(value) else WrittenInt(value, node.value)


def _construct_float(loader: _LineLoader, node: yaml.ScalarNode) -> float:
    value: float = loader.construct_yaml_float(node)
    return value if node.value == repr(value) else WrittenFloat(node.value, value)


_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_LineLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


class _PlainResolver(Resolver):
    """The loader's resolver alone: which type a plain scalar reads as."""


_PlainResolver.add_implicit_resolver(_EXPONENT_TAG, _EXPONENT_FLOAT, list("-+0123456789."))
_PLAIN = _PlainResolver()


def plain_tag(text: str) -> str:
    """The tag the loader gives `text` written plain (`yes` -> bool, `1e3` -> float)."""
    tag: str = _PLAIN.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    return tag


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


def _json_size(data: Any) -> tuple[int, int]:
    """How deep JSON data nests and how many keys and values it holds (as YAML counts
    them), found without recursion; the walk stops past MAX_DEPTH or MAX_NODES."""
    deepest, nodes, stack = 0, 0, [(data, 1)]
    while stack and nodes <= MAX_NODES:
        value, depth = stack.pop()
        nodes += 1
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                break
            if isinstance(value, dict):
                nodes += len(value)
                stack.extend((item, depth + 1) for item in value.values())
            else:
                stack.extend((item, depth + 1) for item in value)
    return deepest, nodes


def past_limits(text: str, data: Any) -> str | None:
    """Which of the loader's limits a config `text` holding `data` is past, in words
    (None: within them): an edit says so rather than write a file that is refused.
    `data` None: the size of `text` alone."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:  # as read_text counts
        return f"the config would be {_TOO_LARGE}"
    if data is None:
        return None
    depth, nodes = _json_size(data)
    if depth > MAX_DEPTH:
        return f"the config would be {_TOO_DEEP}"
    if nodes > MAX_NODES:
        return f"the config would hold more than {MAX_NODES} keys and values (limit {MAX_NODES})"
    return None


class _DuplicateKey(ValueError):
    """A JSON object that writes one key twice (json.loads would keep the last)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_json(text: str, source: str) -> Any:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as err:  # refused as in YAML; reading it as YAML names the lines
        try:
            _parse_yaml(text, source)
        except ConfigError as found:
            raise ConfigError(str(found).replace("invalid YAML", "invalid JSON", 1)) from err
        raise ConfigError(f"{source}: invalid JSON: {err}") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}:{err.lineno}: invalid JSON: {err.msg}") from err
    except RecursionError as err:
        raise ConfigError(f"{source}: {_TOO_DEEP}") from err
    except ValueError as err:  # e.g. an integer longer than 4300 digits
        raise ConfigError(f"{source}: invalid JSON: {err}") from err
    depth, nodes = _json_size(data)
    if depth > MAX_DEPTH:
        raise ConfigError(f"{source}: {_TOO_DEEP}")
    if nodes > MAX_NODES:
        raise ConfigError(
            f"{source}: more than {MAX_NODES} keys and values (limit {MAX_NODES}):"
            " is this the right file?"
        )
    return data


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[int, dict[Any, int]]]:
    loader = _LineLoader(text)
    try:
        return loader.get_single_data(), loader.key_lines
    except (_LimitError, _ValueError) as err:
        mark = err.problem_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: {err.problem}") from err
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        if err.problem == _LIBYAML_TOO_DEEP:  # libyaml's own limit (1000), met scanning ahead
            raise ConfigError(f"{where}: {_TOO_DEEP}") from err
        unknown_tag = _UNKNOWN_TAG.match(str(err.problem))
        if (
            unknown_tag and not _FOREIGN_TAG.fullmatch(_tag_text(unknown_tag.group(1)))
        ) or err.context in ("while scanning a tag", "while parsing a tag"):
            # `password: !Xy9zQ7kk`: the tag is the value, a secret perhaps: not printed
            # (nor the character of it YAML found no tag may hold: `{password: !Xy9}`)
            raise ConfigError(
                f"{where}: a value starting with '!' is read as a YAML tag, which is not"
                " supported: write the value in quotes"
            ) from err
        if unknown_tag:
            # Home Assistant's `!include` and `!secret`: this config is one file, its
            # secrets written ENC(...)
            raise ConfigError(
                f"{where}: the YAML tag {_tag_text(unknown_tag.group(1))} is not supported:"
                " a config is one file, its secrets written ENC(...) (edge-stream secret"
                " encrypt)"
            ) from err
        flow_hash = _flow_comment_line(text, mark.line, err) if mark else None
        if flow_hash is not None and str(err.problem).startswith("did not find expected"):
            # `topics: [#]`: the '#' starts a comment, which takes the rest of the line and
            # the list's end; YAML's words were "did not find expected node content", on
            # the line after it
            raise ConfigError(
                f"{source}:{flow_hash + 1}: invalid YAML: the '#' in [...] or {{...}} starts"
                ' a comment there, cutting the list short: write it in quotes, ["#"]'
            ) from err
        if "cannot start any token" in str(err.problem) and mark and _tab_indented(text, mark.line):
            # YAML's own words, "found character that cannot start any token", name no tab
            raise ConfigError(
                f"{where}: invalid YAML: a tab indents this line; indent with spaces"
            ) from err
        opened = _unclosed(err)
        if opened is not None:
            raise ConfigError(f"{source}:{opened}") from err
        raise ConfigError(f"{where}: invalid YAML: {err.problem or err.context}") from err
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        code = err.character if isinstance(err.character, int) else ord(err.character)
        raise ConfigError(
            f"{source}:{line}: the config holds the control character U+{code:04X}"
            " (only text, tabs and line breaks may be in it): is this the right file?"
        ) from err
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{source}: invalid YAML: {first}") from err
    finally:
        loader.dispose()


_UNKNOWN_TAG = re.compile(r"could not determine a constructor for the tag '([^']*)'")
# Tags other programs' YAML configs use: Home Assistant's and ESPHome's (`!include`,
# `!include_dir_named`, `!secret`, `!env_var`, `!input`, `!lambda`, `!extend`, `!remove`),
# pyyaml-env-tag's `!ENV`, Ansible's `!vault`, GitLab's `!reference`, PyYAML's `!!python/`
_FOREIGN_TAG = re.compile(
    r"!(?:include(?:_dir_\w+)?|secret|env_var|input|lambda|extend|remove|ENV|vault|reference)"
    r"|!!python/.*"
)


def _tag_text(tag: str) -> str:
    """A tag as a config writes it: `!!python/object`, not `tag:yaml.org,2002:...`."""
    standard = "tag:yaml.org,2002:"
    return "!!" + tag.removeprefix(standard) if tag.startswith(standard) else tag


def _comment_start(row: str) -> int | None:
    """Where the comment on a line of YAML starts (its '#'), or None: the first '#' outside
    quotes that starts a token (at the line's start, after a space, a tab or a flow
    indicator; in `a#b` it is text)."""
    i, starts_token = 0, True
    while i < len(row):
        ch = row[i]
        if starts_token and ch in "'\"":  # a quoted scalar: a '#' in it is text
            i += 1
            while i < len(row) and row[i] != ch:
                i += 2 if ch == '"' and row[i] == "\\" else 1
            i += 1  # past the closing quote ('' in single quotes: a new one opens)
            continue
        if ch == "#" and starts_token:
            return i
        starts_token = ch in " \t[]{},"
        i += 1
    return None


_FLOW_CONTEXTS = ("while parsing a flow sequence", "while parsing a flow mapping")


def _unclosed(err: yaml.MarkedYAMLError) -> str | None:
    """Where a quote, '[' or '{' that YAML never saw closed was opened, and what YAML said
    where it gave up (`{line}: invalid YAML: ...`), or None. YAML's complaint names the
    line it gave up on: for `path: "a.jsonl` with no closing quote, the file's last line
    ("found unexpected end of stream"), far from the mistake."""
    context, problem = err.context_mark, err.problem_mark
    if context is None or problem is None or context.line == problem.line:
        return None
    if err.context == "while scanning a quoted scalar":
        return (
            f"{context.line + 1}: invalid YAML: the quote opened on this line is not closed"
            f" (YAML read on to line {problem.line + 1}: {err.problem})"
        )
    if err.context in _FLOW_CONTEXTS:
        bracket = "[" if "sequence" in err.context else "{"
        return (
            f"{problem.line + 1}: invalid YAML: {err.problem}: the '{bracket}' opened on line"
            f" {context.line + 1} is not closed (or a quote in it is not)"
        )
    return None


def _flow_comment_line(text: str, line: int, err: yaml.MarkedYAMLError) -> int | None:
    """The line (from 0) whose comment starts with a '#' right after a '[', '{' or ','
    (so cuts a flow collection short) among those the parser's complaint `err`, at `line`,
    covers: from where the flow collection it was reading opened (else from the line
    before, as the parser complains past the end of the line) to `line`; the last such
    line, or None. A '[#' in an ordinary comment or in quotes is none."""
    first = line - 1
    context = err.context_mark
    if context and err.context in _FLOW_CONTEXTS and context.line <= line:
        first = context.line
    lines = text.splitlines()
    for n in range(min(line, len(lines) - 1), max(first, 0) - 1, -1):
        at = _comment_start(lines[n])
        if at is not None and lines[n][:at].rstrip(" \t")[-1:] in ("[", "{", ","):
            return n
    return None


def _tab_indented(text: str, line: int) -> bool:
    """Whether line `line` (from 0) of `text` has a tab in its indentation."""
    lines = text.splitlines()
    if line >= len(lines):
        return False
    row = lines[line]
    return "\t" in row[: len(row) - len(row.lstrip(" \t"))]


def parse_text(text: str, source: str) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Parse YAML or JSON text into data plus a map of key path -> line number.

    ConfigError if the text is not YAML/JSON, not a mapping, or past the limits
    on size, values, nesting and aliases (MAX_BYTES, MAX_NODES, MAX_DEPTH,
    MAX_ALIAS_VALUES).
    """
    if len(text) > MAX_BYTES:  # characters: at least as many bytes
        raise ConfigError(f"{source}: the config is {_TOO_LARGE}: is this the right file?")
    key_lines: dict[int, dict[Any, int]] = {}
    if source.endswith(".json"):
        # a byte order mark (Notepad writes one): YAML reads past it, json refused the file
        data = _parse_json(text.removeprefix("\ufeff"), source)
        shape = data
        try:  # JSON is YAML: read again by the line-keeping loader, for the keys' lines
            shape, key_lines = _parse_yaml(text, source)
        except ConfigError:  # a JSON file YAML reads otherwise (a repeated key): no lines
            pass
    else:
        data, key_lines = _parse_yaml(text, source)
        shape = data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping of sections")
    lines: dict[KeyPath, int] = {}
    _collect_lines(shape, key_lines, (), lines)
    return data, lines


def _env_value(var: str, raw: str) -> Any:
    """An override's value read as YAML (so 5, true, 10s work), within the file's limits."""
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{var}: the value is {_TOO_LARGE}")
    loader = _LineLoader(raw)
    try:
        return loader.get_single_data()
    except (_LimitError, _ValueError) as err:
        raise ConfigError(f"{var}: {err.problem}") from err
    except yaml.MarkedYAMLError as err:
        if err.problem == _LIBYAML_TOO_DEEP:
            raise ConfigError(f"{var}: {_TOO_DEEP}") from err
        return raw  # not YAML: the text as it is
    except yaml.YAMLError:
        return raw
    finally:
        loader.dispose()


def apply_env(data: dict[str, Any], environ: dict[str, str]) -> dict[KeyPath, str]:
    """Apply EDGE_STREAM__A__B=value overrides in place; return {key path: variable}."""
    changed: dict[KeyPath, str] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            _refuse_near_override(var)
            continue
        parts = [p for p in var[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node: dict[str, Any] | list[Any] = data
        path: list[Any] = []  # as problems name it: a list's index is an int
        for part in parts[:-1]:
            key, child = _step(var, node, part, path)
            if not isinstance(child, dict | list):
                child = {}
                node[key] = child
                # A mapping the override made (`SINKS__WAREHOUS__DSN`, a sink name mistyped):
                # a problem in it (its missing `type`) names the variable, not the line of
                # the file's `sinks:`, which has no such sink.
                changed.setdefault((*path, key), var)
            node = child
            path.append(key)
        key, _ = _step(var, node, parts[-1], path)
        node[key] = _env_value(var, raw)
        changed[(*path, key)] = var
    return changed


def _refuse_near_override(var: str) -> None:
    """A variable meant as an override but not named like one (`EDGE_STREAM_SINKS__DB__DSN`,
    one `_` after the prefix, or the prefix in lowercase) was skipped without a word, and
    the gateway ran on the file's value: refused, naming the spelling it reads."""
    if not var.upper().startswith(ENV_PREFIX[:-1]):
        return
    rest = var[len(ENV_PREFIX) - 1 :].lstrip("_")
    if "__" not in rest:
        return  # EDGE_STREAM_CONFIG, EDGE_STREAM_SECRET_KEY: the commands' own variables
    if rest.partition("__")[0].lower() not in {f.name for f in dataclasses.fields(Config)}:
        return  # not one of the config's sections: a variable for something else
    raise ConfigError(
        f"{var}: not read as an override: an override's name starts with {ENV_PREFIX}"
        f" (in capitals, two underscores), e.g. {ENV_PREFIX}{rest.upper()}"
    )


def _step(
    var: str, node: dict[str, Any] | list[Any], part: str, path: list[Any]
) -> tuple[Any, Any]:
    """The key (a list's index) that `part` names in `node`, and what is there now. An
    override of a list's item (EDGE_STREAM__ROUTES__R__PROCESSORS__0__SIZE) replaced the
    whole list with a mapping, and the problem then named the file's line."""
    if isinstance(node, list):
        index = ascii_int(part, 9)
        if index is None or index >= len(node):
            where = ".".join(str(p) for p in path)
            raise ConfigError(
                f"{var}: {where} is a list of {len(node)}; {part!r} is not an index in it"
                f" (0 to {len(node) - 1})"
                if node
                else f"{var}: {where} is an empty list; there is no item to override"
            )
        return index, node[index]
    key = _match_key(node, part)
    return key, node.get(key)


def _match_key(node: dict[str, Any], part: str) -> str:
    for key in node:
        if str(key).lower() == part.lower():
            return str(key)
    return part.lower()


class _Secrets:
    """The secrets of a config being loaded, so that no problem message quotes one.

    Each is a plaintext and what a message shows instead: a value written ENC(...) (its
    whole revealed text is shown as the file writes it, `ENC(...)` for each secret in
    it, and each secret alone as `ENC(...)`), the value of a key named like a password
    (`***`), and the password of a DSN or URL (`***`). Messages are scrubbed at the
    root, whatever check wrote them: a quoted value (`'...'`, as `!r` writes it, also
    inside a longer quoted text), the text itself and its percent-encoded forms.
    """

    # A shorter plaintext is replaced only in its own key's messages, and there only as a
    # whole token (a word of its own, or set off by punctuation as in a DSN's `:ab@`).
    _SHORT = 4

    def __init__(self, no_key: str = "") -> None:
        self.items: list[tuple[str, str, KeyPath]] = []
        self.no_key = no_key  # the problem of a value written ENC(...) when there is no key
        self.no_key_said = False

    def no_key_problem(self) -> str:
        """What is wrong with a value written ENC(...) when there is no key: said in
        full once, the values after it refer to it."""
        if self.no_key_said:
            return "the value holds ENC(...) but there is no key (see the first such line)"
        self.no_key_said = True
        return self.no_key

    def add(self, path: KeyPath, plaintext: str, shown: str) -> None:
        if plaintext and plaintext != shown:
            self.items.append((plaintext, shown, path))

    def add_value(self, path: KeyPath, value: Any) -> None:
        """Record a plain (not ENC) value that is a secret by its key's name or holds a
        password in its URL or `password=` part."""
        if any(secrets.is_secret_key(p) for p in path) and isinstance(
            value, str | int | float | datetime.date
        ):
            if not isinstance(value, bool):
                self.add(path, str(value), "***")
            if isinstance(value, datetime.date):  # YAML read `password: 2024-05-01` as a
                self.add(path, repr(value), "***")  # date: "got datetime.date(2024, 5, 1)"
            return
        if not isinstance(value, str):
            return
        for password in _passwords(value):
            self.add(path, password, "***")
            self.add(path, urllib.parse.unquote(password), "***")

    def scrub(self, path: KeyPath, message: str) -> str:
        """`message` (a problem at `path`) with every secret replaced by its shown form."""
        for plaintext, shown, where in sorted(self.items, key=lambda i: -len(i[0])):
            forms = (plaintext, repr(plaintext)[1:-1], *_encoded(plaintext))
            folded = message.casefold()
            if not any(f.casefold() in folded for f in forms):
                continue
            message = message.replace(repr(plaintext), repr(shown))
            near = path[: len(where)] == where or where[: len(path)] == path
            if where == path:  # a suggestion close to the secret tells how it reads
                message = _DID_YOU_MEAN.sub("", message)
            short = len(plaintext) < self._SHORT
            if not short or near:
                # In any case: a check may quote the value lowercased ("use 'name'").
                longest_first = sorted(set(forms), key=len, reverse=True)
                # A short one only as a whole token: "ab" is not hidden inside "about"
                # (which would then read "***out" and tell how the secret starts).
                alone = _alone if short else re.escape
                pattern = re.compile("|".join(map(alone, longest_first)), re.IGNORECASE)
                # A replacement string would read "\\1" in `shown` as a group reference.
                message = pattern.sub(functools.partial(_replacement, shown), message)
        return message


def _alone(form: str) -> str:
    """A pattern of `form` where it is not part of a longer word: no letter or digit
    right before a letter or digit that starts it, nor right after one that ends it."""
    before = r"(?<![^\W_])" if form[:1].isalnum() else ""
    after = r"(?![^\W_])" if form[-1:].isalnum() else ""
    return before + re.escape(form) + after


def _replacement(shown: str, _match: re.Match[str]) -> str:
    return shown


def _encoded(text: str) -> tuple[str, ...]:
    return tuple(f for f in written_forms(text) if f != text)


# A hint that quotes the value again, in the message of a secret: "(did you mean '...'?)",
# "(a number: write ... without quotes)", which read "write ENC(...) without quotes",
# "(YAML reads ... as text: write 8 without the leading 0)"
_DID_YOU_MEAN = re.compile(
    r" \((?:did you mean '[^']*'\?|(?:a number|true or false): write .* without quotes"
    r"|YAML reads .* as text: write .* without the leading 0)\)"
)
_KV_PASSWORD = re.compile(r"\bpassword\s*=\s*('[^']*'|\S+)", re.IGNORECASE)


def _passwords(text: str) -> list[str]:
    """The passwords in a DSN or URL's user part and in `password=...`."""
    found = [m.group(1).strip("'") for m in _KV_PASSWORD.finditer(text)]
    _, sep, rest = text.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    return found


def _reveal_secrets(
    data: Any, key: bytes | None, path: KeyPath, problems: Problems, found: _Secrets
) -> Any:
    if isinstance(data, dict):
        return {
            k: _reveal_secrets(v, key, (*path, str(k)), problems, found) for k, v in data.items()
        }
    if isinstance(data, list):
        return [_reveal_secrets(v, key, (*path, i), problems, found) for i, v in enumerate(data)]
    if isinstance(data, str) and secrets.has_secret(data):
        try:
            revealed = secrets.reveal(data, key)
        except secrets.NoKeyError:
            problems.add(path, found.no_key_problem())
            return data
        except secrets.SecretError as err:
            problems.add(path, str(err))
            return data
        assert key is not None  # reveal refuses an ENC(...) without a key
        found.add(path, revealed, secrets.masked_form(data))
        for plaintext in secrets.plaintexts(data, key):
            found.add(path, plaintext, "ENC(...)")
        found.add_value(path, revealed)
        return revealed
    found.add_value(path, data)
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
    # a key no line holds, made by an override of a key under it (a component the
    # environment adds to a section the file has: not the line of `sinks:`)
    made = [var for key, var in (env or {}).items() if path and key[: len(path)] == path]
    for n in range(len(path), 0, -1):
        if env and path[:n] in env:
            where = env[path[:n]]
            break
        line = lines.get(path[:n])
        if line is not None:
            where = f"{source}:{line}" if n == len(path) or not made else made[0]
            break
    else:
        where = made[0] if made else None
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
    config_arg = "FILE" if source.startswith("<") else source
    found = _Secrets(
        f"the value holds ENC(...) but there is no key: put the key it was encrypted with in"
        f" {key_file} (mode 0600) or set {secrets.ENV_KEY}; to start anew, make a key with"
        f" 'edge-stream secret keygen -c {config_arg}' and encrypt the value again"
        f" with 'edge-stream secret encrypt -c {config_arg}'"
    )
    data = _reveal_secrets(data, key, (), problems, found)
    secret_problems = list(problems.items)
    config = build_dataclass(Config, data, (), problems)
    # A value whose secret could not be revealed is reported once, for the secret.
    items = secret_problems + [
        (path, message)
        for path, message in problems.items[len(secret_problems) :]
        if not any(path[: len(s)] == s for s, _ in secret_problems)
    ]
    if items or config is None:
        items = [(p, _list_by_index(p, m, env)) for p, m in items]
        raise ConfigError(
            [format_problem(source, lines, p, found.scrub(p, m), env) for p, m in items]
        )
    return config  # type: ignore[no-any-return]


def _list_by_index(path: KeyPath, message: str, env: dict[KeyPath, str]) -> str:
    """The problem of a list an override made a mapping of: EDGE_STREAM__WEB__ALLOWED_HOSTS__0
    with no allowed_hosts in the file said "expected a list, got dict", and not why."""
    var = env.get(path)
    if message != "expected a list, got dict" or var is None:
        return message
    if len([p for p in var[len(ENV_PREFIX) :].split("__") if p]) <= len(path):
        return message  # the variable set this key itself, to a mapping
    return (
        "expected a list: an override's index reaches into a list the file does not have;"
        " set the whole list in one variable,"
        f" {ENV_PREFIX}{'__'.join(str(p).upper() for p in path)}='[a, b]'"
    )


def gateway_section(
    source: str, data: dict[str, Any], lines: dict[KeyPath, int], env: dict[KeyPath, str]
) -> GatewaySection:
    """The parsed config's gateway: section (overrides applied), validated alone: what
    needs only its data_dir or key file (kept versions, a rollback, the store commands)
    works also on a file refused for another section. A mistake in this section is a
    ConfigError as check-config words it: a `datadir:` read as the default ./data would
    act on another store."""
    problems = Problems()
    section = build_dataclass(GatewaySection, data.get("gateway"), ("gateway",), problems)
    if problems or section is None:
        raise ConfigError(
            [format_problem(source, lines, p, message, env) for p, message in problems.items]
        )
    return section  # type: ignore[no-any-return]


def data_dir_of(path: str) -> str:
    """The gateway.data_dir of the config file at `path`, read without validating the
    rest of the file (see gateway_section); ConfigError if it cannot be read."""
    data, lines = parse_text(read_text(path), path)
    env = apply_env(data, dict(os.environ))
    return gateway_section(path, data, lines, env).data_dir


def read_text(path: str | os.PathLike[str]) -> str:
    """The config file's text; ConfigError if it cannot be read, is too large or not UTF-8."""
    source = str(path)
    try:
        raw = files.read_head(path, MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the config file: {err.strerror or err}") from err
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{source}: the config is {_TOO_LARGE}: is this the right file?")
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

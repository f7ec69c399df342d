"""Column planning shared by the SQL sinks (postgres, mysql): what a `columns:` mapping means,
and the JSON decoding every sink that reads content as JSON shares.

Each column names where its value comes from, `name: source` or
`name: {from: source, type: sql type}`; see the postgres sink's documentation.
The sources and their checks are the same for every SQL sink; what differs per
database (the type names, the types of the fixed sources, the rules for names)
is a `Dialect`.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.config.schema import Doc, did_you_mean
from gateway.core.errors import ConfigError

# The `columns:` key's description, shared by the SQL sinks that take it.
COLUMNS_DOC = Doc(
    "Your own columns instead of the default table: `name: source` or `name:"
    " {from: source, type: sql type}`; sources are id, topic, ts, attributes,"
    " payload, raw, `topic.N`, `field.a.b`, `attributes.KEY` (default: the default"
    " table)."
)

# Sources with a value of a fixed type, in the order of the default table.
FIXED_SOURCES = ("id", "topic", "ts", "attributes", "payload", "raw")
# Sources the default table declares NOT NULL (every FlowFile has them).
NOT_NULL = frozenset({"topic", "ts", "attributes"})
DEFAULT_COLUMNS: dict[str, str] = {name: name for name in FIXED_SOURCES}
_PREFIXES = ("topic.", "field.", "attributes.")
SOURCE_HELP = "id, topic, ts, attributes, payload, raw, topic.N, field.PATH or attributes.KEY"


class Column(NamedTuple):
    """One column of the table: its name, where its value comes from, its SQL type."""

    name: str
    source: str
    type: str


@dataclass(frozen=True)
class Dialect:
    """What one database makes of the column specs.

    `types` maps each name a `type:` may use (lowercase, single spaces) to the SQL
    type; `shown_types` are the names listed when one is not known. `fixed` is the
    SQL type of each fixed source, `text` the type of topic.N, field.* and
    attributes.* without a `type`. `check_name` yields what is wrong with a column
    name; with `fold_case`, names that differ only in case are the same column.
    """

    name: str
    types: Mapping[str, str]
    shown_types: Iterable[str]
    fixed: Mapping[str, str]
    text: str
    check_name: Callable[[str], Iterator[str]]
    fold_case: bool = False


def parse_source(source: str) -> str | None:
    """None if `source` is a valid column source, else what is wrong with it."""
    if source in DEFAULT_COLUMNS:
        return None
    prefix, dot, rest = source.partition(".")
    if not dot or f"{prefix}." not in _PREFIXES:
        hint = did_you_mean(source, FIXED_SOURCES)
        return f"{source!r} is not a source: use {SOURCE_HELP}{hint}"
    if prefix == "topic":
        try:
            int(rest)
        except ValueError:
            return f"{source!r}: topic.N needs a level number, e.g. topic.1 or topic.-1"
    elif prefix == "field" and not all(rest.split(".")):
        return f"{source!r}: field.PATH needs field names separated by dots, e.g. field.env.temp"
    elif prefix == "attributes" and not rest:
        return f"{source!r}: attributes.KEY needs an attribute name"
    return None


def columns_for(
    columns: Mapping[str, str | Mapping[str, str]] | None, dialect: Dialect
) -> list[Column]:
    """The planned columns of a sink whose config was already checked; ConfigError if not."""
    planned, problems = plan_columns(columns, dialect)
    if problems:
        raise ConfigError([f"{key}: {message}" for key, message in problems])
    return planned


def plan_columns(
    columns: Mapping[str, str | Mapping[str, str]] | None, dialect: Dialect
) -> tuple[list[Column], list[tuple[str, str]]]:
    """The table's columns (id first) from a `columns:` mapping, and the problems found.

    Problems are (config key under the sink, message) pairs, for the config loader.
    """
    problems: list[tuple[str, str]] = []
    planned = [Column("id", "id", dialect.fixed["id"])]
    if columns is not None and not columns:
        problems.append(("columns", "name at least one column, or leave `columns` out"))
    seen: set[str] = {"id"}
    for name, spec in (DEFAULT_COLUMNS if columns is None else columns).items():
        key = f"columns.{name}"
        problems += [(key, message) for message in dialect.check_name(name)]
        if dialect.fold_case:
            # 'ID' is the id column (said below), not a second one
            if name.lower() != "id" and name.lower() in seen:
                problems.append(
                    (key, f"{name!r} is there twice ({dialect.name} names ignore case)")
                )
            seen.add(name.lower())
        if spec is None:
            continue  # a value of the wrong type, reported where it is
        if isinstance(spec, str):
            source, sql_type = spec, None
        else:
            for unknown in set(spec) - {"from", "type"}:
                hint = did_you_mean(unknown, ("from", "type"))
                problems.append((f"{key}.{unknown}", f"unknown key{hint} (keys: from, type)"))
            if "from" not in spec:
                problems.append((f"{key}.from", f"required key is missing ({SOURCE_HELP})"))
                continue
            source, sql_type = spec["from"], spec.get("type")
        problem = parse_source(source)
        if problem:
            problems.append((key, problem))
            continue
        fixed = dialect.fixed.get(source)
        if sql_type is None:
            column_type = dialect.text if fixed is None else fixed
        else:
            column_type = dialect.types.get(" ".join(sql_type.lower().split()), "")
            if not column_type:
                allowed = ", ".join(dialect.shown_types)
                problems.append(
                    (
                        f"{key}.type",
                        f"{sql_type!r} is not a supported type"
                        f"{did_you_mean(sql_type, dialect.types)} (one of {allowed})",
                    )
                )
                continue
            if fixed is not None and column_type != fixed:
                always = f" {fixed}" if fixed else " of a fixed type"
                problems.append((f"{key}.type", f"{source} is always{always}; leave `type` out"))
                continue
        if name.lower() == "id":
            if source != "id":
                problems.append((key, "'id' is always the FlowFile id; name this column otherwise"))
            continue
        planned.append(Column(name, source, column_type))
    return planned, problems


def dig(value: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` in parsed JSON (a number picks a list item), or None."""
    for key in path:
        if type(value) is dict:
            value = value.get(key)
        elif type(value) is list:
            try:
                value = value[int(key)]
            except (ValueError, IndexError):
                return None
        else:
            return None
    return value


def level(levels: list[str], n: int) -> str | None:
    """Topic level `n` (negative counts from the end), or None if there is none."""
    return levels[n] if -len(levels) <= n < len(levels) else None


def has_surrogate(text: str) -> bool:
    """True if `text` holds a lone surrogate (valid in JSON escapes, refused by databases)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# What the sinks parse content with: JSON as written, NaN and Infinity refused. Built once:
# json.loads with keyword arguments builds a new decoder on every call.
loads = json.JSONDecoder(parse_constant=refuse_constant).decode
# Fractions read as Decimals, every digit kept, for a value written out again or stored
# as parsed (a field column): a double keeps 15 to 17 digits, so 12345678901234.5678
# became 12345678901234.568, and 1e400 a double's infinity, which JSON cannot write.
loads_exact = json.JSONDecoder(parse_constant=refuse_constant, parse_float=decimal.Decimal).decode


def json_text(value: Any, dumps: Callable[[Any], str]) -> str:
    """A parsed JSON value as JSON text by `dumps`, a Decimal (a number read with every
    digit it was written with, where a double would lose some) written as it reads."""
    try:
        return dumps(value)
    except (TypeError, RecursionError):
        # a Decimal inside, or nested deeper than the encoder goes (orjson reads 1024
        # levels): rare, so written out here rather than by the encoder
        pass
    # With a stack rather than recursion: the value may be nested as deep as the parser goes.
    parts: list[str] = []
    todo: list[Any] = [value]
    while todo:
        item = todo.pop()
        kind = type(item)
        if kind is _Punctuation:
            parts.append(item)
        elif kind is decimal.Decimal:
            parts.append(str(item))  # finite, as read from JSON: its spelling is a JSON number
        elif kind is dict or kind is list:
            opening, closing = ("{", "}") if kind is dict else ("[", "]")
            parts.append(opening)
            todo.append(_Punctuation(closing))
            pairs = item.items() if kind is dict else ((None, v) for v in item)
            for i, (key, element) in reversed(list(enumerate(pairs))):
                todo.append(element)
                if key is not None:
                    todo.append(_Punctuation(dumps(key) + ":"))
                if i:
                    todo.append(_Punctuation(","))
        else:
            parts.append(dumps(item))
    return "".join(parts)


class _Punctuation(str):
    """JSON text json_text writes as it is, told apart from the strings of the value."""

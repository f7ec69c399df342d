"""Writes FlowFiles into a PostgreSQL table, each exactly once, keyed by FlowFile id.

Every batch goes in as ONE statement, `INSERT … SELECT … FROM ROWS FROM
(json_array_elements_text($1::json), …) ON CONFLICT (id) DO NOTHING`: each column
travels as one parameter, a JSON array of its values as text, which PostgreSQL
splits and converts to the column's type. Every value is bound, none is spliced into
the SQL; a batch delivered again after a crash or a lost connection adds nothing. A
row the table refuses (a value that does not fit a typed column, a field holding
`\\u0000`, which text and jsonb columns cannot hold, a CHECK or NOT NULL constraint
you added, a trigger of yours that raises an exception) is found by splitting the
batch in halves; it goes to the dead-letter table with PostgreSQL's message and the
rest of the batch is delivered. A lost connection, a timeout, a server shutting
down or any other error makes the engine retry the whole batch later.

A trigger's refusal is the row's: RAISE EXCEPTION (SQLSTATE P0001 unless it says
otherwise), ASSERT (P0004) or an ERRCODE of classes 22 or 23 dead-letters the row,
as a CHECK does. That includes a trigger that routes rows to partitions and finds
the next partition missing: every row of that time range goes to the dead letters
(PostgreSQL's own partitioning does the same: "no partition of relation found for
row" is a constraint violation, 23514). Nothing is lost, dead letters can be
replayed (`edge-stream dead-letters replay`) once the partition is made; to have
such rows held and the batch retried until you act, raise another class:
`RAISE EXCEPTION 'no partition for %', NEW.ts USING ERRCODE = 'lock_not_available'`
(55P03; any SQLSTATE outside classes 22, 23, 54, P0001 and P0004 is retried).

The default table, created when missing unless `create_table: false`:

  CREATE TABLE readings (
    id         uuid PRIMARY KEY,      -- FlowFile id (UUIDv7, time-ordered)
    topic      text NOT NULL,
    ts         timestamptz NOT NULL,  -- FlowFile creation time
    attributes jsonb NOT NULL,
    payload    jsonb,                 -- the content when it is valid JSON, else NULL
    raw        bytea                  -- the content bytes when it is not JSON, else NULL
  )
(JSON that jsonb cannot hold, a `\\u0000` or a lone surrogate such as `\\ud800` in a
string, counts as not JSON here: it is kept whole in raw.)

`columns:` replaces that layout with your own; `id uuid PRIMARY KEY` is always
there. Each column names where its value comes from, written `name: source` or
`name: {from: source, type: sql type}`:

  id, topic, ts, attributes, payload, raw   as in the default table (fixed types)
  topic.N              topic level N, counted from 0; negative counts from the end
                       (sensors/dev1/telemetry: topic.1 is dev1, topic.-1 telemetry)
  field.a.b            a field of the JSON content (a number picks a list item);
                       strings are stored as is, objects and lists as JSON
  attributes.KEY       one attribute

A value that is missing (no such level, field or attribute, or content that is not
JSON) is NULL. `type` applies to topic.N, field.* and attributes.* (default text)
and is one of: text, boolean, smallint, integer, bigint, real, double precision,
numeric, timestamptz, date, jsonb, uuid. PostgreSQL converts the value to it, so
`"21.5"` and `21.5` both fit double precision; a row whose value does not fit is
refused alone (1e999 into double precision too). A number goes as written, every
digit kept: into numeric, text or jsonb, 12345678901234.5678 stays that. A value
whose `type` is smallint, integer or bigint, or (into a column of an existing
table that holds integers) real, double precision or numeric, must be a whole
number, as the mysql sink takes it: 21.0 and "1e2" fit; PostgreSQL would round
21.5 to 22 through a fractional type, so that row is refused instead.
A timestamptz value without an offset (`2024-05-01 12:00:00`) is read in the
session's time zone: the server's TimeZone setting, unless the dsn sets one
(`?options=-c%20timezone%3DUTC`); the mysql sink reads it as UTC. Table and
column names are lowercase SQL identifiers (letters, digits, `_`), checked when
the config is loaded and always quoted.

When the sink starts it creates the table if needed and checks that it can write to
it (columns, types, a unique index on id, no NOT NULL column without a default that
it does not write). Its user needs the INSERT and SELECT privileges on the table
(SELECT for `ON CONFLICT (id)`), and CREATE on the schema only to create the
table. It does not change an existing table: add a column yourself, or point
`table` at a new one. A wrong password, a missing database, schema or table
(with `create_table: false`), a table of another shape, a TLS file of the dsn
(`?sslcert=`, `?sslkey=`, and `?sslrootcert=` with sslmode verify-ca or verify-full)
that cannot be read, a server without TLS when the dsn's sslmode requires it
(require, verify-ca, verify-full), or a setting of the dsn's `?options=-c name=value`
that the server refuses (`statement_timeout=abc`, an unknown name) stops the sink
with one line until the config is fixed, the data kept in the buffer.

Keys
  type: postgres
  dsn: postgresql://user:password@host:5432/database   (required; percent-encode
                           #, /, ? and @ in user and password (%23, %2F, %3F, %40);
                           may be an ENC(...) secret; the password is never logged
                           nor quoted in an error. Options
                           such as ?sslmode=require are passed to asyncpg;
                           ?sslrootcert=system verifies the server against the
                           system's CAs (OpenSSL's default CA file, SSL_CERT_FILE
                           if set) and takes sslmode=verify-full only. Checked
                           when the config loads: the scheme, each host (an IPv6
                           address in brackets, [::1]) and port (1-65535))
  table: readings          the table, optionally schema.table (default readings);
                           the sink creates tables, not schemas: plant.climate
                           needs CREATE SCHEMA plant first
  create_table: true       create the table when it does not exist (default true)
  columns: null            your own columns, see above (default: the table above)
  pool_size: 1             connections, 1 or 2 (default 1)
  timeout: 30s             the longest a connect or one statement may take before
                           the connection is dropped and the batch retried (default 30s)
  and the delivery keys every sink has: batch, retry, rate_limit, overflow.

Examples
  sinks:
    warehouse:
      type: postgres
      dsn: "postgresql://gateway:ENC(...)@db.plant.lan:5432/telemetry"
      batch: {max_rows: 1000}

    climate:
      type: postgres
      dsn: "postgresql://gateway:ENC(...)@db.plant.lan/telemetry"
      table: plant.climate
      columns:
        device: topic.1
        at: ts
        temperature: {from: field.temp, type: double precision}
        humidity: {from: field.env.humidity, type: real}
        site: attributes.site
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import decimal
import json
import os
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

import asyncpg
import orjson

from gateway.config.model import SinkConfig
from gateway.config.schema import (
    POSITIVE_DURATION,
    Doc,
    Duration,
    Range,
    Valid,
    check_identifier,
    url_location_problem,
)
from gateway.core.component import Context, Rejected, Sink
from gateway.core.errors import MissingError, PermanentError, RetryableError
from gateway.core.flowfile import FlowFile, attributes_json
from gateway.sinks._columns import (
    COLUMNS_DOC,
    NOT_NULL,
    Column,
    Dialect,
    columns_for,
    dig,
    has_surrogate,
    json_text,
    level,
    loads,
    loads_exact,
    plan_columns,
)

# --- config -------------------------------------------------------------------------------

# Column types a `type:` may name, with a few spellings people use for them.
TYPES: dict[str, str] = {
    "text": "text",
    "boolean": "boolean",
    "bool": "boolean",
    "smallint": "smallint",
    "integer": "integer",
    "int": "integer",
    "bigint": "bigint",
    "real": "real",
    "double precision": "double precision",
    "float": "double precision",
    "numeric": "numeric",
    "timestamptz": "timestamptz",
    "timestamp with time zone": "timestamptz",
    "date": "date",
    "jsonb": "jsonb",
    "uuid": "uuid",
}

# The type of each source with a fixed type; the others (topic.N, field.*, attributes.*) are
# text unless a `type` says otherwise.
FIXED: dict[str, str] = {
    "id": "uuid",
    "topic": "text",
    "ts": "timestamptz",
    "attributes": "jsonb",
    "payload": "jsonb",
    "raw": "bytea",
}


def _check_name(name: str) -> Iterator[str]:
    problems = list(check_identifier(name))
    yield from problems
    if name != name.lower() and not problems:  # else `use 'bad-name'` would name no identifier
        yield (
            f"{name!r} must be lowercase: PostgreSQL folds unquoted names to lowercase,"
            f" so every query would have to quote it (use {name.lower()!r})"
        )


DIALECT = Dialect(
    name="PostgreSQL",
    types=TYPES,
    shown_types=sorted(set(TYPES.values())),
    fixed=FIXED,
    text="text",
    check_name=_check_name,
)


def dsn_problem(dsn: str) -> str | None:
    """Why `dsn` cannot be a PostgreSQL DSN (never quoting it: it may hold a password)."""
    scheme, sep, _ = dsn.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return "must read postgresql://user:password@host:5432/database"
    problem = url_location_problem(dsn, hosts=True)
    if problem:
        return problem
    options = _options(dsn)
    if options.get("sslrootcert") == "system" and options.get("sslmode", _SYSTEM_MODE) != (
        _SYSTEM_MODE
    ):
        # libpq refuses it too: any public CA signs certificates for any host, so only the
        # host name check makes the system's CAs vouch for the server.
        return (
            f"sslrootcert=system needs sslmode={_SYSTEM_MODE} (or no sslmode), not"
            f" sslmode={options['sslmode']}: the system's CAs trust any host they signed for"
        )
    return None


def _options(dsn: str) -> dict[str, str]:
    """The ?options of a dsn ({} if they cannot be read)."""
    try:
        return dict(parse_qsl(urlsplit(dsn).query))
    except ValueError:
        return {}


# libpq's sslmode with sslrootcert=system: its default then, and the only one it takes.
_SYSTEM_MODE = "verify-full"


def connect_dsn(dsn: str) -> tuple[str, str | None]:
    """The dsn as asyncpg is given it, and why it cannot be, in one line, or None.

    `sslrootcert=system` means the system's trusted CAs, as for libpq; asyncpg (0.32)
    takes it for a file named "system" ("No such file or directory"). It is given
    OpenSSL's default CA file instead (SSL_CERT_FILE, else the system's bundle, as
    libpq's OpenSSL reads it), with sslmode=verify-full when the dsn names no sslmode
    (libpq's default with system). Shared by the postgres sink and source.
    """
    head, sep, query = dsn.partition("?")
    if not sep or _options(dsn).get("sslrootcert") != "system":
        return dsn, None
    roots = ssl.get_default_verify_paths().cafile
    if roots is None or not os.access(roots, os.R_OK):
        return dsn, (
            "sslrootcert=system (in the dsn): this system has no CA bundle that OpenSSL"
            " reads (install ca-certificates, or set SSL_CERT_FILE or sslrootcert to a CA file)"
        )
    query, hash_, fragment = query.partition("#")
    items = []
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if unquote_plus(key) == "sslrootcert" and unquote_plus(value) == "system":
            item = f"sslrootcert={quote(roots, safe='/')}"
        items.append(item)
    if "sslmode" not in _options(dsn):
        items.append(f"sslmode={_SYSTEM_MODE}")
    return f"{head}?{'&'.join(items)}{hash_}{fragment}", None


@dataclass(frozen=True, kw_only=True)
class PostgresSinkConfig(SinkConfig):
    """Keys of the `postgres` sink (plus batch, retry, rate_limit, overflow from SinkConfig)."""

    # May hold a password: never repr'd, never quoted back in a problem.
    dsn: Annotated[
        Annotated[str, Valid(dsn_problem)],
        Doc(
            "`postgresql://user:password@host:5432/database`; percent-encode `#`, `/`,"
            " `?` and `@` in user and password; may be an `ENC(...)` secret; the password"
            " is never logged. Options such as `?sslmode=require` go to asyncpg.",
            example="postgresql://gateway:secret@db.plant.lan:5432/telemetry",
        ),
    ] = field(repr=False)
    table: Annotated[
        str, Doc("The table, optionally `schema.table` (lowercase SQL identifiers).")
    ] = "readings"
    create_table: Annotated[bool, Doc("Create the table when it does not exist.")] = True
    columns: Annotated[dict[str, str | dict[str, str]] | None, COLUMNS_DOC] = None
    pool_size: Annotated[
        int,
        Doc("Connections to the server."),
        Range(1, 2, "must be 1 or 2 (one batch is written at a time)"),
    ] = 1
    timeout: Annotated[
        Duration,
        Doc(
            "The longest a connect or one statement may take before the connection is"
            " dropped and the batch retried."
        ),
        POSITIVE_DURATION,
    ] = 30.0

    def check(self) -> Iterator[tuple[str, str]]:
        if self.table is not None:
            parts = self.table.split(".")
            if len(parts) > 2:
                yield "table", f"{self.table!r} must read table or schema.table"
            for part in parts:
                for message in _check_name(part):
                    yield "table", message
            if len(parts) == 2 and (parts[0] == "pg_temp" or parts[0].startswith("pg_temp_")):
                yield (
                    "table",
                    f"{self.table!r}: schema pg_temp holds temporary tables, dropped with"
                    " the connection that made them, and the rows with them; name another"
                    " schema",
                )
        yield from plan_columns(self.columns, DIALECT)[1]


# --- rows ---------------------------------------------------------------------------------


# Built once: json.loads/dumps with keyword arguments build a new codec on every call.
_dumps = json.JSONEncoder(separators=(",", ":")).encode

# The column types a field's number keeps every digit in when read exactly.
_EXACT = frozenset({"numeric", "text", "jsonb"})

_NOT_JSON: Any = object()
# A long number: its digits and dots made zeros, then looked for (twice as quick as a
# regular expression, and it runs for every FlowFile of a sink with field columns). 17 of
# them: an integer past 64 bits (20 digits or more) or a fraction of 16 digits or more,
# which a double may not keep (15 always come back); an integer of 17 to 19 digits, which
# orjson keeps, takes the slower parser needlessly.
_NUMBER_AS_ZEROS = bytes.maketrans(b"123456789.", b"0000000000")
_LONG_NUMBER = b"0" * 17


def _storable(value: Any) -> bool:
    """False if jsonb cannot hold `value`: a NUL or a lone surrogate in a string."""
    # With a stack rather than recursion: JSON nested some 500 deep with a \\u escape in it
    # raised RecursionError here, and the sink crashed on that batch again and again.
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if "\x00" in item or (not item.isascii() and has_surrogate(item)):
                return False
        elif isinstance(item, dict):
            todo += item.keys()
            todo += item.values()
        elif isinstance(item, list):
            todo += item
    return True


def _parse(content: bytes, exact: bool = True, fields: bool = True) -> tuple[str | None, Any]:
    """(the content as jsonb text or None, the parsed JSON value or _NOT_JSON).

    With `fields` false (no column takes a field: the value is only checked, the text
    is stored and PostgreSQL reads its digits) integers past 64 bits may come out as
    floats; with it, a number orjson refuses (1e999) comes out as a Decimal, for the
    column to refuse; with `exact` too (a column that keeps the digits, see
    _Rows.exact), so does a number a double cannot keep."""
    try:
        text = content.decode()
    except UnicodeDecodeError:
        return None, _NOT_JSON
    # orjson is about four times faster; what it refuses (lone surrogate escapes, 1e999)
    # gets a second opinion from the standard parser, and so, to be stored exactly, does
    # content with a long number: an integer of 20 digits or more, which orjson reads as a
    # float beyond 64 bits (the digits past 17 lost), or a fraction of many digits.
    value: Any = _NOT_JSON
    with contextlib.suppress(orjson.JSONDecodeError):
        value = orjson.loads(content)
        if exact and _LONG_NUMBER in content.translate(_NUMBER_AS_ZEROS):
            value = _NOT_JSON
    if value is _NOT_JSON:
        try:
            value = (loads_exact if exact or fields else loads)(text)
        # ArithmeticError: an exponent past any Decimal's (1e99999999999999999999), which
        # escaped the sink's write and had it retry the batch for ever
        except (ValueError, RecursionError, ArithmeticError):  # JSONDecodeError included
            return None, _NOT_JSON
    # Only a \\u escape can hide a NUL or a lone surrogate in valid UTF-8 JSON.
    if "\\u" in text and not _storable(value):
        return None, value
    return text, value


def _text(value: Any) -> str | None:
    """A JSON value as column text: strings as they are, anything else as JSON."""
    kind = type(value)
    if kind is str or value is None:
        return value  # type: ignore[no-any-return]
    if kind is float or kind is int:
        return repr(value)  # the JSON spelling, and far quicker than the encoder for numbers
    if kind is bool:
        return "true" if value else "false"
    if kind is decimal.Decimal:
        return str(value)  # always finite here, and its spelling is a JSON number
    return _json(value)


def _json(value: Any) -> str:
    """A parsed JSON value as JSON text, Decimals (see _parse) with every digit."""
    return json_text(value, _dumps)


# How each column's value, arriving as text, becomes the column's type (u.cN is the text).
# `whole`: the integer type (smallint, integer, bigint) of a column whose `type` is one, or
# the table's for a column whose `type` is fractional: the value goes to it as a whole
# number (21.0 and "1e2" too, as the mysql sink takes them), refusing a fraction.
def _convert(column: Column, whole: str | None = None) -> str:
    source = column.source
    if source == "ts":  # microseconds since the epoch, exact
        return "timestamptz 'epoch' + {}::int8 * interval '1 microsecond'"
    if source == "raw":
        return "decode({}, 'base64')"
    if column.type == "text":
        return "{}"
    if whole is not None:
        # A whole number as written (2.0, 1e2 as 100.0) fits, through numeric; a fraction,
        # and anything that is not a decimal number ("high"), is converted to the integer
        # type straight and fails there, so the message names the column's own type and
        # the value ('invalid input syntax for type integer: "high"'): through numeric it
        # said "type numeric" for an integer column. (CASE tries its branches in order,
        # where the order of an AND's operands is not defined.)
        return (
            f"CASE WHEN {{0}} !~ '{_DECIMAL}' THEN {{0}}::{whole}"
            f" WHEN {{0}}::numeric % 1 = 0 THEN {{0}}::numeric::{whole} ELSE {{0}}::{whole} END"
        )
    return "{}::" + column.type


# A decimal number as numeric reads it, its exponent under 4 digits (1e9999 goes to the
# integer type, which says it is out of range or not an integer, never numeric's overflow).
_DECIMAL = (
    "^[[:space:]]*[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9][0-9]?[0-9]?)?[[:space:]]*$"
)


# A `type` that PostgreSQL would round, without a word, into a table's integer column.
_FRACTIONAL = frozenset({"real", "double precision", "numeric"})
_INTEGER = frozenset({"smallint", "integer", "bigint"})


def _base64(content: bytes) -> str:
    return base64.b64encode(content).decode("ascii")


def _json_array(values: list[Any]) -> str:
    """One column of a batch as the JSON array its statement parameter carries.

    One text parameter per column costs asyncpg a single encode, where an array
    parameter costs it type checks on every element; PostgreSQL does the splitting.
    """
    try:
        return orjson.dumps(values).decode()
    except TypeError:  # a lone surrogate: escaped, and refused by the server row by row
        return json.dumps(values)


class _Rows:
    """Turns a batch into one list per column; the column-building is the hot path."""

    def __init__(self, columns: list[Column], whole: frozenset[str] = frozenset()) -> None:
        """`whole`: the names of the table's integer columns a fractional `type` goes to."""
        self.columns = columns
        sources = [c.source for c in columns]
        self.needs_json = any(s in ("payload", "raw") or s.startswith("field.") for s in sources)
        self.needs_levels = any(s.startswith("topic.") for s in sources)
        # A field's value is stored as parsed: read exactly (Decimals, every digit) when
        # a long number is there and a field column keeps its digits (numeric, text,
        # jsonb) or goes to an integer column, by its `type` or the table's (where
        # 21.00000000000000001 is refused, its double 21.0 taken); real and double
        # precision columns gain nothing.
        # Decided once: the scan for a long number cost every FlowFile of a readings table
        # twice its parse.
        self.fields = any(s.startswith("field.") for s in sources)
        self.exact = any(
            c.source.startswith("field.") and (c.type in _EXACT or c.name in whole) for c in columns
        )

    def build(self, batch: list[FlowFile]) -> list[list[Any]]:
        exact, fields = self.exact, self.fields
        parsed = [_parse(ff.content, exact, fields) for ff in batch] if self.needs_json else []
        levels = [ff.topic.split("/") for ff in batch] if self.needs_levels else []
        out: list[list[Any]] = []
        for column in self.columns:
            source = column.source
            if source == "id":
                out.append([ff.id for ff in batch])
            elif source == "topic":
                out.append([ff.topic for ff in batch])
            elif source == "ts":
                out.append([ff.created // 1000 for ff in batch])
            elif source == "attributes":
                out.append([attributes_json(ff.attributes) for ff in batch])
            elif source == "payload":
                out.append([text for text, _ in parsed])
            elif source == "raw":
                pairs = zip(batch, parsed, strict=True)
                out.append(
                    [_base64(ff.content) if text is None else None for ff, (text, _) in pairs]
                )
            elif source.startswith("topic."):
                n = int(source[6:])
                out.append([level(parts, n) for parts in levels])
            elif source.startswith("attributes."):
                key = source[11:]
                out.append([ff.attributes.get(key) for ff in batch])
            else:  # field.PATH
                path = tuple(source[6:].split("."))
                if len(path) == 1:  # the common case, without a call per row
                    key = path[0]
                    dug = [v.get(key) if type(v) is dict else None for _, v in parsed]
                else:
                    dug = [dig(v, path) for _, v in parsed]
                if column.type == "jsonb":
                    out.append([None if v is None else _json(v) for v in dug])
                else:
                    out.append([_text(v) for v in dug])
        return out


# --- errors -------------------------------------------------------------------------------

# What one row's values can cause: data exceptions (22: bad input syntax, out of range,
# untranslatable characters, asyncpg's own "invalid input for query argument"), integrity
# violations (23: NOT NULL, CHECK, foreign keys, other unique indexes), program limits
# (54: a value too large for an index, JSON nested too deep) and a trigger's refusal.
_ROW_ERRORS = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
    # a trigger of the table's refusing the row: RAISE EXCEPTION (P0001) or ASSERT (P0004)
    # (retried as no fault of the row's, it held the sink on that batch for ever); a
    # trigger that means "not now" raises another ERRCODE, as the docstring tells
    asyncpg.exceptions.RaiseError,
    asyncpg.exceptions.AssertError,
)

# The connection or the server is not usable right now (TimeoutError is an OSError).
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    # "cannot switch to state 12; another operation (2) is in progress": the server went
    # away in the middle of a write and the connection's protocol lost its place (it
    # crashed the sink, with a traceback); the connection is dropped and made again
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)

# A setting of the dsn's ?options=-c name=value that the server refuses when a connection
# starts: a value it cannot read (statement_timeout=abc) or a setting fixed at server start
# (shared_buffers). Only the dsn can change that. (An unknown setting is 42704, a
# SyntaxOrAccessError, among _SETUP_ERRORS.)
_OPTION_ERRORS = (
    asyncpg.exceptions.InvalidParameterValueError,  # 22023
    asyncpg.exceptions.CantChangeRuntimeParamError,  # 55P02
)


def _tls_refused(err: OSError) -> bool:
    """Whether asyncpg could not connect because the server answered its TLS request
    with "no TLS here" and the sslmode (require, verify-ca, verify-full) does not allow
    going on without: asyncpg says so only in its message, on a plain ConnectionError.
    (Any other ConnectionError, or this one worded otherwise, stays a retry.)"""
    return type(err) is ConnectionError and "rejected SSL upgrade" in str(err)


def _sslmode(dsn: str) -> str | None:
    return _options(dsn).get("sslmode")


# OpenSSL's libraries whose errors are about the files the dsn names, not the server.
_TLS_FILE_ERRORS = frozenset({"PEM", "X509", "X509V3", "ASN1"})


def _tls_files(dsn: str) -> list[tuple[str, str]]:
    """The files that the dsn's ?sslcert and ?sslkey (and, with sslmode verify-ca or
    verify-full, ?sslrootcert) name: asyncpg reads them at every connect, and says only
    "No such file or directory" when one is missing."""
    options = _options(dsn)
    mode = options.get("sslmode", "prefer")
    if mode == "disable":
        return []
    keys = ["sslcert", "sslkey"]
    if mode in ("verify-ca", "verify-full"):
        keys.insert(0, "sslrootcert")  # else a missing one only means no verification
    # (sslrootcert=system is the system's CAs: connect_dsn)
    return [(k, options[k]) for k in keys if options.get(k) and options[k] != "system"]


# The table or the configuration is wrong: no retry can fix it without an operator.
_SETUP_ERRORS = (
    asyncpg.exceptions.SyntaxOrAccessError,  # 42: no such table or column, no privilege
    asyncpg.exceptions.InvalidSchemaNameError,  # 3F000: no such schema
    asyncpg.exceptions.InvalidCatalogNameError,  # 3D000: no such database
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # 28: bad user or password
    asyncpg.exceptions.ClientConfigurationError,  # bad DSN options
)


# PostgreSQL's message for a value whose type does not convert to its column's.
_MISMATCH = re.compile(r'column "([^"]+)" is of type (.+?) but expression is of type')


def _message(err: BaseException) -> str:
    """The server's message on one line (with its DETAIL), cut to a sane length."""
    text = " ".join(str(err).split()) or type(err).__name__
    sqlstate = getattr(err, "sqlstate", None)
    if sqlstate:
        text = f"{text} (SQLSTATE {sqlstate})"
    return text if len(text) <= 600 else text[:597] + "..."


def _server(dsn: str) -> str:
    """host:port/database from a DSN, without user or password."""
    try:
        parts = urlsplit(dsn)
        host, port = parts.hostname or "localhost", parts.port or 5432
    except ValueError:
        return "the configured server"
    return f"{host}:{port}/{parts.path.lstrip('/') or '(default database)'}"


def tls_file_problem(dsn: str) -> str | None:
    """Which TLS file of the dsn cannot be read, in one line, or None (see `_tls_files`)."""
    for name, path in _tls_files(dsn):
        if not os.access(path, os.R_OK):
            return f"{name} {path} (in the dsn) cannot be read"
    return None


# What asyncpg.connect or create_pool may raise for a connection it could not make.
CONNECT_ERRORS = (*_CONNECTION_ERRORS, asyncpg.PostgresError, ValueError)


def connect_error(
    err: BaseException, server: str, dsn: str, permanent: type[Exception]
) -> Exception:
    """What one of CONNECT_ERRORS from asyncpg's connect means, in one line: `permanent`
    for what only the dsn, the user or the server's setup can fix (a refused login, a
    database that does not exist, a setting of ?options the server refuses, TLS the
    sslmode requires but the server does not offer, a TLS file holding no PEM, a dsn
    asyncpg cannot read), MissingError for a host name that does not resolve, else
    RetryableError. Shared by the postgres sink and source."""
    if isinstance(err, _SETUP_ERRORS):
        return permanent(f"{server} refused the connection: {_message(err)}")
    if isinstance(err, _OPTION_ERRORS):
        return permanent(f"{server} refused a setting of the dsn's ?options: {_message(err)}")
    if isinstance(err, ConnectionError) and _tls_refused(err):
        mode = _sslmode(dsn)
        needs = f"the dsn's sslmode={mode}" if mode else "PGSSLMODE"
        return permanent(
            f"{server} does not offer TLS, which {needs} requires: turn ssl on"
            " in the server, or use sslmode=prefer (TLS if offered) or disable"
        )
    if isinstance(err, ssl.SSLError) and err.library in _TLS_FILE_ERRORS:
        # a file of the dsn holds no usable PEM
        return permanent(
            f"cannot use the TLS files of the dsn (sslrootcert, sslcert, sslkey): {err}"
        )
    if isinstance(err, socket.gaierror):
        return MissingError(
            f"cannot connect to {server}: its host name does not resolve ({err.strerror})"
        )
    if isinstance(err, (*_CONNECTION_ERRORS, asyncpg.PostgresError)):
        return RetryableError(f"cannot connect to {server}: {_message(err)}")
    # asyncpg could not read the DSN (an ?option it takes as a number, say). Its message
    # may quote any part of the DSN, the password too: not shown.
    return permanent(
        f"asyncpg cannot read the dsn for {server}: check its ?options"
        " and percent-encode #, /, ? and @ in user and password"
    )


async def _keep_session(conn: Any) -> None:
    """Skip asyncpg's reset query on release: the sink changes no session state, and on
    a slow uplink that query would cost a round trip per batch."""


# --- the sink -----------------------------------------------------------------------------


class PostgresSink(Sink):
    """Inserts batches into one PostgreSQL table through a small asyncpg pool."""

    Config = PostgresSinkConfig

    def __init__(self, config: PostgresSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: PostgresSinkConfig = config
        self.columns = columns = columns_for(config.columns, DIALECT)
        self.table = ".".join(f'"{part}"' for part in config.table.split("."))
        self.server = _server(config.dsn)
        # An integer `type` takes a whole number written as a fraction (21.0, which JSON
        # encoders write for a float): PostgreSQL's integer input refused it, the row
        # dead-lettered, where a fractional `type` into an integer column took it.
        self._integers = {c.name: c.type for c in columns if c.type in _INTEGER}
        self._rows = _Rows(columns, frozenset(self._integers))
        self._insert_sql = self._insert_statement()
        self._pool: Any = None  # asyncpg.Pool
        self._lock = asyncio.Lock()
        self._connected_to: dict[str, str] = {}  # server and table, once connected

    def _insert_statement(self, whole: Mapping[str, str] | None = None) -> str:
        """The INSERT; `whole` names the integer type of the table's columns whose
        `type` is fractional (see _convert)."""
        whole = {**self._integers, **(whole or {})}
        names, params, exprs = [], [], []
        for i, column in enumerate(self.columns, 1):
            names.append(f'"{column.name}"')
            params.append(f"json_array_elements_text(${i}::json)")
            exprs.append(_convert(column, whole.get(column.name)).format(f"u.c{i}"))
        aliases = ", ".join(f"c{i}" for i in range(1, len(self.columns) + 1))
        return (
            f"INSERT INTO {self.table} ({', '.join(names)})"
            f" SELECT {', '.join(exprs)}"
            f" FROM ROWS FROM ({', '.join(params)}) AS u({aliases})"
            " ON CONFLICT (id) DO NOTHING"
        )

    def create_statement(self) -> str:
        """The CREATE TABLE IF NOT EXISTS statement for the configured columns."""
        lines = []
        for column in self.columns:
            line = f'"{column.name}" {column.type}'
            if column.name == "id":
                line += " PRIMARY KEY"
            elif column.source in NOT_NULL:
                line += " NOT NULL"
            lines.append(line)
        return f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(lines)})"

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, create the table if asked, and check that a batch can be written.

        RetryableError if the server cannot be reached; PermanentError if it refuses us
        (user, password, database) or the table cannot take our rows.
        """
        await self._ready(permanent=PermanentError)

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        """Insert the batch; return the rows PostgreSQL refused, with its message."""
        if not batch:
            return []
        columns = self._rows.build(batch)
        # After a lost connection: reconnect and check the table again. A table problem
        # found now waits for the operator like an outage, rather than dead-lettering.
        pool = await self._ready(permanent=RetryableError)
        rejected: list[Rejected] = []
        try:
            async with pool.acquire() as conn:
                await self._insert(conn, batch, columns, 0, len(batch), rejected)
        except _CONNECTION_ERRORS as err:
            self._drop(pool)
            raise RetryableError(
                f"lost the connection to {self.server} while writing {len(batch)} rows"
                f" ({_message(err)}); the batch will be written again"
            ) from err
        except asyncpg.PostgresError as err:
            # Not a row's fault (a dropped table, a deadlock, a read-only server):
            # reconnect and check the table before the engine retries.
            self._drop(pool)
            raise RetryableError(
                f"{self.server} did not take {len(batch)} rows into {self.config.table}:"
                f" {_message(err)}"
            ) from err
        return rejected

    def status(self) -> Mapping[str, object]:
        """The server (without its password) and the table, once connected."""
        return self._connected_to

    async def close(self) -> None:
        """Close the connections; safe to call twice, or without connect()."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.config.timeout):
                await pool.close()
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError):
            pool.terminate()

    # --- inside ---------------------------------------------------------------------------

    async def _insert(
        self,
        conn: Any,
        batch: list[FlowFile],
        columns: list[list[Any]],
        lo: int,
        hi: int,
        rejected: list[Rejected],
    ) -> None:
        """Insert rows lo..hi; when PostgreSQL refuses a value, halve until the row is found."""
        whole = hi - lo == len(batch)
        args = [_json_array(values if whole else values[lo:hi]) for values in columns]
        try:
            # Same text every time: asyncpg prepares it once per connection and caches it.
            await conn.execute(self._insert_sql, *args)
        except _ROW_ERRORS as err:
            if hi - lo == 1:
                rejected.append(Rejected(batch[lo], f"postgres refused the row: {_message(err)}"))
                return
            mid = (lo + hi) // 2
            await self._insert(conn, batch, columns, lo, mid, rejected)
            await self._insert(conn, batch, columns, mid, hi, rejected)

    async def _ready(self, permanent: type[Exception]) -> Any:
        """The pool, opened and checked first if there is none; `permanent` is raised for
        what needs an operator (PermanentError at connect, RetryableError in write)."""
        async with self._lock:  # one opener; concurrent writes share its pool
            if self._pool is None:
                self._pool = await self._open(permanent)
            return self._pool

    async def _open(self, permanent: type[Exception]) -> Any:
        config = self.config
        dsn, problem = connect_dsn(config.dsn)
        problem = problem or tls_file_problem(config.dsn)
        if problem:
            raise permanent(problem)
        try:
            pool = await asyncpg.create_pool(
                dsn,
                # No floor: with one, asyncpg reconnects in the background while the
                # server is down and logs a traceback at each try. Connections are opened
                # when a write needs them and kept while they work.
                min_size=0,
                max_inactive_connection_lifetime=0,
                max_size=config.pool_size,
                timeout=config.timeout,
                command_timeout=config.timeout,
                reset=_keep_session,
                server_settings={"application_name": f"edge-stream {self.ctx.name}"},
            )
            try:
                conn = await pool.acquire()  # the first connection, made here
            except BaseException:
                pool.terminate()
                raise
        except CONNECT_ERRORS as err:
            raise connect_error(err, self.server, config.dsn, permanent) from err
        try:
            try:
                await self._prepare_table(conn, permanent)
            finally:
                await pool.release(conn)
        except _SETUP_ERRORS as err:
            pool.terminate()
            if isinstance(err, asyncpg.exceptions.InsufficientPrivilegeError):  # 42501
                fix = (
                    "grant the user INSERT and SELECT on the table (USAGE on its schema;"
                    " CREATE on the schema to create it)"
                )
            elif isinstance(err, asyncpg.exceptions.InvalidSchemaNameError):  # 3F000
                # the sink creates a table, never a schema: "fix the table" sent the
                # user looking at a table that could not be there
                schema, dot, _ = config.table.rpartition(".")
                fix = (
                    f"create the schema (CREATE SCHEMA {schema}), or point `table` at one"
                    " that exists"
                    if dot
                    # an unqualified table: no schema of the user's search_path exists
                    # (CREATE SCHEMA readings named the table, not a schema)
                    else "set the user's search_path to a schema that exists (ALTER ROLE"
                    " ... SET search_path), or write `table` as schema.table"
                )
            elif isinstance(err, asyncpg.exceptions.DatatypeMismatchError):  # 42804
                fix = self._type_fix(str(err))
            else:
                fix = "fix the table or point `table` at a new one"
            raise permanent(
                f"cannot write to table {config.table} on {self.server}: {_message(err)}; {fix}"
            ) from err
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as err:
            pool.terminate()
            raise RetryableError(
                f"cannot prepare table {config.table} on {self.server}: {_message(err)}"
            ) from err
        except BaseException:  # PermanentError, cancellation: do not leak the pool
            pool.terminate()
            raise
        self._connected_to = {"server": self.server, "table": config.table}
        self.ctx.log.info("connected to %s, writing to table %s", self.server, config.table)
        return pool

    async def _prepare_table(self, conn: Any, permanent: type[Exception]) -> None:
        exists = await conn.fetchval("SELECT to_regclass($1)", self.table) is not None
        if self.config.create_table and not exists:
            # Only when missing: CREATE TABLE IF NOT EXISTS needs the CREATE privilege on
            # the schema even when the table is there (PostgreSQL 15 grants none on public).
            await conn.execute(self.create_statement())
        elif not exists:
            raise permanent(
                f"table {self.config.table} does not exist on {self.server} and"
                " `create_table` is false: create it, or set `create_table: true`"
            )
        await self._match_integer_columns(conn)
        # An empty batch checks columns, types, privileges and the unique index on id
        # now, with a clear message, instead of failing every write later.
        await conn.execute(self._insert_sql, *("[]" for _ in self.columns))
        # A NOT NULL column without a default that the sink does not write would refuse
        # every row, each to the dead letters: the table's shape, not the data's fault.
        # (a generated column has its expression as its default, atthasdef; attidentity is
        # read through to_jsonb so that servers before PostgreSQL 10, without it, answer)
        try:
            unfilled = await conn.fetch(
                "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass($1)"
                " AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull AND NOT a.atthasdef"
                " AND coalesce(to_jsonb(a) ->> 'attidentity', '') = ''"
                " AND NOT a.attname = ANY($2::text[]) ORDER BY a.attnum",
                self.table,
                [column.name for column in self.columns],
            )
        except asyncpg.PostgresError as err:  # a server whose catalog reads otherwise
            self.ctx.log.warning(
                "cannot check table %s for NOT NULL columns the sink does not write: %s",
                self.config.table,
                _message(err),
            )
            unfilled = []
        if unfilled:
            names = ", ".join(row[0] for row in unfilled)
            raise permanent(
                f"table {self.config.table} on {self.server} has NOT NULL columns without a"
                f" default that the sink does not write ({names}), so every row would be"
                " refused; give them a default, allow NULL, or point `table` at a new table"
            )

    def _type_fix(self, message: str) -> str:
        """What to do about a column of the table whose type the value's `type` does not
        convert to (`column "n" is of type integer but expression is of type text`): most
        often a `type` left out (text), where the table's own type would do."""
        found = _MISMATCH.search(message)
        column = next((c for c in self.columns if found and c.name == found[1]), None)
        if found is None or column is None or column.source in FIXED:
            return "fix the table or point `table` at a new one"
        table_type = found[2]
        known = TYPES.get(table_type) or (
            "timestamptz" if table_type == "timestamp with time zone" else None
        )
        if known:
            return (
                f"give columns.{column.name} `type: {known}`, as the table has it (it is"
                f" {column.type}), or point `table` at a new one"
            )
        return (
            f"columns.{column.name} is {column.type}, and a `type` is one of"
            f" {', '.join(DIALECT.shown_types)}: change the column, or point `table` at a new one"
        )

    async def _match_integer_columns(self, conn: Any) -> None:
        """Convert to the table's own type a value whose `type` is fractional (real, double
        precision, numeric) but whose column holds integers: through the `type`,
        PostgreSQL would round 21.5 to 22 on the way in; to the column's type, it refuses
        it, and the row goes to the dead letters with its value."""
        fractional = [c.name for c in self.columns if c.type in _FRACTIONAL]
        if not fractional:
            return
        rows = await conn.fetch(
            "SELECT attname, atttypid::regtype::text FROM pg_attribute WHERE attrelid ="
            " to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attname = ANY($2::text[])",
            self.table,
            fractional,
        )
        integer = {name: sql_type for name, sql_type in rows if sql_type in _INTEGER}
        self._insert_sql = self._insert_statement(integer)
        self._rows = _Rows(self.columns, frozenset(self._integers) | frozenset(integer))

    def _drop(self, pool: Any) -> None:
        """Forget a broken pool; the next write reconnects and checks the table again."""
        if self._pool is pool:
            self._pool = None
        pool.terminate()

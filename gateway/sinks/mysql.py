"""Writes FlowFiles into a MySQL or MariaDB table, each exactly once, keyed by FlowFile id.

Every batch goes in as ONE multi-row `INSERT … ON DUPLICATE KEY UPDATE` with
every value bound as a parameter, so a batch delivered again after a crash
or a lost connection adds nothing: rows already there are left alone. A row
that collides with another on a unique key you added (not id) goes to the
dead-letter table only when the id column is NOT NULL, as a primary key is
(with a nullable id column it is left out and reported delivered). The
session runs in strict SQL mode (`STRICT_ALL_TABLES`, `NO_ZERO_DATE`,
`NO_ZERO_IN_DATE`, `ERROR_FOR_DIVISION_BY_ZERO`), so a value the table cannot
hold (a string too long for its column, a number out of range, text in a
numeric column) is refused instead of being silently cut, rounded or zeroed;
so is a row a trigger of yours refuses with a SIGNAL of class 45 (SQLSTATE
'45000', the user-defined exception, what a check of the row's values signals),
22 (a data exception) or 23 (a constraint violation: the row checks written as
triggers before MySQL 8.0.16 had CHECK signal '23000'), as the postgres sink
does classes 22 and 23. A SIGNAL of any other SQLSTATE, SIGNAL SQLSTATE '40001'
for "not now" say, has the whole batch held and retried until it goes, as an
outage does: signal that when the fault is not the row's (a table the trigger
writes to is missing) and you mean to fix it. Either way nothing is lost: dead
letters can be replayed (`edge-stream dead-letters replay`) once the trigger
lets them in.
The batch is then split in halves to find the refused rows: each goes to the
dead-letter table with the server's message, the rest are delivered.
A batch larger than the server's `max_allowed_packet` (16 MiB by default on
MariaDB, 64 MiB on MySQL 8) is split the same way before it is sent, and a
single row larger than that goes to the dead-letter table saying so (the
server would drop the connection, and the row would be retried forever).
(`INSERT IGNORE` is not used: it turns exactly those errors into warnings and
stores the mangled value.) A lost connection, a timeout, a deadlock or a
missing table makes the engine retry the whole batch later.

The default table, created when missing unless `create_table: false` (the same
layout as the postgres sink):

  CREATE TABLE readings (
    id         CHAR(36) CHARACTER SET ascii PRIMARY KEY,  -- or BINARY(16), see id_type
    topic      TEXT NOT NULL,
    ts         DATETIME(6) NOT NULL,  -- FlowFile creation time, UTC
    attributes JSON NOT NULL,
    payload    JSON,                  -- the content when it is valid UTF-8 JSON, else NULL
    raw        LONGBLOB               -- the content bytes when it is not JSON, else NULL
  ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
(JSON the server's JSON type cannot hold, a lone surrogate such as `\\ud800` in a
string or lists and objects nested 32 deep or more, which MariaDB refuses, counts as
not JSON here: it is kept whole in raw.)

`columns:` replaces that layout with your own; `id` is always there. Each column
names where its value comes from, written `name: source` or
`name: {from: source, type: sql type}`:

  id, topic, ts, attributes, payload, raw   as in the default table (fixed types)
  topic.N              topic level N, counted from 0; negative counts from the end
                       (sensors/dev1/telemetry: topic.1 is dev1, topic.-1 telemetry)
  field.a.b            a field of the JSON content (a number picks a list item);
                       objects and lists are stored as JSON
  attributes.KEY       one attribute

A value that is missing (no such level, field or attribute, or content that is not
JSON) is NULL. `type` applies to topic.N, field.* and attributes.* (default text)
and is one of: text, boolean, smallint, integer, bigint, real, double precision,
numeric (DECIMAL(38,10)), timestamptz (DATETIME(6), UTC), date, jsonb (JSON), uuid
(CHAR(36)); the MySQL names double, decimal, datetime and json work too. A
timestamptz or date value may be written as RFC 3339 / ISO 8601
(`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`), as the postgres sink takes
it: a time with an offset is stored in UTC, a date keeps the day as written (MySQL
itself refuses the `T`, the `Z` and offsets); a boolean may be the text `true`,
`false`, `yes`, `no`, `on`, `off`, `t`, `f`, `1` or `0`, in any case, or a number
or numeric text equal to 1 or 0 (1.0, "1e0", "0.0", which MySQL takes and
PostgreSQL refuses); another number (2, -7, 0.5, "2") is refused, as PostgreSQL
refuses it, where MySQL would store it or round it. A column of
the table that holds integers takes a whole number (21, 21.0, "1e2") and refuses a
fraction (21.5), which MySQL would round even in strict mode. A row whose
value does not fit its column is refused alone. A number goes as written, every
digit kept: into text or jsonb, 12345678901234.5678 stays that; numeric is
DECIMAL(38,10), which keeps it too but rounds past 10 decimals (0.12345678901234567891
is stored 0.1234567890, without a word, even in strict mode). Table
and column names are SQL identifiers (letters, digits, `_`), checked when the
config is loaded and always quoted.

When the sink starts it creates the table if needed and checks that the columns
exist, that a primary key or unique index is on id alone, and that no NOT NULL
column without a default is one the sink does not write (else every row would
be refused). Its user needs the INSERT, SELECT and UPDATE (for `ON DUPLICATE KEY
UPDATE`) privileges on the table, and CREATE only to create it. It does not
change an existing table: add a column yourself, or point
`table` at a new one. The session time zone is UTC, so `ts` and `NOW()` agree.

Keys
  type: mysql
  dsn: mysql://user:password@host:3306/database   (required; URL-encode special
                           characters in user and password; may be an ENC(...)
                           secret; the password is never logged. Checked when
                           the config loads: the scheme, the host (an IPv6 address
                           in brackets, [::1]) and the port (1-65535))
  table: readings          the table (default readings)
  create_table: true       create the table when it does not exist (default true)
  columns: null            your own columns, see above (default: the table above)
  id_type: char            the id column: char (CHAR(36), readable) or binary
                           (BINARY(16), a smaller index) (default char); an
                           existing table's id column must hold them (binary: a
                           bytes column of 16 bytes or more; char: text or bytes
                           of 36 or more), else the sink stops with one line
  ca_file: null            connect with TLS, verifying the server against this CA
                           bundle (default: no TLS); a server that does not offer
                           TLS, or a file that cannot be read or holds no
                           certificate, stops the sink with one line
  timeout: 30s             the longest a connect or one statement may take before
                           the connection is dropped and the batch retried (default 30s)
  and the delivery keys every sink has: batch, retry, rate_limit, overflow.

Examples
  sinks:
    warehouse:
      type: mysql
      dsn: "mysql://gateway:ENC(...)@db.plant.lan:3306/telemetry"
      batch: {max_rows: 1000}

    climate:
      type: mysql
      dsn: "mysql://gateway:ENC(...)@db.plant.lan/telemetry"
      table: climate
      columns:
        device: topic.1
        at: ts
        temperature: {from: field.temp, type: double}
        site: attributes.site
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import math
import os
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import unquote

import aiomysql
import pymysql
from pymysql.constants import CLIENT

from gateway.config.model import SinkConfig
from gateway.config.schema import (
    POSITIVE_DURATION,
    Doc,
    Duration,
    Valid,
    check_identifier,
    check_location,
)
from gateway.core.clock import utc_text
from gateway.core.component import Context, Rejected, Sink
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks._columns import (
    COLUMNS_DOC,
    DEFAULT_COLUMNS,
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

# A row whose id is there already is left alone. A row that collides with another one on
# a unique key of the table's other than id would be left out without a word: it sets
# the id NULL instead, which strict mode refuses (error 1048 on `id`) when the id column
# is NOT NULL (a primary key always is), and the row goes to the dead letters, as
# PostgreSQL refuses it. (A nullable id column would take the NULL: there, the first.)
_ON_DUPLICATE = " ON DUPLICATE KEY UPDATE id = IF(id = VALUES(id), id, NULL)"
_ON_DUPLICATE_NULLABLE = " ON DUPLICATE KEY UPDATE id=id"

SQL_MODE = (
    "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION"
)

# --- config -------------------------------------------------------------------------------

# Column types a `type:` may name (the postgres sink's names, plus MySQL's own).
TYPES: dict[str, str] = {
    "text": "TEXT",
    "boolean": "BOOLEAN",
    "bool": "BOOLEAN",
    "smallint": "SMALLINT",
    "integer": "INT",
    "int": "INT",
    "bigint": "BIGINT",
    "real": "FLOAT",
    "float": "DOUBLE",
    "double precision": "DOUBLE",
    "double": "DOUBLE",
    "numeric": "DECIMAL(38,10)",
    "decimal": "DECIMAL(38,10)",
    "timestamptz": "DATETIME(6)",
    "timestamp with time zone": "DATETIME(6)",
    "datetime": "DATETIME(6)",
    "date": "DATE",
    "jsonb": "JSON",
    "json": "JSON",
    "uuid": "CHAR(36) CHARACTER SET ascii",
}

# The type of each source with a fixed type; the others (topic.N, field.*, attributes.*) are
# TEXT unless a `type` says otherwise.
FIXED: dict[str, str] = {
    "id": "",  # CHAR(36) or BINARY(16), from id_type
    "topic": "TEXT",
    "ts": "DATETIME(6)",
    "attributes": "JSON",
    "payload": "JSON",
    "raw": "LONGBLOB",
}
ID_TYPES = {"char": "CHAR(36) CHARACTER SET ascii", "binary": "BINARY(16)"}

DIALECT = Dialect(
    name="MySQL",
    types=TYPES,
    shown_types=sorted(TYPES),
    fixed=FIXED,
    text="TEXT",
    check_name=check_identifier,
    fold_case=True,
)


def dsn_problem(dsn: str) -> str | None:
    """Why `dsn` cannot be a MySQL DSN (never quoting it: it holds a password)."""
    try:
        parse_dsn(dsn)
    except ValueError as err:
        return str(err)
    return None


@dataclass(frozen=True, kw_only=True)
class MysqlSinkConfig(SinkConfig):
    """Keys of the `mysql` sink (plus batch, retry, rate_limit, overflow from SinkConfig)."""

    # Holds a password: never repr'd, never quoted back in a problem.
    dsn: Annotated[
        Annotated[str, Valid(dsn_problem)],
        Doc(
            "`mysql://user:password@host:3306/database`; URL-encode special characters in"
            " user and password; may be an `ENC(...)` secret; the password is never"
            " logged.",
            example="mysql://gateway:secret@db.plant.lan:3306/telemetry",
        ),
    ] = field(repr=False)
    table: Annotated[str, Doc("The table (a SQL identifier: letters, digits, `_`).")] = "readings"
    create_table: Annotated[bool, Doc("Create the table when it does not exist.")] = True
    columns: Annotated[dict[str, str | dict[str, str]] | None, COLUMNS_DOC] = None
    id_type: Annotated[
        Literal["char", "binary"],
        Doc(
            "The id column: `char` (CHAR(36), readable) or `binary` (BINARY(16), a smaller index)."
        ),
    ] = "char"
    ca_file: Annotated[
        str | None,
        Doc(
            "Connect with TLS, verifying the server against this CA bundle (default: no TLS)."
            " A server that does not offer TLS is refused and the component stops; the"
            " client library learns it only after logging in, so whoever hid the TLS"
            " offer has seen the login: keep `require_secure_transport=ON` on the server."
        ),
    ] = None
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
            for message in check_identifier(self.table):
                yield "table", message
        yield from plan_columns(self.columns, DIALECT)[1]


class Dsn(NamedTuple):
    host: str
    port: int
    user: str
    password: str
    database: str

    def __repr__(self) -> str:  # never show the password
        return f"{self.host}:{self.port}/{self.database}"


def parse_dsn(dsn: str) -> Dsn:
    """Split `mysql://user:password@host:port/database`; ValueError if it is not one."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("mysql", "mariadb"):
        raise ValueError("must read mysql://user:password@host:3306/database")
    # The last '@' ends the user part, so a password holding '@' still parses.
    userinfo, _, location = rest.rpartition("@")
    user, _, password = userinfo.partition(":")
    hostport, _, database = location.partition("/")
    if "?" in database:
        raise ValueError("takes no ?options: use the keys ca_file and timeout")
    problem = check_location(hostport)
    if problem:
        raise ValueError(problem)
    if hostport.startswith("["):  # [IPv6]:port
        host, _, port = hostport[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, colon, port = hostport.rpartition(":")
        if not colon:
            host, port = hostport, ""
    if not host or not database or not user:
        raise ValueError("must name a user, a host and a database: mysql://user:pw@host/db")
    return Dsn(host, int(port or 3306), unquote(user), unquote(password), database)


# --- rows ---------------------------------------------------------------------------------


# Built once: json.loads/dumps with keyword arguments build a new codec on every call.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# A long number: its digits and dots made zeros, then looked for (quicker than a regular
# expression). 17 of them: a fraction of 16 digits or more, which a double may not keep
# (15 always come back); a long integer, which the parser keeps anyway, takes the slower
# parser needlessly.
_NUMBER_AS_ZEROS = bytes.maketrans(b"123456789.", b"0000000000")
_LONG_NUMBER = b"0" * 17
# The column types a field's number keeps every digit in when read exactly; a double (or
# boolean, date ...) column gains nothing from it.
_EXACT_TYPES = frozenset({"DECIMAL(38,10)", "TEXT", "JSON", "DATETIME(6)"})


def _json(value: Any) -> str:
    """A parsed JSON value as JSON text, Decimals (see _parse) with every digit."""
    return json_text(value, _dumps)


_NOT_JSON: Any = object()
# `YYYY-MM-DD HH:MM:SS.ffffff` in UTC: what a DATETIME(6) column takes
_ts = utc_text("%Y-%m-%d %H:%M:%S")


# The nesting of JSON that MariaDB's JSON_VALID, the check of its JSON columns, refuses
# (`[[...]]` 32 deep; MySQL's JSON type allows 100): such a payload sent its FlowFile to the
# dead letters, where the default table keeps what is not JSON to the server in raw.
_JSON_DEPTH = 32


# What the nesting is read from: the brackets and quotes, { and } made [ and ].
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_MARKS = bytes(set(range(256)) - set(b'[]{}"'))


def _nested(content: bytes, depth: int) -> bool:
    """Whether the JSON text `content` (valid: it parsed) may nest `depth` deep or more:
    never False when it does. It all stays in C: a Python walk of the parsed value cost an
    array of 40 readings twice its parse.

    Once the escapes (\\\\ and \\") are gone, the quotes delimit the strings; with all but
    the brackets and quotes gone, two quotes side by side go (that keeps every other quote
    opening or closing a string), and none are left unless a string holds a bracket: its
    text is then cut at the quotes. The brackets left outside strings are balanced, and
    each round of taking out the innermost pairs takes one level off, so brackets left
    after depth - 1 rounds nest that deep."""
    if b"\\" in content:
        content = content.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = content.translate(_BRACKETS, _NOT_MARKS).replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(brackets.split(b'"')[::2])
    for _ in range(depth - 1):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def _parse(content: bytes, exact: bool = False) -> tuple[str | None, Any]:
    """(the content as JSON text or None, the parsed value or _NOT_JSON).

    With `exact` (a field column gains from it, see _Rows.exact), a content holding a
    long number is read with its fractions as Decimals, every digit kept."""
    try:
        text = content.decode()
        if exact and _LONG_NUMBER in content.translate(_NUMBER_AS_ZEROS):
            value = loads_exact(text)
        else:
            value = loads(text)
    # ArithmeticError: an exponent past any Decimal's (1e99999999999999999999), which
    # escaped the sink's write and had it retry the batch for ever
    except (ValueError, RecursionError, ArithmeticError):  # Unicode/JSONDecodeError too
        return None, _NOT_JSON
    # A lone surrogate escape ("\ud800") is valid JSON that MySQL's JSON type refuses.
    if "\\u" in text and has_surrogate(_json(value)):
        return None, value
    # So is JSON nested too deep for the server, which reads the text: what its brackets
    # outside strings say (a key written twice keeps one value, not one nesting).
    if (
        len(content) >= 2 * _JSON_DEPTH
        and content.count(b"[") + content.count(b"{") >= _JSON_DEPTH
        and _nested(content, _JSON_DEPTH)
    ):
        return None, value
    return text, value


def _converter(sql_type: str) -> Callable[[Any], Any]:
    """How a JSON value is bound for a column of `sql_type`."""
    if sql_type == "JSON":
        return lambda v: None if v is None else _json(v)
    if sql_type == "TEXT":
        return lambda v: v if v is None or type(v) is str else _json(v)
    if sql_type == "DATETIME(6)":
        return _datetime
    if sql_type == "DATE":
        return _date
    if sql_type == "BOOLEAN":
        return _boolean
    return _as_is


# The texts PostgreSQL takes for a boolean; MySQL's BOOLEAN (TINYINT) takes none of them.
_BOOLEANS = {
    **dict.fromkeys(("true", "t", "yes", "y", "on", "1"), 1),
    **dict.fromkeys(("false", "f", "no", "n", "off", "0"), 0),
}


def _boolean(value: Any) -> Any:
    """`"true"`, `"off"` ... (any case) as 1 or 0, as the postgres sink takes them;
    anything else as it is, for MySQL to take or refuse."""
    if type(value) is str:
        flag = _BOOLEANS.get(value.strip().lower())
        if flag is not None:
            return flag
    return _as_is(value)


def _flag(value: Any) -> Any:
    """A boolean for a column of `type: boolean` that holds integers (BOOLEAN is a TINYINT):
    true and false, the texts `_boolean` reads, and a number or a numeric text equal to 1
    or 0 (1.0, "1.0", "1e0", "0.00") as 1 or 0, as MySQL took them; anything else (2,
    -7, 0.5, "2") as a text the column refuses, naming the value, as PostgreSQL refuses
    it. MySQL stored 2 there, 0.5 rounded to 1, and -7 as it is."""
    kind = type(value)
    if value is None or kind is bool:
        return value
    number = value
    if kind is str:
        flag = _BOOLEANS.get(value.strip().lower())
        if flag is not None:
            return flag
        # Python reads 0_1 as 1; a number is compared, never expanded (1e999999999)
        if "_" not in value:
            try:
                number = decimal.Decimal(value.strip())
            except (decimal.InvalidOperation, ValueError):
                number = None
    if type(number) in (int, float, decimal.Decimal) and _finite(number) and number in (0, 1):
        return int(number)
    text = value if kind is str else _json(value)
    return f"not a boolean: {text}"


def _finite(number: float | decimal.Decimal) -> bool:
    return number.is_finite() if isinstance(number, decimal.Decimal) else math.isfinite(number)


def _iso(value: str) -> dt.datetime | None:
    """An RFC 3339 / ISO 8601 text as a datetime, or None when it is not one."""
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def _datetime(value: Any) -> Any:
    """RFC 3339 text (`T`, `Z`, an offset) as the UTC `YYYY-MM-DD HH:MM:SS.ffffff` that a
    DATETIME(6) takes; anything else as it is, for MySQL to take or refuse."""
    if type(value) is str and (when := _iso(value)) is not None:
        if when.tzinfo is not None:
            when = when.astimezone(dt.UTC).replace(tzinfo=None)
        return when.isoformat(" ", "microseconds")
    return _as_is(value)


def _date(value: Any) -> Any:
    """An ISO 8601 date or date-time text as the day it names (as PostgreSQL's date
    does); anything else as it is."""
    if type(value) is str and len(value) > 10 and (when := _iso(value)) is not None:
        return when.date().isoformat()
    return _as_is(value)


def _whole(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`convert`, for a column that holds integers: MySQL rounds 21.5 (or "21.5") to 22
    there without a word, even in strict mode. A fraction goes as a text the column
    refuses, which names the value; a whole number (21.0, "1e2") goes as an integer.
    One past 64 bits goes as it is, for the column to refuse: made an int, 1e5000 has more
    digits than the driver may print, and 1e999999999 would hold the loop for hours."""

    def whole(value: Any) -> Any:
        kind = type(value)
        # Python reads 1_000 (a str); a Decimal is a long fraction as written (_parse)
        if kind is float or kind is decimal.Decimal or (kind is str and "_" not in value):
            try:
                number = decimal.Decimal(value)
            except (decimal.InvalidOperation, ValueError):
                return convert(value)
            # BIGINT UNSIGNED < 2e19; zero is whole whatever its exponent (0e999999999)
            if number.is_finite() and (number.is_zero() or number.adjusted() < 20):
                if number == number.to_integral_value():
                    return int(number)
                return f"{value} (not a whole number)"
        return convert(value)

    return whole


def _as_is(value: Any) -> Any:
    """Numbers, booleans and strings go as they are, for MySQL to convert or refuse."""
    if isinstance(value, dict | list):
        return _json(value)
    if type(value) is float and not math.isfinite(value):
        # JSON 1e999 is inf, which the driver cannot bind: as text the column refuses it.
        return str(value)
    if type(value) is decimal.Decimal:
        # As its text: the driver writes a Decimal out in full, and 1.2345678901234567e999999999
        # would be a billion digits.
        return str(value)
    return value


class _TableColumn(NamedTuple):
    """A column of the table, from information_schema.columns."""

    name: str
    type: str  # data_type: int, varchar ... (lowercase)
    nullable: bool
    default: str | None  # None: no default (MariaDB says 'NULL' for a NULL default)
    extra: str  # auto_increment, stored generated ... (lowercase)
    length: int | None  # character_maximum_length: characters for text, bytes for bytes


# The column types of an id written as text (id_type: char) and as bytes (binary).
_TEXT_TYPES = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext"})
_BINARY_TYPES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
# MySQL's integer types (as information_schema.columns names them); BOOLEAN is tinyint.
_INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint"})


def _getter(
    column: Column, binary_id: bool, whole: bool = False
) -> Callable[[FlowFile, str | None, Any], Any]:
    """(flowfile, content as JSON text or None, parsed content or None) -> column value;
    `whole`: the table's column holds integers."""
    source = column.source
    if source == "id":
        if binary_id:
            return lambda ff, text, doc: bytes.fromhex(ff.id.replace("-", ""))
        return lambda ff, text, doc: ff.id
    if source == "topic":
        return lambda ff, text, doc: ff.topic
    if source == "ts":
        return lambda ff, text, doc: _ts(ff.created)
    if source == "attributes":
        return lambda ff, text, doc: _dumps(ff.attributes) if ff.attributes else "{}"
    if source == "payload":
        return lambda ff, text, doc: text
    if source == "raw":
        return lambda ff, text, doc: ff.content if text is None else None
    convert = _converter(column.type)
    if whole:
        convert = _flag if column.type == "BOOLEAN" else _whole(convert)
    if source.startswith("topic."):
        n = int(source[6:])
        if whole:
            return lambda ff, text, doc: convert(level(ff.topic.split("/"), n))
        return lambda ff, text, doc: level(ff.topic.split("/"), n)
    if source.startswith("attributes."):
        key = source[11:]
        return lambda ff, text, doc: convert(ff.attributes.get(key))
    path = tuple(source[6:].split("."))
    return lambda ff, text, doc: convert(dig(doc, path))


class _Rows:
    """The values of a batch, row after row in one flat list; this is the sink's hot loop.

    The values are bound by the driver (`%s` placeholders), never written into the SQL
    text by the sink.
    """

    def __init__(
        self, columns: list[Column], binary_id: bool, whole: frozenset[str] = frozenset()
    ) -> None:
        """`whole`: the names of the columns that hold integers in the table."""
        self.getters = [_getter(c, binary_id, c.name.lower() in whole) for c in columns]
        self.width = len(columns)
        self.default = not binary_id and [c.source for c in columns] == list(DEFAULT_COLUMNS)
        # Decided once: a long number is read exactly only for a field column that keeps its
        # digits (decimal, text, json) or whose table column holds integers (where
        # 21.00000000000000001 is refused, its double 21.0 taken); the default table stores
        # the content's text.
        self.exact = any(
            c.source.startswith("field.") and (c.type in _EXACT_TYPES or c.name.lower() in whole)
            for c in columns
        )

    def build(self, batch: list[FlowFile]) -> list[Any]:
        if self.default:
            return self._default(batch)
        getters, values, exact = self.getters, [], self.exact
        for ff in batch:
            text, doc = _parse(ff.content, exact)
            if doc is _NOT_JSON:
                doc = None
            values += [get(ff, text, doc) for get in getters]
        return values

    @staticmethod
    def _default(batch: list[FlowFile]) -> list[Any]:
        # The default layout without a call per column: most sinks use it.
        values: list[Any] = []
        for ff in batch:
            text, _ = _parse(ff.content)
            values += (
                ff.id,
                ff.topic,
                _ts(ff.created),
                _dumps(ff.attributes) if ff.attributes else "{}",
                text,
                ff.content if text is None else None,
            )
        return values


def tls_context(ca_file: str, permanent: type[Exception]) -> ssl.SSLContext:
    """The TLS context verifying the server against `ca_file`; `permanent` names the file
    when it cannot be read or holds no certificate (OpenSSL's own error names none).
    Shared by the mysql sink and source."""
    if not os.access(ca_file, os.R_OK):
        raise permanent(f"ca_file {ca_file} cannot be read")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as err:  # ssl.SSLError included
        raise permanent(f"cannot use ca_file {ca_file}: {err}") from err


def plain_text_problem(conn: Any, dsn: Dsn) -> str | None:
    """Why a connection opened with a ca_file is not TLS, or None. aiomysql goes on in
    plain text, without a word, when the server does not offer TLS: the ca_file was
    ignored and nothing verified the server. Only the server's setup or the config can
    change that. Shared by the mysql sink and source."""
    if conn.server_capabilities & CLIENT.SSL:
        return None
    return (
        f"{dsn!r} does not offer TLS, which ca_file requires: turn TLS on in the server"
        " (ssl_cert and ssl_key), or remove ca_file"
    )


# --- errors -------------------------------------------------------------------------------

# Server errors about the values of one row: the batch is split to find the row, which is
# dead-lettered. Any other server error is not the data's fault (a missing table, a lost
# connection, a deadlock, a read-only server): the whole batch is retried later.
ROW_ERRORS = frozenset(
    {
        1048,  # column cannot be null
        1264,  # out of range value
        1265,  # data truncated
        1292,  # incorrect datetime/double value
        1300,  # invalid character string
        1366,  # incorrect value for column
        1367,  # illegal value
        1406,  # data too long
        1411,  # incorrect value for function
        1452,  # foreign key constraint fails
        1644,  # a SIGNAL without MYSQL_ERRNO: a row's only in classes 22, 23, 45, see _signalled
        1690,  # value out of range
        3140,  # invalid JSON text (MySQL)
        3819,  # check constraint violated (MySQL)
        4025,  # CONSTRAINT failed (MariaDB CHECK, JSON_VALID)
    }
)

# The SQLSTATE classes of a SIGNAL (error 1644) that refuse the row, not the batch: a
# data exception, a constraint violation, the user-defined exception.
_ROW_CLASSES = frozenset({"22", "23", "45"})

# How many conditions a statement keeps for SHOW WARNINGS (the session's max_error_count,
# set at connect): the most MariaDB and MySQL 5.7 and 8 take. At MariaDB's and MySQL
# 5.7's default, 64 (MySQL 8's is 1024), a batch's notes (a value cut of its trailing
# spaces, one a row) crowded out a SIGNAL's error, whose SQLSTATE then could not be
# found: the batch was held for ever.
_MAX_ERROR_COUNT = 65535

# What `_signalled` answers when the conditions kept are all notes and warnings, the error
# crowded out: the batch is halved, down to rows whose conditions fit.
_CROWDED = "crowded"

# The server refuses us, or the table cannot take our rows: an operator has to act.
SETUP_ERRORS = frozenset(
    {
        1044,  # access denied to the database
        1045,  # access denied (user or password)
        1049,  # unknown database
        1054,  # unknown column
        1142,  # command denied on the table
        1143,  # command denied on a column of the table
        1146,  # no such table
        1364,  # a NOT NULL column without a default that we do not fill
    }
)


class _TooLarge(Exception):
    """An INSERT larger than the server's max_allowed_packet (not sent)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _code(err: BaseException) -> int | None:
    args = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _message(err: BaseException) -> str:
    """The server's message on one line with its error number, cut to a sane length."""
    if isinstance(err, pymysql.MySQLError) and len(err.args) == 2:
        text = f"{err.args[1]} (error {err.args[0]})"
    elif isinstance(err, TimeoutError):
        text = "timed out"
    else:
        text = str(err) or type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= 600 else text[:597] + "..."


# --- the sink -----------------------------------------------------------------------------


def _driver_problem() -> str | None:
    """Why the installed aiomysql cannot bind `bytes` values, or None if it can.

    aiomysql 0.3 escapes bytes with `pymysql.converters.escape_bytes_prefixed`, which
    PyMySQL 1.2 replaced with a string (aio-libs/aiomysql#1080): every row with bytes
    (`raw`, a binary id) would fail. pyproject pins PyMySQL below 1.2; this catches an
    environment that installed another version anyway.
    """
    helper = getattr(aiomysql.connection, "escape_bytes_prefixed", None)
    if helper is None or callable(helper):
        return None
    return (
        f"aiomysql {aiomysql.__version__} cannot send bytes with PyMySQL"
        f" {pymysql.VERSION_STRING}; install PyMySQL>=1.1.1,<1.2"
    )


class _Cursor(aiomysql.Cursor):  # type: ignore[misc]
    """A cursor that leaves server notes alone.

    aiomysql answers every statement that has warnings with a SHOW WARNINGS round trip
    and re-raises each as a Python warning. The notes we meet are expected ("table
    already exists" from CREATE TABLE IF NOT EXISTS), and strict mode turns the warnings
    that matter (truncation, bad values) into errors, which are handled.
    """

    async def _show_warnings(self, conn: Any) -> None:
        return None


class MysqlSink(Sink):
    """Inserts batches into one MySQL/MariaDB table over one connection."""

    Config = MysqlSinkConfig

    def __init__(self, config: MysqlSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: MysqlSinkConfig = config
        self.columns = columns = columns_for(config.columns, DIALECT)
        self.dsn = parse_dsn(config.dsn)
        self._rows = _Rows(columns, config.id_type == "binary")
        self._names = ",".join(f"`{c.name}`" for c in columns)
        self._head = f"INSERT INTO `{config.table}` ({self._names}) VALUES "
        self._marks = "(" + ",".join(["%s"] * len(columns)) + ")"  # one row's placeholders
        self._conn: Any = None  # aiomysql.Connection
        self._lock = asyncio.Lock()
        self._connected_to: dict[str, str] = {}  # server and table, once connected
        self._max_packet = 16 << 20  # the server's max_allowed_packet, read at connect
        self._on_duplicate = _ON_DUPLICATE  # or _ON_DUPLICATE_NULLABLE, as the table is

    def create_statement(self) -> str:
        """The CREATE TABLE IF NOT EXISTS statement for the configured columns."""
        id_type = ID_TYPES[self.config.id_type]
        lines = []
        for column in self.columns:
            if column.name == "id":
                lines.append(f"`id` {id_type} NOT NULL PRIMARY KEY")
            else:
                # A second column may hold the id too: it takes the id's type.
                sql_type = id_type if column.source == "id" else column.type
                null = " NOT NULL" if column.source in NOT_NULL else " NULL"
                lines.append(f"`{column.name}` {sql_type}{null}")
        return (
            f"CREATE TABLE IF NOT EXISTS `{self.config.table}` ({', '.join(lines)})"
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, create the table if asked, and check its columns.

        RetryableError if the server cannot be reached; PermanentError if it refuses us
        (user, password, database) or the table lacks our columns.
        """
        problem = _driver_problem()
        if problem:
            raise PermanentError(problem)
        async with self._lock:
            await self._open(permanent=PermanentError)

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        """Insert the batch; return the rows the server refused, with its message."""
        if not batch:
            return []
        values = self._rows.build(batch)
        rejected: list[Rejected] = []
        async with self._lock:
            # After a lost connection: reconnect and check the table again. A table problem
            # found now waits for the operator like an outage, rather than dead-lettering.
            await self._open(permanent=RetryableError)
            await self._insert(batch, values, 0, len(batch), rejected)
        return rejected

    def status(self) -> Mapping[str, object]:
        """The server (without its password) and the table, once connected."""
        return self._connected_to

    async def close(self) -> None:
        """Close the connection; safe to call twice, or without connect()."""
        async with self._lock:
            self._drop()

    # --- inside ---------------------------------------------------------------------------

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Drops the socket at once: no QUIT round trip to a server that may be gone.
            conn.close()

    async def _open(self, permanent: type[Exception]) -> None:
        if self._conn is not None:
            return
        dsn, config = self.dsn, self.config
        context = tls_context(config.ca_file, permanent) if config.ca_file else None
        try:
            async with asyncio.timeout(config.timeout):
                conn = await aiomysql.connect(
                    host=dsn.host,
                    port=dsn.port,
                    user=dsn.user,
                    password=dsn.password,
                    db=dsn.database,
                    charset="utf8mb4",
                    autocommit=True,
                    ssl=context,
                    connect_timeout=config.timeout,
                    init_command=(
                        f"SET SESSION sql_mode='{SQL_MODE}', time_zone='+00:00',"
                        f" max_error_count={_MAX_ERROR_COUNT}"
                    ),
                )
        except (pymysql.MySQLError, OSError, TimeoutError) as err:
            kind = permanent if _code(err) in SETUP_ERRORS else RetryableError
            raise kind(f"cannot connect to {dsn!r}: {_message(err)}") from err
        self._conn = conn
        problem = plain_text_problem(conn, dsn) if context is not None else None
        if problem:
            self._drop()
            raise permanent(problem)
        try:
            async with asyncio.timeout(config.timeout):
                # Only when missing: CREATE TABLE IF NOT EXISTS needs the CREATE privilege
                # even when the table is there.
                if config.create_table and not await self._exists():
                    await self._run(self.create_statement())
                # Checks that the table and every column exist, with a clear message now
                # rather than a failing write later.
                await self._run(f"SELECT {self._names} FROM `{config.table}` LIMIT 0")
                unique_id = await self._unique_id()
                table = await self._table_columns()
                unfilled = self._unfilled(table)
                id_problem = self._id_type_problem(table)
                whole = frozenset(c.name.lower() for c in table if c.type in _INTEGER_TYPES)
                nullable_id = [c.nullable for c in table if c.name.lower() == "id"] != [False]
                self._on_duplicate = _ON_DUPLICATE_NULLABLE if nullable_id else _ON_DUPLICATE
                self._rows = _Rows(self.columns, config.id_type == "binary", whole)
                if unique_id and not unfilled:  # else said below, more clearly
                    # and that the user may insert (and update, for ON DUPLICATE KEY):
                    # a statement of no rows
                    nulls = ",".join(["NULL"] * len(self.columns))
                    await self._run(
                        f"{self._head.removesuffix('VALUES ')}SELECT {nulls} FROM DUAL"
                        f" WHERE FALSE{self._on_duplicate}"
                    )
                self._max_packet = await self._max_allowed_packet()
        except (pymysql.MySQLError, OSError, TimeoutError) as err:
            self._drop()
            if _code(err) in SETUP_ERRORS:
                hint = " (create_table is false)" if not config.create_table else ""
                fix = (
                    "grant the user the privilege it names (INSERT, SELECT and UPDATE on"
                    " the table; CREATE to create it)"
                    if _code(err) in (1044, 1142, 1143)
                    else "fix the table or point `table` at a new one"
                )
                raise permanent(
                    f"cannot write to table {config.table} on {dsn!r}: {_message(err)}{hint}; {fix}"
                ) from err
            raise RetryableError(
                f"cannot prepare table {config.table} on {dsn!r}: {_message(err)}"
            ) from err
        if not unique_id:
            self._drop()
            raise permanent(
                f"table {config.table} on {dsn!r} has no primary key or unique index on id"
                " alone, so a batch written again would be stored twice; add one"
                " (ALTER TABLE ... ADD PRIMARY KEY (id)) or point `table` at a new table"
            )
        if id_problem:
            self._drop()
            raise permanent(f"table {config.table} on {dsn!r}: {id_problem}")
        if unfilled:
            self._drop()
            raise permanent(
                f"table {config.table} on {dsn!r} has NOT NULL columns without a default"
                f" that the sink does not write ({', '.join(unfilled)}), so every row would"
                " be refused; give them a default, allow NULL, or point `table` at a new table"
            )
        self._connected_to = {"server": repr(dsn), "table": config.table}
        self.ctx.log.info("connected to %r, writing to table %s", dsn, config.table)

    async def _unique_id(self) -> bool:
        """True if a primary key or unique index covers `id` alone (ON DUPLICATE KEY needs it)."""
        async with self._conn.cursor(_Cursor) as cursor:
            await cursor.execute(
                "SELECT index_name FROM information_schema.statistics"
                " WHERE table_schema = DATABASE() AND table_name = %s AND non_unique = 0"
                " GROUP BY index_name HAVING COUNT(*) = 1 AND MAX(column_name) = 'id'",
                (self.config.table,),
            )
            return bool(await cursor.fetchall())

    async def _table_columns(self) -> list[_TableColumn]:
        """The table's columns, in order, as information_schema.columns tells them."""
        async with self._conn.cursor(_Cursor) as cursor:
            await cursor.execute(
                "SELECT column_name, data_type, is_nullable, column_default, extra,"
                " character_maximum_length"
                " FROM information_schema.columns WHERE table_schema = DATABASE()"
                " AND table_name = %s ORDER BY ordinal_position",
                (self.config.table,),
            )
            rows = await cursor.fetchall()
        return [
            _TableColumn(
                name,
                data_type.lower(),
                nullable == "YES",
                default,
                (extra or "").lower(),
                None if length is None else int(length),
            )
            for name, data_type, nullable, default, extra, length in rows
        ]

    def _id_type_problem(self, table: list[_TableColumn]) -> str | None:
        """Why the table's id column cannot take the ids as `id_type` writes them, or None.

        Binary ids (16 bytes) need a bytes column (BINARY, VARBINARY, BLOB) of 16 bytes or
        more: in a text one they went in as 16 bytes of text, delivered but unreadable (and
        compared by its collation, case and trailing spaces aside). Char ids (36
        characters) fit a text or a bytes column of 36 or more: a shorter one (BINARY(16),
        VARCHAR(32)) refused each as too long, every row to the dead letters. A bytes column
        that holds 36 (VARBINARY(64), BINARY(36), BLOB) stores and dedupes them fine."""
        column = next((c for c in table if c.name.lower() == "id"), None)
        if column is None or column.type not in _TEXT_TYPES | _BINARY_TYPES:
            return None
        kind = column.type.upper()
        if self.config.id_type == "binary":
            if column.type in _TEXT_TYPES:
                return (
                    f"its id column is {kind}, text, and id_type: binary writes 16 bytes:"
                    " set id_type: char, or point `table` at a new one"
                )
            need, unit = 16, "bytes"
        else:
            need, unit = 36, "characters"
        if column.length is not None and column.length < need:
            fix = (
                "set id_type: binary, or point `table` at a new one"
                if column.type in _BINARY_TYPES and column.length >= 16
                else "point `table` at a new one"
            )
            return (
                f"its id column is {kind}({column.length}), too short for the {need} {unit}"
                f" id_type: {self.config.id_type} writes: {fix}"
            )
        return None

    async def _exists(self) -> bool:
        """Whether the table exists (and the user may see it)."""
        async with self._conn.cursor(_Cursor) as cursor:
            await cursor.execute(
                "SELECT 1 FROM information_schema.tables"
                " WHERE table_schema = DATABASE() AND table_name = %s",
                (self.config.table,),
            )
            return bool(await cursor.fetchall())

    async def _max_allowed_packet(self) -> int:
        """The largest statement the server takes, in bytes."""
        async with self._conn.cursor(_Cursor) as cursor:
            await cursor.execute("SELECT @@max_allowed_packet")
            ((size,),) = await cursor.fetchall()
            return int(size)

    def _unfilled(self, table: list[_TableColumn]) -> list[str]:
        """The table's NOT NULL columns without a default (nor generated, nor
        auto-increment) that the sink does not write: MySQL refuses every row then."""
        written = {column.name.lower() for column in self.columns}
        return [
            c.name
            for c in table
            if not c.nullable
            and c.default is None
            and "auto_increment" not in c.extra
            and "generated" not in c.extra
            and c.name.lower() not in written
        ]

    async def _run(self, sql: str, args: Any = None) -> None:
        async with self._conn.cursor(_Cursor) as cursor:
            await cursor.execute(sql, args)

    async def _run_insert(self, sql: str, args: list[Any]) -> None:
        """Run an INSERT, or raise _TooLarge without sending it when it is larger than the
        server's max_allowed_packet. The server would answer such a statement by closing
        the connection (error 1153, or a broken protocol for a much larger one), and the
        same batch, retried, would be refused forever. The statement is built and encoded
        here as the driver would build it, so nothing is done twice."""
        async with self._conn.cursor(_Cursor) as cursor:
            query = cursor.mogrify(sql, args).encode(self._conn.encoding, "surrogateescape")
            # MariaDB 10.11 takes at most max_allowed_packet - 2 bytes of query text.
            if len(query) + 2 > self._max_packet:
                raise _TooLarge(len(query))
            await cursor.execute(query)

    async def _insert(
        self, batch: list[FlowFile], values: list[Any], lo: int, hi: int, rejected: list[Rejected]
    ) -> None:
        """Insert rows lo..hi; when the server refuses a value, halve until the row is found.

        Each statement is its own transaction (autocommit; strict mode rolls a failed
        statement back whole), so the parts that went in stay in, and a retry of the
        batch skips them through ON DUPLICATE KEY.
        """
        width = self._rows.width
        sql = self._head + ",".join([self._marks] * (hi - lo)) + self._on_duplicate
        try:
            async with asyncio.timeout(self.config.timeout):
                await self._run_insert(sql, values[lo * width : hi * width])
            return
        except UnicodeEncodeError as err:  # a lone surrogate in a topic or an attribute
            reason = f"a value is not valid Unicode text ({err.reason})"
        except _TooLarge as err:
            reason = (
                f"the row takes {err.size} bytes as SQL, too many for the server's"
                f" max_allowed_packet ({self._max_packet}); raise max_allowed_packet on"
                " the server to store rows this large"
            )
        except pymysql.MySQLError as err:
            if _code(err) not in ROW_ERRORS:
                raise self._failed(len(batch), err) from err
            if _code(err) == 1644:
                state = await self._signalled()
                # Crowded out by the rows' notes: halved as a row's refusal is, until the
                # error is found in a part small enough (nothing lost; a part written is
                # not written twice, see _ON_DUPLICATE).
                crowded = state == _CROWDED and hi - lo > 1
                if not crowded and (state or "")[:2] not in _ROW_CLASSES:
                    raise self._failed(len(batch), err) from err
            reason = _message(err)
            if _code(err) == 1048 and "'id'" in reason:  # from _ON_DUPLICATE
                reason = (
                    "another row of the table has the same values in a unique key other than id"
                )
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
            raise self._failed(len(batch), err) from err
        if hi - lo == 1:
            rejected.append(Rejected(batch[lo], f"mysql refused the row: {reason}"))
            return
        mid = (lo + hi) // 2
        await self._insert(batch, values, lo, mid, rejected)
        await self._insert(batch, values, mid, hi, rejected)

    async def _signalled(self) -> str | None:
        """The SQLSTATE of the SIGNAL that just failed the INSERT (error 1644), `_CROWDED`
        if the conditions kept (max_error_count of them) are all others, or None if the
        server cannot tell it now.

        1644 is the number of every SIGNAL without MYSQL_ERRNO, whatever its SQLSTATE, and
        PyMySQL drops the SQLSTATE the server sent. Only classes 45 (the user-defined
        exception a row check signals), 22 and 23 (what row checks written as triggers
        signalled before MySQL 8.0.16 had CHECK) refuse the row; another ('40001', "try
        again later") retries the batch. The diagnostics area still holds the failed
        statement's conditions: SHOW WARNINGS and GET DIAGNOSTICS do not clear it, and
        nothing else ran since. The error is found among them by its number, not taken as
        the first: a note or a warning may come before it (MySQL 8.0.20+ warns that
        VALUES() is deprecated, 1287; a value cut of its trailing spaces is a note)."""
        try:
            async with asyncio.timeout(self.config.timeout):
                async with self._conn.cursor(_Cursor) as cursor:
                    # Level, Code, Message of every condition, in the order GET
                    # DIAGNOSTICS numbers them; a SELECT would clear them all.
                    await cursor.execute("SHOW WARNINGS")
                    codes = [row[1] for row in await cursor.fetchall()]
                    if 1644 not in codes:
                        await cursor.execute("SELECT @@SESSION.max_error_count")
                        kept = await cursor.fetchone()
                        crowded = kept is not None and len(codes) >= int(kept[0])
                        return _CROWDED if crowded else None
                    await cursor.execute(
                        f"GET DIAGNOSTICS CONDITION {codes.index(1644) + 1}"
                        " @edge_stream_sqlstate = RETURNED_SQLSTATE"
                    )
                    await cursor.execute("SELECT @edge_stream_sqlstate")
                    row = await cursor.fetchone()
        except (pymysql.MySQLError, OSError, TimeoutError, asyncio.IncompleteReadError):
            return None  # the batch is retried, and the connection made again
        return None if row is None or row[0] is None else str(row[0])

    def _failed(self, size: int, err: BaseException) -> RetryableError:
        """Not the data's fault: forget the connection; the engine retries the batch."""
        self._drop()
        return RetryableError(
            f"{self.dsn!r} did not take {size} rows into {self.config.table}: {_message(err)};"
            " the batch will be written again"
        )

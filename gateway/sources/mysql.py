"""Reads new rows of a MySQL or MariaDB table, each exactly once, as JSON FlowFiles.

Every poll (every `interval`, or at the times of `schedule`) runs

  SELECT <columns> FROM `table` WHERE `cursor` > ? ORDER BY `cursor` LIMIT page_size

(with a `key`: `WHERE (cursor > ? OR (cursor = ? AND key > ?)) ORDER BY cursor, key`),
the values bound as parameters and the names checked as SQL identifiers when
the config loads. Each row becomes one FlowFile: its content is the row as a
JSON object (DECIMAL as a string, DATETIME as ISO 8601, BIT as a number, binary
as text when it is UTF-8, else base64), its topic comes from `topic`, its
attributes are `table` and `source`. The position after each row (the cursor
value, and the key's) is committed to the store in the same transaction as the
row, so a gateway killed at any point starts again after the last row it stored:
no row missed, none read twice. A full page is followed by the next one at once.
A lost connection is retried with the engine's backoff; wrong credentials, an
unknown database, table or column stop the source with the server's message.

What the cursor cannot see: a row inserted with a cursor value below one already
read (a long transaction that commits after a later one, a timestamp set by a
client with a slow clock). Use an auto-increment id where you can, or a
timestamp set by the server when the row is written. Nor does it see the rows of a
table emptied whose ids start again (TRUNCATE, a table made again) until they pass
the position: a WARNING says so when a poll finds the newest row before it (give the
source another name to read the table again from `start`).

Keys
  type: mysql
  dsn: mysql://user:password@host:3306/database   (required; may be an ENC(...) secret)
  table: orders            the table (required)
  cursor: id               the ordering column (required): auto-increment id or timestamp
  key: id                  a unique column that breaks cursor ties (timestamp cursors)
  columns: [id, device, value]   the columns to read (default: all)
  page_size: 500           rows per query (1 - 10000)
  topic: "db/{table}/{device}"   topic template: {column}, {table}, {source}
  start: beginning         or `end`: where a source with no stored position starts
  interval: 10s            how often to look for new rows
  schedule: "*/5 * * * *"  or at these times (cron, UTC); jitter, missed: README
  timeout: 30s             the longest a connect or a query may take
  ca_file: /etc/ssl/db.pem connect with TLS, verifying against this CA; a server that
                           does not offer TLS, or a file that cannot be read or holds
                           no certificate, stops the source with one line

Example
  sources:
    orders: {type: mysql, dsn: "mysql://gw:ENC(...)@db:3306/shop", table: orders,
             cursor: id, topic: "shop/orders/{customer}", interval: 5s}
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import aiomysql
import pymysql
from pymysql.constants import FIELD_TYPE
from pymysql.converters import conversions

from gateway.config.schema import Doc, Valid
from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.sinks.mysql import (
    SETUP_ERRORS,
    dsn_problem,
    parse_dsn,
    plain_text_problem,
    tls_context,
)
from gateway.sources._sql import IncrementalSource, SqlSourceKeys


def _bit(value: bytes) -> int:
    return int.from_bytes(value)


# BIT as the number it is (b'1010' is 10): the driver gives its bytes, which were written
# as text, a BIT(1) flag "\u0001" in the JSON and in a topic.
_CONVERSIONS = {**conversions, FIELD_TYPE.BIT: _bit}


@dataclass(frozen=True, kw_only=True)
class MysqlSourceConfig(SqlSourceKeys):
    """Keys of the `mysql` source."""

    # Holds a password: never repr'd, never quoted back in a problem.
    dsn: Annotated[
        Annotated[str, Valid(dsn_problem)],
        Doc(
            "`mysql://user:password@host:3306/database`; URL-encode special characters in"
            " user and password; may be an `ENC(...)` secret; the password is never"
            " logged.",
            example="mysql://gateway:secret@db.plant.lan:3306/shop",
        ),
    ] = field(repr=False)
    ca_file: Annotated[
        str | None,
        Doc(
            "Connect with TLS, verifying the server against this CA bundle (default: no TLS)."
            " A server that does not offer TLS is refused and the component stops; the"
            " client library learns it only after logging in, so whoever hid the TLS"
            " offer has seen the login: keep `require_secure_transport=ON` on the server."
        ),
    ] = None


def _message(err: BaseException) -> str:
    if isinstance(err, pymysql.MySQLError) and len(err.args) == 2:
        text = f"{err.args[1]} (error {err.args[0]})"
    elif isinstance(err, TimeoutError):
        text = "timed out"
    else:
        text = str(err) or type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= 600 else text[:597] + "..."


def _code(err: BaseException) -> int | None:
    args = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class MysqlSource(IncrementalSource):
    """Polls a MySQL/MariaDB table by its cursor column; see the module docstring."""

    Config = MysqlSourceConfig

    def __init__(self, config: MysqlSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: MysqlSourceConfig = config
        self.dsn = parse_dsn(config.dsn)
        self._conn: Any = None

    def quote(self, name: str) -> str:
        return f"`{name}`"  # names are checked identifiers (letters, digits, _)

    def param(self, n: int) -> str:
        return "%s"

    async def connect(self) -> None:
        dsn, config = self.dsn, self.config
        context = tls_context(config.ca_file, PermanentError) if config.ca_file else None
        try:
            async with asyncio.timeout(config.timeout):
                self._conn = await aiomysql.connect(
                    host=dsn.host,
                    port=dsn.port,
                    user=dsn.user,
                    password=dsn.password,
                    db=dsn.database,
                    charset="utf8mb4",
                    autocommit=True,  # each page sees the rows committed before it
                    ssl=context,
                    connect_timeout=config.timeout,
                    init_command="SET SESSION time_zone='+00:00'",
                    conv=_CONVERSIONS,
                )
        except (pymysql.MySQLError, OSError, TimeoutError) as err:
            kind = PermanentError if _code(err) in SETUP_ERRORS else RetryableError
            raise kind(f"cannot connect to {dsn!r}: {_message(err)}") from err
        problem = plain_text_problem(self._conn, dsn) if context is not None else None
        if problem:
            self._drop()
            raise PermanentError(problem)
        self.ctx.log.info("connected to %r, reading table %s", dsn, config.table)

    async def _fetch(
        self, sql: str, args: Sequence[Any]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        if self._conn is None:
            raise RetryableError(f"not connected to {self.dsn!r}")
        try:
            async with asyncio.timeout(self.config.timeout):
                async with self._conn.cursor() as cursor:
                    await cursor.execute(sql, tuple(args))
                    rows = await cursor.fetchall()
                    names = [d[0] for d in cursor.description or ()]
        except TimeoutError as err:  # "failed: timed out" named no setting
            self._drop()
            raise RetryableError(
                f"reading table {self.config.table} on {self.dsn!r}: no answer within"
                f" timeout ({self.config.timeout:g}s)"
            ) from err
        except (pymysql.MySQLError, OSError, asyncio.IncompleteReadError) as err:
            self._drop()
            if _code(err) in SETUP_ERRORS or _code(err) == 1064:  # 1064: syntax (a type)
                raise PermanentError(
                    f"cannot read table {self.config.table} on {self.dsn!r}: {_message(err)}"
                ) from err
            raise RetryableError(
                f"reading table {self.config.table} on {self.dsn!r} failed: {_message(err)}"
            ) from err
        return names, [tuple(r) for r in rows]

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # at once: no QUIT round trip to a server that may be gone

    async def close(self) -> None:
        self._drop()

"""Reads new rows of a PostgreSQL table, each exactly once, as JSON FlowFiles.

The same source as `mysql` (read its documentation: cursor, key, pages, topic
template, positions committed with the rows), spoken to PostgreSQL through
asyncpg: names double-quoted (checked identifiers), values bound as `$n`
parameters. `numeric` is a string in the JSON, `timestamptz` ISO 8601, `bytea`
text when it is UTF-8 and base64 otherwise, `json`/`jsonb` columns their text,
`inet`/`cidr` their text, `bit` strings `"1010"`, `timetz` ISO 8601 with its offset
(a date or time that ISO 8601 in Python cannot hold: as PostgreSQL writes it, such as
`infinity`, `0044-03-15 BC`, `10000-01-01 00:00:00` or `24:00:00`; a `real` or `double
precision` NaN or ±Infinity null, as JSON has none, where `numeric`'s are the strings
`"NaN"` and `"Infinity"`),
a point `[x, y]` (a box, segment, path or polygon a list of points, a circle
`[[x, y], r]`), a range `{"lower", "upper", "lower_inc", "upper_inc"}` (`{"empty":
true}` for an empty one; a `tstzrange`'s bounds as its times), a composite type (`CREATE
TYPE ... AS (...)`) an object of its fields. A type the driver cannot read stops the
source with one line naming it; leave its column out with `columns`.
A dsn the server can never accept stops the source with one line, as it stops the
`postgres` sink: a wrong password or database, a TLS file of the dsn (`?sslcert=`,
`?sslkey=`, and `?sslrootcert=` with sslmode verify-ca or verify-full) that cannot
be read, a server without TLS when the dsn's sslmode requires it, a setting of
`?options=-c name=value` that the server refuses.

Keys
  type: postgres
  dsn: postgresql://user:password@host:5432/database   (required; may be ENC(...))
  table, cursor, key, columns, page_size, topic, start, interval, schedule, jitter,
  missed, timeout: as for the `mysql` source

Example
  sources:
    events: {type: postgres, dsn: "postgresql://gw@db/plant", table: events,
             cursor: created_at, key: id, topic: "plant/events/{line}"}
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg

from gateway.config.schema import Doc, Valid
from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.sinks.postgres import (
    CONNECT_ERRORS,
    _message,
    _server,
    connect_dsn,
    connect_error,
    dsn_problem,
    tls_file_problem,
)
from gateway.sources._pg_times import CODECS as TIME_CODECS
from gateway.sources._pg_times import written
from gateway.sources._sql import IncrementalSource, PositionError, SqlSourceKeys

# The server refuses us or the table is not what the config says: an operator has to act.
_SETUP_ERRORS = (
    asyncpg.exceptions.SyntaxOrAccessError,  # 42: no such table or column, no privilege
    asyncpg.exceptions.InvalidCatalogNameError,  # 3D000: no such database
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # 28: bad user or password
    asyncpg.exceptions.ClientConfigurationError,
)
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


@dataclass(frozen=True, kw_only=True)
class PostgresSourceConfig(SqlSourceKeys):
    """Keys of the `postgres` source."""

    # May hold a password: never repr'd, never quoted back in a problem.
    dsn: Annotated[
        Annotated[str, Valid(dsn_problem)],
        Doc(
            "`postgresql://user:password@host:5432/database` (asyncpg's DSN; `?sslmode=`"
            " and the like work); may be an `ENC(...)` secret; the password is never"
            " logged.",
            example="postgresql://gateway:secret@db.plant.lan:5432/plant",
        ),
    ] = field(repr=False)


class PostgresSource(IncrementalSource):
    """Polls a PostgreSQL table by its cursor column; see the `mysql` source."""

    Config = PostgresSourceConfig

    def __init__(self, config: PostgresSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: PostgresSourceConfig = config
        self.server = _server(config.dsn)
        self._conn: Any = None

    def quote(self, name: str) -> str:
        return f'"{name}"'  # names are checked identifiers (letters, digits, _)

    def param(self, n: int) -> str:
        return f"${n}"

    def json_value(self, value: Any) -> Any:
        if isinstance(value, asyncpg.Record):  # a composite type: its fields by name
            return dict(value.items())
        if isinstance(value, asyncpg.BitString):
            return value.as_string()  # bit, varbit: '1010'
        if isinstance(value, asyncpg.Path):  # path, polygon: their points
            return list(value)
        if isinstance(value, asyncpg.Range):
            if value.isempty:
                return {"empty": True}
            return {
                "lower": value.lower,
                "upper": value.upper,
                "lower_inc": value.lower_inc,
                "upper_inc": value.upper_inc,
            }
        return super().json_value(value)

    def text_value(self, text: str, sample: Any) -> bool:
        return written(text, sample)

    async def connect(self) -> None:
        config = self.config
        dsn, problem = connect_dsn(config.dsn)
        problem = problem or tls_file_problem(config.dsn)
        if problem:
            raise PermanentError(problem)
        try:
            conn = await asyncpg.connect(
                dsn,
                timeout=config.timeout,
                command_timeout=config.timeout,
                # ISO: the text of the date and time types below is parsed as ISO 8601
                server_settings={
                    "application_name": f"edge-stream {self.ctx.name}",
                    "DateStyle": "ISO, YMD",
                },
            )
        except CONNECT_ERRORS as err:
            # The same line as the postgres sink's for the same dsn.
            raise connect_error(err, self.server, config.dsn, PermanentError) from err
        try:
            for name, (encoder, decoder) in TIME_CODECS.items():
                await conn.set_type_codec(
                    name, schema="pg_catalog", encoder=encoder, decoder=decoder, format="tuple"
                )
        except BaseException as err:  # a connection lost meanwhile, cancellation: no leak
            conn.terminate()
            if isinstance(err, _CONNECTION_ERRORS):
                message = f"connecting to {self.server} failed: {_message(err)}"
                raise RetryableError(message) from err
            raise
        self._conn = conn
        self.ctx.log.info("connected to %s, reading table %s", self.server, config.table)

    async def _fetch(
        self, sql: str, args: Sequence[Any]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        if self._conn is None:
            raise RetryableError(f"not connected to {self.server}")
        try:
            async with asyncio.timeout(self.config.timeout):
                statement = await self._conn.prepare(sql)
                names = [a.name for a in statement.get_attributes()]
                rows = await statement.fetch(*args)
        except TimeoutError as err:  # "failed: timed out" named no setting
            await self._drop()
            raise RetryableError(
                f"reading table {self.config.table} on {self.server}: no answer within"
                f" timeout ({self.config.timeout:g}s)"
            ) from err
        except _SETUP_ERRORS as err:
            await self._drop()
            raise PermanentError(
                f"cannot read table {self.config.table} on {self.server}: {_message(err)}"
            ) from err
        except asyncpg.exceptions.UnsupportedClientFeatureError as err:
            # A type the driver reads only as text inside a composite, which it reads
            # only in binary (a `money` field): an InterfaceError, taken for a lost
            # connection, it was retried for ever.
            await self._drop()
            raise PermanentError(
                f"cannot read table {self.config.table} on {self.server}: {_message(err)};"
                " leave that column out with `columns`"
            ) from err
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as err:
            if isinstance(err, asyncpg.exceptions.DataError) and err.__cause__ is not None:
                # A parameter its encoder refused (its error the cause), raised before
                # anything was sent: only a stored position's cursor text can be one. It
                # was retried for ever. A DataError of the server's (SQLSTATE 22, a view
                # that divides by zero) has no cause: retried as before.
                raise PositionError(" ".join(str(err).split())) from err
            await self._drop()
            raise RetryableError(
                f"reading table {self.config.table} on {self.server} failed: {_message(err)}"
            ) from err
        return names, [tuple(r) for r in rows]

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # at once: no goodbye to a server that may be gone

    async def close(self) -> None:
        await self._drop()

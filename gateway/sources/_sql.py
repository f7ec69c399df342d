"""What the `mysql` and `postgres` sources share: incremental reads by a cursor column.

Each poll reads the rows after the source's position, in the order of the cursor
column (and of the tie-breaking `key` column, for a cursor that repeats, such
as a timestamp), at most `page_size` of them. Each row becomes a FlowFile whose
content is the row as a JSON object and whose topic comes from a template with
the row's values. Each FlowFile carries the position just after its row
(`Message.position`): the store keeps it in the transaction that holds the row,
so a gateway killed at any moment starts again exactly after the last row it
stored. While a poll fills its page, the engine polls again at once (a backlog
drains at the speed of the store, not one page per interval).

The dialects differ only in how they quote names, write parameters and talk
to the server; see `Dialect` and the two source modules.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import string
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson

from gateway.config.model import ScheduleKeys, SourceConfig
from gateway.config.schema import POSITIVE_DURATION, Doc, Duration, Range, check_identifier
from gateway.core.component import Context, Message, Source
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.core.schedule import INTERVAL_MAX
from gateway.core.topics import template_parts, validate_topic

Row = tuple[Any, ...]
Page = tuple[list[str], list[Row]]  # column names, rows
# A page as fetched after a position with a `key`: also, for each row, whether the server
# orders its key after the position's (see `_past_position`); None without that column
Fetched = tuple[list[str], list[Row], list[Any] | None]
POSITION_VERSION = 1
PAGE_MAX = 10_000
AFTER_FLAG = "_es_after"  # the page query's last column with a `key`: see `select_sql`
BEHIND_CHECK_S = 60.0  # at most this often, a poll that found nothing looks at the newest row


def _template_fields(template: str) -> Iterator[str]:
    """The names a topic template uses; ValueError for a bad one or a field with
    attribute or index access ({x.y}, {x[0]}) or a conversion or a format spec."""
    for _text, name, spec, conversion in template_parts(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"topic template field {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} must be a plain column name, e.g. {{id}}"
            )
        yield name


@dataclass(frozen=True, kw_only=True)
class SqlSourceKeys(ScheduleKeys, SourceConfig):
    """The keys the `mysql` and `postgres` sources share (each adds `dsn`)."""

    table: Annotated[
        str,
        Doc(
            "The table to read (a SQL identifier: letters, digits, `_`).",
            example="orders",
        ),
    ]
    cursor: Annotated[
        str,
        Doc(
            "The column that orders the rows and marks how far the source has read: an"
            " auto-increment id, or a timestamp set when a row is written (then also set"
            " `key`). Rows are read in its order; a row whose cursor value is below one"
            " already read (a transaction that committed late) is not seen, nor is a row"
            " whose cursor (or `key`) is NULL.",
            example="id",
        ),
    ]
    key: Annotated[
        str | None,
        Doc(
            "A unique column that breaks ties between rows with the same `cursor` value"
            " (needed when the cursor is a timestamp): rows are read in (`cursor`, `key`)"
            " order and the position holds both. Default: none, `cursor` is unique; rows"
            " that share a value are then read in one page (a page ends before them; more"
            " than 10000 stop the source), and a row added later with the value of the"
            " last row read is not seen. Set later, it keeps the position stored without"
            " it: the rows after its cursor value come next.",
            example="id",
        ),
    ] = None
    columns: Annotated[
        list[str] | None,
        Doc(
            "The columns each FlowFile holds (default: all of them); `cursor` and `key`"
            " are always read.",
            example=["id", "device", "value", "created_at"],
        ),
    ] = None
    page_size: Annotated[
        int,
        Doc("At most this many rows per query; a full page is followed by the next at once."),
        Range(1, PAGE_MAX, message=f"must be between 1 and {PAGE_MAX}"),
    ] = 500
    topic: Annotated[
        str,
        Doc(
            "The topic of each row's FlowFile: a template with `{column}` for a column's"
            " value (written as in the row's JSON: NULL `null`), `{table}` and `{source}`."
            " A value's `/`, `+`, `#` become `_`, so that it stays one topic level; `{{`"
            " and `}}` for a literal brace.",
            example="db/{table}/{device}",
        ),
    ] = "db/{table}"
    start: Annotated[
        Literal["beginning", "end"],
        Doc(
            "Where a source with no stored position starts: `beginning` reads the rows"
            " already in the table, `end` only the rows added after it starts."
        ),
    ] = "beginning"
    interval: Annotated[
        Duration,
        Doc("How often to look for new rows (unless `schedule` is set).", example="5s"),
        Range(0.01, INTERVAL_MAX, "must be between 10ms and 100 years"),
    ] = 10.0
    timeout: Annotated[
        Duration,
        Doc("The longest a connect or one query may take before it is retried."),
        POSITIVE_DURATION,
    ] = 30.0

    def check(self) -> Iterator[tuple[str, str]]:
        yield from self.schedule_problems(self.interval)
        for key in ("table", "cursor", "key"):
            name = getattr(self, key)
            if name is not None:
                for message in check_identifier(name):
                    yield key, message
        for i, column in enumerate(self.columns or ()):
            for message in check_identifier(column):
                yield f"columns.{i}", message
        try:
            fields = set(_template_fields(self.topic))
        except ValueError as err:
            yield "topic", str(err)
            return
        if self.columns is not None:
            known = {*self.columns, self.cursor, self.key, "table", "source"}
            for name in sorted(fields - known):
                yield "topic", f"{{{name}}} is not one of the columns read"
        probe = string.Formatter().vformat(self.topic, (), _Probe())
        problem = validate_topic(probe)
        if problem:
            yield "topic", problem


class _Probe(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "x"


# --- values --------------------------------------------------------------------------------


_ADDRESSES = (
    ipaddress.IPv4Address,  # and the interfaces (PostgreSQL inet with a mask): subclasses
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
)
# A row orjson refuses (a time with a time zone: timetz) is written again with its times
# written here; not every row so, which would triple what a row with a timestamp costs.
_JSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


def _json_default(value: Any) -> Any:
    """JSON for what a database row may hold beyond JSON's own types."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)  # exact: a float would round a NUMERIC(38,10)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode()
    if isinstance(value, uuid.UUID | set | frozenset):
        return str(value) if isinstance(value, uuid.UUID) else sorted(value)
    if isinstance(value, _ADDRESSES):
        return str(value)  # inet, cidr: as the server writes them
    if isinstance(value, tuple):  # a named or driver tuple (a point [x, y], a box, a circle)
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _encode_value(value: Any) -> Any:
    """A cursor value as JSON that `_decode_value` turns back into the same type."""
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, dt.time):  # with its offset (timetz), which orjson refuses
        return {"time": value.isoformat()}
    if isinstance(value, dt.timedelta):  # interval, and MySQL's TIME
        return {"timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        ((kind, text),) = value.items()
        if kind == "datetime":
            return dt.datetime.fromisoformat(text)
        if kind == "date":
            return dt.date.fromisoformat(text)
        if kind == "time":
            return dt.time.fromisoformat(text)
        if kind == "timedelta":
            days, seconds, microseconds = text
            return dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)
        if kind == "decimal":
            return Decimal(text)
        if kind == "bytes":
            return bytes.fromhex(text)
        if kind == "uuid":
            return uuid.UUID(text)
        raise ValueError(kind)
    return value


# How a cursor value stored as text is read as the type of its column's values: older
# versions stored a `time` cursor as plain text ("10:00:00"), which PostgreSQL refuses
# as a parameter for a time column, so every poll failed.
_FROM_TEXT: dict[type, Any] = {
    dt.datetime: dt.datetime.fromisoformat,
    dt.date: dt.date.fromisoformat,
    dt.time: dt.time.fromisoformat,
    Decimal: Decimal,
    uuid.UUID: uuid.UUID,
    int: int,
    float: float,
}


def _as_type_of(
    value: Any, sample: Any, kept: Callable[[str, Any], bool] = lambda text, sample: False
) -> Any:
    """`value`, a stored cursor value, as the type of `sample`, a value of its column;
    ValueError when text cannot be read as that type. Text for which `kept(text, sample)`
    is true stays text: the driver's own for a value Python cannot hold (a PostgreSQL
    date BC, `-infinity`), which its encoder takes."""
    if not isinstance(value, str) or isinstance(sample, str):
        return value
    # along the class's bases: asyncpg gives its own subclass of uuid.UUID
    read = next((_FROM_TEXT[t] for t in type(sample).__mro__ if t in _FROM_TEXT), None)
    try:
        if read is None:
            raise ValueError(f"{value!r} is text, the column's values {type(sample).__name__}")
        try:
            return read(value)
        except ArithmeticError as err:  # decimal.InvalidOperation
            raise ValueError(f"{value!r} is no {type(sample).__name__}") from err
    except ValueError:
        if kept(value, sample):
            return value
        raise


def _level(value: Any, json_value: Any = _json_default) -> str:
    """A value as one topic level, written as in the row's JSON (NULL `null`, a boolean
    `true`, bytes as text or base64, an interval its seconds, a range or an array their
    JSON; it read `None`, `True`, `b'...'`, `0:01:30`, `<Range [1, 5)>`, `[1, 2]`).
    `json_value`: the source's JSON for what JSON has no type for."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, Decimal | int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, dt.date | dt.time):
        text = value.isoformat()
    else:
        try:
            if not isinstance(value, None | bool | float | list | dict):
                value = json_value(value)
            text = (
                value
                if isinstance(value, str)
                else orjson.dumps(value, default=json_value, option=_JSON_OPTIONS).decode()
            )
        except TypeError:
            text = str(value)
    return text.replace("/", "_").replace("+", "_").replace("#", "_").replace("\0", "_") or "_"


# --- the source ----------------------------------------------------------------------------


class PositionError(Exception):
    """Raised by `_fetch` when the driver cannot send a parameter as its column's type:
    only a stored position's cursor values can be such (text its encoder cannot parse).
    The position is then dropped, as an unreadable one."""


class Dialect:
    """How one database is spoken to: implemented by the `mysql` and `postgres` sources."""

    def quote(self, name: str) -> str:
        raise NotImplementedError

    def param(self, n: int) -> str:
        """The placeholder of the n-th parameter (from 1)."""
        raise NotImplementedError


class IncrementalSource(Source):
    """Reads a table in pages after a stored position; see the module docstring.

    Subclasses implement `connect`, `close`, `_fetch(sql, args) -> (names, rows)` and the
    dialect (`quote`, `param`).
    """

    mode = "poll"

    def __init__(self, config: SqlSourceKeys, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: SqlSourceKeys = config
        self.interval = config.interval
        self.schedule = config.poll_schedule(config.interval)
        self._after: tuple[Any, ...] | None = None  # cursor (and key) of the last row read
        self._loaded = False  # the stored position was read (once: it then lives here)
        self._text = False  # the stored position holds text, maybe of another type
        self.rows = 0
        self.pages = 0
        self._behind_at = float("-inf")  # when a poll that found nothing looks again
        self._behind: tuple[Any, ...] | None = None  # the newest row, before the position
        self._attributes = {"table": config.table, "source": ctx.name}
        self._fields = set(_template_fields(config.topic))

    # dialect, implemented by the subclasses
    def quote(self, name: str) -> str:
        raise NotImplementedError

    def param(self, n: int) -> str:
        raise NotImplementedError

    async def _fetch(
        self, sql: str, args: Sequence[Any]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        raise NotImplementedError

    def json_value(self, value: Any) -> Any:
        """JSON for a value of a row beyond JSON's own types; a driver's own types are
        added by its source. TypeError for one with no JSON form."""
        return _json_default(value)

    def text_value(self, text: str, sample: Any) -> bool:
        """True when `text`, a cursor value of a stored position, is the driver's text for
        a value of `sample`'s column that Python cannot hold (the `postgres` source's dates
        and times): kept as text, which the driver takes, rather than read as that type."""
        return False

    # -- queries -----------------------------------------------------------------------

    def _order(self) -> list[str]:
        config = self.config
        return [config.cursor] if config.key is None else [config.cursor, config.key]

    def select_sql(self, first: bool) -> str:
        """The page query: after the position (or from the start, when `first`)."""
        config, q, p = self.config, self.quote, self.param
        order = self._order()
        if config.columns is None:
            names = f"{q(config.table)}.*"  # MySQL may refuse a bare * with another column
        else:
            wanted = list(dict.fromkeys([*config.columns, *order]))
            names = ", ".join(q(c) for c in wanted)
        if first or config.key is None:
            n = 0
        else:
            # last, taken off before the row is read (see `_past_position`): whether the
            # server orders the row's key after the position's, by the key's collation
            names += f", ({q(config.key)} > {p(1)}) AS {q(AFTER_FLAG)}"
            n = 1
        # a NULL cursor or key sorts first (MySQL) or last (PostgreSQL) and compares with
        # nothing: read as the position, no row would ever come after it
        sql = f"SELECT {names} FROM {q(config.table)} WHERE {self._not_null()}"
        if not first:
            if config.key is None:
                sql += f" AND {q(config.cursor)} > {p(n + 1)}"
                n += 1
            else:
                c, k = q(config.cursor), q(config.key)
                sql += f" AND ({c} > {p(n + 1)} OR ({c} = {p(n + 2)} AND {k} > {p(n + 3)}))"
                n += 3
        by = ", ".join(q(c) for c in order)
        return f"{sql} ORDER BY {by} LIMIT {p(n + 1)}"

    def end_sql(self) -> str:
        """The position of the newest row (for `start: end`)."""
        q = self.quote
        order = self._order()
        names = ", ".join(q(c) for c in order)
        by = ", ".join(f"{q(c)} DESC" for c in order)
        return (
            f"SELECT {names} FROM {q(self.config.table)} WHERE {self._not_null()}"
            f" ORDER BY {by} LIMIT {self.param(1)}"
        )

    def _not_null(self) -> str:
        return " AND ".join(f"{self.quote(c)} IS NOT NULL" for c in self._order())

    # -- positions ---------------------------------------------------------------------

    def _position(self, after: tuple[Any, ...] | None) -> bytes:
        """The stored form of a position; `after` None: before the first row (a `start:
        end` on an empty table, so that a restart reads what came meanwhile)."""
        config = self.config
        try:
            return orjson.dumps(
                {
                    "v": POSITION_VERSION,
                    "table": config.table,
                    "order": self._order(),
                    "after": None if after is None else [_encode_value(v) for v in after],
                }
            )
        except TypeError as err:
            kinds = ", ".join(type(v).__name__ for v in after or ())
            raise PermanentError(
                f"table {config.table}: {' and '.join(self._order())} cannot mark a position"
                f" (its values read as {kinds}); use a number, text or time column as the"
                " cursor"
            ) from err

    async def _load_position(self) -> None:
        stored = await self.ctx.position()
        if stored is not None:
            try:
                data = orjson.loads(stored)
                order = data.get("order")
                # by the cursor only, before a `key` was set (as the message on too many
                # ties asks): the rows after its value come next all the same
                if data.get("table") == self.config.table and (
                    order == self._order() or order == self._order()[:1]
                ):
                    after = data["after"]
                    self._after = None if after is None else tuple(map(_decode_value, after))
                    self._text = any(isinstance(v, str) for v in self._after or ())
                    return
                self.ctx.log.warning(
                    "the stored position is for table %s ordered by %s, not this one; starting"
                    " at the %s of table %s",
                    data.get("table"),
                    ", ".join(data.get("order") or ()),
                    self.config.start,
                    self.config.table,
                )
            except (ValueError, TypeError, KeyError) as err:
                self.ctx.log.warning(
                    "the stored position cannot be read (%s); starting at the %s",
                    err,
                    self.config.start,
                )
        await self._load_start()

    async def _load_start(self) -> None:
        """Start where `start` says, with no stored position to go on."""
        if self.config.start == "end":
            _names, rows = await self._fetch(self.end_sql(), [1])
            # kept at once, an empty table's too: a restart before the next row must not
            # skip what came meanwhile by taking the end again
            end = tuple(rows[0]) if rows else None
            position = self._position(end)
            self._after = end
            await self.ctx.save_position(position)

    # -- polling -----------------------------------------------------------------------

    async def poll(self) -> list[FlowFile]:
        return [m.flowfile for m in await self.poll_messages()]

    async def _typed_position(self) -> bool:
        """Read text in the stored position as the type of its column's values, learnt
        from the newest row; False while the table has no row to learn it from (nor
        any to read). A position that cannot be read so is dropped, as an unreadable one."""
        assert self._after is not None
        _names, rows = await self._fetch(self.end_sql(), [1])
        if not rows:
            return False
        try:
            self._after = tuple(
                _as_type_of(value, sample, self.text_value)
                for value, sample in zip(self._after, rows[0], strict=False)
            )
        except ValueError as err:
            await self._start_over(err)
            return True
        self._text = False
        return True

    async def _start_over(self, err: Exception) -> None:
        """Drop the stored position, which cannot be read, and start at `start`."""
        self.ctx.log.warning(
            "the stored position cannot be read (%s); starting at the %s",
            err,
            self.config.start,
        )
        self._after = None
        self._text = False
        await self._load_start()

    async def _select(self, limit: int) -> Fetched:
        """At most `limit` rows after the position, in order, and with a `key`, whether
        each one's key comes after the position's (see `_past_position`)."""
        if self._after is not None:
            try:
                return await self._select_after(limit)
            except PositionError as err:  # it was retried for ever as a lost connection
                await self._start_over(err)
        if self._after is None:
            return (*await self._fetch(self.select_sql(True), [limit]), None)
        return await self._select_after(limit)

    async def _select_after(self, limit: int) -> Fetched:
        assert self._after is not None
        if self.config.key is None:
            return (*await self._fetch(self.select_sql(False), [self._after[0], limit]), None)
        if len(self._after) == 1:  # by the cursor only (see `_load_position`): `c = NULL`
            args = [None, self._after[0], None, None, limit]
        else:
            c, k = self._after
            args = [k, c, c, k, limit]
        names, rows = await self._fetch(self.select_sql(False), args)
        # the flag, last, is no column of the table: not in the rows' content
        return names[:-1], [row[:-1] for row in rows], [row[-1] for row in rows]

    def _order_index(self, names: list[str]) -> list[int]:
        """Where `cursor` (and `key`) are among the result's `names`. MySQL matches column
        names whatever their case: `cursor: ID` reads a column `id`, and `SELECT *` names
        it `id` (a ValueError traceback at every poll)."""
        index = []
        folded = [name.casefold() for name in names]
        for column in self._order():
            if column in names:
                index.append(names.index(column))
            elif folded.count(column.casefold()) == 1:
                index.append(folded.index(column.casefold()))
            else:
                raise PermanentError(
                    f"table {self.config.table}: the rows read have no column {column}"
                )
        return index

    def _past_position(
        self, names: list[str], rows: list[Row], after: list[Any] | None
    ) -> list[Row]:
        """`rows` less those at their head that are at or before the position: rows read
        already, found after it because the value read back is not the one stored (a
        MySQL FLOAT 0.2 reads 0.2, is 0.200000003 > 0.2): the row of the position, and
        with a `key`, the rows of its cursor value whose key the server orders up to the
        position's (all of them came again: read again at every poll, for ever). Only at
        the head: rows tied with the one before them further on are rows of their own.

        `after`, with a `key`: for each row, whether the server orders its key after the
        position's. Text is ordered by the column's collation, not as Python orders it
        (with MySQL's case-insensitive ones and PostgreSQL's locales 'B' follows 'a'), so
        the server tells: compared in Python, the rows after a key 'a' were left out for
        good; looked for by the position's own row, rows read already came again for ever
        when that row was not among those fetched (or deleted)."""
        bound = self._after
        if bound is None:
            return rows
        index = self._order_index(names)[: len(bound)]  # by the cursor only: see `_select`
        skip = 0
        if len(index) == 2:
            assert after is not None
            c, ci = bound[0], index[0]
            while skip < len(rows) and rows[skip][ci] == c and not after[skip]:
                skip += 1
        else:
            while skip < len(rows) and tuple(rows[skip][i] for i in index) == bound:
                skip += 1
        return rows[skip:]

    async def _page_by_key(self, limit: int) -> Page:
        """A page for a cursor with a key. When each row fetched was one read already (a
        MySQL FLOAT run, see `_past_position`), the fetch grows (2, 4... times, up to
        PAGE_MAX rows) past them: asked again at once for the same rows, the source stalled."""
        want = limit
        while True:
            names, fetched, after = await self._select(want)
            rows = self._past_position(names, fetched, after)
            self.backlog = len(fetched) >= want
            if rows or not self.backlog:
                return names, rows
            if want >= PAGE_MAX:
                config = self.config
                raise PermanentError(
                    f"table {config.table}: more than {PAGE_MAX} rows read already come"
                    f" again after the position ({config.cursor} compares unequal to the"
                    " value it reads back, as a FLOAT does): use an exact cursor column"
                )
            want = min(want * 2, PAGE_MAX)

    async def _page_of_whole_ties(self, limit: int) -> Page:
        """A page for a cursor without key, which may repeat: rows that share a cursor
        value all go in one page. Cut inside such a run, the position after the page was
        that value and `cursor > value` passed over the rest of the run for good. So a
        page that may go on (one row more than asked for came) ends before the run of
        its last value; when it holds nothing else (a run longer than the page, or only
        rows read already: a MySQL FLOAT 0.2 is found again after its own position), the
        fetch grows (2, 4... times) until that run ends, up to PAGE_MAX rows (more stop
        the source: only a `key` can page through them)."""
        config = self.config
        want = limit
        while True:
            names, fetched, after = await self._select(want + 1)
            more = len(fetched) > want
            rows = self._past_position(names, fetched, after)
            self.backlog = more
            if not more:
                return names, rows
            if rows:
                at = self._order_index(names)[0]
                last = rows[-1][at]
                page = [row for row in rows if row[at] != last]  # sorted: `last` ends it
                if page:
                    return names, page
            # PAGE_MAX bounds the rows not read already; those at the head (read already,
            # see `_past_position`) come on top: counted in it, a run of PAGE_MAX rows or
            # fewer stopped the source
            cap = PAGE_MAX + len(fetched) - len(rows)
            if len(rows) > PAGE_MAX or want >= cap:
                value = _level((rows or fetched)[0][self._order_index(names)[0]])
                raise PermanentError(
                    f"table {config.table}: more than {PAGE_MAX} rows share the"
                    f" {config.cursor} value {value}, more than a page can hold: set `key`"
                    " to a unique column that breaks the ties (the position is kept)"
                )
            want = min(want * 2, cap)

    async def poll_messages(self) -> list[Message]:
        config = self.config
        if not self._loaded:
            await self._load_position()
            self._loaded = True
        if self._text and not await self._typed_position():
            self.backlog = False
            return []
        limit = config.page_size
        if config.key is not None:
            names, rows = await self._page_by_key(limit)
        else:
            names, rows = await self._page_of_whole_ties(limit)
        if not rows:
            if not self.backlog and self._after is not None:
                await self._check_behind()
            return []
        self.pages += 1
        index = self._order_index(names)
        messages = []
        now = self.ctx.clock.now_ns()
        topic_of = self._topic_maker(names)
        for row in rows:
            after = tuple(row[i] for i in index)
            record = dict(zip(names, row, strict=True))
            try:
                try:
                    content = orjson.dumps(record, default=self.json_value)
                except TypeError:
                    content = orjson.dumps(record, default=self.json_value, option=_JSON_OPTIONS)
            except TypeError as err:
                raise PermanentError(
                    f"table {config.table}: a row holds a value with no JSON form ({err})"
                ) from err
            messages.append(
                Message(
                    FlowFile.create(topic_of(record), content, self._attributes, now),
                    position=self._position(after),
                )
            )
            self._after = after
        self.rows += len(messages)
        return messages

    async def _check_behind(self) -> None:
        """After a poll that found nothing: say so when the table's newest row comes before
        the position (the table emptied and its ids started again, TRUNCATE ... RESTART
        IDENTITY, a table made again): the rows up to the position are never read, and
        nothing said why. Once until it changes; at most every BEHIND_CHECK_S."""
        now = self.ctx.clock.monotonic()
        if now < self._behind_at:
            return
        self._behind_at = now + BEHIND_CHECK_S
        bound = self._after
        assert bound is not None
        _names, rows = await self._fetch(self.end_sql(), [1])
        newest = tuple(rows[0])[: len(bound)] if rows else None
        if newest is None or newest == bound:
            self._behind = None
            return
        # not the position's row: before it, unless a row came after it meanwhile (or a
        # FLOAT cursor's value reads back unequal), which the next poll reads
        if self._past_position(*await self._select(1)):
            return
        if newest != self._behind:
            config = self.config
            self.ctx.log.warning(
                "table %s: its newest row (%s %s) comes before the position (%s): the rows"
                " from there were deleted. If the table was emptied and its %s values"
                " started again (TRUNCATE ... RESTART IDENTITY, a table made again), rows"
                " up to the position are not read: give the source another name to read"
                " the table again from `start`",
                config.table,
                " and ".join(self._order()),
                ", ".join(map(_level, newest)),
                ", ".join(map(_level, bound)),
                config.cursor,
            )
        self._behind = newest

    def _topic_maker(self, names: list[str]) -> Any:
        config = self.config
        template = config.topic
        if not self._fields:
            return lambda record: template
        missing = self._fields - {*names, "table", "source"}
        if missing:
            raise PermanentError(
                f"topic {template!r} names {', '.join(sorted(missing))}, which table"
                f" {config.table} does not have; fix `topic` or `columns`"
            )
        fixed = {"table": _level(config.table), "source": _level(self.ctx.name)}

        def topic(record: dict[str, Any]) -> str:
            values = {
                name: _level(record[name], self.json_value)
                for name in self._fields
                if name in record
            }
            return template.format_map({**fixed, **values})

        return topic

    def status(self) -> dict[str, object]:
        after = self._after
        return {
            "table": self.config.table,
            "rows": self.rows,
            "position": None if after is None else [_encode_value(v) for v in after],
        }

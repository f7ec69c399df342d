"""The mysql sink against a real MariaDB: the sink contract, then what is its own."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks import mysql
from gateway.sinks._columns import columns_for
from gateway.sinks.mysql import (
    DIALECT,
    MysqlSink,
    MysqlSinkConfig,
    _nested,
    _parse,
    _Rows,
    parse_dsn,
)
from tests.servers import free_port, make_pki
from tests.sinks.contract import (
    SinkContract,
    closing,
    connected,
    server_down,
    unique_name,
    write_until_delivered,
)
from tests.sinks.contract import config_problems as sink_config_problems

pytestmark = pytest.mark.integration

EPOCH = dt.datetime(1970, 1, 1)


def config_problems(**keys: Any) -> tuple[Any, list[str]]:
    return sink_config_problems("mysql", "db", **keys)


def make_sink(dsn: str, **keys: Any) -> MysqlSink:
    config, problems = config_problems(dsn=dsn, **keys)
    assert problems == []
    assert isinstance(config, MysqlSinkConfig)
    return MysqlSink(config, Context(name="db", kind="sink"))


@pytest.fixture
def table() -> str:
    return unique_name()


@pytest.fixture
async def sink_for(mariadb: Any) -> AsyncIterator[Callable[..., Any]]:
    """`await sink_for(**keys)`: a connected sink on the shared server, closed after."""
    async with closing(lambda **keys: connected(make_sink(mariadb.dsn, **keys))) as opened:
        yield opened


def ids(mariadb: Any, table: str) -> list[str]:
    return [row[0] for row in mariadb.fetch(f"SELECT id FROM `{table}`")]


# --- the contract -------------------------------------------------------------------------

# A typed column, so that the server has a value to refuse: "hot" is no DOUBLE.
CONTRACT_COLUMNS = {
    "topic": "topic",
    "ts": "ts",
    "payload": "payload",
    "raw": "raw",
    "temp": {"from": "field.temp", "type": "double"},
}


class TestMysqlContract(SinkContract):
    @pytest.fixture
    def make_sink(self, mariadb: Any, table: str) -> Callable[[], Any]:
        async def make() -> MysqlSink:
            sink = make_sink(mariadb.dsn, table=table, columns=CONTRACT_COLUMNS)
            await sink.connect()
            return sink

        return make

    @pytest.fixture
    def fetch_ids(self, mariadb: Any, table: str) -> Callable[[], list[str]]:
        return lambda: ids(mariadb, table)

    @pytest.fixture
    def bad_flowfile(self) -> Callable[[], FlowFile]:
        return lambda: FlowFile.create("contract/bad", b'{"temp": "hot"}')

    @pytest.fixture
    def outage(self, mariadb: Any) -> Callable[[], Any]:
        return server_down(mariadb)


# --- the table ----------------------------------------------------------------------------


async def test_default_table_keeps_json_as_json_and_anything_else_as_bytes(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    cases = {
        "json": FlowFile.create("s/a", b'{"temp": 21.5, "ok": true}', {"site": "north"}),
        "pretty": FlowFile.create("s/b", b"  [1, 2,\n 3]\n"),
        "nul_escape": FlowFile.create("s/f", b'{"a": "x\\u0000y"}'),  # MySQL JSON takes it
        "unicode": FlowFile.create(
            "s/\u00e9/\u6e29\u5ea6", '{"a": "\u00e9"}'.encode(), {"k": "\u00fc"}
        ),
        "binary": FlowFile.create("s/c", b"\x00\x01\xff"),
        "text": FlowFile.create("s/d", b"hello"),
        "empty": FlowFile.create("s/e", b""),
        "lone_surrogate": FlowFile.create("s/g", b'["\\ud800"]'),
        "nan": FlowFile.create("s/h", b"[NaN]"),
        "latin1": FlowFile.create("s/i", '{"a": "\u00e9"}'.encode("latin-1")),
    }
    assert await sink.write(list(cases.values())) == []
    rows = {
        r[0]: r[1:]
        for r in mariadb.fetch(f"SELECT id, topic, ts, attributes, payload, raw FROM `{table}`")
    }
    assert len(rows) == len(cases)
    for name, ff in cases.items():
        topic, ts, attributes, payload, raw = rows[ff.id]
        assert topic == ff.topic, name
        assert ts == EPOCH + dt.timedelta(microseconds=ff.created // 1000), name
        assert json.loads(attributes) == ff.attributes, name
        if name in ("json", "pretty", "nul_escape", "unicode"):
            assert json.loads(payload) == json.loads(ff.content), name
            assert raw is None, name
        else:
            assert payload is None, name
            assert raw == ff.content, name
    columns = mariadb.fetch(
        "SELECT column_name, column_type, is_nullable, column_key FROM information_schema.columns"
        " WHERE table_schema = 'edge' AND table_name = %s ORDER BY ordinal_position",
        table,
    )
    assert columns == [
        ("id", "char(36)", "NO", "PRI"),
        ("topic", "text", "NO", ""),
        ("ts", "datetime(6)", "NO", ""),
        ("attributes", "longtext", "NO", ""),  # MariaDB's JSON: LONGTEXT CHECK (json_valid)
        ("payload", "longtext", "YES", ""),
        ("raw", "longblob", "YES", ""),
    ]


async def test_the_session_is_strict_and_in_utc(mariadb: Any, table: str, sink_for: Any) -> None:
    sink = await sink_for(table=table)
    async with sink._conn.cursor() as cursor:
        await cursor.execute("SELECT @@SESSION.sql_mode, @@SESSION.time_zone")
        mode, zone = await cursor.fetchone()
    assert {"STRICT_ALL_TABLES", "NO_ZERO_DATE", "NO_ZERO_IN_DATE"} <= set(mode.split(","))
    assert zone == "+00:00"


async def test_strict_mode_refuses_a_value_that_would_be_truncated(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # A table of the user's with a short column: outside strict mode MariaDB would store
    # "toolong" as "tool" with a warning; here that row is refused and the rest stored.
    mariadb.execute(f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, code VARCHAR(4))")
    sink = await sink_for(table=table, create_table=False, columns={"code": "attributes.code"})
    batch = [FlowFile.create("s", b"{}", {"code": f"c{i}"}) for i in range(30)]
    batch[17] = FlowFile.create("s", b"{}", {"code": "toolong"})
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[17].id]
    assert "Data too long for column 'code'" in rejected[0].reason
    rows = dict(mariadb.fetch(f"SELECT id, code FROM `{table}`"))
    assert rows == {ff.id: ff.attributes["code"] for ff in batch if ff is not batch[17]}
    assert "tool" not in rows.values()


async def test_json_nested_deeper_than_the_server_takes_is_kept_as_bytes(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    """MariaDB's JSON check refuses JSON nested 32 deep or more: such a payload sent the
    whole FlowFile to the dead letters, where the default table keeps what is not JSON
    to it in raw."""
    sink = await sink_for(table=table)
    cases = {depth: b"[" * depth + b"1" + b"]" * depth for depth in (31, 32, 600)}
    cases[40] = b'{"a": ' * 40 + b'"x"' + b"}" * 40
    batch = {depth: FlowFile.create(f"s/{depth}", content) for depth, content in cases.items()}
    assert await sink.write(list(batch.values())) == []
    stored = {r[0]: r[1:] for r in mariadb.fetch(f"SELECT id, payload, raw FROM `{table}`")}
    assert json.loads(stored[batch[31].id][0]) == json.loads(cases[31])
    for depth in (32, 40, 600):
        assert stored[batch[depth].id] == (None, cases[depth]), depth
    await sink.close()


async def test_an_exponent_past_any_decimal_is_kept_as_bytes_not_a_crash(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    """1e99999999999999999999 (with a 20-digit exponent, a long number) was read as a
    Decimal, whose InvalidOperation escaped the write: the sink retried that batch for
    ever. It is content the server's JSON cannot hold: raw, as other such content."""
    columns = {
        "id": "id",
        "payload": "payload",
        "raw": "raw",
        "n": {"from": "field.n", "type": "numeric"},
    }
    sink = await sink_for(table=table, columns=columns)
    content = b'{"n": 1e99999999999999999999}'
    huge = FlowFile.create("s/huge", content)
    assert await sink.write([huge, FlowFile.create("s/ok", b'{"n": 1.5}')]) == []
    stored = {r[0]: r[1:] for r in mariadb.fetch(f"SELECT id, payload, raw FROM `{table}`")}
    assert stored[huge.id] == (None, content)
    await sink.close()


async def test_a_decimal_with_more_digits_than_a_double_keeps_every_digit(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    """Read as a double, 12345678901234.5678 went into a decimal column as
    12345678901234.5680000000; a field keeps the digits written in the JSON now."""
    sink = await sink_for(
        table=table,
        columns={
            "n": {"from": "field.n", "type": "numeric"},
            "t": "field.n",
            "doc": {"from": "field.doc", "type": "json"},
            "whole": {"from": "field.w", "type": "bigint"},
        },
    )
    exact = b'{"n": 12345678901234.5678, "doc": {"x": [0.12345678901234567891]}, "w": 5.0}'
    # a fraction of that many digits and an exponent a DECIMAL cannot hold: refused, quickly
    huge = b'{"n": 1.2345678901234567e999999999}'
    batch = [FlowFile.create("s/exact", exact), FlowFile.create("s/huge", huge)]
    rejected = await sink.write(batch)
    assert [r.flowfile.topic for r in rejected] == ["s/huge"]
    ((n, t, doc, whole),) = mariadb.fetch(f"SELECT n, t, doc, whole FROM `{table}`")
    assert (str(n), t, whole) == ("12345678901234.5678000000", "12345678901234.5678", 5)
    assert doc == '{"x":[0.12345678901234567891]}'
    # DECIMAL(38,10) rounds past 10 decimals, as the guide says; text keeps them
    fine = FlowFile.create("s/fine", b'{"n": 0.12345678901234567891}')
    assert await sink.write([fine]) == []
    rows = mariadb.fetch(f"SELECT n, t FROM `{table}` WHERE id = %s", fine.id)
    assert [(str(n), t) for n, t in rows] == [("0.1234567890", "0.12345678901234567891")]
    await sink.close()


def test_only_a_field_column_that_keeps_digits_reads_long_numbers_exactly() -> None:
    """The exact parse (Decimals) cost every FlowFile a scan for long numbers, the
    default table's too, which stores the content's text: it is decided once now."""

    def exact(columns: Any, whole: frozenset[str] = frozenset()) -> bool:
        return _Rows(columns_for(columns, DIALECT), False, whole).exact

    assert not exact(None)
    assert not exact({"t": {"from": "field.t", "type": "double"}, "p": "payload"})
    assert not exact({"t": {"from": "field.t", "type": "boolean"}, "d": "topic.1"})
    # timestamptz: DATETIME(6) takes 20231114221320.123456, whose microseconds a double loses
    for sql_type in ("numeric", "decimal", "text", "json", "jsonb", "timestamptz"):
        assert exact({"t": {"from": "field.t", "type": sql_type}}), sql_type
    assert exact({"t": "field.t"})  # text
    # a double into the table's INT column: 21.00000000000000001 is not whole, 21.0 is
    assert exact({"t": {"from": "field.t", "type": "double"}}, frozenset({"t"}))


def _deeper(value: Any, depth: int) -> bool:
    """Whether `value` nests lists and objects `depth` deep or more (the reference)."""
    todo = [(value, 1)] if type(value) is dict or type(value) is list else []
    while todo:
        item, level = todo.pop()
        if level >= depth:
            return True
        for inner in item.values() if type(item) is dict else item:
            if type(inner) is dict or type(inner) is list:
                todo.append((inner, level + 1))
    return False


def test_json_nested_too_deep_under_a_key_written_twice_is_kept_as_bytes() -> None:
    """The parsed value keeps the last of a key written twice, the server reads the
    text: {"a": [[...40 deep...]], "a": 0} went as JSON, and MariaDB refused the row."""
    content = b'{"a": ' + b"[" * 40 + b"]" * 40 + b', "a": 0}'
    assert _parse(content)[0] is None


def test_the_nesting_precheck_never_misses_what_the_walk_finds() -> None:
    """The walk of the parsed value ran for any payload of 32 brackets or more (an array
    of 40 readings cost twice its parse); it runs now only when the brackets outside
    strings nest that deep, which strings holding brackets, quotes and escapes must not
    hide."""
    strings = ["a]b", "[[{", '\\"]', "x\\\\", '\\\\"[', "}{", "é"]
    payloads: list[Any] = [[{"t": i, "v": 20.5} for i in range(40)], ["]" * 40] * 40]
    for depth in (31, 32, 33):
        for text in strings:
            value: Any = text
            for level in range(depth):
                value = [value, text] if level % 2 else {text: value, "]]": "[["}
            payloads.append(value)
    for value in payloads:
        for content in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
            deep = _deeper(value, 32)
            assert _nested(content.encode(), 32) == deep, content[:80]
    assert not _nested(json.dumps(payloads[0]).encode(), 32)


async def test_a_long_fraction_of_a_double_field_is_refused_by_an_integer_column(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    """Read as a double, 21.00000000000000001 is 21.0, a whole number the INT column took."""
    mariadb.execute(f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, n INT)")
    sink = await sink_for(table=table, columns={"n": {"from": "field.t", "type": "double"}})
    batch = [
        FlowFile.create("s/1", b'{"t": 21.00000000000000001}'),
        FlowFile.create("s/2", b'{"t": 7}'),
    ]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[0].id]
    assert mariadb.fetch(f"SELECT n FROM `{table}`") == [(7,)]
    await sink.close()


async def test_columns_map_topic_levels_json_fields_and_attributes(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(
        table=table,
        columns={
            "device": "topic.2",
            "kind": "topic.-1",
            "deep": "topic.9",
            "temperature": {"from": "field.temp", "type": "double precision"},
            "humidity": {"from": "field.env.humidity", "type": "real"},
            "second": {"from": "field.readings.1", "type": "integer"},
            "tags": "field.env.tags",
            "env": {"from": "field.env", "type": "json"},
            "name": "field.name",
            "ok": {"from": "field.ok", "type": "boolean"},
            "site": "attributes.site",
            "shift": {"from": "attributes.shift", "type": "smallint"},
            "at": "ts",
            "body": "payload",
        },
    )
    body = {
        "temp": 21.5,
        "env": {"humidity": 40.25, "tags": ["a", "b"]},
        "readings": [10, 20],
        "name": "press 7",
        "ok": True,
    }
    full = FlowFile.create(
        "plant/line3/press7/telemetry", json.dumps(body).encode(), {"site": "north", "shift": "2"}
    )
    sparse = FlowFile.create("plant/x", b"\x01 not json")
    typed_as_text = FlowFile.create("plant/line1/p1/t", b'{"temp": "19.25", "readings": [1, "2"]}')
    assert await sink.write([full, sparse, typed_as_text]) == []

    rows = {
        r[0]: r[1:]
        for r in mariadb.fetch(
            "SELECT id, device, kind, deep, temperature, humidity, second, tags, env,"
            f" name, ok, site, shift, at, body FROM `{table}`"
        )
    }
    device, kind, deep, temp, hum, second, tags, env, name, ok, site, shift, at, payload = rows[
        full.id
    ]
    assert (device, kind, deep) == ("press7", "telemetry", None)
    assert (temp, hum, second) == (21.5, 40.25, 20)
    assert json.loads(tags) == ["a", "b"]
    assert json.loads(env) == body["env"]
    assert (name, ok, site, shift) == ("press 7", 1, "north", 2)
    assert at == EPOCH + dt.timedelta(microseconds=full.created // 1000)
    assert json.loads(payload) == body

    assert rows[sparse.id][:3] == (None, "x", None)
    assert rows[sparse.id][3:12] == (None,) * 9  # no JSON, no attributes: all NULL
    assert rows[sparse.id][13] is None  # payload

    # MariaDB converts a JSON string "19.25" to DOUBLE and "2" to INT.
    assert rows[typed_as_text.id][3] == 19.25
    assert rows[typed_as_text.id][5] == 2

    columns = dict(
        mariadb.fetch(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'edge' AND table_name = %s",
            table,
        )
    )
    assert columns["temperature"] == "double"
    assert columns["tags"] == "text"
    assert columns["shift"] == "smallint"
    assert len(columns) == 15


async def test_a_value_that_does_not_fit_its_column_rejects_only_that_row(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(
        table=table,
        columns={
            "device": "topic.1",
            "temperature": {"from": "field.temp", "type": "double"},
            "level": {"from": "field.level", "type": "smallint"},
            "day": {"from": "field.day", "type": "date"},
        },
    )

    def reading(i: int, **body: Any) -> FlowFile:
        doc = {"temp": i, "level": 1, "day": "2024-05-01", **body}
        return FlowFile.create(f"s/dev{i}", json.dumps(doc).encode())

    batch = [reading(i) for i in range(64)]
    batch[11] = reading(11, temp="hot")
    batch[40] = reading(40, level=40000)
    batch[41] = reading(41, day="0000-00-00")  # NO_ZERO_DATE
    batch[63] = reading(63, day="2024-02-30")
    # JSON 1e999 reads as inf, which no DOUBLE holds.
    batch[20] = FlowFile.create("s/dev20", b'{"temp": 1e999, "level": 1, "day": "2024-05-01"}')
    rejected = await sink.write(batch)

    reasons = {r.flowfile.id: r.reason for r in rejected}
    assert set(reasons) == {batch[11].id, batch[20].id, batch[40].id, batch[41].id, batch[63].id}
    assert "Incorrect double value: 'hot'" in reasons[batch[11].id]
    assert "Out of range value for column 'level'" in reasons[batch[40].id]
    assert "Incorrect date value" in reasons[batch[41].id]
    assert "Incorrect date value" in reasons[batch[63].id]
    assert set(ids(mariadb, table)) == {
        ff.id for i, ff in enumerate(batch) if i not in (11, 20, 40, 41, 63)
    }


async def test_rows_beyond_max_allowed_packet_are_split_or_refused_not_retried_forever(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # The server would close the connection on such a statement, and the same batch,
    # retried, would never get through.
    limit = 65536  # the server's 16 MiB would make a slow test; a session reads it at connect
    ((default,),) = mariadb.fetch("SELECT @@global.max_allowed_packet")
    mariadb.execute(f"SET GLOBAL max_allowed_packet = {limit}")
    try:
        sink = await sink_for(table=table)
    finally:
        mariadb.execute(f"SET GLOBAL max_allowed_packet = {default}")

    def sized(n: int) -> FlowFile:
        return FlowFile.create("s/big", b'"' + b"x" * n + b'"')

    small = FlowFile.create("s/small", b"{}")
    # two that fit one at a time but not together, and one that never fits
    halves, huge = [sized(limit * 6 // 10), sized(limit * 6 // 10)], sized(limit)
    rejected = await sink.write([small, *halves, huge])

    assert [(r.flowfile.id, r.reason[:30]) for r in rejected] == [
        (huge.id, "mysql refused the row: the row")
    ]
    assert f"max_allowed_packet ({limit})" in rejected[0].reason
    assert set(ids(mariadb, table)) == {small.id, halves[0].id, halves[1].id}


async def test_a_fraction_is_refused_not_rounded_into_an_integer_column(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # MySQL rounds 21.5 to 22 in an INT column, even in strict mode.
    mariadb.execute(
        f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, n INT, m DOUBLE, k BIGINT, l INT)"
    )
    sink = await sink_for(
        table=table,
        columns={
            "n": {"from": "field.t", "type": "integer"},
            "m": {"from": "field.t", "type": "double"},
            "k": {"from": "attributes.k", "type": "double"},  # a table of its own
            "l": "topic.1",
        },
    )
    batch = [
        FlowFile.create(f"s/{level}", f'{{"t": {t}}}'.encode(), {"k": k})
        for t, k, level in (
            ("21.5", "1", "1"),
            ('"21.5"', "1", "1"),
            ("21.0", "1e2", "3"),
            ("7", "2.5", "1"),
            ("7", "1", "1.5"),
        )
    ]
    rejected = await sink.write(batch)
    assert {r.flowfile.id for r in rejected} == {ff.id for ff in batch if ff is not batch[2]}
    assert "Data truncated for column 'n'" in rejected[0].reason
    assert mariadb.fetch(f"SELECT n, m, k, l FROM `{table}`") == [(21, 21.0, 100, 3)]

    # Past 64 bits a whole number goes as written, for the column to refuse, never made an
    # int: 1e5000 has more digits than the driver may print, and 1e999999999 would hold
    # the event loop for hours. Each alone, so the old code fails on the first.
    for huge in ("1e5000", "-1e999999999", "1e20"):
        flowfile = FlowFile.create(f"s/{huge}", b"{}", {"k": huge})
        assert [r.flowfile.id for r in await sink.write([flowfile])] == [flowfile.id]
    assert mariadb.fetch(f"SELECT COUNT(*) FROM `{table}`") == [(1,)]
    # Zero with any exponent is zero, a whole number.
    zero = FlowFile.create("s/4", b"{}", {"k": "0e999999999"})
    assert await sink.write([zero]) == []
    assert mariadb.fetch(f"SELECT k FROM `{table}` WHERE id = %s", zero.id) == [(0,)]


async def test_rfc3339_times_and_dates_fit_timestamptz_and_date_columns(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # MariaDB itself refuses the `T`, the `Z` and offsets; the postgres sink takes them.
    sink = await sink_for(
        table=table,
        columns={
            "at": {"from": "field.at", "type": "timestamptz"},
            "day": {"from": "field.day", "type": "date"},
        },
    )
    cases = {
        "2024-05-01T12:00:00Z": dt.datetime(2024, 5, 1, 12),
        "2024-05-01T14:00:00.25+02:00": dt.datetime(2024, 5, 1, 12, 0, 0, 250000),
        "2024-05-01T12:00:00.123456": dt.datetime(2024, 5, 1, 12, 0, 0, 123456),
        "2024-05-01 12:00:00": dt.datetime(2024, 5, 1, 12),
    }
    batch = [
        FlowFile.create("s/a", json.dumps({"at": text, "day": text}).encode()) for text in cases
    ]
    wrong = FlowFile.create("s/b", b'{"at": "2024-05-01T25:00:00Z"}')
    rejected = await sink.write([*batch, wrong])

    assert [r.flowfile.id for r in rejected] == [wrong.id]
    assert "Incorrect datetime value" in rejected[0].reason
    rows = dict((r[0], r[1:]) for r in mariadb.fetch(f"SELECT id, at, day FROM `{table}`"))
    for ff, expected in zip(batch, cases.values(), strict=True):
        assert rows[ff.id] == (expected, dt.date(2024, 5, 1))


async def test_boolean_texts_fit_a_boolean_column_as_in_postgres(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # MariaDB refuses "true" for its BOOLEAN (a TINYINT); PostgreSQL takes it.
    sink = await sink_for(table=table, columns={"ok": {"from": "field.ok", "type": "boolean"}})
    values = {"true": 1, " Yes": 1, "ON": 1, "t": 1, "1": 1, "false": 0, "No": 0, "off": 0}
    batch = [FlowFile.create("s/a", json.dumps({"ok": v}).encode()) for v in values]
    batch += [FlowFile.create("s/a", json.dumps({"ok": v}).encode()) for v in (True, False)]
    batch += [FlowFile.create("s/a", json.dumps({"ok": v}).encode()) for v in (1, 0, 1.0)]
    # numeric texts equal to 1 or 0 were stored by MySQL, and dead-lettered once 1.0 was
    # taken: so are they again, through Decimal
    texts = ("1.0", "0.0", "1e0", " 0.00 ", "0e999999999")
    batch += [FlowFile.create("s/a", json.dumps({"ok": v}).encode()) for v in texts]
    # MariaDB stored 2 and -7 in its TINYINT as they are, and rounded 0.5 to 1
    wrong = [
        FlowFile.create("s/b", json.dumps({"ok": v}).encode())
        for v in ("maybe", 2, 0.5, -7, "2", [1], "0.5", "-7", "NaN", "0_1", "1e999999999")
    ]
    rejected = await sink.write([*batch, *wrong])
    assert [r.flowfile.id for r in rejected] == [ff.id for ff in wrong]
    assert "Incorrect integer value: 'not a boolean: 2' for column" in rejected[1].reason
    rows = dict(mariadb.fetch(f"SELECT id, ok FROM `{table}`"))
    assert [rows[ff.id] for ff in batch] == [*values.values(), 1, 0, 1, 0, 1, 1, 0, 1, 0, 0]


def signal_over_100(mariadb: Any, table: str, sqlstate: str, message: str) -> None:
    """A trigger of `table` that refuses a row whose t is over 100 with SIGNAL `sqlstate`."""
    mariadb.execute(
        f"CREATE TRIGGER `{table}_t` BEFORE INSERT ON `{table}` FOR EACH ROW"
        f" IF NEW.t > 100 THEN SIGNAL SQLSTATE '{sqlstate}' SET MESSAGE_TEXT = '{message}';"
        " END IF"
    )


async def test_a_trigger_that_signals_refuses_its_row_alone(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # SIGNAL SQLSTATE '45000' (error 1644) was taken for no fault of the row's: the batch
    # was retried for ever and the rows behind it never went.
    mariadb.execute(f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, t DOUBLE)")
    signal_over_100(mariadb, table, "45000", "out of range")
    sink = await sink_for(table=table, columns={"t": {"from": "field.t", "type": "double"}})
    batch = [FlowFile.create("s", json.dumps({"t": t}).encode()) for t in (20, 150, 30)]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[1].id]
    assert "out of range (error 1644)" in rejected[0].reason
    assert len(ids(mariadb, table)) == 2


@pytest.mark.parametrize(
    ("sqlstate", "noted"), [("23000", False), ("22003", False), ("45000", True)]
)
async def test_a_trigger_signalling_a_row_class_refuses_its_row_alone(
    mariadb: Any, table: str, sink_for: Any, sqlstate: str, noted: bool
) -> None:
    # Row checks written as triggers before MySQL 8.0.16 signal '23000' (or class 22):
    # only '45000' was a row's, and such a batch was held for ever. And the SQLSTATE was
    # read from condition 1, a note's or a warning's when one came first (MySQL 8.0.20+
    # warns that VALUES() is deprecated): here the first row's 'abc   ' is cut to
    # VARCHAR(3), a note (1265), before the second row's trigger signals.
    mariadb.execute(f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, t DOUBLE, s VARCHAR(3))")
    signal_over_100(mariadb, table, sqlstate, "out of range")
    columns = {"t": {"from": "field.t", "type": "double"}, "s": {"from": "field.s"}}
    sink = await sink_for(table=table, columns=columns)
    s = "abc   " if noted else "abc"
    batch = [FlowFile.create("s", json.dumps({"t": t, "s": s}).encode()) for t in (20, 150, 30)]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[1].id]
    assert "out of range" in rejected[0].reason
    assert len(ids(mariadb, table)) == 2


@pytest.mark.parametrize("kept", [None, 64])
async def test_a_trigger_signalling_after_70_notes_refuses_its_row_alone(
    mariadb: Any, table: str, sink_for: Any, kept: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SHOW WARNINGS keeps max_error_count conditions, 64 by default, the error among them:
    # after 70 notes (values cut of their trailing spaces) the SIGNAL's 1644 was not
    # there, its SQLSTATE unknown, and the batch held for ever. The sink sets 65535; a
    # server keeping fewer (here 64) has the batch halved until the error is found.
    if kept is not None:
        monkeypatch.setattr(mysql, "_MAX_ERROR_COUNT", kept)
    mariadb.execute(f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, t DOUBLE, s VARCHAR(3))")
    signal_over_100(mariadb, table, "45000", "out of range")
    columns = {"t": {"from": "field.t", "type": "double"}, "s": {"from": "field.s"}}
    sink = await sink_for(table=table, columns=columns)
    rows = [(20, "abc   ")] * 70 + [(150, "abc"), (30, "abc")]
    batch = [FlowFile.create("s", json.dumps({"t": t, "s": s}).encode()) for t, s in rows]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[70].id]
    assert "out of range" in rejected[0].reason
    assert len(ids(mariadb, table)) == 71


async def test_a_trigger_that_signals_another_sqlstate_has_the_batch_retried(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # 1644 is the number of any SIGNAL without MYSQL_ERRNO: a trigger's SQLSTATE '40001'
    # ("retry later") was dead-lettered as if the row were at fault.
    mariadb.execute(f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, t DOUBLE)")
    signal_over_100(mariadb, table, "40001", "not now")
    sink = await sink_for(table=table, columns={"t": {"from": "field.t", "type": "double"}})
    batch = [FlowFile.create("s", json.dumps({"t": t}).encode()) for t in (20, 150, 30)]
    with pytest.raises(RetryableError, match=r"not now \(error 1644\)"):
        await sink.write(batch)
    mariadb.execute(f"DROP TRIGGER `{table}_t`")
    assert await sink.write(batch) == []
    assert sorted(ids(mariadb, table)) == sorted(ff.id for ff in batch)


async def test_a_check_constraint_added_by_the_user_refuses_rows(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    mariadb.execute(
        f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, temperature DOUBLE"
        " CHECK (temperature < 100))"
    )
    sink = await sink_for(
        table=table,
        create_table=False,
        columns={"temperature": {"from": "field.t", "type": "double"}},
    )
    batch = [FlowFile.create("s", json.dumps({"t": t}).encode()) for t in (20, 150, 30)]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[1].id]
    assert "CONSTRAINT" in rejected[0].reason
    assert len(ids(mariadb, table)) == 2


async def test_a_row_colliding_on_another_unique_key_is_refused_not_left_out(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # ON DUPLICATE KEY fires for any unique key: the row was reported delivered, and lost.
    mariadb.execute(
        f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, device VARCHAR(8), seq INT,"
        " UNIQUE (device, seq))"
    )
    sink = await sink_for(table=table, columns={"device": "topic.0", "seq": "field.seq"})
    batch = [FlowFile.create("d1", f'{{"seq": {n}}}'.encode()) for n in (1, 1, 2)]
    for _ in range(2):  # and again, as after a crash: the same row refused, no other
        rejected = await sink.write(batch)
        assert [(r.flowfile.id, r.reason) for r in rejected] == [
            (
                batch[1].id,
                "mysql refused the row: another row of the table has the same values in a"
                " unique key other than id",
            )
        ]
    assert sorted(ids(mariadb, table)) == [batch[0].id, batch[2].id]


async def test_a_nullable_id_keeps_its_value_when_a_row_collides_on_another_unique_key(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # A unique index on a nullable id would take the NULL meant to make strict mode refuse
    # the row: the row already there would lose its id. There, the first row stays.
    mariadb.execute(
        f"CREATE TABLE `{table}` (id CHAR(36) NULL UNIQUE, device VARCHAR(8), seq INT,"
        " UNIQUE (device, seq))"
    )
    sink = await sink_for(table=table, columns={"device": "topic.0", "seq": "field.seq"})
    batch = [FlowFile.create("d1", f'{{"seq": {n}}}'.encode()) for n in (1, 1, 2)]
    assert await sink.write(batch) == []
    assert sorted(ids(mariadb, table)) == sorted([batch[0].id, batch[2].id])


async def test_a_lone_surrogate_in_an_attribute_rejects_only_that_row(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    batch = [FlowFile.create("s", b"{}", {"k": "v"}) for _ in range(5)]
    batch[2] = FlowFile.create("s", b"{}", {"k": "bad \udc80"})
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[2].id]
    # aiomysql sends it with surrogateescape, and utf8mb4 refuses the stray byte.
    assert "Incorrect string value" in rejected[0].reason or "Unicode" in rejected[0].reason
    assert len(ids(mariadb, table)) == 4


async def test_duplicate_ids_within_a_batch_are_stored_once(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    ff = FlowFile.create("s", b"{}")
    assert await sink.write([ff, ff, ff]) == []
    assert ids(mariadb, table) == [ff.id]


async def test_binary_ids_and_redelivery(mariadb: Any, table: str, sink_for: Any) -> None:
    sink = await sink_for(table=table, id_type="binary")
    batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(100)]
    assert await sink.write(batch) == []
    assert await sink.write(batch[50:] + batch[:10]) == []
    rows = mariadb.fetch(f"SELECT HEX(id) FROM `{table}`")
    assert sorted(str(uuid.UUID(r[0])) for r in rows) == sorted(ff.id for ff in batch)
    assert mariadb.fetch(
        "SELECT column_type FROM information_schema.columns WHERE table_schema = 'edge'"
        " AND table_name = %s AND column_name = 'id'",
        table,
    ) == [("binary(16)",)]


@pytest.mark.parametrize(
    ("made", "then", "message"),
    [
        (
            "char",
            "binary",
            "its id column is CHAR, text, and id_type: binary writes 16 bytes: set id_type:"
            " char, or point `table` at a new one",
        ),
        (
            "binary",
            "char",
            "its id column is BINARY(16), too short for the 36 characters id_type: char"
            " writes: set id_type: binary, or point `table` at a new one",
        ),
    ],
)
async def test_an_id_type_other_than_the_tables_stops_the_sink(
    mariadb: Any, table: str, sink_for: Any, made: str, then: str, message: str
) -> None:
    # id_type changed on a table made with the other one: binary ids went into CHAR(36) as
    # 16 bytes of text (delivered, unreadable); text ids into BINARY(16) were each refused
    # as too long, every FlowFile to the dead letters.
    first = await sink_for(table=table, id_type=made)
    assert await first.write([FlowFile.create("s", b"{}")]) == []
    sink = make_sink(mariadb.dsn, table=table, id_type=then)
    try:
        with pytest.raises(PermanentError) as raised:
            await sink.connect()
    finally:
        await sink.close()
    assert str(raised.value).endswith(message)
    assert len(mariadb.fetch(f"SELECT id FROM `{table}`")) == 1


@pytest.mark.parametrize(
    ("id_column", "id_type"),
    [
        ("VARBINARY(64)", "char"),
        ("BINARY(36)", "char"),
        ("BLOB", "char"),
        ("VARCHAR(40)", "char"),
        ("VARBINARY(64)", "binary"),
        ("BLOB", "binary"),
    ],
)
async def test_an_id_column_that_holds_the_id_takes_it_whatever_its_kind(
    mariadb: Any, table: str, sink_for: Any, id_column: str, id_type: str
) -> None:
    # A bytes id column long enough for the 36-character id (VARBINARY(64), BINARY(36),
    # BLOB) stores and dedupes it: it was refused as "bytes" and the sink stopped.
    key = "id(36)" if id_column == "BLOB" else "id"
    mariadb.execute(
        f"CREATE TABLE `{table}` (id {id_column} NOT NULL, topic TEXT, UNIQUE KEY ({key}))"
    )
    sink = await sink_for(table=table, id_type=id_type, columns={"topic": "topic"})
    flowfile = FlowFile.create("s", b"{}")
    assert await sink.write([flowfile]) == []
    assert await sink.write([flowfile]) == []
    stored = mariadb.fetch(f"SELECT id FROM `{table}`")
    assert len(stored) == 1
    expected = uuid.UUID(flowfile.id).bytes if id_type == "binary" else flowfile.id.encode()
    value = stored[0][0]
    assert (value if isinstance(value, bytes) else value.encode()) == expected


@pytest.mark.parametrize(
    ("id_column", "id_type", "message"),
    [
        (
            "VARBINARY(35)",
            "char",
            "its id column is VARBINARY(35), too short for the 36 characters id_type: char"
            " writes: set id_type: binary, or point `table` at a new one",
        ),
        (
            "VARCHAR(32)",
            "char",
            "its id column is VARCHAR(32), too short for the 36 characters id_type: char"
            " writes: point `table` at a new one",
        ),
        (
            "BINARY(8)",
            "binary",
            "its id column is BINARY(8), too short for the 16 bytes id_type: binary"
            " writes: point `table` at a new one",
        ),
    ],
)
async def test_an_id_column_too_short_for_the_id_stops_the_sink(
    mariadb: Any, table: str, id_column: str, id_type: str, message: str
) -> None:
    mariadb.execute(f"CREATE TABLE `{table}` (id {id_column} NOT NULL PRIMARY KEY, topic TEXT)")
    sink = make_sink(mariadb.dsn, table=table, id_type=id_type, columns={"topic": "topic"})
    try:
        with pytest.raises(PermanentError) as raised:
            await sink.connect()
    finally:
        await sink.close()
    assert str(raised.value).endswith(message)


async def test_values_are_bound_as_parameters_never_written_into_the_sql(
    mariadb: Any, table: str, sink_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = await sink_for(table=table)
    statements: list[tuple[str, Any]] = []
    run = sink._run_insert

    async def spy(sql: str, args: Any) -> None:
        statements.append((sql, args))
        await run(sql, args)

    monkeypatch.setattr(sink, "_run_insert", spy)
    hostile = "x'); DROP TABLE `" + table + "`; -- \\' \" 100% %s %(a)s"
    batch = [
        FlowFile.create("s/" + hostile, b"\x00'\\%s\xff", {"q": hostile}),
        FlowFile.create("s/ok", json.dumps({"q": hostile}).encode()),
    ]
    assert await sink.write(batch) == []
    rows = {
        r[0]: r[1:]
        for r in mariadb.fetch(f"SELECT id, topic, attributes, payload, raw FROM `{table}`")
    }
    assert rows[batch[0].id] == (
        batch[0].topic,
        json.dumps({"q": hostile}, separators=(",", ":")),
        None,
        batch[0].content,
    )
    assert json.loads(rows[batch[1].id][2]) == {"q": hostile}
    [(sql, args)] = statements
    assert sql.count("%s") == len(args) == 12
    assert "DROP" not in sql and "'" not in sql and batch[0].id not in sql
    assert batch[0].content in args and batch[0].id in args


async def test_a_driver_that_cannot_bind_bytes_is_refused_at_connect(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiomysql 0.3.2 with PyMySQL 1.2 (aio-libs/aiomysql#1080): bytes would fail every write.
    import aiomysql.connection

    monkeypatch.setattr(aiomysql.connection, "escape_bytes_prefixed", "DO NOT IMPORT THIS!!!")
    sink = make_sink("mysql://edge:pw@127.0.0.1:1/edge", table=table)
    with pytest.raises(PermanentError, match=r"install PyMySQL>=1\.1\.1,<1\.2"):
        await sink.connect()
    await sink.close()


@pytest.mark.parametrize("id_type", ["char", "binary"])
async def test_a_second_column_may_hold_the_id(
    mariadb: Any, table: str, sink_for: Any, id_type: str
) -> None:
    columns = {"flowfile": "id", "at": {"from": "ts", "type": "datetime"}}
    sink = await sink_for(table=table, id_type=id_type, columns=columns)
    batch = [FlowFile.create("s", b"{}") for _ in range(3)]
    assert await sink.write(batch) == []
    rows = mariadb.fetch(f"SELECT HEX(id), HEX(flowfile) FROM `{table}`")
    assert all(a == b for a, b in rows) and len(rows) == 3
    types = mariadb.fetch(
        "SELECT column_type FROM information_schema.columns WHERE table_schema = 'edge'"
        " AND table_name = %s ORDER BY ordinal_position",
        table,
    )
    expected = "char(36)" if id_type == "char" else "binary(16)"
    assert types == [(expected,), (expected,), ("datetime(6)",)]


async def test_a_table_without_a_unique_id_is_refused(mariadb: Any, table: str) -> None:
    mariadb.execute(f"CREATE TABLE `{table}` (id CHAR(36), note TEXT)")
    sink = make_sink(mariadb.dsn, table=table, create_table=False, columns={"note": "topic"})
    with pytest.raises(PermanentError, match="no primary key or unique index on id"):
        await sink.connect()
    await sink.close()


async def test_missing_table_without_create_table_is_a_permanent_error(
    mariadb: Any, table: str
) -> None:
    sink = make_sink(mariadb.dsn, table=table, create_table=False)
    with pytest.raises(PermanentError, match=f"table {table}.*doesn't exist.*create_table"):
        await sink.connect()
    assert mariadb.fetch("SHOW TABLES LIKE %s", table) == []
    await sink.close()


async def test_privileges_on_an_existing_table_are_checked_at_connect(
    mariadb: Any, table: str
) -> None:
    mariadb.execute(f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, device TEXT)")
    mariadb.execute(f"CREATE USER '{table}'@'%' IDENTIFIED BY 'pw'")
    dsn = f"mysql://{table}:pw@{mariadb.host}:{mariadb.port}/edge"
    try:
        # SELECT on some columns only (error 1143): no table to fix, a privilege to grant
        mariadb.execute(f"GRANT INSERT, SELECT (id) ON edge.`{table}` TO '{table}'@'%'")
        sink = make_sink(dsn, table=table, columns={"device": "topic.0"})
        with pytest.raises(PermanentError, match=r"SELECT command denied.*grant the user"):
            await sink.connect()
        # without UPDATE (for ON DUPLICATE KEY), every write would be refused
        mariadb.execute(f"GRANT SELECT ON edge.`{table}` TO '{table}'@'%'")
        with pytest.raises(PermanentError, match=r"UPDATE command denied.*grant the user"):
            await sink.connect()
        # no CREATE privilege is needed for a table that is there
        mariadb.execute(f"GRANT UPDATE ON edge.`{table}` TO '{table}'@'%'")
        await sink.connect()
        ff = FlowFile.create("d1/x", b"{}")
        assert await sink.write([ff]) == []
        await sink.close()
    finally:
        mariadb.execute(f"DROP USER '{table}'@'%'")
    assert mariadb.fetch(f"SELECT id, device FROM `{table}`") == [(ff.id, "d1")]


async def test_a_missing_column_is_a_permanent_error(mariadb: Any, table: str) -> None:
    mariadb.execute(f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, device TEXT)")
    sink = make_sink(mariadb.dsn, table=table, columns={"device": "topic.0", "temp": "field.t"})
    with pytest.raises(PermanentError, match="Unknown column 'temp'"):
        await sink.connect()
    await sink.close()


async def test_a_not_null_column_the_sink_does_not_write_is_a_permanent_error(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    # Before: every batch was retried forever ("Field 'site' doesn't have a default value").
    mariadb.execute(
        f"CREATE TABLE `{table}` (id CHAR(36) PRIMARY KEY, device TEXT, site TEXT NOT NULL,"
        " zone VARCHAR(8) NOT NULL DEFAULT 'a', n INT NOT NULL AUTO_INCREMENT UNIQUE,"
        " g INT AS (1) VIRTUAL)"
    )
    sink = make_sink(mariadb.dsn, table=table, columns={"device": "topic.0"})
    with pytest.raises(PermanentError, match=r"without a default .*\(site\)"):
        await sink.connect()
    await sink.close()
    await sink_for(table=table, columns={"device": "topic.0", "SITE": "topic.1"})


# --- connections and outages --------------------------------------------------------------


async def test_a_killed_server_is_a_retryable_error_and_the_batch_arrives_once(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(200)]
    assert await sink.write(batch[:100]) == []
    mariadb.kill()
    try:
        with pytest.raises(RetryableError, match=r"127\.0\.0\.1"):
            await sink.write(batch)
    finally:
        mariadb.start()
    assert await write_until_delivered(sink, batch) == []
    assert sorted(ids(mariadb, table)) == sorted(ff.id for ff in batch)


async def test_a_dropped_table_is_created_again_on_the_next_write(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    assert await sink.write([FlowFile.create("s", b"{}")]) == []
    mariadb.execute(f"DROP TABLE `{table}`")
    batch = [FlowFile.create("s", b"{}")]
    with pytest.raises(RetryableError, match="doesn't exist"):
        await sink.write(batch)
    assert await sink.write(batch) == []
    assert ids(mariadb, table) == [batch[0].id]


async def test_a_statement_that_takes_too_long_is_retryable(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table, timeout="1s")
    lock = make_sink(mariadb.dsn, table=table)
    await lock.connect()
    try:
        # Another session holds a write lock on the table: the insert waits, then times out.
        await lock._run(f"LOCK TABLES `{table}` WRITE")
        with pytest.raises(RetryableError, match="timed out"):
            await sink.write([FlowFile.create("s", b"{}")])
    finally:
        await lock.close()
    ff = FlowFile.create("s", b"{}")
    assert await write_until_delivered(sink, [ff]) == []
    assert ff.id in ids(mariadb, table)


async def test_no_server_at_connect_is_retryable() -> None:
    sink = make_sink(f"mysql://gw:s3cret-pw@127.0.0.1:{free_port()}/edge", timeout="5s")
    with pytest.raises(RetryableError) as caught:
        await sink.connect()
    assert "127.0.0.1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()


@pytest.mark.parametrize("content", [None, "not a certificate"])
async def test_a_ca_file_that_cannot_be_used_is_permanent_at_connect(
    tmp_path: Any, content: str | None
) -> None:
    # Before: the sink crashed with OpenSSL's traceback, again and again.
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content)
    sink = make_sink(
        f"mysql://gw:s3cret-pw@127.0.0.1:{free_port()}/edge", ca_file=str(ca_file), timeout="5s"
    )
    with pytest.raises(PermanentError) as caught:
        await sink.connect()
    assert str(ca_file) in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()


async def test_a_ca_file_with_a_server_without_tls_is_permanent_at_connect(
    mariadb: Any, tmp_path: Any
) -> None:
    # Before: aiomysql went on in plain text without a word, the ca_file ignored (the test
    # server runs without TLS); the postgres sink stops on sslmode=require there.
    sink = make_sink(mariadb.dsn, ca_file=str(make_pki(tmp_path).ca_file), timeout="5s")
    try:
        with pytest.raises(PermanentError) as caught:
            await sink.connect()
    finally:
        await sink.close()  # a connection made in plain text is closed at once
    assert f"127.0.0.1:{mariadb.port}/edge does not offer TLS, which ca_file requires" in str(
        caught.value
    )
    assert "edge-test" not in str(caught.value)


async def test_a_wrong_password_is_permanent_at_connect_and_never_shown(
    mariadb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = mariadb.dsn.replace(":edge-test@", ":s3cret-pw@")
    sink = make_sink(dsn)
    with pytest.raises(PermanentError, match="Access denied") as caught:
        await sink.connect()
    # Later, from write(): the operator may fix the grant, so it is retried.
    with pytest.raises(RetryableError, match="Access denied"):
        await sink.write([FlowFile.create("s", b"{}")])
    await sink.close()
    for text in (str(caught.value), caplog.text, repr(sink.config), repr(sink.dsn)):
        assert "s3cret-pw" not in text


async def test_password_is_never_logged_or_shown(
    mariadb: Any, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = make_sink(mariadb.dsn, table=table)
    await sink.connect()
    await sink.write([FlowFile.create("s", b"{}")])
    await sink.close()
    assert f"127.0.0.1:{mariadb.port}/edge" in caplog.text
    for text in (caplog.text, repr(sink.config), str(sink.status())):
        assert mariadb.password not in text


async def test_close_without_connect_and_twice() -> None:
    sink = make_sink("mysql://edge:pw@127.0.0.1:1/edge")
    await sink.close()
    await sink.close()


async def test_many_batches_keep_up(mariadb: Any, table: str, sink_for: Any) -> None:
    """A smoke test of the batch path at size: 20 batches of 1000 rows, all stored."""
    sink = await sink_for(table=table)
    batches = [
        [FlowFile.create(f"s/{i % 7}", json.dumps({"i": i}).encode()) for i in range(1000)]
        for _ in range(20)
    ]
    for batch in batches:
        assert await sink.write(batch) == []
    assert mariadb.fetch(f"SELECT COUNT(*) FROM `{table}`") == [(20000,)]


# --- config -------------------------------------------------------------------------------


def test_dsn_parsing() -> None:
    dsn = parse_dsn("mysql://gw:p%40ss:w/rd@db.lan:3307/telemetry")
    assert dsn == ("db.lan", 3307, "gw", "p@ss:w/rd", "telemetry")
    assert parse_dsn("mysql://gw:a@b@db/t") == ("db", 3306, "gw", "a@b", "t")
    assert parse_dsn("mariadb://gw@[::1]:3310/t") == ("::1", 3310, "gw", "", "t")
    assert "a@b" not in repr(parse_dsn("mysql://gw:a@b@db/t"))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"dsn": "postgresql://gw:pw@db/t"}, "dsn: must read mysql://"),
        ({"dsn": "mysql://gw:s3cret@db"}, "dsn: must name a user, a host and a database"),
        ({"dsn": "mysql://gw:s3cret@db/t?ssl=1"}, "dsn: takes no ?options"),
        ({"dsn": "mysql://gw:pw@db/t", "table": "read-ings"}, "table: 'read-ings' is not a valid"),
        ({"dsn": "mysql://gw:pw@db/t", "columns": {"x": "feld.a"}}, "is not a source"),
        ({"dsn": "mysql://gw:pw@db/t", "columns": {"x": "topic.one"}}, "needs a level number"),
        (
            {"dsn": "mysql://gw:pw@db/t", "columns": {"x": {"from": "field.a", "type": "blob"}}},
            "'blob' is not a supported type",
        ),
        (
            {"dsn": "mysql://gw:pw@db/t", "columns": {"x": {"from": "ts", "type": "date"}}},
            "ts is always DATETIME(6); leave `type` out",
        ),
        (
            {"dsn": "mysql://gw:pw@db/t", "columns": {"x": {"from": "id", "type": "uuid"}}},
            "id is always of a fixed type",
        ),
        ({"dsn": "mysql://gw:pw@db/t", "columns": {"At": "ts", "at": "ts"}}, "'at' is there twice"),
        ({"dsn": "mysql://gw:pw@db/t", "columns": {"id": "topic"}}, "'id' is always"),
        ({"dsn": "mysql://gw:pw@db/t", "columns": {"a-b": "topic"}}, "not a valid SQL identifier"),
        ({"dsn": "mysql://gw:pw@db/t", "id_type": "uuid"}, "'uuid' is not one of"),
        ({"dsn": "mysql://gw:pw@db/t", "colums": {}}, "did you mean 'columns'"),
    ],
)
def test_config_problems_are_reported(keys: dict[str, Any], message: str) -> None:
    _, problems = config_problems(**keys)
    assert any(message in p for p in problems), problems
    assert not any("s3cret" in p for p in problems)


def test_an_id_column_in_capitals_is_one_problem_not_a_second_column() -> None:
    # it was said twice: 'ID' is there twice, then 'id' is always the FlowFile id
    assert config_problems(dsn="mysql://gw:pw@db/t", columns={"ID": "topic"})[1] == [
        "sinks.db.columns.ID: 'id' is always the FlowFile id; name this column otherwise"
    ]


def test_create_statement_quotes_names_and_types() -> None:
    sink = make_sink(
        "mysql://gw:pw@db/t",
        table="climate",
        columns={"device": "topic.1", "temp": {"from": "field.t", "type": "Double  Precision"}},
    )
    assert sink.create_statement() == (
        "CREATE TABLE IF NOT EXISTS `climate` (`id` CHAR(36) CHARACTER SET ascii NOT NULL"
        " PRIMARY KEY, `device` TEXT NULL, `temp` DOUBLE NULL) ENGINE=InnoDB DEFAULT"
        " CHARSET=utf8mb4"
    )


async def test_write_then_close_concurrently_is_safe(
    mariadb: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    batch = [FlowFile.create("s", b"{}") for _ in range(50)]
    results = await asyncio.gather(sink.write(batch), sink.close(), return_exceptions=True)
    assert results[0] == []
    assert len(ids(mariadb, table)) == 50

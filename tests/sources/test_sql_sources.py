"""The `mysql` and `postgres` sources against real servers, run by a real engine and store:
incremental reads in pages, each row once across restarts, timestamp cursors with ties,
topics from column values, and the errors an operator sees."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomysql
import asyncpg
import orjson
import pytest

from gateway.config.schema import Problems, build_component
from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.registry import find
from gateway.sources.mysql import MysqlSource
from gateway.sources.postgres import PostgresSource
from tests.servers import free_port, make_pki
from tests.sinks.contract import unique_name
from tests.sources.engine_run import lines, stop, until

pytestmark = pytest.mark.integration


class Db:
    """One server, spoken to in its own dialect by the test."""

    def __init__(self, kind: str, server: Any) -> None:
        self.kind = kind
        self.server = server
        self.dsn = server.dsn

    def create(self, table: str, cursor: str = "id") -> None:
        if self.kind == "mysql":
            self.server.execute(
                f"CREATE TABLE `{table}` (id INT AUTO_INCREMENT PRIMARY KEY, device TEXT,"
                " value DECIMAL(10,2), at DATETIME(6) NOT NULL)"
            )
        else:
            self.server.execute(
                f'CREATE TABLE "{table}" (id SERIAL PRIMARY KEY, device TEXT,'
                " value NUMERIC(10,2), at TIMESTAMPTZ NOT NULL)"
            )

    def insert(self, table: str, rows: list[tuple[str, float, dt.datetime]]) -> None:
        for device, value, at in rows:
            if self.kind == "mysql":
                self.server.execute(
                    f"INSERT INTO `{table}` (device, value, at) VALUES (%s, %s, %s)",
                    device,
                    value,
                    at.replace(tzinfo=None),
                )
            else:
                self.server.execute(
                    f'INSERT INTO "{table}" (device, value, at) VALUES ($1, $2, $3)',
                    device,
                    value,
                    at,
                )


@pytest.fixture(params=["mysql", "postgres"])
def db(request: pytest.FixtureRequest) -> Db:
    server = request.getfixturevalue("mariadb" if request.param == "mysql" else "postgres")
    return Db(request.param, server)


T0 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


async def test_rows_are_read_in_pages_once_each_across_a_restart(
    db: Db, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    table = unique_name()
    db.create(table)
    db.insert(table, [(f"dev{i % 3}", i + 0.25, T0 + dt.timedelta(seconds=i)) for i in range(25)])
    source = {
        "type": db.kind,
        "dsn": db.dsn,
        "table": table,
        "cursor": "id",
        "page_size": 7,
        "interval": "100ms",
        "topic": "db/{table}/{device}",
    }
    engine = await run_engine(source)
    await until(lambda: len(lines(tmp_path)) >= 25)
    status = engine.snapshot().sources["rows"].to_json()
    assert status["rows"] == 25 and status["position"] == [25]
    assert "next_run" in status
    await stop(engine)
    db.insert(table, [("dev9", 99.5, T0 + dt.timedelta(hours=1)) for _ in range(10)])
    await run_engine(source)
    await until(lambda: len(lines(tmp_path)) >= 35)
    await asyncio.sleep(0.5)  # a repeat would show up by now
    got = lines(tmp_path)
    ids = [orjson.loads(json.dumps(x["payload"]))["id"] for x in got]
    assert ids == list(range(1, 36)), "every row, in order, once"
    first = got[0]
    assert first["topic"] == f"db/{table}/dev0"
    assert first["payload"]["value"] == "0.25", "DECIMAL is a string: exact"
    assert first["payload"]["at"].startswith("2024-05-01T12:00:00")
    assert first["attributes"] == {"table": table, "source": "rows"}


async def test_a_timestamp_cursor_with_ties_uses_its_key(
    db: Db, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    table = unique_name()
    db.create(table)
    # ten rows on one timestamp, then two on the next: pages of three split the ties
    db.insert(table, [("a", i, T0) for i in range(10)])
    db.insert(table, [("b", i, T0 + dt.timedelta(microseconds=1)) for i in range(2)])
    source = {
        "type": db.kind,
        "dsn": db.dsn,
        "table": table,
        "cursor": "at",
        "key": "id",
        "columns": ["id", "value"],
        "page_size": 3,
        "interval": "100ms",
    }
    engine = await run_engine(source)
    await until(lambda: len(lines(tmp_path)) >= 12)
    await stop(engine)
    db.insert(table, [("c", 1, T0 + dt.timedelta(microseconds=1))])  # a tie with the last
    await run_engine(source)
    await until(lambda: len(lines(tmp_path)) >= 13)
    await asyncio.sleep(0.5)
    got = [x["payload"] for x in lines(tmp_path)]
    assert [row["id"] for row in got] == list(range(1, 14))
    assert set(got[0]) == {"id", "value", "at"}, "the columns asked for, and the cursor"


async def test_ties_of_a_cursor_without_key_in_one_page_are_all_read(
    db: Db, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    """The check for a FLOAT read back as its own position compared each row with the
    row before it: every tie after the first of a page was left out."""
    table = unique_name()
    db.create(table)
    db.insert(table, [("a", i, T0) for i in range(3)])
    db.insert(table, [("b", 9, T0 + dt.timedelta(seconds=1))])
    source = {"type": db.kind, "dsn": db.dsn, "table": table, "cursor": "at",
              "columns": ["id"], "interval": "100ms"}  # fmt: skip
    engine = await run_engine(source)
    await until(lambda: len(lines(tmp_path)) >= 4)
    await stop(engine)
    assert [x["payload"]["id"] for x in lines(tmp_path)] == [1, 2, 3, 4]


async def test_ties_of_a_cursor_without_key_across_pages_are_all_read(db: Db) -> None:
    """A page that ended inside a run of rows sharing a cursor value left the position at
    that value, and `cursor > value` passed over the rest of the run for good."""
    table = unique_name()
    db.create(table)
    db.insert(table, [(d, int(v), T0) for d, v in ("a1", "b2", "c2", "d2", "e3", "f3", "g4")])
    config, _problems = build(db.kind, dsn=db.dsn, table=table, cursor="value", page_size=2)
    entry = find("source", db.kind)
    assert entry is not None
    source = entry.cls(config, Context("rows", "source"))
    asked: list[int] = []
    select = source._select

    async def counted(limit: int) -> Any:
        asked.append(limit)
        return await select(limit)

    source._select = counted
    await source.connect()
    pages = []
    try:
        while not pages or source.backlog:
            pages.append(
                [orjson.loads(m.flowfile.content)["device"] for m in await source.poll_messages()]
            )
    finally:
        await source.close()
    # a run that fills a page is read whole; a page ends before the run it reaches into
    assert pages == [["a"], ["b", "c", "d"], ["e", "f"], ["g"]]
    assert max(asked) == 5, "a run longer than a page: fetches grow, not to 10,001 rows"


async def test_a_run_of_mysql_float_ties_longer_than_a_page_is_read_past(mariadb: Any) -> None:
    """FLOAT 0.2 compares as 0.200000003 > 0.2: after a run of 0.2 longer than a page, every
    row fetched was one read already, none was kept, and the source asked again at once
    for ever (backlog set), never reading the row after the run."""
    table = unique_name()
    mariadb.execute(f"CREATE TABLE `{table}` (at FLOAT, n INT)")
    mariadb.execute(
        f"INSERT INTO `{table}` VALUES (0.1, 1), (0.2, 2), (0.2, 3), (0.2, 4), (0.3, 5)"
    )
    config, _problems = build("mysql", dsn=mariadb.dsn, table=table, cursor="at", page_size=2)
    source = MysqlSource(config, Context("rows", "source"))
    await source.connect()
    pages = []
    try:
        while (not pages or source.backlog) and len(pages) < 10:
            pages.append(
                [orjson.loads(m.flowfile.content)["n"] for m in await source.poll_messages()]
            )
    finally:
        await source.close()
    assert pages == [[1], [2, 3, 4], [5]]
    # with a key, the rows of the run read already came again at every poll, for ever
    config, _problems = build(
        "mysql", dsn=mariadb.dsn, table=table, cursor="at", key="n", page_size=2
    )
    source = MysqlSource(config, Context("rows", "source"))
    await source.connect()
    pages = []
    try:
        while (not pages or source.backlog) and len(pages) < 10:
            pages.append(
                [orjson.loads(m.flowfile.content)["n"] for m in await source.poll_messages()]
            )
    finally:
        await source.close()
    assert [n for page in pages for n in page] == [1, 2, 3, 4, 5] and len(pages) < 10


async def test_a_run_of_page_max_ties_after_float_rows_read_already_is_read(
    mariadb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows of a FLOAT position read again (0.2 compares as 0.200000003 > 0.2) were
    counted in PAGE_MAX, then stripped: a run of PAGE_MAX ties after them stopped the
    source ("more than PAGE_MAX rows share the value"), which a page can hold."""
    monkeypatch.setattr("gateway.sources._sql.PAGE_MAX", 4)
    table = unique_name()
    mariadb.execute(f"CREATE TABLE `{table}` (at FLOAT, n INT)")
    rows = [(0.2, 1), (0.2, 2), (0.2, 3), (0.5, 4), (0.5, 5), (0.5, 6), (0.5, 7), (0.75, 8)]
    mariadb.execute(f"INSERT INTO `{table}` VALUES " + ", ".join(map(str, rows)))
    config, _problems = build("mysql", dsn=mariadb.dsn, table=table, cursor="at", page_size=2)
    source = MysqlSource(config, Context("rows", "source"))
    await source.connect()
    pages = []
    try:
        while (not pages or source.backlog) and len(pages) < 10:
            pages.append(
                [orjson.loads(m.flowfile.content)["n"] for m in await source.poll_messages()]
            )
    finally:
        await source.close()
    assert pages == [[1, 2, 3], [4, 5, 6, 7], [8]]


async def test_start_at_the_end_skips_the_rows_already_there(
    db: Db, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    table = unique_name()
    db.create(table)
    db.insert(table, [("old", 1, T0)] * 5)
    source = {
        "type": db.kind,
        "dsn": db.dsn,
        "table": table,
        "cursor": "id",
        "start": "end",
        "interval": "100ms",
    }
    engine = await run_engine(source)
    await until(lambda: engine.snapshot().sources["rows"].to_json()["position"] == [5])
    db.insert(table, [("new", 2, T0)] * 2)
    await until(lambda: len(lines(tmp_path)) >= 2)
    await asyncio.sleep(0.3)
    assert [x["payload"]["device"] for x in lines(tmp_path)] == ["new", "new"]


def build(kind: str, **keys: Any) -> tuple[Any, list[str]]:
    problems = Problems()
    config = build_component("source", {"type": kind, **keys}, ("sources", "rows"), problems)
    return config, [f"{'.'.join(map(str, p))}: {m}" for p, m in problems.items]


@pytest.mark.parametrize("kind", ["mysql", "postgres"])
def test_names_and_templates_are_checked_when_the_config_loads(kind: str) -> None:
    dsn = "mysql://u:p@h/db" if kind == "mysql" else "postgresql://u:p@h/db"
    _config, problems = build(
        kind, dsn=dsn, table="ord-ers", cursor="id; DROP TABLE x", topic="db/{id.__class__}"
    )
    assert any(p.startswith("sources.rows.table: 'ord-ers' is not a valid SQL") for p in problems)
    assert any(p.startswith("sources.rows.cursor: ") for p in problems)
    assert any("sources.rows.topic: topic template field" in p for p in problems)
    _config, problems = build(
        kind, dsn=dsn, table="t", cursor="id", columns=["id"], topic="x/{device}"
    )
    assert problems == ["sources.rows.topic: {device} is not one of the columns read"]
    _config, problems = build(kind, dsn=dsn, table="t", cursor="id", schedule="every minute")
    assert problems and "schedule" in problems[0] and "cron" in problems[0]


async def test_a_missing_table_stops_the_source_and_a_down_server_is_retried(db: Db) -> None:
    entry = find("source", db.kind)
    assert entry is not None
    config, problems = build(db.kind, dsn=db.dsn, table="no_such_table", cursor="id")
    assert problems == []
    source = entry.cls(config, Context("rows", "source"))
    await source.connect()
    with pytest.raises(PermanentError, match="no_such_table"):
        await source.poll_messages()
    await source.close()
    port = free_port()
    down = db.dsn.replace(f":{db.server.port}/", f":{port}/")
    config, _ = build(db.kind, dsn=down, table="t", cursor="id", timeout="2s")
    source = entry.cls(config, Context("rows", "source"))
    with pytest.raises(RetryableError) as err:
        await source.connect()
    assert str(port) in str(err.value) and "edge-test" not in str(err.value)
    await source.close()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("sslmode=require", "does not offer TLS, which the dsn's sslmode=require requires"),
        (
            "options=-c statement_timeout=abc",
            "refused a setting of the dsn's ?options: invalid value for parameter",
        ),
        ("sslcert={missing}&sslkey={missing}", "sslcert {missing} (in the dsn) cannot be read"),
        ("sslmode=verify-ca&sslrootcert={text}", "cannot use the TLS files of the dsn"),
    ],
)
async def test_a_dsn_the_postgres_server_can_never_accept_stops_the_source(
    postgres: Any, tmp_path: Path, options: str, expected: str
) -> None:
    # Before: each was retried forever with a warning, as if the server were down (the
    # postgres sink stops on them); the test server runs without TLS.
    files = {"missing": str(tmp_path / "missing.pem"), "text": str(tmp_path / "ca.pem")}
    (tmp_path / "ca.pem").write_text("not a certificate")
    dsn = postgres.dsn.replace("postgres@", "postgres:s3cret-pw@") + "?" + options.format(**files)
    config, problems = build("postgres", dsn=dsn, table="t", cursor="id", timeout="5s")
    assert problems == []
    source = PostgresSource(config, Context("rows", "source"))
    with pytest.raises(PermanentError) as caught:
        await source.connect()
    assert expected.format(**files) in str(caught.value)
    assert "\n" not in str(caught.value) and "s3cret-pw" not in str(caught.value)
    await source.close()


@pytest.mark.parametrize("ca", ["test CA", "missing", "not a certificate"])
async def test_a_ca_file_the_mysql_source_cannot_use_stops_it(
    mariadb: Any, tmp_path: Path, ca: str
) -> None:
    # Before: the test CA against the test server (no TLS) read in plain text without a
    # word, the ca_file ignored; a missing file or one that is no certificate crashed the
    # source with OpenSSL's traceback at every restart. The mysql sink stops on each.
    ca_file = tmp_path / "ca.pem"
    if ca == "test CA":
        ca_file = Path(make_pki(tmp_path).ca_file)
        expected = "does not offer TLS, which ca_file requires"
    elif ca == "missing":
        expected = f"ca_file {ca_file} cannot be read"
    else:
        ca_file.write_text(ca)
        expected = f"cannot use ca_file {ca_file}"
    config, problems = build(
        "mysql", dsn=mariadb.dsn, table="t", cursor="id", ca_file=str(ca_file), timeout="5s"
    )
    assert problems == []
    source = MysqlSource(config, Context("rows", "source"))
    try:
        with pytest.raises(PermanentError) as caught:
            await source.connect()
    finally:
        await source.close()  # a connection made in plain text is closed at once
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value) and "edge-test" not in str(caught.value)


async def test_start_at_the_end_keeps_its_place_across_a_restart_before_any_new_row(
    db: Db, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    table = unique_name()
    db.create(table)
    db.insert(table, [("old", 1, T0)] * 3)
    source = {
        "type": db.kind,
        "dsn": db.dsn,
        "table": table,
        "cursor": "id",
        "start": "end",
        "interval": "100ms",
    }
    engine = await run_engine(source)
    await until(lambda: engine.snapshot().sources["rows"].to_json()["position"] == [3])
    await stop(engine)
    db.insert(table, [("while-down", 2, T0)] * 2)  # added after it started: to be read
    engine = await run_engine(source)
    await until(lambda: len(lines(tmp_path)) >= 2)
    db.insert(table, [("new", 3, T0)])
    await until(lambda: len(lines(tmp_path)) >= 3)
    assert [x["payload"]["id"] for x in lines(tmp_path)] == [4, 5, 6]


async def test_start_at_the_end_of_an_empty_table_reads_what_came_while_it_was_stopped(
    db: Db, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    """Nothing was kept for an empty table: the next start took the end again and skipped
    the rows inserted while the gateway was down."""
    table = unique_name()
    db.create(table)
    source = {
        "type": db.kind,
        "dsn": db.dsn,
        "table": table,
        "cursor": "id",
        "start": "end",
        "interval": "100ms",
    }
    engine = await run_engine(source)
    runs: set[str] = set()

    def polled_twice() -> bool:  # the next run moved on twice: the first poll is done
        runs.add(str(engine.snapshot().sources["rows"].to_json().get("next_run")))
        return len(runs - {"None"}) >= 3

    await until(polled_twice)
    await stop(engine)
    db.insert(table, [("while-down", 1, T0)])
    await run_engine(source)
    db.insert(table, [("new", 2, T0)])
    await until(lambda: len(lines(tmp_path)) >= 2)
    assert [x["payload"]["device"] for x in lines(tmp_path)] == ["while-down", "new"]


async def test_rows_with_no_cursor_value_are_passed_over_without_stalling(
    db: Db, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    table = unique_name()
    q = "`" if db.kind == "mysql" else '"'
    db.server.execute(f"CREATE TABLE {q}{table}{q} (name VARCHAR(20), seq INT)")

    def insert(name: str, seq: int | None) -> None:
        value = "NULL" if seq is None else str(seq)
        db.server.execute(f"INSERT INTO {q}{table}{q} (name, seq) VALUES ('{name}', {value})")

    insert("no-seq", None)
    insert("one", 1)
    source = {"type": db.kind, "dsn": db.dsn, "table": table, "cursor": "seq"}
    source["interval"] = "100ms"
    engine = await run_engine(source)
    await until(lambda: engine.snapshot().sources["rows"].to_json()["position"] == [1])
    insert("two", 2)
    await until(lambda: len(lines(tmp_path)) >= 2)
    assert [x["payload"]["name"] for x in lines(tmp_path)] == ["one", "two"]


async def test_a_topic_level_from_null_or_bytes_reads_as_in_the_json(
    db: Db, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    """They read `None` and `b'ab'`: Python's text, not the row's."""
    table = unique_name()
    q, blob = ("`", "VARBINARY(8)") if db.kind == "mysql" else ('"', "BYTEA")
    db.server.execute(f"CREATE TABLE {q}{table}{q} (id INT PRIMARY KEY, tag {blob}, name TEXT)")
    ab = "'ab'" if db.kind == "mysql" else "'ab'::bytea"
    db.server.execute(f"INSERT INTO {q}{table}{q} VALUES (1, NULL, NULL), (2, {ab}, 'x')")
    source = {"type": db.kind, "dsn": db.dsn, "table": table, "cursor": "id"}
    source["topic"] = "t/{tag}/{name}"
    await run_engine(source)
    await until(lambda: len(lines(tmp_path)) >= 2)
    assert [x["topic"] for x in lines(tmp_path)] == ["t/null/null", "t/ab/x"]


async def test_a_query_that_takes_longer_than_timeout_says_so(db: Db) -> None:
    """It read 'failed: timed out' (PostgreSQL), 'failed: TimeoutError' (MySQL)."""
    table = unique_name()
    db.create(table)
    entry = find("source", db.kind)
    assert entry is not None
    config, problems = build(db.kind, dsn=db.dsn, table=table, cursor="id", timeout="300ms")
    assert problems == []
    source = entry.cls(config, Context("rows", "source"))
    await source.connect()
    if db.kind == "mysql":  # another session holds the table: the SELECT waits
        url = urlsplit(db.dsn)
        holder: Any = await aiomysql.connect(
            host=url.hostname,
            port=url.port,
            user=url.username,
            password=url.password or "",
            db=url.path.strip("/"),
        )
        async with holder.cursor() as cursor:
            await cursor.execute(f"LOCK TABLES `{table}` WRITE")
    else:
        holder = await asyncpg.connect(db.dsn)
        await holder.execute(f'BEGIN; LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
    try:
        with pytest.raises(RetryableError) as caught:
            await source.poll_messages()
    finally:
        await source.close()
        result = holder.close()
        if result is not None:
            await result
    text = str(caught.value)
    assert text.startswith(f"reading table {table} on ")
    assert text.endswith(": no answer within timeout (0.3s)")


async def test_postgres_types_beyond_json_have_a_json_form(postgres: Any) -> None:
    """An inet, cidr, point, box, polygon, range, bit or timetz column stopped the source
    for good: 'a row holds a value with no JSON form' (with all columns, the default)."""
    table = unique_name()
    postgres.execute(
        f'CREATE TABLE "{table}" (id INT PRIMARY KEY, ip inet, net cidr, pt point, bx box,'
        " pg polygon, r int4range, e int4range, b bit(4), t timetz, at timestamptz)"
    )
    postgres.execute(
        f"""INSERT INTO "{table}" VALUES (1, '10.0.0.7/24', '10.0.0.0/8', '(1,2)',
        '((3,4),(1,2))', '((0,0),(1,0),(1,1))', '[1,5)', 'empty', B'1010', '12:30+02',
        '2024-05-01 12:00:00.5+00')"""
    )
    config, problems = build("postgres", dsn=postgres.dsn, table=table, cursor="id")
    assert problems == []
    source = PostgresSource(config, Context("rows", "source"))
    await source.connect()
    try:
        (message,) = await source.poll_messages()
    finally:
        await source.close()
    assert orjson.loads(message.flowfile.content) == {
        "id": 1,
        "ip": "10.0.0.7/24",
        "net": "10.0.0.0/8",
        "pt": [1.0, 2.0],
        "bx": [[3.0, 4.0], [1.0, 2.0]],
        "pg": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]],
        "r": {"lower": 1, "upper": 5, "lower_inc": True, "upper_inc": False},
        "e": {"empty": True},
        "b": "1010",
        "t": "12:30:00+02:00",
        "at": "2024-05-01T12:00:00.500000+00:00",
    }


async def test_a_postgres_composite_column_is_a_json_object(postgres: Any) -> None:
    """A column of a composite type (CREATE TYPE ... AS), or an array of them, stopped the
    source for good: 'a row holds a value with no JSON form (... Record)'. In a topic, it
    and an interval read as in the JSON (they read `<Record a=2 b=None>`, `0:01:30`)."""
    table, kind = unique_name(), unique_name()
    postgres.execute(f'CREATE TYPE "{kind}" AS (a int, b text, n numeric)')
    postgres.execute(
        f'CREATE TABLE "{table}" (id INT PRIMARY KEY, c "{kind}", cs "{kind}"[], s interval)'
    )
    postgres.execute(
        f"""INSERT INTO "{table}" VALUES (1, ROW(1, 'x', 1.5),
        ARRAY[ROW(2, NULL, NULL)::"{kind}"], '90 seconds')"""
    )
    config, problems = build(
        "postgres", dsn=postgres.dsn, table=table, cursor="id", topic="t/{s}/{cs}"
    )
    assert problems == []
    source = PostgresSource(config, Context("rows", "source"))
    await source.connect()
    try:
        (message,) = await source.poll_messages()
    finally:
        await source.close()
    assert orjson.loads(message.flowfile.content) == {
        "id": 1,
        "c": {"a": 1, "b": "x", "n": "1.5"},
        "cs": [{"a": 2, "b": None, "n": None}],
        "s": 90.0,
    }
    assert message.flowfile.topic == 't/90.0/[{"a":2,"b":null,"n":null}]'


async def test_postgres_ranges_and_composites_of_dates_and_times_are_read(
    postgres: Any,
) -> None:
    """The date and time types were read as text (for a date BC, infinity...), and the
    driver reads the parts of a range, multirange or composite only in binary: a
    `tstzrange`, a `daterange` or a composite with a date stopped the source, the error
    taken for a lost connection and retried for ever."""
    table, kind = unique_name(), unique_name()
    postgres.execute(f'CREATE TYPE "{kind}" AS (a int, at timestamptz, d date, t timetz)')
    postgres.execute(
        f'CREATE TABLE "{table}" (id INT PRIMARY KEY, c "{kind}", r tstzrange, dr daterange,'
        " m tsmultirange, ds date[])"
    )
    postgres.execute(
        f"""INSERT INTO "{table}" VALUES (1,
        ROW(1, '2024-05-01 12:00:00.25+02', '0044-03-15 BC', '24:00-03:30'),
        '[2024-05-01 12:00+00,infinity)', '[2024-05-01,2024-06-01)',
        '{{[10000-01-01 00:00, 10000-01-02 00:00:00.5)}}', ARRAY['-infinity'::date])"""
    )
    config, problems = build("postgres", dsn=postgres.dsn, table=table, cursor="id")
    assert problems == []
    source = PostgresSource(config, Context("rows", "source"))
    await source.connect()
    try:
        (message,) = await source.poll_messages()
    finally:
        await source.close()
    assert orjson.loads(message.flowfile.content) == {
        "id": 1,
        "c": {"a": 1, "at": "2024-05-01T10:00:00.250000+00:00", "d": "0044-03-15 BC",
              "t": "24:00:00-03:30"},
        "r": {"lower": "2024-05-01T12:00:00+00:00", "upper": "infinity",
              "lower_inc": True, "upper_inc": False},
        "dr": {"lower": "2024-05-01", "upper": "2024-06-01", "lower_inc": True,
               "upper_inc": False},
        "m": [{"lower": "10000-01-01 00:00:00", "upper": "10000-01-02 00:00:00.5",
               "lower_inc": True, "upper_inc": False}],
        "ds": ["-infinity"],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "texts"),
    [
        ("date", ["0044-03-15 BC", "4713-01-01 BC", "0401-02-29 BC", "10000-01-01",
                  "5874897-12-31", "-infinity"]),
        ("timestamp", ["0044-03-15 12:34:56.5 BC", "294276-12-31 23:59:59.999999",
                       "infinity"]),
        ("timestamptz", ["0044-03-15 12:34:56.5+00 BC", "10000-01-01 05:30:00+00"]),
        ("time", ["24:00:00"]),
        ("timetz", ["24:00:00-03:30", "24:00:00+05:45:30"]),
    ],
)  # fmt: skip
async def test_postgres_dates_python_cannot_hold_read_and_write_as_postgresql_does(
    postgres: Any, kind: str, texts: list[str]
) -> None:
    """Read in binary (tuple form), they are written as the server writes them, and
    written back (a cursor value) they are the same value."""
    config, problems = build("postgres", dsn=postgres.dsn, table="t", cursor="id")
    assert problems == []
    source = PostgresSource(config, Context("rows", "source"))
    await source.connect()
    try:
        for text in texts:
            _names, ((value, again),) = await source._fetch(
                f"SELECT $1::text::{kind}, ($1::text::{kind} = $2::{kind})", [text, text]
            )
            assert (value, again) == (text, True)
    finally:
        await source.close()


async def test_a_postgres_type_the_driver_cannot_read_stops_the_source(postgres: Any) -> None:
    """A composite with a `money` field (read as text by the driver, which reads the parts
    of a composite only in binary): an InterfaceError, taken for a lost connection, it was
    retried for ever."""
    table, kind = unique_name(), unique_name()
    postgres.execute(f'CREATE TYPE "{kind}" AS (a int, price money)')
    postgres.execute(f'CREATE TABLE "{table}" (id INT PRIMARY KEY, c "{kind}")')
    postgres.execute(f"""INSERT INTO "{table}" VALUES (1, ROW(1, 1.5))""")
    config, problems = build("postgres", dsn=postgres.dsn, table=table, cursor="id")
    assert problems == []
    source = PostgresSource(config, Context("rows", "source"))
    await source.connect()
    try:
        with pytest.raises(PermanentError) as caught:
            await source.poll_messages()
    finally:
        await source.close()
    text = str(caught.value)
    assert f'"public"."{kind}"' in text
    assert text.endswith("leave that column out with `columns`")
    assert "\n" not in text


async def test_postgres_dates_and_times_python_cannot_hold_come_as_text(postgres: Any) -> None:
    """A date BC or past 9999, or a time of 24:00, raised ValueError in the driver: the
    source crashed on that row at every poll, and no later row was ever read."""
    table = unique_name()
    postgres.execute(
        f'CREATE TABLE "{table}" (id INT PRIMARY KEY, d date, ts timestamp, tz timestamptz,'
        " t time, tt timetz, f float8, n numeric)"
    )
    postgres.execute(
        f"""INSERT INTO "{table}" VALUES
        (1, '0044-03-15 BC', '10000-01-01 00:00', 'infinity', '24:00', '24:00+02', 'NaN', 'NaN'),
        (2, '2024-05-01', '2024-05-01 12:00:00.25', '2024-05-01 14:00+02', '12:30', '12:30+02',
         '-Infinity', 'Infinity')"""
    )
    config, problems = build("postgres", dsn=postgres.dsn, table=table, cursor="id")
    assert problems == []
    source = PostgresSource(config, Context("rows", "source"))
    await source.connect()
    try:
        first, second = await source.poll_messages()
    finally:
        await source.close()
    assert orjson.loads(first.flowfile.content) == {
        "id": 1,
        "d": "0044-03-15 BC",
        "ts": "10000-01-01 00:00:00",
        "tz": "infinity",
        "t": "24:00:00",
        "tt": "24:00:00+02",
        "f": None,  # JSON has no NaN nor infinity; numeric's are strings
        "n": "NaN",
    }
    assert orjson.loads(second.flowfile.content) == {
        "id": 2,
        "d": "2024-05-01",
        "ts": "2024-05-01T12:00:00.250000",
        "tz": "2024-05-01T12:00:00+00:00",
        "t": "12:30:00",
        "tt": "12:30:00+02:00",
        "f": None,
        "n": "Infinity",
    }


UUID1 = "00000000-0000-4000-8000-000000000001"
UUID2 = "00000000-0000-4000-8000-000000000002"


@pytest.mark.parametrize(
    ("kind", "column", "values"),
    [
        ("postgres", "time", ["'10:00'", "'11:00'"]),
        ("postgres", "timetz", ["'10:00+02'", "'11:00+02'"]),
        ("postgres", "interval", ["'1 day'", "'2 days'"]),
        ("mysql", "TIME", ["'10:00'", "'11:00'"]),
        ("postgres", "date", ["'2024-05-01'", "'2024-05-02'"]),
        ("postgres", "timestamp", ["'2024-05-01 10:00:00.5'", "'2024-05-01 10:00:01'"]),
        ("postgres", "timestamptz", ["'2024-05-01 10:00:00.5+02'", "'2024-05-01 10:00+01'"]),
        ("postgres", "numeric", ["1.5", "2.25"]),
        ("postgres", "uuid", [f"'{UUID1}'", f"'{UUID2}'"]),
        ("mysql", "DATE", ["'2024-05-01'", "'2024-05-02'"]),
        ("mysql", "DATETIME(6)", ["'2024-05-01 10:00:00.5'", "'2024-05-01 10:00:01'"]),
        ("mysql", "DECIMAL(10,3)", ["1.5", "2.25"]),
        ("mysql", "UUID", [f"'{UUID1}'", f"'{UUID2}'"]),
    ],
)
async def test_a_cursor_of_each_type_keeps_its_place_across_a_restart(
    kind: str, column: str, values: list[str], request: pytest.FixtureRequest
) -> None:
    """A time cursor read after a restart as text: the query failed at every poll
    (PostgreSQL); a timetz, interval or MySQL TIME cursor could not be stored at all
    ("TypeError: Type is not JSON serializable: datetime.timedelta"). The other types
    are read back as they were stored too."""
    server = request.getfixturevalue("mariadb" if kind == "mysql" else "postgres")
    table = unique_name()
    q = "`" if kind == "mysql" else '"'
    server.execute(f"CREATE TABLE {q}{table}{q} (c {column}, n INT)")
    server.execute(f"INSERT INTO {q}{table}{q} VALUES ({values[0]}, 1)")
    config, problems = build(kind, dsn=server.dsn, table=table, cursor="c")
    assert problems == []
    entry = find("source", kind)
    assert entry is not None
    stored: list[bytes] = []

    async def position() -> bytes | None:
        return stored[-1] if stored else None

    got = []
    for _restart in range(2):
        source = entry.cls(config, Context("rows", "source", position=position))
        await source.connect()
        try:
            for message in await source.poll_messages():
                stored.append(message.position)
                got.append(orjson.loads(message.flowfile.content)["n"])
        finally:
            await source.close()
        server.execute(f"INSERT INTO {q}{table}{q} VALUES ({values[1]}, 2)")
    assert got == [1, 2]


@pytest.mark.parametrize(
    ("column", "values", "text", "after"),
    [
        ("time", "('10:00', 1), ('11:00', 2)", "10:00:00", [2]),
        ("date", "('2024-05-01', 1), ('2024-05-02', 2)", "2024-05-01", [2]),
        ("text", "('10:00:00', 1), ('11:00', 2)", "10:00:00", [2]),
        ("time", "('10:00', 1), ('11:00', 2)", "ten o'clock", [1, 2]),
        # asyncpg's UUID is a subclass of uuid.UUID: it was read as no type known
        ("uuid", f"('{UUID1}', 1), ('{UUID2}', 2)", UUID1, [2]),
    ],
)
async def test_a_position_stored_as_text_is_read_as_its_column_s_type(
    postgres: Any, column: str, values: str, text: str, after: list[int]
) -> None:
    """Versions before times were stored tagged stored a time cursor as text ("10:00:00"):
    after an upgrade it stayed text, which PostgreSQL refuses as a time, and every poll
    failed. Text that is no value of the column's type is dropped as an unreadable
    position is: the source starts at `start`."""
    table = unique_name()
    postgres.execute(f'CREATE TABLE "{table}" (c {column}, n INT)')
    postgres.execute(f'INSERT INTO "{table}" VALUES {values}')
    config, _problems = build("postgres", dsn=postgres.dsn, table=table, cursor="c")
    old = orjson.dumps({"v": 1, "table": table, "order": ["c"], "after": [text]})

    async def position() -> bytes | None:
        return old

    source = PostgresSource(config, Context("rows", "source", position=position))
    await source.connect()
    try:
        got = [orjson.loads(m.flowfile.content)["n"] for m in await source.poll_messages()]
    finally:
        await source.close()
    assert got == after


@pytest.mark.parametrize(
    ("column", "text", "values", "order"),
    [
        ("timestamp", "-infinity", ["2024-01-01", "2024-01-02"], "k"),
        ("timestamptz", "-infinity", ["2024-01-01 00:00+00", "2024-01-02 00:00+00"], "k"),
        ("date", "-infinity", ["2024-01-01", "2024-01-02"], "k"),
        ("date", "0044-03-15 BC", ["2024-01-01", "2024-01-02"], "k"),
        ("timestamp", "0044-03-15 12:34:56.5 BC", ["2024-01-01", "2024-01-02"], "k"),
        ("timestamptz", "0044-03-15 12:34:56.5+00 BC", ["2024-01-01Z", "2024-01-02Z"], "k"),
        # sorted last, they are never a position the newest row is not: as a key's
        ("timestamp", "infinity", ["2024-01-01", "2024-01-02"], "n,k"),
        ("date", "infinity", ["2024-01-01", "2024-01-02"], "n,k"),
        ("date", "10000-01-01", ["2024-01-01", "2024-01-02"], "n,k"),
        ("timestamp", "10000-01-01 00:00:00", ["2024-01-01", "2024-01-02"], "n,k"),
        ("timestamptz", "10000-01-01 05:30:00+00", ["2024-01-01Z", "2024-01-02Z"], "n,k"),
        ("time", "24:00:00", ["10:00", "11:00"], "n,k"),
        ("timetz", "24:00:00+02", ["10:00+02", "11:00+02"], "n,k"),
    ],
)
async def test_a_postgres_position_at_a_time_python_cannot_hold_survives_a_restart(
    postgres: Any,
    column: str,
    text: str,
    values: list[str],
    order: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Such a cursor value is stored as the text PostgreSQL writes for it; after a restart
    it was read as its column's type (the newest row's: a Python datetime), which failed,
    so the position was dropped: with start: beginning the first row came again at every
    restart (with start: end, the rows up to the end were lost)."""
    table = unique_name()
    postgres.execute(f'CREATE TABLE "{table}" (n INT, k {column})')
    postgres.execute(
        f'INSERT INTO "{table}" VALUES (1, $1::text::{column}), (2, $2::text::{column}),'
        f" (3, $3::text::{column})",
        text,
        *values,
    )
    cursor, *key = order.split(",")
    config, problems = build(
        "postgres", dsn=postgres.dsn, table=table, cursor=cursor, key=key[0] if key else None,
        page_size=1,
    )  # fmt: skip
    assert problems == []
    stored: list[bytes] = []

    async def position() -> bytes | None:
        return stored[-1] if stored else None

    got = []
    for _restart in range(3):
        source = PostgresSource(config, Context("rows", "source", position=position))
        await source.connect()
        try:
            for message in await source.poll_messages():
                stored.append(message.position)
                got.append(orjson.loads(message.flowfile.content)["n"])
        finally:
            await source.close()
    assert got == [1, 2, 3]
    assert "stored position" not in caplog.text
    assert orjson.loads(stored[0])["after"][0 if cursor == "k" else 1] == text


@pytest.mark.parametrize("start", ["beginning", "end"])
async def test_a_postgres_position_the_driver_cannot_send_starts_over_at_start(
    postgres: Any, start: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored time the column's encoder cannot parse (text kept as text, the newest row's
    time being text too: 24:00:00) made asyncpg raise DataError, an InterfaceError taken
    for a lost connection: retried for ever, the source never read again."""
    table = unique_name()
    postgres.execute(f'CREATE TABLE "{table}" (c time, n INT)')
    postgres.execute(f"""INSERT INTO "{table}" VALUES ('10:00', 1), ('24:00', 2)""")
    config, _problems = build(
        "postgres", dsn=postgres.dsn, table=table, cursor="c", key="n", start=start
    )
    old = orjson.dumps({"v": 1, "table": table, "order": ["c"], "after": ["ten o'clock"]})

    async def position() -> bytes | None:
        return old

    saved: list[bytes] = []

    async def save_position(position: bytes) -> None:
        saved.append(position)

    ctx = Context("rows", "source", position=position, save_position=save_position)
    source = PostgresSource(config, ctx)
    await source.connect()
    try:
        got = [orjson.loads(m.flowfile.content)["n"] for m in await source.poll_messages()]
        postgres.execute(f"""INSERT INTO "{table}" VALUES ('24:00', 3)""")
        got += [orjson.loads(m.flowfile.content)["n"] for m in await source.poll_messages()]
    finally:
        await source.close()
    assert got == ([1, 2, 3] if start == "beginning" else [3])
    (line,) = [r.getMessage() for r in caplog.records if "stored position" in r.getMessage()]
    assert line.startswith("source rows: the stored position cannot be read (")
    assert line.endswith(f"); starting at the {start}") and "\n" not in line


async def test_a_postgres_data_error_of_the_server_keeps_the_position(postgres: Any) -> None:
    """A DataError the server raises (a view that divides by zero) is no position the
    driver could not send: retried, the position kept (dropped, the rows since `start`
    came again)."""
    table, view = unique_name(), unique_name()
    postgres.execute(f'CREATE TABLE "{table}" (c INT, d INT)')
    postgres.execute(f'INSERT INTO "{table}" VALUES (1, 1), (2, 0)')
    postgres.execute(f'CREATE VIEW "{view}" AS SELECT c, 1 / d AS x FROM "{table}"')
    config, _problems = build("postgres", dsn=postgres.dsn, table=view, cursor="c")
    old = orjson.dumps({"v": 1, "table": view, "order": ["c"], "after": [1]})

    async def position() -> bytes | None:
        return old

    source = PostgresSource(config, Context("rows", "source", position=position))
    await source.connect()
    try:
        with pytest.raises(RetryableError, match="division by zero"):
            await source.poll_messages()
    finally:
        await source.close()
    assert source.status()["position"] == [1]


@pytest.mark.parametrize("kind", ["mysql", "postgres"])
async def test_a_position_by_the_cursor_only_is_kept_when_a_key_is_set(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Setting `key`, as the message on too many ties asks, changed the order the position
    is by: the stored one was thrown away, and the source read the table again from the
    start (or passed over the rows since, with start: end)."""
    server = request.getfixturevalue("mariadb" if kind == "mysql" else "postgres")
    table = unique_name()
    q = "`" if kind == "mysql" else '"'
    server.execute(f"CREATE TABLE {q}{table}{q} (c INT, k INT)")
    server.execute(f"INSERT INTO {q}{table}{q} VALUES (1, 1), (2, 2), (2, 3), (3, 4), (3, 5)")
    config, _problems = build(kind, dsn=server.dsn, table=table, cursor="c", key="k")
    old = orjson.dumps({"v": 1, "table": table, "order": ["c"], "after": [2]})

    async def position() -> bytes | None:
        return old

    entry = find("source", kind)
    assert entry is not None
    source = entry.cls(config, Context("rows", "source", position=position))
    await source.connect()
    try:
        got = [orjson.loads(m.flowfile.content)["k"] for m in await source.poll_messages()]
    finally:
        await source.close()
    assert got == [4, 5] and source.status()["position"] == [3, 5]


async def test_a_mysql_cursor_named_in_another_case_reads_its_column(mariadb: Any) -> None:
    """MySQL takes `ID` for the column `id`, and `SELECT *` names it `id`: the source looked
    for `ID` among the names and crashed at every poll (ValueError traceback)."""
    table = unique_name()
    mariadb.execute(f"CREATE TABLE `{table}` (id INT, k INT, n INT)")
    mariadb.execute(f"INSERT INTO `{table}` VALUES (1, 1, 1), (2, 1, 2)")
    config, _problems = build("mysql", dsn=mariadb.dsn, table=table, cursor="ID", key="K")
    source = MysqlSource(config, Context("rows", "source"))
    await source.connect()
    try:
        got = [orjson.loads(m.flowfile.content)["n"] for m in await source.poll_messages()]
    finally:
        await source.close()
    assert got == [1, 2] and source.status()["position"] == [2, 1]


async def test_a_mysql_bit_column_is_a_number(mariadb: Any) -> None:
    """BIT came as its bytes, written as text: a BIT(1) flag read "\\u0001" in the JSON and
    the topic, a BIT(10) b'1010' "\\u0000\\n"."""
    table = unique_name()
    mariadb.execute(f"CREATE TABLE `{table}` (id INT, flag BIT(1), b BIT(10), n BIT(64))")
    mariadb.execute(f"INSERT INTO `{table}` VALUES (1, b'1', b'1010', b'0'), (2, b'0', NULL, ~0)")
    config, _problems = build(
        "mysql", dsn=mariadb.dsn, table=table, cursor="id", topic="t/{flag}/{b}"
    )
    source = MysqlSource(config, Context("rows", "source"))
    await source.connect()
    try:
        messages = await source.poll_messages()
    finally:
        await source.close()
    assert [orjson.loads(m.flowfile.content) for m in messages] == [
        {"id": 1, "flag": 1, "b": 10, "n": 0},
        {"id": 2, "flag": 0, "b": None, "n": 2**64 - 1},
    ]
    assert [m.flowfile.topic for m in messages] == ["t/1/10", "t/0/null"]


async def test_a_mysql_float_cursor_does_not_read_its_last_row_again(
    mariadb: Any, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    """FLOAT 0.2 reads back as 0.2 and compares as 0.200000003 > 0.2: every poll stored
    the last row again."""
    table = unique_name()
    mariadb.execute(f"CREATE TABLE `{table}` (at FLOAT PRIMARY KEY, n INT)")
    mariadb.execute(f"INSERT INTO `{table}` VALUES (0.1, 1), (0.2, 2)")
    source = {"type": "mysql", "dsn": mariadb.dsn, "table": table, "cursor": "at"}
    engine = await run_engine({**source, "interval": "50ms"})
    await until(lambda: len(lines(tmp_path)) >= 2)
    await asyncio.sleep(0.3)  # polls enough to read it again
    await stop(engine)
    mariadb.execute(f"INSERT INTO `{table}` VALUES (0.3, 3)")
    await run_engine({**source, "interval": "50ms"})  # from the stored position
    await until(lambda: len(lines(tmp_path)) >= 3)
    await asyncio.sleep(0.3)
    assert [x["payload"]["n"] for x in lines(tmp_path)] == [1, 2, 3]


async def test_a_cursor_whose_values_cannot_mark_a_position_stops_the_source(
    postgres: Any,
) -> None:
    """It was a TypeError traceback ("Type is not JSON serializable: IPv4Address")."""
    table = unique_name()
    postgres.execute(
        f'CREATE TABLE "{table}" (c inet); INSERT INTO "{table}" VALUES (\'10.0.0.1\')'
    )
    config, _problems = build("postgres", dsn=postgres.dsn, table=table, cursor="c")
    source = PostgresSource(config, Context("rows", "source"))
    await source.connect()
    try:
        with pytest.raises(PermanentError, match=r"c cannot mark a position .*IPv4Address"):
            await source.poll_messages()
    finally:
        await source.close()


async def test_a_text_key_is_paged_in_the_order_of_its_collation(db: Db) -> None:
    """Rows after the position were told from rows read already by Python's order of the
    key: MySQL's case-insensitive collations (and PostgreSQL's locales) put 'B' after 'a',
    Python before it, and the row with key 'B' was left out for good."""
    table = unique_name()
    if db.kind == "mysql":
        db.server.execute(f"CREATE TABLE `{table}` (at INT NOT NULL, k VARCHAR(8) PRIMARY KEY)")
        db.server.execute(f"INSERT INTO `{table}` VALUES (1, 'a'), (1, 'B'), (1, 'c'), (2, 'D')")
    else:
        db.server.execute(f'CREATE TABLE "{table}" (at INT NOT NULL, k TEXT COLLATE "und-x-icu")')
        db.server.execute(f"INSERT INTO \"{table}\" VALUES (1, 'a'), (1, 'B'), (1, 'c'), (2, 'D')")
    config, _problems = build(db.kind, dsn=db.dsn, table=table, cursor="at", key="k", page_size=1)
    kind = MysqlSource if db.kind == "mysql" else PostgresSource
    source = kind(config, Context("rows", "source"))
    await source.connect()
    pages = []
    try:
        while (not pages or source.backlog) and len(pages) < 10:
            pages.append(
                [orjson.loads(m.flowfile.content)["k"] for m in await source.poll_messages()]
            )
    finally:
        await source.close()
    assert [k for page in pages for k in page] == ["a", "B", "c", "D"]


async def test_a_table_whose_ids_started_again_below_the_position_is_said(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    """A table emptied with its ids started again (TRUNCATE ... RESTART IDENTITY): the new
    rows are below the position, never read, and nothing said so."""
    table = unique_name()
    db.create(table)
    db.insert(table, [("a", i, T0) for i in range(3)])
    config, _problems = build(db.kind, dsn=db.dsn, table=table, cursor="id")
    source = (MysqlSource if db.kind == "mysql" else PostgresSource)(
        config, Context("rows", "source")
    )
    await source.connect()
    try:
        assert len(await source.poll_messages()) == 3
        assert await source.poll_messages() == []
        assert "comes before the position" not in caplog.text, "the position's row is newest"
        if db.kind == "mysql":
            db.server.execute(f"TRUNCATE TABLE `{table}`")
        else:
            db.server.execute(f'TRUNCATE TABLE "{table}" RESTART IDENTITY')
        db.insert(table, [("b", 1, T0)])
        source._behind_at = 0.0  # the next poll looks again (at most once a minute)
        with caplog.at_level(logging.WARNING):
            assert await source.poll_messages() == []
        assert f"table {table}: its newest row (id 1) comes before the position (3)" in caplog.text
    finally:
        await source.close()


async def test_a_run_of_mysql_float_ties_with_a_text_key_is_read_once_across_a_restart(
    mariadb: Any,
) -> None:
    """FLOAT 0.2 compares as 0.200000003 > 0.2: the whole run of 0.2 comes again after a
    position in it, and the rows read already were told by the position's own row. Not
    among those fetched (a run longer than the page), or deleted, nothing was dropped:
    the position swung between two places and the same rows were read at every poll
    for ever ([a, B] [c, D] [a, B] ...), the rows after them never."""
    table = unique_name()
    mariadb.execute(f"CREATE TABLE `{table}` (at FLOAT, k VARCHAR(8) PRIMARY KEY, n INT)")
    keys = ["a", "B", "c", "D", "e", "F", "g"]  # case-insensitive: in this order
    rows = [(0.1, "0", 0), *[(0.2, k, i + 1) for i, k in enumerate(keys)], (0.3, "h", 8)]
    mariadb.execute(f"INSERT INTO `{table}` VALUES " + ", ".join(map(str, rows)))
    config, _problems = build(
        "mysql", dsn=mariadb.dsn, table=table, cursor="at", key="k", page_size=2
    )
    stored: list[bytes] = []

    async def position() -> bytes | None:
        return stored[-1] if stored else None

    got: list[int] = []
    polls = 0
    for restart in range(3):
        source = MysqlSource(config, Context("rows", "source", position=position))
        await source.connect()
        try:
            while polls < 30:
                polls += 1
                for message in await source.poll_messages():
                    stored.append(message.position)
                    record = orjson.loads(message.flowfile.content)
                    assert set(record) == {"at", "k", "n"}  # not the server's flag
                    got.append(record["n"])
                if (restart < 2 and len(got) >= 2 * (restart + 2)) or not source.backlog:
                    break
        finally:
            await source.close()
        if restart == 0:
            # the position's row deleted: the rows before it were read again
            (last,) = [r for r in rows if r[2] == got[-1]]
            mariadb.execute(f"DELETE FROM `{table}` WHERE k = %s", last[1])
    assert got == list(range(9)) and polls < 30

"""The postgres sink against a real PostgreSQL: the sink contract, then what is its own."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks._columns import columns_for
from gateway.sinks.postgres import DIALECT, PostgresSink, PostgresSinkConfig, _Rows
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

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def config_problems(**keys: Any) -> tuple[Any, list[str]]:
    return sink_config_problems("postgres", "warehouse", **keys)


def make_config(dsn: str, **keys: Any) -> PostgresSinkConfig:
    config, problems = config_problems(dsn=dsn, **keys)
    assert problems == []
    assert isinstance(config, PostgresSinkConfig)
    return config


def make_sink(dsn: str, **keys: Any) -> PostgresSink:
    return PostgresSink(make_config(dsn, **keys), Context(name="warehouse", kind="sink"))


@pytest.fixture
def table() -> str:
    return unique_name()


@pytest.fixture
async def sink_for(postgres: Any) -> AsyncIterator[Callable[..., Any]]:
    """`await sink_for(**keys)`: a connected sink on the shared server, closed after."""
    async with closing(lambda **keys: connected(make_sink(postgres.dsn, **keys))) as opened:
        yield opened


# --- the contract -------------------------------------------------------------------------


class TestPostgresContract(SinkContract):
    @pytest.fixture
    def make_sink(self, postgres: Any, table: str) -> Callable[[], Any]:
        async def make() -> PostgresSink:
            sink = make_sink(postgres.dsn, table=table)
            await sink.connect()
            return sink

        return make

    @pytest.fixture
    def fetch_ids(self, postgres: Any, table: str) -> Callable[[], list[str]]:
        return lambda: [row[0] for row in postgres.fetch(f'SELECT id::text FROM "{table}"')]

    @pytest.fixture
    def bad_flowfile(self) -> Callable[[], FlowFile]:
        # PostgreSQL text cannot hold a NUL character.
        return lambda: FlowFile.create("contract/bad\x00topic", b'{"temp": 1}')

    @pytest.fixture
    def outage(self, postgres: Any) -> Callable[[], Any]:
        return server_down(postgres)


# --- the table ----------------------------------------------------------------------------


async def test_default_table_keeps_json_as_jsonb_and_anything_else_as_bytes(
    postgres: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    cases = {
        "json": FlowFile.create("s/a", b'{"temp": 21.5, "ok": true}', {"site": "north"}),
        "pretty": FlowFile.create("s/b", b"  [1, 2,\n 3]\n"),
        "binary": FlowFile.create("s/c", b"\x00\x01\xff"),
        "text": FlowFile.create("s/d", b"hello"),
        "empty": FlowFile.create("s/e", b""),
        "nul_escape": FlowFile.create("s/f", b'{"a": "x\\u0000y"}'),  # JSON, but not jsonb
        "lone_surrogate": FlowFile.create("s/g", b'["\\ud800"]'),
        "nan": FlowFile.create("s/h", b"[NaN]"),
        "latin1": FlowFile.create("s/i", '{"a": "é"}'.encode("latin-1")),
    }
    assert await sink.write(list(cases.values())) == []
    rows = {
        r[0]: r[1:]
        for r in postgres.fetch(
            f'SELECT id::text, topic, ts, attributes, payload, raw FROM "{table}"'
        )
    }
    assert len(rows) == len(cases)
    for name, ff in cases.items():
        topic, ts, attributes, payload, raw = rows[ff.id]
        assert topic == ff.topic, name
        assert ts == EPOCH + dt.timedelta(microseconds=ff.created // 1000), name
        assert json.loads(attributes) == ff.attributes, name
        if name in ("json", "pretty"):
            assert json.loads(payload) == json.loads(ff.content), name
            assert raw is None, name
        else:
            assert payload is None, name
            assert raw == ff.content, name
    columns = postgres.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_name = $1 ORDER BY ordinal_position",
        table,
    )
    assert columns == [
        ("id", "uuid", "NO"),
        ("topic", "text", "NO"),
        ("ts", "timestamp with time zone", "NO"),
        ("attributes", "jsonb", "NO"),
        ("payload", "jsonb", "YES"),
        ("raw", "bytea", "YES"),
    ]


async def test_columns_map_topic_levels_json_fields_and_attributes(
    postgres: Any, table: str, sink_for: Any
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
            "env": {"from": "field.env", "type": "jsonb"},
            "name": "field.name",
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
    }
    full = FlowFile.create(
        "plant/line3/press7/telemetry", json.dumps(body).encode(), {"site": "north", "shift": "2"}
    )
    sparse = FlowFile.create("plant/x", b"\x01 not json")
    typed_as_text = FlowFile.create("plant/line1/p1/t", b'{"temp": "19.25", "readings": [1, "2"]}')
    assert await sink.write([full, sparse, typed_as_text]) == []

    rows = {
        r[0]: r[1:]
        for r in postgres.fetch(
            "SELECT id::text, device, kind, deep, temperature, humidity, second, tags, env,"
            f' name, site, shift, at, body FROM "{table}"'
        )
    }
    device, kind, deep, temp, hum, second, tags, env, name, site, shift, at, payload = rows[full.id]
    assert (device, kind, deep) == ("press7", "telemetry", None)
    assert (temp, hum, second) == (21.5, 40.25, 20)
    assert json.loads(tags) == ["a", "b"]
    assert json.loads(env) == body["env"]
    assert (name, site, shift) == ("press 7", "north", 2)
    assert at == EPOCH + dt.timedelta(microseconds=full.created // 1000)
    assert json.loads(payload) == body

    assert rows[sparse.id][:3] == (None, "x", None)
    assert rows[sparse.id][3:11] == (None,) * 8  # no JSON, no attributes: all NULL
    assert rows[sparse.id][12] is None  # payload

    # PostgreSQL converts: a JSON string "19.25" fits double precision, "2" an integer.
    assert rows[typed_as_text.id][3] == 19.25
    assert rows[typed_as_text.id][5] == 2

    columns = postgres.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = $1 ORDER BY ordinal_position",
        table,
    )
    assert columns[0] == ("id", "uuid")
    assert dict(columns)["temperature"] == "double precision"
    assert dict(columns)["tags"] == "text"
    assert len(columns) == 14


async def test_a_value_that_does_not_fit_its_column_rejects_only_that_row(
    postgres: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(
        table=table,
        columns={
            "device": "topic.1",
            "temperature": {"from": "field.temp", "type": "double precision"},
            "level": {"from": "field.level", "type": "smallint"},
            "note": "field.note",
        },
    )

    def reading(i: int, **body: Any) -> FlowFile:
        return FlowFile.create(f"s/dev{i}", json.dumps({"temp": i, "level": 1, **body}).encode())

    batch = [reading(i) for i in range(64)]
    batch[11] = reading(11, temp="hot")
    batch[40] = reading(40, level=40000)
    batch[41] = reading(41, note="a\x00b")  # text cannot hold a NUL
    batch[50] = reading(50, note="\ud800")  # nor half a surrogate pair
    rejected = await sink.write(batch)

    reasons = {r.flowfile.id: r.reason for r in rejected}
    assert set(reasons) == {batch[11].id, batch[40].id, batch[41].id, batch[50].id}
    assert 'invalid input syntax for type double precision: "hot"' in reasons[batch[11].id]
    assert "out of range" in reasons[batch[40].id]
    assert "\\u0000 cannot be converted to text" in reasons[batch[41].id]
    assert "surrogate" in reasons[batch[50].id]
    stored = {r[0] for r in postgres.fetch(f'SELECT id::text FROM "{table}"')}
    assert stored == {ff.id for i, ff in enumerate(batch) if i not in (11, 40, 41, 50)}


async def test_a_check_constraint_added_by_the_user_refuses_rows(
    postgres: Any, table: str, sink_for: Any
) -> None:
    postgres.execute(
        f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, temperature double precision'
        " CHECK (temperature < 100))"
    )
    sink = await sink_for(
        table=table, columns={"temperature": {"from": "field.t", "type": "double precision"}}
    )
    batch = [FlowFile.create("s", json.dumps({"t": t}).encode()) for t in (20, 150, 30)]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[1].id]
    assert "violates check constraint" in rejected[0].reason
    assert len(postgres.fetch(f'SELECT 1 FROM "{table}"')) == 2


async def test_a_trigger_that_raises_refuses_its_row_alone(
    postgres: Any, table: str, sink_for: Any
) -> None:
    # RAISE EXCEPTION (P0001) and ASSERT (P0004) were taken for no fault of the row's: the
    # batch was retried for ever and the rows behind it never went.
    postgres.execute(
        f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, t double precision);'
        f' CREATE FUNCTION "{table}_check"() RETURNS trigger AS $$ BEGIN'
        " IF NEW.t > 100 THEN RAISE EXCEPTION 'temperature % out of range', NEW.t; END IF;"
        " ASSERT NEW.t > -100, 'below the scale'; RETURN NEW; END $$ LANGUAGE plpgsql;"
        f' CREATE TRIGGER "{table}_t" BEFORE INSERT ON "{table}" FOR EACH ROW'
        f' EXECUTE FUNCTION "{table}_check"()'
    )
    sink = await sink_for(
        table=table, columns={"t": {"from": "field.t", "type": "double precision"}}
    )
    batch = [FlowFile.create("s", json.dumps({"t": t}).encode()) for t in (20, 150, -200, 30)]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[1].id, batch[2].id]
    assert "temperature 150 out of range (SQLSTATE P0001)" in rejected[0].reason
    assert "below the scale (SQLSTATE P0004)" in rejected[1].reason
    assert len(postgres.fetch(f'SELECT 1 FROM "{table}"')) == 2


async def test_a_trigger_that_raises_another_errcode_has_the_batch_retried(
    postgres: Any, table: str, sink_for: Any
) -> None:
    # What the docstring tells a trigger's author whose refusal means "not now" (a
    # partition-routing trigger whose next partition is missing): an ERRCODE outside the
    # row's classes holds the batch until the operator acts, nothing dead-lettered.
    postgres.execute(
        f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, t double precision);'
        f' CREATE FUNCTION "{table}_route"() RETURNS trigger AS $$ BEGIN'
        " IF NEW.t > 100 THEN RAISE EXCEPTION 'no partition for %', NEW.t"
        " USING ERRCODE = 'lock_not_available'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql;"
        f' CREATE TRIGGER "{table}_t" BEFORE INSERT ON "{table}" FOR EACH ROW'
        f' EXECUTE FUNCTION "{table}_route"()'
    )
    sink = await sink_for(
        table=table, columns={"t": {"from": "field.t", "type": "double precision"}}
    )
    batch = [FlowFile.create("s", json.dumps({"t": t}).encode()) for t in (20, 150, 30)]
    with pytest.raises(RetryableError, match=r"no partition for 150 \(SQLSTATE 55P03\)"):
        await sink.write(batch)
    assert postgres.fetch(f'SELECT 1 FROM "{table}"') == []
    postgres.execute(f'DROP TRIGGER "{table}_t" ON "{table}"')
    assert await sink.write(batch) == []
    assert len(postgres.fetch(f'SELECT 1 FROM "{table}"')) == 3


async def test_a_row_without_a_partition_is_dead_lettered_as_the_docs_say(
    postgres: Any, table: str, sink_for: Any
) -> None:
    # What the docstring compares a partition-routing trigger's RAISE EXCEPTION to:
    # PostgreSQL's own partitioning refuses a row no partition takes as a constraint
    # violation (23514), the row dead-lettered, the rest delivered. (By id: UUIDv7 ids
    # are time-ordered, and a unique index must hold the partition key.)
    batch = [FlowFile.create("s", b"{}") for _ in range(3)]
    postgres.execute(
        f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, topic text) PARTITION BY RANGE (id);'
        f' CREATE TABLE "{table}_old" PARTITION OF "{table}"'
        f" FOR VALUES FROM (MINVALUE) TO ('{batch[2].id}')"
    )
    sink = await sink_for(table=table, create_table=False, columns={"topic": "topic"})
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[2].id]
    assert "no partition of relation" in rejected[0].reason
    assert "(SQLSTATE 23514)" in rejected[0].reason
    assert len(postgres.fetch(f'SELECT 1 FROM "{table}"')) == 2


async def test_duplicate_ids_within_a_batch_are_stored_once(
    postgres: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    ff = FlowFile.create("s", b"{}")
    assert await sink.write([ff, ff, ff]) == []
    assert postgres.fetch(f'SELECT id::text FROM "{table}"') == [(ff.id,)]


async def test_two_connections_take_concurrent_batches(
    postgres: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table, pool_size=2)
    batches = [[FlowFile.create("s", b"{}") for _ in range(500)] for _ in range(4)]
    assert await asyncio.gather(*(sink.write(b) for b in batches)) == [[]] * 4
    assert len(postgres.fetch(f'SELECT 1 FROM "{table}"')) == 2000


async def test_schema_qualified_table(postgres: Any, table: str, sink_for: Any) -> None:
    postgres.execute(f"CREATE SCHEMA IF NOT EXISTS {table}_s")
    sink = await sink_for(table=f"{table}_s.readings")
    ff = FlowFile.create("s", b"{}")
    assert await sink.write([ff]) == []
    assert postgres.fetch(f'SELECT id::text FROM "{table}_s"."readings"') == [(ff.id,)]


async def test_a_missing_schema_says_to_create_it(postgres: Any, table: str) -> None:
    # The printed example (table: plant.climate) said "fix the table or point `table` at a
    # new one" when the schema did not exist: the sink creates tables, never schemas.
    sink = make_sink(postgres.dsn, table=f"{table}_none.climate")
    with pytest.raises(PermanentError) as caught:
        await sink.connect()
    assert str(caught.value).endswith(
        f'schema "{table}_none" does not exist (SQLSTATE 3F000); create the schema'
        f" (CREATE SCHEMA {table}_none), or point `table` at one that exists"
    )
    await sink.close()


async def test_an_unqualified_table_with_no_schema_to_create_in_names_no_schema(
    postgres: Any, table: str
) -> None:
    # A search_path of no existing schema: SQLSTATE 3F000 too, and the fix said
    # "CREATE SCHEMA <the table's name>", a schema no one asked for.
    dsn = f"{postgres.dsn}?options=-c%20search_path%3D{table}_nowhere"
    sink = make_sink(dsn, table=table)
    with pytest.raises(PermanentError) as caught:
        await sink.connect()
    assert str(caught.value).endswith(
        "no schema has been selected to create in (SQLSTATE 3F000); set the user's"
        " search_path to a schema that exists (ALTER ROLE ... SET search_path), or write"
        " `table` as schema.table"
    )
    assert "CREATE SCHEMA" not in str(caught.value)
    await sink.close()


# --- connections and outages --------------------------------------------------------------


def crash(postgres: Any) -> None:
    """Kill PostgreSQL as a crash of its host would: the postmaster and every backend.

    `kill()` alone is not that: each backend runs in its own process group and serves
    its client until it notices the postmaster is gone, so a write may still succeed.
    """
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postgres.pid:
                children.append(int(stat.parent.name))
    postgres.kill()  # first, so that it cannot restart the backends killed next
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_killed_server_is_a_retryable_error_and_the_batch_arrives_once(
    postgres: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(200)]
    assert await sink.write(batch[:100]) == []
    crash(postgres)
    try:
        with pytest.raises(RetryableError, match=r"127\.0\.0\.1"):
            await sink.write(batch)
    finally:
        postgres.start()
    assert await write_until_delivered(sink, batch) == []
    ids = [r[0] for r in postgres.fetch(f'SELECT id::text FROM "{table}"')]
    assert sorted(ids) == sorted(ff.id for ff in batch)


async def test_a_dropped_table_is_created_again_on_the_next_write(
    postgres: Any, table: str, sink_for: Any
) -> None:
    sink = await sink_for(table=table)
    assert await sink.write([FlowFile.create("s", b"{}")]) == []
    postgres.execute(f'DROP TABLE "{table}"')
    batch = [FlowFile.create("s", b"{}")]
    with pytest.raises(RetryableError, match="does not exist"):
        await sink.write(batch)
    assert await sink.write(batch) == []
    assert postgres.fetch(f'SELECT id::text FROM "{table}"') == [(batch[0].id,)]


async def test_no_server_at_connect_is_retryable() -> None:
    sink = make_sink(f"postgresql://gw:s3cret-pw@127.0.0.1:{free_port()}/edge", timeout="5s")
    with pytest.raises(RetryableError) as caught:
        await sink.connect()
    assert "127.0.0.1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("sslmode=verify-full&sslrootcert={missing}", "sslrootcert {missing} (in the dsn) cannot"),
        ("sslcert={missing}&sslkey={missing}", "sslcert {missing} (in the dsn) cannot be read"),
        ("sslmode=verify-ca&sslrootcert={text}", "cannot use the TLS files of the dsn"),
    ],
)
async def test_tls_files_of_the_dsn_that_cannot_be_used_are_permanent_at_connect(
    postgres: Any, tmp_path: Any, options: str, expected: str
) -> None:
    # Before: retried forever as "[Errno 2] No such file or directory", naming no file.
    files = {"missing": str(tmp_path / "missing.pem"), "text": str(tmp_path / "ca.pem")}
    (tmp_path / "ca.pem").write_text("not a certificate")
    dsn = postgres.dsn.replace("postgres@", "postgres:s3cret-pw@") + "?" + options.format(**files)
    sink = make_sink(dsn, timeout="5s")
    with pytest.raises(PermanentError) as caught:
        await sink.connect()
    assert expected.format(**files) in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("sslmode=require", "does not offer TLS, which the dsn's sslmode=require requires"),
        ("sslmode=verify-full&sslrootcert={ca}", "which the dsn's sslmode=verify-full requires"),
        (
            "options=-c statement_timeout=abc",
            "refused a setting of the dsn's ?options: invalid value for parameter"
            ' "statement_timeout": "abc" (SQLSTATE 22023)',
        ),
        ("options=-c%20shared_buffers%3D1MB", 'parameter "shared_buffers" cannot be changed'),
    ],
)
async def test_a_dsn_the_server_can_never_accept_is_permanent_at_connect(
    postgres: Any, tmp_path: Path, options: str, expected: str
) -> None:
    # Before: retried forever ("rejected SSL upgrade", "invalid value for parameter"), as if
    # the server were down; the test server runs without TLS.
    if "{ca}" in options:
        options = options.format(ca=make_pki(tmp_path).ca_file)
    dsn = postgres.dsn.replace("postgres@", "postgres:s3cret-pw@") + "?" + options
    sink = make_sink(dsn, timeout="5s")
    with pytest.raises(PermanentError) as caught:
        await sink.connect()
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()


async def test_a_missing_sslrootcert_without_verification_is_no_error(
    postgres: Any, tmp_path: Any, table: str
) -> None:
    # sslmode prefer (the default) does not verify: libpq and asyncpg take no root file.
    sink = make_sink(f"{postgres.dsn}?sslrootcert={tmp_path / 'missing.pem'}", table=table)
    await sink.connect()
    await sink.close()


@pytest.mark.parametrize(
    "options", ["sslmode=verify-full&sslrootcert=system", "sslrootcert=system"]
)
async def test_sslrootcert_system_verifies_the_server_against_the_systems_cas(
    postgres_factory: Callable[..., Any],
    tmp_path: Path,
    table: str,
    monkeypatch: pytest.MonkeyPatch,
    options: str,
) -> None:
    # Before: with verify-full, asyncpg read 'system' as a file name ("[Errno 2] No such
    # file or directory"), retried forever; without an sslmode (prefer) nothing was
    # verified, where libpq verifies the host name (its sslmode with system). OpenSSL's
    # default CA file is the system's bundle unless SSL_CERT_FILE names another: here
    # the test CA that signed the server's certificate.
    server = postgres_factory(tls=True)
    assert server.tls is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(server.tls.ca_file))
    sink = make_sink(f"{server.dsn}?{options}", table=table, timeout="5s")
    try:
        await sink.connect()
        assert await sink.write([FlowFile.create("s", b"{}")]) == []
        encrypted = server.fetch(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE a.application_name = 'edge-stream warehouse'"
        )
        assert encrypted == [(True,)]
    finally:
        await sink.close()
    # Verified (verify-full, libpq's sslmode with system): a server the system's CAs did
    # not sign is refused.
    monkeypatch.setenv("SSL_CERT_FILE", str(make_pki(tmp_path).ca_file))
    sink = make_sink(f"{server.dsn}?{options}", table=table, timeout="5s")
    with pytest.raises(RetryableError, match="CERTIFICATE_VERIFY_FAILED"):
        await sink.connect()
    await sink.close()


async def test_password_is_never_logged_or_shown(
    postgres: Any, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = postgres.dsn.replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it
    caplog.set_level(logging.DEBUG)
    sink = make_sink(dsn, table=table)
    await sink.connect()
    await sink.write([FlowFile.create("s", b"{}")])
    await sink.close()
    assert f"127.0.0.1:{postgres.port}/edge" in caplog.text
    assert "s3cret-pw" not in caplog.text
    assert "s3cret-pw" not in repr(sink.config)
    assert "s3cret-pw" not in str(sink.status())


async def test_close_without_connect_and_twice() -> None:
    sink = make_sink("postgresql://postgres@127.0.0.1:1/edge")
    await sink.close()
    await sink.close()


# --- the table the sink finds -------------------------------------------------------------


async def test_missing_table_without_create_table_is_a_permanent_error(
    postgres: Any, table: str
) -> None:
    sink = make_sink(postgres.dsn, table=table, create_table=False)
    with pytest.raises(PermanentError, match=f"table {table} does not exist.*create_table"):
        await sink.connect()
    assert postgres.fetch("SELECT to_regclass($1)::text", table) == [(None,)]
    await sink.close()


async def test_existing_table_is_used_as_it_is_without_create_table(
    postgres: Any, table: str
) -> None:
    postgres.execute(
        f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, device text, extra int DEFAULT 7)'
    )
    sink = make_sink(postgres.dsn, table=table, create_table=False, columns={"device": "topic.0"})
    await sink.connect()
    ff = FlowFile.create("d1/x", b"{}")
    assert await sink.write([ff]) == []
    assert postgres.fetch(f'SELECT id::text, device, extra FROM "{table}"') == [(ff.id, "d1", 7)]
    await sink.close()


async def test_a_fraction_is_refused_not_rounded_into_an_integer_column_typed_double(
    postgres: Any, table: str
) -> None:
    # The cast through the `type` would make PostgreSQL round 21.5 to 22, without a word.
    postgres.execute(f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, temp integer)')
    columns = {"temp": {"from": "field.t", "type": "double precision"}}
    sink = make_sink(postgres.dsn, table=table, create_table=False, columns=columns)
    await sink.connect()
    # read as a double, 21.00000000000000001 would be 21.0, a whole number
    values = ("21.5", "21.0", "1e2", "7", "21.00000000000000001")
    batch = [FlowFile.create("s", f'{{"t": {t}}}'.encode()) for t in values]
    rejected = await sink.write(batch)
    await sink.close()
    assert [(r.flowfile.id, r.reason) for r in rejected] == [
        (
            batch[i].id,
            f'postgres refused the row: invalid input syntax for type integer: "{values[i]}"'
            " (SQLSTATE 22P02)",
        )
        for i in (0, 4)
    ]
    assert sorted(postgres.fetch(f'SELECT temp FROM "{table}"')) == [(7,), (21,), (100,)]


@pytest.mark.parametrize("sql_type", ["smallint", "integer", "bigint"])
async def test_an_integer_type_takes_a_whole_number_written_as_a_fraction(
    sink_for: Any, postgres: Any, table: str, sql_type: str
) -> None:
    # JSON encoders write a float 21.0 as "21.0": PostgreSQL's integer input refused it,
    # and every such row went to the dead letters (the mysql sink takes it, and so did a
    # fractional `type` into an integer column).
    columns = {"n": {"from": "field.n", "type": sql_type}}
    sink = await sink_for(table=table, columns=columns)
    values = ("21.0", '"21.0"', "1e2", '"1e2"', "7", "21.5", '"abc"', "21.00000000000000001")
    batch = [FlowFile.create("s", f'{{"n": {v}}}'.encode()) for v in values]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[i].id for i in (5, 6, 7)]
    assert f'invalid input syntax for type {sql_type}: "21.5"' in rejected[0].reason
    # through numeric, the reason said "type numeric" for an integer column
    assert rejected[1].reason == (
        f'postgres refused the row: invalid input syntax for type {sql_type}: "abc"'
        " (SQLSTATE 22P02)"
    )
    stored = sorted(postgres.fetch(f'SELECT n FROM "{table}"'))
    assert stored == [(7,), (21,), (21,), (100,), (100,)]


async def test_an_existing_table_needs_no_create_privilege_on_its_schema(
    postgres: Any, table: str
) -> None:
    # PostgreSQL 15 grants no CREATE on schema public, and CREATE TABLE IF NOT EXISTS
    # asks for it even when the table is there.
    postgres.execute(f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, device text)')
    postgres.execute(f'CREATE ROLE "{table}" LOGIN')
    try:
        sink = make_sink(
            postgres.dsn.replace("postgres@", f"{table}@"),
            table=table,
            columns={"device": "topic.0"},
        )
        # Without a privilege it needs, the error names them (no table to fix).
        with pytest.raises(PermanentError, match=r"grant the user INSERT and SELECT on") as caught:
            await sink.connect()
        assert "permission denied" in str(caught.value)
        assert "point `table` at a new one" not in str(caught.value)
        postgres.execute(f'GRANT INSERT, SELECT ON "{table}" TO "{table}"')
        await sink.connect()
        ff = FlowFile.create("d1/x", b"{}")
        assert await sink.write([ff]) == []
        await sink.close()
    finally:
        postgres.execute(f'DROP OWNED BY "{table}"; DROP ROLE "{table}"')
    assert postgres.fetch(f'SELECT id::text, device FROM "{table}"') == [(ff.id, "d1")]


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("(id uuid PRIMARY KEY, device text)", 'column "temperature" of relation'),
        ("(id uuid, temperature double precision)", "ON CONFLICT"),
        ("(id uuid PRIMARY KEY, temperature jsonb)", 'column "temperature" is of type jsonb'),
    ],
    ids=["missing-column", "id-not-unique", "wrong-type"],
)
async def test_an_existing_table_that_cannot_take_the_rows_is_a_permanent_error(
    postgres: Any, table: str, ddl: str, message: str
) -> None:
    postgres.execute(f'CREATE TABLE "{table}" {ddl}')
    sink = make_sink(
        postgres.dsn,
        table=table,
        columns={"temperature": {"from": "field.t", "type": "double precision"}},
    )
    try:
        with pytest.raises(PermanentError, match=f"cannot write to table {table}") as caught:
            await sink.connect()
    finally:
        await sink.close()
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("ddl", "fix"),
    [
        (
            "integer",
            "; give columns.temperature `type: integer`, as the table has it (it is text),"
            " or point `table` at a new one",
        ),
        (
            "timestamp with time zone",
            "; give columns.temperature `type: timestamptz`, as the table has it (it is text),",
        ),
        (
            "interval",
            "; columns.temperature is text, and a `type` is one of bigint, boolean, date,",
        ),
    ],
)
async def test_a_column_left_text_for_a_typed_table_column_says_to_give_a_type(
    postgres: Any, table: str, ddl: str, fix: str
) -> None:
    # A `type` left out (text) for an integer column: the sink stopped with "fix the
    # table", which was not the table's fault.
    postgres.execute(f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, temperature {ddl})')
    sink = make_sink(postgres.dsn, table=table, columns={"temperature": "field.t"})
    try:
        with pytest.raises(PermanentError) as caught:
            await sink.connect()
    finally:
        await sink.close()
    assert fix in str(caught.value)


async def test_a_not_null_column_the_sink_does_not_write_is_a_permanent_error(
    postgres: Any, table: str, sink_for: Any
) -> None:
    # Before: every FlowFile went to the dead letters ("null value in column site").
    postgres.execute(
        f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, device text, site text NOT NULL,'
        " zone text NOT NULL DEFAULT 'a', n serial, g int GENERATED ALWAYS AS (1) STORED,"
        " k int GENERATED ALWAYS AS IDENTITY)"
    )
    sink = make_sink(postgres.dsn, table=table, columns={"device": "topic.0"})
    try:
        with pytest.raises(PermanentError, match=r"without a default .*\(site\)"):
            await sink.connect()
    finally:
        await sink.close()
    # Written by the sink, or with a default, generated, identity or serial: fine.
    await sink_for(table=table, columns={"device": "topic.0", "site": "topic.1"})


async def test_unknown_database_is_a_permanent_error(postgres: Any) -> None:
    sink = make_sink(postgres.dsn_for("no_such_db"))
    with pytest.raises(PermanentError, match="no_such_db"):
        await sink.connect()
    await sink.close()


# --- config -------------------------------------------------------------------------------

DSN = "postgresql://gw:s3cret-pw@db.example:5432/telemetry"


@pytest.mark.parametrize(
    ("keys", "where", "fragment"),
    [
        ({"table": "read-ings"}, "table", "'read-ings' is not a valid SQL identifier"),
        ({"table": "Readings"}, "table", "must be lowercase"),
        ({"table": "a.b.c"}, "table", "must read table or schema.table"),
        ({"table": "public.1x"}, "table", "'1x' is not a valid SQL identifier"),
        # a temporary table: each row acknowledged, then gone with the connection
        ({"table": "pg_temp.readings"}, "table", "schema pg_temp holds temporary tables"),
        ({"table": 'x"; DROP TABLE y; --'}, "table", "is not a valid SQL identifier"),
        ({"columns": {"bad name": "topic"}}, "columns.bad name", "not a valid SQL identifier"),
        ({"columns": {"Temp": "topic"}}, "columns.Temp", "must be lowercase"),
        ({"columns": {}}, "columns", "at least one column"),
        ({"columns": {"t": "fields.temp"}}, "columns.t", "is not a source"),
        ({"columns": {"t": "tpoic"}}, "columns.t", "did you mean 'topic'"),
        ({"columns": {"t": "topic.x"}}, "columns.t", "topic.N needs a level number"),
        ({"columns": {"t": "field."}}, "columns.t", "field.PATH needs field names"),
        ({"columns": {"t": "field.a..b"}}, "columns.t", "field.PATH needs field names"),
        ({"columns": {"t": "attributes."}}, "columns.t", "attributes.KEY needs"),
        ({"columns": {"t": {"type": "text"}}}, "columns.t.from", "required key is missing"),
        ({"columns": {"t": {"form": "topic"}}}, "columns.t.form", "did you mean 'from'"),
        (
            {"columns": {"t": {"from": "field.t", "type": "money"}}},
            "columns.t.type",
            "'money' is not a supported type",
        ),
        (
            {"columns": {"t": {"from": "field.t", "type": "text); DROP TABLE x; --"}}},
            "columns.t.type",
            "is not a supported type",
        ),
        ({"columns": {"t": {"from": "ts", "type": "text"}}}, "columns.t.type", "always"),
        ({"columns": {"id": "topic"}}, "columns.id", "always the FlowFile id"),
        ({"pool_size": 3}, "pool_size", "must be 1 or 2"),
        ({"pool_size": 0}, "pool_size", "must be 1 or 2"),
        ({"dsn": "mysql://gw:s3cret-pw@db/x"}, "dsn", "must read postgresql://"),
        (
            {"dsn": f"{DSN}?sslrootcert=system&sslmode=require"},
            "dsn",
            "sslrootcert=system needs sslmode=verify-full (or no sslmode), not sslmode=require",
        ),
        ({"tabel": "x"}, "tabel", "did you mean 'table'"),
    ],
)
def test_invalid_config_is_refused_when_loaded(
    keys: dict[str, Any], where: str, fragment: str
) -> None:
    config, problems = config_problems(**{"dsn": DSN, **keys})
    assert config is None or problems
    assert any(p.startswith(f"sinks.warehouse.{where}: ") and fragment in p for p in problems), (
        problems
    )
    assert not any("s3cret-pw" in p for p in problems)


def test_a_name_that_is_no_identifier_gets_one_problem_and_no_invalid_suggestion() -> None:
    # Before: a second line said "must be lowercase ... (use 'bad-name')", no identifier.
    _, problems = config_problems(dsn=DSN, columns={"Bad-Name": "topic"})
    assert problems == [
        "sinks.warehouse.columns.Bad-Name: 'Bad-Name' is not a valid SQL identifier"
        " (letters, digits and _, not starting with a digit, at most 63)"
    ]


def test_dsn_is_required() -> None:
    _, problems = config_problems()
    assert problems == ["sinks.warehouse.dsn: required key is missing"]


def test_valid_config_and_its_statements() -> None:
    config = make_config(
        DSN,
        table="plant.climate",
        columns={
            "device": "topic.1",
            "temperature": {"from": "field.temp", "type": "Double  Precision"},
            "id": "id",
        },
        pool_size=2,
        timeout="5s",
    )
    assert config.timeout == 5.0
    assert "s3cret-pw" not in repr(config)
    sink = PostgresSink(config, Context(name="warehouse", kind="sink"))
    assert [c.name for c in sink.columns] == ["id", "device", "temperature"]
    assert sink.create_statement() == (
        'CREATE TABLE IF NOT EXISTS "plant"."climate" ("id" uuid PRIMARY KEY,'
        ' "device" text, "temperature" double precision)'
    )
    assert sink.server == "db.example:5432/telemetry"


async def test_a_dsn_asyncpg_cannot_read_is_permanent_and_not_quoted() -> None:
    # The load check passes it (no host in the authority); asyncpg then fails on the
    # ?port option with a ValueError, which must not escape as a traceback.
    sink = make_sink("postgresql://gw:s3cret-pw@/edge?host=127.0.0.1&port=s3cret-pw")
    with pytest.raises(PermanentError) as caught:
        await sink.connect()
    assert "check its ?options" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()


async def test_an_integer_beyond_64_bits_keeps_every_digit(
    postgres: Any, table: str, sink_for: Any
) -> None:
    """orjson read it as a float: 12345678901234567890123 was stored 1.2345678901234568e+22
    (numeric 1.234567890123456800E+22); the mysql sink kept it whole."""
    sink = await sink_for(
        table=table,
        columns={
            "n": {"from": "field.n", "type": "numeric"},
            "t": "field.n",
            "doc": {"from": "field.doc", "type": "jsonb"},
        },
    )
    big = 12345678901234567890123
    content = json.dumps({"n": big, "doc": {"serial": big, "x": 0.5}}).encode()
    assert await sink.write([FlowFile.create("s", content)]) == []
    ((n, t, doc),) = postgres.fetch(f'SELECT n, t, doc::text FROM "{table}"')
    assert (str(n), t) == (str(big), str(big))
    assert json.loads(doc) == {"serial": big, "x": 0.5}
    await sink.close()
    # without field columns the payload is stored as written: PostgreSQL reads the digits
    whole = await sink_for(table=table + "_p", columns={"p": {"from": "payload", "type": "jsonb"}})
    assert await whole.write([FlowFile.create("s", content)]) == []
    ((p,),) = postgres.fetch(f'SELECT p::text FROM "{table}_p"')
    assert json.loads(p) == {"n": big, "doc": {"serial": big, "x": 0.5}}
    await whole.close()


async def test_a_decimal_with_more_digits_than_a_double_keeps_every_digit(
    postgres: Any, table: str, sink_for: Any
) -> None:
    """Read as a double, 12345678901234.5678 went into a numeric column as 12345678901234.568
    and 1e999 into a double precision column as Infinity; now numeric keeps the digits, text
    and jsonb the value as written, and double precision refuses what it cannot hold."""
    sink = await sink_for(
        table=table,
        columns={
            "n": {"from": "field.n", "type": "numeric"},
            "t": "field.n",
            "doc": {"from": "field.doc", "type": "jsonb"},
            "d": {"from": "field.d", "type": "double precision"},
        },
    )
    exact = b'{"n": 12345678901234.5678, "doc": {"x": [0.12345678901234567891], "y": 0.5}}'
    huge = b'{"n": 1e999, "d": 1e999}'
    batch = [FlowFile.create("s/exact", exact), FlowFile.create("s/huge", huge)]
    rejected = await sink.write(batch)
    assert [r.flowfile.topic for r in rejected] == ["s/huge"]
    assert "out of range for type double precision" in rejected[0].reason
    ((n, t, doc),) = postgres.fetch(f'SELECT n::text, t, doc::text FROM "{table}"')
    assert (n, t) == ("12345678901234.5678", "12345678901234.5678")
    assert doc == '{"x": [0.12345678901234567891], "y": 0.5}'
    await sink.close()


def test_only_a_field_column_that_keeps_digits_reads_long_numbers_exactly() -> None:
    """Any field column made every FlowFile holding 17 digits and dots in a row (a computed
    float, 3.3000000000000003; nanoseconds since the epoch) skip orjson for the parser that
    keeps every digit, which a double precision or bigint column gains nothing from."""

    def exact(columns: Any, whole: frozenset[str] = frozenset()) -> bool:
        return _Rows(columns_for(columns, DIALECT), whole).exact

    readings = {
        "temp": {"from": "field.temp", "type": "double precision"},
        "hum": {"from": "field.hum", "type": "real"},
        "ns": {"from": "field.ns", "type": "bigint"},
        "at": {"from": "field.at", "type": "timestamptz"},
    }
    assert not exact(None)
    assert not exact(readings)
    for sql_type in ("numeric", "text", "jsonb"):
        assert exact({"n": {"from": "field.n", "type": sql_type}}), sql_type
    assert exact({"n": "field.n"})  # text
    assert exact(readings, frozenset({"temp"}))  # a double into an integer column


async def test_a_double_precision_column_refuses_1e999_without_exact_columns(
    postgres: Any, table: str, sink_for: Any
) -> None:
    """orjson refuses 1e999; read again as a double it would be Infinity, which the column
    takes."""
    sink = await sink_for(
        table=table, columns={"d": {"from": "field.d", "type": "double precision"}}
    )
    batch = [FlowFile.create("s/huge", b'{"d": 1e999}')]
    batch.append(FlowFile.create("s/ok", b'{"d": 3.3000000000000003, "ns": 1700000000123456789}'))
    rejected = await sink.write(batch)
    assert [r.flowfile.topic for r in rejected] == ["s/huge"]
    assert "out of range for type double precision" in rejected[0].reason
    assert postgres.fetch(f'SELECT d FROM "{table}"') == [(3.3000000000000003,)]
    await sink.close()


async def test_an_exponent_past_any_decimal_is_refused_not_a_crash(
    postgres: Any, table: str, sink_for: Any
) -> None:
    """1e99999999999999999999 was read as a Decimal, whose InvalidOperation escaped the
    write: the sink retried that batch for ever. It is JSON no jsonb or numeric holds: kept
    as content that is not JSON, its field empty."""
    sink = await sink_for(
        table=table,
        columns={"topic": "topic", "n": {"from": "field.n", "type": "numeric"}},
    )
    huge = FlowFile.create("s/huge", b'{"n": 1e99999999999999999999}')
    assert await sink.write([huge, FlowFile.create("s/ok", b'{"n": 1.5}')]) == []
    rows = postgres.fetch(f'SELECT topic, n FROM "{table}" ORDER BY topic')
    assert rows == [("s/huge", None), ("s/ok", decimal.Decimal("1.5"))]
    await sink.close()


async def test_json_nested_hundreds_deep_is_stored(
    postgres: Any, table: str, sink_for: Any
) -> None:
    """Checking such a payload for NULs recursed: with a \\u escape in it, JSON nested 600
    deep raised RecursionError, and the sink crashed on that batch again and again."""
    sink = await sink_for(
        table=table,
        columns={"payload": "payload", "doc": {"from": "field.doc", "type": "jsonb"}},
    )
    depth = 600
    content = b'{"doc": ' + b'{"a": ' * depth + b'"caf\\u00e9 0.12345678901234567891"'
    content += b"}" * depth + b"}"
    assert await sink.write([FlowFile.create("s/deep", content)]) == []
    ((payload, doc),) = postgres.fetch(f'SELECT payload::text, doc::text FROM "{table}"')
    assert json.loads(payload) == json.loads(content)
    assert json.loads(doc) == json.loads(content)["doc"]
    await sink.close()


async def test_a_row_colliding_on_another_unique_key_goes_to_the_dead_letters(
    postgres: Any, table: str, sink_for: Any
) -> None:
    """README, Delivery guarantees: a row that collides with another on a unique key you
    added to the table (not id) goes to the dead letters with PostgreSQL; the rows
    beside it are stored, and the same batch again (after a crash) stores nothing twice."""
    postgres.execute(
        f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, device text, seq integer,'
        " UNIQUE (device, seq))"
    )
    sink = await sink_for(
        table=table, columns={"device": "topic.0", "seq": {"from": "field.seq", "type": "integer"}}
    )
    batch = [FlowFile.create("d1", f'{{"seq": {n}}}'.encode()) for n in (1, 1, 2)]
    for _ in range(2):
        rejected = await sink.write(batch)
        assert [r.flowfile.id for r in rejected] == [batch[1].id]
        assert rejected[0].reason.startswith("postgres refused the row: "), rejected[0].reason
    stored = sorted(row[0] for row in postgres.fetch(f'SELECT id::text FROM "{table}"'))
    assert stored == sorted([batch[0].id, batch[2].id])

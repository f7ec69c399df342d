"""The redis sink against a real Redis: the sink contract per mode, then what is its own
(modes, markers, trimming, auth, TLS with client certificates, a Redis Cluster)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks.redis import RedisSink, RedisSinkConfig, _acl_denial, slot_tag
from tests import servers
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


def config_problems(**keys: Any) -> tuple[Any, list[str]]:
    return sink_config_problems("redis", "cache", **keys)


def make_sink(url: str, **keys: Any) -> RedisSink:
    if keys.get("mode") == "hash" or keys.get("dedupe") is False:
        keys.pop("dedupe_prefix", None)  # the tests give one to every sink; these keep no ids
    config, problems = config_problems(url=url, **keys)
    assert problems == []
    assert isinstance(config, RedisSinkConfig)
    return RedisSink(config, Context(name="cache", kind="sink", gateway_id="pi-01"))


@pytest.fixture
def ns() -> str:
    """A key namespace of this test's own: data keys `<ns>:<topic>`, dedupe keys
    `<ns>-dedupe:...`."""
    return unique_name()


@pytest.fixture
async def client(redis: Any) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the shared server, to look at what the sink wrote."""
    conn = aioredis.Redis.from_url(redis.url)
    yield conn
    await conn.aclose()


@pytest.fixture
async def sink_for(redis: Any, ns: str) -> AsyncIterator[Callable[..., Any]]:
    """`await sink_for(**keys)`: a connected sink on the shared server, keys under `ns`."""

    def make(**keys: Any) -> RedisSink:
        keys = {"key": f"{ns}:{{topic}}", "dedupe_prefix": f"{ns}-dedupe", **keys}
        return make_sink(keys.pop("url", redis.url), **keys)

    async with closing(lambda **keys: connected(make(**keys))) as opened:
        yield opened


async def data_keys(conn: Any, ns: str) -> list[bytes]:
    """The keys the sink wrote data to (not its dedupe keys), sorted."""
    return sorted([k async for k in conn.scan_iter(f"{ns}:*", count=1000)])


async def dedupe_state(conn: Any, ns: str) -> tuple[list[str], set[str]]:
    """(the recent ids in the order written, the recent-ids set) of a standalone sink."""
    order = [i.decode() for i in await conn.lrange(f"{ns}-dedupe:order", 0, -1)]
    recent = {i.decode() for i in await conn.smembers(f"{ns}-dedupe:recent")}
    return order, recent


async def stream_ids(conn: Any, ns: str) -> list[str]:
    found = []
    for key in await data_keys(conn, ns):
        if await conn.type(key) == b"stream":
            found += [fields[b"id"].decode() for _, fields in await conn.xrange(key)]
    return found


async def list_ids(conn: Any, ns: str) -> list[str]:
    found = []
    for key in await data_keys(conn, ns):
        if await conn.type(key) == b"list":
            found += [json.loads(item)["id"] for item in await conn.lrange(key, 0, -1)]
    return found


# --- the contract, per mode ---------------------------------------------------------------


class _RedisContract(SinkContract):
    mode = "stream"

    @pytest.fixture
    def make_sink(self, redis: Any, ns: str) -> Callable[[], Any]:
        async def make() -> RedisSink:
            sink = make_sink(
                redis.url, mode=self.mode, key=f"{ns}:{{topic}}", dedupe_prefix=f"{ns}-dedupe"
            )
            await sink.connect()
            return sink

        return make

    @pytest.fixture
    async def bad_flowfile(self, redis: Any, ns: str) -> Callable[[], FlowFile]:
        # Its key holds a string already: Redis answers WRONGTYPE for that one row.
        conn = aioredis.Redis.from_url(redis.url)
        await conn.set(f"{ns}:contract/bad", "not a stream or list")
        await conn.aclose()
        return lambda: FlowFile.create("contract/bad", b'{"temp": 1}')

    @pytest.fixture
    def outage(self, redis: Any) -> Callable[[], Any]:
        return server_down(redis)


class TestRedisStreamContract(_RedisContract):
    mode = "stream"

    @pytest.fixture
    def fetch_ids(self, redis: Any, ns: str) -> Callable[[], Any]:
        async def fetch() -> list[str]:
            conn = aioredis.Redis.from_url(redis.url)
            try:
                return await stream_ids(conn, ns)
            finally:
                await conn.aclose()

        return fetch


class TestRedisListContract(_RedisContract):
    mode = "list"

    @pytest.fixture
    def fetch_ids(self, redis: Any, ns: str) -> Callable[[], Any]:
        async def fetch() -> list[str]:
            conn = aioredis.Redis.from_url(redis.url)
            try:
                return await list_ids(conn, ns)
            finally:
                await conn.aclose()

        return fetch


# --- modes --------------------------------------------------------------------------------


async def test_stream_entries_carry_the_flowfile(client: Any, ns: str, sink_for: Any) -> None:
    sink = await sink_for(mode="stream")
    json_ff = FlowFile.create(
        "plant/a", b'{"temp": 21.5}', {"site": "north"}, created=1_714_564_800_123_456_789
    )
    binary_ff = FlowFile.create("plant/a", b"\x00\xff\x00 raw", {})
    assert await sink.write([json_ff, binary_ff]) == []
    entries = await client.xrange(f"{ns}:plant/a")
    assert [fields for _, fields in entries] == [
        {
            b"id": json_ff.id.encode(),
            b"topic": b"plant/a",
            b"ts": b"2024-05-01T12:00:00.123456Z",
            b"attributes": b'{"site":"north"}',
            b"payload": b'{"temp": 21.5}',
        },
        {
            b"id": binary_ff.id.encode(),
            b"topic": b"plant/a",
            b"ts": sink_ts(binary_ff).encode(),
            b"attributes": b"{}",
            b"payload": b"\x00\xff\x00 raw",
        },
    ]


def sink_ts(ff: FlowFile) -> str:
    seconds, micros = divmod(ff.created // 1000, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


async def test_a_restarted_sink_skips_what_it_wrote(client: Any, ns: str, sink_for: Any) -> None:
    first = await sink_for(mode="stream")
    batch = [FlowFile.create(f"s/{i % 4}", json.dumps({"i": i}).encode()) for i in range(200)]
    assert await first.write(batch[:120]) == []
    await first.close()  # as if the gateway died before moving its cursor
    second = await sink_for(mode="stream")
    assert await second.write(batch) == []
    assert Counter(await stream_ids(client, ns)) == Counter(ff.id for ff in batch)
    # The ids are recorded once each, in the order written, and never expire.
    order, recent = await dedupe_state(client, ns)
    assert order == [ff.id for ff in batch]
    assert recent == set(order)
    assert await client.ttl(f"{ns}-dedupe:recent") == -1
    assert await client.ttl(f"{ns}-dedupe:order") == -1


@pytest.mark.parametrize("mode", ["stream", "list", "publish"])
async def test_the_recent_ids_never_exceed_the_window(
    client: Any, ns: str, sink_for: Any, mode: str
) -> None:
    sink = await sink_for(mode=mode, batch={"max_rows": 100}, dedupe_window=250)
    assert sink.window == 250
    written: list[str] = []
    for start in range(0, 1000, 100):
        batch = [
            FlowFile.create(f"s/{i % 3}", json.dumps({"i": i}).encode())
            for i in range(start, start + 100)
        ]
        assert await sink.write(batch) == []
        written += [ff.id for ff in batch]
        order, recent = await dedupe_state(client, ns)
        assert len(order) == len(recent) <= 250
        assert order == written[-250:]  # the newest, oldest first
        assert recent == set(order)
        # The batch in flight, written again: nothing twice.
        assert await sink.write(batch) == []
        assert await dedupe_state(client, ns) == (order, recent)
    if mode != "publish":
        fetch = stream_ids if mode == "stream" else list_ids
        assert Counter(await fetch(client, ns)) == Counter(written)
    # Only the window bounds it: an id forgotten long ago would be written again.
    assert await sink.write([FlowFile.create("s/0", b"{}")._replace(id=written[0])]) == []
    if mode == "stream":
        assert Counter(await stream_ids(client, ns))[written[0]] == 2


async def test_redelivery_after_a_partial_write_writes_nothing_twice(
    client: Any, ns: str, sink_for: Any
) -> None:
    # One key of the batch holds a string: its rows are refused, the rest written and
    # recorded. Written again (the engine retried after a crash), nothing is added; the
    # refused rows are refused again and never recorded.
    await client.set(f"{ns}:busy", "not a stream")
    sink = await sink_for(mode="stream", batch={"max_rows": 60}, dedupe_window=60)
    batch = [
        FlowFile.create("busy" if i % 7 == 3 else f"s/{i % 2}", json.dumps({"i": i}).encode())
        for i in range(60)
    ]
    refused = {ff.id for ff in batch if ff.topic == "busy"}
    for _ in range(3):
        rejected = await sink.write(batch)
        assert {r.flowfile.id for r in rejected} == refused
        assert Counter(await stream_ids(client, ns)) == Counter(
            ff.id for ff in batch if ff.id not in refused
        )
        order, recent = await dedupe_state(client, ns)
        assert order == [ff.id for ff in batch if ff.id not in refused]
        assert recent == set(order)


async def test_the_recent_ids_take_little_memory(client: Any, ns: str, sink_for: Any) -> None:
    sink = await sink_for(mode="stream", maxlen=10)
    assert sink.window == 10_000  # the default for batch.max_rows 500
    for start in range(0, 12_000, 500):
        batch = [FlowFile.create("s", b"{}") for _ in range(start, start + 500)]
        assert await sink.write(batch) == []
    order, recent = await dedupe_state(client, ns)
    assert len(order) == len(recent) == 10_000
    used = await client.memory_usage(f"{ns}-dedupe:recent", samples=0)
    used += await client.memory_usage(f"{ns}-dedupe:order", samples=0)
    assert used < 10_000 * 150, used  # the window, whatever the rate or the uptime


async def test_without_dedupe_a_redelivered_batch_is_written_twice(
    client: Any, ns: str, sink_for: Any
) -> None:
    # The reason markers exist: the same batch again, without them, is stored again.
    sink = await sink_for(mode="stream", dedupe=False)
    batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(20)]
    assert await sink.write(batch) == []
    assert await sink.write(batch) == []
    assert Counter(await stream_ids(client, ns)) == Counter({ff.id: 2 for ff in batch})
    assert [k async for k in client.scan_iter(f"{ns}-dedupe*")] == []


async def test_stream_is_trimmed_to_about_maxlen(client: Any, ns: str, sink_for: Any) -> None:
    sink = await sink_for(mode="stream", maxlen=100)
    for start in range(0, 1000, 250):
        batch = [
            FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(start, start + 250)
        ]
        assert await sink.write(batch) == []
    length = await client.xlen(f"{ns}:s")
    assert 100 <= length < 300  # MAXLEN ~ trims whole nodes of (by default) 100 entries
    last = (await client.xrevrange(f"{ns}:s", count=1))[0][1]
    assert json.loads(last[b"payload"]) == {"i": 999}


async def test_list_mode_pushes_envelopes_and_trims_exactly(
    client: Any, ns: str, sink_for: Any
) -> None:
    sink = await sink_for(mode="list", maxlen=50)
    batch = [FlowFile.create("s", json.dumps({"i": i}).encode(), {"n": str(i)}) for i in range(119)]
    batch.append(FlowFile.create("s", b"\x01\x02 not json"))
    assert await sink.write(batch) == []
    items = [json.loads(item) for item in await client.lrange(f"{ns}:s", 0, -1)]
    assert len(items) == 50
    assert [item["id"] for item in items] == [ff.id for ff in batch[-50:]]
    assert items[0] == {
        "id": batch[70].id,
        "topic": "s",
        "ts": sink_ts(batch[70]),
        "attributes": {"n": "70"},
        "payload": {"i": 70},
    }
    assert base64.b64decode(items[-1]["payload_base64"]) == b"\x01\x02 not json"
    assert "payload" not in items[-1]


async def test_list_mode_with_the_payload_as_value(client: Any, ns: str, sink_for: Any) -> None:
    sink = await sink_for(mode="list", value="payload", key=f"{ns}:all")
    batch = [FlowFile.create(f"s/{i}", bytes([i, 0, 255])) for i in range(5)]
    assert await sink.write(batch) == []
    assert await sink.write(batch) == []  # redelivered: markers skip it
    assert await client.lrange(f"{ns}:all", 0, -1) == [ff.content for ff in batch]


async def test_hash_mode_keeps_the_latest_value_per_topic(
    client: Any, ns: str, sink_for: Any
) -> None:
    sink = await sink_for(mode="hash", key=f"{ns}:{{gateway}}:{{topic}}")
    batch = [FlowFile.create(f"dev{i % 3}/t", json.dumps({"i": i}).encode()) for i in range(30)]
    assert await sink.write(batch[:20]) == []
    assert await sink.write(batch[20:]) == []
    assert await sink.write(batch[20:]) == []  # redelivered: the same values again
    for dev, latest in (("dev0", batch[27]), ("dev1", batch[28]), ("dev2", batch[29])):
        fields = await client.hgetall(f"{ns}:pi-01:{dev}/t")
        assert fields == {
            b"id": latest.id.encode(),
            b"topic": latest.topic.encode(),
            b"ts": sink_ts(latest).encode(),
            b"attributes": b"{}",
            b"payload": latest.content,
        }
    assert len(await data_keys(client, ns)) == 3


async def test_hash_mode_rejects_the_rows_of_a_key_of_another_type(
    client: Any, ns: str, sink_for: Any
) -> None:
    await client.rpush(f"{ns}:busy", "a list already")
    sink = await sink_for(mode="hash")
    batch = [FlowFile.create(topic, b"{}") for topic in ("ok", "busy", "ok2", "busy")]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[1].id, batch[3].id]
    assert "WRONGTYPE" in rejected[0].reason
    assert await client.hget(f"{ns}:ok", "id") == batch[0].id.encode()


async def test_publish_mode_reaches_a_subscriber_once(client: Any, ns: str, sink_for: Any) -> None:
    pubsub = client.pubsub()
    await pubsub.psubscribe(f"{ns}:*")
    await pubsub.get_message(timeout=1.0)  # the psubscribe confirmation
    sink = await sink_for(mode="publish")
    batch = [FlowFile.create(f"s/{i % 2}", json.dumps({"i": i}).encode()) for i in range(40)]
    assert await sink.write(batch) == []
    assert await sink.write(batch) == []  # redelivered: markers keep it from going out twice
    received: list[tuple[bytes, dict[str, Any]]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=0.3)
        if message is None:
            if len(received) >= len(batch):
                break
            continue
        received.append((message["channel"], json.loads(message["data"])))
    await pubsub.aclose()
    assert [body["id"] for _, body in received] == [ff.id for ff in batch]
    assert received[0] == (f"{ns}:s/0".encode(), received[0][1])
    assert received[0][1]["payload"] == {"i": 0}


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [
        {"mode": "stream", "dedupe": False},
        {"mode": "list", "dedupe": False, "value": "envelope"},
        {"mode": "hash"},
    ],
    ids=["stream-plain", "list-plain", "hash"],
)
async def test_out_of_memory_part_way_is_retried_not_dead_lettered(
    redis_factory: Any, ns: str, keys: dict[str, Any]
) -> None:
    # Redis fills up in the middle of a pipelined batch: redis-py hands back the rows after
    # that point as OutOfMemoryError with the "OOM" code cut off, so they read as refused for
    # good and went to the dead letters; a full Redis is retried, like the batch as a whole.
    server = redis_factory()
    admin = aioredis.Redis.from_url(server.url)
    sink = make_sink(server.url, key=f"{ns}:{{topic}}", dedupe_prefix=f"{ns}-dedupe", **keys)
    await sink.connect()
    try:
        batch = [FlowFile.create(f"s/{i}", json.dumps({"i": i}).encode()) for i in range(300)]
        assert await sink.write(batch[:3]) == []
        used = (await admin.info("memory"))["used_memory"]
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", str(used + 4000))
        with pytest.raises(RetryableError, match="maxmemory"):
            await sink.write(batch)
        await admin.config_set("maxmemory", "0")
        assert await write_until_delivered(sink, batch) == []
        found = set()
        for key in await data_keys(admin, ns):
            kind = await admin.type(key)
            if kind == b"stream":
                found |= {f[b"id"].decode() for _, f in await admin.xrange(key)}
            elif kind == b"list":
                found |= {json.loads(v)["id"] for v in await admin.lrange(key, 0, -1)}
            else:
                found.add((await admin.hget(key, "id")).decode())
        assert found == {ff.id for ff in batch}  # at least once: repeats are allowed here
    finally:
        await sink.close()
        await admin.aclose()


@pytest.mark.parametrize(
    ("keys", "ids_in"),
    [
        ({"mode": "stream", "dedupe": False}, stream_ids),
        ({"mode": "list", "dedupe": False, "value": "envelope"}, list_ids),
    ],
    ids=["stream-plain", "list-plain"],
)
async def test_out_of_memory_part_way_retries_only_the_rest(
    redis_factory: Any, ns: str, keys: dict[str, Any], ids_in: Callable[..., Any]
) -> None:
    # A pipeline is no transaction: the rows before the OOM are in. Sent whole again, each
    # try stored them once more (and with MAXLEN ~ / LTRIM the copies trimmed real entries).
    server = redis_factory()
    admin = aioredis.Redis.from_url(server.url)
    sink = make_sink(server.url, key=f"{ns}:{{topic}}", dedupe_prefix=f"{ns}-dedupe", **keys)
    await sink.connect()
    try:
        first = [FlowFile.create(f"s/{i}", b"{}") for i in range(3)]  # the keys exist
        assert await sink.write(first) == []
        # 2 kB a row: room for about 60 of them besides what the pipeline's bytes take
        pad = "x" * 2000
        batch = [
            FlowFile.create(f"s/{i % 3}", json.dumps({"i": i, "pad": pad}).encode())
            for i in range(300)
        ]
        used = (await admin.info("memory"))["used_memory"]
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", str(used + 200_000))
        with pytest.raises(RetryableError, match="maxmemory"):
            await sink.write(batch)
        assert 3 < len(await ids_in(admin, ns)) < 303  # part way: some of the batch is in
        await admin.config_set("maxmemory", "0")
        assert await write_until_delivered(sink, batch) == []
        found = Counter(await ids_in(admin, ns))
        assert found == Counter(ff.id for ff in first + batch)  # each once
    finally:
        await sink.close()
        await admin.aclose()


async def test_out_of_memory_is_retryable_and_nothing_is_lost(redis_factory: Any, ns: str) -> None:
    server = redis_factory()
    admin = aioredis.Redis.from_url(server.url)
    sink = make_sink(server.url, mode="stream", key=f"{ns}:{{topic}}", dedupe_prefix=f"{ns}-dedupe")
    await sink.connect()
    try:
        batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(100)]
        assert await sink.write(batch[:30]) == []
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")
        with pytest.raises(RetryableError, match="maxmemory"):
            await sink.write(batch)
        await admin.config_set("maxmemory", "0")
        assert await write_until_delivered(sink, batch) == []
        assert Counter(await stream_ids(admin, ns)) == Counter(ff.id for ff in batch)
    finally:
        await sink.close()
        await admin.aclose()


async def test_a_killed_server_is_retryable_and_the_batch_arrives_once(
    redis: Any, client: Any, ns: str, sink_for: Any
) -> None:
    sink = await sink_for(mode="stream")
    batch = [FlowFile.create(f"s/{i % 3}", json.dumps({"i": i}).encode()) for i in range(300)]
    assert await sink.write(batch[:150]) == []
    await asyncio.sleep(1.2)  # the AOF is written every second (appendfsync no: OS buffers)
    redis.kill()
    try:
        with pytest.raises(RetryableError, match=r"127\.0\.0\.1"):
            await sink.write(batch)
    finally:
        redis.start()
    assert await write_until_delivered(sink, batch) == []
    conn = aioredis.Redis.from_url(redis.url)
    try:
        assert Counter(await stream_ids(conn, ns)) == Counter(ff.id for ff in batch)
    finally:
        await conn.aclose()


@pytest.mark.parametrize("cluster", [False, True])
async def test_no_server_at_connect_is_retryable(cluster: bool) -> None:
    sink = make_sink(
        f"redis://:s3cret-pw@127.0.0.1:{servers.free_port()}/0",
        connect_timeout="2s",
        cluster=cluster,
    )
    with pytest.raises(RetryableError) as caught:
        await sink.connect()
    assert "127.0.0.1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()
    await sink.close()


@pytest.mark.parametrize("key", ["ca_file", "cert_file"])
async def test_tls_files_that_cannot_be_read_are_permanent_at_connect(
    tmp_path: Any, key: str
) -> None:
    # Before: retried forever as "Error 2 connecting to 127.0.0.1:PORT. No such file".
    missing = str(tmp_path / "missing.pem")
    files = {"cert_file": missing, "key_file": missing} if key == "cert_file" else {key: missing}
    sink = make_sink(f"rediss://:s3cret-pw@127.0.0.1:{servers.free_port()}/0", **files)
    with pytest.raises(PermanentError) as caught:
        await sink.connect()
    assert f"{key} {missing} cannot be read" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()


async def test_a_database_number_the_server_does_not_have_is_permanent_at_connect(
    redis: Any,
) -> None:
    # Before: retried forever ("DB index is out of range").
    sink = make_sink(redis.url.rsplit("/", 1)[0] + "/99")
    with pytest.raises(PermanentError, match="DB index is out of range"):
        await sink.connect()
    await sink.close()


async def test_a_wrong_password_is_permanent_at_connect_and_retried_while_running(
    redis_factory: Any, ns: str
) -> None:
    server = redis_factory(password="s3cret-pw")
    wrong = make_sink(f"redis://:wrong-pw@{server.host}:{server.port}/0")
    with pytest.raises(PermanentError, match="invalid username-password") as caught:
        await wrong.connect()
    assert "wrong-pw" not in str(caught.value)
    await wrong.close()

    sink = make_sink(server.url, key=f"{ns}:{{topic}}", dedupe_prefix=f"{ns}-dedupe")
    admin = aioredis.Redis.from_url(server.url)
    try:
        await sink.connect()
        batch = [FlowFile.create("s", b"{}")]
        assert await sink.write(batch) == []
        # The password changes under a running sink, and its connection drops: the
        # operator is at work, so the sink retries rather than giving up.
        await admin.config_set("requirepass", "new-pw")
        await admin.client_kill_filter(skipme=True)
        with pytest.raises(RetryableError):
            await sink.write(batch)
        with pytest.raises(RetryableError, match="check username and password"):
            await sink.write(batch)
    finally:
        await sink.close()
        await admin.aclose()


async def test_an_acl_user_without_a_permission_it_needs_is_permanent(
    redis_factory: Any, ns: str
) -> None:
    server = redis_factory(password="s3cret-pw")
    admin = aioredis.Redis.from_url(server.url)
    try:
        await admin.acl_setuser(
            "reader", enabled=True, passwords=["+r-pw"], keys=["*"], commands=["+@all", "-script"]
        )
    finally:
        await admin.aclose()
    sink = make_sink(f"redis://reader:r-pw@{server.host}:{server.port}/0", key=f"{ns}:{{topic}}")
    with pytest.raises(PermanentError, match="grant the ACL user"):
        await sink.connect()
    await sink.close()


@pytest.mark.parametrize("dedupe", [True, False], ids=["script", "pipeline"])
async def test_an_acl_user_that_may_not_run_the_modes_command_is_retried_not_dead_lettered(
    redis: Any, client: Any, ns: str, dedupe: bool
) -> None:
    # Connecting needs no XADD: the refusal comes with each row, and is no fault of the row.
    await client.acl_setuser(
        ns, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-xadd"]
    )
    url = redis.url.replace("redis://", f"redis://{ns}:pw@")
    sink = make_sink(url, key=f"{ns}:{{topic}}", dedupe=dedupe)
    try:
        await sink.connect()
        with pytest.raises(RetryableError, match="grant the ACL user the permission"):
            await sink.write([FlowFile.create("a", b"1"), FlowFile.create("b", b"2")])
    finally:
        await sink.close()
        await client.acl_deluser(ns)
    assert await data_keys(client, ns) == []


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("no permissions to access one of the keys used as arguments", True),  # 7.0
        ("No permissions to access a key", True),  # 7.2 and Valkey
        ("ACL failure in script: No permissions to access a channel", True),
        ("User gw has no permissions to run the 'xadd' command", False),
        ("NOPERM User gw has No permissions to run the 'evalsha' command", False),
    ],
)
def test_acl_refusals_are_told_apart_in_every_versions_wording(text: str, rows: bool) -> None:
    # The local server is 7.0; 7.2 and Valkey capitalise "No permissions".
    assert _acl_denial(text)
    assert make_sink("redis://127.0.0.1:1", key="edge:{topic}")._row_denial(text) is rows
    assert not make_sink("redis://127.0.0.1:1", key="edge:all")._row_denial(text)


@pytest.mark.parametrize("dedupe", [True, False], ids=["script", "pipeline"])
async def test_an_acl_user_that_may_not_write_a_rows_key_dead_letters_that_row(
    redis: Any, client: Any, ns: str, dedupe: bool
) -> None:
    # The key comes from the row's topic: the refusal is the row's, and retrying the batch
    # would stall the sink (and, without dedupe, store the other rows again each time).
    await client.acl_setuser(
        ns,
        enabled=True,
        passwords=["+pw"],
        keys=[f"{ns}:ok*", f"{ns}-dedupe*"],
        channels=["*"],
        commands=["+@all"],
    )
    url = redis.url.replace("redis://", f"redis://{ns}:pw@")
    sink = make_sink(url, key=f"{ns}:{{topic}}", dedupe=dedupe, dedupe_prefix=f"{ns}-dedupe")
    batch = [FlowFile.create("ok1", b"1"), FlowFile.create("other", b"2")]
    # Many keys, half of them refused: still one round trip after the refused script call
    # (the server reads each round trip's commands at once; INFO is one read too).
    more = [FlowFile.create(f"{'ok' if i % 2 else 'no'}-{i}", b"3") for i in range(40)]
    try:
        await sink.connect()
        rejected = await sink.write(batch)
        reads = (await client.info("stats"))["total_reads_processed"]
        rejected_more = await sink.write(more)
        reads = (await client.info("stats"))["total_reads_processed"] - reads
    finally:
        await sink.close()
        await client.acl_deluser(ns)
    assert [r.flowfile.id for r in rejected] == [batch[1].id]
    assert "permission" in rejected[0].reason
    assert await client.xlen(f"{ns}:ok1") == 1
    assert [r.flowfile.id for r in rejected_more] == [ff.id for ff in more[::2]]
    assert reads <= (3 if dedupe else 2)
    assert len(await data_keys(client, ns)) == 21

    if dedupe:  # the dedupe keys refused: every row would be, so the batch is retried
        await client.acl_setuser(
            ns, enabled=True, passwords=["+pw"], keys=[f"{ns}:*"], commands=["+@all"]
        )
        sink = make_sink(url, key=f"{ns}:{{topic}}", dedupe_prefix=f"{ns}-dedupe")
        try:
            await sink.connect()
            with pytest.raises(RetryableError, match="grant the ACL user the permission"):
                await sink.write(batch)
        finally:
            await sink.close()
            await client.acl_deluser(ns)
        assert await client.xlen(f"{ns}:ok1") == 1


async def test_publish_with_dedupe_needs_no_key_permission_on_the_channels(
    redis: Any, client: Any, ns: str
) -> None:
    # Pub/sub ACL: the channels (&) and the dedupe keys (~), not the channels as keys. A
    # channel the user may not publish to comes from the row's topic: that row alone goes
    # to the dead letters.
    await client.acl_setuser(
        ns,
        enabled=True,
        passwords=["+pw"],
        keys=[f"{ns}-dedupe*"],
        channels=[f"{ns}:ok*"],
        commands=["+@all"],
    )
    pubsub = client.pubsub()
    await pubsub.psubscribe(f"{ns}:*")
    await pubsub.get_message(timeout=1.0)  # the psubscribe confirmation
    url = redis.url.replace("redis://", f"redis://{ns}:pw@")
    sink = make_sink(url, key=f"{ns}:{{topic}}", mode="publish", dedupe_prefix=f"{ns}-dedupe")
    batch = [FlowFile.create("ok1", b"1"), FlowFile.create("other", b"2")]
    try:
        await sink.connect()
        rejected = await sink.write(batch)
        message = await pubsub.get_message(timeout=1.0)
    finally:
        await sink.close()
        await client.acl_deluser(ns)
        await pubsub.aclose()
    assert [r.flowfile.id for r in rejected] == [batch[1].id]
    assert "channel" in rejected[0].reason
    assert message is not None
    assert json.loads(message["data"])["id"] == batch[0].id


@pytest.mark.parametrize(
    ("mode", "dedupe"),
    [("stream", True), ("stream", False), ("hash", True), ("publish", True), ("publish", False)],
)
async def test_a_key_without_the_topic_the_acl_user_may_not_write_is_retried(
    redis: Any, client: Any, ns: str, mode: str, dedupe: bool
) -> None:
    # One key (or channel) for every row: the refusal is the ACL user's, not the rows'.
    # Dead-lettering would send the whole stream to the dead letters.
    await client.acl_setuser(
        ns,
        enabled=True,
        passwords=["+pw"],
        keys=[f"{ns}-dedupe*"],
        channels=[f"{ns}-dedupe*"],
        commands=["+@all"],
    )
    url = redis.url.replace("redis://", f"redis://{ns}:pw@")
    sink = make_sink(url, key=f"{ns}:all", mode=mode, dedupe=dedupe, dedupe_prefix=f"{ns}-dedupe")
    try:
        await sink.connect()
        with pytest.raises(RetryableError, match="grant the ACL user the permission"):
            await sink.write([FlowFile.create("a", b"1"), FlowFile.create("b", b"2")])
    finally:
        await sink.close()
        await client.acl_deluser(ns)
    assert await data_keys(client, ns) == []


async def test_cluster_true_for_a_plain_server_is_permanent(redis: Any) -> None:
    sink = make_sink(redis.url, cluster=True)
    with pytest.raises(PermanentError, match="not a Redis Cluster node"):
        await sink.connect()
    await sink.close()


async def test_acl_user_and_password(
    redis_factory: Any, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = redis_factory(username="gateway", password="s3cret-pw")
    plain_url = f"redis://{server.host}:{server.port}/0"
    for wrong in (
        make_sink(plain_url, username="gateway", password="wrong-pw"),
        make_sink(plain_url),  # no user and password at all
    ):
        with pytest.raises(PermanentError, match="check username and password") as caught:
            await wrong.connect()
        assert "wrong-pw" not in str(caught.value)
        await wrong.close()

    for sink in (
        make_sink(plain_url, username="gateway", password="s3cret-pw", key=f"{ns}:{{topic}}"),
        make_sink(server.url, key=f"{ns}:{{topic}}"),  # user and password in the URL
    ):
        await sink.connect()
        ff = FlowFile.create("s", b"{}")
        assert await sink.write([ff]) == []
        await sink.close()
    assert "s3cret-pw" not in caplog.text
    assert f"{server.host}:{server.port}" in caplog.text


# --- TLS ----------------------------------------------------------------------------------


class TlsRedis(servers.Redis):
    """Redis on a TLS port only, requiring a client certificate from the test PKI."""

    def __init__(self, workspace: servers.Workspace) -> None:
        super().__init__(workspace)
        self.tls = servers.make_pki(self.dir / "tls")

    @property
    def url(self) -> str:
        return f"rediss://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        args = super().command()
        args[args.index("--port") + 1] = "0"
        return [
            *args,
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.server_cert_file),
            "--tls-key-file", str(self.tls.server_key_file),
            "--tls-ca-cert-file", str(self.tls.ca_file),
            "--tls-auth-clients", "yes",
        ]  # fmt: skip

    def ready(self) -> bool:
        return servers._port_open(self.port)


@pytest.fixture
def tls_redis(server_workspace: servers.Workspace) -> Iterator[TlsRedis]:
    try:
        server = server_workspace._started(TlsRedis(server_workspace))
    except servers.ServerError as err:
        pytest.fail(str(err), pytrace=False)
    yield server
    server_workspace.discard(server)


async def test_tls_with_a_client_certificate(tls_redis: TlsRedis, ns: str) -> None:
    tls = tls_redis.tls
    sink = make_sink(
        tls_redis.url,
        key=f"{ns}:{{topic}}",
        ca_file=str(tls.ca_file),
        cert_file=str(tls.cert_file),
        key_file=str(tls.key_file),
    )
    await sink.connect()
    batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(10)]
    assert await sink.write(batch) == []
    await sink.close()

    conn = aioredis.Redis.from_url(
        tls_redis.url,
        ssl_ca_certs=str(tls.ca_file),
        ssl_certfile=str(tls.cert_file),
        ssl_keyfile=str(tls.key_file),
    )
    try:
        assert await stream_ids(conn, ns) == [ff.id for ff in batch]
    finally:
        await conn.aclose()


async def test_tls_certificates_refused_either_side_are_permanent(
    tls_redis: TlsRedis, tmp_path: Any
) -> None:
    tls = tls_redis.tls
    # Without a client certificate the server refuses us. With TLS 1.3 its alert races
    # with our first command, so try a few times: it must be classified every time.
    for _ in range(5):
        anonymous = make_sink(tls_redis.url, ca_file=str(tls.ca_file))
        with pytest.raises(PermanentError, match="refused our TLS client certificate"):
            await anonymous.connect()
        await anonymous.close()
    # A server certificate signed by a CA we were not told to trust.
    other = servers.make_pki(tmp_path / "other")
    untrusting = make_sink(
        tls_redis.url,
        ca_file=str(other.ca_file),
        cert_file=str(tls.cert_file),
        key_file=str(tls.key_file),
    )
    with pytest.raises(PermanentError, match=r"certificate is not trusted.*check ca_file"):
        await untrusting.connect()
    await untrusting.close()


# --- Redis Cluster ------------------------------------------------------------------------


def _free_port_below(limit: int) -> int:
    """A free loopback port below `limit` (Redis Cluster refuses client ports over 55535)."""
    for _ in range(200):
        port = random.randrange(20000, limit)
        with socket.socket() as sock:
            try:
                sock.bind((servers.HOST, port))
            except OSError:
                continue
            return port
    raise servers.ServerError(f"no free port below {limit}")


class ClusterNode(servers.Redis):
    def __init__(self, workspace: servers.Workspace) -> None:
        super().__init__(workspace)
        self.port = _free_port_below(55535)
        self.bus_port = servers.free_port()

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", str(self.dir / "nodes.conf"),
            "--cluster-node-timeout", "5000",
        ]  # fmt: skip


@pytest.fixture(scope="module")
def redis_cluster(server_workspace: servers.Workspace) -> Iterator[list[ClusterNode]]:
    """Three masters, no replicas, every slot covered."""
    nodes: list[ClusterNode] = []
    try:
        for _ in range(3):
            nodes.append(server_workspace._started(ClusterNode(server_workspace)))
        addresses = [f"{n.host}:{n.port}" for n in nodes]
        subprocess.run(
            [servers.require("redis-cli"), "--cluster", "create", *addresses,
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            states = [
                subprocess.run(
                    [servers.require("redis-cli"), "-p", str(n.port), "cluster", "info"],
                    capture_output=True, text=True, timeout=10, check=True,
                ).stdout
                for n in nodes
            ]  # fmt: skip
            if all("cluster_state:ok" in s for s in states):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the Redis Cluster did not become ok: {states}", pytrace=False)
            time.sleep(0.2)
    except (servers.ServerError, subprocess.SubprocessError) as err:
        for node in nodes:
            server_workspace.discard(node)
        pytest.fail(f"cannot start a Redis Cluster: {err}", pytrace=False)
    yield nodes
    for node in nodes:
        server_workspace.discard(node)


async def cluster_dedupe_state(conn: Any, sink: RedisSink, slot: int) -> tuple[list[str], set[str]]:
    recent, order = sink.dedupe_keys(slot)
    # Both in the slot they dedupe, so one script touches one slot.
    assert conn.keyslot(recent) == conn.keyslot(order) == slot
    return (
        [i.decode() for i in await conn.lrange(order, 0, -1)],
        {i.decode() for i in await conn.smembers(recent)},
    )


@pytest.mark.parametrize("mode", ["stream", "list"])
async def test_cluster_writes_every_slot_once(
    redis_cluster: list[ClusterNode], ns: str, mode: str
) -> None:
    url = f"redis://{redis_cluster[1].host}:{redis_cluster[1].port}/0"
    sink = make_sink(
        url, cluster=True, mode=mode, key=f"{ns}:{{topic}}", dedupe_prefix=f"{ns}-dedupe"
    )
    await sink.connect()
    topics = [f"dev{i}/t" for i in range(24)]  # spread over the three nodes' slots
    batch = [FlowFile.create(topics[i % 24], json.dumps({"i": i}).encode()) for i in range(480)]
    try:
        assert await sink.write(batch[:200]) == []
        assert await sink.write(batch) == []  # redelivered in part
    finally:
        await sink.close()
    conn = RedisCluster.from_url(url)
    try:
        found: list[str] = []
        for topic in topics:
            key = f"{ns}:{topic}"
            if mode == "stream":
                found += [f[b"id"].decode() for _, f in await conn.xrange(key)]
            else:
                found += [json.loads(v)["id"] for v in await conn.lrange(key, 0, -1)]
        nodes_used = {conn.get_node_from_key(f"{ns}:{t}").name for t in topics}
        assert len(nodes_used) == 3
        assert Counter(found) == Counter(ff.id for ff in batch)
        # Each slot remembers the ids written to its keys, in the order written.
        by_slot: dict[int, list[str]] = {}
        for ff in batch:
            by_slot.setdefault(conn.keyslot(f"{ns}:{ff.topic}"), []).append(ff.id)
        assert len(by_slot) > 10
        for slot, slot_ids in by_slot.items():
            assert await cluster_dedupe_state(conn, sink, slot) == (slot_ids, set(slot_ids))
    finally:
        await conn.aclose()


async def test_cluster_keys_with_one_hash_tag_share_one_window(
    redis_cluster: list[ClusterNode], ns: str
) -> None:
    url = f"redis://{redis_cluster[2].host}:{redis_cluster[2].port}/0"
    sink = make_sink(
        url,
        cluster=True,
        key=f"{{{{{ns}}}}}:{{topic}}",
        dedupe_prefix=f"{ns}-dedupe",
        batch={"max_rows": 100},
        dedupe_window=150,
    )
    await sink.connect()
    batches = [
        [FlowFile.create(f"dev{i % 9}/t", json.dumps({"i": i}).encode()) for i in range(n, n + 100)]
        for n in range(0, 400, 100)
    ]
    try:
        for batch in batches:
            assert await sink.write(batch) == []
            assert await sink.write(batch) == []
    finally:
        await sink.close()
    conn = RedisCluster.from_url(url)
    try:
        slot = conn.keyslot(f"{{{ns}}}")
        written = [ff.id for batch in batches for ff in batch]
        assert await cluster_dedupe_state(conn, sink, slot) == (written[-150:], set(written[-150:]))
        found = [
            f[b"id"].decode() for i in range(9) for _, f in await conn.xrange(f"{{{ns}}}:dev{i}/t")
        ]
        assert Counter(found) == Counter(written)
    finally:
        await conn.aclose()


def test_slot_tags_hash_to_their_slot() -> None:
    for slot in (0, 1, 866, 5461, 10923, 16383):
        tag = slot_tag(slot)
        assert key_slot(f"edge:cache:{{{tag}}}:recent".encode()) == slot
        assert slot_tag(slot) == tag  # the same every time


async def test_cluster_hash_mode(redis_cluster: list[ClusterNode], ns: str) -> None:
    url = f"redis://{redis_cluster[0].host}:{redis_cluster[0].port}/0"
    sink = make_sink(url, cluster=True, mode="hash", key=f"{ns}:{{topic}}")
    await sink.connect()
    batch = [FlowFile.create(f"dev{i % 9}", b"{}") for i in range(90)]
    try:
        assert await sink.write(batch) == []
    finally:
        await sink.close()
    conn = RedisCluster.from_url(url)
    try:
        for i in range(9):
            assert await conn.hget(f"{ns}:dev{i}", "id") == batch[81 + i].id.encode()
    finally:
        await conn.aclose()


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"url": "http://cache:6379"}, "url: 'http://cache:6379' must start with redis://"),
        ({"url": "tcp://u:s3cret@cache"}, "must start with redis://"),
        # redis-py reads a password from the query too
        ({"url": "tcp://cache/0?password=s3cret"}, "'tcp://cache/0' must start with redis://"),
        ({"url": "redis://cache", "ca_file": "/ca.pem"}, "ca_file: needs TLS"),
        ({"url": "rediss://cache", "cert_file": "/c.pem"}, "cert_file and key_file go together"),
        ({"url": "redis://cache", "key": "edge:{device}"}, "unknown placeholder {device}"),
        ({"url": "redis://cache", "key": "edge:{topic"}, "has a lone '{'"),
        # passed, and the sink crashed at its start (KeyError, IndexError) or padded the key
        ({"url": "redis://cache", "key": "edge:{topic!r}"}, "{topic!r} is no placeholder"),
        ({"url": "redis://cache", "key": "edge:{}"}, "unknown placeholder {}"),
        ({"url": "redis://cache", "key": "e:{gateway:>9}"}, "{gateway:>9} is no placeholder"),
        ({"url": "redis://cache", "mode": "set"}, "'set' is not one of"),
        ({"url": "redis://cache", "maxlen": -1}, "maxlen: must be 0"),
        # Redis would refuse every entry ("value is not an integer or out of range")
        ({"url": "redis://cache", "maxlen": 10**20}, "maxlen: must be 0 (keep everything)"),
        ({"url": "redis://cache", "dedupe_prefix": "{x}"}, "without braces"),
        (
            {"url": "redis://cache", "batch": {"max_rows": 1000}, "dedupe_window": 999},
            "dedupe_window: must be at least batch.max_rows (1000)",
        ),
        # taken and ignored: hash mode and dedupe: false keep no recent ids
        (
            {"url": "redis://cache", "mode": "hash", "dedupe_window": 20000},
            "dedupe_window: dedupe_window applies only with dedupe; mode: hash writes no",
        ),
        (
            {"url": "redis://cache", "mode": "hash", "dedupe_prefix": "edge:latest"},
            "dedupe_prefix: dedupe_prefix applies only with dedupe; mode: hash",
        ),
        (
            {"url": "redis://cache", "dedupe": False, "dedupe_window": 20000},
            "dedupe_window: dedupe_window applies only with dedupe; dedupe is false",
        ),
        (
            {"url": "redis://cache", "mode": "list", "dedupe": False, "dedupe_prefix": "p"},
            "dedupe_prefix: dedupe_prefix applies only with dedupe; dedupe is false",
        ),
    ],
)
def test_config_problems_are_reported(keys: dict[str, Any], message: str) -> None:
    _, problems = config_problems(**keys)
    assert any(message in p for p in problems), problems
    assert not any("s3cret" in p for p in problems)


def test_key_templates() -> None:
    sink = make_sink("redis://cache", key="{{edge}}:{gateway}:{sink}:{topic}/x")
    assert sink._key("a/b") == "{edge}:pi-01:cache:a/b/x"
    assert make_sink("redis://cache", key="fixed")._key("a/b") == "fixed"
    # A literal {topic} in the key (doubled braces) is text, not the placeholder.
    assert make_sink("redis://cache", key="x:{{topic}}:{topic}")._key("a") == "x:{topic}:a"


@pytest.mark.parametrize("mode", ["stream", "list", "hash"])
async def test_a_topic_that_cannot_name_a_key_is_refused_alone(
    client: Any, ns: str, sink_for: Any, mode: str
) -> None:
    sink = await sink_for(mode=mode, key=f"{ns}:{{topic}}")
    batch = [
        FlowFile.create("s", b"{}"),
        FlowFile.create("s\x00x", b"{}"),
        FlowFile.create("s/\udc80", b"{}"),  # a lone surrogate: no UTF-8 for it
        FlowFile.create("s/\u00e9", b"1"),
    ]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[1].id, batch[2].id]
    assert "NUL" in rejected[0].reason and "Unicode" in rejected[1].reason
    assert await sink.write(batch[1:3]) == rejected
    assert await data_keys(client, ns) == [f"{ns}:s".encode(), f"{ns}:s/\u00e9".encode()]


async def test_cluster_a_refused_rows_key_dead_letters_that_row(
    redis_cluster: list[ClusterNode], ns: str
) -> None:
    # One slot (a hash tag) for many keys, some refused: the per-key calls of that slot's
    # rows go a few at a time (a cluster pipeline takes no EVALSHA).
    for node in redis_cluster:
        conn = aioredis.Redis(host=node.host, port=node.port)
        try:
            await conn.acl_setuser(
                ns,
                enabled=True,
                passwords=["+pw"],
                keys=[f"{{{ns}}}:ok*", f"{ns}-dedupe*"],
                commands=["+@all"],
            )
        finally:
            await conn.aclose()
    url = f"redis://{ns}:pw@{redis_cluster[1].host}:{redis_cluster[1].port}/0"
    sink = make_sink(url, cluster=True, key=f"{{{{{ns}}}}}:{{topic}}", dedupe_prefix=f"{ns}-dedupe")
    batch = [FlowFile.create(f"{'ok' if i % 2 else 'no'}-{i}", b"1") for i in range(10)]
    try:
        await sink.connect()
        rejected = await sink.write(batch)
    finally:
        await sink.close()
    assert [r.flowfile.id for r in rejected] == [ff.id for ff in batch[::2]]
    conn = RedisCluster.from_url(f"redis://{redis_cluster[1].host}:{redis_cluster[1].port}/0")
    try:
        assert [await conn.xlen(f"{{{ns}}}:{ff.topic}") for ff in batch] == [0, 1] * 5
    finally:
        await conn.aclose()

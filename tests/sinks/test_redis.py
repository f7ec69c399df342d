"""The redis sink against a real Redis: the sink contract per mode, then what is its own
(modes, markers, trimming, auth, TLS with client certificates, a Redis Cluster)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gateway.config.schema import Problems, build_component
from gateway.core.component import Context
from gateway.core.errors import RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks.redis import RedisSink, RedisSinkConfig

try:  # `tests` is not a package today; this also works if it becomes one.
    from tests import servers
    from tests.sinks.contract import SinkContract, write_until_delivered
except ImportError:
    import servers  # type: ignore[no-redef]
    from contract import SinkContract, write_until_delivered  # type: ignore[no-redef]


def config_problems(**keys: Any) -> tuple[Any, list[str]]:
    problems = Problems()
    config = build_component("sink", {"type": "redis", **keys}, ("sinks", "cache"), problems)
    return config, [f"{'.'.join(map(str, path))}: {message}" for path, message in problems.items]


def make_sink(url: str, **keys: Any) -> RedisSink:
    config, problems = config_problems(url=url, **keys)
    assert problems == []
    assert isinstance(config, RedisSinkConfig)
    return RedisSink(config, Context(name="cache", kind="sink", gateway_id="pi-01"))


@pytest.fixture
def ns() -> str:
    """A key namespace of this test's own: the shared server keeps every test's keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client(redis: Any) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the shared server, to look at what the sink wrote."""
    conn = aioredis.Redis.from_url(redis.url)
    yield conn
    await conn.aclose()


@pytest.fixture
async def sink_for(redis: Any, ns: str) -> AsyncIterator[Callable[..., Any]]:
    """`await sink_for(**keys)`: a connected sink on the shared server, keys under `ns`."""
    made: list[RedisSink] = []

    async def make(**keys: Any) -> RedisSink:
        keys = {"key": f"{ns}:{{topic}}", "dedupe_prefix": ns, **keys}
        sink = make_sink(keys.pop("url", redis.url), **keys)
        made.append(sink)
        await sink.connect()
        return sink

    yield make
    for sink in made:
        await sink.close()


async def data_keys(conn: Any, ns: str) -> list[bytes]:
    """The keys the sink wrote data to (not its markers), sorted."""
    keys = [k async for k in conn.scan_iter(f"{ns}:*", count=1000)]
    return sorted(k for k in keys if b":seen:" not in k)


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
            sink = make_sink(redis.url, mode=self.mode, key=f"{ns}:{{topic}}", dedupe_prefix=ns)
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
        @contextlib.asynccontextmanager
        async def down() -> AsyncIterator[None]:
            redis.stop()
            try:
                yield
            finally:
                redis.start()

        return down


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


async def test_a_restarted_sink_skips_what_it_wrote_and_markers_expire(
    client: Any, ns: str, sink_for: Any
) -> None:
    first = await sink_for(mode="stream", dedupe_ttl="1h")
    batch = [FlowFile.create(f"s/{i % 4}", json.dumps({"i": i}).encode()) for i in range(200)]
    assert await first.write(batch[:120]) == []
    await first.close()  # as if the gateway died before moving its cursor
    second = await sink_for(mode="stream", dedupe_ttl="1h")
    assert await second.write(batch) == []
    assert Counter(await stream_ids(client, ns)) == Counter(ff.id for ff in batch)
    ttl = await client.ttl(f"{ns}:seen:{batch[0].id}")
    assert 3500 < ttl <= 3600


async def test_without_dedupe_a_redelivered_batch_is_written_twice(
    client: Any, ns: str, sink_for: Any
) -> None:
    # The reason markers exist: the same batch again, without them, is stored again.
    sink = await sink_for(mode="stream", dedupe=False)
    batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(20)]
    assert await sink.write(batch) == []
    assert await sink.write(batch) == []
    assert Counter(await stream_ids(client, ns)) == Counter({ff.id: 2 for ff in batch})
    assert [k async for k in client.scan_iter(f"{ns}:seen:*")] == []


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


async def test_out_of_memory_is_retryable_and_nothing_is_lost(redis_factory: Any, ns: str) -> None:
    server = redis_factory()
    admin = aioredis.Redis.from_url(server.url)
    sink = make_sink(server.url, mode="stream", key=f"{ns}:{{topic}}", dedupe_prefix=ns)
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


async def test_no_server_at_connect_is_retryable() -> None:
    sink = make_sink(f"redis://:s3cret-pw@127.0.0.1:{servers.free_port()}/0", connect_timeout="2s")
    with pytest.raises(RetryableError) as caught:
        await sink.connect()
    assert "127.0.0.1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()
    await sink.close()


async def test_acl_user_and_password(
    redis_factory: Any, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = redis_factory(username="gateway", password="s3cret-pw")
    plain_url = f"redis://{server.host}:{server.port}/0"
    wrong = make_sink(plain_url, username="gateway", password="wrong-pw")
    with pytest.raises(RetryableError) as caught:
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

    # Without a client certificate the server refuses the handshake.
    anonymous = make_sink(tls_redis.url, key=f"{ns}:{{topic}}", ca_file=str(tls.ca_file))
    with pytest.raises(RetryableError):
        await anonymous.connect()
    await anonymous.close()


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


@pytest.mark.parametrize("mode", ["stream", "list"])
async def test_cluster_writes_every_slot_once(
    redis_cluster: list[ClusterNode], ns: str, mode: str
) -> None:
    url = f"redis://{redis_cluster[1].host}:{redis_cluster[1].port}/0"
    sink = make_sink(url, cluster=True, mode=mode, key=f"{ns}:{{topic}}", dedupe_prefix=ns)
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
        slots = set()
        for topic in topics:
            key = f"{ns}:{topic}"
            slots.add(conn.keyslot(key))
            if mode == "stream":
                found += [f[b"id"].decode() for _, f in await conn.xrange(key)]
            else:
                found += [json.loads(v)["id"] for v in await conn.lrange(key, 0, -1)]
            # The markers live in the slot of their key, so one script touches one slot.
            ids = [ff.id for ff in batch if ff.topic == topic][:1]
            marker = f"{ns}:seen:{{{key}}}:{ids[0]}"
            assert conn.keyslot(marker) == conn.keyslot(key)
            assert await conn.exists(marker) == 1
        nodes_used = {conn.get_node_from_key(f"{ns}:{t}").name for t in topics}
        assert len(nodes_used) == 3
        assert Counter(found) == Counter(ff.id for ff in batch)
    finally:
        await conn.aclose()


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
        ({"url": "redis://cache", "ca_file": "/ca.pem"}, "ca_file: needs TLS"),
        ({"url": "rediss://cache", "cert_file": "/c.pem"}, "cert_file and key_file go together"),
        ({"url": "redis://cache", "key": "edge:{device}"}, "unknown placeholder {device}"),
        ({"url": "redis://cache", "key": "edge:{topic"}, "is not a valid template"),
        ({"url": "redis://cache", "mode": "set"}, "'set' is not one of"),
        ({"url": "redis://cache", "maxlen": -1}, "maxlen: must be 0"),
        ({"url": "redis://cache", "dedupe_prefix": "{x}"}, "without braces"),
        ({"url": "redis://cache", "dedupe_ttl": "0s"}, "at least 1s"),
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


async def test_a_topic_with_a_nul_is_refused_alone(client: Any, ns: str, sink_for: Any) -> None:
    sink = await sink_for(mode="stream")
    batch = [
        FlowFile.create("s", b"{}"),
        FlowFile.create("s\x00x", b"{}"),
        FlowFile.create("s", b"1"),
    ]
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[1].id]
    assert await stream_ids(client, ns) == [batch[0].id, batch[2].id]

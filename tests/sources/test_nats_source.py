"""The nats source against the real JetStream cluster: the source contract, an
acknowledgement only after the store's commit (what was read and not committed comes
again, with the same FlowFile ids), and a missing stream (retried; a reload that names
one is rolled back)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api as js_api

from gateway.config.schema import Problems, build_component
from gateway.core.component import Context, Message
from gateway.core.errors import MissingError, RetryableError
from gateway.engine.plan import plan
from gateway.sources.nats import NatsSource, NatsSourceConfig
from tests import servers
from tests.nats_helpers import JS_TIMEOUT
from tests.sinks.contract import unique_name
from tests.sources.contract import SourceContract
from tests.sources.engine_run import config_for, lines, stop, until

pytestmark = pytest.mark.integration


def make_source(urls: list[str], stream: str, **keys: Any) -> NatsSource:
    problems = Problems()
    raw = {"type": "nats", "servers": urls, "stream": stream, "wait": "200ms", **keys}
    config = build_component("source", raw, ("sources", "fleet"), problems)
    assert problems.items == []
    assert isinstance(config, NatsSourceConfig)
    return NatsSource(config, Context(name="fleet", kind="source", gateway_id="pi-01"))


async def publish(urls: list[str], stream: str, count: int, create: bool = True) -> None:
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=JS_TIMEOUT)
        if create:
            await js.add_stream(
                js_api.StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"], num_replicas=1)
            )
        for seq in range(count):
            await js.publish(f"{stream.lower()}.dev{seq % 2}", json.dumps({"seq": seq}).encode())
    finally:
        await nc.close()


async def read_n(source: NatsSource, n: int) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(30):
        while len(got) < n:
            got += await source.read()
    return got


async def test_read_and_not_committed_comes_again_with_the_same_ids(
    nats_cluster: servers.NatsCluster,
) -> None:
    stream = unique_name().upper()
    await publish(nats_cluster.urls, stream, 10)
    first = make_source(nats_cluster.urls, stream, ack_wait="1s", batch=10)
    await first.connect()
    try:
        read = await read_n(first, 10)
    finally:
        await first.close()  # stopped before the commit: nothing acknowledged
    assert [json.loads(m.flowfile.content)["seq"] for m in read] == list(range(10))
    assert {m.flowfile.attributes["nats.delivered"] for m in read} == {"1"}
    assert read[0].flowfile.topic == f"{stream.lower()}/dev0"

    again = make_source(nats_cluster.urls, stream, ack_wait="1s", batch=10)
    await again.connect()
    try:
        redelivered = await read_n(again, 10)  # after ack_wait, JetStream sends them again
        assert [m.flowfile.id for m in redelivered] == [m.flowfile.id for m in read]
        assert {m.flowfile.attributes["nats.delivered"] for m in redelivered} == {"2"}
        assert again.status()["redelivered"] == 10
        for m in redelivered:  # the engine calls these after the store's commit
            m.ack()
    finally:
        await again.close()  # sends the acknowledgements

    last = make_source(nats_cluster.urls, stream, ack_wait="1s", batch=10)
    await last.connect()
    try:
        await asyncio.sleep(1.5)  # past ack_wait: anything unacknowledged would come again
        assert await last.read() == []
    finally:
        await last.close()


async def test_through_the_engine_committed_messages_are_acknowledged(
    nats_cluster: servers.NatsCluster, run_engine: Any, tmp_path: Path
) -> None:
    stream = unique_name().upper()
    await publish(nats_cluster.urls, stream, 20)
    keys = {"type": "nats", "servers": nats_cluster.urls, "stream": stream, "ack_wait": "1s"}
    engine = await run_engine(keys)
    await until(lambda: len(lines(tmp_path)) == 20)
    await stop(engine)
    ids = [line["id"] for line in lines(tmp_path)]
    assert len(set(ids)) == 20
    # The same durable consumer finds nothing left: every committed message was acked.
    engine = await run_engine(keys)
    await asyncio.sleep(1.3)  # past ack_wait
    assert len(lines(tmp_path)) == 20
    await stop(engine)


async def test_a_missing_stream_is_retried_and_a_reload_naming_one_rolled_back(
    nats_cluster: servers.NatsCluster, run_engine: Any, tmp_path: Path
) -> None:
    stream = unique_name().upper()
    source = make_source(nats_cluster.urls, stream)
    with pytest.raises(MissingError, match=f"stream {stream} does not exist"):
        await source.connect()
    await publish(nats_cluster.urls, stream, 3)  # created later: the retry finds it
    await source.connect()
    try:
        assert len(await read_n(source, 3)) == 3
    finally:
        await source.close()

    there = {"type": "nats", "servers": nats_cluster.urls, "stream": stream}
    engine = await run_engine(there)
    old = engine.config
    new = config_for(tmp_path, {**there, "stream": f"{stream}X"})
    failures = await engine.apply(new, plan(old, new))
    assert any(f"stream {stream}X does not exist" in f for f in failures), failures
    await engine.apply(old, plan(new, old), check=False)  # the caller rolls back so
    assert engine.sources["rows"].source.config.stream == stream  # type: ignore[attr-defined]
    await stop(engine)


class NatsProducer:
    """Publishes into the test's stream; a tag is confirmed
    once the consumer's acknowledgement floor reached its last message."""

    def __init__(self, urls: list[str], stream: str, durable: str) -> None:
        self.urls = urls
        self.stream = stream
        self.durable = durable
        self.last: dict[str, int] = {}
        self.nc: Any = None

    async def _js(self) -> Any:
        if self.nc is None:
            self.nc = await nats.connect(servers=self.urls)
        return self.nc.jetstream(timeout=JS_TIMEOUT)

    async def send(self, tag: str, n: int) -> None:
        js = await self._js()
        for i in range(n):
            content = json.dumps({"tag": tag, "seq": i}).encode()
            ack = await js.publish(f"{self.stream.lower()}.{tag}.{i}", content)
            self.last[tag] = ack.seq

    async def confirmed(self, tag: str) -> bool | None:
        js = await self._js()
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            return False
        return bool(info.ack_floor.stream_seq >= self.last[tag])

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


class TestNatsSourceContract(SourceContract):
    """A durable pull consumer on a stream of the test's own."""

    @pytest.fixture
    async def stream(self, nats_cluster: servers.NatsCluster) -> str:
        name = unique_name().upper()
        await publish(nats_cluster.urls, name, 0)  # the stream, empty
        return name

    @pytest.fixture
    def source_keys(self, nats_cluster: servers.NatsCluster, stream: str) -> dict[str, Any]:
        return {
            "type": "nats",
            "servers": nats_cluster.urls,
            "stream": stream,
            "durable": "contract",
            "wait": "100ms",
            "ack_wait": "2s",
            "topic": "fleet/{subject}",
        }

    @pytest.fixture
    def producer(self, nats_cluster: servers.NatsCluster, stream: str) -> NatsProducer:
        return NatsProducer(nats_cluster.urls, stream, "contract")

    @pytest.fixture
    def topic_of(self, stream: str) -> Callable[[str, int], str]:
        return lambda tag, seq: f"fleet/{stream.lower()}/{tag}/{seq}"


async def test_an_idle_stream_reads_empty_without_dropping_the_connection(
    nats_cluster: servers.NatsCluster,
) -> None:
    stream = unique_name().upper()
    await publish(nats_cluster.urls, stream, 0)
    source = make_source(nats_cluster.urls, stream, wait="50ms")
    await source.connect()
    try:
        for _ in range(60):  # each read waits `wait` for nothing: no error, no reconnect
            assert await source.read() == []
    finally:
        await source.close()


async def test_a_changed_subject_ack_wait_or_batch_updates_the_existing_consumer(
    nats_cluster: servers.NatsCluster,
) -> None:
    """The durable consumer outlives a restart or a reload: the source's new keys must reach
    it (nats-py binds to an existing consumer as it is, and the old filter went on)."""
    stream = unique_name().upper()
    await publish(nats_cluster.urls, stream, 10)
    first = make_source(nats_cluster.urls, stream, subject=f"{stream.lower()}.dev0", batch=10)
    await first.connect()
    await first.close()

    second = make_source(
        nats_cluster.urls, stream, subject=f"{stream.lower()}.dev1", batch=20, ack_wait="7s"
    )
    await second.connect()
    try:
        read = await read_n(second, 5)
    finally:
        await second.close()
    assert {m.flowfile.topic for m in read} == {f"{stream.lower()}/dev1"}
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        info = await nc.jetstream(timeout=JS_TIMEOUT).consumer_info(stream, second.durable)
    finally:
        await nc.close()
    assert (info.config.ack_wait, info.config.max_ack_pending) == (7.0, 40)


async def test_what_was_committed_before_a_lost_connection_is_acked_after_it(
    nats_cluster: servers.NatsCluster,
) -> None:
    """The acks of messages committed while the connection was lost went out on that closed
    connection: every read after the reconnect failed ("connection closed"), for ever."""
    stream = unique_name().upper()
    await publish(nats_cluster.urls, stream, 10)
    source = make_source(nats_cluster.urls, stream, batch=5)
    await source.connect()
    try:
        for message in await read_n(source, 5):
            message.ack()  # committed (as the engine does), acked with the next fetch
        await source._nc.close()  # the connection is lost
        with pytest.raises(RetryableError):
            await source.read()
        await source.connect()
        more = await read_n(source, 5)
    finally:
        await source.close()
    assert [m.flowfile.attributes["nats.seq"] for m in more] == [str(s) for s in range(6, 11)]
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        js = nc.jetstream(timeout=JS_TIMEOUT)
        info = await js.consumer_info(stream, source.durable)
        deadline = asyncio.get_running_loop().time() + 30
        while info.ack_floor.stream_seq < 5 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            info = await js.consumer_info(stream, source.durable)
    finally:
        await nc.close()
    assert info.ack_floor.stream_seq == 5  # the first five, committed, are acknowledged


async def test_a_subject_that_is_not_utf8_is_read_escaped_and_the_rest_follows(
    nats_cluster: servers.NatsCluster,
) -> None:
    """Any client may publish one (NATS does not check): nats-py's read loop died on it and
    the source read nothing more, silently."""
    stream = unique_name().upper()
    await publish(nats_cluster.urls, stream, 1)
    host, port = nats_cluster.urls[0].removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    await reader.readline()  # INFO
    subject = f"{stream.lower()}.bad".encode() + b"\xff"
    writer.write(b"CONNECT {}\r\nSUB _INBOX.t 1\r\nPUB " + subject + b" _INBOX.t 1\r\nx\r\n")
    await writer.drain()
    while b'"seq"' not in await reader.readline():  # the stream's answer
        pass
    writer.close()
    await publish(nats_cluster.urls, stream, 1, create=False)
    source = make_source(nats_cluster.urls, stream)
    await source.connect()
    try:
        read = await read_n(source, 3)
    finally:
        await source.close()
    assert [m.flowfile.topic for m in read] == [
        f"{stream.lower()}/dev0",
        f"{stream.lower()}/bad\\xff",
        f"{stream.lower()}/dev0",
    ]


async def test_a_commit_during_a_read_makes_room_for_it_at_once(
    nats_cluster: servers.NatsCluster,
) -> None:
    """JetStream delivers at most 2 x batch unacknowledged: a read while a batch waited for
    its commit and another was in hand fetched nothing and waited out `wait`, the commit's
    acks held back until the next read, so a backlog was read at 2 x batch per `wait`."""
    stream = unique_name().upper()
    await publish(nats_cluster.urls, stream, 30)
    source = make_source(nats_cluster.urls, stream, batch=5, wait="5s")
    await source.connect()
    try:
        first = await read_n(source, 5)
        await read_n(source, 5)  # a second batch in hand: no room for a third
        reading = asyncio.create_task(source.read())
        for _ in range(5):
            await asyncio.sleep(0)  # the read is under way
        assert not reading.done()
        for message in first:  # the engine commits the first batch meanwhile
            assert message.ack is not None
            message.ack()
        async with asyncio.timeout(2.5):  # before: only once `wait` (5 s) ran out, with none
            third = await reading
        assert [m.flowfile.attributes["nats.seq"] for m in third] == [str(n) for n in range(11, 16)]
    finally:
        await source.close()


async def test_a_commit_during_an_idle_fetch_is_acknowledged_within_ack_wait(
    nats_cluster: servers.NatsCluster,
) -> None:
    """The acks of a commit made while a fetch waited went out with the next read: with a
    `wait` as long as `ack_wait`, JetStream had delivered every such message again."""
    stream = unique_name().upper()
    await publish(nats_cluster.urls, stream, 3)
    source = make_source(nats_cluster.urls, stream, wait="3s", ack_wait="1s")
    await source.connect()
    try:
        first = await read_n(source, 3)
        reading = asyncio.create_task(source.read())
        for _ in range(5):
            await asyncio.sleep(0)  # the read is under way
        for message in first:  # the engine commits them meanwhile
            assert message.ack is not None
            message.ack()
        assert await reading == [], "nothing delivered again"
        assert source.status()["pending_acks"] == 0
    finally:
        await source.close()

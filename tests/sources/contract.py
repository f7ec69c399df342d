"""The contract every source keeps, as one suite each source's tests reuse against its real peer.

What it proves, through a real engine and store (tests/sources/engine_run.py: the source
is named `rows`, routed to a JSON Lines file sink at tmp_path/out.jsonl):

- what the peer sends reaches the store as FlowFiles (unique ids, the topic the source
  documents, the content);
- the source acknowledges only after the store commit: while commits fail, the peer
  is told nothing, and once they work again everything arrives and is acknowledged;
- killed before the commit (the engine cancelled with no orderly stop, the source's
  sockets closed as the kernel would), nothing is lost: a new engine on the same store
  gets it all (the broker redelivers, the client sends again, the poll repeats);
- stopped and started again, it resumes: what was sent meanwhile arrives, what was
  stored before is not stored again (unless `at_least_once`);
- `close` is idempotent and quick, and a closed source connects again.

To join, subclass `SourceContract` in a test module (the class name starts with `Test`)
and provide three fixtures:

    source_keys   -> dict: the source's config keys (`type` included), as under
                     `sources.rows`; the same keys for every engine of one test
    producer      -> a `Producer` (below) that sends items through the source's peer
    topic_of      -> callable (tag, seq) -> str: the topic the source gives that item

and set `at_least_once = True` for a source that may store an item again after a restart
(a snapshot poll, a client that sends a request again whose answer it lost). Each case
starts sending once the source is running (connected): a peer may keep nothing for a
source it has never seen (an MQTT broker queues only for a session that exists).

A source whose content wraps the item (OPC UA: {"value": "<the item's JSON text>", ...})
overrides `payload_of(record)` to return the item's dict (None: not an item).

Live values (`live_values = True`, OPC UA): the peer is a server holding each variable's
current value, not a queue of messages, and nobody acknowledges anything to it. What
such a source keeps differs in the two restart cases: the values written while the
gateway was down, or handed over and not committed before a kill, are not kept by the
server; a new subscription reports the current value at once. So after a kill or a stop
only the last item sent (the current value) is sure to arrive, and the value current at
the stop may arrive again (set `at_least_once` too). Everything it has received is
stored while it runs: the first two cases hold unchanged.

A `Producer` has three async methods; each item's JSON content carries {"tag": tag,
"seq": i} (values may arrive as text: a Redis stream entry's fields are text):

    send(tag, n)      hand n items to the peer: publish them, insert them, or for a
                      client that waits for its answer (HTTP) start sending them in the
                      background, retrying until they are confirmed (as a real client
                      does); returns at once
    confirmed(tag)    True once the peer knows that every item of `tag` is stored (every
                      PUBACK, every 200, every XACK), False before; None when the peer
                      cannot tell (a polled API, an MQTT publisher, an OPC UA server): the
                      ack cases then check the data only
    close()           stop what `send` started

    class TestRedisSourceContract(SourceContract):
        @pytest.fixture
        def source_keys(self, redis, key): return {"type": "redis", "url": redis.url, ...}
        @pytest.fixture
        def producer(self, redis, key): return RedisProducer(redis.url, key)
        @pytest.fixture
        def topic_of(self, key): return lambda tag, seq: f"redis/{key}"

Assertions are on what reached the store (out.jsonl) and on what the peer was told.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest

from gateway.config.schema import Problems, build_component
from gateway.core.component import Context, Source
from gateway.engine.pipeline import Engine, stop_task
from gateway.registry import find
from gateway.store.sqlite import StoreError
from tests.sources.engine_run import STOPS, lines, stop, until


class Producer(Protocol):
    async def send(self, tag: str, n: int) -> None: ...

    async def confirmed(self, tag: str) -> bool | None: ...

    async def close(self) -> None: ...


def plain_payload(record: dict[str, Any]) -> Any:
    return record.get("payload")


def items(
    tmp_path: Path, tag: str, payload_of: Callable[[dict[str, Any]], Any] = plain_payload
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The stored records (out.jsonl lines) of the items sent with `tag`, each with its
    item ({"tag", "seq"})."""
    found = []
    for record in lines(tmp_path):
        item = payload_of(record)
        if isinstance(item, dict) and item.get("tag") == tag:
            found.append((record, item))
    return found


def seqs(
    tmp_path: Path, tag: str, payload_of: Callable[[dict[str, Any]], Any] = plain_payload
) -> Counter[int]:
    return Counter(int(item["seq"]) for _, item in items(tmp_path, tag, payload_of))


async def kill(engine: Engine) -> None:
    """As a kill -9 would leave it: the engine cancelled without its orderly stop (nothing
    handed over is committed), the source's sockets closed (the kernel does that), the
    store closed (SQLite keeps what was committed)."""
    task = STOPS.pop(id(engine))
    await stop_task(task)  # type: ignore[arg-type]
    for runner in engine.sources.values():
        await runner.source.close()
    for sink in engine.sinks.values():
        await sink.sink.close()
    await engine.store.close()


def failing_commits(engine: Engine) -> Callable[[], None]:
    """Make every store commit of `engine` fail (the engine retries with backoff, acks
    nothing); returns the call that heals it."""
    store = engine.store
    real = store.commit

    async def refuse(*args: Any, **keys: Any) -> None:
        raise StoreError("disk I/O error (the contract suite's)")

    store.commit = refuse  # type: ignore[method-assign]

    def heal() -> None:
        store.commit = real  # type: ignore[method-assign]

    return heal


class SourceContract:
    """The cases every source must pass; see the module docstring for how to plug one in."""

    at_least_once: ClassVar[bool] = False
    live_values: ClassVar[bool] = False

    def payload_of(self, record: dict[str, Any]) -> Any:
        """The item ({"tag", "seq"}) a stored record carries; None if it carries none."""
        return record.get("payload")

    def seqs(self, tmp_path: Path, tag: str) -> Counter[int]:
        return seqs(tmp_path, tag, self.payload_of)

    async def arrived(self, tmp_path: Path, tag: str, n: int) -> None:
        """Wait until every item of `tag` arrived."""
        await until(lambda: set(self.seqs(tmp_path, tag)) == set(range(n)))

    async def arrived_after_a_restart(self, tmp_path: Path, tag: str, n: int) -> None:
        """Wait until what the source keeps across a restart arrived: every item, or of
        live values the last (the current value), and check it."""
        if not self.live_values:
            await self.arrived(tmp_path, tag, n)
            return
        await until(lambda: n - 1 in self.seqs(tmp_path, tag))
        assert set(self.seqs(tmp_path, tag)) <= set(range(n))

    @pytest.fixture
    async def sending(self, producer: Producer) -> AsyncIterator[Producer]:
        yield producer
        await producer.close()

    async def start(self, run_engine: Any, source_keys: dict[str, Any]) -> Engine:
        """An engine whose source has connected: a peer may keep nothing for a source it
        has never seen (an MQTT broker queues only for a session that exists)."""
        engine: Engine = await run_engine(source_keys)
        await until(lambda: engine.sources["rows"].state == "running")
        return engine

    async def wait_confirmed(self, producer: Producer, tag: str) -> None:
        if await producer.confirmed(tag) is None:
            return
        async with asyncio.timeout(30):
            while not await producer.confirmed(tag):  # noqa: ASYNC110 - the peer's view
                await asyncio.sleep(0.05)

    def assert_stored(self, tmp_path: Path, tag: str, n: int) -> None:
        counts = self.seqs(tmp_path, tag)
        if self.at_least_once:
            assert set(counts) == set(range(n))
        else:
            assert counts == Counter(range(n))

    # --- the cases ------------------------------------------------------------------------

    async def test_items_reach_the_store(
        self,
        tmp_path: Path,
        run_engine: Any,
        source_keys: dict[str, Any],
        sending: Producer,
        topic_of: Callable[[str, int], str],
    ) -> None:
        await self.start(run_engine, source_keys)
        await sending.send("a", 20)
        await self.arrived(tmp_path, "a", 20)
        await self.wait_confirmed(sending, "a")
        stored = items(tmp_path, "a", self.payload_of)
        assert len({r["id"] for r, _ in stored}) == len(stored)
        assert all(len(r["id"]) == 36 for r, _ in stored)
        for record, item in stored:
            assert record["topic"] == topic_of("a", int(item["seq"]))
        self.assert_stored(tmp_path, "a", 20)

    async def test_acknowledged_only_after_the_commit(
        self, tmp_path: Path, run_engine: Any, source_keys: dict[str, Any], sending: Producer
    ) -> None:
        engine = await self.start(run_engine, source_keys)
        heal = failing_commits(engine)
        try:
            await sending.send("b", 10)
            runner = engine.sources["rows"]
            await until(lambda: runner.produced >= 10)  # handed over to the engine
            await asyncio.sleep(0.3)  # a commit attempt (and its failure) happens meanwhile
            assert await sending.confirmed("b") in (False, None)
            assert self.seqs(tmp_path, "b") == Counter()
        finally:
            heal()  # else the engine's stop would wait for a commit for ever
        await self.arrived(tmp_path, "b", 10)
        await self.wait_confirmed(sending, "b")
        self.assert_stored(tmp_path, "b", 10)

    async def test_killed_before_the_commit_loses_nothing(
        self, tmp_path: Path, run_engine: Any, source_keys: dict[str, Any], sending: Producer
    ) -> None:
        engine = await self.start(run_engine, source_keys)
        failing_commits(engine)
        await sending.send("c", 10)
        await until(lambda: engine.sources["rows"].produced >= 10)
        await kill(engine)
        assert self.seqs(tmp_path, "c") == Counter()
        await self.start(run_engine, source_keys)
        await self.arrived_after_a_restart(tmp_path, "c", 10)
        await self.wait_confirmed(sending, "c")
        await asyncio.sleep(0.3)  # a duplicate, if any, would land now
        if not self.live_values:
            self.assert_stored(tmp_path, "c", 10)

    async def test_a_restart_resumes(
        self, tmp_path: Path, run_engine: Any, source_keys: dict[str, Any], sending: Producer
    ) -> None:
        engine = await self.start(run_engine, source_keys)
        await sending.send("d", 10)
        await self.arrived(tmp_path, "d", 10)
        await self.wait_confirmed(sending, "d")
        await stop(engine)
        await sending.send("e", 10)  # while the gateway is down
        await self.start(run_engine, source_keys)
        await self.arrived_after_a_restart(tmp_path, "e", 10)
        await self.wait_confirmed(sending, "e")
        await asyncio.sleep(0.3)
        self.assert_stored(tmp_path, "d", 10)
        if not self.live_values:
            self.assert_stored(tmp_path, "e", 10)

    async def test_close_is_idempotent_and_quick(self, source_keys: dict[str, Any]) -> None:
        problems = Problems()
        config = build_component("source", dict(source_keys), ("sources", "rows"), problems)
        assert problems.items == []
        entry = find("source", source_keys["type"])
        assert entry is not None
        source: Source = entry.cls(config, Context("rows", "source"))
        async with asyncio.timeout(10):  # a guard, not a measurement
            await source.connect()
            await source.close()
            await source.close()
            await source.connect()  # a closed source connects again (a restart)
            await source.close()

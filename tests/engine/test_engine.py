"""The engine and its runners driven by a fake clock, with fake in-memory components on a
real store: ingest batching, acks after the commit, sink cursors, backoff, shutdown order."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import registry
from gateway.config.model import (
    BatchSettings,
    BufferSection,
    Config,
    GatewaySection,
    RetrySettings,
    RouteSection,
    SinkConfig,
    SourceConfig,
    WebSection,
)
from gateway.core.clock import Clock
from gateway.core.component import Context, Message, Processor, Rejected, Sink, Source
from gateway.core.errors import PermanentError, RetryableError, RetryLater
from gateway.core.flowfile import FlowFile
from gateway.core.schedule import Schedule
from gateway.core.topics import TopicWatch
from gateway.engine.console import TopicsSeen
from gateway.engine.pipeline import Engine
from gateway.engine.plan import plan
from gateway.engine.runner import Ingest, SinkRunner
from gateway.store.sqlite import Batch, DeadLetter, Store, StoreError

pytestmark = pytest.mark.unit


class FakeClock(Clock):
    """Time stands still until the test advances it; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    def now_ns(self) -> int:
        return int(self.now * 1e9)

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + max(seconds, 0.0), future)
        self._sleepers.append(entry)
        self.slept.append(seconds)
        try:
            await future
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for due, future in list(self._sleepers):
            if due <= self.now and not future.done():
                future.set_result(None)

    async def sleeps(self, count: int) -> list[float]:
        """Wait until `count` sleeps have begun; the durations so far."""
        await until(lambda: len(self.slept) >= count)
        return self.slept


async def until(predicate: Callable[[], bool]) -> None:
    """Let the loop run until `predicate` holds (a guard, not a measurement: 10 s)."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - predicates over plain fields, no event
            await asyncio.sleep(0.001)


async def advance_until(
    clock: FakeClock, predicate: Callable[[], bool], step: float = 0.1, within: float = 5.0
) -> None:
    """Move the fake clock on by `step` until `predicate` holds (a guard, not a
    measurement: `within` seconds of real time)."""
    async with asyncio.timeout(within):
        while not predicate():
            clock.advance(step)
            await asyncio.sleep(0.001)


def ff(n: int) -> FlowFile:
    return FlowFile.create("plant/line1", str(n).encode())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    yield store
    await store.close()


async def put(store: Store, count: int) -> None:
    await store.commit(Batch([(ff(i), store.bit("out")) for i in range(count)], [], {}, []))


# -- ingest ---------------------------------------------------------------------------


async def test_ingest_gives_at_most_the_limit_and_lingers_on_the_clock() -> None:
    clock = FakeClock()
    ingest = Ingest(capacity=100, clock=clock)
    await ingest.put("s", [Message(ff(i)) for i in range(7)])
    assert len(await ingest.take(5, 0.05)) == 5, "a full batch goes at once"
    assert clock.slept == [], "without lingering"
    take = asyncio.ensure_future(ingest.take(5, 0.05))
    assert await clock.sleeps(1) == [0.05]
    await ingest.put("s", [Message(ff(i)) for i in range(2)])
    assert not take.done(), "it lingers until the clock says so"
    clock.advance(0.05)
    assert len(await take) == 4, "what came while it lingered is in the batch"


async def test_a_linger_under_way_is_cut_short() -> None:
    """A reload that shortens buffer.batch_linger takes it in place: a commit lingering for
    the old time (1h) held what came in until then."""
    clock = FakeClock()
    ingest = Ingest(capacity=100, clock=clock)
    await ingest.put("s", [Message(ff(1))])
    take = asyncio.ensure_future(ingest.take(5, 3600.0))
    assert await clock.sleeps(1) == [3600.0]
    ingest.cut_linger(0.005)
    async with asyncio.timeout(10):
        assert len(await take) == 1, "handed over at once, the clock not moved"
    # a take waiting for its first item lingers for the linger of when that comes
    ingest.linger = 3600.0
    take = asyncio.ensure_future(ingest.take(5, None))
    for _ in range(5):
        await asyncio.sleep(0)
    ingest.cut_linger(0.005)
    await ingest.put("s", [Message(ff(2))])
    assert await clock.sleeps(2) == [3600.0, 0.005]
    clock.advance(0.005)
    async with asyncio.timeout(10):
        assert len(await take) == 1


async def test_a_reload_that_shortens_batch_linger_commits_what_lingers(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TopicSource, "topics", asyncio.Queue(), raising=False)
    classes = {("source", "fake"): TopicSource, ("sink", "fake"): FakeSink}
    monkeypatch.setattr(registry, "find", lambda k, n: registry.Entry(k, n, classes[(k, n)]))
    events: list[str] = []
    monkeypatch.setattr(FakeSink, "events", events)
    monkeypatch.setattr(FakeSink, "release", asyncio.Event())
    FakeSink.release.set()
    config = fake_config(tmp_path)
    config = dataclasses.replace(config, buffer=BufferSection(batch_linger=3600.0))
    clock = FakeClock()
    engine = Engine(config, store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    TopicSource.topics.put_nowait(["plant/line1"])
    await until(lambda: 3600.0 in clock.slept)
    shorter = dataclasses.replace(config, buffer=BufferSection(batch_linger=0.005))
    assert await engine.apply(shorter, plan(config, shorter)) == []
    await until(lambda: "written" in events)  # committed, then delivered
    assert events == ["write 1", "written"]
    engine.stop()
    async with asyncio.timeout(10):
        await running


# -- acks after the commit, and shutdown order ----------------------------------------


class FakeSource(Source):
    """Hands over `script` batches, then waits for ever; records what happens."""

    mode = "stream"
    script: list[list[int]] = []
    events: list[str] = []

    async def read(self) -> list[Message]:
        if not self.script:
            await asyncio.Event().wait()
        numbers = self.script.pop(0)
        return [Message(ff(n), ack=self._acker(n)) for n in numbers]

    def _acker(self, n: int) -> Callable[[], None]:
        return lambda: self.events.append(f"ack {n}")

    async def close(self) -> None:
        self.events.append("source closed")


class FakeSink(Sink):
    """Holds each write until `release` is set; records what happens."""

    events: list[str] = []
    release = asyncio.Event()

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        self.events.append(f"write {len(batch)}")
        await self.release.wait()
        self.events.append("written")
        return []

    async def close(self) -> None:
        self.events.append("sink closed")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    events: list[str] = []
    classes = {("source", "fake"): FakeSource, ("sink", "fake"): FakeSink}
    monkeypatch.setattr(
        registry, "find", lambda kind, name: registry.Entry(kind, name, classes[(kind, name)])
    )
    monkeypatch.setattr(FakeSource, "events", events)
    monkeypatch.setattr(FakeSource, "script", [[1, 2, 3]])
    monkeypatch.setattr(FakeSink, "events", events)
    monkeypatch.setattr(FakeSink, "release", asyncio.Event())
    return events


def fake_config(tmp_path: Path) -> Config:
    return Config(
        gateway=GatewaySection(id="t", data_dir=str(tmp_path)),
        buffer=BufferSection(batch_linger=0),
        sources={"src": SourceConfig(type="fake")},
        routes={"all": RouteSection(match=["#"], sinks=["out"])},
        sinks={"out": SinkConfig(type="fake", batch=BatchSettings(linger=0))},
        web=WebSection(enabled=False),
    )


async def test_acks_run_after_the_commit_and_shutdown_goes_in_order(
    tmp_path: Path, store: Store, fakes: list[str]
) -> None:
    events = fakes
    commit = store.commit

    async def recorded_commit(batch: Batch) -> None:
        await commit(batch)
        events.append(f"commit {len(batch.rows)}")

    store.commit = recorded_commit  # type: ignore[method-assign]
    engine = Engine(fake_config(tmp_path), store, clock=FakeClock())
    running = asyncio.ensure_future(engine.run())
    await until(lambda: "write 3" in events)
    assert events == ["commit 3", "ack 1", "ack 2", "ack 3", "write 3"]
    # handed over, not yet committed, when the stop comes: committed and acked first
    engine.ingest.offer("src", Message(ff(4), ack=lambda: events.append("ack 4")))
    engine.stop()
    await until(lambda: "source closed" in events)
    assert "written" not in events, "the sink is still writing its batch"
    FakeSink.release.set()  # it finishes its batch, and is closed only then
    async with asyncio.timeout(10):
        await running
    assert events[5:] == ["commit 1", "ack 4", "source closed", "written", "sink closed"]
    assert store.cursor("out") > 0 and engine.sinks["out"].delivered == 3


@pytest.mark.parametrize("cause", ["budget", "file_gone", "file_gone_at_the_stop"])
async def test_a_stop_does_not_wait_for_room_no_sink_makes(
    tmp_path: Path, fakes: list[str], monkeypatch: pytest.MonkeyPatch, cause: str
) -> None:
    """overflow: block, the budget full, its sink stuck: what a source had handed over
    waited for room at the stop, which no sink makes while the engine stops. A SIGTERM
    never ended, nor a reload raising buffer.max_bytes (it restarts the engine). It is
    committed past the budget and acknowledged; with store.db deleted, left unacknowledged
    (sent again by its source) instead of acknowledged into a file no restart finds, also
    when deleted as the stop comes (stopping, the engine did not look)."""
    monkeypatch.setattr("gateway.engine.pipeline.SINK_FINISH_S", 0.01)
    store = Store(tmp_path / "store.db", max_bytes=1 << 20, overflow="block")
    await store.open(["out"])
    await put(store, 5)
    if cause == "file_gone":
        store.path.unlink()
    else:
        store.max_bytes = 1  # the five above fill it
    clock = FakeClock()
    engine = Engine(fake_config(tmp_path), store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    await until(lambda: "write 5" in fakes and not engine.gate.is_set())
    if cause == "budget":  # measured while blocked too (read 0 in /api/status)
        assert store.disk_free > 0
    if cause == "file_gone_at_the_stop":
        store.path.unlink()
    engine.stop()
    await advance_until(clock, running.done)
    await running
    if cause == "budget":
        assert fakes[-5:] == ["ack 1", "ack 2", "ack 3", "source closed", "sink closed"]
        assert store.depth("out") == 8
    else:
        assert fakes[-2:] == ["source closed", "sink closed"]
        assert not any(e.startswith("ack") for e in fakes)
    await store.close()


class DownSink(Sink):
    """An upstream that is down: every write fails, to be retried."""

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        raise RetryableError("upstream down")


@pytest.mark.parametrize("how", ["stop", "reload"])
async def test_a_sink_waiting_out_its_backoff_is_stopped_at_once(
    tmp_path: Path, fakes: list[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A stop, or a reload that removes the sink or restarts the engine (a store setting),
    waited up to SINK_FINISH_S (5 s) for a sink that was only sleeping out its backoff,
    writing nothing: 5 s without intake at each such reload while an upstream was down.
    Such a sink is stopped at once; one writing a batch still gets to finish it."""
    monkeypatch.setattr("gateway.engine.pipeline.SINK_FINISH_S", 3600.0)
    monkeypatch.setattr(
        registry,
        "find",
        lambda kind, name: registry.Entry(
            kind, name, {("source", "fake"): FakeSource, ("sink", "fake"): DownSink}[(kind, name)]
        ),
    )
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    clock = FakeClock()  # never advanced: the backoff never ends by itself
    config = fake_config(tmp_path)
    engine = Engine(config, store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    sinks = engine.sinks
    await until(lambda: "out" in sinks and sinks["out"].state == "retrying" and clock.slept)
    async with asyncio.timeout(10):  # a guard: the backoff is not waited out
        if how == "reload":
            without = dataclasses.replace(config, sinks={}, routes={})
            await engine.apply(without, plan(config, without))
            assert "out" not in engine.sinks
        engine.stop()
        await running
    await store.close()


async def test_overflow_block_stops_within_the_budget_not_a_commit_past_it(
    tmp_path: Path, fakes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """overflow: block, its sink down: a commit took up to 500 messages or 4 MiB whatever
    room the budget had left, so a store of 1 MiB held 1.6 MiB, or four times its budget
    when a broker delivered its backlog at once. A commit now takes what fits (at least
    one message); the rest waits unacknowledged."""
    monkeypatch.setattr(FakeSource, "script", [list(range(1, 51))])
    monkeypatch.setattr("gateway.engine.pipeline.SINK_FINISH_S", 0.01)
    store = Store(tmp_path / "store.db", overflow="block")
    await store.open(["out"])
    store.max_bytes = 1000  # about eight of these small FlowFiles
    clock = FakeClock()
    engine = Engine(fake_config(tmp_path), store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    await until(lambda: not engine.gate.is_set() or "ack 50" in fakes)
    one = store.bytes // store.depth("out")
    assert store.max_bytes <= store.bytes < store.max_bytes + one
    assert len([e for e in fakes if e.startswith("ack")]) == store.depth("out") < 50
    engine.stop()
    await advance_until(clock, running.done)
    await running
    await store.close()


class FakePager(FakeSource):
    """A polled source holding the pages of one read after the first (a REST answer)."""

    mode = "poll"
    pages: list[list[int]] = []

    async def poll_messages(self) -> list[Message]:
        numbers = self.pages.pop(0) if self.pages else []
        self.held = bool(self.pages)  # the next page at the next poll, or at a stop
        self.held_items = sum(map(len, self.pages))
        return [Message(ff(n), ack=self._acker(n)) for n in numbers]


async def test_a_stop_commits_past_the_budget_while_a_source_still_hands_over(
    tmp_path: Path, fakes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """overflow: block, the store full, a source holding pages of a read: the stop let
    it hand them over but committed past the budget only once every source had stopped,
    so the source waited for room, was cut off after DRAIN_S and its pages lost."""
    monkeypatch.setattr("gateway.engine.pipeline.SINK_FINISH_S", 0.01)
    monkeypatch.setattr("gateway.engine.pipeline.DRAIN_S", 2.0)
    monkeypatch.setattr(FakePager, "pages", [[1], [2], [3]])
    classes = {"source": FakePager, "sink": FakeSink}  # the sink stuck in its write
    monkeypatch.setattr(registry, "find", lambda k, n: registry.Entry(k, n, classes[k]))
    store = Store(tmp_path / "store.db", max_bytes=1 << 20, overflow="block")
    await store.open(["out"])
    await put(store, 5)
    store.max_bytes = 1  # the five above fill it
    clock = FakeClock()
    engine = Engine(fake_config(tmp_path), store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    await until(lambda: not engine.gate.is_set())  # page 1 waits for room
    clock.advance(1)  # the next poll: it waits at the gate, holding pages 2 and 3
    await asyncio.sleep(0.01)
    engine.stop()
    await advance_until(clock, running.done)
    await running
    assert [e for e in fakes if e.startswith("ack")] == ["ack 1", "ack 2", "ack 3"]
    await store.close()


@pytest.mark.parametrize("refusals", [2, 1000])
async def test_a_stop_retries_a_refused_commit_a_few_times_not_for_ever(
    tmp_path: Path, store: Store, fakes: list[str], monkeypatch: pytest.MonkeyPatch, refusals: int
) -> None:
    """A store that refuses every commit (a disk I/O error): the stop retried it for
    ever. It gets a few tries (a store locked for a moment), then the batch is left
    unacknowledged and the engine stops."""
    monkeypatch.setattr("gateway.engine.pipeline.SINK_FINISH_S", 0.01)
    commit = store.commit
    tried = []

    async def refused(batch: Batch) -> None:
        tried.append(len(batch.rows))
        if len(tried) <= refusals:
            raise StoreError("store x: disk I/O error")
        await commit(batch)

    store.commit = refused  # type: ignore[method-assign]
    clock = FakeClock()
    engine = Engine(fake_config(tmp_path), store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    await until(lambda: bool(tried))
    engine.stop()
    await until(lambda: engine._intake_closed)
    await advance_until(clock, running.done, 1)
    await running
    acked = [e for e in fakes if e.startswith("ack")]
    assert acked == ([] if refusals > 3 else ["ack 1", "ack 2", "ack 3"])


@pytest.mark.parametrize("try_s", [0, 6])
async def test_a_stop_gives_up_every_batch_after_one_given_up(
    tmp_path: Path,
    store: Store,
    fakes: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    try_s: float,
) -> None:
    """At a stop, each batch had its own 3 tries: the first given up, the next one
    committed and acknowledged past it (a position saved beyond it, a Redis list trimmed
    by count): the first was lost for good. A store refusing every commit took 3 tries
    (each up to the 5 s busy_timeout) per batch, past systemd's TimeoutStopSec. Once one
    is given up, all after it are, with one ERROR line; the tries stop at DRAIN_S (each
    refused try taking `try_s` seconds) and a refusal before the stop is not counted."""
    monkeypatch.setattr("gateway.engine.pipeline.SINK_FINISH_S", 0.01)
    commit = store.commit
    clock = FakeClock()
    tried = []

    async def refused(batch: Batch) -> None:
        tried.append(len(batch.rows))
        clock.advance(try_s)
        if len(tried) <= 4:  # one while running, three at the stop
            raise StoreError("store x: disk I/O error")
        await commit(batch)

    store.commit = refused  # type: ignore[method-assign]
    engine = Engine(fake_config(tmp_path), store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    await until(lambda: bool(tried))
    for n in range(4, 9):  # handed over behind the batch retrying
        engine.ingest.offer("src", Message(ff(n), ack=lambda n=n: fakes.append(f"ack {n}")))
    engine.stop()
    await until(lambda: engine._intake_closed)
    await advance_until(clock, running.done, 0.5)
    await running
    assert not [e for e in fakes if e.startswith("ack")]
    assert len(tried) == (4 if try_s == 0 else 3), "a few tries in all, within DRAIN_S"
    given_up = [r.getMessage() for r in caplog.records if "not stored nor" in r.getMessage()]
    assert len(given_up) == 1 and given_up[0].startswith("engine: stopping: 8 message(s)")
    # a replay committed after it is given up too, not said to be back in the store
    from gateway.store.admin import open_admin

    await commit(Batch([], [DeadLetter(ff(9), "sink out", "refused", "out")], {}, []))
    with open_admin(store.path) as admin:
        assert admin.replay(None).count == 1
    caplog.set_level(logging.INFO)
    await engine._replay()
    assert not any("back in the store" in r.getMessage() for r in caplog.records)
    assert len(await store.take_replay(10)) == 1


@pytest.mark.parametrize("overflow", ["drop_oldest", "block"])
async def test_a_flowfile_larger_than_the_whole_buffer_is_dead_lettered_not_dropped(
    tmp_path: Path, fakes: list[str], monkeypatch: pytest.MonkeyPatch, overflow: str
) -> None:
    """With overflow drop_oldest, a FlowFile larger than buffer.max_bytes was stored,
    acknowledged ("stored" to an HTTP client) and dropped by the next commit, before any
    sink had it. It goes to the dead letters; a block sink keeps it as before (and, the
    budget now full, stops taking input: the third waits unacknowledged until the stop)."""
    monkeypatch.setattr(FakeSource, "script", [[1, 10**200, 3]])
    monkeypatch.setattr("gateway.engine.pipeline.SINK_FINISH_S", 0.01)
    store = Store(tmp_path / "store.db", overflow=overflow)
    await store.open(["out"])
    store.max_bytes = 250  # two small FlowFiles fit; one of 200 digits does not
    clock = FakeClock()
    engine = Engine(fake_config(tmp_path), store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    if overflow == "block":
        await until(lambda: not engine.gate.is_set())
        assert [e for e in fakes if e.startswith("ack")] == ["ack 1", f"ack {10**200}"]
        assert (store.depth("out"), store.dead_count) == (2, 0)
    else:
        await until(lambda: "ack 3" in fakes)
        assert [e for e in fakes if e.startswith("ack")] == ["ack 1", f"ack {10**200}", "ack 3"]
        assert (store.depth("out"), store.dead_count) == (2, 1)
        [dead] = await store.dead_letters(10)
        assert "bytes of buffer.max_bytes: 250)" in dead.reason
        assert dead.sink == "out"  # a replay hands it to that sink, not the routes
    engine.stop()
    FakeSink.release.set()
    await advance_until(clock, running.done, within=10)
    await running
    assert "ack 3" in fakes
    await store.close()


async def test_a_replayed_dead_letter_of_a_sink_not_running_goes_back_to_that_sink(
    tmp_path: Path, fakes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead letter a sink refused, replayed once the sink was removed from the config,
    was routed again: through the processors a second time (it is their output) and to
    the sinks that had it already. It waits in the removed sink's backlog; for a sink the
    store no longer knows (dropped), it goes back to the dead letters, saying why."""
    from gateway.store.admin import open_admin

    monkeypatch.setattr(FakeSource, "script", [])
    store = Store(tmp_path / "store.db")
    await store.open(["out", "old"])  # "old": removed from the config, still in the store
    refused = [
        DeadLetter(ff(1), "sink old", "refused by old", "old"),
        DeadLetter(ff(2), "sink dropped", "refused by dropped", "dropped"),
    ]
    await store.commit(Batch([], refused, {}, []))
    with open_admin(store.path) as admin:
        assert admin.replay(None).count == 2
    clock = FakeClock()
    engine = Engine(fake_config(tmp_path), store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    await advance_until(clock, lambda: store.dead_count == 1, 1.0)
    assert (store.depth("out"), store.depth("old")) == (0, 1)
    [again] = await store.dead_letters(10)
    assert (again.id, again.sink) == (refused[1].flowfile.id, "dropped")
    assert "'dropped' is no longer in the store" in again.reason
    engine.stop()
    async with asyncio.timeout(10):
        await running
    await store.close()


class Relabel(Processor):
    """Derives each FlowFile onto another topic, as a window or a transform does."""

    def process(self, flowfile: FlowFile) -> list[FlowFile]:
        return [flowfile.derive(topic=f"derived/{flowfile.topic}")]


async def test_no_data_watches_what_sources_hand_over_not_what_processors_make(
    tmp_path: Path, store: Store, fakes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/metrics.md says so: a no_data rule on a processor's output topic never sees data.
    find = registry.find
    monkeypatch.setattr(
        registry,
        "find",
        lambda kind, name: (
            registry.Entry(kind, name, Relabel) if kind == "processor" else find(kind, name)
        ),
    )
    route = RouteSection(match=["#"], sinks=["out"], processors=[SimpleNamespace(type="relabel")])
    config = dataclasses.replace(fake_config(tmp_path), routes={"all": route})
    clock = FakeClock()
    watch = TopicWatch(clock.monotonic)
    watch.set({"plant/#", "derived/#"})
    clock.advance(60)
    engine = Engine(config, store, clock=clock, watch=watch)
    running = asyncio.ensure_future(engine.run())
    await until(lambda: "write 3" in fakes)  # the derived FlowFiles reach the sink
    assert watch.last_seen("plant/#", 0) == clock.now
    assert watch.last_seen("derived/#", 0) == clock.now - 60
    engine.stop()
    FakeSink.release.set()
    async with asyncio.timeout(10):
        await running


async def test_the_topics_no_route_takes_are_said_in_the_log_once_each(
    tmp_path: Path, store: Store, fakes: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # A route whose match misses what the source makes (`plant/line2` for `plant/line1`)
    # dropped every reading without a word: only `unrouted` in /api/status counted them.
    route = RouteSection(match=["plant/line2"], sinks=["out"])
    config = dataclasses.replace(fake_config(tmp_path), routes={"r": route})
    FakeSource.script = [[1, 2], [3]]
    clock = FakeClock()
    engine = Engine(config, store, clock=clock, topics=TopicsSeen())
    running = asyncio.ensure_future(engine.run())

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "match no route" in r.getMessage()]

    await advance_until(clock, lambda: bool(said()) and "ack 3" in fakes)
    slept = len(clock.slept)
    await advance_until(clock, lambda: len(clock.slept) >= slept + 10)  # a few more looks
    (line,) = said()  # once, though more came after it
    assert line.startswith("engine: FlowFiles of 'plant/line1' match no route and are dropped")
    assert line.endswith(
        "so far); give a route a `match` for them if they are wanted (/api/topics lists the"
        " topics seen and the routes of each)"
    )
    assert engine.router is not None and engine.router.unrouted == 3
    engine.stop()
    async with asyncio.timeout(10):
        await running


class TopicSource(FakeSource):
    """Hands over a FlowFile for each topic put in `topics`."""

    topics: asyncio.Queue[list[str]]

    async def read(self) -> list[Message]:
        return [Message(FlowFile.create(t, b"1")) for t in await self.topics.get()]


async def test_every_unrouted_topic_is_named_and_again_after_a_reload_of_the_routes(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven new unrouted topics at once: five were named and the rest marked named, so
    never said; a topic named once was never named again, even when a reload changed the
    routes; and with no topics kept (no console) the line named none."""
    monkeypatch.setattr(TopicSource, "topics", asyncio.Queue(), raising=False)
    classes = {("source", "fake"): TopicSource, ("sink", "fake"): FakeSink}
    monkeypatch.setattr(registry, "find", lambda k, n: registry.Entry(k, n, classes[(k, n)]))
    config = dataclasses.replace(
        fake_config(tmp_path), routes={"r": RouteSection(match=["plant/line0"], sinks=["out"])}
    )
    clock = FakeClock()
    engine = Engine(config, store, clock=clock)  # no TopicsSeen
    running = asyncio.ensure_future(engine.run())

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "match no route" in r.getMessage()]

    topics = [f"plant/line{n}" for n in range(1, 8)]
    TopicSource.topics.put_nowait(topics)
    await advance_until(clock, lambda: bool(said()))
    (line,) = said()
    assert line.startswith(
        "engine: FlowFiles of " + ", ".join(repr(t) for t in topics) + " match no route"
    )
    other = dataclasses.replace(
        config, routes={"r": RouteSection(match=["plant/line8"], sinks=["out"])}
    )
    assert await engine.apply(other, plan(config, other)) == []
    TopicSource.topics.put_nowait(["plant/line1"])
    await advance_until(clock, lambda: len(said()) == 2)
    assert said()[1].startswith("engine: FlowFiles of 'plant/line1' match no route")
    assert engine.router is not None and engine.router.unrouted == 8
    engine.stop()
    async with asyncio.timeout(10):
        await running


async def test_a_replayed_dead_letter_a_route_refused_goes_through_that_route_only(
    tmp_path: Path, fakes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead letter processor 1 of route "strict" refused was routed again from the
    start, through every route: route "plain"'s sink had it a second time, and
    processor 0 ran on its own output. It goes through processor 1 on, to "strict"'s
    sink; one whose route or processor left the config goes back to the dead letters,
    saying so."""
    from gateway.store.admin import open_admin

    monkeypatch.setattr(FakeSource, "script", [])
    find = registry.find
    monkeypatch.setattr(
        registry,
        "find",
        lambda kind, name: (
            registry.Entry(kind, name, Relabel) if kind == "processor" else find(kind, name)
        ),
    )
    relabel = SimpleNamespace(type="relabel")
    routes = {
        "strict": RouteSection(match=["#"], sinks=["out"], processors=[relabel, relabel]),
        "plain": RouteSection(match=["#"], sinks=["other"]),
    }
    sinks = {name: SinkConfig(type="fake", batch=BatchSettings(linger=0)) for name in routes}
    sinks = {"out": sinks["strict"], "other": sinks["plain"]}
    config = dataclasses.replace(fake_config(tmp_path), routes=routes, sinks=sinks)
    store = Store(tmp_path / "store.db")
    await store.open(["out", "other"])
    refused = [
        DeadLetter(ff(1), "route strict: processor 1 (relabel)", "refused"),
        DeadLetter(ff(2), "route old: processor 0 (relabel)", "refused by a route removed"),
        # the route has no processor 5 now: sent to its sinks unprocessed, before
        DeadLetter(ff(3), "route strict: processor 5 (relabel)", "refused by a processor gone"),
        DeadLetter(ff(4), "route strict: processor 1 (filter)", "another type there now"),
    ]
    await store.commit(Batch([], refused, {}, []))
    with open_admin(store.path) as admin:
        assert admin.replay(None).count == 4
    clock = FakeClock()
    engine = Engine(config, store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    await advance_until(clock, lambda: store.dead_count == 3, 1.0)
    assert (store.depth("out"), store.depth("other")) == (1, 0)
    [(_, stored)], _ = await store.read("out", 0, 10)
    assert stored.topic == "derived/plant/line1"  # processor 1 only, once
    back = {letter.id: letter for letter in await store.dead_letters(10)}
    for letter in refused[1:]:
        again = back[letter.flowfile.id]
        assert f"replayed, but {letter.origin} is no longer in the config" in again.reason
        assert again.origin == letter.origin  # replayed again: to that processor
    engine.stop()
    FakeSink.release.set()
    async with asyncio.timeout(10):
        await running
    await store.close()


async def test_a_stop_while_the_ingest_makes_room_for_a_block_sink_ends(
    tmp_path: Path, fakes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ingest loop made room (drop_oldest's share) before a take; a stop meanwhile
    # found it not taking, waited for it, and it then waited for items for ever.
    monkeypatch.setattr(FakeSource, "script", [[1]])
    monkeypatch.setattr("gateway.engine.pipeline.SINK_FINISH_S", 0.01)
    store = Store(tmp_path / "store.db", overflow="block")
    await store.open(["out"])
    store.max_bytes = 1
    clock = FakeClock()
    engine = Engine(fake_config(tmp_path), store, clock=clock)
    make_room = store.make_room
    entered = asyncio.Event()

    async def busy_make_room() -> None:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "ingest":
            entered.set()
            await asyncio.sleep(0.2)  # the store thread busy with a sink's read
        await make_room()

    monkeypatch.setattr(store, "make_room", busy_make_room)
    running = asyncio.ensure_future(engine.run())
    await until(lambda: "ack 1" in fakes)
    await entered.wait()
    engine.stop()
    await advance_until(clock, running.done)
    await running
    await store.close()


async def test_a_replay_while_a_block_budget_is_full_does_not_stop_intake_for_good(
    tmp_path: Path, fakes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The replay ran in the maintenance loop, and its commit waited for room that only
    # that loop's purge makes: once the sink had delivered everything, intake stayed shut.
    from gateway.store.admin import open_admin

    monkeypatch.setattr(FakeSource, "script", [list(range(1, 21)), [21]])
    monkeypatch.setattr("gateway.engine.pipeline.SINK_FINISH_S", 0.01)
    store = Store(tmp_path / "store.db", overflow="block")
    await store.open(["out"])
    await store.commit(Batch([], [DeadLetter(ff(99), "source src", "x")], {}, []))
    with open_admin(store.path) as admin:
        assert admin.replay(None).count == 1
    store.max_bytes = 1000
    clock = FakeClock()
    engine = Engine(fake_config(tmp_path), store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    await until(lambda: not engine.gate.is_set())
    for _ in range(30):
        clock.advance(0.1)
        await asyncio.sleep(0.005)
    FakeSink.release.set()  # the sink comes back and delivers everything
    await advance_until(clock, lambda: "ack 21" in fakes)
    assert await store.take_replay(10) == []  # the replayed letter is in the store too
    engine.stop()
    await advance_until(clock, running.done)
    await running
    await store.close()


# -- a sink's cursor, backoff and permanent errors ------------------------------------


class ScriptedSink(Sink):
    """Each write takes the next outcome: an exception to raise, or rows to refuse."""

    def __init__(self, config: Any, ctx: Context, outcomes: list[Any]) -> None:
        super().__init__(config, ctx)
        self.outcomes = outcomes
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.close_gate: asyncio.Event | None = None
        self.closing = asyncio.Event()

    async def close(self) -> None:
        self.closing.set()
        if self.close_gate is not None:
            await self.close_gate.wait()

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.outcomes.pop(0) if self.outcomes else []
        if isinstance(outcome, Exception):
            raise outcome
        return [Rejected(batch[i], "refused") for i in outcome]


def runner_for(
    store: Store,
    sink_outcomes: list[Any],
    clock: Clock,
    retry: RetrySettings = RetrySettings(initial=0.5, max=4.0),  # noqa: B008 - frozen
) -> SinkRunner:
    config = SinkConfig(type="test", batch=BatchSettings(linger=0), retry=retry)
    sink = ScriptedSink(config, Context("out", "sink"), sink_outcomes)
    return SinkRunner("out", sink, config, store, clock)


async def stop(runner: SinkRunner, task: asyncio.Future[None]) -> None:
    runner.stopping = True
    runner.wake.set()
    async with asyncio.timeout(10):
        await task


async def test_the_cursor_moves_only_after_the_write_succeeds(store: Store) -> None:
    start = store.cursor("out")
    await put(store, 3)
    runner = runner_for(store, [], FakeClock())
    sink = runner.sink
    assert isinstance(sink, ScriptedSink)
    sink.gate = asyncio.Event()
    task = asyncio.ensure_future(runner.run())
    await until(lambda: sink.calls == 1)
    assert store.cursor("out") == start and store.depth("out") == 3, "written, not confirmed"
    sink.gate.set()
    await until(lambda: runner.delivered == 3)
    assert store.cursor("out") == start + 3 and store.depth("out") == 0
    await stop(runner, task)


async def test_a_failing_sink_backs_off_on_the_clock_doubling_up_to_its_cap(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # full jitter draws in [initial / 2, cap]: take the cap, so the sequence is exact
    monkeypatch.setattr("gateway.core.backoff.random.uniform", lambda low, high: high)
    start = store.cursor("out")
    await put(store, 3)
    clock = FakeClock()
    runner = runner_for(store, [RetryableError("upstream down")] * 6, clock)
    task = asyncio.ensure_future(runner.run())
    for n in range(1, 7):
        await clock.sleeps(n)
        assert runner.state == "retrying" and store.cursor("out") == start
        clock.advance(clock.slept[-1])
    await until(lambda: runner.delivered == 3)
    assert clock.slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert runner.errors == 6 and runner.last_error == "upstream down"
    assert runner.state == "running" and store.cursor("out") == start + 3
    await stop(runner, task)


@pytest.mark.parametrize("told", [False, True], ids=["backoff", "retry-after"])
async def test_new_retry_settings_shorten_the_wait_for_the_next_try_to_their_max(
    store: Store, monkeypatch: pytest.MonkeyPatch, told: bool
) -> None:
    """`retry` is taken in place by a reload; the wait under way was slept out whole, so
    a sink on retry.max: 1h tried again an hour later whatever the new settings said. It
    is shortened to the new max, a wait the upstream asked for (Retry-After) too, not
    ended outright. Other new settings (a batch size) leave the wait alone."""
    monkeypatch.setattr("gateway.core.backoff.random.uniform", lambda low, high: high)
    start = store.cursor("out")
    await put(store, 3)
    clock = FakeClock()
    error = RetryLater("busy", after=3600.0) if told else RetryableError("upstream down")
    hour = RetrySettings(initial=1.0 if told else 3600.0, max=3600.0)
    runner = runner_for(store, [error], clock, hour)
    task = asyncio.ensure_future(runner.run())
    assert await clock.sleeps(1) == [3600.0]
    config = runner.config
    runner.update(dataclasses.replace(config, batch=BatchSettings(max_rows=10)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert runner.resting and clock.slept == [3600.0], "not a retry change: still waiting"
    runner.update(dataclasses.replace(config, retry=RetrySettings(initial=0.1, max=2.0)))
    assert await clock.sleeps(2) == [3600.0, 2.0]
    clock.advance(1.0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert runner.resting and runner.delivered == 0, "the new max is waited out"
    clock.advance(1.0)
    await until(lambda: runner.delivered == 3)
    assert store.cursor("out") == start + 3 and len(clock.slept) == 2
    await stop(runner, task)


async def test_new_retry_settings_taken_while_the_sink_closes_shorten_its_wait(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload landing while the failed sink closes its connection was lost (the wake
    was cleared after the close), and the old wait slept out whole."""
    monkeypatch.setattr("gateway.core.backoff.random.uniform", lambda low, high: high)
    await put(store, 3)
    clock = FakeClock()
    hour = RetrySettings(initial=3600.0, max=3600.0)
    runner = runner_for(store, [RetryableError("upstream down")], clock, hour)
    sink = runner.sink
    assert isinstance(sink, ScriptedSink)
    sink.close_gate = asyncio.Event()
    task = asyncio.ensure_future(runner.run())
    async with asyncio.timeout(10):
        await sink.closing.wait()
    runner.update(dataclasses.replace(runner.config, retry=RetrySettings(initial=0.1, max=2.0)))
    sink.close_gate.set()
    await until(lambda: 2.0 in clock.slept)
    clock.advance(2.0)
    await until(lambda: runner.delivered == 3)
    await stop(runner, task)


async def test_a_stop_while_the_failed_sink_closes_starts_no_wait(store: Store) -> None:
    """A stop landing while the failed sink closed its connection found it not resting:
    the engine gave it SINK_FINISH_S to finish a batch it did not have, while it began
    the backoff's wait, then cancelled it."""
    await put(store, 3)
    clock = FakeClock()
    hour = RetrySettings(initial=3600.0, max=3600.0)
    runner = runner_for(store, [RetryableError("upstream down")], clock, hour)
    sink = runner.sink
    assert isinstance(sink, ScriptedSink)
    sink.close_gate = asyncio.Event()
    task = asyncio.ensure_future(runner.run())
    async with asyncio.timeout(10):
        await sink.closing.wait()
    runner.stopping = True
    sink.close_gate.set()
    await until(lambda: task.done() or bool(clock.slept))
    assert clock.slept == [] and task.done() and not runner.resting
    await task


async def test_an_error_of_the_clock_while_the_sink_waits_is_raised(store: Store) -> None:
    """The wait for the next try gathered its sleep with return_exceptions: a clock
    whose sleep failed was taken for a wait slept out, the error lost, and the sink
    retried at once."""

    class BrokenClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            self.slept.append(seconds)
            raise RuntimeError("the clock broke")

    await put(store, 3)
    runner = runner_for(store, [RetryableError("upstream down")], BrokenClock())
    task = asyncio.ensure_future(runner.run())
    await until(lambda: task.done() or runner.delivered > 0)
    assert task.done() and runner.delivered == 0
    with pytest.raises(RuntimeError, match="the clock broke"):
        await task


async def test_other_new_settings_keep_the_backoff_where_it_is(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload changing a batch size during an outage started the backoff over from
    retry.initial: a dead upstream was tried again sooner and sooner with each reload."""
    monkeypatch.setattr("gateway.core.backoff.random.uniform", lambda low, high: high)
    await put(store, 3)
    clock = FakeClock()
    runner = runner_for(store, [RetryableError("upstream down")] * 3, clock)
    task = asyncio.ensure_future(runner.run())
    await clock.sleeps(1)
    clock.advance(0.5)
    await clock.sleeps(2)
    runner.update(dataclasses.replace(runner.config, batch=BatchSettings(max_rows=10)))
    clock.advance(1.0)
    assert await clock.sleeps(3) == [0.5, 1.0, 2.0]
    clock.advance(2.0)
    await until(lambda: runner.delivered == 3)
    await stop(runner, task)


async def test_refused_rows_are_dead_lettered_and_a_permanent_error_stops_the_sink(
    store: Store,
) -> None:
    start = store.cursor("out")
    await put(store, 3)
    clock = FakeClock()
    runner = runner_for(store, [[1]], clock)
    task = asyncio.ensure_future(runner.run())
    await until(lambda: runner.delivered == 2)
    assert runner.rejected == 1 and store.dead_count == 1, "the refused one is a dead letter"
    assert store.cursor("out") == start + 3
    assert runner.status().dead_lettered == 1
    await stop(runner, task)

    await put(store, 2)
    runner = runner_for(store, [PermanentError("table is gone")], clock)
    async with asyncio.timeout(10):
        await runner.run()  # returns: the sink is stopped, not retried
    assert runner.state == "failed" and runner.last_error == "table is gone"
    assert clock.slept == [], "no backoff for what can never work"
    assert store.cursor("out") == start + 3 and store.depth("out") == 2, "the data stays"


# -- a polled source started again by a reload ----------------------------------------


@dataclasses.dataclass(frozen=True)
class CronConfig(SourceConfig):
    url: str = "http://good"


class CronSource(Source):
    """Polled at 03:00 each day; its polls fail while its url is http://bad."""

    polls: list[str] = []

    def __init__(self, config: CronConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.schedule = Schedule(interval=1.0, cron="0 3 * * *")

    async def poll(self) -> list[FlowFile]:
        self.polls.append(self.config.url)
        if self.config.url == "http://bad":
            raise RetryableError("connection refused")
        return [ff(1)]


@pytest.mark.parametrize("was", ["failing", "working"])
async def test_a_reload_of_a_failing_polled_source_polls_it_at_once(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, was: str
) -> None:
    """A source polled at `0 3 * * *` whose polls failed, its URL put right by a reload:
    the new runner waited for 03:00 the next day for its first poll, "running" and no
    error meanwhile, and its source_offline alert, kept, firing till then. It now polls at
    once; one that worked waits for its schedule, as at a start."""
    classes = {("source", "cron"): CronSource, ("sink", "fake"): FakeSink}
    monkeypatch.setattr(registry, "find", lambda k, n: registry.Entry(k, n, classes[(k, n)]))
    monkeypatch.setattr(CronSource, "polls", [])
    monkeypatch.setattr(FakeSink, "events", [])
    monkeypatch.setattr(FakeSink, "release", asyncio.Event())
    FakeSink.release.set()
    first = "http://bad" if was == "failing" else "http://good"
    config = dataclasses.replace(
        fake_config(tmp_path), sources={"src": CronConfig(type="cron", url=first)}
    )
    clock = FakeClock()  # 1970-01-01 00:16:40: the first poll at 03:00
    engine = Engine(config, store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    await advance_until(clock, lambda: bool(CronSource.polls), step=60.0)
    old = engine.sources["src"]
    assert old.failing == (was == "failing")
    fixed = dataclasses.replace(
        config, sources={"src": CronConfig(type="cron", url="http://fixed")}
    )
    assert await engine.apply(fixed, plan(config, fixed)) == []
    new = engine.sources["src"]
    assert new is not old
    if was == "failing":
        await advance_until(clock, lambda: CronSource.polls[-1] == "http://fixed", within=2.0)
        assert not new.status().first_try and new.state == "running"
    else:
        await advance_until(clock, lambda: new.state == "running", within=2.0)
        clock.advance(60.0)
        await asyncio.sleep(0.01)
        assert CronSource.polls[-1] != "http://fixed" and new.status().first_try
    engine.stop()
    async with asyncio.timeout(10):
        await running


async def test_an_engine_run_again_by_a_reload_polls_the_sources_failing_before_at_once(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that runs a new engine (the mqtt section changed): the sources that were
    failing in the engine before poll at once (`at_once`), the others at their schedule."""
    classes = {("source", "cron"): CronSource, ("sink", "fake"): FakeSink}
    monkeypatch.setattr(registry, "find", lambda k, n: registry.Entry(k, n, classes[(k, n)]))
    monkeypatch.setattr(CronSource, "polls", [])
    sources = {
        "fixed": CronConfig(type="cron", url="http://fixed"),
        "other": CronConfig(type="cron"),
    }
    config = dataclasses.replace(fake_config(tmp_path), sources=sources)
    clock = FakeClock()
    engine = Engine(config, store, clock=clock, at_once=frozenset({"fixed"}))
    running = asyncio.ensure_future(engine.run())
    await advance_until(clock, lambda: bool(CronSource.polls), within=2.0)
    clock.advance(60.0)
    await asyncio.sleep(0.01)
    assert CronSource.polls == ["http://fixed"]
    assert engine.sources["other"].status().first_try
    engine.stop()
    async with asyncio.timeout(10):
        await running

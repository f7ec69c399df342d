"""Runners: the ingest hand-over bounded by count and bytes, and sink batches by bytes."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from gateway.config.model import BatchSettings, RetrySettings, SinkConfig, SourceConfig
from gateway.core.clock import Clock
from gateway.core.component import Context, Message, Rejected, Sink, Source
from gateway.core.errors import RetryableError
from gateway.core.flowfile import FlowFile
from gateway.engine.runner import Ingest, SinkRunner, SourceRunner, message_bytes
from gateway.store.sqlite import Batch, Store

pytestmark = pytest.mark.unit


def msg(size: int) -> Message:
    return Message(FlowFile.create("t/1", b"x" * size))


async def test_ingest_holds_at_most_its_bytes_and_always_one_message() -> None:
    one = message_bytes(msg(100_000))
    ingest = Ingest(capacity=1000, max_bytes=3 * one)
    await ingest.put("s", [msg(100_000) for _ in range(3)])
    assert not ingest.offer("s", msg(100_000)), "a fourth would go past max_bytes"
    blocked = asyncio.ensure_future(ingest.put("s", [msg(100_000), msg(100_000)]))
    await asyncio.sleep(0.01)
    assert not blocked.done() and len(ingest) == 3 and ingest.bytes <= 3 * one
    got = await ingest.take(100, 0, max_bytes=2 * one)
    assert len(got) == 2, "a take stops at its byte limit"
    await asyncio.sleep(0.01)
    assert len(ingest) == 3 and ingest.bytes <= 3 * one
    await blocked
    assert len(await ingest.take(100, 0)) == 3 and ingest.bytes == 0
    # one message larger than the whole budget still gets through, alone
    huge = Ingest(capacity=1000, max_bytes=1000)
    assert huge.offer("s", msg(5000)) and not huge.offer("s", msg(1))
    assert len(await huge.take(100, 0, max_bytes=10)) == 1 and huge.bytes == 0


class Sleeps(Clock):
    """A clock that records the sleeps asked of it (and sleeps none)."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


async def test_ingest_lingers_unless_only_senders_that_wait_handed_over() -> None:
    clock = Sleeps()
    ingest = Ingest(capacity=1000, clock=clock)
    ingest.waiters.add("api")  # an http source: each client waits for its commit
    await ingest.put("api", [msg(10), msg(10)])
    assert len(await ingest.take(100, 0.005)) == 2
    assert clock.sleeps == [], "nobody who handed these over can add more: commit at once"
    await ingest.put("api", [msg(10)])
    assert ingest.offer("plant", msg(10))  # an MQTT stream handed something over too
    assert len(await ingest.take(100, 0.005)) == 2
    assert clock.sleeps == [0.005]
    ingest.offer("plant", msg(10))  # a stream alone, as without any waiting source
    assert len(await ingest.take(100, 0.005)) == 1
    assert clock.sleeps == [0.005, 0.005]


class Recording(Sink):
    """A sink that remembers the sizes of the batches it was given."""

    def __init__(self, config: Any, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.batches: list[list[int]] = []
        self.expected = 0
        self.all_there = asyncio.Event()

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        self.batches.append([len(f.content) for f in batch])
        if sum(map(len, self.batches)) >= self.expected:
            self.all_there.set()
        return []


async def test_a_sink_batch_never_exceeds_max_bytes_unless_one_flowfile_does(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    sizes = [200_000] * 12 + [1_500_000] + [50_000] * 30
    rows = [(FlowFile.create("t/1", b"x" * n), store.bit("out")) for n in sizes]
    for i in range(0, len(rows), 5):
        await store.commit(Batch(rows[i : i + 5], [], {}, []))
    config = SinkConfig(type="test", batch=BatchSettings(max_rows=1000, max_bytes=1 << 20))
    sink = Recording(config, Context("out", "sink"))
    sink.expected = len(sizes)
    runner = SinkRunner("out", sink, config, store)
    task = asyncio.ensure_future(runner.run())
    await sink.all_there.wait()
    runner.stopping = True
    runner.wake.set()
    await task
    await store.close()
    assert [n for b in sink.batches for n in b] == sizes, "all of them, in order, once"
    for b in sink.batches:
        assert len(b) == 1 or sum(b) <= 1 << 20, b
    assert [1_500_000] in sink.batches


def test_message_bytes_counts_the_attributes() -> None:
    """Messages of one byte with 500 KB of MQTT user properties each must not pass as tiny:
    an ingest bounded at 16 MiB takes about 33 of them, not 10,000 (5 GB)."""
    heavy = Message(FlowFile.create("t/1", b"x", {"mqtt.user.pad": "p" * 500_000}))
    assert message_bytes(heavy) > 500_000
    ingest = Ingest(capacity=10_000, max_bytes=16 << 20)
    assert sum(ingest.offer("s", heavy) for _ in range(100)) <= (16 << 20) // 500_000
    shared = {"mqtt.topic": "t/1", "mqtt.qos": "1"}  # one dict, many FlowFiles
    sizes = {message_bytes(Message(FlowFile.create("t/1", b"x", shared))) for _ in range(3)}
    assert len(sizes) == 1 and sizes.pop() > 200


@pytest.mark.parametrize(("linger", "sleeps"), [(None, []), (0.25, [0.25])])
async def test_an_idle_sink_woken_writes_at_once_unless_it_is_told_to_linger(
    tmp_path: Path, linger: float | None, sleeps: list[float]
) -> None:
    """Lingering after a wake adds its time to every FlowFile's way upstream at low
    rates; by default the sink writes what the store committed at once."""
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    batch = BatchSettings() if linger is None else BatchSettings(linger=linger)
    config = SinkConfig(type="test", batch=batch)
    sink = Recording(config, Context("out", "sink"))
    sink.expected = 3
    clock = Sleeps()
    runner = SinkRunner("out", sink, config, store, clock=clock)
    task = asyncio.ensure_future(runner.run())
    await runner.idle.wait()  # nothing to do yet: waiting for a wake
    rows = [(FlowFile.create("t/1", b"x"), store.bit("out")) for _ in range(3)]
    await store.commit(Batch(rows, [], {}, []))
    runner.wake.set()
    await sink.all_there.wait()
    runner.stopping = True
    runner.wake.set()
    await task
    await store.close()
    assert sink.batches == [[1, 1, 1]]
    assert [s for s in clock.sleeps if s] == sleeps


async def test_a_lingering_sink_is_stopped_at_once(tmp_path: Path) -> None:
    """An idle sink woken lingers with nothing in flight: a stop (Engine._stop_sink)
    cancels it at once, where it waited the 5 s a batch gets to finish; and a stop's own
    wake does not start a linger."""
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    config = SinkConfig(type="test", batch=BatchSettings(linger=60.0))
    sink = Recording(config, Context("out", "sink"))
    clock = Sleeps()
    runner = SinkRunner("out", sink, config, store, clock=clock)
    task = asyncio.ensure_future(runner.run())
    await runner.idle.wait()
    runner.stopping = True
    runner.wake.set()  # a stop wakes it: it ends rather than linger
    async with asyncio.timeout(5):
        await task
    assert not [s for s in clock.sleeps if s], "no linger for a stop's wake"
    held = Held()
    runner = SinkRunner("out", sink, config, store, clock=held)
    task = asyncio.ensure_future(runner.run())
    await runner.idle.wait()
    runner.wake.set()  # new FlowFiles: it lingers for more
    async with asyncio.timeout(5):
        await held.sleeping.wait()
    assert held.asked == [60.0] and runner.resting
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.close()


async def lingering_sink(
    tmp_path: Path, expected: int
) -> tuple[Store, Recording, Held, SinkRunner, asyncio.Future[None]]:
    """A sink runner lingering 1h on a clock whose sleeps last until cut, idle once it
    returns; its sink records the `expected` FlowFiles."""
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    config = SinkConfig(type="test", batch=BatchSettings(linger=3600.0))
    sink = Recording(config, Context("out", "sink"))
    sink.expected = expected
    held = Held()
    runner = SinkRunner("out", sink, config, store, clock=held)
    task = asyncio.ensure_future(runner.run())
    await runner.idle.wait()
    return store, sink, held, runner, task


async def stop_lingering(runner: SinkRunner, task: asyncio.Future[None], store: Store) -> None:
    runner.stopping = True
    runner.wake.set()
    async with asyncio.timeout(5):
        await task
    await store.close()


async def test_a_reload_with_a_shorter_linger_ends_the_linger_under_way(tmp_path: Path) -> None:
    """batch.linger is taken in place by a reload: a linger of the old length (1h) under
    way held what came in until its end, the new 0s notwithstanding."""
    store, sink, held, runner, task = await lingering_sink(tmp_path, expected=2)
    rows = [(FlowFile.create("t/1", b"x"), store.bit("out")) for _ in range(2)]
    await store.commit(Batch(rows, [], {}, []))
    runner.wake.set()
    async with asyncio.timeout(5):
        await held.sleeping.wait()
    assert held.asked == [3600.0]
    runner.update(SinkConfig(type="test", batch=BatchSettings(linger=7200.0)))  # longer
    assert runner._lingering.under_way, "a longer one cuts nothing"
    runner.update(SinkConfig(type="test", batch=BatchSettings(linger=0.0)))
    async with asyncio.timeout(5):
        await sink.all_there.wait()
    assert sink.batches == [[1, 1]]
    await stop_lingering(runner, task, store)


async def test_a_shorter_linger_taken_while_idle_holds_for_the_next_wake(tmp_path: Path) -> None:
    """A reload's shorter batch.linger taken while the sink waits for a wake, before any
    linger began, is the one the next wake lingers for: the old one (1h) was read before
    the wait and slept in full."""
    store, sink, held, runner, task = await lingering_sink(tmp_path, expected=1)
    runner.update(SinkConfig(type="test", batch=BatchSettings(linger=0.0)))
    await store.commit(Batch([(FlowFile.create("t/1", b"x"), store.bit("out"))], [], {}, []))
    runner.wake.set()
    async with asyncio.timeout(5):
        await sink.all_there.wait()
    assert held.asked == []
    await stop_lingering(runner, task, store)


class Held(Clock):
    """A clock whose sleeps last until cancelled; `asked` records them."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.sleeping.set()
        await asyncio.Event().wait()


class Ticking(Clock):
    """Time that passes only by sleeping on it (at once); every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def now_ns(self) -> int:
        return int(self.now * 1e9)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


async def test_rate_limit_holds_in_every_second_not_only_on_average(tmp_path: Path) -> None:
    # A whole batch (up to batch.max_rows) went at once and the pause came after it:
    # with rate_limit 10, fifty FlowFiles reached the upstream within the same instant.
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    rows = [(FlowFile.create("t/1", b"x"), store.bit("out")) for _ in range(50)]
    await store.commit(Batch(rows, [], {}, []))
    config = SinkConfig(type="test", rate_limit=10)
    sink = Recording(config, Context("out", "sink"))
    sink.expected = 50
    clock = Ticking()
    sent_at: list[tuple[float, int]] = []
    write = sink.write

    async def timed(batch: list[FlowFile]) -> list[Rejected]:
        sent_at.append((clock.now, len(batch)))
        return await write(batch)

    sink.write = timed  # type: ignore[method-assign]
    runner = SinkRunner("out", sink, config, store, clock=clock)
    task = asyncio.ensure_future(runner.run())
    await sink.all_there.wait()
    runner.stopping = True
    runner.wake.set()
    await task
    await store.close()
    assert sum(n for _, n in sent_at) == 50
    start = sent_at[0][0]
    for second in range(6):
        within = sum(n for t, n in sent_at if start + second <= t < start + second + 1)
        assert within <= 10, (second, sent_at)


async def test_a_rate_limit_pause_takes_a_reload_and_a_stop_at_once(tmp_path: Path) -> None:
    """The pause after a write was slept out whole: a reload that lifted `rate_limit:
    0.01` (taken in place, as documented) waited up to 100 s for it, and a stop waited
    the 5 s a sink gets to finish a batch, though no batch was under way."""
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    rows = [(FlowFile.create("t/1", b"x"), store.bit("out")) for _ in range(3)]
    await store.commit(Batch(rows, [], {}, []))
    config = SinkConfig(type="test", rate_limit=0.01)
    sink = Recording(config, Context("out", "sink"))
    sink.expected = 3
    runner = SinkRunner("out", sink, config, store)  # the real clock: a 100 s pause
    task = asyncio.ensure_future(runner.run())
    # the first FlowFile written, its pause begun: resting, so that a stop (or a reload
    # that restarts the sink) cancels it at once (Engine._stop_sink)
    for _ in range(1000):
        if runner.resting:
            break
        await asyncio.sleep(0.01)
    assert runner.resting
    assert sink.batches == [[1]]
    runner.update(SinkConfig(type="test", rate_limit=1000))
    async with asyncio.timeout(5):
        await sink.all_there.wait()
    assert [len(b) for b in sink.batches] == [1, 1, 1]
    runner.stopping = True
    runner.wake.set()
    await task
    await store.close()


class Failing(Source):
    """A polled source that connects at once and whose polls fail `failures` times."""

    mode = "poll"
    interval = 60.0

    def __init__(self, failures: int) -> None:
        super().__init__(SourceConfig(type="test"), Context("api", "source"))
        self.failures = failures
        self.polls = 0
        self.done = asyncio.Event()

    async def poll(self) -> list[FlowFile]:
        self.polls += 1
        if self.polls <= self.failures:
            raise RetryableError("answered 500 Internal Server Error")
        if self.done.is_set():  # the test looks now: poll no more
            await asyncio.Event().wait()
        self.done.set()
        return [FlowFile.create("t/1", b"{}")]


async def test_a_polled_source_that_connects_but_fails_its_polls_backs_off_doubling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backoff was reset at each connect, which a REST source always passes: an API
    answering 500 was polled again after 0.25-0.5 s forever, with an interval of 1m."""
    monkeypatch.setattr("gateway.core.backoff.random.uniform", lambda low, high: high)
    clock = Ticking()
    source = Failing(failures=5)
    runner = SourceRunner(
        "api", source, Ingest(capacity=100), RetrySettings(0.5, 30.0), asyncio.Event(), clock
    )
    runner.gate.set()
    task = asyncio.ensure_future(runner.run())
    await asyncio.wait_for(source.done.wait(), 10)
    assert clock.sleeps[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert runner.errors == 5 and runner.state == "running"
    assert runner.backoff.next() == 0.5, "a poll that worked starts the backoff over"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class TimingOut(Sink):
    """A sink whose upstream takes the connection, then lets each write hang until the
    test ends it: with a timeout (`fail`) or an answer (`answer`)."""

    def __init__(self, config: Any, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.writing = asyncio.Event()
        self.outcome: asyncio.Future[bool] | None = None

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        self.outcome = asyncio.get_running_loop().create_future()
        self.writing.set()
        if not await self.outcome:
            raise RetryableError("POST http://hook/in did not answer within 30s")
        return []

    async def next_write(self) -> None:
        await asyncio.wait_for(self.writing.wait(), 10)
        self.writing.clear()

    def end(self, worked: bool) -> None:
        assert self.outcome is not None
        self.outcome.set_result(worked)


async def test_a_sink_whose_writes_time_out_is_retrying_not_running_while_it_tries_again(
    tmp_path: Path,
) -> None:
    """The sink was "running" from each reconnect until its write timed out: most of the
    time for an upstream that takes connections and answers nothing, so the sink_failing
    alert (it must be failing for 5 minutes) never fired and edge_stream_sink_up was 1."""
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    await store.commit(Batch([(FlowFile.create("t/1", b"x"), store.bit("out"))], [], {}, []))
    config = SinkConfig(type="test")
    sink = TimingOut(config, Context("out", "sink"))
    runner = SinkRunner("out", sink, config, store, clock=Sleeps())
    task = asyncio.ensure_future(runner.run())
    await sink.next_write()
    assert runner.state == "running", "its first try: nothing has failed yet"
    sink.end(False)
    for _ in range(3):
        await sink.next_write()  # connected again, the write hangs again
        assert runner.state == "retrying" and runner.status().state == "retrying"
        sink.end(False)
    await sink.next_write()
    sink.end(True)
    await asyncio.wait_for(runner.idle.wait(), 10)
    assert runner.state == "running" and runner.delivered == 1
    runner.stopping = True
    runner.wake.set()
    await task
    await store.close()


class Hanging(Source):
    """A polled source whose API takes the connection, then lets each poll hang until the
    test ends it: with a timeout (`end(False)`) or an answer (`end(True)`)."""

    mode = "poll"
    interval = 60.0

    def __init__(self) -> None:
        super().__init__(SourceConfig(type="test"), Context("api", "source"))
        self.polling = asyncio.Event()
        self.outcome: asyncio.Future[bool] | None = None

    async def poll(self) -> list[FlowFile]:
        self.outcome = asyncio.get_running_loop().create_future()
        self.polling.set()
        if not await self.outcome:
            raise RetryableError("GET http://api/x did not answer within 30s")
        return [FlowFile.create("t/1", b"{}")]

    async def next_poll(self) -> None:
        await asyncio.wait_for(self.polling.wait(), 10)
        self.polling.clear()

    def end(self, worked: bool) -> None:
        assert self.outcome is not None
        self.outcome.set_result(worked)


async def test_a_polled_source_whose_polls_time_out_is_retrying_not_running_meanwhile() -> None:
    """The source was "running" from each reconnect until its poll timed out: most of the
    time for an API that answers nothing, so source_offline never fired."""
    clock = Ticking()
    source = Hanging()
    runner = SourceRunner(
        "api", source, Ingest(capacity=100), RetrySettings(0.5, 30.0), asyncio.Event(), clock
    )
    runner.gate.set()
    task = asyncio.ensure_future(runner.run())
    await source.next_poll()
    assert runner.state == "running", "its first poll: nothing has failed yet"
    source.end(False)
    for _ in range(3):
        await source.next_poll()  # connected again, the poll hangs again
        assert runner.state == "retrying" and runner.status().state == "retrying"
        source.end(False)
    await source.next_poll()
    source.end(True)
    await source.next_poll()  # the next one, at the interval
    assert runner.state == "running" and runner.produced == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

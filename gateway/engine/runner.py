"""Runners: the loops that drive sources and sinks, with backoff and status.

The engine owns these loops so that every component gets the same
reconnects, capped exponential backoff with jitter, error counting and status
reporting, and no component sleeps in a retry loop of its own. Every wait that
matters (backoff, poll pacing, rate limits, lingering) goes through the
injected Clock, so tests drive time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from itertools import repeat

from gateway.config.model import RetrySettings, SinkConfig
from gateway.core.backoff import Backoff
from gateway.core.clock import SYSTEM_CLOCK, Clock
from gateway.core.component import Message, Sink, Source
from gateway.core.errors import MissingError, PermanentError, RetryableError, RetryLater
from gateway.core.flowfile import FLOWFILE_OVERHEAD, FlowFile, attributes_size
from gateway.core.histogram import BATCH_BOUNDS, LATENCY_BOUNDS, Buckets
from gateway.core.schedule import WALL_CHECK_S, Schedule
from gateway.engine.status import SinkStatus, SourceStatus
from gateway.store.sqlite import DeadLetter, Store, StoreError

# attributes dict id -> (the dict, its size): most FlowFiles share a few small dicts (the
# MQTT source makes one per topic); holding the dict keeps its id from being reused
_attribute_sizes: dict[int, tuple[dict[str, str], int]] = {}
# A linger this long or longer can be cut short by a reload (Ingest.cut_linger); a shorter
# one (the default is 5 ms) is a plain sleep, with no task made for each commit.
LONG_LINGER = 0.1
_CACHED_SIZE_MAX = 1024  # larger dicts are not shared (user properties): not kept


def message_bytes(message: Message) -> int:
    """What a message holding its FlowFile takes in memory, roughly: payload, topic,
    attributes (MQTT user properties can be most of a message) and FLOWFILE_OVERHEAD."""
    ff = message.flowfile
    attributes = ff.attributes
    cached = _attribute_sizes.get(id(attributes))
    if cached is not None and cached[0] is attributes:
        size = cached[1]
    else:
        size = attributes_size(attributes)
        if size <= _CACHED_SIZE_MAX:
            if len(_attribute_sizes) >= 4096:
                _attribute_sizes.clear()
            _attribute_sizes[id(attributes)] = (attributes, size)
    return len(ff.content) + len(ff.topic) + size + FLOWFILE_OVERHEAD


class Linger:
    """A sleep on `clock` that `cut` ends at once: a reload that shortens a linger hands
    over what it held now, not at the old length's end (an hour)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._sleeping: asyncio.Future[None] | None = None

    async def sleep(self, seconds: float) -> None:
        self._sleeping = sleeping = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait((sleeping,))
        finally:
            self._sleeping = None
            sleeping.cancel()
        if not sleeping.cancelled():
            sleeping.result()  # the clock's own error, if it raised one

    def cut(self) -> None:
        if self._sleeping is not None:
            self._sleeping.cancel()

    @property
    def under_way(self) -> bool:
        """A sleep goes on, not cut."""
        return self._sleeping is not None and not self._sleeping.cancelled()


class Ingest:
    """The bounded hand-over from sources to the engine's commit loop.

    Bounded by count (`capacity`) and by bytes (`max_bytes`, see `message_bytes`):
    one message is always let in when the hand-over is empty, however large.
    Push sources call `offer` (never blocks; False when full, for QoS 0 style
    drops); everything else awaits `put`, which waits while the buffer is full.
    """

    def __init__(
        self, capacity: int, max_bytes: int = 1 << 62, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._items: deque[tuple[str, Message, int]] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.waiters: set[str] = set()  # names of the sources whose senders wait (Source.waits)
        # by source: how many messages of a `put` waiting for room are not in yet (a stop
        # that cancels it drops them; see `SourceRunner.stop`)
        self.unput: dict[str, int] = {}
        # What `take` lingers for when told None: read once the first item is in, so that a
        # reload's shorter linger (`cut_linger`) holds for a take already waiting
        self.linger = 0.0
        self._lingering = Linger(clock)  # `take`'s long linger

    def __len__(self) -> int:
        return len(self._items)

    def holds(self, source: str) -> bool:
        """True while messages of `source` wait here (a scan: for reloads, not per message)."""
        return any(item[0] == source for item in self._items)

    def _full(self, size: int) -> bool:
        items = self._items
        return len(items) >= self.capacity or (bool(items) and self.bytes + size > self.max_bytes)

    def offer(self, source: str, message: Message) -> bool:
        size = message_bytes(message)
        if self._full(size):
            return False
        self._items.append((source, message, size))
        self.bytes += size
        self._ready.set()
        return True

    async def put(self, source: str, messages: list[Message]) -> None:
        items = self._items
        sizes = [message_bytes(m) for m in messages]
        total = sum(sizes)
        if len(items) + len(messages) <= self.capacity and (
            self.bytes + total <= self.max_bytes
        ):  # the usual case: all at once
            items.extend(zip(repeat(source), messages, sizes))
            self.bytes += total
        else:
            try:
                for i, (message, size) in enumerate(zip(messages, sizes, strict=True)):
                    while self._full(size):
                        self._ready.set()
                        self._space.clear()
                        self.unput[source] = len(messages) - i  # what a cancel here drops
                        await self._space.wait()
                    items.append((source, message, size))
                    self.bytes += size
            finally:
                self.unput.pop(source, None)
        if messages:
            self._ready.set()

    def cut_linger(self, linger: float) -> None:
        """Linger for `linger` from now on, and end a longer linger under way: what waits is
        handed over now (a reload that shortens buffer.batch_linger takes it in place)."""
        self.linger = linger
        self._lingering.cut()

    async def take(
        self, limit: int, linger: float | None, max_bytes: int = 1 << 62
    ) -> list[tuple[str, Message]]:
        """Wait for at least one item, then give up to `limit` items and `max_bytes`
        (at least one), lingering to fill, unless every item waiting was handed over by a
        source in `waiters`: their senders are blocked until this commit, so lingering
        would add its time to each answer and gather little (a client sends its next
        request only after its answer). What such senders send during one commit then
        goes into the next: batches grow with the load, as in any group commit. A
        stream (MQTT, a poll) handed over anything: linger as always."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        if linger is None:
            linger = self.linger
        if len(self._items) < limit and self.bytes < max_bytes and linger > 0:
            waiters = self.waiters
            if not (waiters and all(item[0] in waiters for item in self._items)):
                if linger < LONG_LINGER:
                    await self.clock.sleep(linger)  # the usual few ms: not worth cutting
                else:
                    await self._lingering.sleep(linger)
        items = self._items
        batch: list[tuple[str, Message]] = []
        taken = 0
        if len(items) <= limit and self.bytes <= max_bytes:  # the usual case: all of it
            batch = [(source, message) for source, message, _ in items]
            items.clear()
            taken = self.bytes
        while items and len(batch) < limit:
            size = items[0][2]
            if batch and taken + size > max_bytes:
                break
            source, message, _ = items.popleft()
            batch.append((source, message))
            taken += size
        self.bytes -= taken
        if not self._full(0):
            self._space.set()
        return batch


class SourceRunner:
    """Connects a source, drives it (poll on a schedule or read in a loop), reconnects."""

    def __init__(
        self,
        name: str,
        source: Source,
        ingest: Ingest,
        retry: RetrySettings,
        gate: asyncio.Event,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.name = name
        self.source = source
        self.ingest = ingest
        self.clock = clock
        self.backoff = Backoff(retry.initial, retry.max)
        self.gate = gate  # cleared while the store is over budget with overflow: block
        self.state = "starting"
        self.last_error: str | None = None
        self.errors = 0
        self.errors_by_kind: dict[str, int] = {}  # "retryable" | "permanent" -> count
        self.produced = 0
        self.missing = False  # the last error was a MissingError (see `Engine.apply`)
        self.schedule: Schedule | None = None  # a polled source's, once it polls
        self._retry_at: float | None = None  # wall s of the next connect, while retrying
        self.outage = False  # failed since its last connect (see Source.quiet_retries)
        # A polled source's last poll (or connect) failed, and no poll has worked since: its
        # connect alone does not make it "running" again (see `run`).
        self.failing = False
        # Handing over what a read or poll returned (and what the source still holds of
        # it): a stop lets that finish rather than cancel it (see `stop`).
        self.handing = False
        self.stopping = False
        self._stop_asked = asyncio.Event()  # wakes a poll loop waiting at the gate
        # Set when the first connect has ended: connected (an MQTT source has its SUBACK),
        # retrying or failed. The engine is ready once every source's is (see `Engine.run`).
        self.tried = asyncio.Event()
        # A poll (or a connect) has ended since the runner started: until then a polled
        # source's "running" says nothing of its upstream (see SourceStatus.first_try).
        self._polled = False
        # Its first poll is at once, not at the schedule's first time: it replaces, at a
        # reload, a runner whose source was failing (see `Engine.apply`). The fix may be in
        # the new config (the URL put right), or on the upstream's side; at the first time
        # of `0 3 * * *` its source_offline alert, kept, fired for up to a day after it.
        self.at_once = False

    def _extra(self) -> Mapping[str, object]:
        extra = self.source.status()
        schedule = self.schedule
        # Until it connects again after an error, a polled source's next run is its next
        # try (`_retry_at`), which polls at once (see `_poll_loop`), a first connect's too;
        # a failed source runs no more. The schedule's time, long past, was shown for both.
        retry_at = self._retry_at if self.source.mode == "poll" else None
        if schedule is None and retry_at is None:
            return extra
        clock = self.clock
        if self.state == "failed":
            at: float | None = None
        elif retry_at is not None:
            at = retry_at
        else:
            assert schedule is not None
            at = schedule.next_run_wall(clock.monotonic(), clock.now_ns() / 1e9)
        when = None
        if at is not None:
            text = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
            when = text.replace("+00:00", "Z")
        missed = 0 if schedule is None else schedule.missed_runs
        return {**extra, "next_run": when, "missed_runs": missed}

    def status(self) -> SourceStatus:
        return SourceStatus(
            state=self.state,
            produced=self.produced,
            errors=self.errors,
            last_error=self.last_error,
            dropped=self.source.dropped,
            extra=self._extra(),
            errors_by_kind=dict(self.errors_by_kind),
            histograms=self.source.histograms(),
            type=getattr(self.source.config, "type", ""),
            first_try=self.source.mode == "poll" and not self._polled and self.state == "running",
        )

    async def stop(self, task: asyncio.Task[None], within: float) -> None:
        """Stop `task`, which runs `run`: at once while it waits (for the schedule, the
        peer, the backoff), else once it has handed over what it read and what the source
        holds of it (`Source.held`). Cancelled in the hand-over, what it had read and not
        yet put in the ingest was lost (a REST answer's pages after the first, the rest of
        a page waiting for room), though nothing would read it again: such a source has
        no position to resume from, and its sender nothing unacknowledged to send again.
        `within`: how long the hand-over may take (the store full, it may take for ever);
        then it is cancelled, and what it had not handed over is said to be dropped
        (counted before the cancel: `Ingest.unput` goes with the `put`)."""
        self.stopping = True
        self._stop_asked.set()
        if self.handing or self.source.held:
            _done, late = await asyncio.wait({task}, timeout=within)
            if late:
                self._cut_off(within)
        await stop_task(task)

    def _cut_off(self, within: float) -> None:
        """Say what a stop that cancels the source in its hand-over drops."""
        source = self.source
        dropped = self.ingest.unput.get(self.name, 0) + (source.held_items if source.held else 0)
        if not dropped:
            return
        if source.lost_if_cut is None:
            source.ctx.log.warning(
                "%d messages it read are not handed over after %.0f s; stopped anyway (they"
                " are read again: sent again by their sender, or from the source's position)",
                dropped,
                within,
            )
        else:
            source.ctx.log.error(
                "%d items it read are not handed over after %.0f s; stopped anyway: they are"
                " lost (%s)",
                dropped,
                within,
                source.lost_if_cut,
            )

    async def _hand_over(self, messages: list[Message]) -> None:
        """Put `messages` in the ingest, then the pages the source still holds of the same
        read (`Source.held`); a stop asked meanwhile waits for this (see `stop`). Set
        before any await after the read returned: a cancel cannot land in between."""
        self.handing = True
        try:
            while True:
                self.produced += len(messages)
                await self.ingest.put(self.name, messages)
                if not (self.stopping and self.source.held):
                    break  # running: the poll loop takes the next page, after the gate
                messages = await self.source.poll_messages()
        finally:
            self.handing = False
        if self.stopping:
            raise asyncio.CancelledError

    async def run(self) -> None:
        log = self.source.ctx.log
        while True:
            try:
                await self.gate.wait()
                self.state = "connecting"
                await self.source.connect()
                polled = self.source.mode == "poll"
                # After a failure a polled source is running again once a poll works: a
                # REST API that takes the connection and times out every request showed
                # "running" most of the time, and source_offline never fired.
                self.state = "retrying" if polled and self.failing else "running"
                self._retry_at = None  # the try happened: a polled source polls now
                self.tried.set()
                self.missing = False
                self.outage = False
                if self.source.mode == "poll":
                    # A polled source's connect proves little (a REST source's is a client
                    # session): its backoff resets after a poll that worked, or an API that
                    # answers 500 was asked again every half second whatever the interval.
                    await self._poll_loop()
                else:
                    self.backoff.reset()
                    await self._read_loop()
            except RetryableError as err:
                self._failed(str(err), "retryable")
                self.missing = isinstance(err, MissingError)
                delay = self.backoff.next()
                if not self.source.quiet_retries:
                    log.warning("%s; retrying in %.1f s", err, delay)
                elif self.outage:  # said when it began; the status shows the latest
                    log.debug("%s; retrying in %.1f s", err, delay)
                else:
                    log.warning("%s; retrying in %.1f s, quietly until it is back", err, delay)
                self.outage = True
                self._retry_at = self.clock.now_ns() / 1e9 + delay
                await self.close()
                await self.clock.sleep(delay)
            except PermanentError as err:
                self._failed(str(err), "permanent")
                self.state = "failed"
                log.error("stopped: %s (fix the config and reload)", err)
                await self.close()
                return

    def _failed(self, reason: str, kind: str) -> None:
        self._polled = True
        self.errors += 1
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.last_error = reason
        self.state = "retrying"
        self.failing = True
        self.tried.set()

    async def close(self) -> None:
        try:
            await self.source.close()
        except (RetryableError, PermanentError, OSError) as err:
            self.source.ctx.log.warning("close failed: %s", err)

    def _schedule(self) -> Schedule:
        return self.source.schedule or Schedule(interval=self.source.interval)

    async def _poll_loop(self) -> None:
        clock = self.clock
        schedule = self.schedule
        mono, wall = clock.monotonic(), clock.now_ns() / 1e9
        if schedule is None:
            schedule = self.schedule = self._schedule()
            due = schedule.first(mono, wall)
        # Back after an error and the backoff (a poll or the first connect failed): it
        # polls now, as its next_run said. Through `_sleep_until`, `settle` took the run
        # for missed once a cron time had passed meanwhile, and a cron source whose first
        # connect failed waited for its first time: retrying (source_offline firing) for
        # up to a gap of the schedule, a day for `0 3 * * *`.
        at_once, self.at_once = self.failing or self.at_once, False
        if at_once:
            due = schedule.at_once(mono, wall)
        while True:
            if not at_once:
                await self._sleep_until(schedule, due)
            at_once = False
            while True:  # a source with a backlog (a page limit reached) goes on at once
                await self._pass_gate()
                messages = await self.source.poll_messages()
                self._polled = True
                self.backoff.reset()
                if self.failing:
                    self.failing = False
                    self.state = "running"
                await self._hand_over(messages)
                if not self.source.backlog:
                    break
            due = schedule.next(clock.monotonic(), clock.now_ns() / 1e9)

    async def _pass_gate(self) -> None:
        """Wait for the gate (the store has room with overflow: block), but not in a stop
        while the source holds pages of a read (`Source.held`): the stop commits them past
        the budget, and waiting there cut the source off after DRAIN_S, losing them."""
        gate = self.gate
        if gate.is_set():
            return
        if not self.stopping:
            waits = {
                asyncio.ensure_future(gate.wait()),
                asyncio.ensure_future(self._stop_asked.wait()),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        if not (self.stopping and self.source.held):
            await gate.wait()

    async def _sleep_until(self, schedule: Schedule, due: float) -> None:
        """Sleep on the clock until `due`: monotonic seconds, or wall seconds for a cron
        schedule, whose wall clock is read again at least every WALL_CHECK_S (it may
        jump: NTP at boot on a board without an RTC)."""
        clock = self.clock
        while True:
            if schedule.wall:
                due = schedule.rewound(clock.monotonic(), clock.now_ns() / 1e9)
                left = min(due - clock.now_ns() / 1e9, WALL_CHECK_S)
            else:
                left = due - clock.monotonic()
            if left <= 0:
                due = schedule.settle(clock.monotonic(), clock.now_ns() / 1e9)
                if due <= (clock.now_ns() / 1e9 if schedule.wall else clock.monotonic()):
                    return
                continue
            await clock.sleep(left)

    async def _read_loop(self) -> None:
        while True:
            await self.gate.wait()
            await self._hand_over(await self.source.read())


class SinkRunner:
    """Delivers one sink's FlowFiles from the store, oldest first, then moves its cursor."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        config: SinkConfig,
        store: Store,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.name = name
        self.sink = sink
        self.config = config
        self.store = store
        self.clock = clock
        self.backoff = Backoff(config.retry.initial, config.retry.max)
        self.wake = asyncio.Event()
        self.state = "starting"
        self.connected = False
        self.last_error: str | None = None
        self.errors = 0
        self.delivered = 0
        self.rejected = 0
        self.missing = False  # the last error was a MissingError (see `Engine.apply`)
        # The last write or connect failed, and no write has worked since: a connect alone
        # does not make the sink "running" again (see `_deliver_loop`).
        self.failing = False
        self.errors_by_kind: dict[str, int] = {}  # "retryable" | "permanent" | "store"
        # for /metrics: the age of each FlowFile when delivered, and the size of each write
        self.latency = Buckets(LATENCY_BOUNDS)
        self.batch_sizes = Buckets(BATCH_BOUNDS)
        self.stopping = False
        # sleeping out its backoff, nothing in flight: a stop cancels it at once rather
        # than waiting for a batch to finish (see `Engine._stop_sink`)
        self.resting = False
        self.idle = asyncio.Event()
        self._ahead: asyncio.Future[tuple[list[tuple[int, FlowFile]], int]] | None = None
        self._retry_changed = asyncio.Event()
        # A write (or a connect) has ended since the runner started, or nothing waited to
        # be written: until then "running" says nothing of its upstream (a webhook's
        # connect sends nothing; see SinkStatus.first_try).
        self._tried = False
        self._lingering = Linger(self.clock)  # the linger after a wake

    def update(self, config: SinkConfig) -> None:
        """Take new delivery settings (batch, retry, rate_limit, overflow) in place: the
        delivery loop reads them for its next batch; new `retry` settings shorten the
        wait for the next try to their `max`. Other changes (a batch size) keep the
        backoff where it is: they are no reason to retry a dead upstream faster."""
        changed = config.retry != self.config.retry
        shorter = config.batch.linger < self.config.batch.linger
        self.config = config
        if changed:
            self.backoff = Backoff(config.retry.initial, config.retry.max)
            self._retry_changed.set()
        if shorter:
            # a linger of the old length (1h) held what came in until then: it goes now,
            # and the next wake lingers for the new time, as buffer.batch_linger does
            self._lingering.cut()

    def status(self) -> SinkStatus:
        return SinkStatus(
            type=self.config.type,
            state=self.state,
            depth=self.store.depth(self.name),
            delivered=self.delivered,
            dead_lettered=self.rejected,
            errors=self.errors,
            last_error=self.last_error,
            extra=self.sink.status(),
            oldest_age_s=self.store.oldest_age(self.name),
            errors_by_kind=dict(self.errors_by_kind),
            latency=self.latency,
            batch_sizes=self.batch_sizes,
            first_try=self.state == "running" and not self._tried,
        )

    async def run(self) -> None:
        try:
            await self._deliver_loop()
        finally:
            self._drop_read_ahead()

    def _drop_read_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None

    async def _deliver_loop(self) -> None:
        log = self.sink.ctx.log
        clock = self.clock
        await self.store.settled()  # this sink's last advance, if a reload cancelled it
        after = self.store.cursor(self.name)
        while not self.stopping:
            config = self.config  # read each time: a reload may update it in place
            limit = config.batch.max_rows
            max_bytes = config.batch.max_bytes
            rate = config.rate_limit
            if rate:  # None or 0: no limit
                # A batch holds at most one second's worth, so that no second carries more
                # than rate_limit (a whole batch went at once, then the pause came); a
                # fraction holds on average (2.5: two, then 0.8 s), as documented.
                limit = min(limit, max(1, int(rate)))
            try:
                if not self.connected:
                    self.state = "connecting"
                    await self.sink.connect()
                    self.connected = True
                    self.missing = False
                    # After a failure, running again takes a write that works (or nothing
                    # to write): an upstream that takes the connection and then fails or
                    # times out every write showed "running" most of the time, so
                    # sink_failing never fired and edge_stream_sink_up said 1.
                    self.state = "retrying" if self.failing else "running"
                    log.info("connected")
                ahead, self._ahead = self._ahead, None
                if ahead is not None:
                    rows, seen = await ahead
                else:
                    rows, seen = await self.store.read(self.name, after, limit, max_bytes)
                if not rows:
                    self._tried = True
                    if self.failing:  # connected, and nothing waits to be written
                        self.failing = False
                        self.state = "running"
                    if seen > after:
                        await self.store.advance(self.name, seen, 0, [])
                        after = seen
                    if ahead is not None:
                        continue  # read while the last batch was written: look again now
                    self.idle.set()
                    self.wake.clear()
                    try:
                        async with asyncio.timeout(1.0):
                            await self.wake.wait()
                    except TimeoutError:
                        pass
                    # read after the wait: a reload's shorter linger taken meanwhile holds
                    # (`update` cuts only a linger under way)
                    linger = self.config.batch.linger
                    if linger > 0 and not self.stopping:
                        # nothing in flight: a stop cancels it at once (`resting`), where
                        # it waited the 5 s a batch gets to finish, a linger of 10 s each
                        # stop and each reload that restarted the sink
                        self.resting = True
                        try:
                            await self._lingering.sleep(linger)
                        finally:
                            self.resting = False
                    continue
                self.idle.clear()
                started = clock.monotonic()
                if len(rows) == limit or (
                    seen == rows[-1][0] and sum(len(ff.content) for _, ff in rows) > max_bytes // 2
                ):
                    # a full batch (by rows or bytes): read the next one while this one is
                    # written, so a draining backlog costs the upstream's round trip and
                    # little else; memory holds two batches at most
                    self._ahead = asyncio.ensure_future(
                        self.store.read(self.name, seen, limit, max_bytes)
                    )
                rejected = await self.sink.write([ff for _, ff in rows])
                self._tried = True
                upto = seen
                dead = [
                    DeadLetter(r.flowfile, f"sink {self.name}", r.reason, self.name)
                    for r in rejected
                ]
                await self.store.advance(self.name, upto, len(rows) - len(dead), dead)
                after = upto
                self.delivered += len(rows) - len(dead)
                self.batch_sizes.add(len(rows))
                if dead:
                    refused = {d.flowfile.id for d in dead}
                    created = [ff.created for _, ff in rows if ff.id not in refused]
                else:
                    created = [ff.created for _, ff in rows]
                self.latency.add_ages(time.time_ns(), created)
                if dead:
                    self.rejected += len(dead)
                    log.warning(
                        "upstream refused %d FlowFiles; they are in the dead letters "
                        "(first reason: %s)",
                        len(dead),
                        dead[0].reason,
                    )
                self.backoff.reset()
                if self.state != "running":
                    log.info("delivering again")
                self.state = "running"
                self.failing = False
                if rate:
                    await self._pace(len(rows), started)
            except (RetryableError, StoreError, PermanentError) as err:
                self._tried = True
                self._drop_read_ahead()  # it followed a delivery that did not happen
                if isinstance(err, PermanentError):
                    self._count_error("permanent")
                    self.errors += 1
                    self.last_error = str(err)
                    self.state = "failed"
                    log.error("stopped delivering: %s; data stays buffered (fix and reload)", err)
                    await self.close()
                    return
                retryable = isinstance(err, RetryableError)
                self.missing = isinstance(err, MissingError)
                self._count_error("retryable" if retryable else "store")
                told = err.after if isinstance(err, RetryLater) else 0.0
                await self._retry(str(err) if retryable else f"store: {err}", told)

    async def _pace(self, count: int, started: float) -> None:
        """Wait out what `rate_limit` asks after a write of `count` FlowFiles begun at
        `started`. The limit is read again each second: one a reload lowered or lifted
        in place counts at once (`rate_limit: 0.01` had its 100 s slept out whole).
        Nothing is in flight meanwhile, so a stop cancels the pause (`resting`)."""
        self.resting = True
        try:
            while not self.stopping:
                rate = self.config.rate_limit
                if not rate:
                    return
                pause = count / rate - (self.clock.monotonic() - started)
                if pause <= 0:
                    return
                await self.clock.sleep(min(pause, 1.0))
        finally:
            self.resting = False

    def _count_error(self, kind: str) -> None:
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    async def _retry(self, reason: str, after: float = 0.0) -> None:
        # Cleared before the delay is drawn: a reload landing from here on (during the
        # close, say) shortens this wait; cleared after the close, it was lost.
        self._retry_changed.clear()
        self.errors += 1
        self.last_error = reason
        self.state = "retrying"
        self.failing = True
        self.connected = False
        # the upstream said when to come back (Retry-After): not sooner, within the cap
        delay = max(self.backoff.next(), min(after, self.config.retry.max))
        self.sink.ctx.log.warning(
            "%s; retrying in %.1f s (depth %d)", reason, delay, self.store.depth(self.name)
        )
        await self.close()
        if self.stopping:  # came during the close: no wait to begin
            return
        self.resting = True
        try:
            await self._rest(delay)
        finally:
            self.resting = False

    async def _rest(self, delay: float) -> None:
        """Sleep `delay` on the clock; new `retry` settings taken meanwhile (see `update`)
        shorten what is left of it to their `max`: with retry.max: 1h the new settings
        waited for the old hour's end."""
        clock = self.clock
        deadline = clock.monotonic() + delay
        while True:
            if self._retry_changed.is_set():
                self._retry_changed.clear()
                deadline = min(deadline, clock.monotonic() + self.config.retry.max)
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                return
            sleep = asyncio.ensure_future(clock.sleep(remaining))
            changed = asyncio.ensure_future(self._retry_changed.wait())
            try:
                await asyncio.wait({sleep, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleep.cancel()
                changed.cancel()
                await asyncio.gather(sleep, changed, return_exceptions=True)
            if not sleep.cancelled():
                sleep.result()  # a clock's own error is raised, not taken for slept out
                return  # slept out

    async def close(self) -> None:
        try:
            await self.sink.close()
        except (RetryableError, PermanentError, OSError) as err:
            self.sink.ctx.log.warning("close failed: %s", err)


async def stop_task(task: asyncio.Task[None], every: float = 1.0) -> None:
    """Cancel `task` and wait until it has ended, cancelling it again every `every`
    seconds: a library may swallow one cancellation (Python 3.11's asyncio.timeout does
    when its own deadline falls at the same moment; seen with redis-py's read timeout,
    after which the source went on reading and the shutdown waited for ever)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        task.exception()  # retrieved: an error of its own was logged by `supervised`


async def supervised(
    name: str,
    fn: Callable[[], Awaitable[None]],
    log: logging.Logger,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """The one boundary where unexpected errors are caught: log, count, restart `fn`
    after a capped backoff. Returns when `fn` does."""
    backoff = Backoff(1.0, 60.0)
    while True:
        try:
            await fn()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = backoff.next()
            log.exception("%s: crashed; restarting in %.1f s", name, delay)
            await clock.sleep(delay)

"""The engine: the topology built from the config (sources, routes, sinks), and its loops.

One ingest loop takes what sources hand over, routes it, and commits the
routed FlowFiles, dead letters, processor state and redelivery marks in one
store transaction; only then are the sources acknowledged. Each sink has a
runner that delivers from the store and moves its cursor. Every loop belongs
to one TaskGroup owned here.

The engine runs on a store it is given, opened, and never opens or closes
one; the process services (the store, the embedded MQTT broker, the web
server) belong to `gateway.app`, so that a reload swaps engines under them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__, registry
from gateway.config.model import Config, RetrySettings
from gateway.config.units import duration_text
from gateway.core.backoff import Backoff
from gateway.core.clock import SYSTEM_CLOCK, Clock
from gateway.core.component import Context, Message, Processor, Sink, Source
from gateway.core.errors import RetryableError
from gateway.core.histogram import BATCH_BOUNDS, LATENCY_BOUNDS, Buckets
from gateway.core.topics import TopicWatch
from gateway.engine.console import TopicsSeen
from gateway.engine.plan import Plan
from gateway.engine.router import Route, Router, is_processor_label, processor_label
from gateway.engine.runner import Ingest, SinkRunner, SourceRunner, stop_task, supervised
from gateway.engine.status import (
    BrokerStatus,
    DiskStatus,
    GatewayStatus,
    RouteStatus,
    Snapshot,
    StoreStatus,
)
from gateway.store.sqlite import Batch, DeadLetter, Store, StoreError

if TYPE_CHECKING:
    from gateway.core.flowfile import FlowFile
    from gateway.engine.replicate import Replicator

log = logging.getLogger("gateway.engine")

# The hand-over from sources to the commit loop holds at most INGEST_CAPACITY messages
# and INGEST_MAX_BYTES of them; one commit takes at most buffer.batch_max messages and
# COMMIT_MAX_BYTES. With 250 KB payloads that is 32 messages waiting and 16 per commit.
INGEST_CAPACITY = 20000
INGEST_MAX_BYTES = 8 << 20
COMMIT_MAX_BYTES = 4 << 20
# Near a full disk a commit is kept small: its pages go to the WAL and then to the file,
# so the last commit before intake pauses must not take the room that delivery needs to
# move its cursors and purge.
SHORT_DISK_FREE = 48 << 20
SHORT_DISK_COMMIT_BYTES = 256 << 10
IDLE_RELEASE_S = 3
SOURCE_RETRY = RetrySettings(initial=0.5, max=30.0)
SINK_FINISH_S = 5.0  # at shutdown, how long a sink may take to finish its batch
STOP_COMMIT_TRIES = 3  # at a stop, the commits a batch gets before it is left unacknowledged
DRAIN_S = 10.0  # a stop or reload: how long a stopping source's hand-over, then commit, may take
START_CHECK_S = 3.0  # a reload: how long a started component has to fail outright
# A start: how long the sources' first connects may hold back readiness (READY=1,
# /healthz), so that a message published once the gateway says it is up is read.
FIRST_CONNECT_S = 10.0
REPLICA_FINISH_S = 2.0  # at shutdown, how long the state replica may take to catch up
TICK_S = 1.0  # how often stateful processors' timers run (a window closing without new data)


def _own_rows(
    processor: Processor, rows: list[tuple[str, int, bytes]]
) -> list[tuple[str, int, bytes]]:
    """`rows` (a kept state: key, seq, JSON value) when `processor` made them; else an
    empty list, with a WARNING: the state of another type of processor is left at this
    ROUTE.N (a deadband put before a window), and reading it would fail or mislead."""
    for key, _, data in rows:
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if not processor.owns_state(key, value):
            break
    else:
        return rows
    log.warning(
        "engine: the kept state %s (%d keys) was not written by the %s processor now at"
        " %s (a processor was added or removed before it in its route); it is dropped,"
        " not continued",
        processor.ctx.name,
        len(rows),
        getattr(processor.config, "type", type(processor).__name__),
        processor.ctx.name,
    )
    return []


class Engine:
    """The topology of one config, run on an open store: sources, routes, sinks."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        mqtt_url: str | None = None,
        config_path: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        watch: TopicWatch | None = None,
        topics: TopicsSeen | None = None,
        first: bool = False,
        at_once: frozenset[str] = frozenset(),
    ) -> None:
        """`mqtt_url` is the gateway's broker (resolved by the process from `mqtt.url`);
        None when no component uses it. `watch` is told the topics of what commits, while
        it watches some filter (the `no_data` alerts). `first`: the process's first engine
        (not a reload's), the one that waits for the state replica (`restore_wait`).
        `at_once`: the polled sources that poll at once, not at their schedule's first
        time: a reload's engine, they were failing in the one before (SourceRunner.at_once)."""
        self.config = config
        self.at_once = at_once
        self.first = first
        self.config_path = config_path
        self.store = store
        self.mqtt_url = mqtt_url
        self.clock = clock
        self.watch = watch
        self.topics = topics  # the console's topics seen, told of each commit
        self.data_dir = Path(config.gateway.data_dir)
        self.ingest = Ingest(INGEST_CAPACITY, INGEST_MAX_BYTES, clock)
        self.ingest.linger = config.buffer.batch_linger
        self.gate = asyncio.Event()
        self.gate.set()
        self.sources: dict[str, SourceRunner] = {}
        self.sinks: dict[str, SinkRunner] = {}
        self.router: Router | None = None
        self.replicator: Replicator | None = None  # state.replicate.redis
        self.started = clock.monotonic()
        self.committed_batches = 0
        self.ingested = 0
        # for /metrics: the age of each FlowFile when its commit is done, and commit sizes
        self.commit_latency = Buckets(LATENCY_BOUNDS)
        self.commit_batches = Buckets(BATCH_BOUNDS)
        self.stop_requested = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._taking = False  # the ingest loop waits for items (holds none)
        self._committing: dict[str, int] = {}  # source -> commits under way holding its items
        self._intake_closed = False
        # A stop (see `_shutdown`): once a commit is given up (refused STOP_COMMIT_TRIES
        # times, past the stop's deadline, or the store file gone), every later one is
        # too: committing a later batch would acknowledge past the one given up (a
        # position saved beyond it, a Redis list trimmed by count), losing it for good.
        self._stopping = False
        self._stop_by: float | None = None  # the commits' deadline, once intake is closed
        self._give_up_why: str | None = None
        self._given_up = 0  # messages handed over, neither stored nor acknowledged
        # One commit at a time: processor state is taken at each commit, and the store
        # must receive those changes in the order they were taken (ingest, timers, replay).
        self._commit_lock = asyncio.Lock()
        self._ticking = False  # the timer loop is committing (shutdown lets it finish)
        self._unowned_told: set[str] = set()  # kept state owned by no processor, logged
        self.ready = asyncio.Event()

    # -- building ----------------------------------------------------------

    def _context(self, name: str, kind: str) -> Context:
        return Context(
            name=name,
            kind=kind,
            clock=self.clock,
            data_dir=str(self.data_dir),
            gateway_id=self.config.gateway.id,
            mqtt_url=self.mqtt_url or self.config.mqtt.url,
            mqtt_client_prefix=self.config.mqtt.client_id
            or f"edge-stream-{self.config.gateway.id}",
            mqtt_username=self.config.mqtt.username,
            mqtt_password=self.config.mqtt.password,
            mqtt_keepalive=self.config.mqtt.keepalive,
            mqtt_tls_files=(
                self.config.mqtt.ca_file,
                self.config.mqtt.cert_file,
                self.config.mqtt.key_file,
            ),
        )

    def _build(self) -> None:
        cfg = self.config
        for name, sink_cfg in cfg.sinks.items():
            self.sinks[name] = self._sink_runner(name, sink_cfg)
        for name, src_cfg in cfg.sources.items():
            self.sources[name] = self._source_runner(name, src_cfg)
            self.sources[name].at_once = name in self.at_once

    def _sink_runner(self, name: str, sink_cfg: Any) -> SinkRunner:
        entry = registry.find("sink", sink_cfg.type)
        assert entry is not None  # the config loader checked the type
        sink: Sink = entry.cls(sink_cfg, self._context(name, "sink"))
        return SinkRunner(name, sink, sink_cfg, self.store, self.clock)

    def _source_runner(self, name: str, src_cfg: Any) -> SourceRunner:
        entry = registry.find("source", src_cfg.type)
        assert entry is not None
        ctx = self._context(name, "source")
        ctx.marks = self.store.marks(name)
        ctx.position = functools.partial(self.store.position, name)
        ctx.save_position = functools.partial(self._save_position, name)
        ctx.accepting = self.gate.is_set
        source: Source = entry.cls(src_cfg, ctx)
        if source.waits:
            self.ingest.waiters.add(name)
        else:  # a reload may have given the name to another type
            self.ingest.waiters.discard(name)
        return SourceRunner(name, source, self.ingest, SOURCE_RETRY, self.gate, self.clock)

    async def _save_position(self, source: str, position: bytes) -> None:
        """Commit `position` as `source`'s, with no data (see `Context.save_position`).

        A store that cannot commit is the source's retryable error: its runner closes it
        and connects again later (a crash would restart it without closing it)."""
        async with self._commit_lock:
            try:
                await self.store.commit(Batch([], [], {}, [], positions={source: position}))
            except StoreError as err:
                raise RetryableError(f"cannot keep its start position in the store: {err}") from err

    def _build_router(
        self, reuse: Router | None = None, keep: frozenset[str] = frozenset()
    ) -> Router:
        """The router of this engine's config; routes named in `keep` are taken from
        `reuse` as they are (their processors keep their state in memory)."""
        routes = []
        for name, route_cfg in self.config.routes.items():
            if reuse is not None and name in keep and name in reuse.routes:
                routes.append(reuse.routes[name])
                continue
            processors: list[tuple[str, Processor]] = []
            for i, p_cfg in enumerate(route_cfg.processors):
                entry = registry.find("processor", p_cfg.type)
                assert entry is not None
                label = processor_label(name, i, p_cfg.type)
                processors.append(
                    (label, entry.cls(p_cfg, self._context(f"{name}.{i}", "processor")))
                )
            mask = 0
            for sink_name in route_cfg.sinks:
                mask |= self.store.bit(sink_name)
            routes.append(Route(name, tuple(route_cfg.match), processors, mask))
        router = Router(routes)
        if reuse is not None:
            router.unrouted, router.errors = reuse.unrouted, reuse.errors
        return router

    # -- running -------------------------------------------------------------

    async def run(self) -> None:
        """Build the topology on the store, run it until `stop()`, then shut it down in
        order (intake, commit and ack what was handed over, sinks finish, close) and
        return. The store stays open: it belongs to the caller."""
        self._build()
        if problem := self.store.sink_room_problem(self.sinks):
            raise StoreError(problem)
        await self.store.register_sinks(self.sinks)
        self._store_policies()
        await self._save_active()
        self.router = self._build_router()
        state = await self.store.load_state()
        for label, processor in self.router.stateful():
            if label in state:
                processor.restore(state[label])
        await self._load_kv([p for _, p in self.router.stateful()])
        await self._warn_unowned_state()
        # Resets `edge-stream state reset` left (made while no gateway ran, or asked as
        # one stopped): done before any reading, and they mean the store is not empty,
        # so the Redis replica (which still holds that state) is not restored over them.
        resets = await self.store.take_resets()
        replicate = self.config.state.replicate
        if replicate.redis is not None:
            # redis-py takes ~5 MB: only a gateway that replicates loads it
            from gateway.engine.replicate import Replicator

            self.replicator = Replicator(
                replicate,
                self.config.gateway.id,
                self._kv_components,
                self.store.load_kv,
                self.clock,
            )
            if not resets and not await self.store.has_state():
                await self._restore_from_replica(self.replicator)
        if resets:
            await self._commit([], resets=resets)
            log.info("engine: state of %s reset", ", ".join(resets))
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self._spawn(tg, "ingest", self._ingest_loop)
            if self.replicator is not None:
                self._spawn(tg, "replication", self.replicator.run)
            if self.router.stateful():
                self._spawn(tg, "timers", self._tick_loop)
            self._spawn(tg, "maintenance", self._maintenance_loop)
            self._spawn(tg, "requests", self._requests_loop)
            for name, runner in self.sinks.items():
                self._spawn(tg, f"sink {name}", runner.run)
            for name, src in self.sources.items():
                self._spawn(tg, f"source {name}", src.run)
            await self._first_connects()
            if not self.stop_requested.is_set():
                # Stopped before (a reload, SIGTERM): the gateway is not up with this
                # engine; the next one answers the reload and says READY=1.
                self.ready.set()
            log.info(
                "engine: running with %d sources, %d routes, %d sinks; store %s",
                len(self.sources),
                len(self.router.routes),
                len(self.sinks),
                self.store.path,
            )
            await self.stop_requested.wait()
            await self._shutdown()
        self._tg = None
        log.info("engine: stopped")

    def stop(self) -> None:
        self.stop_requested.set()

    async def _warn_unowned_state(self) -> None:
        """Say once which kept state no processor owns any more: a state is named ROUTE.N,
        so a processor added, removed or moved before a window in its route (or the route
        renamed or removed) leaves the window's open windows behind, not continued."""
        owned = set(self._kv_components())
        for name, keys in (await self.store.kv_components()).items():
            if name in owned or name in self._unowned_told:
                continue
            self._unowned_told.add(name)
            log.warning(
                "engine: the kept state %s (%d keys: open windows, deadband values) belongs"
                " to no processor now (one was added, removed or moved in its route, or"
                " the route was renamed or removed), so it is not continued; 'edge-stream"
                " state reset %s' forgets it",
                name,
                keys,
                name,
            )

    def _kv_components(self) -> list[str]:
        router = self.router
        stateful = [] if router is None else router.stateful()
        return [p.kv.component for _, p in stateful if p.kv is not None]

    async def _restore_from_replica(self, replicator: Replicator) -> None:
        """The store is empty: take the processors' state from the Redis replica (a
        standby taking over) and write it to the store at once. At the process's start,
        while Redis does not answer, wait for it up to `restore_wait` (or a stop)."""
        from redis.exceptions import RedisError

        from gateway.engine.replicate import describe  # loaded with Replicator

        assert self.router is not None

        stateful = [(p, p.kv) for _, p in self.router.stateful() if p.kv is not None]
        if not stateful:
            return
        wait = replicator.settings.restore_wait if self.first else 0.0
        deadline = self.clock.monotonic() + wait
        backoff = Backoff(0.5, 5.0)
        told = False
        while True:
            try:
                loaded = [await replicator.load(kv.component) for _, kv in stateful]
                break
            except (RedisError, OSError, TimeoutError) as err:
                where = replicator.status()["redis"]
                error = describe(err, replicator.settings.timeout)
                left = deadline - self.clock.monotonic()
                if self.stop_requested.is_set():
                    # Stopped while waiting: the engine starts and stops at once, and must
                    # not copy its empty state over the replica meanwhile.
                    await replicator.close()
                    self.replicator = None
                    return
                if left <= 0:
                    log.error(
                        "engine: the store is empty and the state replica in %s cannot be"
                        " read (%s); starting without the state of the gateway it"
                        " replicates (its own state replaces the replica once Redis answers)",
                        where,
                        error,
                    )
                    return
                if not told:
                    told = True
                    log.warning(
                        "engine: the store is empty and the state replica in %s cannot be"
                        " read (%s); waiting up to %s for it before starting the sources"
                        " (state.replicate.restore_wait)",
                        where,
                        error,
                        duration_text(wait),
                    )
                stop = asyncio.ensure_future(self.stop_requested.wait())
                try:
                    await asyncio.wait({stop}, timeout=min(backoff.next(), left))
                finally:
                    stop.cancel()
        keys = components = 0
        for (processor, kv), rows in zip(stateful, loaded, strict=True):
            rows = _own_rows(processor, rows)
            if rows:
                kv.restore(rows)
                kv.mark_all_changed()
                processor.restored()
                keys += len(rows)
                components += 1
        if keys:
            log.info(
                "engine: the store was empty; restored %d state keys of %d components from"
                " the replica in %s",
                keys,
                components,
                replicator.status()["redis"],
            )
            await self._commit([])

    async def _load_kv(self, processors: list[Processor]) -> None:
        """Give each processor's key/value state its last checkpoint from the store."""
        for processor in processors:
            if processor.kv is not None:
                rows = await self.store.load_kv(processor.kv.component)
                own = _own_rows(processor, rows)
                processor.kv.restore(own)
                if own is not rows:  # another processor's: deleted with the next commit
                    processor.kv.discard([key for key, _, _ in rows])
                processor.restored()

    def _spawn(self, tg: asyncio.TaskGroup, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        self._tasks[name] = tg.create_task(supervised(name, fn, log, self.clock), name=name)

    async def _shutdown(self) -> None:
        log.info("engine: stopping intake")
        self._stopping = True
        await asyncio.gather(
            *(
                self._stop_intake(n.removeprefix("source "), t)
                for n, t in self._tasks.items()
                if n.startswith("source ")
            )
        )
        # Commit what is already handed over so its sources get their acks. The ingest
        # loop is cancelled only while it waits for items; a batch it has taken is
        # committed and acked first (cancelled in the commit, it would be stored unacked).
        self._intake_closed = True
        self._stop_by = self.clock.monotonic() + DRAIN_S
        if self._taking:
            self._tasks["ingest"].cancel()
        await asyncio.gather(self._tasks["ingest"], return_exceptions=True)
        timers = self._tasks.get("timers")
        if timers is not None:  # cancelled between commits only, like the ingest loop
            if not self._ticking:
                timers.cancel()
            await asyncio.gather(timers, return_exceptions=True)
        while len(self.ingest):
            await self._commit(
                await self.ingest.take(self.config.buffer.batch_max, 0, COMMIT_MAX_BYTES)
            )
        if self._given_up:
            log.error(
                "engine: stopping: %d message(s) handed over were not stored nor"
                " acknowledged (%s): read again where their source can (a sender's retry,"
                " a position), lost otherwise",
                self._given_up,
                self._give_up_why,
            )
        for source_runner in self.sources.values():
            await source_runner.close()
        # Let each sink finish the batch it is writing, then close it.
        for sink_runner in self.sinks.values():
            sink_runner.stopping = True
            sink_runner.wake.set()
        sink_tasks = [t for n, t in self._tasks.items() if n.startswith("sink ")]
        # one sleeping out its backoff has no batch to finish: not waited for
        resting = {self._tasks[f"sink {n}"] for n, r in self.sinks.items() if r.resting}
        busy = [t for t in sink_tasks if t not in resting]
        _done, pending = await asyncio.wait(busy, timeout=SINK_FINISH_S) if busy else (set(), set())
        await asyncio.gather(*(stop_task(task) for task in pending | resting))
        await asyncio.gather(*sink_tasks, return_exceptions=True)
        for sink_runner in self.sinks.values():
            await sink_runner.close()
        replication = self._tasks.get("replication")
        if replication is not None and self.replicator is not None:
            # the last commits' state changes get a moment to reach the replica
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPLICA_FINISH_S):
                    while self.replicator.busy():  # noqa: ASYNC110 - a few polls at exit
                        await asyncio.sleep(0.05)
            await stop_task(replication)
        await stop_task(self._tasks["requests"])
        await stop_task(self._tasks["maintenance"])

    # -- reload by diff -------------------------------------------------------

    def _store_policies(self) -> None:
        """Tell the store which sinks run now and their overflow policies; a sink it
        knows that is not among them is a removed one, whose backlog it keeps."""
        self.store.set_overflow(
            {name: r.config.overflow for name, r in self.sinks.items() if r.config.overflow}
        )
        self.store.set_active(self.sinks)

    async def _save_active(self, starting: Iterable[str] = ()) -> None:
        try:
            await self.store.save_active(starting)
        except StoreError as err:  # only `store drop-sink` needs it; the data does not
            log.warning(
                "engine: cannot note the running sinks in the store (`edge-stream store"
                " drop-sink` cannot tell them from removed ones meanwhile): %s",
                err,
            )

    async def renew_tls(self) -> list[str]:
        """The sources that serve their certificate files anew, which changed since they
        were read (a renewal written over them, then a reload that left the sources
        running): see `Source.renew_tls`."""
        return [
            name for name, runner in list(self.sources.items()) if await runner.source.renew_tls()
        ]

    async def apply(self, config: Config, plan: Plan, check: bool = True) -> list[str]:
        """Apply `config` to this running engine as `plan` says (see gateway/engine/plan.py):
        stop what was removed or changed, start what was added or changed, update sinks in
        place, build the router again reusing unchanged routes. Everything else runs on.

        With `check`, the started components get START_CHECK_S to fail outright: a
        PermanentError (a server that refuses the credentials, a DSN that cannot be read)
        or a MissingError (a serial port or a host name that does not exist). The failures
        are returned, one line each, and the caller rolls back by applying the previous
        config. A component that merely cannot connect yet (refused, timed out) is no
        failure: it retries as usual.
        """
        assert self._tg is not None and self.router is not None, "apply() on a running engine"
        assert plan.restart is None, "a restart is the caller's: run a new engine"
        # Sinks first learn their bits, so that the new router may route to them at once,
        # and are noted as run: `store drop-sink` must not drop one the router routes to
        # (the stops below may take seconds before `_save_active` notes the rest). A store
        # that cannot note them (locked, the disk full) raises StoreError here, before
        # anything changed: the caller refuses the reload.
        await self.store.register_sinks(plan.sinks_start)
        old, self.config = self.config, config
        if config.buffer.batch_linger != old.buffer.batch_linger:
            # taken in place: a commit lingering for the old time (1h) held what came in
            # until then; it goes now, and the next lingers for the new time
            self.ingest.cut_linger(config.buffer.batch_linger)
        failures: list[str] = []
        if plan.sinks_start:
            await self._save_active(plan.sinks_start)
        if plan.routes:
            keep = frozenset(n for n, r in config.routes.items() if old.routes.get(n) == r)
            try:
                router = self._build_router(self.router, keep)
                state = await self.store.load_state()
                running = {id(p) for _, p in self.router.stateful()}
                fresh = [(lb, p) for lb, p in router.stateful() if id(p) not in running]
                for label, processor in fresh:
                    if label in state:
                        processor.restore(state[label])  # a changed route's last checkpoint
                await self._load_kv([p for _, p in fresh])
                self._warn_unrouted()  # what the old routes dropped, named under them
                self.router = router  # between two commits: each takes the router once
                await self._warn_unowned_state()
            except Exception as err:  # a processor refused its config: roll back
                failures.append(f"routes: {err}")
            if self.router.stateful() and "timers" not in self._tasks:
                self._spawn(self._tg, "timers", self._tick_loop)
        # A polled source that was failing polls at once when started again, not at its
        # schedule's first time (see SourceRunner.at_once): its alert held till then.
        failing = {n for n in plan.sources_stop if n in self.sources and self.sources[n].failing}
        for name in plan.sources_stop:
            await self._stop_source(name)
        for name in plan.sinks_stop:
            await self._stop_sink(name)
        for name in plan.sinks_update:
            runner = self.sinks[name]
            if runner.sink.update(config.sinks[name]):
                runner.update(config.sinks[name])
            else:  # the sink cannot take it in place: a new one
                await self._stop_sink(name)
                plan.sinks_start.append(name)
        started: list[tuple[str, SinkRunner | SourceRunner]] = []
        for name in plan.sinks_start:
            try:
                sink_runner = self._sink_runner(name, config.sinks[name])
            except Exception as err:
                failures.append(f"sink {name}: {err}")
                continue
            self.sinks[name] = sink_runner
            self._spawn(self._tg, f"sink {name}", sink_runner.run)
            started.append((f"sink {name}", sink_runner))
        self._store_policies()
        await self._save_active()
        for name in plan.sources_start:
            try:
                source_runner = self._source_runner(name, config.sources[name])
            except Exception as err:
                failures.append(f"source {name}: {err}")
                continue
            source_runner.at_once = name in failing
            self.sources[name] = source_runner
            self._spawn(self._tg, f"source {name}", source_runner.run)
            started.append((f"source {name}", source_runner))
        if check and started and not failures:
            failures.extend(await self._start_check(started))
        self._wake_sinks()
        return failures

    async def _first_connects(self) -> None:
        """Wait until every source has connected (an MQTT source subscribed: on a new
        session, what is published before its SUBSCRIBE is not kept for it), is retrying
        or failed; at most FIRST_CONNECT_S, or until a stop is asked."""
        runners = list(self.sources.values())

        async def all_tried() -> None:
            for runner in runners:
                await runner.tried.wait()

        waits = [
            asyncio.ensure_future(all_tried()),
            asyncio.ensure_future(self.stop_requested.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=FIRST_CONNECT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _start_check(self, started: list[tuple[str, SinkRunner | SourceRunner]]) -> list[str]:
        """Wait until each started component has connected, is retrying, or failed for
        good (at most START_CHECK_S); the ones that failed for good, one line each."""
        deadline = self.clock.monotonic() + START_CHECK_S
        while self.clock.monotonic() < deadline:
            if all(r.state not in ("starting", "connecting") for _, r in started):
                break
            await asyncio.sleep(0.02)
        return [
            f"{what}: {r.last_error or 'failed to start'}"
            for what, r in started
            if r.state == "failed" or r.missing
        ]

    async def _stop_source(self, name: str) -> None:
        """Stop a source's intake (its hand-over: at most DRAIN_S), let what it handed
        over commit and be acknowledged (at most DRAIN_S more), then close it."""
        runner = self.sources.pop(name, None)
        task = self._tasks.pop(f"source {name}", None)
        if task is not None:
            await self._stop_intake(name, task, runner)
        await self._drain(name, runner)
        if runner is not None:
            await runner.close()

    async def _stop_intake(
        self,
        name: str,
        task: asyncio.Task[None],
        runner: SourceRunner | None = None,
    ) -> None:
        """End source `name`'s task once it has handed over what it read, or after
        DRAIN_S, at a stop of the gateway as at a reload (see `SourceRunner.stop`)."""
        runner = runner or self.sources.get(name)
        await (runner.stop(task, DRAIN_S) if runner is not None else stop_task(task))

    async def _drain(self, source: str, runner: SourceRunner | None) -> None:
        deadline = self.clock.monotonic() + DRAIN_S
        while self.clock.monotonic() < deadline:
            if source not in self._committing and not self.ingest.holds(source):
                return
            await asyncio.sleep(0.01)
        again = (
            ""
            if runner is not None and runner.source.lost_if_cut is not None
            else "; unacknowledged messages are sent again by their sender"
        )
        log.warning(
            "engine: source %s: what it handed over is not committed after %.0f s; closing"
            " it anyway (it is stored when the store takes it%s)",
            source,
            DRAIN_S,
            again,
        )

    async def _stop_sink(self, name: str) -> None:
        """Let a sink finish the batch it is writing (at most SINK_FINISH_S), then close it;
        one sleeping out its backoff is stopped at once (a reload that removed a sink
        whose upstream was down waited 5 s). Its cursor stays in the store where its last
        delivery left it."""
        runner = self.sinks.pop(name, None)
        task = self._tasks.pop(f"sink {name}", None)
        if runner is None:
            return
        runner.stopping = True
        runner.wake.set()
        if task is not None:
            if not runner.resting:  # one sleeping out its backoff has no batch to finish
                await asyncio.wait({task}, timeout=SINK_FINISH_S)
            await stop_task(task)
        await runner.close()

    # -- ingest ---------------------------------------------------------------

    async def _ingest_loop(self) -> None:
        while not self._intake_closed:
            limit = self.config.buffer.batch_max  # read each time: a reload may change them
            store = self.store
            most = (
                COMMIT_MAX_BYTES if store.disk_free > SHORT_DISK_FREE else SHORT_DISK_COMMIT_BYTES
            )
            if not self._stopping and store.blocking_mask():
                # With `block` sinks a commit takes no more than the room left in the
                # budget (at least one message): the store stops within buffer.max_bytes,
                # not a whole commit (COMMIT_MAX_BYTES, four times a small budget) past it.
                # What drop_oldest may drop counts as room. (Stopping, what sources handed
                # over is committed past the budget in whole commits, see `_store_batch`.)
                if store.over_budget:
                    await store.make_room()
                    if self._intake_closed:
                        break  # a stop came meanwhile: it waits for this loop, not for a take
                most = min(most, max(store.max_bytes - store.bytes, 1))
            # take() removes items only after its last await: cancelled in it, it has none
            self._taking = True
            items = await self.ingest.take(limit, None, most)  # ingest.linger: see apply
            self._taking = False
            await self._commit(items)

    async def _commit(
        self,
        items: list[tuple[str, Any]],
        replayed: list[int] | None = None,
        direct: list[tuple[Any, int]] | None = None,
        tick: bool = False,
        resets: list[str] | None = None,
        again: list[DeadLetter] | None = None,
        rerun: list[tuple[FlowFile, str]] | None = None,
    ) -> bool:
        """Route, store and acknowledge `items` (see `_store_batch`); meanwhile their
        sources count as committing, so that a reload closes a source only after the acks
        of everything it handed over (see `_drain`). False: given up at a stop."""
        sources = {source for source, _ in items}
        committing = self._committing
        for source in sources:
            committing[source] = committing.get(source, 0) + 1
        try:
            async with self._commit_lock:
                return await self._store_batch(items, replayed, direct, tick, resets, again, rerun)
        finally:
            for source in sources:
                left = committing[source] - 1
                if left:
                    committing[source] = left
                else:
                    del committing[source]

    async def _store_batch(
        self,
        items: list[tuple[str, Any]],
        replayed: list[int] | None = None,
        direct: list[tuple[Any, int]] | None = None,
        tick: bool = False,
        resets: list[str] | None = None,
        again: list[DeadLetter] | None = None,
        rerun: list[tuple[FlowFile, str]] | None = None,
    ) -> bool:
        assert self.router is not None
        if self._give_up_why is not None:
            self._given_up += len(items)
            return False
        flowfiles = []
        acks = []
        inbound = []
        dead: list[DeadLetter] = list(again or ())
        positions: dict[str, bytes] = {}
        for source, msg in items:
            if msg.ack is not None:
                acks.append(msg.ack)
            if msg.position is not None:
                positions[source] = msg.position  # the last one of the batch stands
            if msg.dedupe is not None:
                inbound.append((source, msg.dedupe[0], msg.dedupe[1]))
            if msg.reject is not None:
                dead.append(DeadLetter(msg.flowfile, f"source {source}", msg.reject))
            else:
                flowfiles.append(msg.flowfile)
        out: dict[str, list[Any]] = {}
        if flowfiles:
            self.router.run(flowfiles, out, dead)
        if rerun:  # replayed dead letters a route refused
            for ff, origin in rerun:
                if self.router.rerun(ff, origin, out, dead):
                    flowfiles.append(ff)  # seen like routed input (no_data, the topics)
        if tick:
            self.router.tick(self.clock.now_ns(), out, dead)
        for _, p in self.router.stateful() if resets else ():
            if p.kv is not None and p.kv.component in resets:  # type: ignore[operator]
                p.kv.clear()
                p.kv.forget_changes()  # the store deletes all its rows in this commit
                p.restored()
        state: dict[str, bytes | None] = {}
        kv: list[tuple[str, str, int, bytes | None]] = []
        for label, p in self.router.stateful():
            blob = p.state()
            if blob is not None:
                state[label] = blob
            if p.kv is not None:
                component = p.kv.component
                kv.extend((component, key, seq, value) for key, seq, value in p.kv.changes())
        rows = [(ff, mask) for ff, mask in out.values()]
        if direct:
            rows.extend(direct)
        if not (items or rows or dead or state or kv or resets or replayed or positions):
            return True  # a timer that closed nothing
        batch = Batch(rows, dead, state, inbound, kv=kv, resets=resets or [], positions=positions)
        if replayed:
            batch.replayed = replayed
        backoff = Backoff(0.2, 10.0)
        failed = 0  # tries refused since the stop began
        # Only data waits for room. A commit of state alone (the resets and the replica's
        # restore done before the sinks start) would otherwise wait for sinks that are not
        # running yet, and the gateway would never start.
        data = bool(items or rows or dead or tick)
        while True:
            if data and self.store.over_budget:
                await self.store.make_room()
            # (running, check_disk below tells; stopping, it is not called)
            if self._stopping and self.store.gone():
                return self._give_up(len(items), "its store file was deleted or replaced")
            # Stopping (a shutdown, or a reload that restarts the engine: the one that
            # raises buffer.max_bytes), what sources handed over is committed past the
            # budget or into the last free space: no sink drains while the engine
            # stops, and waiting for one hung the stop for ever (or, while sources
            # still handed over, cut them off after DRAIN_S).
            # check_disk also while over budget: it measures what /api/status shows
            # (store.disk.free_bytes read 0 for as long as a restart found the budget full)
            if data and not self._stopping and (self.store.check_disk() or self.store.over_budget):
                # full of data `block` sinks wait for, or the disk is short of space: stop
                # polling and acking until sinks drain (the maintenance loop purges)
                self.gate.clear()
                await self.clock.sleep(0.1)
                continue
            try:
                await self.store.commit(batch)
                if self.replicator is not None and (kv or resets):
                    self.replicator.offer(kv, resets or [])
                break
            except StoreError as err:
                if self._stopping:
                    failed += 1
                    late = self._stop_by is not None and self.clock.monotonic() >= self._stop_by
                    if failed >= STOP_COMMIT_TRIES or late:
                        return self._give_up(len(items), str(err))
                delay = backoff.next()
                log.error(
                    "engine: cannot commit to the store (%s); nothing is acknowledged,"
                    " retrying in %.1f s",
                    err,
                    delay,
                )
                await self.clock.sleep(delay)
        self._wake_sinks()
        if not self.gate.is_set():
            self.gate.set()
        self.committed_batches += 1
        self.ingested += len(items)
        if items and not replayed:  # a replayed dead letter's age is not a commit's latency
            self.commit_latency.add_ages(time.time_ns(), [m.flowfile.created for _, m in items])
            self.commit_batches.add(len(items))
        watch = self.watch
        if watch is not None and watch.filters:
            watch.note(ff.topic for ff in flowfiles)
        if self.topics is not None:
            self.topics.note(flowfiles)
        for ack in acks:
            ack()
        if dead:
            log.warning(
                "engine: %d FlowFiles dead-lettered, %d dead letters (one per sink; first: %s: %s)",
                len({d.flowfile.id for d in dead}),
                len(dead),
                dead[0].origin,
                dead[0].reason,
            )
        return True

    def _give_up(self, count: int, why: str) -> bool:
        """At a stop, a batch that cannot be committed is left unacknowledged (its
        sources send it again, those that can), rather than the stop waiting for ever; so
        is every later one (see `_stopping`), counted for `_shutdown`'s one ERROR line."""
        self._give_up_why = why
        self._given_up += count
        return False

    def _wake_sinks(self) -> None:
        for runner in self.sinks.values():
            runner.wake.set()

    async def _replay(self) -> None:
        """Take dead letters sent back by the CLI: to their sink, from the processor that
        refused them, or through the routes (a source's)."""
        replay = await self.store.take_replay(self.config.buffer.batch_max)
        if not replay:
            return
        store = self.store
        # One a sink refused is its output: routed again, it went through the processors
        # a second time and to the sinks that had it already. It goes back to its sink,
        # a removed one too (kept in its backlog), or, when the store no longer knows
        # that sink (`store drop-sink`), back to the dead letters, saying so.
        # One a route's processor refused goes through that processor and the ones after
        # it, to that route's sinks: routed again from the start, the other routes' sinks
        # had it twice, and the processors before it ran on their own output.
        assert self.router is not None
        direct = []
        routed = []
        rerun: list[tuple[FlowFile, str]] = []
        gone = []
        for _, ff, sink, origin in replay:
            if sink:
                if store.knows(sink):
                    direct.append((ff, store.bit(sink)))
                else:
                    gone.append(
                        DeadLetter(
                            ff,
                            "replay",
                            f"replayed, but its sink {sink!r} is no longer in the store"
                            " (dropped): add the sink back to replay it, or purge it",
                            sink,
                        )
                    )
                continue
            if origin is None or not is_processor_label(origin):
                # a source's, or replayed by a version that kept no origin
                routed.append(("replay", Message(ff)))
            else:  # the router of the commit tells whether that processor is still there
                rerun.append((ff, origin))
        seqs = [seq for seq, _, _, _ in replay]
        if not await self._commit(routed, seqs, direct, again=gone, rerun=rerun):
            return  # a stop gave it up: they are still in the store's replay queue
        await self.store.recount()  # the CLI took them out of the dead letters
        log.info("engine: %d replayed dead letters are back in the store", len(replay))

    async def _tick_loop(self) -> None:
        """Run the stateful processors' timers every TICK_S and commit what they emit."""
        while not self._intake_closed:
            await self.clock.sleep(TICK_S)
            self._ticking = True
            try:
                await self._commit([], tick=True)
            finally:
                self._ticking = False

    async def _reset_state(self) -> None:
        """Forget the state of the components `edge-stream state reset` named: in memory
        now, in the store with the commit that also takes the request away."""
        resets = await self.store.take_resets()
        if not resets or self.router is None:
            return
        await self._commit([], resets=resets)
        log.info("engine: state of %s reset", ", ".join(resets))

    async def _requests_loop(self) -> None:
        """Every second, what the CLI or the console asked of the running gateway: dead
        letters to replay, state to reset. Apart from the maintenance loop: their commits
        wait for the commit lock, and a replay for room in a full `block` budget, which
        only the maintenance loop's purge makes: run in that loop, a replay while the
        budget was full stopped intake for good."""
        while not self._intake_closed:  # stopping: what is asked waits for the next start
            await self.clock.sleep(1.0)
            for request in (self._reset_state, self._replay):  # each, whatever the other does
                try:
                    await request()
                except StoreError as err:
                    log.warning("engine: a replay or state reset failed: %s", err)

    async def _maintenance_loop(self) -> None:
        ticks = 0
        activity = (-1, -1)
        quiet = 0
        while True:
            await self.clock.sleep(1.0)
            try:
                self._warn_unrouted()
                await self.store.maintain(self.sinks)
                await self.store.refresh_oldest(self.sinks)
                ticks += 1
                if ticks % 5 == 0:
                    await self.store.recount()
                # After IDLE_RELEASE_S quiet seconds, give the memory of the busy spell back.
                now = (self.committed_batches, sum(r.delivered for r in self.sinks.values()))
                quiet = quiet + 1 if now == activity else 0
                activity = now
                if quiet == IDLE_RELEASE_S:
                    await self.store.release_memory()
            except StoreError as err:
                log.warning("engine: store maintenance failed: %s", err)

    def _warn_unrouted(self) -> None:
        """Say in the log the topics of FlowFiles no route took, which are dropped: a route
        whose `match` misses what a source makes (`sensor/#` for `sensors/...`, a Modbus
        device's `modbus/...` with no route for it) lost every reading without a word, the
        count only in /api/status and /metrics. The router notes each topic where it drops
        the FlowFile, once (see Router.take_unrouted); a router built at a reload that
        changes the routes notes them afresh."""
        router = self.router
        if router is None:
            return
        new = router.take_unrouted()
        if not new:
            return
        log.warning(
            "engine: FlowFiles of %s match no route and are dropped (%d so far); give a route"
            " a `match` for them if they are wanted (/api/topics lists the topics seen and"
            " the routes of each)",
            ", ".join(repr(t) for t in new),
            router.unrouted,
        )

    # -- status -------------------------------------------------------------------

    def snapshot(self, broker: BrokerStatus | None = None) -> Snapshot:
        """The typed status of this engine and its store; `broker` is the process's."""
        router = self.router
        store = self.store
        bit = store.bit
        files = store.file_sizes()
        return Snapshot(
            gateway=GatewayStatus(
                id=self.config.gateway.id,
                uptime_s=round(self.clock.monotonic() - self.started, 1),
                config=self.config_path,
                ingested=self.ingested,
                batches=self.committed_batches,
                commit_latency=self.commit_latency,
                commit_batches=self.commit_batches,
                version=__version__,
            ),
            broker=broker,
            store=StoreStatus(
                path=str(store.path),
                bytes=store.bytes,
                max_bytes=store.max_bytes,
                overflow=store.overflow,
                dropped=store.dropped,
                dead_letters=store.dead_count,
                dead_dropped=store.dead_dropped,
                blocked=not self.gate.is_set(),
                disk=DiskStatus(
                    full=store.disk_full,
                    free_bytes=store.disk_free,
                    store_bytes=store.store_file_bytes(),
                    reserve=store.reserve.exists(),
                ),
                file_bytes=files[0],
                wal_bytes=files[1],
                removed_sinks=store.removed_sinks(),
            ),
            sources={name: r.status() for name, r in self.sources.items()},
            routes={}
            if router is None
            else {
                name: RouteStatus(
                    match=list(r.filters),
                    sinks=[s for s in self.sinks if r.mask & bit(s)],
                    processors=[label for label, _ in r.processors],
                    received=r.received,
                    emitted=r.emitted,
                    dead_lettered=r.dead_lettered,
                    errors=r.errors,
                    processor_state={  # by ROUTE.N, the name `edge-stream state` knows
                        p.ctx.name: shown for _, p in r.processors if (shown := p.status())
                    },
                )
                for name, r in router.routes.items()
            },
            sinks={name: r.status() for name, r in self.sinks.items()},
            dead_letters=store.dead_count,
            replication=None if self.replicator is None else self.replicator.status(),
            unrouted=0 if router is None else router.unrouted,
        )

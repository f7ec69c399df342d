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
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway import registry
from gateway.config.model import Config, RetrySettings
from gateway.core.backoff import Backoff
from gateway.core.clock import SYSTEM_CLOCK, Clock
from gateway.core.component import Context, Message, Processor, Sink, Source
from gateway.engine.router import Route, Router
from gateway.engine.runner import Ingest, SinkRunner, SourceRunner, supervised
from gateway.engine.status import (
    BrokerStatus,
    DiskStatus,
    GatewayStatus,
    RouteStatus,
    Snapshot,
    StoreStatus,
)
from gateway.store.sqlite import Batch, DeadLetter, Store, StoreError

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
    ) -> None:
        """`mqtt_url` is the gateway's broker (resolved by the process from `mqtt.url`);
        None when no component uses it."""
        self.config = config
        self.config_path = config_path
        self.store = store
        self.mqtt_url = mqtt_url
        self.clock = clock
        self.data_dir = Path(config.gateway.data_dir)
        self.ingest = Ingest(INGEST_CAPACITY, INGEST_MAX_BYTES, clock)
        self.gate = asyncio.Event()
        self.gate.set()
        self.sources: dict[str, SourceRunner] = {}
        self.sinks: dict[str, SinkRunner] = {}
        self.router: Router | None = None
        self.started = clock.monotonic()
        self.committed_batches = 0
        self.ingested = 0
        self.stop_requested = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._taking = False  # the ingest loop waits for items (holds none)
        self._intake_closed = False
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
        )

    def _build(self) -> None:
        cfg = self.config
        for name, sink_cfg in cfg.sinks.items():
            entry = registry.find("sink", sink_cfg.type)
            assert entry is not None  # the config loader checked the type
            sink: Sink = entry.cls(sink_cfg, self._context(name, "sink"))
            self.sinks[name] = SinkRunner(name, sink, sink_cfg, self.store, self.clock)
        for name, src_cfg in cfg.sources.items():
            entry = registry.find("source", src_cfg.type)
            assert entry is not None
            ctx = self._context(name, "source")
            ctx.marks = self.store.marks(name)
            source: Source = entry.cls(src_cfg, ctx)
            self.sources[name] = SourceRunner(
                name, source, self.ingest, SOURCE_RETRY, self.gate, self.clock
            )

    def _build_router(self) -> Router:
        routes = []
        for name, route_cfg in self.config.routes.items():
            processors: list[tuple[str, Processor]] = []
            for i, p_cfg in enumerate(route_cfg.processors):
                entry = registry.find("processor", p_cfg.type)
                assert entry is not None
                label = f"route {name}: processor {i} ({p_cfg.type})"
                processors.append(
                    (label, entry.cls(p_cfg, self._context(f"{name}.{i}", "processor")))
                )
            mask = 0
            for sink_name in route_cfg.sinks:
                mask |= self.store.bit(sink_name)
            routes.append(Route(name, tuple(route_cfg.match), processors, mask))
        return Router(routes)

    # -- running -------------------------------------------------------------

    async def run(self) -> None:
        """Build the topology on the store, run it until `stop()`, then shut it down in
        order (intake, commit and ack what was handed over, sinks finish, close) and
        return. The store stays open: it belongs to the caller."""
        self._build()
        await self.store.register_sinks(self.sinks)
        self.store.set_overflow(
            {name: r.config.overflow for name, r in self.sinks.items() if r.config.overflow}
        )
        self.router = self._build_router()
        state = await self.store.load_state()
        for label, processor in self.router.stateful():
            if label in state:
                processor.restore(state[label])
        async with asyncio.TaskGroup() as tg:
            self._spawn(tg, "ingest", self._ingest_loop)
            self._spawn(tg, "maintenance", self._maintenance_loop)
            for name, runner in self.sinks.items():
                self._spawn(tg, f"sink {name}", runner.run)
            for name, src in self.sources.items():
                self._spawn(tg, f"source {name}", src.run)
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
        log.info("engine: stopped")

    def stop(self) -> None:
        self.stop_requested.set()

    def _spawn(self, tg: asyncio.TaskGroup, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        self._tasks[name] = tg.create_task(supervised(name, fn, log, self.clock), name=name)

    async def _shutdown(self) -> None:
        log.info("engine: stopping intake")
        for name in list(self._tasks):
            if name.startswith("source "):
                self._tasks[name].cancel()
        await asyncio.gather(
            *(t for n, t in self._tasks.items() if n.startswith("source ")), return_exceptions=True
        )
        # Commit what is already handed over so its sources get their acks. The ingest
        # loop is cancelled only while it waits for items; a batch it has taken is
        # committed and acked first (cancelled in the commit, it would be stored unacked).
        self._intake_closed = True
        if self._taking:
            self._tasks["ingest"].cancel()
        await asyncio.gather(self._tasks["ingest"], return_exceptions=True)
        while len(self.ingest):
            await self._commit(
                await self.ingest.take(self.config.buffer.batch_max, 0, COMMIT_MAX_BYTES)
            )
        for source_runner in self.sources.values():
            await source_runner.close()
        # Let each sink finish the batch it is writing, then close it.
        for sink_runner in self.sinks.values():
            sink_runner.stopping = True
            sink_runner.wake.set()
        sink_tasks = [t for n, t in self._tasks.items() if n.startswith("sink ")]
        _done, pending = (
            await asyncio.wait(sink_tasks, timeout=SINK_FINISH_S) if sink_tasks else (set(), set())
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*sink_tasks, return_exceptions=True)
        for sink_runner in self.sinks.values():
            await sink_runner.close()
        self._tasks["maintenance"].cancel()

    # -- ingest ---------------------------------------------------------------

    async def _ingest_loop(self) -> None:
        limit = self.config.buffer.batch_max
        linger = self.config.buffer.batch_linger
        while not self._intake_closed:
            # take() removes items only after its last await: cancelled in it, it has none
            self._taking = True
            most = (
                COMMIT_MAX_BYTES
                if self.store.disk_free > SHORT_DISK_FREE
                else SHORT_DISK_COMMIT_BYTES
            )
            items = await self.ingest.take(limit, linger, most)
            self._taking = False
            await self._commit(items)

    async def _commit(
        self,
        items: list[tuple[str, Any]],
        replayed: list[int] | None = None,
        direct: list[tuple[Any, int]] | None = None,
    ) -> None:
        assert self.router is not None
        flowfiles = []
        acks = []
        inbound = []
        dead: list[DeadLetter] = []
        for source, msg in items:
            if msg.ack is not None:
                acks.append(msg.ack)
            if msg.dedupe is not None:
                inbound.append((source, msg.dedupe[0], msg.dedupe[1]))
            if msg.reject is not None:
                dead.append(DeadLetter(msg.flowfile, f"source {source}", msg.reject))
            else:
                flowfiles.append(msg.flowfile)
        out: dict[str, list[Any]] = {}
        self.router.run(flowfiles, out, dead)
        state = {label: p.state() for label, p in self.router.stateful()}
        rows = [(ff, mask) for ff, mask in out.values()]
        if direct:
            rows.extend(direct)
        batch = Batch(rows, dead, state, inbound)
        if replayed:
            batch.replayed = replayed
        backoff = Backoff(0.2, 10.0)
        while True:
            if self.store.over_budget:
                await self.store.make_room()
            if self.store.over_budget or self.store.check_disk():
                # full of data `block` sinks wait for, or the disk is short of space: stop
                # polling and acking until sinks drain (the maintenance loop purges)
                self.gate.clear()
                await self.clock.sleep(0.1)
                continue
            try:
                await self.store.commit(batch)
                break
            except StoreError as err:
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
        for ack in acks:
            ack()
        if dead:
            log.warning(
                "engine: %d FlowFiles dead-lettered (first: %s: %s)",
                len(dead),
                dead[0].origin,
                dead[0].reason,
            )

    def _wake_sinks(self) -> None:
        for runner in self.sinks.values():
            runner.wake.set()

    async def _replay(self) -> None:
        """Take dead letters sent back by the CLI: to their sink, or through the routes."""
        replay = await self.store.take_replay(self.config.buffer.batch_max)
        if not replay:
            return
        direct = [(ff, self.store.bit(sink)) for _, ff, sink in replay if sink in self.sinks]
        again = [("replay", Message(ff)) for _, ff, sink in replay if sink not in self.sinks]
        await self._commit(again, [seq for seq, _, _ in replay], direct)
        await self.store.recount()  # the CLI took them out of the dead letters
        log.info("engine: %d replayed dead letters are back in the store", len(replay))

    async def _maintenance_loop(self) -> None:
        ticks = 0
        activity = (-1, -1)
        quiet = 0
        while True:
            await self.clock.sleep(1.0)
            try:
                await self.store.maintain(self.sinks)
                await self._replay()
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

    # -- status -------------------------------------------------------------------

    def snapshot(self, broker: BrokerStatus | None = None) -> Snapshot:
        """The typed status of this engine and its store; `broker` is the process's."""
        router = self.router
        store = self.store
        bit = store.bit
        return Snapshot(
            gateway=GatewayStatus(
                id=self.config.gateway.id,
                uptime_s=round(self.clock.monotonic() - self.started, 1),
                config=self.config_path,
                ingested=self.ingested,
                batches=self.committed_batches,
            ),
            broker=broker,
            store=StoreStatus(
                path=str(store.path),
                bytes=store.bytes,
                max_bytes=store.max_bytes,
                overflow=store.overflow,
                dropped=store.dropped,
                dead_letters=store.dead_count,
                blocked=not self.gate.is_set(),
                disk=DiskStatus(
                    full=store.disk_full,
                    free_bytes=store.disk_free,
                    store_bytes=store.store_file_bytes(),
                    reserve=store.reserve.exists(),
                ),
            ),
            sources={name: r.status() for name, r in self.sources.items()},
            routes={}
            if router is None
            else {
                name: RouteStatus(
                    match=list(r.filters),
                    sinks=[s for s in self.sinks if r.mask & bit(s)],
                    processors=[label for label, _ in r.processors],
                )
                for name, r in router.routes.items()
            },
            sinks={name: r.status() for name, r in self.sinks.items()},
            dead_letters=store.dead_count,
            unrouted=0 if router is None else router.unrouted,
        )

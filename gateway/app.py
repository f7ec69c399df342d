"""The process: its services (store, embedded MQTT broker, web server), the engine
that runs on them, logging and signals.

`Gateway` opens the store, starts the gateway's broker (`mqtt.url`, see
gateway/mqtt/broker.py) and the web server, then runs an `Engine`, which is the
topology only (sources, routes, sinks and their runners). A reload swaps the
engine under the running services: the broker keeps its process and the web
server its listening socket and open connections. A reload whose config
changes `mqtt:` or `web:` (or `buffer:`, `gateway.data_dir`) sets up that
service again, and says so in a log line.

A reload has three triggers, all through one path (`Reloads`): SIGHUP, a change of
the config file (`gateway.watch_config`, default true: the file's stat — mtime,
size, inode — is polled every 0.5 s and a change that has held still for 1 s
reloads, so an editor that saves by writing a new file and renaming it over the
old one is noticed too; a change back to a text already tried is not read again),
and `POST /api/config/reload` on the web server (`edge-stream reload`); a signed
remote config (gateway/mqtt/remote.py) is written to the file and tried the same way
(trigger "remote"). An
invalid file is refused with its errors and kept as the last reload's outcome in
/api/status (`config.last_reload`); the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.alerts import Alerts
from gateway.config import files
from gateway.config.load import load, read_text
from gateway.config.model import Config
from gateway.config.view import changed_keys
from gateway.core.clock import SYSTEM_CLOCK, Clock
from gateway.core.errors import ConfigError
from gateway.core.topics import TopicWatch
from gateway.engine.console import SERIES_EVERY, Series, TopicsSeen
from gateway.engine.pipeline import Engine
from gateway.engine.plan import Plan, plan
from gateway.engine.runner import supervised
from gateway.engine.status import (
    BrokerStatus,
    ConfigStatus,
    ReloadStatus,
    RemoteConfigStatus,
    Snapshot,
)
from gateway.metrics import ProcessStats
from gateway.mqtt.broker import GatewayBroker, broker_users, open_gateway_broker
from gateway.mqtt.remote import RemoteConfig
from gateway.mqtt.status import StatusChannel
from gateway.notify import Notifier
from gateway.store.sqlite import Store, StoreError, hold_data_dir, let_go_data_dir

if TYPE_CHECKING:
    from gateway.web.server import WebServer

log = logging.getLogger("gateway")

# The cyclic garbage collector's first threshold (allocations less deallocations between
# young collections; Python's default is 700). At capacity a commit batch alone holds
# thousands of young objects (FlowFiles, Messages, acks, encoded rows) that all die by
# reference counting, and the default collected them about once per millisecond: a
# fifth of the gateway's CPU went to the collector (bench/spine.py, issue 15: 1.0 of
# 5.0 CPU-s over 100k messages, 1,150 collections; 0.26 s and 125 with this and the freeze).
GC_YOUNG_THRESHOLD = 20_000
MAX_KEYS_SHOWN = 6  # keys named in a reload's line for a changed section
# Sections the engine's plan reports (gateway: id and data_dir; the process's keys below)
ENGINE_SECTIONS = frozenset({"gateway", "buffer", "mqtt", "sources", "routes", "sinks", "state"})


def settle_heap() -> None:
    """Collect once, then leave what is alive now (modules, config, components) out of
    every later collection (`gc.freeze`): the full collections that come with a busy
    ingest otherwise walk all of it, tens of milliseconds each.

    Called when an engine is up and after a reload applied in place: objects frozen by
    the previous call are thawed first, so that what a reload let go of in cycles is
    freed, not kept for good.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def setup_logging(level: str) -> None:
    """One line per record on stderr: time, level, logger and a sentence naming the component."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _store_settings(config: Config) -> tuple[Any, ...]:
    b = config.buffer
    return (
        config.gateway.data_dir,
        b.max_bytes,
        b.overflow,
        b.synchronous,
        b.dead_letters_max_bytes,
    )


def _web_settings(config: Config) -> tuple[Any, ...]:
    """What the web server is made from: `web:`, and the users file it checks, which is
    under gateway.data_dir unless web.users_file names one (a reload moving data_dir
    kept the old folder's users for logins, while `web passwd` wrote the new one's)."""
    from gateway.web.access import users_path  # no aiohttp in it

    return (config.web, users_path(config.web.users_file, config.gateway.data_dir))


def _broker_plan(config: Config) -> tuple[Any, ...]:
    """What `open_gateway_broker` decides from: a reload that keeps it keeps the broker."""
    return (config.mqtt, config.gateway.data_dir, bool(broker_users(config)))


def process_changes(old: Config, new: Config) -> list[str]:
    """What a reload changes besides the engine's plan (gateway/engine/plan.py: sources,
    routes, sinks, buffer batching and what restarts the engine), one line each.

    That is every other section (`web`, `status`, `remote_config`, `alerts`, any later
    one) and the gateway's own keys. All of it is taken without a restart of the engine: the web
    server restarts (`web`); the status and remote config channels read their settings
    every second and reconnect when their connection's settings changed (`status`,
    `remote_config`); the alerts read theirs at each evaluation; the log level,
    `watch_config` and the key file (which opened this very config's ENC(...) values)
    are read where they are used. Sections are said by the keys that changed, not their
    values: a value may be a secret."""
    lines = []
    for key in ("log_level", "watch_config", "secret_key_file"):
        before, after = getattr(old.gateway, key), getattr(new.gateway, key)
        if before != after:
            lines.append(f"gateway.{key} {_said(before)} -> {_said(after)}")
    for field in dataclasses.fields(Config):
        section = field.name
        before, after = getattr(old, section), getattr(new, section)
        if section in ENGINE_SECTIONS or before == after:
            continue
        keys = changed_keys(before, after)
        if len(keys) > MAX_KEYS_SHOWN:
            keys[MAX_KEYS_SHOWN - 1 :] = ["..."]
        detail = f" ({', '.join(keys)})" if keys else ""
        restarted = "; the web server restarted" if section == "web" else ""
        lines.append(f"{section} changed{detail}{restarted}")
    return lines


def _stopped_for_good(
    runners: Mapping[str, Any], kept: Mapping[str, Any], starting: list[str]
) -> list[str]:
    """The runners that stopped for good, still in the config and not started anyway."""
    return [
        name
        for name, runner in runners.items()
        if runner.state == "failed" and name in kept and name not in starting
    ]


def _said(value: object) -> str:
    """A setting as the config file writes it."""
    if value is None:
        return "unset"
    return str(value).lower() if isinstance(value, bool) else str(value)


class Gateway:
    """One gateway process: the store, the gateway's MQTT broker and the web server,
    and the engine that runs on them. The web server and the metrics read it as their
    `StatusView`: the snapshot of the engine that runs now, and the store."""

    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        notify: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.broker: GatewayBroker | None = None
        self.web: WebServer | None = None
        self._retired_web: WebServer | None = None  # stopped by a reload asked through it
        self.web_url: str | None = None
        self.ready = asyncio.Event()  # set when the first engine runs
        # The collector is the process's: only `serve` (the gateway process) sets this,
        # not a test or tool that hosts a Gateway in its own process.
        self.settles_heap = False
        self._store: Store | None = None
        self._engine: Engine | None = None  # what the page shows: the last one that ran
        self._running: Engine | None = None
        self._broker_task: asyncio.Task[None] | None = None
        self._pending: Config | None = None
        self._next: asyncio.Future[bool] | None = None  # a restart: the next engine is ready
        # Why the last restart's services could not be set up (the old config runs again).
        self._switch_failures: list[str] = []
        self._stopping = False
        self.log_level_override: str | None = None  # `run --log-level` wins over the file
        # The config file's state for /api/status; set by `Reloads`.
        self.config_hash: str | None = None
        self.loaded_at = time.time()
        self.last_reload: ReloadStatus | None = None
        # POST /api/config/reload: try a reload now, answer its outcome (set by `serve`).
        self.reload_now: Callable[[str], Any] | None = None
        # The config file was put back to this text (a refused edit): no change to reload.
        self.settle_config: Callable[[str], None] | None = None
        self.remote: RemoteConfig | None = None  # the remote config channel (set by `serve`)
        # /metrics' process figures; the status topics; the alerts (see gateway/alerts.py)
        self.process = ProcessStats()
        self.watch = TopicWatch()
        self.topics = TopicsSeen()  # the console's topic tree
        self.series = Series()  # the console's sparklines
        self.status = StatusChannel(
            config=lambda: self.config,
            broker_url=lambda: None if self.broker is None else self.broker.url,
            stats=self.stats,
            ready=self.ready,
        )
        self.alerts = Alerts(
            self,
            lambda: self.config,
            self.ready,
            self.watch,
            self.status.send,
            self.status.wanted,
        )
        self.status.on_online = self.alerts.notifiers["mqtt"].again
        # systemd's notify socket (READY, STATUS); idle without NOTIFY_SOCKET
        self.notify = notify if notify is not None else Notifier({})

    # -- the view the web server and metrics read -----------------------------

    @property
    def store(self) -> Store:
        assert self._store is not None, "the store opens before the web server starts"
        return self._store

    def snapshot(self) -> Snapshot:
        assert self._engine is not None, "an engine exists before the web server starts"
        broker = None if self.broker is None else BrokerStatus(**self.broker.status())
        config = ConfigStatus(self.config_path, self.config_hash, self.loaded_at, self.last_reload)
        remote = None if self.remote is None else RemoteConfigStatus(**self.remote.status())
        return dataclasses.replace(
            self._engine.snapshot(broker),
            config=config,
            remote_config=remote,
            alerts=self.alerts.console(),
        )

    def stats(self) -> dict[str, Any]:
        """The summary published on `edge-stream/<id>/stats` (gateway/mqtt/status.py)."""
        snap = self.snapshot()
        return {
            "gateway": snap.gateway.id,
            "at": time.time(),
            "uptime_s": round(time.monotonic() - self.process.started, 1),
            "ingested": snap.gateway.ingested,
            "sources": {
                n: {"state": s.state, "produced": s.produced, "errors": s.errors}
                for n, s in snap.sources.items()
            },
            "routes": {
                n: {
                    "received": r.received,
                    "emitted": r.emitted,
                    "dead_lettered": r.dead_lettered,
                }
                for n, r in snap.routes.items()
            },
            "sinks": {
                n: {
                    "state": s.state,
                    "delivered": s.delivered,
                    "depth": s.depth,
                    "oldest_age_s": s.oldest_age_s,
                    "errors": s.errors,
                }
                for n, s in snap.sinks.items()
            },
            "store": {
                "bytes": snap.store.bytes,
                "max_bytes": snap.store.max_bytes,
                "dead_letters": snap.store.dead_letters,
                "dead_dropped": snap.store.dead_dropped,
            },
            "alerts": sorted(self.alerts.active),
        }

    # -- control ---------------------------------------------------------------

    def stop(self) -> None:
        """Stop for good (SIGTERM): the engine shuts down in order, then the services."""
        self._stopping = True
        self.status.stopping = True
        if self.broker is not None and self.broker.embedded is not None:
            # its own SIGTERM (same process group) is expected now
            self.broker.embedded.stopping = True
        if self._running is not None:
            self._running.stop()

    async def apply(self, config: Config) -> tuple[str, list[str], list[str]]:
        """Apply `config` (already valid); returns (outcome, errors, changes). See
        `_apply`; once applied, the console's certificate files are served anew when
        they changed (a renewal written over them, then a reload with the same config)."""
        outcome, errors, changes = await self._apply(config)
        if outcome == "applied" and self.web is not None and await self.web.renew_tls():
            changes = [*changes, "web certificate renewed (tls_cert and tls_key read again)"]
            log.info("gateway: the console serves the certificate files anew (they changed)")
        if outcome == "applied" and self._running is not None:
            # a source that serves TLS (`http`) and was not restarted: its files, likewise
            for name in await self._running.renew_tls():
                changes = [
                    *changes,
                    f"source {name} certificate renewed (tls_cert and tls_key read again)",
                ]
        return outcome, errors, changes

    async def _apply(self, config: Config) -> tuple[str, list[str], list[str]]:
        """Apply `config` (already valid); returns (outcome, errors, changes).

        As a diff when it can (see gateway/engine/plan.py): only the sources, routes and
        sinks that changed are stopped and started, the rest runs on, and settings that
        need no restart are applied in place (the log level, the web server, sink
        delivery settings, batch sizes). If a started component fails outright, the
        previous config is applied again: "rolled_back", with the failures as errors.

        When the change reaches every component or the store (gateway.id, data_dir,
        `mqtt`, the store's settings), a new engine runs instead: the running one stops
        the way SIGTERM stops it (everything handed over is committed first), the next
        starts on the same store, so buffered data, sink cursors and broker sessions
        carry over. If its services cannot be set up (a data_dir the gateway may not
        use, a broker port in use), the previous config starts again: "rolled_back".
        """
        if self._stopping:
            return "refused", ["the gateway is stopping"], []
        old = self.config
        work = plan(old, config)
        changes = list(work.changes) + process_changes(old, config)
        services = _broker_plan(config) != _broker_plan(old) or (
            _store_settings(config) != _store_settings(old)
        )
        engine = self._running
        store = self._store
        same_store = config.gateway.data_dir == old.gateway.data_dir
        if store is not None and same_store and (full := store.sink_room_problem(config.sinks)):
            # Found before anything stops: a sink the store cannot take a bit for failed
            # the reload half way, its outcome "applying" for ever, and reloads ended.
            log.error("gateway: reload refused, the running config stays:\n  %s", full)
            return "refused", [full], changes
        if work.restart or services or engine is None or not engine.ready.is_set():
            self._next = asyncio.get_running_loop().create_future()
            self._pending = config
            if engine is not None:
                engine.stop()
            started = await asyncio.shield(self._next)
            failures, self._switch_failures = self._switch_failures, []
            if not started:
                return "refused", ["the gateway is stopping"], changes
            if failures:
                return "rolled_back", failures, changes
            return "applied", [], changes
        # A sink or source that stopped for good (a refused password, a missing table)
        # says "fix and reload": the fix may be on the server's side, with the config
        # unchanged, so the reload starts it again. Whether it then works is its own
        # affair, not the reload's: it is no reason to roll back.
        stopped = _stopped_for_good(engine.sinks, config.sinks, work.sinks_start)
        stopped_sources = _stopped_for_good(engine.sources, config.sources, work.sources_start)
        try:
            failures = await engine.apply(config, work)
        except StoreError as err:  # the new sinks not noted in the store: nothing changed
            # it failed the reload half way: "applying" for ever, and no reload after it
            log.error("gateway: reload refused, the running config stays:\n  %s", err)
            return "refused", [str(err)], changes
        if failures:
            log.error(
                "gateway: the new config failed to start; the previous one is restored:\n  %s",
                "\n  ".join(failures),
            )
            await engine.apply(old, plan(config, old), check=False)
            return "rolled_back", failures, changes
        if stopped or stopped_sources:
            again = Plan(
                sinks_stop=list(stopped),
                sinks_start=list(stopped),
                sources_stop=list(stopped_sources),
                sources_start=list(stopped_sources),
            )
            await engine.apply(config, again, check=False)
            changes.extend(f"sink {name} started again (it had stopped)" for name in stopped)
            changes.extend(
                f"source {name} started again (it had stopped)" for name in stopped_sources
            )
        self.config = config
        if self.log_level_override is None:
            logging.getLogger().setLevel(config.gateway.log_level.upper())
        if self.broker is not None:
            self.broker.users = broker_users(config)
        if _web_settings(config) != _web_settings(old):
            log.info("gateway: the reload changes web; restarting the web server")
            await self._stop_web()
            try:
                await self._start_web()
            except (ConfigError, OSError) as err:
                # web.listen in use: the old config, its web server included, comes back
                # rather than a gateway without its page answering no one
                log.error(
                    "gateway: the new config failed to start; the previous one is restored:\n  %s",
                    err,
                )
                self.config = old
                if self.log_level_override is None:
                    logging.getLogger().setLevel(old.gateway.log_level.upper())
                if self.broker is not None:
                    self.broker.users = broker_users(old)
                await engine.apply(old, plan(config, old), check=False)
                await self._start_web()
                return "rolled_back", [str(err)], changes
        if self.settles_heap:
            settle_heap()
        if changes:
            log.info("gateway: config applied: %s", "; ".join(changes))
        else:
            log.info("gateway: config applied: nothing the gateway runs changed")
        return "applied", [], changes

    async def record(
        self,
        at: float,
        config_hash: str | None,
        trigger: str,
        outcome: str,
        changes: list[str],
        errors: list[str],
    ) -> None:
        """Keep a reload's record in the store (`edge-stream config history`)."""
        store = self._store
        if store is None:
            return
        try:
            await store.record_reload(at, config_hash, trigger, outcome, changes, errors)
        except StoreError as err:
            log.warning("gateway: cannot record the reload in the store: %s", err)

    def route_match(self, topic: str) -> list[str]:
        """The routes of the running config whose filters match `topic`."""
        engine = self._engine
        if engine is None or engine.router is None:
            return []
        return engine.router.match(topic)

    async def _sample_series(self) -> None:
        """A point of every series each SERIES_EVERY seconds (the console's sparklines)."""
        while True:
            await asyncio.sleep(SERIES_EVERY)
            if self._engine is not None:
                self.series.sample(self.snapshot())

    async def refused_remotely(self, config_hash: str | None, errors: list[str]) -> None:
        """A remote config document refused before it reached the reload path (its
        signature, version, gateway or contents): shown and recorded like a reload."""
        now = time.time()
        self.last_reload = ReloadStatus(now, "remote", "refused", errors)
        await self.record(now, config_hash, "remote", "refused", [], errors)

    def _engine_started(self, ok: bool) -> None:
        future, self._next = self._next, None
        if future is not None and not future.done():
            future.set_result(ok)

    # -- running ---------------------------------------------------------------

    async def run(self) -> None:
        """Start the services, run engines until `stop()`, then stop the services.

        The broker and the web server start before any engine does: an address in use
        or a missing Mosquitto is a ConfigError (one line, exit 1), not a traceback.
        Before them, the data_dir is locked (StoreError if another gateway has it); it
        stays locked across reloads, so that `edge-stream store reset` cannot slip in
        between two engines.
        """
        lock = hold_data_dir(self.config.gateway.data_dir)
        services: list[asyncio.Task[None]] = []
        try:
            await self._start_broker()
            await self._open_store()
            await self._start_web()
            for name, fn in (
                ("event-loop lag", self.process.run),
                ("status", self.status.run),
                ("alerts", self.alerts.run),
                ("series", self._sample_series),
            ):
                services.append(asyncio.create_task(supervised(name, fn, log), name=name))
            while True:
                await self._run_engine()
                new, self._pending = self._pending, None
                if new is None or self._stopping:
                    return
                try:
                    lock = await self._switch(new, lock)
                except (ConfigError, StoreError, OSError) as err:
                    # A data_dir the gateway may not use, a broker port in use: the
                    # previous config starts again rather than the gateway exiting.
                    self._switch_failures = [str(err)]
                    log.error(
                        "gateway: the new config failed to start; the previous one is"
                        " restored:\n  %s",
                        err,
                    )
        finally:
            self._engine_started(False)
            await self.status.close()  # `offline` (retained), before the broker stops
            for task in services:
                task.cancel()
            await asyncio.gather(*services, return_exceptions=True)
            await self._stop_web(final=True)
            await self._stop_broker()
            await self._close_store()
            let_go_data_dir(lock)

    async def _run_engine(self) -> None:
        before = self._engine  # a reload's engine: the one it replaces
        failing = () if before is None else (n for n, r in before.sources.items() if r.failing)
        engine = Engine(
            self.config,
            self.store,
            mqtt_url=None if self.broker is None else self.broker.url,
            config_path=self.config_path,
            clock=self.clock,
            watch=self.watch,
            topics=self.topics,
            first=self._engine is None,
            at_once=frozenset(failing),
        )
        self._running = engine
        if self._engine is None:
            self._engine = engine
        if self._stopping or self._pending is not None:
            engine.stop()  # told while the services were set up: run, and shut down at once
        # Both tasks are awaited or cancelled before this returns.
        running = asyncio.create_task(engine.run(), name="engine")
        ready = asyncio.create_task(engine.ready.wait())
        try:
            await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            running.cancel()
            raise
        finally:
            ready.cancel()
        if engine.ready.is_set():
            self._engine = engine
            if self.settles_heap:
                settle_heap()
            first = not self.ready.is_set()
            self.ready.set()
            self._engine_started(True)
            self.notify.send(*(["READY=1"] if first else []), "STATUS=" + self.status_line())
            if first:
                await self.record(time.time(), self.config_hash, "start", "applied", [], [])
            # also with the console off (web.enabled: false), which logged no line at
            # all: the one that says the gateway is up and which broker it uses
            page = self.web_url or "off (web.enabled: false)"
            mqtt = f"; {self.broker.describe()}" if self.broker else ""
            log.info("gateway: %s is up; status page %s%s", self.config.gateway.id, page, mqtt)
        try:
            await running
        finally:
            self._running = None

    def status_line(self) -> str:
        """The STATUS line `systemctl status` shows while an engine runs."""
        c = self.config
        text = f"running: {len(c.sources)} sources, {len(c.routes)} routes, {len(c.sinks)} sinks"
        if self.last_reload is not None:
            text += f"; last reload {self.last_reload.outcome.replace('_', ' ')}"
        return text

    async def _switch(self, new: Config, lock: Path) -> Path:
        """Set up again the services whose settings the reload changes; keep the others.

        If one cannot be set up (ConfigError, StoreError, OSError), the ones already
        changed are set up again from the running config, which stays, and the error is
        raised."""
        old = self.config
        held = lock
        if new.gateway.data_dir != old.gateway.data_dir:
            lock = hold_data_dir(new.gateway.data_dir)  # a new data_dir: lock it first
        done: list[str] = []
        try:
            await self._set_up(old, new, done)
        except (ConfigError, StoreError, OSError):
            if lock != held:
                let_go_data_dir(lock)
            with contextlib.suppress(ConfigError, StoreError, OSError):
                await self._set_up(new, old, [], again=done)
            # Whatever could not be set up again is tried by the next start; an
            # error here leaves the gateway as an outright start failure would.
            raise
        if lock != held:
            let_go_data_dir(held)
        return lock

    async def _set_up(
        self, old: Config, new: Config, done: list[str], again: list[str] | None = None
    ) -> None:
        """Make `new` the running config and restart the services it changes (or, with
        `again`, those named in it), naming each in `done` before touching it."""
        self.config = new
        if self.log_level_override is None:
            logging.getLogger().setLevel(new.gateway.log_level.upper())
        web = _web_settings(new) != _web_settings(old) if again is None else "web" in again
        broker = _broker_plan(new) != _broker_plan(old) if again is None else "broker" in again
        store = _store_settings(new) != _store_settings(old) if again is None else "store" in again
        if web:
            log.info("gateway: the reload changes web; restarting the web server")
            done.append("web")
            await self._stop_web()
        if broker:
            log.info("gateway: the reload changes mqtt; setting up the gateway's broker again")
            done.append("broker")
            await self._stop_broker()
            await self._start_broker()
        elif self.broker is not None:
            self.broker.users = broker_users(new)
        left = None
        if store:
            log.info("gateway: the reload changes the store settings; reopening the store")
            if again is None and new.gateway.data_dir != old.gateway.data_dir:
                left = self._left_behind(new)  # counted before the store closes
            done.append("store")
            await self._close_store()
            await self._open_store()
        if web:
            await self._start_web()
        if left:
            # Said once the new config runs: a failure above reopens the old store, and
            # then nothing was left behind.
            log.warning(left)

    def _left_behind(self, new: Config) -> str | None:
        """The line on what the store of the data_dir being left still waits to deliver
        to the sinks `new` runs (the new data_dir has a store of its own, and the old
        one's backlog is not sent from it); None when nothing. A removed sink's backlog
        is not counted: no data_dir delivers it."""
        store = self._store
        if store is None:
            return None
        waiting = [f"{store.depth(n)} for sink {n}" for n in sorted(new.sinks) if store.depth(n)]
        if not waiting:
            return None
        return (
            f"gateway: FlowFiles left in {store.path}, undelivered ({', '.join(waiting)}):"
            " the store of the new data_dir does not have them; set gateway.data_dir back"
            " to deliver them"
        )

    # -- the services --------------------------------------------------------

    async def _start_broker(self) -> None:
        self.broker = await open_gateway_broker(self.config, self.config.gateway.data_dir)
        if self.broker is not None and self.broker.embedded is not None:
            self._broker_task = asyncio.create_task(
                supervised("broker", self.broker.embedded.supervise, log, self.clock),
                name="broker",
            )

    async def _stop_broker(self) -> None:
        task, self._broker_task = self._broker_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        broker, self.broker = self.broker, None
        if broker is not None and broker.embedded is not None:
            await broker.embedded.stop()

    async def _open_store(self) -> None:
        config = self.config
        store = Store(
            Path(config.gateway.data_dir) / "store.db",
            max_bytes=config.buffer.max_bytes,
            overflow=config.buffer.overflow,
            synchronous=config.buffer.synchronous,
            dead_max_bytes=config.buffer.dead_letters_max_bytes,
        )
        await store.open()
        self._store = store

    async def _close_store(self) -> None:
        if self._store is not None:
            await self._store.close()

    async def _start_web(self) -> None:
        if self.config.web.enabled:
            # Imported here: aiohttp costs ~11 MB of RSS, not paid with web.enabled false.
            from gateway.web.access import users_path
            from gateway.web.server import WebServer

            users = users_path(self.config.web.users_file, self.config.gateway.data_dir)
            web = WebServer(
                self,
                self.config.web,
                reload=self.reload_now,
                config_path=self.config_path,
                users_file=users,
                settle=self.settle_config,
                data_dir=lambda: self.config.gateway.data_dir,
                ready=self.ready,
            )
            self.web_url = await web.start()
            self.web = web

    async def _stop_web(self, final: bool = False) -> None:
        web, self.web, self.web_url = self.web, None, None
        retired, self._retired_web = self._retired_web, None
        if retired is not None:  # its last answer, to the reload that stopped it, is sent
            await retired.finish()
        if web is not None and not await web.stop():
            if final:
                await web.finish()
            else:  # a request waits for this reload's answer on it: finished next time
                self._retired_web = web


WATCH_INTERVAL = 0.5  # seconds between two looks at the config file's stat
WATCH_SETTLE = 1.0  # a change must hold still this long before it is read
# A refused file's problems a reload keeps (the log, /api/status, the store's history):
# a 256 KiB file can hold thousands, each attempt's kept whole in 1000 history records
# and sent in every status document. `edge-stream check-config` says them all.
RELOAD_ERRORS_KEPT = 50


def _kept_errors(errors: list[str], path: str) -> list[str]:
    """`errors`, the first RELOAD_ERRORS_KEPT of them and a line on the rest."""
    if len(errors) <= RELOAD_ERRORS_KEPT:
        return errors
    more = len(errors) - RELOAD_ERRORS_KEPT
    return [
        *errors[:RELOAD_ERRORS_KEPT],
        f"... and {more} more problems: `edge-stream check-config -c {shlex.quote(path)}`"
        " says them all",
    ]


# {"outcome": "applied"|"refused"|"rolled_back", "errors": [...], "changes": [...]?}
Outcome = dict[str, Any]


class Reloads:
    """Every reload trigger (SIGHUP, the file watcher, the API) goes through here.

    One attempt at a time: a trigger during an attempt asks for one more after it
    (any number of them coalesce into one). An attempt reads and validates the file
    in a worker thread; a valid config goes to `Gateway.reload`, an invalid one is
    refused with its errors. Either way the outcome is the gateway's `last_reload`.

    The text the gateway runs is held here: an attempt that reads another text keeps
    it as a config version first (`files.keep_running`), so that a file changed by
    hand (broken, say, and refused) can be rolled back to exactly what runs.
    """

    def __init__(self, gateway: Gateway, path: str | None, stopping: Callable[[], bool]) -> None:
        self.gateway = gateway
        self.path = path
        self.stopping = stopping
        self._task: asyncio.Task[None] | None = None
        self._again: str | None = None  # the trigger of the attempt asked for meanwhile
        self._waiting: list[asyncio.Future[Outcome]] = []  # API calls: the next attempt
        self._tried_hash: str | None = None  # the text the last attempt read
        self._tried_text: str | None = None
        self._running_text: str | None = None  # the text of the config that runs
        self._stamp = None if path is None else files.stamp(path)
        if path is not None:
            try:
                text = read_text(path)
            except ConfigError:  # unreadable: only the hash is missing then
                text = None
            if text is not None:
                gateway.config_hash = self._tried_hash = files.text_hash(text)
                self._running_text = text

    def request(self, trigger: str) -> asyncio.Future[Outcome] | None:
        """Ask for an attempt; its outcome comes in the future (None: not reloading)."""
        if self.path is None or self.stopping():
            return None
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if self._task is not None and not self._task.done():
            self._again = trigger
        else:
            self._task = asyncio.create_task(self._attempts(trigger), name="reload")
        return future

    async def api(self, trigger: str = "api") -> Outcome:
        """Attempt a reload now and answer its outcome (the API; "remote": a signed config)."""
        future = self.request(trigger)
        if future is None:
            return {"outcome": "refused", "errors": ["the gateway is stopping"]}
        return await asyncio.shield(future)

    def settle(self, text: str) -> None:
        """The file was put back to `text` (a remote config not applied): not a change."""
        assert self.path is not None
        self._stamp = files.stamp(self.path)
        self._tried_hash = files.text_hash(text)
        self._tried_text = text

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._answer({"outcome": "refused", "errors": ["the gateway is stopping"]})

    def _answer(self, outcome: Outcome) -> None:
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            if not future.done():
                future.set_result(outcome)

    async def _attempts(self, trigger: str | None) -> None:
        while trigger is not None and not self.stopping():
            self._again = None
            # API calls made during this attempt wait for the next one (`_again`).
            waiting, self._waiting = self._waiting, []
            outcome = await self._attempt(trigger)
            for future in waiting:
                if not future.done():
                    future.set_result(outcome)
            trigger = self._again

    async def _attempt(self, trigger: str) -> Outcome:
        path = self.path
        assert path is not None
        self._stamp = files.stamp(path)  # what this attempt reads; the watcher starts here
        errors: list[str] = []
        new: Config | None = None
        try:
            # Reading, parsing and validating walk the whole file (and decrypt its
            # secrets): off the event loop, so that /healthz, MQTT keepalives and the
            # sinks go on meanwhile. The loader bounds its size, depth and aliases.
            data_dir = self.gateway.config.gateway.data_dir  # where the running one keeps
            new = await asyncio.to_thread(self._read_and_load, path, data_dir)
        except ConfigError as err:
            errors = _kept_errors(list(err.problems), path)
            log.error(
                "gateway: reload refused, the running config stays:\n  %s", "\n  ".join(errors)
            )
        except Exception as err:  # the reload boundary: the running config must stay
            # The loader turns every mistake in the file into a ConfigError; this is a
            # bug of ours, said in one line (the traceback at DEBUG, for a report).
            errors = [f"reading {path} failed ({type(err).__name__}: {err}); please report this"]
            log.error("gateway: reload refused, the running config stays: %s", errors[0])
            log.debug("gateway: the reload failed here", exc_info=True)
        changes: list[str] = []
        tried, tried_text = self._tried_hash, self._tried_text
        if new is not None and not self.stopping():
            log.info("gateway: reloading %s (%s)", path, trigger)
            # while it applies (stopping and starting components, the start check):
            self.gateway.last_reload = ReloadStatus(time.time(), trigger, "applying", [])
            self.gateway.notify.status(f"reloading {path} ({trigger})")
            outcome, errors, changes = await self.gateway.apply(new)
            if outcome == "applied":
                self.gateway.config_hash = tried
                self._running_text = tried_text
                self.gateway.loaded_at = time.time()
        else:
            outcome = "refused"
            if new is not None:
                errors = ["the gateway is stopping"]
        now = time.time()
        self.gateway.last_reload = ReloadStatus(now, trigger, outcome, errors, changes)
        if self.gateway.ready.is_set() and not self.stopping():
            self.gateway.notify.status(self.gateway.status_line())
        await self.gateway.record(now, tried, trigger, outcome, changes, errors)
        return {"outcome": outcome, "errors": errors, "changes": changes}

    def _read_and_load(self, path: str, data_dir: str) -> Config:
        """In a worker thread: note the text (refused or not), keep the running text as
        a version if this one is another (or none can be read), then load it."""
        try:
            text = read_text(path)
        except ConfigError:  # removed or unreadable: what runs is in no file now
            # This attempt read no text: the running one put back is a change the watcher
            # tries (it was taken for the text already tried, and the refusal of a file
            # over 256 KiB or not UTF-8 stayed in /api/status over the file put right).
            self._tried_hash = self._tried_text = None
            self._keep_running(path, None, data_dir)
            raise
        self._tried_hash, self._tried_text = files.text_hash(text), text
        self._keep_running(path, text, data_dir)
        return load(path)

    def _keep_running(self, path: str, text: str | None, data_dir: str) -> None:
        """Keep the running text as a version before `text` (None: no text) replaces
        it in the file for good; the reload goes on if it cannot be kept."""
        running = self._running_text
        if running is None or running == text:
            return
        try:
            kept = files.keep_running(path, running, data_dir)
        except OSError as err:
            log.warning(
                "gateway: the running config could not be kept under %s (%s: %s)",
                files.history_dir(data_dir),
                err.filename,
                err.strerror or err,
            )
            return
        if kept is not None:
            log.info("gateway: %s changed; the running config is kept as %s", path, kept.name)

    async def watch(self) -> None:
        """Poll the file's stat; a change that holds still for WATCH_SETTLE reloads."""
        path = self.path
        assert path is not None
        seen: tuple[int, int, int] | None = None  # a change not yet settled
        since = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if not self.gateway.config.gateway.watch_config or self.stopping():
                self._stamp, seen = files.stamp(path), None
                continue
            stamp = files.stamp(path)
            if stamp == self._stamp:
                seen = None
                continue
            if stamp != seen:
                seen, since = stamp, loop.time()  # changed (again): wait for it to settle
                continue
            if loop.time() - since < WATCH_SETTLE:
                continue
            seen = None
            self._stamp = stamp
            if stamp is None:
                continue  # gone: the next file written there is a change
            try:
                digest = await asyncio.to_thread(lambda: files.text_hash(read_text(path)))
            except ConfigError:
                digest = None  # unreadable now: the attempt says why
            if digest is not None and digest == self._tried_hash:
                continue  # touched, or already read (a SIGHUP came first)
            log.info("gateway: %s changed; reloading it", path)
            self.request("file")


def _remote_config(gateway: Gateway, reloads: Reloads, path: str) -> RemoteConfig:
    """The remote config channel (idle unless `remote_config.enabled`)."""
    return RemoteConfig(
        config=lambda: gateway.config,
        broker_url=lambda: None if gateway.broker is None else gateway.broker.url,
        config_hash=lambda: gateway.config_hash,
        config_path=path,
        reload=lambda: reloads.api("remote"),
        settle=reloads.settle,
        ready=gateway.ready,
        refused=gateway.refused_remotely,
    )


async def serve(
    config: Config, config_path: str | None = None, log_level: str | None = None
) -> int:
    """Run the gateway until SIGTERM/SIGINT; SIGHUP, a change of the config file and
    POST /api/config/reload reload it (see `Reloads`).

    A reload reads and validates the file first, in a worker thread: an invalid
    one is refused with its errors and the running engine goes on, undisturbed.
    A valid one swaps the engine (see `Gateway.reload`) under the running store,
    broker and web server.
    """
    loop = asyncio.get_running_loop()
    notify = Notifier()
    notify.status("starting: store, broker, web server")
    gateway = Gateway(config, config_path, notify=notify)
    gateway.log_level_override = log_level
    gateway.settles_heap = True
    stops = 0

    def on_signal(signum: int) -> None:
        nonlocal stops
        stops += 1
        name = signal.Signals(signum).name
        if stops == 1:
            log.info("gateway: %s received; stopping", name)
            notify.send("STOPPING=1", "STATUS=stopping")
            gateway.stop()
        elif signum == signal.SIGINT:
            # a second Ctrl-C means now; a repeated SIGTERM (make, a process group) does not
            log.error("gateway: second SIGINT; exiting without finishing the shutdown")
            os._exit(1)
        else:
            log.info("gateway: %s received again; still stopping", name)

    reloads = Reloads(gateway, config_path, lambda: stops > 0)
    gateway.reload_now = reloads.api if config_path is not None else None
    gateway.settle_config = reloads.settle if config_path is not None else None

    def on_reload() -> None:
        reloads.request("sighup")

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    # Pings from a task on the loop: a loop stuck in a blocking call misses them.
    watchdog = asyncio.create_task(supervised("watchdog", notify.watchdog, log), name="watchdog")
    watcher = channel = None
    if config_path is not None:
        watcher = asyncio.create_task(reloads.watch(), name="config-watch")
        gateway.remote = _remote_config(gateway, reloads, config_path)
        channel = asyncio.create_task(
            supervised("remote_config", gateway.remote.run, log), name="remote-config"
        )
    try:
        await gateway.run()
    finally:
        if watcher is not None:
            watcher.cancel()
        await reloads.close()
        for task in (watcher, channel, watchdog):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        notify.close()
    return 0

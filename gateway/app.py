"""The process: its services (store, embedded MQTT broker, web server), the engine
that runs on them, logging and signals.

`Gateway` opens the store, starts the gateway's broker (`mqtt.url`, see
gateway/mqtt/broker.py) and the web server, then runs an `Engine`, which is the
topology only (sources, routes, sinks and their runners). A reload swaps the
engine under the running services: the broker keeps its process and the web
server its listening socket and open connections. A reload whose config
changes `mqtt:` or `web:` (or `buffer:`, `gateway.data_dir`) sets up that
service again, and says so in a log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.config.load import load
from gateway.config.model import Config
from gateway.core.clock import SYSTEM_CLOCK, Clock
from gateway.core.errors import ConfigError
from gateway.engine.pipeline import Engine
from gateway.engine.runner import supervised
from gateway.engine.status import BrokerStatus, Snapshot
from gateway.mqtt.broker import GatewayBroker, broker_users, open_gateway_broker
from gateway.store.sqlite import Store, hold_data_dir, let_go_data_dir
from gateway.web.server import WebServer

log = logging.getLogger("gateway")


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
    return (config.gateway.data_dir, b.max_bytes, b.overflow, b.synchronous)


def _broker_plan(config: Config) -> tuple[Any, ...]:
    """What `open_gateway_broker` decides from: a reload that keeps it keeps the broker."""
    return (config.mqtt, config.gateway.data_dir, bool(broker_users(config)))


class Gateway:
    """One gateway process: the store, the gateway's MQTT broker and the web server,
    and the engine that runs on them. The web server and the metrics read it as their
    `StatusView`: the snapshot of the engine that runs now, and the store."""

    def __init__(
        self, config: Config, config_path: str | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.broker: GatewayBroker | None = None
        self.web: WebServer | None = None
        self.web_url: str | None = None
        self.ready = asyncio.Event()  # set when the first engine runs
        self._store: Store | None = None
        self._engine: Engine | None = None  # what the page shows: the last one that ran
        self._running: Engine | None = None
        self._broker_task: asyncio.Task[None] | None = None
        self._pending: Config | None = None
        self._stopping = False

    # -- the view the web server and metrics read -----------------------------

    @property
    def store(self) -> Store:
        assert self._store is not None, "the store opens before the web server starts"
        return self._store

    def snapshot(self) -> Snapshot:
        assert self._engine is not None, "an engine exists before the web server starts"
        broker = None if self.broker is None else BrokerStatus(**self.broker.status())
        return self._engine.snapshot(broker)

    # -- control ---------------------------------------------------------------

    def stop(self) -> None:
        """Stop for good (SIGTERM): the engine shuts down in order, then the services."""
        self._stopping = True
        if self.broker is not None and self.broker.embedded is not None:
            # its own SIGTERM (same process group) is expected now
            self.broker.embedded.stopping = True
        if self._running is not None:
            self._running.stop()

    def reload(self, config: Config) -> None:
        """Swap in an engine for `config` (already valid): the running one stops the way
        SIGTERM stops it (everything handed over is committed first), the next one starts
        on the same store, so buffered data, sink cursors and broker sessions carry over."""
        if self._stopping:
            return
        self._pending = config
        if self._running is not None:
            self._running.stop()

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
        try:
            await self._start_broker()
            await self._open_store()
            await self._start_web()
            while True:
                await self._run_engine()
                new, self._pending = self._pending, None
                if new is None or self._stopping:
                    return
                lock = await self._switch(new, lock)
        finally:
            await self._stop_web()
            await self._stop_broker()
            await self._close_store()
            let_go_data_dir(lock)

    async def _run_engine(self) -> None:
        engine = Engine(
            self.config,
            self.store,
            mqtt_url=None if self.broker is None else self.broker.url,
            config_path=self.config_path,
            clock=self.clock,
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
            self.ready.set()
            if self.web_url:
                mqtt = f"; {self.broker.describe()}" if self.broker else ""
                log.info(
                    "gateway: %s is up; status page %s%s",
                    self.config.gateway.id,
                    self.web_url,
                    mqtt,
                )
        try:
            await running
        finally:
            self._running = None

    async def _switch(self, new: Config, lock: Path) -> Path:
        """Set up again the services whose settings the reload changes; keep the others."""
        old, self.config = self.config, new
        if new.gateway.data_dir != old.gateway.data_dir:
            held, lock = lock, hold_data_dir(new.gateway.data_dir)  # a new data_dir: lock it
            let_go_data_dir(held)
        web = new.web != old.web
        broker = _broker_plan(new) != _broker_plan(old)
        store = _store_settings(new) != _store_settings(old)
        if web:
            log.info("gateway: the reload changes web; restarting the web server")
            await self._stop_web()
        if broker:
            log.info("gateway: the reload changes mqtt; setting up the gateway's broker again")
            await self._stop_broker()
            await self._start_broker()
        elif self.broker is not None:
            self.broker.users = broker_users(new)
        if store:
            log.info("gateway: the reload changes the store settings; reopening the store")
            await self._close_store()
            await self._open_store()
        if web:
            await self._start_web()
        return lock

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
        )
        await store.open()
        self._store = store

    async def _close_store(self) -> None:
        if self._store is not None:
            await self._store.close()

    async def _start_web(self) -> None:
        if self.config.web.enabled:
            web = WebServer(self, self.config.web)
            self.web_url = await web.start()
            self.web = web

    async def _stop_web(self) -> None:
        web, self.web, self.web_url = self.web, None, None
        if web is not None:
            await web.stop()


async def serve(config: Config, config_path: str | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; SIGHUP reloads the config file.

    A reload reads and validates the file first, in a worker thread: an invalid
    one is refused with its errors and the running engine goes on, undisturbed.
    A valid one swaps the engine (see `Gateway.reload`) under the running store,
    broker and web server.
    """
    loop = asyncio.get_running_loop()
    gateway = Gateway(config, config_path)
    stops = 0

    def on_signal(signum: int) -> None:
        nonlocal stops
        stops += 1
        name = signal.Signals(signum).name
        if stops == 1:
            log.info("gateway: %s received; stopping", name)
            gateway.stop()
        elif signum == signal.SIGINT:
            # a second Ctrl-C means now; a repeated SIGTERM (make, a process group) does not
            log.error("gateway: second SIGINT; exiting without finishing the shutdown")
            os._exit(1)
        else:
            log.info("gateway: %s received again; still stopping", name)

    reading: asyncio.Task[None] | None = None
    read_again = False

    async def reload() -> None:
        nonlocal read_again
        assert config_path is not None
        new: Config | None = None
        read_again = True
        while read_again and not stops:
            read_again = False  # a SIGHUP while the file is read means: read it once more
            try:
                # Reading, parsing and validating walk the whole file (and decrypt its
                # secrets): off the event loop, so that /healthz, MQTT keepalives and the
                # sinks go on meanwhile. The loader bounds its size, depth and aliases.
                new = await asyncio.to_thread(load, config_path)
            except ConfigError as err:
                new = None
                log.error(
                    "gateway: reload refused, the running config stays:\n  %s",
                    "\n  ".join(err.problems),
                )
            except Exception as err:  # the reload boundary: the running config must stay
                # The loader turns every mistake in the file into a ConfigError; this is a
                # bug of ours, said in one line (the traceback at DEBUG, for a report).
                new = None
                log.error(
                    "gateway: reload refused, the running config stays: reading %s failed"
                    " (%s: %s); please report this",
                    config_path,
                    type(err).__name__,
                    err,
                )
                log.debug("gateway: the reload failed here", exc_info=True)
        if new is not None and not stops:
            log.info("gateway: reloading %s", config_path)
            gateway.reload(new)

    def on_reload() -> None:
        nonlocal reading, read_again
        if config_path is None or stops:
            return
        if reading is not None and not reading.done():
            read_again = True
            return
        reading = loop.create_task(reload(), name="reload")

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        await gateway.run()
    finally:
        if reading is not None:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    return 0

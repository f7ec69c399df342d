"""Process lifecycle: logging, signals, and running the engine until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from gateway.config.load import load
from gateway.config.model import Config
from gateway.core.errors import ConfigError
from gateway.engine.pipeline import Engine
from gateway.store.sqlite import hold_data_dir, let_go_data_dir

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
    # gmqtt logs every connection event at INFO and WARNING; our components say what matters.
    logging.getLogger("gmqtt").setLevel(logging.ERROR)


async def serve(config: Config, config_path: str | None = None) -> int:
    """Run engines until SIGTERM/SIGINT; SIGHUP reloads the config file.

    A reload reads and validates the file first, in a worker thread: an invalid
    one is refused with its errors and the running engine goes on, undisturbed.
    A valid one stops the running engine the way SIGTERM does (everything handed
    over is committed first) and starts a new one on the same store, so buffered
    data, sink cursors and the broker session carry over: nothing is lost or sent twice.
    """
    loop = asyncio.get_running_loop()
    engine = Engine(config, config_path)
    stops = 0
    pending: Config | None = None

    def on_signal(signum: int) -> None:
        nonlocal stops
        stops += 1
        name = signal.Signals(signum).name
        if stops == 1:
            log.info("gateway: %s received; stopping", name)
            engine.stop()
        elif signum == signal.SIGINT:
            # a second Ctrl-C means now; a repeated SIGTERM (make, a process group) does not
            log.error("gateway: second SIGINT; exiting without finishing the shutdown")
            os._exit(1)
        else:
            log.info("gateway: %s received again; still stopping", name)

    reading: asyncio.Task[None] | None = None
    read_again = False

    async def reload() -> None:
        nonlocal pending, read_again
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
            pending = new
            log.info("gateway: reloading %s", config_path)
            engine.stop()

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
    # The data_dir stays locked across reloads (each engine also holds it while it runs),
    # so that `edge-stream store reset` cannot slip in between two engines.
    lock = hold_data_dir(engine.data_dir)
    try:
        while True:
            runner = asyncio.create_task(engine.run(), name="engine")
            ready = asyncio.create_task(engine.ready.wait())
            await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
            if engine.ready.is_set() and engine.web_url:
                mqtt = f"; {engine.broker.describe()}" if engine.broker else ""
                log.info(
                    "gateway: %s is up; status page %s%s",
                    engine.config.gateway.id,
                    engine.web_url,
                    mqtt,
                )
            ready.cancel()
            await runner
            if pending is None or stops:
                if reading is not None:
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
                return 0
            engine, pending = Engine(pending, config_path), None
            old, lock = lock, hold_data_dir(engine.data_dir)  # a new data_dir: lock it too
            let_go_data_dir(old)
    finally:
        let_go_data_dir(lock)

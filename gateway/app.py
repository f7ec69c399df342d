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

    A reload validates the file first: an invalid one is refused with its
    errors and the running engine goes on. A valid one stops the running
    engine the way SIGTERM does (everything handed over is committed first)
    and starts a new one on the same store, so buffered data, sink cursors
    and the broker session carry over: nothing is lost or sent twice.
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

    def on_reload() -> None:
        nonlocal pending
        if config_path is None or stops:
            return
        try:
            pending = load(config_path)
        except ConfigError as err:
            log.error(
                "gateway: reload refused, the running config stays:\n  %s",
                "\n  ".join(err.problems),
            )
            return
        log.info("gateway: reloading %s", config_path)
        engine.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
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
            return 0
        engine, pending = Engine(pending, config_path), None

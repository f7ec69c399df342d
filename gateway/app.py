"""Process lifecycle: logging, signals, and running the engine until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from gateway.config.model import Config
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
    engine = Engine(config, config_path)
    loop = asyncio.get_running_loop()
    stops = 0

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

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    runner = asyncio.create_task(engine.run(), name="engine")
    ready = asyncio.create_task(engine.ready.wait())
    await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
    if engine.ready.is_set() and engine.web_url:
        log.info("gateway: %s is up; status page %s", config.gateway.id, engine.web_url)
    ready.cancel()
    await runner
    return 0

"""A connection flood on the web port: hundreds of idle and slow-loris connections.

While the flood holds, /healthz must answer a fresh client within its bound (a 2 s
socket timeout), the gateway must keep storing what its MQTT source receives, and its
memory must stay bounded. The flood keeps its connections open: each one the gateway
closes is opened again, as an attacker (or a misbehaving dashboard) would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e

HEALTHZ_BOUND = 2.0  # seconds a fresh client waits for /healthz


class Flood:
    """`idle` connections that send nothing and `slow` ones that send a request head one
    byte at a time, each opened again when the server closes it; in a thread of its own."""

    def __init__(self, port: int, idle: int, slow: int) -> None:
        self.port = port
        self.idle = idle
        self.slow = slow
        self.connects = 0
        self.open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._ready = threading.Event()

    def __enter__(self) -> Flood:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks = [asyncio.create_task(self._hold(False)) for _ in range(self.idle)]
        tasks += [asyncio.create_task(self._hold(True)) for _ in range(self.slow)]
        self._ready.set()
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _hold(self, slow: bool) -> None:
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.connects += 1
            self.open += 1
            try:
                if slow:
                    for i in range(len(head)):
                        writer.write(head[i : i + 1])
                        await writer.drain()
                        if await _closed(reader, 0.5):
                            break
                else:
                    await reader.read(1)  # until the server closes it
            except OSError:
                pass
            finally:
                self.open -= 1
                writer.close()
            await asyncio.sleep(0.5)


async def _closed(reader: asyncio.StreamReader, wait: float) -> bool:
    try:
        async with asyncio.timeout(wait):
            await reader.read(1)
    except TimeoutError:
        return False
    return True


def healthz(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, timeout=HEALTHZ_BOUND) as response:
            return response.status == 200 and response.read() == b"ok\n"
    except OSError:
        return False


def run_flood(gateway_factory: Any, mosquitto: Any, tmp_path: Path, idle: int, slow: int) -> None:
    topic = f"flood/{uuid.uuid4().hex}"
    out = tmp_path / "out.jsonl"
    gw = gateway_factory({
        "sources": {"in": {"type": "mqtt", "url": mosquitto.url, "topics": [topic], "qos": 1,
                           "client_id": f"flood-{uuid.uuid4().hex[:8]}"}},
        "routes": {"all": {"match": topic, "sinks": ["file"]}},
        "sinks": {"file": {"type": "file", "path": str(out)}},
    })  # fmt: skip
    gw.start()
    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"p-{uuid.uuid4().hex}")
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    try:
        rss_before = gw.rss_mb()
        with Flood(gw.web_port, idle, slow) as flood:
            wait_for(lambda: flood.connects >= idle + slow, 60, "every flood connection made")
            answered = [healthz(gw.web_port) for _ in range(10)]
            for i in range(200):
                publisher.publish(topic, json.dumps({"i": i}), qos=1).wait_for_publish(10)
            wait_for(
                lambda: out.exists() and len(out.read_text().splitlines()) >= 200,
                30,
                "200 messages stored while the web port is flooded",
            )
            answered += [healthz(gw.web_port) for _ in range(10)]
            rss_during = gw.rss_mb()
        assert answered == [True] * 20, answered
        assert rss_during - rss_before < 30, (rss_before, rss_during)
        status = gw.status()
        assert status["sources"]["in"]["state"] == "running"
        assert healthz(gw.web_port)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        assert gw.stop() == 0


def test_a_connection_flood_does_not_lock_out_healthz(
    gateway_factory: Any, mosquitto: Any, tmp_path: Path
) -> None:
    run_flood(gateway_factory, mosquitto, tmp_path, idle=200, slow=100)


@pytest.mark.long
def test_a_large_connection_flood_does_not_lock_out_healthz(
    gateway_factory: Any, mosquitto: Any, tmp_path: Path
) -> None:
    run_flood(gateway_factory, mosquitto, tmp_path, idle=600, slow=300)

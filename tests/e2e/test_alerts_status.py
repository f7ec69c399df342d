"""End to end: the status topic's last will, the stats topic, and a backlog alert that
fires once and resolves once on MQTT and on a webhook, across a kill -9 and restart."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.e2e.harness import GatewayProcess, Publisher, Watcher, free_port, wait_for
from tests.e2e.upstreams import PostgresUpstream

pytestmark = pytest.mark.e2e


class WebhookReceiver:
    """A small aiohttp server on its own thread that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "the webhook receiver did not start"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()

    def events(self, state: str) -> list[dict[str, Any]]:
        return [b for b in list(self.bodies) if b["state"] == state]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def test_backlog_alert_fires_once_and_resolves_once_across_a_kill(
    gateway_factory: Any, mosquitto: Any, postgres: Any, receiver: WebhookReceiver
) -> None:
    gid = "alerts1"
    pg = PostgresUpstream(postgres, "alert_rows")  # stopped and started again here
    watcher = Watcher(mosquitto.port, gid)
    status_topic = f"edge-stream/{gid}/status"
    alerts_topic = f"edge-stream/{gid}/alerts"
    gw: GatewayProcess = gateway_factory(
        {
            "gateway": {"id": gid},
            "mqtt": {"url": mosquitto.url},
            "sources": {"plant": {"type": "mqtt", "topics": [f"{gid}/#"], "qos": 1}},
            "routes": {"r": {"match": f"{gid}/#", "sinks": ["wh"]}},
            "sinks": {"wh": {**pg.sink(), "retry": {"initial": "200ms", "max": "1s"}}},
            "status": {"stats_interval": "1s"},
            "alerts": {
                "defaults": False,
                "rules": {"sink_backlog": {"older_than": "2s"}},
                "resolve_after": "1s",  # short, as the rule's threshold
                "webhook": {"url": receiver.url, "retry": {"initial": "200ms", "max": "1s"}},
            },
        }
    )
    try:
        gw.start()
        wait_for(lambda: b"online" in watcher.payloads(status_topic), 20, "status online")
        wait_for(lambda: watcher.payloads(f"edge-stream/{gid}/stats"), 20, "a stats message")
        stats = json.loads(watcher.payloads(f"edge-stream/{gid}/stats")[-1])
        assert stats["gateway"] == gid and "wh" in stats["sinks"]

        Publisher(mosquitto.port, 5, 1, gid).run()
        wait_for(lambda: pg.count() == 5, 30, "5 rows in PostgreSQL")

        pg.stop()
        Publisher(mosquitto.port, 5, 1, gid, first=5).run()
        wait_for(lambda: receiver.events("firing"), 40, "the webhook's firing event")
        wait_for(lambda: watcher.alerts(alerts_topic, "firing"), 20, "the MQTT firing event")
        fired = receiver.events("firing")[0]
        assert fired["rule"] == "sink_backlog" and fired["subject"] == "wh"
        assert gw.status()["alerts"]["active"][0]["key"] == "sink_backlog:wh"

        # kill -9 during the outage: the broker says offline (the last will) ...
        gw.kill()
        wait_for(lambda: watcher.payloads(status_topic)[-1] == b"offline", 20, "status offline")
        # ... and after the restart the alert is still active and does not fire again
        gw.start()
        wait_for(lambda: watcher.payloads(status_topic)[-1] == b"online", 20, "online again")
        # past the warm-up (3 s) and two evaluations (1 s apart): an alert forgotten at the
        # kill would fire again at the first one
        time.sleep(5)
        assert gw.status()["alerts"]["active"][0]["key"] == "sink_backlog:wh"
        assert len(receiver.events("firing")) == 1
        assert len(watcher.alerts(alerts_topic, "firing")) == 1
        assert not receiver.events("resolved")

        pg.start()
        wait_for(lambda: pg.count() == 10, 60, "10 rows in PostgreSQL")
        wait_for(lambda: receiver.events("resolved"), 40, "the webhook's resolved event")
        wait_for(lambda: watcher.alerts(alerts_topic, "resolved"), 20, "the MQTT resolved event")
        time.sleep(2)  # two more evaluations: a second event would show
        assert len(receiver.events("firing")) == 1 and len(receiver.events("resolved")) == 1
        assert len(watcher.alerts(alerts_topic, "firing")) == 1
        assert len(watcher.alerts(alerts_topic, "resolved")) == 1
        status = gw.status()["alerts"]
        assert status["active"] == []
        assert [e["state"] for e in status["recent"]][:2] == ["resolved", "firing"]

        # a clean stop says offline too
        assert gw.stop() == 0
        wait_for(lambda: watcher.payloads(status_topic)[-1] == b"offline", 20, "offline at stop")
    finally:
        watcher.close()
        gw.close()


async def test_a_webhook_that_never_answers_is_logged_as_a_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log said "cannot POST to the webhook: " and nothing after (a timeout's str()
    is empty); it now says what happened."""
    from types import SimpleNamespace

    from gateway.alerts import Alerts

    taken: list[asyncio.StreamWriter] = []  # takes the connection, never answers
    server = await asyncio.start_server(lambda r, w: taken.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    webhook = SimpleNamespace(url=f"http://127.0.0.1:{port}/hook", timeout=0.2, queue=10)
    config = SimpleNamespace(alerts=SimpleNamespace(webhook=webhook))
    alerts = Alerts(None, lambda: config, asyncio.Event(), None)  # type: ignore[arg-type]
    try:
        with caplog.at_level("WARNING", logger="gateway.alerts"):
            assert await alerts._send_webhook({"key": "k"}) is False
        assert alerts.notifiers["webhook"].last_error == "the webhook did not answer within 0.2s"
        assert "the webhook did not answer within 0.2s; retrying with backoff" in caplog.text
    finally:
        assert alerts._session is not None
        await alerts._session.close()
        server.close()
        for writer in taken:
            writer.close()
        await server.wait_closed()

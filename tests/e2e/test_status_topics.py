"""The gateway's own topics on its broker, as a user reads them: `edge-stream/<id>/status`
retained online/offline (offline too after kill -9, the last will) and
`edge-stream/<id>/stats` retained every `status.stats_interval`, with per source, route
and sink counters."""

from __future__ import annotations

import json
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.e2e.harness import GatewayProcess, Publisher, Watcher, wait_for

pytestmark = pytest.mark.e2e

N = 12


def _stats(watcher: Watcher, gid: str) -> list[dict[str, Any]]:
    return [json.loads(p) for p in watcher.payloads(f"edge-stream/{gid}/stats")]


def test_status_and_stats_topics_across_a_kill(gateway_factory: Any, mosquitto: Any) -> None:
    gid = "status-topics"
    watcher = Watcher(mosquitto.port, gid)
    gw: GatewayProcess = gateway_factory(
        {
            "gateway": {"id": gid},
            "mqtt": {"url": mosquitto.url},
            "sources": {"plant": {"type": "mqtt", "topics": [f"{gid}/#"], "qos": 1}},
            "routes": {"r": {"match": f"{gid}/#", "sinks": ["f"]}},
            "sinks": {"f": {"type": "file", "path": "out.jsonl"}},
            "status": {"stats_interval": "200ms"},
        }
    )
    status = f"edge-stream/{gid}/status"
    try:
        gw.start()
        wait_for(lambda: watcher.payloads(status)[-1:] == [b"online"], 20, "status online")
        Publisher(mosquitto.port, N, 1, gid).run()
        wait_for(
            lambda: [s for s in _stats(watcher, gid) if s["ingested"] == N],
            20,
            f"a stats message after {N} readings",
        )
        stats = [s for s in _stats(watcher, gid) if s["ingested"] == N][-1]
        assert stats["gateway"] == gid
        assert set(stats) == {  # as docs/metrics.md lists them
            *("gateway", "at", "uptime_s", "ingested", "sources", "routes", "sinks"),
            *("store", "alerts"),
        }
        assert stats["sources"]["plant"]["produced"] == N
        assert stats["routes"]["r"]["received"] == N  # "per source, route and sink counters"
        assert stats["sinks"]["f"]["state"] == "running"
        count = len(_stats(watcher, gid))
        wait_for(lambda: len(_stats(watcher, gid)) >= count + 2, 10, "two more, 200 ms apart")

        # a new subscriber gets both at once, retained
        late: list[tuple[str, bytes, bool]] = []
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"late-{gid}")
        client.on_message = lambda _c, _u, m: late.append(
            (m.topic.rsplit("/", 1)[1], bytes(m.payload), bool(m.retain))
        )
        client.connect("127.0.0.1", mosquitto.port)
        client.subscribe([(status, 1), (f"edge-stream/{gid}/stats", 1)])
        client.loop_start()
        try:
            wait_for(
                lambda: {topic for topic, _, retain in late if retain} == {"status", "stats"},
                10,
                "the retained status and stats",
            )
        finally:
            client.loop_stop()
            client.disconnect()
        assert [p for topic, p, _ in late if topic == "status"] == [b"online"]

        gw.kill()
        wait_for(lambda: watcher.payloads(status)[-1:] == [b"offline"], 20, "offline (last will)")
    finally:
        watcher.close()

"""End to end through the real `edge-stream` process and a real 3-node JetStream cluster.

The nats sink: kill -9 of the gateway while it drains a backlog into a 3-replica stream
leaves every message in the stream once (the same scenario as test_sinks_e2e.py runs
for the other sinks). The nats source: messages published to a stream reach PostgreSQL,
and a kill -9 of the gateway while it reads leaves every message there once (the
source's FlowFile ids come from the stream sequence; the table is keyed by id). A
refused password stops the sink with one line, no traceback, no password.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest
from nats.js import api as js_api

from tests import servers
from tests.e2e import test_sinks_e2e
from tests.e2e.harness import GatewayProcess, wait_for
from tests.e2e.upstreams import NatsUpstream, PostgresUpstream, Upstream
from tests.nats_helpers import JS_TIMEOUT
from tests.sinks.contract import unique_name

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstream_factory(
    nats_cluster: servers.NatsCluster, postgres: Any
) -> Iterator[Callable[[str, str], Upstream]]:
    made: list[Upstream] = []

    def make(kind: str, name: str) -> Upstream:
        up: Upstream = (
            NatsUpstream(nats_cluster, name) if kind == "nats" else PostgresUpstream(postgres, name)
        )
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


@pytest.mark.long
def test_sink_kill_9_during_delivery_every_message_once_in_the_stream(
    mosquitto: Any,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    upstream_factory: Callable[[str, str], Upstream],
) -> None:
    test_sinks_e2e.test_kill_9_during_delivery_loses_nothing_and_duplicates_nothing(
        "nats", mosquitto, gateway_factory, upstream_factory
    )


async def _publish(urls: list[str], stream: str, subject: str, first: int, count: int) -> None:
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=JS_TIMEOUT)
        with_stream = [s.config.name for s in await js.streams_info()]
        if stream not in with_stream:
            await js.add_stream(
                js_api.StreamConfig(name=stream, subjects=[f"{subject}.>"], num_replicas=3)
            )
        for seq in range(first, first + count):
            future = await js.publish_async(
                f"{subject}.dev{seq % 5}.telemetry", json.dumps({"seq": seq}).encode()
            )
            if seq % 500 == 499 or seq == first + count - 1:
                await future
        await js.publish_async_completed()
    finally:
        await nc.close()


def test_source_kill_9_while_reading_every_message_once_in_postgres(
    nats_cluster: servers.NatsCluster,
    mosquitto: Any,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    upstream_factory: Callable[[str, str], Upstream],
) -> None:
    name = unique_name()
    stream, total = name.upper(), 6000
    up = upstream_factory("postgres", name)
    config = {
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "fleet": {
                "type": "nats",
                "servers": nats_cluster.urls,
                "stream": stream,
                "batch": 200,
                "ack_wait": "2s",
                "topic": "fleet/{subject}",
            }
        },
        "routes": {"readings": {"match": "fleet/#", "sinks": ["db"]}},
        "sinks": {"db": {**up.sink(), "batch": {"max_rows": 100}}},
    }
    asyncio.run(_publish(nats_cluster.urls, stream, name, 0, total // 2))
    gw = gateway_factory(config)
    gw.start()
    wait_for(lambda: up.count() >= 500, 60, "the first rows in PostgreSQL")
    gw.kill()  # mid-stream: some messages stored and not acked, some read and not stored
    stored_at_kill = up.count()
    assert stored_at_kill < total // 2, "the kill came after the whole first half was stored"
    asyncio.run(_publish(nats_cluster.urls, stream, name, total // 2, total // 2))
    gw.start()
    wait_for(lambda: up.count() >= total, 120, "every message in PostgreSQL")
    time.sleep(2.5)  # longer than ack_wait: a late redelivery would show now
    seqs = up.seqs()
    assert sorted(seqs) == list(range(total)), (
        f"{len(seqs)} rows for {total} messages, {len(set(seqs))} distinct"
    )
    rows = up.server.fetch(f"SELECT DISTINCT topic FROM {name} ORDER BY topic")  # type: ignore[attr-defined]
    assert [r[0] for r in rows] == [f"fleet/{name}/dev{i}/telemetry" for i in range(5)]
    assert gw.stop() == 0


def test_a_refused_password_stops_the_sink_with_one_clear_line(
    mosquitto: Any,
    nats_factory: Callable[..., servers.Nats],
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
) -> None:
    name = unique_name()
    secret = f"n0t-{uuid.uuid4().hex[:8]}-pw"
    server = nats_factory(user=("gw", "the-right-one"))
    config = {
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1, "client_id": name}
        },
        "routes": {"readings": {"match": f"{name}/#", "sinks": ["fleet"]}},
        "sinks": {
            "fleet": {
                "type": "nats",
                "servers": [server.url],
                "subject": f"{name}.{{topic}}",
                "user": "gw",
                "password": secret,
                "retry": {"initial": "200ms", "max": "1s"},
            }
        },
    }
    gw = gateway_factory(config)
    gw.start()
    wait_for(lambda: gw.sink("fleet")["state"] == "failed", 30, "the sink to stop")
    status = gw.sink("fleet")
    error = status["last_error"]
    assert "refused us: authorization violation" in error and "\n" not in error, error
    errors = status["errors"]
    time.sleep(1.5)  # it stops for good: no retries (the retry max is 1 s)
    assert gw.sink("fleet")["errors"] == errors
    whole = json.dumps(gw.status())
    assert gw.stop() == 0
    log = gw.log_path.read_text(errors="replace")
    refused = [line for line in log.splitlines() if "authorization violation" in line]
    assert len(refused) == 1, log
    assert "Traceback" not in log, log
    assert secret not in log and secret not in whole, log

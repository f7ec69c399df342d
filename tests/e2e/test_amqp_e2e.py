"""The amqp sink in the real gateway: MQTT -> `edge-stream run` -> RabbitMQ.

A broker restart under load loses nothing (at least once: every sequence number is in
the queue, repeats are reported, not failed), and a refused password stops the sink
with one clear line in its status and the log, without a traceback or the password.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.harness import GatewayProcess, Publisher, wait_for
from tests.e2e.upstreams import AmqpUpstream

pytestmark = pytest.mark.e2e

FAST_RETRY = {"retry": {"initial": "200ms", "max": "1s"}}


def gateway_config(mosquitto: Any, name: str, sink: dict[str, Any]) -> dict[str, Any]:
    return {
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1, "client_id": f"gw-{name}"}
        },
        "routes": {"readings": {"match": f"{name}/#", "sinks": ["fleet"]}},
        "sinks": {"fleet": {**sink, **FAST_RETRY}},
    }


def test_a_broker_restart_under_load_loses_nothing(
    mosquitto: Any, rabbitmq: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    name = "amqp_restart"
    total, rate = 3000, 300  # 10 s of publishing: the restart happens under load
    up = AmqpUpstream(rabbitmq, name)
    gw = gateway_factory(gateway_config(mosquitto, name, up.sink()))
    gw.start()
    publisher = Publisher(mosquitto.port, total, topics=10, prefix=name, rate=rate)
    publisher.start()
    wait_for(lambda: up.count() >= 300, 30, "the first messages in the queue")

    rabbitmq.stop()
    stopped_at = publisher.sent
    wait_for(lambda: gw.sink("fleet")["state"] != "running", 30, "the sink to notice")
    time.sleep(2.0)  # under load, the gateway buffers meanwhile
    depth = gw.sink("fleet")["depth"]
    rabbitmq.start()
    assert publisher.sent > stopped_at, "the restart should happen while publishing"

    publisher.join_checked()
    wait_for(lambda: up.count() >= total, 90, "every message after the restart")
    wait_for(lambda: gw.sink("fleet")["depth"] == 0, 30, "depth 0")
    counts = Counter(up.seqs())
    missing = sorted(set(range(total)) - counts.keys())
    assert not missing, f"{len(missing)} sequence numbers missing: {missing[:20]}"
    assert set(counts) == set(range(total))
    repeats = sum(n - 1 for n in counts.values())
    sink = gw.sink("fleet")
    assert sink["errors"] >= 1 and sink["state"] == "running", sink
    print(
        f"amqp: {sum(counts.values())} arrivals, {total} distinct, {repeats} repeats;"
        f" depth {depth} during the outage"
    )
    assert gw.stop() == 0


def test_a_refused_password_stops_the_sink_with_one_clear_line(
    mosquitto: Any, rabbitmq: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    name = "amqp_refused"
    secret = "n0t-The-Passw0rd"
    sink = {**AmqpUpstream(rabbitmq, name).sink(), "username": "edge", "password": secret}
    gw = gateway_factory(gateway_config(mosquitto, name, sink))
    gw.start()
    wait_for(lambda: gw.sink("fleet")["state"] == "failed", 30, "the sink to stop")
    status = gw.sink("fleet")
    error = status["last_error"]
    assert "ACCESS_REFUSED" in error and "check username and password" in error, error
    assert "\n" not in error
    # It stops for good: no retry storm.
    errors = status["errors"]
    time.sleep(2.0)
    assert gw.sink("fleet")["errors"] == errors
    assert gw.stop() == 0
    log = gw.log_path.read_text(errors="replace")
    refused = [line for line in log.splitlines() if "ACCESS_REFUSED" in line]
    assert len(refused) == 1, log
    assert "Traceback" not in log, log
    assert secret not in log and secret not in repr(status), log

"""The amqp sink in the real gateway: MQTT -> `edge-stream run` -> RabbitMQ.

A broker restart under load loses nothing (at least once: every sequence number is in
the queue, repeats are reported, not failed), and a refused password stops the sink
with one clear line in its status and the log, without a traceback or the password.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.harness import GatewayProcess, Publisher, wait_for
from tests.e2e.upstreams import AmqpUpstream
from tests.servers import free_port

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
    total, rate = 2400, 300  # 8 s of publishing: the restart happens under load
    up = AmqpUpstream(rabbitmq, name)
    gw = gateway_factory(gateway_config(mosquitto, name, up.sink()))
    gw.start()
    publisher = Publisher(mosquitto.port, total, topics=10, prefix=name, rate=rate)
    publisher.start()
    wait_for(lambda: up.count() >= 300, 30, "the first messages in the queue")

    rabbitmq.stop()
    stopped_at = publisher.sent
    wait_for(lambda: gw.sink("fleet")["state"] != "running", 30, "the sink to notice")
    # under load, the gateway buffers meanwhile: a second of it at least
    depth = wait_for(
        lambda: gw.sink("fleet")["depth"] >= rate and gw.sink("fleet")["depth"],
        30,
        "a second of load buffered",
    )
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


def test_an_exchange_deleted_while_running_is_retried_until_it_is_back(
    rabbitmq: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    # declare: false, and the operator deletes the exchange, then makes it again: the sink
    # waits (it had stopped for good at its first reconnect, "fix and reload"), nothing lost.
    name, port, token = "amqp_gone", free_port(), "a-long-random-token-0123"
    exchange = {"exchange": name, "exchange_type": "topic", "durable": True}
    rabbitmq.declare(queue=name, **exchange)
    gw = gateway_factory(
        {
            "sources": {"web": {"type": "http", "tokens": [token], "listen": f"127.0.0.1:{port}"}},
            "routes": {"all": {"match": "#", "sinks": ["fleet"]}},
            "sinks": {
                "fleet": {"type": "amqp", "url": rabbitmq.url, "declare": False, **exchange}
                | FAST_RETRY
            },
        }
    )
    gw.start()

    def post(seqs: range) -> None:
        body = json.dumps([{"seq": seq} for seq in seqs]).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/ingest/plant/a",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200

    post(range(10))
    wait_for(lambda: rabbitmq.depth(name) >= 10, 30, "the first 10 in the queue")
    rabbitmq.delete_exchange(name)
    post(range(10, 20))
    wait_for(
        lambda: "NOT_FOUND" in (gw.sink("fleet")["last_error"] or ""), 30, "the sink to notice"
    )
    wait_for(lambda: gw.sink("fleet")["errors"] >= 3, 30, "tries while it is gone")
    assert gw.sink("fleet")["state"] != "failed", gw.sink("fleet")
    rabbitmq.declare(queue=name, **exchange)
    wait_for(lambda: rabbitmq.depth(name) >= 20, 30, "the last 10 once it is back")
    wait_for(lambda: gw.sink("fleet")["depth"] == 0, 30, "depth 0")
    seqs = [json.loads(body)["seq"] for _, body in rabbitmq.messages(name)]
    assert set(seqs) == set(range(20)), seqs
    assert gw.sink("fleet")["state"] == "running"
    assert gw.stop() == 0
    assert "Traceback" not in gw.log_path.read_text(errors="replace")

"""The store's budget against the real `edge-stream` process (README, Delivery
guarantees): with the upstream broker down, `overflow: drop_oldest` drops the oldest
readings, counts them in `/api/status` and says so in an ERROR line, and the newest
reach the upstream once it is back; `overflow: block` stops acknowledging the sensors
instead, and every reading reaches the upstream once it is back."""

from __future__ import annotations

import json
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.e2e.harness import wait_for
from tests.e2e.upstreams import MqttUpstream

pytestmark = pytest.mark.e2e

SENT = 300
PAD = "x" * 8000  # 300 readings of 8 KB against a budget of 1 MiB: over twice the budget


def publish(port: int, name: str) -> None:
    """SENT numbered QoS 1 readings on one topic, each acknowledged by the broker."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{name}")
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [
            client.publish(f"{name}/dev", json.dumps({"seq": n, "pad": PAD}), qos=1)
            for n in range(SENT)
        ]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def config(mosquitto: Any, up: MqttUpstream, name: str, overflow: str) -> dict[str, Any]:
    return {
        "mqtt": {"url": mosquitto.url},
        "buffer": {"max_bytes": "1MiB", "overflow": overflow},
        "sources": {
            "plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1, "client_id": f"gw-{name}"}
        },
        "routes": {"all": {"match": f"{name}/#", "sinks": ["up"]}},
        "sinks": {"up": {**up.sink(), "retry": {"initial": "200ms", "max": "1s"}}},
    }


@pytest.fixture
def upstream(mosquitto_factory: Any, request: pytest.FixtureRequest) -> Any:
    up = MqttUpstream(mosquitto_factory(), request.node.name[:20].replace("[", "_"))
    yield up
    up.close()


def test_drop_oldest_counts_and_says_what_it_dropped_and_the_newest_get_through(
    mosquitto: Any, upstream: MqttUpstream, gateway_factory: Any
) -> None:
    name = "overflow_drop"
    upstream.stop()
    gw = gateway_factory(config(mosquitto, upstream, name, "drop_oldest"))
    gw.start()
    publish(mosquitto.port, name)
    wait_for(lambda: gw.status()["gateway"]["ingested"] == SENT, 30, "every reading taken in")
    store = gw.status()["store"]
    assert store["overflow"] == "drop_oldest"
    assert store["dropped"] > 0, store
    assert store["bytes"] <= store["max_bytes"], store
    assert gw.sink("up")["depth"] == SENT - store["dropped"]
    errors = [line for line in gw.log().splitlines() if "dropped" in line and "budget" in line]
    assert errors and "ERROR" in errors[0], gw.log()[-2000:]

    upstream.start()
    kept = SENT - store["dropped"]
    wanted = set(range(SENT - kept, SENT))  # the newest
    wait_for(lambda: wanted <= set(upstream.seqs()), 60, "the newest readings upstream")
    assert set(upstream.seqs()) == wanted, "only the oldest are dropped"
    assert gw.stop() == 0


def test_block_stops_acknowledging_and_loses_nothing(
    mosquitto: Any, upstream: MqttUpstream, gateway_factory: Any
) -> None:
    name = "overflow_block"
    upstream.stop()
    gw = gateway_factory(config(mosquitto, upstream, name, "block"))
    gw.start()
    publish(mosquitto.port, name)  # the broker keeps what the gateway does not take
    wait_for(lambda: gw.status()["store"]["blocked"], 30, "intake stopped at the budget")
    store = gw.status()["store"]
    assert store["dropped"] == 0, store
    # a commit takes in no more than the room left, at least one reading
    assert store["bytes"] <= store["max_bytes"] + 2 * len(PAD), store
    taken = gw.status()["gateway"]["ingested"]
    assert 0 < taken < SENT, taken

    upstream.start()
    wait_for(lambda: set(range(SENT)) <= set(upstream.seqs()), 60, "every reading upstream")
    assert gw.status()["store"]["dropped"] == 0
    assert gw.stop() == 0

"""Windows give the same outputs whether or not the gateway was killed with SIGKILL.

Two real gateways take the same numbered QoS 1 readings from Mosquitto through a
tumbling event-time window per topic into a file sink: one runs uninterrupted, the
other is killed twice mid-way and started again. The window outputs (deduplicated by
id, which is made from the window and group) must be equal, and an id written twice
(the file sink is at least once) must have the same content both times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import GatewayProcess, Publisher, wait_for

pytestmark = pytest.mark.e2e

TOTAL = 6000
TOPICS = 8
END = 1_000_000  # a last reading far ahead moves the watermark past every window


def run(
    name: str,
    kills: list[float],
    folder: Path,
    mosquitto: Any,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
) -> dict[str, dict[str, Any]]:
    out = folder / name
    config = {
        "gateway": {"data_dir": str(folder / f"{name}-data")},
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1, "client_id": f"gw-{name}"}
        },
        "routes": {
            "minute": {
                "match": f"{name}/#",
                "processors": [
                    {
                        "type": "window",
                        "kind": "tumbling",
                        "size": "100s",
                        "time": "event",
                        "time_field": "seq",  # seq n is n seconds after the epoch
                        "allowed_lateness": "50s",
                        "group_by": "topic.1",
                        "aggregates": {"seq": ["count", "sum", "min", "max", "avg", "stddev"]},
                        "topic": "agg/{group}",
                    }
                ],
                "sinks": ["files"],
            }
        },
        "sinks": {"files": {"type": "file", "path": str(out / "out.jsonl")}},
    }
    gw = gateway_factory(config)
    gw.start()
    # Paced when killed, so that the kills land mid-way; the calm run needs no pace.
    rate = 1000 if kills else 0
    publisher = Publisher(mosquitto.port, TOTAL, topics=TOPICS, prefix=name, rate=rate)
    publisher.start()
    # QoS 1 redeliveries are recognised once the broker has numbered 2,000 packet ids in
    # sequence (see the kill storm test); the kills come after that.
    wait_for(lambda: publisher.sent >= 2500, 60, "2,500 messages before the first kill")
    for at in kills:
        wait_for(lambda at=at: publisher.sent >= at * TOTAL, 60, f"{at:.0%} of the readings")
        gw.kill()
        time.sleep(0.3)
        gw.start(wait_sources=False)
    publisher.join_checked()
    last = Publisher(mosquitto.port, 1, topics=1, prefix=f"{name}/end", first=END)
    last.start()
    last.join_checked()
    windows = (TOTAL + 99) // 100 * 1  # windows of 100 s, each holding every topic
    expected = windows * TOPICS

    def outputs() -> dict[str, dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for path in out.glob("out.jsonl*"):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                body = {"topic": record["topic"], **record["payload"]}
                old = seen.setdefault(record["id"], body)
                assert old == body, f"id {record['id']} written with two contents"
        return seen

    got = wait_for(lambda: len(outputs()) >= expected and outputs(), 120, f"{expected} windows")
    time.sleep(1.0)
    got = outputs()
    assert gw.stop() == 0
    return {
        f"{body['topic']} {body['start']}": {k: v for k, v in body.items() if k != "topic"}
        for body in got.values()
    }


def test_windows_are_the_same_with_and_without_kill_9(
    tmp_path: Path, mosquitto: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    calm = run("calm", [], tmp_path, mosquitto, gateway_factory)
    killed = run("killed", [0.5, 0.8], tmp_path, mosquitto, gateway_factory)
    assert len(calm) == (TOTAL + 99) // 100 * TOPICS
    assert killed == calm
    every = sorted(calm.values(), key=lambda b: b["start"])
    assert sum(b["seq"]["count"] for b in every) == TOTAL
    assert sum(b["seq"]["sum"] for b in every) == TOTAL * (TOTAL - 1) // 2

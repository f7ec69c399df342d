"""A standby takes over through the Redis state replica (`state.replicate`).

Gateway A aggregates numbered QoS 1 readings (seq n is n seconds of event time) in
tumbling windows of 100 s per topic and replicates its state to Redis; it is killed
in the middle of a window, once its last readings are committed and replicated.
Gateway B, same config, empty store, starts, restores the open windows from Redis,
and gets the rest of the readings. Every window, those A emitted and those B
emitted (the one A died in among them), equals the window of an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.harness import GatewayProcess, Publisher, wait_for
from tests.sinks.contract import unique_name

pytestmark = pytest.mark.e2e

TOTAL = 1000
SWITCH = 450  # in the middle of the window 400-500
TOPICS = 4
END = 1_000_000  # a reading far ahead: every window closes


def config(
    name: str, folder: Path, mqtt_url: str, replica: dict[str, Any] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "gateway": {"id": "plant", "data_dir": str(folder / f"{name}-data")},
        "mqtt": {"url": mqtt_url},
        "sources": {
            "plant": {"type": "mqtt", "topics": ["rep/#"], "qos": 1, "client_id": "gw-rep"}
        },
        "routes": {
            "minute": {
                "match": "rep/#",
                "processors": [
                    {
                        "type": "window",
                        "size": "100s",
                        "time": "event",
                        "time_field": "seq",
                        "allowed_lateness": "10s",
                        "group_by": "topic.1",
                        "aggregates": {"seq": ["count", "sum", "min", "max"]},
                        "topic": "agg/{group}",
                    }
                ],
                "sinks": ["files"],
            }
        },
        "sinks": {"files": {"type": "file", "path": str(folder / name / "out.jsonl")}},
    }
    if replica is not None:
        out["state"] = {"replicate": replica}
    return out


def outputs(folder: Path) -> dict[str, dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for path in folder.glob("out.jsonl*"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            seen[record["id"]] = {"topic": record["topic"], **record["payload"]}
    return seen


def publish(port: int, count: int, first: int, prefix: str = "rep") -> None:
    publisher = Publisher(port, count, TOPICS, prefix, first=first)
    publisher.start()
    publisher.join_checked()


def window_state(gw: GatewayProcess) -> dict[str, Any]:
    return gw.status()["routes"]["minute"]["processor_state"]["minute.0"]  # type: ignore[no-any-return]


def test_a_standby_continues_the_windows_from_the_redis_replica(
    tmp_path: Path, mosquitto: Any, redis: Any, gateway_factory: Any
) -> None:
    replica = {"redis": redis.url, "prefix": f"{unique_name()}:{{gateway}}"}
    windows = TOTAL // 100 * TOPICS

    # the reference: one gateway, every reading, never killed (no replica)
    calm = gateway_factory(config("calm", tmp_path, mosquitto.url, None))
    calm.start()
    publish(mosquitto.port, TOTAL, 0)
    publish(mosquitto.port, 1, END, "rep/end")
    wait_for(lambda: len(outputs(tmp_path / "calm")) >= windows, 60, f"{windows} windows")
    assert calm.stop() == 0
    want = outputs(tmp_path / "calm")
    assert len(want) == windows

    a = gateway_factory(config("a", tmp_path, mosquitto.url, replica))
    a.start()
    publish(mosquitto.port, SWITCH, 0)

    def copied() -> bool:
        rep = a.status()["replication"]
        return (
            a.status()["gateway"]["ingested"] == SWITCH
            and rep["state"] == "up"
            and rep["pending"] == 0
            and not rep["full_copy_due"]
        )

    wait_for(copied, 30, "A's readings committed and replicated")
    assert window_state(a)["open"] == TOPICS  # the windows 400-500, one per topic
    a.kill()

    b = gateway_factory(config("b", tmp_path, mosquitto.url, replica))
    b.start()
    assert window_state(b)["open"] == TOPICS, "B restored A's open windows from Redis"
    assert "restored" in b.log_path.read_text()
    publish(mosquitto.port, TOTAL - SWITCH, SWITCH)
    publish(mosquitto.port, 1, END, "rep/end")
    both = lambda: {**outputs(tmp_path / "a"), **outputs(tmp_path / "b")}  # noqa: E731
    wait_for(lambda: len(both()) >= windows, 60, f"{windows} windows from A and B")
    time.sleep(1.0)  # a window too many would show by now
    assert b.stop() == 0
    got = both()
    assert set(outputs(tmp_path / "a")) and set(outputs(tmp_path / "b")), "each emitted some"
    assert got == want
    middle = [w for w in outputs(tmp_path / "b").values() if w["start"].endswith("06:40.000Z")]
    assert [w["seq"]["count"] for w in middle] == [25] * TOPICS, "the window A died in, whole"
    # what Redis holds is B's state now (B replicated on)
    client = redis_client(redis.url)
    assert client.hlen(f"{replica['prefix'].replace('{gateway}', 'plant')}:minute.0") >= 1


def redis_client(url: str) -> Any:
    return redis.Redis.from_url(url)

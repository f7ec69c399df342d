"""A standby takes over through the Redis state replica (`state.replicate`).

Gateway A aggregates numbered QoS 1 readings (seq n is n seconds of event time) in
tumbling windows of 100 s per topic and replicates its state to Redis; it is killed
in the middle of a window, once its last readings are committed and replicated.
Gateway B, same config, empty store, starts, restores the open windows from Redis,
and gets the rest of the readings. Every window, those A emitted and those B
emitted (the one A died in among them), equals the window of an uninterrupted run.

And while Redis is down the gateway runs on (windows delivered, status `down`); once
Redis is back the replica catches up to what the store holds.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.cli.test_cli import cli
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


def test_a_state_reset_while_the_gateway_is_stopped_is_not_undone_by_the_replica(
    tmp_path: Path, mosquitto: Any, redis: Any, gateway_factory: Any
) -> None:
    """`edge-stream state reset` on a stopped gateway empties its store's state; the
    next start must not take that store for an empty one and restore the replica's copy
    of the reset windows, and the replica then holds the reset state too."""
    replica = {"redis": redis.url, "prefix": f"{unique_name()}:{{gateway}}"}
    gw = gateway_factory(config("r", tmp_path, mosquitto.url, replica))
    gw.start()
    publish(mosquitto.port, 50, 0)  # the windows 0-100, one per topic, open

    def copied() -> bool:
        rep = gw.status()["replication"]
        return rep["state"] == "up" and rep["pending"] == 0 and not rep["full_copy_due"]

    wait_for(lambda: gw.status()["gateway"]["ingested"] == 50 and copied(), 30, "replicated")
    assert window_state(gw)["open"] == TOPICS
    assert gw.stop() == 0
    reset = cli("state", "reset", "minute.0", "-c", str(gw.config_path))
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout == "reset the state of minute.0\n"
    key = f"{replica['prefix'].replace('{gateway}', 'plant')}:minute.0"
    # README: a stopped gateway's hash is deleted at its next start, not by the command
    assert redis_client(redis.url).hlen(key) > 0

    gw.start()
    assert window_state(gw)["open"] == 0, "the reset windows came back from the replica"
    assert "restored" not in gw.log_path.read_text()
    wait_for(lambda: copied() and redis_client(redis.url).hlen(key) == 0, 30, "replica reset")
    assert "minute.0" not in cli("state", "list", "-c", str(gw.config_path)).stdout
    assert gw.stop() == 0


def test_a_standby_started_while_redis_is_down_waits_for_the_replica(
    tmp_path: Path, mosquitto: Any, redis_factory: Any, gateway_factory: Any
) -> None:
    """Redis is down as the standby starts: it waits (`restore_wait`), sources not
    started, and restores the windows once Redis answers, rather than starting empty and
    then replacing the replica with its own state."""
    server = redis_factory()
    replica = {"redis": server.url, "timeout": "1s", "restore_wait": "2m"}
    a = gateway_factory(config("a", tmp_path, mosquitto.url, replica))
    a.start()
    publish(mosquitto.port, SWITCH, 0)
    wait_for(
        lambda: (
            a.status()["gateway"]["ingested"] == SWITCH
            and a.status()["replication"]["pending"] == 0
            and not a.status()["replication"]["full_copy_due"]
        ),
        30,
        "A's readings committed and replicated",
    )
    a.kill()
    server.stop()
    b = gateway_factory(config("b", tmp_path, mosquitto.url, replica))
    log = b.folder / "gateway.log"
    starting = threading.Thread(target=b.start, daemon=True)
    starting.start()  # returns once healthy, that is once the engine runs
    wait_for(lambda: log.exists() and "restore_wait" in log.read_text(), 30, "the wait logged")
    assert "waiting up to 2m" in log.read_text()
    assert starting.is_alive(), "B waits for the replica"
    server.start()
    starting.join(60)
    assert not starting.is_alive()
    assert window_state(b)["open"] == TOPICS, "B restored A's open windows once Redis answered"
    assert "restored" in log.read_text() and "starting without" not in log.read_text()
    assert b.stop() == 0


def test_a_stop_while_waiting_for_the_replica_stops_at_once(
    tmp_path: Path, mosquitto: Any, redis_factory: Any, gateway_factory: Any
) -> None:
    server = redis_factory()
    server.stop()
    replica = {"redis": server.url, "timeout": "1s", "restore_wait": "2m"}
    gw = gateway_factory(config("w", tmp_path, mosquitto.url, replica))
    log = gw.folder / "gateway.log"
    starting = threading.Thread(target=_start_quietly, args=(gw,), daemon=True)
    starting.start()
    wait_for(lambda: log.exists() and "restore_wait" in log.read_text(), 30, "the wait logged")
    assert gw.stop() == 0
    text = log.read_text()
    assert "starting without" not in text and "Traceback" not in text


def _start_quietly(gw: GatewayProcess) -> None:
    with contextlib.suppress(AssertionError):  # it stops before it is healthy
        gw.start()


def redis_client(url: str) -> Any:
    return redis.Redis.from_url(url)


def test_the_gateway_runs_on_while_redis_is_down_and_the_replica_catches_up(
    tmp_path: Path, mosquitto: Any, redis_factory: Any, gateway_factory: Any
) -> None:
    server = redis_factory()
    replica = {"redis": server.url, "timeout": "1s"}
    gw = gateway_factory(config("out", tmp_path, mosquitto.url, replica))
    gw.start()
    publish(mosquitto.port, 200, 0)  # windows 0-100 and 100-200 (open)
    wait_for(lambda: gw.status()["replication"]["state"] == "up", 30, "replication up")
    server.stop()
    publish(mosquitto.port, 200, 200)  # closes windows while Redis is down
    wait_for(lambda: gw.status()["replication"]["state"] == "down", 30, "replication down")
    wait_for(lambda: len(outputs(tmp_path / "out")) >= 3 * TOPICS, 30, "windows delivered")
    assert gw.status()["replication"]["last_error"]
    server.start()
    wait_for(
        lambda: (
            gw.status()["replication"]["state"] == "up"
            and gw.status()["replication"]["pending"] == 0
        ),
        60,
        "replication caught up",
    )
    stored = sqlite_state(gw.store_path)
    client = redis_client(server.url)
    copied = {k.decode(): v for k, v in client.hgetall("edge-stream:plant:state:minute.0").items()}
    assert stored and {k: v.split(b":", 1)[1] for k, v in copied.items()} == stored
    assert gw.stop() == 0


def sqlite_state(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, value FROM state_kv WHERE component = 'minute.0'")
        return {k: bytes(v) for k, v in rows}

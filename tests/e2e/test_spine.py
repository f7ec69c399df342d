"""End to end: MQTT in -> routes -> SQLite store -> PostgreSQL, with the real process."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from harness import Publisher, wait_for
from load import Lanes


def spine_config(mosquitto: Any, postgres: Any, table: str, **source: Any) -> dict[str, Any]:
    return {
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {
                "type": "mqtt",
                "topics": [f"{table}/#"],
                "qos": 1,
                "client_id": f"gw-{table}",
                **source,
            },
        },
        "routes": {"readings": {"match": f"{table}/#", "sinks": ["warehouse"]}},
        "sinks": {"warehouse": {"type": "postgres", "dsn": postgres.dsn, "table": table}},
    }


def seq_counts(postgres: Any, table: str) -> tuple[int, int]:
    try:
        rows = postgres.fetch(f"SELECT count(*), count(DISTINCT payload->>'seq') FROM {table}")
    except Exception:  # the table appears with the sink's first connection
        return (0, 0)
    return int(rows[0][0]), int(rows[0][1])


def test_kill_9_three_times_loses_and_duplicates_nothing(
    mosquitto: Any, postgres: Any, gateway_factory: Any
) -> None:
    table = "e2e_kill"
    total = 10_000
    gw = gateway_factory(spine_config(mosquitto, postgres, table))
    gw.start()
    publisher = Publisher(mosquitto.port, total, topics=50, prefix=table, rate=1000)
    publisher.start()
    for at in (2.0, 4.5, 7.0):
        wait_for(lambda at=at: publisher.sent >= at * 1000, 60, f"{at * 1000:.0f} messages sent")
        gw.kill()
        time.sleep(0.3)
        gw.start()
    publisher.join_checked()
    wait_for(lambda: seq_counts(postgres, table)[1] >= total, 120, "every sequence number")
    time.sleep(1.0)  # a duplicate arriving late would show now
    rows, distinct = seq_counts(postgres, table)
    assert (rows, distinct) == (total, total), f"{rows} rows for {distinct} sequence numbers"
    assert gw.stop() == 0


def test_postgres_outage_buffers_then_delivers_once(
    mosquitto: Any, postgres: Any, gateway_factory: Any
) -> None:
    table = "e2e_outage"
    total = 6000
    gw = gateway_factory(spine_config(mosquitto, postgres, table))
    gw.start()
    publisher = Publisher(mosquitto.port, total, topics=10, prefix=table, rate=400)
    publisher.start()
    wait_for(lambda: seq_counts(postgres, table)[1] > 200, 30, "the first rows in Postgres")
    postgres.stop()
    try:
        time.sleep(10)
        depth = gw.status()["sinks"]["warehouse"]["depth"]
        assert depth > 1000, f"the store should hold what Postgres could not take, has {depth}"
        assert gw.status()["sinks"]["warehouse"]["state"] == "retrying"
    finally:
        postgres.start()
    publisher.join_checked()
    wait_for(lambda: seq_counts(postgres, table)[1] >= total, 120, "every sequence number")
    wait_for(lambda: gw.status()["sinks"]["warehouse"]["depth"] == 0, 30, "the store to drain")
    assert seq_counts(postgres, table) == (total, total)
    assert gw.stop() == 0


def test_bad_input_is_dead_lettered_with_reasons(
    mosquitto: Any, postgres: Any, gateway_factory: Any
) -> None:
    table = "e2e_bad"
    config = spine_config(mosquitto, postgres, table, max_payload="1KiB")
    config["routes"]["readings"]["processors"] = [{"type": "json"}]
    config["sinks"]["warehouse"]["columns"] = {
        "payload": "payload",
        "level": {"from": "field.level", "type": "integer"},
    }
    gw = gateway_factory(config)
    gw.start()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="pub-bad")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    messages = [
        json.dumps({"seq": 1}),
        "this is not json",
        json.dumps({"seq": 2, "pad": "x" * 2000}),  # over max_payload
        json.dumps({"seq": 3, "level": "high"}),  # valid JSON the integer column refuses
        json.dumps({"seq": 4}),
    ]
    for m in messages:
        client.publish(f"{table}/line1", m, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    wait_for(lambda: gw.status()["dead_letters"] >= 3, 30, f"three dead letters ({gw.log_path})")
    wait_for(lambda: seq_counts(postgres, table)[1] >= 2, 30, "the good rows")
    assert [r[0] for r in postgres.fetch(f"SELECT payload->>'seq' FROM {table} ORDER BY 1")] == [
        "1",
        "4",
    ]
    dead = gw.get("/api/dead-letters")
    reasons = " | ".join(f"{d['origin']}: {d['reason']}" for d in dead)
    assert len(dead) == 3, reasons
    assert "not valid JSON" in reasons
    assert "max_payload" in reasons
    assert "sink warehouse" in reasons
    assert gw.status()["sources"]["plant"]["state"] == "running"
    assert gw.stop() == 0


def test_reload_applies_a_valid_config_and_refuses_an_invalid_one(
    mosquitto: Any, postgres: Any, gateway_factory: Any
) -> None:
    table = "e2e_reload"
    total = 3000
    config = spine_config(mosquitto, postgres, table)
    gw = gateway_factory(config)
    gw.start()
    assert gw.proc is not None
    publisher = Publisher(mosquitto.port, total, topics=5, prefix=table, rate=500)
    publisher.start()
    wait_for(lambda: publisher.sent >= 1000, 30, "1000 messages sent")
    good = gw.config_path.read_text()
    gw.config_path.write_text(good + "\nbogus_section: {}\n")
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in gw.log(), 10, "the refusal in the log")
    assert "bogus_section: unknown key" in gw.log()
    assert gw.status()["sources"]["plant"]["state"] == "running"
    config["routes"]["archive"] = {"match": f"{table}/#", "sinks": ["archive"]}
    config["sinks"]["archive"] = {"type": "file", "path": "archive.jsonl"}
    gw.config_path.write_text(yaml.safe_dump(config))
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "archive" in gw.status()["sinks"], 30, "the new sink after the reload")
    publisher.join_checked()
    wait_for(lambda: seq_counts(postgres, table)[1] >= total, 60, "every sequence number")
    assert seq_counts(postgres, table) == (total, total)
    archived = gw.folder / "data" / "archive.jsonl"
    wait_for(lambda: archived.exists() and archived.read_text().count("\n") > 0, 30, "archive")
    assert gw.stop() == 0


def test_a_repeated_reading_survives_a_crash_after_packet_ids_came_round(
    mosquitto: Any, postgres: Any, gateway_factory: Any, tmp_path: Path
) -> None:
    """80,000 identical readings, and a kill -9 after the broker's packet ids to the
    gateway have come round (65,535). A message the broker sent again after the crash
    was never stored, yet looks just like the one stored under its packet id a full
    round earlier: it must be stored, not taken for a redelivery."""
    table = "e2e_same"
    total = 80_000
    gw = gateway_factory(spine_config(mosquitto, postgres, table))
    gw.start()
    lanes = Lanes(mosquitto.port, tmp_path)
    lanes.add(f"{table}/dev", "same", ['{"v": 1}'] * total)
    lanes.start()
    wait_for(lambda: gw.status()["gateway"]["ingested"] >= 70_000, 60, "70k ingested")
    gw.kill()  # while the rest is on its way
    lanes.join()
    gw.start()
    count = f"SELECT count(*) FROM {table}"
    try:
        wait_for(lambda: postgres.fetch(count)[0][0] >= total, 60, f"{total} rows")
    except AssertionError:
        pass  # the count below says how many are missing
    time.sleep(1.0)  # a duplicate arriving late would show now
    assert postgres.fetch(count)[0][0] == total
    assert gw.stop() == 0

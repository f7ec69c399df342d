"""End to end: MQTT in -> routes -> SQLite store -> PostgreSQL, with the real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

from tests.e2e.harness import Publisher, free_port, wait_for
from tests.e2e.load import Lanes

pytestmark = pytest.mark.e2e


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
    total = 8000
    gw = gateway_factory(spine_config(mosquitto, postgres, table))
    gw.start()
    publisher = Publisher(mosquitto.port, total, topics=50, prefix=table, rate=1000)
    publisher.start()
    for at in (2.0, 4.0, 6.0):
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
    total = 2800  # 7 s at 400/s: the load goes on through the outage (about 3 s)
    gw = gateway_factory(spine_config(mosquitto, postgres, table))
    gw.start()
    publisher = Publisher(mosquitto.port, total, topics=10, prefix=table, rate=400)
    publisher.start()
    wait_for(lambda: seq_counts(postgres, table)[1] > 200, 30, "the first rows in Postgres")
    postgres.stop()
    try:
        # the store holds what Postgres could not take, and the sink says it retries
        wait_for(
            lambda: (s := gw.sink("warehouse"))["depth"] > 1000 and s["state"] == "retrying",
            30,
            "a backlog of 1,000 in the store while the sink retries",
        )
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
    total = 2000  # 4 s at 500/s: the reloads come a second in, under load
    config = spine_config(mosquitto, postgres, table)
    gw = gateway_factory(config)
    gw.start()
    assert gw.proc is not None
    publisher = Publisher(mosquitto.port, total, topics=5, prefix=table, rate=500)
    publisher.start()
    wait_for(lambda: publisher.sent >= 500, 30, "500 messages sent")
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


def mosquitto_children(pid: int) -> list[int]:
    """The pids of the Mosquitto processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition(") ")
            if name.endswith("(mosquitto") and int(rest.split()[1]) == pid:
                found.append(int(entry.name))
    return found


def listening_inode(pid: int, port: int) -> str:
    """The inode of the socket `pid` listens with on TCP `port` (from /proc)."""
    own = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            own.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.partition(":")[2], 16) == port and inode in own:
            return inode
    raise AssertionError(f"pid {pid} does not listen on {port}")


def healthz_on(connection: socket.socket) -> bytes:
    """GET /healthz on a kept-alive connection; the response head and body."""
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    answer = b""
    while not answer.endswith(b"\r\n\r\nok\n"):
        chunk = connection.recv(4096)
        if not chunk:
            raise AssertionError(f"the connection was closed after {answer!r}")
        answer += chunk
    return answer


def test_a_reload_keeps_the_broker_process_and_the_web_socket(
    postgres: Any, gateway_factory: Any, tmp_path: Path
) -> None:
    """SIGHUP swaps the engine under the running services: the embedded Mosquitto keeps
    its pid, the web server its listening socket and an open keep-alive connection."""
    table = "e2e_services"
    broker_port = free_port()
    config = spine_config(SimpleNamespace(url="embedded"), postgres, table)
    config["mqtt"]["embedded_listen"] = f"127.0.0.1:{broker_port}"
    gw = gateway_factory(config)
    gw.start()
    assert gw.proc is not None
    pid = gw.proc.pid
    wait_for(lambda: len(mosquitto_children(pid)) == 1, 10, "the embedded Mosquitto")
    broker_pid = mosquitto_children(pid)[0]
    web_inode = listening_inode(pid, gw.web_port)
    with socket.create_connection(("127.0.0.1", gw.web_port), timeout=10) as kept:
        assert healthz_on(kept).startswith(b"HTTP/1.1 200")
        config["routes"]["archive"] = {"match": f"{table}/#", "sinks": ["archive"]}
        config["sinks"]["archive"] = {"type": "file", "path": "archive.jsonl"}
        gw.config_path.write_text(yaml.safe_dump(config))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: gw.log().count("gateway: config applied") == 1, 30, "the reload")
        assert "archive" in gw.status()["sinks"]
        assert healthz_on(kept).startswith(b"HTTP/1.1 200"), "the same connection answers"
    assert mosquitto_children(pid) == [broker_pid], "the same Mosquitto process"
    assert listening_inode(pid, gw.web_port) == web_inode, "the same listening socket"
    assert "restarting the web server" not in gw.log()
    # the embedded broker still takes readings for the new engine
    publisher = Publisher(broker_port, 50, topics=1, prefix=table, rate=500)
    publisher.start()
    publisher.join_checked()
    wait_for(lambda: seq_counts(postgres, table)[1] >= 50, 30, "the readings after the reload")
    assert gw.stop() == 0

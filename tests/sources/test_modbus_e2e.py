"""End to end: a PLC (separate process) -> the real `edge-stream` process -> PostgreSQL.

Also a write-back command through the broker, checked where it lands: the next
poll carries the new value into PostgreSQL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

# The end-to-end harness (the real gateway process) lives with the e2e tests.
from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e

PLC = Path(__file__).resolve().parent / "modbus_plc.py"


@pytest.fixture
def plc_port() -> Iterator[int]:
    """One simulated device (unit 1) whose holding register a holds 1000 + a."""
    proc = subprocess.Popen(
        [sys.executable, str(PLC), "tcp", "--devices", "1", "--registers", "50"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    assert line, "the PLC process did not start"
    yield int(json.loads(line)["ports"][0])
    proc.stdin.close()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def rows(postgres: Any, table: str) -> dict[str, list[Any]]:
    try:
        found = postgres.fetch(f"SELECT topic, payload->'value' FROM {table} ORDER BY ts")
    except Exception:  # the table appears with the sink's first connection
        return {}
    out: dict[str, list[Any]] = {}
    for topic, value in found:
        out.setdefault(topic, []).append(json.loads(value) if isinstance(value, str) else value)
    return out


def test_modbus_values_reach_postgres_and_write_back_lands(
    tmp_path: Path, mosquitto: Any, postgres: Any, plc_port: int
) -> None:
    table = "e2e_modbus"
    config = {
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {
                "type": "modbus",
                "interval": "200ms",
                "devices": {
                    "plc1": {
                        "url": f"tcp://127.0.0.1:{plc_port}",
                        "registers": {
                            "level": {"address": 3, "scale": 0.1},  # 1003 -> 100.3
                            "setpoint": {"address": 10, "on_change": True, "writable": True},
                        },
                    }
                },
                "writeback": {"enabled": True, "client_id": "e2e-modbus-wb"},
            }
        },
        "routes": {"readings": {"match": "modbus/+/+", "sinks": ["warehouse"]}},
        "sinks": {"warehouse": {"type": "postgres", "dsn": postgres.dsn, "table": table}},
    }
    gw = GatewayProcess(tmp_path, config)
    results: list[dict[str, Any]] = []
    got_result = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="e2e-modbus-probe")
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        results.append(json.loads(msg.payload))
        got_result.set()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    try:
        gw.start()
        wait_for(lambda: len(rows(postgres, table).get("modbus/plc1/level", [])) >= 3, 60,
                 f"three polls of level in PostgreSQL (log: {gw.log_path})")  # fmt: skip
        found = rows(postgres, table)
        assert set(found["modbus/plc1/level"]) == {100.3}
        assert found["modbus/plc1/setpoint"] == [1010]  # on_change: sent once
        device = gw.status()["sources"]["plant"]["devices"]["plc1"]
        assert device["state"] == "online" and device["errors"] == 0

        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        client.subscribe("modbus/plc1/setpoint/set/result", qos=1)
        assert subscribed.wait(30)
        client.publish("modbus/plc1/setpoint/set", "4242", qos=1).wait_for_publish(30)
        assert got_result.wait(30), f"no write-back result (log: {gw.log_path})"
        assert results[0]["ok"] is True and results[0]["value"] == 4242
        wait_for(lambda: 4242 in rows(postgres, table).get("modbus/plc1/setpoint", []), 30,
                 "the written value, polled back, in PostgreSQL")  # fmt: skip
        assert gw.stop() == 0
    finally:
        client.loop_stop()
        client.disconnect()
        gw.close()


def test_the_device_status_says_offline_after_a_stop_and_after_a_kill(
    tmp_path: Path, mosquitto: Any, plc_port: int
) -> None:
    # The retained modbus/<device>/status kept saying "online" once the gateway was gone.
    config = {
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {
                "type": "modbus",
                "interval": "200ms",
                "devices": {
                    "plc1": {
                        "url": f"tcp://127.0.0.1:{plc_port}",
                        "registers": {"v": {"address": 3}},
                    }
                },
                "writeback": {"enabled": True, "client_id": "e2e-modbus-will"},
            }
        },
        "routes": {"readings": {"match": "modbus/+/+", "sinks": ["out"]}},
        "sinks": {"out": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
    }
    gw = GatewayProcess(tmp_path, config)
    states: list[dict[str, Any]] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="e2e-modbus-status")
    subscribed = threading.Event()
    client.on_message = lambda _c, _u, msg: states.append(json.loads(msg.payload))
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.subscribe("modbus/plc1/status", qos=1)
        assert subscribed.wait(30)
        for end in (gw.kill, gw.stop):
            gw.start()
            wait_for(lambda: states and states[-1]["state"] == "online", 30,
                     f"plc1 online on its status topic (log: {gw.log_path})")  # fmt: skip
            end()
            wait_for(lambda: states[-1]["state"] == "offline", 30,
                     f"plc1 offline after {end.__name__} (log: {gw.log_path})")  # fmt: skip
            assert "not polled" in states[-1]["last_error"]
    finally:
        client.loop_stop()
        client.disconnect()
        gw.close()


def test_a_reload_to_a_missing_serial_port_is_applied_the_device_offline(
    tmp_path: Path, plc_port: int
) -> None:
    # As the README says: unlike other components, a Modbus device on a serial port
    # that does not exist does not roll the reload back; it is offline, retried with
    # backoff, and the source's other devices are polled meanwhile.
    plc1 = {"url": f"tcp://127.0.0.1:{plc_port}", "registers": {"v": {"address": 3}}}
    config: dict[str, Any] = {
        "sources": {"plant": {"type": "modbus", "interval": "200ms", "devices": {"plc1": plc1}}},
        "routes": {"readings": {"match": "modbus/+/+", "sinks": ["out"]}},
        "sinks": {"out": {"type": "file", "path": "out.jsonl"}},
    }
    gw = GatewayProcess(tmp_path, config)
    out = gw.data_dir / "out.jsonl"

    def polls() -> int:
        return out.read_text().count('"modbus/plc1/v"') if out.exists() else 0

    try:
        gw.start()
        before = gw.status()["config"]["last_reload"]
        ghost = {"url": f"rtu://{tmp_path / 'no-such-tty'}", "registers": {"v": {"address": 0}}}
        config["sources"]["plant"]["devices"]["ghost"] = ghost
        gw.config_path.write_text(yaml.safe_dump(config))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        last = wait_for(
            lambda: (
                (r := gw.status()["config"]["last_reload"]) != before
                and r["outcome"] != "applying"
                and r
            ),
            30,
            "the reload's outcome",
        )
        assert last["outcome"] == "applied", last
        devices = gw.status()["sources"]["plant"]["devices"]
        assert devices["ghost"]["state"] == "offline"
        assert "no-such-tty" in devices["ghost"]["last_error"]
        seen = polls()
        wait_for(lambda: polls() >= seen + 3, 30, f"plc1 polled on (log: {gw.log_path})")
        assert gw.status()["sources"]["plant"]["devices"]["plc1"]["state"] == "online"
        assert gw.stop() == 0
    finally:
        gw.close()

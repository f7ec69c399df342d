"""The shipped config/gateway.yaml, run as `make run` runs it: MQTT to a file, with the
gateway's own broker or with a Mosquitto that already runs there; and the one-line errors
for an address another program holds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

from tests.e2e.harness import GatewayProcess, free_port, wait_for
from tests.sources.socat_pair import SocatPair

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_takes_mqtt_to_the_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    port = free_port()
    config["gateway"]["data_dir"] = str(tmp_path / "data")
    config["mqtt"]["embedded_listen"] = f"127.0.0.1:{port}"
    out = tmp_path / "data" / "readings.jsonl"
    config["sinks"]["local_file"]["path"] = str(out)
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    try:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="new-user")
        client.connect("127.0.0.1", port)
        client.loop_start()
        sent = time.monotonic()
        client.publish("sensors/boiler/telemetry", json.dumps({"temp": 71.5}), qos=1)
        client.publish("sensors/boiler/raw", b"\x00\x01 not json", qos=1).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()

        def lines() -> list[dict]:
            if not out.exists():
                return []
            return [json.loads(line) for line in out.read_text().splitlines()]

        wait_for(
            lambda: len([x for x in lines() if x["topic"].startswith("sensors/")]) >= 2,
            10,
            "both messages in the file",
        )
        assert time.monotonic() - sent < 5
        got = {x["topic"]: x for x in lines()}
        assert got["sensors/boiler/telemetry"]["payload"] == {"temp": 71.5}
        assert got["sensors/boiler/telemetry"]["attributes"]["mqtt.qos"] == "1"
        assert "sensors/boiler/raw" in got
        status = gw.status()
        assert status["sources"]["local"]["state"] == "running"
        assert status["sinks"]["local_file"]["state"] == "running"
        wait_for(
            lambda: any(x["topic"] == "system/edge-dev" for x in lines()),
            15,
            "the system source's first reading",
        )
    finally:
        started = time.monotonic()
        assert gw.stop() == 0
        assert time.monotonic() - started < 10


def children(pid: int) -> list[str]:
    """The command names of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition(") ")
            if int(rest.split()[1]) == pid:
                found.append(name.partition(" (")[2])
    return found


def listening_ports(pid: int) -> set[int]:
    """The TCP ports `pid` listens on (its own sockets, from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def shipped_config(tmp_path: Path) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    config["gateway"]["data_dir"] = str(tmp_path / "data")
    config["sinks"]["local_file"]["path"] = str(tmp_path / "data" / "readings.jsonl")
    return config


def test_with_a_mosquitto_already_on_the_port_the_shipped_config_uses_it(
    tmp_path: Path, mosquitto: Any
) -> None:
    """As on Debian with systemd: installing `mosquitto` started its service on 1883."""
    config = shipped_config(tmp_path)
    assert config["mqtt"]["url"] == "auto"
    config["mqtt"]["embedded_listen"] = f"{mosquitto.host}:{mosquitto.port}"
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    try:
        assert gw.proc is not None and "mosquitto" not in children(gw.proc.pid)
        broker = gw.status()["broker"]
        assert broker["url"] == f"mqtt://{mosquitto.host}:{mosquitto.port}"
        assert broker["embedded"] is False
        mark = uuid.uuid4().hex
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"new-user-{mark}")
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        client.publish("sensors/try/telemetry", json.dumps({"mark": mark}), qos=1).wait_for_publish(
            10
        )
        client.disconnect()
        client.loop_stop()
        out = tmp_path / "data" / "readings.jsonl"
        wait_for(lambda: out.exists() and mark in out.read_text(), 15, "the message in the file")
        assert "uses it instead of starting its own" in gw.log()
        assert f"MQTT broker mqtt://{mosquitto.host}:{mosquitto.port}" in gw.log()
    finally:
        assert gw.stop() == 0


def test_a_serial_only_config_starts_no_broker(tmp_path: Path) -> None:
    pair = SocatPair(tmp_path, "ttyGW", "ttyDEV").start()
    try:
        config = {  # no mqtt: section at all
            "sources": {"gps": {"type": "serial", "port": pair.a, "framing": "line"}},
            "routes": {"all": {"match": "#", "sinks": ["out"]}},
            "sinks": {"out": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
        }
        gw = GatewayProcess(tmp_path, config)
        gw.start()
        try:
            with open(pair.b, "wb", buffering=0) as device:
                device.write(b"21.5\n")
            out = tmp_path / "out.jsonl"
            wait_for(lambda: out.exists() and "serial/gps" in out.read_text(), 15, "the reading")
            assert gw.proc is not None
            assert children(gw.proc.pid) == []
            assert listening_ports(gw.proc.pid) == {gw.web_port}
            assert gw.status()["broker"] is None
        finally:
            assert gw.stop() == 0
    finally:
        pair.stop()


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another program listens on (accepts connections, never answers)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(16)
        yield holder.getsockname()[1]


def run_expecting_exit(tmp_path: Path, config: dict[str, Any]) -> tuple[int, str]:
    config.setdefault("gateway", {"data_dir": str(tmp_path / "data")})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr


def test_a_web_address_in_use_is_one_line_and_exit_1(tmp_path: Path, held_port: int) -> None:
    config = {
        "sources": {"host": {"type": "system", "interval": "10s"}},
        "web": {"listen": f"127.0.0.1:{held_port}"},
    }
    code, err = run_expecting_exit(tmp_path, config)
    assert code == 1, err
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    assert (
        f"web.listen 127.0.0.1:{held_port} is in use by another program;"
        " set web.listen to a free address"
    ) in err.splitlines()[-1]


@pytest.mark.parametrize("url", ["embedded", "auto"])
def test_a_broker_address_held_by_another_program_is_one_line_and_exit_1(
    tmp_path: Path, held_port: int, url: str
) -> None:
    config = {
        "mqtt": {"url": url, "embedded_listen": f"127.0.0.1:{held_port}"},
        "sources": {"local": {"type": "mqtt", "topics": ["#"]}},
        "web": {"listen": f"127.0.0.1:{free_port()}"},
    }
    code, err = run_expecting_exit(tmp_path, config)
    assert code == 1, err
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    assert (
        f"mqtt.embedded_listen 127.0.0.1:{held_port} is in use by another program;"
        " set mqtt.embedded_listen to a free address"
    ) in err.splitlines()[-1]


def test_embedded_on_a_port_where_a_broker_runs_says_so(tmp_path: Path, mosquitto: Any) -> None:
    config = {
        "mqtt": {"url": "embedded", "embedded_listen": f"{mosquitto.host}:{mosquitto.port}"},
        "web": {"listen": f"127.0.0.1:{free_port()}"},
    }
    code, err = run_expecting_exit(tmp_path, config)
    assert code == 1, err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert "is in use by an MQTT broker" in last and "mqtt.url: auto" in last, last

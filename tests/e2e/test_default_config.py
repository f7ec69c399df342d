"""The shipped config/gateway.yaml, run as `make run` runs it: embedded broker to a file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as paho
import yaml
from harness import GatewayProcess, free_port, wait_for

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

"""`edge-stream state list|show|reset` against a running gateway's window state."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.cli.test_cli import cli
from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e


def test_state_list_show_and_reset_through_the_running_gateway(
    tmp_path: Path, mosquitto: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    gw = gateway_factory(
        {
            "mqtt": {"url": mosquitto.url},
            "sources": {"in": {"type": "mqtt", "topics": ["st/#"], "qos": 1, "client_id": "gw-st"}},
            "routes": {
                "hourly": {
                    "match": "st/#",
                    "processors": [
                        {
                            "type": "window",
                            "size": "1h",
                            "group_by": "topic",
                            "aggregates": {"v": ["avg"]},
                        }
                    ],
                    "sinks": ["files"],
                }
            },
            "sinks": {"files": {"type": "file", "path": str(tmp_path / "out" / "o.jsonl")}},
        }
    )
    gw.start()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="st-pub")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    for device in ("a", "b"):
        client.publish(f"st/{device}", json.dumps({"v": 1}), qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    config = str(gw.config_path)

    def listed() -> str:
        return cli("state", "list", "-c", config).stdout

    # two open windows and the window's bookkeeping (~meta: its config's fingerprint)
    wait_for(lambda: "hourly.0" in listed() and " 3 keys" in listed(), 20, "two open windows")
    shown = cli("state", "show", "hourly.0", "-c", config)
    assert shown.returncode == 0 and "|st/a" in shown.stdout and "|st/b" in shown.stdout
    reset = cli("state", "reset", "hourly.0", "-c", config)
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout == "asked the running gateway to reset the state of hourly.0\n"
    wait_for(lambda: "hourly.0" not in listed(), 20, "the gateway to forget the windows")
    unknown = cli("state", "reset", "nope.0", "-c", config)
    assert unknown.returncode == 1
    assert unknown.stderr == "edge-stream: no state for 'nope.0' (there is for: none)\n"
    assert gw.stop() == 0

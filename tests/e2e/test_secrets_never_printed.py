"""A password in a DSN is never printed: grep every output of a real gateway for it.

A PostgreSQL sink logs in with a wrong password (the server really checks it: a
role-specific scram-sha-256 line in pg_hba.conf). The plaintext must be in no line of
check-config (ok or refusing), no log line of `edge-stream run` (its errors, a refused
reload), and no byte of the web page, /api/status or /metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PLAIN = "S3cretPlain"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_STREAM")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def gw_role(postgres: Any) -> Iterator[str]:
    """A role that must give its password over TCP; the fixture trusts every other user."""
    role = f"gw_{uuid.uuid4().hex[:10]}"
    hba = postgres.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{original}")
    postgres.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'the-right-one'; SELECT pg_reload_conf()")
    try:
        yield role
    finally:
        hba.write_text(original)
        postgres.execute("SELECT pg_reload_conf()")


def raw(gw: GatewayProcess, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.web_port}{path}", timeout=5) as response:
        return str(response.read().decode())


def test_a_wrong_dsn_password_appears_in_no_output(
    mosquitto: Any,
    postgres: Any,
    gw_role: str,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
) -> None:
    dsn = f"postgresql://{gw_role}:{PLAIN}@127.0.0.1:{postgres.port}/x"
    config: dict[str, Any] = {
        "mqtt": {"url": mosquitto.url},
        "sources": {"plant": {"type": "mqtt", "topics": ["nopw/#"], "client_id": "gw-nopw"}},
        "routes": {"all": {"match": "nopw/#", "sinks": ["warehouse"]}},
        "sinks": {
            "warehouse": {
                "type": "postgres",
                "dsn": dsn,
                "table": "readings",
                "retry": {"initial": "200ms", "max": "1s"},
            }
        },
    }
    gw = gateway_factory(config)
    outputs: list[str] = []

    checked = cli("check-config", "-c", str(gw.config_path))
    assert checked.returncode == 0, checked.stderr
    outputs += [checked.stdout, checked.stderr]
    # A config refused for another key of the same sink, and for the DSN itself.
    for key, value in (("table", "read-ings"), ("dsn", dsn.replace(str(postgres.port), "99999"))):
        bad = json.loads(json.dumps(config))
        bad["sinks"]["warehouse"][key] = value
        path = gw.folder / f"bad-{key}.yaml"
        path.write_text(yaml.safe_dump(bad))
        refused = cli("check-config", "-c", str(path))
        assert refused.returncode == 1 and "sinks.warehouse" in refused.stderr
        outputs += [refused.stdout, refused.stderr]

    gw.start()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    client.publish("nopw/a", json.dumps({"seq": 1}), qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    sink = wait_for(
        lambda: (s := gw.sink("warehouse"))["last_error"] and s, 30, "the login to be refused"
    )
    assert "password authentication failed" in sink["last_error"], sink
    outputs += [raw(gw, p) for p in ("/", "/api/status", "/metrics", "/api/dead-letters")]

    # A reload refused for another key of that sink: its problem lines are logged.
    config["sinks"]["warehouse"]["table"] = "read-ings"
    gw.config_path.write_text(yaml.safe_dump(config))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in gw.log_path.read_text(), 30, "the reload refused")
    outputs.append(raw(gw, "/api/status"))
    assert gw.stop() == 0
    log = gw.log_path.read_text()
    assert "password authentication failed" in log  # the error was logged...
    outputs.append(log)
    leaked = [line for text in outputs for line in text.splitlines() if PLAIN in line]
    assert leaked == []  # ...and never with the password

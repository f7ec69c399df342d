"""Hostile and mistaken config files: one clear line each, and a running gateway undisturbed.

check-config gets alias bombs, deep nesting, files that are not UTF-8, ENC(...) look-alikes
and impossible DSNs: each must be refused quickly with exactly one line naming the file
(and the line and key where there is one), never a traceback. A running gateway sent
SIGHUP with an alias bomb or a damaged secret in its file keeps answering /healthz,
logs "reload refused" and keeps its running config; a good file after that still reloads.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import secrets
from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """Nine lines of YAML whose aliases stand for width**levels (10**9) values."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


GOOD = "gateway: {id: pi-01, data_dir: ./data}\nsinks:\n  archive: {type: file}\n"

HOSTILE: dict[str, tuple[bytes, str]] = {
    # name: (file content, what the one line must end with)
    "alias_bomb": (
        (GOOD + alias_bomb()).encode(),
        ":8: too many aliases: they repeat more than 100000 values (limit 100000);"
        " write the values out or use fewer aliases",
    ),
    "deep_nesting": (
        b"gateway: " + b"[" * 3000 + b"]" * 3000 + b"\n",
        ":1: nested more than 64 levels deep (limit 64)",
    ),
    "not_utf8": (
        GOOD.replace("pi-01", "K\xfchlraum").encode("latin-1"),
        ":1: the config is not UTF-8 text: byte 0xfc at column 16; save the file as UTF-8",
    ),
    "empty": (
        b"# nothing yet\n",
        ":1: the config file is empty: it needs at least sources, routes and sinks"
        " (config/gateway.yaml is an example to start from)",
    ),
    "enc_abc": (
        (GOOD + "mqtt: {url: 'mqtt://b:1883', username: u, password: ENC(abc)}\n").encode(),
        ":4: mqtt.password: ENC(...) is cut short or damaged: it is not complete base64",
    ),
    "enc_empty": (
        (GOOD + "mqtt: {url: 'mqtt://b:1883', username: u, password: ENC()}\n").encode(),
        ":4: mqtt.password: ENC() is empty: paste the whole value that"
        " 'edge-stream secret encrypt' printed",
    ),
    "dsn_port": (
        (GOOD + "  pg: {type: postgres, dsn: 'postgresql://gw:pw@db:notaport/t'}\n").encode(),
        ":4: sinks.pg.dsn: the port is not a number from 1 to 65535",
    ),
    "dsn_password": (
        (GOOD + "  pg: {type: postgres, dsn: 'postgresql://gw:hunter2#x@db/t'}\n").encode(),
        ":4: sinks.pg.dsn: the port is not a number from 1 to 65535; a password holding"
        " #, /, ? or @ must be percent-encoded (%23, %2F, %3F, %40)",
    ),
    "dsn_ipv6": (
        (GOOD + "  my: {type: mysql, dsn: 'mysql://gw:pw@[fe80::zz]:3306/t'}\n").encode(),
        ":4: sinks.my.dsn: the host in brackets is not an IPv6 address",
    ),
    "mapping_as_key": (
        (GOOD + "{a: 1}: 2\n").encode(),
        ":4: a key must be a name, not a mapping (is a ':' or '?' out of place?)",
    ),
    "impossible_date": (
        (GOOD + "x: 2024-02-30\n").encode(),
        ":4: this value is not a valid date or time (day is out of range for month);"
        " to keep it as text, write it in quotes",
    ),
    "too_many_values": (
        (GOOD + "x: [" + ",".join(["1"] * 60_000) + "]\n").encode(),
        ":4: more than 50000 keys and values (limit 50000): is this the right file?",
    ),
}


def check_config(path: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", "-c", str(path)],
        cwd=ROOT,
        env={"EDGE_STREAM_SECRET_KEY": "22" * 32, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_check_config_refuses_a_hostile_file_with_one_line(tmp_path: Path, name: str) -> None:
    content, ending = HOSTILE[name]
    path = tmp_path / "gateway.yaml"
    path.write_bytes(content)
    result = check_config(path, timeout=30)  # the bomb alone used to take minutes
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert result.stderr == f"edge-stream: {path}{ending}\n"


def healthy(gw: GatewayProcess) -> bool:
    url = f"http://127.0.0.1:{gw.web_port}/healthz"
    with urllib.request.urlopen(url, timeout=1) as response:
        return bool(response.status == 200)


def archived(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sighup_with_an_alias_bomb_or_a_damaged_secret_is_refused_while_the_gateway_runs(
    tmp_path: Path,
    mosquitto: Any,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
) -> None:
    archive = tmp_path / "archive.jsonl"
    key = tmp_path / "secret.key"
    secrets.generate_key_file(key)
    config: dict[str, Any] = {
        "gateway": {"secret_key_file": str(key)},
        "mqtt": {"url": mosquitto.url},
        "sources": {"host": {"type": "system", "interval": "200ms"}},
        "routes": {"all": {"match": "#", "sinks": ["archive"]}},
        "sinks": {"archive": {"type": "file", "path": str(archive), "fsync": False}},
    }
    gw = gateway_factory(config)
    gw.start()
    assert gw.proc is not None
    wait_for(lambda: archived(archive) > 0, 30, "readings in the archive")
    good = gw.config_path.read_text()

    hostile = {
        "too many aliases: they repeat more than 100000 values": good + alias_bomb(),
        "mqtt.password: ENC(...) is cut short or damaged": good.replace(
            "mqtt:\n", "mqtt:\n  username: gw\n  password: ENC(abc)\n"
        ),
        "a key must be a name, not a mapping": good + "{a: 1}: 2\n",
        "this value is not a valid date or time": good + "x: 2024-02-30\n",
    }
    for n, (refusal, text) in enumerate(hostile.items(), start=1):
        gw.config_path.write_text(text)
        gw.proc.send_signal(signal.SIGHUP)
        # /healthz answers all along (it used to stop), until the refusal and a while after
        deadline = time.monotonic() + 10
        after: float | None = None
        while after is None or time.monotonic() < after:
            assert healthy(gw), "the gateway stopped answering /healthz"
            if after is None and gw.log_path.read_text().count("reload refused") == n:
                after = time.monotonic() + 0.5
            assert time.monotonic() < deadline, f"no refusal {n} within 10 s:\n{gw.log()}"
            time.sleep(0.05)
        log = gw.log_path.read_text()
        assert log.count("reload refused, the running config stays") == n, log[-3000:]
        assert refusal in log, log[-3000:]
        assert "Traceback" not in log and "Exception in callback" not in log, log[-3000:]
        assert gw.rss_mb() < 200
    # The running config stayed: one start, the same sink, still delivering.
    assert gw.log().count(" is up; status page") == 1
    assert set(gw.status()["sinks"]) == {"archive"}
    before = archived(archive)
    wait_for(lambda: archived(archive) > before, 15, "more readings after the refusals")

    # A good file still reloads.
    changed = yaml.safe_load(good)
    changed["sinks"]["second"] = {"type": "file", "path": str(tmp_path / "second.jsonl")}
    changed["routes"]["all"]["sinks"].append("second")
    gw.config_path.write_text(json.dumps(changed))  # JSON is YAML too
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.log().count("gateway: config applied") == 1, 30, "the good reload")
    wait_for(lambda: archived(tmp_path / "second.jsonl") > 0, 30, "readings in the new sink")
    assert gw.stop() == 0

"""Reload by diff with the real process: only what changed is stopped and started, the
MQTT source keeps its connection, a component that fails outright rolls the reload back,
a removed sink keeps its backlog until `store drop-sink`, every reload is recorded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e


def publish(port: int, topic: str, count: int, start: int = 0) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for i in range(start, start + count):
            client.publish(topic, json.dumps({"n": i}), qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def numbers(path: Path) -> list[int]:
    payloads = [line["payload"] for line in lines(path)]
    return sorted((json.loads(p) if isinstance(p, str) else p)["n"] for p in payloads)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def reload(gw: GatewayProcess, config: dict[str, Any]) -> dict[str, Any]:
    """Write `config`, SIGHUP, and return the reload's outcome from /api/status."""
    before = gw.status()["config"]["last_reload"]
    gw.config_path.write_text(yaml.safe_dump(config))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    return wait_for(  # type: ignore[no-any-return]
        lambda: (
            (last := gw.status()["config"]["last_reload"]) != before
            and last["outcome"] != "applying"
            and last
        ),
        30,
        "the reload's outcome",
    )


def connects(gw: GatewayProcess, name: str) -> int:
    """How often the component named `name` logged that it connected."""
    return gw.log_path.read_text().count(f"{name}: connected")


def base(mosquitto: Any, name: str) -> dict[str, Any]:
    return {
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1, "client_id": f"gw-{name}"}
        },
        "routes": {"first": {"match": f"{name}/a", "sinks": ["one"]}},
        "sinks": {"one": {"type": "file", "path": "one.jsonl"}},
    }


def test_a_route_or_sink_change_keeps_the_mqtt_connection(
    mosquitto: Any, gateway_factory: Any
) -> None:
    name = f"diff{uuid.uuid4().hex[:8]}"
    config = base(mosquitto, name)
    gw = gateway_factory(config)
    gw.start()
    data = gw.data_dir
    publish(mosquitto.port, f"{name}/a", 10)
    wait_for(lambda: len(lines(data / "one.jsonl")) == 10, 20, "10 lines in one")
    assert connects(gw, "source plant") == 1
    store_inode = gw.store_path.stat().st_ino

    # a new route to a new sink
    config["sinks"]["two"] = {"type": "file", "path": "two.jsonl"}
    config["routes"]["second"] = {"match": f"{name}/b", "sinks": ["two"]}
    last = reload(gw, config)
    assert last["outcome"] == "applied", last
    assert last["changes"] == ["sink two added", "route second added"]
    publish(mosquitto.port, f"{name}/b", 5)
    wait_for(lambda: len(lines(data / "two.jsonl")) == 5, 20, "5 lines in two")

    # a sink's delivery settings: taken in place, the sink is not started again
    config["sinks"]["one"]["batch"] = {"max_rows": 7}
    config["gateway"] = {**config.get("gateway", {}), "log_level": "debug"}
    last = reload(gw, config)
    assert last["outcome"] == "applied", last
    assert last["changes"] == ["sink one changed", "gateway.log_level info -> debug"]
    publish(mosquitto.port, f"{name}/a", 10, start=10)
    wait_for(lambda: numbers(data / "one.jsonl") == list(range(20)), 20, "20 readings in one")

    # the route changes its filter: readings of b now also go to one
    config["routes"]["first"]["match"] = f"{name}/+"
    last = reload(gw, config)
    assert last["changes"] == ["route first changed"]
    publish(mosquitto.port, f"{name}/b", 3, start=100)
    wait_for(lambda: len(lines(data / "one.jsonl")) == 23, 20, "b's readings in one too")

    # one connection to the broker throughout; sinks one and two each connected once
    assert connects(gw, "source plant") == 1, gw.log()
    assert connects(gw, "sink one") == 1 and connects(gw, "sink two") == 1, gw.log()
    assert gw.store_path.stat().st_ino == store_inode
    assert numbers(data / "two.jsonl") == [0, 1, 2, 3, 4, 100, 101, 102]

    history = cli("config", "history", "-c", str(gw.config_path))
    assert history.returncode == 0, history.stderr
    rows = history.stdout.splitlines()
    assert [r.split()[1:3] for r in rows] == [["start", "applied"]] + [["sighup", "applied"]] * 3
    assert "sink two added; route second added" in rows[1]
    assert gw.stop() == 0


def test_a_component_that_cannot_start_rolls_the_reload_back(
    mosquitto: Any, gateway_factory: Any, tmp_path: Path
) -> None:
    name = f"back{uuid.uuid4().hex[:8]}"
    config = base(mosquitto, name)
    gw = gateway_factory(config)
    gw.start()
    hash_before = gw.status()["config"]["hash"]
    good = yaml.safe_dump(config)

    bad = json.loads(json.dumps(config))
    bad["sources"]["meter"] = {
        "type": "serial",
        "port": str(tmp_path / "no-such-tty"),
        "topic": f"{name}/meter",
    }
    bad["sinks"]["one"]["batch"] = {"max_rows": 3}
    bad["sinks"]["hook"] = {"type": "http", "url": "http://gw-hook.invalid/in"}
    bad["routes"]["first"]["sinks"].append("hook")
    last = reload(gw, bad)
    assert last["outcome"] == "rolled_back", last
    assert any("source meter" in e and "no such device" in e for e in last["errors"]), last
    assert any("sink hook" in e and "does not resolve" in e for e in last["errors"]), last
    status = gw.status()
    assert set(status["sources"]) == {"plant"}, "the new source was stopped again"
    assert status["config"]["hash"] == hash_before, "the running config is the old one"
    # the old config runs on: readings flow, on the same connection
    publish(mosquitto.port, f"{name}/a", 5)
    wait_for(lambda: len(lines(gw.data_dir / "one.jsonl")) == 5, 20, "readings after rollback")
    assert connects(gw, "source plant") == 1

    history = cli("config", "history", "-c", str(gw.config_path)).stdout.splitlines()
    assert history[-1].split()[1:3] == ["sighup", "rolled_back"], history
    assert "source meter" in history[-1] and "no such device" in history[-1]

    # the file fixed: the same reload path applies it
    gw.config_path.write_text(good)
    assert gw.stop() == 0


def test_a_removed_sink_keeps_its_backlog_until_dropped(
    mosquitto: Any, gateway_factory: Any
) -> None:
    name = f"gone{uuid.uuid4().hex[:8]}"
    config = base(mosquitto, name)
    config["routes"]["first"]["sinks"] = ["one", "slow"]
    slow = {"type": "file", "path": "slow.jsonl", "rate_limit": 2, "batch": {"max_rows": 1}}
    config["sinks"]["slow"] = slow
    gw = gateway_factory(config)
    gw.start()
    data = gw.data_dir
    publish(mosquitto.port, f"{name}/a", 40)
    wait_for(lambda: len(lines(data / "one.jsonl")) == 40, 20, "40 lines in one")

    removed = json.loads(json.dumps(config))
    removed["routes"]["first"]["sinks"] = ["one"]
    del removed["sinks"]["slow"]
    assert reload(gw, removed)["outcome"] == "applied"
    backlog = gw.status()["store"]["removed_sinks"]["slow"]["depth"]
    assert backlog > 0
    delivered = len(lines(data / "slow.jsonl"))
    assert delivered + backlog == 40
    stored = gw.status()["store"]["bytes"]
    publish(mosquitto.port, f"{name}/a", 10, start=40)  # not for slow: it is not configured
    wait_for(lambda: len(lines(data / "one.jsonl")) == 50, 20, "50 lines in one")
    # maintenance purges every second: what one has delivered goes (only a purge since the
    # reload brings the bytes back down past the ten added), slow's backlog must stay
    wait_for(lambda: gw.status()["store"]["bytes"] <= stored, 20, "a purge of one's ten")
    assert gw.status()["store"]["removed_sinks"]["slow"]["depth"] == backlog

    # added back under the same name: it resumes from its cursor, each reading once
    config["sinks"]["slow"] = {"type": "file", "path": "slow.jsonl"}
    assert reload(gw, config)["outcome"] == "applied"
    wait_for(lambda: numbers(data / "slow.jsonl") == list(range(40)), 30, "slow's 40 readings")
    assert gw.status()["store"]["removed_sinks"] == {}

    # removed again with a backlog, then dropped
    config["sinks"]["slow"] = slow  # one reading at a time, two a second
    assert reload(gw, config)["outcome"] == "applied"
    publish(mosquitto.port, f"{name}/a", 20, start=50)
    wait_for(lambda: len(lines(data / "one.jsonl")) == 70, 20, "70 lines in one")
    assert reload(gw, removed)["outcome"] == "applied"
    waiting = gw.status()["store"]["removed_sinks"]["slow"]["depth"]
    assert waiting > 0
    refused = cli("store", "drop-sink", "one", "-c", str(gw.config_path))
    assert refused.returncode == 1 and "remove it from the config" in refused.stderr
    dropped = cli("store", "drop-sink", "slow", "-c", str(gw.config_path))
    assert dropped.returncode == 0, dropped.stderr
    assert f"the {waiting} FlowFile(s)" in dropped.stdout
    wait_for(lambda: gw.status()["store"]["removed_sinks"] == {}, 15, "the gateway to forget slow")
    wait_for(lambda: gw.status()["store"]["bytes"] == 0, 15, "the store to purge slow's backlog")
    unknown = cli("store", "drop-sink", "slow", "-c", str(gw.config_path))
    assert unknown.returncode == 1 and "knows no sink 'slow'" in unknown.stderr
    assert gw.stop() == 0


def test_a_reload_of_the_process_sections_says_what_changed_and_takes_effect(
    mosquitto: Any, gateway_factory: Any
) -> None:
    # A reload that changed only `status`, `remote_config` or `alerts` said no change.
    name = f"proc{uuid.uuid4().hex[:8]}"
    config = base(mosquitto, name)
    config["gateway"] = {"id": name}
    gw = gateway_factory(config)
    gw.start()
    said: list[bytes] = []  # the gateway's retained status topic, as it changes
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"w-{uuid.uuid4().hex}")
    watcher.on_message = lambda _c, _u, message: said.append(message.payload)
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe(f"edge-stream/{name}/status", qos=1)
    watcher.loop_start()
    try:
        wait_for(lambda: said[-1:] == [b"online"], 20, "the status topic says online")
        config["status"] = {"enabled": False}
        config["remote_config"] = {"broker": "mqtt://127.0.0.1:1"}
        config["alerts"] = {"enabled": False}
        config["gateway"]["watch_config"] = False
        last = reload(gw, config)
        assert last["outcome"] == "applied", last
        assert last["changes"] == [
            "gateway.watch_config true -> false",
            "remote_config changed (broker)",
            "status changed (enabled)",
            "alerts changed (enabled)",
        ]
        # and it took effect: the status channel said offline and let its connection go
        wait_for(lambda: said[-1:] == [b"offline"], 20, "the status topic says offline")
        assert "remote_config changed (broker); status changed (enabled)" in gw.log()
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert gw.stop() == 0

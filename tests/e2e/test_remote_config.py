"""Signed remote config with the real process and a real Mosquitto: a good document is
applied (data goes where the new config says), answered on config/result and shown,
retained, on config/active; bad signatures, replays, other gateways' documents and
invalid configs are refused with the file and the running config untouched; the
version survives a restart; `edge-stream config push` drives it from the command line."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import files, remote
from tests.e2e.harness import GatewayProcess, free_port, wait_for
from tests.servers import Mosquitto

pytestmark = pytest.mark.e2e


class Fleet:
    """The fleet server's side, on paho: publishes envelopes, reads the gateway's topics."""

    def __init__(self, url: str, gateway_id: str, user: tuple[str, str] | None = None) -> None:
        host, _, port = url.removeprefix("mqtt://").rpartition(":")
        self.gateway_id = gateway_id
        self.messages: queue.Queue[tuple[str, dict[str, Any], bool]] = queue.Queue()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"fleet-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self.client.on_message = self._on_message
        if user is not None:
            self.client.username_pw_set(*user)
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.subscribe(remote.result_topic(gateway_id))

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.put((message.topic, json.loads(message.payload), bool(message.retain)))

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[bool] = queue.Queue()
        self.client.on_subscribe = lambda *_args: done.put(True)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=10)

    def push(self, payload: bytes) -> dict[str, Any]:
        """Publish on config/set; return the gateway's answer on config/result."""
        self.client.publish(remote.set_topic(self.gateway_id), payload, qos=1).wait_for_publish(10)
        return self.next(remote.result_topic(self.gateway_id))

    def next(self, topic: str, timeout: float = 30) -> dict[str, Any]:
        while True:
            got, body, _retain = self.messages.get(timeout=timeout)
            if got == topic:
                return body

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _retained(url: str, topic: str) -> dict[str, Any]:
    """What a new subscriber gets on `topic` at once: the retained message."""
    fleet = Fleet(url, "nobody")
    try:
        fleet.subscribe(topic)
        while True:
            got, body, retain = fleet.messages.get(timeout=10)
            if got == topic:
                assert retain
                return body
    finally:
        fleet.close()


def _config(folder: Path, url: str, public_key: Path, sink_path: str) -> dict[str, Any]:
    return {
        "gateway": {"id": f"gw-{uuid.uuid4().hex[:8]}", "data_dir": str(folder / "data")},
        "sources": {"host": {"type": "system", "interval": "200ms"}},
        "routes": {"all": {"match": "#", "sinks": ["out"]}},
        "sinks": {"out": {"type": "file", "path": sink_path}},
        "remote_config": {"enabled": True, "broker": url, "public_key": str(public_key)},
    }


@pytest.fixture
def signing(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    public, _ = remote.keygen(tmp_path / "op.key")
    return remote.load_private_key(tmp_path / "op.key"), public


@pytest.fixture
def gw(
    tmp_path: Path, mosquitto: Mosquitto, signing: tuple[Ed25519PrivateKey, Path]
) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path, _config(tmp_path, mosquitto.url, signing[1], "a.jsonl"))
    gateway.start()
    wait_for(
        lambda: gateway.status()["remote_config"]["connected"], 20, "the remote config channel"
    )
    try:
        yield gateway
    finally:
        gateway.close()


def _gateway_id(gw: GatewayProcess) -> str:
    return str(yaml.safe_load(gw.config_path.read_text())["gateway"]["id"])


def _text(gw: GatewayProcess, change: Any) -> str:
    data = yaml.safe_load(gw.config_path.read_text())
    change(data)
    return yaml.safe_dump(data)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_signed_config_is_applied_reported_and_active(
    gw: GatewayProcess, mosquitto: Mosquitto, signing: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, _ = signing
    gid = _gateway_id(gw)
    before = gw.status()["config"]["hash"]
    at_start = _retained(mosquitto.url, remote.active_topic(gid))
    assert at_start == {"version": None, "hash": before, "applied_at": None}

    new = _text(gw, lambda d: d["sinks"]["out"].update(path="b.jsonl"))
    fleet = Fleet(mosquitto.url, gid)
    try:
        answer = fleet.push(remote.sign(remote.Document(gid, 10, "yaml", new), key))
    finally:
        fleet.close()
    digest = files.text_hash(new)
    assert answer["outcome"] == "applied", answer
    assert (answer["version"], answer["hash"], answer["errors"]) == (10, digest, [])

    assert gw.config_path.read_text() == new
    b = gw.data_dir / "b.jsonl"
    wait_for(lambda: _lines(b) >= 2, 20, "readings in the new config's file b.jsonl")
    status = gw.status()
    assert status["config"]["hash"] == digest
    assert status["config"]["last_reload"]["trigger"] == "remote"
    assert status["remote_config"]["last_version"] == 10
    assert status["remote_config"]["last_outcome"] == "applied"
    assert [v.hash for v in files.versions(gw.data_dir)] == [before]
    active = _retained(mosquitto.url, remote.active_topic(gid))
    assert (active["version"], active["hash"]) == (10, digest) and active["applied_at"] > 0


def test_config_active_follows_a_change_made_on_the_gateway(
    gw: GatewayProcess, mosquitto: Mosquitto, signing: tuple[Ed25519PrivateKey, Path]
) -> None:
    """A pushed version, then the file edited on the gateway and reloaded (SIGHUP):
    config/active says the hash that runs now, not the pushed one's until a reconnect."""
    key, _ = signing
    gid = _gateway_id(gw)
    pushed = _text(gw, lambda d: d["sinks"]["out"].update(path="b.jsonl"))
    fleet = Fleet(mosquitto.url, gid)
    try:
        assert (
            fleet.push(remote.sign(remote.Document(gid, 10, "yaml", pushed), key))["outcome"]
            == "applied"
        )
    finally:
        fleet.close()
    local = _text(gw, lambda d: d["sinks"]["out"].update(path="c.jsonl"))
    gw.config_path.write_text(local)
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    digest = files.text_hash(local)
    wait_for(lambda: gw.status()["config"]["hash"] == digest, 20, "the local change to run")
    wait_for(
        lambda: _retained(mosquitto.url, remote.active_topic(gid))["hash"] == digest,
        10,
        "config/active to say the hash that runs",
    )
    assert _retained(mosquitto.url, remote.active_topic(gid))["version"] == 10


def test_bad_documents_are_refused_and_nothing_changes(
    gw: GatewayProcess, mosquitto: Mosquitto, signing: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, _ = signing
    gid = _gateway_id(gw)
    fleet = Fleet(mosquitto.url, gid)
    try:
        good = _text(gw, lambda d: d["sinks"]["out"].update(path="b.jsonl"))
        answer = fleet.push(remote.sign(remote.Document(gid, 10, "yaml", good), key))
        assert answer["outcome"] == "applied", answer
        text, digest = gw.config_path.read_text(), gw.status()["config"]["hash"]
        kept = files.versions(gw.data_dir)
        redirect = _text(gw, lambda d: d["sinks"]["out"].update(path="c.jsonl"))
        invalid = _text(gw, lambda d: d["sinks"]["out"].update(type="nowhere"))
        intruder = Ed25519PrivateKey.generate()
        data = remote.Document(gid, 11, "yaml", redirect).to_bytes()
        unsigned = json.dumps({"document": remote.base64.b64encode(data).decode()}).encode()
        cases = [
            (remote.sign(remote.Document(gid, 11, "yaml", redirect), intruder), "does not verify"),
            (unsigned, "not signed"),
            (remote.sign(remote.Document(gid, 9, "yaml", redirect), key), "not newer"),
            (remote.sign(remote.Document(gid, 10, "yaml", redirect), key), "not newer"),
            (remote.sign(remote.Document("other", 12, "yaml", redirect), key), "gateway 'other'"),
            (remote.sign(remote.Document(gid, 13, "yaml", invalid), key), "nowhere"),
            (b"{" * (remote.MAX_PAYLOAD + 1000), "at most 1048576"),
        ]
        for payload, message in cases:
            answer = fleet.push(payload)
            assert answer["outcome"] == "refused", (message, answer)
            assert any(message in e for e in answer["errors"]), (message, answer)
            assert gw.config_path.read_text() == text, message
            status = gw.status()
            assert status["config"]["hash"] == digest
            assert status["sinks"]["out"]["state"] == "running"
            assert status["remote_config"]["last_version"] == 10
            last = status["config"]["last_reload"]
            assert last["trigger"] == "remote" and last["outcome"] == "refused", last
            assert any(message in e for e in last["errors"]), (message, last)
        assert files.versions(gw.data_dir) == kept
        assert "remote_config: a document refused, the running config stays: the payload is" in (
            gw.log()
        )
        assert "version None" not in gw.log()  # as it said for a payload it could not read
        history = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "config", "history", "-c", str(gw.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.splitlines()
        refusals = [line for line in history if line.split()[1:3] == ["remote", "refused"]]
        assert len(refusals) == len(cases), history
        # past what the gateway reads at all: it drops the connection before reading the
        # body, and reconnects (a clean session: the broker forgets that message)
        fleet.client.publish(remote.set_topic(gid), b"{" * (2 << 20), qos=1).wait_for_publish(10)
        wait_for(lambda: "remote_config: connected to" in gw.log(), 20, "the channel reconnected")
        answer = fleet.push(remote.sign(remote.Document(gid, 9, "yaml", redirect), key))
        assert answer["outcome"] == "refused", answer
        assert gw.config_path.read_text() == text
        assert not (gw.data_dir / "c.jsonl").exists()
        assert _retained(mosquitto.url, remote.active_topic(gid))["version"] == 10

        # the version is kept across a restart: the same signed document is a replay then
        gw.stop()
        gw.start()
        wait_for(lambda: gw.status()["remote_config"]["connected"], 20, "the channel again")
        assert gw.status()["remote_config"]["last_version"] == 10
        answer = fleet.push(remote.sign(remote.Document(gid, 10, "yaml", redirect), key))
        assert answer["outcome"] == "refused" and "not newer" in answer["errors"][0], answer
        assert gw.config_path.read_text() == text
    finally:
        fleet.close()


def test_a_message_retained_on_config_set_is_ignored(
    gw: GatewayProcess, mosquitto: Mosquitto, signing: tuple[Ed25519PrivateKey, Path]
) -> None:
    """A message over 1 MiB retained on config/set came back at every connect: the channel
    dropped the connection, reconnected at once, got it again, and no document reached
    the gateway again. A retained document would be answered again at every connect."""
    key, _ = signing
    gid = _gateway_id(gw)
    fleet = Fleet(mosquitto.url, gid)
    topic = remote.set_topic(gid)
    try:
        gw.stop()  # the retained message is there when the channel subscribes
        fleet.client.publish(topic, b"{" * (2 << 20), qos=1, retain=True).wait_for_publish(10)
        gw.start()
        wait_for(lambda: gw.status()["remote_config"]["connected"], 20, "the channel")
        good = _text(gw, lambda d: d["sinks"]["out"].update(path="b.jsonl"))
        answer = fleet.push(remote.sign(remote.Document(gid, 10, "yaml", good), key))
        assert answer["outcome"] == "applied", answer
        assert "malformed packet" not in gw.log()
    finally:
        fleet.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        fleet.close()


def _push(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "push", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_push_from_the_command_line(
    gw: GatewayProcess, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    gid = _gateway_id(gw)
    new = tmp_path / "new.yaml"
    new.write_text(_text(gw, lambda d: d["sinks"]["out"].update(path="pushed.jsonl")))
    common = ["--gateway", gid, "--broker", mosquitto.url, "--key", str(tmp_path / "op.key")]
    done = _push(str(new), *common)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"{gid}: config version ") and line.endswith(
        f" applied (hash {files.text_hash(new.read_text())}); sink out changed"
    ), line
    wait_for(lambda: _lines(gw.data_dir / "pushed.jsonl") >= 1, 20, "readings in pushed.jsonl")
    assert gw.config_path.read_text() == new.read_text()

    version = int(line.split()[3])  # the default: the unix time of the push
    bad = tmp_path / "bad.yaml"
    bad.write_text(_text(gw, lambda d: d["sinks"]["out"].update(type="nowhere")))
    done = _push(str(bad), *common, "--version", str(version + 1))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert " refused: " in lines[0] and "nowhere" in lines[0], lines
    assert gw.config_path.read_text() == new.read_text()

    # the same version again: a replay
    done = _push(str(new), *common, "--version", "1")
    assert done.returncode == 1 and "not newer" in done.stderr, done.stderr


def test_an_applied_version_that_cannot_be_kept_is_said_by_push_and_the_log(
    gw: GatewayProcess, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # Applied, but remote-config.json could not be written: after a restart an older signed
    # config could be replayed. The answer's errors said so; `config push` printed only
    # "applied" and the log "version 50 applied".
    state = gw.data_dir / "remote-config.json"
    state.unlink(missing_ok=True)
    state.mkdir()
    new = tmp_path / "new.yaml"
    new.write_text(_text(gw, lambda d: d["sinks"]["out"].update(path="kept.jsonl")))
    common = ["--gateway", _gateway_id(gw), "--broker", mosquitto.url]
    done = _push(str(new), *common, "--key", str(tmp_path / "op.key"), "--version", "50")
    assert done.returncode == 0, done.stderr
    assert " applied (hash " in done.stdout
    assert done.stderr.startswith(f"edge-stream: {_gateway_id(gw)}: but: the version could not")
    logged = "ERROR   remote_config: version 50: the version could not be kept"
    wait_for(lambda: logged in gw.log(), 5, "the log line")


def test_on_the_gateway_broker_the_channel_logs_in_with_the_mqtt_credentials(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    signing: tuple[Ed25519PrivateKey, Path],
) -> None:
    # Without remote_config.broker the channel used the gateway's broker but not the
    # mqtt.username and mqtt.password every other component there uses: refused (0x87).
    user = ("gw", "fleet-pw-123")
    broker = mosquitto_factory(user=user)
    config = _config(tmp_path, broker.url, signing[1], "a.jsonl")
    del config["remote_config"]["broker"]
    config["mqtt"] = {"url": broker.url, "username": user[0], "password": user[1]}
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    try:
        wait_for(lambda: gw.status()["remote_config"]["connected"], 20, "the channel")
        gid = _gateway_id(gw)
        new = _text(gw, lambda d: d["sinks"]["out"].update(path="b.jsonl"))
        fleet = Fleet(broker.url, gid, user=user)
        try:
            answer = fleet.push(remote.sign(remote.Document(gid, 5, "yaml", new), signing[0]))
        finally:
            fleet.close()
        assert answer["outcome"] == "applied", answer
        assert gw.config_path.read_text() == new
    finally:
        gw.close()


def test_the_gateway_runs_while_the_remote_broker_is_away(
    tmp_path: Path, signing: tuple[Ed25519PrivateKey, Path]
) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    gw = GatewayProcess(tmp_path, _config(tmp_path, url, signing[1], "a.jsonl"))
    gw.start()
    try:
        remote_status = wait_for(
            lambda: gw.status()["remote_config"]["last_error"] and gw.status()["remote_config"],
            20,
            "the channel's error in /api/status",
        )
        assert remote_status["connected"] is False and remote_status["enabled"] is True
        assert "cannot reach the remote config broker" in remote_status["last_error"]
        wait_for(lambda: _lines(gw.data_dir / "a.jsonl") >= 2, 20, "readings meanwhile")
        assert gw.status()["sinks"]["out"]["state"] == "running"
    finally:
        gw.close()


def test_a_config_whose_data_dir_cannot_be_used_is_rolled_back_and_the_gateway_runs_on(
    gw: GatewayProcess, mosquitto: Mosquitto, signing: tuple[Ed25519PrivateKey, Path]
) -> None:
    # A change of data_dir restarts the engine on new services; one the gateway may not
    # use stopped the whole gateway (exit 1) instead of rolling back.
    blocker = gw.folder / "a-file"
    blocker.write_text("not a folder\n")
    status = _push_rolled_back(
        gw, mosquitto, signing, 20, "gateway.data_dir",
        lambda d: d["gateway"].update(data_dir=str(blocker / "data")),
    )  # fmt: skip
    assert status["remote_config"]["last_version"] is None
    before = _lines(gw.data_dir / "a.jsonl")
    wait_for(lambda: _lines(gw.data_dir / "a.jsonl") > before, 20, "readings after it")


def test_a_config_whose_web_address_is_in_use_is_rolled_back_with_the_page_kept(
    gw: GatewayProcess, mosquitto: Mosquitto, signing: tuple[Ed25519PrivateKey, Path]
) -> None:
    # The reload stopped the web server, failed to start the new one, and went no
    # further: no answer on config/result, the new text kept, no status page at all.
    taken = f"127.0.0.1:{mosquitto.port}"
    _push_rolled_back(
        gw, mosquitto, signing, 30, "web.listen", lambda d: d["web"].update(listen=taken)
    )


def _push_rolled_back(
    gw: GatewayProcess,
    mosquitto: Mosquitto,
    signing: tuple[Ed25519PrivateKey, Path],
    version: int,
    key_path: str,
    change: Callable[[dict[str, Any]], object],
) -> dict[str, Any]:
    """Push the gateway's config with `change` made, signed as `version`, and check that
    it was rolled back on an error naming `key_path`: the gateway runs on, with its file
    and config hash as before. Returns the status page after it."""
    key, _ = signing
    gid = _gateway_id(gw)
    text, digest = gw.config_path.read_text(), gw.status()["config"]["hash"]
    fleet = Fleet(mosquitto.url, gid)
    try:
        document = remote.Document(gid, version, "yaml", _text(gw, change))
        answer = fleet.push(remote.sign(document, key))
    finally:
        fleet.close()
    assert answer["outcome"] == "rolled_back", answer
    assert any(key_path in e for e in answer["errors"]), answer
    assert gw.proc is not None and gw.proc.poll() is None, gw.log()
    assert gw.config_path.read_text() == text
    status = wait_for(lambda: gw.status(), 20, "the status page after the rollback")
    assert status["config"]["hash"] == digest
    assert status["config"]["last_reload"]["outcome"] == "rolled_back"
    return status

"""How the gateway's MQTT clients log in to a Mosquitto that lets only one user in: a user
name and password written in an mqtt:// URL are used (they were dropped, so every client
was refused as anonymous), and the password is never printed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gateway.config import remote
from tests.e2e.harness import GatewayProcess, wait_for
from tests.servers import Mosquitto

pytestmark = pytest.mark.e2e

USER = ("gw", "Url-Pw-7301")


def test_the_login_in_an_mqtt_url_is_used_by_every_client(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(user=USER)
    with_login = f"mqtt://{USER[0]}:{USER[1]}@127.0.0.1:{broker.port}"
    public_key, _ = remote.keygen(tmp_path / "fleet.key")
    gw = GatewayProcess(
        tmp_path,
        {
            "mqtt": {"url": with_login},  # the source, status and remote config use it
            "remote_config": {"enabled": True, "public_key": str(public_key)},
            "sources": {"plant": {"type": "mqtt", "topics": ["login/#"], "qos": 1}},
            "routes": {"r": {"match": "login/#", "sinks": ["up"]}},
            "sinks": {"up": {"type": "mqtt", "url": with_login, "topic": "fwd/{topic}"}},
        },
    )
    got: list[tuple[str, bytes]] = []
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="login-watch")
    watcher.username_pw_set(*USER)
    watcher.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload)))
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe([("fwd/#", 1), ("edge-stream/e2e/status", 1)])
    watcher.loop_start()
    gw.start()
    try:
        wait_for(lambda: gw.status()["remote_config"]["connected"], 20, "the remote config")
        publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="login-pub")
        publisher.username_pw_set(*USER)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish("login/a", json.dumps({"n": 1}), qos=1).wait_for_publish(10)
        publisher.loop_stop()
        publisher.disconnect()
        wait_for(lambda: ("fwd/login/a", b'{"n": 1}') in got, 20, "the message through the sink")
        wait_for(lambda: ("edge-stream/e2e/status", b"online") in got, 20, "the status topic")
        assert gw.sink("up")["state"] == "running"
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        gw.stop()
    assert USER[1] not in gw.log_path.read_text()
    assert f"mqtt://{USER[0]}:***@127.0.0.1:{broker.port}" in gw.log_path.read_text()


def test_mqtt_tls_files_are_used_by_every_client_on_the_gateways_broker(
    tmp_path: Path, mosquitto_tls: Mosquitto
) -> None:
    # `mqtt:` had no ca_file: with a broker whose certificate a private CA signed, the
    # status topics never connected ("not trusted ... check ca_file", a key `mqtt:` did
    # not have). Here the broker also requires a client certificate.
    assert mosquitto_tls.ca_file and mosquitto_tls.cert_file and mosquitto_tls.key_file
    gid = "mqtt-tls-files"
    public_key, _ = remote.keygen(tmp_path / "fleet.key")
    gw = GatewayProcess(
        tmp_path,
        {
            "gateway": {"id": gid},
            "mqtt": {
                "url": mosquitto_tls.url,
                "ca_file": str(mosquitto_tls.ca_file),
                "cert_file": str(mosquitto_tls.cert_file),
                "key_file": str(mosquitto_tls.key_file),
            },
            # the source, the status topics and the remote config take them from `mqtt:`
            "remote_config": {"enabled": True, "public_key": str(public_key)},
            "sources": {"plant": {"type": "mqtt", "topics": [f"{gid}/#"], "qos": 1}},
            "routes": {"r": {"match": f"{gid}/#", "sinks": ["f"]}},
            "sinks": {"f": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
        },
    )
    got: list[tuple[str, bytes]] = []
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{gid}-watch")
    watcher.tls_set(
        str(mosquitto_tls.ca_file), str(mosquitto_tls.cert_file), str(mosquitto_tls.key_file)
    )
    watcher.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload)))
    watcher.connect("127.0.0.1", mosquitto_tls.port)
    watcher.subscribe(f"edge-stream/{gid}/status", 1)
    watcher.loop_start()
    try:
        gw.start()  # waits for the source to run: it connects with mqtt's TLS files
        wait_for(lambda: (f"edge-stream/{gid}/status", b"online") in got, 20, "the status topic")
        wait_for(lambda: gw.status()["remote_config"]["connected"], 20, "the remote config")
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        gw.stop()

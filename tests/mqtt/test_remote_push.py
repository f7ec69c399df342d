"""`edge-stream config push` to a broker whose ACL forbids the fleet to publish on
`edge-stream/<id>/config/set`: the broker's PUBACK says so (MQTT 5, Not authorized), and
push says it at once, instead of waiting out --timeout and asking whether the gateway runs.
Run in-process (`gateway.cli.main`) against a private Mosquitto with that ACL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gateway.cli import main
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration


def test_a_publish_the_broker_refuses_is_said_at_once(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mosquitto_factory: Callable[..., Mosquitto],
) -> None:
    broker = mosquitto_factory(acl="topic read edge-stream/+/config/result\n")
    key = tmp_path / "fleet.key"
    assert main(["config", "keygen-signing", "--out", str(key)]) == 0
    new = tmp_path / "new.yaml"
    new.write_text("gateway: {id: pi-01}\n")
    capsys.readouterr()
    argv = ["config", "push", str(new), "--key", str(key), "--gateway", "pi-01"]
    assert main([*argv, "--broker", broker.url, "--timeout", "20"]) == 1
    assert capsys.readouterr().err == (
        "edge-stream: the broker refuses the publish to edge-stream/pi-01/config/set:"
        " Not authorized (0x87); check its ACL\n"
    )


def test_a_message_retained_on_the_result_topic_is_not_taken_for_the_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mosquitto: Mosquitto
) -> None:
    """push took a message retained on config/result (one with no version, as a gateway
    answers a payload it cannot read) for the gateway's answer to its document, and said
    "applied" with no gateway there at all."""
    host, _, port = mosquitto.url.removeprefix("mqtt://").rpartition(":")
    other = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    other.connect(host, int(port))
    other.loop_start()
    topic = "edge-stream/pi-07/config/result"
    stale = b'{"version": null, "outcome": "applied", "errors": [], "hash": "0"}'
    other.publish(topic, stale, qos=1, retain=True).wait_for_publish(10)
    try:
        key = tmp_path / "fleet.key"
        assert main(["config", "keygen-signing", "--out", str(key)]) == 0
        new = tmp_path / "new.yaml"
        new.write_text("gateway: {id: pi-07}\n")
        capsys.readouterr()
        argv = ["config", "push", str(new), "--key", str(key), "--gateway", "pi-07"]
        assert main([*argv, "--broker", mosquitto.url, "--timeout", "2"]) == 1
        assert "applied" not in capsys.readouterr().out
    finally:
        other.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        other.loop_stop()
        other.disconnect()

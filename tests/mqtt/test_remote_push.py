"""`edge-stream config push` to a broker whose ACL forbids the fleet to publish on
`edge-stream/<id>/config/set`: the broker's PUBACK says so (MQTT 5, Not authorized), and
push says it at once, instead of waiting out --timeout and asking whether the gateway runs.
Run in-process (`gateway.cli.main`) against a private Mosquitto with that ACL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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

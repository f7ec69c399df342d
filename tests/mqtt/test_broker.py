"""The embedded broker's supervisor against a real Mosquitto."""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gateway.core.errors import ConfigError
from gateway.mqtt.broker import EmbeddedBroker, wait_for_leftovers
from tests.servers import free_port

pytestmark = pytest.mark.integration


def start_mosquitto(broker: EmbeddedBroker, conf: Path) -> subprocess.Popen[bytes]:
    """Mosquitto on our own config, as a killed gateway leaves it: not our child's child."""
    proc = subprocess.Popen([broker._binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection((broker.host, broker.port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None, "mosquitto exited at start"
            threading.Event().wait(0.05)
    raise AssertionError("mosquitto did not open its port")


def session(broker: EmbeddedBroker, received: queue.Queue[bytes] | None = None) -> paho.Client:
    """The sensor-side subscriber's persistent session (clean_session false, QoS 1)."""
    subscribed = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="reader", clean_session=False)
    client.on_connect = lambda c, *_: c.subscribe("readings", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    if received is not None:
        client.on_message = lambda _c, _u, message: received.put(message.payload)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert subscribed.wait(10)
    return client


async def test_a_leftover_broker_saving_its_queue_is_not_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = EmbeddedBroker(str(tmp_path), f"127.0.0.1:{free_port()}")
    conf = broker._prepare()
    proc = start_mosquitto(broker, conf)
    try:
        reader = session(broker)
        reader.disconnect()
        reader.loop_stop()
        publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sensor")
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        for n in range(20):  # PUBACKed by the broker: the sensor forgets them
            publisher.publish("readings", str(n), qos=1).wait_for_publish(10)
        publisher.disconnect()
        publisher.loop_stop()
        # The broker is still saving when the restarted gateway finds it: stopped, its
        # SIGTERM stays pending until it goes on, longer than the 5 s it used to get.
        os.kill(proc.pid, signal.SIGSTOP)
        timer = threading.Timer(7.0, os.kill, (proc.pid, signal.SIGCONT))
        timer.start()
        caplog.set_level(logging.INFO, logger="gateway.broker")
        await wait_for_leftovers(conf)
        timer.join()
        assert proc.wait(10) == 0, "the leftover broker was killed, not stopped"
        assert "waiting up to 60s for it to save its queued messages" in caplog.text
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    # The next broker on the same files still has every queued message for the session.
    proc = start_mosquitto(broker, conf)
    try:
        received: queue.Queue[bytes] = queue.Queue()
        reader = session(broker, received)
        got = sorted(int(received.get(timeout=10)) for _ in range(20))
        reader.disconnect()
        reader.loop_stop()
        assert got == list(range(20))
    finally:
        proc.terminate()
        proc.wait(30)


async def test_an_ipv6_embedded_listen_in_brackets_works(tmp_path: Path) -> None:
    broker = EmbeddedBroker(str(tmp_path), f"[::1]:{free_port()}")
    assert broker.url == f"mqtt://[::1]:{broker.port}"
    await broker.start()
    try:
        received: queue.Queue[bytes] = queue.Queue()
        reader = session(broker, received)
        reader.publish("readings", b"over IPv6", qos=1).wait_for_publish(10)
        assert received.get(timeout=10) == b"over IPv6"
        reader.disconnect()
        reader.loop_stop()
    finally:
        await broker.stop()


def test_mosquitto_missing_under_auto_says_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.mqtt.broker.os.access", lambda *_: False)
    with pytest.raises(ConfigError) as caught:
        EmbeddedBroker(str(tmp_path), "127.0.0.1:1883", "auto")._binary()
    assert str(caught.value).startswith(
        "mqtt.url is 'auto' and no MQTT broker answers on 127.0.0.1:1883"
    )
    with pytest.raises(ConfigError, match=r"^mqtt\.url is 'embedded' but Mosquitto"):
        EmbeddedBroker(str(tmp_path), "127.0.0.1:1883", "embedded")._binary()


async def test_a_damaged_mosquitto_db_is_named_in_one_line(tmp_path: Path) -> None:
    """Mosquitto exits at start on a mosquitto.db it cannot read; the gateway said so in
    two lines of Mosquitto's, after "mqtt.embedded_listen 127.0.0.1:PORT:", a key that was
    not at fault, and nothing of what to do."""
    broker = EmbeddedBroker(str(tmp_path), f"127.0.0.1:{free_port()}")
    broker.dir.mkdir()
    (broker.dir / "mosquitto.db").write_bytes(b"not a mosquitto database, " * 4)
    with pytest.raises(ConfigError) as caught:
        await broker.start_first()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "the embedded Mosquitto cannot read its saved sessions and queued messages,"
        f" {broker.dir / 'mosquitto.db'} (Error: Unable to restore persistent database."
    )
    assert message.endswith(
        "if the file is damaged, move it aside (the sessions and messages in it are lost)"
        " and start again"
    )


async def test_a_mosquitto_db_of_a_newer_mosquitto_says_to_upgrade(tmp_path: Path) -> None:
    """Any start error naming the database read "if the file is damaged, move it aside":
    a file a newer Mosquitto wrote (after a downgrade) is not damaged, and moving it aside
    loses what an upgrade would read."""
    broker = EmbeddedBroker(str(tmp_path), f"127.0.0.1:{free_port()}")
    broker.dir.mkdir()
    magic = b"\x00\xb5\x00mosquitto db"
    (broker.dir / "mosquitto.db").write_bytes(magic + b"\x00" * 4 + (99).to_bytes(4, "big"))
    with pytest.raises(ConfigError) as caught:
        await broker.start_first()
    message = str(caught.value)
    assert "Unsupported persistent database format version 99" in message
    assert "damaged" not in message
    assert message.endswith(
        "written by a newer (or otherwise built) Mosquitto: upgrade Mosquitto, or move the"
        " file aside (the sessions and messages in it are lost) and start again"
    )


async def test_a_truncated_mosquitto_db_is_called_damaged(tmp_path: Path) -> None:
    """A file cut short after its header: Mosquitto says "Couldn't open database." (or
    "Corrupt persistent database."), which the newer-Mosquitto check took for a start
    failure to retry for ever, Mosquitto's lines after mqtt.embedded_listen again."""
    broker = EmbeddedBroker(str(tmp_path), f"127.0.0.1:{free_port()}")
    broker.dir.mkdir()
    magic = b"\x00\xb5\x00mosquitto db"
    header = magic + b"\x00" * 4 + (6).to_bytes(4, "big")  # the format version 2.x writes
    chunk = (1).to_bytes(4, "big") + (100).to_bytes(4, "big") + b"\x00" * 5  # cut short
    (broker.dir / "mosquitto.db").write_bytes(header + chunk)
    with pytest.raises(ConfigError) as caught:
        await broker.start_first()
    message = str(caught.value)
    assert "\n" not in message and "newer" not in message
    assert message.endswith(
        "if the file is damaged, move it aside (the sessions and messages in it are lost)"
        " and start again"
    )

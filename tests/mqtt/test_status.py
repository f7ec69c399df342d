"""The status channel (gateway.mqtt.status) on a real Mosquitto: its connection lost while
a publish waits for its PUBACK; the stats' schedule."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import queue
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import paho.mqtt.client as paho
import pytest

from gateway.config.model import (
    Config,
    GatewaySection,
    MqttSection,
    RemoteConfigSection,
    StatusSection,
)
from gateway.config.remote import Outcome
from gateway.core.errors import PermanentError
from gateway.mqtt import status as status_module
from gateway.mqtt.remote import RemoteConfig
from gateway.mqtt.status import StatusChannel
from tests import servers

pytestmark = pytest.mark.integration


@pytest.fixture
async def lost(
    mosquitto_factory: Callable[..., servers.Mosquitto],
) -> AsyncIterator[tuple[StatusChannel, Callable[[], None]]]:
    """A status channel online on a private broker that is then stopped (SIGSTOP): no
    PUBACK comes while it stands; the second item kills it, which drops the connection."""
    broker = mosquitto_factory()
    config = Config(gateway=GatewaySection(id="status-lost"), mqtt=MqttSection(url=broker.url))
    ready = asyncio.Event()
    ready.set()
    channel = StatusChannel(
        config=lambda: config, broker_url=lambda: broker.url, stats=dict, ready=ready
    )
    running = asyncio.ensure_future(channel.run())
    async with asyncio.timeout(10):
        while not channel.connected:  # noqa: ASYNC110 - a guard on our own flag
            await asyncio.sleep(0.01)
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        yield channel, broker.kill
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_stop_whose_goodbye_loses_the_connection_ends_cleanly(lost: Any) -> None:
    # Seen as a CancelledError traceback at a SIGTERM stop: close() waits for the PUBACK
    # of its `offline`, the connection goes (here the broker dies; there another gateway
    # took over the status client id), run() drops the channel and cancelled the future
    # close() waited on. The CancelledError then left close(), which the gateway awaits
    # in its shutdown: the web server, the broker and the store were left unclosed.
    channel, kill = lost
    channel.stopping = True
    closing = asyncio.ensure_future(channel.close())
    await asyncio.sleep(0)  # close() has published `offline` and waits for its PUBACK
    kill()
    async with asyncio.timeout(10):
        await closing  # returns: no CancelledError
    assert not channel.connected


async def test_a_send_whose_connection_is_lost_says_not_sent(lost: Any) -> None:
    # The same cancelled future ended the alerts' MQTT notifier for good, silently.
    channel, kill = lost
    sending = asyncio.ensure_future(channel.send("alerts/x", b"{}"))
    await asyncio.sleep(0)
    kill()
    async with asyncio.timeout(10):
        assert await sending is False


async def test_a_publish_the_broker_refuses_says_why(
    mosquitto_factory: Callable[..., servers.Mosquitto],
) -> None:
    # An ACL that denies the alerts' topic: send() said False, as for a broker away, and
    # the event was sent again and again, never taken, with nothing in the log.
    broker = mosquitto_factory(acl="topic readwrite edge-stream/#\n")
    config = Config(gateway=GatewaySection(id="status-acl"), mqtt=MqttSection(url=broker.url))
    ready = asyncio.Event()
    ready.set()
    channel = StatusChannel(
        config=lambda: config, broker_url=lambda: broker.url, stats=dict, ready=ready
    )
    running = asyncio.ensure_future(channel.run())
    try:
        async with asyncio.timeout(10):
            while not channel.connected:  # noqa: ASYNC110 - a guard on our own flag
                await asyncio.sleep(0.01)
            assert await channel.send("edge-stream/status-acl/alerts", b"{}") is True
            with pytest.raises(PermanentError) as refused:
                await channel.send("denied/alerts", b"{}")
        assert str(refused.value) == (
            "the broker refused the PUBLISH to denied/alerts: Not authorized (0x87)"
        )
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_mqtt_tls_files_that_cannot_be_read_are_named_in_the_error(tmp_path: Any) -> None:
    # The status channel had no TLS files; those of `mqtt:` that cannot be read are named
    # by their keys (an OSError said "No such file or directory", naming none).
    missing = str(tmp_path / "ca.pem")
    config = Config(
        gateway=GatewaySection(id="status-tls"),
        mqtt=MqttSection(url="mqtts://127.0.0.1:1", ca_file=missing),
    )
    ready = asyncio.Event()
    ready.set()
    channel = StatusChannel(config=lambda: config, broker_url=lambda: None, stats=dict, ready=ready)
    running = asyncio.ensure_future(channel.run())
    try:
        async with asyncio.timeout(10):
            while channel.last_error is None:  # noqa: ASYNC110 - a guard on our own flag
                await asyncio.sleep(0.01)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert channel.last_error.startswith(
        f"cannot publish the status on 127.0.0.1:1: cannot use the TLS files (mqtt.ca_file"
        f" {missing!r}): "
    )


async def test_the_gateway_s_own_client_ids_are_none_a_component_can_have() -> None:
    # `<prefix>-status` and `<prefix>-remote-config` were the default ids of MQTT sources
    # named `status` or `remote-config` (names may hold `-`): the status client's clean
    # start wiped such a source's persistent session. A component name has no `.`.
    config = Config(
        gateway=GatewaySection(id="pi-01"),
        remote_config=RemoteConfigSection(enabled=True, public_key="unused"),
    )
    ready = asyncio.Event()
    status = StatusChannel(
        config=lambda: config, broker_url=lambda: "mqtt://127.0.0.1:1", stats=dict, ready=ready
    )
    plan = status._plan()
    assert plan is not None and plan.client_id == "edge-stream-pi-01.status"

    async def reload() -> Outcome:
        raise AssertionError("not called")

    channel = RemoteConfig(
        config=lambda: config,
        broker_url=lambda: "mqtt://127.0.0.1:1",
        config_hash=lambda: None,
        config_path="unused.yaml",
        reload=reload,
        settle=lambda text: None,
        ready=ready,
    )
    remote_plan = channel._plan()
    assert remote_plan is not None and remote_plan.client_id == "edge-stream-pi-01.remote-config"


async def test_the_stats_go_every_stats_interval_not_at_the_next_idle_look(
    mosquitto: servers.Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop looked at the stats' due time only once each IDLE second: 1.5s went every
    # 2 s, 1m every 60 to 61 s. It now wakes when they are due (IDLE made long here).
    monkeypatch.setattr(status_module, "IDLE", 60.0)
    dues: list[float] = []  # the grid's times the stats went at (the loop's clock)

    class Grid(status_module.StatsGrid):
        def due(self, now: float, interval: float) -> bool:
            if not super().due(now, interval):
                return False
            assert self.last is not None and now >= self.last  # never early
            dues.append(self.last)
            return True

    monkeypatch.setattr(status_module, "StatsGrid", Grid)
    config = Config(
        gateway=GatewaySection(id="status-grid"),
        mqtt=MqttSection(url=mosquitto.url),
        status=StatusSection(stats_interval=0.1),
    )
    ready = asyncio.Event()
    ready.set()
    made: list[int] = []

    def stats() -> dict[str, Any]:
        made.append(len(made))
        return {"n": len(made)}

    channel = StatusChannel(
        config=lambda: config, broker_url=lambda: mosquitto.url, stats=stats, ready=ready
    )
    running = asyncio.ensure_future(channel.run())
    try:
        async with asyncio.timeout(10):
            while len(made) < 3:  # noqa: ASYNC110 - a guard on our own list
                await asyncio.sleep(0.01)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    # the loop keeps to the grid (its positions: test_the_stats_keep_to_their_grid): one
    # stats_interval apart at least, however fast or slow the machine
    assert len(dues) == len(made)
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(dues)), dues


def test_the_stats_keep_to_their_grid() -> None:
    """On a fake clock, the loop's looks as `_session` makes them: each after the wait
    the grid asks for, some of them late. The stats went at the next whole-second look:
    1.5s every 2 s."""
    grid = status_module.StatsGrid()
    now, sent = 100.0, []
    late = iter([0.0, 0.25, 0.0, 0.1, 2.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0])
    for _ in range(12):
        if grid.due(now, 1.5):
            assert grid.last is not None
            sent.append((round(now, 2), round(grid.last, 2)))  # (sent at, due at)
        now += grid.wait(now, 1.5) + next(late)
    # each when due, on the grid 100 + 1.5k however late the look (101.75 for 101.5);
    # a look later than a whole interval (held up 2 s) starts the grid anew from there
    assert sent == [
        (100.0, 100.0),
        (101.75, 101.5),
        (103.1, 103.0),
        (106.1, 106.1),
        (107.6, 107.6),
        (109.1, 109.1),
        (110.6, 110.6),
    ]
    # a reload's new interval counts from the last stats; a look at least each IDLE
    last = grid.last
    assert last is not None and grid.wait(last, 60.0) == status_module.IDLE
    assert not grid.due(last + 59.9, 60.0)
    assert grid.due(last + 60.0, 60.0)


def retained(port: int, topic: str) -> bytes | None:
    """The message the broker keeps retained on `topic` (None: none within 5 s)."""
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: got.put(bytes(m.payload)) if m.retain else None
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        return got.get(timeout=5)
    except queue.Empty:
        return None
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.parametrize("change", ["id", "status off"])
async def test_a_stop_right_after_a_reload_says_offline_where_it_said_online(
    mosquitto: servers.Mosquitto, change: str
) -> None:
    """close() said `offline` on the status topic of the settings of now: a stop within a
    second of a reload that changed the gateway id put it on the new id's topic (and none
    when the reload turned status off), and `online` stayed retained on the old for good."""
    config = Config(gateway=GatewaySection(id="status-old"), mqtt=MqttSection(url=mosquitto.url))
    now = [config]
    ready = asyncio.Event()
    ready.set()
    channel = StatusChannel(
        config=lambda: now[0], broker_url=lambda: mosquitto.url, stats=dict, ready=ready
    )
    running = asyncio.ensure_future(channel.run())
    try:
        async with asyncio.timeout(10):
            while not channel.connected:  # noqa: ASYNC110 - a guard on our own flag
                await asyncio.sleep(0.01)
        topic = "edge-stream/status-old/status"
        assert await asyncio.to_thread(retained, mosquitto.port, topic) == b"online"
        if change == "id":
            now[0] = Config(
                gateway=GatewaySection(id="status-new"), mqtt=MqttSection(url=mosquitto.url)
            )
        else:
            now[0] = Config(
                gateway=GatewaySection(id="status-old"),
                mqtt=MqttSection(url=mosquitto.url),
                status=StatusSection(enabled=False),
            )
        await channel.close()  # the gateway stops before run() looked at the settings
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert await asyncio.to_thread(retained, mosquitto.port, topic) == b"offline"


async def test_status_topics_the_broker_refuses_are_said_once(
    mosquitto_factory: Callable[..., servers.Mosquitto], caplog: pytest.LogCaptureFixture
) -> None:
    # An ACL that denies the status topics: the log said the status was online, and
    # nothing reached edge-stream/<id>/status or /stats, without a word.
    broker = mosquitto_factory(acl="topic readwrite other/#\n")
    config = Config(
        gateway=GatewaySection(id="status-denied"),
        mqtt=MqttSection(url=broker.url),
        status=StatusSection(stats_interval=0.1),
    )
    ready = asyncio.Event()
    ready.set()
    summaries: list[dict[str, int]] = []

    def stats() -> dict[str, int]:
        summaries.append({"n": len(summaries)})
        return summaries[-1]

    channel = StatusChannel(
        config=lambda: config, broker_url=lambda: broker.url, stats=stats, ready=ready
    )
    caplog.set_level("INFO", logger="gateway.status")
    running = asyncio.ensure_future(channel.run())

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]

    try:
        async with asyncio.timeout(10):
            # five summaries refused, each answered (at 0.1 s) before the next goes
            while len(summaries) < 6:  # noqa: ASYNC110 - the channel's own count
                await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    tail = (
        "Not authorized (0x87); nothing goes there until its ACL lets the gateway's MQTT user"
        " publish on it"
    )
    assert refusals() == [
        f"status: the broker refused the PUBLISH to edge-stream/status-denied/status: {tail}",
        f"status: the broker refused the PUBLISH to edge-stream/status-denied/stats: {tail}",
    ]


async def test_stats_turned_off_take_the_retained_summary_away(
    mosquitto: servers.Mosquitto,
) -> None:
    """With `stats_interval: 0s` the last summary stayed retained on the stats topic, read
    by a dashboard as current for good. An empty retained message now removes it: on a
    reload that turns the stats off, and on a connect with them off."""
    topic = "edge-stream/status-stats-off/stats"
    payloads: queue.Queue[bytes] = queue.Queue()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda _c, _u, m: payloads.put(bytes(m.payload))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe(topic, qos=1)
    watcher.loop_start()

    def config(interval: float) -> Config:
        return Config(
            gateway=GatewaySection(id="status-stats-off"),
            mqtt=MqttSection(url=mosquitto.url),
            status=StatusSection(stats_interval=interval),
        )

    now = [config(0.1)]
    ready = asyncio.Event()
    ready.set()
    channel = StatusChannel(
        config=lambda: now[0], broker_url=lambda: mosquitto.url, stats=lambda: {"n": 1}, ready=ready
    )
    running = asyncio.ensure_future(channel.run())
    try:
        assert await asyncio.to_thread(payloads.get, timeout=10) == b'{"n":1}'
        now[0] = config(0.0)  # a reload turns the stats off
        async with asyncio.timeout(10):
            while await asyncio.to_thread(payloads.get, timeout=10) != b"":
                pass
        await channel.close()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        watcher.loop_stop()
        watcher.disconnect()

    # a summary left retained by an earlier run, and a gateway started with the stats off
    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    publisher.publish(topic, b'{"old":1}', qos=1, retain=True).wait_for_publish(10)
    publisher.loop_stop()
    publisher.disconnect()
    assert await asyncio.to_thread(retained, mosquitto.port, topic) == b'{"old":1}'
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda _c, _u, m: payloads.put(bytes(m.payload))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe(topic, qos=1)
    watcher.loop_start()
    channel = StatusChannel(
        config=lambda: now[0], broker_url=lambda: mosquitto.url, stats=dict, ready=ready
    )
    try:
        assert await asyncio.to_thread(payloads.get, timeout=10) == b'{"old":1}'
        running = asyncio.ensure_future(channel.run())
        assert await asyncio.to_thread(payloads.get, timeout=10) == b""
        await channel.close()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        watcher.loop_stop()
        watcher.disconnect()


@pytest.mark.parametrize("change", ["status off", "id", "broker"])
async def test_a_reload_that_turns_status_off_or_changes_the_id_takes_the_stats_away(
    mosquitto: servers.Mosquitto, change: str
) -> None:
    """The status topic said `offline`, and the last stats summary stayed retained beside
    it, read by a dashboard as current for good."""
    topic = "edge-stream/status-reload-off/stats"
    payloads: queue.Queue[bytes] = queue.Queue()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda _c, _u, m: payloads.put(bytes(m.payload))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe(topic, qos=1)
    watcher.loop_start()
    config = Config(
        gateway=GatewaySection(id="status-reload-off"),
        mqtt=MqttSection(url=mosquitto.url),
        status=StatusSection(stats_interval=0.1),
    )
    now = [config]
    ready = asyncio.Event()
    ready.set()
    urls = [mosquitto.url]
    channel = StatusChannel(
        config=lambda: now[0], broker_url=lambda: urls[0], stats=lambda: {"n": 1}, ready=ready
    )
    running = asyncio.ensure_future(channel.run())
    try:
        assert await asyncio.to_thread(payloads.get, timeout=10) == b'{"n":1}'
        if change == "id":
            now[0] = dataclasses.replace(config, gateway=GatewaySection(id="status-reload-new"))
        elif change == "broker":  # another address (the same broker, so it is watched)
            urls[0] = mosquitto.url.replace("127.0.0.1", "localhost")
        else:
            now[0] = dataclasses.replace(config, status=StatusSection(enabled=False))
        async with asyncio.timeout(10):
            while await asyncio.to_thread(payloads.get, timeout=10) != b"":
                pass
        await channel.close()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        watcher.loop_stop()
        watcher.disconnect()

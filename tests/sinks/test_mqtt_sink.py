"""The upstream mqtt sink against a real Mosquitto: the sink contract, then what is its own
(PUBACK before return, the in-flight window, a connection lost mid-batch, TLS with client
certificates, topic templates, user properties, the persistent session)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import reference
from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks.mqtt import MqttSink, MqttSinkConfig
from tests import servers
from tests.sinks.contract import (
    SinkContract,
    unique_name,
    write_until_delivered,
)
from tests.sinks.contract import config_problems as sink_config_problems

pytestmark = pytest.mark.integration


def config_problems(**keys: Any) -> tuple[Any, list[str]]:
    return sink_config_problems("mqtt", "central", **keys)


def make_sink(url: str, **keys: Any) -> MqttSink:
    config, problems = config_problems(url=url, **keys)
    assert problems == []
    assert isinstance(config, MqttSinkConfig)
    return MqttSink(config, Context(name="central", kind="sink", gateway_id="pi-01"))


@pytest.fixture
def ns() -> str:
    return unique_name()


class Collector:
    """An independent subscriber (paho, MQTT 5, persistent session, QoS 1) on `prefix/#`.

    It reconnects by itself, and its session outlives a broker restart, so what is
    published while it is away reaches it later.
    """

    def __init__(self, server: servers.Mosquitto, prefix: str) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.prefix = prefix
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"collector-{prefix}",
            protocol=paho.MQTTv5,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_disconnect = lambda *args: self._subscribed.clear()
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        if server.tls:
            client.tls_set(
                ca_certs=str(server.ca_file),
                certfile=str(server.cert_file),
                keyfile=str(server.key_file),
            )
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        client.connect(server.host, server.port, clean_start=False, properties=properties)
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(10):
            raise AssertionError("the collector could not subscribe")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(f"{self.prefix}/#", qos=1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        props = dict(getattr(message.properties, "UserProperty", []) or [])
        with self._lock:
            self.messages.append((message.topic, message.payload, props))

    async def connected(self, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while not (self.client.is_connected() and self._subscribed.is_set()):
            if time.monotonic() > deadline:
                raise AssertionError("the collector did not reconnect")
            await asyncio.sleep(0.05)

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    async def settled(
        self, at_least: int = 0, quiet: float = 0.5, limit: float = 20.0
    ) -> list[Any]:
        """The messages, once at least `at_least` came and none came for `quiet` seconds
        while connected (after a broker restart, the queued ones come on reconnecting)."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.count()
            if now != last or not self.client.is_connected():
                last, since = now, time.monotonic()
            elif now >= at_least and time.monotonic() - since >= quiet:
                break
            await asyncio.sleep(0.05)
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collect() -> Iterator[Callable[[servers.Mosquitto, str], Collector]]:
    made: list[Collector] = []

    def make(server: servers.Mosquitto, prefix: str) -> Collector:
        collector = Collector(server, prefix)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


# --- the contract -------------------------------------------------------------------------


class AclMosquitto(servers.Mosquitto):
    """Mosquitto that lets anyone publish anywhere except on `+/contract/denied`."""

    def setup(self) -> None:
        super().setup()
        acl = self.dir / "acl"
        acl.write_text("topic readwrite #\ntopic deny +/contract/denied\n")
        with self.config_file.open("a") as conf:
            conf.write(f"acl_file {acl}\n")


@pytest.fixture(scope="module")
def acl_broker(server_workspace: servers.Workspace) -> Iterator[AclMosquitto]:
    try:
        server = server_workspace._started(AclMosquitto(server_workspace))
    except servers.ServerError as err:
        pytest.fail(str(err), pytrace=False)
    yield server
    server_workspace.discard(server)


class TestMqttContract(SinkContract):
    # A batch sent again after a lost connection is published again (documented).
    exactly_once = False

    @pytest.fixture
    def collector(self, acl_broker: AclMosquitto, ns: str, collect: Any) -> Collector:
        return collect(acl_broker, ns)  # type: ignore[no-any-return]

    @pytest.fixture
    def make_sink(self, acl_broker: AclMosquitto, ns: str, collector: Collector) -> Any:
        async def make() -> MqttSink:
            sink = make_sink(acl_broker.url, topic=f"{ns}/{{topic}}", user_properties=True)
            await sink.connect()
            return sink

        return make

    @pytest.fixture
    def fetch_ids(self, collector: Collector) -> Callable[[], Any]:
        async def fetch() -> list[str]:
            return [props["id"] for _, _, props in await collector.settled()]

        return fetch

    @pytest.fixture
    def bad_flowfile(self) -> Callable[[], FlowFile]:
        # The broker's ACL refuses this topic: an MQTT 5 PUBACK with 0x87 Not authorized.
        return lambda: FlowFile.create("contract/denied", b'{"temp": 1}')

    @pytest.fixture
    def outage(self, acl_broker: AclMosquitto, collector: Collector) -> Callable[[], Any]:
        @contextlib.asynccontextmanager
        async def down() -> AsyncIterator[None]:
            acl_broker.stop()
            try:
                yield
            finally:
                acl_broker.start()
                # Mosquitto 2.0.11 with an ACL file drops what it queues for a persistent
                # session restored from its database until that client is back (a broker
                # quirk, not the sink's): let the collector reconnect first.
                await collector.connected()

        return down


async def test_a_refusing_broker_gives_the_reason(acl_broker: AclMosquitto, ns: str) -> None:
    sink = make_sink(acl_broker.url, topic=f"{ns}/{{topic}}")
    await sink.connect()
    try:
        batch = [FlowFile.create("ok", b"1"), FlowFile.create("contract/denied", b"2")]
        rejected = await sink.write(batch)
    finally:
        await sink.close()
    assert [r.flowfile.id for r in rejected] == [batch[1].id]
    assert rejected[0].reason == "mqtt: the broker refused it: Not authorized (0x87)"


# --- PUBACKs, the window, connections -----------------------------------------------------


class Proxy:
    """A TCP relay between the sink and the broker that can hold the broker's answers
    (PUBACKs) back, and cut every connection as a network failure would."""

    def __init__(self, target: servers.Mosquitto) -> None:
        self.target = target
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.answered = 0  # bytes of the broker's answers passed on
        self.hold_after: int | None = None  # hold the answers once this many bytes passed
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)
        self._writers += [writer, up_writer]
        async with asyncio.TaskGroup() as group:
            group.create_task(self._pump(reader, up_writer, gated=False))
            group.create_task(self._pump(up_reader, writer, gated=True))

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gated: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if gated:
                    if self.hold_after is not None and self.answered >= self.hold_after:
                        self.flowing.clear()
                    await self.flowing.wait()
                    self.answered += len(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def proxy(mosquitto: servers.Mosquitto) -> AsyncIterator[Proxy]:
    relay = Proxy(mosquitto)
    await relay.start()
    yield relay
    relay.flowing.set()
    await relay.close()


async def test_write_returns_only_after_every_puback_within_the_window(
    mosquitto: servers.Mosquitto, proxy: Proxy, ns: str, collect: Any
) -> None:
    collector = collect(mosquitto, ns)
    sink = make_sink(f"mqtt://127.0.0.1:{proxy.port}", topic=f"{ns}/{{topic}}", max_inflight=10)
    await sink.connect()
    try:
        proxy.flowing.clear()  # the broker gets every PUBLISH; its PUBACKs wait in the relay
        batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(50)]
        writing = asyncio.ensure_future(sink.write(batch))
        await collector.settled(at_least=10, quiet=0.5, limit=5)
        assert not writing.done()  # no PUBACK yet: the batch is not delivered
        assert collector.count() == 10  # and no more than the window went out
        proxy.flowing.set()
        assert await asyncio.wait_for(writing, 10) == []
    finally:
        await sink.close()
    received = await collector.settled(at_least=50)
    assert [json.loads(payload)["i"] for _, payload, _ in received] == list(range(50))


async def test_a_connection_lost_mid_batch_is_retryable_then_delivered(
    mosquitto: servers.Mosquitto, proxy: Proxy, ns: str, collect: Any
) -> None:
    collector = collect(mosquitto, ns)
    sink = make_sink(f"mqtt://127.0.0.1:{proxy.port}", topic=f"{ns}/{{topic}}", max_inflight=20)
    await sink.connect()
    try:
        proxy.flowing.clear()
        batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(100)]
        writing = asyncio.ensure_future(sink.write(batch))
        await collector.settled(at_least=20, quiet=0.3, limit=5)
        proxy.cut()
        with pytest.raises(RetryableError, match=r"unacknowledged.*sent again"):
            await asyncio.wait_for(writing, 10)
        proxy.flowing.set()
        assert await write_until_delivered(sink, batch) == []
    finally:
        await sink.close()
    received = await collector.settled(at_least=100)
    # At least once: the first 20 went out twice, everything arrived.
    assert {json.loads(p)["i"] for _, p, _ in received} == set(range(100))


async def test_a_batch_retried_after_a_lost_connection_leaves_out_what_was_acked(
    mosquitto: servers.Mosquitto, proxy: Proxy, ns: str, collect: Any
) -> None:
    collector = collect(mosquitto, ns)
    sink = make_sink(f"mqtt://127.0.0.1:{proxy.port}", topic=f"{ns}/{{topic}}", max_inflight=10)
    await sink.connect()
    try:
        batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(1000)]
        # The PUBACKs after the first 300 or so (4 bytes each) are held, then the connection
        # cut: held at the relay, as the collector may see the messages well after the sink
        # had its PUBACKs.
        proxy.hold_after = proxy.answered + 300 * 4
        writing = asyncio.ensure_future(sink.write(batch))
        await collector.settled(at_least=300, quiet=0.3, limit=10)
        assert not proxy.flowing.is_set() and not writing.done()
        proxy.cut()
        with pytest.raises(RetryableError, match=r"unacknowledged"):
            await asyncio.wait_for(writing, 10)
        proxy.hold_after = None
        proxy.flowing.set()
        assert await write_until_delivered(sink, batch) == []
    finally:
        await sink.close()
    received = await collector.settled(at_least=1000)
    assert {json.loads(p)["i"] for _, p, _ in received} == set(range(1000))
    # Sent again: only what got no PUBACK (at most the window of 10, plus PUBACKs that were
    # on their way); the whole batch went again before, the first 300 and more twice.
    assert len(received) <= 1000 + 10 + 10


async def test_a_stopped_broker_is_retryable_and_everything_arrives(
    mosquitto_factory: Any, ns: str, collect: Any
) -> None:
    broker = mosquitto_factory()
    collector = collect(broker, ns)
    sink = make_sink(broker.url, topic=f"{ns}/{{topic}}")
    await sink.connect()
    try:
        batch = [FlowFile.create("s", json.dumps({"i": i}).encode()) for i in range(300)]
        assert await sink.write(batch[:100]) == []
        await collector.settled(at_least=100)
        broker.kill()
        with pytest.raises(RetryableError):
            await sink.write(batch[100:])
        broker.start()
        # kill -9 lost the broker's record of the collector's session: let it subscribe anew.
        await collector.connected()
        assert await write_until_delivered(sink, batch[100:]) == []
    finally:
        await sink.close()
    received = await collector.settled(at_least=300)
    assert {json.loads(p)["i"] for _, p, _ in received} == set(range(300))


async def test_no_broker_at_connect_is_retryable() -> None:
    sink = make_sink(f"mqtt://127.0.0.1:{servers.free_port()}", username="gw", password="s3cret-pw")
    with pytest.raises(RetryableError) as caught:
        await sink.connect()
    assert "127.0.0.1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    await sink.close()
    await sink.close()


async def test_a_persistent_session_is_resumed(mosquitto: servers.Mosquitto, ns: str) -> None:
    for clean, expected in ((False, [False, True]), (True, [False, False])):
        seen = []
        for _ in range(2):
            sink = make_sink(
                mosquitto.url, client_id=f"{ns}-{clean}", clean_session=clean, topic=f"{ns}/x"
            )
            await sink.connect()
            assert await sink.write([FlowFile.create("s", b"1")]) == []
            seen.append(sink.status()["session_present"])
            await sink.close()
        assert seen == expected, clean


async def test_topic_template_payload_and_user_properties(
    mosquitto: servers.Mosquitto, ns: str, collect: Any
) -> None:
    collector = collect(mosquitto, ns)
    sink = make_sink(
        mosquitto.url, topic=f"{ns}/site/{{gateway}}/{{topic}}", user_properties=True, retain=False
    )
    await sink.connect()
    ff = FlowFile.create("sensors/a/telemetry", b"\x00\xffbinary", {"site": "north", "q": "1"})
    try:
        assert await sink.write([ff]) == []
    finally:
        await sink.close()
    [(topic, payload, props)] = await collector.settled(at_least=1)
    assert topic == f"{ns}/site/pi-01/sensors/a/telemetry"
    assert payload == b"\x00\xffbinary"
    assert props == {"id": ff.id, "site": "north", "q": "1"}


async def test_invalid_topics_are_refused_alone(
    mosquitto: servers.Mosquitto, ns: str, collect: Any
) -> None:
    collector = collect(mosquitto, ns)
    sink = make_sink(mosquitto.url, topic=f"{ns}/{{topic}}")
    await sink.connect()
    batch = [
        FlowFile.create("ok/1", b"1"),
        FlowFile.create("bad/+/x", b"2"),
        FlowFile.create("bad/#", b"3"),
        FlowFile.create("ok/2", b"4"),
        FlowFile.create("bad/\udc80", b"5"),
    ]
    try:
        rejected = await sink.write(batch)
    finally:
        await sink.close()
    assert [r.flowfile.id for r in rejected] == [batch[1].id, batch[2].id, batch[4].id]
    assert "not a valid topic name" in rejected[0].reason
    received = await collector.settled(at_least=2)
    assert [t for t, _, _ in received] == [f"{ns}/ok/1", f"{ns}/ok/2"]


async def test_topics_of_the_broker_are_dead_lettered_alone(
    mosquitto: servers.Mosquitto, ns: str, collect: Any
) -> None:
    # A {topic} template with what a source subscribed to $SYS/# read: Mosquitto answers a
    # client's PUBLISH to $SYS... or $share... with 0x87 under MQTT 5, and under MQTT 3.1.1
    # acknowledges it and drops it, so each was reported delivered and lost.
    collector = collect(mosquitto, ns)
    sink = make_sink(mosquitto.url, topic="{topic}", protocol=4)
    await sink.connect()
    batch = [
        FlowFile.create(f"{ns}/ok/1", b"1"),
        FlowFile.create("$SYS/broker/uptime", b"2"),
        FlowFile.create("$share/g/x", b"3"),
        FlowFile.create(f"{ns}/ok/2", b"4"),
    ]
    try:
        rejected = await sink.write(batch)
    finally:
        await sink.close()
    assert [r.flowfile.id for r in rejected] == [batch[1].id, batch[2].id]
    assert "'$SYS/broker/uptime' is the broker's topic ($SYS, $share)" in rejected[0].reason
    received = await collector.settled(at_least=2)
    assert [t for t, _, _ in received] == [f"{ns}/ok/1", f"{ns}/ok/2"]


async def test_characters_a_broker_refuses_are_dead_lettered_alone(
    mosquitto: servers.Mosquitto, ns: str, collect: Any
) -> None:
    # Mosquitto closes the connection on a control character or a Unicode non-character
    # in a topic or a user property: sent, such a FlowFile failed its batch on every try.
    collector = collect(mosquitto, ns)
    sink = make_sink(mosquitto.url, topic=f"{ns}/{{topic}}", user_properties=True, timeout="3s")
    await sink.connect()
    batch = [
        FlowFile.create("ok/1", b"1", {"unit": "\u00b0C"}),
        FlowFile.create("bad/line\nfeed", b"2"),
        FlowFile.create("bad/\x85", b"3"),
        FlowFile.create("bad/\uffff", b"4"),
        FlowFile.create("ok/attr", b"5", {"note": "tab\there"}),
        FlowFile.create("ok/\u00e9\U0001f600", b"6"),
    ]
    try:
        rejected = await sink.write(batch)
    finally:
        await sink.close()
    assert [r.flowfile.id for r in rejected] == [b.id for b in batch[1:5]]
    assert "U+000A" in rejected[0].reason
    assert "'note'" in rejected[3].reason
    received = await collector.settled(at_least=2)
    assert [t for t, _, _ in received] == [f"{ns}/ok/1", f"{ns}/ok/\u00e9\U0001f600"]


async def test_an_attribute_too_long_for_a_user_property_is_dead_lettered_alone(
    mosquitto: servers.Mosquitto, ns: str, collect: Any
) -> None:
    # A user property's key and value each have a 2-byte length: a longer one raised
    # struct.error out of write, and the sink crashed on that batch for ever.
    collector = collect(mosquitto, ns)
    sink = make_sink(mosquitto.url, topic=f"{ns}/{{topic}}", user_properties=True)
    await sink.connect()
    batch = [
        FlowFile.create("long/key", b"1", {"k" * 65536: "v"}),
        FlowFile.create("long/value", b"2", {"k": "v" * 65536}),
        FlowFile.create("ok/1", b"3", {"k": "v" * 65535}),
    ]
    try:
        rejected = await sink.write(batch)
    finally:
        await sink.close()
    assert [r.flowfile.id for r in rejected] == [batch[0].id, batch[1].id]
    assert rejected[0].reason == (
        "mqtt: an attribute (a user property) is longer than 65535 bytes, the most MQTT takes"
    )
    received = await collector.settled(at_least=1)
    assert [t for t, _, _ in received] == [f"{ns}/ok/1"]


async def test_a_broker_that_takes_qos_0_only_is_a_refusal(
    mosquitto_factory: Callable[..., servers.Mosquitto],
) -> None:
    # Mosquitto's max_qos 0 says Maximum QoS 0 in its CONNACK and closes the connection on
    # a QoS 1 PUBLISH: the sink sent the same batch again for good, 'the connection was
    # closed', and everything behind it waited.
    broker = mosquitto_factory(options="max_qos 0")
    sink = make_sink(broker.url, topic="q/{topic}")
    try:
        with pytest.raises(PermanentError) as refused:
            await sink.connect()
    finally:
        await sink.close()
    assert str(refused.value) == (
        f"mqtt://127.0.0.1:{broker.port} refused us: it takes QoS 0 at most (its Maximum QoS;"
        " Mosquitto's max_qos), and the sink publishes at QoS 1 (at least once): raise it"
        " there"
    )


async def test_mqtt_3_1_1(mosquitto: servers.Mosquitto, ns: str, collect: Any) -> None:
    collector = collect(mosquitto, ns)
    sink = make_sink(mosquitto.url, topic=f"{ns}/{{topic}}", protocol=4)
    await sink.connect()
    try:
        batch = [FlowFile.create("s", str(i).encode()) for i in range(100)]
        assert await sink.write(batch) == []
    finally:
        await sink.close()
    assert len(await collector.settled(at_least=100)) == 100


# --- TLS ----------------------------------------------------------------------------------


async def test_tls_with_a_client_certificate(
    mosquitto_tls: servers.Mosquitto, ns: str, collect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    collector = collect(mosquitto_tls, ns)
    sink = make_sink(
        mosquitto_tls.url,
        topic=f"{ns}/{{topic}}",
        ca_file=str(mosquitto_tls.ca_file),
        cert_file=str(mosquitto_tls.cert_file),
        key_file=str(mosquitto_tls.key_file),
        password="s3cret-pw",
        username="gw",
    )
    await sink.connect()
    try:
        batch = [FlowFile.create("s", str(i).encode()) for i in range(200)]
        assert await sink.write(batch) == []
    finally:
        await sink.close()
    assert len(await collector.settled(at_least=200)) == 200
    assert "s3cret-pw" not in caplog.text


async def test_tls_with_a_combined_pem_as_cert_file_alone(
    mosquitto_tls: servers.Mosquitto, ns: str, collect: Any, tmp_path: Any
) -> None:
    # load_cert_chain(cert, None) reads the key from the certificate file, so a combined
    # PEM in cert_file worked; a check of the same day refused a cert_file without key_file.
    assert mosquitto_tls.cert_file is not None and mosquitto_tls.key_file is not None
    combined = tmp_path / "client-and-key.pem"
    combined.write_bytes(mosquitto_tls.cert_file.read_bytes() + mosquitto_tls.key_file.read_bytes())
    collector = collect(mosquitto_tls, ns)
    sink = make_sink(
        mosquitto_tls.url,
        topic=f"{ns}/{{topic}}",
        ca_file=str(mosquitto_tls.ca_file),
        cert_file=str(combined),
    )
    await sink.connect()
    try:
        assert await sink.write([FlowFile.create("s", b"1")]) == []
    finally:
        await sink.close()
    assert len(await collector.settled(at_least=1)) == 1
    # A certificate alone holds no key: said at the config check, naming the file.
    _, problems = config_problems(
        url=mosquitto_tls.url,
        ca_file=str(mosquitto_tls.ca_file),
        cert_file=str(mosquitto_tls.cert_file),
    )
    assert problems == [
        f"sinks.central.cert_file: {mosquitto_tls.cert_file} holds no private key: set"
        " key_file, or put the key in this file after the certificate (PEM)"
    ]


async def test_tls_certificates_refused_either_side_are_permanent(
    mosquitto_tls: servers.Mosquitto, tmp_path: Any
) -> None:
    # The broker requires a client certificate. With TLS 1.3 its alert races with our
    # CONNECT and mostly arrives as a bare reset: it must be recognised every time.
    for _ in range(5):
        anonymous = make_sink(mosquitto_tls.url, ca_file=str(mosquitto_tls.ca_file))
        with pytest.raises(PermanentError, match="refused our TLS client certificate"):
            await anonymous.connect()
        await anonymous.close()
    # A broker certificate signed by a CA we were not told to trust.
    other = servers.make_pki(tmp_path / "other")
    untrusting = make_sink(
        mosquitto_tls.url,
        ca_file=str(other.ca_file),
        cert_file=str(mosquitto_tls.cert_file),
        key_file=str(mosquitto_tls.key_file),
    )
    with pytest.raises(PermanentError, match=r"certificate is not trusted.*check ca_file"):
        await untrusting.connect()
    await untrusting.close()
    # TLS files that cannot be read, or whose path holds a NUL (a ValueError crashed it).
    for ca_file in (str(tmp_path / "nowhere.pem"), "/etc/ca\0.pem"):
        missing = make_sink(mosquitto_tls.url, ca_file=ca_file)
        with pytest.raises(PermanentError, match="cannot use the TLS files"):
            await missing.connect()
        await missing.close()


class PasswordMosquitto(servers.Mosquitto):
    """Mosquitto that takes only the user `gw` with the password `s3cret-pw`."""

    def setup(self) -> None:
        super().setup()
        passwords = self.dir / "passwords"
        subprocess.run(
            [servers.require("mosquitto_passwd"), "-b", "-c", str(passwords), "gw", "s3cret-pw"],
            check=True,
            capture_output=True,
        )
        passwords.chmod(0o644)  # the broker reads it as the mosquitto user
        conf = self.config_file.read_text().replace("allow_anonymous true", "allow_anonymous false")
        self.config_file.write_text(f"{conf}password_file {passwords}\n")


@pytest.fixture(scope="module")
def password_broker(server_workspace: servers.Workspace) -> Iterator[PasswordMosquitto]:
    try:
        server = server_workspace._started(PasswordMosquitto(server_workspace))
    except servers.ServerError as err:
        pytest.fail(str(err), pytrace=False)
    yield server
    server_workspace.discard(server)


@pytest.mark.parametrize("protocol", [5, 4])
async def test_a_wrong_password_is_permanent_at_connect_and_retried_while_running(
    password_broker: PasswordMosquitto, ns: str, protocol: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = password_broker.url
    for keys in ({"username": "gw", "password": "wrong-pw"}, {}):
        wrong = make_sink(url, protocol=protocol, **keys)
        with pytest.raises(PermanentError, match=r"(?i)not authori[sz]ed") as caught:
            await wrong.connect()
        assert "wrong-pw" not in str(caught.value)
        # From write() (a reconnect while running) the same refusal is retried: the
        # operator may be changing the broker's password file.
        with pytest.raises(RetryableError, match=r"(?i)not authori[sz]ed"):
            await wrong.write([FlowFile.create("s", b"1")])
        await wrong.close()
    right = make_sink(
        url, protocol=protocol, username="gw", password="s3cret-pw", topic=f"{ns}/{{topic}}"
    )
    await right.connect()
    try:
        assert await right.write([FlowFile.create("s", b"1")]) == []
    finally:
        await right.close()
    assert "wrong-pw" not in caplog.text and "s3cret-pw" not in caplog.text


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"url": "tcp://broker:1883"}, "url: 'tcp://broker:1883' is not an mqtt://"),
        ({"url": "mqtt://b", "ca_file": "/ca.pem"}, "ca_file: needs TLS"),
        ({"url": "mqtts://b", "key_file": "/c.key"}, "key_file needs the cert_file whose key"),
        ({"url": "mqtt://b", "topic": "site/{site}/{topic}"}, "unknown placeholder {site}"),
        ({"url": "mqtt://b", "topic": "site/+/{topic}"}, "no wildcards"),
        ({"url": "mqtt://b", "topic": "x/{topic!r}"}, "{topic!r} is no placeholder; write {topic}"),
        ({"url": "mqtt://b", "topic": "a/{gateway:>9}/{topic}"}, "{gateway:>9} is no placeholder"),
        ({"url": "mqtt://b", "topic": "a/{}/{topic}"}, "unknown placeholder {}"),
        ({"url": "mqtt://b", "topic": ""}, "topic: must not be empty"),
        ({"url": "mqtt://b", "max_inflight": 0}, "max_inflight: must be between 1 and 65535"),
        ({"url": "mqtt://b", "protocol": 3}, "3 is not one of 5, 4"),
        ({"url": "mqtt://b", "protocol": 4, "user_properties": True}, "needs MQTT 5"),
        ({"url": "mqtt://b", "qos": 2}, "unknown key"),
        ({"url": "mqtt://b", "session_expiry": "200000d"}, "session_expiry: must be between 0s"),
        ({"url": "mqtt://b", "connect_timeout": "0s"}, "connect_timeout: must be more than 0s"),
        ({"url": "mqtt://b", "timeout": "0s"}, "sinks.central.timeout: must be more than 0s"),
    ],
)
def test_config_problems_are_reported(keys: dict[str, Any], message: str) -> None:
    _, problems = config_problems(**keys)
    assert any(message in p for p in problems), problems


def test_a_nul_in_the_topic_is_said_once_and_not_called_a_wildcard() -> None:
    assert config_problems(url="mqtt://b", topic="a\x00b/{topic}")[1] == [
        "sinks.central.topic: 'a\\x00b/{topic}' holds U+0000, a control character or Unicode"
        " non-character that MQTT brokers refuse"
    ]


def test_the_timeouts_bound_is_in_the_reference() -> None:
    # checked in check() alone, the bound was missing from docs/reference/sink-mqtt.md
    rows = {k.path: k for k in reference.keys(MqttSinkConfig)}
    assert rows["connect_timeout"].bounds == rows["timeout"].bounds == "> 0s"


def test_defaults() -> None:
    sink = make_sink("mqtt://broker")
    assert sink.client_id == "edge-stream-pi-01-central"
    assert sink._topic("sensors/a") == "site/pi-01/sensors/a"
    assert (sink.host, sink.port, sink.tls) == ("broker", 1883, False)
    assert make_sink("mqtts://broker").port == 8883

"""The publishing client (gateway.mqtt.client): PUBACK tracking on a real Mosquitto, and
refusal codes, Receive Maximum and Maximum Packet Size against a scripted broker."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.mqtt.client import Client, ConnectRefused, connect_refusal, user_properties
from gateway.mqtt.wire import _read_varint, _varint
from gateway.sinks.mqtt import MqttSink
from tests import servers
from tests.sinks.contract import config_problems, unique_name

pytestmark = pytest.mark.integration


class Received:
    def __init__(self) -> None:
        self.pubacks: list[tuple[int, int]] = []
        self.messages: list[tuple[str, bytes, int, dict[int, Any], int | None]] = []
        self.changed = asyncio.Event()

    def on_puback(self, mid: int, code: int) -> None:
        self.pubacks.append((mid, code))
        self.changed.set()

    def deliver(self, *message: Any) -> None:
        self.messages.append(message)
        self.changed.set()

    async def until(self, predicate: Any) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.mark.parametrize("protocol", [5, 4])
async def test_every_qos1_publish_gets_its_puback_and_arrives(
    mosquitto: servers.Mosquitto, protocol: int
) -> None:
    ns = unique_name()
    got = Received()
    client = Client(on_puback=got.on_puback, deliver=got.deliver)
    present = await client.open(
        "127.0.0.1",
        mosquitto.port,
        client_id=f"{ns}-c",
        clean_start=True,
        keepalive=30,
        protocol=protocol,
    )
    try:
        assert present is False and client.connected
        assert await client.subscribe([(f"{ns}/#", 1)]) == [1]
        props = user_properties([("id", "7")]) if protocol == 5 else b""
        mids = [
            client.publish_qos1(f"{ns}/{i}".encode(), str(i).encode(), properties=props)
            for i in range(300)
        ]
        assert len(set(mids)) == 300
        await got.until(lambda: len(got.pubacks) == 300 and len(got.messages) == 300)
        assert sorted(got.pubacks) == sorted((mid, 0) for mid in mids)
        assert [m[1] for m in got.messages] == [str(i).encode() for i in range(300)]
        if protocol == 5:
            assert got.messages[0][3][0x26] == [("id", "7")]
        client.ack([(m[4], 1) for m in got.messages])
    finally:
        client.close()


# --- a scripted broker -----------------------------------------------------------------


class ScriptedBroker:
    """An MQTT 5 broker that answers CONNECT with `connack` (code, properties) and holds
    PUBACKs back until `hold` PUBLISHes are unacknowledged or the client goes quiet; the
    PUBACK reason code for a topic comes from `refuse` (topic prefix -> code)."""

    def __init__(
        self, *, code: int = 0, props: bytes = b"", hold: int = 1, refuse: dict[str, int]
    ) -> None:
        self.code, self.props, self.hold, self.refuse = code, props, hold, refuse
        self.most_unacked = 0
        self.topics: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _packet(self, reader: asyncio.StreamReader, quiet: float) -> tuple[int, bytes]:
        first = (await asyncio.wait_for(reader.readexactly(1), quiet))[0]
        raw = b""
        while True:
            raw += await reader.readexactly(1)
            if not raw[-1] & 0x80:
                break
        length, _ = _read_varint(raw, 0)
        return first, await reader.readexactly(length)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unacked: list[tuple[int, int]] = []
        try:
            first, _ = await self._packet(reader, 10)
            assert first == 0x10
            writer.write(bytes((0x20,)) + _varint(3 + len(self.props)))
            writer.write(bytes((0, self.code)) + _varint(len(self.props)) + self.props)
            while True:
                try:
                    first, body = await self._packet(reader, 0.2)
                except TimeoutError:
                    first, body = 0, b""  # the client went quiet: release what is held
                if first >> 4 == 3:
                    n = struct.unpack_from("!H", body)[0]
                    topic = body[2 : 2 + n].decode()
                    self.topics.append(topic)
                    mid = struct.unpack_from("!H", body, 2 + n)[0]
                    code = next((c for p, c in self.refuse.items() if topic.startswith(p)), 0)
                    unacked.append((mid, code))
                    self.most_unacked = max(self.most_unacked, len(unacked))
                if unacked and (len(unacked) >= self.hold or not first):
                    for mid, code in unacked:
                        writer.write(b"\x40\x03" + struct.pack("!HB", mid, code))
                    unacked.clear()
                if first == 0xE0:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def sink_for(port: int, **keys: Any) -> MqttSink:
    config, problems = config_problems(
        "mqtt", "central", url=f"mqtt://127.0.0.1:{port}", topic="t/{topic}", **keys
    )
    assert problems == []
    return MqttSink(config, Context(name="central", kind="sink", gateway_id="pi-01"))


def batch(*topics: str, size: int = 1) -> list[FlowFile]:
    return [FlowFile.create(topic, b"x" * size) for topic in topics]


@pytest.fixture
async def refusing() -> AsyncIterator[ScriptedBroker]:
    async with ScriptedBroker(refuse={"t/deny": 0x87, "t/odd": 0xA0, "t/busy": 0x97}) as b:
        yield b


async def test_puback_refusals_are_dead_lettered_and_quota_retried(
    refusing: ScriptedBroker,
) -> None:
    sink = sink_for(refusing.port)
    await sink.connect()
    try:
        ffs = batch("ok1", "deny", "ok2", "odd")
        rejected = await sink.write(ffs)
        assert [(r.flowfile, r.reason) for r in rejected] == [
            (ffs[1], "mqtt: the broker refused it: Not authorized (0x87)"),
            (ffs[3], "mqtt: the broker refused it: error (0xa0)"),
        ]
        with pytest.raises(RetryableError, match=r"refused 1 messages for now.*0x97"):
            await sink.write(batch("ok", "busy"))
        assert await sink.write(batch("ok3")) == []  # the connection is still usable
    finally:
        await sink.close()


@pytest.mark.parametrize(("receive_maximum", "max_inflight", "bound"), [(3, 100, 3), (0, 4, 4)])
async def test_in_flight_is_bounded_by_receive_maximum_and_our_cap(
    receive_maximum: int, max_inflight: int, bound: int
) -> None:
    props = b"\x21" + struct.pack("!H", receive_maximum) if receive_maximum else b""
    async with ScriptedBroker(props=props, hold=1000, refuse={}) as broker:
        sink = sink_for(broker.port, max_inflight=max_inflight)
        await sink.connect()
        try:
            assert await sink.write(batch(*(f"m{i}" for i in range(20)))) == []
        finally:
            await sink.close()
    assert broker.most_unacked == bound
    assert broker.topics == [f"t/m{i}" for i in range(20)]


async def test_the_brokers_maximum_packet_size_is_honoured() -> None:
    props = b"\x27" + struct.pack("!I", 200)
    async with ScriptedBroker(props=props, refuse={}) as broker:
        sink = sink_for(broker.port)
        await sink.connect()
        try:
            small, large = batch("small", size=10) + batch("large", size=500)
            rejected = await sink.write([small, large])
        finally:
            await sink.close()
    assert [(r.flowfile, r.reason) for r in rejected] == [
        (large, "mqtt: larger than the broker's maximum packet size (200 bytes)")
    ]
    assert broker.topics == ["t/small"]


@pytest.mark.parametrize(
    ("code", "permanent", "text"),
    [
        (0x87, True, "Connection Refused: Not authorized (CONNACK code 0x87)"),
        (0x86, True, "Connection Refused: Bad User Name or Password (CONNACK code 0x86)"),
        (0x89, False, "code 137 (Connection Refused: Server busy)"),
    ],
)
async def test_connack_refusals_keep_their_one_line_messages(
    code: int, permanent: bool, text: str
) -> None:
    async with ScriptedBroker(code=code, refuse={}) as broker:
        client = Client()
        with pytest.raises(ConnectRefused) as caught:
            await client.open(
                "127.0.0.1", broker.port, client_id="c", clean_start=True, keepalive=30
            )
        assert (connect_refusal(caught.value) or str(caught.value)) == text
        assert not client.connected
        sink = sink_for(broker.port)
        expected = PermanentError if permanent else RetryableError
        with pytest.raises(expected, match="Connection Refused"):
            await sink.connect()
        await sink.close()

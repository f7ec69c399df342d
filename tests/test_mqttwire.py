"""The MQTT 5 subscriber: packet parsing (pure) and QoS 2, user properties on a real broker."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqttwire import ConnectRefused, Subscriber, _packet, _utf8, _varint


def publish_packet(topic: str, payload: bytes, qos: int, mid: int, props: bytes = b"") -> bytes:
    body = _utf8(topic) + (struct.pack("!H", mid) if qos else b"") + _varint(len(props)) + props
    return _packet(0x30 | (qos << 1) | 0x08, body + payload)


class Collector:
    def __init__(self) -> None:
        self.got: list[tuple[Any, ...]] = []
        self.lost: list[str] = []
        self.arrived = asyncio.Event()

    def deliver(self, *args: Any) -> None:
        self.got.append(args)
        self.arrived.set()

    def on_lost(self, reason: str) -> None:
        self.lost.append(reason)


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


async def test_packets_split_anywhere_are_parsed_once_each() -> None:
    c = Collector()
    sub = Subscriber(c.deliver, c.on_lost)
    sub.connection_made(FakeTransport())  # type: ignore[arg-type]
    user = b"\x26" + _utf8("site") + _utf8("north") + b"\x23\x00\x05"  # user property, alias 5
    big = b"x" * 300  # a remaining length of two bytes
    stream = publish_packet("a/b", b"one", 1, 7, user) + publish_packet(
        "", big, 2, 8, b"\x23\x00\x05"
    )
    for i in range(len(stream)):
        sub.data_received(stream[i : i + 1])
    assert c.got == [
        ("a/b", b"one", 1, True, False, [("site", "north")], 7),
        ("a/b", big, 2, True, False, None, 8),
    ]
    assert c.lost == []


async def test_a_malformed_packet_drops_the_connection() -> None:
    c = Collector()
    sub = Subscriber(c.deliver, c.on_lost)
    sub.connection_made(FakeTransport())  # type: ignore[arg-type]
    sub.data_received(b"\x30\x05\x00\x09ab")  # topic length beyond the packet
    sub.data_received(b"\x30\x03\x00\x01\xff")
    assert c.lost and "malformed" in c.lost[0]


def test_which_refusals_are_permanent() -> None:
    assert ConnectRefused(0x86, "bad user name or password").permanent
    assert ConnectRefused(0x87, None).permanent
    assert not ConnectRefused(0x88, None).permanent  # server unavailable
    assert "0x86" in str(ConnectRefused(0x86, "bad user name or password"))


async def open_sub(mosquitto: Any, c: Collector, client_id: str) -> Subscriber:
    sub = Subscriber(c.deliver, c.on_lost)
    await sub.open(
        host="127.0.0.1",
        port=mosquitto.port,
        client_id=client_id,
        clean_start=False,
        keepalive=30,
        session_expiry=300,
        receive_maximum=100,
    )
    assert await sub.subscribe([("wire/#", 2)]) == [2]
    return sub


def paho_publish(mosquitto: Any, qos: int, user: list[tuple[str, str]]) -> None:
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="wire-pub", protocol=paho.MQTTv5
    )
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = user
    client.publish("wire/x", b"payload", qos=qos, properties=props).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


async def wait_count(c: Collector, n: int) -> None:
    async with asyncio.timeout(10):
        while len(c.got) < n:
            c.arrived.clear()
            await c.arrived.wait()


async def test_qos2_and_user_properties_against_mosquitto(mosquitto: Any) -> None:
    c = Collector()
    sub = await open_sub(mosquitto, c, "wire-1")
    await asyncio.to_thread(paho_publish, mosquitto, 2, [("line", "3"), ("unit", "C")])
    await wait_count(c, 1)
    topic, payload, qos, dup, retain, user, mid = c.got[0]
    assert (topic, payload, qos, dup, retain) == ("wire/x", b"payload", 2, False, False)
    assert user == [("line", "3"), ("unit", "C")]
    sub.ack([(mid, 2)])  # PUBREC; the broker answers PUBREL and we complete with PUBCOMP
    await asyncio.sleep(0.3)
    sub.close()
    sub.close()
    # acknowledged: a resumed session brings nothing back
    again = Collector()
    sub2 = await open_sub(mosquitto, again, "wire-1")
    await asyncio.sleep(0.5)
    assert again.got == []
    sub2.close()


async def test_unacknowledged_messages_come_back_with_dup(mosquitto: Any) -> None:
    c = Collector()
    sub = await open_sub(mosquitto, c, "wire-2")
    await asyncio.to_thread(paho_publish, mosquitto, 1, [])
    await wait_count(c, 1)
    sub.close()
    again = Collector()
    sub2 = await open_sub(mosquitto, again, "wire-2")
    await wait_count(again, 1)
    assert again.got[0][1] == b"payload" and again.got[0][3] is True  # DUP set
    sub2.ack([(again.got[0][6], 1)])
    sub2.close()

"""The MQTT 5 subscriber: packet parsing (pure) and QoS 2, user properties on a real broker."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt.wire import ConnectRefused, Subscriber, _packet, _utf8, _varint

pytestmark = pytest.mark.integration


def publish_packet(topic: str, payload: bytes, qos: int, mid: int, props: bytes = b"") -> bytes:
    body = _utf8(topic) + (struct.pack("!H", mid) if qos else b"") + _varint(len(props)) + props
    return _packet(0x30 | (qos << 1) | 0x08, body + payload)


class Collector:
    def __init__(self) -> None:
        self.got: list[tuple[Any, ...]] = []
        self.rejected: list[tuple[Any, ...]] = []
        self.lost: list[str] = []
        self.arrived = asyncio.Event()

    def deliver(self, *args: Any) -> None:
        self.got.append(args)
        self.arrived.set()

    def reject(self, *args: Any) -> None:
        self.rejected.append(args)

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

    def close(self) -> None:
        pass


def fake_sub(c: Collector, **options: Any) -> tuple[Subscriber, FakeTransport]:
    sub = Subscriber(c.deliver, c.on_lost, reject=c.reject, **options)
    transport = FakeTransport()
    sub.connection_made(transport)  # type: ignore[arg-type]
    return sub, transport


async def test_packets_split_anywhere_are_parsed_once_each() -> None:
    c = Collector()
    sub = Subscriber(c.deliver, c.on_lost)
    sub.connection_made(FakeTransport())  # type: ignore[arg-type]
    user = b"\x26" + _utf8("site") + _utf8("north") + b"\x02\x00\x00\x00\x3c"  # expiry 60
    big = b"x" * 300  # a remaining length of two bytes
    stream = publish_packet("a/b", b"one", 1, 7, user) + publish_packet("a/b", big, 2, 8)
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


async def test_pubrel_gets_a_pubcomp_with_its_packet_id_and_an_empty_one_is_refused() -> None:
    c = Collector()
    sub, transport = fake_sub(c)
    sub.data_received(b"\x62\x02\x01\x07")
    assert transport.written == b"\x70\x02\x01\x07"
    released: list[int] = []
    sub2, transport2 = fake_sub(c, release=released.append)
    sub2.data_received(b"\x62\x03\x00\x09\x00")  # with a reason code: still id 9
    assert released == [9] and transport2.written == b""  # PUBCOMP waits for the store
    sub2.complete([9])
    assert transport2.written == b"\x70\x02\x00\x09"
    sub3, transport3 = fake_sub(c)
    sub3.data_received(b"\x62\x00")
    assert c.lost and "PUBREL without a packet id" in c.lost[-1]
    assert transport3.written == b"\xe0\x01\x81"  # DISCONNECT, malformed packet; no PUBCOMP


async def test_forbidden_publish_is_rejected_with_its_raw_bytes_and_the_connection_stays() -> None:
    c = Collector()
    sub, _ = fake_sub(c)
    bad_user = b"\x26" + _utf8("ok") + b"\x00\x02\xc3\x28"  # value: invalid UTF-8
    packets = [
        publish_packet("a/1", b"p1", 1, 5, bad_user),
        publish_packet("a/\x002", b"p2", 1, 6),  # U+0000 in the topic
        publish_packet("a/3", b"p3", 1, 0),  # packet id 0 at QoS 1
        publish_packet("a/4", b"p4", 2, 7, b"\x26\x00\x01k\x00\x05"),  # pair cut short
        _packet(0x32, b"\x00\x03a/\xff\x00\x08\x00p5"),  # topic not UTF-8
        publish_packet("a/ok", b"fine", 1, 8),
    ]
    sub.data_received(b"".join(packets))
    assert c.lost == []
    assert [g[:3] for g in c.got] == [("a/ok", b"fine", 1)]
    reasons = [r[5] for r in c.rejected]
    assert "user property?) is not valid UTF-8" in reasons[0]
    assert "U+0000" in reasons[1]
    assert "packet id 0" in reasons[2]
    assert "properties cannot be read" in reasons[3]
    assert "topic is not valid UTF-8" in reasons[4]
    assert [r[4] for r in c.rejected] == [5, 6, None, 7, 8]
    assert c.rejected[0][1] == packets[0]  # the raw packet, whole
    assert all(r[0].startswith("a/") or r[0] == "" for r in c.rejected)


async def test_a_topic_alias_is_a_protocol_error_since_we_allow_none() -> None:
    """No Topic Alias Maximum in our CONNECT: MQTT 5 forbids the broker to send an alias."""
    c = Collector()
    sub, transport = fake_sub(c)
    sub.data_received(
        publish_packet("a/1", b"p1", 1, 5, b"\x23\x00\x01")  # sets alias 1
        + publish_packet("", b"p2", 1, 6, b"\x23\x00\x01")  # uses it
    )
    assert c.got == [] and c.rejected == []  # nothing read under an alias
    assert c.lost and "topic alias 1" in c.lost[0] and "protocol error" in c.lost[0]
    assert transport.written == b"\xe0\x01\x94"  # DISCONNECT: Topic Alias invalid


async def test_a_packet_larger_than_our_maximum_packet_size_closes_the_connection() -> None:
    c = Collector()
    sub, transport = fake_sub(c, maximum_packet_size=1000)
    sub.data_received(b"\x30\xff\xff\xff\x7f")  # 268 MB announced; nothing more comes
    assert c.lost and "Maximum Packet Size of 1000" in c.lost[0]
    assert transport.written == b"\xe0\x01\x95"  # DISCONNECT: packet too large


async def test_connect_announces_the_maximum_packet_size_and_subscribe_the_retain_handling() -> (
    None
):
    c = Collector()
    sub, transport = fake_sub(c, maximum_packet_size=70000)
    task = asyncio.ensure_future(sub._handshake("cid", False, 30, 60, 100, None, None))
    await asyncio.sleep(0)
    assert b"\x27" + struct.pack("!I", 70000) in transport.written
    sub.data_received(b"\x20\x03\x00\x00\x00")  # CONNACK, no session
    assert await task is False
    transport.written = b""
    sub_task = asyncio.ensure_future(sub.subscribe([("t/#", 1)], retain_handling=1))
    await asyncio.sleep(0)
    assert transport.written.endswith(_utf8("t/#") + b"\x11")  # QoS 1, Retain Handling 1
    sub.data_received(b"\x90\x04\x00\x01\x00\x01")  # SUBACK: granted QoS 1
    assert await sub_task == [1]
    sub.close()


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

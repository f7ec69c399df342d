"""Fuzzing the MQTT 5 client's parser with what a broker might send (hypothesis).

Whatever bytes arrive, in whatever pieces, `Subscriber.data_received` returns: it
delivers, rejects, or closes the connection with a reason (the protocol error path),
and it never raises, never loops without end (a deadline per example) and never
leaves a caller waiting once the connection is gone (CONNACK, SUBACK).
"""

from __future__ import annotations

import asyncio
import struct
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mqtt.wire import ConnectRefused, Subscriber, _packet, _utf8, _varint

pytestmark = pytest.mark.unit

# Bounded and reproducible: a fixed number of examples from a fixed seed, and a deadline
# per example generous enough for a busy Pi, so that only a parser that spins trips it.
FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CONNACK = b"\x20\x03\x00\x00\x00"  # session not present, success, no properties
SUBACK = b"\x90\x04\x00\x01\x00\x01"  # packet id 1 (our first SUBSCRIBE), QoS 1 granted


class Transport:
    """What the Subscriber writes, and how it ended the connection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.ended: str | None = None  # "close" (after a DISCONNECT) or "abort"

    def write(self, data: bytes) -> None:
        assert self.ended is None, "wrote after closing"
        self.written += data

    def is_closing(self) -> bool:
        return self.ended is not None

    def close(self) -> None:
        self.ended = self.ended or "close"

    def abort(self) -> None:
        self.ended = self.ended or "abort"

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Outcome:
    def __init__(self) -> None:
        self.delivered: list[tuple[Any, ...]] = []
        self.rejected: list[tuple[Any, ...]] = []
        self.lost: list[str] = []

    def deliver(self, *args: Any) -> None:
        topic, payload, qos, dup, retain, user, mid = args
        assert isinstance(topic, str) and topic
        assert isinstance(payload, bytes)
        assert qos in (0, 1, 2) and isinstance(dup, bool) and isinstance(retain, bool)
        assert (mid is None) if qos == 0 else (1 <= mid <= 65535)
        assert user is None or all(isinstance(k, str) and isinstance(v, str) for k, v in user)
        self.delivered.append(args)

    def reject(self, *args: Any) -> None:
        topic, raw, qos, _dup, mid, reason = args
        assert isinstance(topic, str) and isinstance(raw, bytes) and raw
        assert qos in (0, 1, 2) and (mid is None or 1 <= mid <= 65535)
        assert reason.startswith("invalid PUBLISH: ")
        self.rejected.append(args)


async def feed(chunks: list[bytes], maximum_packet_size: int = 0) -> Outcome:
    """Feed `chunks` as a broker would after our CONNECT and SUBSCRIBE, then hang up."""
    out = Outcome()
    sub = Subscriber(
        out.deliver, out.lost.append, reject=out.reject, maximum_packet_size=maximum_packet_size
    )
    transport = Transport()
    sub.connection_made(transport)  # type: ignore[arg-type]
    # CONNECT goes out and waits for its CONNACK (keepalive 0: no ping timer).
    handshake = asyncio.ensure_future(sub._handshake("fuzz", True, 0, 0, 10, None, None))
    subscribe = asyncio.ensure_future(sub.subscribe([("a/#", 1)]))
    await asyncio.sleep(0)
    for chunk in chunks:
        if transport.ended is not None:
            break  # a closed transport reads nothing more
        sub.data_received(chunk)  # never raises
        if transport.ended is not None:
            # Closed with a reason, said once; a DISCONNECT with a reason code goes first
            # unless the broker ended it (its DISCONNECT) and we simply drop the socket.
            assert len(out.lost) == 1 and sub.closed_reason == out.lost[0]
            assert not sub.connected
            if transport.ended == "close":
                code = transport.written[-1]
                assert transport.written[-3:-1] == b"\xe0\x01" and code >= 0x80
        else:
            assert out.lost == []
    sub.connection_lost(None)  # the broker hangs up: nobody may wait for ever
    await asyncio.sleep(0)
    assert handshake.done() and subscribe.done()
    if not handshake.cancelled() and handshake.exception() is not None:
        assert isinstance(handshake.exception(), ConnectRefused | ConnectionError)
    if not subscribe.cancelled() and subscribe.exception() is not None:
        assert isinstance(subscribe.exception(), ConnectionError)
    assert len(out.lost) == 1
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# --- what a broker may send -------------------------------------------------------------

text = st.text(st.characters(blacklist_characters="+#\x00"), min_size=1, max_size=20)
pairs = st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=3)


@st.composite
def publishes(draw: st.DrawFn) -> tuple[bytes, tuple[Any, ...]]:
    """A valid PUBLISH and what the Subscriber must deliver for it."""
    topic = draw(text)
    payload = draw(st.binary(min_size=1, max_size=300))
    qos = draw(st.integers(0, 2))
    mid = draw(st.integers(1, 65535)) if qos else None
    dup, retain = draw(st.booleans()), draw(st.booleans())
    user = draw(pairs)
    props = b"".join(b"\x26" + _utf8(k) + _utf8(v) for k, v in user)
    props += draw(st.sampled_from([b"", b"\x01\x01", b"\x02\x00\x00\x00\x3c"]))
    body = _utf8(topic) + (struct.pack("!H", mid) if qos else b"")
    body += _varint(len(props)) + props + payload
    first = 0x30 | (dup << 3) | (qos << 1) | retain
    expected = (topic, payload, qos, bool(dup), bool(retain), user or None, mid)
    return _packet(first, body), expected


control = st.sampled_from(
    [
        CONNACK,
        SUBACK,
        b"\xd0\x00",  # PINGRESP
        b"\x40\x02\x00\x05",  # PUBACK
        b"\x62\x02\x00\x09",  # PUBREL
        b"\x20\x03\x00\x87\x00",  # CONNACK: not authorized
        b"\xe0\x01\x8b",  # DISCONNECT: server shutting down
    ]
)
packet = st.one_of(publishes().map(lambda p: p[0]), control)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Valid packets, then a few bytes flipped, dropped, inserted or the stream cut short."""
    data = bytearray(CONNACK + SUBACK + b"".join(draw(st.lists(packet, min_size=1, max_size=6))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "drop", "insert", "cut"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "drop":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:]
    return bytes(data)


cuts = st.lists(st.integers(0, 10_000), max_size=8)


# --- the properties -----------------------------------------------------------------------


@pytest.mark.timeout(300)
@FUZZ
@given(
    prefix=st.sampled_from([b"", CONNACK, CONNACK + SUBACK]),
    data=st.binary(max_size=400),
    cuts=cuts,
)
def test_arbitrary_bytes_are_parsed_or_close_the_connection(
    prefix: bytes, data: bytes, cuts: list[int]
) -> None:
    asyncio.run(feed(split(prefix + data, cuts)))


@pytest.mark.timeout(300)
@FUZZ
@given(data=mutated(), cuts=cuts, limit=st.sampled_from([0, 64, 512]))
def test_mutated_packets_are_parsed_or_close_the_connection(
    data: bytes, cuts: list[int], limit: int
) -> None:
    asyncio.run(feed(split(data, cuts), maximum_packet_size=limit))


@pytest.mark.timeout(300)
@FUZZ
@given(messages=st.lists(publishes(), min_size=1, max_size=8), cuts=cuts)
def test_valid_publishes_in_any_pieces_are_delivered_exactly(
    messages: list[tuple[bytes, tuple[Any, ...]]], cuts: list[int]
) -> None:
    stream = CONNACK + SUBACK + b"".join(raw for raw, _ in messages)
    out = asyncio.run(feed(split(stream, cuts)))
    assert out.delivered == [expected for _, expected in messages]
    assert out.rejected == []
    assert out.lost == ["the broker closed the connection"]

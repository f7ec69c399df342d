"""A small MQTT 5 subscriber on asyncio, built for the gateway's MQTT source.

Why not gmqtt here: the source must send each PUBACK only after the store has
committed the batch holding the message, and send a whole batch of them in one
write; it must stop reading from the socket when too much is unacknowledged
(Mosquitto 2.0 was seen ignoring the client's Receive Maximum once acks flow);
and every received message costs Python time on a Pi. gmqtt acknowledges when
a per-message handler task returns, so getting this from it meant reaching
into its internals, and its per-message path cost about as much as the rest of
the gateway. This module does only what a subscriber needs: CONNECT (MQTT 5,
persistent session, Receive Maximum, credentials, TLS), SUBSCRIBE, UNSUBSCRIBE, PUBLISH in
at QoS 0/1/2 with user properties, PUBACK/PUBREC out in batches,
PUBREL/PUBCOMP, keepalive and DISCONNECT. Publishing is `gateway.mqtt.client`,
which shares this module's packet code.

What closes the connection and what does not: a packet whose framing cannot be
trusted (a remaining length or topic length that runs past the packet, QoS 3,
a PUBREL without a packet id, a packet larger than the Maximum Packet Size we
announced in CONNECT) closes it, since nothing after it can be read. A PUBLISH
that is framed correctly but carries something MQTT forbids (a topic or user
property that is not valid UTF-8, a topic with U+0000 or a wildcard, properties
that do not parse, packet id 0 at QoS 1/2) is handed to `reject` with the reason
and the raw packet, and the connection stays: one bad message must not stop the
ones behind it, and a broker would otherwise send it again on every reconnect.

Topic aliases: CONNECT announces no Topic Alias Maximum, so the broker may send
none (MQTT 5, 3.3.2.3.4). A PUBLISH with one is a protocol error: DISCONNECT
with reason code 0x94 (Topic Alias invalid), and the source reconnects. So there
is no alias table to bound, and no message is read under a topic we cannot know.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from typing import Any

from gateway.core.errors import error_text

# Packet types (high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# Properties we read in PUBLISH and CONNACK, with how their value is encoded.
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
_PROPERTY_KINDS = {
    0x01: _BYTE,
    0x02: _U32,
    0x03: _STR,
    0x08: _STR,
    0x09: _BIN,
    0x0B: _VARINT,
    0x11: _U32,
    0x12: _STR,
    0x13: _U16,
    0x15: _STR,
    0x16: _BIN,
    0x17: _BYTE,
    0x19: _BYTE,
    0x1A: _STR,
    0x1C: _STR,
    0x1F: _STR,
    0x21: _U16,
    0x22: _U16,
    0x23: _U16,
    0x24: _BYTE,
    0x25: _BYTE,
    0x26: _PAIR,
    0x27: _U32,
    0x28: _BYTE,
    0x29: _BYTE,
    0x2A: _BYTE,
}
USER_PROPERTY = 0x26
TOPIC_ALIAS = 0x23
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F
MAXIMUM_PACKET_SIZE = 0x27

# PUBACK (0x40) and PUBREC (0x50) with remaining length 2: success needs no reason code.
# The reason of a QoS 1/2 PUBLISH with packet id 0 (the source tells it apart by it)
PACKET_ID_0 = "it has packet id 0 at QoS {qos}, which cannot be acknowledged"
ACK_HEADER = {1: b"\x40\x02", 2: b"\x50\x02"}
# the same with room for the packet id: a PUBACK/PUBREC is one big-endian 32-bit word
ACK_WORD = {1: 0x40020000, 2: 0x50020000}

Deliver = Callable[[str, bytes, int, bool, bool, list[tuple[str, str]] | None, int | None], None]
# reject(topic as far as it could be read, the raw packet, qos, dup, packet id, reason)
Reject = Callable[[str, bytes, int, bool, int | None, str], None]


class ProtocolError(Exception):
    """The broker sent something this client cannot accept; the connection is closed.

    `code` is the DISCONNECT reason code sent first: 0x81 (malformed packet) unless
    the broker broke a rule of the protocol in a well-formed packet.
    """

    def __init__(self, message: str, code: int = 0x81) -> None:
        super().__init__(message)
        self.code = code


# CONNACK return (3.1.1) and reason (5) codes, as the refusal messages have always said them.
CONNACK_MESSAGES = {
    1: "Connection Refused: unacceptable protocol version",
    2: "Connection Refused: identifier rejected",
    3: "Connection Refused: broker unavailable",
    4: "Connection Refused: bad user name or password",
    5: "Connection Refused: not authorised",
    128: "Connection Refused: Unspecified error",
    129: "Connection Refused: Malformed Packet",
    130: "Connection Refused: Protocol Error",
    131: "Connection Refused: Implementation specific error",
    132: "Connection Refused: Unsupported Protocol Version",
    133: "Connection Refused: Client Identifier not valid",
    134: "Connection Refused: Bad User Name or Password",
    135: "Connection Refused: Not authorized",
    136: "Connection Refused: Server unavailable",
    137: "Connection Refused: Server busy",
    138: "Connection Refused: Banned",
    140: "Connection Refused: Bad authentication method",
    144: "Connection Refused: Topic Name invalid",
    149: "Connection Refused: Packet too large",
    151: "Connection Refused: Quota exceeded",
    153: "Connection Refused: Payload format invalid",
    154: "Connection Refused: Retain not supported",
    155: "Connection Refused: QoS not supported",
    156: "Connection Refused: Use another server",
    157: "Connection Refused: Server moved",
    159: "Connection Refused: Connection rate exceeded",
}


class ConnectRefused(Exception):
    """The broker answered CONNECT with a failure reason code: its reason string, or what
    the code means when it sent none (Mosquitto sends none: `reason code 0x87` alone was
    all a wrong password gave)."""

    def __init__(self, code: int, reason: str | None) -> None:
        self.code = code
        reason = reason or CONNACK_MESSAGES.get(code, "").removeprefix("Connection Refused: ")
        text = f"the broker refused the connection (reason code 0x{code:02x}"
        super().__init__(text + (f": {reason})" if reason else ")"))

    @property
    def permanent(self) -> bool:
        # bad credentials, not authorized, banned, bad client id, bad auth method
        return self.code in (0x85, 0x86, 0x87, 0x8A, 0x8C)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _varint(len(body)) + body


def _read_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise IndexError
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed variable byte integer")


def parse_properties(data: bytes, pos: int, end: int) -> dict[int, Any]:
    """MQTT 5 properties between `pos` and `end`; user properties as a list of pairs."""
    props: dict[int, Any] = {}
    while pos < end:
        ident = data[pos]
        pos += 1
        kind = _PROPERTY_KINDS.get(ident)
        value: Any
        if kind == _BYTE:
            value, pos = data[pos], pos + 1
        elif kind == _U16:
            value, pos = (data[pos] << 8) | data[pos + 1], pos + 2
        elif kind == _U32:
            value, pos = struct.unpack_from("!I", data, pos)[0], pos + 4
        elif kind == _VARINT:
            value, pos = _read_varint(data, pos)
        elif kind in (_STR, _BIN):
            n = (data[pos] << 8) | data[pos + 1]
            raw = data[pos + 2 : pos + 2 + n]
            value, pos = (raw.decode() if kind == _STR else bytes(raw)), pos + 2 + n
        elif kind == _PAIR:
            n = (data[pos] << 8) | data[pos + 1]
            key = data[pos + 2 : pos + 2 + n].decode()
            pos += 2 + n
            n = (data[pos] << 8) | data[pos + 1]
            value = (key, data[pos + 2 : pos + 2 + n].decode())
            pos += 2 + n
            props.setdefault(ident, []).append(value)
            continue
        else:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
        props[ident] = value
    if pos != end:
        raise ProtocolError("properties overrun their length")
    return props


class Subscriber(asyncio.Protocol):
    """One connection to a broker, delivering PUBLISH packets to `deliver`.

    `deliver(topic, payload, qos, dup, retain, user_properties, packet_id)` runs
    on the event loop for every message and must not block; QoS 1/2 messages
    stay unacknowledged until `ack` is called with their packet ids. A PUBLISH
    that MQTT forbids but whose framing holds goes to `reject` instead (see the
    module docstring); it is acknowledged like any other once `ack` is called.
    `release(packet_id)` is called for each PUBREL (QoS 2); it must answer with
    `complete` once the packet id is forgotten. Without it, PUBCOMP goes at once.
    """

    def __init__(
        self,
        deliver: Deliver,
        on_lost: Callable[[str], None],
        *,
        reject: Reject | None = None,
        release: Callable[[int], None] | None = None,
        maximum_packet_size: int = 0,
    ) -> None:
        self._deliver = deliver
        self._on_lost = on_lost
        self._reject = reject
        self._release = release
        self.maximum_packet_size = maximum_packet_size  # 0: no limit announced
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._connack: asyncio.Future[tuple[bool, dict[int, Any]]] | None = None
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._keepalive = 0.0
        self._last_in = 0.0
        self._ping: asyncio.TimerHandle | None = None
        self._paused = False
        self.closed_reason: str | None = None
        self._gone: asyncio.Future[None] | None = None  # set when the connection is closed

    # -- connecting ----------------------------------------------------------

    async def open(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        clean_start: bool,
        keepalive: int,
        session_expiry: int,
        receive_maximum: int,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> bool:
        """Open the connection and complete CONNECT; returns whether the session was resumed.

        Deliveries can start before this returns (a resumed session's queue
        arrives right behind CONNACK).
        """
        loop = asyncio.get_running_loop()
        await loop.create_connection(
            lambda: self, host, port, ssl=tls, server_hostname=host if tls else None
        )
        try:
            return await self._handshake(
                client_id,
                clean_start,
                keepalive,
                session_expiry,
                receive_maximum,
                username,
                password,
            )
        except BaseException:
            self.close()
            raise

    async def _handshake(
        self,
        client_id: str,
        clean_start: bool,
        keepalive: int,
        session_expiry: int,
        receive_maximum: int,
        username: str | None,
        password: str | None,
    ) -> bool:
        flags = 0x02 if clean_start else 0
        payload = _utf8(client_id)
        if username is not None:
            flags |= 0x80
            payload += _utf8(username)
            if password is not None:
                flags |= 0x40
                raw = password.encode()
                payload += struct.pack("!H", len(raw)) + raw
        props = b"\x11" + struct.pack("!I", session_expiry)
        props += b"\x21" + struct.pack("!H", receive_maximum)
        if self.maximum_packet_size:
            props += b"\x27" + struct.pack("!I", self.maximum_packet_size)
        body = b"\x00\x04MQTT\x05" + bytes((flags,)) + struct.pack("!H", keepalive)
        body += _varint(len(props)) + props + payload
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._write(_packet(CONNECT << 4, body))
        present, props_in = await self._connack
        self._keepalive = float(props_in.get(SERVER_KEEP_ALIVE, keepalive))
        if self._keepalive:
            self._ping = loop.call_later(self._keepalive / 2, self._keep_alive)
        return present

    async def subscribe(
        self, filters: list[tuple[str, int]], retain_handling: int = 0
    ) -> list[int]:
        """Subscribe to `(filter, qos)` pairs; returns the granted QoS (or error code) of each.

        `retain_handling` is the MQTT 5 subscription option: 0 sends retained
        messages at every SUBSCRIBE, 1 only when the subscription is new, 2 never.
        """
        self._next_id = self._next_id % 65535 + 1
        packet_id = self._next_id
        body = struct.pack("!H", packet_id) + b"\x00"
        for topic_filter, qos in filters:
            body += _utf8(topic_filter) + bytes((qos | (retain_handling << 4),))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = future
        self._write(_packet((SUBSCRIBE << 4) | 0x02, body))
        return list(await future)

    async def unsubscribe(self, filters: list[str]) -> list[int]:
        """Unsubscribe from `filters`; returns the reason code of each (0x11: there was no
        such subscription)."""
        self._next_id = self._next_id % 65535 + 1
        packet_id = self._next_id
        body = struct.pack("!H", packet_id) + b"\x00" + b"".join(_utf8(f) for f in filters)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = future  # an UNSUBACK is read as a SUBACK is
        self._write(_packet((UNSUBSCRIBE << 4) | 0x02, body))
        return list(await future)

    # -- acknowledging and flow control ---------------------------------------------

    def ack(self, acks: list[tuple[int, int]]) -> None:
        """PUBACK (QoS 1) / PUBREC (QoS 2) for many packet ids in one write."""
        self._write(struct.pack(f">{len(acks)}I", *[ACK_WORD[qos] | mid for mid, qos in acks]))

    def complete(self, mids: list[int]) -> None:
        """PUBCOMP for many QoS 2 packet ids in one write (after their PUBREL)."""
        self._write(b"".join(b"\x70\x02" + mid.to_bytes(2, "big") for mid in mids))

    def pause_reading(self) -> None:
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            self._last_in = asyncio.get_running_loop().time()
            self._transport.resume_reading()

    @property
    def connected(self) -> bool:
        return self._transport is not None and self.closed_reason is None

    def close(self) -> None:
        """Send DISCONNECT (normal, keep the session) and close; safe to call twice."""
        if self._transport is not None and self.closed_reason is None:
            self._write(b"\xe0\x00")
            self._lost("closed by the gateway")
            self._transport.close()

    async def disconnect(self, wait: float) -> None:
        """Send DISCONNECT (normal, keep the session), wait up to `wait` seconds for the broker
        to close the connection, then close; safe to call twice.

        A broker closes the connection once it has read the DISCONNECT, so it has then
        read everything sent before it, the last PUBACKs among them: a connection opened
        right after with the same client id (a reload) resumes a session in which those
        messages are acknowledged, instead of taking the session over and being sent
        them again.
        """
        transport = self._transport
        if transport is None or self.closed_reason is not None:
            return
        self._gone = asyncio.get_running_loop().create_future()
        self._write(b"\xe0\x00")
        self._lost("closed by the gateway")
        transport.resume_reading()  # the broker's end of the connection must be seen
        try:
            async with asyncio.timeout(wait):
                await self._gone
        except TimeoutError:
            pass
        finally:
            transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._last_in = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        self._lost(
            f"the connection to the broker was lost: {exc}"
            if exc
            else "the broker closed the connection"
        )

    def data_received(self, data: bytes) -> None:
        self._last_in = asyncio.get_running_loop().time()
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 2:
                first = buf[pos]
                # remaining length: a variable byte integer of 1 to 4 bytes
                length = buf[pos + 1]
                head = pos + 2
                if length & 0x80:
                    try:
                        length, head = _read_varint(buf, pos + 1)
                    except IndexError:
                        break
                if self.maximum_packet_size and head - pos + length > self.maximum_packet_size:
                    self._fail(
                        f"the broker announced a packet of {head - pos + length} bytes, larger"
                        f" than the Maximum Packet Size of {self.maximum_packet_size} we sent",
                        0x95,
                    )
                    return
                if head + length > end:
                    break
                if first >> 4 == PUBLISH:
                    self._publish(first, buf, head, head + length)
                else:
                    self._control(first, bytes(buf[head : head + length]))
                pos = head + length
        except ProtocolError as err:
            what = "malformed packet" if err.code == 0x81 else "protocol error"
            self._fail(f"{what} from the broker: {err}", err.code)
            return
        except (IndexError, UnicodeDecodeError, struct.error) as err:
            self._fail(f"malformed packet from the broker: {error_text(err)}", 0x81)
            return
        if pos:
            del buf[:pos]

    # -- packets in -----------------------------------------------------------------

    def _publish(self, first: int, buf: bytearray, pos: int, end: int) -> None:
        qos = (first >> 1) & 0x03
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3")
        body = pos
        n = (buf[pos] << 8) | buf[pos + 1]
        raw_topic = buf[pos + 2 : pos + 2 + n]
        pos += 2 + n
        mid = None
        if qos:
            mid = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        if pos >= end:
            raise ProtocolError("PUBLISH shorter than its topic and packet id")
        # The framing holds from here: what is wrong now is this message, not the stream.
        problem = None
        user = None
        try:
            topic = raw_topic.decode()
        except UnicodeDecodeError as err:
            topic = raw_topic.decode(errors="backslashreplace")
            problem = f"the topic is not valid UTF-8 ({err})"
        if buf[pos] == 0:
            pos += 1
        else:
            try:
                plen, start = _read_varint(buf, pos)
                if start + plen > end:
                    raise ProtocolError("the properties run past the packet")
                props = parse_properties(bytes(buf[start : start + plen]), 0, plen)
            except UnicodeDecodeError as err:
                problem = (
                    f"a string in its properties (a user property?) is not valid UTF-8 ({err})"
                )
                props = {}
                pos = end
            except (ProtocolError, IndexError, struct.error) as err:
                problem = f"its properties cannot be read ({error_text(err)})"
                props = {}
                pos = end
            else:
                pos = start + plen
            user = props.get(USER_PROPERTY)
            if TOPIC_ALIAS in props:
                # We announce no Topic Alias Maximum (0): MQTT 5 (3.3.2.3.4) makes any alias a
                # protocol error, and accepting them would mean a table to bound.
                raise ProtocolError(
                    f"a PUBLISH uses topic alias {props[TOPIC_ALIAS]}, but we allow none"
                    " (no Topic Alias Maximum in CONNECT)",
                    0x94,
                )
        if problem is None:
            if not topic:
                problem = "it has no topic"
            elif "\x00" in topic or "+" in topic or "#" in topic:
                problem = f"its topic {topic!r} contains U+0000 or a wildcard"
            elif mid == 0:
                problem = PACKET_ID_0.format(qos=qos)
        dup = bool(first & 0x08)
        if problem is not None:
            if self._reject is None:
                raise ProtocolError(problem)
            raw = bytes((first,)) + _varint(end - body) + bytes(buf[body:end])
            self._reject(topic, raw, qos, dup, mid or None, f"invalid PUBLISH: {problem}")
            return
        self._deliver(topic, bytes(buf[pos:end]), qos, dup, bool(first & 0x01), user, mid)

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == CONNACK:
            if self._connack is None or self._connack.done():
                raise ProtocolError("unexpected CONNACK")
            present, code = body[0] & 0x01, body[1]
            plen, start = _read_varint(body, 2) if len(body) > 2 else (0, 2)
            props = parse_properties(body, start, start + plen)
            if code >= 0x80:
                self._connack.set_exception(ConnectRefused(code, props.get(REASON_STRING)))
            else:
                self._connack.set_result((bool(present), props))
        elif kind == SUBACK:
            packet_id = struct.unpack_from("!H", body)[0]
            plen, start = _read_varint(body, 2)
            future = self._subacks.pop(packet_id, None)
            if future is not None and not future.done():
                future.set_result(body[start + plen :])
        elif kind == PUBREL:
            if len(body) < 2 or not (mid := (body[0] << 8) | body[1]):
                raise ProtocolError("PUBREL without a packet id")
            if self._release is None:
                self.complete([mid])  # the message was stored before PUBREC
            else:
                self._release(mid)
        elif kind == PINGRESP:
            pass
        elif kind == DISCONNECT:
            code = body[0] if body else 0
            self._fail(f"the broker disconnected us (reason code 0x{code:02x})")
        elif kind in (PUBACK, PUBREC, PUBCOMP):
            pass  # we publish nothing on this connection
        elif kind == UNSUBACK:  # last: it comes only at a connect, after a change of topics
            packet_id = struct.unpack_from("!H", body)[0]
            plen, start = _read_varint(body, 2)
            future = self._subacks.pop(packet_id, None)
            if future is not None and not future.done():
                future.set_result(body[start + plen :])
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    # -- plumbing --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _keep_alive(self) -> None:
        if self.closed_reason is not None:
            return
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_in
        if not self._paused and silent > self._keepalive * 1.5:
            self._fail(f"no answer from the broker for {silent:.0f} s")
            return
        self._write(b"\xc0\x00")
        self._ping = loop.call_later(self._keepalive / 2, self._keep_alive)

    def _fail(self, reason: str, code: int | None = None) -> None:
        """Close at once; with a reason code, tell the broker why (DISCONNECT) first."""
        if code is not None and self.closed_reason is None:
            self._write(bytes((DISCONNECT << 4, 1, code)))
        self._lost(reason)
        if self._transport is not None:
            if code is not None:
                self._transport.close()  # lets the DISCONNECT out, reads nothing more
            else:
                self._transport.abort()

    def _lost(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        if self._ping is not None:
            self._ping.cancel()
        error = ConnectionError(reason)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error)
        for future in self._subacks.values():
            if not future.done():
                future.set_exception(error)
        self._subacks.clear()
        self._on_lost(reason)

"""Our MQTT client for publishing (the MQTT sink) and write-back's connection (`commands`).

`Client` is one connection on asyncio, sharing its packet code with
`gateway.mqtt.wire` (the MQTT source's subscriber). It speaks MQTT 5 and 3.1.1
(`protocol=4`): CONNECT (clean start or a persistent session with its Session
Expiry Interval, Receive Maximum, credentials, TLS, a last will), PUBLISH out at QoS 0/1 with
MQTT 5 properties, every PUBACK reported with its reason code (`on_puback`),
SUBSCRIBE, PUBLISH in at QoS 0/1 with its properties (`deliver`), PUBACKs out
when the caller is done (`ack`), keepalive and DISCONNECT. It never reconnects
and never resends: the engine reconnects, with capped exponential backoff and
jitter, and a sink sends a batch again, whole.

Writes are corked: PUBLISH packets queued during one turn of the event loop go
out in one socket write. After each read the kernel is told to acknowledge TCP
segments at once (TCP_QUICKACK, see `Client.data_received`).

Connecting: `connect_refusal` and `tls_refusal` tell a refusal an operator must
fix (credentials, client id, a TLS certificate) from trouble that may pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

from gateway.core.errors import error_text
from gateway.core.tls import certificate_refusal, error_chain
from gateway.mqtt.wire import (
    ACK_HEADER,
    CONNACK,
    CONNACK_MESSAGES,
    DISCONNECT,
    MAXIMUM_PACKET_SIZE,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SERVER_KEEP_ALIVE,
    SUBACK,
    SUBSCRIBE,
    ProtocolError,
    _packet,
    _read_varint,
    _utf8,
    _varint,
    parse_properties,
)

RECEIVE_MAXIMUM = 0x21
MAXIMUM_QOS = 0x24
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09

# deliver(topic, payload, qos, properties, packet_id): properties by MQTT 5 identifier.
Deliver = Callable[[str, bytes, int, dict[int, Any], int | None], None]


class ConnectRefused(Exception):
    """The broker answered CONNECT with a failure code (3.1.1 return code or MQTT 5 reason)."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.message = CONNACK_MESSAGES.get(code, "Unknown error")
        super().__init__(f"code {code} ({self.message})")


# What Client.open may raise when the broker cannot be reached or refuses us.
CONNECT_ERRORS: tuple[type[Exception], ...] = (OSError, ConnectRefused)

# MQTT 5 PUBACK reason codes (spec 3.4.2.1); any other code >= 0x80 is "unspecified".
PUBACK_REASONS = {
    0x80: "Unspecified error",
    0x83: "Implementation specific error",
    0x87: "Not authorized",
    0x90: "Topic Name invalid",
    0x91: "Packet identifier in use",
    0x97: "Quota exceeded",
    0x99: "Payload format invalid",
}


def puback_reason(code: int) -> str:
    """A PUBACK reason code as text: `Not authorized (0x87)`."""
    return f"{PUBACK_REASONS.get(code, 'error')} (0x{code:02x})"


def user_properties(pairs: list[tuple[str, str]]) -> bytes:
    """MQTT 5 user properties, encoded; UnicodeEncodeError for text that is not valid."""
    return b"".join(b"\x26" + _utf8(key) + _utf8(value) for key, value in pairs)


def binary_property(ident: int, value: bytes) -> bytes:
    return bytes((ident,)) + struct.pack("!H", len(value)) + value


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class Client(asyncio.Protocol):
    """One MQTT connection for publishing at QoS 1 (and receiving a few commands).

    `on_puback(packet_id, reason_code)` runs for every PUBACK (0 = success; 3.1.1
    PUBACKs have none). `deliver` runs for every PUBLISH received; a QoS 1 one is
    acknowledged only when the caller calls `ack`. `on_lost(reason)` runs once
    when the connection ends, whoever ended it. `max_packet_in` bounds what one
    received packet may take in memory.
    """

    def __init__(
        self,
        *,
        on_puback: Callable[[int, int], None] | None = None,
        deliver: Deliver | None = None,
        on_lost: Callable[[str], None] | None = None,
        max_packet_in: int = 0,
    ) -> None:
        self._on_puback = on_puback
        self._deliver = deliver
        self._on_lost = on_lost
        self.protocol = 5
        self._transport: asyncio.Transport | None = None
        self._sock: Any = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._connack: asyncio.Future[bool] | None = None
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._in_use: set[int] = set()  # packet ids of QoS 1 PUBLISHes awaiting their PUBACK
        self._next_id = 0
        self._keepalive = 0.0
        self._last_in = 0.0
        self._ping: asyncio.TimerHandle | None = None
        self.receive_maximum = 65535  # from CONNACK: QoS 1 messages the broker takes unacked
        self.maximum_packet_size: int | None = None  # from CONNACK, if the broker set one
        self.maximum_qos = 2  # from CONNACK (MQTT 5): the highest QoS the broker takes
        self.session_present = False
        self._accepted = False  # the broker answered CONNECT with success
        # A packet announcing more than this many bytes closes the connection before its
        # body is buffered (0: no limit). Not announced as Maximum Packet Size in CONNECT:
        # Mosquitto 2.0 was seen holding such a message back and delivering nothing after it.
        self._max_in = max_packet_in
        self.closed_reason: str | None = None
        self.closed_error: BaseException | None = None  # how the connection ended, if in error

    # -- connecting ----------------------------------------------------------

    async def open(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        clean_start: bool,
        keepalive: int,
        protocol: int = 5,
        session_expiry: int = 0,
        receive_maximum: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> bool:
        """Connect and complete CONNECT; returns whether the broker kept our session.

        `will` is the last will (topic, payload, qos, retain) the broker publishes when
        the connection ends without a DISCONNECT (the process killed, the link lost).

        Raises OSError (ssl.SSLError and ConnectionError included) when the
        connection fails or ends before CONNACK, ConnectRefused when the broker
        refuses. The connection is closed when this raises.
        """
        self.protocol = protocol
        loop = asyncio.get_running_loop()
        await loop.create_connection(
            lambda: self, host, port, ssl=tls, server_hostname=host if tls else None
        )
        try:
            flags = 0x02 if clean_start else 0
            payload = _utf8(client_id)
            if will is not None:
                will_topic, will_payload, will_qos, will_retain = will
                flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
                if protocol == 5:
                    payload += b"\x00"  # no will properties
                payload += _utf8(will_topic) + struct.pack("!H", len(will_payload)) + will_payload
            if username is not None:
                flags |= 0x80
                payload += _utf8(username)
                if password is not None:
                    flags |= 0x40
                    raw = password.encode()
                    payload += struct.pack("!H", len(raw)) + raw
            body = b"\x00\x04MQTT" + bytes((protocol, flags)) + struct.pack("!H", keepalive)
            if protocol == 5:
                props = b""
                if session_expiry:
                    props += b"\x11" + struct.pack("!I", session_expiry)
                if receive_maximum:
                    props += b"\x21" + struct.pack("!H", receive_maximum)
                body += _varint(len(props)) + props
            self._connack = loop.create_future()
            self._write(_packet(0x10, body + payload))
            self.session_present = await self._connack
        except BaseException:
            self.abort()
            raise
        self._keepalive = float(keepalive)
        if self._keepalive:
            self._ping = loop.call_later(self._keepalive / 2, self._keep_alive)
        return self.session_present

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """Subscribe to `(filter, options)` pairs, options being the QoS and, with MQTT 5, the
        subscription option bits (3.8.3.1); returns the granted QoS (or error code) of each."""
        packet_id = self._take_id()
        self._in_use.discard(packet_id)  # a SUBACK, not a PUBACK, answers it
        body = struct.pack("!H", packet_id) + (b"\x00" if self.protocol == 5 else b"")
        for topic_filter, qos in filters:
            body += _utf8(topic_filter) + bytes((qos,))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = future
        self._write(_packet((SUBSCRIBE << 4) | 0x02, body))
        return list(await future)

    # -- publishing ----------------------------------------------------------

    def publish(
        self,
        topic: bytes,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: bytes = b"",
    ) -> int | None:
        """Queue one PUBLISH at QoS 0 or 1; returns its packet id at QoS 1 (None at QoS 0).

        `properties` are encoded MQTT 5 properties (ignored under 3.1.1). Nothing is
        kept for resending: if the connection drops, the caller sends again.
        """
        if qos:
            return self.publish_qos1(topic, payload, retain=retain, properties=properties)
        self._queue(topic, payload, b"", 0x30 | (1 if retain else 0), properties)
        return None

    def publish_qos1(
        self, topic: bytes, payload: bytes, *, retain: bool = False, properties: bytes = b""
    ) -> int:
        """Queue one QoS 1 PUBLISH and return its packet id; its PUBACK goes to `on_puback`."""
        mid = self._take_id()
        self._queue(topic, payload, mid.to_bytes(2, "big"), 0x32 | (1 if retain else 0), properties)
        return mid

    def _queue(self, topic: bytes, payload: bytes, mid: bytes, first: int, props: bytes) -> None:
        head = len(topic).to_bytes(2, "big") + topic + mid
        if self.protocol == 5:
            head += (bytes((len(props),)) if len(props) < 128 else _varint(len(props))) + props
        size = len(head) + len(payload)
        out = self._out
        out.append(bytes((first, size)) if size < 128 else bytes((first,)) + _varint(size))
        out.append(head)
        out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _take_id(self) -> int:
        in_use = self._in_use
        if len(in_use) >= 65535:
            raise ProtocolError("no packet id is free")
        mid = self._next_id
        while True:
            mid = mid % 65535 + 1
            if mid not in in_use:
                break
        self._next_id = mid
        in_use.add(mid)
        return mid

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._write(data)

    # -- acknowledging --------------------------------------------------------

    def ack(self, acks: list[tuple[int, int]]) -> None:
        """PUBACK (QoS 1) / PUBREC (QoS 2) for many packet ids in one write."""
        self._write(b"".join(ACK_HEADER[qos] + mid.to_bytes(2, "big") for mid, qos in acks))

    # -- state and closing -------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._accepted and self.closed_reason is None

    def closing(self) -> bool:
        """True once the connection is closed or closing."""
        return self._transport is None or self._transport.is_closing() or bool(self.closed_reason)

    def close(self) -> None:
        """Send DISCONNECT (normal, keep the session) and close; safe to call twice."""
        if self._transport is not None and self.closed_reason is None:
            self._flush()
            self._write(b"\xe0\x00")
            self._lost("closed by the gateway")
            self._transport.close()

    def abort(self) -> None:
        """Close at once, sending nothing more; safe to call twice."""
        self._lost("closed by the gateway")
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._last_in = asyncio.get_running_loop().time()
        self._sock = transport.get_extra_info("socket") if _QUICKACK is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.closed_error is None:
            self.closed_error = exc
        if self._connack is not None and not self._connack.done():
            if exc is None:
                exc = ConnectionResetError(
                    "the broker closed the connection before accepting it"
                    " (a refused TLS client certificate? see the broker's log)"
                )
            self._connack.set_exception(exc)
        self._lost(
            f"the connection to the broker was lost: {exc}"
            if exc
            else "the broker closed the connection"
        )

    def data_received(self, data: bytes) -> None:
        # A broker with Nagle's algorithm on (Mosquitto's default) holds further PUBACKs
        # back until its previous ones are acknowledged at the TCP level, and a publisher
        # waiting for PUBACKs sends nothing an acknowledgement could ride on, so the
        # kernel delays it up to 40 ms: waiting for a batch's PUBACKs stalled in 40 ms
        # steps. TCP_QUICKACK after each read (the kernel clears it again) sends the
        # pending acknowledgement right away (Linux).
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        self._last_in = asyncio.get_running_loop().time()
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        on_puback = self._on_puback
        in_use = self._in_use
        try:
            while end - pos >= 2:
                first = buf[pos]
                length = buf[pos + 1]
                head = pos + 2
                if length & 0x80:
                    try:
                        length, head = _read_varint(buf, pos + 1)
                    except IndexError:
                        break
                    if self._max_in and length > self._max_in:
                        raise ProtocolError(f"a packet of {length} bytes (at most {self._max_in})")
                if head + length > end:
                    break
                if first == 0x40 and length >= 2:  # PUBACK, the usual packet here
                    mid = (buf[head] << 8) | buf[head + 1]
                    in_use.discard(mid)
                    if on_puback is not None:
                        on_puback(mid, buf[head + 2] if length > 2 else 0)
                elif first >> 4 == PUBLISH:
                    self._publish_in(first, bytes(buf[head : head + length]))
                else:
                    self._control(first, bytes(buf[head : head + length]))
                pos = head + length
        except ProtocolError as err:
            self._fail(f"malformed packet from the broker: {err}")
            return
        except (IndexError, UnicodeDecodeError, struct.error) as err:
            self._fail(f"malformed packet from the broker: {error_text(err)}")
            return
        if pos:
            del buf[:pos]

    # -- packets in -----------------------------------------------------------------

    def _publish_in(self, first: int, body: bytes) -> None:
        qos = (first >> 1) & 0x03
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3")
        n = (body[0] << 8) | body[1]
        topic = body[2 : 2 + n].decode()
        pos = 2 + n
        mid = None
        if qos:
            mid = (body[pos] << 8) | body[pos + 1]
            pos += 2
        props: dict[int, Any] = {}
        if self.protocol == 5:
            plen, start = _read_varint(body, pos)
            props = parse_properties(body, start, start + plen)
            pos = start + plen
        if self._deliver is not None:
            self._deliver(topic, body[pos:], qos, props, mid)

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == CONNACK:
            if self._connack is None or self._connack.done():
                raise ProtocolError("unexpected CONNACK")
            present, code = body[0] & 0x01, body[1]
            props: dict[int, Any] = {}
            if self.protocol == 5 and len(body) > 2:
                plen, start = _read_varint(body, 2)
                props = parse_properties(body, start, start + plen)
            if code:
                self._connack.set_exception(ConnectRefused(code))
                return
            self.receive_maximum = int(props.get(RECEIVE_MAXIMUM, 65535))
            self.maximum_qos = int(props.get(MAXIMUM_QOS, 2))
            if MAXIMUM_PACKET_SIZE in props:
                self.maximum_packet_size = int(props[MAXIMUM_PACKET_SIZE])
            if SERVER_KEEP_ALIVE in props:
                self._keepalive = float(props[SERVER_KEEP_ALIVE])
            self._accepted = True
            self._connack.set_result(bool(present))
        elif kind == PUBACK:
            raise ProtocolError("PUBACK without a packet id")
        elif kind == SUBACK:
            packet_id = struct.unpack_from("!H", body)[0]
            start = 2
            if self.protocol == 5:
                plen, start = _read_varint(body, 2)
                start += plen
            future = self._subacks.pop(packet_id, None)
            if future is not None and not future.done():
                future.set_result(body[start:])
        elif kind == PINGRESP:
            pass
        elif kind == DISCONNECT:
            code = body[0] if body else 0
            self._fail(f"the broker disconnected us (reason code 0x{code:02x})")
        elif kind in (PUBREC, PUBREL, PUBCOMP):
            raise ProtocolError(f"unexpected QoS 2 packet (type {kind})")
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
        if silent > self._keepalive * 1.5:
            self._fail(f"no answer from the broker for {silent:.0f} s")
            return
        self._write(b"\xc0\x00")
        self._ping = loop.call_later(self._keepalive / 2, self._keep_alive)

    def _fail(self, reason: str) -> None:
        self._lost(reason)
        if self._transport is not None:
            self._transport.abort()

    def _lost(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._out.clear()
        if self._ping is not None:
            self._ping.cancel()
        error = ConnectionError(reason)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error)
        for future in self._subacks.values():
            if not future.done():
                future.set_exception(error)
        self._subacks.clear()
        if self._on_lost is not None:
            self._on_lost(reason)


# --- refusals -----------------------------------------------------------------------------

# CONNACK codes that retrying cannot fix: MQTT 3.1.1 (unacceptable protocol version,
# identifier rejected, bad user name or password, not authorized) and MQTT 5 (malformed
# packet, protocol error, unsupported protocol version, client identifier not valid, bad
# user name or password, not authorized, banned, bad authentication method, packet too
# large, retain or QoS not supported, use another server, server moved). The others
# (server unavailable or busy, quota or rate exceeded, unspecified) may pass.
REFUSED_FOR_GOOD = frozenset(
    {1, 2, 4, 5, 0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C, 0x95, 0x9A, 0x9B, 0x9C, 0x9D}
)


def connect_refusal(err: BaseException, keys: str = "") -> str | None:
    """Why the broker refuses us until an operator acts, from a connect error; else None.

    A CONNACK code in REFUSED_FOR_GOOD (Mosquitto answers a wrong password with 0x87
    Not authorized under MQTT 5, 5 under 3.1.1), a broker certificate we do not trust,
    or a TLS alert refusing our client certificate. `keys` prefixes the TLS keys the
    message tells to check (`mqtt.`: the gateway's broker's).
    """
    for cause in error_chain(err):
        if isinstance(cause, ConnectRefused):
            code = cause.code
            if code in REFUSED_FOR_GOOD:
                return f"{cause.message} (CONNACK code {code:#04x})"
            return None
        refusal = certificate_refusal(cause, f"{keys}cert_file", f"{keys}ca_file")
        if refusal:
            return refusal
    return None


async def tls_refusal(host: str, port: int, context: ssl.SSLContext, wait: float) -> str | None:
    """Whether a TLS server refuses our certificate, asked on a connection of its own.

    With TLS 1.3 a server checks the client certificate after the handshake looks done
    to the client, and its alert races with the client's first packet: the connection
    mostly ends in a bare reset, which says nothing. A connection that sends nothing
    receives the alert if there is one, at most `wait` seconds later. None if there is
    none (or the server cannot be reached).
    """
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                await reader.read(1)  # the alert, or nothing until the timeout
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except ssl.SSLError as err:
        return connect_refusal(err)
    except (OSError, TimeoutError):
        pass
    return None

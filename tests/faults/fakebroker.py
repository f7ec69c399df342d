"""A small MQTT 5 broker for fault tests: one subscriber, packet ids reused at once.

MQTT lets a broker give a packet id to a new message as soon as the previous
message under it is acknowledged; Mosquitto happens to count up instead. This
broker always takes the lowest free id, keeps one persistent session per client
id, redelivers what is unacknowledged with DUP set when the client comes back,
and lets a test inject raw bytes (malformed packets) or pretend that a message
went out just before the client died. Real TCP on a free loopback port; the
test drives it from its own event loop thread (`FakeBroker.start()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def publish_packet(
    topic: str | bytes, payload: bytes, qos: int, mid: int, dup: bool = False, props: bytes = b""
) -> bytes:
    """A PUBLISH packet; `topic` and `props` are taken as they are (they may be invalid)."""
    body = utf8(topic) + (struct.pack("!H", mid) if qos else b"") + varint(len(props)) + props
    first = 0x30 | (qos << 1) | (0x08 if dup else 0)
    return bytes((first,)) + varint(len(body) + len(payload)) + body + payload


@dataclass
class Outgoing:
    """A QoS 1/2 message in flight to the subscriber."""

    topic: str | bytes
    payload: bytes
    qos: int
    mid: int
    props: bytes = b""
    pubrec: bool = False  # QoS 2: PUBREC came, PUBREL is due


@dataclass
class Session:
    inflight: dict[int, Outgoing] = field(default_factory=dict)
    subscriptions: list[tuple[str, int]] = field(default_factory=list)  # (filter, options)


class FakeBroker:
    """The broker, run on its own thread with its own event loop."""

    def __init__(self, *, send_pubrel: bool = True, forget_pubrec: bool = False) -> None:
        self.send_pubrel = send_pubrel  # False: hold PUBREL after PUBREC (a crash window)
        self.forget_pubrec = forget_pubrec  # True: act as if every PUBREC was lost
        self.sessions: dict[str, Session] = {}
        self.port = 0
        self.connects = 0
        self.acks: list[tuple[str, int]] = []  # ("puback"|"pubrec"|"pubcomp", packet id)
        self.disconnect_codes: list[int] = []
        # UNSUBSCRIBE: "ignore" (no UNSUBACK), "close" (close the connection), or a dict of
        # reason codes by filter (0x00 for the others)
        self.unsubscribe_answer: str | dict[str, int] = "ignore"
        self.unsubscribes: list[list[str]] = []  # the filters of each UNSUBSCRIBE received
        self.refused: set[str] = set()  # filters whose SUBSCRIBE is refused (0x9E)
        self._writer: asyncio.StreamWriter | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self._client: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    # -- driven from the test's thread ----------------------------------------------

    def start(self) -> FakeBroker:
        self._thread.start()
        self._call(self._listen)
        return self

    def stop(self) -> None:
        self._call(self._close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def publish(self, topic: str | bytes, payload: bytes, qos: int, props: bytes = b"") -> int:
        """Send a message to the subscriber now (or queue it while it is away); its id."""
        return self._call(self._publish, topic, payload, qos, props, False)  # type: ignore[no-any-return]

    def sent_before_crash(self, client_id: str, topic: str, payload: bytes, qos: int) -> int:
        """Put a message in flight as if it was sent just before the subscriber died
        unread: it is redelivered with DUP set on reconnect. Returns its packet id."""
        return self._call(self._queue_sent, client_id, topic, payload, qos)  # type: ignore[no-any-return]

    def release(self, mid: int) -> None:
        """Act on the PUBREC for `mid` at last: send PUBREL."""
        self._call(self._release, mid)

    def send_raw(self, data: bytes, mid: int = 0, qos: int = 0) -> None:
        """Write raw bytes to the subscriber; with `mid`, hold that id until it is acked."""
        self._call(self._send_raw, data, mid, qos)

    def wait(self, predicate: Callable[[FakeBroker], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"fake broker: timed out waiting for {what}: {self.acks}")

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- on the broker's loop ------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._serving, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @staticmethod
    def _free_id(session: Session) -> int:
        mid = 1
        while mid in session.inflight:
            mid += 1
        return mid

    def _publish(
        self, topic: str | bytes, payload: bytes, qos: int, props: bytes, dup: bool
    ) -> int:
        session = self.sessions.setdefault(self._client or "", Session())
        mid = 0
        if qos:
            mid = self._free_id(session)
            session.inflight[mid] = Outgoing(topic, payload, qos, mid, props)
        if self._writer is not None:
            self._writer.write(publish_packet(topic, payload, qos, mid, dup, props))
        return mid

    def _queue_sent(self, client_id: str, topic: str, payload: bytes, qos: int) -> int:
        session = self.sessions.setdefault(client_id, Session())
        mid = self._free_id(session)
        session.inflight[mid] = Outgoing(topic, payload, qos, mid)
        return mid

    def _release(self, mid: int) -> None:
        session = self.sessions[self._client or ""]
        session.inflight[mid].pubrec = True
        assert self._writer is not None
        self._writer.write(b"\x62\x02" + struct.pack("!H", mid))

    def _send_raw(self, data: bytes, mid: int, qos: int) -> None:
        if mid:
            session = self.sessions.setdefault(self._client or "", Session())
            session.inflight[mid] = Outgoing("raw", data, qos, mid)
        assert self._writer is not None
        self._writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = None
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length = shift = 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = first >> 4
                if kind == 1:
                    client = self._connect(body, writer)
                elif kind == 8:
                    self._subscribe(client, body, writer)
                elif kind == 10:
                    if not self._unsubscribe(client, body, writer):
                        break
                elif kind in (4, 5, 7):
                    self._ack(client, kind, struct.unpack_from("!H", body)[0], writer)
                elif kind == 12:
                    writer.write(b"\xd0\x00")
                elif kind == 14:
                    self.disconnect_codes.append(body[0] if body else 0)
                    break
                self._notify()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self._client = None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._writers.discard(writer)
            self._serving.discard(task)
            self._notify()

    def _connect(self, body: bytes, writer: asyncio.StreamWriter) -> str:
        flags = body[7]
        pos = 10
        plen, shift = 0, 0
        while True:
            byte = body[pos]
            pos += 1
            plen |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        pos += plen
        n = struct.unpack_from("!H", body, pos)[0]
        client = body[pos + 2 : pos + 2 + n].decode()
        present = client in self.sessions and not flags & 0x02
        if not present:
            self.sessions[client] = Session()
        self.connects += 1
        self._writer, self._client = writer, client
        writer.write(b"\x20\x03" + bytes((1 if present else 0,)) + b"\x00\x00")
        for out in self.sessions[client].inflight.values():  # in the order first sent
            if out.qos == 2 and out.pubrec and not self.forget_pubrec:
                writer.write(b"\x62\x02" + struct.pack("!H", out.mid))
            elif out.topic == "raw":
                writer.write(bytes((out.payload[0] | 0x08,)) + out.payload[1:])
            else:
                writer.write(publish_packet(out.topic, out.payload, out.qos, out.mid, True))
        return client

    def _subscribe(self, client: str | None, body: bytes, writer: asyncio.StreamWriter) -> None:
        mid = struct.unpack_from("!H", body)[0]
        pos = 2
        plen = body[pos]  # no properties from our subscriber: one byte
        pos += 1 + plen
        granted = bytearray()
        session = self.sessions[client or ""]
        while pos < len(body):
            n = struct.unpack_from("!H", body, pos)[0]
            topic_filter = body[pos + 2 : pos + 2 + n].decode()
            options = body[pos + 2 + n]
            pos += 3 + n
            if topic_filter in self.refused:
                granted.append(0x9E)  # shared subscriptions not supported
                continue
            session.subscriptions.append((topic_filter, options))
            granted.append(options & 0x03)
        writer.write(
            b"\x90" + varint(3 + len(granted)) + struct.pack("!H", mid) + b"\x00" + granted
        )

    def _unsubscribe(self, client: str | None, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer an UNSUBSCRIBE as `unsubscribe_answer` says; False: close the connection."""
        mid = struct.unpack_from("!H", body)[0]
        pos = 3 + body[2]
        filters = []
        while pos < len(body):
            n = struct.unpack_from("!H", body, pos)[0]
            filters.append(body[pos + 2 : pos + 2 + n].decode())
            pos += 2 + n
        self.unsubscribes.append(filters)
        answer = self.unsubscribe_answer
        if answer == "close":
            return False
        if isinstance(answer, dict):
            session = self.sessions[client or ""]
            codes = bytes(answer.get(f, 0) for f in filters)
            gone = {f for f in filters if answer.get(f, 0) < 0x80}
            session.subscriptions = [s for s in session.subscriptions if s[0] not in gone]
            head = b"\xb0" + varint(3 + len(codes)) + struct.pack("!H", mid)
            writer.write(head + b"\x00" + codes)
        return True

    def _ack(self, client: str | None, kind: int, mid: int, writer: asyncio.StreamWriter) -> None:
        name = {4: "puback", 5: "pubrec", 7: "pubcomp"}[kind]
        self.acks.append((name, mid))
        session = self.sessions.get(client or "")
        if session is None or mid not in session.inflight:
            return
        if kind == 5:
            if not self.forget_pubrec:
                session.inflight[mid].pubrec = True
            if self.send_pubrel:
                writer.write(b"\x62\x02" + struct.pack("!H", mid))
        else:
            del session.inflight[mid]

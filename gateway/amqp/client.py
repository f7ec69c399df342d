"""Our AMQP 0-9-1 client for publishing with confirms (the amqp sink), framed by pamqp.

`Publisher` is one connection on asyncio with one channel in confirm mode. It
does the handshake (PLAIN login, Tune, the virtual host, TLS), synchronous
methods on the channel (`call`: declaring exchanges and queues, binding),
`publish` (Basic.Publish, its content header and body frames), heartbeats and
Connection.Close. Every Basic.Ack and Basic.Nack goes to `on_confirm`, every
Basic.Return to `on_return`. It never reconnects and never resends: the engine
reconnects, with backoff, and the sink sends a batch again, whole.

Writes are corked, as the MQTT client's are: the frames of every publish made
during one turn of the event loop go out in one socket write. aio-pika (through
aiormq) writes each publish with a socket send of its own, waits for it and
takes a channel lock for it: a few turns of the event loop per message, which
held the sink to about 1,200 messages/s (docs/design-notes.md has the figures).

pamqp builds and parses the frames (it is what aiormq uses); only the frame
boundaries (type, channel, size, end octet) are read here, and Basic.Ack, the
frame that comes most, is decoded directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from pamqp import commands as spec
from pamqp import frame as pframe
from pamqp.base import Frame
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

CHANNEL = 1  # the one channel a Publisher opens
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
FRAME_END = 0xCE
_FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size
_ACK_METHOD = b"\x00\x3c\x00\x50"  # Basic.Ack: class 60, method 80
_ACK_BODY = struct.Struct(">QB")  # delivery tag, bits (multiple)
_BODY_HEAD = struct.Struct(">BHI")
_BODY_HEAD_CHANNEL = (3, CHANNEL)
MAX_FRAME_IN = 1 << 20  # a frame larger than this from the broker is refused
_FRAME_KINDS = frozenset({1, 2, 3, 8})  # method, content header, body, heartbeat


class AmqpError(Exception):
    """Something went wrong with the connection: it is unusable now."""


class BrokerClosed(AmqpError):
    """The broker closed the connection or the channel with a reply code and text
    (`403`, `"ACCESS_REFUSED - Login was refused ..."`)."""

    def __init__(self, scope: str, code: int, text: str) -> None:
        super().__init__(text or f"{scope} closed with code {code}")
        self.scope = scope  # "connection" or "channel"
        self.code = code
        self.text = text


class LoginRefused(AmqpError):
    """The broker offers no login mechanism we speak (we speak PLAIN)."""


OnConfirm = Callable[[int, bool, bool], None]  # delivery tag, multiple, ack (False: nack)
OnReturn = Callable[[int, str, "str | None"], None]  # reply code, reply text, message_id
OnLost = Callable[[BaseException], None]


def vhost_of(raw_path: str) -> str:
    """The virtual host from a URL's raw path: `/plant` -> `plant`, `/%2F` or `` -> `/`."""
    return unquote(raw_path[1:]) if len(raw_path) > 1 else "/"


class Publisher(asyncio.Protocol):
    """One AMQP connection with one channel in confirm mode, for publishing.

    `on_confirm(tag, multiple, ack)` runs for every Basic.Ack / Basic.Nack (`multiple`:
    every tag up to this one), `on_return(code, text, message_id)` for every message the
    broker returns (it comes before that message's confirm). `on_lost(error)` runs once
    when the connection ends, whoever ended it; `closed_error` says how.
    """

    def __init__(
        self,
        *,
        on_confirm: OnConfirm | None = None,
        on_return: OnReturn | None = None,
        on_lost: OnLost | None = None,
    ) -> None:
        self._on_confirm = on_confirm
        self._on_return = on_return
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._reply: asyncio.Future[Frame] | None = None  # the answer to a method we sent
        self._returning: tuple[int, str] | None = None  # a Basic.Return awaiting its header
        self._tag = 0  # the last delivery tag given
        self._methods: dict[tuple[str, str], bytes] = {}  # Basic.Publish frames, by target
        self._body_max = 131072 - 8
        self._heartbeat = 0.0
        self._last_in = 0.0
        self._beat: asyncio.TimerHandle | None = None
        self._closed = False
        self._gone: asyncio.Future[None] | None = None  # done when the socket is closed
        self.closed_error: BaseException | None = None

    # -- connecting ----------------------------------------------------------------------

    async def open(
        self,
        host: str,
        port: int,
        *,
        vhost: str,
        username: str,
        password: str,
        tls: ssl.SSLContext | None = None,
        client_properties: dict[str, Any] | None = None,
        heartbeat: int = 60,
    ) -> None:
        """Connect, log in, open the virtual host and a channel in confirm mode.

        Raises OSError (ssl.SSLError and ConnectionError included) when the connection
        fails or ends, BrokerClosed when the broker refuses (a login, the vhost),
        LoginRefused without a common mechanism. The connection is closed when this raises.
        """
        loop = asyncio.get_running_loop()
        await loop.create_connection(
            lambda: self, host, port, ssl=tls, server_hostname=host if tls else None
        )
        try:
            self._write(PROTOCOL_HEADER)
            start = await self._answer(spec.Connection.Start)
            mechanisms = str(start.mechanisms or "").split()
            if "PLAIN" not in mechanisms:
                raise LoginRefused(
                    f"the broker offers the login mechanisms {' '.join(mechanisms) or 'none'};"
                    " we speak PLAIN"
                )
            properties = {
                "product": "edge-stream",
                "capabilities": {
                    "publisher_confirms": True,
                    "basic.nack": True,
                    # Without it RabbitMQ answers a refused login by closing the socket.
                    "authentication_failure_close": True,
                },
                **(client_properties or {}),
            }
            self._send(
                0,
                spec.Connection.StartOk(
                    client_properties=properties,
                    mechanism="PLAIN",
                    response=f"\0{username}\0{password}",
                    locale="en_US",
                ),
            )
            tune = await self._answer(spec.Connection.Tune)
            frame_max = tune.frame_max or 131072
            beat = min(tune.heartbeat, heartbeat) if tune.heartbeat and heartbeat else 0
            self._send(
                0,
                spec.Connection.TuneOk(
                    channel_max=tune.channel_max, frame_max=frame_max, heartbeat=beat
                ),
            )
            self._body_max = frame_max - 8
            self._send(0, spec.Connection.Open(virtual_host=vhost))
            await self._answer(spec.Connection.OpenOk)
            await self.call(spec.Channel.Open(), spec.Channel.OpenOk)
            await self.call(spec.Confirm.Select(), spec.Confirm.SelectOk)
        except BaseException:
            self.abort()
            raise
        if beat:
            self._heartbeat = float(beat)
            self._beat = loop.call_later(self._heartbeat / 2, self._keep_alive)

    async def call(self, method: Frame, answer: type[Frame]) -> Any:
        """Send a synchronous method on the channel and return the broker's answer (a
        Channel.Close raises BrokerClosed, and the connection is closed)."""
        self._send(CHANNEL, method)
        return await self._answer(answer)

    async def _answer(self, kind: type[Frame]) -> Any:
        """The next method frame for us, which must be a `kind`. Made right after the
        request was written: no frame can come in between (frames come in loop turns)."""
        if self._closed:
            raise self.closed_error or AmqpError("the connection is closed")
        self._reply = asyncio.get_running_loop().create_future()
        try:
            reply = await self._reply
        finally:
            self._reply = None
        if not isinstance(reply, kind):
            self._fail(AmqpError(f"the broker answered {reply.name}, expected {kind.name}"))
            assert self.closed_error is not None
            raise self.closed_error
        return reply

    # -- publishing ----------------------------------------------------------------------

    @property
    def frame_payload_max(self) -> int:
        """The most bytes one frame carries (the broker's frame_max less the framing): a
        message's content header, its properties, must fit in one."""
        return self._body_max

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: spec.Basic.Properties
    ) -> int:
        """Queue one mandatory Basic.Publish with its content; returns its delivery tag.

        ValueError, with nothing queued, if the properties cannot be encoded.

        Frames queued during one turn of the event loop go out in one write. Nothing is
        kept for resending: if the connection drops, the caller sends again.
        """
        if self._closed:
            raise self.closed_error or AmqpError("the connection is closed")
        methods = self._methods
        method = methods.get((exchange, routing_key))
        if method is None:
            if len(methods) >= 4096:
                methods.clear()
            method = methods[exchange, routing_key] = pframe.marshal(
                spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True),
                CHANNEL,
            )
        # The header first: properties that cannot be encoded (ValueError, a lone
        # surrogate in a header, say) leave nothing half-queued on the connection.
        header = pframe.marshal(ContentHeader(0, len(body), properties), CHANNEL)
        out = self._out
        out.append(method)
        out.append(header)
        size = len(body)
        step = self._body_max
        end = b"\xce"
        for start in range(0, size, step):
            chunk = body[start : start + step] if size > step else body
            out.append(_BODY_HEAD.pack(3, CHANNEL, len(chunk)))
            out.append(chunk)
            out.append(end)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        self._tag += 1
        return self._tag

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._write(data)

    # -- state and closing -----------------------------------------------------------------

    def closing(self) -> bool:
        """True once the connection is closed or closing."""
        return self._closed or self._transport is None or self._transport.is_closing()

    async def close(self, wait: float = 1.0) -> None:
        """Connection.Close, wait up to `wait` s for the broker's CloseOk, then until the
        socket is closed (see `wait_closed`); safe twice, and after the connection ended."""
        if not self._closed and self._transport is not None:
            self._send(
                0,
                spec.Connection.Close(
                    reply_code=200, reply_text="Normal shutdown", class_id=0, method_id=0
                ),
            )
            with contextlib.suppress(AmqpError, OSError, TimeoutError):
                async with asyncio.timeout(wait):
                    await self._answer(spec.Connection.CloseOk)
            self._lost(AmqpError("closed by the gateway"))
            self._transport.close()
        await self.wait_closed(wait)

    async def wait_closed(self, wait: float = 1.0) -> None:
        """Return once the socket of a closed or aborted connection is closed, aborting it
        after `wait` s. A TLS connection closes its socket only after the close_notify
        exchange, some turns of the event loop later: without this, a connection closed
        just before its loop stopped kept its socket open until the garbage collector
        found it (an "unclosed transport" ResourceWarning)."""
        gone, transport = self._gone, self._transport
        if gone is None or transport is None or gone.done():
            return
        await asyncio.wait([gone], timeout=wait)
        if not gone.done():
            transport.abort()
            await asyncio.wait([gone], timeout=wait)

    def abort(self) -> None:
        """Close at once, sending nothing more; safe to call twice."""
        self._lost(AmqpError("closed by the gateway"))
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._last_in = loop.time()
        self._gone = loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        self._lost(
            ConnectionResetError(f"the connection to the broker was lost: {exc}")
            if exc
            else ConnectionResetError("the broker closed the connection")
        )

    def data_received(self, data: bytes) -> None:
        self._last_in = asyncio.get_running_loop().time()
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 8:
                kind, channel, size = _FRAME_HEAD.unpack_from(buf, pos)
                if kind not in _FRAME_KINDS:
                    # An HTTP server (RabbitMQ's management port), another protocol or
                    # another AMQP version ("AMQP\0\0\x09\x01" and close).
                    raise AmqpError(
                        "the server does not speak AMQP 0-9-1 (it answered"
                        f" {bytes(buf[pos : pos + 16])!r}); check the URL's host and port"
                    )
                if size > MAX_FRAME_IN:
                    raise AmqpError(f"a frame of {size} bytes from the broker")
                stop = pos + 7 + size + 1
                if stop > end:
                    break
                if buf[stop - 1] != FRAME_END:
                    raise AmqpError("a frame from the broker without its end octet")
                if kind == 1 and size == 13 and buf[pos + 7 : pos + 11] == _ACK_METHOD:
                    tag, bits = _ACK_BODY.unpack_from(buf, pos + 11)
                    if self._on_confirm is not None:
                        self._on_confirm(tag, bool(bits & 1), True)
                elif kind != 8:  # heartbeats only show the broker is there
                    _, channel, frame = pframe.unmarshal(bytes(buf[pos:stop]))
                    self._frame(channel, frame)
                pos = stop
        except (AmqpError, PAMQPException, ValueError, struct.error) as err:
            error = err if isinstance(err, AmqpError) else AmqpError(f"a malformed frame: {err}")
            self._fail(error)
            return
        if pos:
            del buf[:pos]

    # -- frames in ----------------------------------------------------------------------------

    def _frame(self, channel: int, frame: Any) -> None:
        if isinstance(frame, spec.Basic.Nack):
            if self._on_confirm is not None:
                self._on_confirm(frame.delivery_tag, frame.multiple, False)
        elif isinstance(frame, spec.Basic.Ack):  # (the fast path decodes the usual ones)
            if self._on_confirm is not None:
                self._on_confirm(frame.delivery_tag, frame.multiple, True)
        elif isinstance(frame, spec.Basic.Return):
            self._returning = (frame.reply_code or 0, frame.reply_text or "")
        elif isinstance(frame, ContentHeader):
            if self._returning is not None:
                code, text = self._returning
                self._returning = None
                if self._on_return is not None:
                    self._on_return(code, text, frame.properties.message_id)
        elif isinstance(frame, spec.Connection.Close):
            self._send(0, spec.Connection.CloseOk())
            self._fail(BrokerClosed("connection", frame.reply_code or 0, frame.reply_text or ""))
        elif isinstance(frame, spec.Channel.Close):
            self._send(channel, spec.Channel.CloseOk())
            self._fail(BrokerClosed("channel", frame.reply_code or 0, frame.reply_text or ""))
        elif isinstance(frame, (spec.Connection.Blocked, spec.Connection.Unblocked)):
            pass  # not asked for; a blocked connection shows as confirms that do not come
        elif isinstance(frame, Frame):  # the answer to the method we sent
            if self._reply is None or self._reply.done():
                raise AmqpError(f"an unexpected {frame.name} from the broker")
            self._reply.set_result(frame)
        # content body frames (of returned messages): nothing to do

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, channel: int, frame: Frame) -> None:
        self._flush()  # after the publishes queued before it
        self._write(pframe.marshal(frame, channel))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _keep_alive(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_in
        if silent > self._heartbeat * 2:
            self._fail(AmqpError(f"no heartbeat from the broker for {silent:.0f} s"))
            return
        self._write(HEARTBEAT_FRAME)
        self._beat = loop.call_later(self._heartbeat / 2, self._keep_alive)

    def _fail(self, error: BaseException) -> None:
        self._lost(error)
        if self._transport is not None:
            self._transport.close()  # what was written (a CloseOk) still goes

    def _lost(self, error: BaseException) -> None:
        if self._closed:
            return
        self._closed = True
        self.closed_error = error
        self._out.clear()
        if self._beat is not None:
            self._beat.cancel()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)
        if self._on_lost is not None:
            self._on_lost(error)

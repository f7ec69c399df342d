"""Takes JSON posted to `POST /ingest/<topic>` on a listener of its own; 200 means stored.

A client POSTs a JSON object, or an array of them, to `/ingest/<topic...>`:
each object becomes one FlowFile on that topic (the path after /ingest/,
percent-decoded; `prefix` is put in front) whose content is the object's JSON.
The answer is sent only after the store has committed every FlowFile of the
request: **200 means durable**, as a PUBACK is for the MQTT source; it reads
{"stored": 2, "ids": ["0190…", "0190…"]}, or for more than 100 FlowFiles
{"stored": 5000, "first": "0190…", "last": "0190…"} (the ids of one request are
in order). A gateway killed before the commit
sends no answer and the client sends again: delivery is at least once (a request
whose answer was lost on the way back is stored again when sent again).

Refusals, each a one-line JSON body {"error": "..."}; nothing of a refused
request is stored:
  401  no `Authorization: Bearer <token>`, or not one of `tokens` (compared in
       constant time)
  413  a body larger than `max_body` (as sent, and once decompressed), or whose
       FlowFiles would hold more than `max_in_flight` bytes in memory (see below):
       send fewer objects at once
  415  a Content-Type other than application/json (or `…+json`), or a
       Content-Encoding other than gzip, deflate or none
  400  a body that is not JSON (NaN, Infinity or a number beyond a double, such as
       1e999, neither), not an object or an array of objects, a gzip or
       deflate body that does not decompress, or a topic
       that is no valid MQTT topic name (empty, `+`, `#`, NUL, a control
       character: U+0001 to U+001F, U+007F to U+009F, e.g. `%0A`, or a Unicode
       non-character such as U+FFFF, which MQTT brokers refuse) or no UTF-8
       once percent-decoded (`%FF`); a string with a
       lone surrogate (`"\\ud800"`: JSON, but no Unicode a database takes)
  414  a topic longer than 4096 bytes (UTF-8, prefix included)
  408  no byte of the body came for 30 s (a client gone mid-body without closing)
  404  another path; 405 another method than POST
  503  the gateway takes no input now (the buffer is full with `overflow: block`,
       the disk is short), or `max_requests` requests are being read or waiting
       for their commit, or `max_in_flight` bytes of FlowFiles are waiting for
       their commit already, or the source is
       stopping; with `Retry-After` (seconds). A request not confirmed within
       `ack_timeout` is answered 503 too: withdrawn if the engine had not taken it
       yet ("nothing of it is stored"), else it may still be stored ("it may be
       stored"), so sending it again may store it twice (at least once).
The one exception: a request that is no valid HTTP (a request line over 64KiB, a
header line over 8KiB, a malformed header or chunk) is refused 400 by the HTTP layer
(aiohttp) before the source sees it, in plain text; it is logged at DEBUG only, as is a
client that goes before its body came.

Throughput: each client waits for its answer, so lingering to fill a batch
(`buffer.batch_linger`) would only delay it. While nothing but HTTP requests waits for
the commit, the engine commits at once; the requests that arrive during one commit go
together in the next. A stream (an MQTT source) handing data over at the same time
brings the linger back for that batch. For more requests per second, send from more
clients at once, or send arrays (one request, one commit, many FlowFiles).

Memory: the requests waiting for their commit are bounded by what their FlowFiles
hold in memory, counted as the MQTT source counts a message: content, topic and
about 260 bytes more per FlowFile. So a body of many tiny objects counts far more
than its length (1MiB of `{}` is 350k FlowFiles, about 90MB: refused 413 with the
default `max_in_flight`); one request is parsed at a time (briefly up to about 30
times `max_body`). Bodies being received count among `max_requests` too, so that
many clients sending at once hold at most `max_requests` times `max_body` bytes.

The listener is the source's own (`listen`, default 127.0.0.1:8088), not the
console's. Serve it beyond localhost only behind TLS: give `tls_cert` and
`tls_key` (HTTPS), or put a reverse proxy in front; the config check reads them,
as it reads the console's (a file that cannot be read, holds no PEM certificate or
key, a key that is not the certificate's or asks for a passphrase: one line); a
certificate renewed over the files is served from the next reload on, to new
connections (its `changes` say `source NAME certificate renewed`). Tokens
may be `ENC(...)` secrets and are never logged; at least one is required.

Keys
  type: http
  listen: 127.0.0.1:8088   host:port of the listener (default 127.0.0.1:8088)
  tokens: [ENC(...)]       (required) the bearer tokens a client may send
  prefix: ""               put in front of every topic, e.g. "http/" (default none)
  max_body: 1MiB           the largest request body (default 1MiB)
  max_requests: 64         requests being read or waiting for their commit (default 64)
  max_in_flight: 16MiB     their FlowFiles' bytes in memory at most (default 16MiB)
  ack_timeout: 30s         the longest a request waits for its commit (default 30s)
  tls_cert: null           PEM certificate (chain): serve HTTPS; with tls_key
  tls_key: null            its private key (PEM)

Example
  sources:
    api: {type: http, listen: "0.0.0.0:8088", tokens: ["ENC(...)"], prefix: "http/",
          tls_cert: /etc/edge-stream/ingest.crt, tls_key: /etc/edge-stream/ingest.key}

  curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\
       -d '{"temp": 21.5}' https://gateway:8088/ingest/sensors/line1/temp
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import math
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.config.model import Claim, SourceConfig, listen_claim
from gateway.config.schema import POSITIVE_DURATION, Doc, Duration, Range, Size, check_location
from gateway.config.tls import ServedTls, ServedTlsError
from gateway.core.component import Context, Message, Source
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FLOWFILE_OVERHEAD, FlowFile, attributes_size
from gateway.core.topics import validate_received_topic

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; ValueError for one beyond a double (`1e999`): Python
    reads it as infinity, which an array's objects were stored as (`Infinity`, no JSON)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is beyond the range of a double")
    return value


_loads = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite).decode

MAX_TOPIC = 4096  # bytes (UTF-8) of a topic, prefix included; longer: 414
# aiohttp's limit on the request line (8190 by default) answers a longer line itself, in
# plain text: room for a MAX_TOPIC topic percent-encoded (3 bytes a byte), so that a
# topic too long is ours to refuse, in JSON
MAX_LINE = 64 << 10
MAX_IDS = 100  # an answer lists the ids of up to this many FlowFiles; more: first and last
BODY_IDLE = 30.0  # seconds without a byte of a body coming: the request is answered 408


def _utf8_path(raw_path: str) -> bool:
    """Whether a request's path, percent-decoded, is UTF-8. aiohttp leaves an escape that
    decodes to no UTF-8 (`%FF`, an encoded surrogate `%ED%A0%80`) as the three characters
    it was written with: `/ingest/a%FFb` was stored on topic `a%FFb`, the topic that
    `/ingest/a%25FFb` names."""
    try:
        unquote_to_bytes(raw_path.partition("?")[0]).decode()
    except UnicodeDecodeError:
        return False
    return True


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, up to `limit` bytes of it; TimeoutError when no byte comes for BODY_IDLE
    seconds (read(n) returns what has arrived so far: one chunk of a longer body)."""
    body = bytearray()
    while len(body) < limit:
        async with asyncio.timeout(BODY_IDLE):
            chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _encode(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`; ValueError for a lone surrogate (`\\ud800`): valid
    JSON text, but no Unicode (a database's JSON type, a UTF-8 encoder refuse it)."""
    try:
        return _dumps(value).encode()
    except UnicodeEncodeError as err:
        found = err.object[err.start : err.end].encode("unicode_escape").decode()
        raise ValueError(f"the body holds a lone surrogate {found}: not valid Unicode") from None


class _TooLarge(Exception):
    """A request whose FlowFiles would hold more than max_in_flight bytes: 413."""


@dataclass(frozen=True, kw_only=True)
class HttpSourceConfig(SourceConfig):
    """Keys of the `http` source."""

    tokens: Annotated[
        list[str],
        Doc(
            "The bearer tokens a client may send (`Authorization: Bearer <token>`); at least"
            " one, each of 16 characters or more; write them `ENC(...)` (`edge-stream secret"
            " encrypt`), never logged.",
            example=["a-long-random-token-0123"],
        ),
    ]
    listen: Annotated[
        str,
        Doc(
            "host:port of the source's own listener (not the console's); an IPv6 address"
            " in brackets.",
            example="127.0.0.1:8088",
        ),
    ] = "127.0.0.1:8088"
    prefix: Annotated[str, Doc("Put in front of every topic, e.g. `http/` (default: none).")] = ""
    max_body: Annotated[
        Size,
        Doc("The largest request body; a larger one is answered 413."),
        Range(16, 256 << 20, "must be between 16 bytes and 256MiB"),
    ] = 1 << 20
    max_requests: Annotated[
        int,
        Doc(
            "Requests being read or waiting for their commit at once; more are answered"
            " 503 (so bodies in memory stay within `max_requests` times `max_body`)."
        ),
        Range(1, 10000, "must be between 1 and 10000"),
    ] = 64
    max_in_flight: Annotated[
        Size,
        Doc(
            "The bytes the FlowFiles of the requests waiting for their commit hold in"
            " memory (content, topic and about 260 bytes each); more are answered 503, a"
            " request holding more on its own 413."
        ),
        Range(1024, 1 << 30, "must be between 1KiB and 1GiB"),
    ] = 16 << 20
    ack_timeout: Annotated[
        Duration,
        Doc(
            "The longest a request waits for its commit before it is answered 503 (it may"
            " still be stored)."
        ),
        POSITIVE_DURATION,
    ] = 30.0
    tls_cert: Annotated[
        str | None,
        Doc(
            "A PEM certificate (chain) file: serve HTTPS with it; needs `tls_key`. A"
            " certificate renewed over the files is served from the next reload on."
        ),
    ] = None
    tls_key: Annotated[str | None, Doc("The PEM private key file of `tls_cert`.")] = None

    def claims(self) -> list[Claim]:
        return [listen_claim("listen", self.listen)]

    def served_tls(self) -> tuple[str, str] | None:
        return (self.tls_cert, self.tls_key) if self.tls_cert and self.tls_key else None

    def check(self) -> Iterator[tuple[str, str]]:
        problem = check_location(self.listen)
        if problem or not self.listen.rpartition(":")[0] or ":" not in self.listen:
            yield "listen", problem or f"{self.listen!r} must read host:port, e.g. 127.0.0.1:8088"
        if not self.tokens:
            yield "tokens", "the ingest endpoint needs at least one bearer token"
        for i, token in enumerate(self.tokens):
            if len(token) < 16 or any(c.isspace() for c in token):
                yield f"tokens.{i}", "a token needs at least 16 characters and no spaces"
        if self.prefix:
            problem = validate_received_topic(self.prefix + "x")
            if problem:
                yield "prefix", problem
        if bool(self.tls_cert) != bool(self.tls_key):
            yield "tls_cert", "HTTPS needs both tls_cert and tls_key"


class _Request:
    """One accepted request: its messages and the answer waiting for their commit."""

    __slots__ = ("answer", "messages", "size")

    def __init__(self, messages: list[Message], size: int, answer: asyncio.Future[None]) -> None:
        self.messages = messages
        self.size = size
        self.answer = answer


# Content-Encoding -> zlib's wbits for it (0: the body as it is). HTTP's deflate is the
# zlib format; 47 also takes a gzip header, as senders mix them up.
_CODINGS = {"identity": 0, "gzip": 31, "x-gzip": 31, "deflate": 47}


def _decoded(body: bytes, wbits: int, limit: int) -> bytes:
    """`body` decompressed, at most `limit` + 1 bytes of it (more: the caller's 413);
    zlib.error when it is no complete stream of that format. A gzip body may be several
    members one after another (as `cat a.gz b.gz` makes): each is decoded in turn; bytes
    after the end of a deflate stream, or that start no gzip member, are refused."""
    out = bytearray()
    rest = body
    while True:
        unzip = zlib.decompressobj(wbits)
        out += unzip.decompress(rest, limit + 1 - len(out))
        if len(out) > limit:
            return bytes(out)
        if not unzip.eof:
            raise zlib.error("the compressed data ends early")
        rest = unzip.unused_data
        if not rest:
            return bytes(out)
        if wbits == 0 or not rest.startswith(b"\x1f\x8b"):  # not another gzip member
            raise zlib.error("bytes follow the end of the compressed data")


class _ClientErrors(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log for the listener: a request it cannot parse (a bad header, a
    broken chunk) or a client gone mid-request is the client's doing, logged at DEBUG in
    one line; it was an ERROR with a traceback, which any client could fill the log with.
    Anything else (a fault of the source) stays an ERROR with its traceback."""

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError | ConnectionError):
            text = str(error).replace("\n", " ")
            self.debug("%s: %s", str(msg) % args if args else msg, " ".join(text.split()))
            return
        super().exception(msg, *args, **kwargs)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=_dumps({"error": message}).encode() + b"\n",
        content_type="application/json",
        headers=headers,
    )


class HttpSource(Source):
    """An aiohttp listener whose requests are answered after the store commit."""

    Config = HttpSourceConfig
    mode = "stream"
    waits = True  # each client waits for its answer: commit without lingering

    def __init__(self, config: HttpSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: HttpSourceConfig = config
        self._tokens = [t.encode() for t in config.tokens]
        self._runner: web.AppRunner | None = None
        self._waiting: deque[_Request] = deque()  # accepted, not yet handed to the engine
        self._unanswered: set[asyncio.Future[None]] = set()
        self._ready = asyncio.Event()
        self._in_flight = 0  # bytes of the requests waiting for their commit
        self._reading = 0  # requests whose body is being read
        self.requests = 0
        self.refused: dict[str, int] = {}
        self.url = ""
        self._tls: ServedTls | None = None  # what it serves, renewed in place (`renew_tls`)

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Listen on `listen`; RetryableError if the address is taken (another process
        may let it go), PermanentError if it can never be had or the TLS files are bad."""
        if self._runner is not None:
            return
        cfg = self.config
        context = None
        if cfg.tls_cert and cfg.tls_key:
            self._tls = ServedTls(cfg.tls_cert, cfg.tls_key)
            try:  # off the loop (a slow disk)
                context = await asyncio.to_thread(self._tls.listening)
            except ServedTlsError as err:  # the config check read them; changed since
                raise PermanentError(f"{err.key}: {err}") from err
        app = web.Application(client_max_size=cfg.max_body, middlewares=[self._one_line])
        # (?s): a topic holding a newline (%0A) is ours to refuse, 400, not the router's 404
        app.router.add_route("*", "/ingest/{topic:(?s:.*)}", self._ingest)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1.0,
            max_line_size=MAX_LINE,
            # The body is read as sent and gzip/deflate undone here (_decoded): aiohttp's
            # own decoding answered an encoding it lacks (br, zstd) in plain text with an
            # ERROR traceback in the log, and a broken gzip body 500.
            auto_decompress=False,
            logger=_ClientErrors(self.ctx.log),
        )
        await runner.setup()
        host, _, port = cfg.listen.rpartition(":")
        try:
            await web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=context).start()
        except OSError as err:
            await runner.cleanup()
            if err.errno == errno.EADDRINUSE:
                raise RetryableError(
                    f"cannot listen on {cfg.listen}: the address is in use"
                ) from err
            raise PermanentError(
                f"cannot listen on {cfg.listen} ({err.strerror or err}): set listen to an"
                " address of this machine"
            ) from err
        self._runner = runner
        self.url = f"{'https' if context else 'http'}://{cfg.listen}/ingest/"
        self.ctx.log.info("listening on %s", self.url)

    async def renew_tls(self) -> bool:
        """Serve `tls_cert` and `tls_key` anew when they changed since they were read (a
        renewal written over them, then a reload: the source's config is the same, so it
        was not restarted and served the old certificate until it expired); True when it
        did. As the console does (see `ServedTls`): on the socket that listens. Files
        that cannot be served leave the old certificate served, said in an ERROR."""
        runner, tls = self._runner, self._tls
        if runner is None or tls is None:
            return False
        try:
            renewed = await tls.renew()
        except ServedTlsError as err:
            self.ctx.log.error("%s: %s; serving the certificate it had", err.key, err)
            return False
        if not renewed or self._runner is not runner:
            return False  # the same files, or closed meanwhile
        self.ctx.log.info("serving the renewed certificate %s", tls.cert)
        return True

    async def read(self) -> list[Message]:
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        messages: list[Message] = []
        while self._waiting:
            messages.extend(self._waiting.popleft().messages)
        return messages

    async def close(self) -> None:
        """Answer every request still waiting 503, then stop listening. Safe twice."""
        for request in self._waiting:
            if not request.answer.done():
                request.answer.set_exception(
                    ConnectionAbortedError("the source is stopping; nothing of it is stored")
                )
        self._waiting.clear()
        for answer in self._unanswered:  # handed over, not confirmed: the engine stopped
            if not answer.done():
                answer.set_exception(
                    ConnectionAbortedError("the source is stopping; it may be stored")
                )
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def status(self) -> dict[str, object]:
        return {
            "listen": self.config.listen,
            "requests": self.requests,
            "waiting_bytes": self._in_flight,
            "refused": dict(self.refused),
        }

    # --- requests -------------------------------------------------------------------------

    @web.middleware
    async def _one_line(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """aiohttp's own refusals (404, 405, 413) as one-line JSON errors too."""
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except web.HTTPException as err:
            if err.status < 400:
                raise
            return self._refuse(err.status, err.reason)

    def _refuse(self, status: int, message: str, **headers: str) -> web.Response:
        self.refused[str(status)] = self.refused.get(str(status), 0) + 1
        return _error(status, message, **headers)

    def _busy(self, message: str) -> web.Response:
        return self._refuse(503, message, **{"Retry-After": "1"})

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        token = given.strip().encode()
        # every token compared, in constant time each: the answer time tells nothing
        found = False
        for known in self._tokens:
            found |= hmac.compare_digest(token, known)
        return found

    async def _ingest(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        if request.method != "POST":
            return self._refuse(405, "use POST", Allow="POST")
        if not self._authorized(request):
            return self._refuse(
                401, "missing or unknown bearer token", **{"WWW-Authenticate": "Bearer"}
            )
        kind = request.content_type
        if kind != "application/json" and not kind.endswith("+json"):
            return self._refuse(415, f"Content-Type must be application/json, not {kind!r}")
        coding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if coding not in _CODINGS:
            return self._refuse(
                415, f"Content-Encoding must be gzip, deflate or none, not {coding!r}"
            )
        length = request.content_length
        if length is not None and length > cfg.max_body:
            return self._refuse(413, f"the body is larger than {cfg.max_body} bytes")
        path = request.match_info["topic"]
        if not _utf8_path(request.raw_path):
            return self._refuse(
                400, "the topic in the path is not UTF-8 once percent-decoded (e.g. %FF)"
            )
        topic = cfg.prefix + path
        if len(topic.encode(errors="replace")) > MAX_TOPIC:
            return self._refuse(414, f"the topic is longer than {MAX_TOPIC} bytes")
        problem = (
            validate_received_topic(topic) if path else "the path names no topic: /ingest/<topic>"
        )
        if problem:
            return self._refuse(400, f"bad topic {topic!r}: {problem}")
        if not self.ctx.accepting():
            return self._busy("the gateway's buffer is full; send again later")
        # the bodies being read count too: each holds up to max_body bytes, and as many
        # clients as care to send at once held that many (150 of 1MiB: +150MB)
        if len(self._unanswered) + self._reading >= cfg.max_requests:
            return self._busy(f"{cfg.max_requests} requests are being read or waiting already")
        self._reading += 1
        try:
            body = await _read_body(request, cfg.max_body + 1)
        except ConnectionError:  # the client went before its body was in: nobody to answer
            return self._refuse(400, "the client closed the connection before its body came")
        except TimeoutError:  # gone without a word (a link lost): it held a place of max_requests
            return self._refuse(408, f"no byte of the body came for {BODY_IDLE:g}s")
        finally:  # no await from here until _store counts it among _unanswered
            self._reading -= 1
        if len(body) <= cfg.max_body and _CODINGS[coding]:
            try:
                body = _decoded(body, _CODINGS[coding], cfg.max_body)
            except zlib.error as err:
                return self._refuse(400, f"the body is not valid {coding}: {err}")
        if len(body) > cfg.max_body:
            return self._refuse(413, f"the body is larger than {cfg.max_body} bytes")
        if self._in_flight + len(body) > cfg.max_in_flight and self._in_flight:
            return self._busy(f"{cfg.max_in_flight} bytes are waiting already")
        try:
            flowfiles, size = self._flowfiles(topic, body)
        except ValueError as err:
            return self._refuse(400, str(err))
        except _TooLarge as err:
            return self._refuse(413, str(err))
        if not flowfiles:
            return web.json_response({"stored": 0, "ids": []})
        if self._in_flight + size > cfg.max_in_flight and self._in_flight:
            return self._busy(f"{cfg.max_in_flight} bytes are waiting already")
        return await self._store(flowfiles, size)

    def _flowfiles(self, topic: str, body: bytes) -> tuple[list[FlowFile], int]:
        """The request's FlowFiles and the bytes they hold in memory (as the MQTT source
        counts a message: content, topic, attributes and FLOWFILE_OVERHEAD each);
        _TooLarge beyond `max_in_flight`, before making more of them."""
        try:
            value = _loads(body.decode())
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ValueError(f"the body is not JSON: {err}") from None
        if isinstance(value, dict):
            items = None
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            items = value
        else:
            raise ValueError("the body must be a JSON object or an array of objects")
        limit = self.config.max_in_flight
        each = len(topic) + attributes_size({}) + FLOWFILE_OVERHEAD
        count = 1 if items is None else len(items)
        if count * each > limit:  # even if the objects were empty
            raise _TooLarge(self._too_large(count, count * each))
        now = self.ctx.clock.now_ns()
        if items is None:
            if b"\\u" in body:  # an escaped lone surrogate is JSON, but no text to store
                _encode(value)
            content = body.strip()
            if each + len(content) > limit:  # as an array of it is: "on its own 413"
                raise _TooLarge(self._too_large(1, each + len(content)))
            return [FlowFile.create(topic, content, {}, now)], each + len(content)
        flowfiles = []
        size = 0
        for item in items:
            ff = FlowFile.create(topic, _encode(item), {}, now)
            size += each + len(ff.content)
            if size > limit:
                raise _TooLarge(self._too_large(count, size, at_least=True))
            flowfiles.append(ff)
        return flowfiles, size

    def _too_large(self, count: int, size: int, at_least: bool = False) -> str:
        return (
            f"the body's {count} objects would take {'more than ' if at_least else ''}"
            f"{size} bytes in memory, more than max_in_flight ({self.config.max_in_flight}):"
            " send fewer objects per request"
        )

    async def _store(self, flowfiles: list[FlowFile], size: int) -> web.StreamResponse:
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def committed() -> None:  # the engine calls it after the commit holding them all
            if not answer.done():
                answer.set_result(None)

        # Commits are in order: the last message's ack says the whole request is stored.
        messages = [Message(ff) for ff in flowfiles[:-1]]
        messages.append(Message(flowfiles[-1], ack=committed))
        request = _Request(messages, size, answer)
        self._waiting.append(request)
        self._unanswered.add(answer)
        self._in_flight += size
        self._ready.set()
        try:
            async with asyncio.timeout(self.config.ack_timeout):
                await asyncio.shield(answer)
        except TimeoutError:
            if request in self._waiting:
                # Not handed over yet (the engine's intake held up: store commits failing):
                # withdrawn, so that the 503 holds. Left waiting, each such request kept its
                # body in memory uncounted, a place of max_requests freed for the next: a
                # queue without bound while it lasted, all of it stored later, and twice
                # what its clients sent again.
                self._waiting.remove(request)
                return self._busy(
                    f"not taken within {self.config.ack_timeout:g}s; nothing of it is stored"
                )
            return self._busy(
                f"not confirmed within {self.config.ack_timeout:g}s; it may be stored"
            )
        except ConnectionAbortedError as err:
            return self._busy(str(err))
        finally:
            self._unanswered.discard(answer)
            self._in_flight -= size
        self.requests += 1
        if len(flowfiles) > MAX_IDS:  # a bounded answer: the ids of one request are in order
            return web.json_response(
                {"stored": len(flowfiles), "first": flowfiles[0].id, "last": flowfiles[-1].id}
            )
        return web.json_response({"stored": len(flowfiles), "ids": [ff.id for ff in flowfiles]})

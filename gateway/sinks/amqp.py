"""Publishes FlowFiles to a RabbitMQ exchange (AMQP 0-9-1), persistent, with publisher confirms.

Every FlowFile becomes one persistent message (delivery mode 2) published to
`exchange` with a routing key made from `routing_key` (default `{topic}`). The
FlowFile's topic goes in with its MQTT levels joined by `.`, the word separator
of topic exchanges: `sensors/a/telemetry` becomes `sensors.a.telemetry`, so a
queue bound with `sensors.*.telemetry` or `sensors.#` gets it. A `.` inside a
level would split it in two, so it becomes `_` (`v1.2` -> `v1_2`).
`topic_separator: "/"` keeps the topic as it is (for a direct exchange, say).

Each message carries the FlowFile id as `message_id`, its creation time as
`timestamp` (whole seconds, as AMQP has it), the gateway id as `app_id`,
`content_type: application/json` when the content is JSON, and as headers the
FlowFile's attributes plus `topic` (the MQTT topic) and `ts` (the creation time
in RFC 3339 UTC with microseconds); an attribute named `topic` or `ts` gives way
to those. The body is the content bytes.

A batch counts as delivered, and the sink's cursor moves on, only after the
broker confirmed every message of it (publisher confirms). At most
`max_inflight` messages, and `max_inflight_bytes` of content, wait for their
confirm at any time. A broker that answers a publish with a nack (a queue full
with `overflow: reject-publish`, an internal error), a connection or channel
lost, a broker restarting, or confirms missing after `timeout` make the batch
go again after a reconnect, without what the broker confirmed of it (so a queue
with room for part of a batch takes the rest at the next tries); after a restart
of the gateway or a reload of the sink, all of it goes again: delivery is **at
least once**. A message whose confirm was lost, or a batch sent again after a
crash, may reach a queue twice; every copy has the same `message_id`, by which
consumers drop repeats.

Messages are published `mandatory`: one that no queue is bound to take comes
back from the broker. With `unroutable: dead_letter` (the default) it goes to
the dead-letter table with the broker's reason and its routing key, and the
rest of the batch is delivered; with `unroutable: drop` it is counted
(`unroutable` in /api/status) and dropped, as the broker itself would drop it
without `mandatory`. An exchange with an alternate exchange routes such
messages there instead, and nothing comes back. A routing key longer than 255
bytes, content larger than 128 MiB (RabbitMQ's largest message), or attributes
(MQTT user properties, say) too large for the one frame AMQP gives a message's
headers (128 KiB with RabbitMQ's default `frame_max`), with a name longer than 128
bytes (the most a header name takes here) or that are not valid Unicode text (a lone
surrogate) go to the dead-letter table.

At connect the sink declares the exchange (`declare: true`, the default: type
`exchange_type`, `durable`), or with `declare: false` checks that it exists.
With `queue` set it also declares that durable queue and binds it to the
exchange with `binding_key`, so that messages are kept even before any
consumer came. `exchange: ""` is the broker's default exchange, which routes
a message to the queue named by its routing key (and takes no binding): with
`queue` there, `routing_key` is that queue's name. A key fixed when the sink
starts (no placeholder, or only {gateway} and {sink}, filled in) that is not is
refused when the config loads; a {topic} key is taken as written.

A broker that refuses the sink when it starts (user or password, no access to
the virtual host, a missing permission to declare, an exchange that exists with
another type, a TLS certificate either side does not trust) stops it until the
config is fixed, with one line saying so; the same refusal on a reconnect while
running is retried, since the operator may be changing the broker's side. A
broker that cannot be reached or is restarting is retried with backoff.

The URL is `amqp://user:password@host:5672/vhost` or `amqps://` (TLS, port
5671 by default); percent-encode `/` in the vhost (`%2F` is the vhost `/`, the
default when the path is empty) and `#`, `/`, `?`, `@` in user and password.
`username` and `password` override the URL's; the password may be an
`ENC(...)` secret and is never logged. `ca_file` verifies the broker (default:
the system's CAs), `cert_file` and `key_file` present a client certificate.

Keys
  type: amqp
  url: amqp://gw:secret@rabbit:5672/plant   (required) amqp:// or amqps://
  exchange: edge           the exchange: {gateway} and {sink} may be used; ""
                           is the default exchange (default edge)
  exchange_type: topic     topic, direct, fanout or headers, for declaring it
                           (default topic)
  declare: true            declare the exchange at connect; false: it must
                           exist (default true)
  durable: true            the exchange declared survives a broker restart
                           (default true); this and exchange_type only where
                           the exchange is declared (declare: true, not "")
  queue: null              a durable queue to declare and bind (default none)
  binding_key: "#"         how `queue` is bound to the exchange (default #);
                           only with queue, and not on the default exchange
  routing_key: "{topic}"   {topic}, {gateway}, {sink} (default {topic})
  topic_separator: "."     what the MQTT level separator `/` becomes in
                           {topic}: "." or "/" (kept) (default ".")
  unroutable: dead_letter  a message no queue takes: dead_letter or drop
                           (default dead_letter)
  max_inflight: 256        messages published and not yet confirmed (default 256)
  max_inflight_bytes: 8MiB their content, at most (one larger message still
                           goes, alone) (default 8MiB)
  username: null           (default: from the URL, else guest)
  password: null           (default: from the URL, else guest)
  ca_file: null            CA bundle for amqps:// (default: the system's)
  cert_file: null          client certificate (PEM) for amqps://
  key_file: null           its private key (PEM)
  connect_timeout: 10s     (default 10s)
  timeout: 30s             the longest a batch may wait for its confirms (default 30s)
  and the delivery keys every sink has: batch, retry, rate_limit, overflow.

Example
  sinks:
    fleet:
      type: amqp
      url: amqps://rabbit.plant.lan/plant
      username: pi-01
      password: ENC(...)
      exchange: telemetry
      routing_key: "{gateway}.{topic}"
      ca_file: /etc/edge-stream/ca.pem
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import ssl
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import orjson
from pamqp import commands as spec
from pamqp import frame as pframe
from pamqp.header import ContentHeader
from yarl import URL

from gateway.amqp.client import AmqpError, BrokerClosed, LoginRefused, Publisher, vhost_of
from gateway.config.model import SinkConfig
from gateway.config.schema import (
    POSITIVE_DURATION,
    Doc,
    Duration,
    Range,
    Size,
    safe_url,
    url_syntax_problem,
)
from gateway.core.clock import rfc3339
from gateway.core.component import Context, Rejected, Settled, Sink, unsettled
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.core.tls import certificate_refusal, error_chain
from gateway.core.topics import template_fields
from gateway.mqtt.urls import tls_context

_PLACEHOLDERS = frozenset({"topic", "gateway", "sink"})
_EXCHANGE_NAME = re.compile(r"[A-Za-z0-9_.:\-]*")
MAX_KEY_BYTES = 255  # exchange names and routing keys are AMQP short strings
MAX_BODY_BYTES = 128 << 20  # RabbitMQ's max_message_size, default and upper bound

# Losing the connection or the channel, a broker going down, frames that cannot be
# sent: the batch goes again after a reconnect.
LOST = (AmqpError, OSError)


def _placeholders(template: str) -> list[str]:
    return template_fields(template)


@dataclass(frozen=True, kw_only=True)
class AmqpSinkConfig(SinkConfig):
    """Keys of the `amqp` sink (plus batch, retry, rate_limit, overflow from SinkConfig)."""

    url: Annotated[
        str,
        Doc(
            "`amqp://user:password@host:5672/vhost` or `amqps://` (TLS); `%2F` is the vhost"
            " `/` (the default for an empty path).",
            example="amqp://edge:secret@127.0.0.1:5672/plant",
        ),
    ]
    exchange: Annotated[
        str,
        Doc(
            'The exchange to publish to; `{gateway}` and `{sink}` may be used; `""` is the'
            " default exchange (routing key = queue name)."
        ),
    ] = "edge"
    exchange_type: Annotated[
        Literal["topic", "direct", "fanout", "headers"],
        Doc(
            'The exchange\'s type, for declaring it (not with `declare: false` or `exchange: ""`).'
        ),
    ] = "topic"
    declare: Annotated[
        bool,
        Doc("Declare the exchange at connect (`false`: it must exist, which is checked)."),
    ] = True
    durable: Annotated[
        bool,
        Doc(
            "The exchange declared survives a broker restart (not with `declare: false` or"
            ' `exchange: ""`).'
        ),
    ] = True
    queue: Annotated[
        str | None,
        Doc("A durable queue to declare at connect and bind to the exchange with `binding_key`."),
    ] = None
    binding_key: Annotated[
        str, Doc('How `queue` is bound to the exchange (only with `queue`, not `exchange: ""`).')
    ] = "#"
    routing_key: Annotated[
        str,
        Doc(
            "The routing key: `{topic}` (its levels joined by `topic_separator`),"
            " `{gateway}`, `{sink}`."
        ),
    ] = "{topic}"
    topic_separator: Annotated[
        Literal[".", "/"],
        Doc(
            'What the MQTT level separator becomes in `{topic}`: `"."` (topic exchanges;'
            ' a `.` inside a level becomes `_`) or `"/"` (the topic as it is).'
        ),
    ] = "."
    unroutable: Annotated[
        Literal["dead_letter", "drop"],
        Doc(
            "A message no queue takes (the broker returns it): `dead_letter` it with the"
            " reason, or `drop` it (counted in /api/status)."
        ),
    ] = "dead_letter"
    max_inflight: Annotated[
        int,
        Doc("Messages published and not yet confirmed, at most."),
        Range(1, 10000, "must be between 1 and 10000"),
    ] = 256
    max_inflight_bytes: Annotated[
        Size,
        Doc(
            "Content published and not yet confirmed, at most (a single larger message"
            " still goes, alone)."
        ),
        Range(64 << 10, 256 << 20, "must be between 64KiB and 256MiB"),
    ] = 8 << 20
    username: Annotated[str | None, Doc("The user (default: from the URL, else guest).")] = None
    password: Annotated[
        str | None,
        Doc("The password, may be `ENC(...)` (default: from the URL); never logged."),
    ] = None
    ca_file: Annotated[
        str | None,
        Doc("CA bundle that verifies the broker, for `amqps://` (default: the system's CAs)."),
    ] = None
    cert_file: Annotated[
        str | None, Doc("Client certificate (PEM) for `amqps://`; goes with `key_file`.")
    ] = None
    key_file: Annotated[str | None, Doc("The client certificate's private key (PEM).")] = None
    connect_timeout: Annotated[
        Duration,
        Doc("The longest a connect may take."),
        POSITIVE_DURATION,
    ] = 10.0
    timeout: Annotated[
        Duration,
        Doc("The longest a batch may wait for its confirms before it is sent again."),
        POSITIVE_DURATION,
    ] = 30.0

    def check(self) -> Iterator[tuple[str, str]]:
        # A key that failed is None here (its problem is reported already).
        problem = _url_problem(self.url) if self.url is not None else None
        if problem:
            yield "url", problem
        elif self.url is not None and not self.url.startswith("amqps://"):
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name):
                    yield name, "needs TLS: use an amqps:// URL"
        if bool(self.cert_file) != bool(self.key_file):
            yield "cert_file", "cert_file and key_file go together"
        if self.exchange is not None:
            yield from _template_problems("exchange", self.exchange, {"gateway", "sink"})
        if self.routing_key is not None:
            yield from _template_problems("routing_key", self.routing_key, _PLACEHOLDERS)
        if self.exchange is not None:
            yield from self._exchange_problems(self.exchange)
        if self.queue is not None:
            if not self.queue or len(self.queue.encode()) > MAX_KEY_BYTES:
                yield "queue", "must be 1 to 255 bytes long"
            elif self.queue.startswith("amq."):
                yield "queue", f"{self.queue!r}: amq.* names are the broker's own"
        # reported above ({topic.1}: an unknown placeholder, AttributeError in format)
        with contextlib.suppress(ValueError, KeyError, IndexError, AttributeError):
            fixed = (self.routing_key or "").format(topic="", gateway="", sink="")
            if len(fixed.encode()) > MAX_KEY_BYTES:
                yield "routing_key", f"must be at most {MAX_KEY_BYTES} bytes long"
        if self.binding_key is not None and len(self.binding_key.encode()) > MAX_KEY_BYTES:
            yield "binding_key", "must be at most 255 bytes long"
        yield from self._unread_problems()

    def _unread_problems(self) -> Iterator[tuple[str, str]]:
        """Keys set away from their defaults where nothing reads them, which would be
        taken and ignored."""
        default_exchange = self.exchange == ""
        if self.binding_key not in (None, "#"):
            if self.queue is None:
                yield "binding_key", "binding_key applies only with queue (which it binds)"
            elif default_exchange:
                yield (
                    "binding_key",
                    'the default exchange (exchange: "") takes no binding: it routes to the'
                    " queue named by the routing key",
                )
        problem = self.default_exchange_problem(None, None)
        if problem:
            yield "routing_key", problem
        if default_exchange:
            unused = 'the default exchange (exchange: "") is never declared'
        elif self.declare is False:
            unused = "with declare: false the exchange is only checked to exist"
        else:
            return
        if self.exchange_type not in (None, "topic"):
            yield "exchange_type", f"exchange_type is for declaring the exchange; {unused}"
        if self.durable is False:
            yield "durable", f"durable is for declaring the exchange; {unused}"

    def default_exchange_problem(self, gateway_id: str | None, sink: str | None) -> str | None:
        """With `exchange: ""` and `queue`, a routing key that never names the queue: every
        message came back unroutable, to the dead letters, the queue left empty. Only a
        key fixed when the sink starts is checked: one without placeholders here, one with
        {gateway} or {sink} too when the loader passes the gateway id and the sink's name
        (`{topic}` depends on the FlowFile, and may be the queue's name)."""
        if self.exchange != "" or not self.queue or self.routing_key is None:
            return None
        try:
            names = set(_placeholders(self.routing_key))
            fill = {"gateway": gateway_id, "sink": sink}
            if any(fill.get(name) is None for name in names):
                return None  # {topic}, or not known here: the loader checks it with them
            key = self.routing_key.format(**{name: fill[name] for name in names})
        except (ValueError, KeyError, IndexError, AttributeError):
            return None  # reported by its own check
        if key == self.queue:
            return None
        written = f" ({self.routing_key!r} is {key!r})" if names else ""
        return (
            f'the default exchange (exchange: "") routes a message to the queue its routing'
            f" key names{written}: set routing_key: {self.queue} for queue {self.queue}"
        )

    def _exchange_problems(self, exchange: str) -> Iterator[tuple[str, str]]:
        example = exchange.replace("{gateway}", "g").replace("{sink}", "s")
        if len(example.encode()) > MAX_KEY_BYTES:
            yield "exchange", f"must be at most {MAX_KEY_BYTES} bytes long"
        elif not _EXCHANGE_NAME.fullmatch(example):
            yield (
                "exchange",
                f"{exchange!r}: an exchange name has letters, digits, -, _, . and : only",
            )
        elif self.declare and example.startswith("amq."):
            yield (
                "exchange",
                f"{exchange!r}: amq.* exchanges exist already and cannot be declared;"
                " set declare: false",
            )


def _url_problem(url: str) -> str | None:
    if not url.startswith(("amqp://", "amqps://")):
        return f"{safe_url(url)!r} must start with amqp:// or amqps://"
    try:
        parsed = URL(url)
    except ValueError:
        return (
            f"{safe_url(url)} is not a valid URL (percent-encode #, /, ? and @ in user and"
            " password)"
        )
    if not parsed.host:
        return f"{safe_url(url)} names no host"
    if problem := url_syntax_problem(url):
        return f"{safe_url(url)}: {problem}"
    if parsed.path.count("/") > 1:
        return f"{safe_url(url)}: write a vhost holding / percent-encoded (%2F)"
    return None


def _template_problems(
    key: str, template: str, allowed: frozenset[str] | set[str]
) -> Iterator[tuple[str, str]]:
    try:
        names = _placeholders(template)
    except ValueError as err:
        yield key, str(err)
        return
    for name in names:
        if name not in allowed:
            choices = ", ".join(f"{{{n}}}" for n in sorted(allowed))
            yield key, f"{template!r}: unknown placeholder {{{name}}}; use {choices}"


def _is_json(content: bytes) -> bool:
    try:
        orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return True


class _ByteWindow:
    """Admits publishes while their bytes in flight stay under a limit (and their number
    under `count`, if set), first come first served (so a batch goes out in its order);
    one larger than the limit goes alone. After `fail(error)`, every waiter, and every
    later `enter` and `drained`, raises that error."""

    def __init__(self, limit: int, count: int = 0) -> None:
        self.limit = limit
        self.count = count  # 0: no limit on the number
        self.used = 0
        self.inside = 0
        self.error: BaseException | None = None
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._empty: asyncio.Future[None] | None = None

    def _admits(self, size: int) -> bool:
        return not self.inside or (
            (not self.count or self.inside < self.count) and self.used + size <= self.limit
        )

    async def enter(self, size: int) -> None:
        """Returns at once (without yielding to the loop) when there is room."""
        if self.error is not None:
            raise self.error
        if not self._waiting and self._admits(size):
            self.used += size
            self.inside += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave(size)  # admitted just as it was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove((size, waiter))
            raise

    def leave(self, size: int) -> None:
        self.used -= size
        self.inside -= 1
        while self._waiting:
            size, waiter = self._waiting[0]
            if waiter.cancelled():
                self._waiting.popleft()
                continue
            if not self._admits(size):
                return
            self._waiting.popleft()
            self.used += size
            self.inside += 1
            waiter.set_result(None)
        if not self.inside and self._empty is not None and not self._empty.done():
            self._empty.set_result(None)

    async def drained(self) -> None:
        """Wait until nothing is in flight."""
        while self.inside and self.error is None:
            self._empty = asyncio.get_running_loop().create_future()
            await self._empty
        if self.error is not None:
            raise self.error

    def fail(self, error: BaseException) -> None:
        if self.error is not None:
            return
        self.error = error
        for _, waiter in self._waiting:
            if not waiter.done():
                waiter.set_exception(error)
        self._waiting.clear()
        if self._empty is not None and not self._empty.done():
            self._empty.set_exception(error)


class _Batch:
    """The batch being published: its messages awaiting their confirm (delivery tag ->
    size, in the order sent), the nacks and the returns so far."""

    def __init__(self, window: _ByteWindow) -> None:
        self.window = window
        self.sizes: OrderedDict[int, int] = OrderedDict()
        self.ids: dict[int, str] = {}  # delivery tag -> FlowFile id
        self.acked: list[int] = []  # the delivery tags the broker confirmed (ack)
        self.nacked = 0
        self.returned: list[tuple[str | None, str]] = []  # (message_id, reason)


class AmqpSink(Sink):
    """Publishes each batch on one channel with publisher confirms, and waits for them all."""

    Config = AmqpSinkConfig

    def __init__(self, config: AmqpSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._ran = False  # connected once: a refusal from now on is retried
        self.config: AmqpSinkConfig = config
        self.exchange_name = config.exchange.format(gateway=ctx.gateway_id, sink=ctx.name)
        template = config.routing_key.replace("{topic}", "\0")
        self._key_parts = template.format(gateway=ctx.gateway_id, sink=ctx.name).split("\0")
        url = URL(config.url)
        if config.username is not None:
            url = url.with_user(config.username)
        if config.password is not None:
            url = url.with_password(config.password)
        self._url = url
        self.where = safe_url(config.url)
        self._client: Publisher | None = None
        self._batch: _Batch | None = None
        # What the broker settled of a batch whose write failed, by FlowFile id: None
        # confirmed (ack), else refused for good. The engine sends that batch again; only the
        # rest goes (a queue with room for part of a batch nacked the rest at every try).
        self._settled: Settled = {}
        self._lock = asyncio.Lock()
        self.unroutable = 0  # messages returned and dropped (unroutable: drop)

    def status(self) -> Mapping[str, object]:
        """The broker, the exchange, and the messages dropped as unroutable."""
        return {"broker": self.where, "exchange": self.exchange_name, "unroutable": self.unroutable}

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, open a channel with publisher confirms, declare or check the exchange
        (and the queue).

        RetryableError if the broker cannot be reached or is starting; PermanentError if it
        refuses us: user or password, the vhost, a permission, an exchange or queue that
        exists with other settings or does not exist, a TLS certificate.
        """
        # A refusal stops the sink only at its start; once it ran, the same refusal is retried
        # (the operator may be changing the broker's side): the engine reconnects with this.
        permanent = RetryableError if self._ran else PermanentError
        async with self._lock:
            await self._open(permanent=permanent)
        self._ran = True

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _open(self, permanent: type[Exception] = RetryableError) -> Publisher:
        """A live connection, made now if need be. From write(), a refusal is retried: the
        operator may fix the password or the permissions while data waits."""
        client = self._client
        if client is not None and not client.closing():
            return client
        await self._drop()
        cfg = self.config
        url = self._url
        context: ssl.SSLContext | None = None
        if url.scheme == "amqps":
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(cfg, name)
                if path and not os.access(path, os.R_OK):
                    raise permanent(f"{name} {path} cannot be read")
            try:
                context = tls_context(cfg.ca_file, cfg.cert_file, cfg.key_file)
            except OSError as err:  # ssl.SSLError included
                raise permanent(
                    f"cannot use the TLS files (ca_file, cert_file, key_file): {err}"
                ) from err
        client = Publisher(on_confirm=self._confirmed, on_return=self._returned, on_lost=self._lost)
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                await client.open(
                    url.host or "",
                    url.explicit_port or (5671 if context else 5672),
                    vhost=vhost_of(url.raw_path),
                    username=url.user or "guest",
                    password=url.password or "guest",
                    tls=context,
                    client_properties={
                        "connection_name": f"edge-stream {self.ctx.gateway_id} {self.ctx.name}"
                    },
                )
                await self._prepare(client)
        except TimeoutError as err:
            client.abort()
            await client.wait_closed()
            raise RetryableError(
                f"no answer from {self.where} within {cfg.connect_timeout:g}s"
            ) from err
        except LOST as err:
            client.abort()
            await client.wait_closed()
            refusal = self._refusal(err)
            if refusal is not None:
                raise permanent(f"{self.where} refused us: {refusal}") from err
            raise RetryableError(f"cannot connect to {self.where}: {_reason(err)}") from err
        self._client = client
        self.ctx.log.info("connected to %s, exchange %r", self.where, self.exchange_name)
        return client

    async def _prepare(self, client: Publisher) -> None:
        cfg = self.config
        name = self.exchange_name
        if name:  # "" is the default exchange: always there, never declared
            declare = spec.Exchange.Declare(
                exchange=name,
                exchange_type=cfg.exchange_type,
                durable=cfg.durable,
                passive=not cfg.declare,  # declare: false: it must exist
            )
            await client.call(declare, spec.Exchange.DeclareOk)
        if cfg.queue is not None:
            await client.call(
                spec.Queue.Declare(queue=cfg.queue, durable=True), spec.Queue.DeclareOk
            )
            if name:
                bind = spec.Queue.Bind(queue=cfg.queue, exchange=name, routing_key=cfg.binding_key)
                await client.call(bind, spec.Queue.BindOk)

    def _refusal(self, err: BaseException) -> str | None:
        """What in `err` says the broker refuses us until an operator acts, or None."""
        for cause in error_chain(err):
            if isinstance(cause, BrokerClosed):
                refusal = _REFUSALS.get((cause.scope, cause.code))
                if refusal is None:
                    return None  # the broker shutting down (320), an error of its own ...
                if cause.scope == "channel" and " queue '" in cause.text:
                    # about `queue`, which is declared whatever `declare` says: the
                    # exchange's hint sent the user to keys that changed nothing
                    refusal = _QUEUE_REFUSALS.get(cause.code, refusal)
                if cause.code == 530:
                    refusal = refusal.format(vhost=vhost_of(self._url.raw_path))
                return f"{_reason(cause)} ({refusal})"
            if isinstance(cause, LoginRefused):
                return f"{cause} (no common login mechanism)"
            refusal = certificate_refusal(cause, "cert_file and key_file")
            if refusal:
                return refusal
        return None

    # --- confirms, returns (called by the client as frames come in) -----------------------

    def _confirmed(self, tag: int, multiple: bool, ack: bool) -> None:
        state = self._batch
        if state is None:
            return
        sizes, leave = state.sizes, state.window.leave
        if multiple:
            while sizes:
                first = next(iter(sizes))
                if first > tag:
                    break
                leave(sizes.pop(first))
                if ack:
                    state.acked.append(first)
                else:
                    state.nacked += 1
        else:
            size = sizes.pop(tag, None)
            if size is not None:
                leave(size)
                if ack:
                    state.acked.append(tag)
                else:
                    state.nacked += 1

    def _returned(self, code: int, text: str, message_id: str | None) -> None:
        if self._batch is not None:
            self._batch.returned.append((message_id, f"{code} {text}"))

    def _lost(self, error: BaseException) -> None:
        if self._batch is not None:
            self._batch.window.fail(error)

    def _settle(self, batch: list[FlowFile], state: _Batch) -> None:
        """Keeps what the broker confirmed of this try, for a retry of the batch to leave
        out: a confirmed message is in its queues (or was returned: dead-lettered or
        dropped, as the rest of the batch will say)."""
        if not state.acked:
            return
        returned = {message_id: reason for message_id, reason in state.returned}
        by_id = {ff.id: ff for ff in batch}
        for tag in state.acked:
            message_id = state.ids[tag]
            reason = returned.get(message_id)
            if reason is None:
                self._settled[message_id] = None
            elif self.config.unroutable == "drop":
                self._settled[message_id] = None
                self.unroutable += 1
            else:
                ff = by_id[message_id]
                self._settled[message_id] = Rejected(ff, self._unroutable_reason(ff, reason))

    def _unroutable_reason(self, ff: FlowFile, reason: str) -> str:
        return (
            f"amqp: exchange {self.exchange_name!r} has no queue for routing key"
            f" {self._routing_key(ff.topic)!r} ({reason})"
        )

    # --- writing --------------------------------------------------------------------------

    def _routing_key(self, topic: str) -> str:
        parts = self._key_parts
        if len(parts) == 1:
            return parts[0]
        if self.config.topic_separator == ".":
            topic = topic.replace(".", "_").replace("/", ".")
        return topic.join(parts)

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        if not batch:
            return []
        async with self._lock:
            settled = self._settled
            # what the broker confirmed (or returned as unroutable) is not sent again
            batch, earlier = unsettled(settled, batch)
            if not batch:
                settled.clear()
                return earlier
            client = await self._open()
            try:
                async with asyncio.timeout(self.config.timeout):
                    rejected = await self._publish(client, batch)
                settled.clear()
                return earlier + rejected
            except TimeoutError as err:
                await self._drop()
                raise RetryableError(
                    f"{self.where} did not confirm the batch of {len(batch)} within"
                    f" {self.config.timeout:g}s; it will be sent again (at least once)"
                ) from err
            except LOST as err:
                await self._drop()
                raise RetryableError(
                    f"lost {self.where}: {_reason(err)}; the batch will be sent again"
                    " (at least once)"
                ) from err

    async def _publish(self, client: Publisher, batch: list[FlowFile]) -> list[Rejected]:
        cfg = self.config
        exchange = self.exchange_name
        gateway = self.ctx.gateway_id
        rejected: list[Rejected] = []
        window = _ByteWindow(cfg.max_inflight_bytes, cfg.max_inflight)
        state = self._batch = _Batch(window)
        sizes = state.sizes
        properties = spec.Basic.Properties
        try:
            # Publishes go out as the window admits them: those queued in one turn of the
            # event loop in one socket write (the client corks them), the next ones as
            # confirms make room.
            for ff in batch:
                key = self._routing_key(ff.topic)
                problem = _message_problem(key, ff)
                if problem is not None:
                    rejected.append(Rejected(ff, f"amqp: {problem}"))
                    continue
                content = ff.content
                created = ff.created
                props = properties(
                    content_type="application/json" if _is_json(content) else None,
                    delivery_mode=2,  # persistent
                    message_id=ff.id,
                    timestamp=_timestamp(created),
                    app_id=gateway,
                    headers={**ff.attributes, "topic": ff.topic, "ts": rfc3339(created)},
                )
                problem = _header_problem(ff, props, client.frame_payload_max)
                if problem is not None:
                    rejected.append(Rejected(ff, f"amqp: {problem}"))
                    continue
                size = len(content)
                await window.enter(size)
                try:
                    tag = client.publish(exchange, key, content, props)
                except ValueError as err:  # UnicodeEncodeError: a lone surrogate, say
                    window.leave(size)
                    reason = f"amqp: its attributes cannot be sent as AMQP headers: {err}"
                    rejected.append(Rejected(ff, reason))
                    continue
                sizes[tag] = size
                state.ids[tag] = ff.id
            await window.drained()
        except BaseException:
            self._settle(batch, state)  # a timeout, the connection lost: retried
            raise
        finally:
            self._batch = None
        if state.nacked:
            self._settle(batch, state)
            raise RetryableError(
                f"{self.where} refused {state.nacked} of {len(batch)} messages for now (nack:"
                " a queue full with overflow reject-publish, or an error of the broker's);"
                " those will be sent again (at least once)"
            )
        if state.returned:
            positions = {ff.id: position for position, ff in enumerate(batch)}
            returned = sorted(
                (positions[message_id], reason)
                for message_id, reason in state.returned
                if message_id in positions
            )
            if cfg.unroutable == "drop":
                self.unroutable += len(returned)
                self.ctx.log.warning(
                    "dropped %d messages no queue takes (first: routing key %r: %s)",
                    len(returned),
                    self._routing_key(batch[returned[0][0]].topic),
                    returned[0][1],
                )
            else:
                for position, reason in returned:
                    ff = batch[position]
                    rejected.append(Rejected(ff, self._unroutable_reason(ff, reason)))
        return rejected


# Reply codes by which the broker refuses us until an operator acts (a missing
# permission, a wrong password ...), and what to do about each. Others (320 the broker
# shutting down, 541 an internal error) are retried.
_REFUSALS = {
    ("connection", 403): "check username and password",
    ("connection", 530): (
        "no access to the vhost {vhost!r} (check the URL's vhost, and the user's permissions on it)"
    ),
    ("channel", 403): (
        "grant the user the permission, or declare the exchange and queue on the broker and"
        " set declare: false"
    ),
    ("channel", 404): "create it, or set declare: true",
    ("channel", 406): (
        "it exists with other settings: match exchange_type and durable to it, or set"
        " declare: false"
    ),
}


# The same refusals about the queue that `queue` names.
_QUEUE_REFUSALS = {
    403: (
        "grant the user the configure permission on the queue, or leave `queue` out and"
        " bind the queue on the broker yourself"
    ),
    406: (
        "the queue exists with other settings (the sink declares it durable, with no"
        " arguments): leave `queue` out and bind it on the broker yourself, or delete it"
    ),
}


def _timestamp(created_ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(created_ns // 1_000_000_000, dt.UTC)


def _message_problem(key: str, ff: FlowFile) -> str | None:
    try:
        key_bytes = len(key.encode())
    except UnicodeEncodeError:
        return "the topic is not valid Unicode text"
    if key_bytes > MAX_KEY_BYTES:
        return f"the routing key is {key_bytes} bytes long, longer than AMQP's 255"
    if len(ff.content) > MAX_BODY_BYTES:
        return f"{len(ff.content)} bytes is larger than RabbitMQ's largest message (128 MiB)"
    for name in ff.attributes:
        # pamqp cut a longer header name to 128 bytes without a word (two names alike in
        # their first 128 bytes became one, a value lost); 4 bytes a character at most
        if len(name) > MAX_HEADER_NAME // 4 and len(name.encode(errors="replace")) > (
            MAX_HEADER_NAME
        ):
            return (
                f"the attribute {name[:40]!r}... has a name longer than {MAX_HEADER_NAME}"
                " bytes, the most an AMQP header name takes here"
            )
    return None


# The longest header name pamqp (the AMQP client's codec) sends: it cuts a longer one.
MAX_HEADER_NAME = 128


def _header_problem(ff: FlowFile, props: spec.Basic.Properties, limit: int) -> str | None:
    """Why the message's properties do not fit in the one frame AMQP gives them (the
    broker would close the connection, and the batch would fail for ever), or None."""
    # An upper bound of the headers' encoded size (at most 4 bytes a character, 6 of
    # framing an entry, 512 for the other properties); measured only when near the limit.
    bound = 512 + 4 * len(ff.topic) * 2 + len(ff.attributes) * 6
    bound += 4 * sum(len(key) + len(value) for key, value in ff.attributes.items())
    if bound <= limit:
        return None
    try:
        size = len(pframe.marshal(ContentHeader(0, len(ff.content), props), 1)) - 8
    except ValueError as err:  # UnicodeEncodeError included
        return f"its attributes cannot be sent as AMQP headers: {err}"
    if size <= limit:
        return None
    return (
        f"its attributes and topic make a {size}-byte AMQP header, more than the broker's"
        f" frame size allows ({limit} bytes)"
    )


def _reason(err: BaseException) -> str:
    """A short text for an error: the broker's own words when it closed on us
    ("ACCESS_REFUSED - Login was refused ...")."""
    if isinstance(err, BrokerClosed):
        return err.text or f"the broker closed the {err.scope} ({err.code})"
    return str(err) or type(err).__name__

"""Reads a NATS JetStream stream through a durable pull consumer, each message a FlowFile.

The source fetches up to `batch` messages at a time from the durable consumer
`durable` of stream `stream` (created when missing, from the start of the stream or
only new messages, `deliver`, optionally filtered by `subject`), and acknowledges a
message only after the store committed its FlowFile (the acks go out once the commit
is made, during a fetch too, or at a stop). A message not acknowledged within
`ack_wait` (the gateway was killed, or stopped taking data) is delivered again by
JetStream. The consumer
outlives restarts and reloads: a changed `subject`, `ack_wait` or `batch` updates it at
connect (its position is kept; `deliver` only matters to a consumer not yet created).

Each message's FlowFile id is made from the stream's name and the message's stream
sequence (and this gateway and source): a message delivered again gets the same id,
so the SQL and Redis sinks, which write each id once, store it once. The file and
MQTT sinks may see it twice (at least once).

The FlowFile holds the message's payload as its content; its topic comes from
`topic`: `{subject}` is the subject with its tokens as topic levels (`.` becomes `/`,
each token percent-decoded, as the nats sink encodes them, and `/`, `+`, `#` inside a
token replaced by `_`; a byte that is not UTF-8 is written `\\xNN`), `{stream}` the
stream, `{source}` this source's name.
Attributes: `nats.subject`, `nats.stream`, `nats.seq` (the stream sequence) and
`nats.delivered` (how often JetStream has delivered it).

Connection trouble is retried with the engine's backoff; a stream that does not
exist is retried too (it may be created later) but a reload that names one is
rolled back; a server that refuses the credentials or the certificate stops the
source until the config is fixed. Memory: at most `batch` messages in hand, each at
most the server's `max_payload` (1 MiB by default).

Keys
  type: nats
  servers: [nats://127.0.0.1:4222]   (required) one or more server URLs
  stream: FLEET                      (required) the stream to read
  subject: null                      only messages on this subject (wildcards allowed)
  durable: null                      the consumer's name (default edge-<gateway>-<source>)
  deliver: all                       a new consumer starts at: all (the first message) or new
  batch: 500                         messages per fetch (1 - 10000)
  wait: 1s                           how long one fetch waits for messages
  ack_wait: 30s                      JetStream delivers again what is not acked by then
  topic: "{subject}"                 the topic template
  user, password, token, nkey_seed_file, creds_file, ca_file, cert_file, key_file,
  connect_timeout: as for the nats sink

Example
  sources:
    commands: {type: nats, servers: ["nats://nats1.plant.lan:4222"], stream: COMMANDS,
               subject: "cmd.pi-01.>", topic: "fleet/{subject}"}
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from nats import errors as nats_errors
from nats.js import api as js_api
from nats.js import errors as js_errors

from gateway.config.model import SourceConfig
from gateway.config.schema import Doc, Duration, Range
from gateway.core.component import Context, Message, Source
from gateway.core.errors import MissingError, PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.core.subjects import subject_problem as _subject_problem
from gateway.core.topics import template_fields, validate_topic
from gateway.sinks.nats import (
    NatsConnection,
    _describe,
    close_connection,
    open_connection,
)

BATCH_MAX = 10_000
_PLACEHOLDERS = ("subject", "stream", "source")


@dataclass(frozen=True, kw_only=True)
class NatsSourceConfig(NatsConnection, SourceConfig):
    """Keys of the `nats` source."""

    stream: Annotated[str, Doc("The JetStream stream to read.", example="FLEET")]
    subject: Annotated[
        str | None,
        Doc("Only the messages on this subject (wildcards `*` and `>` allowed; default: all)."),
    ] = None
    durable: Annotated[
        str | None,
        Doc(
            "The durable consumer's name (default `edge-<gateway id>-<source name>`, any"
            " character but a letter, digit, `-` or `_` written `_`)."
        ),
    ] = None
    deliver: Annotated[
        Literal["all", "new"],
        Doc("Where a consumer this source creates starts: `all` (the first message) or `new`."),
    ] = "all"
    batch: Annotated[
        int,
        Doc("At most this many messages per fetch."),
        Range(1, BATCH_MAX, message=f"must be between 1 and {BATCH_MAX}"),
    ] = 500
    wait: Annotated[
        Duration,
        Doc("How long one fetch waits for messages."),
        Range(0.05, 60, message="must be between 50ms and 60s"),
    ] = 1.0
    ack_wait: Annotated[
        Duration,
        Doc("JetStream delivers a message again when it is not acknowledged by then."),
        Range(1, 3600, message="must be between 1s and 1h"),
    ] = 30.0
    topic: Annotated[
        str,
        Doc(
            "The topic template: `{subject}` (tokens as levels), `{stream}`, `{source}`;"
            " `{{` and `}}` for a literal brace.",
            example="fleet/{subject}",
        ),
    ] = "{subject}"

    def check(self) -> Iterator[tuple[str, str]]:
        yield from self.connection_problems()
        if not self.stream or any(c in self.stream for c in " .*>\t\r\n/\\"):
            yield "stream", f"{self.stream!r}: a stream name has no spaces, '.', '*', '>', '/'"
        if self.subject is not None:
            problem = _subject_problem(self.subject, wildcards=True)
            if problem:
                yield "subject", f"{self.subject!r}: {problem}"
        if self.durable is not None and (
            not self.durable or any(c in self.durable for c in " .*>\t\r\n/\\")
        ):
            yield "durable", f"{self.durable!r}: a consumer name has no spaces, '.', '*', '>', '/'"
        try:
            names = template_fields(self.topic)
        except ValueError as err:
            yield "topic", str(err)
            return
        for name in names:
            if name not in _PLACEHOLDERS:
                yield (
                    "topic",
                    f"unknown placeholder {{{name}}}; use {{subject}}, {{stream}}, {{source}}",
                )
                return
        problem = validate_topic(self.topic.format(subject="s", stream="s", source="s"))
        if problem:
            yield "topic", problem


def _level(token: str) -> str:
    text = unquote(token)
    return text.replace("/", "_").replace("+", "_").replace("#", "_").replace("\0", "_") or "_"


def subject_topic(subject: str) -> str:
    """A NATS subject as topic levels: one level per token (see the module docstring)."""
    return "/".join(_level(t) for t in subject.split("."))


def message_flowfile_id(stream: str, seq: int, ms: int, scope: str) -> str:
    """A UUIDv7-shaped id made from the stream and the sequence: the same message always
    gets the same id (its time from the message's milliseconds, the rest from a digest)."""
    digest = hashlib.sha256(f"{scope}\0{stream}\0{seq}".encode()).digest()
    rand_a = int.from_bytes(digest[:2]) & 0x0FFF
    rand_b = int.from_bytes(digest[2:10]) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


class NatsSource(Source):
    """Fetches from a durable pull consumer and acks after the commit."""

    Config = NatsSourceConfig
    mode = "stream"

    def __init__(self, config: NatsSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: NatsSourceConfig = config
        self.durable = config.durable or f"edge-{_safe_name(ctx.gateway_id)}-{_safe_name(ctx.name)}"
        self._nc: Any = None
        self._sub: Any = None
        self._to_ack: list[Any] = []  # committed messages not yet acknowledged
        self._open = 0  # messages handed over whose commit has not come yet
        self._committed = asyncio.Event()  # set by each commit (the acks it runs)
        self._scope = f"{ctx.gateway_id}/{ctx.name}"
        self.read_count = 0
        self.redelivered = 0

    async def connect(self) -> None:
        cfg = self.config
        nc = await open_connection(cfg, self.ctx, PermanentError)
        try:
            js = nc.jetstream(timeout=max(cfg.connect_timeout, 5.0))
            consumer = js_api.ConsumerConfig(
                durable_name=self.durable,
                filter_subject=cfg.subject or None,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=cfg.ack_wait,
                deliver_policy=(
                    js_api.DeliverPolicy.ALL if cfg.deliver == "all" else js_api.DeliverPolicy.NEW
                ),
                # Never more out than one fetch and the one waiting for its commit.
                max_ack_pending=2 * cfg.batch,
            )
            await self._update_consumer(js, consumer)
            self._sub = await js.pull_subscribe(
                cfg.subject or "",
                durable=self.durable,
                stream=cfg.stream,
                config=consumer,
                pending_msgs_limit=2 * cfg.batch,
            )
        except js_errors.NotFoundError as err:
            await self._drop(nc)
            raise MissingError(f"stream {cfg.stream} does not exist") from err
        except js_errors.APIError as err:
            await self._drop(nc)
            if err.code is not None and err.code < 500:
                raise PermanentError(
                    f"stream {cfg.stream}, consumer {self.durable}: {err.description}"
                ) from err
            raise RetryableError(f"stream {cfg.stream}: {err.description}") from err
        except (OSError, TimeoutError, nats_errors.Error) as err:
            await self._drop(nc)
            raise RetryableError(f"stream {cfg.stream}: {_describe(err)}") from err
        self._nc = nc
        self.ctx.log.info(
            "reading stream %s as consumer %s on %s",
            cfg.stream,
            self.durable,
            nc.connected_url.netloc,
        )

    async def _update_consumer(self, js: Any, wanted: js_api.ConsumerConfig) -> None:
        """Bring an existing durable consumer in line with `subject`, `ack_wait` and
        `batch`: nats-py's pull_subscribe binds to it as it is, so a changed key would
        otherwise be ignored. (`deliver` stays: it is where a new consumer starts.)"""
        cfg = self.config
        try:
            info = await js.consumer_info(cfg.stream, self.durable)
        except js_errors.NotFoundError:
            return  # no consumer (or no stream): pull_subscribe creates it (or says so)
        have = info.config
        changed = [
            f"{key} {old!r} -> {new!r}"
            for key, old, new in (
                ("subject", have.filter_subject or None, wanted.filter_subject),
                ("ack_wait", have.ack_wait, wanted.ack_wait),
                ("max_ack_pending", have.max_ack_pending, wanted.max_ack_pending),
            )
            if old != new
        ]
        if not changed:
            return
        updated = dataclasses.replace(
            have,
            filter_subject=wanted.filter_subject,
            ack_wait=wanted.ack_wait,
            max_ack_pending=wanted.max_ack_pending,
        )
        try:
            await js.add_consumer(cfg.stream, config=updated)
        except js_errors.APIError as err:
            if err.code is not None and err.code < 500:
                raise PermanentError(
                    f"stream {cfg.stream}: consumer {self.durable} exists with other settings"
                    f" ({'; '.join(changed)}) and NATS does not change them"
                    f" ({err.description}): delete the consumer or set another durable"
                ) from err
            raise
        self.ctx.log.info("updated consumer %s: %s", self.durable, "; ".join(changed))

    @staticmethod
    async def _drop(nc: Any) -> None:
        await close_connection(nc)

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        self._sub = None
        if nc is not None:
            with contextlib.suppress(OSError, TimeoutError, nats_errors.Error):
                await self._settle(nc)  # what is committed: acknowledged now
                await nc.flush(timeout=2)
            await self._drop(nc)

    async def _settle(self, nc: Any) -> None:
        """Acknowledge what the store has committed since the last fetch, on `nc`: a
        message read before a reconnect is acknowledged on the new connection (msg.ack()
        would use its own, closed one, and fail every read after), JetStream takes an ack
        on a message's reply subject from any connection."""
        while self._to_ack:
            msg = self._to_ack[0]
            if msg.reply:  # (a JetStream message always has one)
                await nc.publish(msg.reply, b"+ACK")
            self._to_ack.pop(0)

    async def read(self) -> list[Message]:
        nc, sub = self._nc, self._sub
        if nc is None or sub is None or not nc.is_connected:
            await self.close()
            raise RetryableError(f"not connected to NATS (stream {self.config.stream})")
        if self._open > self.config.batch:
            # JetStream delivers at most max_ack_pending (2 x batch) unacknowledged: with a
            # batch waiting for its commit and more in hand, a fetch now got nothing and
            # waited out `wait`, the acks that would make room held back until the next
            # read (a backlog read at 2 x batch per `wait`: batch: 10, 20 a second)
            self._committed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.wait):
                    await self._committed.wait()
        try:
            await self._settle(nc)
            try:
                msgs = await self._fetch(nc, sub)
            except TimeoutError:
                # Nothing within `wait`: nats-py says so with its own TimeoutError or, when
                # the wait ran out between its two pull requests, asyncio's. A connection
                # that died shows at the next read (not connected).
                return []
        except (OSError, TimeoutError, nats_errors.Error) as err:
            await self.close()
            raise RetryableError(f"reading stream {self.config.stream}: {_describe(err)}") from err
        return [self._message(m) for m in msgs]

    async def _fetch(self, nc: Any, sub: Any) -> list[Any]:
        """One fetch; the acks of commits made while it waits go out at once. Held back
        until the next read, they came after `ack_wait` when `wait` is as long (wait: 4s,
        ack_wait: 2s: every message idle fetches came after was delivered and stored twice)."""
        fetch = asyncio.ensure_future(sub.fetch(self.config.batch, timeout=self.config.wait))
        try:
            while True:
                committed = asyncio.ensure_future(self._committed.wait())
                try:
                    await asyncio.wait({fetch, committed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    committed.cancel()
                if fetch.done():
                    return fetch.result()  # type: ignore[no-any-return]
                self._committed.clear()
                await self._settle(nc)
        finally:  # an ack that failed, a stop: the fetch is not waited for
            if not fetch.done():
                fetch.cancel()
            elif not fetch.cancelled():
                fetch.exception()  # seen: no "never retrieved" at its end

    def _message(self, msg: Any) -> Message:
        cfg = self.config
        meta = msg.metadata
        seq = meta.sequence.stream
        ms = int(meta.timestamp.timestamp() * 1000) if meta.timestamp else 0
        if meta.num_delivered and meta.num_delivered > 1:
            self.redelivered += 1
        topic = cfg.topic.format(
            subject=subject_topic(msg.subject),
            stream=_level(cfg.stream),
            source=_level(self.ctx.name),
        )
        ff = FlowFile(
            message_flowfile_id(meta.stream or cfg.stream, seq, ms, self._scope),
            topic,
            {
                "nats.subject": msg.subject,
                "nats.stream": meta.stream or cfg.stream,
                "nats.seq": str(seq),
                "nats.delivered": str(meta.num_delivered or 1),
            },
            msg.data,
            self.ctx.clock.now_ns(),
        )
        self.read_count += 1
        self._open += 1
        return Message(ff, ack=lambda: self._committed_one(msg))

    def _committed_one(self, msg: Any) -> None:
        """A message's ack, run after the commit that holds it."""
        self._to_ack.append(msg)
        self._open -= 1
        self._committed.set()

    def status(self) -> dict[str, object]:
        return {
            "stream": self.config.stream,
            "consumer": self.durable,
            "read": self.read_count,
            "redelivered": self.redelivered,
            "pending_acks": len(self._to_ack),
        }

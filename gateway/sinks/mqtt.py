"""Publishes FlowFiles to an upstream MQTT broker at QoS 1, each batch done once all are acked.

This is how gateways meet at a central broker (EMQX, HiveMQ, Mosquitto): every
FlowFile becomes one PUBLISH, QoS 1, on a topic made from `topic` (default
`site/{gateway}/{topic}`, so `sensors/a/telemetry` on gateway pi-01 goes out as
`site/pi-01/sensors/a/telemetry`), with the content bytes as the payload.
A sink publishing to the broker and topics that an MQTT source of the same
gateway subscribes to (`#`, say) feeds its output back in, a loop that sends
every message round again: give it a topic outside the source's filters.

A batch counts as delivered, and the sink's cursor moves on, only after the
broker has sent a PUBACK for every message of it; at most `max_inflight`
messages (and never more than the broker's Receive Maximum) wait for their
PUBACK at any time. If the connection drops before all PUBACKs arrived, the
batch is sent again after reconnecting, without what the broker acknowledged of
it; after a restart of the gateway or a reload of the sink, all of it goes again:
delivery is **at least once**, and a subscriber may see a message twice after an
outage (one whose PUBACK was lost, or a batch sent again after a crash). With
`user_properties: true` (MQTT 5) each message carries its FlowFile `id` as a
user property, so a consumer that cares can drop repeats by id.

A message the broker refuses for good (an MQTT 5 PUBACK reason code such as
0x87 Not authorized or 0x90 Topic Name invalid), a topic that is not a valid
MQTT topic name (empty, a wildcard `+` or `#`, NUL, a control character such as
a newline, or a Unicode non-character such as U+FFFF: Mosquitto closes the
connection on any of these) or that is the broker's own (beginning with `$SYS` or
`$share`, which it refuses or drops), an attribute holding such a character with
`user_properties: true`, or a message larger than the broker's Maximum Packet
Size goes to the dead-letter table; the rest of the batch is delivered. A PUBACK saying
0x97 Quota exceeded or 0x91 Packet identifier in use sends that message again later.
MQTT 3.1.1 (`protocol: 4`) has no way to refuse a message: a broker whose ACL denies
a topic acknowledges the message and drops it (Mosquitto does), so nothing reaches
the dead letters; use MQTT 5 where refusals must be seen.

A broker that refuses the sink when it starts (user name or password, client id,
Not authorized, banned, a TLS certificate either side does not trust, TLS files
that cannot be read, or, MQTT 5, a Maximum QoS of 0: Mosquitto's `max_qos 0`)
stops it until the config is fixed; the same refusal on a
reconnect while running is retried, since the operator may be changing the
broker's side. A broker that cannot be reached, is busy or unavailable is
retried with backoff.

The session is persistent by default (`clean_session: false` with a fixed
client id, and an MQTT 5 Session Expiry Interval of `session_expiry`), so the
broker keeps this client's state across reconnects. Reconnecting is the
engine's job (capped exponential backoff with jitter); the MQTT library's own
reconnect loop is off.

TLS: an `mqtts://` URL; `ca_file` verifies the broker (default: the system's
CAs), `cert_file` and `key_file` present a client certificate (`cert_file` alone: a
combined PEM holding the key too). `username` and
`password` log in; the password may be an `ENC(...)` secret and is never
logged.

Keys
  type: mqtt
  url: mqtt://broker:1883  (required) mqtt://host:port or mqtts://host:port
  topic: "site/{gateway}/{topic}"  the topic to publish on: {topic} is the
                           FlowFile's topic, {gateway} the gateway id, {sink}
                           this sink's name (default site/{gateway}/{topic})
  client_id: null          (default edge-stream-<gateway id>-<sink name>)
  clean_session: false     start a new session on every connect (default false)
  session_expiry: 1d       MQTT 5: how long the broker keeps the session
                           after a disconnect; not with protocol: 4 or
                           clean_session: true (default 1d)
  protocol: 5              5 (MQTT 5) or 4 (MQTT 3.1.1) (default 5)
  max_inflight: 100        messages published but not yet acknowledged (default 100)
  retain: false            publish with the retain flag (default false)
  user_properties: false   MQTT 5: send the attributes, plus `id`, as user
                           properties (default false)
  username: null
  password: null
  ca_file: null            CA bundle for mqtts:// (default: the system's)
  cert_file: null          client certificate (PEM) for mqtts://
  key_file: null           its private key (PEM) (default: read from cert_file)
  keepalive: 30s           (default 30s)
  connect_timeout: 10s     (default 10s)
  timeout: 30s             the longest a batch may wait for its PUBACKs (default 30s)
  and the delivery keys every sink has: batch, retry, rate_limit, overflow.

Example
  sinks:
    central:
      type: mqtt
      url: mqtts://mqtt.example.com:8883
      topic: "site/{gateway}/{topic}"
      ca_file: /etc/edge-stream/ca.pem
      cert_file: /etc/edge-stream/pi-01.pem
      key_file: /etc/edge-stream/pi-01.key
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from gateway.config.model import SinkConfig, whole_seconds_problem
from gateway.config.schema import POSITIVE_DURATION, Doc, Duration, Range
from gateway.core.component import Context, Rejected, Settled, Sink, unsettled
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.core.topics import template_fields, unsendable
from gateway.mqtt.client import (
    CONNECT_ERRORS,
    Client,
    connect_refusal,
    puback_reason,
    tls_refusal,
    user_properties,
)
from gateway.mqtt.urls import (
    attribute_problem,
    client_cert_problems,
    login,
    parse_url,
    tls_context,
    unsendable_keys,
)

_PLACEHOLDERS = frozenset({"topic", "gateway", "sink"})

# PUBACK refusals that may pass later (Packet identifier in use, Quota exceeded): the
# batch is retried rather than dead-lettered.
RETRY_REASONS = frozenset({0x91, 0x97})


@dataclass(frozen=True, kw_only=True)
class MqttSinkConfig(SinkConfig):
    """Keys of the `mqtt` sink (plus batch, retry, rate_limit, overflow from SinkConfig)."""

    url: Annotated[
        str,
        Doc(
            "`mqtt://host:port` or `mqtts://host:port` of the upstream broker; it may hold"
            " `user:password@` (percent-encoded), which `username` and `password` override.",
            example="mqtt://broker.example.com:1883",
        ),
    ]
    topic: Annotated[
        str,
        Doc(
            "The topic to publish on: `{topic}` is the FlowFile's topic, `{gateway}` the"
            " gateway id, `{sink}` this sink's name. One beginning with `$SYS` or `$share`"
            " (the broker's topics, which it refuses or drops) is refused."
        ),
    ] = "site/{gateway}/{topic}"
    client_id: Annotated[
        str | None,
        Doc(
            "The client id (default `edge-stream-<gateway id>-<sink name>`); no other client"
            " of the config may use it on the same broker."
        ),
    ] = None
    clean_session: Annotated[
        bool, Doc("Start a new session on every connect instead of keeping a persistent one.")
    ] = False
    session_expiry: Annotated[
        Duration,
        Doc(
            "MQTT 5: how long the broker keeps the session after a disconnect, whole seconds;"
            " only with `protocol: 5` and `clean_session: false` (MQTT 3.1.1 has no session"
            " expiry)."
        ),
        # 200000d passed the check, then every connect crashed with a traceback (struct.error)
        Range(0, 2**32 - 1, "must be between 0s and 4294967295s (136 years), MQTT's limit"),
    ] = 86400.0
    protocol: Annotated[Literal[5, 4], Doc("5 (MQTT 5) or 4 (MQTT 3.1.1).")] = 5
    max_inflight: Annotated[
        int,
        Doc(
            "Messages published and not yet acknowledged, at most (never more than the"
            " broker's Receive Maximum)."
        ),
        Range(1, 65535, "must be between 1 and 65535"),
    ] = 100
    retain: Annotated[bool, Doc("Publish with the retain flag.")] = False
    user_properties: Annotated[
        bool, Doc("MQTT 5: send the attributes, plus the FlowFile `id`, as user properties.")
    ] = False
    username: Annotated[str | None, Doc("The user name to log in with.")] = None
    password: Annotated[str | None, Doc("The password, may be `ENC(...)`; never logged.")] = None
    ca_file: Annotated[
        str | None,
        Doc("CA bundle that verifies the broker, for `mqtts://` (default: the system's CAs)."),
    ] = None
    cert_file: Annotated[
        str | None,
        Doc(
            "Client certificate (PEM) for `mqtts://`; its key is `key_file`, or without one"
            " in this file too (a combined PEM)."
        ),
    ] = None
    key_file: Annotated[
        str | None,
        Doc("The client certificate's private key (PEM; default: read from `cert_file`)."),
    ] = None
    keepalive: Annotated[
        Duration,
        Doc("The MQTT keepalive, whole seconds."),
        Range(1, 65535, "must be between 1s and 65535s"),
    ] = 30.0
    connect_timeout: Annotated[
        Duration,
        Doc("The longest a connect may take."),
        POSITIVE_DURATION,
    ] = 10.0
    timeout: Annotated[
        Duration,
        Doc("The longest a batch may wait for its PUBACKs before it is sent again."),
        POSITIVE_DURATION,
    ] = 30.0

    def check(self) -> Iterator[tuple[str, str]]:
        # A key that failed is None here (its problem is reported already).
        try:
            _, _, tls = parse_url(self.url) if self.url is not None else (None, None, True)
        except ValueError as err:
            yield "url", str(err)
        else:
            if not tls:
                for name in ("ca_file", "cert_file", "key_file"):
                    if getattr(self, name):
                        yield name, "needs TLS: use an mqtts:// URL"
        yield from client_cert_problems(self.cert_file, self.key_file)
        # The broker refused the connect at every try.
        yield from unsendable_keys(self, ("client_id", "username"))
        topic = self.topic or ""
        try:
            # template_fields refuses {topic!r} and {gateway:>10}: the first crashed the
            # sink at its start (KeyError), the second padded the id in the topic
            fields = template_fields(topic)
        except ValueError as err:
            yield "topic", str(err)
        else:
            for name in fields:
                if name not in _PLACEHOLDERS:
                    yield (
                        "topic",
                        (
                            f"{self.topic!r}: unknown placeholder {{{name}}}; "
                            "use {topic}, {gateway} or {sink}"
                        ),
                    )
            if any(c in topic for c in "+#"):  # a NUL: unsendable() below says so
                yield "topic", f"{self.topic!r}: a topic name has no wildcards (+, #)"
            if problem := unsendable(topic.replace("{topic}", "")):
                # every message went to the dead letters
                yield "topic", f"{self.topic!r} {problem}"
            if self.topic is not None and not topic:
                # every message went to the dead letters: "the topic is empty"
                yield "topic", "must not be empty (default site/{gateway}/{topic})"
        if problem := whole_seconds_problem(self.keepalive):
            yield "keepalive", problem
        if problem := whole_seconds_problem(self.session_expiry):
            yield "session_expiry", problem
        if self.user_properties and self.protocol not in (None, 5):
            yield "user_properties", "needs MQTT 5 (protocol: 5)"
        if self.session_expiry not in (None, 86400.0):
            if self.protocol == 4:
                yield (
                    "session_expiry",
                    "session_expiry applies only with protocol: 5 (MQTT 3.1.1 has no"
                    " session expiry)",
                )
            elif self.clean_session:
                yield (
                    "session_expiry",
                    "session_expiry applies only with clean_session: false (a clean"
                    " session is not kept)",
                )
        if self.client_id is not None and not self.client_id:
            yield "client_id", "must not be empty"


class MqttSink(Sink):
    """Publishes each batch over one MQTT connection and waits for all its PUBACKs."""

    Config = MqttSinkConfig

    def __init__(self, config: MqttSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._ran = False  # connected once: a refusal from now on is retried
        self.config: MqttSinkConfig = config
        self.host, self.port, self.tls = parse_url(config.url)
        self.client_id = config.client_id or f"edge-stream-{ctx.gateway_id}-{ctx.name}"
        template = config.topic.replace("{topic}", "\0")
        self._topic_parts = template.format(gateway=ctx.gateway_id, sink=ctx.name).split("\0")
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        # Packet id -> position in the batch being written, for messages not yet acked.
        self._inflight: dict[int, int] = {}
        self._refused: dict[int, int] = {}  # position -> reason code
        self._acked: list[int] = []  # positions the broker took (PUBACK, success)
        # What the broker settled of a batch whose write failed, by FlowFile id: None taken,
        # else refused for good. The engine sends that batch again; only the rest goes.
        self._settled: Settled = {}
        self._waiter: asyncio.Future[None] | None = None
        self._wake_at = 0
        self._lost: str | None = None
        self._connected_as: dict[str, object] = {}  # broker, client id, session present

    def status(self) -> Mapping[str, object]:
        """The broker, the client id and whether the broker kept its session."""
        return self._connected_as

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the broker.

        RetryableError if it cannot be reached or is not ready; PermanentError if it
        refuses us: user name or password, client id, authorization, a TLS certificate
        either side does not trust.
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

    async def _open(self, permanent: type[Exception] = RetryableError) -> Client:
        """The client, connected now if need be. From write(), a refusal is retried: the
        operator may fix the credentials or the broker's ACL while the data waits."""
        if self._client is not None and self._lost is None:
            return self._client
        await self._drop()
        cfg = self.config
        client = Client(on_puback=self._on_puback, on_lost=self._on_lost)
        where = f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
        context: ssl.SSLContext | None = None
        if self.tls:
            try:
                context = tls_context(cfg.ca_file, cfg.cert_file, cfg.key_file)
            except (OSError, ValueError) as err:  # ssl.SSLError; ValueError: a NUL in a path
                raise permanent(
                    f"cannot use the TLS files (ca_file, cert_file, key_file): {err}"
                ) from err
        username, password = login(cfg.url, cfg.username, cfg.password)
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                # A connection the broker drops before its CONNACK (a refused TLS client
                # certificate: with TLS 1.3 that alert arrives after the handshake looked
                # done) ends the wait at once.
                present = await client.open(
                    self.host,
                    self.port,
                    client_id=self.client_id,
                    clean_start=cfg.clean_session,
                    keepalive=round(cfg.keepalive),
                    protocol=cfg.protocol,
                    session_expiry=(
                        round(cfg.session_expiry)
                        if cfg.protocol == 5 and not cfg.clean_session
                        else 0
                    ),
                    username=username,
                    password=password if username is not None else None,
                    tls=context,
                )
        except TimeoutError as err:
            client.abort()
            hint = " (does it speak MQTT 5? else set protocol: 4)" if cfg.protocol == 5 else ""
            raise RetryableError(
                f"no answer from {where} within {cfg.connect_timeout:g}s{hint}"
            ) from err
        except CONNECT_ERRORS as err:
            client.abort()
            refusal = connect_refusal(err)
            ended = client.closed_error  # how the connection ended: a TLS alert, maybe
            if refusal is None and ended is not None and ended is not err:
                refusal = connect_refusal(ended)
            if refusal is None and context and isinstance(err, ConnectionResetError):
                # Dropped before the CONNACK: a refused client certificate, most likely.
                wait = min(cfg.connect_timeout, 2.0)
                refusal = await tls_refusal(self.host, self.port, context, wait)
            if refusal is not None:
                raise permanent(f"{where} refused us: {refusal}") from err
            raise RetryableError(f"cannot connect to {where}: {err}") from err
        if client.maximum_qos < 1:
            # Mosquitto's max_qos 0: it closed the connection on each QoS 1 PUBLISH, and
            # the sink sent the same batch again for good, 'the connection was closed'.
            client.abort()
            raise permanent(
                f"{where} refused us: it takes QoS 0 at most (its Maximum QoS; Mosquitto's"
                " max_qos), and the sink publishes at QoS 1 (at least once): raise it there"
            )
        self._connected_as = {
            "broker": f"{self.host}:{self.port}",
            "client_id": self.client_id,
            "session_present": present,
        }
        self._client, self._lost = client, None
        self.ctx.log.info("connected to %s as %s", where, self.client_id)
        return client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._lost is None:
            client.close()  # DISCONNECT: the broker keeps the session
        else:
            client.abort()

    def _on_lost(self, reason: str) -> None:
        client = self._client
        if client is None or client.closed_reason is None:
            return  # a client being connected, or one dropped before: nothing waits on it
        self._lost = "the connection was closed"
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_puback(self, mid: int, reason: int) -> None:
        position = self._inflight.pop(mid, None)
        if position is None:
            return  # from an earlier batch or connection: nothing waits for it
        if reason >= 0x80:
            self._refused[position] = reason
        else:
            self._acked.append(position)
        waiter = self._waiter
        if waiter is not None and len(self._inflight) <= self._wake_at and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, until: int) -> None:
        """Wait until at most `until` messages are unacknowledged or the connection dropped."""
        while len(self._inflight) > until and self._lost is None:
            self._wake_at = until
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    # --- writing --------------------------------------------------------------------------

    def _topic(self, topic: str) -> str:
        parts = self._topic_parts
        return parts[0] if len(parts) == 1 else topic.join(parts)

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        if not batch:
            return []
        async with self._lock:
            settled = self._settled
            batch, earlier = unsettled(settled, batch)  # what the broker took is not sent again
            if not batch:
                settled.clear()
                return earlier
            client = await self._open()
            try:
                async with asyncio.timeout(self.config.timeout):
                    rejected = await self._publish(client, batch)
            except TimeoutError as err:
                waiting = len(self._inflight)
                self._lost = "timed out"
                await self._drop()
                self._settle(batch)
                raise RetryableError(
                    f"{waiting} of {len(batch)} messages got no PUBACK within "
                    f"{self.config.timeout:g}s; the rest of the batch will be sent again"
                ) from err
            except RetryableError:
                self._settle(batch)
                raise
            finally:
                self._inflight.clear()
                self._refused.clear()
                self._acked.clear()
            settled.clear()
        return earlier + rejected

    def _settle(self, batch: list[FlowFile]) -> None:
        """Keeps what the broker answered of this try, for a retry of the batch to leave out."""
        settled = self._settled
        for position in self._acked:
            settled[batch[position].id] = None
        for position, code in self._refused.items():
            if code not in RETRY_REASONS:
                ff = batch[position]
                settled[ff.id] = Rejected(ff, f"mqtt: the broker refused it: {puback_reason(code)}")

    async def _publish(self, client: Client, batch: list[FlowFile]) -> list[Rejected]:
        cfg = self.config
        window = max(1, min(cfg.max_inflight, client.receive_maximum))
        # Wake the writer when half the window is free, not for every single PUBACK.
        low = window // 2
        max_size = client.maximum_packet_size
        retain, with_properties = cfg.retain, cfg.user_properties
        inflight, publish, topic_of = self._inflight, client.publish_qos1, self._topic
        # The loop yields only when the window is full; a connection lost meanwhile shows
        # in self._lost or client.closing().
        closing = client.closing
        rejected: list[Rejected] = []
        for position, ff in enumerate(batch):
            if len(inflight) >= window:
                await self._wait(low)
            if self._lost is not None:
                break
            if closing():
                self._lost = "the connection was closed"
                break
            text = topic_of(ff.topic)
            try:
                topic = text.encode()
            except UnicodeEncodeError:
                rejected.append(Rejected(ff, "mqtt: the topic is not valid Unicode text"))
                continue
            properties = b""
            if with_properties:
                try:
                    properties = user_properties([("id", ff.id), *ff.attributes.items()])
                except UnicodeEncodeError:
                    rejected.append(Rejected(ff, "mqtt: an attribute is not valid Unicode text"))
                    continue
                except struct.error:  # a length past the 2 bytes MQTT gives it
                    # (it raised out of write: the sink crashed on that batch for ever)
                    rejected.append(
                        Rejected(
                            ff,
                            "mqtt: an attribute (a user property) is longer than 65535"
                            " bytes, the most MQTT takes",
                        )
                    )
                    continue
                if ff.attributes and (found := attribute_problem(ff.attributes)):
                    rejected.append(Rejected(ff, f"mqtt: {found}"))
                    continue
            problem = _topic_problem(topic)
            if problem is None and (bad := unsendable(text)):
                problem = f"the topic {text!r} {bad}"
            if (
                problem is None
                and max_size is not None
                and len(topic) + len(properties) + len(ff.content) + 16 > max_size
            ):
                problem = f"larger than the broker's maximum packet size ({max_size} bytes)"
            if problem is not None:
                rejected.append(Rejected(ff, f"mqtt: {problem}"))
                continue
            inflight[publish(topic, ff.content, retain=retain, properties=properties)] = position
        await self._wait(0)
        if self._lost is not None:
            raise RetryableError(
                f"{self._lost} with {len(inflight)} of {len(batch)} messages unacknowledged;"
                " those and the rest of the batch will be sent again (at least once)"
            )
        retry = [code for code in self._refused.values() if code in RETRY_REASONS]
        if retry:
            raise RetryableError(
                f"the broker refused {len(retry)} messages for now "
                f"({puback_reason(retry[0])}); those will be sent again"
            )
        for position, code in sorted(self._refused.items()):
            rejected.append(
                Rejected(batch[position], f"mqtt: the broker refused it: {puback_reason(code)}")
            )
        return rejected


def _topic_problem(topic: bytes) -> str | None:
    if not topic:
        return "the topic is empty"
    if b"+" in topic or b"#" in topic or b"\0" in topic:
        return f"{topic.decode(errors='replace')!r} is not a valid topic name (+, # or NUL)"
    if len(topic) > 65535:
        return "the topic is longer than 65535 bytes"
    if topic[:1] == b"$" and topic.startswith((b"$SYS", b"$share")):
        # Mosquitto refuses a client's PUBLISH there (0x87), and under MQTT 3.1.1, which
        # cannot refuse, acknowledges it and drops it: lost without a word (a {topic}
        # template with what a source subscribed to $SYS/# read).
        return f"{topic[:80].decode(errors='replace')!r} is the broker's topic ($SYS, $share)"
    return None

"""Subscribes to MQTT topics and acknowledges each message only once it is stored.

```yaml
sources:
  plant:
    type: mqtt
    topics: ["sensors/+/telemetry", "meters/#"]
    qos: 1                    # 0, 1 or 2; 1 is the usual choice
    # url: mqtt://10.0.0.2:1883   default: the gateway's broker (the top-level `mqtt:`)
    # client_id: pi-01-plant      default: <mqtt.client_id>-<source name>, and
    #                             mqtt.client_id defaults to edge-stream-<gateway id>
    # username: gw                default on the gateway's broker: mqtt.username
    # password: ENC(...)          default on the gateway's broker: mqtt.password
    # keepalive: 30s              default: mqtt.keepalive on the gateway's broker, else 30s
    # ca_file: /etc/ssl/ca.pem    for mqtts:// URLs: the CA that signed the broker's
    #                             certificate (default on the gateway's broker:
    #                             mqtt.ca_file, else the system's CAs)
    # cert_file: client.pem       a client certificate, for brokers that require one,
    # key_file: client.key        and its private key (default: read from cert_file;
    #                             on the gateway's broker: mqtt.cert_file and
    #                             mqtt.key_file)
    # retained: new_subscription_only
    #                             retained messages: sent by the broker when the subscription
    #                             is new (MQTT 5 Retain Handling 1), `always` at every
    #                             (re)subscribe (0: each reconnect stores them again), `never` (2)
    # max_payload: 256KiB         larger messages go to the dead letters, truncated; the broker
    #                             is told not to send packets over twice this (at least
    #                             max_payload + 64KiB): it drops those itself (MQTT 5 Maximum
    #                             Packet Size), and a broker that sends one anyway is disconnected
    # receive_maximum: 1000       QoS 1/2 messages in flight to us, not yet stored; the
    #                             gateway stops reading from the broker at this many
    #                             (1 to 16384)
    # receive_max_bytes: 16MiB    the same bound in bytes: reading stops while the messages
    #                             not yet stored hold this much (payload, topic, user
    #                             properties and ~200 bytes each); QoS 0 messages beyond it
    #                             are dropped (and counted); one alone is always taken
    # session_expiry: 7d          how long the broker keeps our session while we are away
```

Each message becomes a FlowFile on its MQTT topic with the attributes
`mqtt.topic`, `mqtt.qos`, `mqtt.retain` and `mqtt.user.<key>` for MQTT 5 user
properties. A key that comes more than once keeps every value: the first under
`mqtt.user.<key>`, the next ones under `mqtt.user.<key>.1`, `.2`, ... in order.

What each QoS gets (the subscription's QoS; a message published at a lower
QoS is delivered at that lower one, and a broker capped at a lower QoS, such as
Mosquitto's `max_qos`, grants the subscription that one: an ERROR line at each
connect names the filters and what they then get):

- QoS 0: at most once. Under load the gateway drops what it cannot take
  (more than 10,000 messages or `receive_max_bytes` waiting); every drop is
  counted (`dropped` in /api/status and on the status page,
  `edge_stream_source_dropped_total` in /metrics) and logged, at most once every 30 s.
- QoS 1: at least once, never lost. The PUBACK is sent only after the batch
  holding the message is committed to the store, over a persistent session with
  a fixed client id: a crash before that makes the broker deliver it again. A
  crash between the commit and the PUBACK makes the broker redeliver (DUP set)
  a message already stored. It is recognised, and not stored again, only when
  that is provably safe: the store holds a message with the same packet id,
  topic and payload among the source's last 32,768, and the broker has been
  seen to hand out packet ids going forward, never reusing one, over more than
  `receive_maximum` messages in a row (a counter, as Mosquitto does: such a
  broker reuses an id only after 65,535 more, so a match is the same message).
  A broker that reuses a freed packet id early (MQTT allows it) could send a
  new message, identical to one just stored, under that one's id; when the
  gateway sees such a reuse, or before it has seen enough ids, a redelivery
  is stored again instead: a possible duplicate (counted as
  `possible_duplicates`), never a loss. SQL and Redis sinks are keyed by
  FlowFile id, so such a duplicate is a second row.
- QoS 2: exactly once, by the protocol, with any broker: the packet ids the
  gateway answered with PUBREC are written in the same commit as the messages,
  a PUBLISH with such an id (DUP or not) is answered with PUBREC again and not
  stored, and an id is forgotten (in its own commit) before the PUBCOMP that
  lets the broker reuse it. A new session (Session Present 0) forgets them all.

A PUBLISH that MQTT forbids but whose framing is sound (a topic or user
property that is not valid UTF-8, a topic with U+0000 or a wildcard,
unreadable properties, packet id 0) goes to the dead letters with
the reason, the raw packet as its content, and is acknowledged after the
commit, so the messages behind it keep flowing (packet id 0 cannot be
acknowledged). Such messages count in the bounds above like any other (a QoS 0
one beyond them is dropped and counted), and are logged at most once every 30 s,
with the count since the last line. A packet whose framing is broken, or a
topic alias (the gateway allows none; MQTT 5 then forbids the broker to send
one), closes the connection; the source reconnects.

Two kinds of dead letters hold something other than the message: one over
`max_payload` keeps only its first `max_payload` bytes (attribute
`content.truncated: max_payload`), a forbidden PUBLISH is the raw packet
(attribute `mqtt.invalid: "1"`). `edge-stream dead-letters replay` (and the
console's Replay) leaves them in the dead letters and says how many and why:
their content would reach the sinks as if it were the reading. They can still
be listed, shown, downloaded and purged.

The broker keeps a persistent session's subscriptions: a filter taken out of
`topics` (or a changed one, `a/#` narrowed to `a/b`) is unsubscribed when the
source next connects, after the new ones are subscribed, so its messages stop
coming. With `retained: new_subscription_only`, a narrowed (or any changed)
filter is a new subscription: its retained messages come once more. If the
broker refuses a new filter, the old ones are kept (`a/#` is not left for a
`$share/g/a/#` the broker does not support), with a WARNING. An unsubscribe the
broker does not answer, or refuses, is logged and tried again at the next
connect; one that the connection is lost on (a broker that closes it, for an ACL)
is asked again at the next connect, at most 3 times, then not until the gateway
restarts or a reload changes the source. The store keeps what the session is subscribed to, with the
source's name, client id and broker. What it does not know of, a filter already
gone from `topics` at the first connect after a `store reset` (or on a session
an older version made), keeps coming until the session expires
(`session_expiry`).

A broker whose TLS certificate `ca_file` does not trust, or that refuses the
client certificate (or its absence), is said so in the source's error, naming
the key to check; the source retries.

TLS files (`ca_file`, `cert_file`, `key_file`) that cannot be read stop the
source, named in its error, until the config is fixed and reloaded.

What your broker needs: a persistent session keeps messages for the gateway
while it is away, up to the broker's queue limit. Mosquitto keeps only 1000 by
default; set `max_queued_messages` (e.g. 1000000) and `max_queued_bytes` in
mosquitto.conf, or messages beyond that are dropped by the broker during a
gateway restart. The embedded broker (`mqtt.url: embedded`) is set up so. A
reconnect that finds the broker without the session it had (a broker restarted
without persistence or killed before it saved it, a session expired) is said in
a WARNING: what the session held for the gateway, if anything, is lost.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from time import time_ns
from typing import Annotated, ClassVar, Literal

from gateway.config.model import SourceConfig, keepalive_problem, whole_seconds_problem
from gateway.config.schema import Doc, Duration, Range, Size
from gateway.core.component import MARK_DUP, MARK_QOS2, Context, Message, Source
from gateway.core.errors import GatewayError, PermanentError, RetryableError
from gateway.core.flowfile import (
    CONTENT_TRUNCATED,
    FLOWFILE_OVERHEAD,
    MQTT_INVALID,
    FlowFile,
    attributes_size,
    uuid7,
)
from gateway.core.throttle import LOG_INTERVAL, LogThrottle
from gateway.core.topics import filters_overlap, unsendable, validate_filter
from gateway.mqtt.client import connect_refusal, tls_refusal
from gateway.mqtt.urls import (
    TlsFilesError,
    client_cert_problems,
    files_tls_context,
    login,
    parse_url,
    tls_files,
    unsendable_keys,
)
from gateway.mqtt.wire import PACKET_ID_0, ConnectRefused, Subscriber

READ_BATCH = 2000
CONNECT_TIMEOUT = 15.0
UNSUBSCRIBE_TRIES = 3  # connections lost unsubscribing from a stale filter, then it is left
# A connection the broker closes within this long after accepting it, without a reason,
# may have been taken over by another client with the same client id.
TAKEOVER_WINDOW = 10.0
QOS0_CAPACITY = 10_000  # QoS 0 messages waiting to be handed over, at most
CLOSE_WAIT = 2.0  # seconds close() waits for the broker to end the connection after DISCONNECT
SHARED_ATTRS_BYTES = 1 << 20  # the attribute dicts shared per topic hold at most about this
_QOS_TEXT = ("0", "1", "2")
# `_deliver` builds its FlowFile and Message with tuple.__new__, not through the
# NamedTuples' own __new__ (a Python call each, per message): their fields must stay these
_tuple_new = tuple.__new__
assert FlowFile._fields == ("id", "topic", "attributes", "content", "created", "lineage")
assert Message._fields == ("flowfile", "ack", "dedupe", "reject", "position")
_RETAIN_HANDLING = {"always": 0, "new_subscription_only": 1, "never": 2}


@dataclass(frozen=True, kw_only=True)
class MqttSourceConfig(SourceConfig):
    """Keys of the `mqtt` source (see the module documentation)."""

    topics: Annotated[
        list[str],
        Doc(
            "The topic filters to subscribe to (`+` one level, `#` the rest), one or a"
            " list; each message becomes a FlowFile on its own topic. No two may overlap"
            " (`a/#` and `a/b`): a message both match would come, and be stored, twice. A"
            " shared subscription reads `$share/<group>/<filter>`.",
            example=["sensors/+/telemetry"],
        ),
    ]
    qos: Annotated[
        Literal[0, 1, 2],
        Doc(
            "The subscription's QoS: 0 at most once, 1 at least once (acked only once"
            " stored), 2 exactly once.",
            example=1,
        ),
    ] = 1
    url: Annotated[
        str | None,
        Doc(
            "`mqtt://host:port` or `mqtts://host:port` of the broker (default: the"
            " gateway's broker, the top-level `mqtt:`); it may hold `user:password@`"
            " (percent-encoded), which `username` and `password` override."
        ),
    ] = None
    client_id: Annotated[
        str | None,
        Doc(
            "The client id of the persistent session (default `<mqtt.client_id>-<source"
            " name>`; `mqtt.client_id` defaults to `edge-stream-<gateway id>`); no other"
            " client of the config may use it on the same broker."
        ),
    ] = None
    username: Annotated[
        str | None, Doc("The user name (default on the gateway's broker: `mqtt.username`).")
    ] = None
    password: Annotated[
        str | None,
        Doc(
            "The password, may be `ENC(...)` (default on the gateway's broker:"
            " `mqtt.password`); never logged."
        ),
    ] = None
    retained: Annotated[
        Literal["new_subscription_only", "always", "never"],
        Doc(
            "Retained messages: `new_subscription_only` sent when the subscription is new"
            " (MQTT 5 Retain Handling 1), `always` at every (re)subscribe, `never`."
        ),
    ] = "new_subscription_only"
    max_payload: Annotated[
        Size,
        Doc(
            "Larger messages go to the dead letters, truncated; the broker is told not to"
            " send packets over twice this (at least this plus 64KiB)."
        ),
        # 0 passed and sent every message that had a payload to the dead letters
        Range(1, message="must be at least 1 byte"),
    ] = 256 * 1024
    # At most 16384: beyond that, after a crash, a redelivery of a stored message could no
    # longer be told from a new one (see REDELIVERY_WINDOW in gateway/store/sqlite.py).
    receive_maximum: Annotated[
        int,
        Doc(
            "QoS 1/2 messages in flight to the gateway and not yet stored; reading from"
            " the broker stops at this many."
        ),
        Range(1, 16384, "must be between 1 and 16384"),
    ] = 1000
    receive_max_bytes: Annotated[
        Size,
        Doc(
            "The same bound in bytes (payload, topic, user properties and about 200 bytes"
            " each); QoS 0 messages beyond it are dropped and counted (one alone is always"
            " taken)."
        ),
        Range(64 * 1024, message="must be at least 64KiB"),
    ] = 16 * 1024 * 1024
    session_expiry: Annotated[
        Duration,
        Doc(
            "How long the broker keeps the session (and queues messages) while the gateway is"
            " away, whole seconds."
        ),
        Range(0, 2**32 - 1, "must be between 0s and 4294967295s (136 years), MQTT's limit"),
    ] = 7 * 86400.0
    keepalive: Annotated[
        Duration | None,
        Doc(
            "The MQTT keepalive, whole seconds (default: `mqtt.keepalive` on the gateway's"
            " broker, else 30s)."
        ),
        Range(0, 65535, "must be between 0s (none) and 65535s, MQTT's limit"),
    ] = None
    ca_file: Annotated[
        str | None,
        Doc(
            "For `mqtts://`: the CA that signed the broker's certificate (default on the"
            " gateway's broker: `mqtt.ca_file`, else the system's CAs)."
        ),
    ] = None
    cert_file: Annotated[
        str | None,
        Doc(
            "A client certificate (PEM), for brokers that require one; its key is"
            " `key_file`, or without one in this file too (a combined PEM) (default on the"
            " gateway's broker: `mqtt.cert_file` and `mqtt.key_file`)."
        ),
    ] = None
    key_file: Annotated[
        str | None,
        Doc("The client certificate's private key (PEM; default: read from `cert_file`)."),
    ] = None

    # check() runs even when a key failed (None there), so that one mistake hides no other.
    check_incomplete: ClassVar[bool] = True

    def check(self) -> Iterator[tuple[str, str]]:
        if problem := keepalive_problem(self.keepalive):
            yield "keepalive", problem
        if problem := whole_seconds_problem(self.session_expiry):
            yield "session_expiry", problem
        if self.topics is not None:
            if not self.topics:
                yield "topics", "subscribe to at least one topic filter"
            for i, topic_filter in enumerate(self.topics):
                if topic_filter is None:
                    continue  # an item that failed (`- #`: empty) is reported already
                problem = validate_filter(topic_filter)
                if problem:
                    yield f"topics.{i}", f"{topic_filter!r} is not a valid topic filter: {problem}"
                elif problem := unsendable(topic_filter):
                    # The broker closed the connection at every SUBSCRIBE (0x81 Malformed).
                    yield f"topics.{i}", f"{topic_filter!r} {problem}"
                elif problem := _share_problem(topic_filter):
                    yield f"topics.{i}", f"{topic_filter!r} {problem}"
            # A message on a topic two filters match came once per filter (Mosquitto
            # sends each), and each copy was stored: QoS 2 stored it twice.
            seen: list[str] = []
            for i, topic_filter in enumerate(self.topics):
                if validate_filter(topic_filter) is not None:
                    continue
                plain = _unshared(topic_filter)
                other = next((f for f in seen if filters_overlap(_unshared(f), plain)), None)
                if other is not None:
                    yield (
                        f"topics.{i}",
                        f"{topic_filter!r} overlaps {other!r}: a message on a topic both match"
                        " comes once for each and would be stored twice; keep one filter that"
                        " covers both",
                    )
                seen.append(topic_filter)
        yield from unsendable_keys(self, ("client_id", "username"))
        if self.url is not None:
            try:
                _, _, tls = parse_url(self.url)
            except ValueError as err:
                yield "url", str(err)
            else:
                # They were silently unused: the source spoke plain MQTT.
                for name in ("ca_file", "cert_file", "key_file"):
                    if not tls and getattr(self, name):
                        yield name, "needs TLS: use an mqtts:// URL"
        yield from client_cert_problems(self.cert_file, self.key_file)

    @property
    def maximum_packet_size(self) -> int:
        """What we announce in CONNECT: room for max_payload and generous headers."""
        return min(self.max_payload + max(self.max_payload, 64 * 1024), 268_435_455)


def _share_problem(topic_filter: str) -> str | None:
    """Why a shared subscription (`$share/<group>/<filter>`) is not one, or None. Mosquitto
    took `$share/g` and `$share//a` as plain filters that no topic matches: nothing came."""
    if not topic_filter.startswith("$share/"):
        return None
    _, group, *rest = topic_filter.split("/", 2)
    if not group or group in ("+", "#"):
        return "has no share name: write $share/<group>/<filter>, e.g. $share/gateways/sensors/#"
    if not rest or not rest[0]:
        return (
            "has no topic filter after its share name: write $share/<group>/<filter>, e.g."
            " $share/gateways/sensors/#"
        )
    return None


def _unshared(topic_filter: str) -> str:
    """The filter of a shared subscription (`$share/<group>/<filter>`), else itself."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[-1]
    return topic_filter


_topic_crc: dict[str, int] = {}


def _digest(topic: str, payload: bytes) -> bytes:
    """What identifies a message within one packet id: CRC-32 of topic and payload, and length.

    It only has to tell a broker's redelivery (DUP set, same packet id) from a
    different message, so a checksum is enough, and it runs for every message.
    """
    seed = _topic_crc.get(topic)
    if seed is None:
        if len(_topic_crc) >= 65536:
            _topic_crc.clear()
        seed = _topic_crc[topic] = zlib.crc32(topic.encode(errors="surrogatepass"))
    return ((zlib.crc32(payload, seed) << 32) | (len(payload) & 0xFFFFFFFF)).to_bytes(8, "big")


def _flags(qos: int, dup: bool) -> bytes:
    """The byte after the digest that tells the store how to keep the mark."""
    return _FLAG_BYTES[(qos == 2) * 2 + dup]


# _flags for (QoS 1, not DUP), (QoS 1, DUP), (QoS 2, not DUP), (QoS 2, DUP): once per message
_FLAG_BYTES = tuple(
    bytes(((MARK_DUP if dup else 0) | (MARK_QOS2 if qos2 else 0),))
    for qos2 in (False, True)
    for dup in (False, True)
)


def _read_subscribed(stored: bytes | None) -> tuple[str | None, str | None, list[str]]:
    """(broker, client id, filters) from the position `_keep_subscribed` committed; a
    position of another kind of source (a reload may give the name to one) is none."""
    try:
        record = json.loads(stored or b"null")["mqtt"]
        broker, client_id, filters = record["broker"], record["client_id"], record["topics"]
    except (ValueError, TypeError, KeyError):
        return None, None, []
    if not (isinstance(filters, list) and all(isinstance(f, str) for f in filters)):
        return None, None, []
    return str(broker), str(client_id), filters


def _user_attributes(attrs: dict[str, str], user: list[tuple[str, str]]) -> None:
    """MQTT 5 user properties as attributes; a repeated key keeps every value (.1, .2 ...)."""
    for key, value in user:
        name = f"mqtt.user.{key}"
        if name in attrs:
            i = 1
            while f"{name}.{i}" in attrs:
                i += 1
            name = f"{name}.{i}"
        attrs[name] = value


def _refusal(err: ConnectRefused) -> str:
    """A refused connect in words (the code's meaning is the wire's), and, for a refused
    login, the keys that give it."""
    text = str(err)
    if err.code in (0x86, 0x87):  # bad user name or password, not authorized
        text += (
            "; check the user name and password it connects with (the source's `username`"
            " and `password`, or its `url`'s; else mqtt.username and mqtt.password)"
        )
    return text


class MqttSource(Source):
    """A persistent MQTT subscription whose acknowledgements follow the store's commits."""

    Config = MqttSourceConfig
    mode = "stream"

    def __init__(self, config: MqttSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: MqttSourceConfig = config
        self._client: Subscriber | None = None
        self._buffer: deque[Message] = deque()
        self._ready = asyncio.Event()
        self._lost: str | None = None
        self._epoch = 0  # bumped when the broker starts a new session: old packet ids are void
        self._reset_due = False  # a new session began; the store's marks are still the old ones
        # packet id -> (digest, bytes): handed over or about to be, not yet acked
        self._pending: dict[int, tuple[bytes, int]] = {}
        self._acks: list[tuple[int, int]] = []  # committed, to be sent in one write
        self._releases: list[int] = []  # QoS 2 packet ids whose PUBREL came
        self._held: set[int] = ctx.marks.held()  # QoS 2 ids stored and answered with PUBREC
        self._paused = False  # reading paused: too much is unacknowledged
        self._connecting = False
        # (topic, qos, retain) -> the attributes dict its FlowFiles share, and its size
        self._shared_attrs: dict[tuple[str, int, bool], tuple[dict[str, str], int]] = {}
        self._shared_bytes = 0
        self.inflight_bytes = 0  # bytes the messages received and not yet committed hold
        self.unacked = 0  # messages handed to the engine and not yet committed
        self._drained = asyncio.Event()  # set when `unacked` comes down to 0
        self.pauses = 0  # times reading stopped because too much was in flight
        self.dropped_qos0 = 0
        if config.qos == 0:
            self.lost_if_cut = "QoS 0: the broker does not send them again"
        self._drops_log = LogThrottle(LOG_INTERVAL, ctx.clock.monotonic)
        self.redeliveries = 0
        self.possible_duplicates = 0
        self.invalid = 0
        self._invalid_log = LogThrottle(LOG_INTERVAL, ctx.clock.monotonic)
        self._last_invalid = ("", "")
        self.oversized = 0
        prefix = ctx.mqtt_client_prefix or f"edge-stream-{ctx.gateway_id}"
        self._client_id = config.client_id or f"{prefix}-{ctx.name}"
        self._broker_address: str | None = None  # host:port, once connected
        self._connected_at: float | None = None  # clock.monotonic() of the last CONNACK+SUBACK
        # (broker, client id, filters) the broker's session is subscribed to, as committed
        self._subscribed: tuple[str | None, str | None, list[str]] | None = None
        # stale filters -> connections lost while unsubscribing from them (see `_unsubscribe`)
        self._unsubscribe_drops: dict[str, int] = {}
        self._counted = False  # the counters show from the first read() on
        self._session_lost = False  # the last connect found the broker without our session

    async def connect(self) -> None:
        cfg = self.config
        url = cfg.url or self.ctx.mqtt_url
        host, port, tls = parse_url(url)
        # on the gateway's broker, what the source leaves unset comes from `mqtt:`; then
        # from the URL (mqtt://user:password@host)
        shared = cfg.url is None
        username = cfg.username or (self.ctx.mqtt_username if shared else None)
        password = cfg.password or (self.ctx.mqtt_password if shared else None)
        username, password = login(url, username, password)
        keepalive = cfg.keepalive
        if keepalive is None:
            keepalive = self.ctx.mqtt_keepalive if shared else 30.0
        context: ssl.SSLContext | None = None
        if tls:
            files = tls_files(
                (cfg.ca_file, cfg.cert_file, cfg.key_file),
                self.ctx.mqtt_tls_files if shared else None,
            )
            try:
                context = files_tls_context(files)
            except TlsFilesError as err:
                # It said "[Errno 2] No such file or directory", naming no file, retried
                # for ever; as the MQTT sink does, the source stops until it is fixed.
                raise PermanentError(str(err)) from err
        self._lost = None
        self._connected_at = None
        self._releases.clear()  # the broker sends those PUBRELs again on the new connection
        try:
            self._connecting = True
            client = Subscriber(
                self._deliver,
                self._on_lost,
                reject=self._reject,
                release=self._on_release,
                maximum_packet_size=cfg.maximum_packet_size,
            )
            self._client = client
            self._paused = False
            async with asyncio.timeout(CONNECT_TIMEOUT):
                present = await client.open(
                    host=host,
                    port=port,
                    client_id=self._client_id,
                    clean_start=False,
                    keepalive=round(keepalive),
                    session_expiry=round(cfg.session_expiry),
                    receive_maximum=cfg.receive_maximum,
                    username=username,
                    password=password,
                    tls=context,
                )
            if not present:
                # a new session: packet ids of the old one mean nothing to the broker now
                self._epoch += 1
                self._pending.clear()
                self._reset_due = True
            if self._reset_due:
                # Outside the connect timeout: this waits for the store, not for the broker.
                await self._forget_old_session()
                if not client.connected:
                    raise RetryableError(f"MQTT broker {host}:{port}: {client.closed_reason}")
            where = f"{host}:{port}"
            stale = await self._stale_filters(where, present)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                granted = await client.subscribe(
                    [(f, cfg.qos) for f in cfg.topics], _RETAIN_HANDLING[cfg.retained]
                )
            kept = await self._unsubscribe(client, stale, granted)
            if not client.connected:
                raise RetryableError(f"MQTT broker {host}:{port}: {client.closed_reason}")
            await self._keep_subscribed(where, [*cfg.topics, *kept])
        except ConnectRefused as err:
            self._connecting = False
            if err.permanent:
                raise PermanentError(f"MQTT broker {host}:{port}: {_refusal(err)}") from err
            raise RetryableError(f"MQTT broker {host}:{port}: {_refusal(err)}") from err
        except TimeoutError as err:
            self._connecting = False
            raise RetryableError(
                f"timed out after {CONNECT_TIMEOUT:g} s connecting to MQTT broker {host}:{port}"
            ) from err
        except (OSError, ssl.SSLError) as err:
            self._connecting = False
            # A broker that refuses our client certificate (or none) mostly ends the TLS 1.3
            # connection in a bare reset: "Connection reset by peer" was all the log said.
            keys = "mqtt." if shared and not (cfg.ca_file or cfg.cert_file) else ""
            refusal = connect_refusal(err, keys)
            if refusal is None and context is not None:
                refusal = await tls_refusal(host, port, context, 2.0)
            if refusal is not None:
                raise RetryableError(f"MQTT broker {host}:{port} refused us: {refusal}") from err
            raise RetryableError(f"cannot connect to MQTT broker {host}:{port}: {err}") from err
        self._connecting = False
        self._check_pause()
        refused = [f for f, code in zip(cfg.topics, granted, strict=False) if code >= 0x80]
        if refused:
            self.ctx.log.error("the broker refused the subscription to %s", ", ".join(refused))
        # A broker capped at a lower QoS (Mosquitto's max_qos) grants that one: qos: 2 then
        # got at-least-once duplicates, qos: 1 lost messages, and nothing said why.
        lower = [(f, code) for f, code in zip(cfg.topics, granted, strict=False) if code < cfg.qos]
        for code in sorted({code for _, code in lower}):
            self.ctx.log.error(
                "the broker granted QoS %d, not the qos: %d asked for, to %s: messages come %s"
                " (the broker's maximum QoS; raise it there, or set qos: %d)",
                code,
                cfg.qos,
                ", ".join(f for f, c in lower if c == code),
                "at least once, not exactly once" if code else "at most once and may be lost",
                code,
            )
        self._broker_address = f"{host}:{port}"
        self._connected_at = self.ctx.clock.monotonic()
        self.ctx.log.info(
            "connected to %s:%d as %s (%s session)",
            host,
            port,
            self._client_id,
            "resumed" if present else "new",
        )
        if self._session_lost:
            # It said only "(new session)" at INFO: a broker restarted without persistence,
            # or a session expired, lost messages with no word of it.
            self.ctx.log.warning(
                "the broker no longer had the session of %s: what was published for it while"
                " the gateway was away (or disconnected), and what it had not acknowledged,"
                " if anything, is lost; the broker keeps sessions across its restarts only with"
                " `persistence true`, and for session_expiry (%gs) at most",
                self._client_id,
                self.config.session_expiry,
            )

    async def _stale_filters(self, where: str, present: bool) -> list[str]:
        """The filters a resumed session holds that `topics` no longer has: removed from
        the config, the broker kept them in the session and their messages kept coming (a
        narrowed filter, `a/#` to `a/b`, brought each message twice). What the session
        holds is kept as the source's position in the store, the stale ones with the
        current ones until they are unsubscribed. The broker the record names is not
        compared: the same one reached by another URL (localhost, 127.0.0.1) holds them,
        and another broker answers 0x11 (no such subscription), which is harmless."""
        if self._subscribed is None:
            self._subscribed = _read_subscribed(await self.ctx.position())
        broker, client_id, filters = self._subscribed
        # The broker had this session, subscribed, and no longer has it: what was published
        # for it while the gateway was away, and what it had not acknowledged, is gone.
        self._session_lost = bool(
            not present
            and filters
            and broker == where
            and client_id == self._client_id
            and self.config.session_expiry
        )
        stale: list[str] = []
        if present and client_id == self._client_id:
            stale = [f for f in filters if f not in self.config.topics]
        await self._keep_subscribed(where, [*self.config.topics, *stale])
        return stale

    async def _unsubscribe(
        self, client: Subscriber, stale: list[str], granted: list[int]
    ) -> list[str]:
        """Unsubscribe from the `stale` filters, once the new ones are granted; returns the
        ones the session still holds, kept in the record to be tried at the next connect.
        A failure here is not the connect's: the new subscriptions are in."""
        if not stale:
            return []
        refused = [
            _unshared(f)
            for f, code in zip(self.config.topics, granted, strict=False)
            if code >= 0x80
        ]
        # a/# replaced by $share/g/a/# on a broker without shared subscriptions: with a/#
        # gone too, nothing of a/# would be subscribed. Only a stale filter that overlaps a
        # refused one is kept: the others would bring their messages twice.
        held = [f for f in stale if any(filters_overlap(_unshared(f), r) for r in refused)]
        if held:
            self.ctx.log.warning(
                "kept the subscription to %s, no longer in topics: the broker refused a new"
                " one (said below); its messages keep coming",
                ", ".join(held),
            )
        dropped = [
            f
            for f in stale
            if f not in held and self._unsubscribe_drops.get(f, 0) >= UNSUBSCRIBE_TRIES
        ]
        asked = [f for f in stale if f not in held and f not in dropped]
        if not asked:
            return stale
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                codes = await client.unsubscribe(asked)
        except TimeoutError:
            self.ctx.log.warning(
                "no answer from the broker within %g s to unsubscribe from %s, no longer in"
                " topics: its messages keep coming; tried again at the next connect",
                CONNECT_TIMEOUT,
                ", ".join(asked),
            )
            return stale
        except ConnectionError:
            # A broker that closes the connection on this UNSUBSCRIBE (an ACL) would close
            # it at every connect; a network blip would not. Asked again at the next
            # connect, at most UNSUBSCRIBE_TRIES times, then not until this source starts
            # anew (a gateway restart, or a reload that changes it).
            for f in asked:
                self._unsubscribe_drops[f] = self._unsubscribe_drops.get(f, 0) + 1
            left = [f for f in asked if self._unsubscribe_drops[f] >= UNSUBSCRIBE_TRIES]
            again = [f for f in asked if f not in left]
            if again:
                self.ctx.log.warning(
                    "the connection to the broker was lost while unsubscribing from %s, no"
                    " longer in topics: its messages keep coming; tried again at the next"
                    " connect",
                    ", ".join(again),
                )
            if left:
                self.ctx.log.warning(
                    "the connection to the broker was lost each of the %d times the source"
                    " unsubscribed from %s, no longer in topics: its messages keep coming; not"
                    " asked again until the gateway restarts or a reload changes this source"
                    " (if the broker closes the connection on it, see its ACL)",
                    UNSUBSCRIBE_TRIES,
                    ", ".join(left),
                )
            return stale
        failed = [f for f, code in zip(asked, codes, strict=False) if code >= 0x80]
        done = [f for f in asked if f not in failed]
        if done:
            self.ctx.log.info(
                "unsubscribed from %s: no longer in topics (the broker kept the"
                " subscription in the session)",
                ", ".join(done),
            )
        if failed:
            self.ctx.log.error(
                "the broker refused to unsubscribe from %s, no longer in topics: its"
                " messages keep coming; tried again at the next connect",
                ", ".join(failed),
            )
        return [f for f in stale if f in held or f in dropped or f in failed]

    async def _keep_subscribed(self, where: str, filters: list[str]) -> None:
        """Commit what the session is subscribed to, if it changed."""
        record = (where, self._client_id, filters)
        if record == self._subscribed:
            return
        await self.ctx.save_position(
            json.dumps(
                {"mqtt": {"broker": where, "client_id": self._client_id, "topics": filters}}
            ).encode()
        )
        self._subscribed = record

    async def _forget_old_session(self) -> None:
        """Clear the store's QoS 2 ids and redelivery marks once the old session's
        messages are all committed (their marks must not outlive the clearing)."""
        buffer = self._buffer
        for i, msg in enumerate(buffer):
            if msg.dedupe is not None:  # not handed over yet: store it without a mark
                buffer[i] = msg._replace(dedupe=None)
        self._drained.clear()
        if self.unacked:
            self.ctx.log.info(
                "the broker started a new session: waiting for %d messages of the old one"
                " to be stored before subscribing",
                self.unacked,
            )
            await self._drained.wait()
        try:
            await self.ctx.marks.new_session()
        except GatewayError as err:
            raise RetryableError(f"cannot clear the old session's packet ids: {err}") from err
        self._reset_due = False

    def _on_lost(self, reason: str) -> None:
        self._lost = reason + self._taken_over_hint(reason)
        self._ready.set()

    def _taken_over_hint(self, reason: str) -> str:
        """Why a broker may have closed a connection it had just accepted: a second client
        with this client id (two gateways with one gateway.id, a cloned SD card) takes the
        session over, each connect closing the other's, and all the log said was "the broker
        closed the connection; retrying" on both. MQTT 5 brokers may say so (reason code
        0x8e); Mosquitto 2.0.11 closes the socket without a word."""
        if "reason code 0x8e" not in reason:
            if reason != "the broker closed the connection" or self._connected_at is None:
                return ""
            if self.ctx.clock.monotonic() - self._connected_at > TAKEOVER_WINDOW:
                return ""
        return (
            f" (soon after it accepted it: if this repeats, another client uses the client id"
            f" {self._client_id}; two gateways with the same gateway.id take each other's"
            " session)"
        )

    def _on_release(self, mid: int) -> None:
        """PUBREL: the id is forgotten in a commit (in `read`), and only then PUBCOMP."""
        if mid in self._held:
            self._releases.append(mid)
            self._ready.set()
        elif self._client is not None:
            self._client.complete([mid])  # nothing held under it (a new session cleared it)

    def _check_pause(self) -> None:
        if (
            not self._paused
            and not self._connecting  # the SUBACK must still get through
            and (
                len(self._pending) >= self.config.receive_maximum
                or self.inflight_bytes >= self.config.receive_max_bytes
            )
        ):
            self._paused = True
            self.pauses += 1
            if self._client is not None:
                self._client.pause_reading()

    def _deliver(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        dup: bool,
        retain: bool,
        user: list[tuple[str, str]] | None,
        mid: int | None,
    ) -> None:
        """Called for each PUBLISH as it is parsed; must be quick and never block."""
        if user:
            attrs = {
                "mqtt.topic": topic,
                "mqtt.qos": _QOS_TEXT[qos],
                "mqtt.retain": "1" if retain else "0",
            }
            _user_attributes(attrs, user)
            attrs_size = attributes_size(attrs)
        else:
            # FlowFiles never change their attributes, so one dict per topic and flags
            # serves them all (and its JSON is then found by identity, see attributes_json)
            shared = self._shared_attrs.get((topic, qos, retain))
            if shared is None:
                if len(self._shared_attrs) >= 4096 or self._shared_bytes > SHARED_ATTRS_BYTES:
                    self._shared_attrs.clear()
                    self._shared_bytes = 0
                attrs = {
                    "mqtt.topic": topic,
                    "mqtt.qos": _QOS_TEXT[qos],
                    "mqtt.retain": "1" if retain else "0",
                }
                shared = self._shared_attrs[(topic, qos, retain)] = (attrs, attributes_size(attrs))
                self._shared_bytes += shared[1]
            attrs, attrs_size = shared
        length = len(payload)
        kept = min(length, self.config.max_payload)
        # what the message holds until it is stored: user properties can be most of it
        size = kept + len(topic) + attrs_size + FLOWFILE_OVERHEAD
        if mid is None:
            if qos == 0 and self._qos0_full(size):
                self._drop_qos0()
                return
            dedupe = None
        else:
            digest = _digest(topic, payload)
            # the usual message (QoS 1, first delivery, id not in flight) needs no lookups
            if (dup or qos == 2 or mid in self._pending) and not self._first_copy(
                mid, digest, qos, dup
            ):
                return
            dedupe = (mid, digest + _FLAG_BYTES[(qos == 2) * 2 + dup])
            self._pending[mid] = (digest, size)
        reject = None
        if kept < length:
            self.oversized += 1
            reject = (
                f"payload of {length} bytes exceeds max_payload "
                f"({self.config.max_payload}); the first {self.config.max_payload} kept"
            )
            payload = payload[:kept]
            # its own dict (the topic's is shared): the mark keeps it out of a replay
            attrs = {**attrs, CONTENT_TRUNCATED: "max_payload"}
        ff = _tuple_new(FlowFile, (uuid7(), topic, attrs, payload, time_ns(), ()))
        ack = _Ack(self, mid, qos, self._epoch, size)
        self._hand(_tuple_new(Message, (ff, ack, dedupe, reject, None)), size, qos)

    def _qos0_full(self, size: int) -> bool:
        """Whether a QoS 0 message of `size` bytes must be dropped: too much is waiting.
        With nothing waiting it is taken, however large (as QoS 1 is): a receive_max_bytes
        below max_payload dropped every larger QoS 0 message, the gateway idle."""
        inflight = self.inflight_bytes
        return len(self._buffer) >= QOS0_CAPACITY or (
            inflight > 0 and inflight + size > self.config.receive_max_bytes
        )

    def _first_copy(self, mid: int, digest: bytes, qos: int, dup: bool) -> bool:
        """False for a copy of a message that is stored or on its way to the store."""
        entry = self._pending.get(mid)
        if entry is not None and (qos == 2 or entry[0] == digest):
            # still on its way to the store (from before a reconnect): its ack covers this;
            # the broker cannot have reused an id we have not acknowledged
            return False
        if qos == 2:
            if mid in self._held:  # stored, PUBREC sent, no PUBREL yet: answer again
                self.redeliveries += 1
                self._acks_now(mid, 2)
                return False
            return True
        if dup and self.ctx.marks.committed(mid, digest):
            if self.ctx.marks.ids_counted(self.config.receive_maximum):
                self.redeliveries += 1
                self._acks_now(mid, qos)
                return False
            self.possible_duplicates += 1  # cannot be told from a new identical message
        return True

    def _reject(
        self, topic: str, raw: bytes, qos: int, dup: bool, mid: int | None, reason: str
    ) -> None:
        """A PUBLISH MQTT forbids, framed soundly: a dead letter, acknowledged once stored.

        Bounded like `_deliver`: QoS 0 ones beyond the bounds are dropped (and counted),
        QoS 1/2 ones (packet id 0 too) count towards the pause of reading.
        """
        topic = topic.replace("\x00", "\\x00") or "mqtt/invalid"
        attrs = {"mqtt.topic": topic, "mqtt.qos": _QOS_TEXT[qos], MQTT_INVALID: "1"}
        size = len(raw) + len(topic) + attributes_size(attrs) + FLOWFILE_OVERHEAD
        dedupe = None
        if mid is not None:
            digest = _digest(topic, raw[1:])  # not the first byte: its DUP flag changes
            if not self._first_copy(mid, digest, qos, dup):
                return
            dedupe = (mid, digest + _flags(qos, dup))
            self._pending[mid] = (digest, size)
            ack = _Ack(self, mid, qos, self._epoch, size)
        elif not qos:
            if self._qos0_full(size):
                self._drop_qos0()
                return
            ack = _Ack(self, None, 0, self._epoch, size)
        else:  # QoS 1/2 with packet id 0 (handed over as None): nothing to acknowledge
            if reason != f"invalid PUBLISH: {PACKET_ID_0.format(qos=qos)}":
                # another fault came first and is the one the wire named
                reason += f"; {PACKET_ID_0.format(qos=qos)}"
            reason += "; the broker may send it again"
            ack = _Ack(self, None, 0, self._epoch, size)
        self.invalid += 1
        ff = FlowFile(uuid7(), topic, attrs, raw, time_ns(), ())
        reason += "; the content is the raw PUBLISH packet"
        self._hand(Message(ff, ack, dedupe, reason), size, qos)
        self._last_invalid = (reason, topic)
        self._log_invalid()

    def _hand(self, message: Message, size: int, qos: int) -> None:
        self._buffer.append(message)
        self.inflight_bytes += size
        # QoS 0 is never paused for, but dropped (see `_qos0_full`)
        if qos and not self._paused:
            self._check_pause()
        self._ready.set()

    def _drop_qos0(self) -> None:
        self.dropped_qos0 += 1
        self.dropped = self.dropped_qos0
        self._log_drops()

    def _log_drops(self, now: bool = False) -> None:
        """At most one WARNING every LOG_INTERVAL seconds, with the count since the last
        (`now`: whatever the interval, at a close)."""
        new = self._drops_log.due(self.dropped_qos0, now)
        if not new:
            return
        self.ctx.log.warning(
            "dropped %d QoS 0 messages (%d in all): they arrived faster than the gateway"
            " stores them, and QoS 0 allows dropping; subscribe with qos: 1 to keep every one",
            new,
            self.dropped_qos0,
        )

    def _log_invalid(self, now: bool = False) -> None:
        """Like `_log_drops`: at most one WARNING every LOG_INTERVAL seconds."""
        new = self._invalid_log.due(self.invalid, now)
        if not new:
            return
        reason, topic = self._last_invalid
        if new == 1:
            self.ctx.log.warning("%s (topic %r); it goes to the dead letters", reason, topic)
        else:
            self.ctx.log.warning(
                "%d invalid PUBLISH packets went to the dead letters (%d in all); the last:"
                " %s (topic %r)",
                new,
                self.invalid,
                reason,
                topic,
            )

    async def read(self) -> list[Message]:
        while True:
            if self._releases:
                await self._release()
            if self._buffer:
                break
            if self._lost:
                raise RetryableError(self._lost)
            self._ready.clear()
            await self._ready.wait()
        self._log_drops()
        self._log_invalid()
        self._counted = True
        buf = self._buffer
        n = min(len(buf), READ_BATCH)
        self.unacked += n
        return [buf.popleft() for _ in range(n)]

    async def _release(self) -> None:
        """Forget QoS 2 packet ids whose PUBREL came, in a commit, then send PUBCOMP."""
        ids, self._releases = self._releases, []
        client = self._client
        try:
            await self.ctx.marks.release(ids)
        except GatewayError as err:
            raise RetryableError(f"cannot record the end of QoS 2 messages: {err}") from err
        if client is not None and client is self._client and client.connected:
            client.complete(ids)

    def _ack(self, mid: int | None, qos: int, epoch: int, size: int) -> None:
        self.unacked -= 1
        if not self.unacked:
            self._drained.set()
        self.inflight_bytes -= size
        # A message of an old session leaves `_pending` alone: it was cleared when the new
        # session began, and an entry under the same id now is a new session's message.
        if mid is not None and epoch == self._epoch:
            self._pending.pop(mid, None)
            if not self._acks:
                asyncio.get_running_loop().call_soon(self._flush_acks)
            self._acks.append((mid, qos))
        # any ack can end a pause (QoS 0 and invalid messages count in inflight_bytes too)
        if (
            self._paused
            and len(self._pending) <= self.config.receive_maximum // 2
            and self.inflight_bytes <= self.config.receive_max_bytes // 2
        ):
            self._paused = False
            if self._client is not None:
                self._client.resume_reading()

    def _acks_now(self, mid: int, qos: int) -> None:
        if self._client is not None:
            self._client.ack([(mid, qos)])

    def _flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        client = self._client
        if client is None or not client.connected:
            return  # the broker redelivers these (DUP) and we recognise them as stored
        client.ack(acks)

    async def close(self) -> None:
        self._log_drops(now=True)
        self._log_invalid(now=True)
        client, self._client = self._client, None
        if client is not None:
            if self._acks:
                self._flush_acks_to(client)
            await client.disconnect(CLOSE_WAIT)

    def _flush_acks_to(self, client: Subscriber) -> None:
        acks, self._acks = self._acks, []
        if client.connected:
            client.ack(acks)

    def status(self) -> Mapping[str, object]:
        """QoS 0 drops, the broker once connected, and the redelivery counters."""
        out: dict[str, object] = {"dropped": self.dropped}
        if self._broker_address is not None:
            out["broker"] = self._broker_address
        if self._counted:
            out["redeliveries"] = self.redeliveries
            out["possible_duplicates"] = self.possible_duplicates
            out["invalid"] = self.invalid
            out["receive_paused"] = self.pauses
        return out


class _Ack:
    """Runs once the message's batch is committed: PUBACK/PUBREC, and the bookkeeping."""

    __slots__ = ("epoch", "mid", "qos", "size", "source")

    def __init__(
        self, source: MqttSource, mid: int | None, qos: int, epoch: int, size: int
    ) -> None:
        self.source = source
        self.mid = mid
        self.qos = qos
        self.epoch = epoch
        self.size = size

    def __call__(self) -> None:
        self.source._ack(self.mid, self.qos, self.epoch, self.size)

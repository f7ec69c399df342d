"""Subscribes to MQTT topics and acknowledges each message only once it is stored.

```yaml
sources:
  plant:
    type: mqtt
    topics: ["sensors/+/telemetry", "meters/#"]
    qos: 1                    # 0, 1 or 2; 1 is the usual choice
    # url: mqtt://10.0.0.2:1883   default: the top-level mqtt.url (or the embedded broker)
    # client_id: pi-01-plant      default: edge-stream-<gateway id>-<source name>
    # username: gw
    # password: ENC(...)
    # max_payload: 256KiB         larger messages go to the dead letters, truncated
    # receive_maximum: 1000       QoS 1/2 messages in flight to us, not yet stored; the
    #                             gateway stops reading from the broker at this many
    #                             (1 to 16384)
    # session_expiry: 7d          how long the broker keeps our session while we are away
```

Each message becomes a FlowFile on its MQTT topic with the attributes
`mqtt.topic`, `mqtt.qos`, `mqtt.retain` and `mqtt.user.<key>` for MQTT 5 user
properties. With QoS 1 or 2 the PUBACK (PUBREC) is sent only after the batch
holding the message is committed to the store, over a persistent session with
a fixed client id: a crash before that makes the broker deliver it again, and
a broker's redelivery of a message that was already stored (same packet id,
topic and payload, DUP set) is acknowledged without storing it twice.

What your broker needs: a persistent session keeps messages for the gateway
while it is away, up to the broker's queue limit. Mosquitto keeps only 1000 by
default; set `max_queued_messages` (e.g. 1000000) and `max_queued_bytes` in
mosquitto.conf, or messages beyond that are dropped by the broker during a
gateway restart. The embedded broker (`mqtt.url: embedded`) is set up so.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from time import time_ns
from typing import Literal

from gateway.config.model import SourceConfig
from gateway.config.schema import Duration, Size
from gateway.core.component import Context, Message, Source
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile, uuid7
from gateway.core.topics import validate_filter
from gateway.mqtt import parse_url, tls_context
from gateway.mqttwire import ConnectRefused, Subscriber

READ_BATCH = 2000
_QOS_TEXT = ("0", "1", "2")


@dataclass(frozen=True, kw_only=True)
class MqttSourceConfig(SourceConfig):
    topics: list[str]
    qos: Literal[0, 1, 2] = 1
    url: str | None = None
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    max_payload: Size = 256 * 1024
    receive_maximum: int = 1000
    session_expiry: Duration = 7 * 86400.0
    keepalive: Duration = 30.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.topics:
            yield "topics", "subscribe to at least one topic filter"
        for i, topic_filter in enumerate(self.topics):
            problem = validate_filter(topic_filter)
            if problem:
                yield f"topics.{i}", f"{topic_filter!r} is not a valid topic filter: {problem}"
        if self.url is not None:
            try:
                parse_url(self.url)
            except ValueError as err:
                yield "url", str(err)
        if not 1 <= self.receive_maximum <= 16384:
            # Beyond that, after a crash, a redelivery of a stored message could no longer
            # be told from a new one (see REDELIVERY_WINDOW in gateway/store/sqlite.py).
            yield "receive_maximum", "must be between 1 and 16384"


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
        seed = _topic_crc[topic] = zlib.crc32(topic.encode())
    return ((zlib.crc32(payload, seed) << 32) | (len(payload) & 0xFFFFFFFF)).to_bytes(8, "big")


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
        self._pending: dict[int, bytes] = {}  # packet id -> digest, handed over, not yet acked
        self._acks: list[tuple[int, int]] = []  # committed, to be sent in one write
        self._paused = False  # reading paused: receive_maximum messages are unacknowledged
        self._connecting = False
        self._shared_attrs: dict[tuple[str, int, bool], dict[str, str]] = {}
        self._qos0_capacity = 10000
        self.dropped_qos0 = 0
        self.redeliveries = 0
        self.oversized = 0
        self._client_id = config.client_id or f"edge-stream-{ctx.gateway_id}-{ctx.name}"

    async def connect(self) -> None:
        cfg = self.config
        host, port, tls = parse_url(cfg.url or self.ctx.mqtt_url)
        self._lost = None
        try:
            async with asyncio.timeout(15):
                self._connecting = True
                client = Subscriber(self._deliver, self._on_lost)
                self._client = client
                self._paused = False
                present = await client.open(
                    host=host,
                    port=port,
                    client_id=self._client_id,
                    clean_start=False,
                    keepalive=int(cfg.keepalive),
                    session_expiry=int(cfg.session_expiry),
                    receive_maximum=cfg.receive_maximum,
                    username=cfg.username,
                    password=cfg.password,
                    tls=tls_context(cfg.ca_file, cfg.cert_file, cfg.key_file) if tls else None,
                )
                if not present:
                    # a new session: packet ids of the old one mean nothing to the broker now
                    self._epoch += 1
                    self._pending.clear()
                granted = await client.subscribe([(f, cfg.qos) for f in cfg.topics])
        except ConnectRefused as err:
            self._connecting = False
            if err.permanent:
                raise PermanentError(f"MQTT broker {host}:{port}: {err}") from err
            raise RetryableError(f"MQTT broker {host}:{port}: {err}") from err
        except (OSError, TimeoutError, ssl.SSLError) as err:
            self._connecting = False
            raise RetryableError(f"cannot connect to MQTT broker {host}:{port}: {err}") from err
        self._connecting = False
        if len(self._pending) >= cfg.receive_maximum:
            self._paused = True
            client.pause_reading()
        refused = [f for f, code in zip(cfg.topics, granted, strict=False) if code >= 0x80]
        if refused:
            self.ctx.log.error("the broker refused the subscription to %s", ", ".join(refused))
        self.ctx.status["broker"] = f"{host}:{port}"
        self.ctx.log.info(
            "connected to %s:%d as %s (%s session)",
            host,
            port,
            self._client_id,
            "resumed" if present else "new",
        )

    def _on_lost(self, reason: str) -> None:
        self._lost = reason
        self._ready.set()

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
        if mid is None and len(self._buffer) >= self._qos0_capacity:
            self.dropped_qos0 += 1
            return
        digest = None
        if mid is not None:
            digest = _digest(topic, payload)
            if dup:
                if self._pending.get(mid) == digest:
                    return  # the first copy is still on its way to the store; its ack covers this
                if self.ctx.committed(mid, digest):
                    self.redeliveries += 1
                    self._acks_now(mid, qos)
                    return
            self._pending[mid] = digest
            if (
                len(self._pending) >= self.config.receive_maximum
                and not self._paused
                and not self._connecting  # the SUBACK must still get through
            ):
                self._paused = True
                if self._client is not None:
                    self._client.pause_reading()
        if user:
            attrs = {
                "mqtt.topic": topic,
                "mqtt.qos": _QOS_TEXT[qos],
                "mqtt.retain": "1" if retain else "0",
            }
            for key, value in user:
                attrs[f"mqtt.user.{key}"] = value
        else:
            # FlowFiles never change their attributes, so one dict per topic and flags
            # serves them all (and its JSON is then found by identity, see attributes_json)
            attrs = self._shared_attrs.get((topic, qos, retain))  # type: ignore[assignment]
            if attrs is None:
                if len(self._shared_attrs) >= 4096:
                    self._shared_attrs.clear()
                attrs = self._shared_attrs[(topic, qos, retain)] = {
                    "mqtt.topic": topic,
                    "mqtt.qos": _QOS_TEXT[qos],
                    "mqtt.retain": "1" if retain else "0",
                }
        reject = None
        if len(payload) > self.config.max_payload:
            self.oversized += 1
            reject = (
                f"payload of {len(payload)} bytes exceeds max_payload "
                f"({self.config.max_payload}); the first {self.config.max_payload} kept"
            )
            payload = payload[: self.config.max_payload]
        ff = FlowFile(uuid7(), topic, attrs, payload, time_ns(), ())
        if mid is None:
            self._buffer.append(Message(ff, None, None, reject))
        else:
            ack = _Ack(self, mid, qos, self._epoch)
            self._buffer.append(Message(ff, ack, (mid, digest), reject))  # type: ignore[arg-type]
        self._ready.set()

    async def read(self) -> list[Message]:
        while not self._buffer:
            if self._lost:
                raise RetryableError(self._lost)
            self._ready.clear()
            await self._ready.wait()
        buf = self._buffer
        n = min(len(buf), READ_BATCH)
        return [buf.popleft() for _ in range(n)]

    def _ack(self, mid: int, qos: int, epoch: int) -> None:
        if self._pending.get(mid) is not None:
            del self._pending[mid]
            if self._paused and len(self._pending) <= self.config.receive_maximum // 2:
                self._paused = False
                if self._client is not None:
                    self._client.resume_reading()
        if epoch != self._epoch:
            return  # a new session: that packet id means nothing to the broker any more
        if not self._acks:
            asyncio.get_running_loop().call_soon(self._flush_acks)
        self._acks.append((mid, qos))

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
        client, self._client = self._client, None
        if client is not None:
            if self._acks:
                self._flush_acks_to(client)
            client.close()

    def _flush_acks_to(self, client: Subscriber) -> None:
        acks, self._acks = self._acks, []
        if client.connected:
            client.ack(acks)


class _Ack:
    """Sends the acknowledgement for one message once its batch is committed."""

    __slots__ = ("epoch", "mid", "qos", "source")

    def __init__(self, source: MqttSource, mid: int, qos: int, epoch: int) -> None:
        self.source = source
        self.mid = mid
        self.qos = qos
        self.epoch = epoch

    def __call__(self) -> None:
        self.source._ack(self.mid, self.qos, self.epoch)

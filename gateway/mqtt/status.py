"""The gateway's own topics on its broker: `edge-stream/<id>/status` and `.../stats`.

One small connection (the project's own `gateway.mqtt.client.Client`) to the
gateway's broker, opened with a last will: a retained `offline` on
`edge-stream/<id>/status`, which the broker publishes itself when the connection
ends without a DISCONNECT (the process killed, the board unplugged). On connect a
retained `online` replaces it; a clean stop publishes `offline` before it
disconnects. Every `status.stats_interval` a retained JSON summary goes to
`edge-stream/<id>/stats`; with the stats off (`0s`) the retained summary is removed, so
that no stale one is read as current. The alerts' MQTT notifier (gateway/alerts.py) sends
on this connection through `send`.

A broker that is away never stops the gateway: the channel reconnects with capped
exponential backoff and jitter; a reload that changes the broker, the gateway id or
`status` reconnects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config.model import Config
from gateway.core.backoff import Backoff
from gateway.core.errors import PermanentError
from gateway.mqtt.broker import has_gateway_broker
from gateway.mqtt.client import Client, ConnectRefused, connect_refusal, puback_reason
from gateway.mqtt.urls import (
    NO_TLS_FILES,
    TlsFile,
    TlsFilesError,
    files_tls_context,
    login,
    parse_url,
    tls_files,
)

log = logging.getLogger("gateway.status")

PUBACK_WAIT = 10.0  # seconds a QoS 1 publish may wait for its PUBACK
LOST = 0x100  # not an MQTT reason code: the connection ended before the PUBACK came
IDLE = 1.0  # seconds between two looks at the settings and the stats' due time


def status_topic(gateway_id: str) -> str:
    return f"edge-stream/{gateway_id}/status"


def stats_topic(gateway_id: str) -> str:
    return f"edge-stream/{gateway_id}/stats"


@dataclass(frozen=True)
class _Plan:
    url: str
    gateway_id: str
    client_id: str
    username: str | None
    password: str | None
    keepalive: int
    tls_files: tuple[TlsFile, TlsFile, TlsFile]


class StatsGrid:
    """When the stats go: every `stats_interval` on a grid from the first, so a wake a
    little late does not push the next one back (they went at the loop's next whole-second
    look: 1.5s was every 2 s, 1m every 60 to 61 s). Times are the loop's clock."""

    def __init__(self) -> None:
        self.last: float | None = None  # when the last stats were due

    def due(self, now: float, interval: float) -> bool:
        """Whether stats are due at `now`; if so they count as sent."""
        due = now if self.last is None else self.last + interval
        if now < due:
            return False
        # a wake later than a whole interval (the loop held up) starts the grid anew
        self.last = due if now - due < interval else now
        return True

    def wait(self, now: float, interval: float) -> float:
        """Seconds from `now` to the next look: when the next stats are due, IDLE at most
        (the settings are looked at again then)."""
        due = now if self.last is None else self.last + interval
        return min(IDLE, max(0.0, due - now))


class StatusChannel:
    """`run()` until cancelled, once `ready` is set; `close()` says `offline` cleanly.

    `broker_url` gives the gateway's broker (None: the gateway has none running, then
    `mqtt.url` if it names one); `stats` gives the summary published on the stats topic.
    """

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        broker_url: Callable[[], str | None],
        stats: Callable[[], dict[str, Any]],
        ready: asyncio.Event,
    ) -> None:
        self._config = config
        self._broker_url = broker_url
        self._stats = stats
        self._ready = ready
        self._client: Client | None = None
        self._topic: str | None = None  # the status topic the connection said `online` on
        self._acks: dict[int, asyncio.Future[int]] = {}
        # The status and stats publishes whose PUBACK is looked at, by packet id: their
        # topic. A refusal (an ACL that denies them) is said once until one is taken again.
        self._watched: dict[int, str] = {}
        self._refused: set[str] = set()
        self._lost = asyncio.Event()
        self.last_error: str | None = None
        self.stopping = False  # the gateway stops: a lost connection is expected
        # told when the connection is up again (the alerts' MQTT events wait for it)
        self.on_online: Callable[[], None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def wanted(self) -> bool:
        """The status topics are published (and the alerts' MQTT events sent): with
        `status.enabled` and a broker of the gateway's (`has_gateway_broker`)."""
        config = self._config()
        return config.status.enabled and has_gateway_broker(config)

    def _plan(self) -> _Plan | None:
        config = self._config()
        if not self.wanted():
            return None
        url = self._broker_url()
        if url is None and config.mqtt.url.startswith(("mqtt://", "mqtts://")):
            url = config.mqtt.url
        if url is None:
            return None
        prefix = config.mqtt.client_id or f"edge-stream-{config.gateway.id}"
        mqtt = config.mqtt
        username, password = login(url, mqtt.username, mqtt.password)
        return _Plan(
            url,
            config.gateway.id,
            f"{prefix}.status",
            username,
            password,
            round(mqtt.keepalive),
            tls_files(NO_TLS_FILES, (mqtt.ca_file, mqtt.cert_file, mqtt.key_file)),
        )

    async def run(self) -> None:
        await self._ready.wait()
        # The gateway's own broker, usually local: at most 10 s between attempts, so that
        # `online` and the alert events that waited follow soon after it is back.
        backoff = Backoff(1.0, 10.0)
        while True:
            plan = self._plan()
            if plan is None:
                await asyncio.sleep(IDLE)
                continue
            try:
                await self._session(plan, backoff)
            except (OSError, ConnectRefused, TimeoutError, ConnectionError, TlsFilesError) as err:
                host, port, _ = parse_url(plan.url)
                # a file that cannot be read waits for the operator, as a refusal does
                refusal = (
                    str(err) if isinstance(err, TlsFilesError) else connect_refusal(err, "mqtt.")
                )
                message = f"cannot publish the status on {host}:{port}: {refusal or err}"
                if self.stopping:  # the embedded broker may go first: expected, not news
                    log.debug("status: %s while stopping", message)
                elif message != self.last_error:
                    (log.error if refusal else log.warning)("status: %s; retrying", message)
                self.last_error = message
            finally:
                self._drop()
            if self._plan() == plan:
                await asyncio.sleep(backoff.next())

    async def _session(self, plan: _Plan, backoff: Backoff) -> None:
        host, port, tls = parse_url(plan.url)
        context = files_tls_context(plan.tls_files) if tls else None
        self._lost.clear()
        client = Client(on_puback=self._puback, on_lost=lambda _reason: self._lost.set())
        self._client = client
        topic = status_topic(plan.gateway_id)
        async with asyncio.timeout(10):
            await client.open(
                host,
                port,
                client_id=plan.client_id,
                clean_start=True,
                keepalive=plan.keepalive,
                username=plan.username,
                password=plan.password if plan.username else None,
                tls=context,
                will=(topic, b"offline", 1, True),
            )
        backoff.reset()
        self.last_error = None
        log.info("status: %s is online on %s:%d", topic, host, port)
        self._publish(client, topic, b"online")
        self._topic = topic
        if self.on_online is not None:
            self.on_online()
        loop = asyncio.get_running_loop()
        grid = StatsGrid()
        cleared = False
        while not client.closing():
            # Read at each turn: a reload's new interval counts from the last stats.
            interval = self._config().status.stats_interval
            wait = IDLE
            if interval:
                cleared = False
                if grid.due(loop.time(), interval):
                    body = json.dumps(self._stats(), separators=(",", ":")).encode()
                    self._publish(client, stats_topic(plan.gateway_id), body)
                wait = grid.wait(loop.time(), interval)
            elif not cleared:
                # Stats off: the last summary, retained, would be read as today's for good.
                # An empty retained message removes it (sent once per connection, and again
                # after a reload turns them off).
                self._publish(client, stats_topic(plan.gateway_id), b"")
                grid = StatsGrid()
                cleared = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._lost.wait()
            new = self._plan()
            if new != plan:
                log.info("status: the settings changed; reconnecting")
                if new is None or (new.url, new.gateway_id) != (plan.url, plan.gateway_id):
                    # status turned off, another broker or gateway id: the summary retained
                    # here would be read as current for good (the status topic says offline)
                    self._publish(client, stats_topic(plan.gateway_id), b"")
                await self._goodbye(client, topic)
                return
        raise ConnectionError(client.closed_reason or "closed")

    def _publish(self, client: Client, topic: str, payload: bytes) -> None:
        """Publish a status or stats message (QoS 1, retained); its PUBACK is looked at."""
        self._watched[client.publish_qos1(topic.encode(), payload, retain=True)] = topic

    def _puback(self, mid: int, reason: int) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason)
        topic = self._watched.pop(mid, None)
        if topic is None:
            return
        # A broker whose ACL denies the status topics answered each publish with a
        # refusal: the log said the status was online, and nothing reached the topics.
        if reason >= 0x80 and topic not in self._refused:
            self._refused.add(topic)
            log.error(
                "status: the broker refused the PUBLISH to %s: %s; nothing goes there until"
                " its ACL lets the gateway's MQTT user publish on it",
                topic,
                puback_reason(reason),
            )
        elif reason < 0x80 and topic in self._refused:
            self._refused.discard(topic)
            log.info("status: the broker takes the PUBLISH to %s again", topic)

    async def send(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Publish at QoS 1 and wait for the PUBACK; False if not connected or not
        acknowledged in time (the caller sends it again later). PermanentError, saying
        why, if the broker refused it (its ACL denies the topic): it was False, and an
        alert event was sent again and again, never taken, without a word."""
        client = self._client
        if client is None or not client.connected:
            return False
        mid = client.publish_qos1(topic.encode(), payload, retain=retain)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks[mid] = future
        try:
            async with asyncio.timeout(PUBACK_WAIT):
                reason = await asyncio.shield(future)
        except TimeoutError:
            return False
        finally:
            self._acks.pop(mid, None)
        if 0x80 <= reason < LOST:
            raise PermanentError(
                f"the broker refused the PUBLISH to {topic}: {puback_reason(reason)}"
            )
        return reason < 0x80

    async def _goodbye(self, client: Client, topic: str) -> None:
        """Say `offline` (retained) and wait a little for the broker to take it."""
        if not client.connected:
            return
        mid = client.publish_qos1(topic.encode(), b"offline", retain=True)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks[mid] = future
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await future

    async def close(self) -> None:
        """A clean stop: `offline` on the status topic, then DISCONNECT."""
        client = self._client
        # The topic it said `online` on, not the settings' now: a reload that changed the
        # gateway id or turned status off, not yet seen by `run` (it looks each second),
        # left `online` retained for good (the DISCONNECT holds back the last will).
        if client is not None and self._topic is not None:
            await self._goodbye(client, self._topic)
        self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._topic = None
        # Answered, not cancelled: the waiters (close()'s goodbye, an alert in send) are
        # other tasks, and a cancelled future raised CancelledError in them. run() drops
        # the channel when its connection goes, also while close() waits for the PUBACK of
        # `offline` (the broker stopping, another gateway taking over the client id): the
        # error left close() and cut the gateway's shutdown short, with a traceback.
        for future in self._acks.values():
            if not future.done():
                future.set_result(LOST)
        self._acks.clear()
        self._watched.clear()
        if client is not None:
            client.close()

"""The Modbus source's own MQTT connection: write-back commands in, results and status out.

The engine does not hand sources an MQTT client, so the Modbus source keeps a
small one (`gateway.mqtt.client.Client`). It
subscribes to the write-back topic filter, hands each command to the source,
publishes the result when the source replies, and publishes each device's
state as a retained message. It never reconnects by itself: the source's
scheduler calls `connect()` again when it is due.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

from gateway.core.component import Context
from gateway.core.errors import RetryableError
from gateway.mqtt.client import (
    CORRELATION_DATA,
    RESPONSE_TOPIC,
    Client,
    binary_property,
)
from gateway.mqtt.urls import parse_url, tls_context

# submit(device, register, payload, reply) -> error text, or None when queued;
# reply(result) is called exactly once for a queued command.
Submit = Callable[[str, str, bytes, Callable[[dict[str, Any]], None]], str | None]

PLACEHOLDER = re.compile(r"\{(device|register)\}")


def template_filter(template: str) -> str:
    """The MQTT subscription filter for a topic template: each placeholder becomes `+`."""
    return PLACEHOLDER.sub("+", template)


def template_regex(template: str) -> re.Pattern[str]:
    """A regex that takes device and register back out of a topic made from `template`."""
    out, pos = [], 0
    for m in PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


class SideChannel:
    """Write-back commands and device status over one MQTT connection."""

    def __init__(
        self,
        ctx: Context,
        *,
        url: str,
        client_id: str,
        set_topic: str,
        result_topic: str,
        status_topic: str | None,
        username: str | None,
        password: str | None,
        submit: Submit,
        max_pending: int = 100,
    ) -> None:
        self.ctx = ctx
        self.url = url
        self.client_id = client_id
        self.set_topic = set_topic
        self.result_topic = result_topic
        self.status_topic = status_topic
        self.username = username
        self.password = password
        self.submit = submit
        self.max_pending = max_pending
        self.pending = 0
        self._matcher = template_regex(set_topic)
        self._client: Client | None = None
        self.last_error: str | None = None
        self.commands = 0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Connect and subscribe, or raise RetryableError."""
        await self.close()
        host, port, tls = parse_url(self.url)
        client = Client(deliver=self._deliver)
        try:
            async with asyncio.timeout(10):
                await client.open(
                    host,
                    port,
                    client_id=self.client_id,
                    clean_start=True,
                    keepalive=30,
                    receive_maximum=self.max_pending,
                    username=self.username or None,
                    password=self.password if self.username else None,
                    tls=tls_context(None, None, None) if tls else None,
                )
                self._client = client  # deliveries may start right behind the SUBSCRIBE
                await client.subscribe([(template_filter(self.set_topic), 1)])
        except (OSError, TimeoutError, Exception) as err:
            self._client = None
            self.last_error = f"cannot reach MQTT broker {host}:{port} for write-back: {err}"
            client.abort()
            raise RetryableError(self.last_error) from err
        self.last_error = None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def publish_status(self, device: str, state: dict[str, Any]) -> None:
        """Publish a device's state, retained, if connected."""
        client = self._client
        if self.status_topic is None or client is None or not client.connected:
            return
        topic = self.status_topic.replace("{device}", device)
        client.publish(topic.encode(), json.dumps(state).encode(), qos=1, retain=True)

    def _deliver(
        self, topic: str, payload: bytes, qos: int, props: dict[int, Any], mid: int | None
    ) -> None:
        """Called on the loop for each command; queues it, never blocks."""
        client = self._client
        m = self._matcher.fullmatch(topic)
        if client is None:
            return  # connection being closed: unacknowledged, the broker forgets it (clean)
        self.commands += 1
        device = m.group("device") if m else ""
        register = m.group("register") if m else ""
        response = props.get(RESPONSE_TOPIC)
        correlation = props.get(CORRELATION_DATA)
        done = False

        def reply(result: dict[str, Any]) -> None:
            nonlocal done
            if done:
                return
            done = True
            self.pending -= 1
            self._publish_result(client, device, register, result, response, correlation)
            if mid is not None and client.connected:
                client.ack([(mid, qos)])

        self.pending += 1
        if m is None:
            reply({"ok": False, "error": f"topic {topic!r} does not match {self.set_topic!r}"})
            return
        if self.pending > self.max_pending:
            reply({"ok": False, "error": "too many write commands waiting; try again"})
            return
        error = self.submit(device, register, payload, reply)
        if error is not None:
            reply({"ok": False, "error": error})

    def _publish_result(
        self,
        client: Client,
        device: str,
        register: str,
        result: dict[str, Any],
        response: str | None,
        correlation: bytes | None,
    ) -> None:
        if not client.connected:
            return
        body = {"device": device, "register": register, **result}
        data = json.dumps(body).encode()
        topic = self.result_topic.replace("{device}", device).replace("{register}", register)
        client.publish(topic.encode(), data, qos=1)
        if response:
            extra = binary_property(CORRELATION_DATA, correlation) if correlation else b""
            client.publish(response.encode(), data, qos=1, properties=extra)

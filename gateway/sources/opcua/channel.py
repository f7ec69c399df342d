"""The OPC UA source's own MQTT connection: write-back commands in, their results out.

The same shape as the Modbus source's side channel (gateway/sources/modbus/writeback.py),
kept apart so that an OPC UA gateway does not import pymodbus through that package. It
subscribes to the command topic, hands each command to the source, publishes the result
when the source replies, and acknowledges the command then. It never reconnects by
itself: the source calls `connect()` again when its retry time comes.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

from gateway.core.component import Context
from gateway.core.errors import RetryableError
from gateway.mqtt.client import CORRELATION_DATA, RESPONSE_TOPIC, Client, binary_property
from gateway.mqtt.urls import parse_url, tls_context

# submit(node, payload, reply) -> error text, or None when queued; reply(result) is
# called exactly once for a queued command.
Submit = Callable[[str, bytes, Callable[[dict[str, Any]], None]], str | None]


def command_pattern(template: str) -> tuple[str, re.Pattern[str]]:
    """The subscription filter and the regex taking `{node}` out of a command topic
    (`template` has `{source}` already filled in)."""
    before, _, after = template.partition("{node}")
    regex = re.compile(re.escape(before) + "(?P<node>[^/]+)" + re.escape(after))
    return before + "+" + after, regex


class CommandChannel:
    """Write-back commands and their results over one MQTT connection."""

    def __init__(
        self,
        ctx: Context,
        *,
        url: str,
        client_id: str,
        set_topic: str,
        result_topic: str,
        username: str | None,
        password: str | None,
        submit: Submit,
        max_pending: int = 100,
    ) -> None:
        self.ctx = ctx
        self.url = url
        self.client_id = client_id
        self.filter, self._matcher = command_pattern(set_topic)
        self.set_topic = set_topic
        self.result_topic = result_topic
        self.username = username
        self.password = password
        self.submit = submit
        self.max_pending = max_pending
        self.pending = 0
        self.commands = 0
        self._client: Client | None = None

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
                await client.subscribe([(self.filter, 1)])
        except (OSError, TimeoutError, Exception) as err:
            self._client = None
            client.abort()
            raise RetryableError(
                f"cannot reach MQTT broker {host}:{port} for write-back: {err}"
            ) from err

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _deliver(
        self, topic: str, payload: bytes, qos: int, props: dict[int, Any], mid: int | None
    ) -> None:
        """Called on the loop for each command; queues it, never blocks."""
        client = self._client
        if client is None:
            return  # being closed: unacknowledged, the broker forgets it (clean start)
        m = self._matcher.fullmatch(topic)
        node = m.group("node") if m else ""
        response = props.get(RESPONSE_TOPIC)
        correlation = props.get(CORRELATION_DATA)
        self.commands += 1
        done = False

        def reply(result: dict[str, Any]) -> None:
            nonlocal done
            if done:
                return
            done = True
            self.pending -= 1
            if client.connected:
                body = json.dumps({"node": node, **result}).encode()
                client.publish(self.result_topic.replace("{node}", node).encode(), body, qos=1)
                if response:
                    extra = binary_property(CORRELATION_DATA, correlation) if correlation else b""
                    client.publish(response.encode(), body, qos=1, properties=extra)
                if mid is not None:
                    client.ack([(mid, qos)])

        self.pending += 1
        if m is None:
            reply({"ok": False, "error": f"topic {topic!r} does not match {self.set_topic!r}"})
        elif self.pending > self.max_pending:
            reply({"ok": False, "error": "too many write commands waiting; try again"})
        else:
            error = self.submit(node, payload, reply)
            if error is not None:
                reply({"ok": False, "error": error})

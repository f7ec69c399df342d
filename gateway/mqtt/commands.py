"""A source's own MQTT connection for write-back: commands in, their results out.

The engine does not hand sources an MQTT client, so a source that takes write-back
commands (Modbus, OPC UA) keeps a small one (`gateway.mqtt.client.Client`) through a
`CommandChannel`. It subscribes to the command topic template (its `{placeholders}`,
each a whole topic level, become `+`), hands each command to the source with the
placeholders' values, publishes the result when the source replies (on the result
topic template and on an MQTT 5 response topic if the command has one), and
acknowledges the command then. A source may give it a last will (one retained
message, since MQTT has one per connection) for the broker to publish if the
connection ends without a DISCONNECT: the process killed, the network lost. It
never reconnects by itself: the source calls `connect()` again when its retry
time comes. `parse_command` reads a command's payload: a JSON value or
`{"value": ..., "id": ...}`.

Nothing here knows a field protocol (no pymodbus, no asyncua): the sources bring
their own `submit`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.core.component import Context
from gateway.core.errors import RetryableError
from gateway.mqtt.client import CORRELATION_DATA, RESPONSE_TOPIC, Client, binary_property
from gateway.mqtt.urls import (
    NO_TLS_FILES,
    TlsFilesError,
    files_tls_context,
    login,
    parse_url,
    tls_files,
)

Reply = Callable[[dict[str, Any]], None]
# submit(fields, payload, reply) -> error text, or None when queued; `fields` holds each
# placeholder's value from the command's topic; reply(result) is called exactly once for
# a queued command.
Submit = Callable[[Mapping[str, str], bytes, Reply], str | None]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a value to write (nor valid JSON); send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large to be a number; send a finite number")
    return value


def parse_command(payload: bytes) -> tuple[Any, Any]:
    """(value, id) from a JSON value or {"value": ..., "id": ...}; bare text is a string.

    NaN, Infinity and numbers too large for a float are refused (ValueError): Python's
    json reads them, but they are not JSON, no device setting means them, and echoing
    one back would make the result invalid JSON.
    """
    try:
        data = json.loads(payload, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError as err:
        raise ValueError("payload is JSON nested too deeply") from err
    except (UnicodeDecodeError, json.JSONDecodeError):
        try:
            return payload.decode("utf-8"), None
        except UnicodeDecodeError as err:
            raise ValueError("payload is neither JSON nor UTF-8 text") from err
    if isinstance(data, dict):
        if "value" not in data:
            raise ValueError('a JSON object needs a "value" key')
        return data["value"], data.get("id")
    return data, None


class TopicTemplate:
    """A topic with `{name}` placeholders, each a whole level: its subscription filter,
    and the placeholders' values taken back out of a topic made from it."""

    def __init__(self, template: str, names: tuple[str, ...]) -> None:
        self.template = template
        self.names = names
        placeholder = re.compile(r"\{(" + "|".join(map(re.escape, names)) + r")\}")
        self.filter = placeholder.sub("+", template)
        out, pos, seen = [], 0, set()
        for m in placeholder.finditer(template):
            name = m.group(1)
            out.append(re.escape(template[pos : m.start()]))
            # a placeholder used twice must be the same level both times
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+)")
            seen.add(name)
            pos = m.end()
        out.append(re.escape(template[pos:]))
        self._regex = re.compile("".join(out))

    def match(self, topic: str) -> dict[str, str] | None:
        """Each placeholder's value in `topic`, or None when it is not one of ours."""
        m = self._regex.fullmatch(topic)
        if m is None:
            return None
        groups = m.groupdict()
        return {name: groups[name] for name in self.names if name in groups}


def _finite(body: Any) -> Any:
    """`body` with every NaN or infinite float in it replaced by None."""
    if isinstance(body, float):
        return body if math.isfinite(body) else None
    if isinstance(body, Mapping):
        return {k: _finite(v) for k, v in body.items()}
    if isinstance(body, list | tuple):
        return [_finite(v) for v in body]
    return body


def dump(body: Mapping[str, Any]) -> bytes:
    """`body` as valid JSON: a non-finite float (no JSON for it) becomes null."""
    try:
        return json.dumps(body, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(body), allow_nan=False).encode()


def fill(template: str, fields: Mapping[str, str]) -> str:
    """A topic template with each `{name}` of `fields` replaced by its value."""
    for name, value in fields.items():
        template = template.replace("{" + name + "}", value)
    return template


class CommandChannel:
    """Write-back commands and their results over one MQTT connection.

    `set_topic` and `result_topic` are templates with the placeholders `fields` (any
    others already filled in); a result's JSON is the command's fields and the source's
    reply: `{"node": "setpoint", "ok": true, ...}`.
    """

    def __init__(
        self,
        ctx: Context,
        *,
        url: str,
        client_id: str,
        set_topic: str,
        result_topic: str,
        fields: tuple[str, ...],
        username: str | None,
        password: str | None,
        submit: Submit,
        max_pending: int = 100,
        shared_tls_files: tuple[str | None, str | None, str | None] | None = None,
        will: tuple[str, Mapping[str, Any]] | None = None,
        filters: list[str] | None = None,
    ) -> None:
        """`shared_tls_files`: on the gateway's broker, mqtt.ca_file, mqtt.cert_file and
        mqtt.key_file (write-back has no TLS files of its own). `filters`: what to
        subscribe to, narrower than the set topic's own filter (a source's own devices,
        so that two sources can share one command topic); each must match it."""
        self.ctx = ctx
        self.url = url
        self.client_id = client_id
        self.set_topic = set_topic
        self.result_topic = result_topic
        self.topics = TopicTemplate(set_topic, fields)
        self.filters = filters or [self.topics.filter]
        self.username = username
        self.password = password
        self.submit = submit
        self.max_pending = max_pending
        self.tls_files = tls_files(NO_TLS_FILES, shared_tls_files)
        # published retained by the broker if the connection ends without a DISCONNECT
        self.will = will
        self.pending = 0
        self.commands = 0
        self.last_error: str | None = None
        self._client: Client | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Connect and subscribe, or raise RetryableError."""
        await self.close()
        host, port, tls = parse_url(self.url)
        username, password = login(self.url, self.username, self.password)
        try:
            context = files_tls_context(self.tls_files) if tls else None
        except TlsFilesError as err:
            self.last_error = f"write-back on MQTT broker {host}:{port}: {err}"
            raise RetryableError(self.last_error) from err
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
                    username=username or None,
                    password=password if username else None,
                    tls=context,
                    will=self._will(),
                )
                self._client = client  # deliveries may start right behind the SUBSCRIBE
                await client.subscribe([(f, 1) for f in self.filters])
        except (OSError, TimeoutError, Exception) as err:
            self._client = None
            self.last_error = f"cannot reach MQTT broker {host}:{port} for write-back: {err}"
            client.abort()
            raise RetryableError(self.last_error) from err
        self.last_error = None

    def _will(self) -> tuple[str, bytes, int, bool] | None:
        if self.will is None:
            return None
        topic, body = self.will
        return topic, json.dumps(body).encode(), 1, True

    async def close(self) -> None:
        """Disconnect cleanly (the broker then drops the last will); safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def publish(self, topic: str, body: Mapping[str, Any], *, retain: bool = False) -> None:
        """Publish `body` as JSON at QoS 1 if connected (a source's own status, say)."""
        client = self._client
        if client is not None and client.connected:
            client.publish(topic.encode(), dump(body), qos=1, retain=retain)

    def _deliver(
        self, topic: str, payload: bytes, qos: int, props: dict[int, Any], mid: int | None
    ) -> None:
        """Called on the loop for each command; queues it, never blocks."""
        client = self._client
        if client is None:
            return  # being closed: unacknowledged, the broker forgets it (clean start)
        matched = self.topics.match(topic)
        fields = matched if matched is not None else dict.fromkeys(self.topics.names, "")
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
                body = dump({**fields, **result})
                result_topic = fill(self.result_topic, fields)
                client.publish(result_topic.encode(), body, qos=1)
                if response:
                    extra = binary_property(CORRELATION_DATA, correlation) if correlation else b""
                    client.publish(response.encode(), body, qos=1, properties=extra)
                if mid is not None:
                    client.ack([(mid, qos)])

        self.pending += 1
        if matched is None:
            reply({"ok": False, "error": f"topic {topic!r} does not match {self.set_topic!r}"})
        elif self.pending > self.max_pending:
            reply({"ok": False, "error": "too many write commands waiting; try again"})
        else:
            error = self.submit(fields, payload, reply)
            if error is not None:
                reply({"ok": False, "error": error})

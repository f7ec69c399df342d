"""The `opcua` source at run time: the connection, subscriptions, polls and write-back.

The user documentation is the package's (`gateway.sources.opcua`). asyncua is reached
only here and in `values` (pinned in pyproject.toml: its client API moved in 2.0).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.crypto import security_policies
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from gateway.core.backoff import Backoff
from gateway.core.clock import Clock
from gateway.core.component import Context, Message, Source
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.mqtt.commands import CommandChannel, parse_command
from gateway.sources.opcua import values
from gateway.sources.opcua.config import NodeConfig, OpcuaSourceConfig

NEVER = float("inf")
DROP_LOG_EVERY_S = 30.0
CUT_SHORT = "the source stopped during the write; it may or may not have reached the server"
# asyncua logs a lost connection and each failed request at WARNING/ERROR with tracebacks;
# the source says it once, in one line, itself.
for _name in ("asyncua", "asyncua.client.client", "asyncua.client.ua_client"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

# Status codes meaning the server will not take this client as configured: retrying
# cannot help until the config (or the server's trust list, or its users) changes.
USER_REFUSED = {
    "BadUserAccessDenied",
    "BadIdentityTokenInvalid",
    "BadIdentityTokenRejected",
    "BadUserSignatureInvalid",
}
CERT_REFUSED = {
    "BadCertificateUntrusted",
    "BadCertificateInvalid",
    "BadCertificateRevoked",
    "BadCertificateTimeInvalid",
    "BadCertificateUriInvalid",
    "BadCertificateHostNameInvalid",
    "BadCertificateUseNotAllowed",
    "BadCertificateIssuerRevocationUnknown",
    "BadCertificateRevocationUnknown",
    "BadSecurityChecksFailed",
    "BadSecurityPolicyRejected",
    "BadSecurityModeRejected",
    "BadNoValidCertificates",
}


def _code_name(err: UaStatusCodeError) -> str:
    return values.status_name(ua.StatusCode(err.code))


def _der(path: str) -> bytes:
    """A certificate file (PEM or DER) as DER bytes."""
    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip().startswith(b"-----"):
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


def _application_uri(path: str) -> str | None:
    """The URI in a certificate's subject alternative name (a few KB read once per
    connection: not worth a thread)."""
    with open(path, "rb") as f:
        data = f.read()
    cert = (
        x509.load_pem_x509_certificate(data)
        if data.lstrip().startswith(b"-----")
        else x509.load_der_x509_certificate(data)
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def _wait(clock: Clock, wake: asyncio.Event, delay: float) -> None:
    """Sleep on the clock until `delay` passes (inf: for ever) or `wake` is set."""
    waiter = asyncio.ensure_future(wake.wait())
    if delay == NEVER:
        try:
            await waiter
        finally:
            waiter.cancel()
        return
    sleeper = asyncio.ensure_future(clock.sleep(max(delay, 0.0)))
    try:
        await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()


def _within(number: float, last: float, percent: float) -> bool:
    """Whether `number` is within `percent` of `last`, the value sent before: held back.
    NaN is within NaN and an infinity within itself (both are sent as null); anything
    else next to NaN or an infinity is a change (|x - inf| <= inf * percent held every
    value after an infinite one back for good)."""
    if math.isfinite(number) and math.isfinite(last):
        return abs(number - last) <= abs(last) * percent / 100.0
    return number == last or (math.isnan(number) and math.isnan(last))


class NodeState:
    """One configured node: where it is, where its values go, what it last sent."""

    __slots__ = (
        "attrs",
        "config",
        "error",
        "handle",
        "last_sent",
        "mode",
        "name",
        "node",
        "node_id",
        "percent",
        "rank",
        "topic",
        "values",
        "vtype",
    )

    def __init__(self, name: str, config: NodeConfig, source: OpcuaSourceConfig, src: str) -> None:
        self.name = name
        self.config = config
        self.mode = config.mode or source.mode
        self.topic = (config.topic or source.topic).format(source=src, node=name)
        self.node_id = config.node or ""  # a browse path is resolved at each connection
        self.attrs = {"source": src, "node": name, "node_id": self.node_id}
        self.percent = config.deadband_percent
        self.last_sent: float | None = None
        self.node: Node | None = None
        self.vtype: ua.VariantType | None = None
        self.rank = -1  # the node's ValueRank: -1 scalar, >= 1 array, -2/-3/0 either
        self.handle = 0
        self.error: str | None = None
        self.values = 0


class Write:
    """A write-back command waiting for its turn."""

    __slots__ = ("payload", "reply", "state")

    def __init__(
        self, state: NodeState, payload: bytes, reply: Callable[[dict[str, Any]], None]
    ) -> None:
        self.state = state
        self.payload = payload
        self.reply = reply


class ValueQueue:
    """Subscribed values the engine has not taken yet, at most `max_bytes` of them
    (content and topic). Beyond it the oldest are dropped and counted, and `warn(total)`
    is called at most every 30 s of `clock` time: the gateway is not taking values (its
    buffer is full with `overflow: block`) while the server keeps sending."""

    def __init__(self, max_bytes: int, clock: Clock, warn: Callable[[int], None]) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.warn = warn
        self.bytes = 0
        self.dropped = 0
        self._messages: deque[Message] = deque()
        self._warned_at = -NEVER

    def __len__(self) -> int:
        return len(self._messages)

    def push(self, message: Message) -> int:
        """Queue one value; how many of the oldest it pushed out."""
        self._messages.append(message)
        self.bytes += self._size(message)
        dropped = 0
        while self.bytes > self.max_bytes and self._messages:
            self.bytes -= self._size(self._messages.popleft())
            dropped += 1
        if dropped:
            self.dropped += dropped
            now = self.clock.monotonic()
            if now - self._warned_at >= DROP_LOG_EVERY_S:
                self._warned_at = now
                self.warn(self.dropped)
        return dropped

    def take(self) -> list[Message]:
        """Every queued value, oldest first; the queue is empty after."""
        out = list(self._messages)
        self._messages.clear()
        self.bytes = 0
        return out

    @staticmethod
    def _size(message: Message) -> int:
        return len(message.flowfile.content) + len(message.flowfile.topic)


class OpcuaSource(Source):
    """Reads an OPC UA server's variables by subscription or poll; see the package docs."""

    Config = OpcuaSourceConfig
    mode = "stream"
    lost_if_cut = "the server does not send these values again"

    def __init__(self, config: OpcuaSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: OpcuaSourceConfig = config
        self.nodes = {
            name: NodeState(name, n, config, ctx.name) for name, n in config.nodes.items()
        }
        self.polled = [s for s in self.nodes.values() if s.mode == "poll"]
        self.schedule = config.poll_schedule(config.interval) if self.polled else None
        self.interval = config.interval
        self._client: Client | None = None
        self._by_handle: dict[int, NodeState] = {}
        self._queue = ValueQueue(config.max_queue_bytes, ctx.clock, self._dropping)
        self._wake = asyncio.Event()
        self._lost: str | None = None
        self._writes: deque[Write] = deque()
        self._closed = True
        self._due = NEVER
        self._channel: Any = None
        self._channel_retry_at = NEVER
        self._channel_backoff = Backoff(1.0, 30.0, jitter=False)
        split = urlsplit(config.url)
        self._where = f"{split.hostname}:{split.port or 4840}"
        self.server: dict[str, Any] = {
            "url": config.url,
            "state": "connecting",
            "last_error": None,
            "previous_error": None,
            "last_error_at": None,
            "connected_at": None,
        }
        self.values = 0
        self.writes = 0

    def status(self) -> Mapping[str, object]:
        """The server's state, each node's counters and errors, the queue and write-back."""
        out: dict[str, object] = {
            "connected": self.server["state"] == "online",
            "server": dict(self.server),
            "values": self.values,
            "queue_bytes": self._queue.bytes,
            "nodes": {
                s.name: {"node_id": s.node_id, "mode": s.mode, "values": s.values, "error": s.error}
                for s in self.nodes.values()
            },
        }
        if self._channel is not None:
            out["writeback"] = "connected" if self._channel.connected else "disconnected"
        if self.schedule is not None:  # polled nodes: the engine does not run this schedule
            out["missed_runs"] = self.schedule.missed_runs
        return out

    # ---- lifecycle ------------------------------------------------------

    async def connect(self) -> None:
        """Connect, open the session, resolve the nodes, subscribe; raise RetryableError
        when the server is not there, PermanentError when it refuses this client."""
        self._closed = False
        self._lost = None
        cfg = self.config
        client = Client(cfg.url, timeout=cfg.timeout, watchdog_intervall=cfg.watchdog)
        client.name = client.description = f"edge-stream {self.ctx.gateway_id}"
        client.application_uri = f"urn:edge-stream:{self.ctx.gateway_id}"
        if cfg.security_policy != "None":
            await self._check_server_certificate()
            await self._secure(client)
        if cfg.username is not None:
            client.set_user(cfg.username)
            if cfg.password is not None:
                client.set_password(cfg.password)
        client.connection_lost_callback = self._connection_lost
        try:
            async with asyncio.timeout(cfg.timeout * 2):
                await client.connect()
        except (UaStatusCodeError, UaError, OSError, TimeoutError, EOFError) as err:
            self._close_quietly(client)
            raise self._offline(self._connect_error(err)) from err
        self._client = client
        try:
            await self._resolve(client)
            if any(s.mode == "subscribe" and s.error is None for s in self.nodes.values()):
                await self._subscribe(client)
        except (UaError, OSError, TimeoutError) as err:
            await self._disconnect()
            raise self._offline(
                RetryableError(f"OPC UA server {self._where}: {self._why(err)}")
            ) from err
        was_offline = self.server["last_error"] is not None
        self.server.update(state="online", connected_at=values.iso_now())
        if was_offline:
            self.server["previous_error"], self.server["last_error"] = (
                self.server["last_error"],
                None,
            )
            self.ctx.log.warning(
                "OPC UA server %s is answering again; subscriptions renewed", self._where
            )
        else:
            self.ctx.log.info(
                "connected to OPC UA server %s (%s)", self._where, cfg.security_policy
            )
        if self.schedule is not None:
            clock = self.ctx.clock
            self._due = self.schedule.first(clock.monotonic(), clock.now_ns() / 1e9)
        if cfg.writeback.enabled and self._channel is None:
            self._make_channel()
            self._channel_backoff.reset()
            await self._connect_channel()

    async def _secure(self, client: Client) -> None:
        cfg = self.config
        assert cfg.certificate and cfg.private_key and cfg.server_certificate
        try:
            uri = _application_uri(cfg.certificate)
            if uri:
                client.application_uri = uri  # servers check it against the certificate
            mode = getattr(ua.MessageSecurityMode, cfg.security_mode or "SignAndEncrypt")
            await client.set_security(
                security_policies.SecurityPolicyBasic256Sha256,
                cfg.certificate,
                cfg.private_key,
                cfg.private_key_password,
                cfg.server_certificate,
                mode,
            )
        except (OSError, ValueError, TypeError) as err:
            raise self._offline(
                PermanentError(f"cannot load the OPC UA certificates or key: {err}")
            ) from err

    async def _check_server_certificate(self) -> None:
        """Refuse a server whose endpoints present another certificate than
        `server_certificate` (found over an unsecured discovery request, as the standard
        has it), in one clear line instead of a secure channel that never opens."""
        assert self.config.server_certificate is not None
        discovery = Client(self.config.url, timeout=self.config.timeout)
        try:
            async with asyncio.timeout(self.config.timeout * 2):
                endpoints = await discovery.connect_and_get_server_endpoints()
        except (UaStatusCodeError, UaError, OSError, TimeoutError, EOFError) as err:
            raise self._offline(self._connect_error(err)) from err
        try:
            pinned = _der(self.config.server_certificate)
        except (OSError, ValueError) as err:  # missing, a folder, unreadable, bad PEM
            raise self._offline(
                PermanentError(
                    f"cannot read server_certificate {self.config.server_certificate}: {err}"
                )
            ) from err
        presented = {bytes(e.ServerCertificate or b"")[: len(pinned)] for e in endpoints}
        if pinned not in presented:
            raise self._offline(
                PermanentError(
                    f"OPC UA server {self._where} presents another certificate than"
                    f" server_certificate ({self.config.server_certificate}); refusing to"
                    " connect: put the server's own certificate there"
                )
            )

    def _why(self, err: BaseException) -> str:
        """What went wrong, never empty (a TimeoutError's text is)."""
        if isinstance(err, TimeoutError):
            return f"no answer within {self.config.timeout:g}s"
        return str(err) or type(err).__name__

    def _connect_error(self, err: BaseException) -> RetryableError | PermanentError:
        where = self._where
        if isinstance(err, UaStatusCodeError):
            name = _code_name(err)
            if name in USER_REFUSED:
                who = repr(self.config.username) if self.config.username else "anonymous"
                return PermanentError(
                    f"OPC UA server {where} refused user {who} ({name});"
                    " check username and password"
                )
            if name in CERT_REFUSED:
                return PermanentError(
                    f"OPC UA server {where} refused the secure channel ({name}); check that it"
                    " trusts the gateway's certificate and that server_certificate is its own"
                )
            return RetryableError(f"OPC UA server {where} refused the connection: {name}")
        if isinstance(err, TimeoutError):
            return RetryableError(f"OPC UA server {where} did not answer within the timeout")
        if isinstance(err, ConnectionRefusedError):
            return RetryableError(f"cannot reach OPC UA server {where}: connection refused")
        text = str(err) or type(err).__name__
        if self.config.security_policy != "None" and isinstance(err, EOFError | ConnectionError):
            # a server that cannot decrypt what we sent (the wrong server_certificate), or
            # that refuses our certificate, often just closes the connection
            return PermanentError(
                f"OPC UA server {where} closed the secure channel while opening it ({text});"
                " check server_certificate and that the server trusts the gateway's certificate"
            )
        return RetryableError(f"cannot reach OPC UA server {where}: {text}")

    def _offline(self, err: RetryableError | PermanentError) -> RetryableError | PermanentError:
        if self.server["state"] == "online":
            self.ctx.log.error(
                "OPC UA server %s went away: %s; reconnecting with backoff", self._where, err
            )
        self.server.update(state="offline", last_error=str(err), last_error_at=values.iso_now())
        return err

    async def _resolve(self, client: Client) -> None:
        """Each node's id (browse paths resolved), data type and value rank; a node the
        server does not have is logged once and left out until the next connection."""
        handle = 0
        self._by_handle.clear()
        for s in self.nodes.values():
            s.error = None
            if s.config.path is not None:
                levels = [
                    lv if ":" in lv else f"0:{lv}" for lv in s.config.path.strip("/").split("/")
                ]
                try:
                    s.node = await client.nodes.objects.get_child(levels)
                except UaStatusCodeError as err:
                    s.error = f"browse path {s.config.path!r} not found ({_code_name(err)})"
                    continue
                s.node_id = s.attrs["node_id"] = s.node.nodeid.to_string()
            else:
                s.node = client.get_node(s.node_id)
        live = [s for s in self.nodes.values() if s.error is None and s.node is not None]
        ids = [s.node.nodeid for s in live if s.node is not None]
        types = await client.uaclient.read_attributes(ids, AttributeIds.DataType)
        ranks = await client.uaclient.read_attributes(ids, AttributeIds.ValueRank)
        for s, dt, rank in zip(live, types, ranks, strict=True):
            code = dt.StatusCode
            if code is not None and not code.is_good():
                s.error = f"node {s.node_id} not readable ({values.status_name(code)})"
                continue
            type_id = dt.Value.Value if dt.Value is not None else None
            s.vtype = None
            if (
                isinstance(type_id, ua.NodeId)
                and type_id.NamespaceIndex == 0
                and isinstance(type_id.Identifier, int)
            ):
                try:
                    s.vtype = ua.VariantType(type_id.Identifier)
                except ValueError:
                    s.vtype = None
            value_rank = rank.Value.Value if rank.Value is not None else -1
            s.rank = value_rank if isinstance(value_rank, int) else -1
            handle += 1
            s.handle = handle
            self._by_handle[handle] = s
        for s in self.nodes.values():
            if s.error is not None:
                self.ctx.log.error("node %s: %s; check its node id or path", s.name, s.error)

    async def _subscribe(self, client: Client) -> None:
        cfg = self.config
        publishing_ms = cfg.publishing_interval * 1000.0
        sub = await client.create_subscription(publishing_ms, self)
        requests = []
        subscribed = [
            s for s in self.nodes.values() if s.mode == "subscribe" and s.error is None and s.node
        ]
        for s in subscribed:
            assert s.node is not None
            item = ua.ReadValueId()
            item.NodeId = s.node.nodeid
            item.AttributeId = AttributeIds.Value
            params = ua.MonitoringParameters()
            params.ClientHandle = s.handle
            sampling = s.config.sampling_interval
            if sampling is None:
                sampling = cfg.sampling_interval
            params.SamplingInterval = (
                sampling if sampling is not None else cfg.publishing_interval
            ) * 1000.0
            params.QueueSize = cfg.queue_size
            params.DiscardOldest = True
            if s.config.deadband is not None:
                flt = ua.DataChangeFilter()
                flt.Trigger = ua.DataChangeTrigger.StatusValue
                flt.DeadbandType = ua.DeadbandType.Absolute
                flt.DeadbandValue = s.config.deadband
                params.Filter = flt
            request = ua.MonitoredItemCreateRequest()
            request.ItemToMonitor = item
            request.MonitoringMode = ua.MonitoringMode.Reporting
            request.RequestedParameters = params
            requests.append(request)
        results = await sub.create_monitored_items(requests)
        for s, result in zip(subscribed, results, strict=True):
            if isinstance(result, ua.StatusCode):
                s.error = f"cannot subscribe ({values.status_name(result)})"
                self.ctx.log.error("node %s: %s", s.name, s.error)

    async def close(self) -> None:
        self._closed = True
        await self._disconnect()
        while self._writes:
            self._writes.popleft().reply({"ok": False, "error": "source is closing"})
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            async with asyncio.timeout(self.config.timeout):
                await client.disconnect()
        except (UaError, OSError, TimeoutError, EOFError) as err:  # gone already: nothing to close
            self.ctx.log.debug("disconnect: %r", err)
            self._close_quietly(client)

    @staticmethod
    def _close_quietly(client: Client) -> None:
        try:
            client.disconnect_socket()
        except (OSError, UaError, AttributeError):  # pragma: no cover - best effort
            pass

    async def _connection_lost(self, err: Exception) -> None:
        """asyncua's watchdog saw the connection end: `read` raises, the engine reconnects."""
        self._lost = f"lost the connection to OPC UA server {self._where}: {self._why(err)}"
        self._wake.set()

    # ---- asyncua's subscription handler ----------------------------------

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        """One changed value from the subscription (called by asyncua on the loop)."""
        s = self._by_handle.get(data.monitored_item.ClientHandle)
        if s is not None:
            self._push(s, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        """The server ended the subscription (or the connection died under it)."""
        code = getattr(status, "Status", None)
        if code is not None and not code.is_good() and self._lost is None:
            self._lost = (
                f"OPC UA server {self._where} ended the subscription ({values.status_name(code)})"
            )
            self._wake.set()

    def _message(self, s: NodeState, dv: ua.DataValue) -> Message | None:
        """The FlowFile for one value, or None when the percent deadband holds it back."""
        if s.percent is not None and dv.Value is not None:
            number = values.numeric(dv.Value.Value)
            if number is not None:
                last = s.last_sent
                if last is not None and _within(number, last, s.percent):
                    return None
                s.last_sent = number
        content, _ = values.encode(dv)
        s.values += 1
        self.values += 1
        return Message(FlowFile.create(s.topic, content, s.attrs, time.time_ns()))

    def _push(self, s: NodeState, dv: ua.DataValue) -> None:
        message = self._message(s, dv)
        if message is None:
            return
        self.dropped += self._queue.push(message)
        self._wake.set()

    def _dropping(self, dropped: int) -> None:
        self.ctx.log.error(
            "the gateway is not taking values fast enough: dropped the oldest (%d so far);"
            " raise max_queue_bytes or the buffer, or slow the publishing interval",
            dropped,
        )

    # ---- the loop the engine drives -------------------------------------

    async def read(self) -> list[Message]:
        """The next values: subscribed changes as they come, polled nodes when due,
        write-back commands carried out in between."""
        clock = self.ctx.clock
        while True:
            if self._lost is not None:
                raise self._offline(RetryableError(self._lost))
            if self._writes:
                await self._run_writes()
            now = clock.monotonic()
            if self._channel is not None and self._channel_retry_at <= now:
                await self._connect_channel()
            out: list[Message] = []
            if self.schedule is not None and self._due <= (
                clock.now_ns() / 1e9 if self.schedule.wall else now
            ):
                out = await self._poll()
                self._due = self.schedule.next(clock.monotonic(), clock.now_ns() / 1e9)
            out.extend(self._queue.take())
            if out:
                return out
            self._wake.clear()
            if self._lost is not None or self._writes or self._queue:
                continue
            await _wait(clock, self._wake, self._next_wake(clock))

    def _next_wake(self, clock: Clock) -> float:
        wait = NEVER
        if self.schedule is not None:
            now = clock.now_ns() / 1e9 if self.schedule.wall else clock.monotonic()
            wait = self._due - now
        if self._channel is not None and self._channel_retry_at != NEVER:
            wait = min(wait, self._channel_retry_at - clock.monotonic())
        return wait

    async def _poll(self) -> list[Message]:
        client = self._client
        nodes = [s for s in self.polled if s.error is None and s.node is not None]
        if client is None or not nodes:
            return []
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        for s in nodes:
            item = ua.ReadValueId()
            assert s.node is not None
            item.NodeId = s.node.nodeid
            item.AttributeId = AttributeIds.Value
            params.NodesToRead.append(item)
        try:
            results = await client.uaclient.read(params)
        except (UaError, OSError, TimeoutError) as err:
            raise self._offline(
                RetryableError(f"reading from OPC UA server {self._where}: {self._why(err)}")
            ) from err
        out = []
        for s, dv in zip(nodes, results, strict=True):
            message = self._message(s, dv)
            if message is not None:
                out.append(message)
        return out

    # ---- write-back -----------------------------------------------------

    def _make_channel(self) -> None:
        wb = self.config.writeback
        shared = wb.url is None
        prefix = self.ctx.mqtt_client_prefix or f"edge-stream-{self.ctx.gateway_id}"
        src = self.ctx.name
        self._channel = CommandChannel(
            self.ctx,
            url=wb.url or self.ctx.mqtt_url,
            client_id=wb.client_id or f"{prefix}-{src}-wb",
            set_topic=wb.topic.replace("{source}", src),
            result_topic=wb.result_topic.replace("{source}", src),
            fields=("node",),
            username=wb.username or (self.ctx.mqtt_username if shared else None),
            password=wb.password or (self.ctx.mqtt_password if shared else None),
            shared_tls_files=self.ctx.mqtt_tls_files if shared else None,
            submit=self._submit_write,
        )

    async def _connect_channel(self) -> None:
        try:
            await self._channel.connect()
        except RetryableError as err:
            delay = self._channel_backoff.next()
            self._channel_retry_at = self.ctx.clock.monotonic() + delay
            self.ctx.log.warning("%s; write-back retried in %.0f s", err, delay)
            return
        self._channel_backoff.reset()
        self._channel_retry_at = NEVER

    def _submit_write(
        self, fields: Mapping[str, str], payload: bytes, reply: Callable[[dict[str, Any]], None]
    ) -> str | None:
        node = fields["node"]
        s = self.nodes.get(node)
        if s is None:
            return f"source {self.ctx.name!r} has no node named {node!r}"
        if not s.config.writable:
            return f"{node} is not writable (set writable: true in the config)"
        if self._closed or self._client is None:
            return f"not connected to OPC UA server {self._where}"
        if s.error is not None:
            return f"{node}: {s.error}"
        self._writes.append(Write(s, payload, reply))
        self._wake.set()
        return None

    async def _run_writes(self) -> None:
        while self._writes:
            cmd = self._writes.popleft()
            try:
                result = await self._write(cmd.state, cmd.payload)
            except asyncio.CancelledError:
                # the source stops (a reload, a shutdown) under the write: its commander
                # waited for a result that never came
                result = {"ok": False, "error": CUT_SHORT, "ts": values.iso_now()}
                try:
                    requested, ident = parse_command(cmd.payload)
                    result = {**({"id": ident} if ident is not None else {}),
                              "requested": requested, **result}  # fmt: skip
                except ValueError:
                    pass  # not a command: it was never going to be written
                cmd.reply(result)
                raise
            result["ts"] = values.iso_now()
            self.writes += 1
            if result["ok"]:
                self.ctx.log.info("wrote %r to %s", result.get("value"), cmd.state.name)
            else:
                self.ctx.log.warning("write to %s failed: %s", cmd.state.name, result["error"])
            cmd.reply(result)

    async def _write(self, s: NodeState, payload: bytes) -> dict[str, Any]:
        result: dict[str, Any] = {}
        try:
            requested, ident = parse_command(payload)
            if ident is not None:
                result["id"] = ident
            result["requested"] = requested
            if s.vtype is None:
                raise ValueError(f"{s.name}: its data type is not one the source can write")
            array = s.rank >= 1 or (s.rank in (-3, -2, 0) and isinstance(requested, list))
            value = values.convert(requested, s.vtype, array)
            node = s.node
            assert node is not None
            await node.write_value(ua.DataValue(ua.Variant(value, s.vtype)))
            back = await node.read_value()
        except ValueError as err:
            return {**result, "ok": False, "error": str(err)}
        except UaStatusCodeError as err:
            return {
                **result,
                "ok": False,
                "error": f"the server refused the write ({_code_name(err)})",
            }
        except (UaError, OSError, TimeoutError) as err:
            return {
                **result,
                "ok": False,
                "error": f"OPC UA server {self._where}: {self._why(err)}",
            }
        ok = values.same(value, back, s.vtype)
        shown = values.plain(values.float32(back) if s.vtype == ua.VariantType.Float else back)
        result.update(ok=ok, value=shown)
        if not ok:
            result["error"] = f"read back {shown!r}, expected {values.plain(value)!r}"
        return result

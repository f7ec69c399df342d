"""The remote config channel: signed configs in over MQTT, outcomes and the active version out.

One small connection (`gateway.mqtt.client.Client`, the project's own client: the
channel needs SUBSCRIBE, QoS 1 in with a late PUBACK, and retained QoS 1 out, all of
which it has, so no second MQTT library is loaded into the gateway) to
`remote_config.broker`. It subscribes to `edge-stream/<id>/config/set` at QoS 1 with
Receive Maximum 1, so the broker sends the next document only once the last one is
answered. A packet larger than MAX_PACKET closes the connection before its body is
read; the session is clean (a config pushed while the gateway is away is not kept
for it; `config/active` tells the fleet what each gateway runs), so the broker
forgets that packet and the channel reconnects without it. The broker's stored copy
of a message retained on config/set is not taken at a (re)connect (it would come again
at every connect); one published retained while connected arrives as any other. Each
document is handled in turn (gateway/config/remote.py checks and applies it), answered
on `.../config/result` and then acknowledged; after each apply, and on each connect,
the active config's version and hash go out retained on `.../config/active`, and
again within a second of a reload of another kind (a console edit, a rollback, SIGHUP)
that changed the running config's hash.

A broker that is away never stops the gateway: the channel reconnects with capped
exponential backoff and jitter and shows its state in /api/status (`remote_config`).
A reload that changes `remote_config` or the gateway id reconnects it.

`push` is the operator's end (`edge-stream config push`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import remote
from gateway.config.files import text_hash
from gateway.config.model import Config, RemoteConfigSection
from gateway.config.schema import mask_password
from gateway.core.backoff import Backoff
from gateway.core.errors import ConfigError
from gateway.mqtt.client import Client, ConnectRefused, connect_refusal, puback_reason
from gateway.mqtt.urls import (
    TlsFile,
    TlsFilesError,
    files_tls_context,
    login,
    parse_url,
    tls_files,
)

log = logging.getLogger("gateway.remote_config")

MAX_PACKET = remote.MAX_PAYLOAD + (16 << 10)  # the envelope plus topic and header
# Subscription option Retain Handling 2 (MQTT 5.0, 3.8.3.1): no retained message is sent
# at the subscription. One over MAX_PACKET retained on config/set came back at every
# connect, closed it again at once, and no document got through any more; a retained
# document would be answered again at every connect.
NO_RETAINED = 0x20
QUEUE = 4  # documents waiting (QoS 0 ones are not flow-controlled by Receive Maximum)
IDLE = 1.0  # seconds between two looks at whether the settings changed


class _Lost(Exception):
    """An established connection ended (said as a warning; the channel reconnects)."""


@dataclass(frozen=True)
class _Plan:
    """What one connection is made from; a reload that changes it reconnects."""

    settings: RemoteConfigSection
    url: str
    gateway_id: str
    client_id: str
    username: str | None
    password: str | None
    keepalive: int
    tls_files: tuple[TlsFile, TlsFile, TlsFile]


class RemoteConfig:
    """The channel; `run()` until cancelled, once `ready` is set (the first engine runs).

    It reads the running config through `config`, the gateway broker's URL through
    `broker_url` and the config file's hash through `config_hash`; a good document is
    written to `config_path` and applied by `reload` (the gateway's reload path, trigger
    "remote"); `settle(text)` tells that path the file was put back to `text`.
    """

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        broker_url: Callable[[], str | None],
        config_hash: Callable[[], str | None],
        config_path: str,
        reload: Callable[[], Awaitable[remote.Outcome]],
        settle: Callable[[str], None],
        ready: asyncio.Event,
        refused: Callable[[str | None, list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._config = config
        self._broker_url = broker_url
        self._config_hash = config_hash
        self._config_path = config_path
        self._reload = reload
        self._settle = settle
        self._refused = refused  # a document refused before any reload: (hash, errors)
        self._ready = ready
        self._queue: asyncio.Queue[tuple[bytes, int, int | None]] = asyncio.Queue(QUEUE)
        self._client: Client | None = None
        self._lost = asyncio.Event()
        self._active_hash: str | None = None  # the hash config/active says now
        self.state: remote.Applied | None = None  # the last version applied
        self.last_outcome: str | None = None
        self.last_error: str | None = None

    def status(self) -> dict[str, Any]:
        """The keys of /api/status `remote_config` (engine.status.RemoteConfigStatus)."""
        client = self._client
        return {
            "enabled": self._config().remote_config.enabled,
            "connected": client is not None and client.connected,
            "last_version": None if self.state is None else self.state.version,
            "last_outcome": self.last_outcome,
            "last_error": self.last_error,
        }

    def _plan(self) -> _Plan | None:
        config = self._config()
        settings = config.remote_config
        if not settings.enabled:
            return None
        url = settings.broker or self._broker_url()
        if url is None:
            return None
        prefix = config.mqtt.client_id or f"edge-stream-{config.gateway.id}"
        username, password, keepalive = settings.username, settings.password, 30
        mqtt = config.mqtt
        shared = None
        if settings.broker is None:
            # on the gateway's broker, what remote_config leaves unset comes from `mqtt:`
            username = username or mqtt.username
            password = password or mqtt.password
            keepalive = round(mqtt.keepalive)
            shared = (mqtt.ca_file, mqtt.cert_file, mqtt.key_file)
        username, password = login(url, username, password)
        own = (settings.ca_file, settings.cert_file, settings.key_file)
        return _Plan(
            settings,
            url,
            config.gateway.id,
            f"{prefix}.remote-config",
            username,
            password,
            keepalive,
            tls_files(own, shared, "remote_config."),
        )

    async def run(self) -> None:
        await self._ready.wait()
        backoff = Backoff(1.0, 60.0)
        state_dir: str | None = None
        while True:
            plan = self._plan()
            if plan is None:
                self.last_error = None
                await asyncio.sleep(IDLE)
                continue
            data_dir = self._config().gateway.data_dir
            if data_dir != state_dir:
                try:
                    self.state = await asyncio.to_thread(remote.read_state, data_dir)
                except ConfigError as err:
                    # Without the last version an old signed config could be replayed.
                    self._trouble(str(err), error=True)
                    await asyncio.sleep(backoff.next())
                    continue
                state_dir = data_dir
            try:
                await self._session(plan, backoff)
            except _Lost as err:
                self._trouble(
                    f"the connection to the remote config broker ended: {err}", error=False
                )
            except ConfigError as err:
                self._trouble(str(err), error=True)
            except (OSError, ConnectRefused, TimeoutError) as err:
                refusal = connect_refusal(err)
                host, port, _ = parse_url(plan.url)
                self._trouble(
                    f"cannot reach the remote config broker {host}:{port}: {refusal or err}",
                    error=refusal is not None,
                )
            finally:
                self._close()
            if self._plan() == plan:
                await asyncio.sleep(backoff.next())

    def _trouble(self, message: str, *, error: bool) -> None:
        if message != self.last_error:
            (log.error if error else log.warning)("remote_config: %s; retrying", message)
        self.last_error = message

    async def _session(self, plan: _Plan, backoff: Backoff) -> None:
        """One connection: subscribe, say what is active, then handle documents until the
        connection drops or the plan changes."""
        settings = plan.settings
        host, port, tls = parse_url(plan.url)
        context = None
        if tls:
            try:
                context = files_tls_context(plan.tls_files)
            except TlsFilesError as err:
                raise ConfigError(f"remote_config: {err}") from err
        key = await asyncio.to_thread(remote.load_public_key, settings.public_key or "")
        self._lost.clear()
        self._queue = asyncio.Queue(QUEUE)
        client = Client(
            deliver=self._deliver,
            on_lost=lambda _reason: self._lost.set(),
            max_packet_in=MAX_PACKET,
        )
        self._client = client
        async with asyncio.timeout(10):
            await client.open(
                host,
                port,
                client_id=plan.client_id,
                clean_start=True,
                keepalive=plan.keepalive,
                receive_maximum=1,
                username=plan.username,
                password=plan.password if plan.username else None,
                tls=context,
            )
            granted = await client.subscribe([(remote.set_topic(plan.gateway_id), 1 | NO_RETAINED)])
        if not granted or granted[0] >= 0x80:
            raise ConfigError(
                f"the broker refuses the subscription to {remote.set_topic(plan.gateway_id)}"
                f" (code {granted[0] if granted else None:#04x}); check its ACL"
            )
        backoff.reset()
        if self.last_error is not None:
            log.info("remote_config: connected to %s:%d again", host, port)
        else:
            log.info(
                "remote_config: listening on %s at %s:%d",
                remote.set_topic(plan.gateway_id),
                host,
                port,
            )
        self.last_error = None
        self._publish_active(client, plan.gateway_id)
        while not client.closing():
            item = await self._next()
            if item is None:
                if self._plan() != plan:
                    log.info("remote_config: the settings changed; reconnecting")
                    return
                if self._config_hash() != self._active_hash and client.connected:
                    # Another reload changed what runs (a console edit, a rollback, a
                    # SIGHUP): config/active said the old text until the next connect.
                    self._publish_active(client, plan.gateway_id)
                continue
            payload, qos, mid = item
            answer = await self._handle(payload, plan.gateway_id, key)
            if client.connected:
                client.publish(
                    remote.result_topic(plan.gateway_id).encode(),
                    json.dumps(answer).encode(),
                    qos=1,
                )
                if answer["outcome"] == "applied":
                    self._publish_active(client, plan.gateway_id)
                if mid is not None:
                    client.ack([(mid, qos)])
        raise _Lost(client.closed_reason or "closed")

    async def _next(self) -> tuple[bytes, int, int | None] | None:
        """The next document, or None after IDLE seconds (or when the connection ends)."""
        get = asyncio.ensure_future(self._queue.get())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({get, lost}, timeout=IDLE, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not get.done():
                get.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            if get.done() and not get.cancelled():
                return get.result()
        return None

    def _deliver(
        self, topic: str, payload: bytes, qos: int, props: dict[int, Any], mid: int | None
    ) -> None:
        try:
            self._queue.put_nowait((payload, qos, mid))
        except asyncio.QueueFull:
            # unacknowledged: at QoS 1 the broker sends it again on the next connect
            log.warning("remote_config: documents arrive faster than they apply; one dropped")

    async def _handle(self, payload: bytes, gateway_id: str, key: Any) -> dict[str, Any]:
        version: int | None = None
        digest: str | None = None
        reloaded = False

        async def reload() -> remote.Outcome:
            nonlocal reloaded
            reloaded = True  # the reload path shows and records its own outcome
            return await self._reload()

        try:
            document = remote.open_envelope(payload, key, gateway_id)
            version, digest = document.version, text_hash(document.config)
            last = None if self.state is None else self.state.version
            outcome, applied = await remote.apply(
                document,
                config_path=self._config_path,
                data_dir=self._config().gateway.data_dir,
                last_version=last,
                reload=reload,
                settle=self._settle,
            )
        except remote.Refused as err:
            version = err.version
            outcome, applied = {"outcome": "refused", "errors": list(err.problems)}, None
        if not reloaded and self._refused is not None:
            await self._refused(digest, [str(e) for e in outcome.get("errors") or []])
        if applied is not None:
            self.state = applied
        self.last_outcome = str(outcome.get("outcome"))
        errors = list(outcome.get("errors") or [])
        if self.last_outcome == "applied":
            log.info("remote_config: version %s applied (config %s)", version, digest)
            if errors:  # applied, but its version not kept (replay protection) or not synced
                log.error("remote_config: version %s: %s", version, "; ".join(errors))
        else:
            log.error(
                "remote_config: %s %s, the running config stays: %s",
                # not "version None": the payload was no envelope, or too large to read
                "a document" if version is None else f"version {version}",
                self.last_outcome.replace("_", " "),
                "; ".join(errors),
            )
        answer: dict[str, Any] = {
            "version": version,
            "outcome": self.last_outcome,
            "errors": errors,
        }
        if "changes" in outcome:
            answer["changes"] = list(outcome["changes"])
        answer["hash"] = digest
        return answer

    def _publish_active(self, client: Client, gateway_id: str) -> None:
        state = self.state
        self._active_hash = self._config_hash()
        body = {
            "version": None if state is None else state.version,
            "hash": self._active_hash,
            "applied_at": None if state is None else state.applied_at,
        }
        client.publish(
            remote.active_topic(gateway_id).encode(), json.dumps(body).encode(), qos=1, retain=True
        )

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


# --- the operator's end -----------------------------------------------------------------


async def push(
    envelope: bytes,
    *,
    gateway_id: str,
    version: int,
    url: str,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    wait: float = 30.0,
) -> dict[str, Any]:
    """Publish a signed envelope to the gateway and return its answer on the result topic.

    Raises ConfigError when the broker cannot be reached or refuses us, TimeoutError when
    no answer came within `wait` seconds."""
    host, port, tls = parse_url(url)
    username, password = login(url, username, password)
    files = (("--ca-file", ca_file), ("--cert-file", cert_file), ("--cert-key", key_file))
    context = None
    if key_file and not cert_file:
        raise ConfigError("--cert-key needs the --cert-file whose key it is")
    if tls:
        try:
            context = files_tls_context(files)
        except TlsFilesError as err:
            raise ConfigError(str(err)) from err
    elif any(path for _option, path in files):
        given = ", ".join(option for option, path in files if path)
        raise ConfigError(f"{given}: for an mqtts:// broker; {mask_password(url)} is mqtt://")
    answers: asyncio.Queue[bytes | int] = asyncio.Queue(16)  # an int: the PUBACK's refusal
    sent: list[int | None] = [None]  # the packet id of the envelope

    def deliver(
        topic: str, payload: bytes, qos: int, props: dict[int, Any], mid: int | None
    ) -> None:
        if mid is not None:
            client.ack([(mid, qos)])
        with contextlib.suppress(asyncio.QueueFull):
            answers.put_nowait(payload)

    def on_puback(mid: int, code: int) -> None:
        # A broker whose ACL forbids the set topic says so (MQTT 5): else the push waited
        # out its timeout and asked whether the gateway runs.
        if mid == sent[0] and code >= 0x80:
            answers.put_nowait(code)

    client = Client(deliver=deliver, on_puback=on_puback)
    deadline = time.monotonic() + wait
    try:
        async with asyncio.timeout(min(wait, 10)):
            await client.open(
                host,
                port,
                client_id=f"edge-stream-push-{uuid.uuid4().hex[:12]}",
                clean_start=True,
                keepalive=30,
                username=username,
                password=password if username else None,
                tls=context,
            )
            # not a message retained there: it was taken for the gateway's answer
            granted = await client.subscribe([(remote.result_topic(gateway_id), 1 | NO_RETAINED)])
    except (OSError, ConnectRefused, TimeoutError) as err:
        client.abort()
        if isinstance(err, TimeoutError):  # its text is empty
            why = f"no answer within {min(wait, 10):g} s"
        else:
            why = str(connect_refusal(err) or err)
        raise ConfigError(f"cannot reach the broker {host}:{port}: {why}") from err
    try:
        if not granted or granted[0] >= 0x80:
            raise ConfigError(
                f"the broker refuses the subscription to {remote.result_topic(gateway_id)}"
            )
        sent[0] = client.publish(remote.set_topic(gateway_id).encode(), envelope, qos=1)
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
            while True:
                raw = await answers.get()
                if isinstance(raw, int):
                    raise ConfigError(
                        f"the broker refuses the publish to {remote.set_topic(gateway_id)}:"
                        f" {puback_reason(raw)}; check its ACL"
                    )
                try:
                    answer = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(answer, dict) and answer.get("version") in (version, None):
                    return answer
    finally:
        client.close()

"""The contracts between the engine and the components it runs.

A component does one job and nothing else: it never sleeps in its own retry
loop, never schedules itself and never acknowledges data on its own. It raises
`RetryableError` for transient trouble and `PermanentError` for what can never
work; the engine owns backoff, scheduling, metrics, acks and dead letters.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol

from gateway.core.clock import SYSTEM_CLOCK, Clock
from gateway.core.flowfile import FlowFile
from gateway.core.histogram import Buckets
from gateway.core.schedule import Schedule
from gateway.core.state import State


class ComponentLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that names its component in every line."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['component']}: {msg}", kwargs  # type: ignore[index]


# Flags a push source appends to a 8-byte `Message.dedupe` digest (a ninth byte).
MARK_DUP = 0x01  # the broker sent it with DUP set: it says it may have sent it before
MARK_QOS2 = 0x02  # MQTT QoS 2: held by packet id until PUBREL instead of matched by digest
# The most sinks one store keeps, running and removed: each has a bit of a 64-bit SQLite
# integer in every stored FlowFile (the sinks it waits for).
MAX_SINKS = 62


class InboundMarks(Protocol):
    """What the store remembers for one push source about its inbound messages.

    Implemented by `gateway.store.sqlite.SourceMarks`; see the MQTT source for use.
    """

    def committed(self, slot: int, digest: bytes) -> bool: ...

    def ids_counted(self, more_than: int) -> bool: ...

    def held(self) -> set[int]: ...

    async def release(self, ids: list[int]) -> None: ...

    async def new_session(self) -> None: ...


class NoMarks:
    """Remembers nothing: for a component run outside an engine (tests, tools)."""

    def __init__(self) -> None:
        self._held: set[int] = set()

    def committed(self, slot: int, digest: bytes) -> bool:
        return False

    def ids_counted(self, more_than: int) -> bool:
        return False

    def held(self) -> set[int]:
        return self._held

    async def release(self, ids: list[int]) -> None:
        self._held.difference_update(ids)

    async def new_session(self) -> None:
        self._held.clear()


async def _no_position() -> bytes | None:
    return None


async def _keep_no_position(position: bytes) -> None:
    return None


@dataclass
class Context:
    """What a component gets from the engine: its name, a logger and a clock."""

    name: str
    kind: str
    clock: Clock = SYSTEM_CLOCK
    data_dir: str = "."
    gateway_id: str = "edge-stream"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # The top-level `mqtt` section's defaults for components on the gateway's broker.
    mqtt_client_prefix: str = ""
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_keepalive: float = 30.0
    # mqtt.ca_file, mqtt.cert_file, mqtt.key_file (see gateway.mqtt.urls.tls_files)
    mqtt_tls_files: tuple[str | None, str | None, str | None] = (None, None, None)
    log: ComponentLog = field(init=False)
    marks: InboundMarks = field(default_factory=NoMarks)
    # The source position committed last with this source's data (see `Message.position`).
    position: Callable[[], Awaitable[bytes | None]] = field(default=_no_position)
    # Commits a position with no data (a source that starts at the end of what is there
    # already): a restart then starts there, not at the end of what is there by then.
    save_position: Callable[[bytes], Awaitable[None]] = field(default=_keep_no_position)
    # False while the engine takes no input (store full with overflow: block, disk short):
    # a push source that can refuse (HTTP 503) asks before taking a message in.
    accepting: Callable[[], bool] = field(default=lambda: True)

    def __post_init__(self) -> None:
        self.log = ComponentLog(
            logging.getLogger(f"gateway.{self.kind}"), {"component": f"{self.kind} {self.name}"}
        )


class Message(NamedTuple):
    """A FlowFile handed to the engine, with what to do once it is durable.

    `ack` runs after the transaction holding the FlowFile commits (MQTT PUBACK,
    cursor advance). `dedupe`, a (slot, digest) pair such as an MQTT packet id
    and a digest of topic and payload, is remembered with the commit so that a
    redelivery of a message already stored is acknowledged without storing it
    twice (see `Context.marks`). `reject`, when set, sends the FlowFile
    straight to the dead-letter table with that reason (oversized, undecodable).
    `position`, when set, is the source's position just after this message (a
    database cursor, a stream entry id): the store keeps the last one of each
    source with the commit holding the message, and `Context.position` reads it
    back when the source starts again, so a restart neither misses nor repeats.
    """

    flowfile: FlowFile
    ack: Callable[[], None] | None = None
    dedupe: tuple[int, bytes] | None = None
    reject: str | None = None
    position: bytes | None = None


class Source:
    """Base for sources. Subclasses set `mode` and implement the matching calls.

    mode "poll": the engine calls `poll_messages()` (by default: `poll()`) every
    `interval` seconds, or at the times of `schedule` when the source sets one; while
    `backlog` is True after a poll (a page limit was reached), it polls again at once.
    mode "stream": the engine loops on `read()`, which waits for the next batch.
    """

    mode: ClassVar[str] = "poll"
    interval: float = 1.0
    schedule: Schedule | None = None
    backlog: bool = False
    held: bool = False
    """True while the source holds, in memory only, data it read and has not handed over
    (the next pages of a REST answer): nothing would read it again after a restart, so a
    stop lets it be handed over first (see `SourceRunner.stop`)."""
    held_items: int = 0
    """How many items the source holds so (`held`): counted as lost if a stop cuts it off."""
    lost_if_cut: str | None = None
    """Set when what the source read and did not hand over is read by nothing again (a
    REST answer: the API has answered; a reading of a device; MQTT QoS 0): what to say
    of it when a stop cuts the source off ("the API is not asked for them again"). None:
    its sender sends it again, or the source reads it again from its position."""
    dropped: int = 0
    """Messages this source dropped before handing them over (MQTT QoS 0 under load):
    `edge_stream_source_dropped_total` in /metrics."""
    waits: ClassVar[bool] = False
    """True when whoever sent a message is blocked until its commit (an HTTP client
    waiting for its answer): while only such messages are handed over, the engine
    commits them without `batch_linger` (see `Ingest.take`)."""
    quiet_retries: ClassVar[bool] = False
    """True when an outage is worth one warning, not one at every retry (an unplugged
    serial adapter, reconnected at the backoff's pace for as long as it is away): the
    engine logs the first failure of an outage as a warning, the next ones until a
    connect works at debug level; the source logs at info level when it is back."""

    def __init__(self, config: Any, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx

    async def connect(self) -> None:
        """Open connections; raise RetryableError if the peer is not there yet."""

    async def poll(self) -> list[FlowFile]:
        """Read once (mode "poll")."""
        raise NotImplementedError

    async def poll_messages(self) -> list[Message]:
        """Read once (mode "poll"), as messages: a source that acks or keeps a position
        overrides this instead of `poll`."""
        return [Message(ff) for ff in await self.poll()]

    async def read(self) -> list[Message]:
        """Wait for and return the next batch (mode "stream")."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release everything; must be safe to call twice."""

    async def renew_tls(self) -> bool:
        """Serve the certificate files it serves with anew when they changed since they
        were read (a renewal written over them, then a reload that left this source
        running); True when it did. Default: it serves none, False."""
        return False

    def status(self) -> Mapping[str, object]:
        """What this source adds to its entry in /api/status and on the status page,
        after the engine's own keys (state, produced, errors, last_error). Values must
        be JSON-serialisable; read on every request, so cheap. Default: nothing."""
        return {}

    def histograms(self) -> Mapping[str, Buckets]:
        """Histograms this source keeps per part of itself (a Modbus source: each
        device's poll latency), by the part's configured name, for /metrics. Default:
        none."""
        return {}


class Processor:
    """Base for processors: `process` maps one FlowFile to zero or more.

    An empty list filters the FlowFile out; raising PermanentError sends the
    input to the dead-letter table with the error text as the reason.
    Stateful processors also implement `state`/`restore` (kept in the store
    with each batch) and `tick` (emit on time, e.g. closing a window).

    A processor with much state keeps it in `kv`, a key/value `State` (see
    gateway/core/state.py): the engine loads it from the store before the first
    FlowFile, calls `restored()`, and writes only its changed keys with each batch.
    The engine calls `tick(now_ns)` about once a second on every stateful
    processor and commits what it returns like a batch's outputs.
    """

    stateful: ClassVar[bool] = False
    kv: State | None = None

    def __init__(self, config: Any, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx

    def process(self, flowfile: FlowFile) -> list[FlowFile]:
        raise NotImplementedError

    def tick(self, now_ns: int) -> list[FlowFile]:
        return []

    def state(self) -> bytes | None:
        return None

    def restore(self, state: bytes) -> None:
        pass

    def restored(self) -> None:
        """`kv` now holds the last checkpoint (or was reset): rebuild what derives from it."""

    def owns_state(self, key: str, value: Any) -> bool:
        """Whether a kept `kv` pair is of this processor's making. A state is named
        ROUTE.N, so a processor added or removed before another leaves the state of one
        type where one of another type now stands (a deadband put before a window): the
        engine drops such a state rather than let this processor misread it."""
        return True

    def status(self) -> dict[str, object]:
        """Counts for /api/status and /metrics (empty: nothing to show). A processor with
        `kv` shows its state: keys, bytes and keys evicted over the budget since start."""
        if self.kv is None:
            return {}
        kv = self.kv
        return {"state_keys": len(kv), "state_bytes": kv.bytes, "evicted": kv.evicted}


class Rejected(NamedTuple):
    """A FlowFile the upstream refused for good, with the reason."""

    flowfile: FlowFile
    reason: str


# What a failed try of a batch settled, by FlowFile id: None taken by the upstream, or
# its refusal for good. A sink keeps one, so that a retry sends only the rest.
Settled = dict[str, Rejected | None]


def unsettled(settled: Settled, batch: list[FlowFile]) -> tuple[list[FlowFile], list[Rejected]]:
    """The FlowFiles of `batch` that an earlier failed try did not settle, and what it
    refused of them for good. An upstream that takes part of a batch and fails the rest
    (a receiver failing one request in a few, a queue that nacks past its length) would
    otherwise be sent the whole batch at every try, and no large batch would get through
    (or each try would add copies). What is no longer in `batch` is forgotten."""
    if not settled:
        return batch, []
    ids = {ff.id for ff in batch}
    for gone in [key for key in settled if key not in ids]:
        del settled[gone]
    earlier = [r for ff in batch if (r := settled.get(ff.id)) is not None]
    return [ff for ff in batch if ff.id not in settled], earlier


class Sink:
    """Base for sinks: `connect / write(batch) / close`.

    `write` delivers the whole batch idempotently (keyed by FlowFile id) and
    returns the FlowFiles the upstream refused for good; everything else in the
    batch must be committed upstream when it returns. Raise RetryableError when
    nothing or not everything could be confirmed: the engine retries the same
    batch later, which the upstream must then ignore where it already has it.
    """

    def __init__(self, config: Any, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx

    async def connect(self) -> None:
        """Open connections and prepare the target (create the table ...)."""

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        raise NotImplementedError

    async def close(self) -> None:
        """Release everything; must be safe to call twice."""

    def update(self, config: Any) -> bool:
        """A reload changed only the delivery settings the engine applies itself (`batch`,
        `retry`, `rate_limit`, `overflow`): take `config` without a restart and return
        True, or return False to be stopped and started anew (a sink whose own behaviour
        depends on one of them)."""
        self.config = config
        return True

    def status(self) -> Mapping[str, object]:
        """What this sink adds to its entry in /api/status and on the status page, after
        the engine's own keys (type, state, depth, delivered, dead_lettered, errors,
        last_error). Values must be JSON-serialisable. Default: nothing."""
        return {}

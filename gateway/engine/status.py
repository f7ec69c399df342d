"""The typed status snapshot that /api/status, the status page and /metrics read.

The engine fills in what it runs (sources, routes, sinks, the store and its own
counters); the process around it (`gateway.app`) adds its broker and the config
file's state (`config`: path, hash, loaded_at and the last reload's outcome). `to_json` is
exactly the /api/status document, key for key: users' scripts read it.
A component's own keys (`Source.status()`, `Sink.status()`) follow the
engine's keys in its entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.core.histogram import Buckets
from gateway.store.sqlite import Store


@dataclass(frozen=True)
class GatewayStatus:
    id: str
    uptime_s: float
    config: str | None
    ingested: int
    batches: int
    # for /metrics: the age of each FlowFile when its batch committed, and batch sizes
    commit_latency: Buckets | None = None
    commit_batches: Buckets | None = None
    version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uptime_s": self.uptime_s,
            "config": self.config,
            "ingested": self.ingested,
            "batches": self.batches,
            "version": self.version,
        }


@dataclass(frozen=True)
class BrokerStatus:
    """The gateway's MQTT broker (`mqtt.url`), filled in by the process, not the engine."""

    url: str
    embedded: bool
    restarts: int
    used_by: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "embedded": self.embedded,
            "restarts": self.restarts,
            "used_by": list(self.used_by),
        }


@dataclass(frozen=True)
class ReloadStatus:
    """The last reload attempt: when, what asked for it, and whether it was applied."""

    at: float  # unix time
    trigger: str  # "sighup" | "file" | "api" | ...
    outcome: str  # "applied" | "refused" | "rolled_back" | "applying" (under way)
    errors: list[str]
    changes: list[str] = field(default_factory=list)  # "sink warehouse changed", ...

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "trigger": self.trigger,
            "outcome": self.outcome,
            "errors": list(self.errors),
            "changes": list(self.changes),
        }


@dataclass(frozen=True)
class ConfigStatus:
    """The config file the gateway runs, filled in by the process, not the engine.

    `hash` is the first 12 hex digits of the sha256 of the file's text as loaded;
    `last_reload` is None until a reload was tried; a refused one keeps its errors here
    (the "last refused" file) while the running config stays."""

    path: str | None
    hash: str | None
    loaded_at: float  # unix time
    last_reload: ReloadStatus | None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "hash": self.hash,
            "loaded_at": self.loaded_at,
            "last_reload": None if self.last_reload is None else self.last_reload.to_json(),
        }


@dataclass(frozen=True)
class RemoteConfigStatus:
    """The remote config channel (`remote_config`), filled in by the process."""

    enabled: bool
    connected: bool
    last_version: int | None  # the last remote version applied
    last_outcome: str | None  # "applied" | "refused" | "rolled_back" of the last document
    last_error: str | None  # why the channel is not connected, if it is not

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "connected": self.connected,
            "last_version": self.last_version,
            "last_outcome": self.last_outcome,
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class DiskStatus:
    full: bool
    free_bytes: int
    store_bytes: int
    reserve: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "full": self.full,
            "free_bytes": self.free_bytes,
            "store_bytes": self.store_bytes,
            "reserve": self.reserve,
        }


@dataclass(frozen=True)
class StoreStatus:
    path: str
    bytes: int
    max_bytes: int
    overflow: str
    dropped: int
    dead_letters: int
    blocked: bool  # intake stopped: over budget with `block` sinks, or the disk short
    disk: DiskStatus
    file_bytes: int = 0  # store.db alone (for /metrics)
    wal_bytes: int = 0  # its write-ahead log
    # sinks removed from the config whose backlog the store keeps: name -> FlowFiles waiting
    removed_sinks: dict[str, int] = field(default_factory=dict)
    dead_dropped: int = 0  # the oldest dead letters deleted over their budget

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "overflow": self.overflow,
            "dropped": self.dropped,
            "dead_letters": self.dead_letters,
            "dead_dropped": self.dead_dropped,
            "blocked": self.blocked,
            "disk": self.disk.to_json(),
            "removed_sinks": {n: {"depth": d} for n, d in self.removed_sinks.items()},
        }


@dataclass(frozen=True)
class SourceStatus:
    state: str
    produced: int
    errors: int
    last_error: str | None
    dropped: int = 0  # for /metrics; in the JSON only where the source reports it
    extra: Mapping[str, object] = field(default_factory=dict)  # Source.status()
    # for /metrics only: errors by kind ("retryable", "permanent"), the source's histograms
    # (Source.histograms()) and its type
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    histograms: Mapping[str, Buckets] = field(default_factory=dict)
    type: str = ""
    # for the alerts only: a polled source "running" whose first poll since it started (a
    # restart, a reload) has not ended; its alerts neither hold nor clear meanwhile
    first_try: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "produced": self.produced,
            "errors": self.errors,
            "last_error": self.last_error,
        }
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class RouteStatus:
    match: list[str]
    sinks: list[str]
    processors: list[str]
    received: int = 0  # FlowFiles its filters took
    emitted: int = 0  # FlowFiles it handed to its sinks (the console's edge rates)
    dead_lettered: int = 0
    errors: int = 0  # for /metrics only
    # Processor.status() of each processor that has one, by ROUTE.N (a window's late, early...)
    processor_state: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "sinks": self.sinks,
            "processors": self.processors,
            "received": self.received,
            "emitted": self.emitted,
            "dead_lettered": self.dead_lettered,
            "processor_state": {label: dict(s) for label, s in self.processor_state.items()},
        }


@dataclass(frozen=True)
class SinkStatus:
    type: str
    state: str
    depth: int
    delivered: int
    dead_lettered: int
    errors: int
    last_error: str | None
    extra: Mapping[str, object] = field(default_factory=dict)  # Sink.status()
    oldest_age_s: float | None = None  # the oldest FlowFile waiting for it (None: none waits)
    # for /metrics only: errors by kind ("retryable", "permanent", "store"), the age of each
    # FlowFile when delivered and the size of each write
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    latency: Buckets | None = None
    batch_sizes: Buckets | None = None
    # for the alerts only: "running" before its first write since it started (a restart, a
    # reload) has ended; its alerts neither hold nor clear meanwhile
    first_try: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "state": self.state,
            "depth": self.depth,
            "oldest_age_s": self.oldest_age_s,
            "delivered": self.delivered,
            "dead_lettered": self.dead_lettered,
            "errors": self.errors,
            "last_error": self.last_error,
        }
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Snapshot:
    """The whole gateway at one moment."""

    gateway: GatewayStatus
    broker: BrokerStatus | None
    store: StoreStatus
    sources: dict[str, SourceStatus]
    routes: dict[str, RouteStatus]
    sinks: dict[str, SinkStatus]
    dead_letters: int
    unrouted: int
    config: ConfigStatus | None = None  # filled in by the process (gateway.app)
    remote_config: RemoteConfigStatus | None = None  # likewise
    alerts: Mapping[str, Any] | None = None  # likewise: {"active": [...], "recent": [...]}
    replication: Mapping[str, Any] | None = None  # state.replicate: Replicator.status()

    def to_json(self) -> dict[str, Any]:
        """The /api/status document."""
        return {
            "gateway": self.gateway.to_json(),
            "broker": None if self.broker is None else self.broker.to_json(),
            "store": self.store.to_json(),
            "sources": {name: s.to_json() for name, s in self.sources.items()},
            "routes": {name: r.to_json() for name, r in self.routes.items()},
            "sinks": {name: s.to_json() for name, s in self.sinks.items()},
            "dead_letters": self.dead_letters,
            "unrouted": self.unrouted,
            "config": None if self.config is None else self.config.to_json(),
            "remote_config": None if self.remote_config is None else self.remote_config.to_json(),
            "alerts": None if self.alerts is None else dict(self.alerts),
            "replication": None if self.replication is None else dict(self.replication),
        }


class StatusView(Protocol):
    """What the web server and the metrics read: the running gateway, narrowly.

    `gateway.app.Gateway` implements it; a reload swaps the engine behind it.
    """

    @property
    def store(self) -> Store: ...

    def snapshot(self) -> Snapshot: ...

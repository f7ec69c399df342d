"""The typed shape of the gateway's one config file.

Sections: `gateway`, `buffer`, `mqtt`, `sources`, `routes`, `sinks`, `web`.
Sources and sinks are mappings keyed by the name you give them; routes name
the sinks they feed. Every component's own keys are documented in its module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from gateway.config.schema import Component, Duration, Size, Valid, did_you_mean, mask_password
from gateway.core.topics import validate_filter

Overflow = Literal["drop_oldest", "block"]


@dataclass(frozen=True)
class GatewaySection:
    """Identity and where the gateway keeps its data."""

    id: str = "edge-stream"
    data_dir: str = "./data"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    secret_key_file: str | None = None


@dataclass(frozen=True)
class BufferSection:
    """The SQLite store that holds every FlowFile until all its sinks have it."""

    max_bytes: Size = 1 << 30
    overflow: Overflow = "drop_oldest"
    synchronous: Literal["normal", "full"] = "normal"
    batch_max: int = 500
    batch_linger: Duration = 0.005

    def check(self) -> Iterator[tuple[str, str]]:
        if self.max_bytes < 1 << 20:
            yield "max_bytes", "must be at least 1MiB"
        if not 1 <= self.batch_max <= 10000:
            yield "batch_max", "must be between 1 and 10000"


@dataclass(frozen=True)
class MqttSection:
    """The gateway's broker: what MQTT sources without a `url` and Modbus write-back use.

    `url: auto` (the default): the broker at `embedded_listen`; one that already
    answers there (the system's Mosquitto) is used, otherwise the gateway starts
    its own Mosquitto there, and only when some component uses it.
    `url: embedded`: always start and supervise a local Mosquitto (the
    `mosquitto` package must be installed) on `embedded_listen`.
    `url: mqtt://host:port` (or mqtts://): a broker run elsewhere.
    `embedded_listen` is host:port, an IPv6 address in brackets (`[::1]:1883`).
    gateway/mqtt/broker.py says more.
    """

    url: str = "auto"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    embedded_listen: str = "127.0.0.1:1883"
    keepalive: Duration = 30.0

    def check(self) -> Iterator[tuple[str, str]]:
        if self.url not in ("auto", "embedded") and not self.url.startswith(
            ("mqtt://", "mqtts://")
        ):
            yield (
                "url",
                f"{mask_password(self.url)!r} must be 'auto', 'embedded', mqtt://host:port"
                " or mqtts://host:port",
            )
        host, _, port = self.embedded_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            yield (
                "embedded_listen",
                f"{self.embedded_listen!r} must read host:port, e.g. 127.0.0.1:1883",
            )
        elif host.startswith("[") and host.endswith("]"):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                yield "embedded_listen", f"{host} is not an IPv6 address, e.g. [::1]:1883"
        elif ":" in host or "[" in host or "]" in host:
            yield (
                "embedded_listen",
                f"{self.embedded_listen!r}: write an IPv6 address in brackets, e.g. [::1]:1883",
            )


def _filter_problem(topic_filter: str) -> str | None:
    problem = validate_filter(topic_filter)
    if problem:
        return f"{topic_filter!r} is not a valid MQTT topic filter: {problem}"
    return None


@dataclass(frozen=True)
class RouteSection:
    """Sends every FlowFile whose topic matches `match` through processors to sinks."""

    match: list[Annotated[str, Valid(_filter_problem)]]
    sinks: list[str]
    processors: list[Annotated[Any, Component("processor")]] = field(default_factory=list)

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.sinks:
            yield "sinks", "a route needs at least one sink"


@dataclass(frozen=True)
class WebSection:
    """The status page, JSON API and /metrics.

    It listens on localhost unless `username` and `password` are set; asking for
    another address without credentials is refused.
    """

    listen: str = "127.0.0.1:8080"
    username: str | None = None
    password: str | None = None
    enabled: bool = True

    def check(self) -> Iterator[tuple[str, str]]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            yield "listen", f"{self.listen!r} must read host:port, e.g. 127.0.0.1:8080"
        elif host not in ("127.0.0.1", "localhost", "::1", "[::1]") and not (
            self.username and self.password
        ):
            yield (
                "listen",
                (
                    f"listening on {host} needs web.username and web.password;"
                    " without them the page stays on 127.0.0.1"
                ),
            )


@dataclass(frozen=True)
class Config:
    """The whole gateway configuration."""

    gateway: GatewaySection = field(default_factory=GatewaySection)
    buffer: BufferSection = field(default_factory=BufferSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    sources: dict[str, Annotated[Any, Component("source")]] = field(default_factory=dict)
    routes: dict[str, RouteSection] = field(default_factory=dict)
    sinks: dict[str, Annotated[Any, Component("sink")]] = field(default_factory=dict)
    web: WebSection = field(default_factory=WebSection)

    # The references between sections are checked even when a section has problems
    # of its own; a field or an entry that failed is None here.
    check_incomplete: ClassVar[bool] = True

    def check(self) -> Iterator[tuple[str, str]]:
        routes: Mapping[str, RouteSection | None] = self.routes or {}
        for name, route in routes.items():
            if route is None or self.sinks is None:
                continue
            for i, sink in enumerate(route.sinks):
                if sink not in self.sinks:
                    yield (
                        f"routes.{name}.sinks.{i}",
                        (
                            f"no sink named {sink!r} is defined under sinks:"
                            f"{did_you_mean(sink, self.sinks)}"
                        ),
                    )
        for section in ("sources", "sinks", "routes"):
            for name in getattr(self, section) or {}:
                if not name or not all(c.isalnum() or c in "_-" for c in name):
                    yield f"{section}.{name}", "names use letters, digits, '_' and '-'"


@dataclass(frozen=True)
class BatchSettings:
    """How a sink groups FlowFiles: up to `max_rows` and up to `max_bytes`, waiting at
    most `linger` to fill.

    batch:
      max_rows: 1000      FlowFiles per write
      max_bytes: 4MiB     their sizes (payload, topic, attributes) per write; a single
                          FlowFile larger than this still goes, alone. The sink holds
                          at most two batches in memory (one written, one read ahead).
      linger: 10ms        how long to wait for a batch to fill
    """

    max_rows: int = 1000
    max_bytes: Size = 4 << 20
    linger: Duration = 0.01

    def check(self) -> Iterator[tuple[str, str]]:
        if not 1 <= self.max_rows <= 50000:
            yield "max_rows", "must be between 1 and 50000"
        if not 64 << 10 <= self.max_bytes <= 256 << 20:
            yield "max_bytes", "must be between 64KiB and 256MiB"


@dataclass(frozen=True)
class RetrySettings:
    """Capped exponential backoff with jitter, from `initial` up to `max`."""

    initial: Duration = 0.5
    max: Duration = 30.0


@dataclass(frozen=True, kw_only=True)
class SinkConfig:
    """Delivery settings every sink shares; each sink's config extends this class.

    `rate_limit` (rows per second) paces delivery, e.g. while a backlog drains
    over a thin uplink after an outage; `overflow` overrides `buffer.overflow`
    for the FlowFiles routed to this sink.
    """

    type: str
    batch: BatchSettings = field(default_factory=BatchSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    rate_limit: float | None = None
    overflow: Overflow | None = None


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """Keys every source shares; each source's config extends this class."""

    type: str

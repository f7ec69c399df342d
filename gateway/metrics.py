"""Prometheus metrics, read from the engine's status snapshot at scrape time.

Counting happens once per batch in plain integers (and `gateway.core.histogram`
buckets); this collector turns the snapshot (`gateway.engine.status`) into
metric families only when /metrics is scraped, so the hot path pays nothing
more. It reads whichever engine runs now: a reload swaps the engine behind the
view, not the collector. One registry holds it and the process collector;
`metrics_json` renders the same registry as JSON for `GET /api/metrics`.

Labels are component names (`source`, `route`, `sink`, `device`: as configured)
and kinds of error only, never topics or addresses; each component's type is in
`edge_stream_component_info`. docs/metrics.md lists every metric.

prometheus_client (0.6 MB more RSS for an idle gateway) is imported at the first scrape
of /metrics or /api/metrics, not when the gateway starts.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.core.histogram import Buckets
from gateway.engine.status import StatusView

if TYPE_CHECKING:
    from prometheus_client.core import HistogramMetricFamily, Metric
    from prometheus_client.registry import CollectorRegistry

LAG_INTERVAL = 0.5  # seconds between two looks at the event loop's lag
LAG_WINDOW = 120  # the worst of the last this many looks (one minute) is reported


class ProcessStats:
    """What the process measures of itself: its start and its event loop's lag.

    `run()` (a task of the process) sleeps LAG_INTERVAL at a time and records how
    much later than asked it woke up: the time callbacks had to wait for the loop.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lag = 0.0
        self._recent: deque[float] = deque(maxlen=LAG_WINDOW)

    @property
    def worst_lag(self) -> float:
        return max(self._recent, default=0.0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            self.lag = max(0.0, loop.time() - before - LAG_INTERVAL)
            self._recent.append(self.lag)


# The kinds of error docs/metrics.md lists: each is exported (0 until one happens), so
# that a scrape shows every documented series and rate() has a start.
SOURCE_ERROR_KINDS = ("retryable", "permanent")
SINK_ERROR_KINDS = ("retryable", "permanent", "store")


def open_sockets() -> int:
    """Sockets this process holds open (its connections and listeners), from /proc."""
    count = 0
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    count += 1
            except OSError:
                continue  # closed meanwhile
    except OSError:
        return 0
    return count


def _histogram(family: HistogramMetricFamily, labels: list[str], b: Buckets) -> None:
    family.add_metric(labels, b.cumulative(), b.sum)


class EngineCollector:
    """The gateway's own metrics, from the view's snapshot at scrape time."""

    def __init__(self, view: StatusView, process: ProcessStats | None = None) -> None:
        self.view = view
        self.process = process

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        e = self.view.snapshot()
        info = InfoMetricFamily(
            "edge_stream_component",
            "Each configured component: its kind (source, route, sink) and type",
            labels=["component", "kind"],
        )
        produced = CounterMetricFamily(
            "edge_stream_source_flowfiles",
            "FlowFiles each source received and handed over",
            labels=["source"],
        )
        source_errors = CounterMetricFamily(
            "edge_stream_source_errors", "Errors seen by each source", labels=["source"]
        )
        source_kinds = CounterMetricFamily(
            "edge_stream_source_errors_by_kind",
            "Errors of each source by kind: retryable (it reconnects) or permanent (it stopped)",
            labels=["source", "kind"],
        )
        dropped = CounterMetricFamily(
            "edge_stream_source_dropped",
            "Messages a source dropped before storing them (MQTT QoS 0 under load)",
            labels=["source"],
        )
        poll = HistogramMetricFamily(
            "edge_stream_modbus_poll_seconds",
            "Seconds one poll of a Modbus device's registers took (requests sent to answered)",
            labels=["source", "device"],
        )
        for name, r in e.sources.items():
            info.add_metric([name, "source"], {"type": r.type})
            produced.add_metric([name], r.produced)
            source_errors.add_metric([name], r.errors)
            for kind in sorted({*SOURCE_ERROR_KINDS, *r.errors_by_kind}):
                source_kinds.add_metric([name, kind], r.errors_by_kind.get(kind, 0))
            dropped.add_metric([name], r.dropped)
            for part, buckets in r.histograms.items():
                _histogram(poll, [name, part], buckets)
        yield from (produced, source_errors, source_kinds, dropped, poll)

        route_in = CounterMetricFamily(
            "edge_stream_route_received",
            "FlowFiles whose topic matched each route",
            labels=["route"],
        )
        route_out = CounterMetricFamily(
            "edge_stream_route_emitted",
            "FlowFiles each route's processors put out for its sinks",
            labels=["route"],
        )
        route_dead = CounterMetricFamily(
            "edge_stream_route_dead_lettered",
            "FlowFiles a processor of each route refused or failed on (dead letters)",
            labels=["route"],
        )
        route_errors = CounterMetricFamily(
            "edge_stream_route_errors",
            "Internal errors of each route's processors: FlowFiles one failed on"
            " (dead-lettered) and failed runs of a window's timer",
            labels=["route"],
        )
        for name, rt in e.routes.items():
            info.add_metric([name, "route"], {"type": "route"})
            route_in.add_metric([name], rt.received)
            route_out.add_metric([name], rt.emitted)
            route_dead.add_metric([name], rt.dead_lettered)
            route_errors.add_metric([name], rt.errors)
        yield from (route_in, route_out, route_dead, route_errors)
        yield from _processor_families(e.routes)
        yield CounterMetricFamily(
            "edge_stream_unrouted", "FlowFiles no route matched", value=e.unrouted
        )

        delivered = CounterMetricFamily(
            "edge_stream_sink_delivered", "FlowFiles delivered by each sink", labels=["sink"]
        )
        rejected = CounterMetricFamily(
            "edge_stream_sink_dead_lettered", "FlowFiles refused by each sink", labels=["sink"]
        )
        sink_errors = CounterMetricFamily(
            "edge_stream_sink_errors", "Delivery errors of each sink", labels=["sink"]
        )
        sink_kinds = CounterMetricFamily(
            "edge_stream_sink_errors_by_kind",
            "Delivery errors of each sink by kind: retryable, permanent (it stopped), store",
            labels=["sink", "kind"],
        )
        up = GaugeMetricFamily(
            "edge_stream_sink_up",
            "1 while the sink delivers (state running), else 0",
            labels=["sink"],
        )
        depth = GaugeMetricFamily(
            "edge_stream_store_depth",
            "FlowFiles waiting in the store for each sink",
            labels=["sink"],
        )
        oldest = GaugeMetricFamily(
            "edge_stream_store_oldest_age_seconds",
            "Age of the oldest FlowFile waiting for each sink (0 when none waits)",
            labels=["sink"],
        )
        age = HistogramMetricFamily(
            "edge_stream_sink_delivery_age_seconds",
            "Age of each FlowFile (since its source made it) when its sink delivered it",
            labels=["sink"],
        )
        sizes = HistogramMetricFamily(
            "edge_stream_sink_batch_size", "FlowFiles per write of each sink", labels=["sink"]
        )
        for name, s in e.sinks.items():
            info.add_metric([name, "sink"], {"type": s.type})
            delivered.add_metric([name], s.delivered)
            rejected.add_metric([name], s.dead_lettered)
            sink_errors.add_metric([name], s.errors)
            for kind in sorted({*SINK_ERROR_KINDS, *s.errors_by_kind}):
                sink_kinds.add_metric([name, kind], s.errors_by_kind.get(kind, 0))
            up.add_metric([name], 1 if s.state == "running" else 0)
            depth.add_metric([name], s.depth)
            oldest.add_metric([name], s.oldest_age_s or 0.0)
            if s.latency is not None:
                _histogram(age, [name], s.latency)
            if s.batch_sizes is not None:
                _histogram(sizes, [name], s.batch_sizes)
        yield from (delivered, rejected, sink_errors, sink_kinds, up, depth, oldest, age, sizes)
        yield info

        g = e.gateway
        yield CounterMetricFamily(
            "edge_stream_ingested", "FlowFiles committed by ingest", value=g.ingested
        )
        yield CounterMetricFamily(
            "edge_stream_commits", "Store transactions of ingest (batches)", value=g.batches
        )
        if g.commit_latency is not None:
            commit = HistogramMetricFamily(
                "edge_stream_commit_latency_seconds",
                "Age of each FlowFile (since its source made it) when its batch was committed",
            )
            _histogram(commit, [], g.commit_latency)
            yield commit
        if g.commit_batches is not None:
            batches = HistogramMetricFamily(
                "edge_stream_commit_batch_size", "FlowFiles per ingest commit"
            )
            _histogram(batches, [], g.commit_batches)
            yield batches

        st = e.store
        yield GaugeMetricFamily("edge_stream_store_bytes", "Bytes the store holds", value=st.bytes)
        yield GaugeMetricFamily(
            "edge_stream_store_max_bytes", "The store's budget (buffer.max_bytes)", st.max_bytes
        )
        yield CounterMetricFamily(
            "edge_stream_store_dropped", "FlowFiles dropped by overflow", value=st.dropped
        )
        yield CounterMetricFamily(
            "edge_stream_dead_letters_dropped",
            "The oldest dead letters deleted over buffer.dead_letters_max_bytes",
            value=st.dead_dropped,
        )
        yield GaugeMetricFamily(
            "edge_stream_store_file_bytes", "Size of store.db on disk", value=st.file_bytes
        )
        yield GaugeMetricFamily(
            "edge_stream_store_wal_bytes", "Size of the store's write-ahead log", st.wal_bytes
        )
        yield GaugeMetricFamily(
            "edge_stream_store_blocked", "1 while intake is stopped (budget or disk)", st.blocked
        )
        yield GaugeMetricFamily(
            "edge_stream_dead_letters",
            "FlowFiles in the dead-letter table",
            value=st.dead_letters,
        )

        yield GaugeMetricFamily(
            "edge_stream_open_connections", "Sockets the process holds open", open_sockets()
        )
        process = self.process
        if process is not None:
            yield GaugeMetricFamily(
                "edge_stream_uptime_seconds",
                "Seconds since the process started",
                value=round(time.monotonic() - process.started, 1),
            )
            yield GaugeMetricFamily(
                "edge_stream_event_loop_lag_seconds",
                "How late the event loop ran a timer at the last look (every 0.5 s)",
                value=process.lag,
            )
            yield GaugeMetricFamily(
                "edge_stream_event_loop_lag_max_seconds",
                "The worst event-loop lag of the last minute",
                value=process.worst_lag,
            )
        build = InfoMetricFamily("edge_stream_build", "The gateway's version and Python")
        build.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield build


# Processor.status() counts as metric families: (key, name, type, help); labels route
# and processor (ROUTE.N). A processor without the key has no sample.
PROCESSOR_METRICS = (
    ("state_keys", "edge_stream_processor_state_keys", "gauge", "Keys in a processor's state"),
    ("state_bytes", "edge_stream_processor_state_bytes", "gauge", "Bytes of its state (estimate)"),
    ("evicted", "edge_stream_processor_state_evicted", "counter", "State keys evicted over budget"),
    ("open", "edge_stream_window_open", "gauge", "Open windows of a window processor"),
    ("late", "edge_stream_window_late", "counter", "Late readings (dropped or dead-lettered)"),
    ("early", "edge_stream_window_early_closed", "counter", "Windows closed early (budget, clock)"),
    ("dropped", "edge_stream_window_dropped", "counter", "Open windows dropped: config changed"),
)


def _processor_families(routes: Any) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for key, name, kind, text in PROCESSOR_METRICS:
        family: Metric
        if kind == "gauge":
            family = GaugeMetricFamily(name, text, labels=["route", "processor"])
        else:
            family = CounterMetricFamily(name, text, labels=["route", "processor"])
        for route, rt in routes.items():
            for label, shown in rt.processor_state.items():
                value = shown.get(key)
                if isinstance(value, int | float):
                    family.add_metric([route, label], value)
        yield family


def registry_for(view: StatusView, process: ProcessStats | None = None) -> CollectorRegistry:
    """The one registry of the gateway's metrics: the engine's and the process's (RSS,
    CPU seconds, open file descriptors: prometheus_client's `process_*` metrics)."""
    if process is None:
        process = getattr(view, "process", None)
    from prometheus_client import ProcessCollector
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(view, process))
    ProcessCollector(registry=registry)
    return registry


def metrics_json(registry: CollectorRegistry) -> dict[str, Any]:
    """`GET /api/metrics`: the same values as /metrics, as JSON.

    {name: {"type", "help", "samples": [{"name", "labels", "value"}]}}, one entry per
    metric family; the sample names are the Prometheus ones (`_total`, `_bucket` with
    its `le` label, `_sum`, `_count`, `_info`)."""
    out: dict[str, Any] = {}
    for family in registry.collect():
        out[family.name] = {
            "type": family.type,
            "help": family.documentation,
            "samples": [
                {"name": s.name, "labels": dict(s.labels), "value": s.value} for s in family.samples
            ],
        }
    return out

"""Prometheus metrics, read from the engine's status snapshot at scrape time.

Counting happens once per batch in plain integers; this collector turns the
snapshot (`gateway.engine.status`) into metric families only when /metrics is
scraped, so the hot path pays nothing. It reads whichever engine runs now: a
reload swaps the engine behind the view, not the collector.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from gateway.engine.status import StatusView


class EngineCollector:
    def __init__(self, view: StatusView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        e = self.view.snapshot()
        produced = CounterMetricFamily(
            "edge_stream_source_flowfiles", "FlowFiles produced by each source", labels=["source"]
        )
        source_errors = CounterMetricFamily(
            "edge_stream_source_errors", "Errors seen by each source", labels=["source"]
        )
        dropped = CounterMetricFamily(
            "edge_stream_source_dropped",
            "Messages a source dropped before storing them (MQTT QoS 0 under load)",
            labels=["source"],
        )
        for name, r in e.sources.items():
            produced.add_metric([name], r.produced)
            source_errors.add_metric([name], r.errors)
            dropped.add_metric([name], r.dropped)
        delivered = CounterMetricFamily(
            "edge_stream_sink_delivered", "FlowFiles delivered by each sink", labels=["sink"]
        )
        rejected = CounterMetricFamily(
            "edge_stream_sink_dead_lettered", "FlowFiles refused by each sink", labels=["sink"]
        )
        sink_errors = CounterMetricFamily(
            "edge_stream_sink_errors", "Delivery errors of each sink", labels=["sink"]
        )
        depth = GaugeMetricFamily(
            "edge_stream_store_depth",
            "FlowFiles waiting in the store for each sink",
            labels=["sink"],
        )
        for name, s in e.sinks.items():
            delivered.add_metric([name], s.delivered)
            rejected.add_metric([name], s.dead_lettered)
            sink_errors.add_metric([name], s.errors)
            depth.add_metric([name], s.depth)
        yield from (produced, source_errors, dropped, delivered, rejected, sink_errors, depth)
        yield GaugeMetricFamily(
            "edge_stream_store_bytes", "Bytes the store holds", value=e.store.bytes
        )
        yield CounterMetricFamily(
            "edge_stream_store_dropped", "FlowFiles dropped by overflow", value=e.store.dropped
        )
        yield GaugeMetricFamily(
            "edge_stream_dead_letters",
            "FlowFiles in the dead-letter table",
            value=e.store.dead_letters,
        )
        yield CounterMetricFamily(
            "edge_stream_ingested", "FlowFiles committed by ingest", value=e.gateway.ingested
        )


def registry_for(view: StatusView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(view))
    return registry

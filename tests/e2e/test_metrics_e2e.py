"""End to end: publish N messages, and /metrics and /api/metrics count N (counters and
histogram counts), with the same values in both; every metric docs/metrics.md lists has a
series, and every series is listed there."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import GatewayProcess, Publisher, wait_for

pytestmark = pytest.mark.e2e

N = 40
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented() -> set[str]:
    """The metric names in docs/metrics.md's table; `..._lag_max_seconds` continues the
    name before it from its `_lag`."""
    names: set[str] = set()
    for line in DOCS.read_text().splitlines():
        previous = ""
        for name in re.findall(r"`((?:edge_stream_|process_|\.\.\.)[a-z_]+)`", line):
            if name.startswith("..."):
                tail = name.removeprefix("...")
                first = "_" + tail.split("_")[1]
                name = previous[: previous.index(first)] + tail
            names.add(name)
            previous = name
    return names


def exported(text: str) -> set[str]:
    """The metric names with at least one sample in a Prometheus text page."""
    kinds = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    names = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if kinds.get(base) == "histogram":
            name = base
        names.add(name)
    return names


def sample(doc: dict[str, Any], family: str, name: str, **labels: str) -> float:
    for s in doc[family]["samples"]:
        if s["name"] == name and all(s["labels"].get(k) == v for k, v in labels.items()):
            return float(s["value"])
    raise AssertionError(f"no sample {name} {labels} in {family}")


def test_publish_n_and_the_metrics_show_n(
    gateway_factory: Any, mosquitto: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    gw: GatewayProcess = gateway_factory(
        {
            "gateway": {"id": "metrics1"},
            "mqtt": {"url": mosquitto.url},
            "sources": {"plant": {"type": "mqtt", "topics": ["m1/#"], "qos": 1}},
            "routes": {
                "r": {"match": "m1/#", "sinks": ["f"]},
                "w": {
                    "match": "nothing/here",
                    "processors": [{"type": "window", "size": "1m", "aggregates": {"v": ["avg"]}}],
                    "sinks": ["f"],
                },
            },
            "sinks": {"f": {"type": "file", "path": str(out)}},
        }
    )
    gw.start()
    Publisher(mosquitto.port, N, 4, "m1").run()
    wait_for(lambda: gw.sink("f")["delivered"] == N, 30, f"{N} delivered")
    doc = gw.get("/api/metrics")
    assert (
        sample(
            doc,
            "edge_stream_source_flowfiles",
            "edge_stream_source_flowfiles_total",
            source="plant",
        )
        == N
    )
    assert (
        sample(doc, "edge_stream_route_received", "edge_stream_route_received_total", route="r")
        == N
    )
    assert (
        sample(doc, "edge_stream_route_emitted", "edge_stream_route_emitted_total", route="r") == N
    )
    assert (
        sample(doc, "edge_stream_sink_delivered", "edge_stream_sink_delivered_total", sink="f") == N
    )
    age = "edge_stream_sink_delivery_age_seconds"
    assert sample(doc, age, f"{age}_count", sink="f") == N
    assert sample(doc, age, f"{age}_bucket", sink="f", le="+Inf") == N
    assert 0 < sample(doc, age, f"{age}_sum", sink="f") < N * 30
    sizes = "edge_stream_sink_batch_size"
    assert sample(doc, sizes, f"{sizes}_sum", sink="f") == N
    commit = "edge_stream_commit_latency_seconds"
    assert sample(doc, commit, f"{commit}_count") == N
    assert sample(doc, "edge_stream_commit_batch_size", "edge_stream_commit_batch_size_sum") == N
    assert sample(doc, "edge_stream_store_depth", "edge_stream_store_depth", sink="f") == 0
    assert sample(doc, "edge_stream_component", "edge_stream_component_info", component="f")
    assert sample(doc, "process_resident_memory_bytes", "process_resident_memory_bytes") > 1e6
    assert sample(doc, "edge_stream_open_connections", "edge_stream_open_connections") >= 2
    assert sample(doc, "edge_stream_uptime_seconds", "edge_stream_uptime_seconds") > 0
    # the Prometheus text holds the same counts
    url = f"http://127.0.0.1:{gw.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert f'edge_stream_sink_delivery_age_seconds_count{{sink="f"}} {float(N)}' in text
    assert f'edge_stream_route_received_total{{route="r"}} {float(N)}' in text
    assert f"edge_stream_commit_latency_seconds_count {float(N)}" in text
    # every documented metric has a series (errors by kind at 0 before any error), and
    # every series is documented; Modbus poll times need a Modbus source
    listed, there = documented(), exported(text)
    assert listed - there == {"edge_stream_modbus_poll_seconds"}, listed - there
    assert there - listed == set(), there - listed
    assert gw.stop() == 0

"""Window benchmark: MQTT (QoS 1) -> gateway (tumbling 1-minute window) -> file, with the store.

1,000,000 readings over 10,000 groups (a payload field) through a 1-minute tumbling
event-time window with 5 aggregates (count, avg, min, max, stddev) on the full gateway:
the window's state is written to the store with every batch. Prints events/s (from
the first publish until the route has taken every reading) and the gateway's RSS,
idle and peak, with the machine yardstick of the other benchmarks.

Usage: python bench/window.py [--events 1000000] [--groups 10000] [--publishers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.spine import python_speed, rss_mb  # noqa: E402
from tests import servers  # noqa: E402
from tests.e2e.harness import GatewayProcess  # noqa: E402
from tests.e2e.load import Lanes  # noqa: E402


def route_counts(gw: GatewayProcess) -> dict[str, float]:
    """The route's counters from /metrics: received, emitted."""
    url = f"http://127.0.0.1:{gw.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        for name in ("received", "emitted"):
            if line.startswith(f'edge_stream_route_{name}_total{{route="minute"}}'):
                found[name] = float(line.rsplit(" ", 1)[1])
    return found


SPAN_S = 300  # event time covered by the readings: 5 one-minute windows per group


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--publishers", type=int, default=4)
    args = parser.parse_args()
    workspace = servers.Workspace()
    folder = Path(tempfile.mkdtemp(prefix="bench-window-"))
    try:
        mq = workspace.mosquitto()
        config = {
            "mqtt": {"url": mq.url},
            "sources": {
                "plant": {"type": "mqtt", "topics": ["w/#"], "qos": 1, "client_id": "bench-w"}
            },
            "routes": {
                "minute": {
                    "match": "w/#",
                    "processors": [
                        {
                            "type": "window",
                            "kind": "tumbling",
                            "size": "1m",
                            "time": "event",
                            "time_field": "ts",
                            "allowed_lateness": "60s",
                            "group_by": "field.dev",
                            "aggregates": {"v": ["count", "avg", "min", "max", "stddev"]},
                            "topic": "agg/{group}",
                        }
                    ],
                    "sinks": ["files"],
                }
            },
            "sinks": {"files": {"type": "file", "path": str(folder / "out" / "agg.jsonl")}},
        }
        gw = GatewayProcess(folder, config)
        gw.start()
        assert gw.proc is not None
        time.sleep(3)
        idle = rss_mb(gw.proc.pid)
        lanes = Lanes(mq.port, folder)
        base = 1_700_000_000.0
        n, p = args.events, args.publishers
        for lane in range(p):
            lines = [
                json.dumps(
                    {"dev": s % args.groups, "v": s % 1000 * 0.1, "ts": base + s * SPAN_S / n}
                )
                for s in range(lane, n, p)
            ]
            lanes.add(f"w/lane{lane}", f"bench-w-{lane}", lines)
        started = time.monotonic()
        lanes.start()
        peak = 0.0
        while (got := int(route_counts(gw).get("received", 0))) < n:
            peak = max(peak, rss_mb(gw.proc.pid))
            if lanes.errors:
                lanes.join()
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        lanes.join()
        emitted = int(route_counts(gw).get("emitted", 0))
        peak = max(peak, rss_mb(gw.proc.pid, "VmHWM"))
        gw.stop()
        print("\n== Edge Stream window benchmark: MQTT (QoS 1) -> 1-minute window -> file ==")
        print(
            f"machine: {os.cpu_count()} cores; all processes local;"
            f" sum(range(1000)) takes {python_speed():.1f} µs here"
        )
        print(
            f"throughput: {got} events over {args.groups} groups, 5 aggregates, in"
            f" {elapsed:.1f} s = {got / elapsed:,.0f} events/s; {emitted} windows closed"
        )
        print(f"rss: idle {idle:.1f} MB, peak {peak:.1f} MB")
    finally:
        workspace.close()


if __name__ == "__main__":
    main()

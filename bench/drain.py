"""Drain rate after an outage, end to end: 200,000 buffered messages through the real gateway.

For each sink (postgres, mysql on MariaDB, redis in stream mode, mqtt to a second
Mosquitto, amqp to RabbitMQ: a topic exchange and one durable queue bound by `#`, nats
into a 3-replica JetStream stream on a 3-node cluster), one `edge-stream run` process
takes messages from a broker: the upstream of the sink is stopped, --messages readings
are published with several `mosquitto_pub -l`
processes and buffered in the gateway's store, then the upstream is started again and
the time until the last row is delivered is measured (the gateway's /api/status, polled
every 20 ms: the sink's depth back at 0). Meanwhile a paced ingest of --live msg/s goes
to another sink (a file) through the same gateway, and its backlog is reported: ingest
must keep flowing while the backlog drains. Every message is then counted upstream.

rows/s is counted from the moment the upstream accepts connections again to the last
row delivered, so it includes the sink's reconnect (its retry backoff is set to
100 ms .. 500 ms here; the default, up to 30 s, would measure the backoff instead).

Targets on the project's 2-core machine: Postgres >= 25k rows/s, MySQL >= 15k rows/s,
Redis >= 30k entries/s, MQTT >= 10k msg/s, AMQP >= 10k msg/s (persistent, confirmed),
NATS >= 10k msg/s. `http` (the webhook sink, batches POSTed as JSON arrays to a local
aiohttp receiver in its own process that appends each request to a file; at least once,
so `arrived` may exceed the count) has no target of the project's; 10k msg/s is printed
as a yardstick.

Usage: python bench/drain.py [--messages 200000] [--publishers 4] [--live 500]
                             [--only postgres,mysql,redis,mqtt,amqp,nats,http] [--batch N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path: the repository comes first, so that `tests`
# is this project's package, whatever `tests` package an installed library may ship.
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402

from tests import servers  # noqa: E402
from tests.e2e.harness import GatewayProcess, wait_for  # noqa: E402
from tests.e2e.load import Lanes  # noqa: E402
from tests.e2e.upstreams import (  # noqa: E402
    AmqpUpstream,
    HttpUpstream,
    MqttRoot,
    MysqlUpstream,
    NatsUpstream,
    PostgresUpstream,
    RedisUpstream,
    Upstream,
)

TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = {
    "postgres": 25_000,
    "mysql": 15_000,
    "redis": 30_000,
    "mqtt": 10_000,
    "amqp": 10_000,
    "nats": 10_000,
    "http": 10_000,
}
UNITS = {
    "postgres": "rows/s",
    "mysql": "rows/s",
    "redis": "entries/s",
    "mqtt": "msg/s",
    "amqp": "msg/s",
    "nats": "msg/s",
    "http": "msg/s",
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class MqttCounter(MqttRoot):
    """The second broker; a `mosquitto_sub` process with a persistent session counts.

    The session (and its subscription) is made before the broker stops, so the broker
    queues for it whatever the gateway publishes before the counter reconnects.
    """

    def __init__(self, broker: servers.Mosquitto, root: str, folder: Path) -> None:
        super().__init__(broker, root)
        self.out = folder / f"{root}.sub"
        self.proc: subprocess.Popen[bytes] | None = None
        self._sub(["-W", "1"]).wait()  # subscribe once, persistently, then leave

    def _sub(self, extra: list[str]) -> subprocess.Popen[bytes]:
        cmd = [
            "mosquitto_sub",
            "-h",
            self.server.host,
            "-p",
            str(self.server.port),
            "-q",
            "1",
            "-c",
            "-i",
            f"count-{self.root}",
            "-t",
            f"{self.root}/#",
            *extra,
        ]
        with self.out.open("ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        super().start()
        self.proc = self._sub([])

    def seqs(self) -> list[int]:
        return [int(json.loads(line)["seq"]) for line in self.out.read_bytes().splitlines()]

    def count(self) -> int:
        return self.out.read_bytes().count(b"\n")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


class PacedPublisher(threading.Thread):
    """Publishes `rate` QoS 1 messages per second until stopped."""

    def __init__(self, port: int, topic: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.topic, self.rate = port, topic, rate
        self.sent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"live-{self.topic}")
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        started = time.monotonic()
        while not self.stopping.is_set():
            client.publish(f"{self.topic}/x", json.dumps({"seq": self.sent}), qos=1)
            self.sent += 1
            ahead = self.sent / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        client.disconnect()
        client.loop_stop()


def publish_backlog(port: int, prefix: str, total: int, publishers: int, folder: Path) -> None:
    """`total` readings {"seq": n, ...} from several `mosquitto_pub -l` lanes."""
    per = total // publishers
    lanes = Lanes(port, folder)
    for p in range(publishers):
        lines = [
            json.dumps({"seq": s, "temp": 20 + s % 10, "hum": 40 + s % 7})
            for s in range(p * per, (p + 1) * per)
        ]
        lanes.add(f"{prefix}/dev{p}/telemetry", f"pub-{prefix}-{p}", lines)
    lanes.start()
    lanes.join()


def drain(
    kind: str,
    up: Upstream,
    broker: servers.Mosquitto,
    folder: Path,
    total: int,
    publishers: int,
    live_rate: float,
    batch: int | None,
) -> dict[str, Any]:
    name = f"drain_{kind}"
    sink = {**up.sink(), "retry": {"initial": "100ms", "max": "500ms"}}
    if batch:
        sink["batch"] = {"max_rows": batch}
    config = {
        "mqtt": {"url": broker.url},
        "sources": {
            "plant": {
                "type": "mqtt",
                "topics": [f"{name}/#", f"live_{kind}/#"],
                "qos": 1,
                "client_id": f"gw-{name}",
            },
        },
        "routes": {
            "backlog": {"match": f"{name}/#", "sinks": ["upstream"]},
            "live": {"match": f"live_{kind}/#", "sinks": ["live"]},
        },
        "sinks": {"upstream": sink, "live": {"type": "file", "path": "live.jsonl"}},
    }
    gw_dir = folder / name
    gw_dir.mkdir()
    gw = GatewayProcess(gw_dir, config)
    gw.start()
    live = PacedPublisher(broker.port, f"live_{kind}", live_rate)
    try:
        wait_for(lambda: gw.status()["sinks"]["upstream"]["state"] == "running", 30, "connect")
        up.stop()
        started = time.monotonic()
        publish_backlog(broker.port, name, total, publishers, folder)
        wait_for(
            lambda: gw.status()["sinks"]["upstream"]["depth"] >= total, 600, "the backlog stored"
        )
        buffered_in = time.monotonic() - started

        live.start()
        wait_for(lambda: gw.status()["sinks"]["live"]["delivered"] > 0, 30, "live ingest")
        live_before = gw.status()["sinks"]["live"]["delivered"]
        assert gw.proc is not None
        up.start()
        restarted = time.monotonic()
        cpu_before = cpu_seconds(gw.proc.pid)
        first = None
        live_depth_max = 0
        while True:
            sinks = gw.status()["sinks"]
            now = time.monotonic()
            live_depth_max = max(live_depth_max, sinks["live"]["depth"])
            if first is None and sinks["upstream"]["delivered"] > 0:
                first = now
            if sinks["upstream"]["depth"] == 0 and sinks["upstream"]["delivered"] >= total:
                done = now
                break
            if now - restarted > 600:
                raise SystemExit(f"benchmark: {kind} did not drain within 600 s")
            time.sleep(0.02)
        cpu = cpu_seconds(gw.proc.pid) - cpu_before
        live_delivered = sinks["live"]["delivered"] - live_before
        live.stopping.set()
        live.join(10)
        wait_for(lambda: up.count() >= total, 120, f"every row counted in {kind}")
        arrived = up.count()
        assert gw.stop() == 0, gw.log()
    finally:
        live.stopping.set()
        gw.close()
    seconds = done - restarted
    return {
        "kind": kind,
        "rate": total / seconds,
        "seconds": seconds,
        "reconnect": (first or done) - restarted,
        "drain_rate": total / (done - (first or restarted)),
        "buffered_in": buffered_in,
        "arrived": arrived,
        "live_rate": live_delivered / seconds,
        "live_depth_max": live_depth_max,
        "cpu_per_10k": cpu / total * 10_000,
        "cpu_share": cpu / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--live", type=float, default=500)
    parser.add_argument("--batch", type=int, default=None, help="sink batch.max_rows")
    parser.add_argument("--only", default="postgres,mysql,redis,mqtt,amqp,nats,http")
    args = parser.parse_args()
    kinds = [k for k in TARGETS if k in args.only.split(",")]
    workspace = servers.Workspace()
    folder = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    results = []
    try:
        broker = workspace.mosquitto()
        for kind in kinds:
            table = f"drain_{int(time.time())}"
            up: Upstream
            if kind == "postgres":
                up = PostgresUpstream(workspace.postgres(), table)
            elif kind == "mysql":
                up = MysqlUpstream(workspace.mariadb(), table)
            elif kind == "redis":
                up = RedisUpstream(workspace.redis(), table)
            elif kind == "amqp":
                up = AmqpUpstream(workspace.rabbitmq(), table)
            elif kind == "nats":
                up = NatsUpstream(workspace.nats_cluster(), table)
            elif kind == "http":
                up = HttpUpstream(workspace.http_receiver())
            else:
                up = MqttCounter(workspace.mosquitto(), table, folder)
            try:
                r = drain(
                    kind, up, broker, folder, args.messages, args.publishers, args.live, args.batch
                )
            finally:
                up.close()
            results.append(r)
            print(
                f"  {kind}: {r['rate']:,.0f} {UNITS[kind]} restart -> last row"
                f" ({r['seconds']:.1f} s; reconnect {r['reconnect']:.2f} s, then"
                f" {r['drain_rate']:,.0f}/s); {r['arrived']:,} arrived; buffering took"
                f" {r['buffered_in']:.1f} s; live ingest {r['live_rate']:.0f} msg/s,"
                f" its depth at most {r['live_depth_max']}; gateway CPU"
                f" {r['cpu_per_10k']:.2f} s per 10k rows, {r['cpu_share']:.0%} of a core",
                flush=True,
            )
    finally:
        workspace.close()
        shutil.rmtree(folder, ignore_errors=True)
    batch = f"batch.max_rows {args.batch}" if args.batch else "default batch settings"
    print(
        f"\n== Drain after an outage: {args.messages:,} buffered messages through the gateway"
        f" ({batch}); live ingest {args.live:.0f} msg/s to a file sink meanwhile =="
    )
    print(f"machine: {os.cpu_count()} cores; broker, gateway, servers and publishers all local")
    for r in results:
        kind = r["kind"]
        ok = r["rate"] >= TARGETS[kind]
        print(
            f"{kind:<9} {r['rate']:>9,.0f} {UNITS[kind]:<9} (target >= {TARGETS[kind]:,})"
            f" {'ok' if ok else 'MISSED'}; live ingest kept {r['live_rate']:.0f} msg/s,"
            f" live depth <= {r['live_depth_max']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

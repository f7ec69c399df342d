"""Reload by diff, end to end: how long a SIGHUP takes to serve the new config, and how
long intake pauses meanwhile, with the old whole-engine restart as the yardstick.

One `edge-stream run` process takes a steady --rate msg/s of QoS 1 messages (one paho
client, each message stamped with its send time) from Mosquitto into a PostgreSQL table,
while the config file is rewritten and SIGHUP sent, --rounds times for each kind:

  route    add, then remove, a route (to the same table) for a topic nobody publishes
  sink     add, then remove, a second PostgreSQL sink and a route to it
  restart  change mqtt.keepalive: the one kind of change that still runs a new engine
           (and a new MQTT connection), as every reload did before reload by diff

"SIGHUP -> serving" is the time from the signal to the gateway's record of the applied
reload (`last_reload.at` in /api/status, the same clock): the new router is in place, a
new sink has connected (the reload waits for that). For the added sink, the time to its
first delivered row is printed too. The intake pause of a reload is the longest wait of
a message sent in the two seconds after the SIGHUP, from its send time to the creation
of its FlowFile (the gateway reading it), above the median wait of the whole run.

Usage: python bench/reload.py [--rate 1000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path: the repository comes first, so that `tests`
# is this project's package, whatever `tests` package an installed library may ship.
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402

from tests import servers  # noqa: E402
from tests.e2e.harness import GatewayProcess, wait_for  # noqa: E402

WINDOW_S = 2.0  # a reload's pause is looked for in the messages sent this long after it


class StampedPublisher(threading.Thread):
    """Publishes `rate` QoS 1 messages {"seq": n, "sent": ns} per second until stopped."""

    def __init__(self, port: int, topic: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.topic, self.rate = port, topic, rate
        self.sent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{self.topic}")
        client.max_inflight_messages_set(200)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        started = time.monotonic()
        infos = []
        while not self.stopping.is_set():
            body = {"seq": self.sent, "sent": time.time_ns()}
            infos.append(client.publish(f"{self.topic}/{self.sent % 10}", json.dumps(body), qos=1))
            self.sent += 1
            ahead = self.sent / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        for info in infos:  # every message reaches the broker before the client leaves
            info.wait_for_publish(60)
        client.disconnect()
        client.loop_stop()


class Bench:
    def __init__(self, gw: GatewayProcess, postgres: servers.Postgres, prefix: str) -> None:
        self.gw = gw
        self.postgres = postgres
        self.prefix = prefix
        self.config: dict[str, Any] = yaml.safe_load(gw.config_path.read_text())
        self.reloads: list[tuple[str, float, float]] = []  # (kind, SIGHUP wall time, took s)
        self.first_row: list[float] = []  # added sink: SIGHUP -> its first delivered row, s

    def reload(self, kind: str, change: Any, record: bool = True) -> float:
        gw = self.gw
        last = gw.status()["config"]["last_reload"]
        change(self.config)
        gw.config_path.write_text(yaml.safe_dump(self.config))
        assert gw.proc is not None
        sighup = time.time()
        gw.proc.send_signal(signal.SIGHUP)
        reload = wait_for(
            lambda: (r := gw.status()["config"]["last_reload"]) != last and r,
            60,
            f"the outcome of a {kind} reload",
            interval=0.005,
        )
        if reload["outcome"] != "applied":
            raise SystemExit(f"benchmark: a {kind} reload was not applied: {reload}")
        took = reload["at"] - sighup
        if record:
            self.reloads.append((kind, sighup, took))
        return sighup

    def route(self, on: bool) -> None:
        def change(c: dict[str, Any]) -> None:
            if on:
                c["routes"]["probe"] = {"match": "probe/#", "sinks": ["main"]}
            else:
                del c["routes"]["probe"]

        self.reload("route", change, record=on)

    def sink(self, on: bool, n: int) -> None:
        def change(c: dict[str, Any]) -> None:
            if on:
                c["sinks"]["side"] = {
                    "type": "postgres",
                    "dsn": self.postgres.dsn,
                    "table": f"{self.prefix}_side_{n}",
                }
                c["routes"]["side"] = {"match": f"{self.prefix}/#", "sinks": ["side"]}
            else:
                del c["routes"]["side"]
                del c["sinks"]["side"]

        sighup = self.reload("sink", change, record=on)
        if on:
            wait_for(
                lambda: self.gw.status()["sinks"]["side"]["delivered"] > 0,
                30,
                "the added sink's first row",
                interval=0.005,
            )
            self.first_row.append(time.time() - sighup)

    def restart(self) -> None:
        def change(c: dict[str, Any]) -> None:
            keepalive = c["mqtt"].get("keepalive", 60)
            c["mqtt"]["keepalive"] = 61 if keepalive == 60 else 60

        self.reload("restart", change)
        wait_for(
            lambda: all(s["state"] == "running" for s in self.gw.status()["sources"].values()),
            30,
            "the source running again",
        )


def pauses(rows: list[tuple[int, int]], reloads: list[tuple[str, float, float]]) -> Any:
    """(median wait, {kind: [pause of each reload]}); rows are (sent ns, created ns)."""
    waits = sorted((created - sent) / 1e9 for sent, created in rows)
    median = statistics.median(waits)
    by_kind: dict[str, list[float]] = {}
    ordered = sorted(rows)
    for kind, sighup, _ in reloads:
        start, end = int(sighup * 1e9), int((sighup + WINDOW_S) * 1e9)
        window = [(c - s) / 1e9 for s, c in ordered if start <= s < end]
        by_kind.setdefault(kind, []).append(max(window, default=0.0) - median)
    return median, by_kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    workspace = servers.Workspace()
    folder = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    prefix = f"reload_{int(time.time())}"
    gw: GatewayProcess | None = None
    try:
        broker = workspace.mosquitto()
        postgres = workspace.postgres()
        config = {
            "gateway": {"id": "bench-reload", "watch_config": False},
            "mqtt": {"url": broker.url},
            "sources": {"plant": {"type": "mqtt", "topics": [f"{prefix}/#"], "qos": 1}},
            "routes": {"all": {"match": f"{prefix}/#", "sinks": ["main"]}},
            "sinks": {"main": {"type": "postgres", "dsn": postgres.dsn, "table": f"{prefix}_main"}},
        }
        gw = GatewayProcess(folder, config)
        gw.start()
        bench = Bench(gw, postgres, prefix)
        load = StampedPublisher(broker.port, prefix, args.rate)
        load.start()
        wait_for(lambda: gw.status()["sinks"]["main"]["delivered"] > 0, 30, "the load flowing")
        time.sleep(2)
        for n in range(args.rounds):
            for step in (
                lambda: bench.route(True),
                lambda: bench.route(False),
                lambda n=n: bench.sink(True, n),
                lambda: bench.sink(False, 0),
            ):
                step()
                time.sleep(WINDOW_S)
        for _ in range(min(args.rounds, 3)):
            bench.restart()
            time.sleep(WINDOW_S)
        load.stopping.set()
        load.join(70)
        sent = load.sent
        # (not `ingested`: it counts from 0 again in the engine a restart runs)
        count = f"SELECT count(*) FROM {prefix}_main"
        wait_for(lambda: postgres.fetch(count)[0][0] >= sent, 60, f"{sent} messages in main")
        assert gw.stop() == 0, gw.log()
        rows = [
            (int(r[0]), int(r[1]))
            for r in postgres.fetch(
                f"SELECT (payload->>'sent')::bigint, (extract(epoch from ts) * 1e9)::bigint"
                f" FROM {prefix}_main"
            )
        ]
        if len(rows) < sent:
            raise SystemExit(f"benchmark: {sent - len(rows)} of {sent} messages missing")
    finally:
        if gw is not None:
            gw.close()
        workspace.close()
        shutil.rmtree(folder, ignore_errors=True)

    median, by_kind = pauses(rows, bench.reloads)
    took: dict[str, list[float]] = {}
    for kind, _, seconds in bench.reloads:
        took.setdefault(kind, []).append(seconds)

    def ms(values: list[float]) -> str:
        return (
            f"median {statistics.median(values) * 1000:6.0f} ms, max {max(values) * 1000:6.0f} ms"
        )

    print(
        f"\n== Reload by diff: SIGHUP -> new config serving, under {args.rate:.0f} QoS 1 msg/s"
        f" into PostgreSQL ({args.rounds} rounds; yardstick: the whole-engine restart) =="
    )
    print(f"machine: {os.cpu_count()} cores; broker, gateway, PostgreSQL and publisher all local")
    print(
        f"messages: {len(rows):,} stored of {sent:,} sent;"
        f" median intake wait {median * 1000:.1f} ms"
    )
    labels = {
        "route": "route only (add a route)",
        "sink": "sink change (add a postgres sink + route)",
        "restart": "engine restart (mqtt.keepalive; yardstick)",
    }
    for kind in ("route", "sink", "restart"):
        if kind not in took:
            continue
        print(
            f"{labels[kind]:<44} SIGHUP -> serving {ms(took[kind])};"
            f" longest intake pause {max(by_kind[kind]) * 1000:5.0f} ms"
        )
    if bench.first_row:
        print(f"{'  the added sink: SIGHUP -> its first row':<44} {'':18}{ms(bench.first_row)}")
    quick = max(max(by_kind["route"]), max(by_kind["sink"]))
    print(
        f"longest intake pause during diff reloads: {quick * 1000:.0f} ms"
        f" (target: under one batch, {500 / args.rate * 1000:.0f} ms at buffer.batch_max 500);"
        f" during engine restarts: {max(by_kind['restart']) * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

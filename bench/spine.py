"""End-to-end benchmark of the spine: MQTT broker -> gateway -> PostgreSQL.

Broker, PostgreSQL, the gateway and the publishers all run as separate
processes on this machine. Prints:
  - sustained msgs/s from the first publish to the last row committed,
  - p50/p99 publish->row latency at each paced rate of --latency-rate (`mosquitto_pub -l`
    fed paced lines, QoS 1; the rate reached is printed too, since a busy machine may
    not keep it), and the gateway's part of it (receipt -> row),
  - gateway RSS idle and peak, and gateway CPU seconds per 10,000 messages.

With --pin CPU the gateway runs on that CPU alone and the broker, PostgreSQL, the
publishers and this script on the others (as `taskset`: children inherit the affinity
of the thread that starts them); the affinity of every gateway thread is checked.

Usage: python bench/spine.py [--messages 200000] [--publishers 4]
                             [--latency-rate 1000,10000] [--latency-seconds 20] [--repeat 1]
       python bench/spine.py --pin 1 --latency-rate ''   (one core for the gateway)
       python bench/spine.py --idle-only 5   (only the idle RSS, of 5 fresh gateways)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path: the repository comes first, so that `tests`
# is this project's package, whatever `tests` package an installed library may ship.
sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402
from tests.e2e.harness import GatewayProcess, wait_for  # noqa: E402
from tests.e2e.load import SESSION_MAX, Lanes  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy since boot (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its children that are running (a database's backends)."""
    total = cpu_seconds(pid)
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid:
            total += (int(stat[11]) + int(stat[12])) / TICKS
    return total


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have ended (the publishers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def python_speed() -> float:
    """Microseconds for sum(range(1000)) in this interpreter: a yardstick for the machine,
    so figures taken on a busy or throttled host can be told apart."""
    import timeit

    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def machine() -> str:
    """The load average and the Python yardstick, printed with every figure."""
    one, five, _ = os.getloadavg()
    return (
        f"load average {one:.2f} (1 min) {five:.2f} (5 min);"
        f" sum(range(1000)) takes {python_speed():.1f} µs here"
    )


def yardstick() -> str:
    """machine() in short: `load 4.5, 21.3 µs`."""
    return f"load {os.getloadavg()[0]:.1f}, {python_speed():.1f} µs"


def affinity(pid: int) -> set[str]:
    """The CPU lists (Cpus_allowed_list) of every thread of process `pid`."""
    lists = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                lists.add(line.split()[1])
    return lists


def count_rows(pg: servers.Postgres, table: str) -> int:
    return int(pg.fetch(f"SELECT count(*) FROM {table}")[0][0])


def make_table(pg: servers.Postgres, table: str) -> None:
    pg.execute(
        f"CREATE TABLE {table} (id uuid PRIMARY KEY, topic text NOT NULL, ts timestamptz NOT NULL,"
        " attributes jsonb NOT NULL, payload jsonb, raw bytea,"
        " committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


def throughput(
    pg: servers.Postgres,
    mq: servers.Mosquitto,
    gw: GatewayProcess,
    table: str,
    total: int,
    publishers: int,
) -> dict[str, float]:
    assert gw.proc is not None
    pid = gw.proc.pid
    per = total // publishers
    lanes = Lanes(mq.port, Path(tempfile.mkdtemp(prefix="bench-")))
    for p in range(publishers):
        lines = [json.dumps({"seq": s, "v": s * 0.5}) for s in range(p * per, (p + 1) * per)]
        lanes.add(f"{table}/dev{p}/telemetry", f"bench-pub-{p}", lines)
    cpu0 = cpu_seconds(pid)
    others0 = (cpu_seconds(mq.pid or 0), tree_cpu_seconds(pg.pid or 0), machine_busy_seconds())
    pubs0 = children_cpu_seconds()
    started = time.time()
    lanes.start()
    n = per * publishers
    peak = 0.0
    seen, moved = 0, time.monotonic()
    while (rows := count_rows(pg, table)) < n:
        peak = max(peak, rss_mb(pid))
        if rows != seen:
            seen, moved = rows, time.monotonic()
        elif lanes.errors:
            lanes.join()  # raises with what went wrong
        elif time.monotonic() - moved > 30:
            raise SystemExit(
                f"benchmark: stuck at {rows} of {n} rows for 30 s; see the broker's log"
                f" under {mq.dir} and the gateway's log {gw.log_path}"
            )
        time.sleep(0.5)
    cpu = cpu_seconds(pid) - cpu0
    window = time.time() - started
    broker = cpu_seconds(mq.pid or 0) - others0[0]
    database = tree_cpu_seconds(pg.pid or 0) - others0[1]
    busy = machine_busy_seconds() - others0[2]
    lanes.join()
    publishing = children_cpu_seconds() - pubs0  # the mosquitto_pub processes, reaped
    last = pg.fetch(f"SELECT extract(epoch FROM max(committed_at)) FROM {table}")[0][0]
    elapsed = float(last) - started
    per_10k = 10_000 / n
    return {
        "messages": n,
        "seconds": elapsed,
        "msgs_per_s": n / elapsed,
        "cpu_s_per_10k": cpu * per_10k,
        "rss_peak_mb": max(peak, rss_mb(pid)),
        # Where the machine's CPU went while it ran (to the last row seen, at most 0.5 s
        # after it): the gateway, the broker, the database, the publishers, and the rest
        # (this script, anything else on the machine).
        "busy_share": busy / (window * (os.cpu_count() or 1)),
        "broker_s_per_10k": broker * per_10k,
        "database_s_per_10k": database * per_10k,
        "publishers_s_per_10k": publishing * per_10k,
        "rest_s_per_10k": (busy - cpu - broker - database - publishing) * per_10k,
    }


def latency(
    pg: servers.Postgres, mq: servers.Mosquitto, table: str, rate: int, seconds: int
) -> dict[str, float]:
    """Publish `rate` msg/s for `seconds` through `mosquitto_pub -l` (QoS 1), each line
    stamped with the time it is handed over; p50/p99 of stamp -> row committed.

    mosquitto_pub rather than a Python client: at 10,000 msg/s on a busy machine, paho
    in this process sent about 4,500/s while its publish() calls kept pace. Lines are
    written every millisecond, as many as are due. A session takes at most SESSION_MAX
    messages (tests/e2e/load.py says why); the next one is connected before it is needed.
    """

    def publisher(k: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["mosquitto_pub", "-p", str(mq.port), "-q", "1", "-t", f"{table}/lat/telemetry",
             "-l", "-i", f"bench-latency-{rate}-{k}"],
            stdin=subprocess.PIPE,
        )  # fmt: skip

    pg.execute(f"TRUNCATE {table}")
    n = rate * seconds
    procs = [publisher(0), publisher(1)]
    time.sleep(0.5)  # both connected
    current, in_session = procs[0], 0
    start = time.time()
    i = 0
    while i < n:
        due = min(n, int((time.time() - start) * rate) + 1)
        lines = []
        while i < due:
            lines.append(b'{"seq": %d, "t": %.6f}\n' % (i, time.time()))
            i += 1
            in_session += 1
            if in_session == SESSION_MAX:
                assert current.stdin is not None
                current.stdin.write(b"".join(lines))
                current.stdin.close()
                lines, in_session = [], 0
                current = procs[-1]
                procs.append(publisher(len(procs)))
        assert current.stdin is not None
        current.stdin.write(b"".join(lines))
        current.stdin.flush()
        time.sleep(max(0.0, start + i / rate - time.time()))
    sent = n / (time.time() - start)
    for proc in procs:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
    codes = [proc.wait(60) for proc in procs]
    if any(codes):
        raise SystemExit(f"benchmark: mosquitto_pub exited {codes} in the latency phase")
    wait_for(lambda: count_rows(pg, table) >= n, 120, "latency rows")
    # ts is when the gateway made the FlowFile (on receipt): committed_at - ts is the
    # gateway's part, the rest the publishing client's and the broker's.
    rows = pg.fetch(
        f"SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY"
        f" extract(epoch FROM committed_at) - (payload->>'t')::float8),"
        f" percentile_cont(0.99) WITHIN GROUP (ORDER BY"
        f" extract(epoch FROM committed_at - ts)) FROM {table}"
    )
    (p50, p99), gateway_p99 = rows[0]
    return {"messages": n, "rate": rate, "sent_per_s": sent, "p50_ms": p50 * 1000,
            "p99_ms": p99 * 1000, "gateway_p99_ms": gateway_p99 * 1000}  # fmt: skip


def gateway_config(mq: servers.Mosquitto, pg: servers.Postgres) -> dict[str, Any]:
    """The benchmarked gateway: MQTT QoS 1 into two PostgreSQL sinks, the console on
    (tests/e2e/harness.py gives it a web port)."""
    return {
        "mqtt": {"url": mq.url},
        "sources": {
            "plant": {
                "type": "mqtt",
                "topics": ["bench_tp/#", "bench_lat/#"],
                "qos": 1,
                "client_id": "bench-gw",
            }
        },
        "routes": {
            "tp": {"match": "bench_tp/#", "sinks": ["tp"]},
            "lat": {"match": "bench_lat/#", "sinks": ["lat"]},
        },
        "sinks": {
            "tp": {
                "type": "postgres",
                "dsn": pg.dsn,
                "table": "bench_tp",
                "batch": {"max_rows": 2000},
            },
            "lat": {"type": "postgres", "dsn": pg.dsn, "table": "bench_lat"},
        },
    }


def idle_rss(folder: Path, mq: servers.Mosquitto, pg: servers.Postgres) -> float:
    """RSS of a freshly started gateway once idle, as main() measures it: 3 s after start."""
    gw = GatewayProcess(folder, gateway_config(mq, pg))
    gw.start()
    try:
        assert gw.proc is not None
        time.sleep(3)
        return rss_mb(gw.proc.pid)
    finally:
        gw.stop()
        gw.close()


# The targets of issue 15 these figures answer (bench/targets.py prints them all).
TARGET_MSGS_PER_S = 30_000
TARGET_PINNED_MSGS_PER_S = 12_000
TARGET_CPU_PER_10K = 0.3
TARGET_P99_MS = {1000: 30.0, 10_000: 100.0}
TARGET_IDLE_MB = 50
TARGET_PEAK_MB = 150


def measure(
    messages: int = 200_000,
    publishers: int = 4,
    latency_rates: tuple[int, ...] = (1000, 10_000),
    latency_seconds: int = 20,
    pin: int | None = None,
    repeat: int = 1,
) -> dict[str, Any]:
    """One gateway, fresh servers: idle RSS, latency at each rate, throughput, peak RSS.

    The throughput run is made `repeat` times on the same gateway: its figures are the
    median run's (by msgs/s), the CPU per 10k the median of all, and `runs` holds each.

    With `pin`, the gateway runs on that CPU and everything else on the other CPUs."""
    everywhere = os.sched_getaffinity(0)
    others = everywhere - {pin} if pin is not None else everywhere
    if pin is not None and (pin not in everywhere or not others):
        raise SystemExit(f"benchmark: --pin {pin} needs CPU {pin} and another: have {everywhere}")
    workspace = servers.Workspace()
    folder = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    try:
        os.sched_setaffinity(0, others)  # the servers and the publishers inherit it
        mq = workspace.mosquitto()
        pg = workspace.postgres()
        make_table(pg, "bench_tp")
        make_table(pg, "bench_lat")
        gw = GatewayProcess(folder, gateway_config(mq, pg))
        if pin is not None:
            os.sched_setaffinity(0, {pin})
        try:
            gw.start()
        finally:
            os.sched_setaffinity(0, others)
        assert gw.proc is not None
        time.sleep(3)
        idle = rss_mb(gw.proc.pid)
        lat = [latency(pg, mq, "bench_lat", rate, latency_seconds) for rate in latency_rates]
        runs = []
        for k in range(repeat):
            if k:
                pg.execute("TRUNCATE bench_tp")
            runs.append(throughput(pg, mq, gw, "bench_tp", messages, publishers))
        tp = dict(sorted(runs, key=lambda run: run["msgs_per_s"])[len(runs) // 2])
        tp["cpu_s_per_10k"] = statistics.median(run["cpu_s_per_10k"] for run in runs)
        tp["runs"] = runs
        peak = rss_mb(gw.proc.pid, "VmHWM")
        pinned = {
            "gateway": sorted(affinity(gw.proc.pid)),
            "broker": sorted(affinity(mq.pid or 0)),
            "database": sorted(affinity(pg.pid or 0)),
        }
        gw.stop()
    finally:
        os.sched_setaffinity(0, everywhere)
        workspace.close()
    if pin is not None and pinned["gateway"] != [str(pin)]:
        raise SystemExit(f"benchmark: the gateway's threads ran on {pinned['gateway']}, not {pin}")
    return {
        "idle_mb": idle,
        "latency": lat,
        "throughput": tp,
        "peak_mb": peak,
        "affinity": pinned,
        "machine": machine(),
        "yardstick": yardstick(),
    }


def report(r: dict[str, Any]) -> None:
    """Print what `measure` found, each figure with its target."""
    tp = r["throughput"]
    print(f"machine: {os.cpu_count()} cores; all processes local; {r['machine']}")
    cpus = {name: ",".join(lists) for name, lists in r["affinity"].items()}
    print(f"CPUs: gateway {cpus['gateway']}, broker {cpus['broker']},"
          f" database {cpus['database']} (Cpus_allowed_list of every thread)")  # fmt: skip
    print(
        f"throughput: {tp['messages']} msgs in {tp['seconds']:.1f} s = "
        f"{tp['msgs_per_s']:,.0f} msgs/s (target >= {TARGET_MSGS_PER_S:,};"
        f" pinned to one core >= {TARGET_PINNED_MSGS_PER_S:,})"
    )
    if len(tp["runs"]) > 1:
        print(
            f"  (the median of {len(tp['runs'])} runs: "
            + ", ".join(f"{run['msgs_per_s']:,.0f}" for run in tp["runs"])
            + " msgs/s at "
            + ", ".join(f"{run['cpu_s_per_10k']:.2f}" for run in tp["runs"])
            + " CPU-s per 10k)"
        )
    print(f"cpu: {tp['cpu_s_per_10k']:.2f} CPU-s per 10k messages (target <= {TARGET_CPU_PER_10K})")
    print(
        f"the machine meanwhile: {tp['busy_share']:.0%} of its {os.cpu_count()} CPUs busy;"
        f" per 10k messages the gateway {tp['cpu_s_per_10k']:.2f}, broker"
        f" {tp['broker_s_per_10k']:.2f}, database {tp['database_s_per_10k']:.2f},"
        f" publishers {tp['publishers_s_per_10k']:.2f}, the rest (this script, other"
        f" work) {tp['rest_s_per_10k']:.2f} CPU-s"
    )
    for lat in r["latency"]:
        target = TARGET_P99_MS.get(lat["rate"])
        print(
            f"latency at {lat['rate']:,} msg/s (sent at {lat['sent_per_s']:,.0f}):"
            f" p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms"
            + (f" (target p99 <= {target:.0f} ms)" if target else "")
            + f"; receipt -> row p99 {lat['gateway_p99_ms']:.1f} ms"
        )
    print(f"rss: idle {r['idle_mb']:.1f} MB (target <= {TARGET_IDLE_MB}),"
          f" peak {r['peak_mb']:.1f} MB (target <= {TARGET_PEAK_MB})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument(
        "--latency-rate",
        default="1000,10000",
        help="paced rates (msg/s) of the latency phase, comma separated; '' for none",
    )
    parser.add_argument("--latency-seconds", type=int, default=20)
    parser.add_argument(
        "--repeat", type=int, default=1, help="throughput runs on the same gateway (median)"
    )
    parser.add_argument(
        "--pin",
        type=int,
        metavar="CPU",
        help="the gateway on this CPU alone, broker, database and publishers on the others",
    )
    parser.add_argument(
        "--idle-only",
        type=int,
        metavar="RUNS",
        help="only the idle RSS, of RUNS fresh gateways (median, and each run)",
    )
    args = parser.parse_args()
    if args.idle_only:
        workspace = servers.Workspace()
        try:
            mq = workspace.mosquitto()
            pg = workspace.postgres()
            runs = [
                idle_rss(Path(tempfile.mkdtemp(prefix="bench-gw-")), mq, pg)
                for _ in range(args.idle_only)
            ]
        finally:
            workspace.close()
        print("\n== Edge Stream idle memory: the spine benchmark's gateway, console on ==")
        print(f"machine: {os.cpu_count()} cores; all processes local; {machine()}")
        shown = ", ".join(f"{r:.1f}" for r in runs)
        print(
            f"rss: idle {statistics.median(runs):.1f} MB median ({shown})"
            f" (target <= {TARGET_IDLE_MB})"
        )
        return
    rates = tuple(int(r) for r in args.latency_rate.split(",") if r.strip())
    r = measure(args.messages, args.publishers, rates, args.latency_seconds, args.pin, args.repeat)
    pinned = f", the gateway pinned to CPU {args.pin}" if args.pin is not None else ""
    print(f"\n== Edge Stream spine benchmark: MQTT (QoS 1) -> gateway -> PostgreSQL{pinned} ==")
    report(r)


if __name__ == "__main__":
    main()

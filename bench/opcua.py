"""OPC UA subscription throughput: 1,000 monitored items at a 100 ms publishing interval.

A separate process (tests/sources/opcua_server.py, asyncua's server) serves 1,000
Double variables and changes every one of them every 100 ms through its own write
path (10,000 changes/s offered). The gateway's `opcua` source, in this process,
subscribes to all of them (sampling 100 ms, publishing 100 ms, queue size 1) and
turns every notification into a FlowFile, as the engine would take them from `read()`.
Printed: values/s received against the 10,000/s offered, the gateway's CPU seconds
per 10k values (this process), and the server process's CPU, to tell which side is
the bottleneck (a process near 100% of one core is).

The machine is shared and noisy (2 cores, other engineers' tests): read the figures
as an order of magnitude and compare runs on the same machine only.

Usage: python bench/opcua.py [--items 1000] [--seconds 10] [--period 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config.schema import Problems, build_dataclass  # noqa: E402
from gateway.core.component import Context  # noqa: E402
from gateway.sources.opcua import OpcuaSource, OpcuaSourceConfig  # noqa: E402
from tests.servers import free_port  # noqa: E402

SERVER = ROOT / "tests" / "sources" / "opcua_server.py"


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(items: int, seconds: float, period: float) -> None:
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - once, before anything is measured
        [sys.executable, str(SERVER), "--port", str(port), "--items", str(items),
         "--period", str(period)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert server.stdout is not None
    if server.stdout.readline().strip() != b"ready":
        raise SystemExit("the OPC UA server did not start")
    try:
        problems = Problems()
        raw = {
            "type": "opcua",
            "url": f"opc.tcp://127.0.0.1:{port}/",
            "publishing_interval": f"{period * 1000:.0f}ms",
            "sampling_interval": f"{period * 1000:.0f}ms",
            "max_queue_bytes": "64MiB",
            "nodes": {f"v{i}": {"node": f"ns=2;s=V{i}"} for i in range(items)},
        }
        config = build_dataclass(OpcuaSourceConfig, raw, (), problems)
        assert not problems, problems.items
        source = OpcuaSource(config, Context(name="bench", kind="source"))
        t_connect = time.perf_counter()
        await source.connect()
        print(f"connected and subscribed {items} items in {time.perf_counter() - t_connect:.1f} s")
        # warm up: the first notifications carry every item's initial value
        warm_until = time.perf_counter() + 2.0
        while time.perf_counter() < warm_until:
            await source.read()
        got = 0
        first_tick = last_tick = None
        cpu0, srv0, t0 = time.process_time(), cpu_of(server.pid), time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            batch = await source.read()
            got += len(batch)
            if batch:  # each value is the server's tick number: count the ticks it made
                last_tick = json.loads(batch[-1].flowfile.content)["value"]
                first_tick = last_tick if first_tick is None else first_tick
        elapsed = time.perf_counter() - t0
        cpu, srv = time.process_time() - cpu0, cpu_of(server.pid) - srv0
        await source.close()
    finally:
        server.terminate()
        server.wait(10)
    offered = items / period
    rate = got / elapsed
    made = items * (last_tick - first_tick) / elapsed if first_tick is not None else 0.0
    print(f"{items} items changing every {period * 1000:.0f} ms (asked {offered:,.0f} values/s),"
          f" publishing interval {period * 1000:.0f} ms, {elapsed:.1f} s measured:")  # fmt: skip
    short = " (the server cannot keep up with what was asked here)" if made < 0.95 * offered else ""
    print(f"  the server made {made:,.0f} changes/s = {100 * made / offered:.0f}% of asked{short}")
    of_made = 100 * rate / made if made else 0.0
    print(f"  received {rate:,.0f} values/s = {100 * rate / offered:.0f}% of asked,"
          f" {of_made:.0f}% of made; dropped by the source {source.dropped}")  # fmt: skip
    per10k = cpu / got * 10000 if got else float("nan")
    print(f"  gateway (source) CPU {cpu:.2f} s = {100 * cpu / elapsed:.0f}% of a core,"
          f" {per10k:.3f} s per 10k values")  # fmt: skip
    print(f"  asyncua server CPU {srv:.2f} s = {100 * srv / elapsed:.0f}% of a core")
    side = "the asyncua server" if srv >= cpu else "the gateway"
    print(f"  busier side: {side}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  gateway process peak RSS {rss:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--period", type=float, default=0.1)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; server and gateway"
          " in separate processes; shared machine, noisy")  # fmt: skip
    asyncio.run(run(args.items, args.seconds, args.period))


if __name__ == "__main__":
    main()

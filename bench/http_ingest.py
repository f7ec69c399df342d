"""Ingest rate of the http source: single-object POSTs from concurrent clients, 200 = durable.

One `edge-stream run` process with an `http` source routed to a file sink; --clients
aiohttp clients (in this process, each its own connection) POST one small JSON object per
request, each waiting for its answer, which the gateway sends only after the store
commit. Printed: requests/s, answer latency p50/p99, the gateway's CPU seconds per 10k
requests. The yardstick is the same clients against a bare aiohttp server in its own
process that appends each request to a file and answers at once (tests/http_receiver.py):
what a listener costs without the commit before the answer.

Usage: python bench/http_ingest.py [--seconds 10] [--clients 4] [--linger 5ms]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests import servers  # noqa: E402
from tests.e2e.harness import GatewayProcess, free_port, wait_for  # noqa: E402

TOKEN = "bench-ingest-token-0123456789"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def load(url: str, clients: int, seconds: float) -> tuple[int, list[float]]:
    """`clients` loops POSTing for `seconds`: (requests answered 200, latencies)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    latencies: list[float] = []
    done = 0
    deadline = time.monotonic() + seconds

    async def client(n: int) -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            seq = 0
            while time.monotonic() < deadline:
                body = json.dumps({"client": n, "seq": seq, "temp": 21.5}).encode()
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise SystemExit(f"benchmark: answer {answer.status}")
                latencies.append(time.perf_counter() - started)
                done += 1
                seq += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    return done, latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def report(
    label: str, done: int, seconds: float, latencies: list[float], cpu: float | None
) -> None:
    cpu_text = f"; CPU {cpu / done * 10_000:.2f} s per 10k requests" if cpu is not None else ""
    print(
        f"{label:<34} {done / seconds:>8,.0f} req/s; p50 {percentile(latencies, 50) * 1000:.1f} ms,"
        f" p99 {percentile(latencies, 99) * 1000:.1f} ms{cpu_text}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--linger", default="5ms", help="buffer.batch_linger of the gateway")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-http-ingest-"))
    workspace = servers.Workspace()
    try:
        port = free_port()
        config: dict[str, Any] = {
            "buffer": {"batch_linger": args.linger},
            "sources": {"api": {"type": "http", "listen": f"127.0.0.1:{port}", "tokens": [TOKEN]}},
            "routes": {"all": {"match": "#", "sinks": ["out"]}},
            "sinks": {"out": {"type": "file", "path": "out.jsonl"}},
        }
        gw = GatewayProcess(folder, config)
        gw.start()
        try:
            url = f"http://127.0.0.1:{port}/ingest/bench/telemetry"
            asyncio.run(load(url, args.clients, 1.0))  # warm up
            assert gw.proc is not None
            before = cpu_seconds(gw.proc.pid)
            done, latencies = asyncio.run(load(url, args.clients, args.seconds))
            cpu = cpu_seconds(gw.proc.pid) - before
            wait_for(lambda: gw.sink("out")["depth"] == 0, 60, "the file sink to catch up")
            assert gw.stop() == 0, gw.log()
        finally:
            gw.close()
        receiver = workspace.http_receiver()
        asyncio.run(load(f"{receiver.url}/in", args.clients, 1.0))
        pid = receiver.pid
        assert pid is not None
        before_y = cpu_seconds(pid)
        done_y, latencies_y = asyncio.run(load(f"{receiver.url}/in", args.clients, args.seconds))
        cpu_y = cpu_seconds(pid) - before_y
    finally:
        workspace.close()
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"\n== http source: single-object POSTs, {args.clients} concurrent clients,"
        f" {args.seconds:g} s, buffer.batch_linger {args.linger}; 200 sent after the commit =="
    )
    print(f"machine: {os.cpu_count()} cores, shared; clients, gateway and yardstick all local")
    report("gateway (200 after the commit)", done, args.seconds, latencies, cpu)
    report("yardstick: bare aiohttp + file", done_y, args.seconds, latencies_y, cpu_y)
    return 0


if __name__ == "__main__":
    sys.exit(main())

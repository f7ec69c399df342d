"""Modbus polling throughput: TCP block reads, and RTU against the wire limit.

TCP: a separate process (tests/sources/modbus_plc.py) serves 10 simulated
devices, each on its own port with 100 holding registers; the gateway's Modbus
source polls all of them, in this process, decoding every value into a
FlowFile (no report-by-exception, so every value costs its full price). Two
runs: at the issue's target load (every device every 100 ms = 10,000
registers/s) to see the CPU it costs, and flat out (interval 1 ms) to see the
ceiling. CPU is this process's (the gateway side) and, separately, the PLC's.

Through the gateway (the issue 15 target): the same 10 devices polled every 10 ms by
a real `edge-stream run` process, `emit: per_device` (one FlowFile per device and poll,
with its 85 values), routed into PostgreSQL. After --seconds the PLC stops answering
and reports the reads it answered (every poll is one read of 100 registers); every one
of them must arrive as exactly one row (no merging, no loss). Prints the polls made
against the 10 ms grid (the scheduler skips polls it missed rather than bunching them),
and the gateway process's CPU from the window's start to its last row, per 10k values.

RTU: two units on one socat pty pair at 115200 baud 8N1. A pty moves bytes at
memory speed, so the PLC process answers no sooner than a real line would
(request + 3.5-character gap + answer on the wire). The wire limit per request
is (request bytes + answer bytes) x 10 bits / baud + two 1.75 ms gaps; the
gateway is measured against it, flat out.

Usage: python bench/modbus.py [--seconds 10] [--skip-rtu] [--skip-tcp] [--skip-gateway]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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

from bench.spine import count_rows, cpu_seconds, machine, make_table, yardstick  # noqa: E402
from gateway.config.schema import Problems, build_dataclass  # noqa: E402
from gateway.core.component import Context  # noqa: E402
from gateway.sources.modbus import ModbusSource, ModbusSourceConfig  # noqa: E402
from tests import servers  # noqa: E402
from tests.e2e.harness import GatewayProcess, wait_for  # noqa: E402
from tests.sources.socat_pair import SocatPair  # noqa: E402

PLC = ROOT / "tests" / "sources" / "modbus_plc.py"
DEVICES = 10
REGISTERS = 100
BAUD = 115200
TARGET_CPU_PER_10K_VALUES = 0.1


def device_registers() -> dict[str, Any]:
    """100 registers as a plant would map them: 85 values of mixed types."""
    regs: dict[str, Any] = {}
    address = 0
    for i in range(60):
        regs[f"t{i}"] = {"address": address, "type": "int16", **({"scale": 0.1} if i % 2 else {})}
        address += 1
    for i in range(10):
        regs[f"f{i}"] = {"address": address, "type": "float32"}
        address += 2
    for i in range(5):
        regs[f"e{i}"] = {"address": address, "type": "uint32", "order": "CDAB"}
        address += 2
    for i in range(10):
        regs[f"u{i}"] = {"address": address, "type": "uint16"}
        address += 1
    assert address == REGISTERS
    return regs


def make_source(raw: dict[str, Any]) -> ModbusSource:
    problems = Problems()
    config = build_dataclass(ModbusSourceConfig, {"type": "modbus", **raw}, (), problems)
    assert not problems, problems.items
    return ModbusSource(config, Context(name="bench", kind="source"))


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_source(source: ModbusSource, seconds: float, plc_pid: int) -> dict[str, float]:
    await source.connect()
    try:
        async with asyncio.timeout(30):
            await source.read()  # first poll: connections up, caches warm
        values = 0
        requests0 = source.requests
        cpu0, plc0, t0 = time.process_time(), cpu_of(plc_pid), time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            values += len(await source.read())
        cpu, plc_cpu = time.process_time() - cpu0, cpu_of(plc_pid) - plc0
        requests = source.requests - requests0
    finally:
        await source.close()
    return {
        "seconds": elapsed,
        "requests": requests,
        "values": values,
        "cpu": cpu,
        "plc_cpu": plc_cpu,
        "errors": sum(d["errors"] for d in source.ctx.status["devices"].values()),
    }


def start_plc(args: list[str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, str(PLC), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the PLC process did not start: {args}")
    return proc, json.loads(line)


def plc_stats(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("stats\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())  # type: ignore[no-any-return]


def mute_plc(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Stop every unit answering; the reads answered until then."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("mute\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())  # type: ignore[no-any-return]


def stop_plc(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def report(title: str, r: dict[str, float], registers_per_request: int) -> float:
    regs = r["requests"] * registers_per_request / r["seconds"]
    print(f"{title}")
    print(
        f"  {regs:10,.0f} registers/s   {r['requests'] / r['seconds']:8,.0f} requests/s"
        f"   {r['values'] / r['seconds']:10,.0f} values (FlowFiles)/s   errors {r['errors']:.0f}"
    )
    per10k = r["cpu"] / (regs * r["seconds"]) * 10000 if regs else 0.0
    share = 100 * r["cpu"] / r["seconds"]
    print(f"  gateway CPU {r['cpu']:.2f} s in {r['seconds']:.1f} s ({share:.0f}% of a core,"
          f" {per10k:.3f} s per 10k registers);  PLC process CPU {r['plc_cpu']:.2f} s")  # fmt: skip
    return regs


async def bench_tcp(seconds: float) -> None:
    proc, info = start_plc(["tcp", "--devices", str(DEVICES), "--registers", str(REGISTERS)])
    try:
        regs = device_registers()
        for interval, title in (("100ms", "target load"), ("1ms", "flat out")):
            devices = {
                f"plc{i}": {"url": f"tcp://127.0.0.1:{port}", "registers": regs}
                for i, port in enumerate(info["ports"])
            }
            source = make_source({"interval": interval, "timeout": "2s", "devices": devices})
            r = await run_source(source, seconds, proc.pid)
            report(f"TCP, {DEVICES} devices x {REGISTERS} registers, every {interval} ({title}):",
                   r, REGISTERS)  # fmt: skip
    finally:
        stop_plc(proc)


def gateway_run(seconds: float, interval: str = "10ms") -> dict[str, Any]:
    """10 devices polled by a real gateway into PostgreSQL: polls made, rows, CPU."""
    regs = device_registers()
    table = "modbus_rows"
    proc, info = start_plc(["tcp", "--devices", str(DEVICES), "--registers", str(REGISTERS)])
    workspace = servers.Workspace()
    try:
        pg = workspace.postgres()
        make_table(pg, table)
        config = {
            "sources": {
                "plant": {
                    "type": "modbus",
                    "interval": interval,
                    "timeout": "1s",
                    "emit": "per_device",
                    "devices": {
                        f"plc{i}": {"url": f"tcp://127.0.0.1:{port}", "registers": regs}
                        for i, port in enumerate(info["ports"])
                    },
                }
            },
            "routes": {"all": {"match": "modbus/#", "sinks": ["db"]}},
            "sinks": {
                "db": {
                    "type": "postgres",
                    "dsn": pg.dsn,
                    "table": table,
                    "batch": {"max_rows": 2000},
                }
            },
        }
        gw = GatewayProcess(Path(tempfile.mkdtemp(prefix="bench-modbus-")), config)
        gw.start()
        try:
            assert gw.proc is not None
            pid = gw.proc.pid
            wait_for(lambda: count_rows(pg, table), 30, f"the first Modbus rows in {table}")
            time.sleep(2)
            cpu0, polls0, t0 = cpu_seconds(pid), plc_stats(proc)["requests"], time.monotonic()
            plc0 = cpu_of(proc.pid)
            time.sleep(seconds)
            polls, t1 = mute_plc(proc)["requests"], time.monotonic()
            plc_cpu = cpu_of(proc.pid) - plc0
            seen, moved = -1, time.monotonic()
            while (rows := count_rows(pg, table)) < polls and time.monotonic() - moved < 10:
                if rows != seen:
                    seen, moved = rows, time.monotonic()
                time.sleep(0.2)
            cpu = cpu_seconds(pid) - cpu0
            time.sleep(1)  # a duplicate would come now
            rows = count_rows(pg, table)
            devices = gw.status()["sources"]["plant"].get("devices", {})
        finally:
            gw.stop()
            gw.close()
    finally:
        workspace.close()
        stop_plc(proc)
    per_poll = len(regs)
    made = polls - polls0
    grid = DEVICES * (t1 - t0) / (float(interval.removesuffix("ms")) / 1000)
    return {
        "seconds": t1 - t0,
        "polls": polls,
        "rows": rows,
        "source_values": sum(d.get("values", 0) for d in devices.values()),
        "values_per_poll": per_poll,
        "window_polls": made,
        "grid_polls": grid,
        "cpu": cpu,
        "plc_cpu": plc_cpu,
        "cpu_s_per_10k_values": cpu / (made * per_poll) * 10_000 if made else float("inf"),
        "machine": machine(),
        "yardstick": yardstick(),
    }


def report_gateway(r: dict[str, Any]) -> None:
    per_poll = r["values_per_poll"]
    print(f"TCP through the gateway into PostgreSQL, {DEVICES} devices x {REGISTERS} registers"
          f" ({per_poll} values) every 10 ms, one FlowFile per device and poll:")  # fmt: skip
    made, grid = r["window_polls"], r["grid_polls"]
    print(f"  polls in {r['seconds']:.1f} s: {made:,} of {grid:,.0f} on the grid"
          f" ({100 * made / grid:.0f}%; the rest skipped as missed),"
          f" {made * per_poll / r['seconds']:,.0f} values/s")  # fmt: skip
    verdict = "every poll forwarded" if r["rows"] == r["polls"] else "NOT every poll forwarded"
    source = r["source_values"] / per_poll
    print(f"  reads answered by the PLC {r['polls']:,}, rows in PostgreSQL {r['rows']:,}"
          f" ({verdict}); the source counted {source:,.0f} polls")  # fmt: skip
    share = 100 * r["plc_cpu"] / r["seconds"]
    per10k = r["cpu_s_per_10k_values"]
    target = TARGET_CPU_PER_10K_VALUES
    print(f"  gateway CPU {r['cpu']:.2f} s = {per10k:.3f} CPU-s per 10k values"
          f" (target <= {target}); PLC process {share:.0f}% of a core")  # fmt: skip
    print(f"  {r['machine']}")


async def bench_rtu(seconds: float) -> None:
    request_bytes = 8  # unit, fc, address(2), count(2), crc(2)
    answer_bytes = 5 + 2 * REGISTERS  # unit, fc, byte count, data, crc(2)
    bits = (request_bytes + answer_bytes) * 10  # 8N1: start + 8 data + stop
    per_request = bits / BAUD + 2 * 0.00175
    limit = REGISTERS / per_request
    print(f"RTU wire limit at {BAUD} baud 8N1, {REGISTERS} registers per request:")
    wire_ms = bits / BAUD * 1000
    print(f"  ({request_bytes} + {answer_bytes} bytes) x 10 bits / {BAUD} = {wire_ms:.2f} ms"
          f" + 2 x 1.75 ms silence = {per_request * 1000:.2f} ms per request"
          f" -> {1 / per_request:.1f} requests/s, {limit:,.0f} registers/s")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        regs = {f"r{i}": {"address": i, "type": "uint16"} for i in range(REGISTERS)}
        for pace, title in ((BAUD, "paced to the wire"), (0, "pty speed, unpaced")):
            pair = SocatPair(Path(tmp), "gw", "plc").start()
            args = ["rtu", "--port", pair.b, "--units", "1,2", "--registers", str(REGISTERS)]
            proc, _ = start_plc([*args, "--pace", str(pace)] if pace else args)
            try:
                url = f"rtu://{pair.a}?baudrate={BAUD}"
                devices = {f"unit{u}": {"url": url, "unit": u, "registers": regs} for u in (1, 2)}
                source = make_source({"interval": "1ms", "timeout": "1s", "devices": devices})
                r = await run_source(source, seconds, proc.pid)
                plc = plc_stats(proc)
            finally:
                stop_plc(proc)
                pair.stop()
            got = report(f"RTU, 2 units on one line, flat out ({title}):", r, REGISTERS)
            if pace:
                share = 100 * got / limit
                print(f"  achieved {got:,.0f} of {limit:,.0f} registers/s = {share:.1f}%"
                      " of the wire limit")  # fmt: skip
            median, mean = plc["turnaround_median"] * 1000, plc["turnaround_mean"] * 1000
            print("  line turnaround seen by the PLC (answer ready -> next request arrives):")
            print(f"  median {median:.2f} ms, mean {mean:.2f} ms (of which 1.75 ms is required)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip-tcp", action="store_true")
    parser.add_argument("--skip-rtu", action="store_true")
    parser.add_argument("--skip-gateway", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; gateway and PLC in separate processes")
    if not args.skip_tcp:
        await bench_tcp(args.seconds)
    if not args.skip_gateway:
        report_gateway(await asyncio.to_thread(gateway_run, args.seconds))
    if not args.skip_rtu:
        await bench_rtu(args.seconds)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"gateway process peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())

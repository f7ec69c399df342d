"""Memory of the real gateway at 1 KB, 64 KB and 250 KB payloads: peak and idle RSS.

For each payload size a fresh gateway (Mosquitto -> gateway -> PostgreSQL, each a
separate process) takes --messages QoS 1 messages of that size: the first half while
PostgreSQL is down, so the store (and the in-memory tail) fill, the second half while
it drains after PostgreSQL is back. Prints, per size, the gateway's peak RSS (VmHWM)
and its RSS once idle again (after the idle release, a few seconds without traffic),
with a yardstick for the machine as the other benches do.

Target: peak under 150 MB at any payload size up to the default max_payload (256 KiB).

Usage: python bench/memory.py [--messages 4000] [--sizes 1000,64000,250000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path: the repository comes first, so that `tests`
# is this project's package, whatever `tests` package an installed library may ship.
sys.path.insert(0, str(ROOT))

from spine import python_speed  # noqa: E402

from tests import servers  # noqa: E402
from tests.e2e.harness import GatewayProcess, wait_for  # noqa: E402
from tests.faults.test_store_faults import peak_rss_mb, pg_config, publish, rows_and_distinct  # noqa: E402

TARGET_MB = 150


def run_size(
    workspace: servers.Workspace,
    mq: servers.Mosquitto,
    pg: servers.Postgres,
    size: int,
    messages: int,
) -> tuple[float, float, float]:
    """Returns (peak RSS, idle RSS, seconds) for one payload size."""
    table = f"mem{uuid.uuid4().hex[:10]}"
    gw = GatewayProcess(Path(tempfile.mkdtemp(prefix="bench-mem-")), pg_config(mq, pg, table))
    pg.stop()
    gw.start()
    assert gw.proc is not None
    started = time.monotonic()
    half = messages // 2
    try:
        publish(mq.port, f"{table}/big", 0, half, size)
        wait_for(lambda: gw.sink("pg")["depth"] >= half, 600, "the first half in the store")
        pg.start()
        publish(mq.port, f"{table}/big", half, messages - half, size)
        wait_for(lambda: rows_and_distinct(pg, table) == (messages, messages), 900, "all rows")
        seconds = time.monotonic() - started
        peak = peak_rss_mb(gw)
        time.sleep(8)  # the gateway gives memory back after 3 quiet seconds
        idle = gw.rss_mb()
        gw.stop()
        return peak, idle, seconds
    finally:
        gw.close()
        if not pg.running:
            pg.start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--sizes", default="1000,64000,250000")
    args = parser.parse_args()
    workspace = servers.Workspace()
    try:
        mq = workspace.mosquitto()
        pg = workspace.postgres()
        results = []
        for size in (int(s) for s in args.sizes.split(",")):
            peak, idle, seconds = run_size(workspace, mq, pg, size, args.messages)
            results.append((size, peak, idle, seconds))
        print("\n== Edge Stream memory: MQTT (QoS 1) -> gateway -> PostgreSQL, half buffered ==")
        print(
            f"machine: {os.cpu_count()} cores; all processes local;"
            f" sum(range(1000)) takes {python_speed():.1f} µs here"
        )
        for size, peak, idle, seconds in results:
            print(
                f"{size / 1000:>6.0f} KB x {args.messages}: peak {peak:6.1f} MB,"
                f" idle {idle:6.1f} MB ({seconds:.0f} s; target peak < {TARGET_MB} MB)"
            )
        worst = max(peak for _, peak, _, _ in results)
        if worst >= TARGET_MB:
            raise SystemExit(f"memory: peak {worst:.0f} MB is over the {TARGET_MB} MB target")
    finally:
        workspace.close()


if __name__ == "__main__":
    main()

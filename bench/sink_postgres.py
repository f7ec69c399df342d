"""Throughput of the postgres sink alone: FlowFiles in, rows committed in PostgreSQL.

Starts a throwaway PostgreSQL 15 (as the tests do, tests/servers.py) unless --dsn is
given, then writes --rows FlowFiles (small JSON readings, as sensors send) through
`PostgresSink.write` in batches of --batch, one batch after another, as the engine
does. Prints rows/s for the default table and for a `columns:` table, and how much of
the time the sink spends in Python turning FlowFiles into column arrays.

Usage: python bench/sink_postgres.py [--rows 200000] [--batch 1000] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path: the repository comes first, so that `tests`
# is this project's package, whatever `tests` package an installed library may ship.
sys.path.insert(0, str(ROOT))

from gateway.config.schema import Problems, build_component  # noqa: E402
from gateway.core.component import Context  # noqa: E402
from gateway.core.flowfile import FlowFile  # noqa: E402
from gateway.sinks.postgres import PostgresSink  # noqa: E402
from tests import servers  # noqa: E402

LAYOUTS: dict[str, dict[str, Any]] = {
    "default table": {},
    "columns": {
        "columns": {
            "device": "topic.1",
            "at": "ts",
            "temperature": {"from": "field.temp", "type": "double precision"},
            "humidity": {"from": "field.hum", "type": "real"},
            "seq": {"from": "field.seq", "type": "bigint"},
        }
    },
}


def readings(n: int) -> list[FlowFile]:
    return [
        FlowFile.create(
            f"sensors/dev{i % 50}/telemetry",
            json.dumps({"temp": 21.5 + i % 10, "hum": 40 + i % 7, "seq": i}).encode(),
            {"mqtt.qos": "1"},
        )
        for i in range(n)
    ]


async def run(dsn: str, table: str, keys: dict[str, Any], rows: int, batch: int) -> None:
    problems = Problems()
    raw = {"type": "postgres", "dsn": dsn, "table": table, **keys}
    config = build_component("sink", raw, ("sinks", "bench"), problems)
    assert not problems, problems.items
    sink = PostgresSink(config, Context(name="bench", kind="sink"))
    await sink.connect()
    flowfiles = readings(rows)
    batches = [flowfiles[i : i + batch] for i in range(0, rows, batch)]
    await sink.write(readings(batch))  # warm up: statement prepared, caches filled
    build = 0.0
    started = time.perf_counter()
    for b in batches:
        t = time.perf_counter()
        sink._rows.build(b)  # measured alone; write() builds again
        build += time.perf_counter() - t
    build_only = time.perf_counter() - started
    started = time.perf_counter()
    for b in batches:
        rejected = await sink.write(b)
        assert not rejected, rejected[:1]
    elapsed = time.perf_counter() - started
    await sink.close()
    print(
        f"{table:>9}: {rows / elapsed:>9,.0f} rows/s  ({rows:,} rows, batches of {batch},"
        f" {elapsed:.2f} s; building the column arrays {build_only / elapsed:.0%} of it,"
        f" {build / rows * 1e6:.1f} us/row)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--dsn", help="an existing database to write into (tables bench_*)")
    args = parser.parse_args()
    workspace = None
    dsn = args.dsn
    if dsn is None:
        workspace = servers.Workspace()
        pg = workspace.postgres()
        dsn = pg.dsn
        print(f"PostgreSQL 15 on {pg.host}:{pg.port} (fsync off, as in the tests)")
    try:
        for n, (name, keys) in enumerate(LAYOUTS.items()):
            print(f"{name}:")
            asyncio.run(run(dsn, f"bench_{n}_{int(time.time())}", keys, args.rows, args.batch))
    finally:
        if workspace is not None:
            workspace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

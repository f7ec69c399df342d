"""Read rate of the mysql and redis sources: a backlog read as the engine reads it.

A table of --rows rows (MariaDB) and a stream of --rows entries (Redis) are filled first;
the source then reads them all, page after page, and each page is "committed" (its
acks run) before the next read, as the engine does. Printed next to each: a yardstick,
the same reads done with the bare driver (aiomysql pages by id; XREADGROUP + XACK), so
that what the source adds (a JSON object per row, topic, position, ids) shows. Starts
throwaway servers as the tests do (tests/servers.py). The store's commit is not in
these figures: see bench/spine.py for what the gateway commits per second.

Usage: python bench/sources.py [--rows 100000] [--page 500] [--only mysql,redis]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiomysql  # noqa: E402
from redis import Redis as SyncRedis  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from gateway.config.schema import Problems, build_component  # noqa: E402
from gateway.core.component import Context, Source  # noqa: E402
from gateway.registry import find  # noqa: E402
from gateway.sinks.mysql import parse_dsn  # noqa: E402
from tests import servers  # noqa: E402


def make(keys: dict[str, Any]) -> Source:
    problems = Problems()
    config = build_component("source", keys, ("sources", "bench"), problems)
    assert not problems, problems.items
    entry = find("source", keys["type"])
    assert entry is not None
    source: Source = entry.cls(config, Context(name="bench", kind="source", gateway_id="bench"))
    return source


def line(label: str, rows: int, elapsed: float, cpu: float) -> float:
    rate = rows / elapsed
    print(
        f"  {label:<34} {rate:>9,.0f} rows/s   ({rows:,} in {elapsed:.2f} s;"
        f" {cpu / rows * 1e4:.2f} CPU s per 10k here)",
        flush=True,
    )
    return rate


async def read_source(label: str, source: Source, rows: int, poll: bool) -> float:
    await source.connect()
    got = 0
    cpu, started = time.process_time(), time.perf_counter()
    while got < rows:
        messages = await (source.poll_messages() if poll else source.read())
        for m in messages:
            if m.ack is not None:
                m.ack()
        got += len(messages)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await source.close()
    return line(label, rows, elapsed, cpu)


async def mysql_yardstick(dsn: str, table: str, rows: int, page: int) -> float:
    d = parse_dsn(dsn)
    conn = await aiomysql.connect(
        host=d.host, port=d.port, user=d.user, password=d.password, db=d.database, autocommit=True
    )
    after, got = 0, 0
    cpu, started = time.process_time(), time.perf_counter()
    async with conn.cursor() as cursor:
        while got < rows:
            await cursor.execute(
                f"SELECT * FROM `{table}` WHERE id > %s ORDER BY id LIMIT %s", (after, page)
            )
            batch = await cursor.fetchall()
            got += len(batch)
            after = batch[-1][0]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    return line("yardstick: aiomysql pages", rows, elapsed, cpu)


async def redis_yardstick(url: str, key: str, rows: int, page: int) -> float:
    client = Redis.from_url(url)
    await client.xgroup_create(key, "yard", "0")
    got = 0
    cpu, started = time.process_time(), time.perf_counter()
    while got < rows:
        reply = await client.xreadgroup("yard", "c", {key: ">"}, count=page)
        entries = reply[0][1]
        await client.xack(key, "yard", *[e[0] for e in entries])
        got += len(entries)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await client.aclose()
    return line("yardstick: XREADGROUP + XACK", rows, elapsed, cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=500)
    parser.add_argument("--only", default="mysql,redis")
    args = parser.parse_args()
    only = set(args.only.split(","))
    rows, page = args.rows, args.page
    workspace = servers.Workspace()
    try:
        if "mysql" in only:
            db = workspace.mariadb()
            table = "bench_rows"
            db.execute(
                f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, device VARCHAR(20),"
                " temp DOUBLE, hum INT, at DATETIME(6))"
            )
            for start in range(0, rows, 5000):
                values = ", ".join(
                    f"('dev{i % 50}', {21.5 + i % 10}, {40 + i % 7}, NOW(6))"
                    for i in range(start, min(start + 5000, rows))
                )
                db.execute(f"INSERT INTO {table} (device, temp, hum, at) VALUES {values}")
            print(f"mysql source (MariaDB on {db.host}:{db.port}, pages of {page}):", flush=True)
            source = make(
                {
                    "type": "mysql",
                    "dsn": db.dsn,
                    "table": table,
                    "cursor": "id",
                    "page_size": page,
                    "topic": "db/{device}",
                }
            )
            asyncio.run(read_source("mysql source", source, rows, poll=True))
            asyncio.run(mysql_yardstick(db.dsn, table, rows, page))
        if "redis" in only:
            cache = workspace.redis()
            r = SyncRedis.from_url(cache.url)
            for key in ("bench", "yard"):
                for start in range(0, rows, 5000):
                    pipe = r.pipeline(transaction=False)
                    for i in range(start, min(start + 5000, rows)):
                        pipe.xadd(key, {"device": f"dev{i % 50}", "temp": str(21.5 + i % 10)})
                    pipe.execute()
            print(f"redis source (Redis on {cache.host}:{cache.port}, reads of {page}):")
            source = make(
                {
                    "type": "redis",
                    "url": cache.url,
                    "key": "bench",
                    "count": page,
                    "topic": "plant/{device}",
                }
            )
            asyncio.run(read_source("redis source (stream)", source, rows, poll=False))
            asyncio.run(redis_yardstick(cache.url, "yard", rows, page))
    finally:
        workspace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

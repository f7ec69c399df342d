"""Drain rate of the mysql, redis, mqtt and amqp sinks: a backlog of readings written in batches.

As after an outage: --rows FlowFiles (small JSON readings, as sensors send) are already
buffered, and the sink writes them in batches of --batch, one after another, as the
engine does. Starts throwaway servers as the tests do (tests/servers.py): MariaDB,
Redis, Mosquitto with a subscriber (mosquitto_sub, another process) that must
receive every message, and RabbitMQ (a topic exchange and a durable queue bound by `#`
that must hold every message; persistent messages, publisher confirms). Prints rows/s
and the CPU seconds this process spent per 10k rows, for each sink and mode.

Targets on the project's 2-core machine: MySQL >= 15k rows/s, Redis >= 30k entries/s,
MQTT >= 10k msg/s, AMQP >= 10k msg/s.

Usage: python bench/sink_drain.py [--rows 200000] [--batch 500] [--only mysql,redis,mqtt,amqp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path: the repository comes first, so that `tests`
# is this project's package, whatever `tests` package an installed library may ship.
sys.path.insert(0, str(ROOT))

from gateway.config.schema import Problems, build_component  # noqa: E402
from gateway.core.component import Context, Sink  # noqa: E402
from gateway.core.flowfile import FlowFile  # noqa: E402
from gateway.registry import find  # noqa: E402
from tests import servers  # noqa: E402


def readings(n: int) -> list[FlowFile]:
    return [
        FlowFile.create(
            f"sensors/dev{i % 50}/telemetry",
            json.dumps({"temp": 21.5 + i % 10, "hum": 40 + i % 7, "seq": i}).encode(),
            {"mqtt.qos": "1"},
        )
        for i in range(n)
    ]


def make(keys: dict[str, Any]) -> Sink:
    problems = Problems()
    config = build_component("sink", keys, ("sinks", "bench"), problems)
    assert not problems, problems.items
    entry = find("sink", keys["type"])
    assert entry is not None
    sink: Sink = entry.cls(config, Context(name="bench", kind="sink", gateway_id="bench"))
    return sink


async def drain(label: str, keys: dict[str, Any], rows: int, batch: int) -> float:
    sink = make(keys)
    await sink.connect()
    flowfiles = readings(rows)
    batches = [flowfiles[i : i + batch] for i in range(0, rows, batch)]
    cpu = time.process_time()
    started = time.perf_counter()
    for b in batches:
        rejected = await sink.write(b)
        assert not rejected, rejected[:1]
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await sink.close()
    rate = rows / elapsed
    print(
        f"  {label:<28} {rate:>9,.0f} rows/s   ({rows:,} rows in {elapsed:.2f} s,"
        f" batches of {batch}; {cpu / rows * 1e4:.2f} CPU s per 10k rows here)",
        flush=True,
    )
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--only", default="mysql,redis,mqtt")
    args = parser.parse_args()
    only = set(args.only.split(","))
    rows, batch = args.rows, args.batch
    stamp = int(time.time())
    workspace = servers.Workspace()
    try:
        if "mysql" in only:
            db = workspace.mariadb()
            print(f"mysql (MariaDB on {db.host}:{db.port}, aiomysql):", flush=True)
            base = {"type": "mysql", "dsn": db.dsn}
            asyncio.run(drain("default table", {**base, "table": f"d{stamp}"}, rows, batch))
            columns = {
                "device": "topic.1",
                "at": "ts",
                "temperature": {"from": "field.temp", "type": "double"},
                "humidity": {"from": "field.hum", "type": "real"},
                "seq": {"from": "field.seq", "type": "bigint"},
            }
            keys = {**base, "table": f"c{stamp}", "columns": columns}
            asyncio.run(drain("columns", keys, rows, batch))
        if "redis" in only:
            cache = workspace.redis()
            print(f"redis (Redis on {cache.host}:{cache.port}, AOF on):", flush=True)
            for mode in ("stream", "list", "hash", "publish"):
                keys = {"type": "redis", "url": cache.url, "mode": mode, "maxlen": 0}
                keys["key"] = f"{mode}:{{topic}}"
                label = f"{mode} (dedupe window)" if mode != "hash" else "hash"
                asyncio.run(drain(label, keys, rows, batch))
            keys = {"type": "redis", "url": cache.url, "mode": "stream", "dedupe": False}
            keys["key"] = "plain:{topic}"
            asyncio.run(drain("stream, dedupe: false", keys, rows, batch))
        if "mqtt" in only:
            broker = workspace.mosquitto()
            print(f"mqtt (Mosquitto on {broker.host}:{broker.port}, QoS 1):", flush=True)
            for label, extra in (("plain", {}), ("user properties", {"user_properties": True})):
                topic = f"drain{stamp}/{label[0]}"
                counter = subprocess.Popen(
                    ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                     "-t", f"{topic}/#", "-C", str(rows), "-F", "%m"],
                    stdout=subprocess.PIPE,
                )  # fmt: skip
                time.sleep(0.5)  # subscribed before the first message
                keys = {"type": "mqtt", "url": broker.url, "topic": f"{topic}/{{topic}}", **extra}
                asyncio.run(drain(label, keys, rows, batch))
                out, _ = counter.communicate(timeout=60)
                received = out.count(b"\n")
                assert received == rows, f"the subscriber got {received} of {rows}"
        if "amqp" in only:
            rabbit = workspace.rabbitmq()
            print(f"amqp (RabbitMQ on {rabbit.host}:{rabbit.port}, persistent, confirms):")
            name = f"drain{stamp}"
            keys = {"type": "amqp", "url": rabbit.url, "exchange": name, "queue": name}
            asyncio.run(drain("topic exchange, one queue", keys, rows, batch))
            held = rabbit.depth(name)
            assert held == rows, f"the queue holds {held} of {rows}"
    finally:
        workspace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

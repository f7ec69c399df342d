"""Publishing to RabbitMQ with confirms, library against library: aio-pika, aiormq, our client.

The bare publish loops under the amqp sink, against one private RabbitMQ
(tests/servers.py): --rows small JSON readings, persistent, mandatory, with
message_id and headers as the sink sends them, in batches of --batch, each batch
waited for until every message is confirmed (as the sink does), at most
--inflight unconfirmed at a time. aio-pika is `exchange.publish` from --inflight
workers (the sink up to 10229c1); aiormq is `channel.basic_publish` likewise, and
with `wait=False` (no wait for its own socket write); ours is
gateway/amqp/client.py's corked `Publisher.publish`. The last line sends
transient messages (delivery mode 1) through our client: what RabbitMQ's
persistence costs. Prints msg/s and this process's CPU seconds per 10k messages.

The machine is shared and noisy: run it twice, compare within one sitting.

Usage: python bench/amqp_publish.py [--rows 50000] [--batch 1000] [--inflight 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aio_pika  # noqa: E402
import aiormq  # noqa: E402
from pamqp import commands as spec  # noqa: E402
from yarl import URL  # noqa: E402

from gateway.amqp.client import Publisher, vhost_of  # noqa: E402
from tests import servers  # noqa: E402

KEY = "sensors.dev1.telemetry"
HEADERS = {"mqtt.qos": "1", "topic": "sensors/dev1/telemetry", "ts": "2026-11-30T00:00:00Z"}


def bodies(n: int) -> list[bytes]:
    return [
        json.dumps({"temp": 21.5 + i % 10, "hum": 40 + i % 7, "seq": i}).encode() for i in range(n)
    ]


async def in_batches(
    rows: list[bytes], batch: int, inflight: int, one: Callable[[int], Awaitable[None]]
) -> None:
    """Each batch published by `inflight` workers taking the next message in turn."""
    for start in range(0, len(rows), batch):
        positions = iter(range(start, min(len(rows), start + batch)))

        async def worker() -> None:
            for i in positions:  # noqa: B023 (each batch's workers end with it)
                await one(i)

        async with asyncio.TaskGroup() as group:
            for _ in range(inflight):
                group.create_task(worker())


async def with_aio_pika(url: str, name: str, rows: list[bytes], batch: int, inflight: int) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(name)

    async def one(i: int) -> None:
        message = aio_pika.Message(
            rows[i],
            headers=HEADERS,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(i),
            app_id="bench",
        )
        await exchange.publish(message, KEY, mandatory=True)

    await in_batches(rows, batch, inflight, one)
    await connection.close()


def aiormq_loop(wait: bool) -> Callable[[str, str, list[bytes], int, int], Awaitable[None]]:
    async def run(url: str, name: str, rows: list[bytes], batch: int, inflight: int) -> None:
        connection = await aiormq.connect(url)
        channel = await connection.channel(publisher_confirms=True)

        async def one(i: int) -> None:
            properties = spec.Basic.Properties(
                headers=HEADERS,
                content_type="application/json",
                delivery_mode=2,
                message_id=str(i),
                app_id="bench",
            )
            await channel.basic_publish(
                rows[i],
                exchange=name,
                routing_key=KEY,
                properties=properties,
                mandatory=True,
                wait=wait,
            )

        await in_batches(rows, batch, inflight, one)
        await connection.close()

    return run


def ours(delivery_mode: int) -> Callable[[str, str, list[bytes], int, int], Awaitable[None]]:
    async def run(url: str, name: str, rows: list[bytes], batch: int, inflight: int) -> None:
        loop = asyncio.get_running_loop()
        pending: set[int] = set()
        room: list[asyncio.Future[None]] = []

        def confirmed(tag: int, multiple: bool, ack: bool) -> None:
            assert ack
            for t in [t for t in pending if t <= tag] if multiple else [tag]:
                pending.discard(t)
            if room and not room[0].done():
                room[0].set_result(None)

        parsed = URL(url)
        client = Publisher(on_confirm=confirmed)
        await client.open(
            parsed.host or "",
            parsed.explicit_port or 5672,
            vhost=vhost_of(parsed.raw_path),
            username=parsed.user or "",
            password=parsed.password or "",
        )
        for start in range(0, len(rows), batch):
            for i in range(start, min(len(rows), start + batch)):
                while len(pending) >= inflight:
                    room[:] = [loop.create_future()]
                    await room[0]
                properties = spec.Basic.Properties(
                    headers=HEADERS,
                    content_type="application/json",
                    delivery_mode=delivery_mode,
                    message_id=str(i),
                    app_id="bench",
                )
                pending.add(client.publish(name, KEY, rows[i], properties))
            while pending:
                room[:] = [loop.create_future()]
                await room[0]
        await client.close()

    return run


async def declare(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(exchange, "#")
    await connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--inflight", type=int, default=256)
    args = parser.parse_args()
    rows = bodies(args.rows)
    runs = [
        ("aio-pika exchange.publish", with_aio_pika),
        ("aiormq basic_publish", aiormq_loop(wait=True)),
        ("aiormq basic_publish wait=False", aiormq_loop(wait=False)),
        ("our client (gateway/amqp)", ours(2)),
        ("our client, transient messages", ours(1)),
    ]
    workspace = servers.Workspace()
    try:
        rabbit = workspace.rabbitmq()
        print(
            f"RabbitMQ on {rabbit.host}:{rabbit.port}; {args.rows:,} messages in batches of"
            f" {args.batch}, at most {args.inflight} unconfirmed:",
            flush=True,
        )
        for n, (label, run) in enumerate(runs):
            name = f"pub{int(time.time())}-{n}"
            asyncio.run(declare(rabbit.url, name))
            cpu = time.process_time()
            started = time.perf_counter()
            asyncio.run(run(rabbit.url, name, rows, args.batch, args.inflight))
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            held = rabbit.depth(name)
            assert held == args.rows, f"{label}: the queue holds {held} of {args.rows}"
            print(
                f"  {label:<34} {args.rows / elapsed:>9,.0f} msg/s  ({elapsed:.2f} s;"
                f" {cpu / args.rows * 1e4:.2f} CPU s per 10k here)",
                flush=True,
            )
    finally:
        workspace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

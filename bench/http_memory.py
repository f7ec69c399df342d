"""Memory an `http` source request holds: one 1MiB body of `{}` objects (an array of
~350k empty objects, the most FlowFiles a body of that size can make).

In one process: an `http` source with no engine behind it (so the request waits for a
commit that never comes, holding what it made, until `ack_timeout`), and one aiohttp
client. Printed: the process's RSS before, while the request waits, and its peak
(VmHWM), the answer's status and size. The yardstick: the same request with a body of
one object of 1MiB (one FlowFile, the body's bytes). RSS depends on the allocator and
what ran before; the machine is shared: read the figures as orders of magnitude.

Usage: python bench/http_memory.py [--max-in-flight 16MiB] [--max-body 1MiB]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from gateway.config.schema import Problems, build_component  # noqa: E402
from gateway.core.component import Context  # noqa: E402
from gateway.sources.http import HttpSource  # noqa: E402
from tests.servers import free_port  # noqa: E402

TOKEN = "bench-memory-token-0123456789"


def mib(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert found
    return int(found.group(1)) / 1024


async def one(body: bytes, max_in_flight: str, max_body: str) -> str:
    port = free_port()
    problems = Problems()
    keys = {
        "type": "http",
        "listen": f"127.0.0.1:{port}",
        "tokens": [TOKEN],
        "ack_timeout": "3s",
        "max_in_flight": max_in_flight,
        "max_body": max_body,
    }
    config = build_component("source", keys, ("sources", "api"), problems)
    assert problems.items == [], problems.items
    source = HttpSource(config, Context("api", "source"))
    await source.connect()
    before = mib("VmRSS")
    waiting = 0.0
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/ingest/a"
            post = asyncio.ensure_future(session.post(url, data=body, headers=headers))
            for _ in range(20):
                await asyncio.sleep(0.1)
                waiting = max(waiting, mib("VmRSS"))
            async with await post as answer:
                text = await answer.read()
                status = answer.status
    finally:
        await source.close()
    return (
        f"RSS {before:.0f} MiB before, {waiting:.0f} MiB while it waits"
        f" (+{waiting - before:.0f}), peak {mib('VmHWM'):.0f} MiB;"
        f" answer {status}, {len(text):,} bytes: {text[:90]!r}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-in-flight", default="16MiB")
    parser.add_argument("--max-body", default="1MiB")
    parser.add_argument("--yardstick", action="store_true", help="one object of 1MiB")
    args = parser.parse_args()
    size = 1 << 20
    if args.yardstick:
        body = b'{"x":"' + b"y" * (size - 8) + b'"}'
        label = "one object of 1MiB"
    else:
        body = b"[" + b",".join([b"{}"] * ((size - 2) // 3)) + b"]"
        label = f"{(size - 2) // 3:,} objects {{}} in 1MiB"
    print(f"{label}, max_in_flight {args.max_in_flight}: ", end="", flush=True)
    print(asyncio.run(one(body, args.max_in_flight, args.max_body)))


if __name__ == "__main__":
    main()

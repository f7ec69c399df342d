"""Injected time, so windows, backoff and retention can be driven by tests."""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Wall time for timestamps, monotonic time for intervals."""

    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()


_seconds: dict[int, str] = {}


def rfc3339(created_ns: int) -> str:
    """`created_ns` (ns since the epoch) as RFC 3339 UTC with microseconds, as the sinks
    write a FlowFile's `ts`; the date part is cached per second (at most 4096 kept)."""
    second, micros = divmod(created_ns // 1000, 1_000_000)
    prefix = _seconds.get(second)
    if prefix is None:
        if len(_seconds) > 4096:
            _seconds.clear()
        prefix = _seconds[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{prefix}.{micros:06d}Z"

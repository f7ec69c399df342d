"""Injected time, so windows, backoff and retention can be driven by tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Clock:
    """Wall time for timestamps, monotonic time for intervals."""

    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()


def utc_text(date_format: str, suffix: str = "") -> Callable[[int], str]:
    """A formatter of ns since the epoch as UTC text, `date_format` (strftime) then
    `.ffffff` microseconds and `suffix`; the part up to the second is cached per second
    (at most 4096 kept), since it runs for every row a sink writes."""
    seconds: dict[int, str] = {}

    def text(created_ns: int) -> str:
        second, micros = divmod(created_ns // 1000, 1_000_000)
        prefix = seconds.get(second)
        if prefix is None:
            if len(seconds) > 4096:
                seconds.clear()
            prefix = seconds[second] = time.strftime(date_format, time.gmtime(second))
        return f"{prefix}.{micros:06d}{suffix}"

    return text


# A FlowFile's time as the redis, nats, amqp and http sinks write its `ts`: RFC 3339 UTC.
rfc3339 = utc_text("%Y-%m-%dT%H:%M:%S", "Z")

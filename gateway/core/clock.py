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

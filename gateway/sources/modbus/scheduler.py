"""When each device's groups are due, and the jobs that poll them.

A `Group` is the requests of one device at one interval; it keeps to its
interval grid and skips polls it missed rather than running them back to back.
`Jobs` holds the source's background jobs (one per port at a time, and the
write-back reconnect) in a TaskGroup that is open from `connect` to `close`.
Times are the injected clock's monotonic seconds.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Iterable
from contextlib import AsyncExitStack
from typing import Any, Generic, TypeVar

from gateway.core.clock import Clock
from gateway.sources.modbus.device import Device, Value
from gateway.sources.modbus.planner import Request

NEVER = math.inf
T = TypeVar("T")


class Group:
    """The requests of one device polled at one interval."""

    __slots__ = ("device", "due", "interval", "requests")

    def __init__(self, device: Device, interval: float, requests: list[Request[Value]]) -> None:
        self.device = device
        self.interval = interval
        self.requests = requests
        self.due = 0.0

    def start(self, now: float) -> None:
        """A poll begins at `now`: keep to the interval grid, or re-anchor it when a whole
        interval was missed (device backoff, a busy line), so missed polls are skipped
        rather than run back to back."""
        if now - self.due >= self.interval:
            self.due = now
        self.due += self.interval


def next_due(groups: Iterable[Group]) -> float:
    """When the first of `groups` is due: its own time, or its device's retry if later."""
    best = NEVER
    for g in groups:
        due = max(g.due, g.device.retry_at)
        if due < best:
            best = due
    return best


async def wait(clock: Clock, wake: asyncio.Event, delay: float | None) -> None:
    """Sleep on the injected clock until `delay` passes (None: forever) or `wake` is set."""
    waiter = asyncio.ensure_future(wake.wait())
    if delay is None:
        await waiter
        return
    sleeper = asyncio.ensure_future(clock.sleep(max(delay, 0.0)))
    try:
        await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()


class Job(Generic[T]):
    """One background job: its task, and once it has ended, its outcome."""

    __slots__ = ("coro", "error", "task", "value")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.task: asyncio.Task[None] | None = None
        self.value: T | None = None
        self.error: Exception | None = None

    def done(self) -> bool:
        return self.task is not None and self.task.done()

    def result(self) -> T:
        """What the job returned; raises what it raised (CancelledError if cancelled)."""
        if self.task is not None and self.task.cancelled():
            raise asyncio.CancelledError
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class Jobs:
    """The source's background jobs, in a TaskGroup open from `start` to `stop`.

    The engine drives a source through separate calls (connect, read, close),
    not through one coroutine that could hold `async with TaskGroup()`, so the
    group is entered in `start` and left in `stop` through an AsyncExitStack:
    no job outlives the source's connection. A job never raises into the group
    (that would cancel whichever task entered it): its outcome is kept on the
    `Job`, and the source raises an unexpected error from `read()`, in the
    engine's task.
    """

    def __init__(self, on_done: Callable[[], None]) -> None:
        self._on_done = on_done
        self._stack: AsyncExitStack | None = None
        self._group: asyncio.TaskGroup | None = None
        self._jobs: set[Job[Any]] = set()

    async def start(self) -> None:
        await self.stop()
        stack = AsyncExitStack()
        self._group = await stack.enter_async_context(asyncio.TaskGroup())
        self._stack = stack

    def spawn(self, coro: Coroutine[Any, Any, T]) -> Job[T]:
        """Run `coro` in the group; `on_done` is called when it ends."""
        if self._group is None:
            coro.close()
            raise RuntimeError("the source's jobs run between connect() and close()")
        job = Job(coro)
        job.task = self._group.create_task(self._run(job))
        self._jobs.add(job)
        return job

    async def _run(self, job: Job[T]) -> None:
        try:
            job.value = await job.coro
        except Exception as err:  # kept for the source to raise from read(); see the class
            job.error = err
        finally:
            self._jobs.discard(job)
            self._on_done()

    async def stop(self) -> None:
        """Cancel every job that is still running and wait for it to end."""
        stack, self._stack, self._group = self._stack, None, None
        jobs, self._jobs = list(self._jobs), set()
        for job in jobs:
            if job.task is not None:
                job.task.cancel()
        if stack is not None:
            await stack.aclose()
        for job in jobs:
            job.coro.close()  # one cancelled before it began was never awaited: no warning

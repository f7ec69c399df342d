"""The state replicator against a real Redis that stops answering for a while (CLIENT
PAUSE): the gateway's side says so in one line, with the timeout it waited."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis as redis_sync

from gateway.config.model import ReplicateSettings
from gateway.core.clock import SYSTEM_CLOCK
from gateway.engine.replicate import Replicator

pytestmark = pytest.mark.integration


async def _rows(component: str) -> list[tuple[str, int, bytes]]:
    return [("k", 1, b"{}")]


async def test_a_redis_that_does_not_answer_is_said_with_the_timeout(redis: Any) -> None:
    settings = ReplicateSettings(redis=redis.url, prefix="t-{gateway}", timeout=0.3)
    replicator = Replicator(settings, "gw", lambda: ["r.0"], _rows, SYSTEM_CLOCK)
    admin = redis_sync.Redis.from_url(redis.url)
    admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    task = asyncio.ensure_future(replicator.run())
    try:
        async with asyncio.timeout(10):
            while replicator.state != "down":  # noqa: ASYNC110 - the task sets it
                await asyncio.sleep(0.02)
        assert replicator.last_error == "no answer within 0.3 s (state.replicate.timeout)"
        async with asyncio.timeout(10):
            while replicator.state != "up":  # noqa: ASYNC110 - back once the pause ends
                await asyncio.sleep(0.05)
        assert admin.hgetall("t-gw:r.0") == {b"k": b"1:{}"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        admin.close()


async def test_fields_of_the_replica_that_are_not_its_own_are_left_out(
    redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A field that was not `<seq>:<value>` (written by hand, or by something else) raised
    ValueError out of the engine's start: a standby with an empty store could not start."""
    settings = ReplicateSettings(redis=redis.url, prefix="t-{gateway}")
    replicator = Replicator(settings, "gw", lambda: ["r.0"], _rows, SYSTEM_CLOCK)
    admin = redis_sync.Redis.from_url(redis.url)
    admin.hset(
        "t-gw:r.1",
        mapping={b"good": b"7:{}", b"junk": b"not-a-seq", b"\xff\xfe": b"3:{}", b"empty": b""},
    )
    try:
        assert await replicator.load("r.1") == [("good", 7, b"{}")]
        assert "3 fields of t-gw:r.1 are not state the gateway wrote" in caplog.text
    finally:
        await replicator.close()
        admin.close()


async def test_a_reset_of_state_no_processor_runs_deletes_its_hash(redis: Any) -> None:
    """`edge-stream state reset` of a renamed route's old ROUTE.N forgot it in the store but
    not in Redis: the full copy went over the running components only, so the hash stayed
    for ever, and a standby restored it once a processor stood at that ROUTE.N again."""
    settings = ReplicateSettings(redis=redis.url, prefix="t-{gateway}")
    replicator = Replicator(settings, "gw", lambda: ["new.0"], _rows, SYSTEM_CLOCK)
    admin = redis_sync.Redis.from_url(redis.url)
    admin.hset("t-gw:old.0", mapping={b"k": b"3:{}"})
    admin.hset("t-gw:kept.0", mapping={b"k": b"4:{}"})  # no processor runs it, not reset
    task = asyncio.ensure_future(replicator.run())
    try:
        async with asyncio.timeout(10):
            while not admin.exists("t-gw:new.0"):  # noqa: ASYNC110 - the first full copy
                await asyncio.sleep(0.02)
        replicator.offer([], ["old.0"])
        async with asyncio.timeout(10):
            while admin.exists("t-gw:old.0"):  # noqa: ASYNC110 - the task deletes it
                await asyncio.sleep(0.02)
        assert admin.hgetall("t-gw:new.0") == {b"k": b"1:{}"}
        assert admin.hgetall("t-gw:kept.0") == {b"k": b"4:{}"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        admin.close()


async def test_past_max_pending_the_changes_are_dropped_and_the_whole_state_copied_again(
    redis_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """README (state.replicate): with Redis down the changes wait in memory, at most
    `max_pending`; past it they are dropped and the whole committed state is copied
    again once Redis answers."""
    server = redis_factory()
    committed: dict[str, tuple[int, bytes]] = {"k0": (1, b"{}")}

    async def rows(component: str) -> list[tuple[str, int, bytes]]:
        return [(k, seq, v) for k, (seq, v) in committed.items()]

    settings = ReplicateSettings(redis=server.url, prefix="t-{gateway}", max_pending=100)
    replicator = Replicator(settings, "gw", lambda: ["r.0"], rows, SYSTEM_CLOCK)
    admin = redis_sync.Redis.from_url(server.url)
    task = asyncio.ensure_future(replicator.run())
    try:
        async with asyncio.timeout(10):
            while not admin.exists("t-gw:r.0"):  # noqa: ASYNC110 - the first full copy
                await asyncio.sleep(0.02)
        admin.close()
        server.stop()
        changes = [("r.0", f"k{n}", n + 1, b'{"n": %d}' % n) for n in range(1, 151)]
        for _, key, seq, value in changes:
            committed[key] = (seq, value)
        for i in range(0, len(changes), 50):  # three commits, 150 changes past 100
            replicator.offer(changes[i : i + 50], [])
        shown = replicator.status()
        assert shown["pending"] <= 100 and shown["full_copy_due"], shown
        assert shown["overflows"] == 1, shown
        assert "is 100 changes behind; they are dropped" in caplog.text
        server.start()
        admin = redis_sync.Redis.from_url(server.url)
        wanted = {k.encode(): b"%d:%s" % (seq, v) for k, (seq, v) in committed.items()}
        async with asyncio.timeout(30):
            while admin.hgetall("t-gw:r.0") != wanted:  # noqa: ASYNC110 - the full copy
                await asyncio.sleep(0.05)
        assert replicator.status()["pending"] == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        admin.close()

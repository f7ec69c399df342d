"""Copies each checkpoint's processor state changes to Redis, for a standby gateway.

`state.replicate: {redis: URL}` (gateway/config/model.py, StateSection). After the
engine commits a batch to the local store, it hands the batch's state changes
(component, key, seq, value or None) to `Replicator.offer`, which keeps the newest
value per key in memory, at most `max_pending` keys. The replicator's task writes
them to Redis in one pipeline: a hash per component, `<prefix>:<component>`, field
= the state key, value = `<seq>:<JSON>` (HDEL for a deleted key). Nothing here
ever makes the engine wait: when Redis is slow or down the changes pile up (and
/api/status says `replication.state: down` with the error); past `max_pending`
they are dropped and, once Redis answers again, the whole committed state is read
from the local store and copied (each component's hash replaced in one MULTI).
The first copy after the gateway starts is such a full copy too, and so is the copy after
a reset (`edge-stream state reset`), which also deletes the hash of a component reset
that no processor runs now (the old ROUTE.N of a renamed route).

A gateway that starts with an empty store and this setting reads the hashes back
(`load`) before its first batch: a standby continues the windows of the gateway
that died. While Redis does not answer it waits for it, up to `restore_wait`.
What it may lose: the changes of the last commits the dead gateway had not copied
yet (`replication.pending`), and what the dead gateway stored but its sinks had not
delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from gateway.config.model import ReplicateSettings
from gateway.config.schema import safe_redis_url
from gateway.core.backoff import Backoff
from gateway.core.clock import Clock

log = logging.getLogger("gateway.engine")

CHUNK = 1000  # fields per HSET when copying a whole component


def describe(err: BaseException, timeout: float) -> str:
    """One line for a failed Redis call; a timeout says how long it waited."""
    if isinstance(err, TimeoutError) and not str(err):
        return f"no answer within {timeout:g} s (state.replicate.timeout)"
    return str(err) or type(err).__name__


def encode(seq: int, value: bytes) -> bytes:
    return b"%d:" % seq + value


def decode(data: bytes) -> tuple[int, bytes]:
    seq, _, value = data.partition(b":")
    return int(seq), value


class Replicator:
    """The copy of the processors' committed state in Redis (see the module)."""

    def __init__(
        self,
        settings: ReplicateSettings,
        gateway_id: str,
        components: Callable[[], list[str]],
        load_committed: Callable[[str], Awaitable[list[tuple[str, int, bytes]]]],
        clock: Clock,
    ) -> None:
        assert settings.redis is not None
        self.settings = settings
        self.prefix = settings.prefix.replace("{gateway}", gateway_id)
        self.components = components  # the stateful components running now
        self.load_committed = load_committed  # a component's rows in the local store
        self.clock = clock
        self.state = "starting"  # up, down
        self.last_error: str | None = None
        self.replicated = 0  # changes written to Redis since start
        self.overflows = 0  # times max_pending was passed (a full copy followed)
        self._pending: dict[tuple[str, str], bytes | None] = {}
        self._inflight = 0  # changes in the pipeline being written
        self._full = True  # copy the whole committed state next
        # Components reset that no processor runs now (a route renamed: `edge-stream state
        # reset` of its old ROUTE.N): the full copy goes over the running ones only, so
        # their hashes stayed in Redis for ever, and a standby restored them once a
        # processor stood at that ROUTE.N again.
        self._forgotten: set[str] = set()
        self._wake = asyncio.Event()
        self._wake.set()
        self._client: Redis | None = None

    def key(self, component: str) -> str:
        return f"{self.prefix}:{component}"

    def client(self) -> Redis:
        if self._client is None:
            timeout = self.settings.timeout
            self._client = Redis.from_url(
                self.settings.redis or "",
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
        return self._client

    # -- the engine's side -----------------------------------------------------------

    def offer(self, kv: list[tuple[str, str, int, bytes | None]], resets: list[str]) -> None:
        """A committed batch's state changes (never blocks, never raises)."""
        if resets:
            self._full = True  # a reset component: its hash is replaced by the full copy
            self._forgotten.update(resets)  # or deleted, when none runs
        if self._full:
            self._wake.set()
            return  # the full copy reads the store after this commit
        pending = self._pending
        for component, key, seq, value in kv:
            pending[(component, key)] = None if value is None else encode(seq, value)
        if len(pending) > self.settings.max_pending:
            self._overflow()
        if kv:
            self._wake.set()

    def _overflow(self) -> None:
        self._pending.clear()
        self._full = True
        self.overflows += 1
        log.warning(
            "engine: state replication to %s is %d changes behind; they are dropped and"
            " the whole state is copied again when Redis answers",
            safe_redis_url(self.settings.redis or ""),
            self.settings.max_pending,
        )

    def busy(self) -> bool:
        """Changes wait for Redis (and Redis answered last time)."""
        pending = bool(self._pending or self._inflight or self._full)
        return pending and self.state != "down"

    def status(self) -> dict[str, Any]:
        return {
            "redis": safe_redis_url(self.settings.redis or ""),
            "state": self.state,
            "pending": len(self._pending) + self._inflight,
            "full_copy_due": self._full,
            "replicated": self.replicated,
            "overflows": self.overflows,
            "last_error": self.last_error,
        }

    async def load(self, component: str) -> list[tuple[str, int, bytes]]:
        """A component's state as the replica has it: (key, seq, value) rows."""
        key = self.key(component)
        async with asyncio.timeout(self.settings.timeout):
            data = await self.client().hgetall(key)  # type: ignore[misc]
        rows: list[tuple[str, int, bytes]] = []
        for field, value in data.items():
            try:
                rows.append((field.decode(), *decode(value)))
            except ValueError:  # UnicodeDecodeError too
                # Not written by a gateway (by hand, another program): it made the engine's
                # start fail with a traceback, at every start of a standby with an empty store.
                pass
        if len(rows) < len(data):
            log.warning(
                "engine: %d fields of %s are not state the gateway wrote (<seq>:<value>);"
                " left out of the restored state",
                len(data) - len(rows),
                key,
            )
        return rows

    async def close(self) -> None:
        """Let go of the Redis client, for a replicator whose task never ran."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.settings.timeout):
                        if self._full:
                            await self._copy_all()
                        await self._flush()
                except (redis_errors.RedisError, OSError, TimeoutError) as err:
                    text = describe(err, self.settings.timeout)
                    if self.state != "down":
                        log.warning(
                            "engine: cannot replicate the state to %s (%s); the gateway runs"
                            " on and catches up when Redis answers",
                            safe_redis_url(self.settings.redis or ""),
                            text,
                        )
                    self.state, self.last_error = "down", text
                    await self.clock.sleep(backoff.next())
                    self._wake.set()
                    continue
                if self.state == "down":
                    log.info("engine: state replication to Redis caught up")
                self.state = "up"
                backoff.reset()
        finally:
            if self._client is not None:
                await self._client.aclose()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        pipe = self.client().pipeline(transaction=False)
        for (component, key), value in batch.items():
            if value is None:
                pipe.hdel(self.key(component), key)
            else:
                pipe.hset(self.key(component), mapping={key: value})
        self._inflight = len(batch)
        try:
            await pipe.execute()
        except BaseException:
            for item, value in batch.items():  # newer changes came in meanwhile: they win
                self._pending.setdefault(item, value)
            if len(self._pending) > self.settings.max_pending:
                self._overflow()
            raise
        finally:
            self._inflight = 0
        self.replicated += len(batch)

    async def _copy_all(self) -> None:
        """Replace each component's hash with its committed state in the local store.

        Changes committed from here on go to `_pending` and are written after."""
        self._full = False
        self._pending.clear()
        forgotten, self._forgotten = self._forgotten, set()
        try:
            running = self.components()
            gone = [self.key(c) for c in sorted(forgotten - set(running))]
            if gone:
                await self.client().delete(*gone)
            for component in running:
                rows = await self.load_committed(component)
                pipe = self.client().pipeline(transaction=True)
                pipe.delete(self.key(component))
                for i in range(0, len(rows), CHUNK):
                    mapping = {k: encode(seq, v) for k, seq, v in rows[i : i + CHUNK]}
                    pipe.hset(self.key(component), mapping=mapping)
                await pipe.execute()
                self.replicated += len(rows)
        except BaseException:
            self._full = True
            self._forgotten |= forgotten
            raise

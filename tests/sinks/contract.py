"""The contract every sink keeps, as one suite each sink's tests reuse against a real upstream.

Subclass `SinkContract` in a test module (the class name must start with `Test`) and
provide four fixtures, each returning a callable (sync or async, both work):

    make_sink()     -> a new, connected Sink writing where `fetch_ids` reads
                       (the suite closes every sink it makes)
    fetch_ids()     -> list[str]: the FlowFile id of every record that reached the
                       upstream, once per stored copy (so duplicates show)
    bad_flowfile()  -> a fresh FlowFile the upstream refuses for good (a NUL in a
                       text column ...), or None for a sink that never refuses one
    outage()        -> an async context manager: the upstream is down inside it
                       (server stopped) and serving again, with its data, after it

and set `exactly_once = False` for an at-least-once sink (file, MQTT), where a batch
written again may be stored twice. Override `good_flowfile` when the upstream needs a
particular kind of FlowFile. A sink whose upstream cannot be taken down at all may
remove the outage case with `test_outage_then_recovery = None`, and say why.

    from tests.sinks.contract import SinkContract

    class TestRedisContract(SinkContract):
        @pytest.fixture
        def make_sink(self, redis, key):
            async def make():
                sink = RedisSink(config(redis.url, key), Context("cache", "sink"))
                await sink.connect()
                return sink
            return make
        ...

Assertions are on what reached the server (`fetch_ids`), never on what the sink says.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest

from gateway.config.schema import Problems, build_component
from gateway.core.component import Rejected, Sink
from gateway.core.errors import RetryableError
from gateway.core.flowfile import FlowFile

# After an outage, how long the suite keeps retrying a batch the way the engine would.
RECOVERY_SECONDS = 30.0


async def _call(function: Callable[..., Any], *args: Any, **keys: Any) -> Any:
    result = function(*args, **keys)
    return await result if inspect.isawaitable(result) else result


def config_problems(kind: str, name: str, **keys: Any) -> tuple[Any, list[str]]:
    """Build sink `name` of `type: kind` as the config loader does: (config or None, problems)."""
    problems = Problems()
    config = build_component("sink", {"type": kind, **keys}, ("sinks", name), problems)
    return config, [f"{'.'.join(map(str, path))}: {message}" for path, message in problems.items]


def unique_name() -> str:
    """A table, key or topic prefix of one test's own: the servers are shared."""
    return f"t{uuid.uuid4().hex[:12]}"


async def connected(sink: Sink) -> Sink:
    await sink.connect()
    return sink


@contextlib.asynccontextmanager
async def closing(open_sink: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """`await opened(**keys)`: the sink `open_sink(**keys)` returns (sync or async); every
    sink opened is closed on the way out."""
    made: list[Sink] = []

    async def opened(**keys: Any) -> Sink:
        sink = await _call(open_sink, **keys)
        made.append(sink)
        return sink  # type: ignore[no-any-return]

    try:
        yield opened
    finally:
        for sink in made:
            await sink.close()


async def write_until_delivered(sink: Sink, batch: list[FlowFile]) -> list[Rejected]:
    """Write like the engine does after an outage: retry on RetryableError, with a pause."""
    async with asyncio.timeout(RECOVERY_SECONDS):
        while True:
            try:
                return await sink.write(batch)
            except RetryableError:
                await asyncio.sleep(0.2)


def server_down(server: Any) -> Callable[[], Any]:
    """An `outage` fixture value for a sink whose upstream is one of tests/servers.py's servers.

    Stopping and starting runs on the loop thread on purpose: servers.py asks for the
    parent-death signal only from the main thread, and the pause is part of the outage.
    """

    @contextlib.asynccontextmanager
    async def down() -> AsyncIterator[None]:
        server.stop()
        try:
            yield
        finally:
            server.start()

    return down


class SinkContract:
    """The cases every sink must pass; see the module docstring for how to plug one in."""

    exactly_once: ClassVar[bool] = True

    @pytest.fixture
    def good_flowfile(self) -> Callable[[int], FlowFile]:
        """`good_flowfile(i)`: a fresh FlowFile every upstream takes."""

        def make(i: int) -> FlowFile:
            body = {"seq": i, "temp": 20.0 + i % 10, "ok": True}
            return FlowFile.create(
                f"contract/dev{i % 3}/telemetry", json.dumps(body).encode(), {"n": str(i)}
            )

        return make

    @pytest.fixture
    async def sinks(self, make_sink: Callable[[], Any]) -> AsyncIterator[Callable[[], Any]]:
        """`await sinks()`: a connected sink from `make_sink`, closed after the test."""
        async with closing(make_sink) as opened:
            yield opened

    @pytest.fixture
    def stored(self, fetch_ids: Callable[[], Any]) -> Callable[[], Any]:
        """`await stored()`: Counter of the ids upstream."""

        async def count() -> Counter[str]:
            return Counter(str(i) for i in await _call(fetch_ids))

        return count

    def assert_delivered(self, stored: Counter[str], batch: list[FlowFile]) -> None:
        """Every FlowFile of `batch` is upstream: exactly once, or at least once."""
        expected = Counter(ff.id for ff in batch)
        if self.exactly_once:
            assert stored == expected
        else:
            assert set(stored) == set(expected)

    # --- the cases ------------------------------------------------------------------------

    async def test_batch_is_delivered(self, sinks: Any, stored: Any, good_flowfile: Any) -> None:
        sink = await sinks()
        batch = [good_flowfile(i) for i in range(300)]
        assert await sink.write(batch) == []
        self.assert_delivered(await stored(), batch)

    async def test_empty_batch_writes_nothing(self, sinks: Any, stored: Any) -> None:
        sink = await sinks()
        assert await sink.write([]) == []
        assert await stored() == Counter()

    async def test_redelivered_batch_is_not_stored_twice(
        self, sinks: Any, stored: Any, good_flowfile: Any
    ) -> None:
        sink = await sinks()
        batch = [good_flowfile(i) for i in range(50)]
        assert await sink.write(batch) == []
        # As after a crash between the write and the cursor: the same batch again, then
        # one overlapping it, and the same batch from a new connection.
        assert await sink.write(batch) == []
        newer = batch[25:] + [good_flowfile(i) for i in range(50, 75)]
        assert await sink.write(newer) == []
        again = await sinks()
        assert await again.write(batch) == []
        self.assert_delivered(await stored(), batch + newer[25:])

    async def test_refused_rows_are_returned_and_the_rest_delivered(
        self, sinks: Any, stored: Any, good_flowfile: Any, bad_flowfile: Any
    ) -> None:
        sink = await sinks()
        good = [good_flowfile(i) for i in range(40)]
        bad = [bad_flowfile() for _ in range(2)]
        if bad[0] is None:
            # A sink that never refuses takes even odd content: bytes that are not JSON,
            # empty content, a NUL, a topic with spaces.
            odd = [
                FlowFile.create("contract/odd", b"\xff\xfe\x00 not json"),
                FlowFile.create("contract/odd space", b""),
            ]
            assert await sink.write(good[:20] + odd + good[20:]) == []
            self.assert_delivered(await stored(), good + odd)
            return
        batch = [*good[:7], bad[0], *good[7:30], bad[1], *good[30:]]
        rejected = await sink.write(batch)
        assert sorted(r.flowfile.id for r in rejected) == sorted(ff.id for ff in bad)
        assert all(isinstance(r, Rejected) for r in rejected)
        assert all(isinstance(r.reason, str) and r.reason.strip() for r in rejected)
        self.assert_delivered(await stored(), good)
        # Written again (the engine retried): refused again, nothing stored twice.
        rejected = await sink.write(batch)
        assert sorted(r.flowfile.id for r in rejected) == sorted(ff.id for ff in bad)
        self.assert_delivered(await stored(), good)

    async def test_outage_then_recovery(
        self, sinks: Any, stored: Any, good_flowfile: Any, outage: Any
    ) -> None:
        sink = await sinks()
        batch = [good_flowfile(i) for i in range(100)]
        assert await sink.write(batch[:40]) == []  # part of it got through before
        async with outage():
            with pytest.raises(RetryableError):
                await sink.write(batch)
        # The engine retries the same batch; the sink reconnects on its own.
        assert await write_until_delivered(sink, batch) == []
        self.assert_delivered(await stored(), batch)
        later = [good_flowfile(i) for i in range(100, 110)]
        assert await sink.write(later) == []
        self.assert_delivered(await stored(), batch + later)

    async def test_close_is_idempotent(self, make_sink: Any, good_flowfile: Any) -> None:
        sink = await _call(make_sink)
        assert await sink.write([good_flowfile(0)]) == []
        await sink.close()
        await sink.close()

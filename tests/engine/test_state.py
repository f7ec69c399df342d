"""Processor key/value state on a real store: written with the batch that changed it (only
the changed keys), restored by a new engine, closed by the engine's timer, reset through
the store's inbox like a dead-letter replay, dropped when a reload changed the window."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.edit import validate
from gateway.config.model import (
    BufferSection,
    Config,
    GatewaySection,
    RouteSection,
    SinkConfig,
    WebSection,
)
from gateway.config.schema import Problems, build_component
from gateway.core.component import Message
from gateway.core.errors import RetryableError
from gateway.core.flowfile import FlowFile
from gateway.engine.pipeline import Engine
from gateway.engine.plan import plan
from gateway.metrics import metrics_json, registry_for
from gateway.store import admin
from gateway.store.sqlite import Batch, Store
from tests.engine.test_engine import FakeClock, until

pytestmark = pytest.mark.unit


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    yield store
    await store.close()


def config(tmp_path: Path) -> Config:
    problems = Problems()
    window = build_component(
        "processor",
        {
            "type": "window",
            "size": "10s",
            "group_by": "field.id",
            "aggregates": {"v": ["count", "sum"]},
        },
        ("p",),
        problems,
    )
    assert not problems.items
    return Config(
        gateway=GatewaySection(id="t", data_dir=str(tmp_path)),
        buffer=BufferSection(batch_linger=0),
        routes={"agg": RouteSection(match=["#"], sinks=["out"], processors=[window])},
        sinks={"out": SinkConfig(type="file")},
        web=WebSection(enabled=False),
    )


async def started(cfg: Config, store: Store, clock: FakeClock) -> Engine:
    """An engine with its router built and state loaded, as `run` does before its loops."""
    engine = Engine(cfg, store, clock=clock)
    engine.router = engine._build_router()
    await engine._load_kv([p for _, p in engine.router.stateful()])
    return engine


def reading(device: int, value: int) -> tuple[str, Message]:
    return (
        "src",
        Message(FlowFile.create("plant/x", json.dumps({"id": device, "v": value}).encode())),
    )


async def rows(store: Store) -> list[tuple[str, str]]:
    return [(c, k) for c, k in await store._query("SELECT component, key FROM state_kv")]


async def outputs(store: Store) -> list[dict[str, object]]:
    return [json.loads(c) for (c,) in await store._query("SELECT content FROM flowfiles")]


async def test_state_is_committed_with_the_batch_restored_and_closed_by_the_timer(
    tmp_path: Path, store: Store
) -> None:
    clock = FakeClock()
    clock.now = 2_000_000_000.0  # a window boundary: 10 s windows start at multiples of 10
    cfg = config(tmp_path)
    engine = await started(cfg, store, clock)
    await engine._commit([reading(1, 5), reading(2, 7)])
    assert sorted(await rows(store)) == [
        ("agg.0", "2000000000000000000|1"),
        ("agg.0", "2000000000000000000|2"),
        ("agg.0", "~meta"),  # the window's bookkeeping: its config's fingerprint
    ]
    # only the changed key is written by the next commit
    written: list[object] = []
    commit = store.commit

    async def recorded(batch: object) -> None:
        written.append(batch.kv)  # type: ignore[attr-defined]
        await commit(batch)  # type: ignore[arg-type]

    store.commit = recorded  # type: ignore[method-assign]
    await engine._commit([reading(1, 6)])
    assert [k for _, k, _, _ in written[0]] == ["2000000000000000000|1"]  # type: ignore[index]

    # killed here: a new engine on the same store continues the windows
    clock.now += 3
    again = await started(cfg, store, clock)
    await again._commit([reading(2, 1)])
    await again._commit([], tick=True)
    assert await outputs(store) == [], "the window is still open"
    clock.now += 7
    await again._commit([], tick=True)  # no new data: the timer closes both windows
    got = sorted(await outputs(store), key=lambda o: str(o["group"]))
    assert [(o["group"], o["v"]) for o in got] == [
        ("1", {"count": 2, "sum": 11}),
        ("2", {"count": 2, "sum": 8}),
    ]
    assert await rows(store) == [("agg.0", "~meta")]


async def test_state_reset_goes_through_the_running_engine(tmp_path: Path, store: Store) -> None:
    clock = FakeClock()
    engine = await started(config(tmp_path), store, clock)
    await engine._commit([reading(1, 5), reading(2, 7)])
    with admin.open_admin(store.path) as a:
        assert [(s.component, s.keys) for s in a.states()] == [("agg.0", 3)]
        assert a.reset_state("agg.0", running=True) == "asked"
    assert len(await rows(store)) == 3, "the running gateway does it, not the CLI"
    await engine._reset_state()
    assert await rows(store) == []
    processor = engine.router.stateful()[0][1]  # type: ignore[union-attr]
    assert processor.kv is not None and len(processor.kv) == 0
    assert await store._query("SELECT * FROM state_reset") == []


async def test_a_state_reset_when_it_cannot_be_told_whether_the_gateway_runs_is_left_to_it(
    tmp_path: Path, store: Store
) -> None:
    """A lock that could not be opened counted as no gateway running: the CLI deleted the
    state under a gateway that may run, and wrote it back with its next commit."""
    engine = await started(config(tmp_path), store, FakeClock())
    await engine._commit([reading(1, 5)])
    lock = tmp_path / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(lock)  # opening it fails (ELOOP), for root too
    assert admin.gateway_runs(store.path) is None
    with admin.open_admin(store.path) as a:
        assert a.reset_state("agg.0") == "asked"
    assert len(await rows(store)) == 2, "left to the gateway, or to its next start"
    await engine._reset_state()
    assert await rows(store) == []


RELOADED = """
gateway: {{id: t, data_dir: {data}}}
buffer: {{batch_linger: 0}}
web: {{enabled: false}}
routes:
  agg:
    match: "#"
    processors:
      - {{type: window, size: {size}, group_by: field.id, aggregates: {{v: [count, sum]}},
         topic: {topic}}}
    sinks: [out]
sinks:
  out: {{type: file, path: {data}/out.jsonl}}
"""


async def two_windows_open(
    config: Config, store: Store, clock: FakeClock
) -> tuple[Engine, asyncio.Future[None]]:
    """A running engine on `config` whose window holds two groups, committed."""
    engine = Engine(config, store, clock=clock)
    running = asyncio.ensure_future(engine.run())
    async with asyncio.timeout(10):
        await engine.ready.wait()
    for message in (reading(1, 5), reading(2, 7)):
        engine.ingest.offer(*message)
    async with asyncio.timeout(10):
        while len(await rows(store)) < 3:  # noqa: ASYNC110 - polls the store, no event
            await asyncio.sleep(0.01)
    return engine, running


async def test_a_reload_that_changes_the_window_drops_its_open_windows(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def cfg(size: str, topic: str = "agg") -> Config:
        text = RELOADED.format(data=tmp_path, size=size, topic=topic)
        return validate(text, "gateway.yaml")

    def window() -> object:
        return engine.router.stateful()[0][1]  # type: ignore[union-attr]

    clock = FakeClock()
    clock.now = 2_000_000_000.0
    first = cfg("10s")
    engine, running = await two_windows_open(first, store, clock)
    # only the output topic changes: the open windows are kept
    same_shape = cfg("10s", topic="other")
    assert await engine.apply(same_shape, plan(first, same_shape)) == []
    assert len(window().kv) == 3 and window().dropped == 0  # type: ignore[attr-defined]
    # the window size changes: windows of 10 s are not continued as windows of 20 s
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        bigger = cfg("20s", topic="other")
        assert await engine.apply(bigger, plan(same_shape, bigger)) == []
    assert window().dropped == 2  # type: ignore[attr-defined]
    assert list(window().kv.keys()) == ["~meta"]  # type: ignore[attr-defined]
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "2 open windows" in dropped[0], dropped
    engine.ingest.offer(*reading(1, 1))
    await until(lambda: len(window().kv) == 2)  # the new window and the fingerprint
    clock.now += 20
    await engine._commit([], tick=True)
    engine.stop()
    async with asyncio.timeout(10):
        await running
    got = [o for o in await outputs(store) if o.get("group") == "1"]
    # one window of 20 s (from 03:33:20) with the reading after the reload, none before it
    assert [(o["v"], o["end"]) for o in got] == [
        ({"count": 1, "sum": 1}, "2033-05-18T03:33:40.000Z")
    ]
    # a new engine on the same store keeps the count
    again = Engine(bigger, store, clock=clock)
    again.router = again._build_router()
    await again._load_kv([p for _, p in again.router.stateful()])
    assert again.router.stateful()[0][1].dropped == 2  # type: ignore[attr-defined]


async def test_a_sink_a_reload_adds_is_noted_as_run_before_it_is_routed_to(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was noted only after the stops of the reload (seconds): `store drop-sink`
    meanwhile dropped a sink the new router already routed to."""
    text = RELOADED.format(data=tmp_path, size="10s", topic="agg")
    first = validate(text, "gateway.yaml")
    more = validate(
        text.replace("sinks: [out]", "sinks: [out, more]")
        + f"  more: {{type: file, path: {tmp_path}/more.jsonl}}\n",
        "gateway.yaml",
    )
    engine, running = await two_windows_open(first, store, FakeClock())
    noted: list[object] = []
    build = engine._build_router

    def routes(*args: Any) -> Any:
        with sqlite3.connect(store.path) as db:
            noted.extend(db.execute("SELECT active FROM sinks WHERE name = 'more'"))
        return build(*args)

    monkeypatch.setattr(engine, "_build_router", routes)
    assert await engine.apply(more, plan(first, more)) == []
    assert noted == [(1,)]
    engine.stop()
    async with asyncio.timeout(10):
        await running


async def test_the_log_counts_flowfiles_and_dead_letters_apart_and_no_message_given_up(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """One FlowFile dead-lettered for two sinks was logged as 2 FlowFiles; a commit of
    state only given up at a stop logged "0 message(s) ... were not stored"."""
    text = f"""
gateway: {{id: t, data_dir: {tmp_path}}}
buffer: {{batch_linger: 0}}
web: {{enabled: false}}
routes:
  all: {{match: "#", sinks: [out, more]}}
sinks:
  out: {{type: file, path: {tmp_path}/out.jsonl}}
  more: {{type: file, path: {tmp_path}/more.jsonl}}
"""
    cfg = validate(text, "gateway.yaml")
    await store.register_sinks(["more"])
    store.max_bytes = 300
    engine = Engine(cfg, store, clock=FakeClock())
    engine.router = engine._build_router()
    with caplog.at_level(logging.WARNING):
        await engine._commit([("src", Message(FlowFile.create("plant/x", b"x" * 400)))])
        engine._give_up(0, "the store refused it")
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and "1 FlowFiles dead-lettered, 2 dead letters" in logged[0]


async def test_state_left_behind_by_a_processor_moved_in_its_route_is_named_once(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A json processor put before the window renames its state agg.0 -> agg.1: the open
    windows of agg.0 are not continued. That was silent (no log line, no count, the
    state kept in the store for ever); now a WARNING names it and how to forget it."""
    first = validate(RELOADED.format(data=tmp_path, size="10s", topic="agg"), "gateway.yaml")
    text = RELOADED.format(data=tmp_path, size="10s", topic="agg")
    moved_text = text.replace("    processors:\n", "    processors:\n      - {type: json}\n")
    moved = validate(moved_text, "gateway.yaml")
    clock = FakeClock()
    clock.now = 2_000_000_000.0
    engine, running = await two_windows_open(first, store, clock)
    with caplog.at_level(logging.WARNING):
        assert await engine.apply(moved, plan(first, moved)) == []
        assert await engine.apply(first, plan(moved, first)) == []  # back: agg.0 is owned
        assert await engine.apply(moved, plan(first, moved)) == []  # told once already
    told = [r.getMessage() for r in caplog.records if "belongs to no processor" in r.getMessage()]
    assert len(told) == 1, told
    assert "the kept state agg.0 (3 keys" in told[0]
    assert "'edge-stream state reset agg.0'" in told[0]
    engine.stop()
    async with asyncio.timeout(10):
        await running


async def test_a_stateful_processor_put_where_another_kept_its_state_drops_that_state(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A deadband put before the window takes the name agg.0, where the window's open
    windows are kept: it read them as its own and failed (KeyError 'c': the reload rolled
    back with "routes: 'c'", a restart stopped with a traceback). Now that state is
    dropped with a WARNING and deleted from the store, and the window put back at agg.0
    does not read the deadband's either."""
    text = RELOADED.format(data=tmp_path, size="10s", topic="agg")
    first = validate(text, "gateway.yaml")
    deadband = "      - {type: deadband, fields: {v: {absolute: 1}}}\n"
    second = validate(text.replace("    processors:\n", "    processors:\n" + deadband), "gw.yaml")
    clock = FakeClock()
    clock.now = 2_000_000_000.0
    engine, running = await two_windows_open(first, store, clock)
    with caplog.at_level(logging.WARNING):
        assert await engine.apply(second, plan(first, second)) == []
        engine.ingest.offer(*reading(3, 9))
        async with asyncio.timeout(10):
            while ("agg.0", "plant/x") not in await rows(store):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert sorted(k for c, k in await rows(store) if c == "agg.0") == ["plant/x"]
        assert await engine.apply(first, plan(second, first)) == []
    told = [r.getMessage() for r in caplog.records if "was not written by" in r.getMessage()]
    assert told == [
        "engine: the kept state agg.0 (3 keys) was not written by the deadband processor now"
        " at agg.0 (a processor was added or removed before it in its route); it is dropped,"
        " not continued",
        "engine: the kept state agg.0 (1 keys) was not written by the window processor now"
        " at agg.0 (a processor was added or removed before it in its route); it is dropped,"
        " not continued",
    ]
    engine.stop()
    async with asyncio.timeout(10):
        await running


async def test_the_dropped_count_outlives_a_restart_with_no_window_open(
    tmp_path: Path, store: Store
) -> None:
    # The drop cleared the state, ~meta (which holds late and dropped) with it, and put
    # nothing back until a new window opened: a restart before then read 0 and 0.
    def cfg(size: str) -> Config:
        return validate(RELOADED.format(data=tmp_path, size=size, topic="agg"), "gateway.yaml")

    clock = FakeClock()
    clock.now = 2_000_000_000.0
    first = cfg("10s")
    engine, running = await two_windows_open(first, store, clock)
    bigger = cfg("20s")
    assert await engine.apply(bigger, plan(first, bigger)) == []
    await engine._commit([], tick=True)  # the engine's timer, each second
    engine.stop()
    async with asyncio.timeout(10):
        await running
    again = Engine(bigger, store, clock=clock)
    again.router = again._build_router()
    await again._load_kv([p for _, p in again.router.stateful()])
    assert again.router.stateful()[0][1].dropped == 2  # type: ignore[attr-defined]


async def test_late_early_and_evicted_counts_are_in_the_status_and_the_metrics(
    tmp_path: Path, store: Store
) -> None:
    text = RELOADED.replace(
        "{{type: window, size: {size}, group_by: field.id,",
        "{{type: window, size: {size}, group_by: field.id, time: event, time_field: t,"
        " max_state: 4096,",
    ).format(data=tmp_path, size="10s", topic="agg")
    engine = Engine(validate(text, "gateway.yaml"), store, clock=FakeClock())
    engine.router = engine._build_router()
    await engine._load_kv([p for _, p in engine.router.stateful()])

    def message(device: int, t: int) -> tuple[str, Message]:
        body = json.dumps({"id": device, "v": 1, "t": t}).encode()
        return "src", Message(FlowFile.create("plant/x", body))

    # 40 groups in one window: over 4096 bytes the oldest close early; then one late reading
    await engine._commit([message(device, 1_000) for device in range(40)])
    await engine._commit([message(1, 2_000), message(2, 1_000)])
    shown = engine.snapshot().to_json()["routes"]["agg"]["processor_state"]["agg.0"]
    assert shown["late"] == 1 and shown["open"] == 1, shown
    assert shown["early"] == shown["evicted"] > 0, shown
    assert shown["state_keys"] == 2 and shown["state_bytes"] > 0, shown  # the window and ~meta
    closed_on_time = 40 - shown["early"]
    assert len(await outputs(store)) == 40 and closed_on_time > 0

    class View:
        store = engine.store

        def snapshot(self) -> Any:
            return engine.snapshot()

    doc = metrics_json(registry_for(View()))
    labels = {"route": "agg", "processor": "agg.0"}

    def sample(family: str, name: str) -> float:
        (value,) = [
            s["value"]
            for s in doc[family]["samples"]
            if s["name"] == name and s["labels"] == labels
        ]
        return float(value)

    assert sample("edge_stream_window_late", "edge_stream_window_late_total") == 1
    early = sample("edge_stream_window_early_closed", "edge_stream_window_early_closed_total")
    assert early == shown["early"]
    assert (
        sample("edge_stream_processor_state_evicted", "edge_stream_processor_state_evicted_total")
        == early
    )
    assert sample("edge_stream_window_open", "edge_stream_window_open") == 1
    assert sample("edge_stream_window_dropped", "edge_stream_window_dropped_total") == 0


async def test_a_state_reset_left_for_the_next_start_does_not_wait_for_a_full_buffer(
    tmp_path: Path,
) -> None:
    """The resets `state reset` leaves for the next start are committed before the sinks
    run; with the buffer full of data a `block` sink waits for, that commit waited for
    room only the sinks could make, and the gateway never started (nor stopped)."""
    text = RELOADED.format(data=tmp_path, size="10s", topic="agg").replace(
        "buffer: {batch_linger: 0}", "buffer: {batch_linger: 0, max_bytes: 1MiB, overflow: block}"
    )
    cfg = validate(text, "gateway.yaml")
    store = Store(tmp_path / "store.db", max_bytes=1 << 20, overflow="block")
    await store.open(["out"])
    first = Engine(cfg, store, clock=FakeClock())
    first.router = first._build_router()
    await first._commit([reading(1, 5)])
    bit = store.bit("out")
    full = [(FlowFile.create("plant/y", b'{"v": 1}' + b" " * 2000), bit) for _ in range(600)]
    await store.commit(Batch(full, [], {}, []))
    assert store.over_budget
    await store.close()
    with admin.open_admin(tmp_path / "store.db") as a:
        assert a.reset_state("agg.0", running=False) == "done"
    store = Store(tmp_path / "store.db", max_bytes=1 << 20, overflow="block")
    await store.open(["out"])
    try:
        engine = Engine(cfg, store, clock=FakeClock())
        running = asyncio.ensure_future(engine.run())
        async with asyncio.timeout(10):
            await engine.ready.wait()
        assert await rows(store) == []
        engine.stop()
        async with asyncio.timeout(10):
            await running
    finally:
        await store.close()


async def test_a_start_position_the_store_cannot_keep_is_the_sources_retryable_error(
    tmp_path: Path,
) -> None:
    """A sql source with `start: end` commits its first position at connect; a store
    error there crashed the source (a traceback, and the runner restarted it without
    closing its database connection). It is a retryable error: the runner closes it."""
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    engine = Engine(config(tmp_path), store, clock=FakeClock())
    await store.close()
    with pytest.raises(RetryableError, match="cannot keep its start position in the store"):
        await engine._save_position("db", b"[1]")

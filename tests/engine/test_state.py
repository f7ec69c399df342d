"""Processor key/value state on a real store: written with the batch that changed it (only
the changed keys), restored by a new engine, closed by the engine's timer, reset through
the store's inbox like a dead-letter replay."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
from gateway.core.flowfile import FlowFile
from gateway.engine.pipeline import Engine
from gateway.store import admin
from gateway.store.sqlite import Store
from tests.engine.test_engine import FakeClock

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
    assert await rows(store) == []


async def test_state_reset_goes_through_the_running_engine(tmp_path: Path, store: Store) -> None:
    clock = FakeClock()
    engine = await started(config(tmp_path), store, clock)
    await engine._commit([reading(1, 5), reading(2, 7)])
    with admin.open_admin(store.path) as a:
        assert [(s.component, s.keys) for s in a.states()] == [("agg.0", 2)]
        assert a.reset_state("agg.0", running=True) == "asked"
    assert len(await rows(store)) == 2, "the running gateway does it, not the CLI"
    await engine._reset_state()
    assert await rows(store) == []
    processor = engine.router.stateful()[0][1]  # type: ignore[union-attr]
    assert processor.kv is not None and len(processor.kv) == 0
    assert await store._query("SELECT * FROM state_reset") == []

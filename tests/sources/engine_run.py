"""Runs a real engine and store in the test process, for the source tests: a source
named `rows` routed to a JSON Lines file sink `out` (tmp_path/out.jsonl)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import load_data
from gateway.engine.pipeline import Engine
from gateway.store.sqlite import Store


def config_for(tmp_path: Path, source: dict[str, Any]) -> Any:
    return load_data(
        {
            "gateway": {"id": "t", "data_dir": str(tmp_path)},
            "buffer": {"batch_linger": "0s"},
            "sources": {"rows": source},
            "routes": {"all": {"match": ["#"], "sinks": ["out"]}},
            "sinks": {"out": {"type": "file", "path": "out.jsonl", "batch": {"linger": "0s"}}},
            "web": {"enabled": False},
        },
        environ={},
    )


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    """The complete lines of out.jsonl: one the file sink is writing now is not yet one
    (a large batch goes out in several writes)."""
    path = tmp_path / "out.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


async def until(check: Callable[[], bool]) -> None:
    """Let the loop run until `check` holds (a guard, not a measurement: 30 s)."""
    async with asyncio.timeout(30):
        while not check():  # noqa: ASYNC110 - checks over files and fields, no event
            await asyncio.sleep(0.05)


@pytest.fixture
async def run_engine(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`engine = await run_engine(source_keys)`, and `await stop()` on it; a store that
    stays in tmp_path across engines, as across restarts."""
    running: list[tuple[Engine, asyncio.Future[None], Store]] = []

    async def start(source: dict[str, Any]) -> Engine:
        store = Store(tmp_path / "store.db")
        await store.open(["out"])
        engine = Engine(config_for(tmp_path, source), store)
        task = asyncio.ensure_future(engine.run())
        await engine.ready.wait()
        running.append((engine, task, store))
        STOPS[id(engine)] = task
        return engine

    yield start
    for engine, task, store in running:
        if not task.done():
            engine.stop()
            await task
            await store.close()


STOPS: dict[int, asyncio.Future[None]] = {}


async def stop(engine: Engine) -> None:
    """Stop as the gateway does on SIGTERM: what was read is committed first."""
    engine.stop()
    await STOPS.pop(id(engine))
    await engine.store.close()

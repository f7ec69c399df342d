"""The gateway process: its heap settling (gateway/app.py `settle_heap`) and what a reload
says it changed besides the engine (`process_changes`)."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import GC_YOUNG_THRESHOLD, process_changes, settle_heap
from gateway.config.load import load_data
from gateway.config.model import Config
from gateway.core.flowfile import FlowFile
from gateway.store.sqlite import Batch, Store, StoreError, hold_data_dir, let_go_data_dir

pytestmark = pytest.mark.unit


class Node:
    """An object that can sit in a reference cycle."""

    other: Node | None = None


@pytest.fixture
def gc_restored() -> Iterator[None]:
    """The test process's collector as it was: nothing frozen, the same thresholds."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_heap_freezes_what_lives_and_raises_the_young_threshold(
    gc_restored: None,
) -> None:
    gc.unfreeze()
    alive = Node()
    settle_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    # what is frozen is left out of collections: a full one tracks none of it
    assert not any(obj is alive for obj in gc.get_objects())


def test_a_cycle_frozen_by_an_earlier_settle_is_freed_by_the_next(gc_restored: None) -> None:
    """A reload lets go of objects frozen when the engine started: the next settle_heap
    (after the reload) must free them, not keep them for good."""
    gc.unfreeze()
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    settle_heap()  # the engine is up: the cycle is alive, and frozen
    del a, b  # the reload drops it
    gc.collect()
    assert gone() is not None  # frozen: no collection sees it
    settle_heap()
    assert gone() is None


def _with_rule(**rule: str) -> Config:
    data: dict[str, Any] = {"sinks": {"db": {"type": "file", "path": "/tmp/x"}}}
    if rule:
        data["alerts"] = {"rules": {"behind": {"condition": "sink_backlog", **rule}}}
    return load_data(data, "gw.yaml")


def test_a_reload_that_adds_an_alert_rule_says_so_once() -> None:
    # It said `alerts changed (rules, rules.behind.condition, rules.behind.older_than,
    # rules.behind.per_minute, ...)`: every default of the rule, none of them written.
    old, new = _with_rule(), _with_rule(older_than="5m")
    assert process_changes(old, new) == ["alerts changed (rules.behind added)"]
    assert process_changes(new, old) == ["alerts changed (rules.behind removed)"]
    # a changed key is said as before
    changed = _with_rule(older_than="7m")
    assert process_changes(new, changed) == ["alerts changed (rules.behind.older_than)"]


async def test_a_new_data_dir_says_what_it_leaves_behind_once_the_new_store_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line on what the old data_dir's store keeps undelivered was logged before the
    new store opened: when it could not, the old store was opened again, and the log
    said its backlog was left behind all the same. It counted too the sinks the same
    reload removed, which no data_dir delivers to."""
    from gateway.app import Gateway

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    store = Store(one / "store.db")
    await store.open(["a", "b"])
    both = store.bit("a") | store.bit("b")
    await store.commit(Batch([(FlowFile.create("t/1", b"1"), both)], [], {}, []))
    await store.close()

    def config(data_dir: Path, sinks: str) -> Config:
        sink = {"type": "http", "url": "http://127.0.0.1:9/in"}
        doc = {"gateway": {"id": "t", "data_dir": str(data_dir)}, "web": {"enabled": False}}
        return load_data({**doc, "sinks": {n: sink for n in sinks}}, environ={})

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "left in" in r.getMessage()]

    gateway = Gateway(config(one, "ab"))
    lock = hold_data_dir(one)
    await gateway._open_store()
    try:
        (two / "store.db").mkdir()  # the new data_dir's store cannot be opened
        with pytest.raises(StoreError):
            await gateway._switch(config(two, "ab"), lock)
        assert gateway._store is not None and gateway._store.path == one / "store.db"
        assert said() == [], "the old store runs again: nothing was left behind"
        (two / "store.db").rmdir()
        lock = await gateway._switch(config(two, "a"), lock)  # b removed by the same reload
        assert gateway._store is not None and gateway._store.path == two / "store.db"
        assert said() == [
            f"gateway: FlowFiles left in {one}/store.db, undelivered (1 for sink a): the"
            " store of the new data_dir does not have them; set gateway.data_dir back to"
            " deliver them"
        ]
    finally:
        await gateway._close_store()
        let_go_data_dir(lock)


async def test_the_startup_line_is_logged_with_the_console_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With web.enabled: false the gateway logged no line saying it was up (nor which
    broker it used): the README's startup line came only with a status page."""
    import asyncio

    from gateway.app import Gateway

    config = load_data(
        {
            "gateway": {"id": "quiet", "data_dir": str(tmp_path)},
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
            "routes": {"all": {"match": "#", "sinks": ["out"]}},
            "sinks": {"out": {"type": "file"}},
            "status": {"enabled": False},
            "web": {"enabled": False},
        },
        environ={},
    )
    up = asyncio.Event()

    class Up(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if " is up; " in record.getMessage():
                up.set()

    caplog.set_level("INFO", logger="gateway")
    handler = Up()
    logging.getLogger("gateway").addHandler(handler)
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    try:
        async with asyncio.timeout(10):
            await up.wait()
    finally:
        logging.getLogger("gateway").removeHandler(handler)
        gateway.stop()
        await task
    said = [r.getMessage() for r in caplog.records if " is up; " in r.getMessage()]
    assert said == ["gateway: quiet is up; status page off (web.enabled: false)"]


async def test_a_reload_that_runs_a_new_engine_polls_a_failing_source_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that changes the mqtt section runs a new engine: a cron source (0 3 * * *)
    failing in the old one, its URL put right by the same reload, waited for 03:00 in the
    new one, "running" with no error and its source_offline alert firing till then."""
    import asyncio
    import dataclasses

    from gateway import registry
    from gateway.app import Gateway
    from gateway.config.model import MqttSection
    from tests.engine.test_engine import (
        CronConfig,
        CronSource,
        FakeClock,
        FakeSink,
        advance_until,
        fake_config,
    )

    classes = {("source", "cron"): CronSource, ("sink", "fake"): FakeSink}
    monkeypatch.setattr(registry, "find", lambda k, n: registry.Entry(k, n, classes[(k, n)]))
    monkeypatch.setattr(CronSource, "polls", [])
    monkeypatch.setattr(FakeSink, "events", [])
    monkeypatch.setattr(FakeSink, "release", asyncio.Event())
    FakeSink.release.set()
    config = dataclasses.replace(
        fake_config(tmp_path),
        mqtt=MqttSection(url="mqtt://127.0.0.1:1"),
        sources={"src": CronConfig(type="cron", url="http://bad")},
    )
    clock = FakeClock()
    gateway = Gateway(config, clock=clock)
    task = asyncio.create_task(gateway.run())
    try:
        await advance_until(clock, lambda: bool(CronSource.polls), step=60.0, within=10.0)
        fixed = dataclasses.replace(
            config,
            mqtt=MqttSection(url="mqtt://127.0.0.1:2"),
            sources={"src": CronConfig(type="cron", url="http://fixed")},
        )
        outcome, errors, _ = await gateway.apply(fixed)
        assert (outcome, errors) == ("applied", [])
        await advance_until(clock, lambda: CronSource.polls[-1] == "http://fixed", within=2.0)
    finally:
        gateway.stop()
        async with asyncio.timeout(10):
            await task

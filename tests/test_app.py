"""The gateway process: its heap settling (gateway/app.py `settle_heap`) and what a reload
says it changed besides the engine (`process_changes`)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.app import GC_YOUNG_THRESHOLD, process_changes, settle_heap
from gateway.config.load import load_data
from gateway.config.model import Config

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

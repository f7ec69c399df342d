"""What a reload stops, starts and updates (gateway/engine/plan.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.config.load import load_data
from gateway.config.model import Config
from gateway.engine.plan import plan

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "sources": {
        "plc": {"type": "system", "interval": "1s"},
        "host": {"type": "system", "interval": "5s"},
    },
    "routes": {"all": {"match": "#", "sinks": ["out"]}},
    "sinks": {"out": {"type": "file", "path": "out.jsonl"}},
}


def config(change: Any = None) -> Config:
    data = copy.deepcopy(BASE)
    if change is not None:
        change(data)
    return load_data(data, "gw.yaml", {}, {})


def test_nothing_changed_is_an_empty_plan() -> None:
    p = plan(config(), config())
    assert p.empty and p.restart is None and not p.routes


def test_only_what_changed_is_stopped_and_started() -> None:
    def change(d: dict[str, Any]) -> None:
        d["sources"]["plc"]["interval"] = "2s"
        d["sinks"]["two"] = {"type": "file", "path": "two.jsonl"}
        d["routes"]["all"]["sinks"].append("two")

    p = plan(config(), config(change))
    assert p.restart is None
    assert p.sources_stop == ["plc"] and p.sources_start == ["plc"]
    assert p.sinks_start == ["two"] and p.sinks_stop == [] and p.routes
    assert p.changes == ["source plc changed", "sink two added", "route all changed"]


def test_delivery_settings_are_taken_in_place() -> None:
    def change(d: dict[str, Any]) -> None:
        d["sinks"]["out"]["batch"] = {"max_rows": 10}
        d["sinks"]["out"]["rate_limit"] = 5

    p = plan(config(), config(change))
    assert p.sinks_update == ["out"] and p.sinks_stop == [] and p.sinks_start == []
    moved = plan(config(), config(lambda d: d["sinks"]["out"].update(path="other.jsonl")))
    assert moved.sinks_stop == ["out"] and moved.sinks_start == ["out"]


@pytest.mark.parametrize(
    ("section", "value", "why"),
    [
        ("gateway", {"id": "other"}, "gateway.id changed"),
        ("mqtt", {"keepalive": "10s"}, "mqtt changed"),
        ("buffer", {"max_bytes": "10MiB"}, "the store's settings (buffer) changed"),
        # the store is opened again with the dead letters' new budget
        ("buffer", {"dead_letters_max_bytes": "8MiB"}, "the store's settings (buffer) changed"),
    ],
)
def test_what_reaches_every_component_restarts_the_engine(
    section: str, value: dict[str, Any], why: str
) -> None:
    p = plan(config(), config(lambda d: d.update({section: value})))
    assert p.restart == why
    assert p.changes[0] == f"engine restarted ({why})"


def test_batch_sizes_and_a_removed_sink() -> None:
    def change(d: dict[str, Any]) -> None:
        d["buffer"] = {"batch_max": 100}
        d["sinks"]["two"] = {"type": "file", "path": "two.jsonl"}

    p = plan(config(change), config(lambda d: d.update(buffer={"batch_max": 200})))
    assert p.restart is None
    assert p.sinks_stop == ["two"]
    assert p.changes == ["buffer.batch_max 100 -> 200", "sink two removed"]


def test_a_changed_linger_is_said_as_a_config_writes_it() -> None:
    """As `config diff` says it: `edge-stream reload` printed `buffer.batch_linger 0.005 ->
    2.0`."""
    p = plan(config(), config(lambda d: d.update(buffer={"batch_linger": "2s"})))
    assert p.changes == ["buffer.batch_linger 5ms -> 2s"]

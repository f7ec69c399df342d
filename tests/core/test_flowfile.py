"""FlowFile ids (UUIDv7) and derivation."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from gateway.core import flowfile as flowfile_module
from gateway.core.flowfile import FlowFile, attributes_json, uuid7

pytestmark = pytest.mark.unit


def _ms(u: str) -> int:
    return uuid.UUID(u).int >> 80


def test_uuid7_is_a_version_7_rfc_9562_uuid_with_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    u = uuid7()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(u)
    assert str(parsed) == u
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    # Equal to the clock, or up to a few ms ahead if earlier tests used the
    # counter so hard that it borrowed milliseconds.
    assert before <= _ms(u) <= after + 100


def test_100k_ids_are_unique_and_sorted_in_creation_order() -> None:
    ids = [uuid7() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    # As UUID objects too (what a uuid column in PostgreSQL compares).
    as_uuid = [uuid.UUID(u) for u in ids[::97]]
    assert as_uuid == sorted(as_uuid)


def test_ids_stay_ordered_when_the_counter_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """More than 4096 ids in one millisecond borrow the next millisecond."""
    frozen = 1_900_000_000_000 * 1_000_000
    monkeypatch.setattr(flowfile_module, "_last_ms", 0)
    monkeypatch.setattr(flowfile_module, "_seq", 0)
    monkeypatch.setattr(time, "time_ns", lambda: frozen)
    ids = [uuid7() for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert _ms(ids[0]) == 1_900_000_000_000
    assert _ms(ids[-1]) > _ms(ids[0])


def test_ids_stay_ordered_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pi without an RTC sets its clock at boot; ids must not go backwards."""
    now = [2_000_000_000_000 * 1_000_000]
    monkeypatch.setattr(flowfile_module, "_last_ms", 0)
    monkeypatch.setattr(flowfile_module, "_seq", 0)
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    first = [uuid7() for _ in range(10)]
    now[0] -= 3_600 * 10**9  # one hour back
    later = [uuid7() for _ in range(10)]
    ids = first + later
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_create() -> None:
    a = FlowFile.create("sensors/a", b"1")
    b = FlowFile.create("sensors/a", b"1", {"k": "v"}, created=42)
    assert a.id != b.id and a.id < b.id
    assert a.attributes == {} and a.lineage == ()
    assert abs(a.created - time.time_ns()) < 10 * 10**9
    assert b.attributes == {"k": "v"} and b.created == 42
    a.attributes["x"] = "y"
    assert FlowFile.create("t", b"").attributes == {}  # no shared default dict


def test_derive_makes_a_child() -> None:
    parent = FlowFile.create("sensors/a", b'{"t": 1}', {"mqtt.qos": "1"}, created=1000)
    child = parent.derive(content=b'{"t": 2}')
    assert child.id != parent.id and child.id > parent.id
    assert child.lineage == (parent.id,)
    assert child.topic == "sensors/a" and child.created == 1000
    assert child.content == b'{"t": 2}'
    assert child.attributes == {"mqtt.qos": "1"}
    assert child.attributes is not parent.attributes  # changing one cannot change the other
    moved = parent.derive(topic="clean/a", attributes={"x": "1"})
    assert moved.topic == "clean/a" and moved.content == parent.content
    assert moved.attributes == {"x": "1"}
    grandchild = child.derive()
    assert grandchild.lineage == (child.id,)
    assert parent.content == b'{"t": 1}'  # the parent never changes


def test_empty_content_is_kept_not_inherited() -> None:
    parent = FlowFile.create("t", b"data")
    assert parent.derive(content=b"").content == b""
    assert parent.derive(topic="").topic == ""


def test_large_attribute_sets_are_encoded_but_not_kept() -> None:
    """Per-message MQTT user properties of 500 KB must not stay in the cache (8192 of them)."""
    big = {"mqtt.user.pad": "p" * 500_000}
    assert json.loads(attributes_json(big)) == big
    assert id(big) not in flowfile_module._by_identity
    assert all(
        len(text) <= flowfile_module.CACHED_JSON_MAX
        for text in flowfile_module._attributes_json.values()
    )
    small = {"mqtt.topic": "t/1"}
    assert attributes_json(small) == '{"mqtt.topic":"t/1"}'
    assert flowfile_module._by_identity[id(small)][0] is small  # the shared ones are

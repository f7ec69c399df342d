"""The deadband processor: absolute and percent bands, heartbeat by timer, state restore."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from gateway.config.schema import Problems, build_component
from gateway.core.component import Context
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.core.state import encode_json
from gateway.processors.deadband import DeadbandProcessor
from tests.processors.test_window import FakeClock, S

pytestmark = pytest.mark.unit


def make(config: dict[str, Any], clock: FakeClock) -> DeadbandProcessor:
    problems = Problems()
    cfg = build_component("processor", {"type": "deadband", **config}, ("p",), problems)
    assert not problems.items, problems.items
    return DeadbandProcessor(cfg, Context("r.0", "processor", clock=clock))


def passed(p: DeadbandProcessor, topic: str, **fields: Any) -> bool:
    return bool(p.process(FlowFile.create(topic, json.dumps(fields).encode())))


def test_absolute_and_percent_bands_per_field_and_topic() -> None:
    p = make({"fields": {"t": {"absolute": 0.5}, "h": {"percent": 10}}}, FakeClock())
    assert passed(p, "a", t=20.0, h=50)  # first reading
    assert not passed(p, "a", t=20.4, h=54)
    assert passed(p, "a", t=20.6, h=50)  # t moved 0.6 from the last sent (20.0)
    assert not passed(p, "a", t=20.9, h=54.9)
    assert passed(p, "a", t=20.9, h=55.1)  # h moved more than 10 % of 50
    assert passed(p, "b", t=20.9, h=55.1), "another topic has its own last values"
    assert not passed(p, "a", other=1), "no configured field: nothing moved"


def test_heartbeat_sends_the_last_reading_again_after_the_silence() -> None:
    clock = FakeClock()
    p = make({"fields": {"t": {"absolute": 1}}, "heartbeat": "1m"}, clock)
    assert passed(p, "a", t=1)
    clock.ns += 30 * S
    assert not passed(p, "a", t=1.5)
    assert p.tick(clock.ns) == []
    clock.ns += 31 * S
    [beat] = p.tick(clock.ns)
    assert beat.topic == "a" and json.loads(beat.content) == {"t": 1.5}
    assert p.tick(clock.ns + S) == [], "the silence starts again"


def test_a_restart_from_the_checkpoint_keeps_the_last_values() -> None:
    clock = FakeClock()
    p = make({"fields": {"t": {"absolute": 1}}}, clock)
    assert passed(p, "a", t=1)
    assert p.kv is not None
    rows = [(k, s, v) for k, s, v in p.kv.changes() if v is not None]
    again = make({"fields": {"t": {"absolute": 1}}}, clock)
    assert again.kv is not None
    again.kv.restore(rows)
    again.restored()
    assert not passed(again, "a", t=1.5)


def test_an_integer_past_a_doubles_range_is_refused_and_the_group_goes_on() -> None:
    """Such an integer once passed, then every later reading of its group failed with
    an internal error (an OverflowError comparing it with a float), for ever."""
    p = make({"fields": {"t": {"percent": 5}}}, FakeClock())
    assert passed(p, "a", t=1.5)
    with pytest.raises(PermanentError, match=r"field 't' is a number \(1000.*deadband needs"):
        p.process(FlowFile.create("a", b'{"t": 1' + b"0" * 400 + b"}"))
    assert passed(p, "a", t=2.5)
    assert not passed(p, "a", t=2.55)


def test_a_percent_band_of_a_value_near_a_doubles_range_is_not_infinite() -> None:
    """10% of 1e308 was computed as 1e308 * 10 / 100, which overflowed to infinity: from
    such a value on, no change of its group passed any more (only the heartbeat)."""
    p = make({"fields": {"t": {"percent": 10}}}, FakeClock())
    assert passed(p, "a", t=1e308)
    assert not passed(p, "a", t=9.5e307)
    assert passed(p, "a", t=-1e308)
    assert passed(p, "a", t=0)


def test_a_group_that_is_no_valid_text_is_refused() -> None:
    """A lone surrogate in the group_by field became a state key that SQLite could not
    store: the gateway's ingest crashed on the commit and then took in nothing more."""
    p = make({"fields": {"t": {"absolute": 1}}, "group_by": "field.dev"}, FakeClock())
    with pytest.raises(PermanentError, match="lone surrogate"):
        p.process(FlowFile.create("a", b'{"dev": "\\ud800", "t": 1}'))
    assert passed(p, "a", dev="ok", t=1)
    assert p.kv is not None and list(p.kv.keys()) == ["ok"]


def test_groups_whose_topic_starts_with_a_tilde_are_held_to_max_state_too() -> None:
    # State keys starting with `~` are an owner's bookkeeping, never evicted; a deadband's
    # keys are topics from outside, so `~1`, `~2`, ... grew its state past max_state.
    p = make({"fields": {"t": {"absolute": 1}}, "max_state": "4KiB"}, FakeClock())
    for i in range(200):
        assert passed(p, f"~{i}", t=1)
    assert p.kv is not None
    assert p.kv.bytes <= 4096 and p.kv.evicted > 150


def test_long_topics_and_attributes_count_in_the_state_budget() -> None:
    """Only the last reading's content was counted: with 10 kB topics and 5 kB of
    attributes, a 64KiB budget held 2.7 MB."""
    p = make({"fields": {"v": {"absolute": 1}}, "group_by": "field.id", "max_state": 65536},
             FakeClock())  # fmt: skip
    topic = "t/" + "x" * 10_000
    for i in range(300):
        body = json.dumps({"id": i, "v": 1}).encode()
        p.process(FlowFile.create(topic, body, {"mqtt.user.note": "y" * 5000}))
    assert p.kv is not None
    held = sum(len(k) + len(encode_json(v)) for k, v in p.kv.items())
    assert held <= 65536
    assert p.kv.bytes <= 65536


def test_groups_forgotten_over_the_budget_are_not_kept_in_memory() -> None:
    """Each group evicted over max_state was kept, with its last reading, for a
    `take_evicted` nothing called: 10,000 groups of 1 kB under a 4KiB budget held 10 MB."""
    p = make({"fields": {"v": {"absolute": 1}}, "max_state": 4096}, FakeClock())
    tracemalloc.start()
    try:
        for i in range(2000):
            body = json.dumps({"v": 1, "pad": "x" * 1000}).encode()
            assert p.process(FlowFile.create(f"t/{i}", body)), "a new group passes"
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert p.kv is not None and p.kv.evicted >= 1990
    assert held < 500_000, f"{held} bytes held for a 4096-byte budget"


def test_a_reload_to_another_group_by_drops_the_old_groups_and_their_heartbeats() -> None:
    """Groups kept under group_by topic stayed after a reload to field.dev: never met
    again, their heartbeats repeated the last reading next to the new group's, for ever."""
    clock = FakeClock()
    config: dict[str, Any] = {"fields": {"t": {"absolute": 1}}, "heartbeat": "1m"}
    p = make(config, clock)
    assert passed(p, "plant/a", dev="a", t=1)
    assert p.kv is not None
    rows = [(k, s, v) for k, s, v in p.kv.changes() if v is not None]
    again = make({**config, "group_by": "field.dev"}, clock)
    assert again.kv is not None
    again.kv.restore(rows)
    again.restored()
    assert passed(again, "plant/a", dev="a", t=1)  # a new group: its first reading
    clock.ns += 61 * S
    assert [json.loads(ff.content) for ff in again.tick(clock.ns)] == [{"dev": "a", "t": 1}]
    same = make({**config, "group_by": "field.dev"}, clock)
    assert same.kv is not None
    same.kv.restore(again.kv.snapshot())
    same.restored()
    assert len(same.kv) == 1, "a restart under the same group_by keeps its groups"


def test_a_group_from_before_by_was_kept_is_dropped_at_a_later_group_by_change() -> None:
    """A group written without "by" (an older version) was kept as is for ever: quiet,
    only its heartbeat rewrote it, unstamped, so a later change of group_by kept it."""
    clock = FakeClock()
    config: dict[str, Any] = {"fields": {"t": {"absolute": 1}}, "heartbeat": "1m"}
    p = make(config, clock)
    assert passed(p, "plant/a", dev="a", t=1)
    assert p.kv is not None
    changes = [(k, s, json.loads(v)) for k, s, v in p.kv.changes() if v is not None]
    old = [(k, s, encode_json({f: x for f, x in v.items() if f != "by"})) for k, s, v in changes]
    upgraded = make(config, clock)
    assert upgraded.kv is not None
    upgraded.kv.restore(old)
    upgraded.restored()
    clock.ns += 61 * S
    assert len(upgraded.tick(clock.ns)) == 1  # its heartbeat, under the same group_by
    changed = make({**config, "group_by": "field.dev"}, clock)
    assert changed.kv is not None
    changed.kv.restore(upgraded.kv.snapshot())
    changed.restored()
    assert len(changed.kv) == 0


def test_a_heartbeat_makes_its_values_the_last_sent() -> None:
    clock = FakeClock()
    p = make({"fields": {"t": {"absolute": 0.5}}, "heartbeat": "1m"}, clock)
    assert passed(p, "a", t=20.0)
    assert not passed(p, "a", t=20.4)
    clock.ns += 61 * S
    [beat] = p.tick(clock.ns)
    assert json.loads(beat.content) == {"t": 20.4}
    # 0.6 from the 20.4 the receiver holds now (only 0.2 from the 20.0 sent before it)
    assert passed(p, "a", t=19.8)
    assert not passed(p, "a", t=20.2), "0.4 from 19.8, the last sent"


def test_a_heartbeat_past_100_years_is_refused_at_load() -> None:
    # 1e300 s passed check-config, and the gateway's start failed with an OverflowError
    problems = Problems()
    config = {"type": "deadband", "fields": {"t": {"absolute": 1}}, "heartbeat": 1e300}
    build_component("processor", config, ("p",), problems)
    assert problems.items == [(("p", "heartbeat"), "must be more than 0s and at most 100 years")]


def test_a_clock_set_back_sends_the_heartbeat_and_counts_the_silence_again() -> None:
    """The state kept the wall time of each group's last send: a clock set back (a board
    without RTC that ran a year ahead, corrected by NTP) sent no heartbeat, and passed
    no steady reading, until it came back to that time, a year later."""
    clock = FakeClock()
    p = make({"fields": {"t": {"absolute": 1}}, "heartbeat": "1m"}, clock)
    assert passed(p, "a", t=1) and passed(p, "b", t=1)
    clock.ns -= 30 * S  # set back by less than a heartbeat: no heartbeat yet
    assert p.tick(clock.ns) == []
    assert not passed(p, "a", t=1)
    clock.ns -= 365 * 86400 * S
    assert passed(p, "a", t=1), "a steady reading goes: the silence is unknown"
    assert [beat.topic for beat in p.tick(clock.ns)] == ["b"]
    assert p.tick(clock.ns + 59 * S) == [], "the silence counts from the new time"
    assert not passed(p, "b", t=1)
    assert [beat.topic for beat in p.tick(clock.ns + 60 * S)] == ["a", "b"]

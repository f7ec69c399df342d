"""The console's topics seen and sparkline series (gateway/engine/console.py) and the
JSON the web server gives of them (gateway/web/console_api.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.flowfile import FlowFile
from gateway.engine.console import PREVIEW, SERIES_POINTS, Series, TopicsSeen, preview_text
from gateway.engine.status import GatewayStatus, SinkStatus, Snapshot, SourceStatus
from gateway.web import console_api

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ff(topic: str, content: bytes = b"{}") -> FlowFile:
    return FlowFile.create(topic, content)


def test_topics_are_counted_rated_and_previewed() -> None:
    clock = Clock()
    seen = TopicsSeen(clock=clock)
    seen.note([ff("plant/a", b'{"t": 1}'), ff("plant/a", b'{"t": 2}'), ff("plant/b", b"\xff\x00")])
    clock.now += 10
    seen.note([ff("plant/a", b"x" * 1000)] * 20)
    rows = {r["topic"]: r for r in seen.rows(lambda t: True, lambda t: ["r1"], 10)}
    assert rows["plant/a"]["count"] == 22 and rows["plant/a"]["rate"] == 2.2
    assert rows["plant/a"]["payload"] == "x" * PREVIEW and rows["plant/a"]["truncated"]
    assert rows["plant/a"]["size"] == 1000 and rows["plant/a"]["last_seen"] == clock.now
    assert rows["plant/b"]["payload_hex"] == "ff00" and "payload" not in rows["plant/b"]
    assert rows["plant/b"]["routes"] == ["r1"]


def test_long_text_cut_inside_a_character_is_still_shown_as_text() -> None:
    """A preview cut at PREVIEW bytes can fall inside a multi-byte character: the text
    must not turn into hex for that (a euro sign is 3 bytes; 256 is not a multiple)."""
    seen = TopicsSeen(clock=Clock())
    seen.note([ff("plant/euro", "€".encode() * 200), ff("plant/bad", b"ok" + b"\xff" * 300)])
    rows = {r["topic"]: r for r in seen.rows(lambda t: True, lambda t: [], 10)}
    assert rows["plant/euro"]["payload"] == "€" * (PREVIEW // 3)
    assert rows["plant/euro"]["truncated"] and "payload_hex" not in rows["plant/euro"]
    assert "payload" not in rows["plant/bad"]  # binary stays hex
    assert preview_text("€".encode()[:2], cut=False) is None  # whole, yet broken: hex


def test_topics_seen_stay_within_their_limit() -> None:
    clock = Clock()
    seen = TopicsSeen(limit=100, clock=clock)
    for i in range(1000):
        clock.now += 1
        seen.note([ff(f"t/{i}")])
    assert len(seen) <= 100
    kept = [r["topic"] for r in seen.rows(lambda t: True, lambda t: [], 1000)]
    assert "t/999" in kept and "t/0" not in kept  # the longest unseen went


def test_long_topics_seen_stay_within_a_byte_budget() -> None:
    # 2,000 topics of 60 KB each (MQTT allows 64 KiB) took 120 MB of the gateway's
    # memory, and one /api/topics answer 120 MB more.
    clock = Clock()
    seen = TopicsSeen(clock=clock)
    for i in range(300):
        clock.now += 1
        seen.note([ff(f"t/{i:04d}/" + "x" * 60_000)])
    kept = [r["topic"] for r in seen.rows(lambda t: True, lambda t: [], 2000)]
    assert sum(len(t) for t in kept) <= seen.max_bytes
    assert kept[-1].startswith("t/0299/")  # the newest stays
    seen.note([ff("t/short")])
    assert "t/short" in [r["topic"] for r in seen.rows(lambda t: True, lambda t: [], 2000)]


def test_room_for_long_topics_is_made_for_many_at_once() -> None:
    # Once the byte budget bound before the count, every new topic sorted all the
    # topics to drop the one longest unseen: 132 us per new 600-byte topic, not 4 us.
    sorts = 0

    class Counted(TopicsSeen):
        def _make_room(self, size: int) -> None:
            nonlocal sorts
            sorts += 1
            super()._make_room(size)

    clock = Clock()
    seen = Counted(clock=clock)
    for i in range(6000):
        clock.now += 1
        seen.note([ff(f"t/{i:05d}/" + "x" * 592)])
    assert seen._bytes <= seen.max_bytes and len(seen) < seen.limit
    assert sorts <= 30, sorts  # ~4,300 topics past the budget: one sort per ~170 of them
    kept = [r["topic"] for r in seen.rows(lambda t: True, lambda t: [], 2000)]
    assert kept[-1].startswith("t/05999/") and not any(t.startswith("t/00000/") for t in kept)


class View:
    def __init__(self) -> None:
        self.topics = TopicsSeen()
        self.series = Series()

    def route_match(self, topic: str) -> list[str]:
        return ["alarms"] if topic.endswith("/alarm") else []


def test_the_topics_api_filters_and_refuses_bad_queries() -> None:
    view = View()
    view.topics.note([ff("plant/1/alarm"), ff("plant/1/temp"), ff("office/co2")])
    status, body = console_api.topics(view, {"filter": "plant/#"})
    assert status == 200 and [r["topic"] for r in body["topics"]] == [
        "plant/1/alarm",
        "plant/1/temp",
    ]
    assert body["topics"][0]["routes"] == ["alarms"] and body["seen"] == 3
    assert console_api.topics(view, {"filter": "plant/#/x"})[0] == 400
    assert console_api.topics(view, {"limit": "many"})[0] == 400
    assert console_api.route_match(view, {"topic": "a/alarm"}) == (
        200,
        {"topic": "a/alarm", "routes": ["alarms"]},
    )
    status, body = console_api.route_match(view, {"topic": "a/+"})
    assert status == 400 and "wildcards" in body["errors"][0]
    assert console_api.route_match(view, {})[0] == 400


def snapshot(produced: int, delivered: int, sinks: bool = True) -> Snapshot:
    sink = SinkStatus("file", "running", 3, delivered, 0, 0, None)
    return Snapshot(
        gateway=GatewayStatus("gw", 1.0, None, produced, 1),
        broker=None,
        store=Any,  # type: ignore[arg-type]
        sources={"plc": SourceStatus("running", produced, 0, None)},
        routes={},
        sinks={"out": sink} if sinks else {},
        dead_letters=0,
        unrouted=0,
    )


def test_series_keep_fifteen_minutes_and_forget_removed_components() -> None:
    series = Series()
    for i in range(SERIES_POINTS + 5):
        series.sample(snapshot(i, 2 * i))
    points = series.to_json()["series"]
    assert points["source plc produced"] == list(range(5, SERIES_POINTS + 5))
    assert points["sink out delivered"][-1] == 2 * (SERIES_POINTS + 4)
    assert points["sink out depth"][-1] == 3
    for _ in range(SERIES_POINTS):
        series.sample(snapshot(0, 0, sinks=False))
    assert "sink out delivered" not in series.to_json()["series"]

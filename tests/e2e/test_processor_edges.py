"""Readings at the edges of what a number is, through the real gateway's processors.

A new user's acceptance run: a window, a deadband and a transform on a real Mosquitto,
fed numbers past a double's range. Each such reading is dead-lettered with its reason
or aggregated to null; no window is lost, no group stops, no traceback is logged.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import publish_qos1 as publish
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e

BIG = '{"v": 1' + "0" * 400 + "}"  # a JSON integer past a double's 1.8e308


def outputs(path: Path) -> dict[str, list[Any]]:
    """The payloads written to the file sink, by topic."""
    out: dict[str, list[Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out.setdefault(row["topic"], []).append(row["payload"])
    return out


def one_route(mosquitto: Any, n: str, route: str, processor: dict[str, Any]) -> dict[str, Any]:
    """A config: what comes on `n`/+ through `processor` (route `route`) into out.jsonl."""
    return {
        "mqtt": {"url": mosquitto.url},
        "sources": {"plant": {"type": "mqtt", "topics": [f"{n}/#"], "qos": 1}},
        "routes": {route: {"match": f"{n}/+", "processors": [processor], "sinks": ["out"]}},
        "sinks": {"out": {"type": "file", "path": "out.jsonl"}},
    }


def test_numbers_past_a_doubles_range_lose_no_window_and_stop_no_group(
    mosquitto: Any, gateway_factory: Any
) -> None:
    n = f"edge{uuid.uuid4().hex[:8]}"
    gw = gateway_factory(
        {
            "mqtt": {"url": mosquitto.url},
            "sources": {"plant": {"type": "mqtt", "topics": [f"{n}/#"], "qos": 1}},
            "routes": {
                "win": {
                    "match": f"{n}/w/+",
                    "processors": [
                        {
                            "type": "window",
                            "size": "1s",
                            "group_by": "topic",
                            "aggregates": {"v": ["count", "sum", "max"]},
                        }
                    ],
                    "sinks": ["out"],
                },
                "band": {
                    "match": f"{n}/d/+",
                    "processors": [{"type": "deadband", "fields": {"v": {"percent": 5}}}],
                    "sinks": ["out"],
                },
                "milli": {
                    "match": f"{n}/s/+",
                    "processors": [{"type": "transform", "scale": {"v": 0.001}}],
                    "sinks": ["out"],
                },
            },
            "sinks": {"out": {"type": "file", "path": "out.jsonl"}},
        }
    )
    # written as people write it: YAML 1.1 alone would read 1e-3 as text
    text = gw.config_path.read_text()
    assert "v: 0.001" in text
    gw.config_path.write_text(text.replace("v: 0.001", "v: 1e-3"))
    gw.start()
    publish(
        mosquitto.port,
        [
            (f"{n}/w/a", '{"v": 1}'),
            (f"{n}/w/b", '{"v": 1e308}'),
            (f"{n}/w/b", '{"v": 1e308}'),
            (f"{n}/w/c", BIG),
            (f"{n}/d/a", '{"v": 1}'),
            (f"{n}/d/a", BIG),
            (f"{n}/d/a", '{"v": 2}'),
            (f"{n}/s/a", '{"v": 2500}'),
            (f"{n}/s/a", BIG),
        ],
    )
    out_file = gw.data_dir / "out.jsonl"
    wait_for(
        lambda: {f"{n}/w/a/agg", f"{n}/w/b/agg"} <= outputs(out_file).keys(),
        20,
        "both windows closed",
    )
    got = outputs(out_file)
    assert [w["v"] for w in got[f"{n}/w/a/agg"]] == [{"count": 1, "sum": 1, "max": 1}]
    assert [w["v"] for w in got[f"{n}/w/b/agg"]] == [{"count": 2, "sum": None, "max": 1e308}]
    assert got[f"{n}/d/a"] == [{"v": 1}, {"v": 2}], "the group went on after the bad one"
    assert got[f"{n}/s/a"] == [{"v": 2.5}]
    reasons = [d["reason"] for d in gw.get("/api/dead-letters")]
    assert len(reasons) == 3, reasons
    for why in (
        "window needs a number (within ±1.8e308)",
        "deadband needs a number (within ±1.8e308)",
        "* 0.001 + 0 is past the range of a JSON number",
    ):
        assert sum(why in reason for reason in reasons) == 1, (why, reasons)
    assert gw.status()["routes"]["win"]["processor_state"]["win.0"]["open"] == 0
    assert "Traceback" not in gw.log_path.read_text()


def test_a_restart_on_a_changed_window_size_drops_its_open_windows(
    mosquitto: Any, gateway_factory: Any
) -> None:
    """README, Windows and processor state: after a restart that changed a key that
    shapes the windows (here `size`), the open windows are dropped, not continued under
    the new config: one log line, counted in the processor's `dropped`; a restart that
    changed only the output topic continues them."""
    n = f"shape{uuid.uuid4().hex[:8]}"

    def config(size: str, topic: str) -> dict[str, Any]:
        window = {
            "type": "window",
            "size": size,
            "time": "event",
            "time_field": "t",
            "group_by": "topic",
            "aggregates": {"v": ["count", "sum"]},
            "topic": topic,
        }
        return one_route(mosquitto, n, "win", window)

    def state() -> dict[str, Any]:
        return gw.status()["routes"]["win"]["processor_state"]["win.0"]  # type: ignore[no-any-return]

    t0 = 1_800_000_000  # a multiple of 100 s and of 200 s
    gw = gateway_factory(config("100s", "{topic}/a"))
    gw.start()
    publish(mosquitto.port, [(f"{n}/{d}", json.dumps({"t": t0 + 1, "v": 1})) for d in "ab"])
    wait_for(lambda: state()["open"] == 2, 20, "two windows open")
    assert gw.stop() == 0

    def rewrite(size: str, topic: str) -> None:
        kept = yaml.safe_load(gw.config_path.read_text())  # the harness's data_dir and port
        kept["routes"] = config(size, topic)["routes"]
        gw.config_path.write_text(yaml.safe_dump(kept))

    rewrite("100s", "{topic}/b")  # the output topic only
    gw.start()
    assert state()["open"] == 2 and state()["dropped"] == 0, state()
    assert gw.stop() == 0

    rewrite("200s", "{topic}/b")  # the size
    gw.start()
    wait_for(lambda: state()["dropped"] == 2, 20, "the open windows dropped")
    assert state()["open"] == 0, state()
    said = [line for line in gw.log().splitlines() if "2 open windows" in line]
    assert len(said) == 1, gw.log()[-2000:]
    publish(
        mosquitto.port,
        [
            (f"{n}/a", json.dumps({"t": t0 + 2, "v": 10})),
            (f"{n}/a", json.dumps({"t": t0 + 1000, "v": 0})),  # closes the window
        ],
    )
    out_file = gw.data_dir / "out.jsonl"
    wait_for(lambda: outputs(out_file).get(f"{n}/a/b"), 20, "the window of 200 s")
    [window] = outputs(out_file)[f"{n}/a/b"]
    assert window["v"] == {"count": 1, "sum": 10}, "the reading before the change is not in it"
    assert gw.stop() == 0


def test_a_deadband_heartbeat_sends_the_last_reading_again_when_no_reading_comes(
    mosquitto: Any, gateway_factory: Any
) -> None:
    """README: the deadband's `heartbeat` sends the last reading again after a maximum
    silence, with no new reading to carry it (the engine's timer), and keeps doing so;
    a reading inside the band is not passed meanwhile."""
    n = f"beat{uuid.uuid4().hex[:8]}"
    deadband = {"type": "deadband", "fields": {"v": {"absolute": 1}}, "heartbeat": "1s"}
    gw = gateway_factory(one_route(mosquitto, n, "band", deadband))
    gw.start()
    out_file = gw.data_dir / "out.jsonl"
    published = time.monotonic()
    publish(mosquitto.port, [(f"{n}/a", '{"v": 10}'), (f"{n}/a", '{"v": 10.5}')])
    wait_for(lambda: len(outputs(out_file).get(f"{n}/a", [])) >= 2, 20, "a heartbeat")
    # the second output is the heartbeat, a second after the first: 10.5 passed by
    # mistake would have come at once, and looks the same
    assert time.monotonic() - published >= 0.5, "the reading inside the band was passed"
    wait_for(lambda: len(outputs(out_file).get(f"{n}/a", [])) >= 3, 20, "two heartbeats")
    # the reading inside the band is not passed; the heartbeat repeats the last reading
    # received (10.5), as the deadband's documentation says
    got = outputs(out_file)[f"{n}/a"]
    assert got[0] == {"v": 10} and got[1:] == [{"v": 10.5}] * (len(got) - 1), got
    assert gw.stop() == 0


def test_an_event_time_window_closes_by_the_timer_once_readings_stop_for_idle(
    mosquitto: Any, gateway_factory: Any
) -> None:
    """README: windows close by the watermark or, when no data comes, by the engine's
    timer: in event time, after `idle` without new data the watermark moves on from the
    newest event time at the clock's pace (not to the clock's time: readings from 2023
    still wait for what was left of their window)."""
    n = f"idle{uuid.uuid4().hex[:8]}"
    window = {
        "type": "window",
        "size": "4s",
        "time": "event",
        "time_field": "ts",
        "idle": "1s",
        "group_by": "topic",
        "aggregates": {"v": ["count", "sum"]},
    }
    gw = gateway_factory(one_route(mosquitto, n, "win", window))
    gw.start()
    t0 = 1_700_000_040  # in 2023, a multiple of 4 s: the window ends at t0 + 4
    publish(mosquitto.port, [(f"{n}/a", json.dumps({"ts": t0 + i, "v": i})) for i in range(2)])
    sent = time.monotonic()
    out_file = gw.data_dir / "out.jsonl"
    wait_for(lambda: outputs(out_file).get(f"{n}/a/agg"), 20, "the window closed by the timer")
    waited = time.monotonic() - sent
    [window] = outputs(out_file)[f"{n}/a/agg"]
    assert window["v"] == {"count": 2, "sum": 1}
    assert window["start"] == "2023-11-14T22:14:00.000Z"
    # the newest reading was at t0 + 1: 3 s of silence move the watermark to the end
    assert waited >= 2.5, waited
    assert gw.status()["routes"]["win"]["processor_state"]["win.0"]["open"] == 0
    assert gw.stop() == 0

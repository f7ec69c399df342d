"""The window processor against a straightforward reference computation (hypothesis).

The reference keeps, for each window, the plain list of its readings and computes
every aggregate from that list with the statistics module; it simulates the
watermark only to know which readings are late and which sessions are closed.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.schema import Problems, build_component
from gateway.core.clock import Clock
from gateway.core.component import Context
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.core.state import encode_json
from gateway.processors import window
from gateway.processors.filter import FilterProcessor
from gateway.processors.window import WindowProcessor, _windows, iso

pytestmark = pytest.mark.unit

S = 1_000_000_000
AGGS = ["count", "sum", "avg", "min", "max", "first", "last", "stddev", "median"]
AGGS += ["percentile(90)", "rate"]
BASE = 1_700_000_000 * S  # event times near 2023, in ns


class FakeClock(Clock):
    def __init__(self) -> None:
        self.ns = BASE
        self.mono = 1000.0

    def now_ns(self) -> int:
        return self.ns

    def monotonic(self) -> float:
        return self.mono


def make(config: dict[str, Any], clock: Clock | None = None) -> WindowProcessor:
    problems = Problems()
    cfg = build_component("processor", {"type": "window", **config}, ("p",), problems)
    assert not problems.items, problems.items
    return WindowProcessor(cfg, Context("r.0", "processor", clock=clock or FakeClock()))


def reading(t_ns: int, group: str, value: int | None) -> FlowFile:
    body: dict[str, Any] = {"ts": t_ns / S}
    if value is not None:
        body["v"] = value
    return FlowFile.create(f"dev/{group}", json.dumps(body).encode())


def outputs(flowfiles: list[FlowFile]) -> list[dict[str, Any]]:
    return [json.loads(ff.content) for ff in flowfiles]


def expected(group: str, start: int, end: int, rows: list[tuple[int, int | None]]) -> dict:
    """One window's output computed from its readings (time, value)."""
    values = [v for _, v in rows if v is not None]
    timed = sorted(((t, v) for t, v in rows if v is not None), key=lambda r: r[0])
    stats: dict[str, Any] = {"count": len(values)}
    if values:
        span = (timed[-1][0] - timed[0][0]) / S
        stats.update(
            sum=sum(values),
            avg=sum(values) / len(values),
            min=min(values),
            max=max(values),
            first=timed[0][1],
            last=timed[-1][1],
            stddev=statistics.pstdev(values),
            median=statistics.median(values),
            p90=values[0]
            if len(values) == 1
            else statistics.quantiles(values, n=10, method="inclusive")[8],
            rate=(timed[-1][1] - timed[0][1]) / span if span > 0 else None,
        )
    else:
        stats.update({k: None for k in AGGS[1:-2]}, p90=None, rate=None)
    return {
        "group": f"dev/{group}",
        "start": iso(start),
        "end": iso(end),
        "count": len(rows),
        "v": stats,
    }


def same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    if set(got) != set(want):
        return False
    for key, w in want.items():
        g = got[key]
        if isinstance(w, dict):
            if not same(g, w):
                return False
        elif isinstance(w, float) or isinstance(g, float):
            if g is None or w is None or not math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-6):
                return False
        elif g != w:
            return False
    return True


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    key = lambda o: (o["end"], o["start"], o["group"])  # noqa: E731
    got, want = sorted(got, key=key), sorted(want, key=key)
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert same(g, w), (g, w)


# Readings: distinct event times (ties in first/last are by arrival, not compared here),
# in any order, over a few groups, some without the field.
events = st.lists(
    st.tuples(
        st.integers(0, 600_000),  # ms after BASE
        st.sampled_from("abc"),
        st.one_of(st.none(), st.integers(-1000, 1000)),
    ),
    min_size=1,
    max_size=60,
    unique_by=lambda e: e[0],
)


def reference_timed(
    evs: list[tuple[int, str, int | None]], size: int, every: int, lateness: int
) -> tuple[list[dict[str, Any]], int]:
    windows: dict[tuple[str, int], list[tuple[int, int | None]]] = {}
    wm: int | None = None
    mx: int | None = None
    late = 0
    for t, g, v in evs:
        aligned = t - t % every  # windows start at multiples of `every` since the epoch
        starts = [aligned - k * every for k in range(size // every + 2)]
        starts = [s for s in starts if s <= t < s + size]
        open_ = [s for s in starts if wm is None or s + size > wm]
        if not open_:
            late += 1
            continue
        for s in open_:
            windows.setdefault((g, s), []).append((t, v))
        if mx is None or t > mx:
            mx = t
            wm = t - lateness if wm is None else max(wm, t - lateness)
    return [expected(g, s, s + size, rows) for (g, s), rows in windows.items()], late


def run(processor: WindowProcessor, evs: list[tuple[int, str, int | None]]) -> list[FlowFile]:
    out = []
    for t, g, v in evs:
        out.extend(processor.process(reading(t, g, v)))
    return out


def flush(processor: WindowProcessor, clock: FakeClock) -> list[FlowFile]:
    """Data stops: the idle timer moves the watermark on and closes everything."""
    clock.mono += 10_000
    return processor.tick(clock.ns)


def assert_in_order(out: list[FlowFile]) -> None:
    ends = [(o["end"], o["start"]) for o in outputs(out)]
    assert ends == sorted(ends)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    evs=events,
    kind=st.sampled_from(["tumbling", "hopping"]),
    size_s=st.sampled_from([10, 60, 90]),
    hops=st.sampled_from([1, 2, 3]),
    lateness_s=st.sampled_from([0, 5, 30]),
)
def test_time_windows_match_the_reference(
    evs: list[tuple[int, str, int | None]], kind: str, size_s: int, hops: int, lateness_s: int
) -> None:
    evs = [(BASE + ms * 1_000_000, g, v) for ms, g, v in evs]
    size = size_s * S
    every = size // hops if kind == "hopping" else size
    config = {
        "kind": kind,
        "size": size_s,
        "time": "event",
        "time_field": "ts",
        "allowed_lateness": lateness_s,
        "group_by": "topic",
        "aggregates": {"v": AGGS},
    }
    if kind == "hopping":
        config["every"] = size_s / hops
    clock = FakeClock()
    processor = make(config, clock)
    out = run(processor, evs) + flush(processor, clock)
    want, late = reference_timed(evs, size, every, lateness_s * S)
    assert_same(outputs(out), want)
    assert processor.late == late
    assert_in_order(out)
    assert processor.kv is not None and len(processor.kv) <= 1  # only the watermark is left


def reference_sessions(
    evs: list[tuple[int, str, int | None]], gap: int, lateness: int
) -> tuple[list[dict[str, Any]], int]:
    open_: dict[str, list[list[tuple[int, int | None]]]] = {}
    done: list[dict[str, Any]] = []
    wm: int | None = None
    mx: int | None = None
    late = 0

    def span(rows: list[tuple[int, int | None]]) -> tuple[int, int]:
        return min(t for t, _ in rows), max(t for t, _ in rows) + gap

    for t, g, v in evs:
        if wm is not None and t + gap <= wm:
            late += 1
            continue
        sessions = open_.setdefault(g, [])
        near = [s for s in sessions if span(s)[0] - gap <= t < span(s)[1]]
        merged = [(t, v)] + [row for s in near for row in s]
        open_[g] = [s for s in sessions if s not in near] + [merged]
        if mx is None or t > mx:
            mx = t
            wm = t - lateness if wm is None else max(wm, t - lateness)
            for group, ss in open_.items():
                for s in [s for s in ss if span(s)[1] <= wm]:
                    ss.remove(s)
                    done.append(expected(group, *span(s), s))
    for group, ss in open_.items():
        done.extend(expected(group, *span(s), s) for s in ss)
    return done, late


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(evs=events, gap_s=st.sampled_from([5, 30, 120]), lateness_s=st.sampled_from([0, 10]))
def test_session_windows_match_the_reference(
    evs: list[tuple[int, str, int | None]], gap_s: int, lateness_s: int
) -> None:
    evs = [(BASE + ms * 1_000_000, g, v) for ms, g, v in evs]
    config = {
        "kind": "session",
        "gap": gap_s,
        "time": "event",
        "time_field": "ts",
        "allowed_lateness": lateness_s,
        "group_by": "topic",
        "aggregates": {"v": AGGS},
    }
    clock = FakeClock()
    processor = make(config, clock)
    out = run(processor, evs) + flush(processor, clock)
    want, late = reference_sessions(evs, gap_s * S, lateness_s * S)
    assert_same(outputs(out), want)
    assert processor.late == late
    assert_in_order(out)


@settings(max_examples=100, deadline=None)
@given(evs=events, n=st.integers(1, 7), slide=st.one_of(st.none(), st.integers(1, 7)))
def test_count_windows_match_the_reference(
    evs: list[tuple[int, str, int | None]], n: int, slide: int | None
) -> None:
    if slide is not None and slide > n:
        slide = n
    evs = [(BASE + ms * 1_000_000, g, v) for ms, g, v in evs]
    config: dict[str, Any] = {"kind": "count", "count": n, "group_by": "topic"}
    config["time"] = "event"
    config["time_field"] = "ts"
    config["aggregates"] = {"v": AGGS}
    if slide is not None:
        config["slide"] = slide
    processor = make(config)
    got = outputs(run(processor, evs))
    want = []
    seen: dict[str, list[tuple[int, int | None]]] = {}
    for t, g, v in evs:
        rows = seen.setdefault(g, [])
        rows.append((t, v))
        if slide is None or slide == n:
            if len(rows) == n:
                want.append(expected(g, min(r[0] for r in rows), max(r[0] for r in rows), rows))
                rows.clear()
        elif (sum(1 for e in evs[: evs.index((t, g, v)) + 1] if e[1] == g)) % slide == 0:
            last = rows[-n:]
            want.append(expected(g, min(r[0] for r in last), max(r[0] for r in last), last))
    assert_same(got, want)


class Store:
    """What the store keeps of a processor's state: the changes of every commit."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, bytes]] = {}

    def commit(self, processor: WindowProcessor) -> None:
        assert processor.kv is not None
        for key, seq, value in processor.kv.changes():
            if value is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = (seq, value)

    def restore(self, processor: WindowProcessor) -> None:
        assert processor.kv is not None
        processor.kv.restore([(k, s, v) for k, (s, v) in self.rows.items()])
        processor.restored()


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    evs=events,
    kind=st.sampled_from(["tumbling", "hopping", "session", "count"]),
    cut=st.integers(0, 60),
    batch=st.integers(1, 5),
)
def test_a_restart_from_the_checkpoint_gives_the_same_outputs(
    evs: list[tuple[int, str, int | None]], kind: str, cut: int, batch: int
) -> None:
    evs = [(BASE + ms * 1_000_000, g, v) for ms, g, v in evs]
    config: dict[str, Any] = {
        "kind": kind,
        "time": "event",
        "time_field": "ts",
        "group_by": "topic.1",
        "aggregates": {"v": AGGS},
    }
    config.update(
        {
            "tumbling": {"size": 60, "allowed_lateness": 5},
            "hopping": {"size": 60, "every": 20, "allowed_lateness": 5},
            "session": {"gap": 30, "allowed_lateness": 5},
            "count": {"count": 3, "slide": 2},  # never late: it takes no allowed_lateness
        }[kind]
    )
    restart_gives_the_same_outputs(evs, config, cut, batch)  # in one chunk, as a rule
    with pytest.MonkeyPatch.context() as patch:
        # a sliding count window's readings span chunks, the oldest one partly gone
        patch.setattr(window, "CHUNK_ROWS", 2)
        restart_gives_the_same_outputs(evs, config, cut, batch)


def restart_gives_the_same_outputs(
    evs: list[tuple[int, str, int | None]], config: dict[str, Any], cut: int, batch: int
) -> None:
    clock = FakeClock()
    whole = make(config, clock)
    want = run(whole, evs) + flush(whole, clock)

    # the same readings in commits of `batch`; killed after the commit holding `cut`
    store = Store()
    first = make(config, clock)
    cut = min(cut, len(evs))
    cut -= cut % batch
    got = []
    for i in range(0, cut, batch):
        got.extend(run(first, evs[i : i + batch]))
        store.commit(first)
    first.process(reading(*evs[cut])) if cut < len(evs) else None  # lost: never committed
    second = make(config, clock)
    store.restore(second)
    got += run(second, evs[cut:]) + flush(second, clock)
    assert [ff.id for ff in got] == [ff.id for ff in want]
    assert [ff.content for ff in got] == [ff.content for ff in want]


def test_processing_time_windows_close_by_timer_without_new_data() -> None:
    clock = FakeClock()
    processor = make(
        {"kind": "tumbling", "size": "10s", "aggregates": {"v": ["count", "max"]}}, clock
    )
    start = BASE - BASE % (10 * S)
    clock.ns = start + 1 * S
    assert processor.process(FlowFile.create("t", b'{"v": 1}')) == []
    clock.ns = start + 9 * S
    assert processor.process(FlowFile.create("t", b'{"v": 5}')) == []
    assert processor.tick(start + 9 * S) == []
    clock.ns = start + 10 * S
    [out] = processor.tick(clock.ns)
    assert json.loads(out.content) == {
        "group": "",
        "start": iso(start),
        "end": iso(start + 10 * S),
        "count": 2,
        "v": {"count": 2, "max": 5},
    }
    assert out.topic == "t/agg"
    assert out.attributes == {"window.inputs": "2"}
    assert processor.tick(clock.ns + 60 * S) == []


def test_late_readings_are_counted_and_dead_lettered_when_asked() -> None:
    processor = make(
        {
            "kind": "tumbling",
            "size": "1m",
            "time": "event",
            "time_field": "ts",
            "late": "dead_letter",
            "aggregates": {"v": ["count"]},
        }
    )
    processor.process(reading(BASE + 200 * S, "a", 1))
    with pytest.raises(PermanentError, match="late: its time"):
        processor.process(reading(BASE, "a", 1))
    assert processor.late == 1


def test_numbers_in_text_are_aggregated_and_other_text_is_refused() -> None:
    """Redis stream fields and DECIMAL columns arrive as text: "21.5" is a number."""
    processor = make({"kind": "count", "count": 2, "aggregates": {"v": ["sum", "max"]}})
    assert processor.process(FlowFile.create("t", b'{"v": "21.5"}')) == []
    (out,) = processor.process(FlowFile.create("t", b'{"v": 1}'))
    assert json.loads(out.content)["v"] == {"sum": 22.5, "max": 21.5}
    for text in ("warm", "nan", "inf"):
        with pytest.raises(PermanentError, match="window needs a number"):
            processor.process(FlowFile.create("t", json.dumps({"v": text}).encode()))


def test_a_window_past_a_doubles_range_closes_with_null_and_the_others_with_it() -> None:
    """A sum of 1e308s is infinity, which JSON cannot hold: that aggregate is null.
    It once failed the whole timer, so the other group's window, closing on the same
    tick, was lost and this one stayed open for ever."""
    clock = FakeClock()
    processor = make(
        {
            "size": "10s",
            "group_by": "topic",
            "aggregates": {"v": ["count", "sum", "avg", "max", "stddev", "median", "rate"]},
        },
        clock,
    )
    start = BASE - BASE % (10 * S)
    clock.ns = start + S
    processor.process(FlowFile.create("a", b'{"v": 1}'))
    processor.process(FlowFile.create("b", b'{"v": 1e308}'))
    clock.ns = start + 2 * S
    processor.process(FlowFile.create("b", b'{"v": 1e308}'))
    processor.process(FlowFile.create("b", b'{"v": 1e308}'))
    processor.process(FlowFile.create("b", b'{"v": 1.5e308}'))
    out = outputs(processor.tick(start + 10 * S))
    assert [b["group"] for b in out] == ["a", "b"]
    assert out[0]["v"]["sum"] == 1
    assert out[1]["v"] == {
        "count": 4,
        "sum": None,
        "avg": 1.125e308,  # the running mean, when the sum is past a double's range
        "max": 1.5e308,
        "stddev": None,
        "median": 1e308,
        "rate": 5e307,
    }
    assert processor.status()["open"] == 0


def test_an_integer_past_a_doubles_range_is_refused_and_the_window_goes_on() -> None:
    processor = make({"kind": "count", "count": 2, "aggregates": {"v": ["sum", "avg"]}})
    assert processor.process(FlowFile.create("t", b'{"v": 1}')) == []
    with pytest.raises(PermanentError, match=r"field 'v' is a number \(1000.*window needs a"):
        processor.process(FlowFile.create("t", b'{"v": 1' + b"0" * 400 + b"}"))
    (out,) = processor.process(FlowFile.create("t", b'{"v": 3}'))
    assert json.loads(out.content)["v"] == {"sum": 4, "avg": 2.0}


def test_a_reading_that_cannot_make_the_output_topic_is_refused_as_it_comes() -> None:
    """The topic of a window comes from its first reading; one without the level the
    template names, or whose group is no topic level, is dead-lettered at once, and
    the windows of the other readings close as usual."""
    clock = FakeClock()
    processor = make(
        {
            "size": "10s",
            "group_by": "field.dev",
            "topic": "agg/{topic.2}/{group}",
            "aggregates": {"v": ["count"]},
        },
        clock,
    )
    start = BASE - BASE % (10 * S)
    clock.ns = start + S
    processor.process(FlowFile.create("p/x/1", b'{"dev": "a", "v": 1}'))
    with pytest.raises(PermanentError, match="has no level 2"):
        processor.process(FlowFile.create("p/x", b'{"dev": "a", "v": 1}'))
    with pytest.raises(PermanentError, match="wildcards"):
        processor.process(FlowFile.create("p/x/1", b'{"dev": "a/+", "v": 1}'))
    with pytest.raises(PermanentError, match="lone surrogate"):
        processor.process(FlowFile.create("p/x/1", b'{"dev": "\\ud800", "v": 1}'))
    [out] = processor.tick(start + 10 * S)
    assert out.topic == "agg/1/a" and json.loads(out.content)["count"] == 1
    assert processor.status()["open"] == 0


def test_output_topics_stay_right_past_the_bound_of_those_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The topics made from the template are remembered per (topic, group) within a
    bound of bytes; past it they are forgotten and made again, and a reading that
    cannot make one is refused each time."""
    monkeypatch.setattr(window, "TOPICS_BYTES", 2000)
    config = {"kind": "count", "count": 1, "group_by": "field.dev"}
    processor = make({**config, "topic": "agg/{topic.1}/{group}", "aggregates": {"v": ["count"]}})
    for _ in range(2):
        for i in range(40):
            [out] = processor.process(FlowFile.create(f"p/{i % 3}", b'{"dev": "d%d", "v": 1}' % i))
            assert out.topic == f"agg/{i % 3}/d{i}"
            with pytest.raises(PermanentError, match="wildcards"):
                processor.process(FlowFile.create(f"p/{i % 3}", b'{"dev": "d%d/#", "v": 1}' % i))
        assert processor._topics_bytes <= 2000


def test_a_group_that_json_cannot_write_is_refused_with_the_default_topic() -> None:
    processor = make({"kind": "count", "count": 1, "group_by": "field.dev",
                      "aggregates": {"v": ["count"]}})  # fmt: skip
    with pytest.raises(PermanentError, match="lone surrogate"):
        processor.process(FlowFile.create("t", b'{"dev": "\\udc00", "v": 1}'))
    [out] = processor.process(FlowFile.create("t", b'{"dev": "\\u00e9", "v": 1}'))
    assert json.loads(out.content)["group"] == "\u00e9"


@pytest.mark.parametrize(
    "ts",
    [
        "1e300",
        "-1e300",
        "-62135596801",
        '"10000-01-01T00:00:00"',
        # an integer past a double's range was an OverflowError (an internal error)
        "1" + "0" * 400,
        "-1" + "0" * 400,
        '"1e999"',
        '"nan"',
    ],
)
def test_an_event_time_past_the_years_1_to_9999_is_refused(ts: str) -> None:
    """Such a time was taken: its window could never be written (gmtime fails), so the
    timer failed on it every second once the watermark passed its end."""
    clock = FakeClock()
    processor = make(
        {
            "size": "10s",
            "time": "event",
            "time_field": "ts",
            "group_by": "topic",
            "aggregates": {"v": ["count"]},
        },
        clock,
    )
    processor.process(FlowFile.create("a", b'{"ts": 1000, "v": 1}'))
    with pytest.raises(PermanentError, match=r"outside the years 1 to 9999|ISO 8601"):
        processor.process(FlowFile.create("b", b'{"ts": %s, "v": 1}' % ts.encode()))
    clock.mono += 11  # idle: the watermark moves on with the clock
    [out] = processor.tick(clock.now_ns())
    assert json.loads(out.content)["group"] == "a"
    assert processor.status()["open"] == 0


def test_a_window_of_a_year_before_1000_writes_its_times_in_iso_8601() -> None:
    # strftime's %Y wrote `900-03-01T...`: a timestamp column refused every such window
    clock = FakeClock()
    processor = make(
        {"size": "1m", "time": "event", "time_field": "ts", "aggregates": {"v": ["count"]}},
        clock,
    )
    processor.process(FlowFile.create("a", b'{"ts": "0900-03-01T10:00:55Z", "v": 1}'))
    clock.mono += 11
    [out] = processor.tick(clock.now_ns())
    body = json.loads(out.content)
    assert (body["start"], body["end"]) == ("0900-03-01T10:00:00.000Z", "0900-03-01T10:01:00.000Z")
    assert iso(0) == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("config", "ts", "problem"),
    [
        ({"kind": "tumbling", "size": "1d"}, "9999-12-31T12:00:00Z", "ending after the year 9999"),
        ({"kind": "tumbling", "size": "7d"}, "0001-01-01T00:00:00Z", "starting before the year 1"),
        (
            {"kind": "hopping", "size": "2d", "every": "1d"},
            "9999-12-30T12:00:00Z",
            "ending after the year 9999",
        ),
        ({"kind": "session", "gap": "1h"}, "9999-12-31T23:00:00Z", "ending after the year 9999"),
    ],
)
def test_a_reading_whose_window_would_leave_the_years_1_to_9999_is_refused(
    config: dict[str, Any], ts: str, problem: str
) -> None:
    """A 1d window of 9999-12-31 ended `10000-01-01T00:00:00.000Z`: five digits, which no
    timestamp column takes; a 7d window of 0001-01-01 started in the year 0."""
    clock = FakeClock()
    aggs = {"v": ["count"]}
    processor = make({**config, "time": "event", "time_field": "ts", "aggregates": aggs}, clock)
    refused = FlowFile.create("a", json.dumps({"ts": ts, "v": 1}).encode())
    with pytest.raises(PermanentError, match=f"the time .* falls in a window {problem}"):
        processor.process(refused)
    assert processor.status()["open"] == 0
    processor.process(FlowFile.create("a", b'{"ts": "9999-12-29T12:00:00Z", "v": 1}'))
    clock.mono += 3 * 86400  # idle: the watermark moves on past the window's end
    outs = outputs(processor.tick(clock.now_ns()))
    assert outs and all(o["end"].startswith("9999-12-") for o in outs)


def test_over_the_state_budget_the_oldest_windows_close_early() -> None:
    processor = make(
        {
            "kind": "tumbling",
            "size": "1h",
            "group_by": "field.id",
            "max_state": 8192,
            "aggregates": {"v": ["count"]},
        }
    )
    out = []
    for i in range(100):
        out += processor.process(FlowFile.create("t", json.dumps({"id": i, "v": 1}).encode()))
    assert out, "no window closed early"
    bodies = outputs(out)
    assert all(b["early"] for b in bodies)
    assert bodies[0]["group"] == "0"  # the oldest first
    assert processor.kv is not None and processor.kv.bytes <= 8192
    assert processor.kv.evicted == len(out)


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "session"])
def test_windows_closed_early_leave_nothing_behind_in_memory(kind: str) -> None:
    """The close order of windows evicted over max_state was kept until their end: one
    entry per group ever seen in a 1h window, outside the budget (0.4 kB each, 100 MB
    for 250,000 groups under a 4 MiB max_state); a session window's list of its group's
    sessions kept an evicted one for good."""
    shape = {"tumbling": {"size": "1h"}, "hopping": {"size": "1h", "every": "30m"},
             "session": {"gap": "1h"}}[kind]  # fmt: skip
    clock = FakeClock()
    processor = make(
        {"kind": kind, **shape, "group_by": "field.id", "max_state": 8192,
         "aggregates": {"v": ["count"]}},
        clock,
    )  # fmt: skip
    out = []
    for i in range(20_000):
        clock.ns += S // 1000
        out += processor.process(FlowFile.create("t", json.dumps({"id": i, "v": 1}).encode()))
    assert processor.kv is not None
    assert len(processor._heap) <= 2 * _windows(processor.kv) + 1024
    clock.ns += 3 * 3600 * S
    out += processor.tick(clock.ns)
    per_group: dict[str, int] = {}
    for body in outputs(out):
        per_group[body["group"]] = per_group.get(body["group"], 0) + body["count"]
    assert per_group == {str(i): 2 if kind == "hopping" else 1 for i in range(20_000)}
    assert _windows(processor.kv) == 0 and not processor._heap and not processor._sessions


def test_a_growing_state_does_not_rebuild_the_close_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The close order was rebuilt at about 1k, 3k, 7k ... open windows with nothing
    stale in it: each rebuild stalled one event (0.8 s at 261k windows)."""
    clock = FakeClock()
    processor = make(
        {"size": "1h", "group_by": "field.id", "max_state": "1GiB", "aggregates": {"v": ["sum"]}},
        clock,
    )
    rebuilds = []
    monkeypatch.setattr(processor, "_compact_heap", lambda: rebuilds.append(1))
    for i in range(10_000):
        processor.process(FlowFile.create("t", json.dumps({"id": i, "v": 1}).encode()))
    assert rebuilds == []


def test_a_window_closed_early_and_its_continuation_have_two_ids() -> None:
    """Readings for a window closed early (over max_state) open it again; both outputs
    had the same id, so a sink keyed by it (PostgreSQL, MySQL, Redis) kept only the
    first and lost the readings of the second."""
    clock = FakeClock()
    processor = make(
        {"size": "1h", "group_by": "field.id", "max_state": 8192, "aggregates": {"v": ["sum"]}},
        clock,
    )
    out = []
    for i in range(40):
        out += processor.process(FlowFile.create("t", json.dumps({"id": i, "v": 1}).encode()))
    out += processor.process(FlowFile.create("t", b'{"id": 0, "v": 5}'))
    clock.ns += 3600 * S
    out += processor.tick(clock.ns)
    first = [ff for ff in out if json.loads(ff.content)["group"] == "0"]
    assert [json.loads(ff.content)["v"]["sum"] for ff in first] == [1, 5]
    assert first[0].id != first[1].id
    assert len({ff.id for ff in out}) == len(out)


def test_a_reload_to_a_topic_an_open_window_cannot_make_neither_loses_nor_sticks_it() -> None:
    """A window open under `{topic}/agg`, reloaded under `{topic.2}/x`, failed to be
    emitted: the reading that completed it was dead-lettered (while counted in it), and
    every later reading of its group too, the window never leaving the state."""
    clock = FakeClock()
    config = {"kind": "count", "count": 2, "group_by": "field.id", "aggregates": {"v": ["sum"]}}
    before = make(config, clock)
    assert before.process(FlowFile.create("a", b'{"id": 1, "v": 1}')) == []
    assert before.kv is not None
    after = make({**config, "topic": "{topic.2}/x"}, clock)
    assert after.kv is not None
    after.kv.restore(before.kv.snapshot())
    after.restored()
    out = []
    for v in (2, 3, 4):
        out += after.process(FlowFile.create("a/b/c", b'{"id": 1, "v": %d}' % v))
    assert [(ff.topic, json.loads(ff.content)["v"]["sum"]) for ff in out] == [
        ("a/agg", 3),  # the window opened by the reading on `a`
        ("c/x", 7),
    ]


def test_windows_a_restore_evicts_over_a_smaller_budget_close_by_the_timer() -> None:
    """Restored under a smaller max_state, the windows over it waited for the next
    reading (which may never come, while the next commit deleted them from the store:
    that of another route, or the startup's, wrote their deletions without them, and a
    kill then lost them); with a changed config too, they were emitted under it:
    KeyError on the new field."""
    clock = FakeClock()
    config = {"size": "1h", "group_by": "field.id", "aggregates": {"v": ["sum"]}}
    before = make(config, clock)
    for i in range(50):
        before.process(FlowFile.create("t", json.dumps({"id": i, "v": 1}).encode()))
    assert before.kv is not None
    rows = before.kv.snapshot()

    smaller = make({**config, "max_state": 8192}, clock)
    assert smaller.kv is not None
    smaller.kv.restore(rows)
    smaller.restored()
    kept = smaller.status()["open"]
    deleted = [key for key, _, value in smaller.kv.changes() if value is None]
    assert deleted == [], "deleted from the store before they were emitted"
    early = outputs(smaller.tick(clock.now_ns()))
    assert len(early) == 50 - kept and all(b["early"] for b in early)
    deleted = [key for key, _, value in smaller.kv.changes() if value is None]
    assert len(deleted) == len(early), "deleted in the commit that emits them"
    assert [b["group"] for b in early] == [str(i) for i in range(50 - kept)]  # oldest first

    reset = make({**config, "max_state": 8192}, clock)  # `edge-stream state reset` then
    assert reset.kv is not None
    reset.kv.restore(rows)
    reset.restored()
    reset.kv.clear()
    reset.restored()
    assert reset.tick(clock.now_ns()) == [], "a reset drops its windows, not emits them"

    changed = make({**config, "aggregates": {"w": ["sum"]}, "max_state": 8192}, clock)
    assert changed.kv is not None
    changed.kv.restore(rows)
    changed.restored()
    assert changed.status()["dropped"] == 50
    assert changed.tick(clock.now_ns()) == []
    assert changed.process(FlowFile.create("t", b'{"id": 999, "w": 1}')) == []


def test_count_windows_over_the_state_budget_close_early_with_their_readings_only() -> None:
    """A sliding count window evicted over max_state failed every reading after
    (KeyError: its state is a buffer, not a window), and a count window just emitted
    left an empty one that was sent as an early window of count 0."""
    sliding = make(
        {
            "kind": "count",
            "count": 4,
            "slide": 2,
            "group_by": "topic",
            "max_state": 4096,
            "aggregates": {"v": ["sum"]},
        }
    )
    out = []
    for i in range(40):  # one reading per group: each buffer holds one not yet emitted
        out += sliding.process(FlowFile.create(f"dev/{i}", json.dumps({"v": i}).encode()))
    bodies = outputs(out)
    assert bodies, "no window closed early"
    assert all(b["early"] and b["count"] == 1 for b in bodies)
    assert bodies[0]["group"] == "dev/0" and bodies[0]["v"] == {"sum": 0}
    assert sliding.status()["early"] == len(bodies)

    tumbling = make(
        {
            "kind": "count",
            "count": 2,
            "group_by": "topic",
            "max_state": 4096,
            "aggregates": {"v": ["sum"]},
        }
    )
    out = []
    for i in range(40):  # each group's window fills and is emitted; none is left open
        for _ in range(2):
            out += tumbling.process(FlowFile.create(f"dev/{i}", json.dumps({"v": i}).encode()))
    bodies = outputs(out)
    assert len(bodies) == 40 and all(b["count"] == 2 and "early" not in b for b in bodies)
    assert tumbling.status()["early"] == 0


@pytest.mark.parametrize(
    "config",
    [
        {"size": "1h", "group_by": "field.id"},
        {"kind": "count", "count": 5, "slide": 2, "group_by": "field.id"},
    ],
)
def test_long_topics_count_in_the_state_budget(config: dict[str, Any]) -> None:
    """A window keeps its first reading's topic, a sliding count window each reading's:
    neither was counted, so 64KiB of budget held 0.8 MB and 3 MB of state with 10 kB
    topics."""
    processor = make({**config, "aggregates": {"v": ["avg"]}, "max_state": 65536})
    topic = "t/" + "x" * 10_000
    for i in range(300):
        processor.process(FlowFile.create(topic, json.dumps({"id": i, "v": 1}).encode()))
    assert processor.kv is not None
    held = sum(len(k) + len(encode_json(v)) for k, v in processor.kv.items())
    assert held <= 65536
    assert processor.kv.bytes <= 65536


def test_a_long_sliding_count_window_costs_no_more_per_reading_as_it_fills(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its state's size was summed over every buffered reading at each reading: 20 ms a
    reading with 100000 buffered (50 readings a second), 40 s for these 20000."""
    processor = make({"kind": "count", "count": 20_000, "slide": 10_000,
                      "aggregates": {"v": ["avg"]}})  # fmt: skip
    flowfiles = [FlowFile.create("plant/d1/t", b'{"v": %d}' % i) for i in range(20_000)]
    sized = 0
    row_size = window._row_size

    def counted(row: Any) -> int:
        nonlocal sized
        sized += 1
        return row_size(row)

    monkeypatch.setattr(window, "_row_size", counted)
    out = []
    for ff in flowfiles:
        out += processor.process(ff)
    assert sized <= 2 * len(flowfiles), "each reading sized when it comes and when it goes"
    assert [json.loads(ff.content)["count"] for ff in out] == [10_000, 20_000]
    assert processor.kv is not None
    acc = processor.kv.get("c|")
    assert acc["bz"] == sum(row_size(row) for row in processor._rows(acc)), "kept up to date"


def test_a_long_sliding_count_window_writes_only_what_changed_at_each_commit() -> None:
    """Its whole buffer was one state key, written at each commit: 9 MB a commit with
    100000 readings buffered. A commit writes the chunks it changed."""
    processor = make({"kind": "count", "count": 100_000, "slide": 50_000,
                      "aggregates": {"v": ["avg"]}})  # fmt: skip
    assert processor.kv is not None
    for batch in range(30):
        for i in range(100):
            processor.process(FlowFile.create("plant/d1/t", b'{"v": %d}' % i))
        written = sum(len(value or b"") for _, _, value in processor.kv.changes())
        assert written < 40_000, f"commit {batch} wrote {written} bytes"


def test_a_sliding_count_window_restarts_exactly_from_its_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed after any commit, a sliding count window whose readings span chunks (the
    oldest one partly gone) continues with the same windows, ids and contents."""
    monkeypatch.setattr(window, "CHUNK_ROWS", 3)
    config = {"kind": "count", "count": 7, "slide": 2, "group_by": "topic.1",
              "aggregates": {"v": AGGS}}  # fmt: skip
    evs = [(BASE + i * S, "ab"[i % 3 == 0], i) for i in range(40)]
    clock = FakeClock()
    want = run(make(config, clock), evs)
    for cut in range(0, 40, 4):
        store = Store()
        first = make(config, clock)
        got = []
        for i in range(0, cut, 2):
            got += run(first, evs[i : i + 2])
            store.commit(first)
        if cut < len(evs):
            first.process(reading(*evs[cut]))  # lost: never committed
        second = make(config, clock)
        store.restore(second)
        got += run(second, evs[cut:])
        assert [ff.id for ff in got] == [ff.id for ff in want], cut
        assert [ff.content for ff in got] == [ff.content for ff in want], cut
        assert second.status()["open"] == 2


def test_a_sliding_count_window_written_whole_is_continued_from_chunks() -> None:
    """State written before chunks (the buffer in the window's key) is continued."""
    config = {"kind": "count", "count": 100, "slide": 50, "aggregates": {"v": ["sum"]}}
    clock = FakeClock()
    evs = [(BASE + i * S, "a", i) for i in range(300)]
    want = run(make(config, clock), evs)
    first = make(config, clock)
    got = run(first, evs[:170])
    assert first.kv is not None
    acc = first.kv.get("c|")
    old = {k: v for k, v in acc.items() if k not in ("h", "z", "c")}
    old["buf"] = first._rows(acc)
    second = make(config, clock)
    assert second.kv is not None
    second.kv.restore([("~meta", 1, encode_json(first.kv.get("~meta"))),
                       ("c|", 2, encode_json(old))])  # fmt: skip
    second.restored()
    got += run(second, evs[170:])
    assert [ff.content for ff in got] == [ff.content for ff in want]


def test_a_percentile_with_a_fraction_has_a_key_a_later_processor_can_reach() -> None:
    """percentile(99.9) was `p99.9`, which no field path reaches (`.` splits it): it
    is `p99_9`, and a filter after the window tests it; percentile(95) stays `p95`."""
    specs = ["percentile(95)", "percentile(99.9)", "percentile(0.5)", "percentile(99.99999)"]
    processor = make({"kind": "count", "count": 1001, "aggregates": {"v": specs}})
    out = []
    for i in range(1001):
        out += processor.process(FlowFile.create("t", json.dumps({"v": i}).encode()))
    [window] = out
    stats = json.loads(window.content)["v"]
    assert stats == {
        "p95": 950.0,
        "p99_9": 999.0,
        "p0_5": 5.0,
        "p99_99999": pytest.approx(999.9999),
    }
    problems = Problems()
    cfg = build_component(
        "processor",
        {"type": "filter", "all": [{"field": "v.p99_9", "op": "gt", "value": 998}]},
        ("f",),
        problems,
    )
    assert not problems.items, problems.items
    later = FilterProcessor(cfg, Context("r.1", "processor", clock=FakeClock()))
    assert later.process(window) == [window]


def test_a_field_inside_an_object_keeps_its_place_so_a_later_processor_reaches_it() -> None:
    """Its aggregates were under one key `meta.temp`, which no field path reaches (a
    filter on meta.temp.avg found nothing and dropped every window)."""
    aggregates = {"meta.temp": ["avg"], "meta.rh": ["max"], "v": ["sum"]}
    processor = make({"kind": "count", "count": 2, "aggregates": aggregates})
    out = []
    for i in range(2):
        body = {"meta": {"temp": 20 + i, "rh": 50 + i}, "v": i}
        out += processor.process(FlowFile.create("t", json.dumps(body).encode()))
    [window] = out
    body = json.loads(window.content)
    assert body["meta"] == {"temp": {"avg": 20.5}, "rh": {"max": 51}}
    assert body["v"] == {"sum": 1}
    problems = Problems()
    cfg = build_component(
        "processor",
        {"type": "filter", "all": [{"field": "meta.temp.avg", "op": "gt", "value": 20}]},
        ("f",),
        problems,
    )
    assert not problems.items, problems.items
    later = FilterProcessor(cfg, Context("r.1", "processor", clock=FakeClock()))
    assert later.process(window) == [window]


def test_output_ids_are_the_same_for_the_same_window() -> None:
    def once() -> list[str]:
        clock = FakeClock()
        p = make(
            {
                "kind": "tumbling",
                "size": "1m",
                "time": "event",
                "time_field": "ts",
                "aggregates": {"v": ["sum"]},
            },
            clock,
        )
        return [ff.id for ff in run(p, [(BASE, "a", 1), (BASE + 120 * S, "a", 2)])]

    first, second = once(), once()
    assert first == second and len(first) == 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "tumbling", "aggregates": {"v": ["avg"]}}, "a tumbling window needs size"),
        ({"kind": "hopping", "size": 60, "aggregates": {"v": ["avg"]}}, "needs every"),
        ({"size": 60, "aggregates": {"v": ["mean"]}}, "unknown aggregate 'mean'"),
        ({"size": 60, "aggregates": {"v": ["percentile(101)"]}}, "unknown aggregate"),
        ({"size": 60, "time": "event", "aggregates": {"v": ["avg"]}}, "needs one of time_field"),
        (
            {"size": 60, "time": "event", "time_attribute": "", "aggregates": {"v": ["avg"]}},
            "the attribute name must not be empty",
        ),
        ({"size": 60, "topic": "{nope}/x", "aggregates": {"v": ["avg"]}}, "unknown placeholder"),
        ({"size": 60, "group_by": "device", "aggregates": {"v": ["avg"]}}, "must be topic"),
        ({"size": 60, "allowed_lateness": 5, "aggregates": {"v": ["avg"]}}, "needs time: event"),
        ({"size": 60, "late": "dead_letter", "aggregates": {"v": ["avg"]}}, "needs time: event"),
        ({"size": 60, "idle": 30, "aggregates": {"v": ["avg"]}}, "needs time: event"),
        # a count window is never late: `late: dead_letter` was ignored without a word
        (
            {"kind": "count", "count": 5, "time": "event", "time_field": "ts"}
            | {"late": "dead_letter", "aggregates": {"v": ["avg"]}},
            "late: count windows close on their count only",
        ),
        # `1ms` meant as `1m`: 60000 windows per reading, half a second of work each
        (
            {"kind": "hopping", "size": "1m", "every": "1ms", "aggregates": {"v": ["avg"]}},
            "each reading would be in 60000 windows (size / every); at most 1000",
        ),
        # an aggregated field named like a key of the output would overwrite it
        ({"size": 60, "aggregates": {"count": ["sum"]}}, "'count' is a key of the window's"),
        ({"size": 60, "aggregates": {"start": ["max"]}}, "rename the field first"),
        ({"size": 60, "aggregates": {"group.id": ["max"]}}, "'group' is a key of the window"),
        # 1e-12 s is 0 ns (ZeroDivisionError on every reading); 1e30 s ends past any
        # time an output can write (OverflowError when the window closed early)
        ({"size": 1e-12, "aggregates": {"v": ["avg"]}}, "must be between 1ms and 100 years"),
        ({"size": 10**30, "aggregates": {"v": ["avg"]}}, "must be between 1ms and 100 years"),
        ({"kind": "session", "gap": 1e-12, "aggregates": {"v": ["avg"]}}, "between 1ms and"),
        # a field holding another aggregated one: both would be one key of the output
        ({"size": 60, "aggregates": {"m": ["max"], "m.t": ["avg"]}}, "'m' holds 'm.t'"),
        # past a double's range in ns: check-config said ok, the start an OverflowError
        (
            {"size": 60, "time": "event", "time_field": "ts", "allowed_lateness": 1e300}
            | {"aggregates": {"v": ["avg"]}},
            "allowed_lateness: must be between 0s and 100 years",
        ),
        (
            {"size": 60, "time": "event", "time_field": "ts", "idle": 1e300}
            | {"aggregates": {"v": ["avg"]}},
            "idle: must be more than 0s and at most 100 years",
        ),
    ],
)
def test_config_mistakes_are_refused(config: dict[str, Any], message: str) -> None:
    problems = Problems()
    build_component("processor", {"type": "window", **config}, ("p",), problems)
    assert any(message in f"{path[-1]}: {m}" for path, m in problems.items), problems.items


def test_sliding_count_windows_written_whole_convert_under_a_tight_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Converting evicted other windows mid-way, and converted those again: a window
    both open and closed early, whose chunks the early close deleted; every later
    reading of its group failed (AttributeError), dead-lettered for ever."""
    monkeypatch.setattr(window, "CHUNK_ROWS", 3)
    config = {"kind": "count", "count": 20, "slide": 5, "group_by": "topic.1",
              "aggregates": {"v": ["sum"]}}  # fmt: skip
    clock = FakeClock()
    evs = [(BASE + i * S, "abc"[i % 3], i) for i in range(120)]
    first = make(config, clock)
    run(first, evs[:64])  # none just emitted: each closes early with its readings
    assert first.kv is not None
    rows = []  # the state as written before chunks
    for key, seq, value in first.kv.snapshot():
        if key.startswith("c|"):
            acc = first.kv.get(key)
            old = {k: v for k, v in acc.items() if k not in ("h", "z", "c")}
            old["buf"] = first._rows(acc)
            rows.append((key, seq, encode_json(old)))
        elif not key.startswith("~c|"):
            rows.append((key, seq, value))
    second = make(config, clock)
    assert second.kv is not None
    second.kv.restore(rows)
    second.kv.max_bytes = second.kv.bytes + 50  # the old state fitted, just
    second.kv.restore(rows)
    second.restored()
    closing = {key for key, _ in second.kv._evicted_items}
    assert closing, "the budget evicts none: the test tests nothing"
    assert not closing & set(second.kv.keys())
    early = outputs(second.tick(clock.ns))
    assert sorted(o["group"] for o in early) == sorted(key[2:] for key in closing)
    assert all(o["early"] for o in early)
    later = outputs(run(second, evs[64:]))  # no group's readings fail
    assert {o["group"] for o in later} == {"a", "b", "c"}


def test_a_topic_level_of_more_digits_than_int_takes_is_a_level_no_topic_has() -> None:
    """`group_by: topic.<5000 digits>` and `{topic.<5000 digits>}` were a traceback from
    check-config (int() refuses over 4300 digits)."""
    many = "9" * 5000
    for config, reason in (
        ({"group_by": f"topic.{many}"}, "has no level 1000000000 to group by"),
        ({"topic": f"agg/{{topic.-{many}}}"}, "has no level -1000000000 for"),
    ):
        proc = make({"kind": "tumbling", "size": "1m", "aggregates": {"v": ["sum"]}, **config})
        with pytest.raises(PermanentError, match=reason):
            proc.process(reading(BASE, "a", 1))


def test_readings_a_doubles_range_apart_have_no_stddev_and_their_percentiles() -> None:
    """-1e308 and 1e308 are numbers, but their difference is not: stddev was 0.0 (a
    spread of nothing; null now, as for every aggregate past a double's range), and the
    median, p0 and p100 were null, though each is a number between them."""
    processor = make(
        {
            "kind": "count",
            "count": 2,
            "aggregates": {"v": ["stddev", "median", "percentile(0)", "percentile(100)"]},
        }
    )
    assert processor.process(FlowFile.create("t", b'{"v": -1e308}')) == []
    (out,) = outputs(processor.process(FlowFile.create("t", b'{"v": 1e308}')))
    assert out["v"] == {"stddev": None, "median": 0.0, "p0": -1e308, "p100": 1e308}


@pytest.mark.parametrize(
    "kind", [{"kind": "tumbling", "size": "1m"}, {"kind": "session", "gap": "1m"}]
)
def test_a_clock_set_back_far_closes_the_windows_ahead_of_it_early(kind: dict[str, str]) -> None:
    """A processing-time window of a clock that ran a year ahead (a board without RTC,
    corrected by NTP) stayed open until the clock came back to it, a year later, while
    the readings went to the windows of the new time. Not after a restart: see below."""
    clock = FakeClock()
    config = {**kind, "group_by": "topic", "aggregates": {"v": ["sum"]}}
    processor = make(config, clock)
    assert processor.process(reading(clock.ns, "a", 1)) == []
    assert processor.process(reading(clock.ns, "b", 2)) == []
    assert processor.tick(clock.ns) == []
    clock.ns -= 30 * S  # set back by less than a window: it waits
    assert processor.tick(clock.ns) == []
    clock.ns -= 365 * 86400 * S
    assert processor.process(reading(clock.ns, "a", 5)) == []
    early = outputs(processor.tick(clock.ns))
    assert [(o["group"], o["v"]["sum"], o["early"]) for o in early] == [
        ("dev/a", 1, True),
        ("dev/b", 2, True),
    ]
    assert processor.status()["open"] == 1 and processor.status()["early"] == 2
    later = processor.tick(clock.ns + S) + processor.tick(clock.ns + 121 * S)
    assert [(o["v"]["sum"], "early" in o) for o in outputs(later)] == [(5, False)]
    # A restart on a clock behind the state's closes nothing early: at boot a board
    # without RTC may not have set its clock yet (fake-hwclock's saved time, 1970), and
    # the windows wait for NTP, then close whole. (The first tick closed them early.)
    ahead = make(config, clock)
    assert ahead.process(reading(clock.ns, "c", 7)) == []
    assert ahead.kv is not None
    again = make(config, clock)
    assert again.kv is not None
    again.kv.restore(ahead.kv.snapshot())
    again.restored()
    for behind in (clock.ns - 365 * 86400 * S, 0):
        assert again.tick(behind) == [] and again.tick(behind + S) == []
        again.restored()  # as at each boot
    assert again.status()["open"] == 1 and again.status()["early"] == 0
    whole = outputs(again.tick(clock.ns + 121 * S))  # NTP set the clock right
    assert [(o["group"], o["v"]["sum"], "early" in o) for o in whole] == [("dev/c", 7, False)]


def test_a_clock_set_back_before_a_long_session_closes_it_early() -> None:
    """A session's length grows with its readings: one of 10 days, the clock set back a
    day before its start (less than its length), stayed open, and when the clock came
    back to it the session of the readings after the step ran into it and took them."""
    clock = FakeClock()
    processor = make({"kind": "session", "gap": "1h", "aggregates": {"v": ["sum"]}}, clock)
    start = clock.ns
    for _ in range(10 * 24):
        assert processor.process(reading(clock.ns, "a", 1)) == []
        clock.ns += 3600 * S - S
    assert processor.tick(clock.ns) == []
    clock.ns = start - 86400 * S
    assert processor.process(reading(clock.ns, "a", 5)) == []
    (early,) = outputs(processor.tick(clock.ns))
    assert (early["count"], early["v"]["sum"], early["early"]) == (240, 240, True)
    later = outputs(processor.tick(clock.ns + 2 * 3600 * S))
    assert [(o["count"], o["v"]["sum"], "early" in o) for o in later] == [(1, 5, False)]


def test_a_median_at_a_rank_of_whole_numbers_is_written_as_a_float() -> None:
    aggregates = {"v": ["median", "percentile(0)"]}
    processor = make({"kind": "count", "count": 3, "aggregates": aggregates})
    out: list[FlowFile] = []
    for v in (1, 2, 3):
        out += processor.process(FlowFile.create("t", json.dumps({"v": v}).encode()))
    assert b'"v":{"median":2.0,"p0":1.0}' in out[0].content

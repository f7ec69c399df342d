"""Poll schedules: interval and cron times, jitter, the missed-run policies, and the source
runner driving a polled source on a fake clock (wall clock jumps included)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.config.model import RetrySettings
from gateway.config.schema import Problems, build_component
from gateway.core.clock import Clock
from gateway.core.component import Context, Source
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.core.schedule import INTERVAL_MAX, Schedule, cron_problem
from gateway.engine.runner import Ingest, SourceRunner

pytestmark = pytest.mark.unit


def wall(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_an_interval_keeps_its_grid_and_skips_missed_times() -> None:
    s = Schedule(interval=10.0)
    assert s.first(100.0, 0.0) == 100.0
    assert s.next(101.0, 0.0) == 110.0, "the next time counts from the last time, not its end"
    # a poll that took 25 s: the times 120 and 130 passed; skip waits for 140
    assert s.next(135.0, 0.0) == 140.0
    assert s.missed_runs == 2


def test_a_run_at_once_near_the_next_time_of_the_grid_stands_for_it() -> None:
    # an hourly source back from an error at 59:59 polled at once, then again at 60:00
    s = Schedule(interval=3600.0)
    s.first(0.0, 0.0)
    assert s.at_once(3599.0, 0.0) == 3599.0
    assert s.next(3599.5, 0.0) == 7200.0
    assert s.missed_runs == 0
    # back early in a gap, the grid's next time is polled as usual
    s = Schedule(interval=3600.0)
    s.first(0.0, 0.0)
    s.at_once(600.0, 0.0)
    assert s.next(601.0, 0.0) == 3600.0


def test_an_interval_catches_up_once() -> None:
    s = Schedule(interval=10.0, missed="catch_up")
    s.first(100.0, 0.0)
    assert s.next(135.0, 0.0) == 135.0, "one run at once for the missed ones"
    assert s.next(136.0, 0.0) == 145.0, "then the schedule again, from that run"
    assert s.missed_runs == 3


def test_jitter_delays_each_run_within_its_bound_and_keeps_the_rate() -> None:
    draws = iter([0.5, 1.0, 0.0])
    s = Schedule(interval=10.0, jitter=4.0, rand=lambda: next(draws))
    assert s.first(100.0, 0.0) == 102.0
    assert s.next(103.0, 0.0) == 114.0, "jitter is added to the time, not to the grid"
    assert s.next(115.0, 0.0) == 120.0


def test_cron_times_are_utc_wall_times() -> None:
    s = Schedule(interval=1.0, cron="*/5 * * * *")
    assert s.wall
    assert s.first(0.0, wall("2024-03-01T10:02:30")) == wall("2024-03-01T10:05:00")
    assert s.next(0.0, wall("2024-03-01T10:05:01")) == wall("2024-03-01T10:10:00")
    seconds = Schedule(interval=1.0, cron="* * * * * */15")
    assert seconds.first(0.0, wall("2024-03-01T10:02:31")) == wall("2024-03-01T10:02:45")


def test_cron_missed_times_skip_or_catch_up_once() -> None:
    skip = Schedule(interval=1.0, cron="0 * * * *")
    skip.first(0.0, wall("2024-03-01T09:30:00"))
    # the run of 10:00 ended with the wall clock at 13:20: 11:00 .. 13:00 passed
    assert skip.next(0.0, wall("2024-03-01T13:20:00")) == wall("2024-03-01T14:00:00")
    assert skip.missed_runs == 3
    catch = Schedule(interval=1.0, cron="0 * * * *", missed="catch_up")
    catch.first(0.0, wall("2024-03-01T09:30:00"))
    assert catch.next(0.0, wall("2024-03-01T13:20:00")) == wall("2024-03-01T13:20:00")
    assert catch.next(0.0, wall("2024-03-01T13:20:05")) == wall("2024-03-01T14:00:00")


def test_a_wall_clock_leap_of_years_is_passed_over_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A board without RTC that learns the time leaps from 1970: each missed cron time was
    counted with a croniter of its own, 0.1 ms each, at most 100,000 a call (then the run
    came at once, and again): minutes of a blocked event loop."""
    from croniter import croniter

    skip = Schedule(interval=1.0, cron="*/10 * * * *")
    skip.first(0.0, wall("1970-01-02T00:00:00"))  # due 00:10
    asked = 0
    get_next = croniter.get_next

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal asked
        asked += 1
        return get_next(self, *args, **kwargs)

    monkeypatch.setattr(croniter, "get_next", counted)
    assert skip.next(0.0, wall("2026-11-30T11:05:00")) == wall("2026-11-30T11:10:00")
    assert asked < 5000, f"{asked} cron times asked for one call"
    days = (wall("2026-11-30T00:00:00") - wall("1970-01-03T00:00:00")) / 86400
    assert skip.missed_runs == 142 + 144 * days + 67, "01-02 00:20 .. 23:50, 00:00 .. 11:00"
    catch = Schedule(interval=1.0, cron="0 * * * *", missed="catch_up")
    catch.first(0.0, wall("2024-03-01T09:30:00"))
    assert catch.next(0.0, wall("2024-05-01T13:20:00")) == wall("2024-05-01T13:20:00")
    assert catch.next(0.0, wall("2024-05-01T13:20:05")) == wall("2024-05-01T14:00:00")
    assert catch.missed_runs == 61 * 24 + 3, "11:00 on 1 March .. 13:00 on 1 May"


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"interval": "10s", "jitter": "1h"}, "must be less than interval (10s)"),
        ({"interval": "10s", "jitter": "10s"}, "must be less than interval (10s)"),
        (
            {"schedule": "*/5 * * * *", "jitter": "5m"},
            "must be less than the time between two runs of schedule (300s)",
        ),
        ({"interval": "10s", "jitter": "9s"}, None),
        ({"schedule": "0 9 * * 1-5", "jitter": "2h"}, None),
    ],
)
def test_a_jitter_as_long_as_the_time_between_polls_is_refused(
    keys: dict[str, str], problem: str | None
) -> None:
    """interval 10s, jitter 1h was taken: 40 polls a day instead of 8640, the rest counted
    as missed runs."""
    for source in ({"type": "system"}, {"type": "rest", "url": "http://api"}):
        problems = Problems()
        build_component("source", {**source, **keys}, ("sources", "s"), problems)
        assert [m for _p, m in problems.items] == ([problem] if problem else [])


NODE = {"node": "ns=2;i=2"}


@pytest.mark.parametrize(
    ("source", "low"),
    [
        ({"type": "system"}, "100ms"),
        ({"type": "rest", "url": "http://api"}, "50ms"),
        ({"type": "postgres", "dsn": "postgresql://db/x", "table": "t", "cursor": "id"}, "10ms"),
        ({"type": "opcua", "url": "opc.tcp://p", "mode": "poll", "nodes": {"t": NODE}}, "50ms"),
    ],
)
def test_an_interval_past_100_years_is_refused(source: dict[str, Any], low: str) -> None:
    """`interval: 1e12` was taken: the next run's date, in the year 33715, could not be
    written, and every /api/status was a 500 (the alerts and the stats crashing with it,
    each second)."""
    for interval, problems_expected in (
        ("36500d", []),
        ("36501d", [f"must be between {low} and 100 years"]),
        (1e12, [f"must be between {low} and 100 years"]),
    ):
        problems = Problems()
        build_component("source", {**source, "interval": interval}, ("sources", "s"), problems)
        assert [m for p, m in problems.items if p[2:] == ("interval",)] == problems_expected
        assert [p for p, _m in problems.items if p[2:] != ("interval",)] == []


async def test_the_next_run_of_an_interval_of_100_years_is_shown() -> None:
    clock = FakeClock(1000.0, wall("2024-03-01T10:03:00"))
    source = Counting(clock, Schedule(interval=float(INTERVAL_MAX)))
    runner, task = await run_with(source, clock)
    await steps(clock, 2)
    assert len(source.polls) == 1
    assert runner.status().to_json()["next_run"] == "2124-02-06T10:03:00.000Z"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_bad_cron_expressions_are_explained() -> None:
    assert cron_problem("*/5 * * * *") is None
    assert "5 fields" in (cron_problem("*/5 * *") or "")
    assert "not a valid cron" in (cron_problem("61 * * * *") or "")
    # valid fields, no date: passed the check, then the source crashed at each start
    # (CroniterBadDateError, with a traceback) and never polled
    for never in ("0 0 31 2 *", "0 0 30 2 *", "0 12 31 4,6,9,11 *"):
        assert cron_problem(never) == (
            f"{never!r} names no date that exists (such as 30 February): it never runs"
        )
    assert cron_problem("0 0 29 2 *") is None  # leap days come
    # croniter's random minute, drawn again at each run and clock check: polls came at
    # random minutes, three in one hour and none in the next
    for random_time in ("R * * * *", "0 r(1-5) * * *", "0 0 * * * R/10", "H * * * *"):
        field = next(f for f in random_time.split() if f[0] in "RrH")
        assert cron_problem(random_time) == (
            f"{random_time!r}: {field!r} (croniter's random or hashed time) is not a cron"
            " field: name the times, e.g. '17 * * * *'"
        )
    assert cron_problem("0 0 * mar fri") is None


class FakeClock(Clock):
    """Monotonic and wall time that stand still until the test moves them."""

    def __init__(self, mono: float, wall_s: float) -> None:
        self.mono = mono
        self.wall_s = wall_s
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.mono

    def now_ns(self) -> int:
        return int(self.wall_s * 1e9)

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.mono + max(seconds, 0.0), future)
        self._sleepers.append(entry)
        try:
            await future
        finally:
            self._sleepers.remove(entry)

    def advance(self, seconds: float, wall_jump: float = 0.0) -> None:
        self.mono += seconds
        self.wall_s += seconds + wall_jump
        for due, future in list(self._sleepers):
            if due <= self.mono and not future.done():
                future.set_result(None)


class Counting(Source):
    """A polled source that records the wall time of each poll."""

    def __init__(self, clock: FakeClock, schedule: Schedule, backlog_polls: int = 0) -> None:
        super().__init__(None, Context("counting", "source", clock=clock))
        self.clock = clock
        self.schedule = schedule
        self.polls: list[float] = []
        self.backlog_polls = backlog_polls

    async def poll(self) -> list[FlowFile]:
        self.polls.append(self.clock.wall_s)
        self.backlog = self.backlog_polls > 0
        self.backlog_polls -= 1
        return [FlowFile.create("t/1", b"x")]


async def steps(clock: FakeClock, seconds: float, by: float = 1.0, wall_jump: float = 0.0) -> None:
    for _ in range(int(seconds / by)):
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        clock.advance(by, wall_jump)
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def run_with(source: Counting, clock: FakeClock) -> tuple[SourceRunner, asyncio.Task[None]]:
    runner = SourceRunner(
        "counting", source, Ingest(10_000), RetrySettings(), asyncio.Event(), clock
    )
    runner.gate.set()
    return runner, asyncio.ensure_future(runner.run())


async def test_the_runner_polls_at_cron_times_and_shows_the_next_run() -> None:
    clock = FakeClock(1000.0, wall("2024-03-01T10:03:00"))
    source = Counting(clock, Schedule(interval=1.0, cron="*/5 * * * *"))
    runner, task = await run_with(source, clock)
    await steps(clock, 60)
    assert source.polls == [], "no poll at start: the first cron time is 10:05"
    assert runner.status().to_json()["next_run"] == "2024-03-01T10:05:00.000Z"
    await steps(clock, 10 * 60, by=5.0)
    assert source.polls == [wall("2024-03-01T10:05:00"), wall("2024-03-01T10:10:00")]
    assert runner.status().to_json()["next_run"] == "2024-03-01T10:15:00.000Z"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class Failing(Counting):
    """Fails its polls with `errors`, one each, then polls."""

    def __init__(self, clock: FakeClock, schedule: Schedule, errors: list[Exception]) -> None:
        super().__init__(clock, schedule)
        self.errors = errors

    async def poll(self) -> list[FlowFile]:
        if self.errors:
            raise self.errors.pop(0)
        return await super().poll()


async def test_the_next_run_of_a_retrying_source_is_its_retry_and_a_failed_one_has_none() -> None:
    """Both showed the time of the poll that failed, long past (a database down for an
    hour: an hour-old next_run)."""
    clock = FakeClock(1000.0, wall("2024-03-01T10:04:00"))
    source = Failing(clock, Schedule(interval=1.0, cron="*/5 * * * *"), [RetryableError("down")])
    runner = SourceRunner(
        "failing", source, Ingest(10_000), RetrySettings(initial=20.0, max=20.0),
        asyncio.Event(), clock,
    )  # fmt: skip
    runner.gate.set()
    task = asyncio.ensure_future(runner.run())
    await steps(clock, 61)  # the poll of 10:05 fails: retried within 20 s
    status = runner.status().to_json()
    assert status["state"] == "retrying"
    retry = datetime.fromisoformat(str(status["next_run"]))
    assert wall("2024-03-01T10:05:01") <= retry.timestamp() <= wall("2024-03-01T10:05:21")
    await steps(clock, 30)  # connected again: the poll that failed goes again at once
    assert source.polls and runner.status().to_json()["next_run"] == "2024-03-01T10:10:00.000Z"
    source.errors.append(PermanentError("no such table"))
    await steps(clock, 5 * 60)
    assert runner.status().to_json()["state"] == "failed"
    assert runner.status().to_json()["next_run"] is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class Unreachable(Counting):
    """Its connects fail with `errors`, one each, then it connects."""

    def __init__(self, clock: FakeClock, schedule: Schedule, errors: list[Exception]) -> None:
        super().__init__(clock, schedule)
        self.errors = errors

    async def connect(self) -> None:
        if self.errors:
            raise self.errors.pop(0)


def retrying_runner(
    source: Counting, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> SourceRunner:
    """A runner whose retries come 20 s after a failure, no jitter."""
    monkeypatch.setattr("gateway.core.backoff.random.uniform", lambda low, high: high)
    runner = SourceRunner(
        "failing", source, Ingest(10_000), RetrySettings(initial=20.0, max=20.0),
        asyncio.Event(), clock,
    )  # fmt: skip
    runner.gate.set()
    return runner


async def test_a_cron_source_whose_first_connect_failed_polls_once_it_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It waited for the next cron time, a day for `0 3 * * *`: retrying (source_offline
    firing) all that time, with a next_run in the past."""
    clock = FakeClock(1000.0, wall("2024-03-01T10:00:00"))
    source = Unreachable(clock, Schedule(interval=1.0, cron="0 3 * * *"), [RetryableError("down")])
    runner = retrying_runner(source, clock, monkeypatch)
    task = asyncio.ensure_future(runner.run())
    await steps(clock, 5)
    status = runner.status().to_json()
    assert status["state"] == "retrying"
    assert str(status["next_run"]) == "2024-03-01T10:00:20.000Z", "its next try"
    await steps(clock, 20)  # connected at 10:00:20
    assert source.polls == [wall("2024-03-01T10:00:20")], "the next try polls at once"
    status = runner.status().to_json()
    assert status["state"] == "running" and status["next_run"] == "2024-03-02T03:00:00.000Z"
    assert status["missed_runs"] == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("missed", ["skip", "catch_up"])
@pytest.mark.parametrize(
    ("when", "tries", "next_run", "missed_runs", "polls"),
    [
        # the poll of 10:05 fails, then 39 tries; 10:10 and 10:15 are missed
        ("*/5 * * * *", 40, "10:20:00", 2, ["10:20:00"]),
        # every 60 s from 10:04: 43 tries fail (10:04:00 to 10:18:00), the grid's times
        # 10:05 to 10:18 are missed and the poll of 10:18:20 stands for 10:18. Each try
        # restarted the grid at its own time: missed_runs 0 however long the outage,
        # and the polls went on at :20 past the minute
        (60.0, 43, "10:19:00", 14, ["10:19:00", "10:20:00", "10:21:00", "10:22:00", "10:23:00"]),
    ],
)
async def test_a_source_back_after_an_outage_of_more_than_a_gap_polls_at_once(
    missed: str,
    when: str | float,
    tries: int,
    next_run: str,
    missed_runs: int,
    polls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The poll that failed went again once connected, but settle() took it for missed
    (the next cron time had passed meanwhile) and waited for the next one: retrying for
    up to a gap more, with its retry time, long past, as next_run."""
    clock = FakeClock(1000.0, wall("2024-03-01T10:04:00"))
    errors: list[Exception] = [RetryableError("down")] * tries
    if isinstance(when, str):
        schedule = Schedule(interval=1.0, cron=when, missed=missed)
    else:
        schedule = Schedule(interval=when, missed=missed)
    source = Failing(clock, schedule, errors)
    runner = retrying_runner(source, clock, monkeypatch)
    task = asyncio.ensure_future(runner.run())
    await steps(clock, 850)  # to 10:18:10, every try 20 s after the one before failed
    assert source.polls == [] and runner.status().to_json()["state"] == "retrying"
    await steps(clock, 20)  # the try of 10:18:20 works
    assert source.polls == [wall("2024-03-01T10:18:20")], "once, at once"
    status = runner.status().to_json()
    assert status["state"] == "running"
    assert status["next_run"] == f"2024-03-01T{next_run}.000Z"
    assert status["missed_runs"] == missed_runs
    await steps(clock, 5 * 60)
    assert source.polls[1:] == [wall(f"2024-03-01T{t}") for t in polls]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_runner_notices_a_wall_clock_jump_and_catches_up_once() -> None:
    clock = FakeClock(1000.0, wall("2024-03-01T09:59:00"))
    source = Counting(clock, Schedule(interval=1.0, cron="0 * * * *", missed="catch_up"))
    runner, task = await run_with(source, clock)
    await steps(clock, 61)
    assert source.polls == [wall("2024-03-01T10:00:00")]
    # NTP sets the clock three hours ahead while the runner sleeps toward 11:00
    await steps(clock, 60, by=60.0, wall_jump=3 * 3600.0)
    await steps(clock, 5)
    assert len(source.polls) == 2, "one catch-up run, not three"
    assert runner.status().to_json()["missed_runs"] >= 2
    assert runner.status().to_json()["next_run"] == "2024-03-01T14:00:00.000Z"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_runner_follows_a_wall_clock_set_back() -> None:
    """A clock that was ahead (a board whose saved time was wrong) set back a day by NTP:
    the runner slept on toward the next cron time of the wrong day, no poll for a day."""
    clock = FakeClock(1000.0, wall("2024-03-02T09:59:00"))
    source = Counting(clock, Schedule(interval=1.0, cron="*/5 * * * *"))
    runner, task = await run_with(source, clock)
    await steps(clock, 61)
    assert source.polls == [wall("2024-03-02T10:00:00")]
    await steps(clock, 60, by=60.0, wall_jump=-86401.0)  # now 10:01:00 on 1 March
    await steps(clock, 10 * 60, by=5.0)
    assert source.polls[1:] == [wall("2024-03-01T10:05:00"), wall("2024-03-01T10:10:00")]
    assert runner.status().to_json()["next_run"] == "2024-03-01T10:15:00.000Z"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_cron_time_polled_is_not_polled_again_after_the_clock_is_set_back() -> None:
    """NTP set the clock back 90 s a minute after the poll of 10:00: the runner went back
    to the first cron time after 09:59:30, 10:00, and polled it a second time."""
    clock = FakeClock(1000.0, wall("2024-03-01T09:59:00"))
    source = Counting(clock, Schedule(interval=1.0, cron="*/5 * * * *"))
    _runner, task = await run_with(source, clock)
    await steps(clock, 61)
    assert source.polls == [wall("2024-03-01T10:00:00")]
    await steps(clock, 60, by=60.0, wall_jump=-91.0)  # now 09:59:30
    await steps(clock, 10 * 60, by=5.0)  # to 10:09:30
    assert source.polls == [wall("2024-03-01T10:00:00"), wall("2024-03-01T10:05:00")]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_after_a_day_set_back_the_times_polled_a_day_ago_are_polled_again() -> None:
    # a board a day ahead polled 10:00 on 2 March; set back, it polls 1 March from 10:05
    # on, and when its clock comes to 2 March 10:00 again, a day later, it polls it again:
    # passed over, that day's 10:00 would have had no reading
    s = Schedule(interval=1.0, cron="*/5 * * * *")
    assert s.first(0.0, wall("2024-03-02T09:59:00")) == wall("2024-03-02T10:00:00")
    assert s.next(61.0, wall("2024-03-02T10:00:01")) == wall("2024-03-02T10:05:00")
    assert s.rewound(120.0, wall("2024-03-01T10:01:00")) == wall("2024-03-01T10:05:00")
    day = 86400.0
    assert s.next(day - 180, wall("2024-03-02T09:56:00")) == wall("2024-03-02T10:00:00")


def test_a_clock_set_back_hours_polls_those_hours_again() -> None:
    """A `* * * * *` source polled three hours, then NTP set the clock back two: the polled
    times were skipped as spans of wall times, so the next poll came two hours later, and
    missed_runs said 0."""
    s = Schedule(interval=1.0, cron="* * * * *")
    start = wall("2024-03-01T09:59:30")
    s.first(0.0, start)
    for minute in range(1, 181):  # 10:00 to 12:59, each polled on time
        s.next(30.0 + 60 * minute - 59, start + 60 * minute - 29)
    # at 12:59:40 the clock goes back to 10:59:40
    assert s.rewound(180 * 60 + 10.0, wall("2024-03-01T10:59:40")) == wall("2024-03-01T11:00:00")


async def test_a_source_with_a_backlog_is_polled_again_at_once() -> None:
    clock = FakeClock(1000.0, wall("2024-03-01T10:00:00"))
    source = Counting(clock, Schedule(interval=30.0), backlog_polls=3)
    runner, task = await run_with(source, clock)
    await steps(clock, 1)
    assert len(source.polls) == 4, "three full pages, then the last one, without waiting"
    await steps(clock, 30)
    assert len(source.polls) == 5
    assert runner.produced == 5
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

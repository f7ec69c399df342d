"""When a polled source runs: every `interval`, or at the times of a cron expression.

No I/O and no sleeping here: `Schedule` answers "when is the next run" from the
times it is given, and the source runner sleeps on the injected Clock, so tests
drive time. An interval runs on the monotonic clock (a wall clock that jumps at
boot, on a board without an RTC, does not bunch or stall the polls); a cron
expression names wall-clock times (UTC), so it is measured on the wall clock and
the runner re-reads it at least every `WALL_CHECK_S` while it waits.
croniter (with dateutil: 0.4 MB more RSS for an idle gateway) is imported only once a
cron expression is checked or used: most gateways poll on an interval and never pay for it.

A run is *missed* when its time passed without it (a poll slower than the
interval, the store blocking intake, the wall clock jumping forward). `missed:
skip` (the default) waits for the next time still ahead; `missed: catch_up` runs
once at once for all the missed ones, then keeps to the schedule. A wall clock set
back moves a cron schedule back with it (its next time after the clock's new time), but
a cron time polled less than one gap of the schedule ago (on the monotonic clock) is not
polled again: a clock set back 90 s a minute after the poll of 10:00 polls next at 10:05,
not at 10:00 a second time. A time polled longer ago is polled again when the clock comes
to it (a clock set back two hours polls those two hours again): a reading twice is
better than hours without one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import UTC, datetime

COUNT_MAX = 1000  # missed cron times counted one by one; beyond, estimated
POLLED_KEPT = 8  # the latest cron times polled, kept to skip after a step back
WALL_CHECK_S = 60.0  # the longest sleep toward a cron time before the wall clock is read again
MISSED = ("skip", "catch_up")
# The longest `interval` a polled source may have, and a window's size, every and gap and a
# deadband's heartbeat (gateway.processors.window): 100 years. The next run's time is shown
# as a UTC date, and one past the year 9999 (`interval: 1e12`) made every /api/status a
# 500, and crashed the alerts and the stats with it, again each second.
INTERVAL_MAX = 100 * 365 * 86400
# croniter's `R` (a random value, drawn again each time the expression is read: at each run
# and each wall clock check, so `R * * * *` polled at a new random minute each time, three
# polls in one hour and none in the next) and `H` (hashed from an id it is not given)
_RANDOM = re.compile(r"[rh](\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a usable cron schedule, or None."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        return (
            f"{expression!r} is not a cron schedule: it needs 5 fields (minute hour day month"
            " weekday) or 6 (with seconds last), e.g. '*/5 * * * *'"
        )
    for field in fields:
        if _RANDOM.match(field):
            return (
                f"{expression!r}: {field!r} (croniter's random or hashed time) is not a cron"
                " field: name the times, e.g. '17 * * * *'"
            )
    from croniter import croniter

    if not croniter.is_valid(expression):
        return f"{expression!r} is not a valid cron schedule, e.g. '*/5 * * * *'"
    from croniter import CroniterBadDateError

    try:  # valid fields that no date has (31 February) leave no time to run at
        croniter(expression, datetime(2024, 1, 1, tzinfo=UTC)).get_next(float)
    except CroniterBadDateError:
        return f"{expression!r} names no date that exists (such as 30 February): it never runs"
    return None


class Schedule:
    """The times of one polled source's runs.

    Interval mode: `first` is now, each next run `interval` after the previous one's
    time (not after its end, so the rate holds). Cron mode: the times of `cron` in UTC,
    the first one after the start. Each run is delayed by a random 0..`jitter` seconds,
    drawn when its time is computed (so the time shown in the status is the real one).
    """

    def __init__(
        self,
        *,
        interval: float,
        cron: str | None = None,
        jitter: float = 0.0,
        missed: str = "skip",
        rand: Callable[[], float] = random.random,
    ) -> None:
        assert missed in MISSED
        self.interval = max(interval, 0.001)
        self.cron = cron
        self.jitter = max(jitter, 0.0)
        self.missed = missed
        self._rand = rand
        self._slot = 0.0  # the time of the current run without its jitter (mono or wall s)
        self.due = 0.0  # when the current run starts: monotonic (interval) or wall (cron) s
        self.missed_runs = 0  # how many run times were skipped or folded into a catch-up
        # The latest cron times polled, each with the monotonic time of its poll, newest
        # last: after the wall clock is set back a little, a time it comes to again less
        # than a gap after its poll is skipped rather than polled twice. Only the monotonic
        # time says how long ago that was: kept as spans of wall times, a clock set back
        # two hours after three hours of polls skipped two hours of readings.
        self._polled: list[tuple[float, float]] = []
        self._at_once: float | None = None  # when the current run was one at once (interval)

    @property
    def wall(self) -> bool:
        """True when `due` is wall-clock seconds (cron), False when monotonic (interval)."""
        return self.cron is not None

    def _jittered(self, slot: float) -> float:
        self._slot = slot
        self.due = slot + (self._rand() * self.jitter if self.jitter else 0.0)
        return self.due

    def _cron_after(self, wall: float) -> float:
        assert self.cron is not None
        from croniter import croniter

        start = datetime.fromtimestamp(wall, UTC)
        return float(croniter(self.cron, start).get_next(float))

    def _unpolled_after(self, at: float, mono: float, wall: float) -> float:
        """The first cron time after `at` that is not one polled less than a gap before the
        clock comes to it (the clock reads `mono` / `wall` now)."""
        polled = dict(self._polled)
        while True:
            at = self._cron_after(at)
            when = polled.get(at)
            if when is None:
                return at
            after = self._cron_after(at)
            if mono + (at - wall) - when >= after - at:
                return at  # polled a gap ago or more: poll it again rather than lose it

    def _polled_now(self, mono: float) -> None:
        """Record the current run's time (`_slot`) as polled, at `mono`."""
        self._polled = [p for p in self._polled if p[0] != self._slot]
        self._polled.append((self._slot, mono))
        del self._polled[:-POLLED_KEPT]

    def _passed(self, slot: float, wall: float) -> tuple[float, int]:
        """The last cron time not after `wall`, and how many there are from `slot` (itself
        one) to it. Counted one by one up to COUNT_MAX; past that (the wall clock of a
        board without RTC leaping years ahead when it learns the time) the last one is
        asked of croniter and the rest of the count estimated from the mean gap: counting
        every time took croniter 0.1 ms each, a minute of blocked event loop per leap."""
        assert self.cron is not None
        from croniter import croniter

        times = croniter(self.cron, datetime.fromtimestamp(slot, UTC))
        passed, count, at = slot, 1, times.get_next(float)
        while at <= wall and count < COUNT_MAX:
            passed, count, at = at, count + 1, times.get_next(float)
        if at <= wall:
            gap = (passed - slot) / (count - 1)
            last = croniter(self.cron, datetime.fromtimestamp(self._cron_after(wall), UTC))
            passed = last.get_prev(float)
            count += round((passed - at) / gap) + 1
        return passed, count

    def first(self, mono: float, wall: float) -> float:
        """The first run's `due`, for a source started at `mono` / `wall`."""
        if self.cron is None:
            return self._jittered(mono)
        return self._jittered(self._cron_after(wall))

    def at_once(self, mono: float, wall: float) -> float:
        """The due of a run now, out of the schedule's times: a source back after an error
        (its poll or its connect failed) polls at once, whatever the missed-run policy. The
        times that passed since the current run's are folded into it (missed), and the
        schedule goes on after now: for cron, the run stands for the last time not after
        `wall` (polled, after a clock set back, as any other); for an interval, the last
        time of its grid not after `mono`, so the grid holds across the tries of an outage
        (each try restarted it at its own time: a try every 20 s of a 60 s interval counted
        no time missed however long the outage, the leftover of each gap lost)."""
        if self.cron is None:
            passed = max(int((mono - self._slot) // self.interval), 0)
            self.missed_runs += passed
            self._slot += passed * self.interval
            self._at_once = mono
            self.due = mono
            return mono
        following = self._cron_after(self._slot)
        if following <= wall:
            self.missed_runs += self._passed(following, wall)[1]
        last = self._cron_after(wall)
        from croniter import croniter

        self._slot = float(croniter(self.cron, datetime.fromtimestamp(last, UTC)).get_prev(float))
        self.due = wall
        return wall

    def next(self, mono: float, wall: float) -> float:
        """The next run's `due`, once the current run ended at `mono` / `wall`."""
        if self.cron is not None:
            self._polled_now(mono)
        return self._after_current(mono, wall)

    def _after_current(self, mono: float, wall: float) -> float:
        """The next run's `due` after the current one, polled or missed."""
        if self.cron is None:
            slot = self._slot + self.interval
            at_once, self._at_once = self._at_once, None
            if at_once is not None and slot - at_once < self.interval / 2:
                # a run at once nearer this time of the grid than the last stands for it (an
                # hourly poll back at 59:59 was followed by another at 60:00)
                slot += self.interval
            if slot >= mono:
                return self._jittered(slot)
            behind = int((mono - slot) // self.interval) + 1  # run times now passed
            self.missed_runs += behind
            if self.missed == "catch_up":
                return self._jittered(mono)
            # keep the grid: the next of its times still ahead
            return self._jittered(slot + behind * self.interval)
        slot = self._unpolled_after(self._slot, mono, wall)
        if slot > wall:
            return self._jittered(slot)
        passed, count = self._passed(slot, wall)
        slot = self._unpolled_after(passed, mono, wall)
        self.missed_runs += count
        if self.missed == "catch_up":
            # one run now stands for all of them; the schedule goes on after the last
            self._slot = passed
            self.due = wall
            return wall
        return self._jittered(slot)

    def rewound(self, mono: float, wall: float) -> float:
        """While waiting for the current run: its `due`, or, when the wall clock went back
        before a cron time ahead of this run's (set back by NTP after a wrong saved time),
        the due of the first cron time after `wall` not polled less than a gap ago, so the
        runs go on from the clock's new time rather than after waiting for the old one to
        come again, and a time just polled is not polled twice."""
        if self.cron is not None:
            ahead = self._unpolled_after(wall, mono, wall)
            if ahead < self._slot:
                return self._jittered(ahead)
        return self.due

    def settle(self, mono: float, wall: float) -> float:
        """At the wake-up for the current run: its `due`, or, when the following run's
        time (and its jitter) passed as well (the process slept through it, the wall clock
        jumped), the due that the missed-run policy gives instead; the current run is
        then missed too. A due not ahead of now means: run now."""
        now = wall if self.cron is not None else mono
        following = (
            self._unpolled_after(self._slot, mono, wall)
            if self.cron is not None
            else (self._slot + self.interval)
        )
        if following + self.jitter >= now:
            return self.due
        self.missed_runs += 1
        return self._after_current(mono, wall)

    def next_run_wall(self, mono: float, wall: float) -> float:
        """`due` as wall-clock seconds (for the status page)."""
        return self.due if self.cron is not None else wall + (self.due - mono)

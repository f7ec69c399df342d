"""The one backoff helper: the engine's jittered waits and the Modbus source's exact ones."""

from __future__ import annotations

import random

import pytest

from gateway.core.backoff import Backoff

pytestmark = pytest.mark.unit


def test_without_jitter_the_wait_doubles_up_to_the_cap_and_reset_starts_over() -> None:
    backoff = Backoff(1.0, 30.0, jitter=False)
    assert [backoff.next() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_without_jitter_a_cap_below_the_first_wait_is_kept() -> None:
    # a Modbus device polled every 60 s with backoff_max 30 s is retried after 30 s
    backoff = Backoff(60.0, 30.0, jitter=False)
    assert [backoff.next() for _ in range(3)] == [30.0, 30.0, 30.0]


def test_jittered_waits_stay_in_their_window() -> None:
    random.seed(7)
    backoff = Backoff(0.2, 10.0)
    for attempt in range(40):
        cap = min(10.0, 0.2 * 2**attempt)
        wait = backoff.next()
        assert 0.1 <= wait <= cap, (attempt, wait)
    # a maximum below the initial wait caps the first wait too: `initial: 1m, max: 1s`
    # waited 30 to 60 s between tries, not the 1 s at most that `max` promises
    low = Backoff(2.0, 0.5)
    waits = [low.next() for _ in range(200)]
    assert min(waits) >= 0.25 and max(waits) <= 0.5 and max(waits) > 0.4

"""The `opcua` source's queue of subscribed values when the gateway stops taking them:
bounded in bytes, the oldest dropped and counted, said at most every 30 s (no server)."""

from __future__ import annotations

import pytest

from gateway.core.clock import Clock
from gateway.core.component import Message
from gateway.core.flowfile import FlowFile
from gateway.sources.opcua.source import ValueQueue

pytestmark = pytest.mark.unit


class StillClock(Clock):
    """Time moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 500.0

    def monotonic(self) -> float:
        return self.now


def value(i: int) -> Message:
    # 16 bytes of topic and 84 of content: 100 bytes a value
    content = f'{{"value": {i:08d}}}'.ljust(84).encode()
    return Message(FlowFile.create("opcua/s1/counter", content, {}, 0))


def numbers(messages: list[Message]) -> list[int]:
    return [int(m.flowfile.content[10:18]) for m in messages]


def test_values_within_the_bound_are_all_kept_in_order() -> None:
    warned: list[int] = []
    queue = ValueQueue(1000, StillClock(), warned.append)
    assert sum(queue.push(value(i)) for i in range(10)) == 0  # exactly 1,000 bytes
    assert queue.bytes == 1000 and queue.dropped == 0 and warned == []
    assert numbers(queue.take()) == list(range(10))
    assert queue.bytes == 0 and len(queue) == 0 and queue.take() == []


def test_beyond_the_bound_the_oldest_go_counted_and_said_every_30_s() -> None:
    clock = StillClock()
    warned: list[int] = []
    queue = ValueQueue(1000, clock, warned.append)
    for i in range(10):
        queue.push(value(i))
    assert queue.push(value(10)) == 1  # one over: the oldest goes
    assert warned == [1]
    assert sum(queue.push(value(i)) for i in range(11, 25)) == 14
    assert queue.dropped == 15 and queue.bytes == 1000
    assert warned == [1]  # said once, not for each value dropped

    clock.now += 29.9
    queue.push(value(25))
    assert warned == [1]
    clock.now += 0.1  # 30 s after the first: said again, with the total so far
    queue.push(value(26))
    assert warned == [1, 17]

    # what the gateway gets when it takes values again: the newest, oldest first
    assert numbers(queue.take()) == list(range(17, 27))
    assert queue.bytes == 0 and queue.dropped == 17
    assert queue.push(value(27)) == 0  # room again


def test_a_value_larger_than_the_bound_is_dropped_itself() -> None:
    warned: list[int] = []
    queue = ValueQueue(150, StillClock(), warned.append)
    queue.push(value(1))
    assert queue.push(Message(FlowFile.create("t", b"x" * 200, {}, 0))) == 2
    assert queue.bytes == 0 and len(queue) == 0 and queue.dropped == 2 and warned == [2]

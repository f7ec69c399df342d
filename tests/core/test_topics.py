"""Topic filters and matching, with the examples of MQTT 5.0 section 4.7."""

from __future__ import annotations

import pytest

from gateway.core.topics import (
    TopicMatcher,
    matches,
    validate_filter,
    validate_received_topic,
    validate_topic,
)

pytestmark = pytest.mark.unit

# (filter, topic, matches?) -- the non-normative examples of MQTT 5.0 4.7.1 and 4.7.2.
SPEC_EXAMPLES = [
    # 4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("#", "sport/tennis/player1", True),
    ("#", "/", True),
    # 4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/tennis/#", "sport/tennis/player1/ranking", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("sport/+/player1", "sport/tennis/player2", False),
    # 4.7.2 topics beginning with $
    ("#", "$SYS/broker/clients", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("+", "$SYS", False),
    ("a/#", "a/$SYS", True),  # only a wildcard in the FIRST level is kept from $ topics
    # 4.7.3 topic semantics: case, spaces and empty levels count
    ("ACCOUNTS", "Accounts", False),
    ("Accounts payable", "Accounts payable", True),
    ("/", "/", True),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("a/b", "a/b/", False),
    ("a/b/", "a/b", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), SPEC_EXAMPLES)
def test_spec_examples(topic_filter: str, topic: str, expected: bool) -> None:
    assert validate_filter(topic_filter) is None
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    "topic_filter",
    ["#", "sport/tennis/#", "+", "+/tennis/#", "sport/+/player1", "/", "a//b", "$SYS/#", "+/+"],
)
def test_valid_filters(topic_filter: str) -> None:
    assert validate_filter(topic_filter) is None


@pytest.mark.parametrize(
    ("topic_filter", "reason"),
    [
        ("sport/tennis#", "'#' must be a whole level"),
        ("a/b#", "'#' must be a whole level"),
        ("sport/tennis/#/ranking", "the last one"),
        ("#/a", "the last one"),
        ("##", "'#' must be a whole level"),
        ("sport+", "'+' must be a whole level"),
        ("a+/b", "'+' must be a whole level"),
        ("a/+b", "'+' must be a whole level"),
        ("++", "'+' must be a whole level"),
        ("", "must not be empty"),
        ("a/\x00", "NUL"),
        ("a" * 65536, "65535 bytes"),
    ],
)
def test_invalid_filters(topic_filter: str, reason: str) -> None:
    problem = validate_filter(topic_filter)
    assert problem is not None and reason in problem


def test_filter_length_counts_utf8_bytes() -> None:
    assert validate_filter("ä" * 32767) is None  # 65534 bytes
    assert validate_filter("ä" * 32768) is not None  # 65536 bytes


@pytest.mark.parametrize("topic", ["sport/tennis", "/", "$SYS/x", "a//b", "ünïcode/ok"])
def test_valid_topic_names(topic: str) -> None:
    assert validate_topic(topic) is None


@pytest.mark.parametrize(
    ("topic", "reason"),
    [("", "empty"), ("a/+", "wildcards"), ("a/#", "wildcards"), ("a+b", "wildcards"),
     ("a\x00", "NUL")],
)  # fmt: skip
def test_invalid_topic_names(topic: str, reason: str) -> None:
    problem = validate_topic(topic)
    assert problem is not None and reason in problem


@pytest.mark.parametrize(
    ("topic", "reason"),
    [("a\nb", "U+000A"), ("a\x7f", "U+007F"), ("a\x85", "U+0085"), ("a\uffff", "U+FFFF"),
     ("a\ufdd0", "U+FDD0"), ("a\U0010fffe", "U+10FFFE"), ("a/#", "wildcards"),
     ("\ud800", "surrogate")],
)  # fmt: skip
def test_a_received_topic_holds_nothing_an_mqtt_broker_refuses(topic: str, reason: str) -> None:
    # A topic the http source took with a Unicode non-character (U+FFFF) was
    # dead-lettered by the MQTT sink: the source checked control characters only.
    problem = validate_received_topic(topic)
    assert problem is not None and reason in problem
    assert validate_received_topic("ünïcode/\u00a0ok") is None


def test_matcher_names_each_matching_route_once_in_order() -> None:
    matcher = TopicMatcher(
        [
            ("all", "#"),
            ("plc", "modbus/plc1/+"),
            ("temps", "+/+/temperature"),
            ("plc", "modbus/#"),  # a route with two filters
            ("sys", "$SYS/#"),
        ]
    )
    assert matcher.lookup("modbus/plc1/temperature") == ("all", "plc", "temps")
    assert matcher.lookup("modbus/plc2/pressure") == ("all", "plc")
    assert matcher.lookup("serial/gps") == ("all",)
    assert matcher.lookup("$SYS/broker/uptime") == ("sys",)
    assert TopicMatcher([]).lookup("a") == ()


def test_matcher_cache_is_bounded() -> None:
    matcher = TopicMatcher([("a", "sensors/+")], cache_size=10)
    for i in range(100):
        assert matcher.lookup(f"sensors/{i}") == ("a",)
    info = matcher.cache_info()
    assert info.currsize == 10 and info.misses == 100
    matcher.lookup("sensors/99")
    assert matcher.cache_info().hits == 1


def test_matcher_does_not_keep_long_topics() -> None:
    # The cache held up to 65,536 topics of any length: topics of 60 KB (MQTT allows
    # 64 KiB, and /api/routes/match takes 8 KiB) made it hold gigabytes.
    matcher = TopicMatcher([("a", "sensors/#")])
    for i in range(50):
        assert matcher.lookup(f"sensors/{i}/" + "x" * 60_000) == ("a",)
    assert matcher.lookup("other/" + "x" * 60_000) == ()
    assert matcher.cache_info().currsize == 0
    assert matcher.lookup("sensors/1") == ("a",) and matcher.cache_info().currsize == 1

"""Every source's topic template with a lone { or } is refused at check-config in one
line of ours, naming the brace, instead of Python's format-string text ("Single '}'
encountered in format string", "expected '}' before end of string")."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import registry
from gateway.config import reference
from gateway.config.schema import Problems, build_component

pytestmark = pytest.mark.unit

SOURCES = [
    entry
    for entry in registry.entries()
    if entry.kind == "source" and "topic" in reference.fields(entry.config)[1]
]


def problems_of(entry: Any, topic: str) -> list[str]:
    problems = Problems()
    keys = {**reference.sample(entry.config, entry.type), "topic": topic}
    build_component("source", keys, ("sources", "s"), problems)
    return [f"{'.'.join(map(str, path))}: {message}" for path, message in problems.items]


def test_the_sources_with_a_topic_template() -> None:
    assert {e.type for e in SOURCES} >= {
        "serial", "modbus", "opcua", "postgres", "mysql", "rest", "redis", "nats"
    }  # fmt: skip


@pytest.mark.parametrize("entry", SOURCES, ids=lambda e: e.type)
@pytest.mark.parametrize(
    ("topic", "brace"),
    [("r/{dev", "{"), ("r/dev}", "}"), ("r/}{x}", "}"), ("r/{{x}", "}"), ("r/{x}/{", "{")],
)
def test_a_lone_brace_is_named_in_one_line(entry: Any, topic: str, brace: str) -> None:
    assert problems_of(entry, topic) == [
        f"sources.s.topic: {topic!r} has a lone {brace!r}: a field is written {{name}},"
        " a literal brace {{ or }}"
    ]


@pytest.mark.parametrize("entry", SOURCES, ids=lambda e: e.type)
def test_a_doubled_brace_is_a_literal_one(entry: Any) -> None:
    assert problems_of(entry, "r/{{x}}") == []


# The sinks' templates: the mqtt sink's topic, the redis sink's key, the amqp sink's
# exchange and routing key, the nats sink's subject.
SINK_TEMPLATES = [("mqtt", "topic"), ("redis", "key"), ("amqp", "routing_key"), ("nats", "subject")]


@pytest.mark.parametrize(("kind", "key"), SINK_TEMPLATES)
def test_a_sink_template_with_a_lone_brace_is_named_in_one_line(kind: str, key: str) -> None:
    entry = next(e for e in registry.entries() if e.kind == "sink" and e.type == kind)
    problems = Problems()
    keys = {**reference.sample(entry.config, entry.type), key: "r.{dev"}
    build_component("sink", keys, ("sinks", "s"), problems)
    assert [f"{'.'.join(map(str, path))}: {message}" for path, message in problems.items] == [
        f"sinks.s.{key}: 'r.{{dev' has a lone '{{': a field is written {{name}},"
        " a literal brace {{ or }}"
    ]


@pytest.mark.parametrize("entry", SOURCES, ids=lambda e: e.type)
@pytest.mark.parametrize("field", ["{NAME:d}", "{NAME!r}", "{NAME:>4}"])
def test_a_placeholder_with_a_format_spec_is_refused_in_one_line(entry: Any, field: str) -> None:
    # {device:d} crashed check-config with Python's "Unknown format code 'd' for object of
    # type 'str'" (a traceback); {device!r} and {device:>4} passed and quoted or padded
    # the device's name in every topic (the Modbus status topic kept '{device!r}' as is).
    name = "device" if entry.type == "modbus" else "source"
    topic = "r/" + field.replace("NAME", name)
    found = problems_of(entry, topic)
    assert len(found) == 1 and found[0].startswith("sources.s.topic: "), found


def test_the_modbus_status_topic_takes_a_plain_placeholder_only() -> None:
    entry = next(e for e in registry.entries() if e.kind == "source" and e.type == "modbus")
    problems = Problems()
    keys = {
        **reference.sample(entry.config, entry.type),
        "writeback": {"enabled": True, "status_topic": "s/{device!r}/status"},
    }
    build_component("source", keys, ("sources", "s"), problems)
    assert [(".".join(map(str, p)), m) for p, m in problems.items] == [
        (
            "sources.s.writeback.status_topic",
            "'s/{device!r}/status': {device!r} is no placeholder; write {device}"
            " (no conversion or format spec)",
        )
    ]

"""The field paths and topic levels the JSON processors share (gateway.processors.json)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config.schema import Problems, build_component
from gateway.core.component import Context, Processor
from gateway.core.flowfile import FlowFile
from gateway.processors.json import LEVEL_PAST, MISSING, array_index, level_number, lookup
from gateway.registry import find

pytestmark = pytest.mark.unit

ZEROS = "0" * 5000  # int() refuses text of over 4300 digits, leading zeros included
NINES = "9" * 5000


def build(config: dict[str, Any]) -> Processor:
    problems = Problems()
    cfg = build_component("processor", config, ("p",), problems)
    assert not problems.items, problems.items
    entry = find("processor", config["type"])
    assert entry is not None
    return entry.cls(cfg, Context("r.0", "processor"))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("part", "index"),
    [("1", 1), ("01", 1), (ZEROS, 0), (ZEROS + "1", 1), ("2", None), (NINES, None),
     ("²", None), ("٣", None), ("", None), ("-1", None), ("1 ", None), ("300", None)],
)  # fmt: skip
def test_an_array_index_is_read_in_ascii_digits_whatever_their_leading_zeros(
    part: str, index: int | None
) -> None:
    # A part of 5000 zeros passed the digit count (zeros stripped) and int() raised on the
    # whole text: an internal error at every FlowFile.
    value = {"a": [10, 11]}
    assert array_index(part, 2) == index
    assert lookup(value, ("a", part)) == (MISSING if index is None else value["a"][index])
    assert lookup([[1, 2, 3], [4]], (part, "0")) == (MISSING if index is None else [1, 4][index])


def test_an_array_index_of_300_reaches_an_array_that_long() -> None:
    assert lookup({"a": list(range(400))}, ("a", "300")) == 300
    assert lookup({"a": list(range(400))}, ("a", "0300")) == 300


@pytest.mark.parametrize(
    ("text", "level"),
    [("0", 0), ("-1", -1), ("007", 7), (ZEROS, 0), ("-" + ZEROS + "1", -1),
     (NINES, LEVEL_PAST), ("-" + NINES, -LEVEL_PAST), ("٣", None), ("²", None), ("1.0", None),
     ("", None), ("-", None)],
)  # fmt: skip
def test_a_topic_level_number_is_read_in_ascii_digits_whatever_their_leading_zeros(
    text: str, level: int | None
) -> None:
    # `٣` (a decimal digit to \d and to int()) named level 3; 5000 zeros were a traceback
    assert level_number(text) == level


def test_processors_take_paths_and_levels_of_5000_zeros() -> None:
    """`topic: "000…0"` in a filter was a check-config traceback, and a field path
    `a.000…0` reaching an array an internal error at every FlowFile."""
    ff = FlowFile.create("t/1", json.dumps({"a": [5, 6]}).encode())
    by_level = build({"type": "filter", "all": [{"topic": ZEROS, "op": "eq", "value": "t"}]})
    assert by_level.process(ff) == [ff]
    by_field = build({"type": "filter", "all": [{"field": f"a.{ZEROS}", "op": "eq", "value": 5}]})
    assert by_field.process(ff) == [ff]
    (out,) = build({"type": "transform", "scale": {f"a.{ZEROS}1": 10}}).process(ff)
    assert json.loads(out.content) == {"a": [5, 60]}
    window = {"type": "window", "kind": "count", "count": 1, "aggregates": {"v": ["sum"]}}
    grouped = build({**window, "group_by": f"topic.{ZEROS}1", "topic": f"w/{{topic.-{ZEROS}1}}"})
    (out,) = grouped.process(FlowFile.create("t/1", b'{"v": 2}'))
    assert out.topic == "w/1" and json.loads(out.content)["group"] == "1"


def test_a_window_refuses_a_level_of_another_scripts_digits_on_load() -> None:
    # `\d` took `٣` on load, where the level is read in ASCII digits only
    problems = Problems()
    config = {"type": "window", "kind": "count", "count": 1, "aggregates": {"v": ["sum"]}}
    build_component("processor", {**config, "group_by": "topic.٣"}, ("p",), problems)
    build_component("processor", {**config, "topic": "w/{topic.٣}"}, ("p",), problems)
    assert [message for _, message in problems.items] == [
        "'topic.٣': topic.N needs a level number (0 is the first, -1 the last)",
        "unknown placeholder {topic.٣} (use {topic}, {topic.N}, {group})",
    ]

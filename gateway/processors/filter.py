"""Keeps the FlowFiles that meet conditions on their JSON fields, topic or attributes.

A FlowFile that fails the conditions is dropped (filtered, not an error).
If any condition names a field, the content must be JSON; content that is
not goes to the dead letters with the reason, and so does a field whose value
has the wrong type for its op (`temp: "hot"` tested with `gt 30`), so that bad
input is seen rather than silently dropped.

Keys
  type: filter
  all: [condition, ...]    every condition must hold
  any: [condition, ...]    at least one must hold
Give `all`, `any` or both (then both must hold).

A condition tests one subject:
  field: temp              a JSON field; `a.b` reaches into objects, a number
                           indexes an array (`values.0`)
  attribute: mqtt.qos      a FlowFile attribute (always text)
  topic: all               the whole topic; `topic: 1` is level 1 (0-based,
                           -1 is the last level); text
with an op and, for most ops, a value:
  eq, ne                   equal / not equal (1 equals 1.0; true does not equal 1)
  gt, ge, lt, le           compare with a number (or with text, alphabetically);
                           a text subject (attribute, topic) is read as a number:
                           text holding none goes to the dead letters, and so
                           does "nan" (NaN is neither greater nor less than
                           anything: it would fail gt and lt alike, unseen)
  in, not_in               value is a list: [a, b, 3]
  exists, missing          no value: the field, attribute or level is there or not
  contains                 text contains the value, an array holds it, or an
                           object has it as a key
  matches                  a regular expression (Python `re`, searched anywhere
                           in the text; anchor with ^ and $), checked on load
A condition may also be a group: `{any: [...]}` or `{all: [...]}`.

A condition on something missing is false, except `missing` and the negative
ops `ne` and `not_in`, which hold. Against a text subject the value is
compared as text (`value: 1` matches attribute "1"). A value of NaN (`.nan`) is
refused on load: no subject would ever equal it, nor be greater or less.

Example
  routes:
    alarms:
      match: "plant/+/telemetry"
      processors:
        - {type: json}
        - type: filter
          all:
            - {field: temp, op: gt, value: 30}
            - {topic: 1, op: in, value: [plc1, plc2]}
            - any:
                - {attribute: mqtt.retain, op: eq, value: "0"}
                - {field: alarm, op: exists}
      sinks: [warehouse]
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

from gateway.config.schema import Doc
from gateway.core.component import Context, Processor
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.processors.json import (
    MISSING,
    check_path,
    decode,
    kind,
    level_number,
    lookup,
    shown,
    split_path,
)

Op = Literal[
    "eq",
    "ne",
    "gt",
    "ge",
    "lt",
    "le",
    "in",
    "not_in",
    "exists",
    "missing",
    "contains",
    "matches",
]
OPS: tuple[str, ...] = Op.__args__  # type: ignore[attr-defined]
_NO_VALUE = ("exists", "missing")
_ORDER = ("gt", "ge", "lt", "le")


class _Unset:
    def __repr__(self) -> str:
        return "(not set)"


UNSET: Any = _Unset()
"""The default of `value`, told apart from `value: null` (which tests for JSON null)."""


@dataclasses.dataclass(frozen=True)
class Condition:
    """One test on a field, attribute or topic, or a group of conditions."""

    field: Annotated[
        str | None, Doc("Test a JSON field; `a.b` reaches into objects, a number indexes an array.")
    ] = None
    attribute: Annotated[str | None, Doc("Test a FlowFile attribute (always text).")] = None
    topic: Annotated[
        str | int | None,
        Doc(
            "Test the topic: `all` for the whole topic, or a level number (0 is the"
            " first, -1 the last)."
        ),
    ] = None
    op: Annotated[
        Op | None,
        Doc(
            "eq, ne, gt, ge, lt, le, in, not_in, exists, missing, contains, matches (a"
            " regular expression)."
        ),
    ] = None
    value: Annotated[
        Any,
        Doc("What the op compares with (a list for in and not_in; none for exists and missing)."),
    ] = UNSET
    all: Annotated[list[Condition], Doc("A group: every condition must hold.")] = dataclasses.field(
        default_factory=list
    )
    any: Annotated[list[Condition], Doc("A group: at least one condition must hold.")] = (
        dataclasses.field(default_factory=list)
    )

    def check(self) -> Iterator[tuple[str, str]]:
        subjects = [k for k in ("field", "attribute", "topic") if getattr(self, k) is not None]
        if self.all or self.any:
            if subjects or self.op is not None or self.value is not UNSET:
                yield "", "a group (all/any) takes no field, attribute, topic, op or value"
            return
        if not subjects:
            yield "", "a condition needs one of field, attribute, topic (or a group: all, any)"
            return
        if len(subjects) > 1:
            yield "", f"give only one of field, attribute, topic (got {', '.join(subjects)})"
            return
        if self.field is not None:
            problem = check_path(self.field)
            if problem:
                yield "field", problem
        if self.attribute == "":
            yield "attribute", "the attribute name must not be empty"
        if self.topic is not None and _topic_level(self.topic) is None and self.topic != "all":
            yield "topic", f"{self.topic!r} must be 'all' or a level number (0 is the first)"
        if self.op is None:
            yield "op", f"required key is missing (one of {', '.join(OPS)})"
            return
        yield from self._check_value()

    def _check_value(self) -> Iterator[tuple[str, str]]:
        op, value = self.op, self.value
        if _has_nan(value):
            yield (
                "value",
                "NaN (.nan) equals nothing and is neither greater nor less than anything:"
                " give a number",
            )
            return
        if op in _NO_VALUE:
            if value is not UNSET:
                yield "value", f"op {op} takes no value"
            return
        if value is UNSET:
            yield "value", f"op {op} needs a value"
        elif op in ("in", "not_in"):
            if not isinstance(value, list | tuple):
                yield "value", f"op {op} needs a list of values, e.g. [a, b]"
            elif not all(_scalar(v) for v in value):
                yield "value", f"op {op} takes text, numbers, true/false and null in its list"
        elif op in _ORDER:
            if not (_number(value) or isinstance(value, str)):
                yield "value", f"op {op} needs a number (or text), got {value!r}"
        elif op == "matches":
            if not isinstance(value, str):
                yield "value", f"op matches needs a regular expression, got {value!r}"
            else:
                try:
                    re.compile(value)
                except (re.error, OverflowError, RecursionError) as err:
                    # x{99999999999} is an OverflowError, 500 nested groups a RecursionError
                    why = "groups nested too deeply" if isinstance(err, RecursionError) else err
                    yield "value", f"{value!r} is not a valid regular expression: {why}"
        elif not _scalar(value) and (self.field is None or op == "contains"):
            yield "value", f"op {op} needs text, a number, true/false or null here"


def _has_nan(value: Any) -> bool:
    """True when a value holds NaN, anywhere inside it (eq {a: .nan} would never hold)."""
    if type(value) is float:
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_nan(v) for v in value)
    return False


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float)


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def _topic_level(topic: str | int) -> int | None:
    if isinstance(topic, int):
        return topic
    return level_number(topic)


def _text(value: Any) -> str:
    """A config value as the text an attribute or topic level would hold."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_equal(a: Any, b: Any) -> bool:
    """Equal as JSON values: Python's == says [1] == [true] and {"a": 1} == {"a": true}."""
    if (type(a) is bool) != (type(b) is bool):
        return False
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_json_equal(v, b[k]) for k, v in a.items())
        )
    return bool(a == b)


def _key(value: Any) -> tuple[bool, Any]:
    # Python says True == 1; JSON does not. The flag keeps booleans apart.
    return (type(value) is bool, value)


@dataclasses.dataclass(frozen=True)
class FilterProcessorConfig:
    """Keys of the `filter` processor."""

    type: Annotated[str, Doc("The kind of processor.")]
    all: Annotated[
        list[Condition],
        Doc("Conditions that must all hold.", example=[{"field": "temp", "op": "gt", "value": 30}]),
    ] = dataclasses.field(default_factory=list)
    any: Annotated[
        list[Condition],
        Doc("Conditions of which at least one must hold (with `all`, both must hold)."),
    ] = dataclasses.field(default_factory=list)

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.all and not self.any:
            yield "", "give conditions under all: [...] or any: [...]"


Test = Callable[[FlowFile, Any], bool]


Get = Callable[[FlowFile, Any], Any]


def _compile(cond: Condition) -> tuple[Test, bool]:
    """A test for one condition, and whether it reads the JSON content."""
    if cond.all or cond.any:
        return _compile_group(cond.all, cond.any)
    assert cond.op is not None  # refused by Condition.check
    subject, get, text = _subject(cond)
    return _compile_op(cond.op, cond.value, subject, get, text), cond.field is not None


def _subject(cond: Condition) -> tuple[str, Get, bool]:
    """What a condition tests: its name for messages, its getter, whether it is text."""
    if cond.field is not None:
        parts = split_path(cond.field)

        def get_field(ff: FlowFile, obj: Any) -> Any:
            return lookup(obj, parts)

        return f"field {cond.field!r}", get_field, False
    if cond.attribute is not None:
        key = cond.attribute

        def get_attribute(ff: FlowFile, obj: Any) -> Any:
            return ff.attributes.get(key, MISSING)

        return f"attribute {key!r}", get_attribute, True
    level = _topic_level(cond.topic) if cond.topic is not None else None
    if level is None:

        def get_topic(ff: FlowFile, obj: Any) -> Any:
            return ff.topic

        return "the topic", get_topic, True
    n = level

    def get_level(ff: FlowFile, obj: Any) -> Any:
        levels = ff.topic.split("/")
        return levels[n] if -len(levels) <= n < len(levels) else MISSING

    return f"topic level {n}", get_level, True


def _compile_group(
    all_of: tuple[Condition, ...] | list[Condition], any_of: tuple[Condition, ...] | list[Condition]
) -> tuple[Test, bool]:
    compiled_all = [_compile(c) for c in all_of]
    compiled_any = [_compile(c) for c in any_of]
    reads = any(r for _, r in compiled_all) or any(r for _, r in compiled_any)
    tests_all = [t for t, _ in compiled_all]
    tests_any = [t for t, _ in compiled_any]

    def test(ff: FlowFile, obj: Any) -> bool:
        for t in tests_all:
            if not t(ff, obj):
                return False
        if not tests_any:
            return True
        return any(t(ff, obj) for t in tests_any)

    return test, reads


def _compile_op(op: str, value: Any, subject: str, get: Get, text: bool) -> Test:
    """The test for one op on one subject; `text` subjects are attributes and topic levels."""

    def wrong(v: Any, need: str) -> PermanentError:
        return PermanentError(f"{subject} is {kind(v)} ({shown(v)}), op {op} needs {need}")

    if op == "exists":
        return lambda ff, obj: get(ff, obj) is not MISSING
    if op == "missing":
        return lambda ff, obj: get(ff, obj) is MISSING
    if op in ("eq", "ne"):
        negate = op == "ne"
        if text:
            want_text = _text(value)

            def equal(v: Any) -> bool:
                return bool(v == want_text)
        elif isinstance(value, list | dict):
            want_json = value

            def equal(v: Any) -> bool:
                return _json_equal(v, want_json)
        else:
            want, want_bool = value, type(value) is bool

            def equal(v: Any) -> bool:
                return bool(v == want) and (type(v) is bool) == want_bool

        def test_eq(ff: FlowFile, obj: Any) -> bool:
            v = get(ff, obj)
            if v is MISSING:
                return negate
            return equal(v) != negate

        return test_eq
    if op in ("in", "not_in"):
        negate = op == "not_in"
        if text:
            texts = frozenset(_text(v) for v in value)

            def member(v: Any) -> bool:
                return v in texts
        else:
            keys = frozenset(_key(v) for v in value)

            def member(v: Any) -> bool:
                return type(v) not in (dict, list) and _key(v) in keys

        def test_in(ff: FlowFile, obj: Any) -> bool:
            v = get(ff, obj)
            if v is MISSING:
                return negate
            return member(v) != negate

        return test_in
    if op in _ORDER:
        return _compile_order(op, value, get, text, wrong)
    if op == "contains":
        needle = _text(value) if text or isinstance(value, str) else None

        def test_contains(ff: FlowFile, obj: Any) -> bool:
            v = get(ff, obj)
            if v is MISSING:
                return False
            t = type(v)
            if t is str:
                return needle is not None and needle in v
            if t is list:
                return any(x == value and (type(x) is bool) == (type(value) is bool) for x in v)
            if t is dict:
                return needle is not None and needle in v
            raise wrong(v, "text, an array or an object")

        return test_contains
    if op == "matches":
        search = re.compile(value).search

        def test_matches(ff: FlowFile, obj: Any) -> bool:
            v = get(ff, obj)
            if v is MISSING:
                return False
            if type(v) is not str:
                raise wrong(v, "text")
            return search(v) is not None

        return test_matches
    raise AssertionError(f"unknown op {op}")  # refused by the Literal type on load


def _compile_order(
    op: str, value: Any, get: Get, text: bool, wrong: Callable[[Any, str], PermanentError]
) -> Test:
    compare: Callable[[Any, Any], bool] = {
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
    }[op]
    if isinstance(value, str):

        def test_text(ff: FlowFile, obj: Any) -> bool:
            v = get(ff, obj)
            if v is MISSING:
                return False
            if type(v) is not str:
                raise wrong(v, "text")
            return compare(v, value)

        return test_text
    if text:

        def test_number_text(ff: FlowFile, obj: Any) -> bool:
            v = get(ff, obj)
            if v is MISSING:
                return False
            try:
                number = float(v)
            except ValueError:
                raise wrong(v, "a number") from None
            if number != number:  # "nan": it would fail gt and lt alike, and be dropped unseen
                raise wrong(v, "a number (NaN is neither greater nor less than anything)")
            return compare(number, value)

        return test_number_text

    def test_number(ff: FlowFile, obj: Any) -> bool:
        v = get(ff, obj)
        if v is MISSING:
            return False
        if type(v) not in (int, float):
            raise wrong(v, "a number")
        return compare(v, value)

    return test_number


class FilterProcessor(Processor):
    """Passes a FlowFile on when its conditions hold, else drops it."""

    Config = FilterProcessorConfig

    def __init__(self, config: FilterProcessorConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: FilterProcessorConfig = config
        self._test, self._reads_content = _compile_group(config.all, config.any)

    def process(self, flowfile: FlowFile) -> list[FlowFile]:
        obj = decode(flowfile.content) if self._reads_content else None
        return [flowfile] if self._test(flowfile, obj) else []

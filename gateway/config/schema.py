"""Turns plain config data into frozen, typed config objects, collecting every problem.

Config classes are frozen dataclasses. Field types may be str, int, float,
bool, `Duration`, `Size`, `Literal[...]`, `list[T]`, `dict[str, T]`, `T | None`,
another config dataclass, or `Component("sink")` (a mapping whose `type` picks
the config class from the registry). `Annotated[T, Valid(fn)]` checks one value
on its own (`fn` returns a message or None), whatever else is wrong around it.

The schema also carries the docs: `Doc("...", example=...)` describes a key (the
reference pages in docs/reference/ and the JSON Schema are written from it, see
`gateway.config.reference`), and `Range(low, high, message)` bounds a number, a size
or a duration. A class may define `check()` yielding `(key, message)` pairs for rules
that span fields. The bounds, each about its own key, run in any case; `check()` runs
once all the fields built, or, if the class sets `check_incomplete = True` (its check
copes with None for a field that failed), in any case, so that every problem is
reported in one pass.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import ipaddress
import keyword
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qs, urlsplit

from gateway.config.units import ascii_int, parse_duration, parse_size

Path = tuple[str | int, ...]
# What a config class's `check()` yields: the key below it that a problem is about
# ("match.0"; a Path where a name may hold a '.' itself) and the problem.
CheckProblem = tuple[str | Path, str]


class _Unit:
    def __init__(self, name: str) -> None:
        self.name = name


DURATION = _Unit("duration")
SIZE = _Unit("size")
Duration = Annotated[float, DURATION]
Size = Annotated[int, SIZE]


@dataclasses.dataclass(frozen=True)
class Component:
    """Marks a field holding a component config of one kind (source, processor, sink)."""

    kind: str


@dataclasses.dataclass(frozen=True)
class Valid:
    """Marks a value that must pass `test` (which returns a message, or None when fine)."""

    test: Callable[[Any], str | None]


_NO_EXAMPLE: Any = object()


@dataclasses.dataclass(frozen=True)
class Doc:
    """A key's description (a sentence or two, Markdown) and an example value as it is
    written in a config file; the examples of a component's keys make its sample config,
    so they must build together."""

    text: str
    example: Any = _NO_EXAMPLE

    @property
    def has_example(self) -> bool:
        return self.example is not _NO_EXAMPLE


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds on a number, a size (bytes) or a duration (seconds): `low <= value <= high`
    (`low < value` with `above=True`); either end may be open (None). `message` is the
    problem reported for a value outside, at its key."""

    low: float | None = None
    high: float | None = None
    message: str = ""
    above: bool = False

    def problem(self, value: float) -> str | None:
        too_low = self.low is not None and (value <= self.low if self.above else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            return self.message or f"must be between {self.low} and {self.high}"
        return None


# The bound of a timeout or a wait that must be some time, however short.
POSITIVE_DURATION = Range(0, above=True, message="must be more than 0s")


def marks(tp: Any) -> tuple[Any, ...]:
    """The marks of an `Annotated` type (nested ones flattened), else ()."""
    return tuple(get_args(tp)[1:]) if get_origin(tp) is Annotated else ()


class Problems:
    """Collected config problems, each with the key path it concerns."""

    def __init__(self) -> None:
        self.items: list[tuple[Path, str]] = []

    def add(self, path: Path, message: str) -> None:
        self.items.append((path, message))

    def __bool__(self) -> bool:
        return bool(self.items)


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    options = list(choices)
    # `format: CSV`: difflib finds nothing alike in 'csv', but the case is all that differs
    same = [c for c in options if c.casefold() == word.casefold()]
    close = same or difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


class WrittenFloat(float):
    """A number the config wrote with an exponent (`1e-3`, `1e6`; see config/load.py), or
    otherwise than Python writes it (`1.50`), which remembers its text: a text key given
    `1e5` unquoted (a password, an id) keeps "1e5", as YAML 1.1 read it, rather than
    "100000.0". `build` never lets it out."""

    text: str

    def __new__(cls, text: str, value: float | None = None) -> WrittenFloat:
        number = super().__new__(cls, text if value is None else value)
        number.text = text
        return number

    # As written, in messages and wherever the raw config is read as text (the secrets
    # to mask): "1e5", not "100000.0".
    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


class WrittenInt(int):
    """An integer the config wrote otherwise than Python writes it (`007`, `0x1F`, `1_000`,
    YAML 1.1's `12:30`; see config/load.py), which remembers its text: a gateway id written
    007 keeps "007", not "7", a password 0123 "0123", not the octal "83". `build` never
    lets it out."""

    text: str

    def __new__(cls, value: int, text: str) -> WrittenInt:
        number = super().__new__(cls, value)
        number.text = text
        return number

    def __getnewargs__(self) -> tuple[int, str]:  # type: ignore[override]
        # copy.deepcopy of a parsed config (config show, config diff) called
        # WrittenInt(value) and crashed: `id: 0123` gave a traceback
        return int(self), self.text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


_OCTAL = re.compile(r"^[-+]?0[0-7]*[1-7][0-7]*$")  # 010, not 01 (1 either way); no `_`


def _octal_problem(value: Any) -> str | None:
    """What is wrong with `value` if YAML 1.1 read it as an octal number (`0100`: 64), or
    None. `address: 0100` was register 64, `interval: 010` 8 s, where YAML 1.2 and every
    Modbus map mean 100 and 10 (0 and 01 to 07 are the same either way)."""
    if not isinstance(value, WrittenInt):
        return None
    digits = value.text.replace("_", "")  # YAML 1.1 takes 010_ as 010
    if len(digits.lstrip("+-")) < 3 or not _OCTAL.match(digits):
        return None
    sign = "-" if value < 0 else ""
    if len(digits) > 40:  # int() and str() refuse more than 4300 digits
        return f"YAML reads {value.text[:20]}... as an octal number: write it without the leading 0"
    return (
        f"YAML reads {value.text} as the octal number {int(value)}: write"
        f" {_without_leading_0(digits)} without the leading 0 (or {sign}0x{abs(int(value)):x})"
    )


# A leading 0 and an 8 or a 9 after it (08, 0900): no octal number, so text to YAML 1.1
_LEADING_0_TEXT = re.compile(r"[-+]?0[0-9_]*[89][0-9_]*")
# Which tags (their last part) a value of a type may be written as, unquoted
_PLAIN_TAGS = {int: ("int",), float: ("int", "float", "exponent-float"), bool: ("bool",)}


def _text_hint(tp: Any, text: str) -> str:
    """How to write `text`, read as text where `tp` (int, float, bool) is asked, so that it
    reads as one (" (a number: write 500 without quotes)"), or "".

    Only a text the loader's resolver would read otherwise if written plain says "without
    quotes" (it can only be text because it was quoted, a JSON string say): unquoted, `08`
    and `0900` are text to YAML 1.1 already, and are to be written without the leading 0.
    """
    from gateway.config.load import plain_tag  # load imports this module

    plain = text.strip()
    if tp in (int, float) and _LEADING_0_TEXT.fullmatch(plain):
        number = _without_leading_0(plain)
        return f" (YAML reads {plain} as text: write {number} without the leading 0)"
    if plain_tag(plain).rpartition(":")[2] not in _PLAIN_TAGS.get(tp, ()):
        return ""
    if tp is bool:
        written = "true" if plain.lower() in ("true", "yes", "on") else "false"
        return f" (true or false: write {written} without quotes)"
    if not any(c.isdigit() for c in plain):
        return ""  # .inf, .nan: numbers to YAML, but not finite
    if re.fullmatch(r"[-+]?0[0-9_]+", plain):
        plain = _without_leading_0(plain)  # "0100": written 0100, YAML's octal 64
    return f" (a number: write {plain} without quotes)"


def _without_leading_0(digits: str) -> str:
    """`-0_100` as `-100`; by its text, as int() refuses more than 4300 digits."""
    sign = "-" if digits.startswith("-") else ""
    return sign + (digits.lstrip("+-").replace("_", "").lstrip("0") or "0")


def _plain_numbers(value: Any) -> Any:
    """`value` with every WrittenFloat and WrittenInt inside made a float or an int."""
    if isinstance(value, WrittenFloat):
        return float(value)
    if isinstance(value, WrittenInt):
        return int(value)
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain_numbers(v) for v in value)
    return value


# `match: #`: YAML reads ' #' as the start of a comment, so the key has no value; the
# problem read "expected a list, got NoneType" (or "..., got None").
EMPTY_VALUE = (
    "the value is empty (in YAML ' #' starts a comment: quote a value that holds one, '#')"
)


def _takes_none(tp: Any) -> bool:
    """Whether a key of type `tp` may be written empty: an optional one, or a section or
    settings mapping (empty: its defaults)."""
    if any(isinstance(mark, Component) for mark in marks(tp)):
        return False  # a source, processor or sink: at least its `type`
    base = _base(tp)
    if get_origin(base) in (Union, types.UnionType):
        return type(None) in get_args(base)
    return base is Any or dataclasses.is_dataclass(base)


def _not_json(value: Any, path: Path, problems: Problems) -> None:
    """Report each part of `value` that has no JSON form: YAML's dates and times
    (`set: {since: 2024-01-01}` dead-lettered every FlowFile, "Object of type date is not
    JSON serializable"; a filter's `value: 2024-01-01` equalled no field), `!!binary`,
    `!!set`."""
    if isinstance(value, dict):
        for k, v in value.items():
            _not_json(v, (*path, str(k)), problems)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _not_json(v, (*path, i), problems)
    elif isinstance(value, datetime.date):
        problems.add(
            path,
            f"YAML reads {value.isoformat()} unquoted as a date or time, which JSON has not:"
            " write it in quotes",
        )
    elif isinstance(value, WrittenInt | WrittenFloat) and ":" in value.text:
        # `set: {shift: 12:30}` set 750, and a filter's `value: 12:30` compared 750
        problems.add(
            path,
            f"YAML reads {value.text} unquoted as the number"
            f" {int(value) if isinstance(value, int) else float(value)} in base 60:"
            f" write it in quotes, '{value.text}'",
        )
    elif octal := _octal_problem(value):
        # `set: {zone: 0100}` set 64, and `{topic: 1, op: eq, value: 007}` matched "7"
        problems.add(path, f"{octal}, or in quotes for text, '{value}'")
    elif not (value is None or isinstance(value, str | int | float)):
        kind = (
            "binary data (!!binary)" if isinstance(value, bytes) else f"a !!{type(value).__name__}"
        )
        problems.add(path, f"{kind} is not a JSON value")


def build(tp: Any, value: Any, path: Path, problems: Problems) -> Any:
    """Convert `value` to type `tp`; on a problem record it and return None."""
    if value is None and not _takes_none(tp):
        problems.add(path, EMPTY_VALUE)
        return None
    origin = get_origin(tp)
    if origin is Annotated:
        base, *marks = get_args(tp)
        for mark in marks:
            if isinstance(mark, _Unit):
                octal = _octal_problem(value)
                if octal:
                    problems.add(path, octal)
                    return None
                try:
                    return (parse_duration if mark is DURATION else parse_size)(value)
                except ValueError as err:
                    problems.add(path, str(err))
                    return None
            if isinstance(mark, Component):
                return build_component(mark.kind, value, path, problems)
        result = build(base, value, path, problems)
        for mark in marks:
            if isinstance(mark, Valid) and result is not None:
                message = mark.test(result)
                if message:
                    problems.add(path, message)
                    return None
        return result
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:
            return build(others[0], value, path, problems)
        for candidate in others:
            trial = Problems()
            result = build(candidate, value, path, trial)
            if not trial:
                return result
        problems.add(path, f"expected one of {', '.join(_type_name(a) for a in others)}")
        return None
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return choices[choices.index(value)]  # the choice itself: 1, not a 1e0 as written
        if isinstance(value, str) and any(str(c) == value for c in choices):
            # qos: "1" read "(did you mean '1'?)": say what differs
            hint = f" (a number: write {value} without quotes)"
        else:
            hint = did_you_mean(str(value), [str(c) for c in choices])
        allowed = ", ".join(repr(c) for c in choices)
        problems.add(path, f"{value!r} is not one of {allowed}{hint}")
        return None
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str | dict) or not isinstance(value, list | tuple):
            if _base(item_tp) is str and isinstance(value, str):
                # One string stands for a list of it; a problem with it is at this key.
                return (build(item_tp, value, path, problems),)
            problems.add(path, f"expected a list, got {type(value).__name__}")
            return None
        return tuple(build(item_tp, v, (*path, i), problems) for i, v in enumerate(value))
    if origin is dict:
        _, item_tp = get_args(tp)
        if not isinstance(value, dict):
            problems.add(path, f"expected a mapping of names, got {type(value).__name__}")
            return None
        return {str(k): build(item_tp, v, (*path, str(k)), problems) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, problems)  # type: ignore[arg-type]
    if tp is Any:  # a value that goes into JSON (a filter's value, transform's set)
        before = len(problems.items)
        _not_json(value, path, problems)
        return _plain_numbers(value) if len(problems.items) == before else None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        octal = _octal_problem(value)
        if octal:  # `absolute: 010` was 8.0
            problems.add(path, octal)
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                # YAML's .nan and .inf: no band, scale or threshold means anything with them.
                problems.add(path, f"{value!r} is not a finite number")
                return None
            return float(value)
    elif tp is int:
        octal = _octal_problem(value)
        if octal:
            problems.add(path, octal)
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)  # not a WrittenInt
        if isinstance(value, WrittenFloat) and value.is_integer() and abs(value) <= 2**53:
            return int(value)  # 1e4; past 2**53 a float holds no exact integer
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, WrittenFloat | WrittenInt):
            return value.text
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    hint = _text_hint(tp, value) if isinstance(value, str) else ""
    if hint:
        # `batch_max: "500"`: as `qos: "1"` says (Literal above), say what differs
        problems.add(path, f"expected {_type_name(tp)}, got {value!r}{hint}")
        return None
    if isinstance(value, bytes):
        # `!!binary`: its bytes were quoted ("got b'hello'"), a password's too
        problems.add(path, f"expected {_type_name(tp)}, got binary data (a !!binary value)")
        return None
    if tp is str and isinstance(value, bool):
        # `id: no`, `password: on`: YAML 1.1 reads yes, no, on, off as true or false
        problems.add(
            path,
            f"expected a string, got {str(value).lower()} (YAML reads yes, no, on, off, true"
            " and false unquoted as true or false: write the text in quotes)",
        )
        return None
    problems.add(path, f"expected {_type_name(tp)}, got {value!r}")
    return None


def _base(tp: Any) -> Any:
    return get_args(tp)[0] if get_origin(tp) is Annotated else tp


def key_of(name: str) -> str:
    """The config key of a field: its name, but `for` for a field named `for_` (a Python
    keyword cannot be a field's name)."""
    if name.endswith("_") and keyword.iskeyword(name[:-1]):
        return name[:-1]
    return name


@functools.cache
def _fields(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A config class's type hints and init fields, by config key (see `key_of`), worked
    out once per class: a Modbus register map of thousands of entries builds the same
    class thousands of times."""
    hints = typing.get_type_hints(cls, include_extras=True)
    init = [f for f in dataclasses.fields(cls) if f.init]
    return {key_of(f.name): hints[f.name] for f in init}, {key_of(f.name): f for f in init}


def fields(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A config class's type hints (with their marks) and its keys, in order."""
    return _fields(cls)


@functools.cache
def _bounds(cls: type) -> tuple[tuple[str, Range], ...]:
    hints, fields = _fields(cls)
    return tuple(
        (name, mark) for name in fields for mark in marks(hints[name]) if isinstance(mark, Range)
    )


def _index_or_name(part: str) -> int | str:
    """A part of a dotted key: a list's index (a number of ASCII digits, written as
    check() writes one), else a name: a field path's `00` or `0`*5000 is said as written."""
    index = ascii_int(part, 18)
    return index if index is not None and str(index) == part else part


def build_dataclass(cls: type, value: Any, path: Path, problems: Problems) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return None
    hints, fields = _fields(cls)
    hints_for: dict[str, str] = getattr(cls, "key_hints", {})
    for key in value:
        if key not in fields:
            hint = hints_for.get(str(key))
            said = f" ({hint})" if hint else did_you_mean(str(key), fields)
            problems.add((*path, str(key)), f"unknown key{said}")
    before = len(problems.items)
    kwargs: dict[str, Any] = {}
    complete = True
    for name, field in fields.items():
        if name in value:
            kwargs[field.name] = build(hints[name], value[name], (*path, name), problems)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.add((*path, name), "required key is missing")
            complete = False
    if len(problems.items) > before:
        if complete and getattr(cls, "check_incomplete", False):
            _run_check(cls(**kwargs), path, problems)  # None stands for each field that failed
        else:
            # A bound concerns its own key alone: `page_size: 0` is reported with the
            # source's `missed: catchup`, not only once that is fixed.
            for name, message in _bound_problems(cls, kwargs):
                problems.add((*path, name), message)
        return None
    obj = cls(**kwargs)
    _run_check(obj, path, problems)
    return obj


def _bound_problems(cls: type, values: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for each bounded key whose value in `values` (by field name; None
    or absent: failed, or the default) is out of its Range."""
    _, fields = _fields(cls)
    found = []
    for name, bound in _bounds(cls):
        value = values.get(fields[name].name)
        message = None if value is None else bound.problem(value)
        if message:
            found.append((name, message))
    return found


def _run_check(obj: Any, path: Path, problems: Problems) -> None:
    """Report what the bounds and then `check()` find. A bound's problem goes before
    the first of check()'s that concerns a later key, so that, as check() names the keys
    about in their order, the problems read in the order of the keys."""
    cls: type = obj.__class__
    _, fields = _fields(cls)
    order = {name: i for i, name in enumerate(fields)}
    values = {f.name: getattr(obj, f.name) for f in fields.values()}
    bounded = [(order[name], name, message) for name, message in _bound_problems(cls, values)]
    check = getattr(obj, "check", None)
    for key, message in check() if check is not None else ():
        # a dotted key ("match.0") names a place below this object; a tuple names one
        # through a name that may hold a '.' itself (`("sinks", "x.y")`, refused for it)
        if isinstance(key, tuple):
            parts: Path = key
        else:
            # (ASCII digits only: str.isdigit takes `²`, which int() refuses, and a field
            # path `²..x` made check-config a traceback)
            parts = tuple(_index_or_name(k) for k in key.split(".")) if key else ()
        at = order.get(str(parts[0]) if parts else "", -1)
        while bounded and bounded[0][0] < at:
            _, name, text = bounded.pop(0)
            problems.add((*path, name), text)
        problems.add((*path, *parts), message)
    for _, name, text in bounded:
        problems.add((*path, name), text)


def build_component(kind: str, value: Any, path: Path, problems: Problems) -> Any:
    from gateway import registry

    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping with a 'type', got {value!r}")
        return None
    type_name = value.get("type")
    # registry.types() reads the installed packages' metadata for plugins (importlib.metadata,
    # 0.2 MB of RSS): only when a type is missing or unknown
    if type_name is None:
        known = registry.types(kind)
        problems.add((*path, "type"), f"required key is missing (one of {', '.join(known)})")
        return None
    entry = registry.find(kind, str(type_name))
    if entry is None:
        hint = did_you_mean(str(type_name), registry.types(kind))
        problems.add((*path, "type"), f"unknown {kind} type {type_name!r}{hint}")
        return None
    return build_dataclass(entry.config, value, path, problems)


def check_identifier(name: str) -> Iterator[str]:
    """Yield a message if `name` is not a plain SQL identifier."""
    if (
        not name
        or not (name[0].isalpha() or name[0] == "_")
        or not all(c.isalnum() or c == "_" for c in name)
        or not name.isascii()
        or len(name) > 63
    ):
        yield (
            f"{name!r} is not a valid SQL identifier"
            " (letters, digits and _, not starting with a digit, at most 63)"
        )


def port_number(text: str) -> int | None:
    """The port from 1 to 65535 that `text` writes in at most 5 ASCII digits, or None. (The
    drivers and the broker read it again with int(), which refuses text of over 4300 digits,
    leading zeros included: `127.0.0.1:` and 5000 zeros then 1883 is refused here.)"""
    port = ascii_int(text, 5) if len(text) <= 5 else None
    return port if port is not None and 1 <= port <= 65535 else None


def check_location(hostport: str) -> str | None:
    """Why `host[:port]` from a DSN is not usable, or None. An IPv6 address is written
    in brackets, `[::1]:5432`; a port is a number from 1 to 65535.

    The message never quotes the text: a password holding '#', '/', '?' or ':' ends the
    user part early and its remainder then reads as a host or a port."""
    port: str | None = None
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket:
            return "an IPv6 address needs its closing ']', e.g. [::1]:5432"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "the host in brackets is not an IPv6 address"
        if rest:
            if not rest.startswith(":"):
                return "only :port may follow the ']' of an IPv6 address"
            port = rest[1:]
    else:
        host, colon, after = hostport.rpartition(":")
        if colon:
            if ":" in host:
                return "write an IPv6 address in brackets, e.g. [::1]:5432"
            port = after
    if port is not None and port_number(port) is None:
        return "the port is not a number from 1 to 65535"
    return None


_ENCODE_HINT = "; a password holding #, /, ? or @ must be percent-encoded (%23, %2F, %3F, %40)"
_AT_AFTER_HOST = "has an '@' after its host" + _ENCODE_HINT + ", as must an '@' in the database"


def _split_authority(url: str) -> tuple[str, str]:
    """The authority of `url` (scheme://AUTHORITY/...) and what follows it. As in any URL
    (and for asyncpg and redis-py) the authority ends at the first '/', '?' or '#', and the
    user part at the first '@' in it."""
    rest = url.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return authority, rest[len(authority) :]


def _user_part_ended_early(authority: str, after: str) -> bool:
    """Whether an '@' in `after` (the /path?query#fragment that follows `authority`) shows
    a user part that a password's '/', '?' or '#' ended before its '@', so that the rest
    of the password was read as the host (`gw:p@ss/x@db`: host 'ss'; `gw:12?x@db`: host
    'gw', port 12). An '@' in the path or fragment is one. One in the query is an option's
    value (`?application_name=gw@site1`, `?user=a@b`) unless no user part took an '@' and
    it stands in an option's name (`?x@db/t`): no option's name holds an '@'."""
    head, _, fragment = after.partition("#")
    path, _, query = head.partition("?")
    if "@" in path or "@" in fragment:
        return True
    if "@" in authority:
        return False
    return any("@" in item.partition("=")[0] for item in query.split("&"))


def url_location_problem(url: str, hosts: bool = False) -> str | None:
    """Why the host and port of `url` (scheme://[user[:password]@]host[:port]/...; with
    `hosts`, several host[:port] separated by commas) are not usable, or None; never
    quoting the URL: a password holding '/', '?' or '#' ends the user part early (in
    asyncpg and redis-py too) and its remainder then reads as the host or port."""
    authority, after = _split_authority(url)
    if authority.count("@") > 1:
        return "has more than one '@'" + _ENCODE_HINT
    ended_early = _user_part_ended_early(authority, after)
    location = authority.rpartition("@")[2]
    for one in location.split(",") if hosts else (location,):
        problem = check_location(one)
        if problem:
            return problem + _ENCODE_HINT if ended_early else problem
    return _AT_AFTER_HOST if ended_early else None


def redis_url_problem(url: str) -> str | None:
    """Why `url` is no redis:// or rediss:// URL redis-py can connect with, or None: its
    host and port as `url_location_problem`, and a database number after the '/'."""
    if not url.startswith(("redis://", "rediss://")):
        return f"{mask_password(url)!r} must be a redis:// or rediss:// URL"
    problem = url_location_problem(url)
    if problem:
        return problem
    rest = url.partition("://")[2]
    path = re.split(r"[?#]", rest, maxsplit=1)[0].rpartition("@")[2].partition("/")[2]
    if path and not (path.isascii() and path.isdigit()):
        return "the database after the host's '/' is not a number (redis://host:6379/0)"
    return None


def safe_url(url: str) -> str:
    """`url` for messages, logs and the status page: its password written `***` and its
    query and fragment left out (a query may hold a token). A password holding '/', '?'
    or '#' ends the user part early for a URL parser; it is masked whole all the same:
    then the user part is a name (no '?', '#' or '@' in it), a ':' and the password, up
    to the first '@' after it (`gw:p/w@h/in?o=a@b`). An '@' after the host with no such
    name before it stands in the path, query or fragment (`h/in?t=x#a@b`)."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    authority, after = _split_authority("://" + rest)
    name, colon, _ = rest.partition(":")
    end = rest.find("@", len(name))
    if (
        _user_part_ended_early(authority, after)
        and colon
        and end > 0
        and not re.search(r"[?#@]", name)
    ):
        login, location = f"{name}:***@", rest[end + 1 :]
    else:
        user, at, location = authority.rpartition("@")
        login = f"{user.partition(':')[0]}:***@" if at else ""
        location += after
    location = re.split(r"[?#]", location, maxsplit=1)[0]
    return f"{head}{sep}{login}{location}"


def safe_redis_url(url: str) -> str:
    """`safe_url`, and the `?db=N` the query may hold: redis-py takes it over the path's
    number (read as it reads it), so without it a message could name the wrong database."""
    try:
        db = parse_qs(urlsplit(url).query).get("db")
    except ValueError:  # refused by the url's check
        db = None
    shown = safe_url(url)
    return f"{shown}?db={db[0]}" if db and db[0].isdigit() else shown


def url_syntax_problem(url: str) -> str | None:
    """Why `url` cannot be read or its port is no number from 1 to 65535, or None (a URL
    may leave the port out). Neither message quotes the URL; urllib's own error for the
    port is not passed on: it quotes the port's text, a piece of the password when one
    holds '/', '?' or '#'."""
    try:
        parts = urlsplit(url)
    except ValueError as err:  # "Invalid IPv6 URL": a '[' without its ']'
        if "NFKC" in str(err):  # its message quotes the host and user part, password too
            return (
                "is not a valid URL: its host or user part holds a character that NFKC"
                " normalization turns into /, ?, #, @ or :"
            )
        return f"is not a valid URL: {err}"
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        port = 0
    if port is not None and not 0 < port < 65536:
        return "the port must be a number from 1 to 65535"
    return None


def post_url_problem(url: str) -> str | None:
    """Why aiohttp's URL parser (yarl) cannot read `url`, or None: it refuses more than
    urlsplit does (`http://[::1]x/in`, a '\\' in the host), and a POST to such a URL never
    goes. Imports yarl (about 1 MB; not aiohttp, 12 MB), so only for a URL to be POSTed to.
    The message leaves the user part out, which yarl's may quote."""
    import yarl

    try:
        yarl.URL(url)
    except ValueError as err:
        text = str(err).rstrip(".")
        user = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0].rpartition("@")[0]
        if user:
            text = text.replace(user, "***")
        return f"is not a valid URL: {text}"
    return None


def mask_password(url: str) -> str:
    """`url` with the password of its user part written `***`, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, location = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{location}"

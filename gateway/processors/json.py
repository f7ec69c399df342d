"""Checks that content is JSON (optionally an object with required fields) and passes it on.

A FlowFile whose content is not valid UTF-8 JSON goes to the dead letters with
the exact reason, for example `content is not valid JSON: Expecting value at
line 1 column 1`. A valid one passes through unchanged (same id, same bytes),
so put `json` first in a route to keep bad input away from the processors and
sinks behind it.

Strict JSON is required: `NaN`, `Infinity` and `-Infinity` are refused, and so
is a number too large to be finite (`1e999`), since no database column and no
other JSON parser takes them: such content goes to the dead letters with the
reason, e.g. `content is not valid JSON: the number 1e999 is too large (infinity
is not allowed)`.

Keys
  type: json
  require_object: true     the top level must be an object `{...}` (default true);
                           false also passes arrays, strings, numbers, true/false, null
  required: [temp, meta.site]
                           fields that must be present (default none); a dotted
                           path `a.b` reaches into nested objects and a number
                           indexes an array (`values.0`); needs require_object

Example
  routes:
    telemetry:
      match: "sensors/+/telemetry"
      processors:
        - {type: json, required: [temp, device.id]}
      sinks: [warehouse]

The helpers here (`decode`, `decode_object`, `encode`, `split_path`,
`lookup`) are shared by the other JSON processors so that every one reports
bad content with the same words.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, NoReturn

from gateway.config.schema import Doc
from gateway.config.units import ascii_int
from gateway.core.component import Context, Processor
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile

MISSING: Any = object()
FLOAT_MAX = int(sys.float_info.max)
"""The largest integer a JSON number may hold for the processors that compute with it
(JSON integers are exact and unbounded; a double is not)."""
"""What `lookup` returns for a path that is not there (None is JSON null)."""


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed in JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # a literal that overflows: 1e999, or a 400-digit number
        shown = text if len(text) <= 24 else f"{text[:20]}..."
        raise ValueError(f"the number {shown} is too large (infinity is not allowed)")
    return value


# Module-level codecs: json.loads/json.dumps with any keyword build a new
# decoder/encoder on every call; these are built once and stay C-accelerated.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

_KINDS = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}


def kind(value: Any) -> str:
    """The JSON name of a value's type, with its article: 'an object', 'a number' ..."""
    return _KINDS.get(type(value), type(value).__name__)


def shown(value: Any) -> str:
    """A value for a message, as JSON writes it (`true`, `null`, `{"a":1}`), cut at 40
    characters."""
    try:
        text = _ENCODER.encode(value)
    except (ValueError, TypeError):
        text = repr(value)
    if not text.isascii():  # a lone surrogate (`"\ud800"`) must not reach the log or store
        text = text.encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= 40 else text[:37] + "..."


def decode(content: bytes) -> Any:
    """Parse UTF-8 JSON content, or raise PermanentError saying exactly what is wrong."""
    try:
        return _DECODER.decode(content.decode())
    except UnicodeDecodeError as err:
        raise PermanentError(
            f"content is not valid UTF-8: {err.reason} at byte {err.start}"
        ) from err
    except json.JSONDecodeError as err:
        if not content.strip():
            raise PermanentError("content is empty, expected JSON") from err
        if content.startswith(b"\xef\xbb\xbf"):
            raise PermanentError(
                "content is not valid JSON: it starts with a byte order mark (U+FEFF)"
            ) from err
        raise PermanentError(
            f"content is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from err
    except ValueError as err:  # NaN/Infinity, 1e999, or an integer longer than 4300 digits
        raise PermanentError(f"content is not valid JSON: {err}") from err
    except RecursionError as err:
        raise PermanentError("content is not valid JSON: nested too deeply") from err


def decode_object(content: bytes, needed_by: str) -> dict[str, Any]:
    """Parse content that must be a JSON object; `needed_by` names who needs it."""
    value = decode(content)
    if type(value) is not dict:
        raise PermanentError(f"content is {kind(value)}, {needed_by} needs a JSON object")
    return value


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON; PermanentError for what JSON cannot hold (NaN, infinity)."""
    try:
        return _ENCODER.encode(value).encode()
    except ValueError as err:
        raise PermanentError(f"result is not valid JSON: {err}") from err
    except RecursionError as err:  # a transform that set a deep value deeper still
        raise PermanentError("result is not valid JSON: nested too deeply") from err


def split_path(path: str) -> tuple[str, ...]:
    """A dotted field path as its parts: 'a.b' -> ('a', 'b')."""
    return tuple(path.split("."))


def check_path(path: str) -> str | None:
    """Why `path` is not a usable field path, or None."""
    if not path or "" in path.split("."):
        return f"{path!r} is not a field path (names joined by '.', e.g. 'meta.site')"
    return None


# A topic level number of more digits than this names a level no topic has (an MQTT topic
# has at most 32768): it is read as this many, int() refusing text of over 4300 digits.
LEVEL_DIGITS = 9
LEVEL_PAST = 1_000_000_000  # 10**LEVEL_DIGITS
# An array index of more digits than this names an item no array has.
INDEX_DIGITS = 18
# The indexes most paths name, read once: a step into an array is taken for every reading,
# and a dict's get costs less than reading the digits again each time (ascii_int reads
# the others: `01`, `256`, `0`*5000).
_INDEXES = {str(i): i for i in range(256)}


def level_number(text: str) -> int | None:
    """The topic level that `text` names (`0` the first, `-1` the last), or None when it
    is no level number (ASCII digits only). `topic.<5000 digits>` was a traceback from
    check-config; so, its zeros counted by int(), was `topic.<5000 zeros>`."""
    if not re.fullmatch(r"-?[0-9]+", text):
        return None
    level = ascii_int(text.lstrip("-"), LEVEL_DIGITS)
    if level is None:
        level = LEVEL_PAST
    return -level if text.startswith("-") else level


def array_index(part: str, length: int) -> int | None:
    """The index of an array of `length` items that the path part `part` names, or None.
    Only ASCII digits index (str.isdigit takes `²`, which int() refuses: a path `a.²` on
    an array was an internal error at every FlowFile), and so many of them as int() takes
    (it refuses text of over 4300 digits, leading zeros included)."""
    index = _INDEXES.get(part)
    if index is None:
        index = ascii_int(part, INDEX_DIGITS)
        if index is None:
            return None
    return index if index < length else None


def lookup(value: Any, parts: tuple[str, ...]) -> Any:
    """The value at a split path, or MISSING. Digits index arrays."""
    for part in parts:
        if type(value) is dict:
            value = value.get(part, MISSING)
            if value is MISSING:
                return MISSING
        elif type(value) is list:
            # (array_index inlined: this runs for every reading)
            index = _INDEXES.get(part)
            if index is None:
                index = ascii_int(part, INDEX_DIGITS)
                if index is None:
                    return MISSING
            if index >= len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


@dataclass(frozen=True)
class JsonProcessorConfig:
    """Keys of the `json` processor."""

    type: Annotated[str, Doc("The kind of processor.")]
    require_object: Annotated[
        bool,
        Doc(
            "The top level must be an object `{...}`; `false` also passes arrays,"
            " strings, numbers, true/false and null."
        ),
    ] = True
    required: Annotated[
        list[str],
        Doc(
            "Fields that must be present; a dotted path `a.b` reaches into nested objects"
            " and a number indexes an array (`values.0`). Needs require_object.",
            example=["temp"],
        ),
    ] = field(default_factory=list)

    def check(self) -> Iterator[tuple[str, str]]:
        for i, path in enumerate(self.required):
            problem = check_path(path)
            if problem:
                yield f"required.{i}", problem
        if self.required and not self.require_object:
            yield "required", "required fields need require_object: true"


class JsonProcessor(Processor):
    """Passes FlowFiles whose content is JSON; dead-letters the rest with the reason."""

    Config = JsonProcessorConfig

    def __init__(self, config: JsonProcessorConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: JsonProcessorConfig = config
        self._required = [(path, split_path(path)) for path in config.required]
        self._object = config.require_object

    def process(self, flowfile: FlowFile) -> list[FlowFile]:
        value = decode(flowfile.content)
        if self._object and type(value) is not dict:
            raise PermanentError(f"content is {kind(value)}, expected a JSON object")
        if self._required:
            missing = [path for path, parts in self._required if lookup(value, parts) is MISSING]
            if missing:
                names = ", ".join(repr(p) for p in missing)
                raise PermanentError(
                    f"required field{'s' if len(missing) > 1 else ''} {names} "
                    f"{'are' if len(missing) > 1 else 'is'} missing"
                )
        return [flowfile]

"""Aggregates JSON fields over time or count windows, one FlowFile per window and group.

Kinds
  tumbling   fixed, back-to-back time windows of `size` (1m: 12:00-12:01, 12:01-12:02 ...)
  hopping    time windows of `size` starting every `every` (size 5m every 1m: each
             reading is in 5 windows; at most 1000)
  session    a window per burst of activity: it ends `gap` after the group's last
             reading (readings closer than `gap` share a window)
  count      every `count` readings of a group; with `slide: M`, every M readings over
             the last `count` (sliding)

Time
  time: processing   the gateway's clock when the reading arrives (the default)
  time: event        the reading's own time, from `time_field` (a JSON field) or
                     `time_attribute`: a number of seconds, milliseconds, micro- or
                     nanoseconds since the epoch (told apart by size) or ISO 8601 text
                     (UTC when no offset is given), within the years 1 to 9999,
                     and so must its windows be (in a 1d window, a reading at
                     9999-12-31T12:00, which would end in the year 10000, is
                     dead-lettered)
With event time, the watermark is the newest event time seen minus
`allowed_lateness`; a window closes once the watermark passes its end. A reading
whose windows have all closed is late: counted and dropped, or dead-lettered with
`late: dead_letter`. When no reading has raised the watermark for `idle`, it moves
on from the newest event time at the pace of the gateway's clock (not to the clock's
time: readings stamped by a device's clock, or from the past, are not closed by the
gateway's), so that windows close even when data stops.
Processing-time windows close on the gateway's clock (checked every second): no
reading is late, and allowed_lateness, late and idle are refused without time: event.
A clock seen going back while the gateway runs (a board without RTC that ran ahead,
corrected by NTP) closes early ("early": true) the windows that start more than their
own length (a session: its gap) after its new time, rather than keep them open until it
comes back to them. A restart on a clock behind the state's closes nothing early: at
boot the clock may not be set yet, and the windows wait for it.
Windows close in order of their end (then start, then group). Count windows close
on their count only (event time orders first, last and rate; allowed_lateness, late
and idle are refused).

Groups
  group_by: topic          one set of windows per topic
  group_by: topic.N        per topic level N (0 is the first, -1 the last)
  group_by: field.PATH     per value of a JSON field
  (not set)                one set of windows for everything

Aggregates, per field: `aggregates: {temp: [avg, min, max]}`. A field's value is a
JSON number or text holding one (`"21.5"`: Redis stream fields and DECIMAL columns
arrive as text); a missing field or null is left out; anything else (an integer
past a double's ±1.8e308 too) dead-letters the reading. An aggregated field may not
be named group, start, end, count or early (the window's own keys; rename it first).
A field inside an object keeps its place in the output (`meta.temp`:
{"meta": {"temp": {"avg": ...}}}), so a later processor reaches meta.temp.avg; a field
may then not also hold another aggregated field (not both `meta` and `meta.temp`).
  count sum avg min max first last stddev rate    constant memory per window
  median percentile(P)                             a bounded buffer per window:
       exact up to `max_values` readings, then a deterministic sample of that many
`stddev` is the population standard deviation (Welford's method); `rate` is
(last - first) per second between the first and last reading's times (null with
fewer than two times); `first` and `last` are by time (ties: by arrival).

Output: one FlowFile per closed window and group, JSON:
  {"group": "plant/1", "start": "2024-05-01T12:00:00.000Z", "end": "...",
   "count": 60, "temp": {"avg": 21.5, "min": 20.1, "max": 23.0, "p95": 22.8}}
An aggregate's key is its name; percentile(P)'s is pP with a `.` in P written `_`
(percentile(95): p95, percentile(99.9): p99_9), so that a later processor reaches it
with a field path (temp.p99_9).
A field with no number in a window has null aggregates (its count, when asked for, is
0); an aggregate past a double's range (a sum of 1e308s) is null too, as JSON has no
infinity (avg is then the running mean). A window closed early because the state
budget (`max_state`) was full, or the clock set back far behind it (processing time),
has "early": true.
The topic is `topic`, a template with `{topic}` (the topic of the window's first
reading), `{topic.N}` and `{group}`; a reading that could not make a valid topic
with it (no level N, a group holding `+`) is dead-lettered as it arrives. Its lineage
holds the ids of its inputs (the first and last when there are more than 16) and the
attribute `window.inputs` their count. Its id is made from the window, its group and
the processor, so an output sent again after a restart is recognised by idempotent sinks
(a window closed early also from its first reading: the readings that come after it for
the same window make an output of their own, with an id of its own).

State: open windows live in the processor's state (one key per window and group),
written to the store with each batch, so a gateway killed mid-window continues it
after a restart (`edge-stream state show ROUTE.N`); a sliding count window keeps its
readings in chunks of 64 (keys ~c|N|GROUP), so a commit writes the readings it added,
not the whole window. The state also holds a
fingerprint of the keys that shape the windows (kind, size, every, gap, count, slide,
time, time_field, time_attribute, group_by, aggregates, max_values): a restart or a
reload that changed one of them drops the open windows made under the old config
(counted as `dropped`, one log line) instead of mixing them with the new ones.
Changing only topic, allowed_lateness, late, idle or max_state keeps them (an open
window whose first reading's topic cannot make the new topic, one without its level N,
goes out on `<that topic>/agg`, with a warning).

Example
  routes:
    minutes:
      match: "sensors/+/telemetry"
      processors:
        - type: window
          kind: tumbling
          size: 1m
          time: event
          time_field: ts
          allowed_lateness: 5s
          group_by: topic
          aggregates: {temp: [avg, min, max, count, "percentile(95)"]}
          topic: "{topic}/agg/1m"
      sinks: [warehouse]
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from gateway.config.schema import Doc, Duration, Range, Size
from gateway.core.component import Context, Processor
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.core.schedule import INTERVAL_MAX
from gateway.core.state import State
from gateway.core.topics import validate_topic
from gateway.processors.json import (
    FLOAT_MAX,
    MISSING,
    check_path,
    decode_object,
    encode,
    kind,
    level_number,
    lookup,
    shown,
)
from gateway.processors.json import split_path as _split

SIMPLE = ("count", "sum", "avg", "min", "max", "first", "last", "stddev", "median", "rate")
_PERCENTILE = re.compile(r"^percentile\(\s*(\d+(?:\.\d+)?)\s*\)$")
LINEAGE_MAX = 16
HOPS_MAX = 1000  # hopping: the most windows one reading may be in (size / every)
NEEDS_NUMBER = "window needs a number (within ±1.8e308)"
# The window's own keys in an output: an aggregated field may not take one of them.
OUTPUT_KEYS = ("group", "start", "end", "count", "early")
META = "~meta"
# A sliding count window keeps its readings in chunks of this many, one state key each
# ("~c|<chunk>|<group>"), so that a commit writes the chunks it changed (the newest and
# the oldest), not the whole buffer (9 MB at each commit for 100000 readings). Its
# header (key "c|<group>") holds the index of its oldest reading ("h"), the next
# index ("z") and the chunk size it was made with ("c").
CHUNK_ROWS = 64
CHUNK = "~c|"
# The close order is rebuilt once it holds more than twice the open windows and this many:
# its stale entries (windows closed early, a session's before it grew) then outnumber the
# open windows, so each rebuild is paid for by as many events; a growing state alone never
# rebuilds it.
HEAP_SLACK = 1024
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# Output topics made from a template with {topic.N} or {group}, remembered per (topic,
# group) up to this estimate of their bytes, then forgotten all at once.
TOPICS_BYTES = 4 << 20

# size, every and gap: a window's start and end are times in ns within the years 1 to
# 9999 (below 1ms, `size: 1e-12` was 0 ns, a ZeroDivisionError on every reading; past the
# years, `size: 1e30` made windows whose end no output can write).
MIN_SPAN = 0.001
MAX_SPAN = INTERVAL_MAX  # the polled sources' longest interval: one bound for both
SPAN_BOUNDS = "must be between 1ms and 100 years"

# The config keys that shape the open windows: a change to one drops them (see State).
SHAPE = (
    "kind", "size", "every", "gap", "count", "slide", "time", "time_field",
    "time_attribute", "group_by", "aggregates", "max_values",
)  # fmt: skip


def fingerprint(config: WindowProcessorConfig) -> str:
    """A short digest of the keys of `config` that shape its windows."""
    shape = {key: getattr(config, key) for key in SHAPE}
    text = json.dumps(shape, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# One field's running statistics in a window (a JSON list, so it checkpoints as is):
N, SUM, MIN, MAX, FIRST, TFIRST, LAST, TLAST, MEAN, M2, VALUES = range(11)


def aggregate_name(spec: str) -> str | None:
    """The output key of an aggregate spec (`p95` for percentile(95), `p99_9` for
    percentile(99.9): a `.` would split the field path of a later processor); None if
    unknown."""
    if spec in SIMPLE:
        return spec
    m = _PERCENTILE.match(spec)
    if m and 0 <= float(m.group(1)) <= 100:
        # every digit written counts (`:g` made percentile(99.99999) `p100`)
        return "p" + f"{float(m.group(1)):.15g}".replace(".", "_")
    return None


def _check_group(group_by: str) -> str | None:
    if group_by == "topic":
        return None
    if group_by.startswith("topic."):
        if level_number(group_by[6:]) is not None:
            return None
        return f"{group_by!r}: topic.N needs a level number (0 is the first, -1 the last)"
    if group_by.startswith("field."):
        return check_path(group_by[6:])
    return f"{group_by!r} must be topic, topic.N or field.PATH"


@dataclass(frozen=True)
class WindowProcessorConfig:
    """Keys of the `window` processor."""

    type: Annotated[str, Doc("The kind of processor.")]
    aggregates: Annotated[
        dict[str, list[str]],
        Doc(
            "Per JSON field, the aggregates to compute: count, sum, avg, min, max, first,"
            " last, stddev, median, percentile(P), rate. Each is a key of the field's"
            " output, percentile(P) as pP with `.` written `_` (p95, p99_9).",
            example={"temp": ["avg", "min", "max", "count", "percentile(95)"]},
        ),
    ]
    kind: Annotated[
        Literal["tumbling", "hopping", "session", "count"],
        Doc("tumbling, hopping (sliding time windows), session (gap) or count."),
    ] = "tumbling"
    size: Annotated[
        Duration | None,
        Doc("tumbling and hopping: the length of a window.", example="1m"),
        Range(MIN_SPAN, MAX_SPAN, SPAN_BOUNDS),
    ] = None
    every: Annotated[
        Duration | None,
        Doc("hopping: how often a window starts (at most `size`, at least `size` / 1000)."),
        Range(MIN_SPAN, MAX_SPAN, SPAN_BOUNDS),
    ] = None
    gap: Annotated[
        Duration | None,
        Doc("session: the quiet time after a group's last reading that ends its window."),
        Range(MIN_SPAN, MAX_SPAN, SPAN_BOUNDS),
    ] = None
    count: Annotated[
        int | None,
        Doc("count: readings per window."),
        Range(1, 1_000_000, "must be between 1 and 1000000"),
    ] = None
    slide: Annotated[
        int | None,
        Doc("count: emit every `slide` readings over the last `count` (default: `count`)."),
        Range(1, 1_000_000, "must be between 1 and 1000000"),
    ] = None
    time: Annotated[
        Literal["processing", "event"],
        Doc("processing (the gateway's clock) or event (the reading's own time)."),
    ] = "processing"
    time_field: Annotated[
        str | None, Doc("event time: the JSON field holding the reading's time.")
    ] = None
    time_attribute: Annotated[
        str | None, Doc("event time: the attribute holding the reading's time.")
    ] = None
    allowed_lateness: Annotated[
        Duration,
        Doc("event time: how far behind the newest event time a reading may be."),
        Range(0, MAX_SPAN, "must be between 0s and 100 years"),
    ] = 0.0
    late: Annotated[
        Literal["drop", "dead_letter"],
        Doc(
            "event time: what happens to a late reading (counted either way): drop or dead_letter."
        ),
    ] = "drop"
    idle: Annotated[
        Duration,
        Doc(
            "event time: after this long without a reading raising the watermark, it"
            " moves on from the newest event time at the clock's pace (windows close when"
            " data stops)."
        ),
        Range(0, MAX_SPAN, "must be more than 0s and at most 100 years", above=True),
    ] = 10.0
    group_by: Annotated[
        str | None,
        Doc("topic, topic.N or field.PATH: one set of windows per value (default: one)."),
    ] = None
    topic: Annotated[
        str,
        Doc("The output topic: a template with {topic}, {topic.N} and {group}."),
    ] = "{topic}/agg"
    max_values: Annotated[
        int,
        Doc("median and percentile: values kept per window and field (exact up to it)."),
        Range(1, 10_000_000, "must be between 1 and 10000000"),
    ] = 10_000
    max_state: Annotated[
        Size,
        Doc("The state budget (open windows); over it the oldest windows close early (counted)."),
        Range(4096, None, "must be at least 4096 bytes"),
    ] = 64 << 20

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.aggregates:
            yield "aggregates", "give at least one field with its aggregates, e.g. {temp: [avg]}"
        for path, specs in self.aggregates.items():
            problem = check_path(path)
            if problem:
                yield f"aggregates.{path}", problem
            head = path.split(".")[0]
            if head in OUTPUT_KEYS:
                yield (
                    f"aggregates.{path}",
                    f"{head!r} is a key of the window's output ({', '.join(OUTPUT_KEYS)}):"
                    " rename the field first, e.g. a transform with"
                    f" rename: {{{head}: {head}_value}}",
                )
            # A dotted field is nested in the output: one inside another would overwrite it.
            inner = next((p for p in self.aggregates if p.startswith(path + ".")), None)
            if inner is not None:
                yield (
                    f"aggregates.{path}",
                    f"{path!r} holds {inner!r}, also aggregated: in the output both would be"
                    f" at {path!r}; rename one first",
                )
            if not specs:
                yield f"aggregates.{path}", "name at least one aggregate"
            for spec in specs:
                if aggregate_name(spec) is None:
                    yield (
                        f"aggregates.{path}",
                        f"unknown aggregate {spec!r} (one of {', '.join(SIMPLE)},"
                        " percentile(P) with P from 0 to 100)",
                    )
        needs = {
            "tumbling": ("size",),
            "hopping": ("size", "every"),
            "session": ("gap",),
            "count": ("count",),
        }[self.kind]
        for key in needs:
            if getattr(self, key) is None:
                yield key, f"a {self.kind} window needs {key}"
        for key in ("size", "every", "gap", "count", "slide"):
            if key not in needs and key != "slide" and getattr(self, key) is not None:
                yield key, f"a {self.kind} window takes no {key}"
        if self.slide is not None and self.kind != "count":
            yield "slide", "only count windows take slide"
        if self.kind == "count" and self.slide and self.count and self.slide > self.count:
            yield "slide", "must be at most count"
        if self.kind == "count" and self.slide and self.count and self.count > 100_000:
            yield "count", "a sliding count window keeps at most 100000 readings"
        if self.kind == "hopping" and self.size and self.every:
            if self.every > self.size:
                yield "every", "must be at most size"
            elif (hops := math.ceil(round(self.size / self.every, 9))) > HOPS_MAX:
                # each reading goes into every open window: `every: 1ms` for `1m` is
                # 60000 windows, over half a second of work per reading
                yield (
                    "every",
                    f"each reading would be in {hops} windows (size / every); at most"
                    f" {HOPS_MAX}: make every longer",
                )
        if self.time == "event":
            if (self.time_field is None) == (self.time_attribute is None):
                yield "time_field", "event time needs one of time_field or time_attribute"
            elif self.time_field is not None and check_path(self.time_field):
                yield "time_field", str(check_path(self.time_field))
            elif self.time_attribute == "":  # no attribute has it: every reading refused
                yield "time_attribute", "the attribute name must not be empty"
            if self.kind == "count":
                # Count windows close on their count: the watermark closes none, so
                # these would be ignored without a word (late: dead_letter never was).
                for key, default in (("allowed_lateness", 0.0), ("late", "drop"), ("idle", 10.0)):
                    if getattr(self, key) != default:
                        yield (
                            key,
                            "count windows close on their count only: no reading is ever"
                            " late and no watermark closes them",
                        )
        else:
            if self.time_field is not None or self.time_attribute is not None:
                yield "time", "time_field and time_attribute need time: event"
            # Processing-time windows close on the gateway's clock: no reading is ever late
            # and no watermark waits, so these would be ignored without a word.
            for key, default in (("allowed_lateness", 0.0), ("late", "drop"), ("idle", 10.0)):
                if getattr(self, key) != default:
                    yield (
                        key,
                        "is for event time and needs time: event (processing-time windows"
                        " close on the gateway's clock and no reading is ever late)",
                    )
        if self.group_by is not None:
            problem = _check_group(self.group_by)
            if problem:
                yield "group_by", problem
        for m in _PLACEHOLDER.finditer(self.topic):
            name = m.group(1)
            if name not in ("topic", "group") and not (
                name.startswith("topic.") and level_number(name[6:]) is not None
            ):
                yield (
                    "topic",
                    f"unknown placeholder {{{name}}} (use {{topic}}, {{topic.N}}, {{group}})",
                )
        sample = _PLACEHOLDER.sub("x", self.topic)
        problem = validate_topic(sample)
        if problem:
            yield "topic", f"{self.topic!r} does not make a valid topic: {problem}"


# Event times are kept within the years 1 to 9999: what an output's ISO 8601 `start` and
# `end` can say (the C library's gmtime fails further out).
TIME_MIN = -62_135_596_800 * 1_000_000_000  # 0001-01-01T00:00:00Z
TIME_MAX = 253_402_300_800 * 1_000_000_000  # 10000-01-01T00:00:00Z


def parse_time(value: Any) -> int:
    """A reading's time in ns since the epoch, from a number (s, ms, us or ns, told apart
    by size) or ISO 8601 text; PermanentError when it is neither, or outside the years 1
    to 9999."""
    ns = _parse_time(value)
    if not TIME_MIN <= ns < TIME_MAX:
        raise PermanentError(
            f"the time {shown(value)} is outside the years 1 to 9999, which a window can hold"
        )
    return ns


def _parse_time(value: Any) -> int:
    if type(value) is int and abs(value) >= 10**17:
        return value  # ns (float() of one past a double's range raises OverflowError)
    if type(value) in (int, float) and math.isfinite(value):
        number = float(value)
        x = abs(number)
        if x < 1e11:
            return round(number * 1_000_000) * 1000
        if x < 1e14:
            return round(number * 1000) * 1000
        if x < 1e17:
            return round(number) * 1000
        return int(value)
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return _parse_time(number)
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
            return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    raise PermanentError(
        f"the time is {kind(value)} ({shown(value)}), window needs seconds, ms, us or ns"
        " since the epoch or ISO 8601 text"
    )


def iso(ns: int) -> str:
    """ns since the epoch as ISO 8601 UTC with milliseconds."""
    seconds, rest = divmod(ns, 1_000_000_000)
    g = time.gmtime(seconds)
    # the year in four digits: strftime's %Y wrote the year 900 `900-01-01`, which no
    # ISO 8601 reader (a database's timestamp column) takes
    return (
        f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}T{g.tm_hour:02d}:{g.tm_min:02d}"
        f":{g.tm_sec:02d}.{rest // 1_000_000:03d}Z"
    )


# -- per-field statistics -----------------------------------------------------


def new_stats(keep: bool) -> list[Any]:
    return [0, 0, None, None, None, 0, None, 0, 0.0, 0.0, [] if keep else None]


def add_value(s: list[Any], v: float, t: int, max_values: int) -> None:
    n = s[N] = s[N] + 1
    s[SUM] += v
    if n == 1:
        s[MIN] = s[MAX] = s[FIRST] = s[LAST] = v
        s[TFIRST] = s[TLAST] = t
    else:
        if v < s[MIN]:
            s[MIN] = v
        if v > s[MAX]:
            s[MAX] = v
        if t < s[TFIRST]:
            s[FIRST], s[TFIRST] = v, t
        if t >= s[TLAST]:
            s[LAST], s[TLAST] = v, t
    d = v - s[MEAN]
    s[MEAN] += d / n
    s[M2] += d * (v - s[MEAN])
    values = s[VALUES]
    if values is not None:
        if len(values) < max_values:
            values.append(v)
        else:  # a deterministic sample (the same after a restart): replace slot j
            j = (n * 0x9E3779B97F4A7C15 >> 7) % n
            if j < max_values:
                values[j] = v


def merge_stats(a: list[Any], b: list[Any], max_values: int) -> list[Any]:
    """The statistics of two windows' readings together (sessions that meet)."""
    if b[N] == 0:
        return a
    if a[N] == 0:
        return b
    n = a[N] + b[N]
    out = list(a)
    out[N] = n
    out[SUM] = a[SUM] + b[SUM]
    out[MIN] = min(a[MIN], b[MIN])
    out[MAX] = max(a[MAX], b[MAX])
    if b[TFIRST] < a[TFIRST]:
        out[FIRST], out[TFIRST] = b[FIRST], b[TFIRST]
    if b[TLAST] >= a[TLAST]:
        out[LAST], out[TLAST] = b[LAST], b[TLAST]
    delta = b[MEAN] - a[MEAN]
    out[MEAN] = a[MEAN] + delta * b[N] / n
    out[M2] = a[M2] + b[M2] + delta * delta * a[N] * b[N] / n
    if a[VALUES] is not None:
        out[VALUES] = (a[VALUES] + b[VALUES])[:max_values]
    return out


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    low, high, fraction = ordered[lo], ordered[hi], k - lo
    if fraction == 0:
        return float(low)  # a float as the interpolation gives it (2.0, not 2)
    spread = high - low
    if math.isinf(spread):  # -1e308 and 1e308: their difference is past a double's range
        return low * (1 - fraction) + high * fraction
    return low + spread * fraction


def results(s: list[Any], names: list[tuple[str, float | None]]) -> dict[str, Any]:
    n = s[N]
    out: dict[str, Any] = {}
    for name, p in names:
        if name == "count":
            out[name] = n
        elif n == 0:
            out[name] = None
        elif name == "sum":
            out[name] = s[SUM]
        elif name == "avg":
            avg = s[SUM] / n
            out[name] = avg if math.isfinite(avg) else s[MEAN]  # a sum past 1.8e308
        elif name == "min":
            out[name] = s[MIN]
        elif name == "max":
            out[name] = s[MAX]
        elif name == "first":
            out[name] = s[FIRST]
        elif name == "last":
            out[name] = s[LAST]
        elif name == "stddev":
            # (M2 is -inf once a difference of two readings passed a double's range: the
            # clamp below rounding's small negatives made it 0.0, a spread of nothing)
            m2 = s[M2]
            out[name] = math.sqrt(max(m2, 0.0) / n) if math.isfinite(m2) else None
        elif name == "rate":
            span = s[TLAST] - s[TFIRST]
            out[name] = (s[LAST] - s[FIRST]) / (span / 1e9) if span > 0 else None
        else:  # median, pP
            out[name] = percentile(s[VALUES], 50.0 if p is None else p)
        value = out[name]
        if type(value) is float and not math.isfinite(value):
            out[name] = None  # past a double's range (a sum of 1e308s): JSON has no infinity
    return out


def _stats_size(acc: dict[str, Any]) -> int:
    # The topic and the group come from outside and may be long (an MQTT topic holds up
    # to 65535 bytes): counted, or a budget of 64MiB could hold gigabytes.
    size = 400 + 40 * len(acc.get("i", ())) + len(acc["g"]) + len(acc.get("t", ""))
    for s in acc["f"].values():
        size += 260
        if s[VALUES] is not None:
            size += 32 * len(s[VALUES])
    if "z" in acc:  # a sliding count window's header: its readings are in chunks
        size += acc["bz"]
    elif "buf" in acc:
        # kept up to date as rows come and go: summing up to 100000 rows at each reading
        # cost 20 ms (state written before "bz" was kept is summed)
        size += acc["bz"] if "bz" in acc else sum(_row_size(row) for row in acc["buf"])
    return size


def _row_size(row: list[Any]) -> int:
    """A sliding count window's buffered reading [time, values, id, topic], in bytes."""
    return 120 + 32 * len(row[1]) + len(row[3])


# -- the processor --------------------------------------------------------------


class WindowProcessor(Processor):
    """Aggregates fields over tumbling, hopping, session or count windows per group."""

    Config = WindowProcessorConfig
    stateful = True

    def __init__(self, config: WindowProcessorConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: WindowProcessorConfig = config
        c = config
        self._fields = [(path, _split(path)) for path in c.aggregates]
        self._names = {
            path: [(aggregate_name(spec) or spec, _p(spec)) for spec in specs]
            for path, specs in c.aggregates.items()
        }
        self._keep = {
            path: any(n == "median" or n.startswith("p") for n, _ in names)
            for path, names in self._names.items()
        }
        self._size = round(c.size * 1e9) if c.size else 0
        self._every = round(c.every * 1e9) if c.every else self._size
        self._gap = round(c.gap * 1e9) if c.gap else 0
        self._lateness = round(c.allowed_lateness * 1e9)
        self._event = c.time == "event"
        self._time_path = _split(c.time_field) if c.time_field else None
        self._group = _grouper(c.group_by)
        # `{topic}` alone always makes a valid topic; a level or the group may not.
        self._check_topic = _PLACEHOLDER.search(c.topic.replace("{topic}", "")) is not None
        # a template without {topic} or {topic.N} makes the same topic for every topic
        self._by_topic = "{topic" in c.topic
        self._topics: dict[tuple[str, str], str] = {}
        self._topics_bytes = 0
        self.kv = State(ctx.name, c.max_state, size=self._state_size)
        self.late = 0
        self.dropped = 0  # open windows dropped because the config that made them changed
        # windows closed early (over the state budget, or the clock set back far
        # behind them), since start
        self.early = 0
        self._fp = fingerprint(c)
        self._heap: list[tuple[int, int, str, str]] = []  # (end, start, group, key)
        self._sessions: dict[str, list[str]] = {}  # group -> keys of its open sessions
        self._meta: dict[str, Any] = self._fresh_meta()
        self._mono_at_max = ctx.clock.monotonic()
        self._clock_seen: int | None = None  # processing time: the clock at the last tick

    def _fresh_meta(self, late: int = 0, dropped: int = 0) -> dict[str, Any]:
        return {"wm": None, "mx": None, "late": late, "dropped": dropped, "fp": self._fp}

    def status(self) -> dict[str, object]:
        """open windows, late readings, windows closed early (over `max_state`, or the
        clock set back far behind them) and dropped (a config change), with the state's
        keys, bytes and evictions."""
        kv = self.kv
        assert kv is not None
        return {
            "open": _windows(kv),
            "late": self.late,
            "early": self.early,
            "dropped": self.dropped,
            **super().status(),
        }

    @staticmethod
    def _state_size(value: Any) -> int:
        if type(value) is list:  # a chunk of a sliding count window: its header counts it
            return 0
        return 200 if "f" not in value else _stats_size(value)

    # -- state ------------------------------------------------------------------------

    def owns_state(self, key: str, value: Any) -> bool:
        if key == META:
            return isinstance(value, dict) and ("wm" in value or "fp" in value)
        if key.startswith(CHUNK):
            return isinstance(value, list)
        return isinstance(value, dict) and "g" in value and "f" in value

    def restored(self) -> None:
        kv = self.kv
        assert kv is not None
        self._heap = []
        self._sessions = {}
        meta = kv.get(META) or self._fresh_meta()
        self.late = meta.get("late", 0)
        self.dropped = meta.get("dropped", 0)
        # State from before fingerprints (no "fp") is taken as made by this config.
        if meta.get("fp", self._fp) != self._fp:
            # with those the restore evicted over a smaller budget (forgotten by clear):
            # not to be emitted under this config either
            evicted = [key for key, _ in kv.take_evicted() if key != META]
            windows = _windows(kv) + len(evicted)
            kv.clear()
            self.dropped += windows
            meta = self._fresh_meta(self.late, self.dropped)
            # the counts (late, dropped) are kept across restarts: they stay in the
            # state even while no window is open
            kv.put(META, meta)
            self.ctx.log.warning(
                "one of %s changed since the state was written: %d open windows made"
                " under the old config were dropped, not emitted",
                ", ".join(SHAPE),
                windows,
            )
        if META in kv and meta.get("fp") != self._fp:
            meta["fp"] = self._fp
            kv.put(META, meta)
        self._meta = meta
        self._mono_at_max = self.ctx.clock.monotonic()
        # the clock may be behind the one the state was written on, and not yet set: a
        # set back is seen from tick to tick, not against the state's times
        self._clock_seen = None
        converted = False
        for key, acc in kv.items():
            if key == META or key.startswith(CHUNK):
                continue
            if self.config.kind == "count":
                if "buf" in acc:  # written before chunks: written in chunks once
                    self._chunked(key, acc)
                    converted = True
                continue
            self._heap.append((acc["e"], acc["s"], acc["g"], key))
            if self.config.kind == "session":
                self._sessions.setdefault(acc["g"], []).append(key)
        heapq.heapify(self._heap)
        if converted:
            # Converted without evicting (a header evicted mid-loop was converted again
            # and put back, both open and pending early emission): the windows over the
            # budget are evicted now, each header with its chunks, and close early.
            kv.trim()

    # -- input ------------------------------------------------------------------------

    def process(self, flowfile: FlowFile) -> list[FlowFile]:
        obj = decode_object(flowfile.content, "window")
        values: list[Any] = []
        for path, parts in self._fields:
            v = lookup(obj, parts)
            if v is MISSING or v is None:
                values.append(None)
            elif type(v) is float or (type(v) is int and -FLOAT_MAX <= v <= FLOAT_MAX):
                values.append(v)
            elif type(v) is str and (number := _number(v)) is not None:
                values.append(number)
            else:
                raise PermanentError(f"field {path!r} is {kind(v)} ({shown(v)}), {NEEDS_NUMBER}")
        group = self._group(flowfile, obj)
        if self._check_topic:
            # The window's output topic comes from its first reading: a reading whose
            # topic or group cannot make one is refused now, not when its window closes.
            self._cached_topic(flowfile.topic, group)
        kv = self.kv
        assert kv is not None
        out: list[FlowFile] = []
        if self._event:
            t = self._event_time(flowfile, obj)
        else:
            t = self.ctx.clock.now_ns()
            out.extend(self._close_until(t))
        if self.config.kind != "count":
            self._check_span(t)
        if self.config.kind == "count":
            out.extend(self._add_count(group, flowfile, t, values))
        elif self.config.kind == "session":
            if not self._add_session(group, flowfile, t, values):
                return self._late(flowfile, t)
        elif not self._add_timed(group, flowfile, t, values):
            return self._late(flowfile, t)
        if self._event:
            meta = self._meta
            if meta["mx"] is None or t > meta["mx"]:
                meta["mx"] = t
                self._mono_at_max = self.ctx.clock.monotonic()
                wm = t - self._lateness
                if meta["wm"] is None or wm > meta["wm"]:
                    meta["wm"] = wm
                kv.put(META, meta)
                out.extend(self._close_until(meta["wm"]))
        out.extend(self._take_early())
        return out

    def _take_early(self) -> list[FlowFile]:
        """The windows evicted over the state budget since the last call, closed early."""
        kv = self.kv
        assert kv is not None
        out = []
        for key, acc in kv.take_evicted():
            if key == META:
                continue
            if self.config.kind == "session" and key not in kv:
                # else its group's entry stayed for good (one per group ever seen)
                self._forget_session(acc["g"], key)
            if (early := self._early(acc)) is not None:
                self.early += 1
                out.append(early)
        return out

    def _early(self, acc: dict[str, Any]) -> FlowFile | None:
        """The output of a window closed early (evicted over the state budget, or the clock
        set back far behind it), or None when it holds no reading not emitted yet: a count
        window's next one, still empty, or a sliding count window's buffer just emitted."""
        if "buf" in acc or "z" in acc:  # a sliding count window: its buffer, as a window
            rows = self._rows(acc)
            self._drop_chunks(acc)
            if not rows or acc["k"] == 0:
                return None
            return self._emit(self._from_buffer(acc, rows), early=True)
        if acc["n"] == 0:
            return None
        return self._emit(acc, early=True)

    def tick(self, now_ns: int) -> list[FlowFile]:
        # Windows a restore evicted (a restart or reload with a smaller max_state) close
        # now, in the commit that deletes them, not at the next reading, which may never
        # come (the kill before it lost them).
        return self._take_early() + self._tick(now_ns)

    def _tick(self, now_ns: int) -> list[FlowFile]:
        if self.config.kind == "count":
            return []
        if not self._event:
            out = self._close_until(now_ns)
            # Only a clock seen going back while running: the first tick after a restore
            # may come on a clock not yet set (a Pi booting on fake-hwclock's time, or in
            # 1970, seconds before NTP), and buffered windows are not closed on it alone.
            if self._clock_seen is not None and now_ns < self._clock_seen:
                out += self._close_ahead(now_ns)
            self._clock_seen = now_ns
            return out
        meta = self._meta
        if meta["mx"] is None:
            return []
        quiet = self.ctx.clock.monotonic() - self._mono_at_max
        if quiet < self.config.idle:
            return []
        wm = meta["mx"] + round(quiet * 1e9) - self._lateness
        if meta["wm"] is not None and wm <= meta["wm"]:
            return []
        meta["wm"] = wm
        assert self.kv is not None
        self.kv.put(META, meta)
        return self._close_until(wm)

    def _close_ahead(self, now_ns: int) -> list[FlowFile]:
        """Processing time, the clock seen going back while running: the windows that
        start more than their own length (a session: its gap) after `now_ns`, closed
        early. The clock was set back (a board without RTC that ran ahead, corrected by
        NTP): they waited for it to come back to them, a year later maybe, while the
        readings went to the windows of the new time. One set back by less waits. A
        session's length grows with its readings: a session of 10 days, the clock set
        back a day before it, waited, and then took the readings of both sides of the
        step; its gap is what a reading must be within to join it."""
        kv = self.kv
        assert kv is not None
        session = self.config.kind == "session"
        gap = self._gap
        ahead = sorted(
            (acc["e"], acc["s"], acc["g"], key)
            for key, acc in kv.items()
            if key[:1] != "~" and acc["s"] - now_ns > (gap if session else acc["e"] - acc["s"])
        )
        out = []
        for _end, _start, group, key in ahead:
            acc = kv.get(key)
            kv.delete(key)
            if session:
                self._forget_session(group, key)
            if (early := self._early(acc)) is not None:
                self.early += 1
                out.append(early)
        return out

    def _check_span(self, t: int) -> None:
        """PermanentError when a window of a reading at `t` starts before the year 1 or
        ends after the year 9999: its start or end cannot be written in ISO 8601 (a 1d
        window of 9999-12-31 ended 10000-01-01T00:00:00.000Z, five digits no timestamp
        column takes)."""
        if self.config.kind == "session":
            first, last = t, t + self._gap
        else:
            size, every = self._size, self._every
            start = t - t % every
            first, last = start - (start - t + size - 1) // every * every, start + size
        if last >= TIME_MAX:
            raise PermanentError(
                f"the time {iso(t)} falls in a window ending after the year 9999:"
                " windows lie within the years 1 to 9999"
            )
        if first < TIME_MIN:
            raise PermanentError(
                f"the time {iso(t)} falls in a window starting before the year 1:"
                " windows lie within the years 1 to 9999"
            )

    def _late(self, flowfile: FlowFile, t: int) -> list[FlowFile]:
        self.late += 1
        self._meta["late"] = self.late
        assert self.kv is not None
        self.kv.put(META, self._meta)
        if self.config.late == "dead_letter":
            raise PermanentError(
                f"late: its time {iso(t)} is behind the watermark {iso(self._meta['wm'])}"
                " and its windows are closed"
            )
        return []

    def _event_time(self, flowfile: FlowFile, obj: Any) -> int:
        if self._time_path is not None:
            value = lookup(obj, self._time_path)
            if value is MISSING:
                raise PermanentError(f"the time field {self.config.time_field!r} is missing")
            return parse_time(value)
        name = self.config.time_attribute or ""
        text = flowfile.attributes.get(name)
        if text is None:
            raise PermanentError(f"the time attribute {name!r} is missing")
        return parse_time(text)

    def _new_acc(self, group: str, start: int, end: int, flowfile: FlowFile) -> dict[str, Any]:
        kv = self.kv
        if kv is not None and META not in kv:  # the fingerprint goes with the first window
            kv.put(META, self._meta)
        return {
            "g": group,
            "s": start,
            "e": end,
            "n": 0,
            "t": flowfile.topic,
            "i": [],
            "li": "",
            "f": {path: new_stats(self._keep[path]) for path, _ in self._fields},
        }

    def _add(self, acc: dict[str, Any], flowfile: FlowFile, t: int, values: list[Any]) -> None:
        acc["n"] += 1
        if len(acc["i"]) < LINEAGE_MAX:
            acc["i"].append(flowfile.id)
        acc["li"] = flowfile.id
        stats = acc["f"]
        most = self.config.max_values
        for (path, _), v in zip(self._fields, values, strict=True):
            if v is not None:
                add_value(stats[path], v, t, most)

    def _add_timed(self, group: str, flowfile: FlowFile, t: int, values: list[Any]) -> bool:
        kv = self.kv
        assert kv is not None
        wm = self._meta["wm"] if self._event else None
        size, every = self._size, self._every
        start = t - t % every
        placed = False
        while start > t - size:
            end = start + size
            if wm is None or end > wm:
                key = f"{start}|{group}"
                acc = kv.get(key)
                if acc is None:
                    acc = self._new_acc(group, start, end, flowfile)
                    heapq.heappush(self._heap, (end, start, group, key))
                self._add(acc, flowfile, t, values)
                kv.put(key, acc)
                placed = True
            start -= every
        if len(self._heap) > 2 * len(kv) + HEAP_SLACK:
            self._compact_heap()
        return placed

    def _add_session(self, group: str, flowfile: FlowFile, t: int, values: list[Any]) -> bool:
        kv = self.kv
        assert kv is not None
        gap = self._gap
        wm = self._meta["wm"] if self._event else None
        if wm is not None and t + gap <= wm:
            return False
        keys = self._sessions.setdefault(group, [])
        near = [k for k in keys if k in kv and kv.get(k)["s"] - gap <= t < kv.get(k)["e"]]
        acc = self._new_acc(group, t, t + gap, flowfile)
        for k in near:
            other = kv.get(k)
            acc = self._merge(other, acc) if other["s"] <= acc["s"] else self._merge(acc, other)
            kv.delete(k)
        self._add(acc, flowfile, t, values)
        acc["s"] = min(acc["s"], t)
        acc["e"] = max(acc["e"], t + gap)
        key = f"{acc['s']}|{group}"
        self._sessions[group] = [k for k in keys if k not in near and k in kv] + [key]
        kv.put(key, acc)
        heapq.heappush(self._heap, (acc["e"], acc["s"], group, key))
        if len(self._heap) > 2 * len(kv) + HEAP_SLACK:
            self._compact_heap()
        return True

    def _compact_heap(self) -> None:
        """Rebuild the close order from the open windows. The entries of windows closed
        early over max_state (and a session's before it grew) would otherwise stay until
        their end: one per group ever seen in a long window, outside the state budget."""
        kv = self.kv
        assert kv is not None
        self._heap = [
            (acc["e"], acc["s"], acc["g"], key) for key, acc in kv.items() if key[:1] != "~"
        ]
        heapq.heapify(self._heap)

    def _merge(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        most = self.config.max_values
        ids = (a["i"] + b["i"])[:LINEAGE_MAX]
        return {
            "g": a["g"],
            "s": min(a["s"], b["s"]),
            "e": max(a["e"], b["e"]),
            "n": a["n"] + b["n"],
            "t": a["t"],
            "i": ids,
            "li": b["li"] or a["li"],
            "f": {p: merge_stats(a["f"][p], b["f"][p], most) for p in a["f"]},
        }

    def _add_count(
        self, group: str, flowfile: FlowFile, t: int, values: list[Any]
    ) -> list[FlowFile]:
        kv = self.kv
        assert kv is not None
        c = self.config
        assert c.count is not None
        key = f"c|{group}"
        acc = kv.get(key)
        if c.slide is None or c.slide == c.count:
            if acc is None:
                acc = self._new_acc(group, t, t, flowfile)
                acc["w"] = 0
            elif acc["n"] == 0:
                acc["s"] = acc["e"] = t
                acc["t"] = flowfile.topic
            self._add(acc, flowfile, t, values)
            acc["s"], acc["e"] = min(acc["s"], t), max(acc["e"], t)
            if acc["n"] < c.count:
                kv.put(key, acc)
                return []
            done = self._emit(acc)
            fresh = self._new_acc(group, t, t, flowfile)
            fresh["w"] = acc["w"] + 1
            kv.put(key, fresh)
            return [done]
        # sliding: the last `count` readings, emitted every `slide`
        out = []
        if acc is None:
            # A window of this group that a restore evicted holds its readings in chunks
            # of the keys this one would write: it closes first.
            out += self._take_early()
            acc = {"g": group, "w": 0, "k": 0, "f": {}, "bz": 0, "h": 0, "z": 0}
            acc["c"] = CHUNK_ROWS
        rows = acc["c"]
        row = [t, values, flowfile.id, flowfile.topic]
        z = acc["z"]
        name = _chunk_key(group, z // rows)
        chunk = kv.get(name) if z % rows else []
        chunk.append(row)
        # not evicting: the header put below counts the row, and is not to be evicted
        kv.put(name, chunk, evict=False)
        acc["z"] = z + 1
        acc["bz"] += _row_size(row)
        if acc["z"] - acc["h"] > c.count:
            h = acc["h"]
            name = _chunk_key(group, h // rows)
            chunk = kv.get(name)
            acc["bz"] -= _row_size(chunk[h % rows])
            acc["h"] = h + 1
            if acc["h"] % rows == 0:
                kv.delete(name)
            else:  # gone from memory now, not when its whole chunk goes
                chunk[h % rows] = None
                kv.put(name, chunk, evict=False)
        acc["k"] += 1
        if acc["k"] >= c.slide:
            acc["k"] = 0
            out.append(self._emit(self._from_buffer(acc, self._rows(acc))))
            acc["w"] += 1
        kv.put(key, acc)
        return out

    def _rows(self, acc: dict[str, Any]) -> list[list[Any]]:
        """A sliding count window's readings, oldest first."""
        if "buf" in acc:  # written before chunks
            return list(acc["buf"])
        kv = self.kv
        assert kv is not None
        rows, h, z = acc["c"], acc["h"], acc["z"]
        out: list[list[Any]] = []
        for n in range(h // rows, (z - 1) // rows + 1):
            out += kv.get(_chunk_key(acc["g"], n))
        return out[h % rows :]

    def _drop_chunks(self, acc: dict[str, Any]) -> None:
        kv = self.kv
        assert kv is not None
        if "z" in acc:
            for n in range(acc["h"] // acc["c"], (acc["z"] - 1) // acc["c"] + 1):
                kv.delete(_chunk_key(acc["g"], n))

    def _chunked(self, key: str, acc: dict[str, Any]) -> None:
        """A sliding count window's header and chunks from its state written whole."""
        kv = self.kv
        assert kv is not None
        buf = acc.pop("buf")
        rows = acc["c"] = CHUNK_ROWS
        acc["h"], acc["z"] = 0, len(buf)
        acc["bz"] = sum(_row_size(row) for row in buf)
        for n in range(0, len(buf), rows):
            kv.put(_chunk_key(acc["g"], n // rows), buf[n : n + rows], evict=False)
        kv.put(key, acc, evict=False)  # restored() evicts after converting them all

    def _from_buffer(self, acc: dict[str, Any], buf: list[list[Any]]) -> dict[str, Any]:
        first = buf[0]
        ff = FlowFile(first[2], first[3], {}, b"", 0)
        window = self._new_acc(acc["g"], min(r[0] for r in buf), max(r[0] for r in buf), ff)
        window["w"] = acc["w"]
        for t, values, fid, topic in buf:
            self._add(window, FlowFile(fid, topic, {}, b"", 0), t, values)
        return window

    # -- output -------------------------------------------------------------------------

    def _close_until(self, wm: int) -> list[FlowFile]:
        heap = self._heap
        kv = self.kv
        assert kv is not None
        out = []
        while heap and heap[0][0] <= wm:
            end, _start, group, key = heapq.heappop(heap)
            acc = kv.get(key)
            if acc is None or acc["e"] != end:
                continue  # evicted, or a session that grew since
            try:
                out.append(self._emit(acc))
            except PermanentError as err:
                # Never expected (readings that could not make an output are refused as
                # they come), but one window must not take the others closing with it
                # down, nor stay open for ever.
                self.ctx.log.error(
                    "the window %s-%s of group %r could not be emitted and is lost: %s",
                    iso(acc["s"]),
                    iso(acc["e"]),
                    acc["g"],
                    err,
                )
            kv.delete(key)
            if self.config.kind == "session":
                self._forget_session(group, key)
        return out

    def _forget_session(self, group: str, key: str) -> None:
        keys = self._sessions.get(group)
        if keys is not None and key in keys:
            keys.remove(key)
            if not keys:
                del self._sessions[group]

    def _emit(self, acc: dict[str, Any], early: bool = False) -> FlowFile:
        body: dict[str, Any] = {
            "group": acc["g"],
            "start": iso(acc["s"]),
            "end": iso(acc["e"]),
            "count": acc["n"],
        }
        for path, parts in self._fields:
            node = body
            for part in parts[:-1]:  # `meta.temp` in its place: {"meta": {"temp": ...}}
                node = node.setdefault(part, {})
            node[parts[-1]] = results(acc["f"][path], self._names[path])
        if early:
            body["early"] = True
        ids = acc["i"]
        lineage = tuple(ids) if acc["n"] <= LINEAGE_MAX else (ids[0], acc["li"])
        try:
            topic = self._cached_topic(acc["t"], acc["g"])
        except PermanentError as err:
            # Readings that cannot make a topic are refused as they come, but a reload
            # may change the template under open windows (to {topic.3} for windows of
            # two-level topics): such a window goes out on the default topic, not lost,
            # and its group's later windows are not stuck behind it.
            topic = f"{acc['t']}/agg"
            self.ctx.log.warning(
                "the window %s-%s of group %r went out on %r: %s",
                iso(acc["s"]),
                iso(acc["e"]),
                acc["g"],
                topic,
                err,
            )
        return FlowFile(
            self._id(acc, early),
            topic,
            {"window.inputs": str(acc["n"])},
            encode(body),
            self.ctx.clock.now_ns(),
            lineage,
        )

    def _cached_topic(self, topic: str, group: str) -> str:
        """`_topic`, remembered: formatting and checking it costs more than a lookup,
        and it is asked for each reading."""
        key = (topic if self._by_topic else "", group)
        text = self._topics.get(key)
        if text is None:
            text = self._topic(topic, group)  # a PermanentError is not remembered
            size = 200 + len(key[0]) + len(group) + len(text)
            if self._topics_bytes + size > TOPICS_BYTES:
                self._topics.clear()
                self._topics_bytes = 0
            self._topics[key] = text
            self._topics_bytes += size
        return text

    def _topic(self, topic: str, group: str) -> str:
        levels = topic.split("/")

        def fill(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "topic":
                return topic
            if name == "group":
                return group
            n = level_number(name[6:])
            assert n is not None  # checked on load
            if -len(levels) <= n < len(levels):
                return levels[n]
            raise PermanentError(f"the topic {topic!r} has no level {n} for {self.config.topic!r}")

        text = _PLACEHOLDER.sub(fill, self.config.topic)
        problem = validate_topic(text)
        if problem:
            raise PermanentError(f"topic {text!r} made from {self.config.topic!r}: {problem}")
        return text

    def _id(self, acc: dict[str, Any], early: bool = False) -> str:
        """A UUID-shaped id made from the window (time-ordered by its end), so the same
        window emitted again after a restart has the same id.

        A window closed early goes on taking readings in a new one of the same start,
        end and group, emitted later: the early one's id also holds its first reading's
        id, or both would have one id and a sink keyed by it would keep only the first."""
        what = f"{self.ctx.name}\0{acc['g']}\0{acc['s']}\0{acc['e']}\0{acc.get('w', '')}"
        if early and acc["i"]:
            what += f"\0early\0{acc['i'][0]}"
        h = hashlib.blake2b(what.encode(), digest_size=10).hexdigest()
        ms = max(acc["e"], 0) // 1_000_000
        return f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-8{h[:3]}-{h[3:7]}-{h[7:19]}"


def _chunk_key(group: str, n: int) -> str:
    return f"{CHUNK}{n}|{group}"


def _windows(kv: State) -> int:
    """The open windows in `kv` (not its bookkeeping nor a sliding window's chunks)."""
    return sum(1 for key, _ in kv.items() if key[:1] != "~")


def _number(text: str) -> float | None:
    """The finite number a text holds (a Redis stream field, a DECIMAL column), else None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _p(spec: str) -> float | None:
    m = _PERCENTILE.match(spec)
    return float(m.group(1)) if m else None


def _grouper(group_by: str | None) -> Any:
    if group_by is None:
        return lambda ff, obj: ""
    if group_by == "topic":
        return lambda ff, obj: ff.topic
    if group_by.startswith("topic."):
        n = level_number(group_by[6:])
        assert n is not None  # checked on load

        def level(ff: FlowFile, obj: Any) -> str:
            levels = ff.topic.split("/")
            if -len(levels) <= n < len(levels):
                return levels[n]
            raise PermanentError(f"the topic {ff.topic!r} has no level {n} to group by")

        return level
    parts = _split(group_by[6:])

    def by_field(ff: FlowFile, obj: Any) -> str:
        v = lookup(obj, parts)
        if v is MISSING:
            raise PermanentError(f"the group_by field {group_by[6:]!r} is missing")
        if type(v) is not str:
            return encode(v).decode()
        if not v.isascii():
            try:
                v.encode()
            except UnicodeEncodeError:
                raise PermanentError(
                    f"the group_by field {group_by[6:]!r} is not valid Unicode text"
                    " (it holds a lone surrogate)"
                ) from None
        return v

    return by_field

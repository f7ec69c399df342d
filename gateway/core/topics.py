"""MQTT topic names and filters: validation and matching (MQTT 5.0 section 4.7)."""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable
from functools import lru_cache

# What string.Formatter().parse yields: literal text, field name, format spec, conversion.
TemplatePart = tuple[str, str | None, str | None, str | None]


def template_parts(template: str) -> list[TemplatePart]:
    """The parts of a topic template (as string.Formatter().parse gives them); ValueError,
    in one line of ours rather than Python's format-string text, for a lone brace."""
    try:
        return list(string.Formatter().parse(template))
    except ValueError:
        # "Single '}' encountered", "Single '{' encountered", "expected '}' before end of
        # string": all a brace that is neither a field's nor doubled.
        lone = _lone_brace(template)
        raise ValueError(
            f"{template!r} has a lone {lone!r}: a field is written {{name}},"
            " a literal brace {{ or }}"
        ) from None


def template_fields(template: str) -> list[str]:
    """The placeholder names of a topic template, each once, in order; ValueError, in one
    line, for a lone brace or a placeholder with a conversion or format spec ({x!r},
    {x:d}, {x:>4}): a topic level is the value itself, and `str.format` would fail
    on one ("Unknown format code 'd'") or quote, pad or cut the value in the topic."""
    names: list[str] = []
    for _text, name, spec, conversion in template_parts(template):
        if name is None:
            continue
        if spec or conversion:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(
                f"{template!r}: {{{written}}} is no placeholder; write {{{name}}}"
                " (no conversion or format spec)"
            )
        if name not in names:
            names.append(name)
    return names


def _lone_brace(template: str) -> str:
    """The first brace of `template` that is neither doubled nor part of a {field}."""
    i = 0
    while i < len(template):
        c = template[i]
        if c in "{}" and template[i + 1 : i + 2] == c:
            i += 2
        elif c == "}":
            return "}"
        elif c == "{":
            end = template.find("}", i + 1)
            if end < 0 or "{" in template[i + 1 : end]:
                return "{"
            i = end + 1
        else:
            i += 1
    return "{"


def validate_filter(topic_filter: str) -> str | None:
    """Return why `topic_filter` is not a valid MQTT topic filter, or None if it is."""
    if not topic_filter:
        return "a topic filter must not be empty"
    if "\x00" in topic_filter:
        return "a topic filter must not contain the NUL character"
    if len(topic_filter.encode()) > 65535:
        return "a topic filter is at most 65535 bytes"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one (e.g. 'sensors/#')"
        if "+" in level and level != "+":
            return "'+' must be a whole level (e.g. 'sensors/+/temp', not 'sensors/a+')"
    return None


def validate_topic(topic: str) -> str | None:
    """Return why `topic` is not a valid topic name to publish on, or None."""
    if not topic:
        return "a topic must not be empty"
    if "+" in topic or "#" in topic:
        return "a topic name must not contain the wildcards '+' or '#'"
    if "\x00" in topic:
        return "a topic must not contain the NUL character"
    if not topic.isascii():
        try:
            topic.encode()
        except UnicodeEncodeError:
            return "a topic must be valid Unicode text (it holds a lone surrogate)"
    return None


# What an MQTT string should not hold and a broker may take for a malformed packet (MQTT
# 5.0 section 1.5.4): control characters and Unicode non-characters. Mosquitto closes the
# connection on one in a topic, a topic filter, a client id, a user name or a user property.
_UNSENDABLE = re.compile(
    "[\\x00-\\x1f\\x7f-\\x9f\\ufdd0-\\ufdef"
    + "".join(f"\\U{p + 0xFFFE:08x}\\U{p + 0xFFFF:08x}" for p in range(0, 0x110000, 0x10000))
    + "]"
)


def unsendable(text: str) -> str | None:
    """Why MQTT brokers refuse `text` as a topic, client id, user name or property (a
    control character or a Unicode non-character, named), or None."""
    if text.isprintable():
        # Fast: neither a control character (Cc) nor a non-character (Cn) is printable.
        return None
    bad = _UNSENDABLE.search(text)
    if bad is None:
        return None
    return (
        f"holds U+{ord(bad[0]):04X}, a control character or Unicode non-character that MQTT"
        " brokers refuse"
    )


def validate_received_topic(topic: str) -> str | None:
    """Return why `topic`, made from what a client sent (an HTTP request's path), is not
    a topic name to take, or None: `validate_topic`'s rules, and no control character or
    Unicode non-character (`unsendable`), which MQTT 5.0 (1.5.4, 4.7.3) says a topic
    should not hold: it would end up raw in the log, the console and files, and an MQTT
    sink would dead-letter it."""
    problem = validate_topic(topic)
    if problem is None and (bad := unsendable(topic)):
        return f"a topic {bad}"
    return problem


def filters_overlap(a: str, b: str) -> bool:
    """True if some topic matches both valid filters `a` and `b` (`a/#` and `a/b/+`, or
    `a/+/c` and `a/b/+`). A broker may send such a message once per matching filter."""
    la, lb = a.split("/"), b.split("/")
    if (la[0][:1] == "$") != (lb[0][:1] == "$"):
        return False  # a wildcard first level never matches a $ topic
    for x, y in zip(la, lb, strict=False):
        if x == "#" or y == "#":
            return True
        if x != y and x != "+" and y != "+":
            return False
    if len(la) == len(lb):
        return True
    longer = la if len(la) > len(lb) else lb
    return len(longer) == min(len(la), len(lb)) + 1 and longer[-1] == "#"  # a/# matches a


def matches(topic_filter: str, topic: str) -> bool:
    """True if `topic` matches `topic_filter` under the MQTT rules.

    `+` matches exactly one level, `#` the parent level and any number of
    levels below it, and a filter that starts with a wildcard does not match
    topics that start with `$` (such as `$SYS/...`).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


class TopicMatcher:
    """Finds which of a fixed set of filters match a topic, with a bounded cache.

    Topics repeat (a plant has a few thousand), so the answer for each topic is
    computed once and remembered; the cache holds at most `cache_size` topics of at most
    CACHED_TOPIC characters (a longer one is matched each time: an MQTT topic may have
    64 KiB, and 65,536 of those would hold gigabytes).
    """

    CACHED_TOPIC = 256

    def __init__(self, filters: Iterable[tuple[str, str]], cache_size: int = 65536) -> None:
        self._filters = list(filters)
        # `cached` for topics of at most CACHED_TOPIC characters, `compute` for longer ones
        # (the router makes that choice inline: it runs for every FlowFile)
        self.cached = lru_cache(maxsize=cache_size)(self.compute)
        self.cache_info = self.cached.cache_info

    def lookup(self, topic: str) -> tuple[str, ...]:
        """The names (each once, in the order given) whose filter matches `topic`."""
        if len(topic) > self.CACHED_TOPIC:
            return self.compute(topic)
        return self.cached(topic)

    def compute(self, topic: str) -> tuple[str, ...]:
        """The names (each once, in the order given) whose filter matches `topic`."""
        return tuple(dict.fromkeys(name for name, f in self._filters if matches(f, topic)))


class TopicWatch:
    """When a FlowFile was last seen on each of a few topic filters (the `no_data` alerts).

    The engine calls `note` with each committed batch, only while some filter is
    watched; a filter seen less than NOTE_EVERY seconds ago is not looked for again,
    so a busy topic costs one match a half second, not one per FlowFile.
    """

    NOTE_EVERY = 0.5

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self.filters: dict[str, float] = {}  # filter -> monotonic time last seen (or watched)

    def set(self, filters: set[str]) -> None:
        """Watch these filters (a new one counts from now)."""
        if set(self.filters) != filters:
            now = self._monotonic()
            self.filters = {f: self.filters.get(f, now) for f in filters}

    def last_seen(self, topic_filter: str, default: float) -> float:
        return self.filters.get(topic_filter, default)

    def note(self, topics: Iterable[str]) -> None:
        now = self._monotonic()
        looking = [f for f, seen in self.filters.items() if now - seen >= self.NOTE_EVERY]
        if not looking:
            return
        for topic in topics:
            for f in [f for f in looking if matches(f, topic)]:
                self.filters[f] = now
                looking.remove(f)
            if not looking:
                return

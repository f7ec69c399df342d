"""The FlowFile: one immutable piece of data moving through the gateway."""

from __future__ import annotations

import json
import random
import sys
import time
from typing import NamedTuple

# Attributes that mark a dead letter whose content is not the message that came in:
# `edge-stream dead-letters replay` leaves such ones where they are (sending the content
# on would pass it off as the reading), they can still be listed, shown and purged.
# content.truncated: the key whose limit cut it (max_payload, a serial max_length)
CONTENT_TRUNCATED = "content.truncated"
MQTT_INVALID = "mqtt.invalid"  # "1": the content is the raw PUBLISH packet MQTT forbids

_last_ms = 0
_seq = 0
_prefix = ""
_tail = ""
_randbits = random.Random().getrandbits


def _ms_prefix(ms: int) -> str:
    return f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7"


def _random_tail() -> str:
    """The variant bits 10, then 62 random bits, as the id's last two groups."""
    return "-%04x-%012x" % (_randbits(14) | 0x8000, _randbits(48))  # noqa: UP031


def uuid7() -> str:
    """A time-ordered UUIDv7 string; ids made by one process sort in creation order.

    Within one millisecond the 12-bit `rand_a` field is a counter, so ids stay
    ordered at any rate; when the counter runs out the timestamp is borrowed
    forward by a millisecond, and when the wall clock steps back we keep counting
    from the last timestamp instead of going backwards. The text up to the
    counter and the 62 random bits after it are drawn once per millisecond: the
    counter already tells one process's ids apart, the random bits another
    process's, and this runs for every reading.
    """
    global _last_ms, _seq, _prefix, _tail
    ms = time.time_ns() // 1_000_000
    if ms > _last_ms:
        _last_ms = ms
        _seq = _randbits(10)
        _prefix = _ms_prefix(ms)
        _tail = _random_tail()
    else:
        _seq += 1
        if _seq > 0xFFF:
            _last_ms += 1
            _seq = 0
            _prefix = _ms_prefix(_last_ms)
            _tail = _random_tail()
    return "%s%03x%s" % (_prefix, _seq, _tail)  # noqa: UP031 (the quickest spelling)


class FlowFile(NamedTuple):
    """One reading or message.

    `id` is a UUIDv7 string, `topic` the MQTT-style topic that routes it,
    `attributes` str->str metadata, `content` the payload bytes, `created` the
    creation time in ns since the epoch, `lineage` the ids of its parents.
    FlowFiles are never changed: processors call `derive()` to make a child.
    Treat `attributes` as read-only; `derive()` copies it.
    """

    id: str
    topic: str
    attributes: dict[str, str]
    content: bytes
    created: int
    lineage: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        topic: str,
        content: bytes,
        attributes: dict[str, str] | None = None,
        created: int | None = None,
    ) -> FlowFile:
        """A new FlowFile with a fresh id and no parents."""
        return cls(
            uuid7(),
            topic,
            attributes if attributes is not None else {},
            content,
            created if created is not None else time.time_ns(),
            (),
        )

    def derive(
        self,
        *,
        topic: str | None = None,
        content: bytes | None = None,
        attributes: dict[str, str] | None = None,
    ) -> FlowFile:
        """A child of this FlowFile with a new id; unchanged fields are inherited."""
        return FlowFile(
            uuid7(),
            self.topic if topic is None else topic,
            dict(self.attributes) if attributes is None else attributes,
            self.content if content is None else content,
            self.created,
            (self.id,),
        )


# What a FlowFile holds besides its content, topic and attributes (the tuple, its id,
# the Message and ack around it), counted per message by the byte bounds on the way in.
FLOWFILE_OVERHEAD = 200


def attributes_size(attributes: dict[str, str]) -> int:
    """Bytes an attributes dict holds in memory: the dict and each key and value string.

    Exact for what Python allocates (a string with one character above U+00FF takes
    2 or 4 bytes for every character), unlike the length of its text.
    """
    size = sys.getsizeof(attributes)
    getsizeof = sys.getsizeof
    for key, value in attributes.items():
        size += getsizeof(key) + getsizeof(value)
    return size


# Only small attribute sets are cached: those are the ones shared by many FlowFiles,
# and a cache of 8192 large ones (MQTT user properties) would hold gigabytes.
CACHED_JSON_MAX = 512
_attributes_json: dict[tuple[tuple[str, str], ...], str] = {}
_by_identity: dict[int, tuple[dict[str, str], str]] = {}


def attributes_json(attributes: dict[str, str]) -> str:
    """Compact JSON text of an attributes dict.

    A gateway sees the same few attribute sets over and over (one per topic and
    QoS), so their text is cached: a dict lookup instead of a JSON encoding per
    FlowFile. The cache is cleared when it reaches 8192 entries, and holds no text
    longer than CACHED_JSON_MAX.
    """
    if not attributes:
        return "{}"
    same = _by_identity.get(id(attributes))
    if same is not None and same[0] is attributes:
        return same[1]  # a dict shared by many FlowFiles (the MQTT source does so)
    key = tuple(attributes.items())
    text = _attributes_json.get(key)
    if text is None:
        text = json.dumps(attributes, separators=(",", ":"))
        if len(text) > CACHED_JSON_MAX:
            return text
        if len(_attributes_json) >= 8192:
            _attributes_json.clear()
        _attributes_json[key] = text
    if len(_by_identity) >= 8192:
        _by_identity.clear()
    # holding the dict keeps its id from being reused by another object meanwhile
    _by_identity[id(attributes)] = (attributes, text)
    return text

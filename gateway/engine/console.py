"""What the web console shows beyond /api/status: the topics seen recently and the
recent history of each component's counters (the sparklines).

Both belong to the process (`gateway.app.Gateway`), so they carry across reloads, and
both are bounded: at most `TopicsSeen.limit` topics, whose names hold at most
`TopicsSeen.max_bytes` (an MQTT topic may have 64 KiB), with a payload preview of PREVIEW
bytes each, and SERIES_POINTS points per series.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from gateway.core.flowfile import FlowFile
from gateway.engine.status import Snapshot

PREVIEW = 256  # bytes of the last payload kept per topic
TOPIC_BYTES = 1 << 20  # bytes of topic names kept: 2,000 topics of 512 bytes on average
RATE_EVERY = 10.0  # seconds between two points of a topic's rate
SERIES_EVERY = 10.0  # seconds between two points of a series
SERIES_POINTS = 90  # 15 minutes


class _Topic:
    __slots__ = ("count", "last_seen", "mark", "payload", "rate", "size")

    def __init__(self) -> None:
        self.count = 0
        self.last_seen = 0.0
        self.payload = b""
        self.size = 0
        self.mark = 0  # `count` when the rate was last worked out
        self.rate = 0.0  # FlowFiles per second over the last RATE_EVERY seconds


def preview_text(shown: bytes, cut: bool) -> str | None:
    """`shown` as text when it is UTF-8, else None (show it as hex). When `shown` is the
    first part of a longer payload (`cut`), the cut may fall inside a character: the
    character's first bytes are then dropped, so that long text is still shown as text."""
    try:
        return shown.decode("utf-8")
    except UnicodeDecodeError as err:
        if cut and err.reason == "unexpected end of data" and len(shown) - err.start < 4:
            return shown[: err.start].decode("utf-8")  # the bytes before decoded already
        return None


class TopicsSeen:
    """The topics of what the engine committed lately (the console's topic tree): per
    topic the FlowFiles counted, the rate, when last seen and the start of the last
    payload. At most `limit` topics: when full, the longest unseen tenth goes; and their
    names hold at most `max_bytes` (UTF-8): past it, the longest unseen go until it fits."""

    def __init__(
        self,
        limit: int = 2000,
        clock: Callable[[], float] = time.time,
        max_bytes: int = TOPIC_BYTES,
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self._clock = clock
        self._topics: dict[str, _Topic] = {}
        self._bytes = 0  # of the names of `_topics`
        self._rated_at = clock()

    def note(self, flowfiles: Iterable[FlowFile]) -> None:
        """One committed batch: a count per topic and the last FlowFile of each."""
        batch = list(flowfiles)
        if not batch:
            return
        now = self._clock()
        counts = Counter(ff.topic for ff in batch)
        last = {ff.topic: ff for ff in batch}
        topics = self._topics
        for topic, n in counts.items():
            entry = topics.get(topic)
            if entry is None:
                size = _name_bytes(topic)
                if len(topics) >= self.limit or self._bytes + size > self.max_bytes:
                    self._make_room(size)
                entry = topics[topic] = _Topic()
                self._bytes += size
            entry.count += n
            entry.last_seen = now
            ff = last[topic]
            entry.payload = bytes(ff.content[:PREVIEW])
            entry.size = len(ff.content)
        if now - self._rated_at >= RATE_EVERY:
            self._rate(now)

    def _rate(self, now: float) -> None:
        span = now - self._rated_at
        for entry in self._topics.values():
            entry.rate = (entry.count - entry.mark) / span
            entry.mark = entry.count
        self._rated_at = now

    def _make_room(self, size: int) -> None:
        """Room for a topic whose name has `size` bytes: the longest unseen tenth goes
        when `limit` is reached, and, when the names would hold over `max_bytes`, the
        longest unseen until they hold at most nine tenths of it. So a tenth of either
        comes between two calls, each of which sorts every topic: the sort is paid once
        for many new topics, not for each."""
        by_age = sorted(self._topics, key=lambda t: self._topics[t].last_seen)
        tenth = max(1, self.limit // 10) if len(self._topics) >= self.limit else 0
        budget = self.max_bytes
        if self._bytes + size > self.max_bytes:
            budget -= self.max_bytes // 10
        for done, topic in enumerate(by_age):
            if done >= tenth and self._bytes + size <= budget:
                break
            del self._topics[topic]
            self._bytes -= _name_bytes(topic)

    def rows(
        self, keep: Callable[[str], bool], routes: Callable[[str], list[str]], limit: int
    ) -> list[dict[str, Any]]:
        """The topics `keep` takes, sorted, at most `limit`, each with the routes it
        matches. A payload is given as text when it is UTF-8, else as hex."""
        now = self._clock()
        if now - self._rated_at >= 2 * RATE_EVERY:
            self._rate(now)  # quiet since: the rates fall to what really came
        out = []
        for topic in sorted(t for t in self._topics if keep(t))[:limit]:
            entry = self._topics[topic]
            row: dict[str, Any] = {
                "topic": topic,
                "count": entry.count,
                "rate": round(entry.rate, 2),
                "last_seen": entry.last_seen,
                "size": entry.size,
                "truncated": entry.size > len(entry.payload),
                "routes": routes(topic),
            }
            text = preview_text(entry.payload, row["truncated"])
            if text is None:
                row["payload_hex"] = entry.payload.hex()
            else:
                row["payload"] = text
            out.append(row)
        return out

    def __len__(self) -> int:
        return len(self._topics)


def _name_bytes(topic: str) -> int:
    return len(topic.encode("utf-8", "surrogatepass"))


class Series:
    """The last SERIES_POINTS values, one each SERIES_EVERY seconds, of each component's
    counters (sources: produced; sinks: delivered, depth; the gateway: ingested). A
    component gone from the config keeps its points until they are SERIES_POINTS old."""

    def __init__(self) -> None:
        self._series: dict[str, deque[int]] = {}
        self._taken = 0

    def sample(self, snap: Snapshot) -> None:
        values = {"gateway ingested": snap.gateway.ingested}
        for name, s in snap.sources.items():
            values[f"source {name} produced"] = s.produced
        for name, k in snap.sinks.items():
            values[f"sink {name} delivered"] = k.delivered
            values[f"sink {name} depth"] = k.depth
        self._taken += 1
        for key, value in values.items():
            points = self._series.get(key)
            if points is None:
                points = self._series[key] = deque(maxlen=SERIES_POINTS)
            points.append(value)
        for key in [k for k in self._series if k not in values]:
            points = self._series[key]
            points.append(points[-1] if points else 0)
            if len(set(points)) <= 1 and len(points) == SERIES_POINTS:
                del self._series[key]  # gone long enough

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_s": SERIES_EVERY,
            "series": {key: list(points) for key, points in self._series.items()},
        }

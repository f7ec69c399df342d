"""The console's read-only JSON beyond /api/status, as functions the web server calls:

GET /api/topics?filter=F&limit=N   the topics seen lately that match filter F (default
                 `#`), at most N (default 500, at most 2000): count, rate, last seen, the
                 start of the last payload (text, or hex when it is not UTF-8) and the
                 routes of the running config that match each
GET /api/routes/match?topic=T      which routes of the running config match topic T
GET /api/series                    the sparklines: a point every 10 s of each source's
                 produced, each sink's delivered and depth, the gateway's ingested (15 min)

Each returns (HTTP status, JSON-ready document); a bad query is a 400 with `errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gateway.core.topics import matches, validate_filter, validate_topic
from gateway.engine.console import Series, TopicsSeen

MAX_ROWS = 2000

Answer = tuple[int, dict[str, Any]]


class ConsoleView(Protocol):
    """What these read of the running gateway (`gateway.app.Gateway`)."""

    topics: TopicsSeen
    series: Series

    def route_match(self, topic: str) -> list[str]: ...


def topics(view: ConsoleView, query: Mapping[str, str]) -> Answer:
    topic_filter = query.get("filter") or "#"
    problem = validate_filter(topic_filter)
    if problem:
        return 400, {"errors": [f"filter {topic_filter!r}: {problem}"]}
    try:
        limit = int(query.get("limit", "500"))
    except ValueError:
        return 400, {"errors": ["limit: a whole number, e.g. limit=500"]}
    limit = max(1, min(limit, MAX_ROWS))
    rows = view.topics.rows(lambda t: matches(topic_filter, t), view.route_match, limit)
    return 200, {
        "filter": topic_filter,
        "topics": rows,
        "seen": len(view.topics),
        "kept_at_most": view.topics.limit,
    }


def route_match(view: ConsoleView, query: Mapping[str, str]) -> Answer:
    topic = query.get("topic")
    if not topic:
        return 400, {"errors": ["topic: which topic, e.g. ?topic=plant/line1/temp"]}
    problem = validate_topic(topic)
    if problem:
        return 400, {"errors": [f"topic {topic!r}: {problem}"]}
    return 200, {"topic": topic, "routes": view.route_match(topic)}


def series(view: ConsoleView) -> Answer:
    return 200, view.series.to_json()

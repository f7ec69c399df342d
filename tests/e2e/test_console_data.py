"""The console's topic tree, route matching and sparklines from a real gateway:
/api/topics, /api/routes/match and /api/series."""

from __future__ import annotations

import urllib.error
import uuid
from typing import Any

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.test_reload_diff import base, publish

pytestmark = pytest.mark.e2e


def test_topics_seen_and_the_routes_they_match(mosquitto: Any, gateway_factory: Any) -> None:
    name = f"tree{uuid.uuid4().hex[:8]}"
    gw = gateway_factory(base(mosquitto, name))
    gw.start()
    publish(mosquitto.port, f"{name}/a", 5)
    publish(mosquitto.port, f"{name}/other", 2)
    topics = wait_for(
        lambda: len((t := gw.get(f"/api/topics?filter={name}/%23"))["topics"]) == 2 and t,
        20,
        "two topics in the tree",
    )
    rows = {r["topic"]: r for r in topics["topics"]}
    assert rows[f"{name}/a"]["count"] == 5 and rows[f"{name}/a"]["routes"] == ["first"]
    assert rows[f"{name}/a"]["payload"] == '{"n": 4}'
    assert rows[f"{name}/other"]["routes"] == []  # seen, but no route takes it
    assert gw.get(f"/api/routes/match?topic={name}/a") == {
        "topic": f"{name}/a",
        "routes": ["first"],
    }
    with pytest.raises(urllib.error.HTTPError) as refused:
        gw.get(f"/api/routes/match?topic={name}/%2B")
    assert refused.value.code == 400
    refused.value.close()
    series = gw.get("/api/series")
    assert series["interval_s"] == 10 and isinstance(series["series"], dict)
    assert gw.stop() == 0

"""The console's topic tree, route matching and sparklines from a real gateway:
/api/topics, /api/routes/match and /api/series."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import paho.mqtt.client as paho
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


def _post(gw: Any, path: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.web_port}{path}", data=body, method="POST"
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def test_a_dead_letter_in_full_as_hex_then_purged(mosquitto: Any, gateway_factory: Any) -> None:
    name = f"dead{uuid.uuid4().hex[:8]}"
    config = base(mosquitto, name)
    config["routes"]["first"]["processors"] = [{"type": "json"}]
    gw = gateway_factory(config)
    gw.start()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{name}")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.publish(f"{name}/a", b"\xff\x00<b>", qos=1).wait_for_publish(10)
        client.publish(f"{name}/a", "€" * 30000, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    dead = wait_for(lambda: len(d := gw.get("/api/dead-letters")) == 2 and d, 20, "2 letters")
    seq = next(d["seq"] for d in dead if d["bytes"] == 5)
    # long text: the first 64 KiB, still text though the cut falls inside a character ...
    euro = next(d["seq"] for d in dead if d["bytes"] == 90000)
    long = gw.get(f"/api/dead-letters/{euro}")
    assert long["truncated"] and long["bytes"] == 90000 and long["content"] == "€" * 21845
    # ... and all of it as a download, never as a page
    url = f"http://127.0.0.1:{gw.web_port}/api/dead-letters/{euro}/content"
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.read() == "€".encode() * 30000
        assert answer.headers["Content-Type"] == "application/octet-stream"
        assert answer.headers["Content-Disposition"].startswith("attachment")
    assert _post(gw, "/api/dead-letters/purge", json.dumps({"seqs": [euro]}).encode())[0] == 200
    one = gw.get(f"/api/dead-letters/{seq}")
    assert one["content_hex"] == "ff003c623e" and "content" not in one
    assert (
        one["topic"] == f"{name}/a"
        and "not valid UTF-8" in one["reason"]
        and one["truncated"] is False
    )
    assert _post(gw, "/api/dead-letters/purge", b'{"seqs": "all"}')[0] == 400
    assert _post(gw, "/api/dead-letters/purge", json.dumps({"seqs": [seq]}).encode()) == (
        200,
        {"action": "purge", "count": 1, "missing": []},
    )
    with pytest.raises(urllib.error.HTTPError) as gone:
        gw.get(f"/api/dead-letters/{seq}")
    assert gone.value.code == 404
    gone.value.close()
    assert gw.stop() == 0

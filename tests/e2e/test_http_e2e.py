"""HTTP in and out through the real `edge-stream` process: POST /ingest answered 200 is
durable (kill -9 right after, the data is delivered after the restart), the refusals, and
the webhook sink against a real receiver that answers 500 then 200 (everything arrives)
and 400 (the FlowFile is in the dead letters with the status and the answer's body)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests import servers
from tests.e2e.harness import free_port, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-ingest-token-0123456789"


def post(port: int, path: str, body: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
    sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **headers}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers=sent, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def received_ids(receiver: servers.HttpReceiver) -> list[str]:
    return [e["id"] for r in receiver.received() for e in json.loads(r["body"])]


def test_ingest_is_durable_and_the_webhook_delivers(
    gateway_factory: Any, http_receiver: servers.HttpReceiver
) -> None:
    port = free_port()
    gw = gateway_factory(
        {
            "sources": {"api": {"type": "http", "listen": f"127.0.0.1:{port}", "tokens": [TOKEN]}},
            "routes": {"all": {"match": "#", "sinks": ["hook"]}},
            "sinks": {
                "hook": {
                    "type": "http",
                    "url": f"{http_receiver.url}/in",
                    "retry": {"initial": "100ms", "max": "500ms"},
                }
            },
        }
    )
    gw.start()

    # 500 twice, then 200: everything arrives.
    http_receiver.control(500, times=2)
    ids = []
    for i in range(5):
        status, answer = post(port, f"/ingest/plant/m{i}", json.dumps({"i": i}).encode())
        assert status == 200, answer
        ids += answer["ids"]
    wait_for(lambda: set(received_ids(http_receiver)) >= set(ids), 30, "the 5 FlowFiles")

    # 200 then kill -9: the data is in the store and goes out after the restart.
    http_receiver.control(503)  # the webhook holds nothing back meanwhile: it is down
    status, answer = post(port, "/ingest/plant/k", b'[{"k": 1}, {"k": 2}]')
    assert status == 200
    gw.kill()
    http_receiver.control(200)
    gw.start()
    wait_for(lambda: set(received_ids(http_receiver)) >= set(answer["ids"]), 30, "the killed pair")

    # Refusals through the real process: nothing stored.
    assert post(port, "/ingest/a", b"{}", Authorization="Bearer nope-nope-nope-nope")[0] == 401
    assert post(port, "/ingest/a", b"{" + b" " * (2 << 20) + b"}")[0] == 413
    assert post(port, "/ingest/a", b"{}", **{"Content-Type": "text/csv"})[0] == 415
    assert post(port, "/ingest/a", b"{oops")[0] == 400
    assert post(port, "/ingest/a/%2B", b"{}")[0] == 400

    # A 400 from the webhook: the FlowFile goes to the dead letters with status and body.
    http_receiver.control(400, times=1, body="temperature out of range")
    status, answer = post(port, "/ingest/plant/bad", b'{"t": 9999}')
    assert status == 200
    (dead,) = wait_for(lambda: gw.get("/api/dead-letters"), 30, "the dead letter")
    assert dead["id"] == answer["ids"][0]
    assert "400" in dead["reason"] and "temperature out of range" in dead["reason"]
    refused = gw.status()["sources"]["api"]["refused"]
    assert refused == {"401": 1, "413": 1, "415": 1, "400": 2}
    assert TOKEN not in gw.log_path.read_text()
    assert TOKEN not in json.dumps(gw.get("/api/config"))  # the config view masks `tokens`
    assert gw.stop() == 0


def test_the_webhook_waits_as_long_as_retry_after_says(
    gateway_factory: Any, http_receiver: servers.HttpReceiver
) -> None:
    """A 429 with Retry-After: 2, then a 503 with Retry-After: 1: the sink's own backoff
    (100 ms) would come back much sooner; the receiver's log shows each retry came at
    least that long after the refused attempt, with the same Idempotency-Key, and then
    everything arrived."""
    port = free_port()
    gw = gateway_factory(
        {
            "sources": {"api": {"type": "http", "listen": f"127.0.0.1:{port}", "tokens": [TOKEN]}},
            "routes": {"all": {"match": "#", "sinks": ["hook"]}},
            "sinks": {
                "hook": {
                    "type": "http",
                    "url": f"{http_receiver.url}/in",
                    "retry": {"initial": "100ms", "max": "10s"},
                }
            },
        }
    )
    gw.start()
    http_receiver.control(429, times=1, headers={"Retry-After": "2"})
    status, answer = post(port, "/ingest/plant/r", b'[{"r": 1}, {"r": 2}, {"r": 3}]')
    assert status == 200, answer
    wait_for(lambda: http_receiver.requests(), 30, "the first attempt")
    http_receiver.control(503, times=1, headers={"Retry-After": "1"})
    wait_for(lambda: set(received_ids(http_receiver)) >= set(answer["ids"]), 30, "the batch")
    first, second, third = http_receiver.requests()
    assert [first["status"], second["status"], third["status"]] == [429, 503, 200]
    assert second["at"] - first["at"] >= 2.0
    assert third["at"] - second["at"] >= 1.0
    assert (
        first["key"] == second["key"] == third["key"] == f"{answer['ids'][0]}..{answer['ids'][2]}"
    )
    assert received_ids(http_receiver) == answer["ids"]
    assert "retry after 2 s" in gw.log_path.read_text()
    assert gw.stop() == 0

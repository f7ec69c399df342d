"""A sink key set in a combination where the sink does not read it is refused at
check-config in one line naming the key and when it applies, instead of being silently
ignored (a technician sets it and nothing happens)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sinks.contract import config_problems

pytestmark = pytest.mark.unit

REDIS = {"type": "redis", "url": "redis://127.0.0.1:6379/0"}
HTTP = {"type": "http", "url": "http://127.0.0.1:8080/in"}
MQTT = {"type": "mqtt", "url": "mqtt://127.0.0.1:1883"}
FILE = {"type": "file", "path": "out.jsonl"}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({**REDIS, "mode": "stream", "value": "payload"},
         "value: value applies only with mode: list or publish"),
        ({**REDIS, "mode": "hash", "value": "payload"},
         "value: value applies only with mode: list or publish"),
        ({**REDIS, "mode": "hash", "maxlen": 10},
         "maxlen: maxlen applies only with mode: stream or list"),
        ({**REDIS, "mode": "publish", "maxlen": 0},
         "maxlen: maxlen applies only with mode: stream or list"),
        ({**HTTP, "mode": "each", "content_type": "text/plain"},
         "content_type: content_type applies only with body: payload"),
        ({**MQTT, "protocol": 4, "session_expiry": "7d"},
         "session_expiry: session_expiry applies only with protocol: 5 (MQTT 3.1.1 has no"
         " session expiry)"),
        ({**MQTT, "clean_session": True, "session_expiry": "7d"},
         "session_expiry: session_expiry applies only with clean_session: false (a clean"
         " session is not kept)"),
        ({**FILE, "rotate_bytes": 0, "keep": 10},
         "keep: keep applies only with rotation (rotate_bytes or rotate_interval)"),
    ],
)  # fmt: skip
def test_a_key_not_read_there_is_refused(keys: dict[str, Any], expected: str) -> None:
    _, problems = config_problems(**{"kind": keys.pop("type"), "name": "out"}, **keys)
    assert problems == [f"sinks.out.{expected}"]


@pytest.mark.parametrize(
    "keys",
    [
        {**REDIS, "mode": "list", "value": "payload", "maxlen": 10},
        {**REDIS, "mode": "publish", "value": "payload"},
        {**REDIS, "mode": "stream", "maxlen": 0},
        {**REDIS, "mode": "hash", "value": "envelope", "maxlen": 100000},  # the defaults
        {**HTTP, "mode": "each", "body": "payload", "content_type": "text/plain"},
        {**HTTP, "content_type": "application/json"},
        {**MQTT, "protocol": 5, "session_expiry": "7d"},
        {**MQTT, "protocol": 4, "clean_session": True},
        {**FILE, "rotate_bytes": 0, "rotate_interval": "1h", "keep": 10},
        {**FILE, "keep": 10},
        {**FILE, "rotate_bytes": 0, "keep": 5},
    ],
)
def test_the_same_keys_where_the_sink_reads_them_pass(keys: dict[str, Any]) -> None:
    _, problems = config_problems(**{"kind": keys.pop("type"), "name": "out"}, **keys)
    assert problems == []

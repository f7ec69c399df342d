"""The `nats` source's config checks, subject-to-topic mapping and message ids (no server)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.load import load
from gateway.config.schema import Problems, build_component
from gateway.core.component import Context
from gateway.core.topics import validate_topic
from gateway.sinks.nats import topic_tokens
from gateway.sources.nats import NatsSource, NatsSourceConfig, message_flowfile_id, subject_topic

pytestmark = pytest.mark.unit

SERVERS = ["nats://127.0.0.1:4222"]


def config_problems(**keys: Any) -> tuple[Any, list[str]]:
    problems = Problems()
    config = build_component("source", {"type": "nats", **keys}, ("sources", "fleet"), problems)
    return config, [f"{'.'.join(map(str, path))}: {message}" for path, message in problems.items]


def test_a_valid_config_has_no_problems_and_its_defaults() -> None:
    config, problems = config_problems(servers=SERVERS, stream="FLEET")
    assert problems == []
    assert isinstance(config, NatsSourceConfig)
    assert (config.batch, config.wait, config.ack_wait, config.deliver, config.topic) == (
        500,
        1.0,
        30.0,
        "all",
        "{subject}",
    )
    source = NatsSource(config, Context(name="fleet.in", kind="source", gateway_id="pi 01"))
    assert source.durable == "edge-pi_01-fleet_in"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"stream": "A.B"}, "stream: 'A.B': a stream name has no spaces"),
        ({"stream": "A B"}, "a stream name has no spaces"),
        ({"stream": ""}, "a stream name has no spaces"),
        ({"subject": "a..b"}, "subject: 'a..b': a subject has no empty tokens"),
        ({"subject": "a.>.b"}, "'>' the whole last token"),
        ({"subject": "a.b*"}, "'*' is a whole token"),
        ({"durable": "my.consumer"}, "durable: 'my.consumer': a consumer name has no spaces"),
        ({"deliver": "last"}, "deliver"),
        ({"batch": 0}, "batch: must be between 1 and 10000"),
        ({"batch": 10001}, "batch: must be between 1 and 10000"),
        ({"wait": "10ms"}, "wait: must be between 50ms and 60s"),
        ({"ack_wait": "500ms"}, "ack_wait: must be between 1s and 1h"),
        ({"topic": "fleet/{device}"}, "unknown placeholder {device}"),
        ({"topic": "fleet/{subject"}, "topic: 'fleet/{subject' has a lone '{'"),
        ({"topic": "fleet/+/{subject}"}, "topic"),
        ({"servers": []}, "name at least one server"),
        ({"servers": ["nats://gw:pw@h:4222"]}, "not in the URL"),
        ({"user": "gw", "password": "p", "token": "t"}, "use one way to log in"),
        ({"cert_file": "c.pem"}, "cert_file and key_file go together"),
        ({"streams": "A"}, "streams"),
    ],
)
def test_config_problems(keys: dict[str, Any], message: str) -> None:
    keys = {"servers": SERVERS, "stream": "FLEET", **keys}
    _config, problems = config_problems(**keys)
    assert any(message in p for p in problems), problems


def test_a_missing_stream_key_is_a_problem() -> None:
    _config, problems = config_problems(servers=SERVERS)
    assert any(p.startswith("sources.fleet.stream") for p in problems), problems


def test_secrets_are_not_in_the_config_repr() -> None:
    config, problems = config_problems(
        servers=SERVERS, stream="FLEET", user="gw", password="hunter2-secret"
    )
    assert problems == []
    assert "hunter2-secret" not in repr(config)
    config, _ = config_problems(servers=SERVERS, stream="FLEET", token="t0ken-secret")
    assert "t0ken-secret" not in repr(config)


@pytest.mark.parametrize("topic", ["sensors/line 1/temp.c", "a//b", "x/*/>/100%", "/lead", "plain"])
def test_a_subject_the_sink_wrote_reads_back_as_its_topic(topic: str) -> None:
    back = subject_topic(topic_tokens(topic))
    expected = "/".join(level or "_" for level in topic.split("/"))
    assert back == expected
    assert validate_topic(back) is None


def test_slashes_and_wildcards_inside_a_token_become_underscores() -> None:
    assert subject_topic("a.b%2Fc.d+e.f#") == "a/b_c/d_e/f_"


def test_message_ids_are_stable_uuid7_and_differ_by_stream_seq_and_scope() -> None:
    first = message_flowfile_id("FLEET", 7, 1_700_000_000_000, "pi-01/fleet")
    assert first == message_flowfile_id("FLEET", 7, 1_700_000_000_000, "pi-01/fleet")
    assert first[14] == "7" and first[19] in "89ab"
    others = {
        message_flowfile_id("FLEET", 8, 1_700_000_000_000, "pi-01/fleet"),
        message_flowfile_id("OTHER", 7, 1_700_000_000_000, "pi-01/fleet"),
        message_flowfile_id("FLEET", 7, 1_700_000_000_000, "pi-02/fleet"),
    }
    assert first not in others and len(others) == 3


def test_a_subject_outside_create_stream_of_a_sink_of_the_config_still_loads(
    tmp_path: Any,
) -> None:
    """A nats source whose subject no subject a nats sink's `create_stream` names can match
    was refused; but the stream may exist already with more subjects (a stream is not
    changed by create_stream), or be made by two sinks (the last one's subjects were
    taken for all), and the source works: such a config loads."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway: {{id: gw1, data_dir: '{tmp_path}/data'}}\n"
        "web: {enabled: false}\n"
        "sources:\n"
        "  a: {type: nats, servers: [nats://n1:4222], stream: EDGE, subject: cmd.>}\n"
        "  e: {type: nats, servers: [nats://n1:4222], stream: OTHER, subject: x.y}\n"
        "routes:\n  r: {match: ['#'], sinks: [f, g, h]}\n"
        "sinks:\n"
        "  f: {type: nats, servers: [nats://n1:4222], create_stream: {name: EDGE}}\n"
        "  g: {type: nats, servers: [nats://n1:4222], subject: 'x.{topic}',"
        " create_stream: {name: OTHER, subjects: ['x.>']}}\n"
        "  h: {type: nats, servers: [nats://n1:4222], subject: 'other.{topic}',"
        " create_stream: {name: OTHER, subjects: ['other.>']}}\n"
    )
    config = load(str(path))
    assert set(config.sources or {}) == {"a", "e"}

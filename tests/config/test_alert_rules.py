"""The `alerts:` section's own checks: rule names and the components a rule watches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import secrets
from gateway.config.load import load
from gateway.core.errors import ConfigError

pytestmark = pytest.mark.unit

HEAD = """\
gateway: {id: t}
sources:
  field: {type: mqtt, topics: ["a/#"]}
  plc: {type: modbus, devices: {plc1: {url: "tcp://127.0.0.1:502", registers: {a: {address: 1}}}}}
sinks:
  db: {type: file, path: /tmp/x.jsonl}
alerts:
  rules:
"""


def problem(tmp_path: Path, rules: str) -> str:
    path = tmp_path / "g.yaml"
    path.write_text(HEAD + rules)
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    return str(info.value).replace(str(path), "g.yaml")


def test_a_mistyped_built_in_rule_is_named_with_a_suggestion(tmp_path: Path) -> None:
    """It said only that `condition` was required, as for a rule of one's own."""
    assert problem(tmp_path, "    sink_backlogg: {older_than: 5m}\n") == (
        "g.yaml:9: alerts.rules.sink_backlogg: no built-in rule is named 'sink_backlogg'"
        " (did you mean 'sink_backlog'?); a rule of your own needs a condition:"
    )


@pytest.mark.parametrize(
    ("name", "condition"),
    [('""', "sink_backlog"), ('"a b:c/#"', "sink_backlog"), ('"x.y"', None), ('"late!"', None)],
)
def test_a_rule_name_follows_the_rule_of_component_names(
    tmp_path: Path, name: str, condition: str | None
) -> None:
    """`""` and `a b:c/#` loaded (alerts are keyed `<rule>:<subject>`), or were refused for
    a missing condition only: now one line with the key path, as a source's name."""
    rule = f"{{condition: {condition}}}" if condition else "{older_than: 5m}"
    shown = name.strip('"')
    assert problem(tmp_path, f"    {name}: {rule}\n") == (
        f"g.yaml:9: alerts.rules.{shown}: names use letters, digits, '_' and '-'"
    )


def test_a_rule_of_ones_own_needs_a_condition(tmp_path: Path) -> None:
    assert "alerts.rules.late.condition: required when" in problem(
        tmp_path, "    late: {older_than: 5m}\n"
    )


def test_components_must_name_what_the_rule_watches(tmp_path: Path) -> None:
    """A mistyped name was taken: the rule then watched nothing, silently."""
    assert problem(tmp_path, "    sink_failing: {components: [dbb]}\n") == (
        "g.yaml:9: alerts.rules.sink_failing.components.0: no sink named 'dbb' is defined"
        " (did you mean 'db'?)"
    )
    assert "no source or Modbus device named 'plc2'" in problem(
        tmp_path, "    source_offline: {components: [plc1, field, plc2]}\n"
    )
    assert "only sink_backlog, sink_failing and source_offline rules watch components" in (
        problem(tmp_path, "    store_budget: {components: [db]}\n")
    )


def test_components_may_name_sinks_sources_and_modbus_devices(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        HEAD
        + "    sink_backlog: {components: [db]}\n"
        + "    source_offline: {components: [field, plc, plc1]}\n"
    )
    rules = load(path, environ={}).alerts.effective()
    assert list(rules["source_offline"][1].components) == ["field", "plc", "plc1"]


def test_the_alerts_topic_must_be_one_to_publish_on(tmp_path: Path) -> None:
    """A wildcard was taken: the broker then drops the status connection at each event."""
    path = tmp_path / "g.yaml"
    for topic, expected in {
        "plant/+/alerts": "must not contain the wildcards '+' or '#'",
        "edge-stream/{id}/alerts": "only {gateway} is replaced (by the gateway id)",
        # the broker closed the status connection at each event (`offline` each time)
        "alerts/\x01/{gateway}": "holds U+0001, a control character",
        # refused (PUBACK 0x87) for ever: no event after it went
        "$SYS/{gateway}/alerts": "beginning with $SYS or $share are the broker's, not a client's",
        "$SYS": "beginning with $SYS or $share are the broker's",
        "$SYSTEM/a": "beginning with $SYS or $share",  # Mosquitto refuses it too
        "$share/g/{gateway}": "beginning with $SYS or $share",
    }.items():
        path.write_text(f"gateway: {{id: t}}\nalerts:\n  mqtt_topic: {json.dumps(topic)}\n")
        with pytest.raises(ConfigError) as info:
            load(path, environ={})
        assert f"g.yaml:3: alerts.mqtt_topic: {topic!r} is not a topic to publish on" in str(
            info.value
        )
        assert expected in str(info.value)
    # the PUBLISH could not be encoded (its topic's length is two bytes): the alerts
    # crashed at each event; the line quotes the start of it only
    path.write_text(f"gateway: {{id: t}}\nalerts:\n  mqtt_topic: {'a' * 70000}\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value) == (
        f"{path}:3: alerts.mqtt_topic: '{'a' * 59}... is not a topic to publish on: longer"
        " than an MQTT topic may be (65535 bytes, each {gateway} counted as 256, the longest"
        " id)"
    )
    # each {gateway} may be an id of 256 bytes: 77,108 bytes with 300 of them were taken
    for topic, taken in (("a/" + "{gateway}/" * 300 + "alerts", False), ("{gateway}" * 255, True)):
        path.write_text(f"gateway: {{id: t}}\nalerts:\n  mqtt_topic: {json.dumps(topic)}\n")
        if taken:
            assert load(path, environ={}).alerts.mqtt_topic == topic
            continue
        with pytest.raises(ConfigError) as info:
            load(path, environ={})
        assert "longer than an MQTT topic may be" in str(info.value)
    # other topics beginning with '$' are a client's (all of them were refused): AWS IoT
    # Core's Basic Ingest, Azure IoT Hub
    for topic in (
        "site/{gateway}/alarms",
        "$aws/rules/edge_alerts/{gateway}",
        "$iothub/x",
    ):
        path.write_text(f"gateway: {{id: t}}\nalerts:\n  mqtt_topic: {json.dumps(topic)}\n")
        assert load(path, environ={}).alerts.mqtt_topic == topic


def test_a_threshold_of_another_condition_is_refused(tmp_path: Path) -> None:
    """`sink_failing: {older_than: 1m}` was taken and the value ignored, silently."""
    assert problem(tmp_path, "    sink_failing: {for: 1s, older_than: 1m}\n") == (
        "g.yaml:9: alerts.rules.sink_failing.older_than: applies to sink_backlog rules only;"
        " this one watches sink_failing"
    )
    assert "alerts.rules.late.percent: applies to store_budget rules only" in problem(
        tmp_path, "    late: {condition: source_offline, percent: 50}\n"
    )
    assert "alerts.rules.sink_backlog.topic: applies to no_data rules only" in problem(
        tmp_path, "    sink_backlog: {topic: a/b}\n"
    )


def test_a_webhook_url_the_post_cannot_read_is_refused(tmp_path: Path) -> None:
    """`http://[::1/x` passed check-config; the alerts then crashed at each event, with a
    traceback, and no event went anywhere (MQTT neither)."""
    path = tmp_path / "g.yaml"
    for url, expected in {
        "http://[::1/x": "is not a valid URL: Invalid IPv6 URL",
        "http://h:99999/x": "the port must be a number from 1 to 65535",
        "http://": "the host must be written out (http://host/path)",
        "https://:8443/x": "the host must be written out (http://host/path)",
        "http://h:0/x": "the port must be a number from 1 to 65535",
        # urlsplit takes these, yarl (the POST's) does not: they passed check-config
        "http://[::1]x/in": "is not a valid URL: Invalid IPv6 URL",
        "http://hooks\\example.com/in": "is not a valid URL: Invalid URL: backslash ('\\') is"
        " not allowed in the authority component per RFC 3986",
    }.items():
        path.write_text(f"gateway: {{id: t}}\nalerts:\n  webhook: {{url: {json.dumps(url)}}}\n")
        with pytest.raises(ConfigError) as info:
            load(path, environ={})
        assert str(info.value) == f"{path}:3: alerts.webhook.url: {expected}", url
    path.write_text("gateway: {id: t}\nalerts:\n  webhook: {url: 'http://[::1]:8080/in'}\n")
    assert load(path, environ={}).alerts.webhook.url == "http://[::1]:8080/in"


def test_a_webhook_url_refused_does_not_show_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password holding an unencoded '/' ends the user part early, and the rest of it
    reads as the port: urllib's error, quoted in the line, showed the password's start
    ("Port could not be cast to integer value as 'Xy9'"), written plain or as ENC(...)."""
    key = AESGCM.generate_key(bit_length=256)
    monkeypatch.setenv(secrets.ENV_KEY, key.hex())
    path = tmp_path / "g.yaml"
    url = "https://bot:Xy9/s3cretT0ken@hooks.example.com/in"
    for written in (url, secrets.encrypt(url, key), "https://bot:pa\u2100ss@h/in"):
        path.write_text(f"gateway: {{id: t}}\nalerts:\n  webhook: {{url: {json.dumps(written)}}}\n")
        with pytest.raises(ConfigError) as info:
            load(path, environ={})
        assert str(info.value).startswith(f"{path}:3: alerts.webhook.url: "), written
        for piece in ("Xy9", "s3cret", "pa\u2100ss", "ss@"):
            assert piece not in str(info.value), written


def test_a_webhook_timeout_of_0s_is_refused(tmp_path: Path) -> None:
    """It was taken, and aiohttp reads a total of 0 as no timeout at all: a webhook that
    never answered held the event, and every one after it, for ever."""
    path = tmp_path / "g.yaml"
    path.write_text("gateway: {id: t}\nalerts:\n  webhook: {url: 'http://h/in', timeout: 0s}\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value) == f"{path}:3: alerts.webhook.timeout: must be more than 0"


def test_resolve_after_is_5s_unless_set_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("gateway: {id: t}\n")
    assert load(path, environ={}).alerts.resolve_after == 5.0
    path.write_text("gateway: {id: t}\nalerts: {resolve_after: 30s}\n")
    assert load(path, environ={}).alerts.resolve_after == 30.0
    path.write_text("gateway: {id: t}\nalerts: {resolve_after: 2h}\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value) == f"{path}:2: alerts.resolve_after: must be between 0s and 1h"


def test_a_no_data_rule_watches_a_silence_of_1s_at_least(tmp_path: Path) -> None:
    """`for: 0s` was taken: the alert fired at the first look while data flowed, resolved
    when the next message was noted, and fired again, each second."""
    assert problem(tmp_path, "    q: {condition: no_data, topic: a/#, for: 0s}\n") == (
        "g.yaml:9: alerts.rules.q.for: a no_data rule's for is the silence that fires it:"
        " at least 1s (the rules are held against the gateway's state every second)"
    )
    assert "alerts.rules.no_data.for: a no_data rule's for" in problem(
        tmp_path, "    no_data: {topic: a/#, for: 500ms}\n"
    )


def test_a_gateway_id_that_makes_the_alerts_topic_the_brokers_is_refused(
    tmp_path: Path,
) -> None:
    # `{gateway}/alerts` with the id `$SYS`: Mosquitto refuses a client's PUBLISH there,
    # and no event went out; the topic was checked with a stand-in id only.
    path = tmp_path / "g.yaml"
    path.write_text('gateway: {id: "$SYS"}\nalerts: {mqtt_topic: "{gateway}/alerts"}\n')
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value).replace(str(path), "g.yaml") == (
        "g.yaml:2: alerts.mqtt_topic: '{gateway}/alerts' would be '$SYS/alerts' with"
        " gateway.id '$SYS': topics beginning with $SYS or $share are the broker's, not a"
        " client's"
    )


def test_a_rule_problem_is_reported_with_a_webhook_problem(tmp_path: Path) -> None:
    # A webhook key out of its bounds hid every problem of the rules, until it was fixed.
    path = tmp_path / "g.yaml"
    path.write_text(HEAD + "    mine: {for: 1m}\n  webhook: {url: 'http://h/x', queue: 0}\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert [p.replace(str(path), "g.yaml") for p in info.value.problems] == [
        "g.yaml:10: alerts.webhook.queue: must be between 1 and 10000",
        "g.yaml:9: alerts.rules.mine.condition: required when the rule's name is not a"
        " condition (one of sink_backlog, sink_failing, source_offline, no_data,"
        " dead_letters, store_budget)",
    ]

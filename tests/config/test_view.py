"""config show / config diff logic: what is redacted, and how changes are described."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import secrets, view
from gateway.core.errors import ConfigError

pytestmark = pytest.mark.unit

KEY = secrets.new_key()

BASE = """\
gateway: {{data_dir: '{data}', log_level: info}}
web: {{username: admin, password: {web_pw}}}
sources:
  plc1: {{type: mqtt, topics: ["a/#"], password: {mqtt_pw}}}
routes:
  all: {{match: "#", sinks: [warehouse]}}
sinks:
  warehouse: {{type: postgres, dsn: "{dsn}", table: readings}}
"""


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(secrets.ENV_KEY, secrets.key_text(KEY))


def write(tmp_path: Path, name: str, **values: str) -> Path:
    fields = {
        "data": str(tmp_path / "data"),
        "web_pw": "Web-Plain-1",
        "mqtt_pw": secrets.encrypt("Mqtt-Plain-1", KEY),
        "dsn": f"postgresql://gw:{secrets.encrypt('Pg-Plain-1', KEY)}@db/x",
    }
    path = tmp_path / name
    path.write_text(BASE.format(**{**fields, **values}))
    return path


def shown(path: Path, environ: dict[str, str] | None = None) -> tuple[dict, str]:
    config, raw = view.load_view(path, environ or {})
    data = view.show(config, raw)
    return data, yaml.safe_dump(data)


def test_show_redacts_enc_values_secret_keys_and_dsn_passwords(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml")
    data, text = shown(path)
    for plain in ("Web-Plain-1", "Mqtt-Plain-1", "Pg-Plain-1", "ENC("):
        assert plain not in text
    assert data["web"]["password"] == "***"  # a key named password
    assert data["web"]["username"] == "admin"
    assert data["sources"]["plc1"]["password"] == "***"  # written ENC(...)
    assert data["sinks"]["warehouse"]["dsn"] == "postgresql://gw:***@db/x"
    # Defaults filled in; unset secrets stay visibly unset.
    assert data["sinks"]["warehouse"]["batch"]["max_rows"] == 1000
    assert data["mqtt"]["password"] is None


def test_show_redacts_a_plain_dsn_password_and_key_value_dsns(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", dsn="postgresql://gw:Plain-Dsn-9@db/x")
    data, text = shown(path)
    assert data["sinks"]["warehouse"]["dsn"] == "postgresql://gw:***@db/x"
    assert "Plain-Dsn-9" not in text
    assert view.redact({"dsn": "host=db user=gw password=Kv-9 dbname=x"}) == {
        "dsn": "host=db user=gw password=*** dbname=x"
    }
    # Any depth, any of the names; booleans and empty values are not secrets.
    assert view.redact({"a": {"b": [{"api_token": "T", "secret": 7, "use_token": True}]}}) == {
        "a": {"b": [{"api_token": "***", "secret": "***", "use_token": True}]}
    }
    assert view.redact({"password": ""}) == {"password": ""}


def test_show_redacts_credential_headers_written_plainly() -> None:
    """An http sink's or rest source's `Authorization` or `X-Api-Key` header written
    plainly was shown by /api/config and the console; other headers stay readable."""
    headers = {
        "Authorization": "Bearer Hdr-Plain-1",
        "X-Api-Key": "Hdr-Plain-2",
        "x-auth-token": "Hdr-Plain-3",
        "Cookie": "sid=Hdr-Plain-4",
        "Content-Language": "de",
    }
    assert view.redact({"sinks": {"hook": {"type": "http", "headers": headers}}}) == {
        "sinks": {
            "hook": {
                "type": "http",
                "headers": {
                    "Authorization": "***",
                    "X-Api-Key": "***",
                    "x-auth-token": "***",
                    "Cookie": "***",
                    "Content-Language": "de",
                },
            }
        }
    }
    assert not secrets.is_secret_key("key")  # the redis sink's key template
    url = "https://api.example/v1/x?site=7&api_key=Q-Plain-1&access_token=Q-Plain-2#top"
    assert view.redact({"url": url}) == {
        "url": "https://api.example/v1/x?site=7&api_key=***&access_token=***#top"
    }
    assert not secrets.is_secret_key("routing_key")


def test_show_applies_overrides_and_redacts_an_enc_override(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", web_pw="x")
    env = {
        "EDGE_STREAM__GATEWAY__LOG_LEVEL": "debug",
        "EDGE_STREAM__SINKS__WAREHOUSE__TABLE": secrets.encrypt("env_table_plain", KEY),
    }
    data, text = shown(path, env)
    assert data["gateway"]["log_level"] == "debug"
    assert data["sinks"]["warehouse"]["table"] == "***"
    assert "env_table_plain" not in text


def test_an_invalid_config_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml")
    path.write_text(path.read_text().replace("table: readings", "table: read-ings"))
    with pytest.raises(ConfigError) as info:
        view.load_view(path, {})
    assert "sinks.warehouse.table" in str(info.value)


def diff(tmp_path: Path, env: dict[str, str] | None = None, **new: str) -> list[str]:
    old_config, old_raw = view.load_view(write(tmp_path, "old.yaml"), env or {})
    new_config, new_raw = view.load_view(write(tmp_path, "new.yaml", **new), env or {})
    return view.diff(old_config, old_raw, new_config, new_raw)


def test_diff_of_equal_configs_is_empty_even_when_secrets_are_re_encrypted(
    tmp_path: Path,
) -> None:
    # Each encrypt call gives a different ENC(...) text for the same plaintext.
    assert diff(tmp_path) == []


def test_diff_names_each_component_and_section_key(tmp_path: Path) -> None:
    old = view.load_view(write(tmp_path, "old.yaml"), {})
    path = write(tmp_path, "new.yaml")
    path.write_text(
        path.read_text()
        .replace("log_level: info", "log_level: debug")
        .replace("table: readings}", "table: readings, batch: {max_rows: 500}}")
        .replace("  plc1: {type: mqtt", "  plc2: {type: mqtt")
        .replace("routes:\n", "routes:\n  alarms: {match: 'alarm/#', sinks: [warehouse]}\n")
    )
    new = view.load_view(path, {})
    assert view.diff(*old, *new) == [
        "gateway.log_level: changed (info -> debug)",
        "sources.plc1: removed",
        "sources.plc2: added",
        "routes.alarms: added",
        "sinks.warehouse: changed (batch.max_rows 1000 -> 500)",
    ]


def test_diff_shows_durations_as_written_and_a_changed_processor_by_its_key(
    tmp_path: Path,
) -> None:
    # It said `buffer.batch_linger: changed (0.005 -> 0.02)` and a route's processors as
    # one JSON list cut off at 200 characters, the changed window size somewhere inside.
    window = "{type: window, kind: tumbling, size: %s, aggregates: {v: [avg]}}"
    old = view.load_view(write(tmp_path, "old.yaml"), {})
    path = write(tmp_path, "new.yaml")
    path.write_text(
        path.read_text()
        .replace("sinks: [warehouse]}", f"sinks: [warehouse], processors: [{window % '1m'}]}}")
        .replace("log_level: info}", "log_level: info}\nbuffer: {batch_linger: 5ms}")
    )
    before = view.load_view(path, {})
    path.write_text(
        path.read_text().replace("size: 1m", "size: 90s").replace("linger: 5ms", "linger: 1s")
    )
    after = view.load_view(path, {})
    assert view.diff(*before, *after) == [
        "buffer.batch_linger: changed (5ms -> 1s)",
        "routes.all: changed (processors.0.size 1m -> 90s)",
    ]
    # A processor added is the whole list, as before; the lines name no float seconds.
    added = view.diff(*old, *after)
    assert added[0] == "buffer.batch_linger: changed (5ms -> 1s)"
    assert added[1].startswith('routes.all: changed (processors [] -> [{"type":"window"')


def test_diff_shows_sizes_as_written(tmp_path: Path) -> None:
    # Durations read `5ms -> 1s`, but sizes `1073741824 -> 536870912`.
    before = view.load_view(write(tmp_path, "old.yaml"), {})
    path = write(tmp_path, "new.yaml")
    path.write_text(
        path.read_text()
        .replace("log_level: info}", "log_level: info}\nbuffer: {max_bytes: 512MiB}")
        .replace("table: readings}", "table: readings, batch: {max_bytes: 1000000}}")
    )
    assert view.diff(*before, *view.load_view(path, {})) == [
        "buffer.max_bytes: changed (1GiB -> 512MiB)",
        "sinks.warehouse: changed (batch.max_bytes 4MiB -> 1000000)",
    ]


def test_a_changed_secret_shows_as_changed_never_its_text(tmp_path: Path) -> None:
    lines = diff(
        tmp_path,
        web_pw="Web-Plain-2",
        mqtt_pw=secrets.encrypt("Mqtt-Plain-2", KEY),
        dsn=f"postgresql://gw:{secrets.encrypt('Pg-Plain-2', KEY)}@db/x",
    )
    assert lines == [
        "sources.plc1: changed (password changed)",
        "sinks.warehouse: changed (dsn changed)",
        "web.password: changed",
    ]
    # A DSN whose visible part changed shows it, password still masked.
    lines = diff(tmp_path, dsn=f"postgresql://gw:{secrets.encrypt('Pg-Plain-1', KEY)}@db2/x")
    assert lines == [
        "sinks.warehouse: changed (dsn postgresql://gw:***@db/x -> postgresql://gw:***@db2/x)"
    ]


ALERTS = """\
alerts:
  rules:
    sink_backlog: {older_than: 5m}
    behind: {condition: sink_backlog, components: [warehouse]}
"""


def test_an_added_or_removed_alert_rule_is_one_line_not_its_defaults(tmp_path: Path) -> None:
    # Adding a rule listed every key of it with its default, none of them written:
    # `alerts.rules.behind.per_minute: changed (absent -> 10)`, `...topic: changed
    # (absent -> null)`, and the reload's changes `alerts changed (rules.behind.condition,
    # rules.behind.for, ...)`.
    old = view.load_view(write(tmp_path, "old.yaml"), {})
    path = write(tmp_path, "new.yaml")
    path.write_text(path.read_text() + ALERTS)
    new = view.load_view(path, {})
    assert view.diff(*old, *new) == [
        "alerts.rules.sink_backlog: added",
        "alerts.rules.behind: added",
    ]
    assert view.diff(*new, *old) == [
        "alerts.rules.sink_backlog: removed",
        "alerts.rules.behind: removed",
    ]
    assert view.changed_keys(old[0].alerts, new[0].alerts) == [
        "rules.sink_backlog added",
        "rules.behind added",
    ]
    # A changed key is said as before, with its values.
    path.write_text(path.read_text().replace("older_than: 5m", "older_than: 7m"))
    changed = view.load_view(path, {})
    assert view.diff(*new, *changed) == ["alerts.rules.sink_backlog.older_than: changed (5m -> 7m)"]
    assert view.changed_keys(new[0].alerts, changed[0].alerts) == ["rules.sink_backlog.older_than"]


def test_a_block_added_inside_a_component_is_one_key(tmp_path: Path) -> None:
    # Any mapping one side lacks, not only an alert rule: a Modbus register added.
    text = (
        "gateway: {data_dir: '%s'}\n"
        "sources:\n"
        "  plc: {type: modbus, url: 'tcp://127.0.0.1:502', registers: {%s}}\n"
    )
    one = "t: {address: 0, type: int16}"
    path = tmp_path / "gw.yaml"
    path.write_text(text % (tmp_path / "data", one))
    old = view.load_view(path, {})
    path.write_text(text % (tmp_path / "data", f"{one}, p: {{address: 1, type: int16}}"))
    new = view.load_view(path, {})
    assert view.diff(*old, *new) == ["sources.plc: changed (registers.p added)"]
    assert view.diff(*new, *old) == ["sources.plc: changed (registers.p removed)"]

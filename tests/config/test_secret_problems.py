"""No problem message of a config quotes a secret: ENC(...) values, password keys, DSNs."""

from __future__ import annotations

import textwrap
import urllib.parse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import secrets
from gateway.config.load import _Secrets, load
from gateway.config.schema import safe_redis_url, safe_url
from gateway.core.errors import ConfigError

pytestmark = pytest.mark.unit

PLAIN = "Plain-Secret7"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> bytes:
    key = AESGCM.generate_key(bit_length=256)
    monkeypatch.setenv(secrets.ENV_KEY, key.hex())
    return key


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load(path, environ=environ or {})
    return list(caught.value.problems)


def assert_hidden(messages: list[str], *plaintexts: str) -> None:
    for message in messages:
        for plaintext in plaintexts:
            for form in (plaintext, urllib.parse.quote(plaintext, safe="")):
                assert form.lower() not in message.lower(), message


def test_a_hint_that_quotes_the_value_lowercased_shows_it_as_enc(
    tmp_path: Path, key: bytes
) -> None:
    upper = "Plant7Readings"  # an SQL identifier, but not lowercase
    enc = secrets.encrypt(upper, key)
    messages = problems(
        tmp_path,
        f"""\
        sinks:
          w: {{type: postgres, dsn: "postgresql://gw@127.0.0.1/x", table: "{enc}"}}
        """,
    )
    assert_hidden(messages, upper)
    assert any("sinks.w.table: 'ENC(...)' must be lowercase" in m for m in messages), messages


def test_a_value_quoted_by_any_check_is_shown_as_enc(tmp_path: Path, key: bytes) -> None:
    enc = secrets.encrypt(PLAIN, key)
    messages = problems(
        tmp_path,
        f"""\
        gateway: {{log_level: "{enc}"}}
        sources:
          s: {{type: mqtt, topics: ["{enc}/#/a"]}}
          t: {{type: mqtt, topics: ["a"], qos: "{enc}"}}
        routes:
          r: {{match: "a/#", sinks: [w, "{enc}"]}}
        sinks:
          w: {{type: postgres, dsn: "postgresql://gw@127.0.0.1/x", table: "{enc}"}}
          f: {{type: file, path: a, batch: {{max_rows: "{enc}"}}}}
          r2: {{type: redis, url: "{enc}"}}
        """,
    )
    assert_hidden(messages, PLAIN)
    joined = "\n".join(messages)
    # Each problem is still reported, quoting the value as the file writes it.
    for expected in (
        "gateway.log_level: 'ENC(...)' is not one of 'debug'",
        "sources.s.topics.0: 'ENC(...)/#/a' is not a valid topic filter",
        "sources.t.qos: 'ENC(...)' is not one of 0, 1, 2",
        "routes.r.sinks.1: no sink named 'ENC(...)'",
        "sinks.w.table: 'ENC(...)' is not a valid SQL identifier",
        "sinks.f.batch.max_rows: expected an integer, got 'ENC(...)'",
        "sinks.r2.url: 'ENC(...)' must start with redis://",
    ):
        assert expected in joined, joined


def test_a_short_secret_and_a_suggestion_close_to_it(tmp_path: Path, key: bytes) -> None:
    messages = problems(
        tmp_path,
        f"""\
        gateway: {{log_level: "{secrets.encrypt("ab", key)}"}}
        sinks:
          w: {{type: redis, url: "redis://h/0", mode: "{secrets.encrypt("strem", key)}"}}
        """,
    )
    assert messages[0].endswith(
        "gateway.log_level: 'ENC(...)' is not one of 'debug', 'info', 'warning', 'error'"
    )
    # "did you mean 'stream'?" would tell how the secret reads
    assert messages[1].endswith(
        "sinks.w.mode: 'ENC(...)' is not one of 'stream', 'list', 'hash', 'publish'"
    )


def test_a_dsn_password_piece_read_as_a_port_is_not_quoted(tmp_path: Path, key: bytes) -> None:
    # An unencoded '/' ends the authority: urllib then reads "pw" as the port and says so.
    secret = "pw/Plain#9"
    enc = secrets.encrypt(secret, key)
    messages = problems(
        tmp_path,
        f"""\
        sources:
          s: {{type: mqtt, topics: ["a/#"], url: "mqtt://u:{enc}@[::1"}}
        sinks:
          w: {{type: postgres, dsn: "postgresql://gw:{enc}@127.0.0.1:5432/x"}}
          m: {{type: mqtt, topic: out, url: "mqtts://gw:{enc}@127.0.0.1:1883"}}
          r: {{type: redis, url: "redis://gw:{enc}@127.0.0.1:6379/0"}}
        """,
    )
    assert_hidden(messages, secret, "'pw'", "Plain")
    joined = "\n".join(messages)
    assert "sources.s.url: 'mqtt://u:***@[::1' is not an mqtt://" in joined
    assert "sinks.m.url: 'mqtts://gw:***@127.0.0.1:1883' is not an mqtt://" in joined
    assert "sinks.r.url: the port is not a number from 1 to 65535; a password holding" in joined


def test_a_plain_password_key_is_masked(tmp_path: Path) -> None:
    messages = problems(
        tmp_path,
        f"""\
        mqtt: {{password: ["{PLAIN}"]}}
        web: {{password: {{a: "{PLAIN}"}}}}
        sinks: {{m: {{type: mqtt, url: "mqtt://h:1883", topic: t, password: 2019-07-13}}}}
        """,
    )
    # a password that YAML reads as a date was printed: "got datetime.date(2019, 7, 13)"
    assert messages == [
        f"{tmp_path / 'gateway.yaml'}:1: mqtt.password: expected a string, got ['***']",
        f"{tmp_path / 'gateway.yaml'}:3: sinks.m.password: expected a string, got ***",
        f"{tmp_path / 'gateway.yaml'}:2: web.password: expected a string, got {{'a': '***'}}",
    ]


def test_an_override_holding_a_secret(tmp_path: Path, key: bytes) -> None:
    enc = secrets.encrypt(PLAIN, key)
    messages = problems(
        tmp_path,
        "sinks: {w: {type: file, path: a}}\n",
        {"EDGE_STREAM__GATEWAY__LOG_LEVEL": enc},
    )
    assert messages == [
        "EDGE_STREAM__GATEWAY__LOG_LEVEL: gateway.log_level: 'ENC(...)' is not one of"
        " 'debug', 'info', 'warning', 'error'"
    ]


def test_every_form_of_the_plaintext_is_scrubbed() -> None:
    found = _Secrets()
    secret = "p@ss w/'d"
    found.add(("sinks", "w", "dsn"), secret, "ENC(...)")
    at = ("sinks", "w", "dsn")
    for text in (
        f"{secret!r} is wrong",
        f"{'x' + secret!r} is wrong",  # escaped inside a longer repr
        f"got {urllib.parse.quote(secret, safe='')}",
        f"got {urllib.parse.quote_plus(secret)}",
        f"use {secret.upper()}",
    ):
        scrubbed = found.scrub(at, text)
        assert "ss w" not in scrubbed.lower() and "ss%20w" not in scrubbed.lower(), scrubbed
        assert "ss+w" not in scrubbed.lower(), scrubbed
        assert "ENC(...)" in scrubbed, scrubbed
    # A short secret is replaced alone only in its own key's problems: "1" elsewhere stays.
    found.add(("mqtt", "password"), "1", "***")
    assert found.scrub(("mqtt", "password"), "got [1]") == "got [***]"
    assert found.scrub(("sinks", "w", "batch"), "line 1 is bad") == "line 1 is bad"


def test_a_short_secret_is_masked_only_as_a_whole_token(tmp_path: Path) -> None:
    # A one- or two-letter password was masked inside other words of its key's messages:
    # "the port is not a number" read "th*** port is not a numb***r" for the password "e".
    messages = problems(tmp_path, 'sinks: {w: {type: redis, url: "redis://gw:e@h:99999/0"}}\n')
    assert messages[0].endswith("sinks.w.url: the port is not a number from 1 to 65535")
    found = _Secrets()
    at = ("web", "password")
    found.add(at, "ab", "***")
    assert found.scrub(at, "ab: about 'ab', AB, :ab@, ab1 x_ab") == (
        "***: about '***', ***, :***@, ab1 x_***"
    )
    found.add(at, "!", "***")  # no letter or digit to stand apart from: masked anywhere
    assert found.scrub(at, "a!b") == "a***b"
    # a longer one is still masked anywhere, inside words too
    found.add(at, PLAIN, "***")
    assert found.scrub(at, f"x{PLAIN.lower()}y and aboutab") == "x***y and aboutab"


def test_a_secret_without_a_key_says_where_the_key_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(secrets.ENV_KEY, raising=False)
    other = AESGCM.generate_key(bit_length=256)
    messages = problems(
        tmp_path,
        f"""\
        gateway: {{data_dir: "{tmp_path}/data"}}
        mqtt: {{password: "{secrets.encrypt(PLAIN, other)}"}}
        sinks:
          w: {{type: file, path: "{secrets.encrypt("out.jsonl", other)}"}}
        """,
    )
    path = tmp_path / "gateway.yaml"
    assert messages == [
        f"{path}:2: mqtt.password: the value holds ENC(...) but there is no key: put the key"
        f" it was encrypted with in {tmp_path}/data/secret.key (mode 0600) or set"
        f" EDGE_STREAM_SECRET_KEY; to start anew, make a key with 'edge-stream secret keygen"
        f" -c {path}' and encrypt the value again with 'edge-stream secret encrypt -c {path}'",
        f"{path}:4: sinks.w.path: the value holds ENC(...) but there is no key (see the first"
        " such line)",
    ]


def test_a_short_secret_is_replaced_where_it_stands_alone_not_inside_words() -> None:
    found = _Secrets()
    at = ("sources", "api", "bearer_token")
    found.add(at, "t", "***")
    # was "use bearer_***oken or username and password, no*** bo***h"
    message = "use bearer_token or username and password, not both"
    assert found.scrub(at, message) == message
    assert found.scrub(at, "got t, T and [t]; 't' too") == "got ***, *** and [***]; '***' too"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://h:99999/x?token=t", "http://h:99999/x"),
        ("http://[::1]:8080/in?token=t#part", "http://[::1]:8080/in"),
        ("redis://:pw@h:6379/0?password=pw", "redis://:***@h:6379/0"),
        ("amqp://edge:pw@/plant", "amqp://edge:***@/plant"),
        # A password holding '/', '?' or '#' ends the user part early for a URL parser.
        ("redis://gw:p/w@h/0", "redis://gw:***@h/0"),
        ("http://gw:1?2@h/x", "http://gw:***@h/x"),
        ("https://h/in?owner=a@b.example&token=t", "https://h/in"),
        ("gw:pw@h/in?token=t", "gw:***@h/in"),
        # an '@' after the host with no user part before it: the path, query or fragment
        ("https://h/in?token=t#a@b", "https://h/in"),
        (
            "https://h/users/me@x.example/ev?key=t&o=ops@x.example",
            "https://h/users/me@x.example/ev",
        ),
        ("https://registry.example/@scope/pkg", "https://registry.example/@scope/pkg"),
        # a name holding '/' is still a user part; it ends at the first '@' after its ':'
        ("amqps://tenant/gw:S3cretPw@broker", "amqps://tenant/gw:***@broker"),
        ("https://hub/dev:S3cretPw@h/in", "https://hub/dev:***@h/in"),
        ("https://gw:p/w@h/in?o=a@b&token=t", "https://gw:***@h/in"),
        ("https://gw:p/w@h/in?x@y=t", "https://gw:***@h/in"),
    ],
)
def test_a_url_in_a_message_shows_no_password_nor_query(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_a_redis_url_in_a_message_keeps_its_database() -> None:
    # redis-py takes `?db=N` over the path's number: without it, the wrong database was named
    assert safe_redis_url("redis://:pw@cache/0?db=3&password=pw") == "redis://:***@cache/0?db=3"
    assert safe_redis_url("redis://cache?password=pw") == "redis://cache"
    assert safe_redis_url("redis://cache/0?db=%32") == "redis://cache/0?db=2"
    assert safe_redis_url("redis://cache/0#?db=3") == "redis://cache/0"


def test_a_quoted_number_hint_is_left_out_for_a_secret(tmp_path: Path, key: bytes) -> None:
    # "(a number: write 500 without quotes)" said "write ENC(...) without quotes"
    enc = secrets.encrypt("500", key)
    path = tmp_path / "gateway.yaml"
    path.write_text(f'sinks:\n  f: {{type: file, batch: {{max_rows: "{enc}"}}}}\n')
    assert problems(tmp_path, path.read_text()) == [
        f"{path}:2: sinks.f.batch.max_rows: expected an integer, got 'ENC(...)'"
    ]
    # nor the one that says how to write a number YAML reads as text ("write 8")
    enc = secrets.encrypt("08", key)
    path.write_text(f'sinks:\n  f: {{type: file, batch: {{max_rows: "{enc}"}}}}\n')
    assert problems(tmp_path, path.read_text()) == [
        f"{path}:2: sinks.f.batch.max_rows: expected an integer, got 'ENC(...)'"
    ]

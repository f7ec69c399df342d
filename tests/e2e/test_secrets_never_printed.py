"""A password written ENC(...) is never printed: grep every output of a real gateway for it.

A PostgreSQL sink logs in with a wrong password (the server really checks it: a
role-specific scram-sha-256 line in pg_hba.conf), then, after a reload, with the right
one and delivers. Both passwords are ENC(...) values in the config and hold characters
a DSN must percent-encode. Neither password (nor its percent-encoded form, nor a piece of
it) may be in any line of check-config (ok or refusing: a refused config quotes the
values of the keys it refuses), `config show`, `config diff`, `reload`, any log line of
`edge-stream run` at DEBUG (its connection errors, a refused reload), or any byte of the
web page, /api/status (last_error, the last reload's errors), /metrics or
/api/dead-letters.

A config holding ENC(...) values with no key is refused, by check-config and by `run`,
with one line saying where the key goes and how to make one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# Every piece a '/', '?' or '#' could cut a password into holds a marker, so that a
# message quoting a piece of it (as urllib quotes what it takes for a port) is found too.
WRONG = "Wr0ngQz/Wr0ngQz#Wr0ngQz?"
RIGHT = "R1ghtQz/R1ghtQz#R1ghtQz@"
MARKERS = ("Wr0ngQz", "R1ghtQz", "Bad7Tbl")


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_STREAM")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env=environ,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def encrypt(config: Path, plaintext: str) -> str:
    """ENC(...) of `plaintext` with the config's key, read from stdin as a user would."""
    done = cli("secret", "encrypt", "-", "-c", str(config), stdin=plaintext)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def gw_role(postgres: Any) -> Iterator[str]:
    """A role that must give its password (RIGHT) over TCP and may create tables in
    `edge`; the fixture trusts every other user."""
    role = f"gw_{uuid.uuid4().hex[:10]}"
    hba = postgres.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{original}")
    quoted = RIGHT.replace("'", "''")
    postgres.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{quoted}'; SELECT pg_reload_conf()")
    postgres.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    try:
        yield role
    finally:
        hba.write_text(original)
        postgres.execute("SELECT pg_reload_conf()")


def raw(gw: GatewayProcess, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.web_port}{path}", timeout=5) as response:
        return str(response.read().decode())


def leaks(outputs: list[str]) -> list[str]:
    """The lines of `outputs` holding a password, its percent-encoded form or a marker."""
    forms = set(MARKERS)
    for secret in (WRONG, RIGHT):
        forms |= {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    return [
        line
        for text in outputs
        for line in text.splitlines()
        if any(form.lower() in line.lower() for form in forms)
    ]


def test_an_enc_dsn_password_appears_in_no_output(
    mosquitto: Any,
    postgres: Any,
    gw_role: str,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
) -> None:
    table = f"secret_{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {
        "gateway": {"log_level": "debug"},
        "mqtt": {"url": mosquitto.url},
        "sources": {"plant": {"type": "mqtt", "topics": ["nopw/#"], "client_id": "gw-nopw"}},
        "routes": {"all": {"match": "nopw/#", "sinks": ["warehouse"]}},
        "sinks": {
            "warehouse": {
                "type": "postgres",
                "dsn": "set below",
                "table": table,
                "retry": {"initial": "200ms", "max": "1s"},
            }
        },
    }
    gw = gateway_factory(config)
    conf = str(gw.config_path)
    made = cli("secret", "keygen", "-c", conf)
    assert made.returncode == 0, made.stderr
    assert (gw.data_dir / "secret.key").stat().st_mode & 0o777 == 0o600
    wrong_enc = encrypt(gw.config_path, urllib.parse.quote(WRONG, safe=""))
    right_enc = encrypt(gw.config_path, urllib.parse.quote(RIGHT, safe=""))
    location = f"127.0.0.1:{postgres.port}/{postgres.database}"
    config["sinks"]["warehouse"]["dsn"] = f"postgresql://{gw_role}:{wrong_enc}@{location}"
    gw.config_path.write_text(yaml.safe_dump(config))
    outputs: list[str] = []

    def run(*args: str, ok: bool) -> None:
        done = cli(*args)
        assert (done.returncode == 0) is ok, (args, done.stdout, done.stderr)
        outputs.extend([done.stdout, done.stderr])

    run("check-config", "-c", conf, ok=True)
    run("config", "show", "-c", conf, ok=True)
    assert f"postgresql://{gw_role}:***@{location}" in outputs[-2]
    fixed = json.loads(json.dumps(config))
    fixed["sinks"]["warehouse"]["dsn"] = f"postgresql://{gw_role}:{right_enc}@{location}"
    fixed_path = gw.folder / "fixed.yaml"
    fixed_path.write_text(yaml.safe_dump(fixed))
    run("config", "diff", "-c", conf, str(fixed_path), ok=True)
    assert "sinks.warehouse: changed (dsn changed)" in outputs[-2]

    # Configs refused for a key holding a secret: the values they quote hold it.
    bad_table = encrypt(gw.config_path, "Bad7Tbl-Name")  # not an SQL identifier, not lowercase
    refusals = {
        "table": ("sinks", "warehouse", "table", bad_table),
        "port": (
            "sinks",
            "warehouse",
            "dsn",
            f"postgresql://{gw_role}:{right_enc}@127.0.0.1:99999/{postgres.database}",
        ),
        "unencoded": (
            "sinks",
            "warehouse",
            "dsn",
            f"postgresql://{gw_role}:{encrypt(gw.config_path, WRONG)}@{location}",
        ),
        "mqtt": (
            "sources",
            "plant",
            "url",
            f"mqtt://gw:{encrypt(gw.config_path, WRONG)}@127.0.0.1:{mosquitto.port}",
        ),
        "level": ("gateway", "log_level", None, encrypt(gw.config_path, RIGHT)),
    }
    for name, (section, entry, key, value) in refusals.items():
        bad = json.loads(json.dumps(config))
        if key is None:
            bad[section][entry] = value
        else:
            bad[section][entry][key] = value
        path = gw.folder / f"bad-{name}.yaml"
        path.write_text(yaml.safe_dump(bad))
        refused = cli("check-config", "-c", str(path))
        assert refused.returncode == 1, (name, refused.stdout, refused.stderr)
        assert f"{section}.{entry}" in refused.stderr, refused.stderr
        outputs += [refused.stdout, refused.stderr]
        if name == "table":  # quoted as the file writes it
            assert "sinks.warehouse.table: 'ENC(...)' is not a valid SQL identifier" in (
                refused.stderr
            )

    gw.start()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.publish("nopw/a", json.dumps({"seq": 1}), qos=1).wait_for_publish(10)
        sink = wait_for(
            lambda: (s := gw.sink("warehouse"))["last_error"] and s, 30, "the login to be refused"
        )
        assert "password authentication failed" in sink["last_error"], sink
        outputs += [raw(gw, p) for p in ("/", "/api/status", "/metrics", "/api/dead-letters")]

        # A reload refused for a key holding a secret: its problems are logged and shown.
        gw.config_path.write_text((gw.folder / "bad-table.yaml").read_text())
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: (gw.status()["config"].get("last_reload") or {}).get("outcome") == "refused",
            30,
            "the reload refused",
        )
        status = raw(gw, "/api/status")
        assert "'ENC(...)' is not a valid SQL identifier" in status
        outputs.append(status)
        run("reload", "-c", conf, ok=False)  # the same file, asked through the API

        # The right password, by a reload: the sink logs in and delivers.
        fixed_path.replace(gw.config_path)
        run("reload", "-c", conf, ok=True)
        client.publish("nopw/b", json.dumps({"seq": 2}), qos=1).wait_for_publish(10)
        wait_for(
            lambda: postgres.fetch(f"SELECT count(*) FROM {table}")[0][0] == 2,
            30,
            "both messages in PostgreSQL",
        )
        outputs += [raw(gw, p) for p in ("/", "/api/status", "/metrics", "/api/dead-letters")]
    finally:
        client.loop_stop()
        client.disconnect()
    assert gw.stop() == 0
    log = gw.log_path.read_text()
    assert "password authentication failed" in log  # the error was logged...
    assert "reload refused" in log
    outputs.append(log)
    assert leaks(outputs) == []  # ...and never with the password


def test_enc_values_without_a_key_are_refused_saying_how_to_make_one(
    tmp_path: Path,
) -> None:
    keyed = tmp_path / "keyed"
    keyed.mkdir()
    made = cli("secret", "keygen", "--key-file", str(keyed / "secret.key"))
    assert made.returncode == 0, made.stderr
    enc = cli("secret", "encrypt", "-", "--key-file", str(keyed / "secret.key"), stdin=WRONG)
    config = tmp_path / "gateway.yaml"
    data_dir = tmp_path / "data"  # holds no key, and EDGE_STREAM_SECRET_KEY is not set
    config.write_text(
        yaml.safe_dump(
            {
                "gateway": {"data_dir": str(data_dir)},
                "mqtt": {"username": "gw", "password": enc.stdout.strip()},
                "sinks": {"w": {"type": "file", "path": "out.jsonl"}},
            }
        )
    )
    for command in ("check-config", "run"):
        refused = cli(command, "-c", str(config))
        assert refused.returncode == 1, refused
        assert "Traceback" not in refused.stderr
        assert (
            f"mqtt.password: the value holds ENC(...) but there is no key: put the key it was"
            f" encrypted with in {data_dir}/secret.key (mode 0600) or set EDGE_STREAM_SECRET_KEY;"
            f" to start anew, make a key with 'edge-stream secret keygen -c {config}'"
        ) in refused.stderr, refused.stderr
        assert leaks([refused.stdout, refused.stderr]) == []

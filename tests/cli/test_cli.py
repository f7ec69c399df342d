"""The `edge-stream` command, run as a subprocess as a user runs it.

check-config on good and bad files; secret keygen/encrypt and a gateway that logs in to
PostgreSQL with the ENC(...) password; dead-letters list/show/replay/purge and store
stats against the store of a real, running gateway; every line those commands and store
reset print, on a store file with no gateway running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from gateway.config import secrets
from tests.e2e.harness import GatewayProcess, free_port, wait_for
from tests.e2e.harness import publish_qos1 as publish
from tests.servers import make_pki

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# file:line: key.path: message
PROBLEM = re.compile(
    r"^\s*(?:edge-stream: )?(?P<file>[^:\s]+):(?P<line>\d+): (?P<path>[\w.-]+): (?P<message>.+)$"
)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `edge-stream ARGS` (as `python -m gateway.cli`); never raises on the exit code."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_STREAM")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def problems(stderr: str) -> list[tuple[str, int, str, str]]:
    """The (file, line, key path, message) lines check-config printed."""
    out = []
    for line in stderr.splitlines():
        m = PROBLEM.match(line)
        if m:
            out.append((m["file"], int(m["line"]), m["path"], m["message"]))
    return out


def mqtt_gateway(
    mosquitto: Any, name: str, sinks: dict[str, Any], processors: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1, "client_id": f"gw-{name}"}
        },
        "routes": {
            "readings": {"match": f"{name}/#", "processors": processors or [], "sinks": list(sinks)}
        },
        "sinks": {k: {**v, "retry": {"initial": "200ms", "max": "1s"}} for k, v in sinks.items()},
    }


# -- check-config -----------------------------------------------------------------------

GOOD = """\
gateway: {id: pi-01, data_dir: ./data}
mqtt: {url: "mqtt://127.0.0.1:1883"}
sources:
  plant: {type: mqtt, topics: ["sensors/+/telemetry"], qos: 1}
routes:
  telemetry:
    match: "sensors/+/telemetry"
    processors: [{type: json}]
    sinks: [warehouse, archive]
sinks:
  warehouse: {type: postgres, dsn: "postgresql://gw@db/telemetry", table: readings}
  archive: {type: file, path: telemetry.jsonl}
"""


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}: ok (1 source, 1 route, 2 sinks)" in result.stdout


def test_check_config_names_file_line_and_key_path_of_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        GOOD.replace('match: "sensors/+/telemetry"', 'match: "sensors/#/telemetry"')
        .replace("table: readings}", "table: read-ings}")
        .replace("path: telemetry.jsonl}", "path: telemetry.jsonl, rotate_byte: 1MiB}")
    )
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    found = {(line, key): message for _file, line, key, message in problems(result.stderr)}
    assert all(f == str(path) for f, *_ in problems(result.stderr)), result.stderr
    assert set(found) == {
        (7, "routes.telemetry.match"),
        (11, "sinks.warehouse.table"),
        (12, "sinks.archive.rotate_byte"),
    }, result.stderr
    assert (
        "'sensors/#/telemetry' is not a valid MQTT topic filter"
        in found[(7, "routes.telemetry.match")]
    )
    assert "'read-ings' is not a valid SQL identifier" in found[(11, "sinks.warehouse.table")]
    assert found[(12, "sinks.archive.rotate_byte")] == (
        "unknown key (did you mean 'rotate_bytes'?)"
    )
    assert "the config has 3 problems:" in result.stderr


def test_check_config_refuses_a_route_to_a_sink_that_is_not_defined(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("sinks: [warehouse, archive]", "sinks: [warehouse, archiv]"))
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 1
    assert problems(result.stderr) == [
        (
            str(path),
            9,
            "routes.telemetry.sinks.1",
            "no sink named 'archiv' is defined under sinks: (did you mean 'archive'?)",
        )
    ], result.stderr


def test_check_config_reads_the_tls_files_of_the_http_source_and_the_console(
    tmp_path: Path,
) -> None:
    # Before: check-config said ok; only `run` failed (the console), or the http source
    # stopped once the gateway ran.
    pki = make_pki(tmp_path / "pki")
    text = tmp_path / "text.pem"
    text.write_text("not a certificate")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.server_key_file.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass-phrase"),
        )
    )
    missing = tmp_path / "missing.crt"
    token = "0123456789abcdef0123"

    def write(api: tuple[Path, Path], ingest: tuple[Path, Path], web: tuple[Path, Path]) -> Path:
        sources = "".join(
            f"  {name}:\n    type: http\n    listen: 127.0.0.1:{port}\n"
            f"    tokens: [{token}]\n    tls_cert: {cert}\n    tls_key: {key}\n"
            for name, port, (cert, key) in (("api", 18088, api), ("ingest", 18089, ingest))
        )
        text = GOOD.replace("routes:\n", sources + "routes:\n", 1)
        path = tmp_path / "tls.yaml"
        path.write_text(text + f"web:\n  tls_cert: {web[0]}\n  tls_key: {web[1]}\n")
        return path

    def line(path: Path, start: str, key: str) -> int:
        """The line of `key` (as `  key:` or `    key:`) after the line starting `start`."""
        lines = path.read_text().splitlines()
        first = next(n for n, text in enumerate(lines) if text.startswith(start))
        return next(n for n in range(first, len(lines)) if lines[n].strip().startswith(key)) + 1

    good = (pki.server_cert_file, pki.server_key_file)
    result = cli("check-config", "-c", str(write(good, good, good)))
    assert result.returncode == 0, result.stderr

    path = write(
        (missing, pki.server_key_file), (pki.server_cert_file, pki.key_file), (text, encrypted)
    )
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 1
    assert problems(result.stderr) == [
        (
            str(path),
            line(path, "  api:", "tls_cert:"),
            "sources.api.tls_cert",
            f"{missing} cannot be read (No such file or directory)",
        ),
        (
            str(path),
            line(path, "  ingest:", "tls_key:"),
            "sources.ingest.tls_key",
            f"{pki.key_file} is not the key of tls_cert {pki.server_cert_file}",
        ),
        (
            str(path),
            line(path, "web:", "tls_cert:"),
            "web.tls_cert",
            f"{text} holds no PEM certificate",
        ),
    ], result.stderr

    path = write(good, good, (pki.server_cert_file, encrypted))
    result = cli("check-config", "-c", str(path))
    assert problems(result.stderr) == [
        (
            str(path),
            line(path, "web:", "tls_key:"),
            "web.tls_key",
            f"{encrypted} is encrypted (it asks for a passphrase): give the key without one",
        )
    ], result.stderr


def test_check_config_refuses_duplicate_keys_and_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(GOOD + "routes: {}\n")
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 1
    assert f"{path}:13:" in result.stderr and "duplicate key 'routes'" in result.stderr
    path.write_text("sinks: [unclosed\n")
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 1
    assert "invalid YAML" in result.stderr
    result = cli("check-config", "-c", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "cannot read the config file" in result.stderr


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"edge-stream {version('edge-stream')}\n"


def test_a_single_problem_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD.replace("postgresql://gw@db/telemetry", "postgresql://gw@db:99999/t"))
    result = cli("check-config", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr == (
        f"edge-stream: {path}:11: sinks.warehouse.dsn: the port is not a number from 1 to 65535\n"
    )


# -- secrets ------------------------------------------------------------------------------


def test_secret_encrypt_takes_the_config_before_or_after_the_value(tmp_path: Path) -> None:
    key = tmp_path / "k" / "secret.key"
    path = tmp_path / "gateway.yaml"
    path.write_text(f"gateway: {{secret_key_file: '{key}'}}\n" + GOOD.split("\n", 1)[1])
    assert cli("secret", "keygen", "-c", str(path)).returncode == 0
    for args in (["-c", str(path), "pw-1"], ["pw-1", "-c", str(path)]):
        sealed = cli("secret", "encrypt", *args)
        assert sealed.returncode == 0, (args, sealed.stderr)
        assert sealed.stdout.startswith("ENC("), args
        plain = secrets.decrypt(sealed.stdout.strip()[4:-1], secrets.load_key(key) or b"")
        assert plain == "pw-1"
    extra = cli("secret", "encrypt", "a", "b", "-c", str(path))
    assert extra.returncode == 2 and "unrecognized arguments: b" in extra.stderr
    # An empty value made an ENC() of nothing: refused, from the command line or stdin.
    for empty in (
        cli("secret", "encrypt", "", "-c", str(path)),
        cli_in("\n", "secret", "encrypt", "-c", str(path)),
    ):
        assert (empty.returncode, empty.stdout) == (2, "")
        assert (
            empty.stderr == "edge-stream: secret encrypt: the value is empty; nothing encrypted\n"
        )


def cli_in(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`edge-stream ARGS` with `stdin` piped in."""
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


def test_secret_decrypt_and_a_value_from_stdin(tmp_path: Path) -> None:
    key = tmp_path / "k" / "secret.key"
    path = tmp_path / "gateway.yaml"
    path.write_text(f"gateway: {{secret_key_file: '{key}'}}\n" + GOOD.split("\n", 1)[1])
    no_key = cli("secret", "decrypt", "ENC(abc)", "-c", str(path))
    assert no_key.returncode == 1
    assert no_key.stderr == (
        f"edge-stream: no key: there is no {key}; run 'edge-stream secret keygen -c {path}'"
        " or set EDGE_STREAM_SECRET_KEY\n"
    )
    assert cli("secret", "keygen", "-c", str(path)).returncode == 0
    # `-` (before or after -c) or no value at all: the value comes on stdin.
    for args in (["-", "-c", str(path)], ["-c", str(path), "-"], ["-c", str(path)]):
        sealed = cli_in("pw-2\n", "secret", "encrypt", *args)
        assert sealed.returncode == 0, (args, sealed.stderr)
        enc = sealed.stdout.strip()
        assert secrets.decrypt(enc[4:-1], secrets.load_key(key) or b"") == "pw-2"
        opened = cli_in(enc + "\n", "secret", "decrypt", *args)
        assert (opened.returncode, opened.stdout, opened.stderr) == (0, "pw-2\n", ""), args
    # On the command line, and inside a longer value such as a DSN.
    for args in ([enc, "-c", str(path)], ["-c", str(path), f"postgresql://gw:{enc}@db/x"]):
        opened = cli("secret", "decrypt", *args)
        assert opened.returncode == 0, opened.stderr
        assert opened.stdout.strip() in ("pw-2", "postgresql://gw:pw-2@db/x")
    for value, message in [
        ("plain", "the value holds no ENC(...) to decrypt"),
        (secrets.encrypt("x", secrets.new_key()), "cannot decrypt ENC(...): wrong key or"),
        ("ENC(abc", "ENC( has no closing ')'"),
    ]:
        refused = cli("secret", "decrypt", value, "-c", str(path))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"edge-stream: {message}"), refused.stderr
        assert refused.stderr.count("\n") == 1 and refused.stdout == ""


# Makes the pseudo-terminal on fd argv[1] the controlling terminal of a new session, then
# runs the rest of argv on it.
ON_TTY = """
import fcntl, os, sys, termios
os.setsid()
tty = int(sys.argv[1])
fcntl.ioctl(tty, termios.TIOCSCTTY, 0)
for n in (0, 1, 2):
    os.dup2(tty, n)
os.execv(sys.argv[2], sys.argv[2:])
"""


def on_a_terminal(typed: str, *args: str) -> str:
    """Run `edge-stream ARGS` on a pseudo-terminal, type `typed` at its prompt, and
    return everything the terminal showed."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_STREAM")}
    master, slave = pty.openpty()
    command = [sys.executable, "-c", ON_TTY, str(slave), sys.executable, "-m"]
    proc = subprocess.Popen(
        [*command, "gateway.cli", *args],
        cwd=ROOT,
        env=environ,
        stdin=subprocess.DEVNULL,
        pass_fds=(slave,),
    )
    os.close(slave)
    shown = b""
    try:
        while b": " not in shown:
            shown += os.read(master, 1024)
        os.write(master, typed.encode() + b"\n")
        while chunk := os.read(master, 1024):
            shown += chunk
    except OSError:  # EIO: the child has closed the terminal
        pass
    finally:
        os.close(master)
    assert proc.wait(60) == 0, shown
    return shown.decode()


def test_secret_prompts_without_echo_on_a_terminal(tmp_path: Path) -> None:
    key = tmp_path / "secret.key"
    assert cli("secret", "keygen", "--key-file", str(key)).returncode == 0
    shown = on_a_terminal("Typed-Pw-7", "secret", "encrypt", "--key-file", str(key))
    assert shown.startswith("value to encrypt: ")
    assert "Typed-Pw-7" not in shown  # not echoed
    (enc,) = re.findall(r"ENC\([A-Za-z0-9_=-]+\)", shown)
    shown = on_a_terminal(enc, "secret", "decrypt", "-", "--key-file", str(key))
    assert shown.startswith("value to decrypt: ") and enc not in shown
    assert shown.split()[-1] == "Typed-Pw-7"


def test_a_key_file_others_may_read_is_refused_by_every_command(tmp_path: Path) -> None:
    key = tmp_path / "secret.key"
    path = tmp_path / "gateway.yaml"
    assert cli("secret", "keygen", "--key-file", str(key)).returncode == 0
    enc = cli("secret", "encrypt", "pw", "--key-file", str(key)).stdout.strip()
    path.write_text(
        f"gateway: {{secret_key_file: '{key}', data_dir: '{tmp_path}'}}\n"
        f"sinks:\n  a: {{type: file, path: '{enc}'}}\n"
    )
    assert cli("check-config", "-c", str(path)).returncode == 0
    key.chmod(0o644)
    line = f"the key file {key} may be read by other users (mode 0644): run 'chmod 600 {key}'"
    checked = cli("check-config", "-c", str(path))
    assert (checked.returncode, checked.stderr) == (
        1,
        f"edge-stream: {path}:1: gateway.secret_key_file: {line}\n",
    )
    for action in (["encrypt", "x"], ["decrypt", enc], ["rotate"]):
        result = cli("secret", *action, "-c", str(path))
        assert (result.returncode, result.stderr) == (1, f"edge-stream: {line}\n"), action


ROTATE_YAML = """\
# keep this comment; ENC(...) values come from 'edge-stream secret encrypt'
gateway: {{secret_key_file: '{key}', data_dir: '{data}'}}
sinks:
  a: {{type: file, path: "{a}"}}   # and this one
  b:
    type: file
    path: '{b}'
"""


def test_secret_rotate_re_encrypts_the_config_and_keeps_backups(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "secret.key"
    assert cli("secret", "keygen", "--key-file", str(key)).returncode == 0
    old_key = key.read_bytes()
    a = cli("secret", "encrypt", "out-a.jsonl", "--key-file", str(key)).stdout.strip()
    b = cli("secret", "encrypt", "out-b.jsonl", "--key-file", str(key)).stdout.strip()
    path = tmp_path / "gateway.yaml"
    original = ROTATE_YAML.format(key=key, data=tmp_path, a=a, b=b)
    path.write_text(original)
    path.chmod(0o640)
    rotated = cli("secret", "rotate", "-c", str(path))
    assert rotated.returncode == 0, rotated.stderr
    config_backups = list(tmp_path.glob("gateway.yaml.bak-*"))
    key_backups = list(key.parent.glob("secret.key.bak-*"))
    assert len(config_backups) == 1 and len(key_backups) == 1
    assert rotated.stdout == (
        f"rotated 2 ENC(...) values in {path} to a new key in {key} (old ones kept as"
        f" {config_backups[0]} and {key_backups[0]}); a running gateway picks it up on"
        " reload (SIGHUP)\n"
    )
    assert rotated.stderr == ""
    for backup, content in ((config_backups[0], original.encode()), (key_backups[0], old_key)):
        assert backup.read_bytes() == content
        assert backup.stat().st_mode & 0o777 == 0o600
    assert key.read_bytes() != old_key and key.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_mode & 0o777 == 0o640
    text = path.read_text()
    a2, b2 = re.findall(r"ENC\([A-Za-z0-9_=-]+\)", text)
    assert text == ROTATE_YAML.format(key=key, data=tmp_path, a=a2, b=b2)
    assert [cli("secret", "decrypt", v, "-c", str(path)).stdout for v in (a2, b2)] == [
        "out-a.jsonl\n",
        "out-b.jsonl\n",
    ]
    # The old key no longer opens them; the config checks with the new one.
    assert cli("secret", "decrypt", a2, "--key-file", str(key_backups[0])).returncode == 1
    assert cli("check-config", "-c", str(path)).returncode == 0

    # JSON too; a second rotation within the same second keeps its own backups.
    json_path = tmp_path / "gateway.json"
    json_path.write_text(json.dumps(yaml.safe_load(text), indent=2))
    again = cli("secret", "rotate", "-c", str(json_path))
    assert again.returncode == 0, again.stderr
    assert cli("check-config", "-c", str(json_path)).returncode == 0
    assert len(list(key.parent.glob("secret.key.bak-*"))) == 2
    config = json.loads(json_path.read_text())
    assert config["sinks"]["a"]["path"] != a2


def test_secret_rotate_refuses_and_changes_nothing(tmp_path: Path) -> None:
    key = tmp_path / "secret.key"
    path = tmp_path / "gateway.yaml"
    stranger = secrets.encrypt("x", secrets.new_key())
    path.write_text(ROTATE_YAML.format(key=key, data=tmp_path, a="plain", b="plain"))
    no_key = cli("secret", "rotate", "-c", str(path))
    assert no_key.returncode == 1
    assert f"no key: there is no {key}; run 'edge-stream secret keygen -c {path}'" in no_key.stderr
    assert cli("secret", "keygen", "--key-file", str(key)).returncode == 0
    enc = cli("secret", "encrypt", "p", "--key-file", str(key)).stdout.strip()
    key_before = key.read_bytes()
    for a, b, message in [
        ("plain", "plain", f"{path} holds no ENC(...) value; nothing changed"),
        (
            enc,
            stranger,
            f"{path}: line 7: cannot decrypt ENC(...): wrong key or damaged value; nothing changed",
        ),
    ]:
        text = ROTATE_YAML.format(key=key, data=tmp_path, a=a, b=b)
        path.write_text(text)
        refused = cli("secret", "rotate", "-c", str(path))
        assert (refused.returncode, refused.stderr) == (1, f"edge-stream: {message}\n")
        assert path.read_text() == text and key.read_bytes() == key_before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml", "secret.key"]
    from_env = cli("secret", "rotate", "-c", str(path), env={"EDGE_STREAM_SECRET_KEY": "11" * 32})
    assert from_env.returncode == 1
    assert "rotate works on a key file" in from_env.stderr and from_env.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", ":1: the config must be a mapping of sections"),
        ("gateway: [a]\n", ":1: gateway: expected a mapping, got list ['a']"),
        ("gateway: {data_dir: [a]}\n", ":1: gateway.data_dir: expected a string, got ['a']"),
        ('gateway: {id: "x\n', ":1: invalid YAML: the quote opened on this line is not closed"),
    ],
)
def test_secret_commands_report_a_config_they_cannot_use_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    for args in (["encrypt", "pw", "-c", str(path)], ["keygen", "-c", str(path)]):
        result = cli("secret", *args)
        assert result.returncode == 1
        assert result.stderr.startswith(f"edge-stream: {path}{message}"), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr


NOBODY_CHECK = """
import os, pwd, sys
from gateway import cli, registry
registry.find("sink", "file")  # imported while the interpreter's own files are readable
nobody = pwd.getpwnam("nobody")
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)
sys.exit(cli.main(["check-config", "-c", sys.argv[1]]))
"""


def test_a_key_file_the_service_user_cannot_read_is_one_line(tmp_path: Path) -> None:
    """root made the key (mode 0600, here 0000) and the service runs as another user."""
    folder = Path(tempfile.mkdtemp(prefix="edge-key-"))  # a folder `nobody` may enter
    try:
        folder.chmod(0o755)
        key = folder / "secret.key"
        key.write_text("ab" * 32 + "\n")
        key.chmod(0o000)
        path = folder / "gateway.yaml"
        path.write_text(
            f"gateway: {{secret_key_file: '{key}', data_dir: '{folder}'}}\n"
            "sinks:\n  a: {type: file}\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", NOBODY_CHECK, str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert result.stderr == (
            f"edge-stream: {path}:1: gateway.secret_key_file: cannot read the key file {key}:"
            " Permission denied (the user the gateway runs as must be able to read it)\n"
        )
    finally:
        shutil.rmtree(folder)


def pg_connects(dsn: str) -> str | None:
    """None if a client logs in with `dsn`, else the server's error message."""

    async def attempt() -> str | None:
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
        except asyncpg.PostgresError as err:
            return str(err)
        await conn.close()
        return None

    return asyncio.run(attempt())


@pytest.fixture
def pg_password_role(postgres: Any) -> Iterator[tuple[str, str]]:
    """A PostgreSQL role that must give its password over TCP (the fixture trusts every
    other user): the role-specific pg_hba.conf line goes first, so it is the one that
    applies; it is removed again afterwards."""
    role, password = f"gw_{uuid.uuid4().hex[:10]}", "s3cret-Pw-4-cli"
    hba = postgres.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{original}")
    postgres.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}';"
        f" GRANT USAGE, CREATE ON SCHEMA public TO {role}; SELECT pg_reload_conf()"
    )
    try:
        yield role, password
    finally:
        hba.write_text(original)
        postgres.execute("SELECT pg_reload_conf()")


def test_secret_keygen_encrypt_and_the_gateway_logs_in_with_the_enc_password(
    tmp_path: Path,
    mosquitto: Any,
    postgres: Any,
    pg_password_role: tuple[str, str],
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
) -> None:
    role, password = pg_password_role
    where = f"127.0.0.1:{postgres.port}/{postgres.database}"
    # The server really checks this role's password.
    assert pg_connects(f"postgresql://{role}:{password}@{where}") is None
    assert "password authentication failed" in str(
        pg_connects(f"postgresql://{role}:wrong@{where}")
    )

    key = tmp_path / "keys" / "secret.key"
    made = cli("secret", "keygen", "--key-file", str(key))
    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    again = cli("secret", "keygen", "--key-file", str(key))
    assert again.returncode == 1 and "exists" in again.stderr
    sealed = cli("secret", "encrypt", password, "--key-file", str(key))
    assert sealed.returncode == 0, sealed.stderr
    enc = sealed.stdout.strip()
    assert re.fullmatch(r"ENC\([A-Za-z0-9_=-]+\)", enc), enc
    assert password not in enc
    # The value may come on stdin too (no shell history); each encryption is fresh.
    piped = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "secret", "encrypt", "--key-file", str(key)],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert piped.stdout.strip().startswith("ENC(") and piped.stdout.strip() != enc

    table = "cli_secret"
    gw = gateway_factory(secret_gateway(mosquitto, postgres, table, role, enc, key))
    checked = cli("check-config", "-c", str(gw.config_path))
    assert checked.returncode == 0, checked.stderr
    # Another key cannot open it, and says which value is at fault.
    other_key = "11" * 32
    refused = cli(
        "check-config", "-c", str(gw.config_path), env={"EDGE_STREAM_SECRET_KEY": other_key}
    )
    assert refused.returncode == 1
    assert [(p[2], p[3]) for p in problems(refused.stderr)] == [
        ("sinks.warehouse.dsn", "cannot decrypt ENC(...): wrong key or damaged value")
    ], refused.stderr

    gw.start()
    publish(mosquitto.port, [(f"{table}/a", json.dumps({"seq": n})) for n in range(5)])
    wait_for(
        lambda: len(pg_rows(postgres, f"SELECT 1 FROM {table}")) == 5, 30, "5 rows in PostgreSQL"
    )
    # The sink logged in as the role, with the decrypted password: it owns the table.
    owner = postgres.fetch("SELECT tableowner FROM pg_tables WHERE tablename = $1", table)
    assert owner == [(role,)]
    assert gw.stop() == 0
    assert password not in gw.log_path.read_text()


def secret_gateway(
    mosquitto: Any, postgres: Any, table: str, role: str, enc: str, key: Path
) -> dict[str, Any]:
    """A gateway config whose PostgreSQL DSN carries the password as `enc`, an ENC(...)
    value sealed with the key in file `key`."""
    where = f"127.0.0.1:{postgres.port}/{postgres.database}"
    dsn = f"postgresql://{role}:{enc}@{where}"
    config = mqtt_gateway(
        mosquitto, table, {"warehouse": {"type": "postgres", "dsn": dsn, "table": table}}
    )
    config["gateway"] = {"secret_key_file": str(key)}
    return config


def test_a_wrong_enc_password_is_refused_by_the_server_and_never_logged(
    tmp_path: Path,
    mosquitto: Any,
    postgres: Any,
    pg_password_role: tuple[str, str],
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
) -> None:
    role, _password = pg_password_role
    key = tmp_path / "secret.key"
    assert cli("secret", "keygen", "--key-file", str(key)).returncode == 0
    wrong = "not-the-Password-9"
    enc = cli("secret", "encrypt", wrong, "--key-file", str(key)).stdout.strip()
    table = "cli_wrong_secret"
    gw = gateway_factory(secret_gateway(mosquitto, postgres, table, role, enc, key))
    gw.start()
    publish(mosquitto.port, [(f"{table}/a", json.dumps({"seq": 1}))])
    sink = wait_for(
        lambda: (s := gw.sink("warehouse"))["last_error"] and s, 30, "the login to be refused"
    )
    assert "password authentication failed" in sink["last_error"]
    assert sink["state"] != "running"
    # The reading stays buffered for when the password is fixed.
    wait_for(lambda: gw.sink("warehouse")["depth"] == 1, 30, "the reading kept in the store")
    assert gw.stop() == 0
    assert wrong not in gw.log_path.read_text()


# -- dead letters -------------------------------------------------------------------------


def pg_rows(postgres: Any, sql: str) -> list[tuple[Any, ...]]:
    try:
        return list(postgres.fetch(sql))
    except asyncpg.UndefinedTableError:
        return []


LIST_LINE = re.compile(
    r"^\s*(?P<seq>\d+)  (?P<when>\S+Z)  (?P<id>[0-9a-f-]{36})  (?P<topic>\S+)"
    r"  \[(?P<origin>[^\]]+)\]  (?P<reason>.+)$"
)


def dead_letters(config: Path) -> list[dict[str, str]]:
    result = cli("dead-letters", "list", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    items = [m.groupdict() for line in lines if (m := LIST_LINE.match(line))]
    assert lines[-1] == f"{len(items)} dead letter(s)", result.stdout
    return items


def test_dead_letters_list_show_replay_and_purge_while_the_gateway_runs(
    mosquitto: Any, postgres: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    table = "cli_dead"
    columns = {"payload": "payload", "level": {"from": "field.level", "type": "integer"}}
    config = mqtt_gateway(
        mosquitto,
        table,
        {
            "warehouse": {
                "type": "postgres",
                "dsn": postgres.dsn,
                "table": table,
                "columns": columns,
            }
        },
        processors=[{"type": "json"}],
    )
    gw = gateway_factory(config)
    gw.start()
    publish(
        mosquitto.port,
        [
            (f"{table}/line1", json.dumps({"seq": 1, "level": 3})),
            (f"{table}/line1", "this is not json"),
            (f"{table}/line2", json.dumps({"seq": 2, "level": "high"})),  # integer column
            (f"{table}/line1", json.dumps({"seq": 3})),
        ],
    )
    wait_for(lambda: gw.status()["dead_letters"] == 2, 30, "two dead letters")
    wait_for(lambda: gw.sink("warehouse")["depth"] == 0, 30, "the good rows delivered")
    seqs_sql = f"SELECT payload->>'seq', level FROM {table} ORDER BY 1"
    assert pg_rows(postgres, seqs_sql) == [("1", 3), ("3", None)]

    # list
    items = dead_letters(gw.config_path)
    assert len(items) == 2
    by_origin = {d["origin"]: d for d in items}
    bad_json = by_origin["route readings: processor 0 (json)"]
    refused = by_origin["sink warehouse"]
    assert bad_json["topic"] == f"{table}/line1"
    assert "not valid JSON" in bad_json["reason"]
    assert refused["topic"] == f"{table}/line2"
    assert "postgres refused the row" in refused["reason"] and "integer" in refused["reason"]

    # show
    shown = cli("dead-letters", "show", refused["seq"], "-c", str(gw.config_path))
    assert shown.returncode == 0, shown.stderr
    item = json.loads(shown.stdout)
    assert item["id"] == refused["id"] and item["sink"] == "warehouse"
    assert json.loads(item["content"]) == {"seq": 2, "level": "high"}
    assert item["attributes"]["mqtt.topic"] == f"{table}/line2"
    missing = cli("dead-letters", "show", "999999", "-c", str(gw.config_path))
    assert missing.returncode == 1 and "no dead letter 999999" in missing.stderr
    unnamed = cli("dead-letters", "replay", "-c", str(gw.config_path))
    assert unnamed.returncode == 1 and "--all" in unnamed.stderr

    # Fix the cause (the column's type, in the table and in the config; reload), then
    # replay the refused row into the running gateway: it arrives, once.
    postgres.execute(f"ALTER TABLE {table} ALTER COLUMN level TYPE text")
    config["sinks"]["warehouse"]["columns"]["level"]["type"] = "text"
    gw.config_path.write_text(yaml.safe_dump(config))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.log().count("gateway: config applied") == 1, 30, "the reload")
    wait_for(lambda: gw.sink("warehouse")["state"] == "running", 30, "the sink after the reload")
    replayed = cli("dead-letters", "replay", refused["seq"], "-c", str(gw.config_path))
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "replayed 1 dead letter(s)"
    wait_for(lambda: len(pg_rows(postgres, seqs_sql)) == 3, 30, "the replayed row")
    wait_for(lambda: gw.sink("warehouse")["depth"] == 0, 30, "depth 0")
    assert [d["seq"] for d in dead_letters(gw.config_path)] == [bad_json["seq"]]
    # Replaying bad JSON routes it again: the json processor refuses it again.
    again = cli("dead-letters", "replay", bad_json["seq"], "-c", str(gw.config_path))
    assert again.returncode == 0, again.stderr
    wait_for(
        lambda: [d["reason"] for d in dead_letters(gw.config_path)] == [bad_json["reason"]],
        30,
        "the bad JSON dead-lettered again, with the same reason",
    )

    # purge
    purged = cli("dead-letters", "purge", "--all", "-c", str(gw.config_path))
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "purged 1 dead letter(s)"
    assert dead_letters(gw.config_path) == []
    wait_for(lambda: gw.status()["dead_letters"] == 0, 15, "the status page to count none")

    # Exactly once, also across a restart.
    assert gw.stop() == 0
    gw.start()
    publish(mosquitto.port, [(f"{table}/line1", json.dumps({"seq": 4}))])
    wait_for(lambda: len(pg_rows(postgres, seqs_sql)) == 4, 30, "the row after the restart")
    wait_for(lambda: gw.sink("warehouse")["depth"] == 0, 30, "depth 0")
    assert pg_rows(postgres, seqs_sql) == [("1", "3"), ("2", "high"), ("3", None), ("4", None)]
    assert gw.stop() == 0


def test_a_dead_letter_truncated_to_max_payload_is_not_replayed(
    mosquitto: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    # A message over max_payload is dead-lettered with its first max_payload bytes only;
    # replay sent those bytes on to the sinks as if they were the reading, and removed
    # the dead letter. Now it stays, and replay says so in one line.
    name = f"cut{uuid.uuid4().hex[:8]}"
    config = mqtt_gateway(mosquitto, name, {"out": {"type": "file", "path": "out.jsonl"}})
    config["sources"]["plant"]["max_payload"] = 64
    config["routes"]["readings"]["processors"] = [{"type": "json"}]
    gw = gateway_factory(config)
    gw.start()
    big = json.dumps({"reading": "x" * 100})
    publish(mosquitto.port, [(f"{name}/big", big), (f"{name}/bad", "not json")])
    wait_for(lambda: gw.status()["dead_letters"] == 2, 30, "two dead letters")
    by_topic = {d["topic"]: d for d in dead_letters(gw.config_path)}
    cut, bad = by_topic[f"{name}/big"], by_topic[f"{name}/bad"]
    assert "exceeds max_payload" in cut["reason"]
    note = (
        "1 dead letter(s) not replayed: their content is not the message: truncated to"
        " max_payload (they stay: list, show or purge them)"
    )

    replayed = cli("dead-letters", "replay", cut["seq"], "-c", str(gw.config_path))
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.splitlines() == ["replayed 0 dead letter(s)", note]
    # --all replays the other one (the json processor refuses it again) and not this one
    replayed = cli("dead-letters", "replay", "--all", "-c", str(gw.config_path))
    assert replayed.stdout.splitlines() == ["replayed 1 dead letter(s)", note]
    wait_for(
        lambda: len(d := dead_letters(gw.config_path)) == 2 and d[1]["seq"] != bad["seq"],
        30,
        "the bad JSON dead-lettered again",
    )
    assert dead_letters(gw.config_path)[0] == cut  # still there, as it was
    shown = cli("dead-letters", "show", cut["seq"], "-c", str(gw.config_path))
    item = json.loads(shown.stdout)
    assert item["content"] == big[:64] and item["attributes"]["content.truncated"] == "max_payload"

    # the console's Replay (the API) leaves it too
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.web_port}/api/dead-letters/replay",
        data=json.dumps({"seqs": [int(cut["seq"])]}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.loads(answer.read()) == {
            "action": "replay",
            "count": 0,
            "note": note,
            "missing": [],
        }
    purged = cli("dead-letters", "purge", cut["seq"], "-c", str(gw.config_path))
    assert purged.stdout.strip() == "purged 1 dead letter(s)"
    assert gw.stop() == 0
    assert (gw.data_dir / "out.jsonl").read_text() == ""  # nothing ever reached the sink


def refused_by_a_check_constraint(
    mosquitto: Any, postgres: Any, make: Callable[[dict[str, Any]], GatewayProcess], table: str
) -> tuple[GatewayProcess, str]:
    """A running gateway whose PostgreSQL table refused one reading (level 42 breaks a
    CHECK constraint, now dropped: the cause is fixed); returns it and that dead letter's
    number. The gateway has delivered readings before, and then goes idle."""
    postgres.execute(
        f"CREATE TABLE {table} (id uuid PRIMARY KEY, payload jsonb,"
        f" level integer CONSTRAINT {table}_small CHECK (level < 10))"
    )
    columns = {"payload": "payload", "level": {"from": "field.level", "type": "integer"}}
    gw = make(
        mqtt_gateway(
            mosquitto,
            table,
            {
                "warehouse": {
                    "type": "postgres",
                    "dsn": postgres.dsn,
                    "table": table,
                    "columns": columns,
                }
            },
        )
    )
    gw.start()
    readings = [{"seq": n, "level": 42 if n == 5 else n % 10} for n in range(10)]
    publish(mosquitto.port, [(f"{table}/a", json.dumps(r)) for r in readings])
    wait_for(lambda: gw.status()["dead_letters"] == 1, 30, "the refused reading")
    wait_for(lambda: len(pg_rows(postgres, f"SELECT 1 FROM {table}")) == 9, 30, "9 readings")
    [dead] = dead_letters(gw.config_path)
    assert "violates check constraint" in dead["reason"], dead
    postgres.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_small")
    return gw, dead["seq"]


def test_a_replayed_dead_letter_reaches_the_sink_of_an_idle_gateway(
    mosquitto: Any, postgres: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    table = "cli_replay_idle"
    gw, seq = refused_by_a_check_constraint(mosquitto, postgres, gateway_factory, table)
    replayed = cli("dead-letters", "replay", seq, "-c", str(gw.config_path))
    assert replayed.returncode == 0, replayed.stderr
    # No other reading arrives: the replayed one must go out on its own.
    wait_for(
        lambda: pg_rows(postgres, f"SELECT level FROM {table} WHERE payload->>'seq' = '5'"),
        10,  # it takes well under a second when it works
        "the replayed reading in PostgreSQL",
    )
    wait_for(lambda: gw.sink("warehouse")["depth"] == 0, 30, "depth 0")
    assert len(pg_rows(postgres, f"SELECT 1 FROM {table}")) == 10
    assert gw.stop() == 0


def test_status_counts_follow_replay_and_purge_from_the_cli(
    mosquitto: Any, postgres: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    table = "cli_replay_counts"
    gw, seq = refused_by_a_check_constraint(mosquitto, postgres, gateway_factory, table)
    assert cli("dead-letters", "replay", seq, "-c", str(gw.config_path)).returncode == 0
    # A new reading, so that the replayed one goes out whatever the idle case does.
    publish(mosquitto.port, [(f"{table}/a", json.dumps({"seq": 10, "level": 1}))])
    wait_for(lambda: len(pg_rows(postgres, f"SELECT 1 FROM {table}")) == 11, 30, "11 readings")
    wait_for(lambda: gw.sink("warehouse")["depth"] == 0, 30, "depth 0")
    # Everything delivered and purged: the store holds nothing, and says so.
    wait_for(lambda: store_stats(gw.config_path)[1].startswith("0 FlowFiles"), 30, "an empty store")
    wait_for(lambda: gw.status()["store"]["bytes"] <= 0, 10, "the purge seen by the gateway")
    status = gw.status()
    wrong = []
    if status["dead_letters"] != 0:
        wrong.append(f"dead_letters is {status['dead_letters']}, the store holds none")
    if status["store"]["bytes"] != 0:
        wrong.append(f"store.bytes is {status['store']['bytes']}, the store holds nothing")
    assert not wrong, "; ".join(wrong)
    assert gw.stop() == 0


# -- store stats --------------------------------------------------------------------------

STATS_LINE = re.compile(r"^(?P<sink>\S+)\s+(?P<waiting>\d+)\s+(?P<oldest>\S+)$")


def store_stats(config: Path) -> tuple[dict[str, tuple[int, float | None]], str]:
    result = cli("store", "stats", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["sink", "waiting", "oldest"], result.stdout
    table: dict[str, tuple[int, float | None]] = {}
    for line in lines[1:-1]:
        m = STATS_LINE.match(line)
        assert m, f"unexpected line {line!r} in:\n{result.stdout}"
        oldest = None if m["oldest"] == "-" else float(m["oldest"].removesuffix("s"))
        table[m["sink"]] = (int(m["waiting"]), oldest)
    return table, lines[-1]


def test_store_stats_shows_depth_and_oldest_age_per_sink_while_the_gateway_runs(
    tmp_path: Path,
    mosquitto: Any,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
) -> None:
    name = "cli_stats"
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/edge"  # nothing listens there
    config = mqtt_gateway(
        mosquitto,
        name,
        {
            "warehouse": {"type": "postgres", "dsn": down, "table": name},
            "archive": {"type": "file", "path": str(tmp_path / "archive.jsonl")},
        },
    )
    gw = gateway_factory(config)
    missing = cli("store", "stats", "-c", str(gw.config_path))
    assert missing.returncode == 1 and "no store at" in missing.stderr
    gw.start()
    started = time.time()
    publish(mosquitto.port, [(f"{name}/a", json.dumps({"seq": n})) for n in range(50)])
    wait_for(lambda: gw.sink("warehouse")["depth"] == 50, 30, "50 waiting for the warehouse")
    wait_for(lambda: gw.sink("archive")["depth"] == 0, 30, "the archive to have them all")

    # The age grows while the upstream stays down.
    stats, summary = wait_for(
        lambda: (s := store_stats(gw.config_path))[0]["warehouse"][1] >= 1.0 and s,
        30,
        "the oldest age to pass one second",
    )
    assert set(stats) == {"warehouse", "archive"}
    waiting, oldest = stats["warehouse"]
    assert waiting == 50
    assert oldest is not None and 1.0 <= oldest <= time.time() - started + 1.0
    assert stats["archive"] == (0, None)
    assert re.fullmatch(r"50 FlowFiles, [\d.]+ MiB buffered; 0 dead letter\(s\)", summary)
    assert gw.sink("warehouse")["state"] != "running"
    assert gw.stop() == 0


# -- store reset and the data_dir lock -----------------------------------------------------


def test_store_reset_refuses_a_running_gateway_and_a_valid_store_without_force(
    mosquitto: Any, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> None:
    table = "cli_reset"
    config = mqtt_gateway(mosquitto, table, {"archive": {"type": "file"}})
    gw = gateway_factory(config)
    gw.start()
    publish(mosquitto.port, [(f"{table}/a", json.dumps({"seq": 1}))])
    wait_for(lambda: gw.status()["gateway"]["ingested"] == 1, 30, "the reading stored")
    for extra in ([], ["--force"]):
        refused = cli("store", "reset", *extra, "-c", str(gw.config_path))
        assert refused.returncode == 1, refused.stdout
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert "another Edge Stream process uses this data_dir" in refused.stderr
        assert str(gw.data_dir.resolve()) in refused.stderr
    assert not list(gw.data_dir.glob("store.db.corrupt-*")), "the running store stays put"
    # a second gateway on the same data_dir does not start either
    second = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(gw.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another Edge Stream process uses this data_dir" in lines[0]
    assert gw.status()["gateway"]["ingested"] == 1, "the first gateway runs on"
    assert gw.stop() == 0
    # stopped: a valid store still needs --force
    valid = cli("store", "reset", "-c", str(gw.config_path))
    assert valid.returncode == 1 and "is a valid store" in valid.stderr
    assert "--force" in valid.stderr
    assert len(valid.stderr.splitlines()) == 1
    assert not list(gw.data_dir.glob("store.db.corrupt-*"))
    forced = cli("store", "reset", "--force", "-c", str(gw.config_path))
    assert forced.returncode == 0, forced.stderr
    assert len(list(gw.data_dir.glob("store.db.corrupt-*"))) == 1
    assert not gw.store_path.exists()


# -- the store's commands on a store file, no gateway running: every line as printed -------


def stored_config(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose data_dir holds no store yet; returns (config path, store path)."""
    data_dir = tmp_path / "data"
    config = {
        "gateway": {"id": "cli-store", "data_dir": str(data_dir)},
        "mqtt": {"url": "mqtt://127.0.0.1:1"},
        "routes": {"all": {"match": "#", "sinks": ["a", "b"]}},
        "sinks": {"a": {"type": "file"}, "b": {"type": "file"}},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, data_dir / "store.db"


def fill_store(path: Path) -> list[Any]:
    """Three dead letters (refused by route r, by sink a, by sink b) and one FlowFile
    waiting for each of sinks a and b; returns the dead letters' summaries, oldest first."""
    from gateway.core.flowfile import FlowFile
    from gateway.store.sqlite import Batch, DeadLetter, Store

    async def fill() -> list[Any]:
        store = Store(path)
        await store.open(["a", "b"])
        waiting = [FlowFile.create("t/w", b"w" * 1000) for _ in range(2)]
        refused = [FlowFile.create(f"t/{n}", f"r\xe9ading {n}\n".encode(), {"n": n}) for n in "123"]
        refused.append(FlowFile.create("t/4", b"\xff\xfe binary"))
        await store.commit(
            Batch(
                [(waiting[0], store.bit("a")), (waiting[1], store.bit("b"))],
                [
                    DeadLetter(refused[0], "route r: processor 0 (json)", "not valid JSON"),
                    DeadLetter(refused[1], "sink a", "refused by a", "a"),
                    DeadLetter(refused[2], "sink b", "refused by b", "b"),
                    DeadLetter(refused[3], "sink a", "binary", "a"),
                ],
                {},
                [],
            )
        )
        summaries = await store.dead_letters(10)
        await store.close()
        return list(reversed(summaries))

    return asyncio.run(fill())


def test_dead_letters_commands_print_what_they_did_line_by_line(tmp_path: Path) -> None:
    config, store = stored_config(tmp_path)
    assert cli("dead-letters", "list", "-c", str(config)).stderr == (
        f"edge-stream: no store at {store}: has the gateway run with this data_dir?\n"
    )
    dead = fill_store(store)

    listed = cli("dead-letters", "list", "--limit", "3", "-c", str(config))
    assert listed.returncode == 0, listed.stderr

    def line(d: Any) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.failed_at / 1e9))
        return f"{d.seq:>7}  {when}  {d.id}  {d.topic}  [{d.origin}]  {d.reason}\n"

    assert listed.stdout == "".join(line(d) for d in dead[1:]) + "4 dead letter(s)\n"

    shown = cli("dead-letters", "show", str(dead[1].seq), str(dead[3].seq), "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (
        "{\n"
        f'  "seq": {dead[1].seq},\n'
        f'  "id": "{dead[1].id}",\n'
        '  "topic": "t/2",\n'
        '  "attributes": {\n'
        '    "n": "2"\n'
        "  },\n"
        '  "content": "r\\u00e9ading 2\\n",\n'
        f'  "created": {fill_created(store, dead[1].seq)},\n'
        '  "origin": "sink a",\n'
        '  "sink": "a",\n'
        '  "reason": "refused by a"\n'
        "}\n"
        "{\n"
        f'  "seq": {dead[3].seq},\n'
        f'  "id": "{dead[3].id}",\n'
        '  "topic": "t/4",\n'
        '  "attributes": {},\n'
        '  "content": "\\\\xff\\\\xfe binary",\n'
        f'  "created": {fill_created(store, dead[3].seq)},\n'
        '  "origin": "sink a",\n'
        '  "sink": "a",\n'
        '  "reason": "binary"\n'
        "}\n"
    )
    missing = cli("dead-letters", "show", "999999", "-c", str(config))
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "edge-stream: no dead letter 999999\n"
    # the ones there are shown, the others named in one line (it stopped at the first)
    mixed = cli("dead-letters", "show", "999999", str(dead[3].seq), "99998", "-c", str(config))
    assert mixed.returncode == 1 and f'"seq": {dead[3].seq},' in mixed.stdout
    assert mixed.stderr == "edge-stream: no dead letters 999999, 99998\n"

    for action in ("purge", "replay"):
        unnamed = cli("dead-letters", action, "-c", str(config))
        assert (unnamed.returncode, unnamed.stdout) == (1, "")
        assert unnamed.stderr == "edge-stream: name dead letters by number, or use --all\n"
    # `show` with no number printed nothing and exited 0; a --limit below 1 printed
    # nothing (0) or everything (-1, as SQLite reads LIMIT -1)
    unnamed = cli("dead-letters", "show", "-c", str(config))
    assert (unnamed.returncode, unnamed.stdout) == (2, "")
    assert unnamed.stderr.endswith("error: the following arguments are required: N\n")
    for limit in ("0", "-1"):
        for args in (("dead-letters", "list"), ("state", "show", "r.0"), ("config", "history")):
            refused = cli(*args, "--limit", limit, "-c", str(config))
            assert (refused.returncode, refused.stdout) == (2, ""), args
            assert refused.stderr.endswith(f"argument --limit: must be at least 1, got {limit}\n")
    # one past SQLite's integers was an OverflowError traceback
    refused = cli("dead-letters", "list", "--limit", str(1 << 64), "-c", str(config))
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.endswith(f"--limit: must be at most 1000000000, got {1 << 64}\n")

    # A number that names no dead letter (mistyped) printed "replayed 0" and exited 0:
    # one line names it; the others asked for are done.
    for action in ("replay", "purge"):
        wrong = cli("dead-letters", action, "999999", "1000000", "-c", str(config))
        assert (wrong.returncode, wrong.stdout) == (1, "")
        assert wrong.stderr == "edge-stream: no dead letters 999999, 1000000\n"
    # the numbers after -c FILE as well as before it (argparse left those over)
    purged = cli("dead-letters", "purge", str(dead[3].seq), "-c", str(config), "999999")
    assert (purged.returncode, purged.stdout) == (1, "purged 1 dead letter(s)\n")
    assert purged.stderr == "edge-stream: no dead letter 999999\n"
    replayed = cli("dead-letters", "replay", str(dead[1].seq), "-c", str(config))
    assert (replayed.returncode, replayed.stdout) == (0, "replayed 1 dead letter(s)\n")
    left = cli("dead-letters", "list", "-c", str(config)).stdout
    assert left == line(dead[0]) + line(dead[2]) + "2 dead letter(s)\n"
    replayed = cli("dead-letters", "replay", "--all", "-c", str(config))
    assert (replayed.returncode, replayed.stdout) == (0, "replayed 2 dead letter(s)\n")
    assert cli("dead-letters", "purge", "--all", "-c", str(config)).stdout == (
        "purged 0 dead letter(s)\n"
    )
    assert cli("dead-letters", "list", "-c", str(config)).stdout == "0 dead letter(s)\n"
    # what replay moved waits in the replay inbox for the gateway, in the order it failed
    from gateway.store.sqlite import Store

    async def inbox() -> list[tuple[str, str | None]]:
        s = Store(store)
        await s.open()
        try:
            return [(f.id, sink) for _, f, sink, _ in await s.take_replay(10)]
        finally:
            await s.close()

    assert asyncio.run(inbox()) == [(dead[1].id, "a"), (dead[0].id, None), (dead[2].id, "b")]


def fill_created(store: Path, seq: int) -> int:
    """The `created` of dead letter `seq`, as the store holds it."""
    from gateway.store.admin import open_admin

    with open_admin(store) as admin:
        record = admin.dead_letter(seq)
    assert record is not None
    return record.created


STATS_HEAD = "sink                    waiting     oldest\n"


def test_store_stats_prints_a_line_per_sink_and_the_totals(tmp_path: Path) -> None:
    config, store = stored_config(tmp_path)
    fill_store(store)
    result = cli("store", "stats", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(STATS_HEAD)
    lines = result.stdout[len(STATS_HEAD) :].splitlines(keepends=True)
    assert len(lines) == 3, result.stdout
    for name, text in zip("ab", lines[:2], strict=True):
        assert re.fullmatch(rf"{name} {{29}}1 +\d+\.\ds\n", text), text
        assert len(text) == 43, text  # 20 + 1 + 10 + 1 + 10 and the newline
    assert lines[2] == "2 FlowFiles, 0.0 MiB buffered; 4 dead letter(s)\n"
    # replayed, with no gateway running to take them in: neither count has them, and
    # the line said "0 dead letter(s)" as if they were gone
    assert cli("dead-letters", "replay", "1", "2", "-c", str(config)).returncode == 0
    result = cli("store", "stats", "-c", str(config))
    assert result.stdout.splitlines()[-1] == (
        "2 FlowFiles, 0.0 MiB buffered; 2 dead letter(s); 2 replayed dead letter(s) not yet"
        " taken in by the gateway"
    )


def test_the_store_commands_refuse_a_file_that_is_not_a_store_in_one_line(
    tmp_path: Path,
) -> None:
    config, store = stored_config(tmp_path)
    store.parent.mkdir()
    store.write_bytes(b"these are not the pages of a database\n" * 100)
    for command in (
        ["store", "stats"],
        ["dead-letters", "list"],
        ["dead-letters", "purge", "--all"],
    ):
        refused = cli(*command, "-c", str(config))
        assert (refused.returncode, refused.stdout) == (1, ""), command
        assert refused.stderr.startswith(f"edge-stream: {store}: is not a SQLite database")
        assert "edge-stream store reset" in refused.stderr
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert store.read_bytes() == b"these are not the pages of a database\n" * 100


def killed_store(tmp_path: Path, store: Path) -> None:
    """At `store`, the files of an open store whose last commit (a fifth dead letter) is
    still in its WAL, as a kill leaves them."""
    staged = tmp_path / "staged"
    staged.mkdir()
    fill_store(staged / "store.db")
    from gateway.core.flowfile import FlowFile
    from gateway.store.sqlite import Batch, DeadLetter, Store

    async def more() -> None:
        opened = Store(staged / "store.db")
        await opened.open(["a", "b"])
        late = FlowFile.create("t/5", b"late")
        await opened.commit(Batch([], [DeadLetter(late, "sink a", "late", "a")], {}, []))
        for suffix in ("", "-wal", "-shm"):
            shutil.copy(f"{staged / 'store.db'}{suffix}", f"{store}{suffix}")
        await opened.close()

    asyncio.run(more())
    assert os.path.getsize(f"{store}-wal") > 0


@pytest.fixture
def read_only_data_dir(tmp_path: Path) -> Iterator[Callable[[], None]]:
    """tmp_path/data as a tmpfs (the tests run as root) and a function that remounts it
    read-only, as the kernel does to an SD card after write errors."""
    folder = tmp_path / "data"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], check=True)
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("killed", [False, True])
def test_the_store_commands_that_read_work_on_a_read_only_file_system(
    tmp_path: Path, read_only_data_dir: Callable[[], None], killed: bool
) -> None:
    """An SD card remounted read-only: the commands that only read failed with "unable to
    open database file" (SQLite makes its -shm file to open a WAL store) and "see to the
    disk and the folder's permissions"; now they read it, with what its WAL holds after a
    kill, and the ones that write say in one line that the file system is read-only."""
    config, store = stored_config(tmp_path)
    if killed:
        killed_store(tmp_path, store)
    else:
        fill_store(store)
    read_only_data_dir()
    expected = 5 if killed else 4
    listed = cli("dead-letters", "list", "-c", str(config))
    assert (listed.returncode, listed.stderr) == (0, ""), listed.stderr
    assert listed.stdout.splitlines()[-1] == f"{expected} dead letter(s)"
    shown = cli("dead-letters", "show", "1", "-c", str(config))
    assert shown.returncode == 0 and json.loads(shown.stdout)["seq"] == 1, shown.stderr
    stats = cli("store", "stats", "-c", str(config))
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.splitlines()[-1].endswith(f"; {expected} dead letter(s)")
    for command in (["state", "list"], ["config", "history"]):
        read = cli(*command, "-c", str(config))
        assert (read.returncode, read.stderr) == (0, ""), (command, read.stderr)
    for command in (
        ["dead-letters", "purge", "1"],
        ["dead-letters", "replay", "--all"],
        ["state", "reset", "r.0"],
        ["store", "drop-sink", "gone"],
    ):
        refused = cli(*command, "-c", str(config))
        assert (refused.returncode, refused.stdout) == (1, ""), command
        assert refused.stderr == (
            f"edge-stream: {store}: the file system of {store.parent} is mounted read-only (a"
            " disk remounted so after errors: dmesg says why), so nothing in the store can be"
            " changed: mount it read-write, then try again\n"
        ), command


def test_a_rollback_on_a_full_disk_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    """`config rollback` with no room left under the data_dir, where it keeps the text it
    replaces: an OSError traceback (the console's rollback answers 500 in one line)."""
    from gateway.config import files

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data_dir)], check=True)
    try:
        config = tmp_path / "gateway.yaml"
        old = f"gateway: {{id: one, data_dir: '{data_dir}'}}\n"
        config.write_text(old)
        files.save(config, old.replace("one", "two"), data_dir)
        kept = [v.name for v in files.versions(data_dir)]
        fd = os.open(data_dir / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        for size in (1 << 16, 512):  # then what is left, smaller than a chunk
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        os.close(fd)
        before = config.read_text()
        result = cli("config", "rollback", "-c", str(config))
        assert (result.returncode, result.stdout) == (1, ""), result.stderr
        assert result.stderr == (
            f"edge-stream: {config}: cannot write there (No space left on device); nothing"
            " was changed: free some space, or let the gateway's user write there\n"
        )
        assert config.read_text() == before
        assert [v.name for v in files.versions(data_dir)] == kept
    finally:
        subprocess.run(["umount", "-l", str(data_dir)], check=False)


def test_store_reset_and_config_rollback_say_the_file_system_is_read_only(
    tmp_path: Path, read_only_data_dir: Callable[[], None]
) -> None:
    """A data_dir remounted read-only: `store reset` said to give a folder the gateway may
    write, and `config rollback` to free some space or let the gateway's user write there,
    where the other commands that write say the file system is read-only."""
    from gateway.config import files

    config, store = stored_config(tmp_path)
    fill_store(store)
    first = config.read_text()
    files.save(config, first.replace("cli-store", "cli-store-2"), store.parent)
    read_only_data_dir()
    reset = cli("store", "reset", "--force", "-c", str(config))
    assert (reset.returncode, reset.stdout) == (1, ""), reset.stderr
    assert reset.stderr == (
        f"edge-stream: store reset refused: gateway.data_dir {store.parent}: the file system"
        " is mounted read-only (a disk remounted so after errors: dmesg says why), so the"
        f" gateway's folder cannot be used (it writes {store.parent}/.lock): mount it"
        " read-write, then try again\n"
    )
    rollback = cli("config", "rollback", "-c", str(config))
    assert (rollback.returncode, rollback.stdout) == (1, ""), rollback.stderr
    assert "the file system is mounted read-only" in rollback.stderr, rollback.stderr
    assert rollback.stderr.endswith("nothing was changed: mount it read-write, then try again\n")
    assert len(rollback.stderr.splitlines()) == 1
    assert config.read_text() != first


def test_a_store_linked_to_a_read_only_disk_is_read_with_its_wal(tmp_path: Path) -> None:
    """<data_dir>/store.db a symbolic link to another disk, remounted read-only after a
    kill: SQLite keeps the -wal beside the link's target, where it was not looked for, and
    the store was read without it (4 dead letters listed, the fifth, in the WAL, unseen)."""
    config, link = stored_config(tmp_path)
    link.parent.mkdir()
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        killed_store(tmp_path, disk / "store.db")
        link.symlink_to(disk / "store.db")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        listed = cli("dead-letters", "list", "-c", str(config))
        assert (listed.returncode, listed.stderr) == (0, ""), listed.stderr
        assert listed.stdout.splitlines()[-1] == "5 dead letter(s)"
        stats = cli("store", "stats", "-c", str(config))
        assert stats.returncode == 0, stats.stderr
        assert stats.stdout.splitlines()[-1].endswith("; 5 dead letter(s)")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_store_reset_says_what_it_moved_and_why(tmp_path: Path) -> None:
    config, store = stored_config(tmp_path)
    nothing = cli("store", "reset", "-c", str(config))
    assert (nothing.returncode, nothing.stdout) == (
        0,
        f"no store at {store}; the gateway starts with an empty one\n",
    )
    store.parent.mkdir()
    store.write_bytes(b"these are not the pages of a database\n" * 100)
    store.with_name("store.db-wal").write_bytes(b"")
    damaged = cli("store", "reset", "-c", str(config))
    assert damaged.returncode == 0, damaged.stderr
    [aside] = store.parent.glob("store.db.corrupt-*[!l]")
    assert damaged.stdout == (
        f"moved store.db, store.db-wal aside to {aside} (it is not a SQLite database (3800"
        " bytes that do not start as one)); the gateway starts with an empty store\n"
    )
    aside.unlink()
    aside.with_name(aside.name + "-wal").unlink()
    fill_store(store)
    valid = cli("store", "reset", "-c", str(config))
    assert (valid.returncode, valid.stdout) == (1, "")
    assert valid.stderr == (
        f"edge-stream: {store} is a valid store, not reset: it may hold data not delivered"
        " yet (`edge-stream store stats` shows it). To start empty anyway, add --force\n"
    )
    forced = cli("store", "reset", "--force", "-c", str(config))
    assert forced.returncode == 0, forced.stderr
    [aside] = store.parent.glob("store.db.corrupt-*")
    assert forced.stdout == (
        f"moved store.db aside to {aside} (--force); the gateway starts with an empty store\n"
    )
    assert not store.exists()


# -- config show / diff -------------------------------------------------------------------


def test_config_show_and_diff_never_print_a_secret(tmp_path: Path) -> None:
    key = tmp_path / "k" / "secret.key"
    assert cli("secret", "keygen", "--key-file", str(key)).returncode == 0

    def enc(value: str) -> str:
        sealed = cli("secret", "encrypt", value, "--key-file", str(key))
        assert sealed.returncode == 0, sealed.stderr
        return sealed.stdout.strip()

    def config(name: str, pg: str, web: str, log_level: str = "info") -> Path:
        path = tmp_path / name
        path.write_text(
            f"gateway: {{secret_key_file: '{key}', log_level: {log_level}}}\n"
            + GOOD.split("\n", 1)[1].replace("postgresql://gw@db", f"postgresql://gw:{pg}@db")
            + f"web: {{username: admin, password: '{web}'}}\n"
        )
        return path

    old = config("old.yaml", enc("Pg-Plain-1"), "Web-Plain-1")
    new = config("new.yaml", enc("Pg-Plain-2"), enc("Web-Plain-2"), log_level="debug")
    env = {"EDGE_STREAM__SINKS__ARCHIVE__PATH": enc("Archive-Plain.jsonl")}
    show = cli("config", "show", "-c", str(old), env=env)
    assert show.returncode == 0, show.stderr
    shown = yaml.safe_load(show.stdout)
    assert shown["sinks"]["warehouse"]["dsn"] == "postgresql://gw:***@db/telemetry"
    assert shown["sinks"]["archive"]["path"] == "***"
    assert shown["web"]["password"] == "***"
    assert shown["sinks"]["warehouse"]["batch"]["max_rows"] == 1000  # defaults filled in
    for args in (["-c", str(old), str(new)], [str(new), "-c", str(old)]):
        changed = cli("config", "diff", *args)
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout.splitlines() == [
            "gateway.log_level: changed (info -> debug)",
            "sinks.warehouse: changed (dsn changed)",
            "web.password: changed",
        ]
    same = cli("config", "diff", "-c", str(old), str(old))
    assert same.stdout == "no changes\n"
    for result in (show, changed, same):
        for plain in ("Plain", "ENC("):
            assert plain not in result.stdout + result.stderr


def test_config_show_and_diff_refuse_an_invalid_file_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "gateway.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("table: readings}", "table: read-ings}"))
    for args in (["show", "-c", str(bad)], ["diff", "-c", str(good), str(bad)]):
        result = cli("config", *args)
        assert result.returncode == 1
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert problems(result.stderr)[0][:3] == (str(bad), 11, "sinks.warehouse.table")
    missing = cli("config", "diff", "-c", str(good))
    assert missing.returncode == 2
    assert missing.stderr.endswith("error: the following arguments are required: NEWFILE\n")


def test_an_empty_edge_stream_config_is_the_default_file() -> None:
    # `EDGE_STREAM_CONFIG= edge-stream check-config` said "edge-stream: : cannot read the
    # config file", a file named ""
    result = cli("check-config", env={"EDGE_STREAM_CONFIG": ""})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("config/gateway.yaml: ok")


def test_run_on_a_data_dir_that_is_a_file_stops_with_one_line(tmp_path: Path) -> None:
    # It stopped with mkdir's FileExistsError traceback.
    in_the_way = tmp_path / "data"
    in_the_way.write_text("not a folder")
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"gateway: {{data_dir: '{in_the_way}'}}\nweb: {{enabled: false}}\n"
        "sinks: {o: {type: file, path: x.jsonl}}\n"
    )
    result = cli("run", "-c", str(config))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"edge-stream: gateway.data_dir {in_the_way}: cannot use it as the gateway's folder"
        " (it is a file, not a folder); give a folder the gateway may write\n"
    )


def test_a_command_that_writes_is_refused_as_root_on_the_gateway_user_s_folders(
    tmp_path: Path,
) -> None:
    """README: run them as the service user, not as root. As root they left files there
    owned by root (a 0600 key, the data_dir's .lock, a users file) that the gateway,
    running as its own user, could not read: the start then failed."""
    nobody = pwd.getpwnam("nobody")
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway: {{data_dir: {data}}}\nsinks: {{}}\nroutes: {{}}\n")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    for command in (("secret", "keygen"), ("store", "reset"), ("dead-letters", "purge")):
        result = cli(*command, *(["--all"] if command[1] == "purge" else []), "-c", str(config))
        assert result.returncode == 1
        assert result.stderr == (
            f"edge-stream: {data} belongs to nobody, not root: run this as that user"
            f" (sudo -u nobody edge-stream {' '.join(command)} ...); as root it would leave"
            " files there that a gateway running as that user cannot read or write\n"
        )
    assert list(data.iterdir()) == [], "nothing made as root"
    # reading is not refused; a key file of root's folder is root's to write
    assert "belongs to" not in cli("store", "stats", "-c", str(config)).stderr
    mine = tmp_path / "root-keys"
    mine.mkdir()
    made = cli("secret", "keygen", "--key-file", str(mine / "k"), "-c", str(config))
    assert made.returncode == 0, made.stderr
    os.chown(data, 0, 0)
    assert cli("secret", "keygen", "-c", str(config)).returncode == 0


def test_a_command_as_root_through_a_link_into_the_gateway_user_s_folder_is_refused(
    tmp_path: Path,
) -> None:
    """A file written through its symbolic link lands in the target's folder: root's
    `web passwd` or `secret rotate` from a root folder holding the link made a root-owned
    0600 file there, which the gateway could not read (every login answered 503)."""
    nobody = pwd.getpwnam("nobody")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    users = theirs / "web-users"
    # root's folder: only the config's link leads `secret rotate` into theirs
    (tmp_path / "keys").mkdir()
    key = tmp_path / "keys" / "secret.key"
    assert cli("secret", "keygen", "--key-file", str(key)).returncode == 0
    sealed = cli("secret", "encrypt", "out.jsonl", "--key-file", str(key)).stdout.strip()
    users.write_text("")
    target = theirs / "gateway.yaml"
    target.write_text(  # a value to rotate: `secret rotate` writes the config
        f"gateway: {{data_dir: {tmp_path / 'data'}, secret_key_file: {key}}}\n"
        f"web: {{users_file: {tmp_path / 'web-users'}}}\n"
        f"sinks: {{a: {{type: file, path: '{sealed}'}}}}\nroutes: {{}}\n"
    )
    (tmp_path / "web-users").symlink_to(users)
    config = tmp_path / "gateway.yaml"
    config.symlink_to(target)
    for file in (theirs, users, target):
        os.chown(file, nobody.pw_uid, nobody.pw_gid)
    before = {f: (f.read_bytes(), f.stat().st_uid) for f in (users, key, target)}
    for command, stdin in ((("web", "passwd", "ann"), "ann-pass-1\n"), (("secret", "rotate"), "")):
        result = cli_in(stdin, *command, "-c", str(config))
        assert (result.returncode, result.stderr) == (
            1,
            f"edge-stream: {theirs} belongs to nobody, not root: run this as that user"
            f" (sudo -u nobody edge-stream {' '.join(command[:2])} ...); as root it would leave"
            " files there that a gateway running as that user cannot read or write\n",
        )
    assert {f: (f.read_bytes(), f.stat().st_uid) for f in (users, key, target)} == before
    assert sorted(p.name for p in theirs.iterdir()) == ["gateway.yaml", "web-users"]

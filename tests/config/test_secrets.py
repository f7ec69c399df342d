"""Secrets: the key file's mode, re-encrypting a config's text with a new key, atomic writes."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from pathlib import Path

import pytest

from gateway.config import files, secrets
from gateway.config.load import load
from gateway.core.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(secrets.ENV_KEY, raising=False)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_others_may_read_is_refused_with_the_chmod_to_run(
    tmp_path: Path, mode: int
) -> None:
    key_file = secrets.generate_key_file(tmp_path / "secret.key")
    assert secrets.load_key(key_file) is not None
    key_file.chmod(mode)
    with pytest.raises(secrets.SecretError) as info:
        secrets.load_key(key_file)
    assert str(info.value) == (
        f"the key file {key_file} may be read by other users (mode {mode:04o}):"
        f" run 'chmod 600 {key_file}'"
    )
    # Through the config: one line, naming the key that points at the file.
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{data_dir: '{tmp_path}', secret_key_file: '{key_file}'}}\n"
        "sinks:\n  w: {type: file}\n"
    )
    with pytest.raises(ConfigError) as refused:
        load(config, environ={})
    assert refused.value.problems == [f"{config}:1: gateway.secret_key_file: {info.value}"]
    key_file.chmod(0o400)  # read-only for its owner is fine
    assert secrets.load_key(key_file) is not None


def test_keygen_writes_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key_file = secrets.generate_key_file(tmp_path / "a" / "secret.key")
    finally:
        os.umask(old)
    assert key_file.stat().st_mode & 0o777 == 0o600


YAML = """\
# the plant gateway; ENC(...) values come from 'edge-stream secret encrypt'
mqtt:
  password: {a}   # the broker's
sinks:
  warehouse:
    type: postgres
    dsn: "postgresql://gw:{b}@db/telemetry"
    table: readings
"""


def test_rotate_re_encrypts_every_value_and_keeps_the_rest_of_the_text() -> None:
    old, new = secrets.new_key(), secrets.new_key()
    a, b = secrets.encrypt("pw-a", old), secrets.encrypt("pw b@#", old)
    text = YAML.format(a=a, b=b)
    rotated, count = secrets.rotate_text(text, old, new)
    assert count == 2
    a2, b2 = re.findall(r"ENC\([A-Za-z0-9_=-]+\)", rotated)
    assert {a2, b2}.isdisjoint({a, b})
    assert secrets.reveal(a2, new) == "pw-a" and secrets.reveal(b2, new) == "pw b@#"
    with pytest.raises(secrets.SecretError):
        secrets.reveal(a2, old)
    # Everything but the values is as it was: comments, quotes, spacing.
    assert rotated == YAML.format(a=a2, b=b2)


def test_rotate_json_keeps_it_valid_json() -> None:
    old, new = secrets.new_key(), secrets.new_key()
    data = {"mqtt": {"password": secrets.encrypt("p1", old)}, "list": ["x", "ENC(...)"]}
    text = json.dumps(data, indent=4)
    rotated, count = secrets.rotate_text(text, old, new)
    assert count == 1
    after = json.loads(rotated)
    assert secrets.reveal(after["mqtt"]["password"], new) == "p1"
    assert after["list"] == ["x", "ENC(...)"]  # not an encrypted value: left as it is
    assert rotated.count("\n") == text.count("\n")


def test_rotate_refuses_a_value_the_old_key_cannot_open_naming_its_line() -> None:
    old, other = secrets.new_key(), secrets.new_key()
    text = YAML.format(a=secrets.encrypt("x", old), b=secrets.encrypt("y", other))
    with pytest.raises(secrets.SecretError) as info:
        secrets.rotate_text(text, old, secrets.new_key())
    assert str(info.value) == "line 7: cannot decrypt ENC(...): wrong key or damaged value"
    with pytest.raises(secrets.SecretError, match=r"^line 3: ENC\( has no closing"):
        secrets.rotate_text(YAML.format(a="ENC(abc", b="x"), old, other)


def test_write_atomic_writes_through_a_link_and_replaces_no_device_or_socket(
    tmp_path: Path,
) -> None:
    """A config linked from a managed folder was cut off from it (the rename put a file
    in the link's place); `web.users_file: /dev/null` had `web passwd`, run as root,
    rename a file over the system's /dev/null. A socket stands in for the device here."""
    managed = tmp_path / "managed"
    managed.mkdir()
    (managed / "pi-01.yaml").write_text("old\n")
    link = tmp_path / "gateway.yaml"
    link.symlink_to(managed / "pi-01.yaml")
    files.write_atomic(link, "new\n")
    assert link.is_symlink() and (managed / "pi-01.yaml").read_text() == "new\n"
    assert sorted(p.name for p in managed.iterdir()) == ["pi-01.yaml"]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(OSError, match="it is not a regular file") as info:
            files.write_atomic(tmp_path / "sock", "x\n")
        assert stat.S_ISSOCK((tmp_path / "sock").stat().st_mode)
    assert info.value.filename == str(tmp_path / "sock")
    with pytest.raises(OSError, match="it is not a regular file"):
        files.write_atomic(managed, "x\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml", "managed", "sock"]


def test_write_atomic_replaces_with_the_mode_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "gateway.yaml"
    target.write_text("old\n")
    files.write_atomic(target, b"new\n", 0o640)
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]

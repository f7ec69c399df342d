"""`edge-stream reload` answered 401 by a console whose accounts are all in the users
file: one line that says what to do (README: set web.username/web.password, or SIGHUP).

The gateway's side of the 401 is tested with the console (tests/web); here a loopback
HTTP server answers as it does, so the test needs no gateway."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main

pytestmark = pytest.mark.integration


class Refuse(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(401, "Unauthorized")
        self.send_header("WWW-Authenticate", 'Basic realm="edge-stream"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def console() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_401_says_which_credentials_reload_sends_and_the_sighup_way(
    tmp_path: Path, console: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}'}}\n"
        f"web: {{listen: '127.0.0.1:{console}'}}\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["reload", "-c", str(config)])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"edge-stream: http://127.0.0.1:{console}/api/config/reload: the gateway answered"
        " 401 Unauthorized; reload asks with web.username and web.password from the config"
        " (an operator): set them, or send the gateway SIGHUP (systemctl reload"
        " edge-stream)\n"
    )


def test_a_web_password_this_shell_cannot_decrypt_is_said_not_sent(
    tmp_path: Path,
    console: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the key (another user's shell, no EDGE_STREAM_SECRET_KEY), the ENC(...) text
    # itself went out as the password, and the 401 said to set web.password, which is set.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from gateway.config import secrets

    monkeypatch.delenv(secrets.ENV_KEY, raising=False)
    token = secrets.encrypt("webpass-123", AESGCM.generate_key(bit_length=256))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}'}}\n"
        f"web: {{listen: '127.0.0.1:{console}', username: tech, password: '{token}'}}\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["reload", "-c", str(config)])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        f"edge-stream: {config}:2: web.password: the value holds ENC(...) but there is no key"
    )
    assert err.count("\n") == 1

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


def test_a_rollback_answered_401_is_restored_and_says_how_it_is_taken(
    tmp_path: Path, console: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The appliance's console has its accounts in the users file only: `config rollback`
    restored the file, then ended with exit 1 and "set web.username and web.password",
    though nothing refused it and the gateway takes the change when it sees it."""
    from gateway.config import files

    config = tmp_path / "gateway.yaml"
    data_dir = tmp_path / "data"
    old = f"gateway: {{id: a, data_dir: '{data_dir}'}}\nweb: {{listen: '127.0.0.1:{console}'}}\n"
    config.write_text(old)
    files.save(config, old.replace("id: a", "id: b"), data_dir)  # keeps `old`
    assert main(["config", "rollback", "-c", str(config)]) == 0
    assert config.read_text() == old
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[-1] == (
        f"the gateway at http://127.0.0.1:{console}/api/config/reload?trigger=rollback"
        " answered 401 Unauthorized: reload asks with web.username and web.password from"
        " the config (an operator), which it does not give; the gateway reads the restored"
        " file when it sees the change (gateway.watch_config), or on SIGHUP (systemctl"
        " reload edge-stream)"
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


class Other(http.server.BaseHTTPRequestHandler):
    """Another program on the port, answering JSON that is not a reload answer."""

    def do_POST(self) -> None:
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.mark.parametrize("body", [b"[1, 2]", b'"ok"', b"null", b"<html>hello</html>"])
def test_another_program_on_web_listen_is_said_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes
) -> None:
    # a JSON list was read as the answer: AttributeError: 'list' object has no attribute
    # 'get'; a page said "no gateway answers (Expecting value: line 1 column 1 (char 0))"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    server.body = body  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}'}}\n"
            f"web: {{listen: '127.0.0.1:{port}'}}\n"
        )
        with pytest.raises(SystemExit) as exit_:
            main(["reload", "-c", str(config)])
    finally:
        server.shutdown()
        server.server_close()
    assert exit_.value.code == 1
    assert capsys.readouterr() == (
        "",
        f"edge-stream: http://127.0.0.1:{port}/api/config/reload: what answers there is not"
        " an Edge Stream gateway (not its reload answer); is web.listen the address of the"
        " gateway?\n",
    )


@pytest.mark.parametrize(
    ("listen", "said"),
    [
        ("127.0.0.1:abc", "web.listen: '127.0.0.1:abc' must read host:port, e.g. 127.0.0.1:8080"),
        ("a b:1", "no gateway answers at http://a b:1/api/config/reload (URL can't contain"),
    ],
)
def test_a_web_listen_that_makes_no_url_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str, said: str
) -> None:
    # both were an http.client.InvalidURL traceback ("nonnumeric port: 'abc'")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}'}}\nweb: {{listen: '{listen}'}}\n"
    )
    try:
        code = main(["reload", "-c", str(config)])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    assert (code, out, err.count("\n")) == (1, "", 1)
    assert said in err

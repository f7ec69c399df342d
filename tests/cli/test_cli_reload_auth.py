"""`edge-stream reload` answered 401 by a console whose accounts are all in the users
file: one line that says what to do (README: set web.username/web.password, or SIGHUP).

The gateway's side of the 401 is tested with the console (tests/web); here a loopback
HTTP server answers as it does, so the test needs no gateway. `config rollback` is
asked by a real gateway's console."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import files
from tests.e2e.harness import GatewayProcess

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "gateway.cli"]


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


@pytest.fixture
def console_gateway(
    tmp_path: Path, gateway_factory: Callable[[dict[str, Any]], GatewayProcess]
) -> GatewayProcess:
    """A running gateway whose console has its accounts in the users file only (as the
    appliance's): an operator `admin` and a viewer `guest`; its config kept one version
    back in config-history/ (`config rollback` restores it)."""
    gw = gateway_factory({"gateway": {"watch_config": False}})
    for user, role in (("admin", "operator"), ("guest", "viewer")):
        made = subprocess.run(
            [*CLI, "web", "passwd", user, "--role", role, "-c", str(gw.config_path)],
            input="a-long-password\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
    gw.start(wait_sources=False)
    text = gw.config_path.read_text()
    files.save(gw.config_path, text.replace("id: e2e", "id: e2e-next"), gw.data_dir)
    return gw


def _rollback(gw: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["config", "rollback", "-c", str(gw.config_path)])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    assert "id: e2e\n" in gw.config_path.read_text()  # restored, whatever the reload
    return code, out, err


def test_a_rollback_sent_with_no_login_is_restored_and_its_reload_not_confirmed(
    console_gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """The appliance's console has its accounts in the users file only, and the config
    gives no login: `config rollback` restored the file, then ended with exit 1 and "set
    web.username and web.password". The restore is done and only its reload unknown."""
    code, out, err = _rollback(console_gateway, capsys)
    assert (code, err) == (0, ""), out + err
    url = f"http://127.0.0.1:{console_gateway.web_port}/api/config/reload?trigger=rollback"
    assert out.splitlines()[-1] == (
        f"the reload is not confirmed (the console at {url} asks for a login, which the"
        " config does not give): the gateway takes the restored file when it sees the"
        " change (gateway.watch_config), or on SIGHUP (systemctl reload edge-stream)"
    )


@pytest.mark.parametrize(
    ("user", "password", "answer"),
    [
        ("admin", "a-wrong-password", "401 Unauthorized"),
        ("guest", "a-long-password", "403 Forbidden"),
    ],
)
def test_a_rollback_whose_login_is_refused_exits_1_saying_what_to_set(
    console_gateway: GatewayProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    user: str,
    password: str,
    answer: str,
) -> None:
    """A login that was sent and refused (a wrong password, a viewer's account) was taken
    as "the gateway reads the restored file", exit 0: the user's mistake went unsaid."""
    monkeypatch.setenv("EDGE_STREAM__WEB__USERNAME", user)
    monkeypatch.setenv("EDGE_STREAM__WEB__PASSWORD", password)
    code, out, err = _rollback(console_gateway, capsys)
    assert code == 1, out + err
    url = f"http://127.0.0.1:{console_gateway.web_port}/api/config/reload?trigger=rollback"
    assert err == (
        f"edge-stream: {url}: the gateway answered {answer}; reload asks with web.username"
        " and web.password from the config (an operator): set them, or send the gateway"
        " SIGHUP (systemctl reload edge-stream)\n"
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
        ("a b:1", "web.listen: 'a b:1' must read host:port, e.g. 127.0.0.1:8080 (it holds a"),
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


def test_a_rollback_to_a_console_elsewhere_says_the_running_gateway_takes_it(
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The reload is asked at the restored file's web.listen: a version whose console was
    elsewhere (or off in the running file) found none there, and the command said "the
    restored file is used at the next start" of a gateway that runs on it and reads it."""
    gw = gateway_factory({"gateway": {"watch_config": False}})
    gw.start(wait_sources=False)
    text = gw.config_path.read_text()
    assert f"127.0.0.1:{gw.web_port}" in text
    elsewhere = text.replace(f"127.0.0.1:{gw.web_port}", "127.0.0.1:1")
    gw.config_path.write_text(elsewhere)
    files.save(gw.config_path, text, gw.data_dir)  # keeps the version of the console on port 1
    code, out, err = _rollback_to(gw, capsys)
    assert (code, err) == (0, ""), out + err
    assert out.splitlines()[-1] == (
        "no gateway answers at http://127.0.0.1:1/api/config/reload?trigger=rollback, but"
        f" one runs on {gw.data_dir}: it takes the restored file when it sees the change"
        " (gateway.watch_config), or on SIGHUP (systemctl reload edge-stream)"
    )
    gw.stop()
    files.save(gw.config_path, text, gw.data_dir)
    code, out, err = _rollback_to(gw, capsys)
    assert out.splitlines()[-1] == (
        "no gateway answers at http://127.0.0.1:1/api/config/reload?trigger=rollback; the"
        " restored file is used at the next start"
    )


def _rollback_to(gw: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["config", "rollback", "-c", str(gw.config_path)])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_reload_that_finds_no_console_says_a_gateway_runs_on_the_data_dir(
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """web.listen changed in the file (or a copy with another one): "no gateway answers"
    alone sent the user to start a gateway that runs, on the same data_dir."""
    gw = gateway_factory({"gateway": {"watch_config": False}})
    gw.start(wait_sources=False)
    moved = gw.folder / "moved.yaml"
    moved.write_text(gw.config_path.read_text().replace(f"127.0.0.1:{gw.web_port}", "127.0.0.1:1"))
    url = "http://127.0.0.1:1/api/config/reload"
    try:
        code = main(["reload", "-c", str(moved)])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"edge-stream: no gateway answers at {url} ([Errno 111] Connection refused)",
        f"edge-stream: but a gateway runs on {gw.data_dir}, its console elsewhere (its"
        f" web.listen or web.enabled is not {moved}'s): send it SIGHUP (systemctl reload"
        " edge-stream) to read its config file again",
    ]
    gw.stop()
    assert main(["reload", "-c", str(moved)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"edge-stream: no gateway answers at {url} ([Errno 111] Connection refused)"
    ]

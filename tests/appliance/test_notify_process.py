"""A real `edge-stream run` under a fake systemd: READY=1 once it serves, STATUS lines,
WATCHDOG=1 pings from its event loop, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import GatewayProcess

pytestmark = pytest.mark.e2e


def _messages(sock: socket.socket, until: str, timeout: float) -> list[str]:
    """Datagrams received until one holding the line `until` (or fail after `timeout`)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        got.append(data)
        if until in data.split("\n"):
            return got
    raise AssertionError(f"no {until} within {timeout:.0f} s; received {got!r}")


def test_ready_status_watchdog_and_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s
    gateway = GatewayProcess(
        tmp_path,
        {
            "sources": {"host": {"type": "system", "interval": "1s"}},
            "routes": {"all": {"match": "#", "sinks": ["out"]}},
            "sinks": {"out": {"type": "file", "path": "out.jsonl"}},
        },
    )
    try:
        gateway.start()
        before = _messages(sock, "READY=1", 30)
        # READY=1 comes when it serves: the store is open and the page answers.
        assert gateway.store_path.exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.web_port}/healthz", timeout=5):
            pass
        ready = next(m for m in before if "READY=1" in m.split("\n"))
        assert "STATUS=running: 1 sources, 1 routes, 1 sinks" in ready.split("\n")
        assert any(m.startswith("STATUS=starting") for m in before)
        # the pings go on while it runs
        pings = [m for m in _messages(sock, "WATCHDOG=1", 10) if m == "WATCHDOG=1"]
        pings += [m for m in _messages(sock, "WATCHDOG=1", 10) if m == "WATCHDOG=1"]
        assert len(pings) >= 2
        gateway.proc.send_signal(15)  # type: ignore[union-attr]
        assert any("STATUS=stopping" in m for m in _messages(sock, "STOPPING=1", 10))
        assert gateway.stop() == 0
    finally:
        gateway.close()
        sock.close()

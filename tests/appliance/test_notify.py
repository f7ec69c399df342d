"""sd_notify (gateway/notify.py): the datagrams a gateway under systemd sends."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from gateway.notify import Notifier

pytestmark = pytest.mark.unit


def _listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    return sock


def test_without_notify_socket_nothing_is_sent_and_no_watchdog() -> None:
    notify = Notifier({})
    assert not notify.enabled
    assert notify.watchdog_interval is None
    notify.send("READY=1")  # no socket, no error
    asyncio.run(asyncio.wait_for(notify.watchdog(), 1))  # returns at once


def test_lines_reach_the_socket_and_the_environment_is_cleared(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "OTHER": "x"}
    with _listen(path) as sock:
        notify = Notifier(env)
        notify.send("READY=1", "STATUS=running")
        notify.status("two\nlines")
        assert sock.recv(4096) == b"READY=1\nSTATUS=running"
        assert sock.recv(4096) == b"STATUS=two lines"
        notify.close()
    assert env == {"OTHER": "x"}  # a child process does not inherit the socket
    assert notify.watchdog_interval == 2.0


def test_abstract_socket_address() -> None:
    name = f"edge-stream-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notify = Notifier({"NOTIFY_SOCKET": "@" + name})
        notify.send("WATCHDOG=1")
        notify.close()
        assert sock.recv(64) == b"WATCHDOG=1"


def test_watchdog_is_for_the_process_systemd_names(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier(env).watchdog_interval is None


def test_unreachable_socket_is_not_an_error(tmp_path: Path) -> None:
    notify = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notify.send("READY=1")
    notify.send("READY=1")
    notify.close()

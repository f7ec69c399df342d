"""The console of the real `edge-stream` process: a flood of idle keep-alive and slow-header
connections locks out neither /healthz nor a logged-in user; a console beyond localhost
without an account is refused by check-config until `edge-stream web passwd` adds one."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e

BOUND = 1.0  # seconds a fresh client waits for an answer during the flood
PASSWORD = "flood-pass-1"


class Flood:
    """`idle` keep-alive connections that send `GET /healthz` every 5 s and otherwise stay
    open, `unauthorized` ones that send `GET /nope` (a 401) every 5 s, and `slow` ones that
    send a request head one byte each 0.2 s; each opened again when the server closes it."""

    def __init__(self, port: int, idle: int, slow: int, unauthorized: int) -> None:
        self.port = port
        self.counts = {"idle": idle, "slow": slow, "unauthorized": unauthorized}
        self.connects = 0
        self.by_kind = dict.fromkeys(self.counts, 0)
        self.closed_after_401 = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._ready = threading.Event()

    def __enter__(self) -> Flood:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks = [
            asyncio.create_task(self._hold(kind))
            for kind, count in self.counts.items()
            for _ in range(count)
        ]
        self._ready.set()
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _hold(self, kind: str) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.connects += 1
            self.by_kind[kind] += 1
            try:
                if kind == "slow":
                    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 2000
                    for i in range(len(head)):
                        writer.write(head[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(0.2)
                else:
                    path = b"/healthz" if kind == "idle" else b"/nope"
                    while True:
                        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                        await writer.drain()
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = int(head.lower().split(b"content-length: ")[1].split(b"\r")[0])
                        await reader.readexactly(length)
                        if kind == "unauthorized":
                            await reader.read()  # the server closes after a 401
                            self.closed_after_401 += 1
                            break
                        await asyncio.sleep(5)
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                pass
            finally:
                writer.close()
            await asyncio.sleep(0.2)


def fetch(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=BOUND) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def test_a_connection_flood_locks_out_neither_healthz_nor_a_user(
    gateway_factory: Any, tmp_path: Path
) -> None:
    gw = gateway_factory({
        "mqtt": {"url": "mqtt://127.0.0.1:1"},
        "routes": {"all": {"match": "#", "sinks": ["file"]}},
        "sinks": {"file": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
        "web": {"username": "tech", "password": PASSWORD},
    })  # fmt: skip
    gw.start(wait_sources=False)
    base = f"http://127.0.0.1:{gw.web_port}"
    try:
        with Flood(gw.web_port, idle=200, slow=50, unauthorized=20) as flood:
            wait_for(lambda: flood.connects >= 270, 60, "every flood connection made")
            wait_for(lambda: flood.closed_after_401 >= 20, 30, "the 401 connections closed")
            health = [fetch(f"{base}/healthz") for _ in range(10)]
            user = [fetch(f"{base}/api/status", ("tech", PASSWORD))[0] for _ in range(5)]
            assert user == [200] * 5, user
            # hold on past the 10 s a head may take: the slow senders are cut and come back
            wait_for(lambda: flood.by_kind["slow"] >= 100, 60, "slow senders closed and back")
            health += [fetch(f"{base}/healthz") for _ in range(10)]
        assert health == [(200, b"ok\n")] * 20, health
    finally:
        assert gw.stop() == 0


def edge_stream(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_beyond_localhost_check_config_wants_an_account_that_web_passwd_adds(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gw.yaml"
    data_dir = tmp_path / "data"
    config.write_text(
        yaml.safe_dump({
            "gateway": {"data_dir": str(data_dir)},
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
            "web": {"listen": "0.0.0.0:8080"},
        })
    )  # fmt: skip
    refused = edge_stream("check-config", "-c", str(config))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "web.listen: listening on 0.0.0.0 needs web.username and web.password" in (
        refused.stderr
    )
    short = edge_stream("web", "passwd", "ann", "-c", str(config), stdin="short\n")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    bad = edge_stream("web", "passwd", "a:b", "-c", str(config), stdin="long-enough\n")
    assert bad.returncode == 1 and "user name 'a:b'" in bad.stderr
    added = edge_stream(
        "web", "passwd", "ann", "--role", "operator", "-c", str(config), stdin="ann-pass-12\n"
    )
    assert added.returncode == 0, added.stderr
    assert "added ann (operator)" in added.stdout and "ann-pass-12" not in added.stdout
    users = data_dir / "web-users"
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    line = users.read_text()
    assert line.startswith("ann:operator:scrypt$") and "ann-pass-12" not in line
    ok = edge_stream("check-config", "-c", str(config))
    assert ok.returncode == 0, ok.stderr
    viewer = edge_stream("web", "passwd", "vic", "-c", str(config), stdin="vic-pass-12\n")
    assert "added vic (viewer)" in viewer.stdout  # the default role reads only
    assert json.dumps(sorted(ln.split(":")[0] for ln in users.read_text().splitlines())) == (
        '["ann", "vic"]'
    )

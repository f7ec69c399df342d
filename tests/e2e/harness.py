"""Runs the real `edge-stream` process for end-to-end tests, and an independent publisher."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as err:  # e.g. the status page is down while the gateway reloads
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class GatewayProcess:
    """One `edge-stream run` process on a config written from a dict."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        self.web_port = free_port()
        config.setdefault("gateway", {}).setdefault("data_dir", str(folder / "data"))
        config.setdefault("gateway", {}).setdefault("id", "e2e")
        config["web"] = {**config.get("web", {}), "listen": f"127.0.0.1:{self.web_port}"}
        self.data_dir = Path(config["gateway"]["data_dir"])
        self.store_path = self.data_dir / "store.db"
        self.config_path = folder / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = folder / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, wait_sources: bool = True) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process keeps it open
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self.starts += 1
        wait_for(self._healthy, 30, f"/healthz of the gateway (log: {self.log_path})")
        if wait_sources:
            wait_for(
                lambda: all(s["state"] == "running" for s in self.status()["sources"].values()),
                30,
                "every source to be running",
            )

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.web_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def status(self) -> dict[str, Any]:
        return self.get("/api/status")  # type: ignore[no-any-return]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM; returns the exit code (the gateway must exit within 10 s)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"no exit 10 s after SIGTERM:\n{self.log()}") from None
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def rss_mb(self) -> float:
        """The gateway's resident memory now (VmRSS), in MiB."""
        assert self.proc is not None
        return rss_mb(self.proc.pid)

    def sink(self, name: str) -> dict[str, Any]:
        """One sink's entry of /api/status (state, depth, delivered, ...)."""
        return self.status()["sinks"][name]  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of process `pid`, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def store_pending(store_path: Path, sink: str) -> list[bytes]:
    """The contents of the FlowFiles the store still holds for `sink` (beyond its cursor).

    Reads the SQLite store directly, as `edge-stream store stats` does; safe while the
    gateway runs (WAL) and after it was killed.
    """
    db = sqlite3.connect(store_path, timeout=10)
    try:
        row = db.execute("SELECT bit, cursor FROM sinks WHERE name = ?", (sink,)).fetchone()
        assert row is not None, f"no sink {sink!r} in {store_path}"
        bit, cursor = row
        rows = db.execute(
            "SELECT content FROM flowfiles WHERE seq > ? AND sinks & ? ORDER BY seq",
            (cursor, 1 << bit),
        ).fetchall()
    finally:
        db.close()
    return [bytes(r[0]) for r in rows]


@contextlib.contextmanager
def store_write_lock(store_path: Path) -> Iterator[None]:
    """Hold the store's SQLite write lock (BEGIN IMMEDIATE) for the duration.

    The gateway keeps reading (WAL), so a sink can still take a batch and write it
    upstream, but it cannot record the delivery (move its cursor) until the lock is
    released: a kill -9 meanwhile leaves a batch that is upstream AND still pending,
    the case idempotent delivery exists for.
    """
    db = sqlite3.connect(store_path, timeout=10, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.execute("ROLLBACK")
    finally:
        db.close()


def publish_qos1(port: int, messages: list[tuple[str, str]]) -> None:
    """Publish (topic, payload) pairs at QoS 1 in order, each acknowledged by the broker."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{time.time_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


class Publisher(threading.Thread):
    """An independent paho-mqtt client publishing numbered QoS 1 messages.

    Message n goes to `<prefix>/<n % topics>` with JSON {"seq": n}, for n from `first`
    to `first + count - 1`; `rate` messages per second (0 = as fast as the broker takes
    them). With `stamp`, the JSON also holds "sent": the wall-clock time in ns at which
    the message was handed to the client (to compare with the FlowFile's creation time).
    """

    def __init__(
        self,
        port: int,
        count: int,
        topics: int,
        prefix: str,
        rate: float = 0,
        first: int = 0,
        stamp: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.count = count
        self.topics = topics
        self.prefix = prefix
        self.rate = rate
        self.first = first
        self.stamp = stamp
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{self.prefix}")
            client.max_inflight_messages_set(200)
            client.connect("127.0.0.1", self.port)
            client.loop_start()
            started = time.monotonic()
            infos = []
            for i in range(self.count):
                n = self.first + i
                topic = f"{self.prefix}/{n % self.topics}"
                body: dict[str, int] = {"seq": n}
                if self.stamp:
                    body["sent"] = time.time_ns()
                infos.append(client.publish(topic, json.dumps(body), qos=1))
                self.sent = i + 1
                if self.rate:
                    ahead = (i + 1) / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            for info in infos:
                info.wait_for_publish(60)
            client.disconnect()
            client.loop_stop()
        except BaseException as err:  # reported to the test thread by join_checked
            self.error = err

    def join_checked(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the publisher did not finish"
        if self.error is not None:
            raise self.error


class Watcher:
    """A paho subscriber to `edge-stream/<id>/#` that keeps (topic, payload, retain)."""

    def __init__(self, port: int, gateway_id: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"watch-{gateway_id}")
        client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        client.connect("127.0.0.1", port)
        client.subscribe(f"edge-stream/{gateway_id}/#", qos=1)
        client.loop_start()
        self.client = client

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in list(self.messages) if t == topic]

    def alerts(self, topic: str, state: str) -> list[dict[str, Any]]:
        return [e for e in (json.loads(p) for p in self.payloads(topic)) if e["state"] == state]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

"""The status page, JSON API, /metrics and basic auth, served by a real gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config.load import load_data

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_gateway(tmp_path: Path, **web: Any) -> tuple[Gateway, asyncio.Task[None], str]:
    port = free_port()
    config = load_data(
        {
            "gateway": {"id": "web-test", "data_dir": str(tmp_path)},
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
            "routes": {"all": {"match": "#", "sinks": ["out"]}},
            "sinks": {"out": {"type": "file"}},
            "web": {"listen": f"127.0.0.1:{port}", **web},
        },
        environ={},
    )
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    async with asyncio.timeout(10):
        await gateway.ready.wait()
    return gateway, task, f"http://127.0.0.1:{port}"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    gateway, task, url = await start_gateway(tmp_path)
    yield url
    gateway.stop()
    await task


def get(url: str, auth: tuple[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


async def test_status_api_page_metrics_and_health(served: str) -> None:
    status, body = await asyncio.to_thread(get, f"{served}/api/status")
    assert status == 200
    data = json.loads(body)
    assert data["gateway"]["id"] == "web-test"
    assert data["sinks"]["out"]["type"] == "file" and data["sinks"]["out"]["depth"] == 0
    assert data["routes"]["all"] == {
        "match": ["#"],
        "sinks": ["out"],
        "processors": [],
        "received": 0,
        "emitted": 0,
        "dead_lettered": 0,
        "processor_state": {},
    }
    assert data["dead_letters"] == 0
    status, body = await asyncio.to_thread(get, f"{served}/")
    assert status == 200 and b"<title>Edge Stream</title>" in body
    status, body = await asyncio.to_thread(get, f"{served}/metrics")
    assert status == 200 and b'edge_stream_store_depth{sink="out"} 0.0' in body
    assert await asyncio.to_thread(get, f"{served}/healthz") == (200, b"ok\n")
    assert (await asyncio.to_thread(get, f"{served}/api/dead-letters?limit=5")) == (200, b"[]")
    assert (await asyncio.to_thread(get, f"{served}/nope"))[0] == 404
    assert (await asyncio.to_thread(get, f"{served}/healthz", None, "POST"))[0] == 405
    assert (await asyncio.to_thread(get, f"{served}/api/dead-letters?limit=x"))[0] == 400


async def test_healthz_says_starting_until_the_mqtt_source_has_subscribed(
    tmp_path: Path,
) -> None:
    # On a new session the broker keeps nothing for the gateway before its SUBSCRIBE: a
    # message published once /healthz said ok, but before that, was lost. A broker that
    # accepts the connection and never answers holds the source in its connect.
    held: list[asyncio.StreamWriter] = []
    came = asyncio.Event()

    def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        came.set()

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = free_port()
    doc: dict[str, Any] = {
        "gateway": {"id": "web-test", "data_dir": str(tmp_path)},
        "mqtt": {"url": f"mqtt://127.0.0.1:{silent.sockets[0].getsockname()[1]}"},
        "sources": {"in": {"type": "mqtt", "topics": ["#"], "qos": 1}},
        "routes": {"all": {"match": "#", "sinks": ["out"]}},
        "sinks": {"out": {"type": "file"}},
        "web": {"listen": f"127.0.0.1:{port}"},
    }
    gateway = Gateway(load_data(doc, environ={}))
    task = asyncio.create_task(gateway.run())
    try:
        async with asyncio.timeout(10):
            await came.wait()
        assert await asyncio.to_thread(get, f"http://127.0.0.1:{port}/healthz") == (
            503,
            b"starting\n",
        )
        # A reload meanwhile starts another engine; the stopped one is not up (it answered
        # the reload at once, and /healthz said ok with no source subscribed).
        doc["gateway"]["log_level"] = "debug"
        reload = asyncio.create_task(gateway.apply(load_data(doc, environ={})))
        await asyncio.sleep(0.5)
        assert not reload.done() and not gateway.ready.is_set()
        assert (await asyncio.to_thread(get, f"http://127.0.0.1:{port}/healthz"))[0] == 503
        for writer in held:  # the broker goes away: the source retries, the gateway is up
            writer.close()
        silent.close()
        async with asyncio.timeout(5):
            await gateway.ready.wait()
            assert (await reload)[0] == "applied"
        assert await asyncio.to_thread(get, f"http://127.0.0.1:{port}/healthz") == (200, b"ok\n")
    finally:
        gateway.stop()
        await task


async def test_a_dead_letter_number_past_sqlite_s_integers_is_none_not_a_500(
    served: str,
) -> None:
    # A number SQLite cannot hold raised OverflowError in the store: 500, a traceback.
    huge = 10**20
    for path in (f"/api/dead-letters/{huge}", f"/api/dead-letters/{huge}/content"):
        status, body = await asyncio.to_thread(get, served + path)
        assert status == 404 and json.loads(body) == {"errors": [f"no dead letter {huge}"]}
    # Past Python's 4,300 digits int() raised ValueError: a 500 and a traceback too.
    digits = "9" * 5000
    for path in (f"/api/dead-letters/{digits}", f"/api/dead-letters/{digits}/content"):
        status, body = await asyncio.to_thread(get, served + path)
        assert status == 404 and "no dead letter" in json.loads(body)["errors"][0]

    def act(action: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{served}/api/dead-letters/{action}",
            data=json.dumps({"seqs": [huge, -1]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())

    # and the answer names them: "count": 0 alone did not tell a mistyped number
    replayed = {"action": "replay", "count": 0, "note": None, "missing": [huge, -1]}
    assert await asyncio.to_thread(act, "replay") == (200, replayed)
    purged = {"action": "purge", "count": 0, "missing": [huge, -1]}
    assert await asyncio.to_thread(act, "purge") == (200, purged)


async def test_the_console_s_dead_letter_requests_keep_the_gateway_s_store_locks(
    tmp_path: Path,
) -> None:
    # A console request on the dead letters checked the store file by reading its
    # header through a file descriptor of its own; closing it dropped the gateway's
    # SQLite locks on the file (POSIX locks are per process). The next program to close
    # a connection to the store (`edge-stream dead-letters list`, a backup) then took
    # itself for the last one and deleted the WAL under the running gateway, whose
    # store then read as damaged ("file is not a database"): sinks stopped.
    gateway, task, url = await start_gateway(tmp_path)
    try:
        store = tmp_path / "store.db"
        wal = tmp_path / "store.db-wal"
        assert wal.exists()
        status, _ = await asyncio.to_thread(get, f"{url}/api/dead-letters/1")
        assert status == 404
        reader = (
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
            " db.execute('SELECT count(*) FROM dead_letters').fetchall(); db.close()"
        )
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", reader, str(store)], timeout=30
        )
        assert done.returncode == 0
        assert wal.exists(), "another program deleted the running gateway's WAL"
        status, _ = await asyncio.to_thread(get, f"{url}/api/dead-letters/1")
        assert status == 404
    finally:
        gateway.stop()
        await task


async def test_garbage_and_slow_clients_do_not_hurt_the_server(served: str) -> None:
    host, port = served.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"\x00\x01garbage\r\n\r\n")
    await writer.drain()
    assert (await reader.read()).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    writer.close()
    assert (await asyncio.to_thread(get, f"{served}/healthz"))[0] == 200


async def test_a_malformed_request_is_a_400_and_no_error_in_the_log(
    served: str, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp logged each request it could not parse as an ERROR with a traceback: any
    # client of the LAN, without credentials, filled the gateway's log with them
    host, port = served.removeprefix("http://").split(":")
    heads = [
        b"GET /api/status HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /api/topics?" + b"filter=x&" * 1000 + b" HTTP/1.1\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    ]
    caplog.set_level(logging.DEBUG)
    for head in heads:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head)
        await writer.drain()
        assert (await reader.read()).split(b"\r\n")[0].endswith(b" 400 Bad Request"), head
        writer.close()
    assert (await asyncio.to_thread(get, f"{served}/healthz"))[0] == 200
    web = [r for r in caplog.records if r.name.startswith(("aiohttp", "gateway.web"))]
    assert not [r for r in web if r.levelno >= logging.WARNING or r.exc_info]
    said = [r.getMessage() for r in web if "not valid HTTP" in r.getMessage()]
    assert len(said) == len(heads), said
    assert "Duplicate Content-Length" in said[0] and "\n" not in "".join(said)


async def test_credentials_are_required_everywhere_but_healthz(tmp_path: Path) -> None:
    gateway, task, url = await start_gateway(tmp_path, username="tech", password="s3cret-pass")
    try:
        assert (await asyncio.to_thread(get, f"{url}/api/status"))[0] == 401
        assert (await asyncio.to_thread(get, f"{url}/api/status", ("tech", "wrong")))[0] == 401
        assert (await asyncio.to_thread(get, f"{url}/api/status", ("tech", "s3cret-pass")))[
            0
        ] == 200
        assert (await asyncio.to_thread(get, f"{url}/healthz"))[0] == 200
    finally:
        gateway.stop()
        await task


def test_listening_beyond_localhost_needs_credentials() -> None:
    from gateway.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"needs web\.username and web\.password"):
        load_data({"web": {"listen": "0.0.0.0:8080"}}, environ={})
    load_data({"web": {"listen": "0.0.0.0:8080", "username": "a", "password": "b"}}, environ={})


# The console's words (static/words.js, served from package data), run by Node.js: what
# the pages would say about a status document. The pages themselves run in a real browser
# (tests/e2e/test_console_browser.py).
CALLS = """
const fs = require("fs");
const Words = eval(fs.readFileSync(0, "utf8") + "; Words");
const calls = JSON.parse(process.argv[1]);
console.log(JSON.stringify(calls.map(([name, ...args]) => Words[name](...args))));
"""


def words_calls(*calls: list[Any], script: bytes | None = None) -> list[Any]:
    """Each [name, args...] of a words.js (the package's unless `script` is given),
    called by Node.js in one run."""
    if script is None:
        script = (resources.files("gateway.web") / "static" / "words.js").read_bytes()
    out = subprocess.run(
        ["node", "-e", CALLS, json.dumps(calls)],
        input=script,
        capture_output=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(out.stdout))


def words(script: bytes, status: dict[str, Any]) -> dict[str, str]:
    """The verdict and the disk banner the words.js `script` gives `status`."""
    verdict, disk = words_calls(["verdict", status], ["diskBanner", status], script=script)
    return {"verdict": verdict, "disk": disk}


def test_the_console_words_reloads_history_and_a_locked_editor() -> None:
    def reload(outcome: str, changes: list[str]) -> dict[str, Any]:
        return {"at": 1, "trigger": "edit", "outcome": outcome, "errors": [], "changes": changes}

    broken = "gw.yaml:4: the config is not valid YAML"
    said = words_calls(
        ["reloadChange", reload("applying", [])],
        ["reloadChange", reload("rolled_back", ["source meter added"])],
        ["reloadChange", reload("refused", [])],
        ["reloadChange", reload("applied", ["route r1 added"])],
        ["reloadChange", None],
        ["historyNote", {"ok": False, "status": 409, "data": {"errors": [broken]}}],
        ["historyNote", None],
        ["historyNote", {"ok": True, "status": 200, "data": {"versions": []}}],
        ["versionHash", {"hash": "0123456789ab"}, "0123456789ab"],
        ["versionHash", {"hash": "0123456789ab"}, "ffffffffffff"],
        ["editorLocked", ["no config file"], True],
        ["editorLocked", [broken], False],
    )
    # a reload being applied said "Not applied / no component"
    assert said[0] == ["Applying...", ""]
    assert said[1] == ["Not applied", "source meter added"]
    assert said[2] == ["Not applied", ""]  # a refused file names no change
    assert said[3] == ["What changed", "route r1 added"] and said[4] == ["What changed", ""]
    # versions that cannot be listed said "no kept versions yet"
    assert said[5] == f"History cannot be listed: {broken}"
    assert said[6].startswith("History cannot be listed: no answer")
    assert said[7].startswith("no kept versions yet")
    assert said[8] == "0123456789ab (running now)" and said[9] == "0123456789ab"
    # no config file was worded as a broken one ("Correct the file")
    assert "started without a config file (-c FILE)" in said[10]
    assert "does not load" not in said[10] and "Correct" not in said[10]
    assert broken in said[11] and "History" in said[11]


async def test_the_console_says_disk_full_with_the_numbers(served: str) -> None:
    _, script = await asyncio.to_thread(get, f"{served}/static/words.js")
    _, body = await asyncio.to_thread(get, f"{served}/api/status")
    status = json.loads(body)
    assert status["store"]["disk"]["full"] is False
    said = await asyncio.to_thread(words, script, status)
    assert said["disk"] == "" and "disk" not in said["verdict"]
    # the same status as the store reports it once the disk is full
    status["store"]["disk"].update(
        full=True, free_bytes=3 * 1048576, store_bytes=15 * 1048576, reserve=False
    )
    said = await asyncio.to_thread(words, script, status)
    alert = said["disk"]
    assert alert.startswith("DISK FULL: 3.0 MiB free") and "store 15.0 MiB" in alert
    assert "reserve given up" in alert and "Intake is paused" in alert
    assert said["verdict"].startswith("Disk full: intake is paused")


async def test_the_verdict_says_what_is_stuck_in_words(served: str) -> None:
    _, script = await asyncio.to_thread(get, f"{served}/static/words.js")
    for _ in range(100):  # a loaded machine may show the sink still connecting at first
        _, body = await asyncio.to_thread(get, f"{served}/api/status")
        status = json.loads(body)
        if status["sinks"]["out"]["state"] == "running":
            break
        await asyncio.sleep(0.1)
    status["sources"] = {}  # the served gateway's source never connects here
    assert (await asyncio.to_thread(words, script, status))["verdict"] == "All flowing"
    status["sinks"]["out"].update(oldest_age_s=12 * 60 + 5)
    status["sources"] = {
        "plc": {
            "state": "running",
            "devices": {"plc1": {"state": "offline"}, "plc2": {"state": "online"}},
        },
        "line": {"state": "reconnecting"},
    }
    verdict = (await asyncio.to_thread(words, script, status))["verdict"]
    assert verdict == "plc1 offline; line reconnecting; out is 12 min behind"
    status["sinks"]["out"].update(oldest_age_s=0, state="failed")
    status["sources"] = {}
    assert (await asyncio.to_thread(words, script, status))["verdict"] == "out failed"


async def test_a_dead_letter_action_with_both_seqs_and_all_is_refused(served: str) -> None:
    # {"all": true, "seqs": [5]} replayed only 5 (and purged only 5), where
    # `edge-stream dead-letters replay --all 5` is refused: which was meant is not known.
    def act(action: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{served}/api/dead-letters/{action}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    for action in ("replay", "purge"):
        for everything in (True, False):
            status, answer = await asyncio.to_thread(act, action, {"all": everything, "seqs": [5]})
            assert status == 400, answer
            assert answer["errors"] == [
                f"{action} takes only seqs or all, not both:"
                ' {"seqs": [SEQ, ...]} or {"all": true}'
            ]
        assert (await asyncio.to_thread(act, action, {"seqs": [5]}))[0] == 200
        # a key it does not take: {"all": true, "topic": "x"} purged every dead letter
        status, answer = await asyncio.to_thread(act, action, {"all": True, "topic": "x"})
        assert status == 400, answer
        assert answer["errors"] == [
            f"{action} takes only seqs or all, not 'topic':"
            ' {"seqs": [SEQ, ...]} or {"all": true}'
        ]
        status, answer = await asyncio.to_thread(act, action, {"seq": [5]})
        assert (status, answer["errors"]) == (
            400,
            [
                f"{action} takes only seqs or all, not 'seq' (did you mean 'seqs'?):"
                ' {"seqs": [SEQ, ...]} or {"all": true}'
            ],
        )

"""The config API's answers through the web server of a real (in-process) gateway: an
edit the gateway does not apply puts the file back, bodies are bounded, credentials
and methods are checked, and a gateway without a config file says so."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import files
from gateway.config.load import load
from tests.disk import fail_fsync_of
from tests.web.test_web import free_port

pytestmark = pytest.mark.integration

TEXT = """\
# a comment to keep
gateway: {id: api-test, data_dir: DATA}
mqtt: {url: "mqtt://127.0.0.1:1"}
routes:
  all: {match: "#", sinks: [out]}   # inline
sinks:
  out: {type: file}
web: {listen: "LISTEN"AUTH}
"""

Reload = Callable[[str], Awaitable[dict[str, Any]]]


async def _serve(
    tmp_path: Path,
    reload: Reload | None,
    with_path: bool = True,
    auth: str = "",
    settle: Callable[[str], None] | None = None,
) -> tuple[Gateway, asyncio.Task[None], str, Path]:
    port = free_port()
    path = tmp_path / "gw.yaml"
    text = TEXT.replace("DATA", str(tmp_path / "data")).replace("LISTEN", f"127.0.0.1:{port}")
    path.write_text(text.replace("AUTH", auth))
    gateway = Gateway(load(path, environ={}), str(path) if with_path else None)
    gateway.reload_now = reload
    if settle is not None:
        gateway.settle_config = settle
    task = asyncio.create_task(gateway.run())
    async with asyncio.timeout(10):
        await gateway.ready.wait()
    return gateway, task, f"http://127.0.0.1:{port}", path


@pytest.fixture
async def stop() -> AsyncIterator[list[tuple[Gateway, asyncio.Task[None]]]]:
    running: list[tuple[Gateway, asyncio.Task[None]]] = []
    yield running
    for gateway, task in running:
        gateway.stop()
        await task


def _call(
    url: str, method: str, body: bytes | None = None, auth: tuple[str, str] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


async def test_an_edit_the_gateway_rolls_back_puts_the_file_back(
    tmp_path: Path, stop: list[Any]
) -> None:
    calls = []

    async def rolled_back(_trigger: str) -> dict[str, Any]:
        # what the engine answers when a changed sink fails to start
        calls.append(path.read_text())
        return {"outcome": "rolled_back", "errors": ["sinks.two: cannot start"], "changes": []}

    gateway, task, url, path = await _serve(tmp_path, rolled_back)
    stop.append((gateway, task))
    before = path.read_text()
    body = json.dumps({"type": "file", "path": "two.jsonl"}).encode()
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/sinks/two", "PUT", body)
    assert status == 409, answer
    assert answer["outcome"] == "rolled_back" and answer["errors"] == ["sinks.two: cannot start"]
    assert "  two:" in calls[0]  # the reload saw the edited file
    assert path.read_text() == before  # and it is back as it was
    assert [v.name for v in files.versions(tmp_path / "data")] == [answer["version"]]


async def test_an_edit_that_cannot_be_saved_says_why_in_one_line(
    tmp_path: Path, stop: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A full disk, or a config-history/ left to root by `sudo edge-stream config
    # rollback` (README: run it as the service user): each edit was a 500 "Internal
    # Server Error" with a traceback in the log, and the page said nothing useful.
    calls = []

    async def applied(_trigger: str) -> dict[str, Any]:
        calls.append(_trigger)
        return {"outcome": "applied", "errors": [], "changes": []}

    gateway, task, url, path = await _serve(tmp_path, applied)
    stop.append((gateway, task))
    before = path.read_text()
    (tmp_path / "data" / "config-history").write_text("not a folder")
    body = json.dumps({"type": "file", "path": "two.jsonl"}).encode()
    for where, method, sent in (("sinks/two", "PUT", body), ("routes/all", "DELETE", None)):
        status, answer = await asyncio.to_thread(_call, f"{url}/api/config/{where}", method, sent)
        assert status == 500, answer
        assert answer["errors"] == [
            f"{tmp_path / 'data' / 'config-history'}: cannot write there (File exists);"
            " nothing was changed: free some space, or let the gateway's user write there"
        ]
    assert path.read_text() == before and calls == []
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_requests_are_bounded_and_checked(tmp_path: Path, stop: list[Any]) -> None:
    async def applied(_trigger: str) -> dict[str, Any]:
        return {"outcome": "applied", "errors": []}

    gateway, task, url, path = await _serve(
        tmp_path, applied, auth=', username: admin, password: "s3cret-pass"'
    )
    stop.append((gateway, task))
    before = path.read_text()
    sink = f"{url}/api/config/sinks/two"
    creds = ("admin", "s3cret-pass")
    good = json.dumps({"type": "file"}).encode()
    assert (await asyncio.to_thread(_call, sink, "PUT", good))[0] == 401
    big = json.dumps({"type": "file", "path": "x" * (300 << 10)}).encode()
    assert (await asyncio.to_thread(_call, sink, "PUT", big, creds))[0] == 413
    assert (await asyncio.to_thread(_call, sink, "POST", good, creds))[0] == 405
    assert (await asyncio.to_thread(_call, f"{url}/api/config", "PUT", good, creds))[0] == 405
    status, answer = await asyncio.to_thread(_call, sink, "PUT", b"[1, 2]", creds)
    assert status == 400 and "JSON object" in answer["errors"][0]
    # a typo in a hand-typed body was "the body must be a JSON object", which it was
    # meant to be: now it says where it is not JSON
    typo = b'{"type": "file",\n "path": "x.jsonl",}'
    for where in (sink, f"{sink}?check=1"):
        status, answer = await asyncio.to_thread(_call, where, "PUT", typo, creds)
        assert (status, answer["errors"]) == (
            400,
            [
                "sinks.two: the body is not JSON: Expecting property name enclosed in double"
                " quotes at line 2 column 20"
            ],
        )
    status, _ = await asyncio.to_thread(_call, f"{url}/api/config/webs/x", "PUT", good, creds)
    assert status == 404
    # Python's json takes NaN, which no JSON has: it went on to "would not read back as
    # sent ... please report this" (NaN equals nothing, itself included)
    for odd in (b"NaN", b"-Infinity"):
        body = b'{"type": "file", "rotate_interval": ' + odd + b"}"
        for where in (sink, f"{sink}?check=1"):
            status, answer = await asyncio.to_thread(_call, where, "PUT", body, creds)
            assert status == 400, answer
            assert answer["errors"] == [f"sinks.two: {odd.decode()} is not JSON; send a number"]
    # nor does a file hold a lone surrogate, which JSON may write ("\ud800")
    for odd in (b'"path": "a\\ud800"', b'"\\udfff": 1'):
        body = b'{"type": "file", ' + odd + b"}"
        status, answer = await asyncio.to_thread(_call, f"{sink}?check=1", "PUT", body, creds)
        assert status == 400, answer
        assert answer["errors"][0].endswith("is half of a character, not text"), answer
    assert path.read_text() == before
    status, shown = await asyncio.to_thread(_call, f"{url}/api/config", "GET", None, creds)
    assert status == 200 and shown["config"]["web"]["password"] == "***"
    assert "s3cret-pass" not in json.dumps(shown)
    status, answer = await asyncio.to_thread(_call, sink, "PUT", good, creds)
    assert (status, answer["outcome"]) == (200, "applied")
    assert "# a comment to keep" in path.read_text() and "  two:" in path.read_text()


async def test_without_a_config_file_there_is_nothing_to_edit(
    tmp_path: Path, stop: list[Any]
) -> None:
    gateway, task, url, _ = await _serve(tmp_path, None, with_path=False)
    stop.append((gateway, task))
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config", "GET")
    assert status == 409 and "without a config file" in answer["errors"][0]
    assert answer["path"] is None  # the page words it apart from a broken file


async def test_a_reload_refused_says_why_in_json(tmp_path: Path, stop: list[Any]) -> None:
    # /api/config/reload's 413 was JSON ({"errors": [...]}) but its 405 ("only POST") and
    # its 404 (no config file) plain text: a client reading the errors read none.
    gateway, task, url, _ = await _serve(tmp_path, None, with_path=False)
    stop.append((gateway, task))
    reload = f"{url}/api/config/reload"
    status, answer = await asyncio.to_thread(_call, reload, "GET")
    assert (status, answer) == (405, {"errors": ["a reload is a POST"]})
    status, answer = await asyncio.to_thread(_call, reload, "POST", b"")
    assert (status, answer) == (404, {"errors": ["no config file to reload"]})


async def test_check_shows_the_change_and_writes_nothing(tmp_path: Path, stop: list[Any]) -> None:
    calls: list[str] = []

    async def applied(_trigger: str) -> dict[str, Any]:
        calls.append(path.read_text())
        return {"outcome": "applied", "errors": [], "changes": ["route alarms added"]}

    gateway, task, url, path = await _serve(tmp_path, applied)
    stop.append((gateway, task))
    before = path.read_text()
    route = f"{url}/api/config/routes/alarms"
    body = json.dumps({"match": "alarms/#", "sinks": ["out"]}).encode()
    status, answer = await asyncio.to_thread(_call, f"{route}?check=1", "PUT", body)
    assert status == 200, answer
    assert answer["outcome"] == "checked" and answer["changes"] == ["routes.alarms: added"]
    assert "+  alarms:" in answer["diff"] and "+    - alarms/#" in answer["diff"]
    wrong = json.dumps({"match": "alarms/#", "sinks": ["nope"]}).encode()
    status, answer = await asyncio.to_thread(_call, f"{route}?check=1", "PUT", wrong)
    assert status == 422 and "routes.alarms.sinks.0" in answer["errors"][0]
    status, answer = await asyncio.to_thread(
        _call, f"{url}/api/config/routes/all?check=1", "DELETE"
    )
    assert status == 200 and answer["changes"] == ["routes.all: removed"]
    assert "-  all:" in answer["diff"]
    # `check` spelt otherwise still only checks: `?check=true` wrote and applied the edit
    for asked in ("true", "yes", "True", ""):
        status, answer = await asyncio.to_thread(_call, f"{route}?check={asked}", "PUT", body)
        assert status == 200 and answer["outcome"] == "checked", asked
    # a query it does not take is refused: `?chek=1` or `?dry_run=1` applied the edit
    for asked in ("chek=1", "dry_run=1", "check=1&dryrun=1"):
        status, answer = await asyncio.to_thread(_call, f"{route}?{asked}", "PUT", body)
        assert status == 400 and answer["outcome"] == "refused", asked
        assert "the config API takes only ?check (show before apply)" in answer["errors"][0]
    status, answer = await asyncio.to_thread(_call, f"{route}?chek=1", "PUT", body)
    assert answer["errors"] == [
        "the config API takes only ?check (show before apply) and ?hash,"
        " not 'chek' (did you mean 'check'?)"
    ]
    assert path.read_text() == before and calls == []  # nothing written, nothing applied
    assert files.versions(tmp_path / "data") == []
    status, answer = await asyncio.to_thread(_call, f"{route}?check=0", "PUT", body)
    assert status == 200 and answer["outcome"] == "applied" and len(calls) == 1


async def test_an_edit_with_the_checked_hash_is_refused_once_the_file_changed(
    tmp_path: Path, stop: list[Any]
) -> None:
    # the console's Apply sends the hash its check answered: another change between the
    # two was overwritten in that route, which the diff shown said nothing of
    async def applied(_trigger: str) -> dict[str, Any]:
        return {"outcome": "applied", "errors": [], "changes": []}

    gateway, task, url, path = await _serve(tmp_path, applied)
    stop.append((gateway, task))
    route = f"{url}/api/config/routes/all"
    body = json.dumps({"match": "a/#", "sinks": ["out"]}).encode()
    status, answer = await asyncio.to_thread(_call, f"{route}?check=1", "PUT", body)
    assert status == 200 and answer["hash"] == files.text_hash(path.read_text())
    checked = answer["hash"]
    path.write_text(path.read_text().replace('"#"', '"b/#"'))  # another user's change
    changed = path.read_text()
    for method, sent in (("PUT", body), ("DELETE", None)):
        status, answer = await asyncio.to_thread(_call, f"{route}?hash={checked}", method, sent)
        assert status == 409 and answer["outcome"] == "changed", answer
        assert "changed since your check" in answer["errors"][0]
    assert path.read_text() == changed
    now = files.text_hash(changed)
    status, answer = await asyncio.to_thread(_call, f"{route}?hash={now}", "PUT", body)
    assert status == 200 and answer["outcome"] == "applied", answer
    assert '"a/#"' in path.read_text() or "a/#" in path.read_text()


async def test_versions_and_rollback_through_the_api(tmp_path: Path, stop: list[Any]) -> None:
    outcomes = ["applied"]

    async def reload(_trigger: str) -> dict[str, Any]:
        return {"outcome": outcomes[0], "errors": [], "changes": ["route alarms"]}

    gateway, task, url, path = await _serve(tmp_path, reload)
    stop.append((gateway, task))
    original = path.read_text()
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/versions", "GET")
    assert status == 200 and answer == {"versions": []}
    body = json.dumps({"match": "alarms/#", "sinks": ["out"]}).encode()
    status, put = await asyncio.to_thread(_call, f"{url}/api/config/routes/alarms", "PUT", body)
    assert status == 200, put
    edited = path.read_text()
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/versions", "GET")
    assert [v["name"] for v in answer["versions"]] == [put["version"]]
    assert answer["versions"][0]["hash"] == files.text_hash(original)
    # the same again (Apply pressed twice) changes no byte: no version of the same text
    # pushes a kept one out of the 20
    status, again = await asyncio.to_thread(_call, f"{url}/api/config/routes/alarms", "PUT", body)
    assert (status, again["outcome"], again["version"]) == (200, "applied", None)
    assert [v.name for v in files.versions(tmp_path / "data")] == [put["version"]]
    # the gateway refuses the rolled-back text: the file stays as it runs
    outcomes[0] = "refused"
    asked = json.dumps({"version": put["version"]}).encode()
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/rollback", "POST", asked)
    assert status == 409 and answer["outcome"] == "refused" and path.read_text() == edited
    outcomes[0] = "applied"
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/rollback", "POST", asked)
    assert status == 200 and answer["outcome"] == "applied", answer
    assert answer["restored"] == put["version"] and path.read_text() == original
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/rollback", "POST", asked)
    assert status == 200 and answer["outcome"] == "unchanged"  # it holds that text already
    status, answer = await asyncio.to_thread(
        _call, f"{url}/api/config/rollback", "POST", b'{"version": "nope"}'
    )
    assert status == 409 and "no kept config version 'nope'" in answer["errors"][0]
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/rollback", "POST", b"[1]")
    assert status == 400
    # a misspelt key rolled back to the newest version, not the one named
    typo = json.dumps({"versoin": put["version"]}).encode()
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/rollback", "POST", typo)
    assert status == 400 and answer["errors"] == [
        "the body: {\"version\": NAME} or nothing (the newest), not 'versoin' (did you mean"
        " 'version'?)"
    ]
    assert path.read_text() == original
    # a file broken by hand in another section (the gateway refused its reload and runs
    # on): the versions and the rollback that mends it were refused, 409, as the file was
    path.write_text(original.replace("type: file", "type: fil"))
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config", "GET")
    assert status == 409 and "sinks.out.type: unknown sink type 'fil'" in answer["errors"][0]
    assert answer["path"] == str(path)
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/versions", "GET")
    assert status == 200 and put["version"] in [v["name"] for v in answer["versions"]], answer
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/rollback", "POST", asked)
    assert status == 200 and answer["outcome"] == "applied" and path.read_text() == original
    # The commonest hand-breaks leave no readable data_dir in the file, or another one:
    # the versions and the rollback answered 409, or looked in ./data. They are under
    # the running gateway's data_dir.
    data_line = f"gateway: {{id: api-test, data_dir: {tmp_path / 'data'}}}"
    for broken in (
        original.replace("routes:", "routes: [", 1),  # a YAML syntax error
        original.replace("data_dir:", "datadir:"),  # a typo inside gateway:
        original.replace(data_line, "gateway: {id: api-test}"),  # data_dir removed
        original.replace(str(tmp_path / "data"), str(tmp_path / "moved")),
        "",  # an emptied file
    ):
        assert broken != original
        path.write_text(broken)
        status, answer = await asyncio.to_thread(_call, f"{url}/api/config/versions", "GET")
        assert status == 200 and put["version"] in [v["name"] for v in answer["versions"]], (
            broken,
            answer,
        )
        status, answer = await asyncio.to_thread(_call, f"{url}/api/config/rollback", "POST", asked)
        assert status == 200 and answer["outcome"] == "applied", (broken, answer)
        assert path.read_text() == original
        assert broken in [v.read_text() for v in (tmp_path / "data/config-history").iterdir()]


async def test_a_rollback_asked_to_check_only_is_refused_not_applied(
    tmp_path: Path, stop: list[Any]
) -> None:
    # ?check=1 shows an edit before applying it; on a rollback it was ignored: the
    # rollback was written and applied by a request that asked only to look.
    reloads: list[str] = []

    async def applied(trigger: str) -> dict[str, Any]:
        reloads.append(trigger)
        return {"outcome": "applied", "errors": []}

    gateway, task, url, path = await _serve(tmp_path, applied)
    stop.append((gateway, task))
    body = json.dumps({"type": "file"}).encode()
    status, _ = await asyncio.to_thread(_call, f"{url}/api/config/sinks/two", "PUT", body)
    assert status == 200
    edited = path.read_text()
    status, answer = await asyncio.to_thread(
        _call, f"{url}/api/config/rollback?check=1", "POST", b"{}"
    )
    assert status == 400 and "check" in answer["errors"][0], answer
    # nor any other query: it was told "takes only ?check (show before apply)", which
    # a rollback refuses
    for asked, named in (("chek=1", "chek"), ("check=1&dry_run=1", "dry_run")):
        status, answer = await asyncio.to_thread(
            _call, f"{url}/api/config/rollback?{asked}", "POST", b"{}"
        )
        assert (status, answer["errors"]) == (
            400,
            [
                f"a rollback takes no query parameters, not '{named}': POST"
                ' /api/config/rollback with the body {"version": NAME} or nothing (the newest)'
            ],
        ), asked
    assert path.read_text() == edited and reloads == ["edit"]


async def test_a_405_names_the_methods_the_path_takes(tmp_path: Path, stop: list[Any]) -> None:
    # The config API's 405s (and /api/config/reload's) said no Allow, which RFC 9110
    # asks of every 405 (aiohttp's own 405s of the other paths carry one).
    gateway, task, url, _path = await _serve(tmp_path, None)
    stop.append((gateway, task))

    def allow(path: str, method: str) -> tuple[int, str | None]:
        request = urllib.request.Request(f"{url}{path}", data=b"{}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers.get("Allow")
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Allow")

    for path, method, allowed in (
        ("/api/config", "PUT", "GET, HEAD"),
        ("/api/config/versions", "DELETE", "GET, HEAD"),
        ("/api/config/rollback", "PUT", "POST"),
        ("/api/config/sinks/out", "POST", "PUT, DELETE"),
        ("/api/config/reload", "PUT", "POST"),
    ):
        assert await asyncio.to_thread(allow, path, method) == (405, allowed), path


async def test_an_edit_and_a_rollback_written_but_not_synced_are_applied_and_said(
    tmp_path: Path, stop: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync of the config's folder failed (EIO) after the new text was renamed over
    the file: the edit and the rollback answered 500 and did not reload, while the file
    held their text."""

    reloads: list[str] = []

    async def reload(trigger: str) -> dict[str, Any]:
        reloads.append(trigger)
        return {"outcome": "applied", "errors": []}

    gateway, task, url, path = await _serve(tmp_path, reload)
    stop.append((gateway, task))
    original = path.read_text()
    fail_fsync_of(monkeypatch, tmp_path)  # the config's folder
    warning = (
        f"{path}: the file was replaced, but its folder could not be synced to the disk"
        " (Input/output error), so a power cut may yet bring back the old text: see to the"
        " disk (dmesg says why)"
    )
    body = json.dumps({"match": "alarms/#", "sinks": ["out"]}).encode()
    status, put = await asyncio.to_thread(_call, f"{url}/api/config/routes/alarms", "PUT", body)
    assert (status, put["outcome"], put["errors"]) == (200, "applied", [warning]), put
    assert "alarms/#" in path.read_text() and reloads == ["edit"]
    assert [v.name for v in files.versions(tmp_path / "data")] == [put["version"]]
    asked = json.dumps({"version": put["version"]}).encode()
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/rollback", "POST", asked)
    assert (status, answer["outcome"], answer["errors"]) == (200, "applied", [warning]), answer
    assert path.read_text() == original and reloads == ["edit", "rollback"]


async def test_an_edit_and_a_rollback_refused_are_put_back_on_a_disk_that_cannot_sync(
    tmp_path: Path, stop: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync of the config's folder fails (EIO) and the gateway refuses what was
    written: putting the old text back failed the same fsync and answered 500 with a
    traceback, the text back but the file's watcher never settled on it."""

    reloads: list[str] = []
    settled: list[str] = []

    async def reload(trigger: str) -> dict[str, Any]:
        reloads.append(trigger)
        if len(reloads) == 1:
            return {"outcome": "applied", "errors": []}
        return {"outcome": "refused", "errors": ["it failed"]}

    gateway, task, url, path = await _serve(tmp_path, reload, settle=settled.append)
    stop.append((gateway, task))
    original = path.read_text()
    body = json.dumps({"match": "alarms/#", "sinks": ["out"]}).encode()
    status, put = await asyncio.to_thread(_call, f"{url}/api/config/routes/alarms", "PUT", body)
    assert (status, put["outcome"]) == (200, "applied"), put
    edited = path.read_text()
    fail_fsync_of(monkeypatch, tmp_path)  # the config's folder
    warning = (
        f"{path}: the file was replaced, but its folder could not be synced to the disk"
        " (Input/output error), so a power cut may yet bring back the old text: see to the"
        " disk (dmesg says why)"
    )
    body = json.dumps({"match": "alarms/+", "sinks": ["out"]}).encode()
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/routes/alarms", "PUT", body)
    assert (status, answer["outcome"]) == (409, "refused"), answer
    assert answer["errors"] == ["it failed", warning]
    assert path.read_text() == edited and settled == [edited]
    asked = json.dumps({"version": put["version"]}).encode()
    status, answer = await asyncio.to_thread(_call, f"{url}/api/config/rollback", "POST", asked)
    assert (status, answer["outcome"]) == (409, "refused"), answer
    assert answer["errors"] == ["it failed", warning]
    assert path.read_text() == edited and settled == [edited, edited]
    assert original != edited and reloads == ["edit", "edit", "rollback"]

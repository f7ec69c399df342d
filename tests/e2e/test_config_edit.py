"""Config edits through the API with the real process: PUT a sink and a route and see
data reach the new sink, DELETE a source, keep every comment of the hand-written file,
refuse an invalid edit with its key path, and put a kept version back with
`edge-stream config rollback`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e

HAND_WRITTEN = """\
# The test bench gateway.  Hand-written; keep the comments.
gateway:
  id: bench     # shows in /api/status
  data_dir: DATA
  watch_config: false   # only the API and the CLI reload here

sources:
  # the Pi's own health, every second
  host:   {type: system, interval: 1s}
  spare:                 # to be removed through the API
    type: system
    interval: 5s

routes:
  all:
    match: "#"
    sinks: [out]   # everything

sinks:
  out: {type: file, path: "out.jsonl"}   # relative: under data_dir

web: {listen: "LISTEN"}
# end of the file
"""


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path, {})
    text = HAND_WRITTEN.replace("DATA", str(gateway.data_dir))
    gateway.config_path.write_text(text.replace("LISTEN", f"127.0.0.1:{gateway.web_port}"))
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.close()


def _call(gw: GatewayProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.web_port}{path}", data=data, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_edits_through_the_api_apply_and_keep_the_file(gw: GatewayProcess) -> None:
    original = gw.config_path.read_text()
    comments = [line.split("#", 1)[1] for line in original.splitlines() if " #" in line]

    status, answer = _call(gw, "PUT", "/api/config/sinks/extra", {"type": "file"})
    assert (status, answer["outcome"], answer["errors"]) == (200, "applied", []), answer
    assert answer["version"]
    status, answer = _call(
        gw, "PUT", "/api/config/routes/health", {"match": "#", "sinks": ["extra"]}
    )
    assert (status, answer["outcome"]) == (200, "applied"), answer
    extra = gw.data_dir / "extra.jsonl"  # the file sink's default path
    wait_for(lambda: _lines(extra), 20, "data in the sink added through the API")

    status, answer = _call(gw, "DELETE", "/api/config/sources/spare")
    assert (status, answer["outcome"]) == (200, "applied"), answer
    assert answer["changes"] == ["source spare removed"], answer
    assert gw.status()["config"]["last_reload"]["trigger"] == "edit"
    wait_for(lambda: "spare" not in gw.status()["sources"], 20, "the removed source gone")

    text = gw.config_path.read_text()
    for comment in comments:
        if "removed through the API" not in comment:  # on the removed source's line
            assert comment in text, comment
    # outside the edited parts the text is the user's, line for line
    kept = [line for line in original.splitlines() if "spare" not in line and "5s" not in line]
    kept.remove("    type: system")
    assert [line for line in text.splitlines() if line in kept] == kept
    assert "  health:\n    match: '#'\n    sinks: [extra]\n" in text
    assert "  extra:\n    type: file\n" in text

    # what the page would show: the file's effective config, the new parts in it
    status, shown = _call(gw, "GET", "/api/config")
    assert status == 200 and set(shown["config"]["sinks"]) == {"out", "extra"}

    # an invalid edit: the key path in the answer, the file and the running config as they were
    before = gw.config_path.read_text()
    status, answer = _call(gw, "PUT", "/api/config/routes/r1", {"match": "#", "sinks": ["x"]})
    assert status == 422 and answer["outcome"] == "refused", answer
    assert any("routes.r1.sinks" in e and "'x'" in e for e in answer["errors"]), answer
    assert gw.config_path.read_text() == before
    assert "r1" not in gw.status()["routes"]
    assert _call(gw, "GET", "/api/config/routes/r1")[0] == 405
    assert _call(gw, "DELETE", "/api/config/routes/nope")[0] == 404

    # the versions the edits replaced, and a rollback of the last one (the DELETE)
    listed = _cli("versions", "-c", str(gw.config_path))
    assert listed.returncode == 0, listed.stderr
    assert "3 kept versions" in listed.stdout
    rolled = _cli("rollback", "-c", str(gw.config_path))
    assert rolled.returncode == 0, rolled.stderr
    assert "the running gateway applied it" in rolled.stdout
    assert "spare:" in gw.config_path.read_text()
    wait_for(lambda: "spare" in gw.status()["sources"], 20, "the source back after rollback")
    assert gw.status()["config"]["last_reload"]["trigger"] == "rollback"
    assert "4 kept versions" in _cli("versions", "-c", str(gw.config_path)).stdout

    # the oldest version is the hand-written file itself
    oldest = listed.stdout.splitlines()[2].split()[0]
    rolled = _cli("rollback", "-c", str(gw.config_path), oldest)
    assert rolled.returncode == 0, rolled.stderr
    assert gw.config_path.read_text() == original


def test_the_running_text_stays_recoverable_after_a_hand_broken_file(gw: GatewayProcess) -> None:
    """An API edit, then a syntax error typed by hand: the gateway runs on with the
    edited config and refuses the file. The text it runs is kept as the newest version
    (so History marks it running), and a rollback to the newest puts back exactly what
    runs: the removed source stays removed."""
    status, answer = _call(gw, "DELETE", "/api/config/sources/spare")
    assert (status, answer["outcome"]) == (200, "applied"), answer
    running = gw.config_path.read_text()
    running_hash = gw.status()["config"]["hash"]

    gw.config_path.write_text(running + "sinks: [oops\n")  # broken by hand
    status, answer = _call(gw, "POST", "/api/config/reload")
    assert answer["outcome"] == "refused", answer
    assert gw.status()["config"]["hash"] == running_hash  # the edited config still runs

    status, answer = _call(gw, "GET", "/api/config/versions")
    assert status == 200, answer
    newest = answer["versions"][0]
    assert newest["hash"] == running_hash, answer  # History marks it "(running now)"
    assert len({v["hash"] for v in answer["versions"]}) == len(answer["versions"]), answer

    # broken again, the running text is not kept twice
    gw.config_path.write_text(running + "sinks: [oops, again\n")
    status, again = _call(gw, "POST", "/api/config/reload")
    assert again["outcome"] == "refused", again
    assert _call(gw, "GET", "/api/config/versions")[1] == answer

    status, answer = _call(gw, "POST", "/api/config/rollback", {})
    assert (status, answer["outcome"]) == (200, "applied"), answer
    assert answer["restored"] == newest["name"]
    assert gw.config_path.read_text() == running
    assert "spare" not in gw.status()["sources"]

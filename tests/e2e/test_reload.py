"""Reload triggers with the real process: a change of the config file (written in place
or renamed over it), POST /api/config/reload and `edge-stream reload`; an invalid file
is refused, its errors are in /api/status and the running config stays."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import GatewayProcess, free_port, store_write_lock, wait_for

pytestmark = pytest.mark.e2e


def _config(**gateway: Any) -> dict[str, Any]:
    return {
        "gateway": dict(gateway),
        "sources": {"host": {"type": "system", "interval": "1s"}},
        "routes": {"all": {"match": "#", "sinks": ["out"]}},
        "sinks": {"out": {"type": "file", "path": "out.jsonl"}},
    }


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path, _config())
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.close()


def _edit(gw: GatewayProcess, change: Any) -> None:
    """Rewrite the file in place with `change` applied to its data."""
    data = yaml.safe_load(gw.config_path.read_text())
    change(data)
    gw.config_path.write_text(yaml.safe_dump(data))


def _add_sink(name: str) -> Any:
    def change(data: dict[str, Any]) -> None:
        data["sinks"][name] = {"type": "file", "path": f"{name}.jsonl"}
        data["routes"]["all"]["sinks"].append(name)

    return change


def _reload(gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.web_port}/api/config/reload", data=b"", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, {}


def _cli_reload(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "reload", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_valid_edit_is_applied_without_a_signal(gw: GatewayProcess) -> None:
    before = gw.status()["config"]
    assert before["path"] == str(gw.config_path) and len(before["hash"]) == 12
    assert before["last_reload"] is None
    _edit(gw, _add_sink("second"))
    wait_for(lambda: "second" in gw.status()["sinks"], 10, "the new sink, without a signal")
    wait_for(
        lambda: (gw.status()["config"]["last_reload"] or {}).get("outcome") == "applied",
        10,
        "the reload's outcome",
    )
    config = gw.status()["config"]
    assert config["last_reload"]["trigger"] == "file"
    assert config["hash"] != before["hash"] and config["loaded_at"] > before["loaded_at"]


def test_an_invalid_edit_is_refused_and_the_running_config_stays(gw: GatewayProcess) -> None:
    loaded = gw.status()["config"]
    _edit(gw, lambda data: data["sinks"]["out"].update(type="nowhere"))
    last = wait_for(
        lambda: gw.status()["config"]["last_reload"], 10, "the refused reload in /api/status"
    )
    assert last["trigger"] == "file" and last["outcome"] == "refused"
    assert any("sinks.out" in e and "nowhere" in e for e in last["errors"]), last
    status = gw.status()
    assert status["config"]["hash"] == loaded["hash"]
    assert status["sinks"]["out"]["state"] == "running"
    assert "reload refused, the running config stays" in gw.log()
    assert gw.log().count(" is up; status page") == 1


def test_a_file_renamed_over_the_config_is_noticed(gw: GatewayProcess) -> None:
    data = yaml.safe_load(gw.config_path.read_text())
    _add_sink("renamed")(data)
    new = gw.config_path.with_name("gateway.yaml.tmp")
    new.write_text(yaml.safe_dump(data))
    os.replace(new, gw.config_path)  # how editors save: a new inode under the old name
    wait_for(lambda: "renamed" in gw.status()["sinks"], 10, "the sink of the renamed file")
    wait_for(
        lambda: gw.status()["config"]["last_reload"]["outcome"] == "applied", 10, "the outcome"
    )
    assert gw.status()["config"]["last_reload"]["trigger"] == "file"


def test_the_running_text_put_back_after_an_unreadable_one_is_read(gw: GatewayProcess) -> None:
    """A file over 256 KiB (or not UTF-8, or removed) is refused before its text is read:
    the running text put back was taken for the text already tried, and the refusal
    stayed in /api/status over the file put right."""
    text = gw.config_path.read_text()
    gw.config_path.write_text(text + ("# " + "x" * 1000 + "\n") * 300)
    wait_for(
        lambda: (gw.status()["config"]["last_reload"] or {}).get("outcome") == "refused",
        10,
        "the refusal of the file over 256 KiB",
    )
    assert "larger than 256 KiB" in gw.status()["config"]["last_reload"]["errors"][0]
    gw.config_path.write_text(text)
    wait_for(
        lambda: gw.status()["config"]["last_reload"]["outcome"] == "applied",
        10,
        "the running text put back, read again",
    )
    assert gw.status()["config"]["last_reload"]["errors"] == []


def test_a_refused_reload_keeps_the_first_50_problems_and_counts_the_rest(
    gw: GatewayProcess,
) -> None:
    """A 256 KiB file can hold thousands of problems: each refused attempt kept them all
    in the store's 1000 history records, the log and every /api/status document."""
    data = yaml.safe_load(gw.config_path.read_text())
    # sources: 300 sinks would bring one more problem (a store keeps at most 62 sinks)
    data.setdefault("sources", {}).update({f"s{i}": {"type": "nowhere"} for i in range(300)})
    gw.config_path.write_text(yaml.safe_dump(data))
    last = wait_for(
        lambda: (
            (gw.status()["config"]["last_reload"] or {}).get("outcome") == "refused"
            and gw.status()["config"]["last_reload"]
        ),
        10,
        "the refusal of the file with 300 problems",
    )
    errors = last["errors"]
    assert len(errors) == 51 and all("nowhere" in e for e in errors[:50]), errors[-2:]
    assert errors[50] == (
        f"... and 250 more problems: `edge-stream check-config -c {gw.config_path}` says them all"
    )


def test_post_api_config_reload_answers_the_outcome(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, _config(watch_config=False))
    gw.start()
    try:
        _edit(gw, lambda data: data["sinks"]["out"].update(type="nowhere"))
        status, answer = _reload(gw)
        assert status == 200 and answer["outcome"] == "refused", answer
        assert any("nowhere" in e for e in answer["errors"]), answer
        assert gw.status()["config"]["last_reload"]["trigger"] == "api"

        _edit(gw, lambda data: data["sinks"]["out"].update(type="file"))
        _edit(gw, _add_sink("by_api"))
        assert _reload(gw) == (
            200,
            {
                "outcome": "applied",
                "errors": [],
                "changes": ["sink by_api added", "route all changed"],
                "path": str(gw.config_path),
            },
        )
        wait_for(lambda: "by_api" in gw.status()["sinks"], 10, "the sink after the POST")
        # watch_config: false, so only the POSTs reloaded
        assert gw.log().count("reload refused") == 1
    finally:
        gw.close()


def test_a_sink_the_store_has_no_room_for_is_refused_and_reloads_go_on(tmp_path: Path) -> None:
    """The store keeps 62 sinks at most, removed ones included until `store drop-sink`:
    a reload adding one more (a rename, after 61 others came and went) failed half way
    with a StoreError; its outcome said "applying" for ever and no reload was taken
    after it. It is refused, naming the removed sinks, and the next reload applies."""
    from gateway.store.sqlite import Store

    gw = GatewayProcess(tmp_path, _config(watch_config=False))
    gw.data_dir.mkdir()

    async def fill() -> None:  # 61 sinks of earlier configs, removed since
        store = Store(gw.store_path)
        await store.open([f"old{i}" for i in range(61)])
        await store.close()

    asyncio.run(fill())
    gw.start()
    try:
        _edit(gw, _add_sink("two"))
        status, answer = _reload(gw)
        assert status == 200 and answer["outcome"] == "refused", answer
        assert answer["errors"] == [
            "at most 62 sinks can share one store; with this config it would keep 63: the 2"
            " configured and 61 removed (old0, old1, old10, old11, old12, ...), kept until"
            " `edge-stream store drop-sink NAME` drops them (with a config without them"
            " running)"
        ]
        assert gw.status()["sinks"]["out"]["state"] == "running"
        dropped = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "store", "drop-sink", "old0"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "EDGE_STREAM_CONFIG": str(gw.config_path)},
        )
        assert dropped.returncode == 0, dropped.stderr
        wait_for(
            lambda: "old0" not in gw.status()["store"]["removed_sinks"],
            10,
            "the running gateway to let go of the dropped sink",
        )
        status, answer = _reload(gw)
        assert answer["outcome"] == "applied", answer
        wait_for(lambda: "two" in gw.status()["sinks"], 10, "the sink added once room was made")
    finally:
        gw.close()


def test_a_reload_the_store_cannot_note_is_refused_and_reloads_go_on(tmp_path: Path) -> None:
    """A store that cannot note a new sink (its write lock held past the busy timeout, as
    by another program, or a full disk) failed the reload half way: its outcome said
    "applying" for ever and no reload was taken after it. It is refused, nothing
    changed, and the next one applies."""
    config = _config(watch_config=False)
    del config["sources"]
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    try:
        _edit(gw, _add_sink("two"))
        with ThreadPoolExecutor(1) as pool:
            with store_write_lock(gw.store_path):
                pending = pool.submit(_reload, gw)
                # let go once refused: the reload's record then waits for no busy timeout
                wait_for(
                    lambda: "reload refused" in gw.log_path.read_text(errors="replace"),
                    30,
                    "the refusal of the reload the store cannot note",
                )
            status, answer = pending.result(timeout=30)
        assert status == 200 and answer["outcome"] == "refused", answer
        assert answer["errors"] == [f"store {gw.store_path}: database is locked"], answer
        assert "two" not in gw.status()["sinks"]
        assert gw.status()["sinks"]["out"]["state"] == "running"
        status, answer = _reload(gw)
        assert answer["outcome"] == "applied", answer
        wait_for(lambda: "two" in gw.status()["sinks"], 10, "the sink added by the next reload")
    finally:
        gw.close()


def test_post_api_config_reload_needs_the_credentials(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, _config())
    data = yaml.safe_load(gw.config_path.read_text())
    data["web"].update(username="admin", password="s3cret-pass")
    gw.config_path.write_text(yaml.safe_dump(data))
    gw.start(wait_sources=False)
    try:
        assert _reload(gw)[0] == 401
        # `edge-stream reload` takes them from the file
        done = _cli_reload(gw.config_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{gw.config_path}: reload applied"
        assert "s3cret-pass" not in done.stdout + done.stderr
    finally:
        gw.close()


def test_the_reload_command_against_a_running_gateway(gw: GatewayProcess) -> None:
    done = _cli_reload(gw.config_path)
    assert (done.returncode, done.stdout.strip()) == (0, f"{gw.config_path}: reload applied")
    # what it applied, with the file watcher off (it could apply the change first)
    _edit(gw, lambda data: data["gateway"].update(watch_config=False))
    assert _cli_reload(gw.config_path).returncode == 0
    _edit(gw, _add_sink("by_cli"))
    done = _cli_reload(gw.config_path)
    assert done.stdout.strip() == (
        f"{gw.config_path}: reload applied: sink by_cli added; route all changed"
    ), done.stderr
    _edit(gw, lambda data: data["sinks"]["out"].update(type="nowhere"))
    done = _cli_reload(gw.config_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "reload refused" in lines[0] and "nowhere" in lines[0], lines
    assert gw.status()["sinks"]["out"]["state"] == "running"


def test_the_reload_command_when_no_gateway_runs(tmp_path: Path) -> None:
    config = _config(data_dir=str(tmp_path / "data"))
    config["web"] = {"listen": f"127.0.0.1:{free_port()}"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    done = _cli_reload(path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-stream: no gateway answers at"), lines
    assert "Traceback" not in done.stderr


def test_a_sink_stopped_for_good_starts_again_on_a_reload_of_the_same_config(
    tmp_path: Path, postgres: Any
) -> None:
    # "data stays buffered (fix and reload)": the fix here is on the server's side (the
    # table is created), the config is the same. Before: "nothing the gateway runs
    # changed", and the sink stayed stopped until the gateway was restarted.
    table = f"t{uuid.uuid4().hex[:12]}"
    config = _config(watch_config=False)
    config["sinks"]["out"] = {
        "type": "postgres",
        "dsn": postgres.dsn,
        "table": table,
        "create_table": False,
    }
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    try:
        stopped = lambda: gw.sink("out")["state"] == "failed"  # noqa: E731
        wait_for(lambda: stopped() and gw.sink("out")["depth"] > 0, 20, "the sink to stop")
        _started_and_stopped_again(gw, "sink out", stopped)

        postgres.execute(
            f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, topic text NOT NULL,'
            " ts timestamptz NOT NULL, attributes jsonb NOT NULL, payload jsonb, raw bytea)"
        )
        assert _reload(gw)[1]["changes"] == ["sink out started again (it had stopped)"]
        wait_for(lambda: gw.sink("out")["delivered"] > 0, 20, "delivery once the table is there")
        assert gw.sink("out")["state"] == "running"
        assert postgres.fetch(f'SELECT count(*) FROM "{table}"')[0][0] > 0
    finally:
        gw.close()


def test_a_source_stopped_for_good_starts_again_on_a_reload_of_the_same_config(
    tmp_path: Path, postgres: Any
) -> None:
    # "stopped: ... (fix the config and reload)": here the fix is on the server's side
    # (the table is created), the config is the same. Before: "nothing the gateway runs
    # changed", and the source stayed stopped until the gateway was restarted.
    table = f"t{uuid.uuid4().hex[:12]}"
    config = _config(watch_config=False)
    config["sources"]["rows"] = {
        "type": "postgres",
        "dsn": postgres.dsn,
        "table": table,
        "cursor": "id",
        "interval": "200ms",
    }
    gw = GatewayProcess(tmp_path, config)
    gw.start(wait_sources=False)
    try:
        source = lambda: gw.status()["sources"]["rows"]  # noqa: E731
        stopped = lambda: source()["state"] == "failed"  # noqa: E731
        wait_for(stopped, 20, "the source to stop")
        _started_and_stopped_again(gw, "source rows", stopped)

        postgres.execute(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, v text)')
        postgres.execute(f"INSERT INTO \"{table}\" VALUES (1, 'a'), (2, 'b')")
        assert _reload(gw)[1]["changes"] == ["source rows started again (it had stopped)"]
        wait_for(lambda: source()["produced"] >= 2, 20, "the rows once the table is there")
        assert source()["state"] == "running"
    finally:
        gw.close()


def _started_and_stopped_again(gw: GatewayProcess, what: str, stopped: Any) -> None:
    """Not fixed yet: a reload starts `what` again, it stops again, and the reload is
    not rolled back for that."""
    status, answer = _reload(gw)
    assert (status, answer["outcome"]) == (200, "applied"), answer
    assert answer["changes"] == [f"{what} started again (it had stopped)"]
    wait_for(stopped, 20, f"{what} to stop again")


def test_a_new_data_dir_says_what_the_old_store_keeps_undelivered(tmp_path: Path) -> None:
    """A reload to another gateway.data_dir opens the store there: what the sinks had not
    delivered stayed in the old one, never sent, and nothing said so."""
    config = _config()
    config["sinks"]["out"] = {"type": "http", "url": f"http://127.0.0.1:{free_port()}/in"}
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    try:
        wait_for(lambda: gw.sink("out")["depth"] >= 2, 30, "a backlog for the down sink")
        old = gw.data_dir

        def move(data: dict[str, Any]) -> None:
            data["gateway"]["data_dir"] = str(tmp_path / "data2")

        _edit(gw, move)
        wait_for(lambda: gw.status()["store"]["path"].endswith("data2/store.db"), 30, "data2")
        line = wait_for(
            lambda: next((x for x in gw.log().splitlines() if "left in" in x), None),
            10,
            "the line about the old store",
        )
        assert f"{old}/store.db" in line and "sink out" in line and "WARNING" in line
        assert "data_dir back" in line
    finally:
        gw.close()

"""config/edit.py: edits of one component keep every other byte of the user's file."""

from __future__ import annotations

import copy
import difflib
import errno
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import edit, files
from gateway.config.load import load, parse_text
from gateway.config.view import load_view, show
from gateway.core.errors import ConfigError

pytestmark = pytest.mark.unit

HAND_WRITTEN = """\
# Edge Stream on the line-3 gateway.
# Keep this file in git: see ops/README.
gateway:  {id: line-3, data_dir: DATA}   # the SD card's data partition

sources:
  # the plant's broker feeds everything
  plant:   {type: mqtt, url: "mqtt://127.0.0.1:1", topics: ["sensors/+/telemetry"], qos: 1}
  host:                       # the Pi itself
    type: system
    interval: 10s             # often enough for the dashboard

routes:
  telemetry:
    match: "sensors/+/telemetry"
    sinks: [ archive ]        # spaces inside the brackets are the user's

  # alarms go to both
  alarms:
    match: 'alarms/#'
    sinks:
      - archive
      - cache

sinks:
  archive:
    type: file
    path: 'archive.jsonl'     # single quotes kept
    rotate_bytes: 64MiB

  # a second copy, kept short
  cache: {type: file, path: "cache.jsonl", keep: 2}

# web stays on localhost
web: {listen: "127.0.0.1:18080"}
# end of file
"""


@pytest.fixture
def text(tmp_path: Path) -> str:
    return HAND_WRITTEN.replace("DATA", str(tmp_path / "data"))


def _changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines removed from `before` and added in `after`, line by line."""
    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


def _outside(text: str, first: str, last: str) -> str:
    """`text` less the lines from the one holding `first` to the one holding `last`."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i in range(start, len(lines)) if last in lines[i])
    return "".join(lines[:start] + lines[end + 1 :])


def test_adding_a_route_only_adds_its_lines(text: str) -> None:
    new = edit.set_component(
        text, "routes", "hosts", {"match": "system/#", "sinks": ["cache"]}, "gw.yaml"
    )
    removed, added = _changed_lines(text, new)
    assert removed == []
    assert added == ["  hosts:", "    match: system/#", "    sinks: [cache]"]
    # placed after the last route, before the blank line and `sinks:`
    assert _outside(new, "  hosts:", "sinks: [cache]") == text
    assert yaml.safe_load(new)["routes"]["hosts"] == {"match": "system/#", "sinks": ["cache"]}


def test_changing_a_sink_keeps_its_unchanged_values_and_everything_around(text: str) -> None:
    value = {"type": "file", "path": "archive.jsonl", "rotate_bytes": "128MiB", "keep": 3}
    new = edit.set_component(text, "sinks", "archive", value, "gw.yaml")
    removed, added = _changed_lines(text, new)
    assert removed == ["    rotate_bytes: 64MiB"]
    assert added == ["    rotate_bytes: 128MiB", "    keep: 3"]
    assert "path: 'archive.jsonl'     # single quotes kept" in new
    assert yaml.safe_load(new)["sinks"]["archive"] == value


def test_changing_a_flow_style_sink_keeps_it_on_one_line(text: str) -> None:
    value = {"type": "file", "path": "cache.jsonl", "keep": 5}
    new = edit.set_component(text, "sinks", "cache", value, "gw.yaml")
    removed, added = _changed_lines(text, new)
    assert removed == ['  cache: {type: file, path: "cache.jsonl", keep: 2}']
    assert added == ['  cache: {type: file, path: "cache.jsonl", keep: 5}']


def test_a_one_key_mapping_in_a_flow_list_keeps_its_braces() -> None:
    # `processors: [{type: json}]` was written back `[type: json]` (the same in YAML, but
    # not the form the user wrote) by any edit of its route, even of its sinks alone.
    text = 'routes:\n  r:\n    match: "a/#"\n    processors: [{type: json}]\n    sinks: [o]\n'
    value = {"match": ["a/#"], "processors": [{"type": "json"}], "sinks": ["o", "p"]}
    new = edit.set_component(text, "routes", "r", value, "gw.yaml")
    assert _changed_lines(text, new) == (["    sinks: [o]"], ["    sinks: [o, p]"])
    value["processors"].append({"type": "json"})
    new = edit.set_component(text, "routes", "r", value, "gw.yaml")
    assert "    processors: [{type: json}, {type: json}]\n" in new


def test_deleting_a_source_removes_only_its_lines(text: str) -> None:
    new = edit.remove_component(text, "sources", "host", "gw.yaml")
    removed, added = _changed_lines(text, new)
    assert added == []
    assert removed == [
        "  host:                       # the Pi itself",
        "    type: system",
        "    interval: 10s             # often enough for the dashboard",
    ]
    # every other comment of the file is still there
    assert [line for line in text.splitlines() if "#" in line and line not in removed] == [
        line for line in new.splitlines() if "#" in line
    ]
    assert "sources:\n  # the plant's broker feeds everything\n  plant:" in new


def test_all_three_edits_in_a_row_keep_every_comment(text: str, tmp_path: Path) -> None:
    new = edit.set_component(
        text, "routes", "hosts", {"match": "system/#", "sinks": ["cache"]}, "gw.yaml"
    )
    new = edit.set_component(
        new, "sinks", "cache", {"type": "file", "path": "c2.jsonl", "keep": 2}, "gw.yaml"
    )
    new = edit.remove_component(new, "sources", "plant", "gw.yaml")
    comments = [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]
    for comment in comments:
        if "'alarms/" in comment or "sensors/" in comment or "plant" in comment:
            continue  # a `#` inside a value, or the removed source's own line
        assert comment in new
    path = tmp_path / "gw.yaml"
    path.write_text(new)
    config = load(path, environ={})
    assert set(config.sources) == {"host"} and set(config.routes) == {
        "telemetry",
        "alarms",
        "hosts",
    }


def test_a_string_the_loader_would_read_as_another_type_is_quoted(text: str) -> None:
    value = {"type": "file", "path": "yes", "keep": 1}
    new = edit.set_component(text, "sinks", "odd", value, "gw.yaml")
    assert yaml.safe_load(new)["sinks"]["odd"] == value
    assert "path: 'yes'" in new


@pytest.mark.parametrize("name", ["yes", "on", "No", "OFF"])
def test_a_name_the_loader_would_read_as_another_type_is_quoted(
    text: str, tmp_path: Path, name: str
) -> None:
    # YAML 1.1 (the loader) reads `yes:`, `on:` as true; ruamel.yaml (1.2) wrote them
    # plain, and the edit was refused as "would not read back as sent ... please report"
    route = {"match": "alarms/#", "sinks": ["archive"]}
    new = edit.set_component(text, "routes", name, route, "gw.yaml")
    assert parse_text(new, "gw.yaml")[0]["routes"][name] == route
    # a key inside a component too, new in a new component and in an old one
    columns = {name.lower(): "payload", "topic": "topic"}  # PostgreSQL: lowercase
    sink = {"type": "postgres", "dsn": "postgresql://gw@db/x", "table": "t", "columns": columns}
    new = edit.set_component(new, "sinks", "db", sink, "gw.yaml")
    new = edit.set_component(new, "sinks", "db", {**sink, "columns": {**columns, "y": "id"}}, "x")
    assert parse_text(new, "gw.yaml")[0]["sinks"]["db"]["columns"] == {**columns, "y": "id"}
    path = tmp_path / "gw.yaml"
    path.write_text(new)
    assert name in load(path, environ={}).routes
    # a section written in flow style, which ruamel.yaml writes whole
    flow = "routes: {r: {match: a/#, sinks: [s]}}\nsinks: {s: {type: file}}\n"
    new = edit.set_component(flow, "routes", name, {"match": "b/#", "sinks": ["s"]}, "gw.yaml")
    assert parse_text(new, "gw.yaml")[0]["routes"][name] == {"match": "b/#", "sinks": ["s"]}


def test_a_file_whose_aliases_repeat_many_values_stays_editable() -> None:
    # The edit counted the values of the file with each alias's repeated, where the
    # loader counts an alias once: a file that loads had every edit refused as past
    # the loader's 50,000 values
    filters = "".join(f"      - f/{i}/#\n" for i in range(1000))
    routes = "".join(f"  r{i}:\n    match: *many\n    sinks: [s]\n" for i in range(60))
    text = f"routes:\n  first:\n    match: &many\n{filters}    sinks: [s]\n{routes}"
    text += "sinks:\n  s: {type: file}\n"
    new = edit.set_component(text, "sinks", "other", {"type": "file"}, "gw.yaml")
    assert parse_text(new, "gw.yaml")[0]["sinks"]["other"] == {"type": "file"}


def test_an_edit_past_the_loader_s_size_in_bytes_is_refused(text: str) -> None:
    # The edit measured the text in characters and the loader reads bytes: 140,000
    # characters of "é" (280,000 bytes) were written, then refused at the reload
    new = edit.set_component(text, "sinks", "a", {"type": "file", "path": "é" * 70_000}, "x")
    with pytest.raises(ConfigError, match="larger than 256 KiB"):
        edit.set_component(new, "sinks", "b", {"type": "file", "path": "é" * 70_000}, "x")


def test_a_save_that_cannot_write_the_file_keeps_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A config folder the gateway cannot write (its disk full, a root-owned /etc/...):
    # each failed save kept a version of the same text and dropped the oldest, till the
    # 20 kept were all one text
    from gateway.config import files

    path, data = tmp_path / "gw.yaml", tmp_path / "data"
    path.write_text("v0\n")
    for n in range(1, files.KEEP_VERSIONS + 1):
        files.save(path, f"v{n}\n", data)
    kept = [v.name for v in files.versions(data)]
    write = files.write_atomic

    def full_disk(target: str | Path, text: str) -> None:
        if Path(target) == path:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(target, text)

    monkeypatch.setattr(files, "write_atomic", full_disk)
    for _ in range(3):
        with pytest.raises(OSError):
            files.save(path, "new\n", data)
    assert [v.name for v in files.versions(data)] == kept
    assert path.read_text() == f"v{files.KEEP_VERSIONS}\n"


def test_the_running_text_is_kept_once_and_the_versions_stay_bounded(tmp_path: Path) -> None:
    # What the gateway runs, kept when the file changes by hand: the newest already that
    # text keeps nothing more, and the oldest beyond KEEP_VERSIONS go, as with `save`
    from gateway.config import files

    path, data = tmp_path / "gw.yaml", tmp_path / "data"
    path.write_text("v0\n")
    for n in range(1, files.KEEP_VERSIONS + 1):
        files.save(path, f"v{n}\n", data)
    kept = files.keep_running(path, "running\n", data)
    assert kept is not None and kept.hash == files.text_hash("running\n")
    assert files.keep_running(path, "running\n", data) is None
    found = files.versions(data)
    assert len(found) == files.KEEP_VERSIONS
    assert found[0].name == kept.name and found[0].path.read_text() == "running\n"
    assert found[0].path.stat().st_mode & 0o777 == 0o600


def test_a_new_section_is_appended(tmp_path: Path) -> None:
    text = "# only a comment and a gateway\ngateway: {id: x}\n"
    new = edit.set_component(text, "sinks", "out", {"type": "file"}, "gw.yaml")
    assert new == text + "sinks:\n  out:\n    type: file\n"


def test_a_file_ending_in_a_document_end_marker_is_edited_before_it(tmp_path: Path) -> None:
    # YAML's `...` after the last value: a new component or section went after it, into
    # a second document, and every such edit was refused as "would not read back as
    # sent ... please report this".
    path = tmp_path / "gw.yaml"
    head = f"---\ngateway: {{id: x, data_dir: '{tmp_path}'}}\nsinks:\n  out: {{type: file}}\n"
    path.write_text(head + "...\n# the end\n")
    edit.edit_file(path, "routes", "all", {"match": "#", "sinks": ["out"]}, {})
    edit.edit_file(path, "sinks", "two", {"type": "file", "path": "two.jsonl"}, {})
    assert path.read_text() == (
        head + "  two:\n    type: file\n    path: two.jsonl\n"
        "routes:\n  all:\n    match: '#'\n    sinks: [out]\n...\n# the end\n"
    )
    edit.edit_file(path, "routes", "all", None, {})
    assert path.read_text().endswith("routes: {}\n...\n# the end\n")


@pytest.mark.parametrize("name", ["gw.yaml", "gw.json"])
def test_a_file_with_windows_line_ends_keeps_them(name: str) -> None:
    # The lines an edit wrote ended in \n alone: a file written on Windows came out
    # with both kinds of line end.
    text = (
        "sinks:\r\n  out: {type: file}\r\nroutes:\r\n  all: {match: '#', sinks: [out]}\r\n"
        if name.endswith(".yaml")
        else json.dumps({"sinks": {"out": {"type": "file"}}}, indent=2).replace("\n", "\r\n")
    )
    new = edit.set_component(text, "sinks", "two", {"type": "file", "path": "t.jsonl"}, name)
    new = edit.set_component(new, "routes", "more", {"match": "a/#", "sinks": ["two"]}, name)
    assert new.count("\n") == new.count("\r\n") > text.count("\n")
    new = edit.remove_component(new, "sinks", "out", name)
    assert new.count("\n") == new.count("\r\n")
    if name.endswith(".yaml"):
        assert new.startswith("sinks:\r\n  two:\r\n    type: file\r\n")


def test_a_symlinked_config_stays_a_link_through_an_edit_and_a_rollback(tmp_path: Path) -> None:
    # The edit replaced the link with a file of its own: a config kept in a git checkout
    # and linked from /etc was cut off from it (as `secret rotate` already knew not to).
    checkout = tmp_path / "ops" / "gateway.yaml"
    checkout.parent.mkdir()
    checkout.write_text(
        f"gateway: {{id: x, data_dir: '{tmp_path}'}}\nsinks:\n  out: {{type: file}}\n"
    )
    link = tmp_path / "etc" / "gateway.yaml"
    link.parent.mkdir()
    link.symlink_to(checkout)
    before = checkout.read_text()
    _old, kept, _wrote = edit.edit_file(link, "routes", "all", {"match": "#", "sinks": ["out"]}, {})
    assert link.is_symlink() and "routes:" in checkout.read_text()
    assert kept is not None
    files.save(link, kept.path.read_text(), tmp_path)  # as `config rollback` puts it back
    assert link.is_symlink() and checkout.read_text() == before


def test_removing_the_last_component_leaves_an_empty_section(text: str) -> None:
    new = edit.remove_component(text, "sources", "host", "gw.yaml")
    new = edit.remove_component(new, "sources", "plant", "gw.yaml")
    assert yaml.safe_load(new)["sources"] == {}
    assert "# end of file" in new and "# web stays on localhost" in new


def test_removing_what_is_not_there_names_it(text: str) -> None:
    with pytest.raises(ConfigError, match="no source named 'nope'"):
        edit.remove_component(text, "sources", "nope", "gw.yaml")


def test_json_is_written_back_as_formatted_json() -> None:
    text = json.dumps(
        {
            "sources": {"host": {"type": "system"}},
            "routes": {"all": {"match": "#", "sinks": ["out"]}},
            "sinks": {"out": {"path": "o.jsonl", "type": "file"}},
        }
    )
    new = edit.set_component(
        text, "sinks", "out", {"type": "file", "path": "p.jsonl", "keep": 1}, "gw.json"
    )
    new = edit.set_component(new, "routes", "two", {"match": "a/#", "sinks": ["out"]}, "gw.json")
    data = json.loads(new)
    assert new == json.dumps(data, indent=2) + "\n"
    assert list(data["sinks"]["out"]) == ["path", "type", "keep"]  # the file's key order first
    assert data["sinks"]["out"]["path"] == "p.jsonl"
    assert list(data["routes"]) == ["all", "two"]
    assert (
        "host"
        not in json.loads(edit.remove_component(new, "sources", "host", "gw.json"))["sources"]
    )


def test_a_json_file_with_a_byte_order_mark_is_edited_and_keeps_it() -> None:
    # the loader reads past the mark (Notepad writes one); the edit's json.loads did not:
    # every API edit of such a file was a 500, a traceback in the log
    text = "\ufeff" + json.dumps({"sinks": {"out": {"type": "file"}}}, indent=2) + "\n"
    new = edit.set_component(text, "sinks", "two", {"type": "file"}, "gw.json")
    assert new.startswith("\ufeff{") and set(parse_text(new, "gw.json")[0]["sinks"]) == {
        "out",
        "two",
    }
    new = edit.remove_component(new, "sinks", "out", "gw.json")
    assert new == "\ufeff" + json.dumps({"sinks": {"two": {"type": "file"}}}, indent=2) + "\n"


def test_enc_values_stay_encrypted_and_a_redacted_value_keeps_the_file_s(text: str) -> None:
    secret = "ENC(AAAAbm90IGEgcmVhbCBzZWNyZXQ=)"
    text = text.replace('url: "mqtt://127.0.0.1:1"', f'url: "mqtt://u:{secret}@127.0.0.1:1"')
    value = {
        "type": "mqtt",
        "url": "mqtt://u:***@127.0.0.1:1",  # as `config show` and GET /api/config show it
        "topics": ["sensors/+/telemetry"],
        "qos": 0,
    }
    new = edit.set_component(text, "sources", "plant", value, "gw.yaml")
    assert secret in new
    assert yaml.safe_load(new)["sources"]["plant"]["url"] == f"mqtt://u:{secret}@127.0.0.1:1"
    sent = {"type": "file", "path": "x", "password": "ENC(c2VudA==)"}
    assert "password: ENC(c2VudA==)" in edit.set_component(text, "sinks", "s", sent, "gw.yaml")
    with pytest.raises(ConfigError, match=r"sinks\.s\.password: '\*\*\*' stands for a secret"):
        edit.set_component(text, "sinks", "s", {**sent, "password": "***"}, "gw.yaml")


def test_a_masked_password_with_no_file_value_behind_it_is_refused(text: str) -> None:
    # The file's URL has no password, or another host: `***` would become the password.
    for url in ("mqtt://u:***@127.0.0.1:1", "mqtt://u:***@10.0.0.9:1883"):
        value = {"type": "mqtt", "url": url, "topics": ["sensors/+/telemetry"]}
        with pytest.raises(ConfigError, match=r"sources\.plant\.url: its password '\*\*\*'"):
            edit.set_component(text, "sources", "plant", value, "gw.yaml")
    dsn = "host=db user=gw password=*** dbname=x"
    sink = {"type": "postgres", "dsn": dsn, "table": "t"}
    with pytest.raises(ConfigError, match=r"sinks\.pg\.dsn: its password"):
        edit.set_component(text, "sinks", "pg", sink, "gw.yaml")
    # a URL's secret query parameter, as GET shows it, where the file has another URL
    rest = {"type": "rest", "url": "https://api.example/x?api_key=***", "interval": "1m"}
    with pytest.raises(ConfigError, match=r"sources\.api\.url: its password"):
        edit.set_component(text, "sources", "api", rest, "gw.yaml")
    # *** elsewhere in text is no password: a topic may hold it.
    route = {"match": "a/***", "sinks": ["archive"]}
    assert "a/***" in edit.set_component(text, "routes", "stars", route, "gw.yaml")


def test_a_refused_edit_writes_nothing(text: str, tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        edit.edit_file(path, "routes", "r1", {"match": "a/#", "sinks": ["x"]}, environ={})
    assert any("routes.r1.sinks" in p and "'x'" in p for p in refused.value.problems)
    assert path.read_text() == text
    assert files.versions(tmp_path / "data") == []


def test_an_accepted_edit_keeps_the_old_text_as_a_version(text: str, tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    old, kept, wrote = edit.edit_file(path, "sources", "host", None, environ={})
    assert old == text and kept is not None and wrote
    assert kept.path.read_text() == text
    assert "host:" not in path.read_text()


def test_a_component_tied_to_others_by_a_yaml_alias_is_refused_saying_so() -> None:
    # Its edit would change the aliases too; refused, but as "please report this".
    text = "sinks:\n  a: &base {type: file, path: x}\n  b: *base\n"
    sent = {"type": "file", "path": "x", "keep": 3}
    for change in (
        lambda: edit.set_component(text, "sinks", "a", sent, "gw.yaml"),
        lambda: edit.remove_component(text, "sinks", "a", "gw.yaml"),
    ):
        with pytest.raises(ConfigError) as refused:
            change()
        assert str(refused.value) == (
            "gw.yaml: sinks.a: the file's YAML anchors and aliases (&base and *base) tie this"
            " component to other keys, which the edit would change too; nothing was written:"
            " write the values out in place of the aliases, or edit by hand"
        )
    # the alias itself is written out
    new = edit.set_component(text, "sinks", "b", sent, "gw.yaml")
    assert yaml.safe_load(new)["sinks"] == {"a": {"type": "file", "path": "x"}, "b": sent}


def test_an_edit_that_changes_nothing_keeps_no_version(text: str, tmp_path: Path) -> None:
    # A component sent back as it is kept the very text as a version each time: 20 such
    # pushed the real versions out, and `config rollback` to one changed nothing.
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    stat = path.stat()
    cache = {"type": "file", "path": "cache.jsonl", "keep": 2}
    old, kept, wrote = edit.edit_file(path, "sinks", "cache", cache, environ={})
    assert (old, kept, wrote) == (text, None, False)
    assert path.read_text() == text and path.stat().st_ino == stat.st_ino
    assert files.versions(tmp_path / "data") == []


@pytest.mark.parametrize(
    ("section", "name"), [("web", "x"), ("sinks", ""), ("sinks", " a"), ("sinks", "a\nb")]
)
def test_bad_names_are_refused(text: str, section: str, name: str) -> None:
    value: dict[str, Any] = {"type": "file"}
    with pytest.raises(ConfigError):
        edit.set_component(text, section, name, value, "gw.yaml")


@pytest.mark.parametrize("line", ["sinks:", "sinks: {}", "sinks: {}   # none yet", "sinks:  # x"])
def test_an_empty_section_is_filled_in_place(line: str) -> None:
    text = f"# head\ngateway: {{id: x}}\n{line}\n# tail\nweb: {{listen: '127.0.0.1:18080'}}\n"
    new = edit.set_component(text, "sinks", "out", {"type": "file"}, "gw.yaml")
    comment = line.partition("#")[2]
    head = "sinks:" + (f"  #{comment}" if comment else "")
    assert new == text.replace(line + "\n", f"{head}\n  out:\n    type: file\n")
    back = edit.remove_component(new, "sinks", "out", "gw.yaml")
    assert back == text.replace(line + "\n", head.replace("sinks:", "sinks: {}") + "\n")


def test_small_and_large_numbers_and_exponent_text_read_back_as_sent(text: str) -> None:
    """ruamel.yaml writes 0.00001 as `1e-05`, which YAML 1.1 reads as text: such an edit
    was refused ("would not read back as sent"); the text "1e3" must stay quoted."""
    value = {
        "match": "sc/#",
        "sinks": ["archive"],
        "processors": [
            {"type": "transform", "scale": {"v": 0.00001}, "set": {"tag": "1e3"}},
            {"type": "filter", "all": [{"field": "v", "op": "lt", "value": 1e20}]},
        ],
    }
    new = edit.set_component(text, "routes", "sc", value, "gw.yaml")
    assert "'1e3'" in new
    assert parse_text(new, "gw.yaml")[0]["routes"]["sc"] == value


def test_a_version_named_by_a_start_that_fits_different_texts_is_refused(tmp_path: Path) -> None:
    # `config rollback 2026` (or a short hash) put back the newest of the versions it fits,
    # silently; now it says which ones it fits. A start that fits one text still works.
    folder = files.history_dir(tmp_path)
    folder.mkdir(parents=True)
    one, two = files.text_hash("a: 1\n"), files.text_hash("b: 1\n")
    assert one[0] != two[0]
    for stamp, digest in (("000001", one), ("000002", two), ("000003", one)):
        (folder / f"20260101T{stamp}.000Z-{digest}.yaml").write_text("a: 1\n")
    kept = files.versions(tmp_path)  # newest first
    with pytest.raises(ConfigError, match=r"'2026' is the start of 3 kept config versions"):
        files.find_version(tmp_path, "2026")
    with pytest.raises(ConfigError, match="no kept config version ''"):
        files.find_version(tmp_path, "")
    assert files.find_version(tmp_path, one[:1]) == kept[0]  # the same text twice: the newest
    assert files.find_version(tmp_path, two[:3]) == kept[1]
    assert files.find_version(tmp_path, kept[2].name) == kept[2]
    assert files.find_version(tmp_path, None) == kept[0]


SHORT = """\
gateway: {id: gw, data_dir: DATA}
routes:
  r:
    match: sensors/#
    sinks: [out]
    processors:
      - type: json
      - type: json
        require_object: true   # equal to the default, but the user wrote it
sinks:
  out:
    type: file
    path: out.jsonl
    batch:
      max_rows: 1000
"""


def _as_shown(path: Path, section: str, name: str) -> Any:
    """The component as GET /api/config shows it: defaults filled in, secrets redacted."""
    from gateway.config.view import load_view, show

    config, raw = load_view(path, {})
    return json.loads(json.dumps(show(config, raw)[section][name]))


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_sending_back_what_get_shows_writes_no_defaults(tmp_path: Path, suffix: str) -> None:
    text = SHORT.replace("DATA", str(tmp_path / "data"))
    if suffix == ".json":
        text = json.dumps(yaml.safe_load(text), indent=2) + "\n"
    path = tmp_path / f"gw{suffix}"
    path.write_text(text)
    route = _as_shown(path, "routes", "r")
    assert route["processors"][0] == {"type": "json", "require_object": True, "required": []}
    new = edit.set_component(text, "routes", "r", route, str(path))
    assert new == text  # `match: sensors/#` too: GET shows it as a list of one
    sink = _as_shown(path, "sinks", "out")
    assert sink["batch"]["linger"] == 0.0 and "rate_limit" in sink
    new = edit.set_component(text, "sinks", "out", sink, str(path))
    assert new == text  # batch.max_rows, written and equal to the default, stays


def test_a_changed_value_is_written_and_a_new_component_keeps_only_what_differs(
    tmp_path: Path,
) -> None:
    text = SHORT.replace("DATA", str(tmp_path / "data"))
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    route = _as_shown(path, "routes", "r")
    route["processors"][0]["required"] = ["t"]
    route["processors"][1]["require_object"] = False
    new = edit.set_component(text, "routes", "r", route, str(path))
    processors = yaml.safe_load(new)["routes"]["r"]["processors"]
    assert processors == [
        {"type": "json", "required": ["t"]},
        {"type": "json", "require_object": False},
    ]
    sink = _as_shown(path, "sinks", "out")
    sink["batch"]["linger"] = "5s"
    new = edit.set_component(new, "sinks", "copy", {**sink, "path": "copy.jsonl"}, str(path))
    assert yaml.safe_load(new)["sinks"]["copy"] == {
        "type": "file",
        "path": "copy.jsonl",
        "batch": {"linger": "5s"},
    }
    # a processor of another type at the same place: the old one's keys are not its own
    before = "routes:\n  r:\n    match: a\n    sinks: [out]\n    processors:\n"
    before += "      - {type: window, group_by: topic}\n"
    value = {"match": "a", "sinks": ["out"], "processors": [{"type": "deadband", "fields": ["v"]}]}
    value["processors"][0] |= {"group_by": "topic", "heartbeat": None, "max_state": 16 << 20}
    new = edit.set_component(before, "routes", "r", value, "gw.yaml")
    assert yaml.safe_load(new)["routes"]["r"]["processors"] == [
        {"type": "deadband", "fields": ["v"]}
    ]


def test_a_value_sent_back_in_the_form_get_shows_keeps_the_file_s_form(
    text: str, tmp_path: Path
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    host, archive = _as_shown(path, "sources", "host"), _as_shown(path, "sinks", "archive")
    assert host["interval"] == 10.0 and archive["rotate_bytes"] == 64 << 20
    assert edit.set_component(text, "sources", "host", host, str(path)) == text
    archive["keep"] = 9
    new = edit.set_component(text, "sinks", "archive", archive, str(path))
    assert _changed_lines(text, new) == ([], ["    keep: 9"])  # 64MiB stays 64MiB


def test_a_value_that_reads_alike_but_tests_or_writes_otherwise_is_written() -> None:
    """1, 1.0 and true compared equal inside a processor, so the file's form was kept and
    the edit was lost while the API answered 200: a filter on `value: 1` sent back with
    `value: true`, or a transform's `set: {flag: 1}` as `{flag: true}`."""
    text = """routes:
  r:
    match: a/#
    processors:
      - type: filter
        all: [{field: x, op: eq, value: 1}]
      - type: transform
        scale: {t: 1}
        set: {flag: 1}
    sinks: [f]
sinks:
  f: {type: file, path: out.jsonl}
"""
    route = yaml.safe_load(text)["routes"]["r"]
    for change in (
        {0: {"all": [{"field": "x", "op": "eq", "value": True}]}},
        {1: {"set": {"flag": True}}},
        {1: {"scale": {"t": 1.5}}},
        {1: {"scale": {"t": 1.0}}},
    ):
        ((at, keys),) = change.items()
        processors = [dict(p) for p in route["processors"]]
        processors[at] = {**processors[at], **keys}
        new = edit.set_component(text, "routes", "r", {**route, "processors": processors}, "g.yaml")
        assert new != text, change
        written = yaml.safe_load(new)["routes"]["r"]["processors"][at]
        ((key, value),) = keys.items()
        assert written[key] == value and repr(written[key]) == repr(value), change


def test_a_value_from_an_environment_override_sent_back_is_not_written(
    text: str, tmp_path: Path
) -> None:
    # GET /api/config shows the effective config, overrides applied. Sent back, the
    # override's path was written into the file (kept after the variable went), and a
    # password from the environment, shown `***`, was refused: nothing stood behind it.
    environ = {
        "EDGE_STREAM__SINKS__ARCHIVE__PATH": "/elsewhere/archive.jsonl",
        "EDGE_STREAM__SOURCES__PLANT__PASSWORD": "Env-Secret-1",
    }
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    got = show(*load_view(path, environ))
    assert got["sinks"]["archive"]["path"] == "/elsewhere/archive.jsonl"
    assert got["sources"]["plant"]["password"] == "***"
    archive = {**got["sinks"]["archive"], "keep": 3}
    edit.edit_file(path, "sinks", "archive", archive, environ)
    assert _changed_lines(text, path.read_text()) == ([], ["    keep: 3"])
    path.write_text(text)
    plant = {**got["sources"]["plant"], "qos": 2}
    edit.edit_file(path, "sources", "plant", plant, environ)
    new = path.read_text()
    assert "Env-Secret-1" not in new and "***" not in new
    assert yaml.safe_load(new)["sources"]["plant"] == {
        "type": "mqtt",
        "url": "mqtt://127.0.0.1:1",
        "topics": ["sensors/+/telemetry"],
        "qos": 2,
    }
    # A value of the caller's own at an overridden key is written as sent.
    mine = {**got["sinks"]["archive"], "path": "mine.jsonl"}
    new = edit.set_component(text, "sinks", "archive", mine, "gw.yaml", environ)
    assert yaml.safe_load(new)["sinks"]["archive"]["path"] == "mine.jsonl"
    # A component the environment alone makes is written whole: without its type (an
    # override's), the file held a sink that no longer loaded once the variables went.
    alone = {"EDGE_STREAM__SINKS__X__TYPE": "file", "EDGE_STREAM__SINKS__X__PATH": "x.jsonl"}
    path.write_text(text)
    x = {**show(*load_view(path, alone))["sinks"]["x"], "keep": 3}
    edit.edit_file(path, "sinks", "x", x, alone)
    assert yaml.safe_load(path.read_text())["sinks"]["x"] == {
        "type": "file",
        "path": "x.jsonl",
        "keep": 3,
    }
    load_view(path, {})  # loads without the variables


def test_a_line_break_of_yaml_1_1_only_leaves_the_edits_working(text: str) -> None:
    # NEL, U+2028 and U+2029 end a line for str.splitlines (and YAML 1.1, the loader),
    # not for ruamel.yaml, whose line numbers the splice uses: every edit below one (a
    # file written by hand, or by an earlier edit) was refused as "would not read back
    # as sent ... please report this"
    odd = text.replace("# a second copy, kept short", "# a second copy, kept short\u2028")
    odd = odd.replace('path: "cache.jsonl"', 'path: "cache\u2028.jsonl"')
    assert parse_text(odd, "gw.yaml")[0]["sinks"]["cache"]["path"] == "cache\u2028.jsonl"
    new = edit.set_component(odd, "sinks", "archive", {"type": "file", "path": "a"}, "gw.yaml")
    assert "# a second copy, kept short\u2028\n" in new
    new = edit.set_component(new, "sinks", "more", {"type": "file"}, "gw.yaml")
    new = edit.remove_component(new, "sinks", "cache", "gw.yaml")
    assert set(parse_text(new, "gw.yaml")[0]["sinks"]) == {"archive", "more"}


@pytest.mark.parametrize("value", ["a\x85b", "a\u2028b", "\u2029"])
def test_a_value_with_a_yaml_1_1_line_break_is_written_escaped(text: str, value: str) -> None:
    # YAML 1.1 (the loader) reads NEL, U+2028 and U+2029 as line breaks, 1.2 does not:
    # ruamel.yaml wrote them raw, across lines, and NEL read back as a space
    sink = {"type": "file", "path": value}
    new = edit.set_component(text, "sinks", "odd", sink, "gw.yaml")
    assert parse_text(new, "gw.yaml")[0]["sinks"]["odd"] == sink
    assert not any(c in new for c in "\x85\u2028\u2029")
    new = edit.set_component(new, "sinks", "later", {"type": "file"}, "gw.yaml")
    new = edit.remove_component(new, "sinks", "odd", "gw.yaml")
    assert set(parse_text(new, "gw.yaml")[0]["sinks"]) == {"archive", "cache", "later"}


def test_a_component_holding_a_long_list_is_edited_in_time(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the edit copied the component with copy.deepcopy, quadratic in a list's length
    # with ruamel.yaml: 4,000 filters took half a minute (holding the GIL, so the
    # gateway's loop with it); a check of one with 20,000 ran for a quarter of an hour.
    # No ruamel.yaml node is deep-copied now (tests do not time things).
    from ruamel.yaml.comments import CommentedBase

    filters = [f"t/{i}" for i in range(4000)]
    new = edit.set_component(text, "routes", "many", {"match": filters, "sinks": ["archive"]}, "x")
    deepcopy = copy.deepcopy

    def no_node_copies(value: Any, memo: Any = None) -> Any:
        assert not isinstance(value, CommentedBase), "a ruamel.yaml node deep-copied"
        return deepcopy(value, memo)

    monkeypatch.setattr(copy, "deepcopy", no_node_copies)
    new = edit.set_component(new, "routes", "many", {"match": filters[:9], "sinks": ["cache"]}, "x")
    assert parse_text(new, "gw.yaml")[0]["routes"]["many"]["match"] == filters[:9]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ({"match": [f"t/{i:05}" for i in range(30_000)]}, "larger than 256 KiB"),
        ({"match": ["a"] * 60_000}, "more than 50000 keys and values"),
        ({"match": "a", "deep": json.loads("[" * 70 + "]" * 70)}, "nested more than 64"),
    ],
)
def test_an_edit_past_the_loader_s_limits_is_refused_in_words(
    text: str, value: dict[str, Any], said: str
) -> None:
    # the edited text was refused by its own read-back check: "would not read back as
    # sent ... please report this", for a file the loader would refuse by its limits
    with pytest.raises(ConfigError) as refused:
        edit.set_component(text, "routes", "many", {**value, "sinks": ["archive"]}, "gw.yaml")
    assert str(refused.value).startswith("gw.yaml: routes.many: ")
    assert said in str(refused.value) and "report" not in str(refused.value)


def test_a_version_kept_with_the_clock_set_back_is_the_newest_and_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A board with no clock boots in 1970: the running text kept then was named older
    # than the 20 versions there, sorted last, and the prune deleted it at once.
    path = tmp_path / "gateway.yaml"
    for n in range(files.KEEP_VERSIONS):
        files.keep_running(path, f"v{n}\n", tmp_path)
    monkeypatch.setattr(files.time, "time", lambda: 172_800.0)
    kept = files.keep_running(path, "running\n", tmp_path)
    assert kept is not None and kept.path.exists()
    newest = files.versions(tmp_path)
    assert newest[0].name == kept.name and len(newest) == files.KEEP_VERSIONS
    assert files.find_version(tmp_path, None).path.read_text() == "running\n"

"""The first boot's helper that gives the config the board's own gateway.id
(rootfs/usr/lib/edge-stream/board-id): the image's `edge-stream`, or no id, becomes
edge-stream-XXXXXXXX from the machine id; only that line changes (or the file is
written back whole by ruamel.yaml when one line will not do), and an id of the config's
own stays."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ROOTFS = REPO / "rootfs"
UNSHARE = ["unshare", "--mount", "--propagation", "private"]
SCRIPT = ROOTFS / "usr/lib/edge-stream/board-id"
_loader = importlib.machinery.SourceFileLoader("board_id", str(SCRIPT))
_spec = importlib.util.spec_from_loader("board_id", _loader)
assert _spec is not None
board_id = importlib.util.module_from_spec(_spec)
_loader.exec_module(board_id)

MACHINE_ID = "0f8e2c4b6a1d4e3f9b7c5a2d1e0f3c4b"
NEW = "edge-stream-abc12345"

CASES = [
    # (the config's text, what it becomes)
    ("gateway:\n  id: edge-stream  # c\n", f"gateway:\n  id: {NEW} # c\n"),
    ("gateway:\n  id: 'edge-stream'\n", f"gateway:\n  id: '{NEW}'\n"),
    ('gateway:\r\n  id: "edge-stream"\r\n', f'gateway:\r\n  id: "{NEW}"\r\n'),
    (
        "gateway:\n    data_dir: /x\nsinks: {}\n",
        f"gateway:\n    id: {NEW}\n    data_dir: /x\nsinks: {{}}\n",
    ),
    ("gateway:\n# c\n  data_dir: /x\n", f"gateway:\n# c\n  id: {NEW}\n  data_dir: /x\n"),
    ("gateway:\n", f"gateway:\n  id: {NEW}\n"),
    ("sinks: {}", f"sinks: {{}}\ngateway:\n  id: {NEW}\n"),
    # what check-config takes, and a hand-written line editor did not: a byte order
    # mark (Windows Notepad, on the card's FAT partition), a null section, an anchor, a
    # quoted key, a tag, flow style, JSON
    ("\ufeffgateway:\n  id: edge-stream\n", f"\ufeffgateway:\n  id: {NEW}\n"),
    ("gateway: null  # c\nsinks: {}\n", f"gateway:       # c\n  id: {NEW}\nsinks: {{}}\n"),
    ("gateway: &g\n  id: edge-stream\n", f"gateway: &g\n  id: {NEW}\n"),
    ('gateway:\n  "id": edge-stream\n', f'gateway:\n  "id": {NEW}\n'),
    ("gateway:\n  id: !!str edge-stream\n", f"gateway:\n  id: !!str {NEW}\n"),
    ("gateway: {id: edge-stream}\n", f"gateway: {{id: {NEW}}}\n"),
    ("gateway: {data_dir: /x}\n", f"gateway: {{data_dir: /x, id: {NEW}}}\n"),
    ('{"gateway": {"id": "edge-stream"}}', f'{{"gateway": {{"id": "{NEW}"}}}}'),
    ('{"sinks": {}}', f'{{"sinks": {{}}, gateway: {{id: {NEW}}}}}\n'),
    # an id of its own, even the same text elsewhere: kept
    ("gateway:\n  id: boiler-room\n", None),
    ("gateway:\n  id: edge-stream-2\n", None),
    ("sinks:\n  id: edge-stream\ngateway:\n  id: mine\n", None),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_the_images_id_or_none_becomes_the_boards_own(text: str, expected: str | None) -> None:
    assert board_id.with_id(text, NEW) == expected


@pytest.mark.parametrize(
    "text",
    [
        # the id shared with another section through an alias: it would change there too
        "base: &b\n  id: edge-stream\ngateway: *b\n",
        "gateway: 5\n",
        "- a\n",
        "gateway: [\n",
    ],
)
def test_a_config_it_cannot_change_is_left_saying_so(text: str) -> None:
    with pytest.raises(ValueError):
        board_id.with_id(text, NEW)


def test_the_shipped_config_keeps_its_comments() -> None:
    shipped = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text()
    written = board_id.with_id(shipped, NEW)
    assert written is not None
    changed = [
        (a, b) for a, b in zip(shipped.splitlines(), written.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1 and changed[0][1].startswith(f"  id: {NEW}     # "), changed
    assert yaml.safe_load(written)["gateway"]["id"] == NEW


@pytest.mark.skipif(shutil.which("systemd-id128") is None, reason="no systemd-id128")
@pytest.mark.skipif(os.geteuid() != 0, reason="a machine id of the test's own needs root")
def test_the_id_is_systemds_app_specific_machine_id(tmp_path: Path) -> None:
    """README says how to find a board's id from its machine id: a fixed one here, bound
    over /etc/machine-id in a mount namespace of the test's own, read by systemd's own
    tool. The machine id itself is not shown (systemd: it must not be exposed on the
    network)."""
    (tmp_path / "machine-id").write_text(MACHINE_ID + "\n")
    script = 'mount --bind "$1" /etc/machine-id && exec systemd-id128 machine-id "$2"'
    app = f"--app-specific={board_id.APP_ID}"
    result = subprocess.run(
        [*UNSHARE, "sh", "-c", script, "sh", str(tmp_path / "machine-id"), app],
        capture_output=True,
        text=True,
        check=True,
    )
    own = board_id.board_id(MACHINE_ID)
    assert own == f"edge-stream-{result.stdout.strip()[:8]}"
    assert MACHINE_ID[:8] not in own


def _run(*args: Path) -> subprocess.CompletedProcess[str]:
    """board-id run as the first boot runs it, this checkout's gateway on the path."""
    return subprocess.run(
        [sys.executable, "-s", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_it_writes_the_file_keeping_its_mode(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("gateway:\n  id: edge-stream\n")
    config.chmod(0o640)
    machine_id = tmp_path / "machine-id"
    machine_id.write_text(MACHINE_ID + "\n")
    result = _run(config, machine_id)
    assert result.returncode == 0, result.stderr
    own = board_id.board_id(MACHINE_ID)
    assert result.stdout.startswith(f"gateway.id {own}, the board's own (from the machine id)")
    assert config.read_text() == f"gateway:\n  id: {own}\n"
    assert config.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml", "machine-id"]
    # a second run: the id is the board's own now, nothing changes
    again = _run(config, machine_id)
    assert again.stdout == "" and config.read_text() == f"gateway:\n  id: {own}\n"


def test_without_a_machine_id_the_id_is_random(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("gateway:\n  id: edge-stream\n")
    result = _run(config, tmp_path / "no-machine-id")
    assert result.returncode == 0, result.stderr
    assert "(random: no machine id)" in result.stdout
    assert re.fullmatch(r"gateway:\n  id: edge-stream-[0-9a-f]{8}\n", config.read_text())


def test_a_config_it_cannot_change_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    text = "base: &b\n  id: edge-stream\ngateway: *b\n"
    config.write_text(text)
    result = _run(config, tmp_path / "no-machine-id")
    assert result.returncode == 1
    assert result.stderr == (
        f"{config}: gateway.id is written in a way this cannot change; gateway.id stays"
        f" edge-stream, the same on every board: set gateway.id in {config} to a name of"
        " this board's own\n"
    )
    assert config.read_text() == text

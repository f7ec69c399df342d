"""The first boot's helper that gives the config the board's own gateway.id
(rootfs/usr/lib/edge-stream/board-id): the image's `edge-stream`, or no id, becomes
edge-stream-XXXXXX from the machine id; only that line changes, and an id of the
config's own stays."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOTFS = Path(__file__).resolve().parents[2] / "rootfs"
SCRIPT = ROOTFS / "usr/lib/edge-stream/board-id"
_loader = importlib.machinery.SourceFileLoader("board_id", str(SCRIPT))
_spec = importlib.util.spec_from_loader("board_id", _loader)
assert _spec is not None
board_id = importlib.util.module_from_spec(_spec)
_loader.exec_module(board_id)

MACHINE_ID = "0f8e2c4b6a1d4e3f9b7c5a2d1e0f3c4b"
NEW = "edge-stream-abc123"

CASES = [
    # (the config's text, what it becomes)
    ("gateway:\n  id: edge-stream  # c\n", "gateway:\n  id: edge-stream-abc123 # c\n"),
    ("gateway:\n  id: 'edge-stream'\n", "gateway:\n  id: 'edge-stream-abc123'\n"),
    ('gateway:\r\n  id: "edge-stream"\r\n', 'gateway:\r\n  id: "edge-stream-abc123"\r\n'),
    (
        "gateway:\n    data_dir: /x\nsinks: {}\n",
        f"gateway:\n    id: {NEW}\n    data_dir: /x\nsinks: {{}}\n",
    ),
    ("gateway:\n# c\n  data_dir: /x\n", f"gateway:\n  id: {NEW}\n# c\n  data_dir: /x\n"),
    ("gateway:\n", f"gateway:\n  id: {NEW}\n"),
    ("sinks: {}", f"sinks: {{}}\ngateway:\n  id: {NEW}\n"),
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
        "gateway: {id: edge-stream}\n",  # flow style
        "gateway: {data_dir: /x}\n",
        "gateway:\n  id: !!str edge-stream\n",  # a form the line edit does not match
        "- a\n",
        "gateway: [\n",
    ],
)
def test_a_layout_it_does_not_edit_is_left_saying_so(text: str) -> None:
    with pytest.raises(ValueError):
        board_id.with_id(text, NEW)


def test_the_shipped_config_keeps_its_comments() -> None:
    shipped = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text()
    written = board_id.with_id(shipped, NEW)
    assert written is not None
    changed = [
        (a, b) for a, b in zip(shipped.splitlines(), written.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1 and changed[0][1].startswith(f"  id: {NEW}       # "), changed
    assert yaml.safe_load(written)["gateway"]["id"] == NEW


@pytest.mark.skipif(shutil.which("systemd-id128") is None, reason="no systemd-id128")
def test_the_id_is_systemds_app_specific_machine_id() -> None:
    """README says how to find a board's id from its machine id: this machine's, by
    systemd's own tool. The machine id itself is not shown (systemd: it must not be
    exposed on the network)."""
    machine_id = Path("/etc/machine-id").read_text().strip()
    app = f"--app-specific={board_id.APP_ID}"
    result = subprocess.run(
        ["systemd-id128", "machine-id", app], capture_output=True, text=True, check=True
    )
    own = board_id.board_id(machine_id)
    assert own == f"edge-stream-{result.stdout.strip()[:6]}"
    assert machine_id[:6] not in own


def test_it_writes_the_file_keeping_its_mode(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("gateway:\n  id: edge-stream\n")
    config.chmod(0o640)
    machine_id = tmp_path / "machine-id"
    machine_id.write_text(MACHINE_ID + "\n")
    run = [sys.executable, "-I", str(SCRIPT), str(config), str(machine_id)]
    result = subprocess.run(run, capture_output=True, text=True, check=True)
    own = board_id.board_id(MACHINE_ID)
    assert result.stdout.startswith(f"gateway.id {own}, the board's own (from the machine id)")
    assert config.read_text() == f"gateway:\n  id: {own}\n"
    assert config.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml", "machine-id"]
    # a second run: the id is the board's own now, nothing changes
    again = subprocess.run(run, capture_output=True, text=True, check=True)
    assert again.stdout == "" and config.read_text() == f"gateway:\n  id: {own}\n"


def test_a_layout_it_does_not_edit_is_one_line_and_the_file_stays(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("gateway: {id: edge-stream}\n")
    run = [sys.executable, "-I", str(SCRIPT), str(config), str(tmp_path / "no-machine-id")]
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == (
        f"{config}: gateway.id stays edge-stream, the same on every board: its gateway"
        " section is written in a way this does not edit; give each board on one broker"
        " its own gateway.id\n"
    )
    assert config.read_text() == "gateway: {id: edge-stream}\n"

"""The first-boot script's reader of /etc/edge-stream/environment
(rootfs/usr/lib/edge-stream/read-environment): it must take the file as systemd's
EnvironmentFile= does (src/basic/env-file.c), or check-config checks the card's config
with other values than the gateway then runs with."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "rootfs/usr/lib/edge-stream/read-environment"
_loader = importlib.machinery.SourceFileLoader("read_environment", str(SCRIPT))
_spec = importlib.util.spec_from_loader("read_environment", _loader)
assert _spec is not None
read_environment = importlib.util.module_from_spec(_spec)
_loader.exec_module(read_environment)

# (the file's text, what systemd sets), from the parser of systemd 252 (Debian 12)
CASES = [
    ("A = v\n", {"A": "v"}),
    ("A=v   \n", {"A": "v"}),
    ("A=  v  w  \n", {"A": "v  w"}),
    ('A="p\\"w"\n', {"A": 'p"w'}),
    ('A="a\\\\b\\$c\\`d\\ne"\n', {"A": "a\\b$c`d\\ne"}),
    ("A=v\r\nB=w\r\n", {"A": "v", "B": "w"}),
    ("A=one \\\ntwo\n", {"A": "one two"}),
    ("A=one \\\r\ntwo\r\n", {"A": "one "}),  # the backslash takes the CR only
    ('A="one \\\ntwo"\n', {"A": "one two"}),
    ('A="v" # c\n', {"A": "v# c"}),
    ("A=v # c\n", {"A": "v # c"}),
    ("# A=1\n; B=2\n  C='x $y \\z'\n", {"C": "x $y \\z"}),
    ("export A=1\nmy-db=2\n1A=3\n", {}),
    ("A=1\nA=2\n", {"A": "2"}),
    ("A=\nB=  \n", {"A": "", "B": ""}),
    ("A=v  ", {"A": "v"}),
    ("A=a\\b\\\\c\n", {"A": "ab\\c"}),
    ('A="multi\nline"\n', {"A": "multi\nline"}),
    ("A=a'b'c\n", {"A": "a'b'c"}),
    ("A\nB=1\n", {"B": "1"}),
    ("A='x'y\"z\"\n", {"A": 'xy"z"'}),
    # systemd 252 (Debian 12): a backslash ending a comment line continues the comment
    ("# a comment \\\nA=1\nB=2\n", {"B": "2"}),
    ("# \\\r\nA=1\r\n", {"A": "1"}),  # the backslash takes the CR, the LF ends it
    ("# a \\ b\nA=1\n", {"A": "1"}),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_the_file_is_read_as_systemd_reads_it(text: str, expected: dict[str, str]) -> None:
    assert read_environment.parse(text) == expected


def test_the_edge_stream_assignments_come_out_nul_separated(tmp_path: Path) -> None:
    path = tmp_path / "environment"
    path.write_bytes(b'EDGE_STREAM__WEB__PASSWORD = "p\\"w\r\nx"\r\nLD_PRELOAD=/tmp/x.so\r\n')
    out = subprocess.run(
        [sys.executable, "-I", str(SCRIPT), str(path)], capture_output=True, check=True
    ).stdout
    assert out == b'EDGE_STREAM__WEB__PASSWORD=p"w\r\nx\0'


def test_a_symbolic_link_or_a_fifo_is_not_read(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("EDGE_STREAM__A=1\n")
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")
    for name in ("link", "fifo"):
        result = subprocess.run(
            [sys.executable, "-I", str(SCRIPT), str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0 and result.stdout == "", name
        assert result.stderr.startswith(str(tmp_path / name)), result.stderr


@pytest.mark.parametrize(
    ("data", "out", "problem"),
    [
        # a comment's bytes are not checked by systemd: the file is read
        (b"# caf\xe9\nEDGE_STREAM__A=caf\xc3\xa9\n", "EDGE_STREAM__A=café\0".encode(), None),
        # a name or value that is not UTF-8, any name: systemd skips the whole file
        (b"EDGE_STREAM__A=1\nEDGE_STREAM__B=caf\xe9\n", b"", "in the value of EDGE_STREAM__B"),
        (b"EDGE_STREAM__A=1\nX\xe9=1\n", b"", "in the name X\\xe9"),
    ],
)
def test_bytes_that_are_not_utf8_are_taken_as_systemd_takes_them(
    tmp_path: Path, data: bytes, out: bytes, problem: str | None
) -> None:
    """Any byte that was not UTF-8 failed the reader, one in a comment too, where systemd
    reads the file; a name or value that is not UTF-8 makes systemd skip the file."""
    path = tmp_path / "environment"
    path.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-I", str(SCRIPT), str(path)], capture_output=True, timeout=30
    )
    assert result.stdout == out
    if problem is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1
        assert result.stderr.decode() == f"{path}: cannot be read (invalid UTF-8 {problem})\n"

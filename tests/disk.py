"""Disk faults a test can make in its own process (not a server's): a folder whose fsync
fails, as on an SD card going bad, after the file in it was already replaced."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest


def fail_fsync_of(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make os.fsync of `folder`'s descriptor fail with EIO for the rest of the test;
    every other fsync runs as usual."""
    fsync = os.fsync

    def failing(fd: int) -> None:
        if os.path.samestat(os.fstat(fd), os.stat(folder)):
            raise OSError(errno.EIO, "Input/output error")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)

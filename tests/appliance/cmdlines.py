"""For the first-boot test's edge-stream entry point: notes the command lines of the
process and of those that started it, as any user of the board reads them in /proc, and
the EDGE_STREAM... variables it was given."""

from __future__ import annotations

import os
from pathlib import Path


def note(folder: str) -> None:
    """Write this process's command line and its ancestors' to a file of its own in
    `folder` (one line each, arguments separated by spaces), its EDGE_STREAM... variables
    to another (PID.env)."""
    lines = []
    pid = os.getpid()
    while pid > 1:
        proc = Path(f"/proc/{pid}")
        try:
            lines.append(proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode())
            stat = proc.joinpath("stat").read_text()
        except OSError:
            break
        # the parent's pid is the second field after the command's name in parentheses
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    Path(folder, str(os.getpid())).write_text("\n".join(lines) + "\n")
    # and the overrides it was given, as Python literals
    overrides = sorted((k, v) for k, v in os.environ.items() if k.startswith("EDGE_STREAM"))
    Path(folder, f"{os.getpid()}.env").write_text("".join(f"{o!r}\n" for o in overrides))

"""`make bench`: runs every benchmark in bench/ and prints its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "spine.py",
    "sink_postgres.py",
    "sink_drain.py",
    "drain.py",
    "modbus.py",
    "memory.py",
    "reload.py",
    "window.py",
    "sources.py",
    "console.py",
]


def main() -> int:
    failed = []
    for name in BENCHES:
        path = HERE / name
        if not path.exists():
            continue
        print(f"\n##### bench/{name}", flush=True)
        if subprocess.call([sys.executable, str(path)]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

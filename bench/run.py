"""`make bench`: runs every benchmark in bench/ and prints its figures; last, bench/targets.py
prints each performance target with its figure (it runs bench/spine.py's measurement and
the Modbus target through the gateway, so modbus.py here skips the latter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["sink_postgres.py"],
    ["sink_drain.py"],
    ["drain.py"],
    ["modbus.py", "--skip-gateway"],
    ["memory.py"],
    ["reload.py"],
    ["window.py"],
    ["sources.py"],
    ["console.py"],
    ["targets.py"],
]


def main() -> int:
    failed = []
    for name, *args in BENCHES:
        path = HERE / name
        if not path.exists():
            continue
        print(f"\n##### bench/{' '.join([name, *args])}", flush=True)
        if subprocess.call([sys.executable, str(path), *args]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

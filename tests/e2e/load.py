"""Load for benchmarks and tests: lines published at QoS 1 by `mosquitto_pub -l`.

Each lane is one topic published in order, as fast as the broker takes it, by one
`mosquitto_pub` at a time. A session publishes at most SESSION_MAX messages, then the
next file goes out in a new session: Mosquitto 2.0.11 drops a `mosquitto_pub -l`
session after about 66,000 QoS 1 messages ("disconnected due to out of memory" in its
log) and mosquitto_pub still exits 0, so a longer run would stall without a word.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

SESSION_MAX = 50_000


class Lanes:
    """Write the lanes' files first (`add`), then `start` them all at once and `join`."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self._lanes: list[tuple[str, str, list[Path]]] = []
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def add(self, topic: str, client_id: str, lines: list[str]) -> None:
        files = []
        for first in range(0, len(lines), SESSION_MAX):
            path = self.folder / f"{client_id}-{first // SESSION_MAX}.txt"
            path.write_text("".join(line + "\n" for line in lines[first : first + SESSION_MAX]))
            files.append(path)
        self._lanes.append((topic, client_id, files))

    def start(self) -> None:
        for lane in self._lanes:
            thread = threading.Thread(target=self._publish, args=lane, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _publish(self, topic: str, client_id: str, files: list[Path]) -> None:
        for n, path in enumerate(files):
            with path.open("rb") as lines:
                done = subprocess.run(
                    [
                        "mosquitto_pub", "-p", str(self.port), "-q", "1", "-t", topic,
                        "-l", "-i", f"{client_id}-{n}",
                    ],
                    stdin=lines,
                    check=False,
                )  # fmt: skip
            if done.returncode != 0:
                self.errors.append(f"mosquitto_pub {client_id}-{n} exited {done.returncode}")
                return

    def join(self, timeout: float = 600) -> None:
        for thread in self._threads:
            thread.join(timeout)
        if self.errors:
            raise SystemExit("benchmark: " + "; ".join(self.errors))

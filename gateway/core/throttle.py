"""When to log a count that keeps growing: the first at once, then at most one line
per interval, with what was added since the last.

One helper for the log lines that would otherwise come once per event under load: the
MQTT source's QoS 0 drops and invalid PUBLISH packets, the store's `drop_oldest` drops.
It says when and how many; the caller logs, in its own words.
"""

from __future__ import annotations

from collections.abc import Callable

# Seconds between two lines about a growing count (drops, invalid packets, dead letters
# deleted over their budget): the first comes at once.
LOG_INTERVAL = 30.0


class LogThrottle:
    """Rate-limits the log lines about a growing total (of drops, say).

    `due(total)` answers how many were added since the last line when a line is due:
    the first time at once, then not before `interval` seconds after the last line
    (read from `monotonic`). A caller calls it when the total grows, and again later
    (each read, each maintenance pass), and with `now=True` when it stops, so that the
    last ones are logged too.
    """

    def __init__(self, interval: float, monotonic: Callable[[], float]) -> None:
        self.interval = interval
        self.monotonic = monotonic
        self._logged = 0  # the total at the last line
        self._at: float | None = None  # when that line was logged

    def due(self, total: int, now: bool = False) -> int:
        """How many of `total` to log now (they count as logged); 0: none new, or too soon.
        `now`: whatever the interval (the last line, at a close)."""
        new = total - self._logged
        if new <= 0:
            return 0
        at = self.monotonic()
        if not now and self._at is not None and at - self._at < self.interval:
            return 0
        self._at = at
        self._logged = total
        return new

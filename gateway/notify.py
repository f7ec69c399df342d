"""systemd's notify protocol (sd_notify): READY, STATUS, STOPPING and watchdog pings.

Under `Type=notify` (systemd/edge-stream.service) systemd passes a datagram socket in
`NOTIFY_SOCKET`; the gateway sends `READY=1` once the store is open and the first
engine's sources run, a `STATUS=` line at each step (shown by `systemctl status`), and,
when the unit sets `WatchdogSec=`, `WATCHDOG=1` from a task on the event loop every
half period: a loop stuck in a blocking call misses its pings and systemd restarts the
service. Without `NOTIFY_SOCKET` (a shell, a container, the tests) everything here does
nothing. No dependency: the protocol is one datagram per message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("gateway.notify")


class Notifier:
    """The notify socket systemd gave this process, if any.

    It reads the environment once and removes `NOTIFY_SOCKET`, `WATCHDOG_USEC` and
    `WATCHDOG_PID` from it, so that a child (the embedded Mosquitto) does not talk to
    systemd in the gateway's name.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", "")
        usec = env.pop("WATCHDOG_USEC", "")
        pid = env.pop("WATCHDOG_PID", "")
        # "@name" is a socket in the abstract namespace (a leading NUL byte).
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        for_us = not pid or (pid.isdigit() and int(pid) == os.getpid())
        if self.address and usec.isdigit() and int(usec) > 0 and for_us:
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when systemd asked for notifications."""
        return bool(self.address)

    def send(self, *lines: str) -> None:
        """Send `KEY=value` lines as one datagram; a failure is logged once, never raised."""
        if not self.address:
            return
        data = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A datagram to a local socket does not block for long; the socket is
            # non-blocking so a full queue drops this one message rather than the loop.
            self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("notify: cannot reach systemd's NOTIFY_SOCKET (%s)", err)

    def status(self, text: str) -> None:
        """A `STATUS=` line (one line: newlines are replaced)."""
        self.send("STATUS=" + " ".join(text.split("\n")))

    async def watchdog(self) -> None:
        """Ping `WATCHDOG=1` every half `WatchdogSec` for as long as the loop runs."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        """Close the socket (the process ends)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""The embedded broker: `mqtt.url: embedded` runs a local Mosquitto under the gateway.

The gateway writes a mosquitto.conf under `<data_dir>/broker/`, starts
`mosquitto` as a child process, restarts it if it dies and stops it on exit.
The config keeps sessions and queued messages on disk (so sensors' QoS 1
messages survive a broker restart) and raises Mosquitto's default queue limit
of 1000 messages per offline client, which would otherwise drop data while the
gateway restarts. It listens on 127.0.0.1:1883 unless `mqtt.embedded_listen`
says otherwise.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
from pathlib import Path

from gateway.core.errors import ConfigError, RetryableError

log = logging.getLogger("gateway.broker")
PR_SET_PDEATHSIG = 1

CONF = """\
# Written by Edge Stream at each start; edit mqtt.* in the gateway config instead.
listener {port} {host}
allow_anonymous true
persistence true
persistence_location {dir}/
autosave_interval 10
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 1000
persistent_client_expiration 14d
log_dest stderr
log_type error
log_type warning
connection_messages false
"""


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the gateway dies, even by SIGKILL.

    Otherwise a killed gateway leaves its broker holding the port, and the
    restarted gateway could not start its own.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _reachable(folder: Path, uid: int, gid: int) -> bool:
    """True if a user with `uid`/`gid` may enter every folder down to `folder`."""
    for path in (folder, *folder.parents):
        st = path.stat()
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid == gid:
            bit = 0o010
        else:
            bit = 0o001
        if path != folder and not st.st_mode & bit:
            return False
    return True


class EmbeddedBroker:
    """A supervised Mosquitto child process."""

    def __init__(self, data_dir: str, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.dir = Path(data_dir).resolve() / "broker"
        self._proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _binary(self) -> str:
        for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
        raise ConfigError(
            "mqtt.url is 'embedded' but Mosquitto is not installed:"
            " run 'apt-get install mosquitto' (or 'make deps'), or point mqtt.url at a broker"
        )

    def _prepare(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "mosquitto.conf"
        text = CONF.format(port=self.port, host=self.host, dir=self.dir)
        if os.geteuid() == 0:
            # Mosquitto started as root drops to the `mosquitto` user, which must own its
            # files and be able to reach them; under a private folder (/root, a 0700 temp
            # dir) it cannot, and would lose its persistence, so it keeps root there.
            try:
                user = pwd.getpwnam("mosquitto")
            except KeyError:
                user = None
            if user is not None and _reachable(self.dir, user.pw_uid, user.pw_gid):
                for path in (self.dir, *self.dir.iterdir()):
                    os.chown(path, user.pw_uid, user.pw_gid)
            else:
                text += "user root\n"
                log.warning(
                    "broker: %s is not reachable by the mosquitto user; the embedded broker"
                    " runs as root (run the gateway as its own user, or use a data_dir"
                    " such as /var/lib/edge-stream)",
                    self.dir,
                )
        conf.write_text(text)
        return conf

    def _check_port_free(self) -> None:
        probe = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((self.host, self.port))
        except OSError as err:
            raise RetryableError(
                f"the embedded broker cannot listen on {self.host}:{self.port}: {err.strerror}"
                " (is another MQTT broker running? stop it, or set mqtt.url to use it)"
            ) from err
        finally:
            probe.close()

    async def start(self) -> None:
        binary = self._binary()
        self._check_port_free()
        conf = self._prepare()
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        for _ in range(100):
            if self._proc.returncode is not None:
                err = (await self._proc.stderr.read()).decode(errors="replace")  # type: ignore[union-attr]
                raise RetryableError(f"the embedded Mosquitto exited at start: {err.strip()}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
                log.info("broker: embedded Mosquitto listening on %s:%d", self.host, self.port)
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RetryableError(f"the embedded Mosquitto did not open {self.host}:{self.port}")

    async def supervise(self) -> None:
        """Restart Mosquitto when it dies, until `stop()`."""
        while not self.stopping:
            proc = self._proc
            if proc is None:
                await asyncio.sleep(5.0)
                try:
                    await self.start()
                except RetryableError as err:
                    log.error("broker: %s", err)
                continue
            assert proc.stderr is not None
            async for line in proc.stderr:
                log.warning("broker: %s", line.decode(errors="replace").rstrip())
            await proc.wait()
            if self.stopping:
                return
            self.restarts += 1
            log.error(
                "broker: the embedded Mosquitto exited (code %s); restarting", proc.returncode
            )
            self._proc = None
            await asyncio.sleep(1.0)
            try:
                await self.start()
            except RetryableError as err:
                log.error("broker: %s", err)

    async def stop(self) -> None:
        self.stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

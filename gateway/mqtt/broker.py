"""The gateway's own MQTT broker: `mqtt.url: auto` (the default) or `embedded`.

`mqtt.url` names the broker that MQTT sources without a `url`, Modbus
write-back and the like use (the gateway's broker):

- `auto` (the default, and what config/gateway.yaml uses): the broker at
  `mqtt.embedded_listen` (127.0.0.1:1883). If an MQTT broker already answers
  there (the system's Mosquitto, which Debian's `mosquitto` package starts on
  a machine with systemd), the gateway uses it and says so in one log line;
  otherwise it starts its own Mosquitto there. Nothing is started when no
  component uses the gateway's broker (a serial- or Modbus-only config).
- `embedded`: always start and supervise a Mosquitto on `embedded_listen`,
  even when no component of the gateway uses it (sensors may publish to it
  for other subscribers). An address in use is an error.
- `mqtt://host:port` or `mqtts://host:port`: a broker run elsewhere.

`mqtt.embedded_listen` (host:port, default 127.0.0.1:1883; an IPv6 address in
brackets, [::1]:1883) is where the embedded broker listens. An address another
program holds stops the start with one line that says what to change.

The gateway writes a mosquitto.conf under `<data_dir>/broker/`, starts
`mosquitto` as a child process, restarts it if it dies and stops it on exit:
SIGTERM, then up to 60 s for it to save its sessions and queued messages (logged
while it waits), SIGKILL only then. A Mosquitto that a killed gateway left
running on the same config is stopped the same way before a new one starts.
The config keeps sessions and queued messages on disk (so sensors' QoS 1
messages survive a broker restart) and raises Mosquitto's default queue limit
of 1000 messages per offline client, which would otherwise drop data while the
gateway restarts. A `mosquitto.db` there that Mosquitto cannot read (damaged, or
written by a newer Mosquitto) stops the start with one line that names it and
says what to do: upgrade Mosquitto (a newer one's file), or move it aside and the
broker starts without the sessions and messages it held. A system Mosquitto used by `auto` keeps its
own settings (see README, "What your MQTT broker needs").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import pwd
import re
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.config.schema import mask_password
from gateway.core.errors import ConfigError, RetryableError

log = logging.getLogger("gateway.broker")
PR_SET_PDEATHSIG = 1
PROBE_TIMEOUT = 2.0
# Seconds Mosquitto gets to exit on SIGTERM, ours at shutdown or a leftover of a killed
# gateway, before SIGKILL: it saves its sessions and queued messages first, and with a
# large queue that takes a while on an SD card. Messages since its last autosave were
# already PUBACKed to sensors: a SIGKILL while it saves loses them.
STOP_WAIT = 60.0
# MQTT 3.1.1 CONNECT: clean session, keepalive 10 s, client id "edge-stream-probe"; every
# MQTT broker answers it with a CONNACK (0x20), whatever it thinks of anonymous clients.
_PROBE_ID = b"edge-stream-probe"
_PROBE_CONNECT = (
    bytes([0x10, 12 + len(_PROBE_ID)])
    + b"\x00\x04MQTT\x04\x02\x00\x0a"
    + len(_PROBE_ID).to_bytes(2, "big")
    + _PROBE_ID
)
_DISCONNECT = b"\xe0\x00"

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


class PortInUse(RetryableError):
    """Another program holds the address the embedded broker should listen on."""


class UnreadableStore(RetryableError):
    """Mosquitto exits at start: it cannot read its saved sessions (mosquitto.db)."""


def _said(stderr: bytes) -> str:
    """What Mosquitto wrote on stderr, in one line: its lines without their timestamps,
    its errors alone if it wrote any (not "Warning: Mosquitto should not be run as root")."""
    lines = [
        re.sub(r"^\d+: ", "", line).strip() for line in stderr.decode(errors="replace").splitlines()
    ]
    errors = [line for line in lines if line.startswith("Error")]
    return " ".join(errors or [line for line in lines if line])


class EmbeddedBroker:
    """A supervised Mosquitto child process."""

    def __init__(self, data_dir: str, listen: str, mode: str = "embedded") -> None:
        self.host, self.port = split_listen(listen)
        self.address = join_address(self.host, self.port)
        self.mode = mode  # mqtt.url: embedded, or auto when no broker answered
        self.dir = Path(data_dir).resolve() / "broker"
        self._proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.address}"

    def _binary(self) -> str:
        for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
        if self.mode == "auto":
            raise ConfigError(
                f"mqtt.url is 'auto' and no MQTT broker answers on {self.address}"
                " (mqtt.embedded_listen), so the gateway would start its own, but Mosquitto"
                " is not installed: run 'apt-get install mosquitto' (or 'make deps'), or"
                " point mqtt.url at a broker"
            )
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
            kind = PortInUse if err.errno == errno.EADDRINUSE else RetryableError
            raise kind(
                f"the embedded broker cannot listen on {self.address}: {err.strerror}"
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
                said = _said(await self._proc.stderr.read())  # type: ignore[union-attr]
                db = self.dir / "mosquitto.db"
                if "Unable to restore persistent database" in said:
                    # "... Unrecognised file format." It was a two-line error naming
                    # mqtt.embedded_listen, which is not at fault.
                    raise UnreadableStore(
                        f"the embedded Mosquitto cannot read its saved sessions and queued"
                        f" messages, {db} ({said}): if the file is damaged, move it aside"
                        " (the sessions and messages in it are lost) and start again"
                    )
                newer = "Unsupported persistent database" in said or re.search(
                    r"Incompatible database configuration \(dbid size is [48] bytes", said
                )
                if newer:
                    # a newer Mosquitto's file (a downgrade), or one of a build with other
                    # sizes: not damaged, and that Mosquitto reads it with nothing lost
                    raise UnreadableStore(
                        f"the embedded Mosquitto cannot read its saved sessions and queued"
                        f" messages, {db} ({said}): it was written by a newer (or otherwise"
                        " built) Mosquitto: upgrade Mosquitto, or move the file aside (the"
                        " sessions and messages in it are lost) and start again"
                    )
                if "database" in said:
                    # Damaged otherwise ("Corrupt persistent database.", "Couldn't open
                    # database." after a truncated file, a dbid size of 0 bytes)
                    raise UnreadableStore(
                        f"the embedded Mosquitto cannot read its saved sessions and queued"
                        f" messages, {db} ({said}): if the file is damaged, move it aside"
                        " (the sessions and messages in it are lost) and start again"
                    )
                raise RetryableError(f"the embedded Mosquitto exited at start: {said}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
                log.info("broker: embedded Mosquitto listening on %s", self.address)
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RetryableError(f"the embedded Mosquitto did not open {self.address}")

    async def start_first(self) -> None:
        """The first start: an address in use, or a Mosquitto that cannot start, is a
        ConfigError (one line, and the process exits 1)."""
        address = self.address
        try:
            await self.start()
        except PortInUse as err:
            raise ConfigError(in_use("mqtt.embedded_listen", address)) from err
        except UnreadableStore as err:
            raise ConfigError(str(err)) from err
        except RetryableError as err:
            raise ConfigError(f"mqtt.embedded_listen {address}: {err}") from err

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
        # Not proc.terminate(): Popen's send_signal reaps a child that died already (a
        # SIGTERM to the whole group, a service stop), and asyncio's watcher, waiting for
        # it too, then logged "Unknown child process pid ..., will report returncode 255".
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await proc.wait()
                return
        except TimeoutError:
            log.warning(
                "broker: waiting up to %.0fs for the embedded Mosquitto to save its queued"
                " messages and exit",
                STOP_WAIT,
            )
        try:
            async with asyncio.timeout(STOP_WAIT - 5):
                await proc.wait()
        except TimeoutError:
            log.error(
                "broker: the embedded Mosquitto did not exit within %.0fs; killed (messages"
                " since its last autosave may be lost)",
                STOP_WAIT,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


def in_use(key: str, address: str) -> str:
    """The one line for an address another program holds."""
    return f"{key} {address} is in use by another program; set {key} to a free address"


def split_listen(listen: str) -> tuple[str, int]:
    """(host, port) from `host:port` or `[IPv6]:port`, the host without its brackets."""
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]") or "127.0.0.1", int(port)


def join_address(host: str, port: int) -> str:
    """`host:port`, an IPv6 address in brackets (as in a URL)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Found = Literal["free", "mqtt", "other"]


async def probe(host: str, port: int) -> Found:
    """What listens on host:port: nothing, an MQTT broker, or another program."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return "free"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            writer.write(_PROBE_CONNECT)
            await writer.drain()
            answer = await reader.readexactly(4)
        if answer[0] == 0x20 and answer[1] == 2:
            writer.write(_DISCONNECT)
            await writer.drain()
            return "mqtt"
        return "other"
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return "other"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def _leftover_pids(conf: Path) -> Iterator[int]:
    """Mosquitto processes still running on this gateway's own broker config.

    A gateway killed by SIGKILL can leave its broker running: PDEATHSIG is cleared
    when Mosquitto drops to the `mosquitto` user. A restart must neither take it for
    a system broker nor fail on the port it holds.
    """
    wanted = str(conf).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(args) >= 3 and args[0].endswith(b"mosquitto") and args[1:3] == [b"-c", wanted]:
            yield int(entry.name)


async def wait_for_leftovers(conf: Path, limit: float = STOP_WAIT) -> None:
    """Stop a leftover of our own embedded broker: SIGTERM, then wait for it to exit (it
    saves its sessions and queued messages, which sensors already had PUBACKs for), and
    SIGKILL only after `limit` seconds."""
    pids = list(_leftover_pids(conf))
    if not pids:
        return
    for pid in pids:
        log.warning(
            "broker: stopping the embedded Mosquitto a previous run left (pid %d); waiting"
            " up to %.0fs for it to save its queued messages and exit",
            pid,
            limit,
        )
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    said = loop.time()
    while pids and loop.time() < deadline:
        await asyncio.sleep(0.05)
        pids = list(_leftover_pids(conf))
        if pids and loop.time() - said >= 10:
            said = loop.time()
            log.warning("broker: still waiting for the previous embedded Mosquitto to exit")
    for pid in pids:
        log.error(
            "broker: the embedded Mosquitto a previous run left (pid %d) did not exit within"
            " %.0fs; killed (messages since its last autosave may be lost)",
            pid,
            limit,
        )
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for _ in range(100 if pids else 0):  # the port is free once it is gone
        if not list(_leftover_pids(conf)):
            break
        await asyncio.sleep(0.05)


def _points_at(url: Any, host: str, port: int) -> bool:
    if not isinstance(url, str) or not url.startswith(("mqtt://", "mqtts://")):
        return False
    try:
        parts = urlsplit(url)
        url_port = parts.port or 1883
    except ValueError:
        return False
    local = {"127.0.0.1", "localhost", "::1"}
    same = parts.hostname == host or (parts.hostname in local and host in local | {"0.0.0.0"})
    return same and url_port == port


def broker_users(config: Any) -> list[str]:
    """The components that use the gateway's broker (`mqtt.url: auto` or `embedded`):
    an MQTT source without its own `url`, Modbus write-back without its own `url`, and any
    MQTT source, sink or write-back whose `url` points at `mqtt.embedded_listen`; and
    `remote_config` without its own `broker` (or one pointing there)."""
    host, port = split_listen(config.mqtt.embedded_listen)
    users = []
    for kind in ("sources", "sinks"):
        for name, cfg in getattr(config, kind).items():
            urls = [getattr(cfg, "url", None)]
            writeback = getattr(cfg, "writeback", None)
            if writeback is not None and getattr(writeback, "enabled", False):
                if writeback.url is None:
                    users.append(f"{kind}.{name}.writeback")
                    continue
                urls.append(writeback.url)
            own = kind == "sources" and getattr(cfg, "type", None) == "mqtt" and urls[0] is None
            if own or any(_points_at(url, host, port) for url in urls):
                users.append(f"{kind}.{name}")
    remote = getattr(config, "remote_config", None)
    if (
        remote is not None
        and remote.enabled
        and (remote.broker is None or _points_at(remote.broker, host, port))
    ):
        users.append("remote_config")
    return users


class GatewayBroker:
    """Which broker the gateway's components use, and the embedded one if it runs it."""

    def __init__(self, url: str, embedded: EmbeddedBroker | None, users: list[str]) -> None:
        self.url = url
        self.embedded = embedded
        self.users = users

    def describe(self) -> str:
        if self.embedded is not None:
            return f"MQTT broker {mask_password(self.url)} (embedded)"
        return f"MQTT broker {mask_password(self.url)}"

    def status(self) -> dict[str, Any]:
        return {
            "url": mask_password(self.url),  # mqtt.url may be written with user:password@
            "embedded": self.embedded is not None,
            "restarts": 0 if self.embedded is None else self.embedded.restarts,
            "used_by": self.users,
        }


def has_gateway_broker(config: Any) -> bool:
    """Whether the gateway has a broker, for its status topics and the alerts' MQTT
    events too: `mqtt.url` names one or is `embedded`, or (`auto`) a component uses one;
    none is started for the status topics alone. Told from the config, not from a broker
    running now: a reload of `mqtt:` stops and starts the embedded one."""
    return config.mqtt.url != "auto" or bool(broker_users(config))


async def open_gateway_broker(config: Any, data_dir: str) -> GatewayBroker | None:
    """Resolve `mqtt.url` and start the embedded broker if it is needed (see the module
    doc). None when the gateway's broker is not used; ConfigError when it cannot start."""
    if not has_gateway_broker(config):
        return None
    mqtt = config.mqtt
    users = broker_users(config)
    if mqtt.url not in ("auto", "embedded"):
        # the status channel finds a broker named here in `mqtt.url` itself
        return GatewayBroker(mqtt.url, None, users) if users else None
    broker = EmbeddedBroker(data_dir, mqtt.embedded_listen, mqtt.url)
    await wait_for_leftovers(broker.dir / "mosquitto.conf")
    address = broker.address
    found = await probe(broker.host, broker.port)
    if found == "mqtt" and mqtt.url == "auto":
        log.info(
            "broker: an MQTT broker already answers on %s (the system's Mosquitto?); the gateway"
            " uses it instead of starting its own (set mqtt.url: embedded to always start one)",
            address,
        )
        return GatewayBroker(broker.url, None, users)
    if found != "free":
        what = "an MQTT broker" if found == "mqtt" else "another program"
        key = "mqtt.embedded_listen"
        hint = " (or mqtt.url: auto to use the broker there)" if found == "mqtt" else ""
        raise ConfigError(f"{key} {address} is in use by {what}; set {key} to a free address{hint}")
    await broker.start_first()
    return GatewayBroker(broker.url, broker, users)

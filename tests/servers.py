"""Real Debian servers for the tests: Mosquitto, PostgreSQL, MariaDB, Redis, RabbitMQ and a NATS
cluster (and asyncua's OPC UA server, a Python script).

Each server runs from the Debian package's binary on a free 127.0.0.1 port, with its data
in a folder under one `Workspace` (a temp folder per test session). A server object has
`.host`, `.port`, `.start()` (again on the same port and data), `.stop()` (clean shutdown,
data kept), `.kill()` (SIGKILL, data kept as far as the server keeps it) and `.close()`
(stop for good). This module does not import pytest, so the benchmarks can reuse it;
`tests/conftest.py` turns it into fixtures.

Running as root (CI, the project's VMs):
- PostgreSQL and MariaDB refuse to run as root, and Mosquitto started as root drops to the
  `mosquitto` user on its own. All three are started directly as their Debian service
  user (`postgres`, `mysql`, `mosquitto`) through `setpriv`, with their folder chowned to
  that user. Starting them unprivileged, rather than letting them drop privileges, keeps
  the parent-death signal below (the kernel clears it when a process changes its uid).
- Redis does not mind root and runs as the current user.
- RabbitMQ runs as `rabbitmq` (its Erlang cookie must belong to the user running it).
When not root, every server simply runs as the current user.

No stray processes: every server gets `--pdeathsig=KILL`, so the kernel kills it if the
test process dies, even by SIGKILL; `Workspace.close()` runs from fixture finalizers and
atexit; and a new workspace reaps the folders (and any server still running in them) of
earlier sessions whose process is gone.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import datetime as dt
import gc
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
PG_BIN = Path("/usr/lib/postgresql/15/bin")
WORKSPACE_PREFIX = "edge-stream-servers-"
T = TypeVar("T")


class ServerError(RuntimeError):
    """A test server could not be set up, started or stopped."""


class MissingServerError(ServerError):
    """A server binary is not installed."""


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def open_connections(port: int) -> int:
    """How many TCP sockets of this process are open to 127.0.0.1:`port` (Linux /proc): 0
    once a client's close() has really closed its socket, whatever state the kernel keeps."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    count += 1
    return count


def require(binary: str | Path) -> str:
    """The full path of `binary`, or MissingServerError telling how to install it."""
    path = shutil.which(str(binary))
    if path is None:
        raise MissingServerError(
            f"{binary} is not installed; run `make deps` (as root) to install the Debian "
            "packages the tests use"
        )
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise MissingServerError(
            f"there is no `{user}` system user (its Debian package creates it); run `make deps`"
        ) from None
    for folder, _dirs, files in os.walk(path):
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(folder, name), entry.pw_uid, entry.pw_gid)


def _process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a live process from a later one reusing its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces, so count fields after its closing ")".
    return stat.rsplit(")", 1)[1].split()[19]


def reap_stale_workspaces(tmp: Path | None = None) -> None:
    """Kill servers left by sessions that died without cleaning up, and remove their folders."""
    tmp = tmp or Path(tempfile.gettempdir())
    for root in tmp.glob(f"{WORKSPACE_PREFIX}*"):
        try:
            pid_text, started = (root / "owner").read_text().split()
            owner = int(pid_text)
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        if _process_start_time(owner) == started:
            continue  # that session is still running (maybe another engineer's)
        for pid_file in root.glob("*/server.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                # Only if the process still works inside that folder: pids get reused.
                if os.readlink(f"/proc/{pid}/cwd").startswith(str(root)):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


class Server:
    """One server process on a fixed loopback port with a data folder that outlives restarts."""

    kind: ClassVar[str]
    run_as: ClassVar[str | None] = None  # the Debian service user when running as root
    ready_timeout: ClassVar[float] = READY_TIMEOUT
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    host = HOST

    def __init__(self, workspace: Workspace) -> None:
        self.port = free_port()
        self.dir = workspace.new_dir(self.kind)
        self.log_file = self.dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = self.run_as if os.geteuid() == 0 else None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} {self.dir}>"

    # --- what each server defines ---------------------------------------------------------

    def command(self) -> list[str]:
        """The command line that runs the server in the foreground."""
        raise NotImplementedError

    def setup(self) -> None:
        """One-time preparation before the first start (config files, initdb)."""

    def ready(self) -> bool:
        """True once the server accepts clients."""
        return _port_open(self.port)

    def after_first_start(self) -> None:
        """One-time work once the server is up (create databases and users)."""

    def environment(self) -> dict[str, str]:
        """Variables the server and its tools run with, besides the test process's own."""
        return {}

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> None:
        """Start the server (again) on the same port and data folder; wait until it serves."""
        if self.running:
            raise ServerError(f"{self!r} is already running")
        require(self.command()[0])  # before any setup, for a clear message
        first = self._proc is None
        if first:
            self.setup()
            _chown_tree(self.dir, self._user)
        self._proc = self.spawn(self.command(), self.log_file)
        (self.dir / "server.pid").write_text(str(self._proc.pid))
        self._wait_ready()
        if first:
            self.after_first_start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut the server down cleanly (SIGKILL if it takes longer than `timeout`)."""
        if not self.running or self._proc is None:
            return
        self._proc.send_signal(self.stop_signal)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerError(
                f"{self!r} did not stop within {timeout:.0f} s and was killed; "
                f"log tail:\n{_tail(self.log_file)}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the server, as a crash or power cut of that process would."""
        if self.running and self._proc is not None:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        """Stop for good: clean shutdown if quick, else SIGKILL. Never raises."""
        with contextlib.suppress(ServerError, OSError):
            self.stop(timeout=10)
        self.kill()

    # --- helpers --------------------------------------------------------------------------

    def spawn(self, command: list[str], log_file: Path) -> subprocess.Popen[bytes]:
        """Run `command` as the service user, output appended to `log_file`."""
        require(command[0])
        wrapper = [require("setpriv")]
        if self._user is not None:
            wrapper += [f"--reuid={self._user}", f"--regid={self._user}", "--clear-groups"]
        # The kernel sends the parent-death signal when the *thread* that forked exits, so
        # only ask for it from the main thread (fixtures run there).
        if threading.current_thread() is threading.main_thread():
            wrapper.append("--pdeathsig=KILL")
        with log_file.open("ab") as log:
            return subprocess.Popen(
                [*wrapper, "--", *command],
                cwd=self.dir,
                env={**os.environ, "HOME": str(self.dir), **self.environment()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal goes to pytest, which then stops the
                # servers in order, instead of hitting every server at once.
                start_new_session=True,
            )

    def run_tool(self, command: list[str], timeout: float = 120) -> None:
        """Run a one-shot tool (initdb, ...) as the service user; ServerError with its output."""
        log_file = self.dir / f"{Path(command[0]).name}.log"
        _chown_tree(self.dir, self._user)  # the tool runs as the service user too
        proc = self.spawn(command, log_file)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        if code != 0:
            raise ServerError(
                f"{' '.join(command)} failed (exit {code}); output:\n{_tail(log_file)}"
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                problem = f"exited with code {code} while starting"
                break
            if self.ready():
                return
            if time.monotonic() > deadline:
                problem = f"did not accept clients within {self.ready_timeout:.0f} s"
                self.kill()
                break
            time.sleep(0.05)
        raise ServerError(
            f"{self.kind} on {self.host}:{self.port} {problem}; "
            f"log {self.log_file}, tail:\n{_tail(self.log_file)}"
        )


# --- Mosquitto ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway PKI: one CA, a server certificate for 127.0.0.1/localhost, a client one."""

    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    cert_file: Path  # client certificate, CN = client_cn
    key_file: Path
    client_cn: str


def make_pki(folder: Path, client_cn: str = "edge-gateway") -> TlsFiles:
    """Write a CA, a server and a client certificate (EC P-256, PEM, keys unencrypted)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    # Back-dated a day so a clock a little behind does not reject them.
    now = dt.datetime.now(dt.UTC)
    valid_from, valid_to = now - dt.timedelta(days=1), now + dt.timedelta(days=30)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("Edge Stream test CA"))
        .issuer_name(name("Edge Stream test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    files = TlsFiles(
        ca_file=folder / "ca.crt",
        server_cert_file=folder / "server.crt",
        server_key_file=folder / "server.key",
        cert_file=folder / "client.crt",
        key_file=folder / "client.key",
        client_cn=client_cn,
    )
    files.ca_file.write_bytes(ca_cert.public_bytes(pem))

    def issue(
        cn: str,
        usage: x509.ObjectIdentifier,
        san: list[x509.GeneralName],
        cert_file: Path,
        key_file: Path,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid_from)
            .not_valid_after(valid_to)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert_file.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(pem))
        write_key(key, key_file)

    issue(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))],
        files.server_cert_file,
        files.server_key_file,
    )
    issue(client_cn, ExtendedKeyUsageOID.CLIENT_AUTH, [], files.cert_file, files.key_file)
    return files


class Mosquitto(Server):
    """Mosquitto with persistence, generous queues, and optionally a TLS listener that
    requires a client certificate (signed by `tls.ca_file`).

    Like a real broker, it saves sessions and queued messages on a clean stop and every
    `autosave_interval` (30 min): `kill()` loses what changed since the last save."""

    kind = "mosquitto"
    run_as = "mosquitto"

    def __init__(
        self,
        workspace: Workspace,
        tls: bool = False,
        user: tuple[str, str] | None = None,
        acl: str | None = None,
        options: str | None = None,
    ) -> None:
        super().__init__(workspace)
        self.tls: TlsFiles | None = make_pki(self.dir / "tls") if tls else None
        self.config_file = self.dir / "mosquitto.conf"
        self.user = user  # (username, password): the only client allowed in
        self.acl = acl  # the text of an acl_file (mosquitto.conf(5)): what clients may do
        self.options = options  # more mosquitto.conf lines, e.g. "max_qos 1"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    # The client side of the PKI, for `mqtts` clients; None without TLS.
    @property
    def ca_file(self) -> Path | None:
        return self.tls.ca_file if self.tls else None

    @property
    def cert_file(self) -> Path | None:
        return self.tls.cert_file if self.tls else None

    @property
    def key_file(self) -> Path | None:
        return self.tls.key_file if self.tls else None

    def setup(self) -> None:
        (self.dir / "data").mkdir()
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if self.user else 'true'}",
            "persistence true",
            f"persistence_location {self.dir / 'data'}/",
            # Queue everything for offline persistent sessions and never drop QoS 1/2
            # messages: the tests count messages, so a broker limit must not lose any.
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            # 0 = no limit on QoS 1/2 messages in flight to one client (mosquitto.conf(5)).
            "max_inflight_messages 0",
            "persistent_client_expiration 1d",
            "log_dest stderr",
        ]
        if self.tls:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.server_cert_file}",
                f"keyfile {self.tls.server_key_file}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        if self.user:
            passwords = self.dir / "passwords"
            subprocess.run(
                ["mosquitto_passwd", "-b", "-c", str(passwords), *self.user],
                check=True,
                capture_output=True,
            )
            shutil.chown(passwords, self.run_as, self.run_as)
            passwords.chmod(0o600)
            lines.append(f"password_file {passwords}")
        if self.acl is not None:
            acl = self.dir / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        if self.options is not None:
            lines.append(self.options)
        self.config_file.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return ["/usr/sbin/mosquitto", "-c", str(self.config_file)]


# --- PostgreSQL ---------------------------------------------------------------------------


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop
    (async tests call the sync helpers): it gets its own loop on a short-lived thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Postgres(Server):
    """PostgreSQL 15 with database `edge`, superuser `postgres`, trust auth, and fsync off:
    a commit reaches the OS, so it survives a killed server (not a killed machine).
    synchronous_commit stays on, or a kill would lose the last commits. `tls=True` turns
    ssl on with a server certificate from a throwaway PKI (`.tls`; plain connections
    are still taken)."""

    kind = "postgres"
    run_as = "postgres"
    # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to leave.
    stop_signal = signal.SIGINT
    user = "postgres"
    database = "edge"

    def __init__(self, workspace: Workspace, tls: bool = False) -> None:
        super().__init__(workspace)
        self.data_dir = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.tls: TlsFiles | None = make_pki(self.dir / "tls") if tls else None

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def setup(self) -> None:
        self.data_dir.mkdir(mode=0o700)
        self.socket_dir.mkdir()
        self.run_tool(
            [
                str(PG_BIN / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={self.user}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "timezone": "UTC",
        }
        if self.tls:
            settings["ssl"] = "on"
            settings["ssl_cert_file"] = str(self.tls.server_cert_file)
            settings["ssl_key_file"] = str(self.tls.server_key_file)
        args = [str(PG_BIN / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    def ready(self) -> bool:
        check = [
            require(PG_BIN / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
            "-U", self.user, "-d", "postgres",
        ]  # fmt: skip
        return subprocess.run(check, check=False, timeout=10).returncode == 0

    def after_first_start(self) -> None:
        self.execute(f"CREATE DATABASE {self.database}", database="postgres")

    def _call(self, method: str, sql: str, args: tuple[Any, ...], database: str | None) -> Any:
        """One asyncpg connection, one `conn.<method>(sql, *args)` call."""

        async def call() -> Any:
            import asyncpg

            conn = await asyncpg.connect(self.dsn_for(database or self.database))
            try:
                return await getattr(conn, method)(sql, *args)
            finally:
                await conn.close()

        return _run_async(call())

    def fetch(self, sql: str, *args: Any, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run a query (asyncpg, `$1` placeholders) and return its rows as tuples."""
        return [tuple(row) for row in self._call("fetch", sql, args, database)]

    def execute(self, sql: str, *args: Any, database: str | None = None) -> str:
        """Run statements (several, separated by `;`, when there are no args); returns the
        status of the last one, e.g. "INSERT 0 1"."""
        return str(self._call("execute", sql, args, database))


# --- MariaDB ------------------------------------------------------------------------------


class MariaDB(Server):
    """MariaDB with database `edge`, user `edge`/`edge-test` on it, and root without a
    password on the unix socket (used by `fetch`). Commits reach the OS, not the disk."""

    kind = "mariadb"
    run_as = "mysql"
    user = "edge"
    password = "edge-test"
    database = "edge"

    # The same redo log size for install and server, or the server resizes it at start.
    _innodb = ("--innodb-log-file-size=16M", "--innodb-buffer-pool-size=64M")

    def __init__(self, workspace: Workspace) -> None:
        super().__init__(workspace)
        self.data_dir = self.dir / "data"
        # Inside the data folder: it is the one folder the server can surely write.
        self.socket = self.data_dir / "mysqld.sock"

    @property
    def dsn(self) -> str:
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def setup(self) -> None:
        self.data_dir.mkdir()
        self.run_tool(
            [
                "/usr/bin/mariadb-install-db",
                "--no-defaults",  # not /etc/mysql: its socket and pid paths are the system's
                f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *self._innodb,
            ]
        )

    def command(self) -> list[str]:
        return [
            "/usr/sbin/mariadbd",
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--socket={self.socket}",
            f"--pid-file={self.data_dir / 'mariadbd.pid'}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            "--skip-networking=0",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--max-connections=200",
            # Commits written to the OS at once but not fsynced: survives a killed server.
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            *self._innodb,
        ]

    def ready(self) -> bool:
        if not (self.socket.exists() and _port_open(self.port)):
            return False
        import pymysql

        # A server still starting refuses the socket; PyMySQL then leaves that socket in a
        # reference cycle (its error keeps the frame), and whichever later test the garbage
        # collector ran in failed on its ResourceWarning. Collected here, quietly.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                self.fetch("SELECT 1", database="mysql")
            except (pymysql.MySQLError, OSError):
                gc.collect()
                return False
        return True

    def after_first_start(self) -> None:
        db, user, password = self.database, self.user, self.password
        self.execute(
            f"CREATE DATABASE `{db}`; "
            f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'; "
            f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'%'",
            database="mysql",
        )

    def _connect(self, database: str | None) -> Any:
        import pymysql  # installed with aiomysql

        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            database=database or self.database,
            autocommit=True,
            connect_timeout=5,
            client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
        )

    def fetch(self, sql: str, *args: Any, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run a query as root (PyMySQL, `%s` placeholders) and return its rows as tuples."""
        with self._connect(database) as conn, conn.cursor() as cursor:
            cursor.execute(sql, args or None)
            return list(cursor.fetchall())

    def execute(self, sql: str, *args: Any, database: str | None = None) -> int:
        """Run statements as root (several, separated by `;`); returns affected rows."""
        with self._connect(database) as conn, conn.cursor() as cursor:
            affected = int(cursor.execute(sql, args or None))
            while cursor.nextset():
                pass
            return affected


# --- Redis --------------------------------------------------------------------------------


class Redis(Server):
    """Redis with an append-only file (not fsynced), so data survives stop/start and kill.

    With `password` only, the default user needs it (`requirepass`). With `username` too,
    that ACL user is created with all rights and the default user is switched off."""

    kind = "redis"

    def __init__(
        self, workspace: Workspace, password: str | None = None, username: str | None = None
    ) -> None:
        super().__init__(workspace)
        if username and not password:
            raise ValueError("a Redis ACL user needs a password")
        self.username = username
        self.password = password

    @property
    def url(self) -> str:
        auth = ""
        if self.password:
            auth = f"{self.username or ''}:{self.password}@"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def setup(self) -> None:
        (self.dir / "data").mkdir()

    def command(self) -> list[str]:
        args = [
            "/usr/bin/redis-server",
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.dir / "data"),
            "--save", "",
            # The brief said `--appendonly no`; an AOF without fsync costs next to nothing
            # and lets outage tests count what reached Redis before the restart.
            "--appendonly", "yes",
            "--appendfsync", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.username and self.password:
            args += ["--user", "default", "off"]
            args += ["--user", self.username, "on", f">{self.password}", "~*", "&*", "+@all"]
        elif self.password:
            args += ["--requirepass", self.password]
        return args

    def ready(self) -> bool:
        # PING, not just a connect: Redis listens before it has loaded its data.
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))


# --- RabbitMQ -----------------------------------------------------------------------------


class RabbitMQ(Server):
    """RabbitMQ (Debian's 3.10) as a private Erlang node: its own node name, AMQP port,
    distribution port and epmd (on a port of its own, started here and stopped with it),
    its own data, log, config and plugins (none) in its folder. Vhost `edge` with user
    `edge`/`edge-test`, created by the broker on its first boot (`default_user`). A TLS
    listener too (`tls_url`, amqps://), with a test CA (`tls`): it asks for a client
    certificate and checks one that comes, but takes a client without one.

    The broker's script runs `erl` directly (RABBITMQ_ALLOW_INPUT with `-noinput`), so the
    process started is the Erlang VM: SIGTERM is RabbitMQ's clean shutdown, and the
    parent-death signal reaches the VM itself. It takes 10 to 35 s to start here."""

    kind = "rabbitmq"
    run_as = "rabbitmq"
    ready_timeout = 90.0
    user = "edge"
    password = "edge-test"
    vhost = "edge"

    def __init__(self, workspace: Workspace) -> None:
        super().__init__(workspace)
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"es-test-{os.getpid()}-{self.dir.name}@localhost"
        self._epmd: subprocess.Popen[bytes] | None = None
        self.tls_port = free_port()
        self.tls = make_pki(self.dir / "tls")

    @property
    def tls_url(self) -> str:
        return f"amqps://{self.user}:{self.password}@{self.host}:{self.tls_port}/{self.vhost}"

    @property
    def url(self) -> str:
        return self.url_for(self.user, self.password)

    def url_for(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@{self.host}:{self.port}/{self.vhost}"

    def setup(self) -> None:
        for folder in ("mnesia", "log"):
            (self.dir / folder).mkdir()
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.host}:{self.port}\n"
            f"listeners.ssl.1 = {self.host}:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.tls.ca_file}\n"
            f"ssl_options.certfile = {self.tls.server_cert_file}\n"
            f"ssl_options.keyfile = {self.tls.server_key_file}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
            f"default_vhost = {self.vhost}\n"
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "default_user_tags.administrator = true\n"
            "log.console = true\n"
            "log.console.level = warning\n"
            "log.file = false\n"
            # The tests' disks may be small; no alarm that blocks publishers at 50 MB free.
            "disk_free_limit.absolute = 1MB\n"
        )

    def environment(self) -> dict[str, str]:
        erl_args = [
            "-noinput",
            "-start_epmd", "false",
            "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
            "-kernel", "inet_dist_listen_min", str(self.dist_port),
            "-kernel", "inet_dist_listen_max", str(self.dist_port),
        ]  # fmt: skip
        return {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "RABBITMQ_ALLOW_INPUT": "1",
            # The prelaunch checks this port, 25672 by default, whatever -kernel says:
            # without it, a second broker on the machine refuses to start.
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": " ".join(erl_args),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
        }

    def command(self) -> list[str]:
        return ["/usr/lib/rabbitmq/bin/rabbitmq-server"]

    def start(self) -> None:
        if self._epmd is None or self._epmd.poll() is not None:
            self._epmd = super().spawn(
                [require("epmd"), "-port", str(self.epmd_port), "-address", self.host],
                self.dir / "epmd.log",
            )
            deadline = time.monotonic() + 10
            while not _port_open(self.epmd_port):
                if self._epmd.poll() is not None or time.monotonic() > deadline:
                    raise ServerError(f"epmd on port {self.epmd_port} did not start")
                time.sleep(0.02)
        super().start()

    def ready(self) -> bool:
        # The AMQP greeting answered with Connection.Start: a method frame (type 1).
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                sock.settimeout(5)
                reply = sock.recv(8)
        except OSError:
            return False
        return reply[:1] == b"\x01"

    def depth(self, queue: str) -> int:
        """How many messages are ready in `queue`; 0 if there is no such queue yet."""
        return _run_async(self._depth(queue))

    async def _depth(self, queue: str) -> int:
        import aio_pika
        from aiormq.exceptions import ChannelNotFoundEntity

        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0
        except ChannelNotFoundEntity:
            return 0
        finally:
            await connection.close()

    def declare(
        self, exchange: str, exchange_type: str, durable: bool, queue: str | None = None
    ) -> None:
        """Declare `exchange` (as an operator would), and `queue` bound to it by `#`."""
        _run_async(self._declare(exchange, exchange_type, durable, queue))

    async def _declare(
        self, exchange: str, exchange_type: str, durable: bool, queue: str | None
    ) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            declared = await channel.declare_exchange(exchange, exchange_type, durable=durable)
            if queue is not None:
                await (await channel.declare_queue(queue, durable=True)).bind(declared, "#")
        finally:
            await connection.close()

    def delete_exchange(self, exchange: str) -> None:
        """Delete `exchange` (its bindings go with it)."""
        _run_async(self._delete_exchange(exchange))

    async def _delete_exchange(self, exchange: str) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        try:
            await (await connection.channel()).exchange_delete(exchange)
        finally:
            await connection.close()

    def messages(self, queue: str) -> list[tuple[str | None, bytes]]:
        """(message_id, body) of every message ready in `queue`, oldest first, left in it
        (read without acknowledging; closing the connection puts them back)."""
        return _run_async(self._messages(queue))

    async def _messages(self, queue: str) -> list[tuple[str | None, bytes]]:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=0)
            declared = await channel.declare_queue(queue, passive=True)
            total = declared.declaration_result.message_count or 0
            found: list[tuple[str | None, bytes]] = []
            if total:
                async with declared.iterator() as messages:
                    async for message in messages:
                        found.append((message.message_id, message.body))
                        if len(found) >= total:
                            break
            return found
        finally:
            await connection.close()

    def close(self) -> None:
        super().close()
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.kill()
            epmd.wait()


class OpcuaServer(Server):
    """asyncua's OPC UA server, running tests/sources/opcua_server.py (see its docstring for
    the variables it serves); `options` are its command-line flags (`--cert`, `--user`...)."""

    kind = "opcua"

    def __init__(self, workspace: Workspace, options: list[str] | None = None) -> None:
        super().__init__(workspace)
        self.options = list(options or [])

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/"

    def command(self) -> list[str]:
        script = Path(__file__).parent / "sources" / "opcua_server.py"
        return [sys.executable, str(script), "--port", str(self.port), *self.options]

    def _readies(self) -> int:
        """How many times the script said `ready` in its log (kept across restarts)."""
        if not self.log_file.exists():
            return 0
        return self.log_file.read_text(errors="replace").splitlines().count("ready")

    def start(self) -> None:
        self._want = self._readies() + 1
        super().start()

    def ready(self) -> bool:
        return self._readies() >= self._want


# --- NATS ---------------------------------------------------------------------------------


class Nats(Server):
    """One `nats-server` with JetStream (file store in its folder), alone or as a node of a
    `NatsCluster`. `user=(name, password)`, `token`, `nkey` (a user's public NKey, `U...`)
    or `operator` (operator-mode config lines: JWT accounts, users log in with creds files)
    makes it refuse everyone else. `tls=True` serves TLS only, with a certificate from a
    throwaway PKI (`.tls`, as Mosquitto's) and requires a client certificate signed by it.
    `.monitor(path)` reads its HTTP monitoring endpoint (/jsz, /healthz ...) as JSON."""

    kind = "nats"

    def __init__(
        self,
        workspace: Workspace,
        name: str = "n1",
        user: tuple[str, str] | None = None,
        token: str | None = None,
        nkey: str | None = None,
        tls: bool = False,
        operator: list[str] | None = None,
    ) -> None:
        super().__init__(workspace)
        self.name = name
        self.user = user
        self.token = token
        self.nkey = nkey
        self.operator = operator  # config lines of operator mode (tests/nats_helpers.py)
        self.tls: TlsFiles | None = make_pki(self.dir / "tls") if tls else None
        self.http_port = free_port()
        self.cluster_port = free_port()
        self.routes: list[int] = []  # the other nodes' cluster ports
        self.config_file = self.dir / "nats.conf"

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    def setup(self) -> None:
        store = self.dir / "jetstream"
        store.mkdir()
        lines = [
            f"server_name: {self.name}",
            f"listen: {self.host}:{self.port}",
            f"http: {self.host}:{self.http_port}",
            # Small limits: a test that fills the disk must not fill the machine's.
            f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 2GB }}',
        ]
        if self.routes:
            routes = ", ".join(f"nats-route://{self.host}:{p}" for p in self.routes)
            lines.append(
                f"cluster {{ name: edge, listen: {self.host}:{self.cluster_port},"
                f" routes: [{routes}] }}"
            )
        if self.user:
            lines.append(f'authorization {{ user: "{self.user[0]}", password: "{self.user[1]}" }}')
        elif self.token:
            lines.append(f'authorization {{ token: "{self.token}" }}')
        elif self.nkey:
            lines.append(f'authorization {{ users: [{{ nkey: "{self.nkey}" }}] }}')
        elif self.operator:
            lines += self.operator
        if self.tls:
            lines.append(
                f'tls {{ cert_file: "{self.tls.server_cert_file}",'
                f' key_file: "{self.tls.server_key_file}", ca_file: "{self.tls.ca_file}",'
                " verify: true, timeout: 5 }"
            )
        self.config_file.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return ["/usr/sbin/nats-server", "-c", str(self.config_file)]

    def monitor(self, path: str) -> Any:
        """GET http://127.0.0.1:<http port><path> as JSON."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://{self.host}:{self.http_port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def ready(self) -> bool:
        if not _port_open(self.port):
            return False
        if self.routes:
            return True  # a node alone cannot be healthy: NatsCluster waits for them all
        try:
            return bool(self.monitor("/healthz").get("status") == "ok")
        except (OSError, ValueError):
            return False


class NatsCluster:
    """Three (or `size`) JetStream nodes routed to each other on loopback ports.

    `.urls` lists every node's client URL; `.leader(stream)` names the node that leads a
    stream (from /jsz); `.node(name)` finds a node to `kill()` and `start()` again."""

    def __init__(self, workspace: Workspace, size: int = 3) -> None:
        self.nodes = [Nats(workspace, name=f"n{i + 1}") for i in range(size)]
        for node in self.nodes:
            node.routes = [n.cluster_port for n in self.nodes if n is not node]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> Nats:
        return next(n for n in self.nodes if n.name == name)

    def start(self) -> None:
        for node in self.nodes:
            if not node.running:
                node.start()
        # After a full stop every stream elects its leader again: slower on a busy machine.
        self.wait_healthy(timeout=2 * READY_TIMEOUT)

    def stop(self) -> None:
        """Stop every node cleanly (data kept): the whole cluster is down."""
        for node in self.nodes:
            node.stop()

    def wait_healthy(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every running node says JetStream is current and a meta leader is known."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                running = [n for n in self.nodes if n.running]
                if all(n.monitor("/healthz").get("status") == "ok" for n in running) and all(
                    n.monitor("/jsz").get("meta_cluster", {}).get("leader") for n in running
                ):
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                tails = "\n".join(f"{n.name}: {_tail(n.log_file, 10)}" for n in self.nodes)
                raise ServerError(
                    f"the NATS cluster is not healthy after {timeout:.0f} s:\n{tails}"
                )
            time.sleep(0.1)

    def leader(self, stream: str, account: str = "$G") -> str | None:
        """The name of the node leading `stream` now, or None (no leader elected)."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                jsz = node.monitor(f"/jsz?acc={account}&streams=true")
            except (OSError, ValueError):
                continue
            for detail in jsz.get("account_details") or []:
                for info in detail.get("stream_detail") or []:
                    if info.get("name") == stream:
                        leader = (info.get("cluster") or {}).get("leader")
                        if leader:
                            return str(leader)
        return None

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class HttpReceiver(Server):
    """A webhook receiver (tests/http_receiver.py, aiohttp) that stores what it receives in
    its folder, so the requests it took survive stop and start; `control()` makes it answer
    with another status (500, 400, 429 ...) and `received()` reads back what it stored."""

    kind = "http"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        script = Path(__file__).with_name("http_receiver.py")
        return [sys.executable, str(script), str(self.port), str(self.dir)]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw = answer.read()
            return json.loads(raw) if raw else None

    def control(self, status: int = 200, times: int | None = None, **more: Any) -> None:
        """Answer the next `times` requests (None: all) with `status`; `body` and
        `headers` may be given too."""
        self._call("POST", "/_control", {"status": status, "times": times, **more})

    def received(self) -> list[dict[str, Any]]:
        """The requests answered 2xx so far: method, path, raw_path, query, headers, body."""
        return self._call("GET", "/_received")  # type: ignore[no-any-return]

    def requests(self) -> list[dict[str, Any]]:
        """Every request but /refuse ones, whatever its answer: at (time.monotonic() on
        arrival), status, path, key (Idempotency-Key)."""
        return self._call("GET", "/_requests")  # type: ignore[no-any-return]


S = TypeVar("S", bound=Server)


# --- Workspace ----------------------------------------------------------------------------


class Workspace:
    """The temp folder of one test session and the servers started in it."""

    def __init__(self) -> None:
        reap_stale_workspaces()
        self.root = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX))
        # The service users must reach their own folders inside.
        self.root.chmod(0o755)
        (self.root / "owner").write_text(f"{os.getpid()} {_process_start_time(os.getpid())}")
        self.servers: list[Server] = []
        self._counts: dict[str, int] = {}
        atexit.register(self.close)

    def new_dir(self, kind: str) -> Path:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        path = self.root / f"{kind}-{self._counts[kind]}"
        path.mkdir()
        return path

    def _started(self, server: S) -> S:
        self.servers.append(server)
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    def mosquitto(
        self,
        tls: bool = False,
        user: tuple[str, str] | None = None,
        acl: str | None = None,
        options: str | None = None,
    ) -> Mosquitto:
        return self._started(Mosquitto(self, tls=tls, user=user, acl=acl, options=options))

    def postgres(self, tls: bool = False) -> Postgres:
        return self._started(Postgres(self, tls=tls))

    def mariadb(self) -> MariaDB:
        return self._started(MariaDB(self))

    def redis(self, password: str | None = None, username: str | None = None) -> Redis:
        return self._started(Redis(self, password=password, username=username))

    def rabbitmq(self) -> RabbitMQ:
        return self._started(RabbitMQ(self))

    def opcua(self, options: list[str] | None = None) -> OpcuaServer:
        return self._started(OpcuaServer(self, options))

    def nats(self, **options: Any) -> Nats:
        """A single JetStream server; `options` as `Nats` takes them (user, token, nkey, tls)."""
        return self._started(Nats(self, **options))

    def nats_cluster(self, size: int = 3) -> NatsCluster:
        cluster = NatsCluster(self, size)
        self.servers.extend(cluster.nodes)
        try:
            cluster.start()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def http_receiver(self) -> HttpReceiver:
        return self._started(HttpReceiver(self))

    def discard(self, server: Server) -> None:
        """Close one server and delete its folder (function-scoped servers)."""
        server.close()
        if server in self.servers:
            self.servers.remove(server)
        shutil.rmtree(server.dir, ignore_errors=True)

    def close(self) -> None:
        """Stop every server and delete the folder. Safe to call twice."""
        for server in reversed(self.servers):
            server.close()
        self.servers.clear()
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.close)


# How a raw listener answers a connection it took (nothing at all: None).
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_listener(
    answer: Answer | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """A listener on a free loopback port whose connections `answer` handles as it likes
    (never answering, a body without end, a TLS handshake asking for a client
    certificate); yields its port, and closes it and every connection it took after."""
    taken: list[asyncio.StreamWriter] = []

    async def take(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)
        if answer is not None:
            await answer(reader, writer)

    server = await asyncio.start_server(take, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in taken:
            writer.close()
        await server.wait_closed()

"""Shared fixtures: real servers on free loopback ports (see tests/servers.py).

Session-scoped, started on first use and shared by every test:
    mosquitto, mosquitto_tls, postgres, mariadb, redis, rabbitmq, nats_cluster
Function-scoped factories, for a private server (outage tests, auth tests); each call starts
one, and it is stopped and deleted when the test ends:
    mosquitto_factory(tls=False, user=None, acl=None, options=None), postgres_factory(tls=False),
    mariadb_factory(), redis_factory(password=None, username=None),
    nats_factory(user=None, token=None, nkey=None, tls=False, operator=None)
Function-scoped: http_receiver (a webhook receiver of the test's own).

A test may stop or kill a shared server; it is started again (same port, same data) after
that test, so the next test finds it up. Shared databases keep their data for the whole
session: use table names of your own.

A missing server binary fails the test (with "run `make deps`"); nothing is skipped.
"""

from __future__ import annotations

import compileall
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests import servers
from tests.e2e.harness import GatewayProcess

S = TypeVar("S", bound=servers.Server)

# Session servers that the test after a stop/kill should find running again.
_shared: list[servers.Server] = []
_clusters: list[servers.NatsCluster] = []


def _start(start: Callable[..., S], **options: Any) -> S:
    """Start a server, turning setup problems into a plain test failure (never a skip)."""
    try:
        return start(**options)
    except servers.ServerError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def server_workspace() -> Iterator[servers.Workspace]:
    """The temp folder holding this session's servers; removes them all at the end."""
    workspace = servers.Workspace()
    yield workspace
    workspace.close()


def _shared_server(start: Callable[..., S], **options: Any) -> Iterator[S]:
    server = _start(start, **options)
    _shared.append(server)
    yield server
    _shared.remove(server)
    server.close()


@pytest.fixture(scope="session")
def mosquitto(server_workspace: servers.Workspace) -> Iterator[servers.Mosquitto]:
    """Mosquitto, plain MQTT: `.url` = mqtt://127.0.0.1:PORT, persistence on."""
    yield from _shared_server(server_workspace.mosquitto)


@pytest.fixture(scope="session")
def mosquitto_tls(server_workspace: servers.Workspace) -> Iterator[servers.Mosquitto]:
    """Mosquitto on mqtts:// requiring a client certificate: `.ca_file`, `.cert_file`,
    `.key_file` are the client's side of a PKI made for the session."""
    yield from _shared_server(server_workspace.mosquitto, tls=True)


@pytest.fixture(scope="session")
def postgres(server_workspace: servers.Workspace) -> Iterator[servers.Postgres]:
    """PostgreSQL 15: `.dsn` = postgresql://postgres@127.0.0.1:PORT/edge, `.fetch(sql)`."""
    yield from _shared_server(server_workspace.postgres)


@pytest.fixture(scope="session")
def mariadb(server_workspace: servers.Workspace) -> Iterator[servers.MariaDB]:
    """MariaDB: `.dsn` = mysql://edge:edge-test@127.0.0.1:PORT/edge, `.fetch(sql)`."""
    yield from _shared_server(server_workspace.mariadb)


@pytest.fixture(scope="session")
def redis(server_workspace: servers.Workspace) -> Iterator[servers.Redis]:
    """Redis without auth: `.url` = redis://127.0.0.1:PORT/0."""
    yield from _shared_server(server_workspace.redis)


@pytest.fixture(scope="session")
def rabbitmq(server_workspace: servers.Workspace) -> Iterator[servers.RabbitMQ]:
    """RabbitMQ: `.url` = amqp://edge:edge-test@127.0.0.1:PORT/edge, `.messages(queue)`."""
    yield from _shared_server(server_workspace.rabbitmq)


@pytest.fixture(scope="session")
def nats_cluster(server_workspace: servers.Workspace) -> Iterator[servers.NatsCluster]:
    """Three JetStream nodes in one cluster: `.urls`, `.leader(stream)`, `.node(name)`; a
    node a test stopped or killed is started again after it."""
    try:
        cluster = server_workspace.nats_cluster()
    except servers.ServerError as err:
        pytest.fail(str(err), pytrace=False)
    _shared.extend(cluster.nodes)
    _clusters.append(cluster)
    yield cluster
    _clusters.remove(cluster)
    for node in cluster.nodes:
        _shared.remove(node)
    cluster.close()


@pytest.fixture(autouse=True)
def _restart_stopped_shared_servers() -> Iterator[None]:
    yield
    restarted = []
    for server in _shared:
        if not server.running:
            try:
                server.start()
            except servers.ServerError as err:
                pytest.fail(f"restarting the shared {server.kind} failed: {err}", pytrace=False)
            restarted.append(server)
    # A cluster node started again: the next test waits until the cluster has its meta
    # leader and the node has caught up (a stream made meanwhile timed out on a busy machine).
    for cluster in _clusters:
        if any(node in restarted for node in cluster.nodes):
            try:
                cluster.wait_healthy()
            except servers.ServerError as err:
                pytest.fail(str(err), pytrace=False)


def _factory(workspace: servers.Workspace, start: Callable[..., S]) -> Iterator[Callable[..., S]]:
    started: list[S] = []

    def make(**options: Any) -> S:
        server = _start(start, **options)
        started.append(server)
        return server

    yield make
    for server in started:
        workspace.discard(server)


@pytest.fixture
def mosquitto_factory(
    server_workspace: servers.Workspace,
) -> Iterator[Callable[..., servers.Mosquitto]]:
    """`mosquitto_factory(tls=False, user=None, acl=None, options=None)` starts a private
    Mosquitto for this test; `user=(name, password)` makes it refuse everyone else, `acl`
    is the text of its acl_file, `options` more lines of its mosquitto.conf."""
    yield from _factory(server_workspace, server_workspace.mosquitto)


@pytest.fixture
def postgres_factory(
    server_workspace: servers.Workspace,
) -> Iterator[Callable[..., servers.Postgres]]:
    """`postgres_factory(tls=False)` starts a private PostgreSQL for this test; `tls=True`
    turns ssl on with a certificate from a throwaway PKI (`.tls.ca_file` trusts it)."""
    yield from _factory(server_workspace, server_workspace.postgres)


@pytest.fixture
def mariadb_factory(
    server_workspace: servers.Workspace,
) -> Iterator[Callable[..., servers.MariaDB]]:
    """`mariadb_factory()` starts a private MariaDB for this test."""
    yield from _factory(server_workspace, server_workspace.mariadb)


@pytest.fixture
def redis_factory(server_workspace: servers.Workspace) -> Iterator[Callable[..., servers.Redis]]:
    """`redis_factory(password=None, username=None)` starts a private Redis for this test:
    a password alone sets `requirepass`; with a username, that ACL user is the only one."""
    yield from _factory(server_workspace, server_workspace.redis)


@pytest.fixture
def nats_factory(server_workspace: servers.Workspace) -> Iterator[Callable[..., servers.Nats]]:
    """`nats_factory(user=None, token=None, nkey=None, tls=False, operator=None)` starts a
    private single JetStream server for this test; `user=(name, password)`, `token`, `nkey`
    (a user's public NKey) or `operator` (tests/nats_helpers.py's `Operator.server_config()`)
    makes it refuse everyone else; `tls` serves TLS with `.tls` (TlsFiles)."""
    yield from _factory(server_workspace, server_workspace.nats)


@pytest.fixture
def http_receiver(server_workspace: servers.Workspace) -> Iterator[servers.HttpReceiver]:
    """A webhook receiver of this test's own (tests/http_receiver.py): `.url`,
    `.control(status, times)`, `.received()`."""
    server = _start(server_workspace.http_receiver)
    yield server
    server_workspace.discard(server)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Any]]:
    """`gateway_factory(config)`: a `GatewayProcess` (tests/e2e/harness.py) on that config in
    this test's folder; still running at the end of the test, it is killed."""
    made: list[GatewayProcess] = []

    def make(config: dict[str, Any]) -> GatewayProcess:
        gw = GatewayProcess(tmp_path, config)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


LAYERS = ("unit", "integration", "e2e")
# Fixtures that start a server or the gateway process: a unit test may use none of them.
_SERVER_FIXTURES = {
    "server_workspace",
    "mosquitto",
    "mosquitto_tls",
    "postgres",
    "mariadb",
    "redis",
    "rabbitmq",
    "mosquitto_factory",
    "postgres_factory",
    "mariadb_factory",
    "redis_factory",
    "nats_cluster",
    "nats_factory",
    "http_receiver",
    "gateway_factory",
}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the checkout's gateway/ once: the edge-stream processes the tests start
    import it, and with PYTHONDONTWRITEBYTECODE set (as on the CI machine) none writes
    its bytecode, so each start compiled every module anew (about 0.4 s a start, in
    hundreds of starts). What is compiled here is only read; a module changed since is
    compiled again as usual."""
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "gateway", quiet=1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test belongs to exactly one layer (a `pytestmark` line in its file), and a
    unit test starts no server, so that `make test-fast` stays fast and needs nothing."""
    problems = []
    for item in items:
        layers = sorted({m.name for m in item.iter_markers() if m.name in LAYERS})
        if len(layers) != 1:
            found = ", ".join(layers) or "none"
            problems.append(f"{item.nodeid}: needs one of {', '.join(LAYERS)} (has {found})")
        elif layers == ["unit"] and (servers_used := _SERVER_FIXTURES & set(item.fixturenames)):
            problems.append(f"{item.nodeid}: a unit test uses {', '.join(sorted(servers_used))}")
    if problems:
        raise pytest.UsageError("test layers (pytest markers):\n" + "\n".join(problems))

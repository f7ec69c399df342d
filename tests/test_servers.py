"""Smoke tests for the server fixtures: each one serves, and keeps its data over a restart."""

from __future__ import annotations

import os
import queue
import socket
import ssl

import paho.mqtt.client as mqtt
import pymysql
import pytest
import redis as redis_lib

from tests import servers

pytestmark = pytest.mark.integration

# --- MQTT ---------------------------------------------------------------------------------


def _mqtt_client(broker: servers.Mosquitto, client_id: str, **callbacks: object) -> mqtt.Client:
    """A connected paho client with a persistent session (one client per connection:
    paho leaks a socket pair when one client runs loop_start twice)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    for name, callback in callbacks.items():
        setattr(client, name, callback)
    connected: queue.Queue[mqtt.ReasonCode] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.put(reason)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert not connected.get(timeout=10).is_failure
    return client


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_mosquitto_keeps_queued_messages_over_a_restart(mosquitto: servers.Mosquitto) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    received: queue.Queue[bytes] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()

    # A persistent session subscribes, then goes away: the broker queues for it.
    subscriber = _mqtt_client(
        mosquitto, "smoke-subscriber", on_subscribe=lambda *_args: subscribed.put(True)
    )
    subscriber.subscribe("smoke/#", qos=1)
    subscribed.get(timeout=10)
    _close(subscriber)

    publisher = _mqtt_client(mosquitto, "smoke-publisher")
    for n in range(5):
        publisher.publish("smoke/n", str(n), qos=1).wait_for_publish(timeout=10)
    _close(publisher)

    port = mosquitto.port
    mosquitto.stop()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.port == port

    subscriber = _mqtt_client(
        mosquitto,
        "smoke-subscriber",
        on_message=lambda _c, _u, message: received.put(message.payload),
    )
    payloads = [received.get(timeout=10) for _ in range(5)]
    _close(subscriber)
    assert payloads == [b"0", b"1", b"2", b"3", b"4"]


# MQTT 3.1.1 CONNECT, clean session, keepalive 60 s, client id "tls-smoke".
_CONNECT = b"\x10\x15\x00\x04MQTT\x04\x02\x00\x3c\x00\x09tls-smoke"
_CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def _mqtts_connect(broker: servers.Mosquitto, context: ssl.SSLContext) -> bytes:
    """The broker's reply to CONNECT over TLS; b"" when it dropped the connection."""
    try:
        with (
            socket.create_connection((broker.host, broker.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=broker.host) as tls,
        ):
            tls.sendall(_CONNECT)
            return tls.recv(4)
    except (ssl.SSLError, ConnectionResetError):
        return b""


def test_mosquitto_tls_requires_a_client_certificate(mosquitto_tls: servers.Mosquitto) -> None:
    assert mosquitto_tls.url == f"mqtts://127.0.0.1:{mosquitto_tls.port}"
    # Default context: the server certificate must verify against ca_file for 127.0.0.1.
    context = ssl.create_default_context(cafile=mosquitto_tls.ca_file)
    assert _mqtts_connect(mosquitto_tls, context) == b""

    assert mosquitto_tls.cert_file and mosquitto_tls.key_file
    context.load_cert_chain(mosquitto_tls.cert_file, mosquitto_tls.key_file)
    assert _mqtts_connect(mosquitto_tls, context) == _CONNACK_ACCEPTED


# --- SQL ----------------------------------------------------------------------------------


def test_postgres_keeps_rows_over_a_restart_and_a_kill(postgres: servers.Postgres) -> None:
    assert postgres.dsn == f"postgresql://postgres@127.0.0.1:{postgres.port}/edge"
    postgres.execute("CREATE TABLE smoke_pg (n int); INSERT INTO smoke_pg VALUES (1)")
    port = postgres.port

    postgres.stop()
    postgres.start()
    postgres.execute("INSERT INTO smoke_pg VALUES ($1)", 2)
    postgres.kill()
    postgres.start()

    assert postgres.port == port
    assert postgres.fetch("SELECT n FROM smoke_pg ORDER BY n") == [(1,), (2,)]
    postgres.execute("DROP TABLE smoke_pg")


async def test_postgres_fetch_works_inside_an_event_loop(postgres: servers.Postgres) -> None:
    assert postgres.fetch("SELECT current_database(), 1 + 1") == [("edge", 2)]


def test_mariadb_keeps_rows_over_a_restart_and_a_kill(mariadb: servers.MariaDB) -> None:
    assert mariadb.dsn == f"mysql://edge:edge-test@127.0.0.1:{mariadb.port}/edge"
    # Over TCP as the `edge` user, as the gateway connects.
    with (
        pymysql.connect(
            host=mariadb.host,
            port=mariadb.port,
            user="edge",
            password="edge-test",
            database="edge",
            autocommit=True,
        ) as conn,
        conn.cursor() as cursor,
    ):
        cursor.execute("CREATE TABLE smoke_maria (n INT)")
        cursor.execute("INSERT INTO smoke_maria VALUES (1)")
    port = mariadb.port

    mariadb.stop()
    mariadb.start()
    mariadb.execute("INSERT INTO smoke_maria VALUES (%s)", 2)
    mariadb.kill()
    mariadb.start()

    assert mariadb.port == port
    assert mariadb.fetch("SELECT n FROM smoke_maria ORDER BY n") == [(1,), (2,)]
    mariadb.execute("DROP TABLE smoke_maria")


# --- Redis --------------------------------------------------------------------------------


def test_redis_keeps_keys_over_a_restart_and_a_kill(redis: servers.Redis) -> None:
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    with redis_lib.Redis.from_url(redis.url) as client:
        client.set("smoke:a", "1")
    redis.stop()
    redis.start()
    with redis_lib.Redis.from_url(redis.url) as client:
        client.set("smoke:b", "2")
    redis.kill()
    redis.start()
    with redis_lib.Redis.from_url(redis.url) as client:
        assert client.mget("smoke:a", "smoke:b") == [b"1", b"2"]
        client.delete("smoke:a", "smoke:b")


@pytest.mark.parametrize("username", [None, "edge"])
def test_redis_factory_requires_the_password(redis_factory, username: str | None) -> None:
    server = redis_factory(password="s3cret", username=username)
    anonymous = f"redis://{server.host}:{server.port}/0"
    with (
        redis_lib.Redis.from_url(anonymous) as client,
        pytest.raises(redis_lib.AuthenticationError),
    ):
        client.ping()
    with redis_lib.Redis.from_url(server.url) as client:
        assert client.ping()
        assert client.acl_whoami() == (username or "default")


# --- failures -----------------------------------------------------------------------------


def test_a_missing_binary_says_to_run_make_deps() -> None:
    with pytest.raises(servers.MissingServerError, match="make deps"):
        servers.require("edge-stream-no-such-server")


def test_a_server_that_cannot_start_reports_its_log(
    server_workspace: servers.Workspace,
) -> None:
    server = servers.Redis(server_workspace)
    with socket.socket() as squatter:
        squatter.bind((server.host, server.port))
        squatter.listen()
        with pytest.raises(servers.ServerError, match=r"(?s)exited with code 1.*in use"):
            server.start()
    server_workspace.discard(server)


def test_workspace_close_leaves_no_process() -> None:
    workspace = servers.Workspace()
    server = workspace.redis()
    pid = server.pid
    assert pid is not None
    workspace.close()
    assert not workspace.root.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

"""What a sink writes to, seen from the test: start/stop it, and read back what arrived.

Each upstream gives the sink config that points the gateway at it and reads back the
sequence numbers of the messages (JSON {"seq": n}, see harness.Publisher) that reached
it, duplicates included, so a test can tell "exactly once" from "at least once":

    postgres  rows of a table (postgres sink, default layout)
    mysql     rows of a table (mysql sink on MariaDB)
    redis     entries of one stream (redis sink, stream mode)
    mqtt      messages a subscriber got from a second broker (mqtt sink)
    amqp      messages in a RabbitMQ queue bound to the sink's exchange (amqp sink)
    file      lines of a JSON Lines file and its rotated siblings (file sink)
    nats      messages of one JetStream stream on a 3-node cluster (nats sink)

`stop()` makes the upstream unavailable as an outage would (the server shut down; for
the file sink, its folder gone, as when a USB stick is pulled) and `start()` brings it
back with what it held.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as paho
import pymysql
import redis as redis_client

from tests.e2e.harness import wait_for


class Upstream:
    """The far side of one sink."""

    kind: str
    # True: SQL and Redis sinks promise effectively once; False: file and MQTT at least once.
    exact: bool

    def sink(self) -> dict[str, Any]:
        """The sink's config keys (type, address, table/key/topic)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def seqs(self) -> list[int]:
        """Every sequence number that arrived, once per arrival."""
        raise NotImplementedError

    def count(self) -> int:
        """How many rows/entries/messages arrived (cheaper than `seqs`; for polling)."""
        return len(self.seqs())

    def close(self) -> None:
        """Release what the test side holds (connections, subscribers)."""


class ServerUpstream(Upstream):
    """An upstream that is one server the fixtures started: stopping it stops the server."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


class PostgresUpstream(ServerUpstream):
    kind = "postgres"
    exact = True

    def __init__(self, server: Any, table: str) -> None:
        super().__init__(server)
        self.table = table

    def sink(self) -> dict[str, Any]:
        return {"type": "postgres", "dsn": self.server.dsn, "table": self.table}

    def _fetch(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            return list(self.server.fetch(sql))
        except asyncpg.UndefinedTableError:  # created with the sink's first connection
            return []

    def seqs(self) -> list[int]:
        return [int(r[0]) for r in self._fetch(f"SELECT payload->>'seq' FROM {self.table}")]

    def count(self) -> int:
        rows = self._fetch(f"SELECT count(*) FROM {self.table}")
        return int(rows[0][0]) if rows else 0


class MysqlUpstream(ServerUpstream):
    kind = "mysql"
    exact = True

    def __init__(self, server: Any, table: str) -> None:
        super().__init__(server)
        self.table = table

    def sink(self) -> dict[str, Any]:
        return {"type": "mysql", "dsn": self.server.dsn, "table": self.table}

    def _fetch(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            return list(self.server.fetch(sql))
        except pymysql.err.ProgrammingError as err:
            if err.args[0] == 1146:  # no such table (yet)
                return []
            raise

    def seqs(self) -> list[int]:
        sql = f"SELECT JSON_VALUE(payload, '$.seq') FROM `{self.table}`"
        return [int(r[0]) for r in self._fetch(sql)]

    def count(self) -> int:
        rows = self._fetch(f"SELECT count(*) FROM `{self.table}`")
        return int(rows[0][0]) if rows else 0


class HttpUpstream(ServerUpstream):
    """A webhook receiver (tests/http_receiver.py) that the http sink POSTs batches to."""

    kind = "http"
    exact = False  # at least once: a request whose answer was lost is sent again

    def sink(self) -> dict[str, Any]:
        return {"type": "http", "url": f"{self.server.url}/in/{{topic.0}}"}

    def seqs(self) -> list[int]:
        return [
            int(element["payload"]["seq"])
            for request in self.server.received()
            for element in json.loads(request["body"])
        ]


class RedisUpstream(ServerUpstream):
    """One Redis stream that keeps every entry (maxlen 0)."""

    kind = "redis"
    exact = True

    def __init__(self, server: Any, key: str) -> None:
        super().__init__(server)
        self.key = key

    def sink(self) -> dict[str, Any]:
        return {
            "type": "redis",
            "url": self.server.url,
            "mode": "stream",
            "key": self.key,
            "maxlen": 0,
        }

    def _client(self) -> redis_client.Redis:
        return redis_client.Redis(host=self.server.host, port=self.server.port, socket_timeout=10)

    def seqs(self) -> list[int]:
        out: list[int] = []
        with self._client() as r:
            start = "-"
            while True:
                entries = r.xrange(self.key, start, "+", count=5000)
                if start != "-":
                    entries = entries[1:]  # the first is the last of the previous page
                if not entries:
                    return out
                for _entry_id, fields in entries:
                    out.append(int(json.loads(fields[b"payload"])["seq"]))
                start = entries[-1][0].decode()

    def count(self) -> int:
        with self._client() as r:
            return int(r.xlen(self.key))


class MqttRoot(ServerUpstream):
    """A second broker; the sink publishes under `root`. Subclasses count what arrives."""

    kind = "mqtt"
    exact = False

    def __init__(self, broker: Any, root: str) -> None:
        super().__init__(broker)
        self.root = root

    def sink(self) -> dict[str, Any]:
        return {
            "type": "mqtt",
            "url": self.server.url,
            "topic": f"{self.root}/{{topic}}",
            "client_id": f"gw-{self.root}",
        }


class MqttUpstream(MqttRoot):
    """A subscriber with a persistent session counts what arrives.

    It reconnects by itself after the broker restarts; the broker keeps what arrives
    meanwhile for its session, so nothing published is missed.
    """

    def __init__(self, broker: Any, root: str) -> None:
        super().__init__(broker, root)
        self.received: list[int] = []
        self._subscribed = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"sub-{root}-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_for(self._subscribed.is_set, 10, f"the subscription to {root}/# on {broker.url}")

    def _on_connect(self, client: paho.Client, *_args: Any) -> None:
        client.subscribe(f"{self.root}/#", qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self.received.append(int(json.loads(msg.payload)["seq"]))

    def seqs(self) -> list[int]:
        return list(self.received)

    def count(self) -> int:
        return len(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class FileUpstream(Upstream):
    """A JSON Lines file in a folder reached through a symlink, rotated every 32 KiB.

    `stop()` points the symlink nowhere: the sink's next rotation or reopen fails, as
    when the USB stick it writes to is pulled (a batch appended to the file it still
    has open lands in the real folder all the same). `start()` points it back.
    """

    kind = "file"
    exact = False

    def __init__(self, folder: Path, name: str) -> None:
        self.real = folder / f"{name}-real"
        self.real.mkdir(parents=True)
        self.link = folder / name
        self.gone = folder / f"{name}-unplugged"
        self._point(self.real)

    def _point(self, target: Path) -> None:
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, self.link)  # atomic: the sink never sees the link missing

    def sink(self) -> dict[str, Any]:
        return {
            "type": "file",
            "path": str(self.link / "out.jsonl"),
            "rotate_bytes": "32KiB",
            "keep": 1000,
        }

    def stop(self) -> None:
        self._point(self.gone)

    def start(self) -> None:
        self._point(self.real)

    def _contents(self) -> list[bytes]:
        """Every file's bytes, up to its last complete line (the sink may be writing)."""
        for _ in range(100):
            try:
                out = []
                for path in self.real.glob("out.jsonl*"):
                    data = path.read_bytes()
                    out.append(data[: data.rfind(b"\n") + 1])
                return out
            except FileNotFoundError:  # rotated under our feet: read again
                continue
        raise AssertionError(f"{self.real} keeps changing while read")

    def seqs(self) -> list[int]:
        return [
            int(json.loads(line)["payload"]["seq"])
            for data in self._contents()
            for line in data.splitlines()
        ]

    def count(self) -> int:
        return sum(data.count(b"\n") for data in self._contents())


class FileOutput:
    """A plain file sink that no test stops: the unaffected other sink of an outage test."""

    kind = "file"
    exact = False

    def __init__(self, data_dir: Path, name: str) -> None:
        self.path = data_dir / f"{name}.jsonl"

    def sink(self) -> dict[str, Any]:
        return {"type": "file", "path": str(self.path)}

    def seqs(self) -> list[int]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data[: data.rfind(b"\n") + 1].splitlines()
        return [int(json.loads(line)["payload"]["seq"]) for line in lines]

    def count(self) -> int:
        return self.path.read_bytes().count(b"\n") if self.path.exists() else 0


class AmqpUpstream(ServerUpstream):
    """A RabbitMQ exchange of its own and a durable queue bound to it by `#` (the sink
    declares both); the queue is read without consuming it."""

    kind = "amqp"
    exact = False

    def __init__(self, server: Any, name: str) -> None:
        super().__init__(server)
        self.name = name

    def sink(self) -> dict[str, Any]:
        return {"type": "amqp", "url": self.server.url, "exchange": self.name, "queue": self.name}

    def seqs(self) -> list[int]:
        if not self.server.depth(self.name):
            return []
        return [int(json.loads(body)["seq"]) for _, body in self.server.messages(self.name)]

    def count(self) -> int:
        return int(self.server.depth(self.name))


class NatsUpstream(Upstream):
    """One JetStream stream (3 replicas) on the session's 3-node cluster; `stop()` stops
    the whole cluster. Counts by message: the stream's duplicate window must drop a
    FlowFile published again, so a repeated seq is a duplicate the sink let through."""

    kind = "nats"
    exact = True

    def __init__(self, cluster: Any, name: str) -> None:
        self.cluster = cluster
        self.stream = name.upper()
        self.subject = f"{name}.{{topic}}"
        self.prefix = name

    def sink(self) -> dict[str, Any]:
        return {
            "type": "nats",
            "servers": self.cluster.urls,
            "subject": self.subject,
            "create_stream": {"name": self.stream, "replicas": 3, "duplicate_window": "10m"},
        }

    def stop(self) -> None:
        self.cluster.stop()

    def start(self) -> None:
        self.cluster.start()

    def _messages(self) -> list[Any]:
        import asyncio

        from tests.nats_helpers import stream_messages

        return asyncio.run(stream_messages(self.cluster.urls, self.stream))

    def seqs(self) -> list[int]:
        return [int(json.loads(m.data)["seq"]) for m in self._messages()]

    def count(self) -> int:
        import asyncio

        import nats

        from tests.nats_helpers import JS_TIMEOUT

        async def messages() -> int:
            nc = await nats.connect(servers=self.cluster.urls, allow_reconnect=False)
            try:
                info = await nc.jetstream(timeout=JS_TIMEOUT).stream_info(self.stream)
                return int(info.state.messages)
            except nats.js.errors.NotFoundError:
                return 0
            finally:
                await nc.close()

        try:
            return asyncio.run(messages())
        except (OSError, TimeoutError, nats.errors.Error):  # down or electing: none to count
            return 0

"""The OPC UA source against a real asyncua server (tests/sources/opcua_server.py, a process).

The test changes the server's variables through a second client (the server's own
write path) and checks what came out of the source's `read()`, what /api/status says
through a real engine, and, for write-back, what the server holds afterwards. The
source joins the source contract as a live-value source (tests/sources/contract.py).
One plain server and one secure server are shared by the module (each takes ~2 s to start).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from asyncua import Client, ua

from gateway.config.schema import Problems, build_dataclass
from gateway.core.component import Context, Message
from gateway.core.errors import PermanentError
from gateway.sources.opcua import OpcuaSource, OpcuaSourceConfig
from tests import servers
from tests.sources.contract import SourceContract
from tests.sources.engine_run import lines, stop, until
from tests.sources.opcua_server import VARIABLES, make_certificate

pytestmark = pytest.mark.integration

SCALARS = [n for n in VARIABLES if not n.endswith("Array") and n != "Counter"]

# what each type's initial value looks like in the FlowFile's JSON
INITIAL_JSON = {
    "Bool": False,
    "SByte": -7,
    "Byte": 200,
    "Int16": -5,
    "UInt16": 5,
    "Int32": -70000,
    "UInt32": 70000,
    "Int64": -(2**40),
    "UInt64": 2**40,
    "Float": 1.5,
    "Double": 2.25,
    "String": "hello",
    "DateTime": "2024-05-01T12:00:00.000Z",
    "ByteString": base64.b64encode(b"\x00\x01\xff").decode(),
    "DoubleArray": [1.0, 2.5, -3.0],
    "Int32Array": [1, 2, 3],
}
# a changed value per type, as written by the test's client, and as JSON
CHANGED: dict[str, tuple[Any, Any]] = {
    "Bool": (True, True),
    "SByte": (-128, -128),
    "Byte": (255, 255),
    "Int16": (-32768, -32768),
    "UInt16": (65535, 65535),
    "Int32": (2**31 - 1, 2**31 - 1),
    "UInt32": (2**32 - 1, 2**32 - 1),
    "Int64": (2**63 - 1, 2**63 - 1),
    "UInt64": (2**64 - 1, 2**64 - 1),
    "Float": (0.1, 0.1),
    "Double": (-1e300, -1e300),
    "String": ("grüße ✓", "grüße ✓"),
    "DateTime": (datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), "2030-01-02T03:04:05.678Z"),
    "ByteString": (b"\xde\xad\xbe\xef", "3q2+7w=="),
    "DoubleArray": ([0.5, -0.25], [0.5, -0.25]),
    "Int32Array": ([-1, 0, 2**31 - 1], [-1, 0, 2**31 - 1]),
}


@pytest.fixture(scope="module")
def workspace() -> Iterator[servers.Workspace]:
    ws = servers.Workspace()
    yield ws
    ws.close()


@pytest.fixture(scope="module")
def plain_server(workspace: servers.Workspace) -> servers.OpcuaServer:
    return workspace.opcua()


@pytest.fixture(scope="module")
def pki(workspace: servers.Workspace) -> dict[str, Path]:
    folder = workspace.root / "pki"
    server_cert, server_key = make_certificate(folder / "server", "server", "urn:test:server", True)
    client_cert, client_key = make_certificate(folder / "client", "gw", "urn:test:gw", False)
    stranger_cert, stranger_key = make_certificate(
        folder / "other", "stranger", "urn:test:x", False
    )
    trusted = folder / "trusted"
    trusted.mkdir()
    (trusted / "gw-cert.der").write_bytes(client_cert.read_bytes())
    return {
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "stranger_cert": stranger_cert,
        "stranger_key": stranger_key,
        "trusted": trusted,
    }


@pytest.fixture(scope="module")
def secure_server(workspace: servers.Workspace, pki: dict[str, Path]) -> servers.OpcuaServer:
    return workspace.opcua(
        [
            "--cert", str(pki["server_cert"]), "--key", str(pki["server_key"]),
            "--trust", str(pki["trusted"]), "--secure-only", "--user", "op:s3cret-pw",
        ]
    )  # fmt: skip


def make_config(raw: dict[str, Any]) -> OpcuaSourceConfig:
    problems = Problems()
    config = build_dataclass(OpcuaSourceConfig, {"type": "opcua", **raw}, (), problems)
    assert not problems, problems.items
    return config  # type: ignore[no-any-return]


def make_source(raw: dict[str, Any], name: str = "s1") -> OpcuaSource:
    return OpcuaSource(make_config(raw), Context(name=name, kind="source"))


def all_nodes(**extra: Any) -> dict[str, Any]:
    return {n: {"node": f"ns=2;s={n}", **extra} for n in INITIAL_JSON}


class Pump:
    """Calls read() in the background as the engine would, keeping what comes out."""

    def __init__(self, source: OpcuaSource) -> None:
        self.source = source
        self.messages: list[Message] = []
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        try:
            while True:
                self.messages.extend(await self.source.read())
        except Exception as err:
            self.error = err

    def values(self, topic: str) -> list[Any]:
        return [
            json.loads(m.flowfile.content)["value"]
            for m in self.messages
            if m.flowfile.topic == topic
        ]

    async def until(self, check: Callable[[], bool]) -> None:
        await until(lambda: check() or self.error is not None)
        assert self.error is None, self.error

    async def __aenter__(self) -> Pump:
        await self.source.connect()
        self.task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.source.close()


@pytest.fixture
async def writer(plain_server: servers.OpcuaServer) -> AsyncIterator[Client]:
    """A second client on the plain server: how the tests change its variables."""
    client = Client(plain_server.url)
    await client.connect()
    yield client
    await client.disconnect()


async def write(client: Client, name: str, value: Any, ts: datetime | None = None) -> None:
    """Write as a PLC driver would: the value and, when given, its source timestamp."""
    vtype = VARIABLES[name][1]
    dv = ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=ts)
    await client.get_node(f"ns=2;s={name}").write_value(dv)


class OpcuaProducer:
    """Writes each item's JSON text into the server's String variable, one write after
    the other, as a PLC driver updates a value. Nobody acknowledges anything to an OPC UA
    server: `confirmed` is None."""

    def __init__(self, url: str) -> None:
        self.client = Client(url)
        self.connected = False

    async def send(self, tag: str, n: int) -> None:
        if not self.connected:
            await self.client.connect()
            self.connected = True
        for seq in range(n):
            await write(self.client, "String", json.dumps({"tag": tag, "seq": seq}))

    async def confirmed(self, tag: str) -> bool | None:
        return None

    async def close(self) -> None:
        if self.connected:
            await self.client.disconnect()


class TestOpcuaSourceContract(SourceContract):
    """Live values: see the contract's docstring. The server keeps every change of the
    node between two publishes (`queue_size`), so what is written while the source runs
    arrives whole; across a kill or a stop, the current value."""

    live_values = True
    at_least_once = True

    @pytest.fixture
    def source_keys(self, plain_server: servers.OpcuaServer) -> dict[str, Any]:
        return {"type": "opcua", "url": plain_server.url,
                "nodes": {"item": {"node": "ns=2;s=String"}},
                "publishing_interval": "50ms", "sampling_interval": "0s",
                "queue_size": 100}  # fmt: skip

    @pytest.fixture
    def producer(self, plain_server: servers.OpcuaServer) -> OpcuaProducer:
        return OpcuaProducer(plain_server.url)

    @pytest.fixture
    def topic_of(self) -> Callable[[str, int], str]:
        return lambda tag, seq: "opcua/rows/item"

    def payload_of(self, record: dict[str, Any]) -> Any:
        value = record["payload"].get("value")
        if not isinstance(value, str) or not value.startswith("{"):
            return None  # the value some test before left
        return json.loads(value)


async def test_every_type_arrives_then_its_changes(
    plain_server: servers.OpcuaServer, writer: Client
) -> None:
    stamp = datetime(2024, 6, 1, 8, 30, 15, 250000, tzinfo=UTC)
    for name in INITIAL_JSON:  # a test before may have changed them
        await write(writer, name, VARIABLES[name][0], stamp)
    source = make_source(
        {"url": plain_server.url, "nodes": all_nodes(), "publishing_interval": "50ms"}
    )
    async with Pump(source) as pump:
        await pump.until(lambda: all(pump.values(f"opcua/s1/{n}") for n in INITIAL_JSON))
        for name, expected in INITIAL_JSON.items():
            assert pump.values(f"opcua/s1/{name}")[0] == expected, name
        first = next(m for m in pump.messages if m.flowfile.topic == "opcua/s1/Double")
        body = json.loads(first.flowfile.content)
        assert body["type"] == "Double" and body["status"] == "Good" and body["status_code"] == 0
        assert body["source_ts"] == "2024-06-01T08:30:15.250Z", body
        assert body["server_ts"] is None or body["server_ts"].endswith("Z"), body
        assert first.flowfile.attributes == {
            "source": "s1",
            "node": "Double",
            "node_id": "ns=2;s=Double",
        }

        for name, (value, _) in CHANGED.items():
            await write(writer, name, value)
        # arrival within the publishing interval is not asserted as a time, only that it comes
        await pump.until(
            lambda: all(CHANGED[n][1] in pump.values(f"opcua/s1/{n}") for n in CHANGED)
        )
        assert source.status()["connected"] is True


async def test_polled_nodes_by_path_and_id_follow_the_server(
    plain_server: servers.OpcuaServer, writer: Client
) -> None:
    await write(writer, "Counter", 41)
    source = make_source(
        {
            "url": plain_server.url,
            "mode": "poll",
            "interval": "100ms",
            "nodes": {
                "counter": {"path": "2:Plant/2:Counter"},
                "text": {"node": "ns=2;s=String"},
                "missing": {"node": "ns=2;s=NoSuchNode"},
            },
        }
    )
    async with Pump(source) as pump:
        await pump.until(lambda: 41 in pump.values("opcua/s1/counter"))
        await write(writer, "Counter", 42)
        await pump.until(lambda: 42 in pump.values("opcua/s1/counter"))
        # each poll sends the value again (polling is not report-by-exception)
        assert len(pump.values("opcua/s1/counter")) >= 2
        assert pump.values("opcua/s1/text")
        nodes = source.status()["nodes"]
        assert nodes["counter"]["node_id"] == "ns=2;s=Counter"  # the path, resolved
        assert "BadNodeIdUnknown" in nodes["missing"]["error"]
        assert not pump.values("opcua/s1/missing")


async def test_a_string_whose_bytes_are_not_utf8_arrives_subscribed_and_polled(
    plain_server: servers.OpcuaServer, writer: Client
) -> None:
    # A PLC writing "23.5 °C" in latin-1 sends the byte 0xB0, which asyncua decodes with
    # surrogateescape; no JSON encoder writes the lone surrogate: the subscribed value
    # was lost without a word, and the polled source crashed with a traceback at each
    # poll, its other nodes never read. Each byte that is not UTF-8 is now U+FFFD.
    await write(writer, "String", b"23.5 \xb0C".decode("utf-8", "surrogateescape"))
    try:
        for mode in ("subscribe", "poll"):
            source = make_source(
                {
                    "url": plain_server.url,
                    "mode": mode,
                    "interval": "100ms",
                    "publishing_interval": "50ms",
                    "nodes": {"text": {"node": "ns=2;s=String"}, "n": {"node": "ns=2;s=Int32"}},
                }
            )
            async with Pump(source) as pump:
                await pump.until(
                    lambda: bool(pump.values("opcua/s1/text") and pump.values("opcua/s1/n"))
                )
                assert pump.values("opcua/s1/text")[0] == "23.5 \ufffdC", mode
    finally:
        await write(writer, "String", VARIABLES["String"][0])


async def test_poll_times_missed_are_counted_in_the_status(
    plain_server: servers.OpcuaServer,
) -> None:
    # the docs say missed times are counted in missed_runs in /api/status: it was absent
    source = make_source(
        {"url": plain_server.url, "mode": "poll", "interval": "50ms", "nodes": all_nodes()}
    )
    await source.connect()
    try:
        assert await source.read()  # the first poll
        assert source.status()["missed_runs"] == 0
        await asyncio.sleep(0.3)  # the engine took nothing meanwhile (a full buffer)
        assert await source.read()
        assert source.status()["missed_runs"] >= 3
    finally:
        await source.close()


async def test_deadbands_absolute_at_the_server_and_percent_at_the_source(
    plain_server: servers.OpcuaServer, writer: Client
) -> None:
    await write(writer, "Double", 100.0)
    await write(writer, "Float", 100.0)
    await write(writer, "Int32", 100)
    source = make_source(
        {
            "url": plain_server.url,
            "publishing_interval": "50ms",
            "queue_size": 100,
            "nodes": {
                "absolute": {"node": "ns=2;s=Double", "deadband": 5},
                "percent": {"node": "ns=2;s=Float", "deadband_percent": 5},
                "witness": {"node": "ns=2;s=Int32"},  # no deadband: shows each step arrived
            },
        }
    )
    async with Pump(source) as pump:
        await pump.until(lambda: 100 in pump.values("opcua/s1/witness"))
        for step, (small, big) in enumerate([(103.0, 110.0), (112.0, 120.0)]):
            await write(writer, "Double", small)
            await write(writer, "Float", small)
            await write(writer, "Int32", 1000 + step * 2)
            await pump.until(lambda s=step: 1000 + s * 2 in pump.values("opcua/s1/witness"))  # type: ignore[misc]
            await write(writer, "Double", big)
            await write(writer, "Float", big)
            await write(writer, "Int32", 1001 + step * 2)
            await pump.until(lambda s=step: 1001 + s * 2 in pump.values("opcua/s1/witness"))  # type: ignore[misc]
        await pump.until(lambda: 120.0 in pump.values("opcua/s1/percent"))
        await pump.until(lambda: 120.0 in pump.values("opcua/s1/absolute"))
        assert pump.values("opcua/s1/absolute") == [100.0, 110.0, 120.0]
        assert pump.values("opcua/s1/percent") == [100.0, 110.0, 120.0]


async def test_server_restart_marks_offline_then_online_and_resubscribes(
    workspace: servers.Workspace, run_engine: Callable[..., Any], tmp_path: Path
) -> None:
    server = workspace.opcua()
    try:
        engine = await run_engine(
            {
                "type": "opcua",
                "url": server.url,
                "publishing_interval": "50ms",
                "watchdog": "200ms",
                "nodes": {"counter": {"node": "ns=2;s=Counter"}},
            }
        )

        def status() -> dict[str, Any]:
            return engine.snapshot().sources["rows"].to_json()  # type: ignore[no-any-return]

        await until(lambda: any(r["topic"] == "opcua/rows/counter" for r in lines(tmp_path)))
        assert status()["connected"] is True and status()["server"]["state"] == "online"

        await asyncio.to_thread(server.kill)
        await until(lambda: status()["connected"] is False)
        offline = status()
        assert offline["server"]["state"] == "offline"
        assert "127.0.0.1" in offline["server"]["last_error"]
        assert offline["state"] in ("retrying", "connecting")

        await asyncio.to_thread(server.start)  # a new process: the old subscription is gone
        await until(lambda: status()["connected"] is True)
        online = status()
        assert online["server"]["state"] == "online" and online["server"]["last_error"] is None
        assert server.url[10:-1] in online["server"]["previous_error"]  # history, not a problem
        client = Client(server.url)
        await client.connect()
        try:
            await client.get_node("ns=2;s=Counter").write_value(
                ua.DataValue(ua.Variant(7, ua.VariantType.Int32))
            )
        finally:
            await client.disconnect()

        def counters() -> list[Any]:
            return [
                json.loads(r["payload"])["value"]
                if isinstance(r["payload"], str)
                else r["payload"]["value"]
                for r in lines(tmp_path)
                if r["topic"] == "opcua/rows/counter"
            ]

        await until(lambda: 7 in counters())  # resubscribed: the change after the restart arrives
        await stop(engine)
    finally:
        workspace.discard(server)


async def test_a_server_that_stops_answering_is_said_so(workspace: servers.Workspace) -> None:
    # a hung server (SIGSTOP): the error said "reading from OPC UA server ...: " and no more
    server = workspace.opcua()
    source = make_source(
        {
            "url": server.url,
            "mode": "poll",
            "interval": "100ms",
            "timeout": "300ms",
            "watchdog": "10s",
            "nodes": {"counter": {"node": "ns=2;s=Counter"}},
        }
    )
    try:
        async with Pump(source) as pump:
            await pump.until(lambda: bool(pump.values("opcua/s1/counter")))
            assert server._proc is not None
            os.kill(server._proc.pid, signal.SIGSTOP)
            try:
                await until(lambda: pump.error is not None)
            finally:
                os.kill(server._proc.pid, signal.SIGCONT)
        assert "no answer within 0.3s" in str(pump.error), pump.error
    finally:
        workspace.discard(server)


async def test_values_not_taken_are_dropped_oldest_first_counted_and_logged(
    workspace: servers.Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    # 100 variables the server changes every 50 ms, each value its tick's number; the
    # source is connected but nothing calls read(): the engine is not taking values
    server = workspace.opcua(["--items", "100", "--period", "0.05"])
    try:
        source = make_source(
            {
                "url": server.url,
                "publishing_interval": "50ms",
                "max_queue_bytes": "64KiB",
                "nodes": {f"v{i}": {"node": f"ns=2;s=V{i}"} for i in range(100)},
            }
        )
        await source.connect()
        try:
            # each tick is 100 values: past 200 dropped, the first tick's are surely gone
            await until(lambda: source.dropped >= 200)
            assert source.status()["queue_bytes"] <= 64 * 1024
            taken = await source.read()
            size = sum(len(m.flowfile.content) + len(m.flowfile.topic) for m in taken)
            assert 0 < size <= 64 * 1024
            # every value the subscription brought was either dropped or is taken now
            assert source.values == source.dropped + len(taken)
            ticks = [json.loads(m.flowfile.content)["value"] for m in taken]
            assert min(ticks) > 0  # the oldest (the initial values, tick 0) went
            assert source.status()["queue_bytes"] == 0  # all taken: room again
        finally:
            await source.close()
    finally:
        workspace.discard(server)
    said = [r for r in caplog.records if "not taking values fast enough" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR", said  # once, not per value
    assert "dropped the oldest" in said[0].getMessage()


def secure_raw(server: servers.OpcuaServer, pki: dict[str, Path], **over: Any) -> dict[str, Any]:
    return {
        "url": server.url,
        "security_policy": "Basic256Sha256",
        "certificate": str(pki["client_cert"]),
        "private_key": str(pki["client_key"]),
        "server_certificate": str(pki["server_cert"]),
        "username": "op",
        "password": "s3cret-pw",
        "nodes": {"text": {"node": "ns=2;s=String"}},
        **over,
    }


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_basic256sha256_with_a_user(
    secure_server: servers.OpcuaServer, pki: dict[str, Path], mode: str
) -> None:
    source = make_source(secure_raw(secure_server, pki, security_mode=mode))
    async with Pump(source) as pump:
        await pump.until(lambda: bool(pump.values("opcua/s1/text")))
        assert pump.values("opcua/s1/text")[0] == "hello"


async def test_an_untrusted_certificate_is_refused_clearly(
    secure_server: servers.OpcuaServer, pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    source = make_source(
        secure_raw(
            secure_server,
            pki,
            certificate=str(pki["stranger_cert"]),
            private_key=str(pki["stranger_key"]),
        )
    )
    with pytest.raises(PermanentError) as raised:
        await source.connect()
    message = str(raised.value)
    assert "\n" not in message and "certificate" in message and secure_server.url[10:-1] in message
    assert source.status()["server"]["state"] == "offline"
    await source.close()


async def test_the_wrong_server_certificate_is_refused_clearly(
    secure_server: servers.OpcuaServer, pki: dict[str, Path]
) -> None:
    source = make_source(
        secure_raw(secure_server, pki, server_certificate=str(pki["stranger_cert"]))
    )
    with pytest.raises(PermanentError) as raised:
        await source.connect()
    assert "server_certificate" in str(raised.value) and "\n" not in str(raised.value)
    await source.close()


@pytest.mark.parametrize("where", ["missing.der", "."])
async def test_a_server_certificate_that_cannot_be_read_is_one_permanent_line(
    secure_server: servers.OpcuaServer, pki: dict[str, Path], tmp_path: Path, where: str
) -> None:
    # FileNotFoundError or IsADirectoryError came out of connect() as is: a traceback at
    # each retry rather than the file named in one line
    path = str(tmp_path / where)
    source = make_source(secure_raw(secure_server, pki, server_certificate=path))
    with pytest.raises(PermanentError) as raised:
        await source.connect()
    message = str(raised.value)
    assert message.startswith(f"cannot read server_certificate {path}: ") and "\n" not in message
    await source.close()


async def test_a_refused_password_is_permanent_and_never_shown(
    secure_server: servers.OpcuaServer, pki: dict[str, Path]
) -> None:
    source = make_source(secure_raw(secure_server, pki, password="wrong-pw-123"))
    with pytest.raises(PermanentError) as raised:
        await source.connect()
    message = str(raised.value)
    assert "refused user 'op'" in message and "check username and password" in message
    assert "wrong-pw-123" not in message and "wrong-pw-123" not in json.dumps(source.status())
    await source.close()


async def test_unreachable_server_is_retryable_and_offline() -> None:
    from gateway.core.errors import RetryableError

    source = make_source(
        {"url": f"opc.tcp://127.0.0.1:{servers.free_port()}/", "nodes": {"x": {"node": "i=2258"}}}
    )
    with pytest.raises(RetryableError, match="connection refused"):
        await source.connect()
    assert source.status()["connected"] is False
    await source.close()


async def test_a_write_under_way_when_the_source_stops_is_answered(
    workspace: servers.Workspace, mosquitto: Any
) -> None:
    # A reload or a stop cancelled the write under way: its commander never got a result
    server = workspace.opcua([])
    source = make_source(
        {
            "url": server.url,
            "timeout": "10s",
            "nodes": {"Double": {"node": "ns=2;s=Double", "writable": True}},
            "writeback": {"enabled": True, "url": mosquitto.url, "client_id": "opcua-wb-cut"},
        },
        name="cut",
    )
    results: list[dict[str, Any]] = []
    subscribed = threading.Event()
    probe = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="opcua-wb-cut-probe")
    probe.on_message = lambda _c, _u, msg: results.append(json.loads(msg.payload))
    probe.on_subscribe = lambda *a: subscribed.set()
    probe.connect("127.0.0.1", mosquitto.port)
    probe.loop_start()
    try:
        probe.subscribe("opcua/cut/+/set/result", qos=1)
        assert await asyncio.to_thread(subscribed.wait, 30)
        async with Pump(source) as pump:
            await until(lambda: source.status().get("writeback") == "connected")
            await pump.until(lambda: bool(pump.values("opcua/cut/Double")))
            os.kill(server._proc.pid, signal.SIGSTOP)  # the write waits for its answer
            try:
                probe.publish("opcua/cut/Double/set", '{"value": 1.5, "id": "w1"}', qos=1)
                await until(lambda: bool(source._channel.pending and not source._writes))
            finally:
                # leaving the block cancels read(), as a stop does, then closes the source
                os.kill(server._proc.pid, signal.SIGCONT)
        await until(lambda: bool(results))
        [result] = results
        assert result["ok"] is False and "stopped during the write" in result["error"], result
        assert result["id"] == "w1" and result["requested"] == 1.5
    finally:
        probe.loop_stop()
        probe.disconnect()
        workspace.discard(server)


async def test_write_back_converts_writes_reads_back_and_answers(
    plain_server: servers.OpcuaServer, writer: Client, mosquitto: Any
) -> None:
    await write(writer, "Counter", 5)
    nodes = {n: {"node": f"ns=2;s={n}", "writable": True} for n in CHANGED}
    nodes["locked"] = {"node": "ns=2;s=Counter"}  # not writable: refused by the gateway
    source = make_source(
        {
            "url": plain_server.url,
            "nodes": nodes,
            "writeback": {"enabled": True, "url": mosquitto.url, "client_id": "opcua-wb-test"},
        },
        name="plc",
    )
    results: dict[str, dict[str, Any]] = {}
    subscribed = threading.Event()
    probe = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="opcua-wb-probe")

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        results[body.get("id") or body["node"]] = body

    probe.on_message = on_message
    probe.on_subscribe = lambda *a: subscribed.set()
    commands = {
        "Bool": "true",
        "SByte": "-100",
        "Byte": "250",
        "Int16": "-123",
        "UInt64": str(2**64 - 1),
        "Float": "0.25",
        "Double": '{"value": 6.5, "id": "dbl"}',
        "String": '"written"',
        "DateTime": '"2031-02-03T04:05:06Z"',
        "ByteString": '"AQID"',
        "Int32Array": "[4, 5, 6]",
    }
    probe.connect("127.0.0.1", mosquitto.port)
    probe.loop_start()
    try:
        probe.subscribe("opcua/plc/+/set/result", qos=1)
        assert await asyncio.to_thread(subscribed.wait, 30)
        async with Pump(source) as pump:
            await until(lambda: source.status().get("writeback") == "connected")
            for name, payload in commands.items():
                probe.publish(f"opcua/plc/{name}/set", payload, qos=1)
            probe.publish("opcua/plc/locked/set", "1", qos=1)
            probe.publish("opcua/plc/Int16/set", '{"value": 70000, "id": "too-big"}', qos=1)
            # the one-byte types: one past each end of their range is refused, unwritten
            out_of_range = {
                "sbyte-low": ("SByte", -129),
                "sbyte-high": ("SByte", 128),
                "byte-low": ("Byte", -1),
                "byte-high": ("Byte", 256),
            }
            for ident, (name, value) in out_of_range.items():
                probe.publish(
                    f"opcua/plc/{name}/set", json.dumps({"value": value, "id": ident}), qos=1
                )
            wanted = {*commands, "dbl", "locked", "too-big", *out_of_range} - {"Double"}
            await pump.until(lambda: wanted <= set(results))
        for name in commands:
            result = results["dbl" if name == "Double" else name]
            assert result["ok"] is True, result
        assert results["locked"]["ok"] is False and "not writable" in results["locked"]["error"]
        assert (
            results["too-big"]["ok"] is False
            and "out of range for Int16" in results["too-big"]["error"]
        )
        for ident, (name, _) in out_of_range.items():
            result = results[ident]
            assert result["ok"] is False and f"out of range for {name}" in result["error"], result
        # verified at the server, through the other client
        read = {n: await writer.get_node(f"ns=2;s={n}").read_value() for n in commands}
        assert read["Bool"] is True and read["Int16"] == -123 and read["UInt64"] == 2**64 - 1
        assert read["SByte"] == -100 and read["Byte"] == 250  # the refused ones left them so
        assert read["Float"] == 0.25 and read["Double"] == 6.5 and read["String"] == "written"
        assert read["DateTime"].replace(tzinfo=UTC) == datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
        assert read["ByteString"] == b"\x01\x02\x03" and read["Int32Array"] == [4, 5, 6]
        assert await writer.get_node("ns=2;s=Counter").read_value() == 5  # the refused one
    finally:
        probe.loop_stop()
        probe.disconnect()

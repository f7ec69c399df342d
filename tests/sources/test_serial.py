"""The serial source on a socat pty pair (and on a socket:// URL): framing, dead letters, unplug."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from typing import Any

import pytest

from gateway.config.model import RetrySettings
from gateway.config.schema import Problems, build_dataclass
from gateway.core.component import Context, Message
from gateway.core.errors import RetryableError
from gateway.engine.runner import Ingest, SourceRunner
from gateway.sources.serial import SerialSource, SerialSourceConfig
from gateway.store.admin import open_admin
from gateway.store.sqlite import Batch, DeadLetter, Store
from tests.sources.socat_pair import SocatPair

pytestmark = pytest.mark.integration

WAIT = 30.0


def make_source(port: str, name: str = "dev", **raw: Any) -> SerialSource:
    problems = Problems()
    config = build_dataclass(
        SerialSourceConfig, {"type": "serial", "port": port, **raw}, (), problems
    )
    assert not problems, problems.items
    return SerialSource(config, Context(name=name, kind="source"))


def problems_of(**raw: Any) -> list[str]:
    problems = Problems()
    build_dataclass(SerialSourceConfig, {"type": "serial", "port": "/dev/x", **raw}, (), problems)
    return [".".join(map(str, path)) + ": " + msg for path, msg in problems.items]


class Writer:
    """The device's end of the cable."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def read_n(source: SerialSource, n: int) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(WAIT):
        while len(got) < n:
            got.extend(await source.read())
    return got


@pytest.fixture
def cable(tmp_path: Path) -> Iterator[SocatPair]:
    pair = SocatPair(tmp_path, "ttyGW", "ttyDEV").start()
    yield pair
    pair.stop()


@pytest.fixture
async def opened(cable: SocatPair) -> Any:
    """(source factory, writer): a source on the gateway end, a writer on the device end."""
    made: list[SerialSource] = []
    writer = Writer(cable.b)

    async def make(**raw: Any) -> SerialSource:
        source = make_source(cable.a, **raw)
        await source.connect()
        made.append(source)
        return source

    yield make, writer
    writer.close()
    for source in made:
        await source.close()


async def test_line_framing_with_dead_letters(opened: Any) -> None:
    make, writer = opened
    source = await make(max_length=32, baudrate=115200)
    writer.write(b"21.5;ok\r\nsecond line\n")
    writer.write(b"X" * 100 + b"\n")  # over-long
    writer.write(b"\xff\xfe garbage\n")  # not text
    writer.write(b"after\n")
    got = await read_n(source, 5)
    assert [(m.flowfile.content, m.reject is not None) for m in got] == [
        (b"21.5;ok", False),
        (b"second line", False),
        (b"X" * 32, True),
        (b"\xff\xfe garbage", True),
        (b"after", False),
    ]
    assert got[0].flowfile.topic == "serial/dev"
    assert got[0].flowfile.attributes == {"serial.port": source.config.port}
    assert "max_length" in (got[2].reject or "")
    # only the cut one is marked, on its own attributes (got[0] has the shared ones)
    assert got[2].flowfile.attributes["content.truncated"] == "max_length"
    assert "content.truncated" not in got[3].flowfile.attributes
    assert got[3].flowfile.attributes["serial.error"] == got[3].reject
    status = source.status()["serial"]
    assert (status["records"], status["rejected"], status["state"]) == (3, 2, "open")


async def test_a_line_cut_to_max_length_stays_through_a_replay(opened: Any, tmp_path: Path) -> None:
    # Its first max_length bytes went on to the sinks as if they were the reading.
    make, writer = opened
    source = await make(max_length=16, baudrate=115200)
    writer.write(b"T" * 40 + b"\n")
    writer.write(b"\xff not text\n")  # a whole line: replayed as any other
    cut, raw = await read_n(source, 2)
    assert (cut.flowfile.content, cut.flowfile.attributes["content.truncated"]) == (
        b"T" * 16,
        "max_length",
    )
    store = Store(tmp_path / "store.db")
    await store.open(["a"])
    reason = f"source {source.ctx.name}"
    await store.commit(
        Batch(
            [],
            [DeadLetter(m.flowfile, reason, m.reject or "") for m in (cut, raw)],
            {},
            [],
        )
    )
    with open_admin(store.path) as admin:
        replayed = admin.replay(None)
        assert (replayed.count, replayed.kept) == (1, {"truncated to max_length": 1})
        assert "truncated to max_length" in (replayed.note() or "")
        assert [d.id for d in admin.dead_letters(10)] == [cut.flowfile.id]
    assert [f.id for _, f, _, _ in await store.take_replay(10)] == [raw.flowfile.id]
    await store.close()


async def test_regex_framing(opened: Any) -> None:
    make, writer = opened
    pattern = r"^(?P<status>ST|US),(?P<mode>GS|NT),\s*(?P<weight>[-+0-9.]+)\s*(?P<unit>\w+)$"
    source = await make(framing="regex", pattern=pattern, terminator="\r\n", topic="scale/{source}")
    writer.write(b"ST,GS,  +12.50kg\r\nUS,NT,-0.25 lb\r\n?? noise\r\n")
    got = await read_n(source, 3)
    assert [json.loads(m.flowfile.content) for m in got[:2]] == [
        {"status": "ST", "mode": "GS", "weight": 12.5, "unit": "kg"},
        {"status": "US", "mode": "NT", "weight": -0.25, "unit": "lb"},
    ]
    assert got[0].flowfile.topic == "scale/dev"
    assert got[2].reject is not None and got[2].flowfile.content == b"?? noise"


async def test_fixed_framing_resyncs_after_garbage(opened: Any) -> None:
    make, writer = opened
    source = await make(framing="fixed", length=8, sync="aa55")
    frames = [b"\xaa\x55" + bytes([i] * 6) for i in range(3)]
    writer.write(b"\x01\x02\x03" + frames[0] + frames[1][:5])
    first = await read_n(source, 2)
    writer.write(frames[1][5:] + frames[2])
    rest = await read_n(source, 2)
    got = first + rest
    assert [m.flowfile.content for m in got if m.reject is None] == frames
    assert [m.flowfile.content for m in got if m.reject is not None] == [b"\x01\x02\x03"]


def nmea(body: str) -> bytes:
    checksum = reduce(lambda acc, ch: acc ^ ord(ch), body, 0)
    return f"${body}*{checksum:02X}\r\n".encode()


async def test_nmea_framing(opened: Any) -> None:
    make, writer = opened
    source = await make(framing="nmea", baudrate=4800, topic="gps/{talker}/{sentence}")
    gga = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    rmc = nmea("GNRMC,123520,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")
    corrupted = gga.replace(b"4807.038", b"4807.039")  # the checksum no longer fits
    writer.write(gga + corrupted + rmc)
    got = await read_n(source, 3)
    assert got[0].reject is None and got[2].reject is None
    fix = json.loads(got[0].flowfile.content)
    assert (fix["lat"], fix["lon"], fix["satellites"]) == (48.1173, 11.5166667, 8)
    assert got[0].flowfile.topic == "gps/GP/GGA"
    assert got[0].flowfile.attributes["nmea.sentence"] == "GGA"
    assert json.loads(got[2].flowfile.content)["datetime"] == "1994-03-23T12:35:20Z"
    assert got[2].flowfile.topic == "gps/GN/RMC"
    assert got[1].reject is not None and "bad NMEA checksum" in got[1].reject
    assert got[1].flowfile.content == corrupted.strip()


async def test_nul_bytes_before_a_sentence_become_a_dead_letter(opened: Any) -> None:
    make, writer = opened
    source = await make(framing="nmea", baudrate=4800)
    gga = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    writer.write(b"\x00\x00" + gga + b" \x00junk\x00 \r\n")
    got = await read_n(source, 3)
    assert [(m.flowfile.content, m.reject is not None) for m in got] == [
        (b"\x00\x00", True),
        (got[1].flowfile.content, False),
        (b" \x00junk\x00 ", True),
    ]
    assert json.loads(got[1].flowfile.content)["sentence"] == "GGA"


async def test_unplugged_adapter_is_noticed_and_reopened(cable: SocatPair) -> None:
    source = make_source(cable.a, baudrate=9600)
    await source.connect()
    writer = Writer(cable.b)
    try:
        writer.write(b"before\n")
        assert [m.flowfile.content for m in await read_n(source, 1)] == [b"before"]

        # unplug: the device side closes and the adapter (the pty pair) disappears
        writer.close()
        cable.stop()
        with pytest.raises(RetryableError, match="lost"):
            async with asyncio.timeout(WAIT):
                await source.read()
        assert source.status()["serial"]["state"] == "lost"
        await source.close()  # what the engine does before it reconnects
        with pytest.raises(RetryableError, match="cannot open"):
            await source.connect()
        assert source.status()["serial"]["state"] == "missing"

        # plugged in again: same name, new device
        cable.start()
        await source.connect()
        writer = Writer(cable.b)
        writer.write(b"after\n")
        assert [m.flowfile.content for m in await read_n(source, 1)] == [b"after"]
        assert source.status()["serial"]["state"] == "open"
    finally:
        writer.close()
        await source.close()


async def test_an_unplug_is_logged_once(cable: SocatPair, caplog: pytest.LogCaptureFixture) -> None:
    source = make_source(cable.a, name="gps")
    ingest = Ingest(100)
    runner = SourceRunner("gps", source, ingest, RetrySettings(initial=5.0, max=5.0), gate())
    task = asyncio.create_task(runner.run())
    writer = Writer(cable.b)
    try:
        # write only once the port is open: opening it flushes what was waiting
        for _ in range(int(WAIT * 100)):
            if runner.state == "running":
                break
            await asyncio.sleep(0.01)
        writer.write(b"before\n")
        async with asyncio.timeout(WAIT):
            assert [m.flowfile.content for _, m in await ingest.take(10, 0)] == [b"before"]
        caplog.clear()
        writer.close()
        cable.stop()
        for _ in range(int(WAIT * 100)):
            if runner.state == "retrying":
                break
            await asyncio.sleep(0.01)
        lost = [r for r in caplog.records if "lost" in r.getMessage()]
        assert len(lost) == 1, [r.getMessage() for r in lost]
        assert runner.last_error is not None and "lost" in runner.last_error
    finally:
        writer.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await source.close()


async def test_an_adapter_away_is_one_warning_and_back_one_info(
    cable: SocatPair, caplog: pytest.LogCaptureFixture
) -> None:
    # The docstring said "reported once"; the engine logged a warning at every retry of
    # the open ("cannot open serial port ...: no such device; retrying in 30.0 s"), for
    # as long as the adapter was away. Now: one warning when it goes, the retries at
    # debug level (the status shows the latest), one info when it is back.
    source = make_source(cable.a, name="gps")
    runner = SourceRunner("gps", source, Ingest(100), RetrySettings(0.01, 0.01), gate())
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(WAIT):
            while runner.state != "running":  # noqa: ASYNC110 - the runner's own field
                await asyncio.sleep(0.01)
        caplog.set_level(logging.DEBUG, logger="gateway")
        caplog.clear()
        cable.stop()
        async with asyncio.timeout(WAIT):
            while runner.errors < 5:  # noqa: ASYNC110 - the lost read, then 4 opens
                await asyncio.sleep(0.01)
        said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= 20]
        assert len(said) == 1 and said[0][0] == "WARNING", said
        assert "lost" in said[0][1] and "quietly until it is back" in said[0][1]
        retries = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
        assert len(retries) >= 4 and all("no such device" in m for m in retries), retries
        assert runner.last_error is not None and "no such device" in runner.last_error

        caplog.clear()
        cable.start()
        async with asyncio.timeout(WAIT):
            while runner.state != "running":  # noqa: ASYNC110 - the runner's own field
                await asyncio.sleep(0.01)
        said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= 20]
        assert [level for level, _ in said] == ["INFO"] and "opened" in said[0][1], said
        # gone again: a warning again, once
        caplog.clear()
        cable.stop()
        async with asyncio.timeout(WAIT):
            while runner.state != "retrying":  # noqa: ASYNC110 - the runner's own field
                await asyncio.sleep(0.01)
        errors = runner.errors
        async with asyncio.timeout(WAIT):
            while runner.errors < errors + 3:  # noqa: ASYNC110 - the runner's own field
                await asyncio.sleep(0.01)
        assert [r.levelname for r in caplog.records if r.levelno >= 20] == ["WARNING"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await source.close()


def gate() -> asyncio.Event:
    opened = asyncio.Event()
    opened.set()
    return opened


async def test_socket_url_is_read_in_a_thread() -> None:
    connected: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_client(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connected.put(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = make_source(f"socket://127.0.0.1:{port}")
    await source.connect()
    try:
        async with asyncio.timeout(WAIT):
            peer = await connected.get()
        peer.write(b"one\ntwo\n")
        await peer.drain()
        assert [m.flowfile.content for m in await read_n(source, 2)] == [b"one", b"two"]
        peer.close()
        await peer.wait_closed()
        with pytest.raises(RetryableError, match="lost"):
            async with asyncio.timeout(WAIT):
                await source.read()
    finally:
        await source.close()
        server.close()
        await server.wait_closed()


def test_missing_device_is_retryable_and_bad_settings_are_not() -> None:
    async def run() -> None:
        source = make_source("/dev/does-not-exist-edge-stream")
        with pytest.raises(RetryableError, match="cannot open"):
            await source.connect()

    asyncio.run(run())


def test_config_problems() -> None:
    cases = [
        ({"framing": "regex"}, "pattern: framing: regex needs a pattern"),
        ({"framing": "regex", "pattern": "(\\d+"}, "pattern: not a valid regular expression"),
        ({"framing": "regex", "pattern": "\\d+"}, "pattern: needs named groups"),
        # these raised OverflowError and RecursionError out of check-config (a traceback)
        (
            {"framing": "regex", "pattern": "(?P<a>x{99999999999})"},
            "pattern: not a valid regular expression: the repetition number is too large",
        ),
        (
            {"framing": "regex", "pattern": "(" * 500 + "(?P<a>x)" + ")" * 500},
            "pattern: not a valid regular expression: groups nested too deeply",
        ),
        ({"framing": "fixed"}, "length: framing: fixed needs length"),
        ({"framing": "fixed", "length": 4, "sync": "zz"}, "sync: 'zz' is not hex"),
        ({"framing": "line", "sync": "aa"}, "sync: only used with framing: fixed"),
        ({"parity": "X"}, "parity: 'X' is not one of"),
        ({"stopbits": 3}, "stopbits: must be 1, 1.5 or 2"),
        # beyond a C int: pyserial's OverflowError came out of connect() as a traceback
        ({"baudrate": 2**31}, "baudrate: must be 1 to 2147483647"),
        ({"baudrate": 0}, "baudrate: must be 1 to 2147483647"),
        # retried for ever with "'<=' not supported between instances of 'int' and 'NoneType'"
        (
            {"port": "socket://10.0.0.7"},
            "port: 'socket://10.0.0.7': write socket://host:port, with a port from 1 to 65535",
        ),
        ({"port": "rfc2217://10.0.0.7:99999"}, "port: 'rfc2217://10.0.0.7:99999' is not a"),
        ({"port": "socket://:4001"}, "port: 'socket://:4001': write socket://host:port"),
        ({"topic": "serial/{sentence}"}, "topic: 'serial/{sentence}' uses sentence"),
        ({"encoding": "klingon"}, "encoding: unknown encoding"),
    ]
    for raw, expected in cases:
        found = problems_of(**raw)
        assert any(expected in p for p in found), (expected, found)
    assert problems_of(framing="nmea", topic="gps/{sentence}") == []


def test_the_registry_finds_the_source() -> None:
    from gateway import registry

    entry = registry.find("source", "serial")
    assert entry is not None and entry.cls is SerialSource


def test_the_documented_examples_are_valid_configs() -> None:
    import yaml

    import gateway.sources.serial as module

    assert module.__doc__ is not None
    example = module.__doc__.split("```yaml\n", 1)[1].split("```", 1)[0]
    sources = yaml.safe_load(example)["sources"]
    assert set(sources) == {"gps", "scale"}
    for raw in sources.values():
        assert problems_of(**{k: v for k, v in raw.items() if k != "type"}) == []

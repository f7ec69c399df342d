"""The file sink: JSON Lines content, rotation, fsync, torn tails and close."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import errno
import json
import os
import resource
import signal
import stat
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import registry
from gateway.config.schema import Problems, build_dataclass
from gateway.core.clock import Clock
from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks import file as file_sink
from gateway.sinks.file import FileSink
from tests.sinks.contract import SinkContract

pytestmark = pytest.mark.unit

# 2024-05-01T12:00:00.123456789Z
CREATED = 1714564800_123456789


def make_sink(tmp_path: Path, name: str = "archive", **options: Any) -> FileSink:
    entry = registry.find("sink", "file")
    assert entry is not None and entry.cls is FileSink
    problems = Problems()
    config = build_dataclass(entry.config, {"type": "file", **options}, (), problems)
    assert not problems.items, problems.items
    return FileSink(config, Context(name=name, kind="sink", data_dir=str(tmp_path)))


def flowfile(content: bytes, topic: str = "sensors/a/telemetry", **attributes: str) -> FlowFile:
    return FlowFile.create(topic, content, attributes, created=CREATED)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_writes_one_json_line_per_flowfile(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    await sink.connect()
    batch = [
        flowfile(b'{"temp": 21.5}', **{"mqtt.qos": "1"}),
        flowfile(b'{\n  "pretty": [1, 2],\n  "s": "line\\nbreak"\n}\n'),
        flowfile(b"\xff\x00binary"),
        flowfile(b"21.5 C"),
        flowfile(b""),
        flowfile('{"name":"Kühlraum"}'.encode(), topic="plant/Kühlraum"),
    ]
    assert await sink.write(batch) == []
    await sink.close()

    path = tmp_path / "archive.jsonl"
    lines = read_lines(path)
    assert [line["id"] for line in lines] == [ff.id for ff in batch]
    first = lines[0]
    assert first == {
        "id": batch[0].id,
        "topic": "sensors/a/telemetry",
        "ts": "2024-05-01T12:00:00.123456Z",
        "attributes": {"mqtt.qos": "1"},
        "payload": {"temp": 21.5},
    }
    assert lines[1]["payload"] == {"pretty": [1, 2], "s": "line\nbreak"}
    assert "payload" not in lines[2]
    assert base64.b64decode(lines[2]["payload_base64"]) == b"\xff\x00binary"
    assert lines[3]["payload_text"] == "21.5 C"
    assert lines[4]["payload_text"] == ""
    assert lines[5]["topic"] == "plant/Kühlraum"
    assert lines[5]["payload"] == {"name": "Kühlraum"}
    # One line per FlowFile even for pretty-printed JSON content.
    assert path.read_bytes().count(b"\n") == len(batch)


async def test_json_numbers_are_written_as_they_read_also_from_pretty_printed_json(
    tmp_path: Path,
) -> None:
    # Pretty-printed JSON was read into doubles and written out again: digits rounded away
    # and 1e400 written as Infinity, which no strict JSON reader (jq) takes.
    pretty = b'{\n  "v": 12345678901234.5678,\n  "big": 1e400,\n  "s": "a  b, \\"c\\" "\n}\n'
    sink = make_sink(tmp_path)
    await sink.write([flowfile(pretty)])
    await sink.close()
    line = (tmp_path / "archive.jsonl").read_text()
    assert line.count("\n") == 1
    assert '"payload":{"v":12345678901234.5678,"big":1e400,"s":"a  b, \\"c\\" "}}' in line
    columns = ["payload", {"v": "field.v"}, {"big": "field.big"}, {"t": "field.tiny"}]
    table = csv_sink(tmp_path, columns=columns)
    compact = b'{"v": 12345678901234.5678, "big": 1e400, "tiny": 1e-400}'
    await table.write([flowfile(pretty), flowfile(compact)])
    await table.close()
    rows = read_csv(tmp_path / "table.csv")
    one_line = '{"v":12345678901234.5678,"big":1e400,"s":"a  b, \\"c\\" "}'
    assert rows[1] == [one_line, "12345678901234.5678", "1E+400", ""]
    assert rows[2][1:] == ["12345678901234.5678", "1E+400", "1E-400"]


async def test_a_field_column_keeps_every_digit_of_a_short_number_too(tmp_path: Path) -> None:
    # Only long numbers kept their digits: a short one went through a double, so 1.50
    # came out 1.5 and 1e5 as 100000.0, digits it was never written with.
    columns = [{n: f"field.{n}"} for n in ("a", "b", "c", "d", "e", "o", "huge")]
    table = csv_sink(tmp_path, columns=columns)
    content = (
        b'{"a": 1.50, "b": 1e5, "c": -0.0, "d": 0.1, "e": 2.5E-3, "o": {"x": [1.50, 1e5]},'
        b' "huge": 1e9999999999999999999}'
    )
    assert await table.write([flowfile(content)]) == []
    await table.close()
    # An exponent beyond a Decimal's raised out of write: the sink crashed on it for ever.
    rows = read_csv(tmp_path / "table.csv")
    assert rows[1] == ["1.50", "1E+5", "-0.0", "0.1", "0.0025", '{"x":[1.50,1E+5]}', "Infinity"]


async def test_pretty_printed_json_keeps_its_strings_as_written_on_one_line(
    tmp_path: Path,
) -> None:
    # Escaped quotes and backslashes (a string ending in one), blanks inside strings and
    # escapes such as \u00e9 and \n are kept as written; only the blanks between tokens go.
    pretty = (
        b'{\n  "q": "say \\"hi\\"  ",\n  "b": "C:\\\\dir\\\\",\n  "c": "\\\\\\"",\n'
        b'  "  key  ": [ \t1 ,\r\n 2.50 , "\\u00e9 \\n" ],\n  "e": {  }, "f": [ ]\n}\n'
    )
    sink = make_sink(tmp_path)
    await sink.write([flowfile(pretty)])
    await sink.close()
    line = (tmp_path / "archive.jsonl").read_text()
    one_line = (
        '{"q":"say \\"hi\\"  ","b":"C:\\\\dir\\\\","c":"\\\\\\"",'
        '"  key  ":[1,2.50,"\\u00e9 \\n"],"e":{},"f":[]}'
    )
    assert line.endswith(f'"payload":{one_line}}}\n')
    assert json.loads(line)["payload"] == json.loads(pretty)
    table = csv_sink(tmp_path, columns=["payload"])
    await table.write([flowfile(pretty)])
    await table.close()
    assert read_csv(tmp_path / "table.csv")[1] == [one_line]


def test_pretty_printed_json_is_put_on_one_line_without_python_code_per_token() -> None:
    # A substitution calling a Python function for each string and each run of blanks
    # took 3.4 times as long as the json round trip it replaced (1.8 KB: 53 -> 179 us).
    doc = {"values": [{"name": f"sensor {i}", "v": i, "unit": "kPa"} for i in range(20)]}
    pretty = json.dumps(doc, indent=2)
    calls: list[str] = []

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        one_line = file_sink._one_line(pretty)
    finally:
        sys.setprofile(None)
    assert one_line == json.dumps(doc, separators=(",", ":"))
    assert calls == ["_one_line"]


async def test_text_that_is_not_json_is_written_as_text_and_other_bytes_as_base64(
    tmp_path: Path,
) -> None:
    sink = make_sink(tmp_path)
    texts = ["21.5 C", 'say "hi"\n\tand \\ bye', "Kühlraum: 4 °C ❄", "\x00\x1f nul", "NaN"]
    binary = [b"\xff\xfe", "é".encode("latin-1"), b"ok\xc3", b"\xed\xa0\x80"]  # not UTF-8
    batch = [flowfile(t.encode()) for t in texts] + [flowfile(b) for b in binary]
    await sink.write(batch)
    await sink.close()
    lines = read_lines(tmp_path / "archive.jsonl")
    assert [set(line) - {"id", "topic", "ts", "attributes"} for line in lines] == [
        {"payload_text"}
    ] * len(texts) + [{"payload_base64"}] * len(binary)
    assert [line["payload_text"] for line in lines[: len(texts)]] == texts
    assert [base64.b64decode(line["payload_base64"]) for line in lines[len(texts) :]] == binary


async def test_appends_and_redelivery_repeats_lines(tmp_path: Path) -> None:
    """Within one run the same batch written twice appears twice (a reopened sink leaves
    out only what is at the end of its file: see the test of a restart below)."""
    sink = make_sink(tmp_path, path="out/telemetry.jsonl")
    batch = [flowfile(b'{"n": 1}'), flowfile(b'{"n": 2}')]
    await sink.write(batch)  # opens the file itself when connect() was not called
    await sink.write(batch)
    await sink.close()
    reopened = make_sink(tmp_path, path="out/telemetry.jsonl")
    await reopened.connect()
    await reopened.write([flowfile(b'{"n": 3}')])
    await reopened.close()
    lines = read_lines(tmp_path / "out" / "telemetry.jsonl")
    assert [line["payload"]["n"] for line in lines] == [1, 2, 1, 2, 3]


async def test_absolute_path(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "x.jsonl"
    sink = make_sink(tmp_path / "data", path=str(target))
    await sink.write([flowfile(b"{}")])
    await sink.close()
    assert read_lines(target)[0]["payload"] == {}


async def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, rotate_bytes="4KiB", keep=2)
    await sink.connect()
    path = tmp_path / "archive.jsonl"
    written: list[str] = []
    for i in range(12):
        batch = [flowfile(json.dumps({"i": i, "pad": "x" * 900}).encode())]
        written.append(batch[0].id)
        await sink.write(batch)
        assert path.stat().st_size <= 4096
    await sink.close()

    files = names(tmp_path)
    assert files == ["archive.jsonl", "archive.jsonl.1", "archive.jsonl.2"]
    ids = [
        line["id"]
        for name in ("archive.jsonl.2", "archive.jsonl.1", "archive.jsonl")
        for line in read_lines(tmp_path / name)
    ]
    # The kept files hold the newest FlowFiles, in order, with no gap.
    assert ids == written[-len(ids) :]
    assert len(ids) > 6
    for name in ("archive.jsonl.1", "archive.jsonl.2"):
        assert (tmp_path / name).stat().st_size > 3000  # rotated near the limit, not early


async def test_a_lowered_keep_removes_the_older_rotated_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(1, 6):  # left by keep: 5
        (tmp_path / f"archive.jsonl.{n}").write_text(f'{{"id":"{n}"}}\n')
    sink = make_sink(tmp_path, rotate_bytes="4KiB", keep=2)
    await sink.write([flowfile(json.dumps({"pad": "x" * 3000}).encode())])
    await sink.write([flowfile(json.dumps({"pad": "x" * 3000}).encode())])  # rotates
    await sink.close()
    assert names(tmp_path) == ["archive.jsonl", "archive.jsonl.1", "archive.jsonl.2"]
    assert (tmp_path / "archive.jsonl.2").read_text() == '{"id":"1"}\n'
    removed = [r for r in caplog.records if r.levelname == "WARNING" and "removed" in r.message]
    assert len(removed) == 3


async def test_a_raised_keep_leaves_files_set_aside_and_the_users_beyond_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "archive.jsonl.1").write_text('{"id":"1"}\n')
    (tmp_path / "archive.jsonl").write_text("a,b\n1,2\n")  # not JSON Lines
    sink = make_sink(tmp_path, rotate_bytes="4KiB", keep=0)
    await sink.connect()  # sets it aside to the first free name, .2
    await sink.close()
    (tmp_path / "archive.jsonl.3").write_text("my notes\n")
    (tmp_path / "archive.jsonl.4").write_text('{"id":"4"}\n')  # left by a larger keep
    sink = make_sink(tmp_path, rotate_bytes="4KiB", keep=1)
    await sink.write([flowfile(json.dumps({"pad": "x" * 3000}).encode())])
    await sink.write([flowfile(json.dumps({"pad": "x" * 3000}).encode())])  # rotates
    await sink.close()
    assert names(tmp_path) == [f"archive.jsonl{n}" for n in ("", ".1", ".2", ".3")]
    assert (tmp_path / "archive.jsonl.2").read_text() == "a,b\n1,2\n"
    assert (tmp_path / "archive.jsonl.3").read_text() == "my notes\n"


@pytest.mark.parametrize("kind", ["file", "folder"])
async def test_a_file_not_the_sinks_own_at_the_last_kept_number_is_moved_not_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    for n in (1, 2):
        (tmp_path / f"archive.jsonl.{n}").write_text(f'{{"id":"{n}"}}\n')
    if kind == "folder":  # a rename over it fails: the rotation was retried for ever
        (tmp_path / "archive.jsonl.3").mkdir()
        (tmp_path / "archive.jsonl.3" / "notes").write_text("my notes\n")
    else:
        (tmp_path / "archive.jsonl.3").write_text("my notes\n")
    sink = make_sink(tmp_path, rotate_bytes="4KiB", keep=3)
    await sink.write([flowfile(json.dumps({"pad": "x" * 3000}).encode())])
    await sink.write([flowfile(json.dumps({"pad": "x" * 3000}).encode())])  # rotates
    await sink.close()
    assert names(tmp_path) == [f"archive.jsonl{n}" for n in ("", ".1", ".2", ".3", ".4")]
    assert (tmp_path / "archive.jsonl.3").read_text() == '{"id":"2"}\n'
    moved = tmp_path / "archive.jsonl.4"
    assert (moved / "notes" if kind == "folder" else moved).read_text() == "my notes\n"
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert [m for m in warnings if "archive.jsonl.4" in m] != []


async def test_a_batch_is_never_split_across_files(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, rotate_bytes="4KiB", keep=1)
    await sink.write([flowfile(b'{"first": true}')])
    big = [flowfile(json.dumps({"i": i, "pad": "y" * 500}).encode()) for i in range(20)]
    await sink.write(big)
    await sink.close()
    assert [line["payload"] for line in read_lines(tmp_path / "archive.jsonl.1")] == [
        {"first": True}
    ]
    assert [line["id"] for line in read_lines(tmp_path / "archive.jsonl")] == [f.id for f in big]


async def test_keep_zero_and_no_rotation(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, name="a", rotate_bytes="4KiB", keep=0)
    never = make_sink(tmp_path, name="b", rotate_bytes=0)
    for _ in range(10):
        batch = [flowfile(json.dumps({"pad": "z" * 1000}).encode())]
        await sink.write(batch)
        await never.write(batch)
    await sink.close()
    await never.close()
    assert names(tmp_path) == ["a.jsonl", "b.jsonl"]
    assert len(read_lines(tmp_path / "a.jsonl")) < 4
    assert len(read_lines(tmp_path / "b.jsonl")) == 10


@pytest.mark.parametrize("fsync", [True, False])
async def test_fsync_after_each_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    sink = make_sink(tmp_path, fsync=fsync)
    await sink.connect()
    opened = len(synced)  # the new file's directory entry
    assert opened == (1 if fsync else 0)
    for _ in range(3):
        await sink.write([flowfile(b"{}"), flowfile(b"{}")])
    await sink.close()
    assert len(synced) - opened == (3 if fsync else 0)


async def test_a_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    good = '{"id":"x","topic":"t","ts":"2024-05-01T12:00:00.000000Z","attributes":{},"payload":1}\n'
    path.write_text(good + '{"id":"y","topic":"t","ts":"2024-05')
    sink = make_sink(tmp_path)
    await sink.connect()
    await sink.write([flowfile(b'{"after": 1}')])
    await sink.close()
    lines = read_lines(path)
    assert len(lines) == 2
    assert lines[0]["id"] == "x"
    assert lines[1]["payload"] == {"after": 1}


async def test_a_file_of_only_a_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl"
    path.write_bytes(b"x" * 200_000)  # longer than one backwards read
    sink = make_sink(tmp_path)
    await sink.connect()
    await sink.close()
    assert path.read_bytes() == b""


async def test_failed_write_is_cut_and_retryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = make_sink(tmp_path)
    await sink.write([flowfile(b'{"n": 1}')])

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RetryableError, match="No space left on device"):
        await sink.write([flowfile(b'{"n": 2}')])
    monkeypatch.undo()
    await sink.write([flowfile(b'{"n": 3}')])
    await sink.close()
    assert [line["payload"]["n"] for line in read_lines(tmp_path / "archive.jsonl")] == [1, 3]


async def test_unwritable_path_is_retryable(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a directory")
    sink = make_sink(tmp_path, path="blocker/out.jsonl")
    with pytest.raises(RetryableError, match="cannot open"):
        await sink.connect()
    await sink.close()


async def test_a_folder_at_the_path_stops_the_sink_in_one_line(tmp_path: Path) -> None:
    # it was retried for ever ("cannot open ...: Is a directory"), a fix no retry could make
    (tmp_path / "archive.jsonl").mkdir()
    sink = make_sink(tmp_path)
    with pytest.raises(PermanentError) as caught:
        await sink.connect()
    where = tmp_path / "archive.jsonl"
    assert str(caught.value) == (
        f"{where} is a folder, not a file: set path to a file in it"
        f" (e.g. {where / 'archive.jsonl'})"
    )
    await sink.close()
    assert names(tmp_path) == ["archive.jsonl"] and names(where) == []


async def test_a_fifo_at_the_path_stops_the_sink_in_one_line(tmp_path: Path) -> None:
    """A FIFO at the path was retried for ever ("File or stream is not seekable"); it is
    opened without waiting for a reader (O_NONBLOCK): no FIFO or device holds the thread."""
    fifo = tmp_path / "archive.jsonl"
    os.mkfifo(fifo)
    sink = make_sink(tmp_path, fsync=False)
    try:
        with pytest.raises(PermanentError) as caught:
            await asyncio.wait_for(sink.connect(), 10)
    finally:
        await sink.close()
    assert str(caught.value) == (
        f"{fifo} is a FIFO (named pipe): the sink appends to, trims and rotates a regular"
        " file; set path to one (or remove what is there)"
    )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


async def test_a_device_at_the_path_stops_the_sink(tmp_path: Path) -> None:
    # /dev/null: taken as the file, a rotation would rename it (the gateway runs as root)
    sink = make_sink(tmp_path, path="/dev/null")
    with pytest.raises(PermanentError, match=r"^/dev/null is a device: "):
        await sink.connect()
    await sink.close()


async def test_close_twice_and_empty_batch(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    await sink.close()  # never opened
    await sink.connect()
    assert await sink.write([]) == []
    await sink.close()
    await sink.close()
    assert (tmp_path / "archive.jsonl").read_bytes() == b""


class TestFileContract(SinkContract):
    """The shared sink suite; the file sink is at least once (a redelivered batch repeats)."""

    exactly_once = False

    @pytest.fixture
    def make_sink(self, tmp_path: Path) -> Callable[[], Any]:
        async def make() -> FileSink:
            sink = make_sink(tmp_path, rotate_bytes="64KiB", keep=100)
            await sink.connect()
            return sink

        return make

    @pytest.fixture
    def fetch_ids(self, tmp_path: Path) -> Callable[[], list[str]]:
        def fetch() -> list[str]:
            return [
                json.loads(line)["id"]
                for path in sorted(tmp_path.glob("archive.jsonl*"))
                for line in path.read_text().splitlines()
            ]

        return fetch

    @pytest.fixture
    def bad_flowfile(self) -> Callable[[], None]:
        return lambda: None  # a file takes any bytes

    @pytest.fixture(params=["disk_full", "fsync_eio"])
    def outage(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Callable[[], Any]:
        """Inside the block the disk fails, and it recovers after it: either the file
        cannot grow (the kernel refuses the write, as on a full disk) or every fsync
        fails with EIO."""

        @contextlib.asynccontextmanager
        async def full() -> AsyncIterator[None]:
            with file_cannot_grow(tmp_path / "archive.jsonl"):
                yield

        @contextlib.asynccontextmanager
        async def down() -> AsyncIterator[None]:
            def failing(fd: int) -> None:
                raise OSError(errno.EIO, os.strerror(errno.EIO))

            with monkeypatch.context() as patch:
                patch.setattr(os, "fsync", failing)
                yield

        return full if request.param == "disk_full" else down


@contextlib.contextmanager
def file_cannot_grow(path: Path) -> Iterator[None]:
    """The file cannot grow, as on a full disk: writes fail with EFBIG instead of ENOSPC
    (SIGXFSZ ignored, or it would kill the process). The limit is the whole test
    process's, so it is lifted as soon as the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_config_keys() -> None:
    entry = registry.find("sink", "file")
    assert entry is not None
    problems = Problems()
    cfg = build_dataclass(
        entry.config,
        {"type": "file", "rotate_bytes": "512MiB", "batch": {"max_rows": 50}},
        (),
        problems,
    )
    assert not problems.items
    assert cfg.rotate_bytes == 512 * 2**20 and cfg.keep == 5 and cfg.fsync is True
    assert cfg.batch.max_rows == 50
    bad = {"type": "file", "rotate_bytes": 100, "keep": -1, "fsnyc": False, "path": "dir/"}
    problems = Problems()
    build_dataclass(entry.config, bad, ("sinks", "archive"), problems)
    assert problems.items == [
        (("sinks", "archive", "fsnyc"), "unknown key (did you mean 'fsync'?)"),
        (("sinks", "archive", "path"), "'dir/' must name a file, e.g. telemetry.jsonl"),
        (("sinks", "archive", "rotate_bytes"), "must be 0 (never rotate) or at least 4KiB"),
        (("sinks", "archive", "keep"), "must be between 0 and 1000"),
    ]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("  ", "'  ' is no path; write one, e.g. /home/pi/telemetry.jsonl"),
        (
            "~/telemetry.jsonl",
            "'~/telemetry.jsonl': ~ is not expanded (it would be a folder named '~' under"
            " gateway.data_dir); write the path in full, e.g. /home/pi/telemetry.jsonl",
        ),
        ("telemetry.jsonl\n", "'telemetry.jsonl\\n' holds a control character"),
    ],
)
def test_a_path_that_names_no_file_the_user_meant_is_refused(path: str, problem: str) -> None:
    # Each passed: a file named "  ", or under a folder named "~", in data_dir; a file name
    # ending in a line break (pasted with the path).
    entry = registry.find("sink", "file")
    assert entry is not None
    problems = Problems()
    build_dataclass(entry.config, {"type": "file", "path": path}, ("sinks", "f"), problems)
    assert problems.items == [(("sinks", "f", "path"), problem)]


# -- CSV, time rotation, a batch sent again after a restart ----------------------------


class StepClock(Clock):
    """Monotonic time that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def csv_sink(tmp_path: Path, clock: Clock | None = None, **options: Any) -> FileSink:
    entry = registry.find("sink", "file")
    assert entry is not None
    problems = Problems()
    config = build_dataclass(
        entry.config, {"type": "file", "format": "csv", **options}, (), problems
    )
    assert not problems.items, problems.items
    ctx = Context(name="table", kind="sink", data_dir=str(tmp_path))
    if clock is not None:
        ctx.clock = clock
    return FileSink(config, ctx)


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text().splitlines()))


async def test_csv_writes_a_header_and_the_configured_columns(tmp_path: Path) -> None:
    columns = ["id", "ts", {"device": "topic.1"}, {"temp": "field.temp"}, "attributes.unit"]
    sink = csv_sink(tmp_path, columns=columns)
    batch = [
        flowfile(b'{"temp": 21.5}', unit="C"),
        flowfile(b'{"temp": "a, \\"quoted\\"\\nline"}', topic="sensors/b/telemetry"),
        flowfile(b"not json", topic="x"),
        flowfile(b'{"temp": {"inner": [1, true]}}'),
    ]
    await sink.write(batch)
    await sink.close()
    path = tmp_path / "table.csv"
    rows = read_csv(path)
    assert rows[0] == ["id", "ts", "device", "temp", "attributes.unit"]
    assert rows[1] == [batch[0].id, "2024-05-01T12:00:00.123456Z", "a", "21.5", "C"]
    assert rows[2][2:4] == ["b", 'a, "quoted"\\nline'], "quoted; a line break as \\n"
    assert rows[3][2:] == ["", "", ""], "missing values are empty cells"
    assert rows[4][3] == '{"inner":[1,true]}'
    assert path.read_bytes().count(b"\n") == 5, "one line per FlowFile"
    default = csv_sink(tmp_path, path="plain.csv")
    await default.write([flowfile(b'{"a": 1}'), flowfile(b"\xff")])
    await default.close()
    plain = read_csv(tmp_path / "plain.csv")
    assert plain[0] == ["id", "topic", "ts", "payload"]
    assert plain[1][3] == '{"a": 1}' and base64.b64decode(plain[2][3]) == b"\xff"


async def test_csv_columns_that_changed_start_a_new_file(tmp_path: Path) -> None:
    first = csv_sink(tmp_path, columns=["id", "topic"])
    await first.write([flowfile(b"1")])
    await first.close()
    second = csv_sink(tmp_path, columns=["id", "payload"])
    await second.write([flowfile(b"2")])
    await second.close()
    assert read_csv(tmp_path / "table.csv.1")[0] == ["id", "topic"]
    assert [r[1] for r in read_csv(tmp_path / "table.csv")] == ["payload", "2"]


async def test_a_csv_file_on_the_path_of_a_jsonl_sink_starts_a_new_file(tmp_path: Path) -> None:
    """format: csv changed to jsonl on the same path appended JSON Lines to the CSV file
    (the other way round, the CSV header check rotated it away)."""
    first = csv_sink(tmp_path, path="out.log")
    await first.write([flowfile(b"1")])
    await first.close()
    second = make_sink(tmp_path, path="out.log", keep=0)  # kept aside all the same
    await second.write([flowfile(b"2")])
    await second.close()
    assert read_csv(tmp_path / "out.log.1")[0] == ["id", "topic", "ts", "payload"]
    assert [line["payload"] for line in read_lines(tmp_path / "out.log")] == [2]
    # and back to csv, keep: 0: the JSON Lines go aside too, not over the first CSV
    third = csv_sink(tmp_path, path="out.log", keep=0)
    await third.write([flowfile(b"3")])
    await third.close()
    assert read_csv(tmp_path / "out.log.1")[0] == ["id", "topic", "ts", "payload"]
    assert [line["payload"] for line in read_lines(tmp_path / "out.log.2")] == [2]


async def test_files_rotate_by_time_and_by_size_with_their_header(tmp_path: Path) -> None:
    clock = StepClock()
    sink = csv_sink(tmp_path, clock, rotate_interval="1h", rotate_bytes="4KiB", keep=10)
    await sink.write([flowfile(b"1")])
    clock.now += 3599
    await sink.write([flowfile(b"2")])
    assert names(tmp_path) == ["table.csv"]
    clock.now += 1
    await sink.write([flowfile(b"3")])
    assert names(tmp_path) == ["table.csv", "table.csv.1"]
    await sink.write([flowfile(b"x" * 3000), flowfile(b"y" * 3000)])  # past 4KiB
    await sink.close()
    assert names(tmp_path) == ["table.csv", "table.csv.1", "table.csv.2"]
    for name in names(tmp_path):
        assert read_csv(tmp_path / name)[0] == ["id", "topic", "ts", "payload"]
    assert [r[3] for r in read_csv(tmp_path / "table.csv.2")[1:]] == ["1", "2"]
    assert [r[3][:1] for r in read_csv(tmp_path / "table.csv")[1:]] == ["x", "y"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_a_batch_sent_again_after_a_restart_is_not_written_twice(
    tmp_path: Path, fmt: str
) -> None:
    """The gateway died after the write and before the cursor moved: the next run sends
    the batch again (a prefix of what it reads), and the sink leaves out what is there."""
    ffs = [flowfile(f'{{"n": {n}}}'.encode()) for n in range(6)]
    first = make_sink(tmp_path, format=fmt, path=f"out.{fmt}")
    await first.write(ffs[:4])
    await first.close()
    again = make_sink(tmp_path, format=fmt, path=f"out.{fmt}")
    await again.connect()
    await again.write(ffs[:2])  # the batch again, cut smaller this time
    await again.write(ffs[2:6])
    await again.write(ffs[4:5])  # after new ones, a repeat is written: at least once
    await again.close()
    text = (tmp_path / f"out.{fmt}").read_text()
    written = [ff.id for ff in ffs if ff.id in text]
    assert written == [ff.id for ff in ffs]
    assert [text.count(ff.id) for ff in ffs] == [1, 1, 1, 1, 2, 1]


async def test_a_batch_sent_again_under_a_smaller_max_rows_is_not_written_twice(
    tmp_path: Path,
) -> None:
    # Written as one batch of 12, then the gateway restarted with batch.max_rows 4: the
    # sink read back only the last 4 ids, so the first batch sent again (the first 4) was
    # not found, and all 12 were written twice.
    ffs = [flowfile(f'{{"n": {n}}}'.encode()) for n in range(12)]
    first = make_sink(tmp_path, path="out.jsonl")
    await first.write(ffs)
    await first.close()
    again = make_sink(tmp_path, path="out.jsonl", batch={"max_rows": 4})
    await again.connect()
    for start in range(0, 12, 4):
        await again.write(ffs[start : start + 4])
    await again.close()
    text = (tmp_path / "out.jsonl").read_text()
    assert [text.count(ff.id) for ff in ffs] == [1] * 12


async def test_the_ids_read_back_at_open_hold_a_bounded_share_of_memory(tmp_path: Path) -> None:
    # The tail was read whole, joined and split: three copies of up to 22 MB at every open
    # (70 MB peak for a file of 4 KB lines on a 512 MB board). Read a chunk at a time now.
    line = b'{"id":"%s","topic":"t","payload":"' + b"x" * 4000 + b'"}\n'
    (tmp_path / "out.jsonl").write_bytes(b"".join(line % f"{n:036d}".encode() for n in range(6000)))
    sink = make_sink(tmp_path, path="out.jsonl")
    tracemalloc.start()
    try:
        await sink.connect()
        await sink.write([flowfile(b"1")])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await sink.close()
    assert peak < 8 << 20, f"{peak / 1e6:.1f} MB"


def test_csv_keys_are_checked() -> None:
    entry = registry.find("sink", "file")
    assert entry is not None
    problems = Problems()
    build_dataclass(
        entry.config,
        {"type": "file", "format": "csv", "columns": ["id", "field.", {"a": "id", "b": "x"}]},
        ("sinks", "t"),
        problems,
    )
    text = [f"{'.'.join(map(str, p))}: {m}" for p, m in problems.items]
    assert "sinks.t.columns.1: 'field.' is not a column source" in text[0]
    assert any("'x' is not a column source" in t for t in text)
    problems = Problems()
    build_dataclass(entry.config, {"type": "file", "columns": ["id"]}, ("sinks", "t"), problems)
    assert problems.items[0][1] == "applies to format: csv only"
    problems = Problems()  # written as is, the header took two lines, its cells apart
    build_dataclass(
        entry.config,
        {"type": "file", "format": "csv", "columns": ["id", {"a\nb": "ts"}]},
        ("sinks", "t"),
        problems,
    )
    assert [m for _p, m in problems.items] == ["header 'a\\nb' cannot hold a line break"]
    problems = Problems()  # an empty header, then an empty line for each FlowFile
    build_dataclass(
        entry.config, {"type": "file", "format": "csv", "columns": [{}]}, ("sinks", "t"), problems
    )
    assert problems.items == [
        (("sinks", "t", "columns", 0), "names no column: write `source` or `{header: source}`")
    ]
    # a NUL crashed the sink at each restart (ValueError: embedded null byte); a directory
    # was retried for ever
    for path, message in [
        ("out\0.jsonl", "'out\\x00.jsonl' cannot hold a NUL character"),
        (".", "'.' must name a file, e.g. telemetry.jsonl"),
        ("logs/..", "'logs/..' must name a file, e.g. telemetry.jsonl"),
    ]:
        problems = Problems()
        build_dataclass(entry.config, {"type": "file", "path": path}, ("sinks", "t"), problems)
        assert [m for _p, m in problems.items] == [message]


async def test_a_csv_value_with_no_utf8_is_a_dead_letter_and_the_rest_written(
    tmp_path: Path,
) -> None:
    # A lone surrogate (a topic, or a JSON field "\ud800") raised UnicodeEncodeError out of
    # write: the sink crashed on that batch for ever, the FlowFiles behind it waiting.
    columns = ["id", {"device": "topic.1"}, {"note": "field.note"}]
    path = tmp_path / "t.csv"
    sink = make_sink(tmp_path, path=str(path), format="csv", columns=columns)
    good = [flowfile(b'{"note": "a\\u2028b\\fc"}'), flowfile(b"{}", topic="s/b")]
    bad = [flowfile(b"{}", topic="s/\udc80"), flowfile(b'{"note": "\\ud800"}')]
    batch = [good[0], bad[0], bad[1], good[1]]
    rejected = await sink.write(batch)
    await sink.close()
    assert [r.flowfile.id for r in rejected] == [ff.id for ff in bad]
    assert rejected[0].reason == "file: a value is not valid Unicode text (a lone surrogate)"
    rows = list(csv.reader(path.read_text().split("\n")[:-1]))
    assert [row[0] for row in rows] == ["id", good[0].id, good[1].id]
    # the batch again after a restart, with one more: the ones after the refused ones are
    # in the file already and left out (only the first ones were), nothing written twice
    again = make_sink(tmp_path, path=str(path), format="csv", columns=columns)
    more = flowfile(b"{}", topic="s/c")
    assert [r.flowfile.id for r in await again.write([*batch, more])] == [ff.id for ff in bad]
    await again.close()
    rows = list(csv.reader(path.read_text().split("\n")[:-1]))
    assert [row[0] for row in rows] == ["id", good[0].id, good[1].id, more.id]

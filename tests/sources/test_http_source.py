"""The http (ingest) source with a real aiohttp client: the source contract, then its own
answers (401, 413, 415, 400, 404, 405, 503 while the engine takes no input) and that
nothing of a refused request is stored."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import ssl
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.config.load import load
from gateway.config.schema import Problems, build_component
from gateway.core.component import Context
from gateway.core.flowfile import FLOWFILE_OVERHEAD, attributes_size
from gateway.sources import http as http_source
from gateway.sources.http import HttpSource
from tests.servers import free_port, make_pki
from tests.sources.contract import SourceContract, failing_commits
from tests.sources.engine_run import lines, until

pytestmark = pytest.mark.integration

TOKEN = "contract-token-0123456789"


class HttpProducer:
    """A client that POSTs each item as its own request, all at once, sending again on
    anything but a 200 (connection refused, 503), as a real client does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession()
        self.tasks: dict[str, list[asyncio.Task[None]]] = {}

    async def _post(self, tag: str, seq: int) -> None:
        body = json.dumps({"tag": tag, "seq": seq}).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        while True:
            try:
                url = f"{self.url}/ingest/in/{tag}"
                async with self.session.post(url, data=body, headers=headers) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.1)

    async def send(self, tag: str, n: int) -> None:
        self.tasks[tag] = [asyncio.ensure_future(self._post(tag, i)) for i in range(n)]

    async def confirmed(self, tag: str) -> bool | None:
        return all(t.done() for t in self.tasks[tag])

    async def close(self) -> None:
        for tasks in self.tasks.values():
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.session.close()


@pytest.fixture
def port() -> int:
    return free_port()


class TestHttpSourceContract(SourceContract):
    @pytest.fixture
    def source_keys(self, port: int) -> dict[str, Any]:
        return {"type": "http", "listen": f"127.0.0.1:{port}", "tokens": [TOKEN]}

    @pytest.fixture
    async def producer(self, port: int) -> HttpProducer:
        return HttpProducer(f"http://127.0.0.1:{port}")

    @pytest.fixture
    def topic_of(self) -> Callable[[str, int], str]:
        return lambda tag, seq: f"in/{tag}"


def make_source(**keys: Any) -> HttpSource:
    problems = Problems()
    config = build_component("source", {"type": "http", **keys}, ("sources", "api"), problems)
    assert problems.items == []
    return HttpSource(config, Context("api", "source"))


@pytest.fixture
async def ingest_with(port: int, run_engine: Any) -> AsyncIterator[Callable[..., Any]]:
    """`ingest = await ingest_with(**keys)`: then `await ingest(path, body, headers)` ->
    (status, JSON answer, headers) against a source with those keys in a running engine
    (`ingest.engine`); out.jsonl holds what was stored. A body of bytes is sent as it is,
    an async iterator of bytes chunked (no Content-Length), anything else as JSON."""
    session = aiohttp.ClientSession()

    async def start(**more: Any) -> Callable[..., Any]:
        keys = {"type": "http", "listen": f"127.0.0.1:{port}", "tokens": [TOKEN], **more}
        engine = await run_engine(keys)
        await until(lambda: engine.sources["rows"].state == "running")  # listening

        async def call(
            path: str,
            body: Any = None,
            headers: dict[str, str] | None = None,
            method: str = "POST",
        ) -> tuple[int, Any, Any]:
            sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            sent.update(headers or {})
            data = body if isinstance(body, bytes | AsyncIterator) else json.dumps(body).encode()
            async with session.request(
                method, f"http://127.0.0.1:{port}{path}", data=data, headers=sent
            ) as answer:
                text = await answer.read()
                assert text.count(b"\n") <= 1  # one line
                return answer.status, json.loads(text), answer.headers

        call.engine = engine  # type: ignore[attr-defined]
        return call

    yield start
    await session.close()


@pytest.fixture
async def ingest(ingest_with: Any) -> Callable[..., Any]:
    """`await ingest(path, body, headers)` -> (status, JSON answer) against a source in
    a running engine (max_body 1KiB, prefix api/); out.jsonl holds what was stored."""
    call = await ingest_with(
        tokens=["another-token-0123456789", TOKEN], max_body="1KiB", prefix="api/"
    )

    async def two(*args: Any, **keys: Any) -> tuple[int, Any]:
        status, answer, _ = await call(*args, **keys)
        return status, answer

    two.engine = call.engine  # type: ignore[attr-defined]
    return two


async def test_the_engine_commits_its_requests_without_lingering(ingest_with: Any) -> None:
    ingest = await ingest_with()
    assert ingest.engine.ingest.waiters == {"rows"}  # see Ingest.take


async def test_an_object_and_an_array_are_stored_and_answered_with_their_ids(
    ingest: Any, tmp_path: Path
) -> None:
    status, answer = await ingest("/ingest/plant/line%201/temp", {"temp": 21.5})
    assert status == 200 and answer["stored"] == 1
    # the answer came after the commit: the record is in the store's sink file by now
    await until(lambda: len(lines(tmp_path)) == 1)
    (record,) = lines(tmp_path)
    assert record["id"] == answer["ids"][0]
    assert record["topic"] == "api/plant/line 1/temp"
    assert record["payload"] == {"temp": 21.5}
    status, answer = await ingest("/ingest/plant/b", [{"i": 1}, {"i": 2}, {"i": 3}])
    assert status == 200 and answer["stored"] == 3
    await until(lambda: len(lines(tmp_path)) == 4)
    assert [r["payload"] for r in lines(tmp_path)[1:]] == [{"i": 1}, {"i": 2}, {"i": 3}]
    assert (await ingest("/ingest/plant/b", []))[0] == 200


async def test_refusals_store_nothing(ingest: Any, tmp_path: Path) -> None:
    cases = [
        (401, "/ingest/a", {"x": 1}, {"Authorization": "Bearer wrong-token-0123456789"}),
        (401, "/ingest/a", {"x": 1}, {"Authorization": ""}),
        (401, "/ingest/a", {"x": 1}, {"Authorization": f"Basic {TOKEN}"}),
        (413, "/ingest/a", {"x": "y" * 2000}, {}),
        (415, "/ingest/a", {"x": 1}, {"Content-Type": "text/plain"}),
        (400, "/ingest/a", b"{not json", {}),
        (400, "/ingest/a", b"NaN", {}),
        (400, "/ingest/a", [{"x": 1}, 2], {}),  # an array with a non-object: none stored
        (400, "/ingest/a", "text", {}),
        (400, "/ingest/a/%2B/b", {"x": 1}, {}),
        (400, "/ingest/a/%23", {"x": 1}, {}),
        (400, "/ingest/", {"x": 1}, {}),
        (400, "/ingest/a%00b", {"x": 1}, {}),
        # control characters were taken into the topic, raw (a newline in the log line)
        (400, "/ingest/a%0Ab", {"x": 1}, {}),
        (400, "/ingest/a%09b", {"x": 1}, {}),
        (400, "/ingest/a%1Bb", {"x": 1}, {}),
        (400, "/ingest/a%7Fb", {"x": 1}, {}),
        (400, "/ingest/a%C2%85b", {"x": 1}, {}),
        # Unicode non-characters were taken, and an MQTT sink dead-lettered them
        (400, "/ingest/a%EF%BF%BFb", {"x": 1}, {}),
        (400, "/ingest/a%EF%B7%90b", {"x": 1}, {}),
        # no UTF-8 once decoded: stored on the topic the escape was written as, "a%FFb"
        (400, "/ingest/a%FFb", {"x": 1}, {}),
        (400, "/ingest/a%ED%A0%80", {"x": 1}, {}),
        (404, "/other", {"x": 1}, {}),
    ]
    for status, path, body, headers in cases:
        got, answer = await ingest(path, body, headers)
        assert (got, path) == (status, path)
        assert isinstance(answer["error"], str) and answer["error"]
        assert TOKEN not in answer["error"]
    got, answer = await ingest("/ingest/a", None, method="GET")
    assert got == 405
    await asyncio.sleep(0.2)
    assert lines(tmp_path) == []
    status = ingest.engine.snapshot().sources["rows"].to_json()
    assert status["refused"]["401"] == 3 and status["refused"]["400"] == 17


async def test_503_with_retry_after_while_the_engine_takes_no_input(port: int) -> None:
    source = make_source(listen=f"127.0.0.1:{port}", tokens=[TOKEN])
    source.ctx.accepting = lambda: False  # the engine's gate: store full, overflow: block
    await source.connect()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/ingest/a",
                json={"x": 1},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as answer,
        ):
            assert answer.status == 503
            assert answer.headers["Retry-After"] == "1"
    finally:
        await source.close()


async def test_a_request_not_taken_yet_is_answered_503_when_the_source_closes(
    port: int,
) -> None:
    source = make_source(listen=f"127.0.0.1:{port}", tokens=[TOKEN])
    await source.connect()
    async with aiohttp.ClientSession() as session:
        post = asyncio.ensure_future(
            session.post(
                f"http://127.0.0.1:{port}/ingest/a",
                json={"x": 1},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        )
        await until(lambda: bool(source._waiting))
        await source.close()
        answer = await post
        assert answer.status == 503
        assert "nothing of it is stored" in (await answer.json())["error"]
        answer.release()
    with contextlib.suppress(Exception):
        await source.close()


def test_keys_are_checked() -> None:
    def problems(**keys: Any) -> list[str]:
        found = Problems()
        build_component("source", {"type": "http", **keys}, ("sources", "api"), found)
        return [f"{'.'.join(map(str, p))}: {m}" for p, m in found.items]

    assert any("tokens" in p for p in problems())
    assert problems(tokens=[]) == [
        "sources.api.tokens: the ingest endpoint needs at least one bearer token"
    ]
    assert problems(tokens=["short"]) == [
        "sources.api.tokens.0: a token needs at least 16 characters and no spaces"
    ]
    assert "prefix" in problems(tokens=[TOKEN], prefix="a/#/")[0]
    assert "U+001B, a control character" in problems(tokens=[TOKEN], prefix="a\x1b/")[0]
    assert "listen" in problems(tokens=[TOKEN], listen="nohost")[0]


def of_size(n: int, tag: str = "x") -> bytes:
    """A JSON object of exactly `n` bytes: {"tag":"x","pad":"yyy..."}."""
    head = json.dumps({"tag": tag, "pad": ""}, separators=(",", ":")).encode()
    body = head[:-2] + b"y" * (n - len(head)) + b'"}'
    assert len(body) == n
    return body


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    """`body` in two chunks: sent with Transfer-Encoding: chunked, no Content-Length."""
    yield body[:10]
    yield body[10:]


def tags(tmp_path: Path) -> Counter[str]:
    return Counter(r["payload"]["tag"] for r in lines(tmp_path))


async def test_a_body_of_max_body_bytes_is_taken_one_byte_more_is_413(
    ingest_with: Any, tmp_path: Path
) -> None:
    ingest = await ingest_with(max_body="1KiB")
    for send in (lambda b: b, chunked):  # with a Content-Length, and chunked without
        status, answer, _ = await ingest("/ingest/a", send(of_size(1024, "at")))
        assert status == 200, answer
        status, answer, _ = await ingest("/ingest/a", send(of_size(1025, "over")))
        assert status == 413 and "1024 bytes" in answer["error"]
    await until(lambda: len(lines(tmp_path)) == 2)
    await asyncio.sleep(0.2)
    assert tags(tmp_path) == Counter({"at": 2})
    assert [len(json.dumps(r["payload"], separators=(",", ":"))) for r in lines(tmp_path)] == [
        1024,
        1024,
    ]


async def test_a_body_arriving_in_several_pieces_is_read_whole(
    ingest_with: Any, tmp_path: Path
) -> None:
    # A large POST comes in several TCP segments: the whole body is read, not the first piece.
    body = of_size(60_000, "slow")

    async def trickle() -> AsyncIterator[bytes]:
        for at in range(0, len(body), 20_000):
            yield body[at : at + 20_000]
            await asyncio.sleep(0.05)

    ingest = await ingest_with()
    status, answer, _ = await ingest("/ingest/a", trickle())
    assert status == 200, answer
    await until(lambda: len(lines(tmp_path)) == 1)
    assert tags(tmp_path) == Counter({"slow": 1})


async def test_max_requests_waiting_answers_503_and_the_next_after_them_is_taken(
    ingest_with: Any, tmp_path: Path
) -> None:
    ingest = await ingest_with(max_requests=2)
    engine = ingest.engine
    source = engine.sources["rows"].source
    heal = failing_commits(engine)  # the requests wait for a commit that does not come
    try:
        waiting = [
            asyncio.ensure_future(ingest("/ingest/a", [{"tag": "w1"}, {"tag": "w1"}])),
            asyncio.ensure_future(ingest("/ingest/a", {"tag": "w2"})),
        ]
        await until(lambda: len(source._unanswered) == 2)
        refused = [{"tag": "late"}, {"tag": "late"}, {"tag": "late"}]
        status, answer, headers = await ingest("/ingest/a", refused)
        assert status == 503 and headers["Retry-After"] == "1"
        assert answer["error"] == "2 requests are being read or waiting already"
        assert not any(t.done() for t in waiting)
        assert lines(tmp_path) == []
    finally:
        heal()
    assert [(await t)[0] for t in waiting] == [200, 200]
    assert source._unanswered == set() and source._in_flight == 0
    status, answer, _ = await ingest("/ingest/a", refused)  # sent again: taken whole
    assert status == 200 and answer["stored"] == 3
    await until(lambda: len(lines(tmp_path)) == 6)
    await asyncio.sleep(0.2)
    assert tags(tmp_path) == Counter({"w1": 2, "w2": 1, "late": 3})


async def test_bodies_being_received_count_among_max_requests(
    ingest_with: Any, port: int, tmp_path: Path
) -> None:
    """Each holds up to max_body bytes until it is in: any number of clients sending at
    once held that many (150 bodies of 1MiB on their way: 150MB more)."""
    ingest = await ingest_with(max_requests=2)
    source = ingest.engine.sources["rows"].source
    head = (
        "POST /ingest/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    senders = []
    for _ in range(2):  # half a body each, the rest not yet
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b'{"tag": "slow"' + b" " * 36)
        await writer.drain()
        senders.append((reader, writer))
    await until(lambda: source._reading == 2)
    status, answer, headers = await ingest("/ingest/a", {"tag": "late"})
    assert status == 503 and headers["Retry-After"] == "1"
    assert answer["error"] == "2 requests are being read or waiting already"
    for reader, writer in senders:  # the rest of each body: both stored
        writer.write(b" " * 49 + b"}")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
    status, answer, _ = await ingest("/ingest/a", {"tag": "late"})
    assert status == 200 and source._reading == 0
    await until(lambda: len(lines(tmp_path)) == 3)
    assert tags(tmp_path) == Counter({"slow": 2, "late": 1})


async def test_a_body_that_stops_coming_is_answered_408_and_frees_its_place(
    ingest_with: Any, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client gone mid-body without closing (a lost link) held its place among
    max_requests for good: that many such clients, and every request was 503."""
    monkeypatch.setattr(http_source, "BODY_IDLE", 0.3)
    ingest = await ingest_with(max_requests=1)
    source = ingest.engine.sources["rows"].source
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        "POST /ingest/gone HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    await writer.drain()
    async with asyncio.timeout(30):  # a guard: it sends nothing more, ever
        status_line = await reader.readline()
        # the answer's own length: the server may keep the connection for a while after
        head = (await reader.readuntil(b"\r\n\r\n")).decode().lower().splitlines()
        length = next(int(h.split(":")[1]) for h in head if h.startswith("content-length:"))
        body = await reader.readexactly(length)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {"error": "no byte of the body came for 0.3s"}
    assert source._reading == 0
    status, answer, _ = await ingest("/ingest/a", {"tag": "next"})
    assert status == 200 and answer["stored"] == 1
    await until(lambda: len(lines(tmp_path)) == 1)
    assert tags(tmp_path) == Counter({"next": 1})


async def test_max_in_flight_bytes_waiting_answers_503_and_the_next_after_them_is_taken(
    ingest_with: Any, tmp_path: Path
) -> None:
    ingest = await ingest_with(max_in_flight="2KiB", max_body="2KiB")
    engine = ingest.engine
    source = engine.sources["rows"].source
    each = len("a") + attributes_size({}) + FLOWFILE_OVERHEAD  # a FlowFile besides its content
    heal = failing_commits(engine)
    try:
        first = asyncio.ensure_future(ingest("/ingest/a", of_size(1000, "first")))
        await until(lambda: source._in_flight == 1000 + each)
        big = b"[" + b",".join([of_size(250, "big")] * 3) + b"]"  # 754 bytes, 3 FlowFiles
        status, answer, headers = await ingest("/ingest/a", big)
        assert status == 503 and headers["Retry-After"] == "1"
        assert answer["error"] == "2048 bytes are waiting already"
        small = asyncio.ensure_future(ingest("/ingest/a", of_size(500, "small")))  # fits
        await until(lambda: source._in_flight == 1500 + 2 * each)
        assert not first.done() and not small.done()
        assert lines(tmp_path) == []
    finally:
        heal()
    assert [(await first)[0], (await small)[0]] == [200, 200]
    assert source._in_flight == 0
    status, answer, _ = await ingest("/ingest/a", big)
    assert status == 200 and answer["stored"] == 3
    await until(lambda: len(lines(tmp_path)) == 5)
    await asyncio.sleep(0.2)
    assert tags(tmp_path) == Counter({"first": 1, "small": 1, "big": 3})


async def test_a_body_of_tiny_objects_is_bounded_by_their_memory_not_its_length(
    ingest_with: Any, tmp_path: Path
) -> None:
    """1MiB of `{}` is 350k FlowFiles, ~90MB in memory: over the default max_in_flight
    (16MiB) it is refused 413 in one line, nothing stored; an array that fits is stored
    and answered with its first and last id, not a list of thousands."""
    ingest = await ingest_with()
    tiny = b"[" + b",".join([b"{}"] * ((1 << 20) // 3)) + b"]"
    status, answer, _ = await ingest("/ingest/a", tiny)
    assert status == 413
    assert answer["error"].startswith("the body's 349525 objects would take ")
    assert answer["error"].endswith(
        "more than max_in_flight (16777216): send fewer objects per request"
    )
    many = [{"i": i} for i in range(5000)]  # 5000 FlowFiles, ~1.4MB in memory: fits
    status, answer, _ = await ingest("/ingest/a", many)
    assert status == 200 and answer["stored"] == 5000 and "ids" not in answer
    await until(lambda: len(lines(tmp_path)) == 5000)
    stored = lines(tmp_path)
    assert (answer["first"], answer["last"]) == (stored[0]["id"], stored[-1]["id"])
    assert [r["payload"] for r in stored] == many
    status, answer, _ = await ingest("/ingest/a", many[:100])  # up to 100: every id
    assert status == 200 and len(answer["ids"]) == 100


async def test_a_long_topic_is_refused_in_one_json_line_not_aiohttp_plain_text(
    ingest: Any, tmp_path: Path
) -> None:
    """Over aiohttp's own request line limit (8190 bytes) the answer was its plain-text
    400 echoing the path; a topic over 4096 bytes is refused by the source, in JSON."""
    for path in ("/ingest/" + "t" * 10_000, "/ingest/" + "%C3%A9" * 2100):  # é: 2 bytes
        status, answer = await ingest(path, {"x": 1})
        assert status == 414 and answer == {"error": "the topic is longer than 4096 bytes"}
    status, answer = await ingest("/ingest/" + "t" * 4092, {"x": 1})  # api/ + 4092: 4096
    assert status == 200 and answer["stored"] == 1
    await until(lambda: len(lines(tmp_path)) == 1)


async def test_a_lone_surrogate_is_refused_in_an_object_as_in_an_array(
    ingest: Any, tmp_path: Path
) -> None:
    """It was stored from an object body and refused 400 from an array."""
    error = {"error": "the body holds a lone surrogate \\ud800: not valid Unicode"}
    for body in (b'{"a":"\\ud800"}', b'[{"a":"\\ud800"}]', b'{"a":{"b":["\\ud800"]}}'):
        assert await ingest("/ingest/a", body) == (400, error)
    for body in (b'{"a":"\\ud83d\\ude00"}', b'[{"a":"\\ud83d\\ude00"}]'):  # a pair: one emoji
        status, answer = await ingest("/ingest/a", body)
        assert status == 200 and answer["stored"] == 1
    await until(lambda: len(lines(tmp_path)) == 2)
    assert [r["payload"] for r in lines(tmp_path)] == [{"a": "\U0001f600"}] * 2


async def test_a_number_beyond_a_double_is_refused_not_stored_as_infinity(
    ingest: Any, tmp_path: Path
) -> None:
    """An array's object was stored as {"a":Infinity}, which is no JSON."""
    error = {"error": "the body is not JSON: the number 1e999 is beyond the range of a double"}
    for body in (b'[{"a":1e999}]', b'{"a":1e999}', b'[{"a":{"b":[1e999]}}]'):
        assert await ingest("/ingest/a", body) == (400, error)
    status, answer = await ingest("/ingest/a", b'[{"a":1e308,"b":-2.5e-320}]')
    assert status == 200 and answer["stored"] == 1
    await until(lambda: len(lines(tmp_path)) == 1)
    assert [r["payload"] for r in lines(tmp_path)] == [{"a": 1e308, "b": -2.5e-320}]


async def test_a_compressed_body_is_taken_or_refused_in_one_json_line(
    ingest: Any, tmp_path: Path
) -> None:
    """A broken gzip body was answered 500 in plain text, and a Content-Encoding aiohttp
    lacks (br, zstd) 400 in plain text, each with an ERROR traceback in the log."""
    one = json.dumps({"x": 1}).encode()
    assert (await ingest("/ingest/a", gzip.compress(one), {"Content-Encoding": "gzip"}))[0] == 200
    assert (await ingest("/ingest/a", zlib.compress(one), {"Content-Encoding": "deflate"}))[
        0
    ] == 200
    # max_body (1KiB) holds for what the body decompresses to
    big = json.dumps({"x": "y" * 2000}).encode()
    status, answer = await ingest("/ingest/a", gzip.compress(big), {"Content-Encoding": "gzip"})
    assert (status, answer) == (413, {"error": "the body is larger than 1024 bytes"})
    for body in (b"not gzip at all", gzip.compress(one)[:-6], gzip.compress(one) + b"junk"):
        status, answer = await ingest("/ingest/a", body, {"Content-Encoding": "gzip"})
        assert status == 400 and answer["error"].startswith("the body is not valid gzip: ")
    # a body of two gzip members (`cat a.gz b.gz`) is the two decoded one after the other:
    # only the first was read, and its part of the array answered 200
    two = gzip.compress(b'[{"x": 2},') + gzip.compress(b'{"x": 3}]')
    assert (await ingest("/ingest/a", two, {"Content-Encoding": "gzip"}))[0] == 200
    for coding in ("br", "zstd", "compress"):
        status, answer = await ingest("/ingest/a", b"\x00\x01", {"Content-Encoding": coding})
        assert (status, answer) == (
            415,
            {"error": f"Content-Encoding must be gzip, deflate or none, not {coding!r}"},
        )
    await until(lambda: len(lines(tmp_path)) == 4)
    await asyncio.sleep(0.2)
    assert [r["payload"] for r in lines(tmp_path)] == [{"x": 1}, {"x": 1}, {"x": 2}, {"x": 3}]


async def test_a_request_that_is_no_http_or_a_client_gone_is_no_error_in_the_log(
    ingest: Any, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Any client could write ERROR lines with aiohttp's tracebacks into the gateway's log:
    a malformed header or chunk ("Error handling request"), or a connection closed before
    its body came (ConnectionResetError out of the source's read)."""
    auth = f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
    requests = [
        b"POST /ingest/a HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"POST /ingest/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + auth
        + b"\r\nzz\r\n{}\r\n0\r\n\r\n",
    ]
    for raw in requests:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        answer = await reader.read()  # aiohttp answers 400 and closes
        assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 ")
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /ingest/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n" + auth + b"\r\n{}")
    await writer.drain()
    await asyncio.sleep(0.2)  # the source waits for the rest of the body
    writer.close()
    await asyncio.sleep(0.3)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
    # the source still answers
    assert (await ingest("/ingest/a", {"x": 1}))[0] == 200


async def test_one_object_holding_more_than_max_in_flight_on_its_own_is_413(
    ingest_with: Any, tmp_path: Path
) -> None:
    """An array of one such object was refused 413, the object alone taken: max_in_flight
    held no bound on a request that came while nothing else waited."""
    ingest = await ingest_with(max_in_flight="1KiB", max_body="4KiB")
    big = of_size(2000, "big")
    status, answer, _ = await ingest("/ingest/a", big)
    assert status == 413
    assert answer["error"].endswith(
        "more than max_in_flight (1024): send fewer objects per request"
    )
    status, _answer, _ = await ingest("/ingest/a", b"[" + big + b"]")
    assert status == 413
    status, _answer, _ = await ingest("/ingest/a", of_size(500, "small"))
    assert status == 200
    await until(lambda: len(lines(tmp_path)) == 1)
    assert tags(tmp_path) == Counter({"small": 1})


async def test_a_request_not_taken_within_ack_timeout_is_withdrawn(port: int) -> None:
    """While the engine took nothing (its intake held up by failing store commits), each
    request answered 503 after ack_timeout stayed waiting, its body in memory and no
    longer counted: without bound while it lasted, and all of it stored later (twice,
    once its clients sent it again)."""
    source = make_source(listen=f"127.0.0.1:{port}", tokens=[TOKEN], ack_timeout="200ms")
    await source.connect()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/ingest/a",
                json={"x": 1},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as answer,
        ):
            assert answer.status == 503
            assert "nothing of it is stored" in (await answer.json())["error"]
        assert not source._waiting and source._in_flight == 0
        reading = asyncio.ensure_future(source.read())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not reading.done(), "nothing to hand over"
        reading.cancel()
    finally:
        await source.close()


async def test_a_renewed_certificate_is_served_after_a_reload(tmp_path: Path) -> None:
    """The source's config unchanged, a reload did not restart it: a certificate renewed
    over its files was never served, and clients were refused once the old one expired.
    Renewed as the console's is, on the listener that serves, `changes` saying so."""
    first, renewed = make_pki(tmp_path / "first"), make_pki(tmp_path / "renewed")
    cert, key = tmp_path / "ingest.crt", tmp_path / "ingest.key"
    cert.write_bytes(first.server_cert_file.read_bytes())
    key.write_bytes(first.server_key_file.read_bytes())
    port, web_port = free_port(), free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(
        f"gateway: {{id: gw, data_dir: '{tmp_path / 'data'}'}}\n"
        f"sources:\n  api: {{type: http, listen: '127.0.0.1:{port}', tokens: [{TOKEN}],"
        f" tls_cert: '{cert}', tls_key: '{key}'}}\n"
        "routes:\n  all: {match: '#', sinks: [out]}\n"
        "sinks:\n  out: {type: file}\n"
        f"web: {{listen: '127.0.0.1:{web_port}'}}\n"
    )
    gateway = Gateway(load(path, environ={}), str(path))
    task = asyncio.create_task(gateway.run())

    async def post(ca: Path) -> int:
        context = ssl.create_default_context(cafile=str(ca))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"https://127.0.0.1:{port}/ingest/a",
                json={"x": 1},
                headers={"Authorization": f"Bearer {TOKEN}"},
                ssl=context,
            ) as answer,
        ):
            return answer.status

    try:
        async with asyncio.timeout(10):
            await gateway.ready.wait()
        await until(lambda: gateway._running is not None
                    and gateway._running.sources["api"].state == "running")  # fmt: skip
        assert await post(first.ca_file) == 200
        cert.write_bytes(renewed.server_cert_file.read_bytes())
        key.write_bytes(renewed.server_key_file.read_bytes())
        outcome, errors, changes = await gateway.apply(load(path, environ={}))
        assert (outcome, errors) == ("applied", [])
        assert "source api certificate renewed (tls_cert and tls_key read again)" in changes
        assert await post(renewed.ca_file) == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post(first.ca_file)
    finally:
        gateway.stop()
        await task

"""The rest (poll) source against a real HTTP API (tests/http_receiver.py serves the JSON
bodies POSTed to a path back on a GET of it): the source contract (a snapshot poll: at
least once), then the select paths, topic templates, 4xx and bad answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config.schema import Problems, build_component
from gateway.core.clock import Clock
from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.engine import pipeline
from gateway.sources import rest
from gateway.sources.rest import PAGE, RestSource, parse_select, select
from tests import servers
from tests.sources.contract import SourceContract
from tests.sources.engine_run import stop, until

pytestmark = pytest.mark.integration


def post(receiver: servers.HttpReceiver, path: str, body: Any) -> None:
    receiver._call("POST", path, body)


class ApiProducer:
    """Adds items to the API's answer: a poll sees them from then on (never confirmed:
    an API does not learn what was stored)."""

    def __init__(self, receiver: servers.HttpReceiver) -> None:
        self.receiver = receiver

    async def send(self, tag: str, n: int) -> None:
        for i in range(n):
            post(self.receiver, "/feed", {"tag": tag, "seq": i, "device": f"d{i % 2}"})

    async def confirmed(self, tag: str) -> bool | None:
        return None

    async def close(self) -> None:
        pass


class TestRestSourceContract(SourceContract):
    at_least_once = True  # every poll emits the API's whole answer again

    @pytest.fixture
    def source_keys(self, http_receiver: servers.HttpReceiver) -> dict[str, Any]:
        return {
            "type": "rest",
            "url": f"{http_receiver.url}/feed",
            "interval": "100ms",
            "select": "$.data.readings[*]",
            "topic": "api/{device}/{tag}",
        }

    @pytest.fixture
    def producer(self, http_receiver: servers.HttpReceiver) -> ApiProducer:
        return ApiProducer(http_receiver)

    @pytest.fixture
    def topic_of(self) -> Callable[[str, int], str]:
        return lambda tag, seq: f"api/d{seq % 2}/{tag}"


def make_source(**keys: Any) -> RestSource:
    problems = Problems()
    config = build_component("source", {"type": "rest", **keys}, ("sources", "api"), problems)
    assert problems.items == []
    return RestSource(config, Context("api", "source"))


def test_select_paths() -> None:
    doc = {
        "data": {"readings": [{"v": 1}, {"v": 2}]},
        "sites": [{"meters": [1, 2]}, {"meters": [3]}, {"x": 0}],
        "odd key": {"a": 1},
    }
    assert select(doc, parse_select("data.readings")) == [{"v": 1}, {"v": 2}]
    assert select(doc, parse_select("$.data.readings[*]")) == [{"v": 1}, {"v": 2}]
    assert select(doc, parse_select("data.readings[-1]")) == [{"v": 2}]
    assert select(doc, parse_select("sites[*].meters")) == [1, 2, 3]
    assert select(doc, parse_select('["odd key"].a')) == [1]
    assert select(doc, parse_select("")) == [doc]
    assert select(doc, parse_select("$")) == [doc]
    assert select(doc, parse_select("missing.path")) == []
    assert select([1, [2, 3]], parse_select("[*]")) == [1, [2, 3]]
    with pytest.raises(ValueError, match="cannot read"):
        parse_select("data..x")
    with pytest.raises(ValueError, match="cannot read"):
        parse_select("items[x]")


async def test_items_topics_and_rejects(http_receiver: servers.HttpReceiver) -> None:
    post(http_receiver, "/api", {"dev": "a/b", "v": 1})
    post(http_receiver, "/api", {"v": 2})
    source = make_source(
        url=f"{http_receiver.url}/api", select="data.readings", topic="r/{dev}", bearer_token="t"
    )
    await source.connect()
    try:
        first, second = await source.poll_messages()
    finally:
        await source.close()
    assert first.flowfile.topic == "r/a_b" and first.reject is None
    assert json.loads(first.flowfile.content) == {"dev": "a/b", "v": 1}
    assert second.reject is not None and "no field 'dev'" in second.reject
    (request,) = [r for r in http_receiver.received() if r["path"] == "/api"][:1]
    assert request["method"] == "POST"  # the GETs are not stored; auth checked below


async def test_a_4xx_is_counted_and_logged_once_a_5xx_is_retried(
    http_receiver: servers.HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    source = make_source(url=f"{http_receiver.url}/api")
    await source.connect()
    try:
        http_receiver.control(404)
        with caplog.at_level(logging.WARNING):
            assert await source.poll_messages() == []
            assert await source.poll_messages() == []
        assert source.status()["failures"] == 2
        assert source.status()["last_status"] == "answered 404 Not Found"
        assert len([r for r in caplog.records if "404" in r.getMessage()]) == 1
        http_receiver.control(503)
        with pytest.raises(RetryableError, match="503"):
            await source.poll_messages()
        http_receiver.control(200)
        assert len(await source.poll_messages()) == 1  # the whole (empty) answer
        assert source.status()["last_status"] is None
    finally:
        await source.close()


async def test_a_large_answer_is_read_whole(http_receiver: servers.HttpReceiver) -> None:
    # ~600 KB comes in several pieces: all of them are read, not only the first
    for i in range(300):
        post(http_receiver, "/large", {"seq": i, "pad": "x" * 2000})
    source = make_source(url=f"{http_receiver.url}/large", select="data.readings")
    await source.connect()
    try:
        messages = await source.poll_messages()
    finally:
        await source.close()
    assert source.status()["last_status"] is None
    assert [json.loads(m.flowfile.content)["seq"] for m in messages] == list(range(300))


async def test_nan_and_infinity_in_an_answer_become_null(
    http_receiver: servers.HttpReceiver,
) -> None:
    # they are no JSON (the receiver sends them as Python's json does): the items' content
    # was {"v":NaN}, which no JSON reader takes
    for v in (float("nan"), float("-inf"), 1.5):
        post(http_receiver, "/nan", {"v": v})
    source = make_source(url=f"{http_receiver.url}/nan", select="data.readings")
    await source.connect()
    try:
        messages = await source.poll_messages()
    finally:
        await source.close()
    assert [m.flowfile.content for m in messages] == [b'{"v":null}', b'{"v":null}', b'{"v":1.5}']


async def test_a_number_beyond_a_double_becomes_null_as_infinity_does(
    http_receiver: servers.HttpReceiver,
) -> None:
    # read as infinity, it was written back as {"v":Infinity}: no JSON
    http_receiver.control(203, body='{"v":1e999,"w":[-2e308,1e308]}')
    source = make_source(url=f"{http_receiver.url}/big")
    await source.connect()
    try:
        (message,) = await source.poll_messages()
    finally:
        http_receiver.control(200)
        await source.close()
    assert message.flowfile.content == b'{"v":null,"w":[null,1e+308]}'


async def test_a_lone_surrogate_in_an_answer_does_not_crash_the_source(
    http_receiver: servers.HttpReceiver,
) -> None:
    # "\ud800" is valid JSON but no UTF-8: the source crashed on every poll, nothing stored
    post(http_receiver, "/sur", {"dev": "a\ud800", "v": 1})  # sent and served escaped
    post(http_receiver, "/sur", {"dev": "b", "v": 2})
    source = make_source(url=f"{http_receiver.url}/sur", select="data.readings", topic="r/{dev}")
    await source.connect()
    try:
        first, second = await source.poll_messages()
    finally:
        await source.close()
    assert json.loads(first.flowfile.content) == {"dev": "a\ud800", "v": 1}
    assert first.flowfile.topic == "r/a\\ud800" and first.reject is None
    assert second.flowfile.topic == "r/b"


async def test_an_unreachable_api_is_retryable() -> None:
    source = make_source(url=f"http://127.0.0.1:{servers.free_port()}/x")
    await source.connect()
    try:
        with pytest.raises(RetryableError, match="failed"):
            await source.poll_messages()
    finally:
        await source.close()


async def test_an_api_that_never_answers_is_a_timeout_said_so() -> None:
    # a listener that takes the connection and never answers (the log said "failed: ")
    async with servers.raw_listener() as port:
        source = make_source(url=f"http://127.0.0.1:{port}/x", timeout="200ms")
        await source.connect()
        try:
            with pytest.raises(RetryableError, match=r"did not answer within 0\.2s"):
                await source.poll_messages()
        finally:
            await source.close()


def test_keys_are_checked(tmp_path: Path) -> None:
    def problems(**keys: Any) -> list[str]:
        found = Problems()
        build_component("source", {"type": "rest", **keys}, ("sources", "api"), found)
        return [f"{'.'.join(map(str, p))}: {m}" for p, m in found.items]

    assert problems(url="ftp://x") == ["sources.api.url: must start with http:// or https://"]
    assert "select" in problems(url="http://h/x", select="a[")[0]
    assert "topic" in problems(url="http://h/x", topic="r/{a.b}")[0]
    # a lone brace: one line of ours, not Python's format-string error text
    assert problems(url="http://h/x", topic="r/{dev") == [
        "sources.api.topic: 'r/{dev' has a lone '{': a field is written {name},"
        " a literal brace {{ or }}"
    ]
    assert problems(url="http://h/x", topic="r/dev}") == [
        "sources.api.topic: 'r/dev}' has a lone '}': a field is written {name},"
        " a literal brace {{ or }}"
    ]
    assert problems(url="http://h/x", topic="r/{{dev}}") == []
    assert "username" in problems(url="http://h/x", username="u")[0]
    assert "cannot hold ':'" in problems(url="http://h/x", username="a:b", password="p")[0]
    # a template whose own text holds a wildcard would dead-letter every item
    assert problems(url="http://h/x", topic="a/#/{dev}") == [
        "sources.api.topic: 'a/#/{dev}': a topic name must not contain the wildcards '+' or '#'"
    ]
    assert "topic" in problems(url="http://h/x", topic="a/+")[0]
    assert problems(url="http://h/x", topic="a/{dev}/{source}") == []
    assert problems(url="http://h:99999/x") == [
        "sources.api.url: the port must be a number from 1 to 65535"
    ]
    assert problems(url="http:///x") == ["sources.api.url: names no host"]
    # both were a ValueError traceback from check-config
    assert problems(url="http://[::1/x") == [
        "sources.api.url: is not a valid URL: Invalid IPv6 URL"
    ]
    assert problems(url="http://[zz]/x") == [
        "sources.api.url: is not a valid URL: 'zz' does not appear to be an IPv4 or IPv6 address"
    ]
    assert problems(url="http://[::1]:8080/x") == []
    # it was ignored: the API was polled in plain HTTP
    assert problems(url="http://h/x", ca_file=str(tmp_path)) == [
        "sources.api.ca_file: needs TLS: use an https:// URL"
    ]
    assert problems(url="http://h/x", headers={"X-Key": "secret\nmore"}) == [
        "sources.api.headers.X-Key: a header value cannot hold a line break or control character"
    ]
    assert problems(url="http://h/x", headers={"bad header": "v"}) == [
        "sources.api.headers.bad header: is not a valid HTTP header name"
    ]


async def test_verify_false_still_presents_the_client_certificate(tmp_path: Path) -> None:
    """With `verify: false` the source sent no client certificate (ssl=False, and no
    cert_file to give): an API that asks for one refused every GET."""
    pki = servers.make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_file))
    context.load_cert_chain(pki.server_cert_file, pki.server_key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    body = b'[{"v": 1}]'

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )

    async with servers.raw_listener(answer, tls=context) as port:
        source = make_source(
            url=f"https://127.0.0.1:{port}/x",  # its CA not given: unverified
            verify=False,
            cert_file=str(pki.cert_file),
            key_file=str(pki.key_file),
        )
        await source.connect()
        try:
            messages = await source.poll_messages()
            assert [json.loads(m.flowfile.content) for m in messages] == [{"v": 1}]
        finally:
            await source.close()


async def test_tls_files_that_cannot_be_used_stop_the_source_naming_them(tmp_path: Path) -> None:
    """A named pipe given as a TLS file froze the whole gateway at connect (OpenSSL's open
    waits for a writer, on the event loop), and a missing file was 'cannot read the TLS
    files: [Errno 2] No such file or directory', naming no key."""
    pki = servers.make_pki(tmp_path)
    pipe = tmp_path / "cert.pem"
    os.mkfifo(pipe)
    source = make_source(
        url="https://127.0.0.1:9/x", cert_file=str(pipe), key_file=str(pki.key_file)
    )
    with pytest.raises(PermanentError, match=r"cert_file '.*cert\.pem' is not a regular file"):
        async with asyncio.timeout(5):
            await source.connect()
    missing = make_source(url="https://127.0.0.1:9/x", ca_file=str(tmp_path / "gone.pem"))
    with pytest.raises(PermanentError, match=r"ca_file '.*gone\.pem'.*No such file"):
        await missing.connect()


def test_verify_false_goes_with_https_and_without_ca_file(tmp_path: Path) -> None:
    def problems(**keys: Any) -> list[str]:
        found = Problems()
        build_component("source", {"type": "rest", **keys}, ("sources", "api"), found)
        return [f"{'.'.join(map(str, p))}: {m}" for p, m in found.items]

    # both were taken and ignored: http:// verifies nothing, and verify: false read no CA
    assert problems(url="http://h/x", verify=False) == [
        "sources.api.verify: needs TLS: use an https:// URL (http:// verifies nothing)"
    ]
    assert problems(url="https://h/x", verify=False, ca_file="/ca.pem") == [
        "sources.api.ca_file: verifies the server, which verify: false turns off: give one of them"
    ]
    assert problems(url="https://h/x", verify=False) == []
    assert problems(url="https://h/x", cert_file="/c.pem") == [
        "sources.api.cert_file: cert_file and key_file go together"
    ]
    assert problems(url="http://h/x", cert_file="/c.pem", key_file="/k.pem") == [
        "sources.api.cert_file: needs TLS: use an https:// URL",
        "sources.api.key_file: needs TLS: use an https:// URL",
    ]


async def test_a_redirect_loop_is_said_in_one_line_without_the_query(
    http_receiver: servers.HttpReceiver,
) -> None:
    # an API key in the query must not reach the log or /api/status, as `_where` intends
    source = make_source(url=f"{http_receiver.url}/api?api_key=s3cret-key")
    await source.connect()
    try:
        http_receiver.control(302, headers={"Location": "/api?api_key=s3cret-key&again=1"})
        with pytest.raises(RetryableError) as caught:
            await source.poll_messages()
    finally:
        http_receiver.control(200)
        await source.close()
    text = str(caught.value)
    assert "s3cret" not in text and "\n" not in text
    assert text == f"GET {http_receiver.url}/api failed: too many redirects (10)"


async def test_an_answer_of_many_items_is_handed_over_a_page_at_a_time(
    http_receiver: servers.HttpReceiver,
) -> None:
    """All of them made FlowFiles at once: a million tiny items, half a GB."""
    http_receiver.control(203, body=json.dumps([{"n": i} for i in range(2500)]))
    source = make_source(url=f"{http_receiver.url}/many")
    await source.connect()
    try:
        pages = []
        while True:
            pages.append(
                [json.loads(m.flowfile.content)["n"] for m in await source.poll_messages()]
            )
            if not source.backlog:
                break
        assert source.status()["polls"] == 1
        http_receiver.control(203, body='[{"n": "again"}]')
        (again,) = await source.poll_messages()  # the next poll GETs again
    finally:
        http_receiver.control(200)
        await source.close()
    assert [len(p) for p in pages] == [PAGE, PAGE, 500]
    assert [n for p in pages for n in p] == list(range(2500))
    assert json.loads(again.flowfile.content) == {"n": "again"} and not source.backlog


async def test_a_stop_mid_answer_stores_all_of_it(
    http_receiver: servers.HttpReceiver, run_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop cancelled the source while it waited for room in the engine's hand-over: the
    rest of that page and the answer's further pages were lost, and the API, which has
    answered, is not asked for them again."""
    monkeypatch.setattr(rest, "PAGE", 100)
    monkeypatch.setattr(pipeline, "INGEST_CAPACITY", 10)
    http_receiver.control(203, body=json.dumps([{"n": i} for i in range(300)]))
    try:
        engine = await run_engine({"type": "rest", "url": f"{http_receiver.url}/many"})
        async with engine._commit_lock:  # the first commit waits: the hand-over fills up
            await until(lambda: bool(engine._committing) and len(engine.ingest) == 10)
            engine.stop()
        await stop(engine)
    finally:
        http_receiver.control(200)
    assert engine.ingested == 300


async def test_a_stop_waits_for_the_hand_over_at_most_drain_s_and_says_what_is_lost(
    http_receiver: servers.HttpReceiver,
    run_engine: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop waited with no limit for an answer to be handed over: with the store full
    (here: its commit held up), the gateway's stop waited as long, past systemd's."""
    monkeypatch.setattr(rest, "PAGE", 100)
    monkeypatch.setattr(pipeline, "INGEST_CAPACITY", 10)
    monkeypatch.setattr(pipeline, "DRAIN_S", 0.05)
    http_receiver.control(203, body=json.dumps([{"n": i} for i in range(300)]))
    try:
        engine = await run_engine({"type": "rest", "url": f"{http_receiver.url}/many"})
        async with engine._commit_lock:  # no commit: the hand-over stays full
            await until(lambda: bool(engine._committing) and len(engine.ingest) == 10)
            engine.stop()
            await until(engine._tasks["source rows"].done)
        await stop(engine)
    finally:
        http_receiver.control(200)
    # taken by the held-up commit 10, in the hand-over 10: 280 of the answer not handed over
    assert engine.ingested == 20
    [cut] = [r for r in caplog.records if "not handed over" in r.getMessage()]
    assert cut.levelname == "ERROR"
    assert "280 items" in cut.getMessage() and "not asked for them again" in cut.getMessage()


async def test_credentials_go_to_the_url_s_origin_only_not_where_it_redirects() -> None:
    """aiohttp dropped only Authorization and Cookie on a redirect to another host: an
    X-Api-Key (or X-Auth-Token) header went on to it, and then one the secret-name rule
    does not know (X-Goog-Api-Key)."""
    seen: dict[str, dict[str, str]] = {}

    async def answer(request: web.Request) -> web.StreamResponse:
        seen[f"{request.host}{request.path}"] = dict(request.headers)
        if request.path == "/start":  # the same origin first, then another host
            raise web.HTTPFound("/moved")
        if request.path == "/moved":
            raise web.HTTPFound(f"http://localhost:{port}/elsewhere")
        return web.json_response({"ok": 1})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    source = make_source(
        url=f"http://127.0.0.1:{port}/start",
        headers={
            "X-Api-Key": "s3cret-1",
            "X-Auth-Token": "s3cret-2",
            "X-Goog-Api-Key": "s3cret-4",
            "X-Plant": "north",
        },
        bearer_token="s3cret-3",
    )
    try:
        await source.connect()
        (message,) = await source.poll_messages()
    finally:
        await source.close()
        await runner.cleanup()
    assert message.flowfile.content == b'{"ok":1}'
    moved = seen[f"127.0.0.1:{port}/moved"]
    assert moved["X-Api-Key"] == "s3cret-1" and moved["Authorization"] == "Bearer s3cret-3"
    elsewhere = seen[f"localhost:{port}/elsewhere"]
    assert "X-Plant" not in elsewhere, "no configured header: any may hold a key"
    assert not [v for v in elsewhere.values() if "s3cret" in v], elsewhere


async def test_a_literal_brace_around_source_stays_text(
    http_receiver: servers.HttpReceiver,
) -> None:
    """`{source}` was put into the template as the name before it was filled in, so the
    documented `{{source}}` (the text {source}) became the field {api}: a KeyError at
    every poll."""
    post(http_receiver, "/braces", {"dev": "a", "v": 1})
    source = make_source(
        url=f"{http_receiver.url}/braces",
        select="data.readings",
        topic="r/{{source}}/{source}/{dev}",
    )
    await source.connect()
    try:
        (message,) = await source.poll_messages()
    finally:
        await source.close()
    assert message.reject is None and message.flowfile.topic == "r/{source}/api/a"


class _Clock(Clock):
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_a_429_waits_for_the_next_poll_after_its_retry_after(
    http_receiver: servers.HttpReceiver,
) -> None:
    """A 429 was retried with the engine's backoff, from 0.5 s: a rate-limited API every
    minute was asked again within a second, and more often the more it refused."""
    post(http_receiver, "/limited", {"v": 1})
    problems = Problems()
    config = build_component(
        "source",
        {"type": "rest", "url": f"{http_receiver.url}/limited", "select": "data.readings"},
        ("sources", "api"),
        problems,
    )
    clock = _Clock()
    source = RestSource(config, Context("api", "source", clock=clock))
    await source.connect()
    try:
        http_receiver.control(429, times=1, headers={"Retry-After": "120"})
        assert await source.poll_messages() == []  # a failure, not a RetryableError
        assert source.status()["failures"] == 1
        assert "429" in str(source.status()["last_status"])
        gets = len([r for r in http_receiver.requests() if r["path"] == "/limited"])
        clock.now += 60
        assert await source.poll_messages() == []  # within Retry-After: no request
        assert len([r for r in http_receiver.requests() if r["path"] == "/limited"]) == gets
        clock.now += 61
        assert len(await source.poll_messages()) == 1
        # a Retry-After of years (a date read against a clock stuck in the past, a proxy's
        # error) is taken for an hour at most
        http_receiver.control(429, times=1, headers={"Retry-After": "99999999"})
        assert await source.poll_messages() == []
        clock.now += 3601
        assert len(await source.poll_messages()) == 1
    finally:
        await source.close()


def test_an_authorization_header_besides_a_token_or_basic_auth_is_refused() -> None:
    """Both were taken: the token replaced the header `Authorization`, and with the header
    written `authorization` the request went out with two Authorization headers."""
    for keys in (
        {"headers": {"authorization": "Bearer a"}, "bearer_token": "b"},
        {"headers": {"Authorization": "Bearer a"}, "username": "u", "password": "p"},
    ):
        problems = Problems()
        build_component(
            "source", {"type": "rest", "url": "http://h/x", **keys}, ("sources", "api"), problems
        )
        (only,) = problems.items
        assert only[0] == ("sources", "api", "headers", next(iter(keys["headers"])))
        assert "sets Authorization already" in only[1]

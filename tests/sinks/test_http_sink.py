"""The http (webhook) sink against a real aiohttp receiver in its own process: the sink
contract in both modes, then what is its own (URL templates, auth, Idempotency-Key, 5xx
then 2xx, 4xx to the dead letters, Retry-After, body bound, config problems)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.core.component import Context
from gateway.core.errors import MissingError, PermanentError, RetryableError, RetryLater
from gateway.core.flowfile import FlowFile
from gateway.sinks.http import (
    HttpSink,
    HttpSinkConfig,
    compile_template,
    retry_after,
)
from tests import servers
from tests.sinks.contract import SinkContract, closing, connected, server_down
from tests.sinks.contract import config_problems as sink_config_problems

pytestmark = pytest.mark.integration


def config_problems(**keys: Any) -> tuple[Any, list[str]]:
    return sink_config_problems("http", "hook", **keys)


def make_sink(**keys: Any) -> HttpSink:
    config, problems = config_problems(**keys)
    assert problems == []
    assert isinstance(config, HttpSinkConfig)
    return HttpSink(config, Context(name="hook", kind="sink", gateway_id="pi-01"))


def envelopes(receiver: servers.HttpReceiver) -> list[dict[str, Any]]:
    """Every envelope the receiver took, once per copy received."""
    out: list[dict[str, Any]] = []
    for request in receiver.received():
        body = json.loads(request["body"])
        out.extend(body if isinstance(body, list) else [body])
    return out


@pytest.fixture
async def sink_for(http_receiver: servers.HttpReceiver) -> AsyncIterator[Callable[..., Any]]:
    """`await sink_for(**keys)`: a connected sink on this test's receiver."""

    def make(**keys: Any) -> HttpSink:
        return make_sink(**{"url": f"{http_receiver.url}/in/{{topic.0}}", **keys})

    async with closing(lambda **keys: connected(make(**keys))) as opened:
        yield opened


class TestHttpBatchContract(SinkContract):
    """Batch mode: a JSON array per request. The receiver stores every request it
    answers 2xx, so a batch sent again shows twice: at least once."""

    exactly_once = False
    mode = "batch"

    @pytest.fixture
    def make_sink(self, http_receiver: servers.HttpReceiver) -> Callable[[], Any]:
        async def make() -> HttpSink:
            # topic level 0 in the path: the bad FlowFile's /refuse goes in its own request
            url = f"{http_receiver.url}/in/{{topic.0}}"
            return await connected(make_sink(url=url, mode=self.mode))

        return make

    @pytest.fixture
    def fetch_ids(self, http_receiver: servers.HttpReceiver) -> Callable[[], list[str]]:
        return lambda: [e["id"] for e in envelopes(http_receiver)]

    @pytest.fixture
    def bad_flowfile(self) -> Callable[[], FlowFile]:
        return lambda: FlowFile.create("refuse/this", b'{"x": 1}')

    @pytest.fixture
    def outage(self, http_receiver: servers.HttpReceiver) -> Callable[[], Any]:
        return server_down(http_receiver)


class TestHttpEachContract(TestHttpBatchContract):
    """Each mode: one request per FlowFile."""

    mode = "each"


async def test_a_500_then_200_delivers_everything(
    sink_for: Any, http_receiver: servers.HttpReceiver
) -> None:
    sink = await sink_for()
    batch = [FlowFile.create("plant/a", json.dumps({"i": i}).encode()) for i in range(20)]
    http_receiver.control(500, times=1, body="busy")
    with pytest.raises(RetryableError, match=r"answered 500.*busy"):
        await sink.write(batch)
    assert http_receiver.received() == []
    assert await sink.write(batch) == []
    assert [e["id"] for e in envelopes(http_receiver)] == [ff.id for ff in batch]
    assert [e["payload"] for e in envelopes(http_receiver)] == [{"i": i} for i in range(20)]


async def test_a_400_dead_letters_the_batch_with_status_and_body(
    sink_for: Any, http_receiver: servers.HttpReceiver
) -> None:
    sink = await sink_for()
    batch = [FlowFile.create("plant/a", b"{}") for _ in range(5)]
    http_receiver.control(400, times=1, body="field 'temp' missing " + "x" * 5000)
    rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [ff.id for ff in batch]
    reason = rejected[0].reason
    assert "answered 400" in reason and "field 'temp' missing" in reason
    assert len(reason) < 700  # the body is cut to error_body (512) bytes
    assert http_receiver.received() == []


@pytest.mark.parametrize(
    "auth",
    [
        {"bearer_token": "tok-s3cret-0123456789"},
        {"username": "gw", "password": "pw-s3cret-0123456789"},
    ],
)
async def test_an_answer_that_echoes_the_credentials_shows_them_nowhere(
    sink_for: Any, http_receiver: servers.HttpReceiver, auth: dict[str, str]
) -> None:
    # Before: the body went as it was into the dead letter, the log and the status page.
    sink = await sink_for(headers={"X-Api-Key": "hdr-s3cret-42"}, error_body=100, **auth)
    secret = auth.get("bearer_token") or auth["password"]
    # the Authorization header's value as sent: the token, or user:password in base64
    sent = secret if "bearer_token" in auth else base64.b64encode(f"gw:{secret}".encode())
    basic = sent if isinstance(sent, str) else sent.decode()
    echo = f"got {secret} {basic} hdr-s3cret-42 "
    http_receiver.control(400, times=1, body=echo + "x" * (100 - len(echo) - 5) + secret)
    rejected = await sink.write([FlowFile.create("plant/a", b"{}")])
    http_receiver.control(500, times=1, body=echo)
    with pytest.raises(RetryableError) as caught:
        await sink.write([FlowFile.create("plant/a", b"{}")])
    for text in (rejected[0].reason, str(caught.value)):
        assert "s3cret" not in text and basic not in text, text
        assert "***" in text
    # The body is cut at error_body bytes, inside the last copy: its start is hidden too.
    assert rejected[0].reason.endswith("x***"), rejected[0].reason


async def test_an_echo_of_an_escaped_secret_is_hidden_too(
    sink_for: Any, http_receiver: servers.HttpReceiver
) -> None:
    """An error page quotes the token JSON-escaped (PHP writes `\\/`), percent-encoded
    (%2F or %2f) or HTML-escaped: each copy was shown whole."""
    token = "s3cr/et+pw&<x>"
    sink = await sink_for(bearer_token=token, error_body=1000)
    echoes = [
        json.dumps({"token": token})[1:-1].replace("/", "\\/"),
        "token=s3cr%2Fet%2Bpw%26%3Cx%3E",
        "token=s3cr%2fet%2bpw%26%3cx%3e",
        "<p>s3cr/et+pw&amp;&lt;x&gt;</p>",
    ]
    http_receiver.control(400, times=1, body=" | ".join(echoes))
    rejected = await sink.write([FlowFile.create("plant/a", b"{}")])
    reason = rejected[0].reason
    assert "s3cr" not in reason and reason.count("***") == len(echoes), reason


async def test_each_mode_a_400_refuses_only_its_flowfile(
    sink_for: Any, http_receiver: servers.HttpReceiver
) -> None:
    sink = await sink_for(mode="each", concurrency=1)
    good = [FlowFile.create("plant/a", b"{}") for _ in range(4)]
    bad = FlowFile.create("refuse", b"{}")
    rejected = await sink.write([*good[:2], bad, *good[2:]])
    assert [r.flowfile.id for r in rejected] == [bad.id]
    assert [e["id"] for e in envelopes(http_receiver)] == [ff.id for ff in good]


async def test_429_with_retry_after_is_retried_later(
    sink_for: Any, http_receiver: servers.HttpReceiver
) -> None:
    sink = await sink_for()
    http_receiver.control(429, times=1, headers={"Retry-After": "7"})
    with pytest.raises(RetryLater) as caught:
        await sink.write([FlowFile.create("plant/a", b"{}")])
    assert caught.value.after == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    # "²" is a digit to str.isdigit and not to float(): it raised out of the write
    assert retry_after("\u00b2", 1445412470.0) == 0.0


async def test_wrong_credentials_stop_the_sink_and_keep_the_data(
    sink_for: Any, http_receiver: servers.HttpReceiver
) -> None:
    sink = await sink_for(bearer_token="s3cret-token")
    http_receiver.control(401, times=1)
    with pytest.raises(PermanentError) as caught:
        await sink.write([FlowFile.create("plant/a", b"{}")])
    assert "401" in str(caught.value) and "s3cret" not in str(caught.value)


async def test_headers_auth_idempotency_key_and_url_template(
    sink_for: Any, http_receiver: servers.HttpReceiver
) -> None:
    sink = await sink_for(
        url=f"{http_receiver.url}/gw/{{gateway}}/{{sink}}/{{topic}}/last/{{topic.-1}}",
        headers={"X-Site": "north"},
        bearer_token="tok-1",
    )
    a = FlowFile.create("plant/line 1/temp%", b"{}")
    b = FlowFile.create("plant/line 1/temp%", b"[1]")
    c = FlowFile.create("other", b"not json")
    assert await sink.write([a, b, c]) == []
    got = {r["raw_path"]: r for r in http_receiver.received()}
    first = got["/gw/pi-01/hook/plant/line%201/temp%25/last/temp%25"]
    assert first["headers"]["Idempotency-Key"] == f"{a.id}..{b.id}"
    assert first["headers"]["Authorization"] == "Bearer tok-1"
    assert first["headers"]["X-Site"] == "north"
    assert [e["id"] for e in json.loads(first["body"])] == [a.id, b.id]
    single = got["/gw/pi-01/hook/other/last/other"]
    assert single["headers"]["Idempotency-Key"] == c.id
    assert json.loads(single["body"])[0]["payload_base64"]
    # a topic's `..` levels stay inside the url's path (they were sent as they are)
    assert await sink.write([FlowFile.create("../../admin/..", b"{}")]) == []
    paths = [r["raw_path"] for r in http_receiver.received()]
    assert "/gw/pi-01/hook/%2E%2E/%2E%2E/admin/%2E%2E/last/%2E%2E" in paths


@pytest.mark.parametrize("mode", ["batch", "each"])
async def test_a_topic_that_is_no_text_is_refused_alone(
    sink_for: Any, http_receiver: servers.HttpReceiver, mode: str
) -> None:
    # A lone surrogate in a topic level of the URL raised UnicodeEncodeError out of
    # write(): the batch failed at every try, and the FlowFiles behind it waited.
    sink = await sink_for(url=f"{http_receiver.url}/in/{{topic}}", mode=mode)
    batch = [FlowFile.create("ok/1", b"1"), FlowFile.create("bad/\udc80", b"2")]
    rejected = await sink.write([*batch, after := FlowFile.create("ok/2", b"3")])
    assert [r.flowfile.id for r in rejected] == [batch[1].id]
    assert "not valid Unicode text" in rejected[0].reason
    assert [e["id"] for e in envelopes(http_receiver)] == [batch[0].id, after.id]


@pytest.mark.parametrize("mode", ["batch", "each"])
async def test_a_topic_level_that_makes_no_host_name_is_refused_alone(
    sink_for: Any, http_receiver: servers.HttpReceiver, mode: str
) -> None:
    # A level of 64 characters or more raised UnicodeError (idna) out of write(): the sink
    # crashed on that batch for ever. One with a space went as dev-a%20b..., never to resolve.
    port = http_receiver.url.rsplit(":", 1)[1]
    sink = await sink_for(url=f"http://d{{topic.0}}.localhost:{port}/in", mode=mode)
    long, spaced = FlowFile.create("x" * 63 + "/t", b"1"), FlowFile.create("a b/t", b"2")
    rejected = await sink.write([long, spaced])
    assert [r.flowfile.id for r in rejected] == [long.id, spaced.id]
    assert rejected[1].reason == (
        "http: its topic makes no host name in the url ('da%20b.localhost')"
    )


def test_a_placeholder_in_the_port_the_user_or_the_host_as_topic_is_refused() -> None:
    # the port: a ValueError out of write() for every FlowFile, the sink crashing on it
    assert config_problems(url="http://h:{topic.1}/x")[1] == [
        "sinks.hook.url: the port must be written out (no placeholder in it)"
    ]
    assert config_problems(url="http://u{topic.1}@h/x")[1] == [
        "sinks.hook.url: put credentials in username and password, not in the url"
    ]
    # {topic}'s / ended the host: a/b went to http://xa/b/in
    assert config_problems(url="http://x{topic}/in")[1] == [
        "sinks.hook.url: {topic} cannot be in the host (its levels go with /): use {topic.N}"
    ]
    for url in ("http://dev-{topic.1}.example.com:8080/in", "http://h/a:{topic.1}@b?{topic}"):
        assert config_problems(url=url)[1] == []


async def test_each_mode_payload_body_and_basic_auth(
    sink_for: Any, http_receiver: servers.HttpReceiver
) -> None:
    sink = await sink_for(
        mode="each", body="payload", content_type="text/plain", username="u", password="p"
    )
    ff = FlowFile.create("plant/a", b"raw bytes")
    assert await sink.write([ff]) == []
    (request,) = http_receiver.received()
    assert request["body"] == "raw bytes"
    assert request["headers"]["Content-Type"] == "text/plain"
    assert request["headers"]["Authorization"] == "Basic dTpw"
    assert request["headers"]["Idempotency-Key"] == ff.id


async def test_a_batch_beyond_max_body_goes_in_several_requests(
    sink_for: Any, http_receiver: servers.HttpReceiver
) -> None:
    sink = await sink_for(max_body="2KiB", concurrency=1)
    batch = [FlowFile.create("plant/a", json.dumps({"pad": "x" * 300}).encode()) for _ in range(12)]
    huge = FlowFile.create("plant/a", b'"' + b"y" * 4000 + b'"')
    rejected = await sink.write([*batch, huge])
    assert [r.flowfile.id for r in rejected] == [huge.id]
    assert "max_body" in rejected[0].reason
    requests = http_receiver.received()
    assert len(requests) > 1
    assert all(len(r["body"]) <= 2048 for r in requests)
    assert [e["id"] for e in envelopes(http_receiver)] == [ff.id for ff in batch]


async def test_connection_refused_is_retryable(sink_for: Any) -> None:
    sink = await sink_for(url=f"http://127.0.0.1:{servers.free_port()}/x")
    with pytest.raises(RetryableError, match="failed"):
        await sink.write([FlowFile.create("plant/a", b"{}")])


async def test_a_host_name_that_does_not_resolve_is_missing() -> None:
    # so a reload that names it is rolled back, as the README says
    sink = make_sink(url="http://gw-hook.invalid/x")
    with pytest.raises(MissingError, match=r"gw-hook\.invalid/x: its host name does not resolve"):
        await sink.connect()
    await sink.close()
    # a host with a placeholder in it is only known per FlowFile: nothing to look up
    sink = make_sink(url="http://dev-{topic.1}.invalid/in")
    await sink.connect()
    await sink.close()


async def test_a_server_that_never_answers_is_a_timeout_said_so(sink_for: Any) -> None:
    # a listener that takes the connection and never answers (the log said "failed: ")
    async with servers.raw_listener() as port:
        sink = await sink_for(url=f"http://127.0.0.1:{port}/x", timeout="200ms")
        with pytest.raises(RetryableError, match=r"did not answer within 0\.2s"):
            await sink.write([FlowFile.create("plant/a", b"{}")])


async def test_a_failed_request_stops_the_rest_of_its_batch(sink_for: Any) -> None:
    # A request that failed ended the write, but the batch's other requests went on in
    # the background while the engine retried the batch: the next try's requests (and
    # the next batch's) raced the first try's. Now they end with the write.
    batch = [FlowFile.create(f"plant/{n}", b"{}") for n in range(4)]
    held, closed = asyncio.Event(), asyncio.Event()
    others: list[str] = []
    taken: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        fields = {k.lower(): v for k, v in fields.items()}
        await reader.readexactly(int(fields["content-length"]))
        key = fields["idempotency-key"]
        if key == batch[0].id:  # held until the client gives it up
            held.set()
            await reader.read()
            closed.set()
        elif key == batch[1].id:
            await held.wait()
            writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        else:
            others.append(key)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = await sink_for(url=f"http://127.0.0.1:{port}/x", mode="each", concurrency=2)
        with pytest.raises(RetryableError, match="500"):
            await sink.write(batch)
        async with asyncio.timeout(10):  # a bound on a hang, not a timing
            await closed.wait()  # the held request was given up with the write
        assert others == []
    finally:
        server.close()
        for writer in taken:
            writer.close()
        await server.wait_closed()


def test_config_problems() -> None:
    assert config_problems(url="ftp://x/y")[1] == [
        "sinks.hook.url: 'ftp://x/y' must start with http:// or https://"
    ]
    assert "unknown placeholder {device}" in config_problems(url="http://h/{device}")[1][0]
    assert "no placeholder" in config_problems(url="http://{topic}/x")[1][0]
    problems = config_problems(url="http://u:pw@h/x")[1]
    assert problems == ["sinks.hook.url: put credentials in username and password, not in the url"]
    assert "body: payload needs mode: each" in config_problems(url="http://h", body="payload")[1][0]
    assert (
        "not both"
        in config_problems(url="http://h", bearer_token="t", username="u", password="p")[1][0]
    )
    # these passed the check and then crashed the sink on every write, with a traceback
    assert config_problems(url="http://h:99999/x")[1] == [
        "sinks.hook.url: the port must be a number from 1 to 65535"
    ]
    assert config_problems(url="http://[::1/x")[1] == [
        "sinks.hook.url: is not a valid URL: Invalid IPv6 URL"
    ]
    # urlsplit read these, aiohttp's parser did not: no POST ever went
    for url in ("http://[::1]x/in", "http://hooks\\example.com/in"):
        assert config_problems(url=url)[1][0].startswith("sinks.hook.url: is not a valid URL")
    assert config_problems(url="http://dev-{topic.1}.example.com/in")[1] == []
    # sent as written, the request line was refused (400) and every FlowFile dead-lettered
    for url, bad in (("http://h/my hook/{topic}", "' '"), ("http://h/t\u00e9/x", "'\u00e9'")):
        assert config_problems(url=url)[1] == [
            f"sinks.hook.url: holds {bad}, which a URL cannot hold as it is: percent-encode it"
            " (a space is %20, \u00e9 is %C3%A9)"
        ]
    assert config_problems(url="http://h/my%20hook/{topic}?a=%C3%A9")[1] == []
    assert config_problems(url="http://h/x", headers={"X-Key": "secret\nmore"})[1] == [
        "sinks.hook.headers.X-Key: a header value cannot hold a line break or control character"
    ]
    assert "bearer_token" in config_problems(url="http://h/x", bearer_token="t\r\n")[1][0]
    assert config_problems(url="http://h:8080/x", headers={"X-Key": "a\tb"})[1] == []
    # a Content-Length of the config's: the receiver took a body cut short, answered 200
    assert config_problems(url="http://h/x", headers={"content-length": "1"})[1] == [
        "sinks.hook.headers.content-length: set by the sink for each request (the body's length)"
    ]
    for name in ("Content-Type", "Idempotency-Key", "Transfer-Encoding", "Content-Encoding"):
        assert config_problems(url="http://h/x", headers={name: "x"})[1][0].startswith(
            f"sinks.hook.headers.{name}: "
        )
    each = {"mode": "each", "body": "payload"}
    assert config_problems(url="http://h/x", content_type="text/plain\r\nX-A: 1", **each)[1] == [
        "sinks.hook.content_type: cannot hold a line break or control character"
    ]
    assert compile_template("http://h/{{x}}/{topic.2}") == [
        "http://h/",
        "{",
        "x",
        "}",
        "/",
        ("topic", 2),
    ]


async def test_a_2xx_answer_body_is_read_bounded(sink_for: Any) -> None:
    """A 200 whose body never ends was read whole (all of it in memory) until the
    timeout, and the batch sent again; now 64KiB of it are read and dropped."""
    taken: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")  # no length
        with contextlib.suppress(ConnectionError):  # until the client hangs up
            while not writer.is_closing():  # a body without end, as fast as it is taken
                writer.write(b"x" * 65536)
                await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = await sink_for(url=f"http://127.0.0.1:{port}/x", timeout="2s")
        assert await sink.write([FlowFile.create("plant/a", b"{}")]) == []
        assert sink.requests == 1
    finally:
        server.close()
        for writer in taken:
            writer.close()
        await server.wait_closed()


async def answer_200_empty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request on the connection 200 with no body."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


async def test_an_untrusted_server_certificate_stops_the_sink_in_one_line(
    sink_for: Any, tmp_path: Path
) -> None:
    """It was retried for ever; retrying cannot fix a certificate: PermanentError."""
    pki = servers.make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert_file, pki.server_key_file)
    ff = FlowFile.create("plant/a", b"{}")
    async with servers.raw_listener(answer_200_empty, tls=context) as port:
        sink = await sink_for(url=f"https://127.0.0.1:{port}/x")  # the system's CAs
        with pytest.raises(PermanentError) as raised:
            await sink.write([ff])
        message = str(raised.value)
        assert message.startswith(f"POST https://127.0.0.1:{port}/x: its TLS certificate is")
        assert message.endswith("(check ca_file)") and "\n" not in message
        trusting = await sink_for(url=f"https://127.0.0.1:{port}/x", ca_file=str(pki.ca_file))
        assert await trusting.write([ff]) == []  # the same server, its CA given: delivered


async def test_verify_false_still_presents_the_client_certificate(
    sink_for: Any, tmp_path: Path
) -> None:
    """With `verify: false` the sink sent no client certificate (cert_file was taken and
    ignored): a server that asks for one refused every request."""
    pki = servers.make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_file))
    context.load_cert_chain(pki.server_cert_file, pki.server_key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    async with servers.raw_listener(answer_200_empty, tls=context) as port:
        sink = await sink_for(
            url=f"https://127.0.0.1:{port}/x",  # its CA not given: unverified
            verify=False,
            cert_file=str(pki.cert_file),
            key_file=str(pki.key_file),
        )
        assert await sink.write([FlowFile.create("plant/a", b"{}")]) == []
        assert sink.requests == 1


def test_verify_false_goes_with_https_and_without_ca_file() -> None:
    # both were taken and ignored: http:// verifies nothing, and verify: false read no CA
    assert config_problems(url="http://h/x", verify=False)[1] == [
        "sinks.hook.verify: needs TLS: use an https:// URL (http:// verifies nothing)"
    ]
    assert config_problems(url="https://h/x", verify=False, ca_file="/ca.pem")[1] == [
        "sinks.hook.ca_file: verifies the server, which verify: false turns off: give one of them"
    ]
    assert config_problems(url="https://h/x", verify=False)[1] == []


async def test_a_reload_during_a_write_forgets_what_that_write_settles(sink_for: Any) -> None:
    """A reload (update) cleared what the failed tries had settled while a write was still
    in flight: its requests answered after that went on filling the same dict, so the
    batch sent again after the reload left them out anyway."""
    batch = [FlowFile.create(f"plant/{n}", b"{}") for n in range(2)]
    arrived, release = asyncio.Event(), asyncio.Event()
    answered: list[tuple[str, int]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        fields = {k.lower(): v for k, v in fields.items()}
        await reader.readexactly(int(fields["content-length"]))
        key = fields["idempotency-key"]
        status = 200
        if not answered:  # the first request waits for the reload
            arrived.set()
            await release.wait()
        elif key == batch[1].id and len(answered) == 1:
            status = 500  # the first try of the second FlowFile: the write fails
        answered.append((key, status))
        head = f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        keys = {"url": f"http://127.0.0.1:{port}/x", "mode": "each", "concurrency": 1}
        sink = await sink_for(**keys)
        write = asyncio.ensure_future(sink.write(batch))
        await arrived.wait()
        reloaded, problems = config_problems(**keys, batch={"max_rows": 10})
        assert problems == []
        assert sink.update(reloaded)
        release.set()
        with pytest.raises(RetryableError, match="500"):
            await write
        assert await sink.write(batch) == []
        ids = [ff.id for ff in batch]
        assert answered == [(ids[0], 200), (ids[1], 500), (ids[0], 200), (ids[1], 200)]
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_a_batch_sent_again_leaves_out_what_its_last_try_delivered(sink_for: Any) -> None:
    """A failed request failed the whole write, and the engine's next try sent every
    FlowFile again, those answered 2xx too: against a receiver that fails one request in
    a few, a batch of many requests almost never went through whole, and the sink sent
    the same FlowFiles over and over without moving on."""
    batch = [FlowFile.create(f"plant/{n}", b"{}") for n in range(5)]
    answered: list[tuple[str, int]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        fields = {k.lower(): v for k, v in fields.items()}
        await reader.readexactly(int(fields["content-length"]))
        key = fields["idempotency-key"]
        status = 200
        if key == batch[1].id:
            status = 400  # refused for good: a dead letter, whichever try
        elif key == batch[3].id and (key, 500) not in answered:
            status = 500  # the first time only
        answered.append((key, status))
        head = f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = await sink_for(url=f"http://127.0.0.1:{port}/x", mode="each", concurrency=1)
        with pytest.raises(RetryableError, match="500"):
            await sink.write(batch)
        more = FlowFile.create("plant/5", b"{}")  # what arrived meanwhile
        rejected = await sink.write([*batch, more])
        assert [(r.flowfile.id, "answered 400" in r.reason) for r in rejected] == [
            (batch[1].id, True)
        ]
        ids = [ff.id for ff in [*batch, more]]
        assert answered == [
            (ids[0], 200),
            (ids[1], 400),
            (ids[2], 200),
            (ids[3], 500),
            (ids[3], 200),
            (ids[4], 200),
            (ids[5], 200),
        ]
        # once a write went through, nothing of it is remembered: sent again, all goes again
        assert await sink.write(batch[:1]) == []
        assert answered[-1] == (ids[0], 200)
    finally:
        server.close()
        await server.wait_closed()

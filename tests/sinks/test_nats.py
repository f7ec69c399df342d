"""The nats sink against a real 3-node JetStream cluster: the sink contract, then what is its
own (subjects and headers, the stream created or checked, a stream leader killed while
publishing, refused credentials, config validation)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

import nats
import nkeys
import pytest
from nats.js import api as js_api

from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks.nats import NatsSink, NatsSinkConfig, topic_tokens
from tests import servers
from tests.nats_helpers import JS_TIMEOUT, new_nkey, new_operator, stream_messages
from tests.sinks.contract import SinkContract, closing, connected, unique_name
from tests.sinks.contract import config_problems as sink_config_problems

pytestmark = pytest.mark.integration

MAX_MSG = 4096  # the test streams' max_msg_size: a larger FlowFile is refused for good


def config_problems(**keys: Any) -> tuple[Any, list[str]]:
    return sink_config_problems("nats", "fleet", **keys)


def make_sink(servers_: list[str], **keys: Any) -> NatsSink:
    config, problems = config_problems(servers=servers_, **keys)
    assert problems == []
    assert isinstance(config, NatsSinkConfig)
    return NatsSink(config, Context(name="fleet", kind="sink", gateway_id="pi-01"))


def stream_keys(ns: str, **more: Any) -> dict[str, Any]:
    """Sink keys for a stream of this test's own: stream `<NS>`, subjects `<ns>.>`."""
    stream = {"name": ns.upper(), "replicas": 3, "max_msg_size": MAX_MSG, **more}
    # A short timeout: a stream still electing its leader after a restart drops what is
    # published to it, and the retry comes after the timeout.
    return {"subject": f"{ns}.{{gateway}}.{{topic}}", "create_stream": stream, "timeout": "3s"}


@pytest.fixture
def ns() -> str:
    return unique_name()


class TestNatsContract(SinkContract):
    @pytest.fixture
    def make_sink(self, nats_cluster: servers.NatsCluster, ns: str) -> Callable[[], Any]:
        async def make() -> NatsSink:
            return await connected(make_sink(nats_cluster.urls, **stream_keys(ns)))  # type: ignore[return-value]

        return make

    @pytest.fixture
    def fetch_ids(self, nats_cluster: servers.NatsCluster, ns: str) -> Callable[[], Any]:
        async def fetch() -> list[str]:
            found = await stream_messages(nats_cluster.urls, ns.upper())
            return [m.headers["Nats-Msg-Id"] for m in found]

        return fetch

    @pytest.fixture
    def bad_flowfile(self) -> Callable[[], FlowFile]:
        # Larger than the stream's max_msg_size: JetStream refuses it, the rest goes in.
        return lambda: FlowFile.create("contract/big", b"x" * (MAX_MSG * 2))

    @pytest.fixture
    def outage(self, nats_cluster: servers.NatsCluster) -> Callable[[], Any]:
        @contextlib.asynccontextmanager
        async def down() -> AsyncIterator[None]:
            nats_cluster.stop()
            try:
                yield
            finally:
                nats_cluster.start()

        return down


# --- what is the nats sink's own ------------------------------------------------------------


async def test_subject_and_headers_carry_topic_time_and_attributes(
    nats_cluster: servers.NatsCluster, ns: str
) -> None:
    async with closing(lambda: connected(make_sink(nats_cluster.urls, **stream_keys(ns)))) as op:
        sink = await op()
        topics = ["sensors/line 1/temp.c", "/lead", "a//b", "x/*/>/100%"]
        batch = [FlowFile.create(t, b'{"v": 1}', {"unit": "°C"}) for t in topics]
        assert await sink.write(batch) == []
    found = await stream_messages(nats_cluster.urls, ns.upper())
    assert [m.subject for m in found] == [
        f"{ns}.pi-01.sensors.line%201.temp%2Ec",
        f"{ns}.pi-01._.lead",
        f"{ns}.pi-01.a._.b",
        f"{ns}.pi-01.x.%2A.%3E.100%25",
    ]
    assert [unquote(m.headers["Edge-Topic"]) for m in found] == topics
    assert [m.headers["Nats-Msg-Id"] for m in found] == [ff.id for ff in batch]
    assert all(m.headers["Edge-Attributes"] == '{"unit":"°C"}' for m in found)
    assert all(m.headers["Edge-Ts"].endswith("Z") and m.data == b'{"v": 1}' for m in found)
    assert topic_tokens("a/b.c") == "a.b%2Ec"


async def test_a_topic_or_attribute_that_is_no_text_is_refused_alone(
    nats_cluster: servers.NatsCluster, ns: str
) -> None:
    # A lone surrogate raised UnicodeEncodeError out of write(): the batch failed at
    # every try, and the FlowFiles behind it waited.
    async with closing(lambda: connected(make_sink(nats_cluster.urls, **stream_keys(ns)))) as op:
        sink = await op()
        batch = [
            FlowFile.create("ok/1", b"1"),
            FlowFile.create("bad/\udc80", b"2"),
            FlowFile.create("ok/2", b"3", {"note": "x\udc80"}),
            FlowFile.create("ok/3", b"4"),
        ]
        rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [batch[1].id, batch[2].id]
    assert all("not valid Unicode text" in r.reason for r in rejected)
    found = await stream_messages(nats_cluster.urls, ns.upper())
    assert [m.headers["Nats-Msg-Id"] for m in found] == [batch[0].id, batch[3].id]


async def test_no_stream_for_the_subject_is_a_refusal_per_flowfile(
    nats_cluster: servers.NatsCluster, ns: str
) -> None:
    async with closing(
        lambda: connected(make_sink(nats_cluster.urls, subject=f"{ns}.nowhere.{{topic}}"))
    ) as op:
        sink = await op()
        batch = [FlowFile.create(f"t/{i}", b"1") for i in range(3)]
        rejected = await sink.write(batch)
    assert [r.flowfile.id for r in rejected] == [ff.id for ff in batch]
    assert all(f"no stream takes subject {ns}.nowhere.t." in r.reason for r in rejected)


async def test_an_existing_stream_with_other_subjects_stops_the_sink(
    nats_cluster: servers.NatsCluster, ns: str
) -> None:
    nc = await nats.connect(servers=nats_cluster.urls)
    await nc.jetstream(timeout=JS_TIMEOUT).add_stream(
        js_api.StreamConfig(name=ns.upper(), subjects=["elsewhere.>"])
    )
    await nc.close()
    sink = make_sink(nats_cluster.urls, **stream_keys(ns))
    with pytest.raises(PermanentError, match=rf"stream {ns.upper()} exists with subjects"):
        await sink.connect()
    await sink.close()


async def test_stream_leader_killed_while_publishing_every_message_once(
    nats_cluster: servers.NatsCluster, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = ns.upper()
    batches = [
        [FlowFile.create(f"load/{b}", f'{{"seq": {b * 200 + i}}}'.encode()) for i in range(200)]
        for b in range(30)
    ]
    async with closing(lambda: connected(make_sink(nats_cluster.urls, **stream_keys(ns)))) as op:
        sink = await op()
        retried = 0
        for n, batch in enumerate(batches):
            if n == 10:
                leader = nats_cluster.leader(stream)
                assert leader is not None
                nats_cluster.node(leader).kill()
            async with asyncio.timeout(60):
                while True:
                    try:
                        assert await sink.write(batch) == []
                        break
                    except RetryableError:
                        retried += 1
                        await asyncio.sleep(0.2)
    assert retried > 0, "killing the leader should have failed a write"
    new_leader = nats_cluster.leader(stream)
    assert new_leader not in (None, leader)
    found = await stream_messages(nats_cluster.urls, stream)
    ids = [m.headers["Nats-Msg-Id"] for m in found]
    assert sorted(ids) == sorted(ff.id for batch in batches for ff in batch)


async def test_refused_password_is_one_clear_permanent_error(
    nats_factory: Callable[..., servers.Nats],
) -> None:
    server = nats_factory(user=("gw", "right-secret"))
    sink = make_sink([server.url], user="gw", password="wrong-secret")
    with pytest.raises(PermanentError) as refused:
        await sink.connect()
    text = str(refused.value)
    assert "refused us: authorization violation" in text
    assert "wrong-secret" not in text and "\n" not in text
    good = make_sink([server.url], user="gw", password="right-secret")
    await good.connect()
    await good.close()


async def test_refused_token_is_a_permanent_error_and_the_right_one_delivers(
    nats_factory: Callable[..., servers.Nats], ns: str
) -> None:
    server = nats_factory(token="s3cret-token")
    with pytest.raises(PermanentError, match="authorization violation"):
        await make_sink([server.url], token="nope").connect()
    keys = stream_keys(ns)
    keys["create_stream"]["replicas"] = 1
    async with closing(
        lambda: connected(make_sink([server.url], token="s3cret-token", **keys))
    ) as op:
        sink = await op()
        assert await sink.write([FlowFile.create("a/b", b"1")]) == []


async def test_more_replicas_than_a_lone_server_keeps_is_refused_for_good(
    nats_factory: Callable[..., servers.Nats], ns: str
) -> None:
    """NATS answers 500 to it; it was retried for ever."""
    server = nats_factory()
    with pytest.raises(PermanentError, match="replicas > 1 not supported"):
        await make_sink([server.url], **stream_keys(ns)).connect()


async def test_an_existing_stream_with_other_settings_is_left_with_a_warning(
    nats_factory: Callable[..., servers.Nats], ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every create_stream setting that differs is named (max_age and max_msg_size were
    silently left alone)."""
    server = nats_factory()
    nc = await nats.connect(servers=[server.url])
    stream = js_api.StreamConfig(
        name=ns.upper(), subjects=[f"{ns}.pi-01.>"], max_age=3600, max_msg_size=100
    )
    await nc.jetstream(timeout=JS_TIMEOUT).add_stream(stream)
    await nc.close()
    keys = single_stream_keys(ns)
    keys["create_stream"]["max_age"] = "2h"
    sink = make_sink([server.url], **keys)
    await sink.connect()
    await sink.close()
    assert "max_age 3600.0 (config: 7200.0)" in caplog.text
    assert f"max_msg_size 100 (config: {MAX_MSG})" in caplog.text


async def test_max_payload_counts_the_headers_in_bytes(
    nats_factory: Callable[..., servers.Nats], ns: str
) -> None:
    """The server counts headers and content in bytes against max_payload, and closes the
    connection on a message over it: a FlowFile with non-ASCII attributes, counted in
    characters, slipped under and its batch failed for ever ("lost the NATS connection")."""
    server = nats_factory()
    keys = {"subject": f"{ns}.{{topic}}", "create_stream": {"name": ns.upper()}, "timeout": "3s"}
    attributes = {"note": "°" * 20_000}
    encoded = json.dumps(attributes, ensure_ascii=False, separators=(",", ":")).encode()
    headers = (
        b"NATS/1.0\r\n"
        + b"Nats-Msg-Id: " + b"0" * 36 + b"\r\n"
        + b"Edge-Topic: a/b\r\n"
        + b"Edge-Ts: 2026-01-01T00:00:00.000000Z\r\n"
        + b"Edge-Attributes: " + encoded + b"\r\n"
        + b"\r\n"
    )  # fmt: skip
    async with closing(lambda: connected(make_sink([server.url], **keys))) as op:
        sink = await op()
        room = sink._nc.max_payload - len(headers)
        fits = FlowFile.create("a/b", b"x" * room, attributes)
        over = FlowFile.create("a/b", b"x" * (room + 1), attributes)
        rejected = await sink.write([fits, over, FlowFile.create("a/c", b"1")])
        assert [r.flowfile.id for r in rejected] == [over.id]
        assert "larger than the server's max_payload" in rejected[0].reason
    found = await stream_messages([server.url], ns.upper())
    assert [len(m.data) for m in found] == [room, 1]


def single_stream_keys(ns: str) -> dict[str, Any]:
    keys = stream_keys(ns)
    keys["create_stream"]["replicas"] = 1
    return keys


async def assert_delivers(
    sink_: Callable[[], NatsSink], ns: str, urls: list[str], **tls: Any
) -> None:
    """The sink connects, creates its stream and writes one FlowFile that the stream holds."""
    async with closing(lambda: connected(sink_())) as op:
        sink = await op()
        ff = FlowFile.create("a/b", b"1")
        assert await sink.write([ff]) == []
    found = await stream_messages(urls, ns.upper(), **tls)
    assert [m.headers["Nats-Msg-Id"] for m in found] == [ff.id]


def one_line_refusal(err: PermanentError, *secrets: str) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text
    for secret in secrets:
        assert secret not in text, text
    return text


async def test_nkey_seed_file_logs_in_and_a_wrong_one_is_refused(
    nats_factory: Callable[..., servers.Nats], ns: str, tmp_path: Any
) -> None:
    key, other = new_nkey(), new_nkey()
    server = nats_factory(nkey=key.public)
    right = str(key.write_seed(tmp_path / "gw.nk"))
    wrong = str(other.write_seed(tmp_path / "other.nk"))
    with pytest.raises(PermanentError) as refused:
        await make_sink([server.url], nkey_seed_file=wrong).connect()
    text = one_line_refusal(refused.value, other.seed, key.seed)
    assert "refused us: authorization violation" in text
    with pytest.raises(PermanentError, match=r"nkey_seed_file .*missing\.nk cannot be read"):
        await make_sink([server.url], nkey_seed_file=str(tmp_path / "missing.nk")).connect()
    await assert_delivers(
        lambda: make_sink([server.url], nkey_seed_file=right, **single_stream_keys(ns)),
        ns,
        [server.url],
        nkeys_seed=right,
    )


async def test_creds_file_logs_in_and_one_of_an_unknown_account_is_refused(
    nats_factory: Callable[..., servers.Nats], ns: str, tmp_path: Any
) -> None:
    setup = new_operator()  # JWT accounts: the server trusts the operator's
    server = nats_factory(operator=setup.server_config())
    user, stranger = new_nkey(), new_nkey()
    right = tmp_path / "gw.creds"
    right.write_text(setup.creds(user))
    # A user signed by an account the operator never issued.
    wrong = tmp_path / "wrong.creds"
    wrong.write_text(setup.creds(stranger, account=new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)))
    with pytest.raises(PermanentError) as refused:
        await make_sink([server.url], creds_file=str(wrong)).connect()
    text = one_line_refusal(refused.value, stranger.seed, user.seed)
    assert "refused us: authorization violation" in text
    await assert_delivers(
        lambda: make_sink([server.url], creds_file=str(right), **single_stream_keys(ns)),
        ns,
        [server.url],
        user_credentials=str(right),
    )


async def test_tls_with_a_client_certificate_delivers_and_wrong_trust_is_refused(
    nats_factory: Callable[..., servers.Nats], ns: str, tmp_path: Any
) -> None:
    server = nats_factory(tls=True)
    pki = server.tls
    assert pki is not None and server.url.startswith("tls://")
    client = {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}
    # No ca_file: the system's CAs do not know the test CA.
    with pytest.raises(PermanentError) as untrusted:
        await make_sink([server.url], **client).connect()
    text = one_line_refusal(untrusted.value)
    assert "its TLS certificate is not trusted" in text and "check ca_file" in text, text
    # A CA that did not sign the server's certificate: refused the same way.
    stranger = servers.make_pki(tmp_path / "stranger")
    with pytest.raises(PermanentError, match="its TLS certificate is not trusted"):
        await make_sink([server.url], ca_file=str(stranger.ca_file), **client).connect()
    # Trusted server, but a client certificate of another CA, or none: the server refuses
    # us. Under TLS 1.3 it may say so (an alert: permanent) or just close (retried).
    foreign = {"cert_file": str(stranger.cert_file), "key_file": str(stranger.key_file)}
    for keys in (foreign, {}):
        with pytest.raises((PermanentError, RetryableError)) as refused:
            await make_sink([server.url], ca_file=str(pki.ca_file), **keys).connect()
        text = str(refused.value)
        assert "\n" not in text
        # A close is seen as a lost connection, a broken pipe or a reset, whichever
        # comes first: retried, in one line.
        assert (
            "refused our TLS client certificate" in text
            if isinstance(refused.value, PermanentError)
            else any(s in text for s in ("Connection lost", "Broken pipe", "reset by peer"))
        ), text
    ssl_context = ssl.create_default_context(cafile=str(pki.ca_file))
    ssl_context.load_cert_chain(str(pki.cert_file), str(pki.key_file))
    await assert_delivers(
        lambda: make_sink(
            [server.url], ca_file=str(pki.ca_file), **client, **single_stream_keys(ns)
        ),
        ns,
        [server.url.replace("tls://", "nats://")],
        tls=ssl_context,
    )


async def test_several_servers_the_first_down_the_next_one_taken(
    nats_cluster: servers.NatsCluster, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"nats://127.0.0.1:{servers.free_port()}"
    caplog.set_level(logging.INFO)
    async with closing(
        lambda: connected(make_sink([dead, *nats_cluster.urls], **stream_keys(ns)))
    ) as op:
        sink = await op()
        assert await sink.write([FlowFile.create("a/b", b"1")]) == []
    assert "connected to 127.0.0.1:" in caplog.text


async def test_no_server_answering_says_why() -> None:
    """Not just nats-py's "no servers available for connection": the reason."""
    dead = f"nats://127.0.0.1:{servers.free_port()}"
    sink = make_sink([dead])
    with pytest.raises(RetryableError) as caught:
        await sink.connect()
    assert f"{dead}: ConnectionRefusedError" in str(caught.value)
    assert "no servers available" not in str(caught.value)


async def test_a_missing_tls_file_is_named() -> None:
    """OpenSSL said "[Errno 2] No such file or directory", naming no file."""
    sink = make_sink(["tls://127.0.0.1:1"], ca_file="/nonexistent/ca.pem")
    with pytest.raises(PermanentError, match=r"^ca_file /nonexistent/ca\.pem cannot be read$"):
        await sink.connect()


def test_a_stream_jetstream_refuses_is_refused_when_the_config_loads() -> None:
    # a duplicate_window written longer than max_age: JetStream refused the stream
    # ("duplicates window can not be larger then max age"), its creation retried for ever
    found = config_problems(
        servers=["nats://127.0.0.1:4222"],
        create_stream={"name": "A", "max_age": "30s", "duplicate_window": "2m"},
    )[1]
    assert found == [
        "sinks.fleet.create_stream.duplicate_window: 2m is longer than max_age (30s), which"
        " JetStream refuses: set duplicate_window: 30s or less, or leave it out"
    ]
    stream = {"name": "A", "max_age": "30s", "duplicate_window": "30s"}
    assert config_problems(servers=["nats://127.0.0.1:4222"], create_stream=stream)[1] == []


async def test_a_short_max_age_makes_the_window_as_short_as_jetstream_does(
    nats_factory: Callable[..., servers.Nats], ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    # create_stream: {max_age: 30s} was refused at load (the default window, 2m, is longer),
    # a setup that ran against its stream stopped by an upgrade. JetStream itself makes
    # the window max_age when shorter than 2m; so does the sink, and a stream it made
    # compares equal.
    server = nats_factory()
    keys = single_stream_keys(ns)
    keys["create_stream"]["max_age"] = "30s"
    for _ in range(2):  # made, then found as it was made: no warning
        sink = make_sink([server.url], **keys)
        await sink.connect()
        await sink.close()
    assert "other settings" not in caplog.text
    nc = await nats.connect(servers=[server.url])
    try:
        info = await nc.jetstream(timeout=JS_TIMEOUT).stream_info(ns.upper())
    finally:
        await nc.close()
    assert (info.config.max_age, info.config.duplicate_window) == (30.0, 30.0)


async def test_a_max_msg_size_past_jetstreams_stops_only_the_making_of_a_stream(
    nats_factory: Callable[..., servers.Nats], ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    # max_msg_size over 2GiB - 1 byte was refused at load: a stream that exists is left
    # as it is (the setting warned about, as any other); only making one cannot work
    # (JetStream answered "invalid JSON").
    server = nats_factory()
    keys = single_stream_keys(ns)
    keys["create_stream"]["max_msg_size"] = "3GiB"
    with pytest.raises(PermanentError) as raised:
        await make_sink([server.url], **keys).connect()
    assert str(raised.value) == (
        f"cannot create stream {ns.upper()}: create_stream.max_msg_size 3GiB is more than"
        " JetStream takes (2GiB - 1 byte); set it lower or leave it out (the server's"
        " max_payload bounds a message anyway)"
    )
    nc = await nats.connect(servers=[server.url])
    try:
        stream = js_api.StreamConfig(name=ns.upper(), subjects=[f"{ns}.pi-01.>"])
        await nc.jetstream(timeout=JS_TIMEOUT).add_stream(stream)
    finally:
        await nc.close()
    sink = make_sink([server.url], **keys)
    await sink.connect()
    try:
        assert await sink.write([FlowFile.create("a", b"{}")]) == []
    finally:
        await sink.close()
    assert f"max_msg_size -1 (config: {3 * 2**30})" in caplog.text


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"servers": ["http://x:4222"]}, "servers[0]: must read nats://host:4222"),
        ({"servers": ["nats://x:99999"]}, "the port is not a number"),
        ({"servers": ["nats://gw:pw@x:4222"]}, "not in the URL"),
        ({"servers": []}, "name at least one server"),
        ({"subject": "edge.{topic}.*"}, "no wildcards"),
        ({"subject": "edge..{topic}"}, "no empty tokens"),
        ({"subject": "edge.{device}"}, "unknown placeholder {device}"),
        ({"subject": "edge.{topic!r}"}, "{topic!r} is no placeholder"),
        ({"subject": "edge {topic}"}, "no spaces"),
        ({"user": "gw"}, "user and password go together"),
        ({"token": "t", "user": "gw", "password": "p"}, "use one way to log in"),
        ({"create_stream": {"name": "A.B"}}, "a stream name has no spaces"),
        ({"create_stream": {"name": "A", "subjects": ["a.>.b"]}}, "'>' the whole last token"),
        ({"max_in_flight": 0}, "max_in_flight: must be between 1 and 100000"),
        # The stream made for it took 'pre.>': every FlowFile was dead-lettered.
        ({"subject": "pre{topic}", "create_stream": {"name": "A"}}, "does not begin a token"),
        # Passed: the sink started and dead-lettered every FlowFile ("no stream takes it").
        (
            {"create_stream": {"name": "A", "subjects": ["edge.*", "other.>"]}},
            "create_stream.subjects: edge.*, other.> cannot match any subject of the template"
            " 'edge.{gateway}.{topic}' (subject)",
        ),
    ],
)
def test_config_problems(keys: dict[str, Any], message: str) -> None:
    keys = {"servers": ["nats://127.0.0.1:4222"], **keys}
    _config, problems = config_problems(**keys)
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    ("subject", "subjects"),
    [
        ("edge.{gateway}.{topic}", ["other.>", "edge.gw1.sensors.>"]),  # some topics
        ("edge.{gateway}.{topic}", ["*.*.*"]),
        ("pre{topic}", ["prefix.>"]),
        ("a.{sink}.{topic}.b", ["a.*.*.>"]),
    ],
)
def test_stream_subjects_that_may_take_some_subjects_are_not_refused(
    subject: str, subjects: list[str]
) -> None:
    _config, problems = config_problems(
        servers=["nats://127.0.0.1:4222"],
        subject=subject,
        create_stream={"name": "A", "subjects": subjects},
    )
    assert problems == []


def test_a_password_is_not_in_the_config_repr() -> None:
    config, problems = config_problems(
        servers=["nats://127.0.0.1:4222"], user="gw", password="hunter2-secret"
    )
    assert problems == []
    assert "hunter2-secret" not in repr(config)


async def test_a_topic_never_reaches_the_servers_own_subjects(
    nats_cluster: servers.NatsCluster, ns: str
) -> None:
    """With `subject: "{topic}"`, a topic `$JS/API/STREAM/DELETE/X` is not a JetStream API
    request: its subject starts with %24, and stream X is still there."""
    victim = ns.upper() + "_VICTIM"
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        await nc.jetstream(timeout=JS_TIMEOUT).add_stream(name=victim, subjects=[f"{ns}.victim.>"])
    finally:
        await nc.close()
    stream = {"name": ns.upper(), "subjects": ["%24JS.>", "%24SYS.>"], "replicas": 3}
    keys = {"subject": "{topic}", "create_stream": stream, "timeout": "3s"}
    async with closing(lambda: connected(make_sink(nats_cluster.urls, **keys))) as op:
        sink = await op()
        topics = [f"$JS/API/STREAM/DELETE/{victim}", "$SYS/REQ/SERVER/PING"]
        assert await sink.write([FlowFile.create(t, b"{}") for t in topics]) == []
    found = await stream_messages(nats_cluster.urls, ns.upper())
    assert [m.subject for m in found] == [
        f"%24JS.API.STREAM.DELETE.{victim}",
        "%24SYS.REQ.SERVER.PING",
    ]
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        assert (await nc.jetstream(timeout=JS_TIMEOUT).stream_info(victim)).config.name == victim
    finally:
        await nc.close()
    # a `$` anywhere else in the topic, or after a prefix of the template's, is just a character
    prefixed = make_sink(nats_cluster.urls, subject="edge.{topic}")
    assert prefixed.subject_of("$JS/API") == "edge.$JS.API"


async def test_a_batch_retried_after_a_full_stream_leaves_out_what_was_stored(
    nats_cluster: servers.NatsCluster, ns: str
) -> None:
    # A work queue that holds 5 messages and refuses more (discard new): each try of a batch
    # of 12 stores what fits, then a consumer takes them. Sent whole again, what the stream had
    # stored came back as duplicates at every try (and was stored again past the window).
    nc = await nats.connect(servers=nats_cluster.urls)
    js = nc.jetstream(timeout=JS_TIMEOUT)
    await js.add_stream(
        js_api.StreamConfig(
            name=ns.upper(),
            subjects=[f"{ns}.>"],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            max_msgs=5,
            discard=js_api.DiscardPolicy.NEW,
            num_replicas=3,
        )
    )
    consumer = await js.pull_subscribe(f"{ns}.>", "taker", stream=ns.upper())
    taken: list[str] = []

    async def take() -> None:
        try:
            for message in await consumer.fetch(5, timeout=1):
                taken.append(message.headers["Nats-Msg-Id"])
                await message.ack_sync()
        except nats.errors.TimeoutError:
            pass  # none yet

    refusals = 0
    try:
        async with closing(
            lambda: connected(make_sink(nats_cluster.urls, subject=f"{ns}.{{topic}}"))
        ) as opened:
            sink = await opened()
            batch = [FlowFile.create("t", json.dumps({"i": i}).encode()) for i in range(12)]
            # Each try stores what fits; the consumer then takes it (an acked message leaves
            # a work queue on every replica a moment later: a try may find it full still).
            for _ in range(60):
                try:
                    assert await sink.write(batch) == []
                    break
                except RetryableError as err:
                    assert "maximum messages exceeded" in str(err)
                    refusals += 1
                    await take()
            for _ in range(30):
                if len(taken) >= len(batch):
                    break
                await take()
            assert refusals >= 2 and sink.status()["duplicates"] == 0
    finally:
        await nc.close()
    assert taken == [ff.id for ff in batch]  # each once, in order


async def test_answers_in_flight_after_a_full_stream_are_heard_out(
    nats_cluster: servers.NatsCluster, ns: str
) -> None:
    # The first message goes to a full stream ("not now"), the rest to another that stores
    # them. The try gave up at the first answer: the rest, stored, were not heard of and
    # came back at the next try as duplicates (11 of them).
    nc = await nats.connect(servers=nats_cluster.urls)
    js = nc.jetstream(timeout=JS_TIMEOUT)
    full = js_api.StreamConfig(
        name=ns.upper() + "_FULL",
        subjects=[f"{ns}.full.>"],
        max_msgs=1,
        discard=js_api.DiscardPolicy.NEW,
    )
    try:
        await js.add_stream(full)
        await js.add_stream(name=ns.upper(), subjects=[f"{ns}.open.>"])
        await js.publish(f"{ns}.full.x", b"{}")
        async with closing(
            lambda: connected(make_sink(nats_cluster.urls, subject=f"{ns}.{{topic}}"))
        ) as opened:
            sink = await opened()
            batch = [FlowFile.create("full/x", b"{}")]
            batch += [FlowFile.create("open/x", json.dumps({"i": i}).encode()) for i in range(11)]
            with pytest.raises(RetryableError, match="maximum messages exceeded"):
                await sink.write(batch)
            await js.purge_stream(full.name)
            assert await sink.write(batch) == []
            assert sink.status()["duplicates"] == 0
    finally:
        await nc.close()
    found = await stream_messages(nats_cluster.urls, ns.upper())
    assert [m.headers["Nats-Msg-Id"] for m in found] == [ff.id for ff in batch[1:]]

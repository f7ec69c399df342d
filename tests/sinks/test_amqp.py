"""The amqp sink against a real RabbitMQ: the sink contract, then what is its own (message
properties, routing keys, unroutable messages, nacks, declaring, refusals)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest

from gateway.core.component import Context
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks.amqp import AmqpSink, AmqpSinkConfig
from tests import servers
from tests.sinks.contract import SinkContract, closing, connected, server_down, unique_name
from tests.sinks.contract import config_problems as sink_config_problems

pytestmark = pytest.mark.integration


def config_problems(**keys: Any) -> tuple[Any, list[str]]:
    return sink_config_problems("amqp", "fleet", **keys)


def make_sink(url: str, **keys: Any) -> AmqpSink:
    config, problems = config_problems(url=url, **keys)
    assert problems == []
    assert isinstance(config, AmqpSinkConfig)
    return AmqpSink(config, Context(name="fleet", kind="sink", gateway_id="pi-01"))


@pytest.fixture
def ns() -> str:
    """An exchange and queue name of this test's own: the broker is shared."""
    return unique_name()


@pytest.fixture
async def sink_for(rabbitmq: Any, ns: str) -> AsyncIterator[Callable[..., Any]]:
    """`await sink_for(**keys)`: a connected sink on exchange `ns`, with queue `ns` bound
    to it by `#` unless the keys say otherwise."""

    def make(**keys: Any) -> AmqpSink:
        keys = {"exchange": ns, "queue": ns, **keys}
        return make_sink(keys.pop("url", rabbitmq.url), **keys)

    async with closing(lambda **keys: connected(make(**keys))) as opened:
        yield opened


async def messages(rabbitmq: servers.RabbitMQ, queue: str) -> list[Any]:
    """Every message in `queue` with all its properties, left in it."""
    connection = await aio_pika.connect(rabbitmq.url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        total = declared.declaration_result.message_count or 0
        found = []
        while len(found) < total:
            message = await declared.get(no_ack=False, fail=False)
            if message is None:
                break
            found.append(message)
        return found
    finally:
        await connection.close()


# --- the contract -------------------------------------------------------------------------


class TestAmqpContract(SinkContract):
    exactly_once = False  # a batch sent again reaches the queue again (same message_id)

    @pytest.fixture
    def make_sink(self, rabbitmq: Any, ns: str) -> Callable[[], Any]:
        async def make() -> AmqpSink:
            # Only the contract's topics are routed: another one comes back unroutable.
            sink = make_sink(rabbitmq.url, exchange=ns, queue=ns, binding_key="contract.#")
            await sink.connect()
            return sink

        return make

    @pytest.fixture
    def fetch_ids(self, rabbitmq: Any, ns: str) -> Callable[[], Any]:
        return lambda: [message_id for message_id, _ in rabbitmq.messages(ns)]

    @pytest.fixture
    def bad_flowfile(self) -> Callable[[], FlowFile]:
        # No queue is bound to take `other.bad`: the broker returns it.
        return lambda: FlowFile.create("other/bad", b'{"temp": 1}')

    @pytest.fixture
    def outage(self, rabbitmq: Any) -> Callable[[], Any]:
        return server_down(rabbitmq)


# --- messages -----------------------------------------------------------------------------


async def test_a_message_carries_the_flowfile(rabbitmq: Any, ns: str, sink_for: Any) -> None:
    sink = await sink_for()
    created = 1_714_564_800_123_456_789
    json_ff = FlowFile.create(
        "plant/line.2/temp", b'{"temp": 21.5}', {"site": "north", "topic": "x"}, created=created
    )
    binary_ff = FlowFile.create("plant/a", b"\x00\xff raw", {})
    assert await sink.write([json_ff, binary_ff]) == []
    first, second = await messages(rabbitmq, ns)
    assert first.body == b'{"temp": 21.5}'
    assert first.message_id == json_ff.id
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert first.timestamp == dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert first.content_type == "application/json"
    assert first.app_id == "pi-01"
    # MQTT levels joined by dots; the dot inside a level became _.
    assert first.routing_key == "plant.line_2.temp"
    assert first.exchange == ns
    assert first.headers == {
        "site": "north",
        "topic": "plant/line.2/temp",  # the topic wins over an attribute of that name
        "ts": "2024-05-01T12:00:00.123456Z",
    }
    assert second.body == b"\x00\xff raw"
    assert second.message_id == binary_ff.id
    assert second.content_type is None
    assert second.routing_key == "plant.a"


async def test_routing_key_template_and_slash_separator(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    sink = await sink_for(
        exchange_type="direct",
        routing_key="{gateway}/{sink}/{topic}",
        topic_separator="/",
        binding_key="pi-01/fleet/plant/a.b",
    )
    ff = FlowFile.create("plant/a.b", b"1")
    assert await sink.write([ff]) == []
    (message,) = await messages(rabbitmq, ns)
    assert message.routing_key == "pi-01/fleet/plant/a.b"
    assert message.message_id == ff.id


async def test_the_default_exchange_routes_by_queue_name(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    sink = await sink_for(exchange="", routing_key=ns)
    batch = [FlowFile.create(f"plant/{i}", b"{}") for i in range(5)]
    assert await sink.write(batch) == []
    assert [m.message_id for m in await messages(rabbitmq, ns)] == [ff.id for ff in batch]


async def test_the_default_exchange_routes_by_a_key_that_names_the_sink(
    rabbitmq: Any, ns: str
) -> None:
    # routing_key: "{sink}" on a sink named as its queue routes each message there: it was
    # refused at load as "not the queue's name", a working setup stopped by an upgrade.
    config, problems = sink_config_problems(
        "amqp", ns, url=rabbitmq.url, exchange="", queue=ns, routing_key="{sink}"
    )
    assert problems == []
    assert isinstance(config, AmqpSinkConfig)
    async with closing(
        lambda: connected(AmqpSink(config, Context(name=ns, kind="sink", gateway_id="pi-01")))
    ) as opened:
        sink = await opened()
        batch = [FlowFile.create(f"plant/{i}", b"{}") for i in range(3)]
        assert await sink.write(batch) == []
    assert [m.message_id for m in await messages(rabbitmq, ns)] == [ff.id for ff in batch]


async def test_a_batch_keeps_its_order_with_a_small_window(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    # Big messages and a window of 64KiB: most wait for the window, in their order.
    sink = await sink_for(max_inflight=50, max_inflight_bytes="64KiB")
    batch = [FlowFile.create("plant/a", bytes([i % 256]) * (20_000 + i)) for i in range(60)]
    assert await sink.write(batch) == []
    found = rabbitmq.messages(ns)
    assert [message_id for message_id, _ in found] == [ff.id for ff in batch]
    assert [body for _, body in found] == [ff.content for ff in batch]


async def test_a_message_larger_than_a_frame_and_an_empty_one(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    # RabbitMQ's frames are at most 128 KiB: 300 kB goes as three body frames; an empty
    # message has none.
    sink = await sink_for()
    big = FlowFile.create("plant/a", bytes(range(256)) * 1200)
    empty = FlowFile.create("plant/b", b"")
    assert await sink.write([big, empty]) == []
    found = rabbitmq.messages(ns)
    assert found == [(big.id, big.content), (empty.id, b"")]


async def test_attributes_too_large_for_a_frame_are_refused_alone(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    # 240 kB of MQTT user properties: the broker closed the connection (FRAME_ERROR) at
    # every try, and the FlowFiles behind it never went.
    sink = await sink_for()
    huge = FlowFile.create("plant/a", b"1", {f"mqtt.user.p{i}": "v" * 60_000 for i in range(4)})
    large = FlowFile.create("plant/b", b"2", {"mqtt.user.p": "v" * 100_000})
    after = FlowFile.create("plant/c", b"3")
    rejected = await sink.write([huge, large, after])
    assert [r.flowfile.id for r in rejected] == [huge.id]
    assert "more than the broker's frame size allows (131064 bytes)" in rejected[0].reason
    assert [m for m, _ in rabbitmq.messages(ns)] == [large.id, after.id]


async def test_an_attribute_that_is_no_text_is_refused_alone(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    # A lone surrogate in an attribute raised out of write() with the publish half-queued:
    # the broker closed the connection, and the batch failed so at every try.
    sink = await sink_for()
    before = FlowFile.create("plant/a", b"1")
    bad = FlowFile.create("plant/b", b"2", {"note": "x\udc80"})
    after = FlowFile.create("plant/c", b"3")
    rejected = await sink.write([before, bad, after])
    assert [r.flowfile.id for r in rejected] == [bad.id]
    assert "cannot be sent as AMQP headers" in rejected[0].reason
    assert await sink.write([last := FlowFile.create("plant/d", b"4")]) == []
    assert [m for m, _ in rabbitmq.messages(ns)] == [before.id, after.id, last.id]


async def test_an_attribute_name_longer_than_a_header_name_is_refused_alone(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    # pamqp cut it to 128 bytes with a WARNING holding the whole name: two names alike in
    # their first 128 bytes became one header, the first value lost.
    sink = await sink_for()
    cut = FlowFile.create("plant/a", b"1", {"k" * 129: "v", "k" * 130: "w"})
    whole = FlowFile.create("plant/b", b"2", {"\u00e9" * 64: "v"})  # 128 bytes
    rejected = await sink.write([cut, whole])
    assert [r.flowfile.id for r in rejected] == [cut.id]
    assert rejected[0].reason == (
        f"amqp: the attribute {'k' * 40!r}... has a name longer than 128 bytes, the most an"
        " AMQP header name takes here"
    )
    (message,) = await messages(rabbitmq, ns)
    assert message.message_id == whole.id and message.headers["\u00e9" * 64] == "v"


async def test_unroutable_drop_counts_and_delivers_the_rest(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    sink = await sink_for(binding_key="plant.#", unroutable="drop")
    good = [FlowFile.create("plant/a", b"{}") for _ in range(3)]
    lost = [FlowFile.create("other/a", b"{}") for _ in range(2)]
    assert await sink.write([good[0], *lost, *good[1:]]) == []
    assert [m for m, _ in rabbitmq.messages(ns)] == [ff.id for ff in good]
    assert sink.status()["unroutable"] == 2


async def test_a_nack_sends_again_only_what_was_not_confirmed(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    sink = await sink_for(queue=None)
    # A queue that refuses publishes beyond 10 messages: the broker nacks the rest.
    connection = await aio_pika.connect(rabbitmq.url)
    channel = await connection.channel()
    queue = await channel.declare_queue(
        ns, durable=True, arguments={"x-max-length": 10, "x-overflow": "reject-publish"}
    )
    await queue.bind(ns, "#")
    try:
        batch = [FlowFile.create("plant/a", json.dumps({"seq": i}).encode()) for i in range(25)]
        with pytest.raises(RetryableError, match=r"refused 15 of 25 messages for now \(nack"):
            await sink.write(batch)
        assert [m for m, _ in rabbitmq.messages(ns)] == [ff.id for ff in batch[:10]]
        await queue.purge()  # a consumer took them
        # Sent again (the engine retries): the 10 confirmed are left out, so the batch gets
        # through, 10 at a time; sending it whole filled the queue with the same 10 at every
        # try, and the last 15 never went.
        with pytest.raises(RetryableError, match=r"refused 5 of 15 messages"):
            await sink.write(batch)
        assert [m for m, _ in rabbitmq.messages(ns)] == [ff.id for ff in batch[10:20]]
        await queue.purge()
        assert await sink.write(batch) == []
        assert [m for m, _ in rabbitmq.messages(ns)] == [ff.id for ff in batch[20:]]
        await queue.purge()
        # Done: the next batch goes whole.
        later = [FlowFile.create("plant/a", b"{}") for _ in range(3)]
        assert await sink.write(later) == []
        assert [m for m, _ in rabbitmq.messages(ns)] == [ff.id for ff in later]
    finally:
        await connection.close()


async def test_a_retried_batch_still_dead_letters_what_came_back(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    sink = await sink_for(queue=None)
    connection = await aio_pika.connect(rabbitmq.url)
    channel = await connection.channel()
    queue = await channel.declare_queue(
        ns, durable=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    await queue.bind(ns, "plant.#")
    try:
        # The second goes to no queue (returned), the fourth finds the queue full (nacked).
        topics = ["plant/a", "other/b", "plant/c", "plant/d"]
        batch = [FlowFile.create(topic, b"{}") for topic in topics]
        with pytest.raises(RetryableError, match="refused 1 of 4"):
            await sink.write(batch)
        await queue.purge()
        rejected = await sink.write(batch)
        assert [r.flowfile.id for r in rejected] == [batch[1].id]
        assert "no queue for routing key 'other.b'" in rejected[0].reason
        assert [m for m, _ in rabbitmq.messages(ns)] == [batch[3].id]
    finally:
        await connection.close()


# --- declaring and refusals ---------------------------------------------------------------


async def test_declare_false_needs_an_existing_exchange(rabbitmq: Any, ns: str) -> None:
    sink = make_sink(rabbitmq.url, exchange=ns, declare=False)
    with pytest.raises(PermanentError) as refused:
        await sink.connect()
    message = str(refused.value)
    assert f"no exchange '{ns}' in vhost 'edge'" in message
    assert "set declare: true" in message
    assert "\n" not in message
    await sink.close()
    # Once it exists, the same config connects.
    declared = make_sink(rabbitmq.url, exchange=ns)
    await declared.connect()
    await declared.close()
    await sink.connect()
    await sink.close()


async def test_an_exchange_of_another_type_is_refused_for_good(rabbitmq: Any, ns: str) -> None:
    first = make_sink(rabbitmq.url, exchange=ns, exchange_type="topic")
    await first.connect()
    await first.close()
    other = make_sink(rabbitmq.url, exchange=ns, exchange_type="fanout")
    with pytest.raises(PermanentError, match=r"inequivalent arg 'type'.*match exchange_type"):
        await other.connect()
    await other.close()


async def test_a_queue_of_other_settings_says_what_to_do_about_the_queue(
    rabbitmq: Any, ns: str
) -> None:
    # It said "match exchange_type and durable to it, or set declare: false": neither
    # touches the queue, which `queue` declares whatever `declare` says.
    connection = await aio_pika.connect(rabbitmq.url)
    try:
        await (await connection.channel()).declare_queue(ns, durable=False)
    finally:
        await connection.close()
    sink = make_sink(rabbitmq.url, exchange=ns, queue=ns)
    with pytest.raises(PermanentError) as refused:
        await sink.connect()
    await sink.close()
    message = str(refused.value)
    assert f"inequivalent arg 'durable' for queue '{ns}'" in message
    assert message.endswith(
        "(the queue exists with other settings (the sink declares it durable, with no"
        " arguments): leave `queue` out and bind it on the broker yourself, or delete it)"
    )


async def test_a_refused_password_is_permanent_and_not_shown(rabbitmq: Any, ns: str) -> None:
    secret = "Wr0ng-pa55-@#"
    sink = make_sink(rabbitmq.url, exchange=ns, username="edge", password=secret)
    with pytest.raises(PermanentError) as refused:
        await sink.connect()
    message = str(refused.value)
    assert "ACCESS_REFUSED" in message and "check username and password" in message
    assert secret not in message and "Wr0ng" not in message
    assert "\n" not in message
    # On a reconnect while running the same refusal is retried (the operator may be
    # changing the broker's side).
    with pytest.raises(RetryableError, match="ACCESS_REFUSED"):
        await sink.write([FlowFile.create("plant/a", b"{}")])
    await sink.close()


async def test_a_vhost_without_access_is_refused_for_good(rabbitmq: Any) -> None:
    url = rabbitmq.url.rsplit("/", 1)[0] + "/nowhere"
    sink = make_sink(url)
    with pytest.raises(PermanentError, match="refused us") as refused:
        await sink.connect()
    assert rabbitmq.password not in str(refused.value)
    await sink.close()


async def test_amqps_with_the_ca_and_a_client_certificate(
    rabbitmq: Any, ns: str, sink_for: Any
) -> None:
    tls = rabbitmq.tls
    sink = await sink_for(
        url=rabbitmq.tls_url,
        ca_file=str(tls.ca_file),
        cert_file=str(tls.cert_file),
        key_file=str(tls.key_file),
    )
    batch = [FlowFile.create("plant/a", json.dumps({"seq": i}).encode()) for i in range(3)]
    assert await sink.write(batch) == []
    assert [m for m, _ in rabbitmq.messages(ns)] == [ff.id for ff in batch]


async def test_amqps_without_the_ca_is_refused_for_good(rabbitmq: Any, ns: str) -> None:
    sink = make_sink(rabbitmq.tls_url, exchange=ns)  # the system's CAs: not the test CA
    with pytest.raises(PermanentError, match=r"refused us: .*not trusted.*check ca_file") as err:
        await sink.connect()
    assert servers.open_connections(rabbitmq.tls_port) == 0  # the failed connect's socket
    assert rabbitmq.password not in str(err.value)
    assert "\n" not in str(err.value)
    await sink.close()


async def test_close_returns_once_the_socket_is_closed(rabbitmq: Any, ns: str) -> None:
    """A TLS socket closes after the close_notify exchange, some turns of the event loop
    after the transport's close(): close() returned before, and a sink closed just before
    its event loop stopped left the socket to the garbage collector (an "unclosed
    transport" ResourceWarning failing a later test). A plain one closed a turn later."""
    tls = rabbitmq.tls
    keys = {"ca_file": str(tls.ca_file), "cert_file": str(tls.cert_file)}
    for url, port, more in (
        (rabbitmq.url, rabbitmq.port, {}),
        (rabbitmq.tls_url, rabbitmq.tls_port, {**keys, "key_file": str(tls.key_file)}),
    ):
        sink = make_sink(url, exchange=ns, queue=ns, **more)
        await sink.connect()
        assert await sink.write([FlowFile.create("plant/a", b"{}")]) == []
        assert servers.open_connections(port) == 1
        await sink.close()
        assert servers.open_connections(port) == 0, url


async def test_nobody_listening_is_retryable() -> None:
    sink = make_sink(f"amqp://edge:secret@127.0.0.1:{servers.free_port()}/edge")
    with pytest.raises(RetryableError, match="cannot connect to amqp://edge:\\*\\*\\*@") as err:
        await sink.connect()
    assert "secret" not in str(err.value)
    await sink.close()


async def test_a_server_that_is_not_an_amqp_broker_is_named_so() -> None:
    """E.g. the URL names RabbitMQ's management port (HTTP): this said "a frame of
    1345270062 bytes from the broker"."""

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(8)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = make_sink(f"amqp://edge:secret@127.0.0.1:{port}/edge")
        with pytest.raises(RetryableError, match="does not speak AMQP 0-9-1") as err:
            await sink.connect()
        assert "b'HTTP/1.1 400 Bad'" in str(err.value) and "secret" not in str(err.value)
        await sink.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_missing_tls_file_is_named() -> None:
    """OpenSSL said "[Errno 2] No such file or directory", naming no file."""
    sink = make_sink("amqps://edge:secret@127.0.0.1:1/edge", ca_file="/nonexistent/ca.pem")
    with pytest.raises(PermanentError, match=r"^ca_file /nonexistent/ca\.pem cannot be read$"):
        await sink.connect()
    await sink.close()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"routing_key": "edge.{topic!r}"}, "{topic!r} is no placeholder"),
        ({"routing_key": "edge.{}"}, "unknown placeholder {}"),
        ({"exchange": "x-{gateway:>9}"}, "{gateway:>9} is no placeholder"),
    ],
)
def test_a_template_with_a_conversion_or_an_empty_field_is_refused(
    keys: dict[str, Any], message: str
) -> None:
    # they passed, and the sink crashed at its start (KeyError, IndexError) or padded names
    _config, problems = config_problems(url="amqp://broker", **keys)
    assert any(message in p for p in problems), problems

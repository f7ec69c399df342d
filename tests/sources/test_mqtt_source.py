"""The MQTT source against a real Mosquitto: the source contract (QoS 1 and QoS 2), acks
only when told, redeliveries recognised."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from gateway.config.schema import Problems, build_dataclass
from gateway.core.component import Context, Message, NoMarks
from gateway.core.errors import PermanentError, RetryableError
from gateway.sources import mqtt as mqtt_source
from gateway.sources.mqtt import MqttSource, MqttSourceConfig, _user_attributes
from tests.faults.fakebroker import FakeBroker, publish_packet, utf8
from tests.sinks.contract import unique_name
from tests.sources.contract import SourceContract

pytestmark = pytest.mark.integration


def make_source(mosquitto: Any, client_id: str, marks: Any = None, **extra: Any) -> MqttSource:
    problems = Problems()
    raw = {"type": "mqtt", "topics": ["acks/#"], "qos": 1, "client_id": client_id,
           "url": mosquitto.url if mosquitto else None, **extra}  # fmt: skip
    config = build_dataclass(MqttSourceConfig, raw, (), problems)
    assert not problems, problems.items
    ctx = Context(name="plant", kind="source")
    if marks is not None:
        ctx.marks = marks
    return MqttSource(config, ctx)


def publish(mosquitto: Any, topic: str, payloads: list[bytes], qos: int = 1) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-pub")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    for p in payloads:
        client.publish(topic, p, qos=qos).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


class MqttProducer:
    """Publishes each item at `qos` on <prefix>/<tag>, waiting for the broker's answer.
    The publisher is told nothing of the gateway's PUBACK to the broker, so `confirmed`
    is None: the contract's kill case is what proves the source acks after the commit
    (acked earlier, the killed engine's items would not be redelivered)."""

    def __init__(self, port: int, prefix: str, qos: int) -> None:
        self.port = port
        self.prefix = prefix
        self.qos = qos

    def _publish(self, tag: str, n: int) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{self.prefix}-pub")
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        try:
            for seq in range(n):
                body = json.dumps({"tag": tag, "seq": seq}).encode()
                client.publish(f"{self.prefix}/{tag}", body, qos=self.qos).wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()

    async def send(self, tag: str, n: int) -> None:
        await asyncio.to_thread(self._publish, tag, n)  # paho blocks: in a thread

    async def confirmed(self, tag: str) -> bool | None:
        return None

    async def close(self) -> None:
        pass


class TestMqttSourceContract(SourceContract):
    """QoS 1: at least once (a redelivery the store cannot prove it holds is stored again)."""

    at_least_once = True
    qos = 1

    @pytest.fixture
    def prefix(self) -> str:
        return unique_name()

    @pytest.fixture
    def source_keys(self, mosquitto: Any, prefix: str) -> dict[str, Any]:
        # a client id of this test's own, the same for each engine of it: the session
        # (and what the broker holds for it) outlives a kill and a stop
        return {"type": "mqtt", "url": mosquitto.url, "topics": [f"{prefix}/#"],
                "qos": self.qos, "client_id": prefix}  # fmt: skip

    @pytest.fixture
    def producer(self, mosquitto: Any, prefix: str) -> MqttProducer:
        return MqttProducer(mosquitto.port, prefix, self.qos)

    @pytest.fixture
    def topic_of(self, prefix: str) -> Callable[[str, int], str]:
        return lambda tag, seq: f"{prefix}/{tag}"


class TestMqttQos2SourceContract(TestMqttSourceContract):
    """QoS 2 (published and subscribed: a message comes at the lower of the two): exactly
    once, by the protocol."""

    at_least_once = False
    qos = 2


async def read_n(source: MqttSource, n: int) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(15):
        while len(got) < n:
            got.extend(await source.read())
    return got


async def test_unacknowledged_messages_come_back_and_acked_ones_do_not(mosquitto: Any) -> None:
    first = make_source(mosquitto, "acks-1")
    await first.connect()
    await asyncio.to_thread(publish, mosquitto, "acks/a", [b"one", b"two", b"three"])
    got = await read_n(first, 3)
    assert [m.flowfile.content for m in got] == [b"one", b"two", b"three"]
    assert got[0].flowfile.attributes["mqtt.topic"] == "acks/a"
    assert got[0].flowfile.attributes["mqtt.qos"] == "1"
    got[0].ack()  # only "one" is committed and acknowledged
    await asyncio.sleep(0.3)
    await first.close()

    second = make_source(mosquitto, "acks-1")
    await second.connect()
    again = await read_n(second, 2)
    assert sorted(m.flowfile.content for m in again) == [b"three", b"two"]
    for m in again:
        m.ack()
    await asyncio.sleep(0.3)
    await second.close()

    third = make_source(mosquitto, "acks-1")
    await third.connect()
    await asyncio.to_thread(publish, mosquitto, "acks/a", [b"four"])
    assert [m.flowfile.content for m in await read_n(third, 1)] == [b"four"]
    await third.close()


class Marks(NoMarks):
    """Marks as the store keeps them, with a broker whose ids are known to count up."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: set[tuple[int, bytes]] = set()

    def committed(self, slot: int, digest: bytes) -> bool:
        return (slot, digest[:8]) in self.stored

    def ids_counted(self, more_than: int) -> bool:
        return True


async def test_a_redelivery_of_a_stored_message_is_acked_without_a_flowfile(mosquitto: Any) -> None:
    marks = Marks()
    first = make_source(mosquitto, "acks-2")
    await first.connect()
    await asyncio.to_thread(publish, mosquitto, "acks/b", [b"x"])
    (msg,) = await read_n(first, 1)
    assert msg.dedupe is not None
    marks.stored.add((msg.dedupe[0], msg.dedupe[1][:8]))  # committed, but no PUBACK went out
    await first.close()

    second = make_source(mosquitto, "acks-2", marks)
    await second.connect()
    await asyncio.to_thread(publish, mosquitto, "acks/b", [b"y"])
    got = await read_n(second, 1)
    assert [m.flowfile.content for m in got] == [b"y"]
    assert second.redeliveries == 1
    await second.close()


async def test_oversized_payload_is_rejected_with_a_reason(mosquitto: Any) -> None:
    source = make_source(mosquitto, "acks-3", max_payload="1KiB")
    await source.connect()
    await asyncio.to_thread(publish, mosquitto, "acks/c", [b"z" * 5000])
    (msg,) = await read_n(source, 1)
    assert msg.reject is not None and "max_payload" in msg.reject
    assert len(msg.flowfile.content) == 1024
    await source.close()


async def test_a_resumed_session_with_a_backlog_beyond_receive_maximum(mosquitto: Any) -> None:
    first = make_source(mosquitto, "acks-4", receive_maximum=10)
    await first.connect()
    await first.close()
    await asyncio.to_thread(publish, mosquitto, "acks/d", [str(i).encode() for i in range(100)])
    second = make_source(mosquitto, "acks-4", receive_maximum=10)
    async with asyncio.timeout(15):
        await second.connect()  # the backlog arrives before SUBACK; that must not stall us
    got: list[Message] = []
    async with asyncio.timeout(15):
        while len(got) < 100:
            batch = await second.read()
            for m in batch:
                m.ack()  # as the engine does after each commit
            got.extend(batch)
    assert sorted(int(m.flowfile.content) for m in got) == list(range(100))
    await second.close()


def test_a_repeated_user_property_key_keeps_every_value() -> None:
    attrs = {"mqtt.topic": "t"}
    _user_attributes(attrs, [("k", "a"), ("k.1", "x"), ("k", "b"), ("k", "c")])
    assert attrs == {
        "mqtt.topic": "t",
        "mqtt.user.k": "a",
        "mqtt.user.k.1": "x",
        "mqtt.user.k.2": "b",
        "mqtt.user.k.3": "c",
    }


async def test_large_messages_pause_reading_at_receive_max_bytes(mosquitto: Any) -> None:
    source = make_source(mosquitto, "bytes-1", receive_max_bytes="64KiB")
    await source.connect()
    payloads = [bytes([i]) * 20_000 for i in range(40)]  # 800 KB, far over the budget
    await asyncio.to_thread(publish, mosquitto, "acks/big", payloads)
    got = await read_n(source, 3)
    await asyncio.sleep(0.5)  # what the broker can push while we hold the acks
    while source._buffer:
        got.extend(await source.read())
    assert source.pauses >= 1
    assert len(got) < 40  # reading stopped while 64 KiB were not acknowledged
    # a read can bring in at most one socket read (256 KiB) beyond the budget
    assert source.inflight_bytes <= 64 * 1024 + 256 * 1024 + 20_000
    new = got
    async with asyncio.timeout(15):
        while True:
            for m in new:
                assert m.ack is not None
                m.ack()  # as the engine does after each commit: reading resumes
            if len(got) == 40:
                break
            new = await source.read()
            got.extend(new)
    assert sorted(m.flowfile.content[0] for m in got) == list(range(40))
    await source.close()


async def test_tls_files_that_cannot_be_read_stop_the_source_naming_them(tmp_path: Any) -> None:
    # It said "[Errno 2] No such file or directory", naming no file, and retried for ever.
    missing = str(tmp_path / "ca.pem")
    source = make_source(None, "gw-tls-files", url="mqtts://127.0.0.1:1", ca_file=missing)
    with pytest.raises(PermanentError, match=f"cannot use the TLS files \\(ca_file '{missing}'\\)"):
        await source.connect()


async def test_tls_files_from_mqtt_that_cannot_be_read_are_named_by_their_mqtt_keys(
    tmp_path: Any,
) -> None:
    # On the gateway's broker a source without TLS files of its own uses mqtt.ca_file...;
    # the error names the key the operator wrote.
    missing = str(tmp_path / "ca.pem")
    source = make_source(None, "gw-tls-shared")
    source.ctx.mqtt_url = "mqtts://127.0.0.1:1"
    source.ctx.mqtt_tls_files = (missing, None, None)
    with pytest.raises(
        PermanentError, match=f"cannot use the TLS files \\(mqtt.ca_file '{missing}'\\)"
    ):
        await source.connect()


async def test_a_connect_timeout_names_the_broker_and_the_time(monkeypatch: Any) -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes CONNECT, never answers
        writer.close()
        await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(mqtt_source, "CONNECT_TIMEOUT", 0.3)
    source = make_source(type("B", (), {"url": f"mqtt://127.0.0.1:{port}"}), "timeout-1")
    try:
        await source.connect()
    except RetryableError as err:
        assert str(err) == f"timed out after 0.3 s connecting to MQTT broker 127.0.0.1:{port}"
    else:
        raise AssertionError("connect() returned")
    await source.close()
    await done.wait()
    server.close()
    await server.wait_closed()


async def test_a_session_the_broker_lost_is_said(
    mosquitto_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A broker killed before it saved its sessions (or one without persistence, or a
    # session expired): what was published for the gateway meanwhile was lost, and the
    # log said only "(new session)" at INFO.
    broker = mosquitto_factory()
    source = make_source(broker, "gw-session-lost")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    await source.connect()  # the first session: nothing was lost
    await source.close()
    assert warnings() == []
    broker.kill()  # before it saved the session
    broker.start()
    await source.connect()
    await source.close()
    assert warnings() == [
        "source plant: the broker no longer had the session of gw-session-lost: what was"
        " published for it while the gateway was away (or disconnected), and what it had not"
        " acknowledged, if anything, is lost; the broker keeps sessions across its restarts"
        " only with `persistence true`, and for session_expiry (604800s) at most"
    ]
    broker.stop()  # saves the session: resumed, nothing more said
    broker.start()
    await source.connect()
    await source.close()
    assert len(warnings()) == 1


async def test_a_session_taken_over_by_a_client_with_the_same_id_is_named(
    mosquitto: Any,
) -> None:
    # Two gateways with one gateway.id (a cloned SD card) take each other's session; the
    # log said only "the broker closed the connection; retrying", on both, for ever.
    source = make_source(mosquitto, "gw-taken-over")
    await source.connect()
    other = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="gw-taken-over", protocol=paho.MQTTv5
    )
    other.connect("127.0.0.1", mosquitto.port)
    other.loop_start()
    try:
        with pytest.raises(RetryableError) as err:
            await read_n(source, 1)
    finally:
        other.disconnect()
        other.loop_stop()
        await source.close()
    assert str(err.value) == (
        "the broker closed the connection (soon after it accepted it: if this repeats,"
        " another client uses the client id gw-taken-over; two gateways with the same"
        " gateway.id take each other's session)"
    )


async def test_a_refused_login_says_what_the_code_means_and_which_keys_give_it(
    mosquitto_factory: Any,
) -> None:
    # Mosquitto sends no reason text: "the broker refused the connection (reason code
    # 0x87)" was all a missing or wrong password gave.
    broker = mosquitto_factory(user=("gw", "s3cret"))
    problems = Problems()
    for extra in ({}, {"username": "gw", "password": "wrong"}):
        raw = {"type": "mqtt", "topics": ["a/#"], "url": broker.url, **extra}
        config = build_dataclass(MqttSourceConfig, raw, (), problems)
        assert not problems, problems.items
        source = MqttSource(config, Context(name="plant", kind="source"))
        with pytest.raises(PermanentError) as info:
            await source.connect()
        await source.close()
        assert str(info.value) == (
            f"MQTT broker 127.0.0.1:{broker.port}: the broker refused the connection (reason"
            " code 0x87: Not authorized); check the user name and password it connects with"
            " (the source's `username` and `password`, or its `url`'s; else mqtt.username"
            " and mqtt.password)"
        )


async def test_the_gateway_broker_credentials_and_client_id_prefix_apply_to_its_sources(
    mosquitto_factory: Any,
) -> None:
    """`mqtt.username`, `mqtt.password` and `mqtt.client_id` reach a source that sets none."""
    broker = mosquitto_factory(user=("gw", "s3cret"))
    problems = Problems()
    raw = {"type": "mqtt", "topics": ["acks/#"], "qos": 1}
    config = build_dataclass(MqttSourceConfig, raw, (), problems)
    assert not problems, problems.items
    ctx = Context(
        name="plant",
        kind="source",
        mqtt_url=broker.url,
        mqtt_client_prefix="site-7",
        mqtt_username="gw",
        mqtt_password="s3cret",
        mqtt_keepalive=20.0,
    )
    source = MqttSource(config, ctx)
    await source.connect()
    try:
        assert source._client_id == "site-7-plant"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-pub-auth")
        client.username_pw_set("gw", "s3cret")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.publish("acks/auth", b"1", qos=1).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        got = await read_n(source, 1)
        assert got[0].flowfile.content == b"1"
    finally:
        await source.close()

    # a source with its own url does not send the gateway broker's credentials
    raw = {"type": "mqtt", "topics": ["acks/#"], "url": broker.url}
    config = build_dataclass(MqttSourceConfig, raw, (), problems)
    elsewhere = MqttSource(config, ctx)
    try:
        await elsewhere.connect()
    except Exception as err:
        assert "not authorized" in str(err).lower() or "refused" in str(err).lower(), err
    else:
        await elsewhere.close()
        raise AssertionError("a source with its own url connected with the gateway's password")


@pytest.fixture
def fake_broker() -> Iterator[FakeBroker]:
    broker = FakeBroker().start()
    yield broker
    broker.stop()


def end_session(broker: FakeBroker, client_id: str) -> None:
    """The broker forgets the session (it expired): the next CONNECT gets Session Present 0."""

    async def forget() -> None:
        broker.sessions.pop(client_id, None)

    broker._call(forget)


async def buffered(source: MqttSource, n: int) -> None:
    """Wait until `n` messages are received and not read yet."""
    async with asyncio.timeout(10):
        while len(source._buffer) < n:
            source._ready.clear()
            await source._ready.wait()


async def test_an_old_sessions_ack_leaves_the_new_sessions_packet_id_alone(
    fake_broker: FakeBroker,
) -> None:
    source = make_source(fake_broker, "epoch-1", qos=2)
    await source.connect()
    fake_broker.publish("acks/e", b"old", 2)  # packet id 1 of the first session
    await buffered(source, 1)  # received, not read yet
    await source.close()
    end_session(fake_broker, "epoch-1")
    await source.connect()  # Session Present 0: packet ids start again
    assert fake_broker.publish("acks/e", b"new", 2) == 1  # the same id, another message
    await buffered(source, 2)
    old, new = await source.read()
    assert (old.flowfile.content, new.flowfile.content) == (b"old", b"new")
    old.ack()  # committed: the old session's id 1 must not free the new session's
    await source.close()
    await source.connect()  # session resumed: the broker sends id 1 again, DUP set
    fake_broker.publish("acks/e", b"end", 2)
    got = await read_n(source, 1)
    assert [m.flowfile.content for m in got] == [b"end"]  # "new" is not stored twice
    for m in (new, *got):
        m.ack()
    assert (source.unacked, source.inflight_bytes, source._pending) == (0, 0, {})
    await source.close()


def user_property(key: str, value: str) -> bytes:
    return b"\x26" + utf8(key) + utf8(value)


async def test_user_properties_count_in_the_byte_bound(fake_broker: FakeBroker) -> None:
    """Tiny payloads with 30 KiB of user properties each: the bound is on what is held."""
    source = make_source(fake_broker, "bytes-user", qos=0, receive_max_bytes="64KiB")
    await source.connect()
    props = user_property("pad", "p" * 30_000)
    fake_broker.send_raw(publish_packet("acks/u", b"1", 0, 0, props=props) * 100)
    fake_broker.send_raw(publish_packet("acks/u", b"end", 1, 0x100))  # QoS 1: never dropped
    await buffered(source, 3)
    while source._buffer[-1].flowfile.content != b"end":
        source._ready.clear()
        await source._ready.wait()
    assert source.dropped_qos0 == 100 - (len(source._buffer) - 1) >= 98
    assert source.inflight_bytes <= 64 * 1024 + 30_000 + 1000  # the QoS 1 one comes on top
    assert source._buffer[0].flowfile.attributes["mqtt.user.pad"] == "p" * 30_000
    await source.close()


async def test_a_lone_qos0_message_larger_than_receive_max_bytes_is_taken(
    fake_broker: FakeBroker,
) -> None:
    # receive_max_bytes 64KiB and the default max_payload: every QoS 0 message over 64 KiB
    # was dropped, the gateway holding nothing (QoS 1 ones were taken).
    source = make_source(fake_broker, "bytes-lone", qos=0, receive_max_bytes="64KiB")
    await source.connect()
    fake_broker.send_raw(publish_packet("acks/big", b"b" * 100_000, 0, 0))
    await buffered(source, 1)
    assert source._buffer[0].flowfile.content == b"b" * 100_000
    assert source.dropped_qos0 == 0
    await source.close()


async def test_invalid_qos0_messages_are_bounded_and_logged_once(
    fake_broker: FakeBroker, caplog: Any
) -> None:
    source = make_source(fake_broker, "bytes-invalid", qos=0, receive_max_bytes="64KiB")
    await source.connect()
    bad = publish_packet("acks/\x00bad", b"b" * 1000, 0, 0)  # U+0000 in the topic
    fake_broker.send_raw(bad * 1000)
    fake_broker.send_raw(publish_packet("acks/v", b"end", 1, 0x100))
    await buffered(source, 2)
    while source._buffer[-1].flowfile.content != b"end":
        source._ready.clear()
        await source._ready.wait()
    held = len(source._buffer) - 1
    assert held < 64 and source.dropped_qos0 == 1000 - held and source.invalid == held
    assert source.inflight_bytes <= 64 * 1024 + 1000
    warnings = [r.getMessage() for r in caplog.records if "dead letters" in r.getMessage()]
    assert len(warnings) == 1 and "U+0000" in warnings[0]
    await source.close()


async def test_packet_id_0_messages_pause_reading_at_receive_max_bytes(
    fake_broker: FakeBroker,
) -> None:
    source = make_source(fake_broker, "bytes-pid0", receive_max_bytes="64KiB")
    await source.connect()
    fake_broker.send_raw(publish_packet("acks/z", b"z" * 1000, 1, 0) * 1000)  # 1 MB, id 0
    await buffered(source, 60)
    assert source.pauses == 1
    # a read can bring in at most one socket read (256 KiB) beyond the budget
    assert source.inflight_bytes <= 64 * 1024 + 256 * 1024 + 2000
    got: list[Message] = []
    async with asyncio.timeout(15):
        while len(got) < 1000:  # each batch committed and acked: reading resumes
            batch = await source.read()
            for m in batch:
                m.ack()
            got.extend(batch)
    assert all(m.reject and "packet id 0" in m.reject for m in got)
    await source.close()


async def test_a_packet_id_0_dead_letter_says_once_that_it_cannot_be_acknowledged(
    fake_broker: FakeBroker,
) -> None:
    """Its reason read "... at QoS 1, which cannot be acknowledged (packet id 0: it cannot
    be acknowledged, the broker may send it again)". With another fault named first, the
    packet id 0 is still said."""
    source = make_source(fake_broker, "pid0-reason")
    await source.connect()
    fake_broker.send_raw(publish_packet("acks/z", b"z", 1, 0))
    # a wildcard, and id 0; the topic's words are not the reason's
    fake_broker.send_raw(publish_packet("acks/packet id 0/+", b"w", 2, 0))
    plain, wildcard = [m.reject for m in await read_n(source, 2)]
    assert plain == (
        "invalid PUBLISH: it has packet id 0 at QoS 1, which cannot be acknowledged; the"
        " broker may send it again; the content is the raw PUBLISH packet"
    )
    assert wildcard is not None and wildcard.startswith(
        "invalid PUBLISH: its topic 'acks/packet id 0/+'"
    )
    assert wildcard.endswith(
        "; it has packet id 0 at QoS 2, which cannot be acknowledged; the broker may send"
        " it again; the content is the raw PUBLISH packet"
    )
    await source.close()


async def test_a_slow_commit_after_a_new_session_is_not_a_connect_timeout(
    fake_broker: FakeBroker, monkeypatch: Any, caplog: Any
) -> None:
    """Session Present 0: the old session's messages must be stored before subscribing;
    waiting for that store is not waiting for the broker."""
    caplog.set_level("INFO")
    source = make_source(fake_broker, "slow-commit")
    await source.connect()
    fake_broker.publish("acks/s", b"old", 1)
    (old,) = await read_n(source, 1)  # handed to the engine, its commit still running
    await source.close()
    end_session(fake_broker, "slow-commit")
    monkeypatch.setattr(mqtt_source, "CONNECT_TIMEOUT", 0.2)
    connecting = asyncio.ensure_future(source.connect())
    await asyncio.sleep(0.6)  # the commit takes longer than the connect timeout
    assert not connecting.done()
    assert "waiting for 1 messages of the old one to be stored" in caplog.text
    old.ack()
    await connecting  # before: RetryableError "timed out after 0.2 s connecting"
    fake_broker.publish("acks/s", b"new", 1)
    assert [m.flowfile.content for m in await read_n(source, 1)] == [b"new"]
    await source.close()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_stop_cutting_off_qos_0_messages_says_they_are_lost(qos: int) -> None:
    """A stop cutting a source off in its hand-over said its messages "are read again:
    sent again by their sender"; at QoS 0 the broker sends nothing again (nor does a
    serial line, a Modbus or OPC UA device, /proc): they are lost, at ERROR."""
    from gateway.sources.modbus.source import ModbusSource
    from gateway.sources.opcua.source import OpcuaSource
    from gateway.sources.serial import SerialSource
    from gateway.sources.system import SystemSource

    source = make_source(None, "cut", qos=qos)
    assert (source.lost_if_cut is not None) == (qos == 0)
    assert all(c.lost_if_cut for c in (SerialSource, ModbusSource, OpcuaSource, SystemSource))


async def test_a_lower_qos_granted_by_the_broker_is_said(
    mosquitto_factory: Any, caplog: Any
) -> None:
    """A broker capped at QoS 1 (Mosquitto's max_qos) grants qos: 2 as 1: at least once,
    not the exactly once the docs promise for QoS 2; the log said nothing of it."""
    broker = mosquitto_factory(options="max_qos 1")
    source = make_source(broker, "granted-lower", qos=2, topics=["acks/#", "other/+"])
    await source.connect()
    try:
        said = [r.getMessage() for r in caplog.records]
        lines = [m for m in said if "the broker granted" in m]
        assert lines == [
            "source plant: the broker granted QoS 1, not the qos: 2 asked for, to acks/#,"
            " other/+: messages"
            " come at least once, not exactly once (the broker's maximum QoS; raise it"
            " there, or set qos: 1)"
        ]
    finally:
        await source.close()


async def test_a_broker_refusing_tls_certificates_is_said(
    mosquitto_tls: Any, tmp_path: Any
) -> None:
    """No client certificate for a broker that requires one: the TLS 1.3 connection ended
    in a bare reset, and all the source said was "Connection reset by peer"."""
    assert mosquitto_tls.cert_file is not None and mosquitto_tls.key_file is not None
    no_certificate = make_source(mosquitto_tls, "tls-refused", ca_file=str(mosquitto_tls.ca_file))
    with pytest.raises(RetryableError) as caught:
        await no_certificate.connect()
    await no_certificate.close()
    assert str(caught.value).startswith(
        f"MQTT broker 127.0.0.1:{mosquitto_tls.port} refused us: it refused our TLS client"
        " certificate ("
    )
    assert str(caught.value).endswith("; check cert_file)")
    # a CA that did not sign the broker's certificate
    wrong_ca = make_source(
        mosquitto_tls,
        "tls-untrusted",
        ca_file=str(mosquitto_tls.cert_file),
        cert_file=str(mosquitto_tls.cert_file),
        key_file=str(mosquitto_tls.key_file),
    )
    with pytest.raises(RetryableError) as caught:
        await wrong_ca.connect()
    await wrong_ca.close()
    assert str(caught.value).startswith(
        f"MQTT broker 127.0.0.1:{mosquitto_tls.port} refused us: its TLS certificate is not"
        " trusted: "
    )
    assert str(caught.value).endswith("(check ca_file)")


async def test_a_filter_no_longer_in_topics_is_unsubscribed(mosquitto: Any) -> None:
    """The broker keeps a persistent session's subscriptions: a filter taken out of
    `topics` kept bringing its messages, and `a/#` narrowed to `a/b` brought each of
    `a/b`'s twice (once per filter), both stored. What the session holds is kept as the
    source's position (in memory here; the store's in the engine)."""
    prefix = unique_name()
    kept: list[bytes | None] = [None]

    async def position() -> bytes | None:
        return kept[0]

    async def save_position(value: bytes) -> None:
        kept[0] = value

    def source(topics: list[str]) -> MqttSource:
        made = make_source(mosquitto, prefix, topics=topics)
        made.ctx.position = position
        made.ctx.save_position = save_position
        return made

    first = source([f"{prefix}/a/#", f"{prefix}/old"])
    await first.connect()
    await first.close()
    second = source([f"{prefix}/a/b", f"{prefix}/end"])
    await second.connect()
    try:
        publish(mosquitto, f"{prefix}/a/b", [b"kept"])
        publish(mosquitto, f"{prefix}/a/x", [b"narrowed out"])
        publish(mosquitto, f"{prefix}/old", [b"removed"])
        publish(mosquitto, f"{prefix}/end", [b"end"])
        got: list[bytes] = []
        async with asyncio.timeout(15):
            while b"end" not in got:
                got.extend(m.flowfile.content for m in await second.read())
        assert got == [b"kept", b"end"]
    finally:
        await second.close()
    # once unsubscribed, the kept record holds the current topics alone
    assert json.loads(kept[0] or b"")["mqtt"]["topics"] == [f"{prefix}/a/b", f"{prefix}/end"]


def kept_position(source: MqttSource, kept: list[bytes | None]) -> MqttSource:
    """The source keeps its position in `kept[0]` (the store's, in the engine)."""

    async def position() -> bytes | None:
        return kept[0]

    async def save_position(value: bytes) -> None:
        kept[0] = value

    source.ctx.position = position
    source.ctx.save_position = save_position
    return source


def recorded(kept: list[bytes | None]) -> list[str]:
    return json.loads(kept[0] or b"")["mqtt"]["topics"]  # type: ignore[no-any-return]


async def narrowed(
    broker: FakeBroker, client_id: str, kept: list[bytes | None], before: list[str], **extra: Any
) -> MqttSource:
    """A source on `before`, connected once, then one on `extra`'s topics (not connected)."""
    first = kept_position(make_source(broker, client_id, topics=before), kept)
    await first.connect()
    await first.close()
    return kept_position(make_source(broker, client_id, **extra), kept)


async def test_an_unanswered_unsubscribe_does_not_stop_the_source(
    fake_broker: FakeBroker, monkeypatch: Any, caplog: Any
) -> None:
    """The UNSUBSCRIBE of a filter gone from topics ran inside the connect: no UNSUBACK in
    time failed the connect, and as the record still named the filter, every reconnect
    failed the same way: a source that had worked never started again."""
    monkeypatch.setattr(mqtt_source, "CONNECT_TIMEOUT", 0.5)
    kept: list[bytes | None] = [None]
    source = await narrowed(fake_broker, "unsub-silent", kept, ["a/#", "old"], topics=["a/#"])
    await source.connect()  # the broker does not answer the UNSUBSCRIBE
    await source.close()
    assert fake_broker.unsubscribes == [["old"]]
    assert recorded(kept) == ["a/#", "old"]
    assert any(
        r.levelname == "WARNING" and "unsubscribe from old" in r.getMessage()
        for r in caplog.records
    )
    fake_broker.unsubscribe_answer = {}  # it answers now: tried again, and done
    await source.connect()
    await source.close()
    assert fake_broker.unsubscribes == [["old"], ["old"]]
    assert recorded(kept) == ["a/#"]


async def test_a_broker_closing_on_an_unsubscribe_does_not_stop_the_source(
    fake_broker: FakeBroker, caplog: Any
) -> None:
    """A broker that closes the connection on the UNSUBSCRIBE (an ACL) closes it at every
    connect: the source asks UNSUBSCRIBE_TRIES times, then not again until it is started
    anew. It asked once only, blaming an ACL for what may have been a network blip."""
    kept: list[bytes | None] = [None]
    source = await narrowed(fake_broker, "unsub-close", kept, ["a/#", "old"], topics=["a/#"])
    fake_broker.unsubscribe_answer = "close"
    for _ in range(mqtt_source.UNSUBSCRIBE_TRIES):
        with pytest.raises(RetryableError):
            await source.connect()
        await source.close()
    await source.connect()  # not asked again: connected
    try:
        assert fake_broker.unsubscribes == [["old"]] * mqtt_source.UNSUBSCRIBE_TRIES
        assert recorded(kept) == ["a/#", "old"]
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert [m for m in said if "was lost" in m] == [
            "source plant: the connection to the broker was lost while unsubscribing from"
            " old, no longer in topics: its messages keep coming; tried again at the next"
            " connect"
        ] * (mqtt_source.UNSUBSCRIBE_TRIES - 1) + [
            "source plant: the connection to the broker was lost each of the 3 times the"
            " source unsubscribed from old, no longer in topics: its messages keep coming;"
            " not asked again until the gateway restarts or a reload changes this source (if"
            " the broker closes the connection on it, see its ACL)"
        ]
    finally:
        await source.close()


async def test_a_connection_lost_once_on_an_unsubscribe_is_tried_again(
    fake_broker: FakeBroker,
) -> None:
    """One connection lost during the UNSUBSCRIBE (a network blip, a keepalive timeout)
    put the filter on a never-ask list until the gateway restarted: its messages kept
    coming, though the broker would have let it go at the next connect."""
    kept: list[bytes | None] = [None]
    source = await narrowed(fake_broker, "unsub-blip", kept, ["a/#", "old"], topics=["a/#"])
    fake_broker.unsubscribe_answer = "close"
    with pytest.raises(RetryableError):
        await source.connect()
    await source.close()
    fake_broker.unsubscribe_answer = {}
    await source.connect()
    await source.close()
    assert fake_broker.unsubscribes == [["old"], ["old"]]
    assert recorded(kept) == ["a/#"]


async def test_a_refused_unsubscribe_is_kept_and_tried_again(
    fake_broker: FakeBroker, caplog: Any
) -> None:
    """An UNSUBACK refusing a filter was logged, but the record kept topics alone: the
    filter was forgotten, never tried again, and the INFO line said it was unsubscribed."""
    caplog.set_level("INFO")
    kept: list[bytes | None] = [None]
    source = await narrowed(
        fake_broker, "unsub-refused", kept, ["a/#", "old", "gone"], topics=["a/#"]
    )
    fake_broker.unsubscribe_answer = {"old": 0x87}
    await source.connect()
    await source.close()
    assert recorded(kept) == ["a/#", "old"]
    said = [r.getMessage() for r in caplog.records if "unsubscribe" in r.getMessage()]
    assert said == [
        "source plant: unsubscribed from gone: no longer in topics (the broker kept the"
        " subscription in the session)",
        "source plant: the broker refused to unsubscribe from old, no longer in topics: its"
        " messages keep coming; tried again at the next connect",
    ]
    fake_broker.unsubscribe_answer = {}
    await source.connect()
    await source.close()
    assert fake_broker.unsubscribes[-1] == ["old"]
    assert recorded(kept) == ["a/#"]


async def test_a_stale_filter_stays_when_its_replacement_is_refused(
    fake_broker: FakeBroker, caplog: Any
) -> None:
    """a/# replaced by $share/g/a/# on a broker without shared subscriptions: a/# was
    unsubscribed all the same, and nothing was subscribed."""
    kept: list[bytes | None] = [None]
    source = await narrowed(fake_broker, "unsub-replaced", kept, ["a/#"], topics=["$share/g/a/#"])
    fake_broker.refused.add("$share/g/a/#")
    fake_broker.unsubscribe_answer = {}
    await source.connect()
    await source.close()
    assert fake_broker.unsubscribes == []
    assert recorded(kept) == ["$share/g/a/#", "a/#"]
    assert any(
        r.levelname == "WARNING" and "kept the subscription to a/#" in r.getMessage()
        for r in caplog.records
    )


async def test_a_refused_filter_keeps_only_the_stale_filters_it_overlaps(
    fake_broker: FakeBroker,
) -> None:
    """With any new filter refused, every stale one was kept: a/# replaced by a/b and a
    refused x/denied stayed subscribed, and each a/b message came twice."""
    kept: list[bytes | None] = [None]
    source = await narrowed(
        fake_broker, "unsub-partly", kept, ["a/#", "x/#"], topics=["a/b", "x/denied"]
    )
    fake_broker.refused.add("x/denied")
    fake_broker.unsubscribe_answer = {}
    await source.connect()
    await source.close()
    assert fake_broker.unsubscribes == [["a/#"]]
    assert recorded(kept) == ["a/b", "x/denied", "x/#"]


async def test_a_stale_filter_is_unsubscribed_on_the_same_broker_by_another_url(
    fake_broker: FakeBroker,
) -> None:
    """The record's broker was compared as host:port text: localhost for 127.0.0.1 found
    the session but left the stale filter subscribed, and the record forgot it."""
    kept: list[bytes | None] = [None]
    source = await narrowed(
        fake_broker,
        "unsub-url",
        kept,
        ["a/#", "old"],
        topics=["a/#"],
        url=f"mqtt://localhost:{fake_broker.port}",
    )
    fake_broker.unsubscribe_answer = {}
    await source.connect()
    await source.close()
    assert fake_broker.unsubscribes == [["old"]]
    assert recorded(kept) == ["a/#"]

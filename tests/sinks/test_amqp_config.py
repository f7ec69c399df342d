"""The amqp sink without a broker: its config checks, routing keys, and the byte window
that bounds what waits for a confirm."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import load
from gateway.core.component import Context
from gateway.core.errors import ConfigError
from gateway.sinks.amqp import AmqpSink, _ByteWindow
from tests.sinks.contract import config_problems as sink_config_problems

pytestmark = pytest.mark.unit

URL = "amqp://edge:s3cret-pw@127.0.0.1:5672/plant"


def problems(**keys: Any) -> list[str]:
    return sink_config_problems("amqp", "fleet", **{"url": URL, **keys})[1]


def test_the_defaults_build() -> None:
    config, found = sink_config_problems("amqp", "fleet", url=URL)
    assert found == []
    assert (config.exchange, config.exchange_type, config.routing_key) == (
        "edge",
        "topic",
        "{topic}",
    )
    assert (config.declare, config.durable, config.unroutable) == (True, True, "dead_letter")


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"url": "http://h/v"},
            "sinks.fleet.url: 'http://h/v' must start with amqp:// or amqps://",
        ),
        (
            {"url": "amqp://edge:s3cret-pw@/plant"},
            "sinks.fleet.url: amqp://edge:***@/plant names no host",
        ),
        (
            {"url": "amqp://edge:s3cret-pw@h:0/plant"},
            "sinks.fleet.url: amqp://edge:***@h:0/plant: the port must be a number from 1 to 65535",
        ),
        (
            {"url": "amqp://edge:s3cret-pw@h/a/b"},
            "sinks.fleet.url: amqp://edge:***@h/a/b: write a vhost holding / percent-encoded (%2F)",
        ),
        ({"ca_file": "/ca.pem"}, "sinks.fleet.ca_file: needs TLS: use an amqps:// URL"),
        (
            {"url": "amqps://h/v", "cert_file": "/c.pem"},
            "sinks.fleet.cert_file: cert_file and key_file go together",
        ),
        (
            {"routing_key": "{site}.{topic}"},
            "sinks.fleet.routing_key: '{site}.{topic}': unknown placeholder {site};"
            " use {gateway}, {sink}, {topic}",
        ),
        (
            {"exchange": "x.{topic}"},
            "sinks.fleet.exchange: 'x.{topic}': unknown placeholder {topic}; use {gateway}, {sink}",
        ),
        (
            {"exchange": "has space"},
            "sinks.fleet.exchange: 'has space': an exchange name has letters, digits, -, _, . and"
            " : only",
        ),
        (
            {"exchange": "amq.topic"},
            "sinks.fleet.exchange: 'amq.topic': amq.* exchanges exist already and cannot be"
            " declared; set declare: false",
        ),
        ({"queue": ""}, "sinks.fleet.queue: must be 1 to 255 bytes long"),
        ({"exchange_type": "x-delayed"}, "sinks.fleet.exchange_type"),
        ({"unroutable": "retry"}, "sinks.fleet.unroutable"),
        ({"topic_separator": "-"}, "sinks.fleet.topic_separator"),
        ({"max_inflight": 0}, "sinks.fleet.max_inflight: must be between 1 and 10000"),
        ({"max_inflight_bytes": "1KiB"}, "sinks.fleet.max_inflight_bytes: must be between"),
        ({"exchnage": "x"}, "did you mean 'exchange'"),
        # The broker takes names and keys of at most 255 bytes (a longer exchange crashed
        # the sink at connect); a zero timeout said "must be between 0 and None".
        ({"exchange": "e" * 256}, "sinks.fleet.exchange: must be at most 255 bytes long"),
        ({"routing_key": "k" * 250 + ".{topic}." + "k" * 6}, "sinks.fleet.routing_key: must be at"),
        ({"timeout": "0s"}, "sinks.fleet.timeout: must be more than 0s"),
        ({"connect_timeout": "0s"}, "sinks.fleet.connect_timeout: must be more than 0s"),
    ],
)
def test_config_problems(keys: dict[str, Any], expected: str) -> None:
    found = problems(**keys)
    assert any(expected in p for p in found), found
    assert not any("s3cret" in p for p in found), found


def test_amq_exchanges_may_be_used_without_declaring() -> None:
    assert problems(exchange="amq.topic", declare=False) == []


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"binding_key": "plant.#"},
            "sinks.fleet.binding_key: binding_key applies only with queue (which it binds)",
        ),
        (
            {"exchange": "", "queue": "q", "routing_key": "q", "binding_key": "plant.#"},
            'sinks.fleet.binding_key: the default exchange (exchange: "") takes no binding: it'
            " routes to the queue named by the routing key",
        ),
        (
            {"exchange": "amq.fanout", "declare": False, "exchange_type": "fanout"},
            "sinks.fleet.exchange_type: exchange_type is for declaring the exchange; with"
            " declare: false the exchange is only checked to exist",
        ),
        (
            {"declare": False, "durable": False},
            "sinks.fleet.durable: durable is for declaring the exchange; with declare: false"
            " the exchange is only checked to exist",
        ),
        (
            {"exchange": "", "queue": "readings", "routing_key": "plant"},
            'sinks.fleet.routing_key: the default exchange (exchange: "") routes a message to'
            " the queue its routing key names: set routing_key: readings for queue readings",
        ),
        (
            {"exchange": "", "exchange_type": "direct"},
            "sinks.fleet.exchange_type: exchange_type is for declaring the exchange; the"
            ' default exchange (exchange: "") is never declared',
        ),
    ],
)
def test_keys_nothing_reads_are_refused(keys: dict[str, Any], expected: str) -> None:
    # each was taken and ignored: no queue to bind, or no exchange declared
    assert problems(**keys) == [expected]


def test_keys_read_where_they_apply() -> None:
    assert problems(queue="q", binding_key="plant.#") == []
    assert problems(exchange_type="fanout", durable=False) == []
    assert problems(exchange="", queue="q", routing_key="q") == []


@pytest.mark.parametrize("routing_key", ["{sink}", "{gateway}", "{topic}", "q.{topic}"])
def test_a_routing_key_with_placeholders_is_not_taken_for_another_queues_name(
    routing_key: str,
) -> None:
    # routing_key: "{sink}" on a sink named as its queue routes there, and {topic} does
    # for a topic of that name: each was refused as "not the queue's name". (The loader
    # checks {sink} and {gateway} filled in, see tests/config/test_load.py.)
    assert problems(exchange="", queue="q", routing_key=routing_key) == []


def test_a_routing_key_with_escaped_braces_is_checked_once(tmp_path: Path) -> None:
    # "{{q}}" has no placeholder: the sink's check reads it as "{q}", the loader leaves it
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway: {{id: pi-01, data_dir: '{tmp_path}'}}\n"
        "mqtt: {url: 'mqtt://127.0.0.1:1883'}\n"
        "sources: {a: {type: mqtt, topics: ['a/#']}}\n"
        "routes: {r: {match: '#', sinks: [s]}}\n"
        "sinks: {s: {type: amqp, url: 'amqp://h', exchange: '', queue: q,"
        " routing_key: '{{q}}'}}\n"
    )
    with pytest.raises(ConfigError) as raised:
        load(path, environ={})
    assert raised.value.problems == [
        f'{path}:5: sinks.s.routing_key: the default exchange (exchange: "") routes a message'
        " to the queue its routing key names: set routing_key: q for queue q"
    ]
    assert problems(exchange="", queue="{q}", routing_key="{{q}}") == []


def test_a_routing_key_with_a_topic_level_is_one_line_not_a_crash() -> None:
    # {topic.1} raised AttributeError ('str' object has no attribute '1') out of the
    # check: a traceback where the config's mistake wanted one line.
    assert problems(exchange="", queue="q", routing_key="{topic.1}") == [
        "sinks.fleet.routing_key: '{topic.1}': unknown placeholder {topic.1}; use {gateway},"
        " {sink}, {topic}"
    ]


def sink(**keys: Any) -> AmqpSink:
    config, found = sink_config_problems("amqp", "fleet", **{"url": URL, **keys})
    assert found == []
    return AmqpSink(config, Context("fleet", "sink", gateway_id="pi-01"))


def test_routing_keys() -> None:
    assert sink()._routing_key("sensors/a.b/t") == "sensors.a_b.t"
    assert sink(topic_separator="/")._routing_key("sensors/a.b/t") == "sensors/a.b/t"
    assert sink(routing_key="{gateway}.{sink}.{topic}")._routing_key("a/b") == "pi-01.fleet.a.b"
    assert sink(routing_key="fixed")._routing_key("a/b") == "fixed"
    assert sink(exchange="site-{gateway}").exchange_name == "site-pi-01"


def test_username_and_password_keys_override_the_url_and_are_not_shown() -> None:
    s = sink(username="gw", password="p@ss/word")
    assert (s._url.user, s._url.password) == ("gw", "p@ss/word")
    assert "s3cret" not in s.where and "p@ss" not in s.where
    assert s.status()["broker"] == "amqp://edge:***@127.0.0.1:5672/plant"


async def test_the_window_bounds_bytes_in_order_and_lets_a_big_one_go_alone() -> None:
    window = _ByteWindow(100)
    await window.enter(60)
    await window.enter(40)  # exactly full
    order: list[int] = []

    async def enter(name: int, size: int) -> None:
        await window.enter(size)
        order.append(name)

    async with asyncio.TaskGroup() as group:
        group.create_task(enter(1, 30))
        group.create_task(enter(2, 500))  # larger than the limit: alone
        group.create_task(enter(3, 10))
        await asyncio.sleep(0)
        assert order == []  # all wait: the window is full
        window.leave(60)
        await asyncio.sleep(0)
        assert order == [1]  # 2 waits for the window to be empty; 3 waits behind it
        window.leave(40)
        window.leave(30)
        await asyncio.sleep(0)
        assert order == [1, 2]
        assert window.used == 500
        window.leave(500)
    assert order == [1, 2, 3]
    window.leave(10)
    assert window.used == 0


async def test_a_cancelled_waiter_leaves_the_window_consistent() -> None:
    window = _ByteWindow(10)
    await window.enter(10)
    waiting = asyncio.ensure_future(window.enter(5))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    window.leave(10)
    assert window.used == 0
    await window.enter(10)
    assert window.used == 10


async def test_the_window_bounds_the_number_in_flight_too() -> None:
    window = _ByteWindow(1000, count=2)
    await window.enter(1)
    await window.enter(1)
    third = asyncio.ensure_future(window.enter(1))
    await asyncio.sleep(0)
    assert not third.done()  # two in flight: the third waits, though bytes are free
    window.leave(1)
    await third
    assert (window.inside, window.used) == (2, 2)


async def test_a_failed_window_wakes_its_waiters_with_the_error() -> None:
    window = _ByteWindow(10)
    await window.enter(10)
    waiting = asyncio.ensure_future(window.enter(5))
    drained = asyncio.ensure_future(window.drained())
    await asyncio.sleep(0)
    lost = ConnectionResetError("the broker closed the connection")
    window.fail(lost)
    for future in (waiting, drained):
        with pytest.raises(ConnectionResetError):
            await future
    with pytest.raises(ConnectionResetError):
        await window.enter(1)  # nothing more goes out on a lost connection

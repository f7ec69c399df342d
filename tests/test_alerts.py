"""The alert rules' logic (gateway/alerts.py) on hand-made status snapshots and a fake
clock; end to end, through the real gateway and servers: tests/e2e/test_alerts_rules.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.alerts import Alerts
from gateway.config.load import load_data
from gateway.config.model import Config
from gateway.core.errors import PermanentError
from gateway.core.topics import TopicWatch

pytestmark = pytest.mark.unit


class FakeStore:
    """What Alerts asks of the store: the kept state and the events it records."""

    def __init__(self, dead_count: int = 0) -> None:
        self.dead_count = dead_count
        self.dead_dropped = 0
        self.events: list[dict[str, Any]] = []
        self.sent: list[tuple[list[int], str]] = []  # each call: one transaction

    async def alert_state(self, recent: int) -> tuple[list[Any], list[Any]]:
        return [], []

    async def alert_event(
        self, key: str, at: float, body: str, firing: bool, targets: list[str]
    ) -> int:
        self.events.append(json.loads(body))
        return len(self.events)

    async def alert_sent(self, seqs: list[int], notifier: str) -> None:
        self.sent.append((list(seqs), notifier))


def snapshot(
    dead_letters: int = 0, sinks: dict[str, Any] | None = None, dead_dropped: int = 0
) -> Any:
    store = SimpleNamespace(
        dead_letters=dead_letters, dead_dropped=dead_dropped, bytes=0, max_bytes=1 << 20
    )
    return SimpleNamespace(store=store, sinks=sinks or {}, sources={})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(rules: dict[str, Any], store: FakeStore, clock: Clock, **settings: Any) -> Alerts:
    config: Config = load_data(
        {
            "gateway": {"id": "t", "data_dir": "/nonexistent"},
            "alerts": {"rules": rules, **settings},
        },
        environ={},
    )
    view = SimpleNamespace(store=store)
    return Alerts(view, lambda: config, asyncio.Event(), TopicWatch(clock))  # type: ignore[arg-type]


async def test_dead_letters_in_the_first_seconds_count() -> None:
    """The count started at the first evaluation, WARMUP (3 s) after the engine ran: a
    malformed message right after the start never fired the dead-letter alert."""
    store, clock = FakeStore(dead_count=4), Clock()  # 4 from before a restart
    alerts = make({"dead_letters": {"per_minute": 0}}, store, clock)
    await alerts._load()
    await alerts.evaluate(snapshot(dead_letters=5), clock.now)  # one came during the warm-up
    assert [(e["key"], e["state"], e["value"]) for e in store.events] == [
        ("dead_letters:store", "firing", 1)
    ]


async def test_dead_letters_deleted_over_their_budget_still_count() -> None:
    """Past buffer.dead_letters_max_bytes the oldest are deleted as new ones come: the
    table's count stood still, and a flood of dead letters fired no alert."""
    store, clock = FakeStore(dead_count=1000), Clock()  # the budget full already
    alerts = make({"dead_letters": {"per_minute": 100}}, store, clock)
    await alerts._load()
    for second in range(1, 4):
        clock.now += 1.0
        await alerts.evaluate(snapshot(1000, dead_dropped=1000 * second), clock.now)
    assert [(e["key"], e["state"]) for e in store.events] == [("dead_letters:store", "firing")]


async def test_dead_letters_from_before_a_restart_do_not_count() -> None:
    store, clock = FakeStore(dead_count=4), Clock()
    alerts = make({"dead_letters": {"per_minute": 0}}, store, clock)
    await alerts._load()
    await alerts.evaluate(snapshot(dead_letters=4), clock.now)
    assert store.events == []


async def test_a_no_data_alert_resolves_with_one_message_whatever_its_for() -> None:
    """With `for` under the 5 s resolve hold, one message never resolved a no_data
    alert: the topic was quiet again (the condition held) before 5 s had passed."""
    store, clock = FakeStore(), Clock()
    alerts = make({"quiet": {"condition": "no_data", "topic": "a/#", "for": "1s"}}, store, clock)
    await alerts._load()
    for _ in range(3):
        await alerts.evaluate(snapshot(), clock.now)
        clock.now += 1.0
    assert [(e["key"], e["state"]) for e in store.events] == [("quiet:a/#", "firing")]
    alerts.watch.note(["a/b"])  # one FlowFile on the topic
    for _ in range(8):
        clock.now += 1.0
        await alerts.evaluate(snapshot(), clock.now)
    states = [e["state"] for e in store.events]
    # resolved at the next evaluation; the new silence fires anew after `for`, once
    assert states == ["firing", "resolved", "firing"], states
    assert store.events[1]["resolved_at"] is not None


async def test_a_no_data_alert_kept_from_before_a_restart_resolves_when_data_comes() -> None:
    store, clock = FakeStore(), Clock()
    alerts = make({"quiet": {"condition": "no_data", "topic": "a/#", "for": "1s"}}, store, clock)
    await alerts._load()
    alerts.active["quiet:a/#"] = {"key": "quiet:a/#", "condition": "no_data", "fired_at": 1.0}
    for _ in range(3):
        await alerts.evaluate(snapshot(), clock.now)
        clock.now += 1.0
    assert store.events == []  # still quiet: still active, not fired again
    alerts.watch.note(["a/x"])
    clock.now += 1.0
    await alerts.evaluate(snapshot(), clock.now)
    assert [(e["key"], e["state"]) for e in store.events] == [("quiet:a/#", "resolved")]


async def test_a_sink_alert_still_waits_5_s_before_it_resolves() -> None:
    store, clock = FakeStore(), Clock()
    alerts = make({"sink_failing": {"for": "1s"}}, store, clock)
    await alerts._load()
    failing = SimpleNamespace(state="retrying", last_error="down", oldest_age_s=None, depth=0)
    ok = SimpleNamespace(state="running", last_error=None, oldest_age_s=None, depth=0)
    for sink in (failing, failing, failing, ok, ok, ok, ok, ok):
        await alerts.evaluate(snapshot(sinks={"db": sink}), clock.now)
        clock.now += 1.0
    assert [e["state"] for e in store.events] == ["firing"]  # 4 s without: not yet
    for _ in range(2):
        await alerts.evaluate(snapshot(sinks={"db": ok}), clock.now)
        clock.now += 1.0
    assert [e["state"] for e in store.events] == ["firing", "resolved"]


@pytest.mark.parametrize(("resolve_after", "resolved_after"), [("1s", 1), ("0s", 0), ("8s", 8)])
async def test_a_sink_alert_resolves_after_alerts_resolve_after(
    resolve_after: str, resolved_after: int
) -> None:
    store, clock = FakeStore(), Clock()
    alerts = make({"sink_failing": {"for": "1s"}}, store, clock, resolve_after=resolve_after)
    await alerts._load()
    failing = SimpleNamespace(state="retrying", last_error="down", oldest_age_s=None, depth=0)
    ok = SimpleNamespace(state="running", last_error=None, oldest_age_s=None, depth=0)
    for _ in range(2):
        await alerts.evaluate(snapshot(sinks={"db": failing}), clock.now)
        clock.now += 1.0
    assert [e["state"] for e in store.events] == ["firing"]
    cleared = clock.now
    for _ in range(10):
        await alerts.evaluate(snapshot(sinks={"db": ok}), clock.now)
        if len(store.events) > 1:
            break
        clock.now += 1.0
    assert [e["state"] for e in store.events] == ["firing", "resolved"]
    assert clock.now - cleared == resolved_after


async def test_an_event_waiting_behind_the_backoff_goes_as_soon_as_its_notifier_is_told() -> None:
    """The MQTT event waited for its next retry (backoff up to 60 s) after the gateway's
    broker was back; the status connection now says so (`again`)."""
    from gateway.alerts import Notifier

    outcomes = [False, True]
    sent: list[dict[str, Any]] = []
    tried, delivered = asyncio.Event(), asyncio.Event()

    async def send(body: dict[str, Any]) -> bool:
        sent.append(body)
        tried.set()
        return outcomes.pop(0)

    async def mark(seqs: list[int], name: str) -> None:
        delivered.set()

    notifier = Notifier("mqtt", send, mark, lambda: 10, lambda: (30.0, 60.0))
    await notifier.put(1, {"key": "k"})
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(notifier.run())
        await tried.wait()
        notifier.again()  # well before the 30 s backoff
        async with asyncio.timeout(5):
            await delivered.wait()
        task.cancel()
    assert len(sent) == 2


async def test_alerts_run_again_after_a_crash_rebuild_from_the_store() -> None:
    """`supervised` runs Alerts.run again after an error (a store write failing): its
    load added the store's pending events to the notifiers' queues again, so each went
    twice, and the console's recent events doubled."""
    store = FakeStore()
    event = {"key": "store_budget:store", "state": "firing", "fired_at": 1.0}

    async def alert_state(recent: int) -> tuple[list[Any], list[Any]]:
        body = json.dumps(event)
        return [("store_budget:store", 1.0, body)], [(7, 1.0, body, ["webhook"])]

    store.alert_state = alert_state  # type: ignore[method-assign]
    alerts = make({}, store, Clock())
    for _ in range(2):
        await alerts._load()
    assert alerts.console() == {"active": [event], "recent": [event]}
    assert list(alerts.notifiers["webhook"]._queue) == [(7, event)]


async def test_events_past_the_queue_at_a_start_are_dropped_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Thousands of events waiting in the store for a webhook with a small queue were
    dropped one by one at the start: an ERROR line and a store transaction each."""
    store = FakeStore()
    pending = [(seq, 1.0, json.dumps({"key": f"k{seq}"}), ["webhook"]) for seq in range(1, 5001)]

    async def alert_state(recent: int) -> tuple[list[Any], list[Any]]:
        return [], pending

    store.alert_state = alert_state  # type: ignore[method-assign]
    config: Config = load_data(
        {
            "gateway": {"id": "t", "data_dir": "/nonexistent"},
            "alerts": {"webhook": {"url": "http://127.0.0.1:9/in", "queue": 10}},
        },
        environ={},
    )
    view = SimpleNamespace(store=store)
    alerts = Alerts(view, lambda: config, asyncio.Event(), TopicWatch(Clock()))  # type: ignore[arg-type]
    with caplog.at_level("ERROR", logger="gateway.alerts"):
        await alerts._load()
    assert [r.getMessage() for r in caplog.records] == [
        "alerts: webhook: more than 10 events wait; dropped the oldest 4990"
    ]
    assert store.sent == [(list(range(1, 4991)), "webhook")]
    assert [seq for seq, _ in alerts.notifiers["webhook"]._queue] == list(range(4991, 5001))


async def test_with_no_broker_an_event_is_not_kept_for_mqtt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway with no broker (none is started for the status topics alone) kept every
    event pending for MQTT: past 1000 of them an ERROR at each event ("more than 1000
    events wait"), and the stale ones were all published once a broker came. Those given
    up were given up without a word."""
    store, clock = FakeStore(), Clock()
    config: Config = load_data(
        {"gateway": {"id": "t", "data_dir": "/nonexistent"}, "alerts": {"rules": {}}},
        environ={},
    )
    sent: list[str] = []

    async def mqtt_send(topic: str, payload: bytes) -> bool:
        sent.append(topic)
        return True

    broker = False
    view = SimpleNamespace(store=store)
    alerts = Alerts(
        view,  # type: ignore[arg-type]
        lambda: config,
        asyncio.Event(),
        TopicWatch(clock),
        mqtt_send,
        mqtt_wanted=lambda: broker,
    )
    targets: list[list[str]] = []

    async def alert_event(key: str, at: float, body: str, firing: bool, to: list[str]) -> int:
        targets.append(to)
        return len(targets)

    store.alert_event = alert_event  # type: ignore[method-assign]
    await alerts._load()
    full = SimpleNamespace(dead_letters=0, dead_dropped=0, bytes=100, max_bytes=100)
    await alerts.evaluate(SimpleNamespace(store=full, sinks={}, sources={}), clock.now)
    broker = True  # a broker now: the next event goes to it
    for _ in range(2):  # it resolves 5 s after the store has room again
        clock.now += 6
        await alerts.evaluate(snapshot(), clock.now)
    assert targets == [[], ["mqtt"]]
    broker = False  # gone again: what waits is given up, not kept for ever
    notifier = alerts.notifiers["mqtt"]
    await notifier.put(3, {"key": "k"})
    caplog.clear()
    with caplog.at_level("WARNING", logger="gateway.alerts"):
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(notifier.run())
            async with asyncio.timeout(5):
                while not store.sent:  # noqa: ASYNC110 - a guard on the fake's list
                    await asyncio.sleep(0)
            task.cancel()
    assert sent == []
    assert store.sent == [([2, 3], "mqtt")]
    assert [r.getMessage() for r in caplog.records] == [
        "alerts: mqtt: gave up 2 event(s) that waited: the gateway has no broker (mqtt.url:"
        " auto, and no component uses one)"
    ]


@pytest.mark.parametrize(
    ("config", "has"),
    [
        ({"sources": {"s": {"type": "system"}}}, False),  # `auto`, and nothing uses it
        ({"sources": {"m": {"type": "mqtt", "topics": ["a/#"]}}}, True),
        ({"mqtt": {"url": "mqtt://broker.lan:1883"}}, True),
        ({"mqtt": {"url": "embedded"}}, True),
        # a reload turned the status topics off: what waited was tried again and again,
        # and all of it went out, stale, once they were back on
        ({"mqtt": {"url": "embedded"}, "status": {"enabled": False}}, False),
    ],
)
async def test_mqtt_events_go_while_the_gateway_has_a_broker_and_status_topics(
    config: dict[str, Any], has: bool
) -> None:
    # Told from the config, not the broker running now: a reload of `mqtt:` stops and
    # starts it, and an event meanwhile would have been given up.
    from gateway.app import Gateway

    config = {"gateway": {"id": "t", "data_dir": "/nonexistent"}, **config}
    gateway = Gateway(load_data(config, environ={}))
    assert gateway.status.wanted() is has
    assert ("mqtt" in gateway.alerts._targets()) is has
    # else what waits is given up (it waited for ever, and went out stale)
    assert (gateway.alerts._mqtt_off() is None) is has


async def test_a_modbus_device_is_the_subject_source_slash_device_or_the_flat_source() -> None:
    store, clock = FakeStore(), Clock()
    alerts = make({"source_offline": {"for": "0s"}}, store, clock)
    await alerts._load()
    offline = {"state": "offline", "last_error": "cannot connect"}
    running = SimpleNamespace(state="running", last_error=None)
    sources = {
        "line": SimpleNamespace(**vars(running), extra={"devices": {"plc1": offline}}),
        "pump": SimpleNamespace(**vars(running), extra={"devices": {"pump": offline}}),
    }
    snap = snapshot()
    snap.sources = sources
    await alerts.evaluate(snap, clock.now)
    assert sorted(e["key"] for e in store.events) == [
        "source_offline:line/plc1",
        "source_offline:pump",  # written flat (url: at the top): named after its source
    ]


async def test_a_webhook_redirect_is_followed_only_as_a_post_with_the_event() -> None:
    """aiohttp followed a 301/302/303 by a GET without the event: the GET's 200 took the
    event as sent, though no receiver ever got it (an http:// URL redirected to
    https:// is common). Such a redirect is a failed POST: retried, the event kept. A
    307 or 308 keeps the POST and its body: it is followed (a few hops at most)."""
    from aiohttp import web

    posted: list[Any] = []
    redirects = {
        "/h301": web.HTTPMovedPermanently,
        "/h302": web.HTTPFound,
        "/h303": web.HTTPSeeOther,
        "/h307": web.HTTPTemporaryRedirect,
        "/h308": web.HTTPPermanentRedirect,
    }

    async def redirect(request: web.Request) -> web.Response:
        if request.path == "/loop":
            raise web.HTTPPermanentRedirect("/loop")
        if request.path == "/chain":  # a relative Location, then another hop
            raise web.HTTPTemporaryRedirect("h308")
        raise redirects[request.path]("/new")

    async def new(request: web.Request) -> web.Response:
        posted.append((request.method, await request.json()))
        return web.Response(text="ok")

    app = web.Application()
    for path in [*redirects, "/loop", "/chain"]:
        app.router.add_post(path, redirect)
    app.router.add_route("*", "/new", new)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def send(path: str) -> tuple[bool | None, str]:
        config: Config = load_data(
            {
                "gateway": {"id": "t", "data_dir": "/nonexistent"},
                "alerts": {"webhook": {"url": f"http://127.0.0.1:{port}{path}"}},
            },
            environ={},
        )
        view = SimpleNamespace(store=FakeStore())
        alerts = Alerts(view, lambda: config, asyncio.Event(), TopicWatch())  # type: ignore[arg-type]
        try:
            outcome = await alerts._send_webhook({"key": "sink_failing:db"})
        finally:
            if alerts._session is not None:
                await alerts._session.close()
        return outcome, alerts.notifiers["webhook"].last_error or ""

    try:
        for path in ("/h301", "/h302", "/h303"):
            outcome, error = await send(path)
            assert outcome is False and posted == [], path
            assert path[2:] in error and "/new" in error, error
        for path in ("/h307", "/h308", "/chain"):
            assert await send(path) == (True, ""), path
            assert posted.pop() == ("POST", {"key": "sink_failing:db"}), path
        outcome, error = await send("/loop")
        assert outcome is False and "308" in error and "/loop" in error, error
        assert posted == []
    finally:
        await runner.cleanup()


def test_a_webhook_redirect_from_https_to_http_is_not_followed() -> None:
    """The event and its link would go on in plain text."""
    import yarl

    from gateway.alerts import _redirect_target

    https = yarl.URL("https://hooks.example/in")
    assert _redirect_target(https, 308, "http://hooks.example/in") is None
    assert _redirect_target(https, 307, "HTTP://other.example/x") is None
    assert _redirect_target(https, 308, "/v2/in") == yarl.URL("https://hooks.example/v2/in")
    assert _redirect_target(https, 308, "https://b.example/") == yarl.URL("https://b.example/")
    plain = yarl.URL("http://hooks.example/in")
    assert _redirect_target(plain, 308, "https://hooks.example/in") is not None


async def test_a_webhook_url_the_post_cannot_read_is_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """check-config refuses it (tests/config/test_alert_rules.py); met all the same (a
    yarl that refuses more), it was a WARNING ending in ".;", and the events wait for ever:
    an operator's action is needed."""
    import dataclasses

    config: Config = load_data({"gateway": {"id": "t", "data_dir": "/nonexistent"}}, environ={})
    webhook = dataclasses.replace(config.alerts.webhook, url="http://hooks\\example.com/in")
    config = dataclasses.replace(config, alerts=dataclasses.replace(config.alerts, webhook=webhook))
    view = SimpleNamespace(store=FakeStore())
    alerts = Alerts(view, lambda: config, asyncio.Event(), TopicWatch())  # type: ignore[arg-type]
    try:
        with caplog.at_level("WARNING", logger="gateway.alerts"):
            for _ in range(2):  # said once
                assert await alerts._send_webhook({"key": "k"}) is False
    finally:
        if alerts._session is not None:
            await alerts._session.close()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            "alerts: alerts.webhook.url is not a valid URL: Invalid URL: backslash ('\\') is"
            " not allowed in the authority component per RFC 3986; the events wait until it"
            " is changed",
        )
    ]


async def test_an_event_the_broker_refuses_waits_and_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Refused by the broker's ACL, the event was tried again and again without a word.
    config: Config = load_data(
        {"gateway": {"id": "t", "data_dir": "/nonexistent"}, "mqtt": {"url": "embedded"}},
        environ={},
    )
    answers: list[Any] = [
        PermanentError("the broker refused the PUBLISH to edge-stream/t/alerts: Not authorized"),
        PermanentError("the broker refused the PUBLISH to edge-stream/t/alerts: Not authorized"),
        True,
    ]

    async def mqtt_send(topic: str, payload: bytes) -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)

    alerts = Alerts(
        SimpleNamespace(store=FakeStore()),  # type: ignore[arg-type]
        lambda: config,
        asyncio.Event(),
        TopicWatch(Clock()),
        mqtt_send,
        mqtt_wanted=lambda: True,
    )
    with caplog.at_level("INFO", logger="gateway.alerts"):
        outcomes = [await alerts._send_mqtt({"key": "k"}) for _ in range(3)]
    assert outcomes == [False, False, True]  # kept, to be sent again, until taken
    assert [r.getMessage() for r in caplog.records] == [
        "alerts: the broker refused the PUBLISH to edge-stream/t/alerts: Not authorized; the"
        " events wait until it takes them (let the gateway publish there, or change"
        " alerts.mqtt_topic)",
        "alerts: the broker takes the events again",
    ]


class KeptStore(FakeStore):
    """A store that kept one active alert from before the restart."""

    def __init__(self, key: str) -> None:
        super().__init__()
        rule, subject = key.split(":", 1)
        self.kept = {"key": key, "rule": rule, "condition": rule, "subject": subject}
        self.kept.update(state="firing", fired_at=900.0, at=900.0)

    async def alert_state(self, recent: int) -> tuple[list[Any], list[Any]]:
        return [(self.kept["key"], 900.0, json.dumps(self.kept))], []


def sink(state: str, error: str | None) -> Any:
    return SimpleNamespace(state=state, last_error=error, oldest_age_s=None)


def source(state: str, error: str | None, devices: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(state=state, last_error=error, extra={"devices": devices or {}})


@pytest.mark.parametrize(
    ("rule", "key", "first", "down"),
    [
        (
            "sink_failing",
            "sink_failing:db",
            {"sinks": {"db": sink("connecting", None)}},
            {"sinks": {"db": sink("retrying", "timed out")}},
        ),
        (
            "source_offline",
            "source_offline:field",
            {"sources": {"field": source("connecting", None)}},
            {"sources": {"field": source("retrying", "timed out")}},
        ),
        (
            "source_offline",
            "source_offline:plc/plc1",
            {"sources": {"plc": source("running", None, {"plc1": {"state": "unknown"}})}},
            {"sources": {"plc": source("running", None, {"plc1": {"state": "offline"}})}},
        ),
    ],
)
async def test_an_alert_kept_over_a_restart_waits_for_the_first_try_to_end(
    rule: str, key: str, first: dict[str, Any], down: dict[str, Any]
) -> None:
    """After a restart the sink (or source, or device) tries its first connect, which may
    take its whole timeout (30 s for PostgreSQL, a host that does not answer): the alert
    kept from before resolved 5 s in, then fired again when the connect failed."""
    store, clock = KeptStore(key), Clock()
    alerts = make({rule: {"for": "1s"}}, store, clock)
    await alerts._load()
    for state in [first] * 30 + [down] * 3:
        snap = snapshot()
        snap.sinks, snap.sources = state.get("sinks", {}), state.get("sources", {})
        await alerts.evaluate(snap, clock.now)
        clock.now += 1.0
    assert store.events == [], "neither resolved nor fired again"
    assert [a["key"] for a in alerts.console()["active"]] == [key]


@pytest.mark.parametrize("first_poll", ["ok", "down"])
async def test_an_alert_kept_over_a_restart_waits_for_a_polled_source_s_first_poll(
    first_poll: str,
) -> None:
    """A REST source polled at `*/5 * * * *` whose polls failed before a restart: after it,
    its connect (a client session) made it "running" at once, and its first poll waits for
    the next cron time: the alert kept from before resolved 5 s in, and fired again after
    that poll failed, a resolved event sent for a source that never came back. Now the
    first poll decides: still down, the alert stays, without an event; back, it resolves."""
    from gateway.config.model import RetrySettings
    from gateway.core.errors import RetryableError
    from gateway.core.schedule import Schedule
    from gateway.engine.runner import Ingest, SourceRunner
    from tests.core.test_schedule import Failing, FakeClock, steps, wall

    engine_clock = FakeClock(1000.0, wall("2024-03-01T10:03:00"))
    errors: list[Exception] = [RetryableError("down")] if first_poll == "down" else []
    source = Failing(engine_clock, Schedule(interval=1.0, cron="*/5 * * * *"), errors)
    runner = SourceRunner(
        "api", source, Ingest(10_000), RetrySettings(initial=60.0, max=60.0), asyncio.Event(),
        engine_clock,
    )  # fmt: skip
    runner.gate.set()
    task = asyncio.ensure_future(runner.run())
    store, clock = KeptStore("source_offline:api"), Clock()
    alerts = make({"source_offline": {"for": "1s"}}, store, clock)
    await alerts._load()
    try:
        for _ in range(150):  # 10:03:00 to 10:05:30: the first poll at 10:05
            await steps(engine_clock, 1.0)
            snap = snapshot()
            snap.sources = {"api": runner.status()}
            await alerts.evaluate(snap, clock.now)
            clock.now += 1.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert source.polls == ([] if first_poll == "down" else [wall("2024-03-01T10:05:00")])
    if first_poll == "down":
        assert store.events == [], "neither resolved nor fired again"
        assert [a["key"] for a in alerts.console()["active"]] == ["source_offline:api"]
    else:
        assert [(e["key"], e["state"]) for e in store.events] == [
            ("source_offline:api", "resolved")
        ]


async def test_an_alert_kept_over_a_restart_waits_for_a_sink_s_first_write(tmp_path: Any) -> None:
    """A webhook down before a restart: its connect sends nothing, so the sink was
    "running" at once while its first write of the backlog waited out its timeout (30 s):
    the sink_failing alert kept from before resolved 5 s in, and fired again 5 minutes
    after that write failed. Now the first write decides."""
    from gateway.config.model import SinkConfig
    from gateway.core.component import Context
    from gateway.core.flowfile import FlowFile
    from gateway.engine.runner import SinkRunner
    from gateway.store.sqlite import Batch, Store
    from tests.engine.test_runner import Sleeps, TimingOut

    store = Store(tmp_path / "store.db")
    await store.open(["hook"])
    await store.commit(Batch([(FlowFile.create("t/1", b"x"), store.bit("hook"))], [], {}, []))
    config = SinkConfig(type="test")
    sink = TimingOut(config, Context("hook", "sink"))
    runner = SinkRunner("hook", sink, config, store, clock=Sleeps())
    task = asyncio.ensure_future(runner.run())
    kept, clock = KeptStore("sink_failing:hook"), Clock()
    alerts = make({"sink_failing": {"for": "1s"}}, kept, clock)
    await alerts._load()

    async def evaluate(seconds: int) -> None:
        for _ in range(seconds):
            snap = snapshot()
            snap.sinks = {"hook": runner.status()}
            await alerts.evaluate(snap, clock.now)
            clock.now += 1.0

    try:
        await sink.next_write()
        await evaluate(30)  # the first write hangs for its timeout
        sink.end(False)
        await sink.next_write()
        await evaluate(3)
        assert kept.events == [], "neither resolved nor fired again"
        assert [a["key"] for a in alerts.console()["active"]] == ["sink_failing:hook"]
        sink.end(True)  # back: it resolves, once
        await asyncio.wait_for(runner.idle.wait(), 10)
        await evaluate(7)
        assert [(e["key"], e["state"]) for e in kept.events] == [("sink_failing:hook", "resolved")]
    finally:
        runner.stopping = True
        runner.wake.set()
        await asyncio.wait_for(task, 10)
        await store.close()

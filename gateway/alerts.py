"""Alerts on the gateway's own state (`alerts:`), sent to MQTT, a webhook and the console.

Every EVAL_INTERVAL the rules (`AlertsSection.effective`) are held against the
status snapshot. Each rule watches subjects (a sink, a source, a Modbus device,
a topic filter, the store); an alert (rule, subject) fires once its condition
has held for the rule's `for`, and resolves once the condition has not held for
`alerts.resolve_after` (so that a sink between two reconnects does not resolve and fire
again). Firing and resolving are each recorded in the store in one transaction
with the event (gateway/store/sqlite.py: `alerts`, `alert_events`), and the
event is sent once to each notifier: the MQTT topic (on the status connection,
gateway/mqtt/status.py, acknowledged by PUBACK) and the webhook (a JSON POST with
aiohttp's client, retried with capped backoff and jitter; a 307 or 308 redirect is
followed with the POST, a few hops at most, never from https to http; a 301, 302 or
303, which would become a GET without the event, is not followed but retried, as a 5xx
is). An event not yet sent
stays pending in the store, so a restart sends it then; each notifier's queue
is bounded (`alerts.webhook.queue`), the oldest event dropped past it, logged.
What waits for a notifier turned off (the webhook's url removed; for MQTT also
`status.enabled` off, or no broker) is given up, logged with its count.

After a restart the active alerts come back from the store: they do not fire
again, and resolve (once) when their condition is gone. Evaluation starts WARMUP
seconds after the engine runs, so that components have had a first try.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.config.model import DEFAULT_FOR, AlertRule, Config
from gateway.config.schema import post_url_problem
from gateway.core.backoff import Backoff
from gateway.core.errors import PermanentError, error_text
from gateway.core.topics import TopicWatch
from gateway.engine.status import SinkStatus, Snapshot, SourceStatus, StatusView

if TYPE_CHECKING:
    import aiohttp
    import yarl

log = logging.getLogger("gateway.alerts")

EVAL_INTERVAL = 1.0
WARMUP = 3.0
RECENT = 50  # events the console shows
MQTT_QUEUE = 1000
WEBHOOK_REDIRECTS = 5  # 307/308 hops followed for one POST


def _redirect_target(url: yarl.URL, status: int, location: str) -> yarl.URL | None:
    """Where a 307 or 308 sends the POST (same method and body), else None."""
    import yarl  # with aiohttp, only for a webhook

    if status not in (307, 308) or not location:
        return None
    try:
        target = url.join(yarl.URL(location))
    except ValueError:
        return None
    if url.scheme == "https" and target.scheme != "https":
        return None  # the event (and its link) would go on in plain text
    return target if target.scheme in ("http", "https") and target.host else None


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Notifier:
    """One destination of alert events: a bounded queue, sent in order, each once."""

    def __init__(
        self,
        name: str,
        send: Callable[[dict[str, Any]], Awaitable[bool | None]],
        done: Callable[[list[int], str], Awaitable[None]],
        size: Callable[[], int],
        retry: Callable[[], tuple[float, float]],
        off: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.name = name
        self._send = send  # True: sent; False: try again later; None: refused, give up
        self._done = done
        self._size = size
        self._retry = retry
        # Why there is nowhere to send to now (turned off, no broker), or None: what waits
        # is given up, else it would wait for ever, and go out stale if that changed.
        self._off = off
        self._queue: deque[tuple[int, dict[str, Any]]] = deque()
        self._ready = asyncio.Event()
        self._again = asyncio.Event()
        self.last_error: str | None = None

    async def put(self, seq: int, body: dict[str, Any]) -> None:
        await self.put_all([(seq, body)])

    async def put_all(self, events: list[tuple[int, dict[str, Any]]]) -> None:
        """Queue `events` (seq, body), oldest first. Past the queue's size the oldest are
        dropped: in one line and one store transaction however many (thousands may wait
        in the store at a start, or when a reload makes the queue smaller)."""
        self._queue.extend(events)
        size = self._size()
        dropped = [self._queue.popleft()[0] for _ in range(len(self._queue) - size)]
        if dropped:
            log.error(
                "alerts: %s: more than %d events wait; dropped the oldest %d",
                self.name,
                size,
                len(dropped),
            )
            await self._done(dropped, self.name)
        if self._queue:
            self._ready.set()

    def clear(self) -> None:
        """Forget what waits (the store still has it, to be put again)."""
        self._queue.clear()

    def again(self) -> None:
        """The destination is back: try the waiting event now, not after the backoff."""
        self._again.set()

    async def run(self) -> None:
        backoff: Backoff | None = None
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            off = self._off()
            if off is not None:
                given_up = [seq for seq, _ in self._queue]
                self._queue.clear()
                log.warning(
                    "alerts: %s: gave up %d event(s) that waited: %s",
                    self.name,
                    len(given_up),
                    off,
                )
                await self._done(given_up, self.name)
                backoff = None  # a later outage starts again at the first wait
                continue
            seq, body = self._queue[0]
            outcome = await self._send(body)
            if outcome is False:
                if backoff is None:
                    backoff = Backoff(*self._retry())
                self._again.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next()):
                        await self._again.wait()
                continue
            backoff = None
            if self._queue and self._queue[0][0] == seq:
                self._queue.popleft()
            await self._done([seq], self.name)


def _first_try(condition: str, rule: AlertRule, snap: Snapshot) -> list[str]:
    """The subjects of a sink_failing or source_offline rule whose state is not known yet:
    the component's first try since it started (`starting`, or `connecting` with no error
    yet; a polled source until its first poll ends, a sink until its first write of what
    waits ends), a Modbus device not yet polled (`unknown`). They neither hold nor clear."""
    picked = set(rule.components)
    out: list[str] = []
    components: Mapping[str, SinkStatus | SourceStatus]
    if condition == "sink_failing":
        components = snap.sinks
    elif condition == "source_offline":
        components = snap.sources
    else:
        return out
    for name, c in components.items():
        first = c.state == "starting" or (c.state == "connecting" and c.last_error is None)
        # a polled source's connect proves nothing, nor a webhook sink's: its first poll
        # (the next cron time, or one that takes its whole timeout), or write, decides
        first = first or getattr(c, "first_try", False)
        if first and (not picked or name in picked):
            out.append(name)
        devices = c.extra.get("devices") if condition == "source_offline" else None
        if not isinstance(devices, dict):
            continue
        for dev, st in devices.items():
            unknown = isinstance(st, dict) and st.get("state") == "unknown"
            if unknown and (not picked or dev in picked or name in picked):
                out.append(name if dev == name else f"{name}/{dev}")
    return out


class Alerts:
    """Evaluates the rules against `view` and sends the events (see the module doc)."""

    def __init__(
        self,
        view: StatusView,
        config: Callable[[], Config],
        ready: asyncio.Event,
        watch: TopicWatch,
        mqtt_send: Callable[[str, bytes], Awaitable[bool]] | None = None,
        mqtt_wanted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.view = view
        self._config = config
        self._ready = ready
        self.watch = watch
        self._mqtt_send = mqtt_send
        # The status connection is wanted (`StatusChannel.wanted`: status.enabled and the
        # gateway has a broker): else an event for MQTT would wait for ever, and all
        # those would go stale once it came.
        self._mqtt_wanted = mqtt_wanted
        self.active: dict[str, dict[str, Any]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._pending: dict[str, float] = {}  # key -> monotonic time the condition began
        self._clear: dict[str, float] = {}  # active key -> since when it has not held
        # active no_data key -> when its topic was last seen as it fired (or was loaded)
        self._silent_since: dict[str, float] = {}
        self._dead: deque[tuple[float, int]] = deque()  # (monotonic, new dead letters)
        self._dead_total: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self.notifiers = {
            "mqtt": Notifier(
                "mqtt",
                self._send_mqtt,
                self._sent,
                lambda: MQTT_QUEUE,
                lambda: (1.0, 60.0),
                self._mqtt_off,
            ),
            "webhook": Notifier(
                "webhook",
                self._send_webhook,
                self._sent,
                lambda: self._config().alerts.webhook.queue,
                self._webhook_retry,
                lambda: None if self._config().alerts.webhook.url else "alerts.webhook.url is off",
            ),
        }
        self.loaded = asyncio.Event()

    # -- what the console and the stats read ------------------------------------

    def console(self) -> dict[str, Any]:
        """`alerts` in /api/status: the active alerts and the newest events, newest first."""
        return {
            "active": sorted(self.active.values(), key=lambda a: a["fired_at"], reverse=True),
            "recent": list(reversed(self.recent)),
        }

    # -- running ---------------------------------------------------------------

    async def run(self) -> None:
        await self._ready.wait()
        await self._load()
        try:
            async with asyncio.TaskGroup() as tg:
                for notifier in self.notifiers.values():
                    tg.create_task(notifier.run(), name=f"alerts {notifier.name}")
                tg.create_task(self._evaluate_loop(), name="alerts")
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def _load(self) -> None:
        # Dead letters count from here, not from the first evaluation after WARMUP: bad
        # input in the gateway's first seconds counts too (those from before a restart not).
        self._dead_total = self.view.store.dead_count + self.view.store.dead_dropped
        active, events = await self.view.store.alert_state(RECENT)
        # The store holds the truth: run() again after a crash (a store error) rebuilds
        # from it, rather than adding it to what is there (each pending event was queued,
        # so sent, twice, and the console's recent events doubled).
        self.active.clear()
        self.recent.clear()
        for notifier in self.notifiers.values():
            notifier.clear()
        for key, _fired_at, body in active:
            self.active[key] = json.loads(body)
        waiting: dict[str, list[tuple[int, dict[str, Any]]]] = {n: [] for n in self.notifiers}
        for seq, _at, body, pending in events:
            event = json.loads(body)
            self.recent.append(event)
            for name in pending:
                if name in waiting:
                    waiting[name].append((seq, event))
        for name, queued in waiting.items():
            await self.notifiers[name].put_all(queued)
        if self.active and not self.loaded.is_set():
            log.info("alerts: %d active alert(s) kept from before the restart", len(self.active))
        self.loaded.set()

    async def _evaluate_loop(self) -> None:
        await asyncio.sleep(WARMUP)
        while True:
            await self.evaluate(self.view.snapshot(), time.monotonic())
            await asyncio.sleep(EVAL_INTERVAL)

    async def evaluate(self, snap: Snapshot, now: float) -> None:
        """Hold every rule against `snap` at monotonic time `now`; fire and resolve."""
        settings = self._config().alerts
        rules = settings.effective()
        self.watch.set(
            {rule.topic for cond, rule in rules.values() if cond == "no_data" and rule.topic}
        )
        new_dead = self._new_dead_letters(snap, now)
        holding: dict[str, tuple[str, str, AlertRule, str, Any, str]] = {}
        undecided: set[str] = set()
        for name, (condition, rule) in rules.items():
            for subject, (value, message) in self._holding(
                name, condition, rule, snap, now, new_dead
            ).items():
                holding[f"{name}:{subject}"] = (name, condition, rule, subject, value, message)
            undecided.update(f"{name}:{subject}" for subject in _first_try(condition, rule, snap))
        for key, (name, condition, rule, subject, value, message) in holding.items():
            self._clear.pop(key, None)
            if key in self.active:
                continue
            since = self._pending.setdefault(key, now)
            wait = 0.0 if condition == "no_data" else rule.for_
            if wait is None:
                wait = DEFAULT_FOR.get(condition, 0.0)
            if now - since >= wait:
                self._pending.pop(key, None)
                await self._fire(key, name, condition, subject, value, message)
        for key in [k for k in self._pending if k not in holding and k not in undecided]:
            del self._pending[key]
        for key in [k for k in self.active if k not in holding]:
            if key in undecided:
                # Its first try since it started is under way (a restart, a reload): a
                # connect may take its whole timeout to fail, and the alert kept from
                # before resolved meanwhile, then fired again.
                self._clear.pop(key, None)
                continue
            since = self._clear.setdefault(key, now)
            # A silence is over when data comes: no hold (the next one must last `for`).
            no_data = self.active[key].get("condition") == "no_data"
            hold = 0.0 if no_data else settings.resolve_after
            if now - since >= hold:
                self._clear.pop(key, None)
                self._silent_since.pop(key, None)
                await self._resolve(key)

    def _new_dead_letters(self, snap: Snapshot, now: float) -> int:
        """Dead letters added in the last minute (the table's count, with those deleted
        over their budget, only grows but for replays and purges, which start the count
        afresh)."""
        total = snap.store.dead_letters + snap.store.dead_dropped
        if self._dead_total is not None and total > self._dead_total:
            self._dead.append((now, total - self._dead_total))
        self._dead_total = total
        while self._dead and self._dead[0][0] < now - 60.0:
            self._dead.popleft()
        return sum(n for _, n in self._dead)

    def _holding(
        self,
        name: str,
        condition: str,
        rule: AlertRule,
        snap: Snapshot,
        now: float,
        new_dead: int,
    ) -> dict[str, tuple[Any, str]]:
        """The subjects for which `condition` holds now: subject -> (value, message)."""
        picked = set(rule.components)
        out: dict[str, tuple[Any, str]] = {}
        if condition == "sink_backlog":
            for name, s in snap.sinks.items():
                age = s.oldest_age_s
                if (not picked or name in picked) and age is not None and age > rule.older_than:
                    out[name] = (
                        age,
                        f"sink {name} is {_age(age)} behind: {s.depth} FlowFiles wait, the"
                        f" oldest longer than {_age(rule.older_than)}",
                    )
        elif condition == "sink_failing":
            for name, s in snap.sinks.items():
                failing = s.state in ("retrying", "failed") or (
                    s.state == "connecting" and s.last_error is not None
                )
                if (not picked or name in picked) and failing:
                    out[name] = (s.state, f"sink {name} cannot deliver: {s.last_error}")
        elif condition == "source_offline":
            for name, src in snap.sources.items():
                down = src.state in ("retrying", "failed") or (
                    src.state == "connecting" and src.last_error is not None
                )
                if (not picked or name in picked) and down:
                    out[name] = (src.state, f"source {name} is offline: {src.last_error}")
                devices = src.extra.get("devices")
                if isinstance(devices, dict):
                    for dev, st in devices.items():
                        if (
                            (not picked or dev in picked or name in picked)
                            and isinstance(st, dict)
                            and st.get("state") == "offline"
                        ):
                            # a device written flat is named after its source: one subject
                            subject = name if dev == name else f"{name}/{dev}"
                            out[subject] = (
                                "offline",
                                f"Modbus device {dev} of source {name} is offline:"
                                f" {st.get('last_error')}",
                            )
        elif condition == "no_data" and rule.topic:
            seen = self.watch.last_seen(rule.topic, now)
            quiet = now - seen
            wait = rule.for_ if rule.for_ is not None else DEFAULT_FOR["no_data"]
            key = f"{name}:{rule.topic}"
            if key in self.active:
                # Firing, it holds until data comes, however short `for` is (quiet again
                # for `for` before the next evaluation, a message would go unseen).
                silent = seen <= self._silent_since.setdefault(key, seen)
            else:
                silent = quiet >= wait
            if silent:
                out[rule.topic] = (round(quiet, 1), f"no data on {rule.topic} for {_age(quiet)}")
        elif condition == "dead_letters":
            if new_dead > rule.per_minute:
                out["store"] = (
                    new_dead,
                    f"{new_dead} FlowFiles dead-lettered in the last minute (more than"
                    f" {rule.per_minute})",
                )
        elif condition == "store_budget":
            st = snap.store
            used = 100.0 * st.bytes / st.max_bytes if st.max_bytes else 0.0
            if used > rule.percent:
                out["store"] = (
                    round(used, 1),
                    f"the store holds {used:.0f}% of its budget (more than {rule.percent:g}%)",
                )
        return out

    # -- events ------------------------------------------------------------------

    async def _fire(
        self, key: str, rule: str, condition: str, subject: str, value: Any, message: str
    ) -> None:
        at = time.time()
        body = {
            "gateway": self._config().gateway.id,
            "key": key,
            "rule": rule,
            "condition": condition,
            "subject": subject,
            "state": "firing",
            "message": message,
            "value": value,
            "fired_at": at,
            "resolved_at": None,
            "at": at,
        }
        log.warning("alerts: firing %s: %s", key, message)
        self.active[key] = body
        if condition == "no_data":
            self._silent_since[key] = self.watch.last_seen(subject, 0.0)
        await self._emit(key, body, firing=True)

    async def _resolve(self, key: str) -> None:
        at = time.time()
        body = {**self.active.pop(key), "state": "resolved", "resolved_at": at, "at": at}
        log.info("alerts: resolved %s (fired %s ago)", key, _age(at - body["fired_at"]))
        await self._emit(key, body, firing=False)

    def _targets(self) -> list[str]:
        config = self._config()
        targets = []
        if self._mqtt_off() is None:
            targets.append("mqtt")
        if config.alerts.webhook.url:
            targets.append("webhook")
        return targets

    async def _emit(self, key: str, body: dict[str, Any], firing: bool) -> None:
        targets = self._targets()
        seq = await self.view.store.alert_event(key, body["at"], json.dumps(body), firing, targets)
        self.recent.append(body)
        for name in targets:
            await self.notifiers[name].put(seq, body)

    async def _sent(self, seqs: list[int], notifier: str) -> None:
        await self.view.store.alert_sent(seqs, notifier)

    # -- the notifiers ------------------------------------------------------------

    def _mqtt_off(self) -> str | None:
        """Why the MQTT events have nowhere to go now, or None."""
        config = self._config()
        if not config.alerts.mqtt_topic or self._mqtt_send is None:
            return "alerts.mqtt_topic is off"
        if not config.status.enabled:
            return "status.enabled is off (MQTT events go on the status connection)"
        if not self._mqtt_wanted():
            return "the gateway has no broker (mqtt.url: auto, and no component uses one)"
        return None

    async def _send_mqtt(self, body: dict[str, Any]) -> bool | None:
        if self._mqtt_off() is not None or self._mqtt_send is None:
            return False  # turned off just now: the notifier's next look gives it up
        config = self._config()
        topic = (config.alerts.mqtt_topic or "").replace("{gateway}", config.gateway.id)
        notifier = self.notifiers["mqtt"]
        try:
            sent = await self._mqtt_send(topic, json.dumps(body).encode())
        except PermanentError as err:  # refused (an ACL): kept, in order, and said once
            message = (
                f"{error_text(err)}; the events wait until it takes them (let the gateway"
                " publish there, or change alerts.mqtt_topic)"
            )
            if message != notifier.last_error:
                log.error("alerts: %s", message)
            notifier.last_error = message
            return False
        if sent and notifier.last_error is not None:
            log.info("alerts: the broker takes the events again")
            notifier.last_error = None
        return sent

    def _webhook_retry(self) -> tuple[float, float]:
        retry = self._config().alerts.webhook.retry
        return retry.initial, retry.max

    async def _send_webhook(self, body: dict[str, Any]) -> bool | None:
        notifier = self.notifiers["webhook"]
        settings = self._config().alerts.webhook
        if not settings.url:
            return False  # turned off just now: the notifier's next look gives it up
        import aiohttp  # ~12 MB of RSS when the console is off: only to post to a webhook
        import yarl

        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            url = yarl.URL(settings.url)
        except ValueError:  # check-config refuses such a URL; kept waiting, not lost
            self._webhook_trouble(
                notifier,
                f"alerts.webhook.url {post_url_problem(settings.url)}; the events wait until"
                " it is changed",
                logging.ERROR,
            )
            return False
        try:
            # Redirects are followed here, not by aiohttp: it would follow a 301, 302 or
            # 303 with a GET without the event, whose 2xx would then count as the event
            # sent. A 307 or 308 (http:// moved to https://) is followed with the POST.
            for hop in range(WEBHOOK_REDIRECTS + 1):
                async with self._session.post(
                    url,
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=settings.timeout),
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    location = response.headers.get("Location", "")
                target = _redirect_target(url, status, location)
                if target is None or hop == WEBHOOK_REDIRECTS:
                    break
                url = target
        except TimeoutError:  # first: aiohttp's timeouts are ClientErrors too
            self._webhook_trouble(
                notifier, f"the webhook did not answer within {settings.timeout:g}s"
            )
            return False
        except (aiohttp.ClientError, OSError) as err:
            self._webhook_trouble(notifier, f"cannot POST to the webhook: {error_text(err)}")
            return False
        if status < 300:
            if notifier.last_error is not None:
                log.info("alerts: the webhook takes events again")
            notifier.last_error = None
            return True
        if 300 <= status < 400:
            to = location.split("?", 1)[0][:200]  # a query may hold a token: not logged
            if status not in (307, 308) or not to:
                why = "only a 307 or 308 is followed, as a POST with the event"
            elif url.scheme == "https" and "://" in to and not to.lower().startswith("https:"):
                why = "a redirect from https to http is not followed"
            else:
                why = f"over {WEBHOOK_REDIRECTS} redirects are not followed"
            self._webhook_trouble(
                notifier,
                f"the webhook answered HTTP {status}{f' to {to}' if to else ''} ({why}:"
                " set alerts.webhook.url to the new place)",
            )
            return False
        if 400 <= status < 500 and status not in (408, 429):
            log.error(
                "alerts: the webhook refused the event %s with HTTP %d; not sent again",
                body.get("key"),
                status,
            )
            return None
        self._webhook_trouble(notifier, f"the webhook answered HTTP {status}")
        return False

    @staticmethod
    def _webhook_trouble(notifier: Notifier, message: str, level: int = logging.WARNING) -> None:
        if message != notifier.last_error:
            then = "; retrying with backoff" if level == logging.WARNING else ""
            log.log(level, "alerts: %s%s", message, then)
        notifier.last_error = message

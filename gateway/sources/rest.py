"""Polls a REST API: GETs a URL on an interval or schedule, one FlowFile per selected item.

Each poll GETs `url` and reads the answer as JSON; `select` picks the items
(below), and each item becomes one FlowFile whose content is the item's JSON and
whose topic comes from `topic`, a template with `{field}` for a field of the item
(its `/`, `+` and `#` become `_`, so that it stays one topic level) and `{source}`
for this source's name. An item without a field the template needs, or that is
no object while the template needs one, goes to the dead letters. NaN and
Infinity in an answer (no JSON, but some APIs send them) become null, and so does a
number beyond the range of a double (`1e999`).

`select` is a small path language (a subset of JSONPath):
  (empty)            the whole answer
  $                  the whole answer (`$.` may start any path)
  data.readings      the key `readings` of the key `data`
  items[0]           the first element of the array `items` (negative: from the end)
  items[*]           every element of the array `items` (or every value of an object)
  sites[*].meters    the key `meters` of every element of `sites`
  ["odd key"]        a key that is no plain name, in double quotes
What the path selects last is the items: an array selected last gives one item
per element (so `data.readings` and `data.readings[*]` mean the same), anything
else one item. A path that finds nothing gives no item.

An answer's items are handed over 1000 at a time (the next thousand at once, before
the next GET), so that a large answer of many small items holds only a page of
FlowFiles in memory.

A stop (SIGTERM, a reload that removes the source) during a poll waits for that
answer's items to be handed over and stored, for at most 10 s (while the store is
full, say): a GET that has not answered yet is asked again at the next start, but
the items of an answer not handed over by then are lost, with an error in the log
saying how many (the API is not asked for them again).

A poll is a snapshot: every poll emits what the API answers then, so an item the
API keeps answering is emitted again on each poll (deduplicate downstream, e.g. a
`deadband` processor, or select only new items with the API's own query
parameters). Delivery into the store is at least once.

Failures: a connection refused or cut, a timeout, a 408 or a 5xx answer is retried
with the engine's backoff (counted in `errors` in /api/status). A 4xx answer or a body
that is no JSON is logged once when it starts (and when it changes), counted in
`failures` and `last_status` in /api/status, and the next poll tries again on
schedule; after a 429 (too many requests) with a `Retry-After`, the first poll once that
time (an hour at most) has passed. An answer larger than `max_body` counts as a failure.

Redirects are followed, at most 10. The credentials (`bearer_token`, basic auth) and
every one of `headers` (any of them may hold a key) go to the origin of `url` only: a
redirect to another host, port or scheme gets the request without them.

TLS: an `https://` URL; `ca_file` verifies the server (default: the system's CAs),
`cert_file` and `key_file` present a client certificate, `verify: false` turns that
verification off (testing only; a client certificate is still presented).

Keys
  type: rest
  url: https://api.example.com/v1/readings  (required) http:// or https://
  interval: 60s            how often to poll (default 60s)
  schedule: "*/5 * * * *"  or poll at these times (cron, UTC); jitter, missed: as for
                           every polled source (README, "Schedules")
  select: "data.readings"  which items become FlowFiles (default: the whole answer)
  topic: "rest/{source}"   the topic template (default rest/{source})
  headers: {}              request headers (values may be ENC(...))
  bearer_token: null       sends Authorization: Bearer <token>
  username: null           basic auth user (with password)
  password: null
  ca_file: null            CA bundle for https:// (default: the system's)
  cert_file: null          client certificate (PEM) for https://; goes with key_file
  key_file: null           its private key (PEM)
  verify: true             verify the server's certificate (default true; false still
                           presents cert_file)
  max_body: 8MiB           the largest answer read (default 8MiB)
  timeout: 30s             the longest one request may take (default 30s)

Example
  sources:
    weather:
      type: rest
      url: "https://api.example.com/v1/stations/12/readings"
      interval: 5m
      select: "$.readings[*]"
      topic: "weather/{station}/{kind}"
      bearer_token: "ENC(...)"
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from gateway.config.model import ScheduleKeys, SourceConfig
from gateway.config.schema import POSITIVE_DURATION, Doc, Duration, Range, Size, url_syntax_problem
from gateway.config.tls import ClientTlsError, client_tls, client_tls_problems
from gateway.core.component import Context, Message, Source
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.core.http_headers import auth_problems, retry_after
from gateway.core.schedule import INTERVAL_MAX
from gateway.core.topics import template_parts, validate_topic

_STEP = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\[\*\]|\.\*|\["((?:[^"\\]|\\.)*)"\]')
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_SAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})

Step = str | int | None  # a key, an index, None for [*]


def parse_select(path: str) -> list[Step]:
    """The steps of a `select` path; ValueError saying where it is wrong."""
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    steps: list[Step] = []
    at = 0
    while at < len(text):
        m = _STEP.match(text, at)
        if m is None:
            raise ValueError(
                f"cannot read {path!r} at {text[at:]!r}: use keys (a.b), indexes ([0]),"
                ' [*] and ["odd key"]'
            )
        if m.group(1) is not None:
            steps.append(m.group(1))
        elif m.group(2) is not None:
            steps.append(int(m.group(2)))
        elif m.group(3) is not None:
            steps.append(json.loads(f'"{m.group(3)}"'))
        else:
            steps.append(None)
        at = m.end()
    return steps


def select(value: Any, steps: list[Step]) -> list[Any]:
    """The items `steps` pick from `value` (see the module docstring)."""
    current = [value]
    for step in steps:
        found: list[Any] = []
        for item in current:
            if step is None:
                if isinstance(item, list):
                    found.extend(item)
                elif isinstance(item, dict):
                    found.extend(item.values())
            elif isinstance(step, int):
                if isinstance(item, list) and -len(item) <= step < len(item):
                    found.append(item[step])
            elif isinstance(item, dict) and step in item:
                found.append(item[step])
        current = found
    if steps and steps[-1] is None:
        return current
    items: list[Any] = []
    for item in current:
        if isinstance(item, list):
            items.extend(item)
        else:
            items.append(item)
    return items


RETRY_AFTER_MAX = 3600.0  # seconds: the longest Retry-After a 429 is taken for
PAGE = 1000  # items of an answer handed over at once; the rest follow at once, in order
_QUERY = re.compile(r"""(https?://[^\s'"?#]*)[?#][^\s'"]*""")


def _finite(text: str) -> float | None:
    """A JSON number; None for one beyond a double (`1e999`), as for Infinity: Python
    reads it as infinity, which the content held as `Infinity` (no JSON)."""
    value = float(text)
    return None if math.isinf(value) else value


def _failure(err: BaseException) -> str:
    """A failed GET in one line, without the query of any URL in it (it may hold an API
    key): aiohttp's redirect errors read `0, message='', url='http://host/x?key=...'`."""
    if isinstance(err, aiohttp.TooManyRedirects):
        what = f"too many redirects ({len(err.history)})"
    elif isinstance(err, aiohttp.ClientResponseError):
        what = f"{err.status} {err.message}".strip()
    else:
        what = " ".join(str(err).split()) or type(err).__name__
    return _QUERY.sub(r"\1", what)


MAX_REDIRECTS = 10  # as aiohttp's and browsers' limit
_REDIRECTS = (301, 302, 303, 307, 308)


def _redirect(url: URL, location: str, where: str) -> URL:
    """Where a redirect from `url` leads; RetryableError for a place that is no http(s) URL."""
    try:
        target = url.join(URL(location))
        target.origin()  # ValueError for a URL without a host
    except ValueError as err:
        raise RetryableError(f"GET {where} failed: redirected to no valid URL") from err
    if target.scheme not in ("http", "https"):
        raise RetryableError(f"GET {where} failed: redirected to a {target.scheme}: URL")
    return target


def _template_fields(template: str) -> list[str]:
    """The fields a topic template uses; ValueError, in one line of ours rather than
    Python's format-string text, for a lone brace or a field that is no plain name."""
    names = []
    for _text, name, spec, conversion in template_parts(template):
        if name is None:
            continue
        if not name or spec or conversion or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
            raise ValueError(f"topic template field {{{name}}} must be a plain field name")
        names.append(name)
    return names


@dataclass(frozen=True, kw_only=True)
class RestSourceConfig(ScheduleKeys, SourceConfig):
    """Keys of the `rest` source."""

    url: Annotated[
        str,
        Doc(
            "The `http://` or `https://` URL to GET.", example="https://api.example.com/v1/readings"
        ),
    ]
    interval: Annotated[
        Duration,
        Doc("How often to poll (unless `schedule` is set).", example="60s"),
        Range(0.05, INTERVAL_MAX, "must be between 50ms and 100 years"),
    ] = 60.0
    select: Annotated[
        str,
        Doc(
            "Which items of the answer become FlowFiles: a path such as `data.readings`,"
            " `$.items[*]`, `sites[*].meters`, `items[0]` (default: the whole answer).",
            example="$.items[*]",
        ),
    ] = ""
    topic: Annotated[
        str,
        Doc(
            "The topic of each item: `{field}` for a field of the item (`/`, `+`, `#` become"
            " `_`), `{source}` for this source's name, `{{` and `}}` for a literal brace.",
            example="rest/{device}",
        ),
    ] = "rest/{source}"
    headers: Annotated[
        dict[str, str],
        Doc(
            "Request headers; values may be `ENC(...)`, never logged; the values of"
            " Authorization, Proxy-Authorization, Cookie, X-Api-Key, Api-Key and names ending"
            " in -token, -secret or -password are shown as *** by the console and /api/config."
        ),
    ] = field(default_factory=dict)
    bearer_token: Annotated[
        str | None, Doc("Sends `Authorization: Bearer <token>`; may be `ENC(...)`.")
    ] = None
    username: Annotated[str | None, Doc("Basic auth user (with `password`).")] = None
    password: Annotated[str | None, Doc("Basic auth password; may be `ENC(...)`.")] = None
    ca_file: Annotated[
        str | None, Doc("CA bundle that verifies an https:// server (default: the system's).")
    ] = None
    cert_file: Annotated[
        str | None, Doc("Client certificate (PEM) for https://; goes with `key_file`.")
    ] = None
    key_file: Annotated[str | None, Doc("The client certificate's private key (PEM).")] = None
    verify: Annotated[
        bool,
        Doc(
            "Verify the server's certificate (https:// only); `false` is for testing only"
            " (`cert_file` is still presented; not with `ca_file`)."
        ),
    ] = True
    max_body: Annotated[
        Size,
        Doc("The largest answer read; a larger one counts as a failure."),
        Range(1024, 256 << 20, "must be between 1KiB and 256MiB"),
    ] = 8 << 20
    timeout: Annotated[
        Duration,
        Doc("The longest one request may take."),
        POSITIVE_DURATION,
    ] = 30.0

    def check(self) -> Iterator[tuple[str, str]]:
        yield from self.schedule_problems(self.interval)
        if not self.url.startswith(("http://", "https://")):
            yield "url", "must start with http:// or https://"
        elif "@" in self.url.partition("://")[2].partition("/")[0]:
            yield "url", "put credentials in username and password, not in the url"
        else:
            yield from self._url_problems()
            yield from client_tls_problems(
                self.url, self.verify, self.ca_file, self.cert_file, self.key_file
            )
        if bool(self.cert_file) != bool(self.key_file):
            yield "cert_file", "cert_file and key_file go together"
        try:
            parse_select(self.select)
        except ValueError as err:
            yield "select", str(err)
        try:
            names = _template_fields(self.topic)
        except ValueError as err:
            yield "topic", str(err)
        else:  # the fields' values cannot hold a wildcard: the text around them must not either
            problem = validate_topic(self.topic.format(**dict.fromkeys(names, "x")))
            if problem:
                yield "topic", f"{self.topic!r}: {problem}"
        yield from auth_problems(self.headers, self.bearer_token, self.username, self.password)

    def _url_problems(self) -> Iterator[tuple[str, str]]:
        # The url itself is not quoted back: its query may hold an API key.
        if problem := url_syntax_problem(self.url):
            yield "url", problem
        elif not urlsplit(self.url).hostname:
            yield "url", "names no host"
        else:
            try:  # as the source reads it: an address in [] that is none was a traceback
                URL(self.url).origin()
            except ValueError as err:
                yield "url", f"is not a valid URL: {err}"


class RestSource(Source):
    """GETs a URL on a schedule and turns the selected items into FlowFiles."""

    Config = RestSourceConfig
    mode = "poll"
    lost_if_cut = "the API is not asked for them again"

    def __init__(self, config: RestSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: RestSourceConfig = config
        self.interval = config.interval
        self.schedule = config.poll_schedule(config.interval)
        self._steps = parse_select(config.select)
        self._fields = [f for f in _template_fields(config.topic) if f != "source"]
        # {source} is filled in with the item's fields: put into the template as text, the
        # name it made of a literal `{{source}}` ({src}) was a field, a KeyError at each poll
        self._source = ctx.name.translate(_SAFE)
        self._session: aiohttp.ClientSession | None = None
        self._origin = URL(config.url).origin()
        self._credentials: dict[str, str] = {}
        self._items: list[Any] = []  # the last answer's items not handed over yet
        self._next = 0
        self._read_at = 0
        self.failures = 0
        self.last_status: str | None = None
        self.polls = 0
        self._quiet_until = 0.0  # monotonic: no GET before (a 429's Retry-After)

    async def connect(self) -> None:
        if self._session is not None:
            return
        cfg = self.config
        try:
            tls = await asyncio.to_thread(
                client_tls, cfg.url, cfg.verify, cfg.ca_file, cfg.cert_file, cfg.key_file
            )
        except ClientTlsError as err:
            raise PermanentError(str(err)) from err
        headers = {"User-Agent": "edge-stream", "Accept": "application/json"}
        # The configured headers go to the url's own origin only, never where it
        # redirects: any of them may be a credential (X-Goog-Api-Key, Dd-Api-Key, ...).
        credentials: dict[str, str] = dict(cfg.headers)
        if cfg.bearer_token is not None:
            credentials["Authorization"] = f"Bearer {cfg.bearer_token}"
        elif cfg.username and cfg.password:
            pair = f"{cfg.username}:{cfg.password}".encode()
            credentials["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        self._credentials = credentials
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, ssl=tls),
            timeout=aiohttp.ClientTimeout(total=cfg.timeout),
            headers=headers,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def status(self) -> dict[str, object]:
        return {"polls": self.polls, "failures": self.failures, "last_status": self.last_status}

    def _failed(self, what: str) -> list[Message]:
        """A failure retried on the next poll: counted always, logged when it changes."""
        self.failures += 1
        if what != self.last_status:
            self.ctx.log.warning("GET %s: %s; trying again at the next poll", self._where, what)
        self.last_status = what
        return []

    def _too_many(self, reason: str | None, header: str | None) -> list[Message]:
        """A 429: a failure, the next GET at the first poll after its Retry-After, which is
        taken for an hour at most (an HTTP date read against a board's clock stuck in the
        past, or a proxy's error, silenced the source for years while it said running)."""
        after = min(retry_after(header, self.ctx.clock.now_ns() / 1e9), RETRY_AFTER_MAX)
        if after > 0:
            self._quiet_until = self.ctx.clock.monotonic() + after
            return self._failed(
                f"answered 429 {reason or ''}".rstrip() + f" (Retry-After {after:g}s)"
            )
        return self._failed(f"answered 429 {reason or ''}".rstrip())

    @property
    def _where(self) -> str:
        return self.config.url.partition("?")[0]

    async def poll_messages(self) -> list[Message]:
        if self._next < len(self._items):
            return self._page()
        if self._session is None:
            await self.connect()
        assert self._session is not None
        cfg = self.config
        if self.ctx.clock.monotonic() < self._quiet_until:
            return []  # the API asked for no request before then (429, Retry-After)
        self.polls += 1
        url = URL(cfg.url)
        try:
            # Redirects are followed here, not by aiohttp, which sends every header but
            # Authorization and Cookie on to another host: an X-Api-Key would go along.
            for hops in range(MAX_REDIRECTS + 1):
                same_origin = url.origin() == self._origin
                async with self._session.get(
                    url,
                    allow_redirects=False,
                    headers=self._credentials if same_origin else None,
                ) as answer:
                    status = answer.status
                    location = answer.headers.get("Location")
                    if status in _REDIRECTS and location is not None:
                        if hops == MAX_REDIRECTS:
                            raise RetryableError(
                                f"GET {self._where} failed: too many redirects ({MAX_REDIRECTS})"
                            )
                        url = _redirect(url, location, self._where)
                        continue
                    if status == 429:
                        # Too many requests: retried with the engine's backoff (from 0.5 s)
                        # it polled a rate-limited API more often than its schedule does
                        return self._too_many(answer.reason, answer.headers.get("Retry-After"))
                    if status >= 500 or status == 408:
                        raise RetryableError(f"GET {self._where} answered {status} {answer.reason}")
                    if status >= 300:
                        return self._failed(f"answered {status} {answer.reason or ''}".rstrip())
                    try:  # read(n) would return what has arrived so far: one chunk of it
                        body = await answer.content.readexactly(cfg.max_body + 1)
                    except asyncio.IncompleteReadError as err:  # the end came first: all
                        body = err.partial
                    break
        except TimeoutError as err:  # first: aiohttp's timeouts are ClientErrors too
            raise RetryableError(
                f"GET {self._where} did not answer within {cfg.timeout:g}s"
            ) from err
        except (aiohttp.ClientError, OSError) as err:
            raise RetryableError(f"GET {self._where} failed: {_failure(err)}") from err
        if len(body) > cfg.max_body:
            return self._failed(f"the answer is larger than max_body ({cfg.max_body} bytes)")
        try:
            # NaN and Infinity, which some APIs send, are no JSON: null keeps the content JSON
            value = json.loads(body, parse_constant=lambda _: None, parse_float=_finite)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            return self._failed(f"the answer is not JSON ({err})")
        if self.last_status is not None:
            self.ctx.log.info("GET %s answers again", self._where)
        self.last_status = None
        self._read_at = self.ctx.clock.now_ns()
        self._items, self._next = select(value, self._steps), 0
        return self._page()

    def _page(self) -> list[Message]:
        """The next PAGE items of the answer as messages; `backlog` while more are left
        (the engine asks again at once). An answer of a million tiny items made a million
        FlowFiles at once: half a GB, and the gateway deaf for most of a minute."""
        items = self._items[self._next : self._next + PAGE]
        self._next += len(items)
        self.backlog = self.held = self._next < len(self._items)
        self.held_items = len(self._items) - self._next
        if not self.backlog:
            self._items, self._next = [], 0
        return [self._message(item, self._read_at) for item in items]

    def _message(self, item: Any, now: int) -> Message:
        try:
            content = _dumps(item).encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"), valid JSON: keep it escaped
            content = json.dumps(item, separators=(",", ":")).encode()
        values: dict[str, str] = {}
        reject = None
        if self._fields and not isinstance(item, dict):
            reject = f"the item is no object: it has no fields for the topic {self.config.topic!r}"
        elif self._fields:
            missing = [f for f in self._fields if f not in item]
            if missing:
                reject = f"the item has no field {missing[0]!r} for the topic {self.config.topic!r}"
            else:
                for f in self._fields:
                    text = item[f] if isinstance(item[f], str) else _dumps(item[f])
                    # a lone surrogate cannot be UTF-8: written as its escape
                    values[f] = text.translate(_SAFE).encode("utf-8", "backslashreplace").decode()
        topic = f"rest/{self.ctx.name}"
        if reject is None:
            topic = self.config.topic.format(**values, source=self._source)
            problem = validate_topic(topic)
            if problem:
                reject, topic = f"topic {topic!r}: {problem}", f"rest/{self.ctx.name}"
        return Message(FlowFile.create(topic, content, {}, now), reject=reject)

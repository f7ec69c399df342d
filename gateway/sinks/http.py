"""POSTs FlowFiles to an HTTP endpoint (a webhook): a JSON array per batch, or one request each.

`mode: batch` (the default) sends each batch as one JSON array of envelopes,
`mode: each` one request per FlowFile (its envelope, or with `body: payload` its
content bytes as they are). The envelope is the one the Redis sink writes:
  {"id": "0190…", "topic": "sensors/a/telemetry", "ts": "2024-05-01T12:00:00.123456Z",
   "attributes": {...}, "payload": {...}}
with `payload` the content when it is UTF-8 JSON, else `payload_base64` (also for
text that is not JSON, such as `21.5 C`, which the file sink writes as `payload_text`).

`url` is a template: `{topic}` is the FlowFile's topic (each level percent-encoded,
`.` and `..` levels too, so that no topic leads out of the url's path; the `/` between
levels kept), `{topic.N}` its level N (from 0; negative counts from the end; empty
when the topic has no such level), `{gateway}` the gateway id, `{sink}` this sink's
name; `{{` and `}}` are literal braces. In batch mode the FlowFiles of a batch that
resolve to different URLs go in one request per URL. A request body is at most
`max_body` bytes: a batch whose envelopes are larger goes in several requests; a
single FlowFile larger than that is dead-lettered, and so is one whose topic, put
in the URL, is not valid Unicode text (a lone surrogate). In the host, only
`{topic.N}` may stand (`http://dev-{topic.1}.plant.lan/in`; not at its start), and a
FlowFile whose level makes no host name there (a space or a character outside
letters, digits, `-` and `_`, or a label over 63) is dead-lettered; a placeholder in
the port or before an `@` is refused.

Order: a request's array holds its FlowFiles in the order they were stored. The requests
of one batch (one per URL and more where `max_body` cuts it, or one per FlowFile in each
mode) are started in that order, but up to `concurrency` (default 4) are in flight at
once, so a receiver may get them, and see them finish, in any order: a later FlowFile
before an earlier one. The next batch (or this one's next try) starts only once every
request of this one was answered or, after one failed, given up. With `concurrency: 1`
the requests go one after another, in stored order for each URL (a batch's requests are
grouped by URL, so a FlowFile for one URL may come after later ones for another). In any
case a batch sent again after a failure brings FlowFiles the receiver may have seen
already, after newer ones. A receiver that needs them in order sorts them itself, e.g.
by `id` (a UUIDv7, which sorts by creation time).

Every request carries an `Idempotency-Key` header: the FlowFile id (each mode), or
`<first id>..<last id>` of the FlowFiles in the request (batch mode; the id alone
when the request holds one). Delivery is
**at least once**: a request whose answer was lost (a timeout, a connection cut,
a gateway killed before it moved its cursor) is sent again. A batch retried after
a failure part-way leaves out what its other requests delivered (answered 2xx) or had
refused for good (those go to the dead letters then), so that a receiver failing one
request in a few still lets large batches through; after a restart of the gateway or
a reload of the sink, all of it goes again. In each mode a FlowFile
comes again with the same key and body; in batch mode a batch read again may hold
more FlowFiles than the first try (what arrived meanwhile), so its key and body can
differ. A receiver that must not see a FlowFile twice dedupes by the key (each
mode) or by the `id` of each element (batch mode).

Answers: 2xx is delivered (of its body, the first 64KiB are read and dropped; a
longer one closes the connection). 408, 429, 5xx, a connection refused or cut and a
timeout are retried later, with the engine's backoff (a `Retry-After` of a 429 or
503, in seconds or as an HTTP date, is waited at least, up to `retry.max`). 401,
403 and 407 say the credentials are wrong, which is no fault of the data: the sink
stops, the data stays buffered, fix the config and reload; so does a server
certificate that does not verify (`ca_file`) or a client certificate the server
refuses (`cert_file`, `key_file`). Any other 4xx, and a
3xx (redirects are not followed: set `url` to the new place), is final for the
FlowFiles of that request: they go to the dead letters with the status and the
first `error_body` bytes of the answer. In batch mode that is the whole request
(the receiver did not say which element it refused); use `mode: each` where one
bad FlowFile must not take its neighbours with it.

Authentication: `bearer_token` (an `Authorization: Bearer` header) or `username`
and `password` (basic auth), and any `headers`; the token, the password and header
values may be `ENC(...)` secrets and are never logged nor shown in a dead letter's
reason (an answer's body that quotes one, of 4 characters or more, shows `***`
instead). TLS: an `https://` URL; `ca_file` verifies the server (default: the
system's CAs), `cert_file` and `key_file` present a client certificate,
`verify: false` turns that verification off (testing only; a client certificate
is still presented).

Keys
  type: http
  url: https://hooks.example.com/in/{topic}  (required) the URL template
  mode: batch              batch (a JSON array per request) or each (default batch)
  body: envelope           each mode: envelope, or payload (the content bytes)
  content_type: application/json  each mode with body: payload (default application/json)
  method: POST             POST or PUT (default POST)
  headers: {}              more request headers (values may be ENC(...))
  bearer_token: null       sends Authorization: Bearer <token>
  username: null           basic auth user (with password)
  password: null
  ca_file: null            CA bundle for https:// (default: the system's)
  cert_file: null          client certificate (PEM); goes with key_file
  key_file: null
  verify: true             verify the server's certificate (default true)
  max_body: 4MiB           the largest request body (default 4MiB)
  concurrency: 4           requests in flight at once (default 4)
  error_body: 512          bytes of a refusing answer kept in the dead letter (default 512)
  connect_timeout: 10s     (default 10s)
  timeout: 30s             the longest one request may take (default 30s)
  and the delivery keys every sink has: batch, retry, rate_limit, overflow.

Example
  sinks:
    hook:
      type: http
      url: "https://ingest.example.com/v1/{gateway}/{topic}"
      bearer_token: "ENC(...)"
      batch: {max_rows: 500, max_bytes: 1MiB}
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from gateway.config.model import SinkConfig
from gateway.config.schema import (
    POSITIVE_DURATION,
    Doc,
    Duration,
    Range,
    Size,
    post_url_problem,
    safe_url,
    url_syntax_problem,
)
from gateway.config.tls import ClientTlsError, client_tls, client_tls_problems
from gateway.core.clock import rfc3339
from gateway.core.component import Context, Rejected, Settled, Sink, unsettled
from gateway.core.errors import (
    MissingError,
    PermanentError,
    RetryableError,
    RetryLater,
    error_text,
)
from gateway.core.flowfile import FlowFile, attributes_json
from gateway.core.http_headers import auth_problems, has_control, retry_after
from gateway.core.redact import written_forms
from gateway.core.tls import certificate_refusal, error_chain
from gateway.sinks._columns import loads

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_LEVEL = re.compile(r"topic\.(-?\d+)")
_RETRY = frozenset({408, 429})
_CREDENTIALS = frozenset({401, 403, 407})
# Of a 2xx answer's body (nobody reads it), read and dropped so the connection can serve
# the next request; a longer body is left unread and the connection closed.
_ANSWER_READ = 64 << 10


def compile_template(template: str) -> list[str | tuple[str, int | None]]:
    """`template` as literal text and fields: ("topic", None) for {topic}, ("topic", n)
    for {topic.n}, ("gateway"|"sink", None); ValueError for anything else."""
    parts: list[str | tuple[str, int | None]] = []
    at = 0
    for m in _FIELD.finditer(template):
        parts.append(template[at : m.start()])
        at = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif token in ("{", "}"):
            raise ValueError(f"a lone {token!r} (write {token}{token} for a literal brace)")
        else:
            name = m.group(1)
            level = _LEVEL.fullmatch(name)
            if level:
                parts.append(("topic", int(level.group(1))))
            elif name in ("topic", "gateway", "sink"):
                parts.append((name, None))
            else:
                raise ValueError(
                    f"unknown placeholder {{{name}}}; use {{topic}}, {{topic.N}}, {{gateway}}"
                    " or {sink}, and {{ }} for literal braces"
                )
    parts.append(template[at:])
    return [p for p in parts if p != ""]


# A placeholder's place in the url text, for finding which part of the url it is in.
_MARK = "\ue000"


def authority_fields(parts: list[str | tuple[str, int | None]]) -> tuple[str, str, str]:
    """The url's user info, host and port (after its last ':'), placeholders written
    `_MARK` and {topic} (whole) as `_MARK * 2`."""
    text = "".join(
        p if isinstance(p, str) else _MARK * (2 if p == ("topic", None) else 1) for p in parts
    )
    rest = text.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    user, _, hostport = authority.rpartition("@")
    host, port = hostport, ""
    if not hostport.startswith("[") and ":" in hostport:
        host, _, port = hostport.rpartition(":")
    return user, host, port


# What a host name made from a topic level may be: dot-separated labels of letters,
# digits, - and _, each 1 to 63 long (253 in all). A level holding anything else comes
# percent-encoded, which no host name holds, and a longer label failed the request
# with a UnicodeError out of the sink (the idna codec), the batch crashed on for ever.
_HOST = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")


def _level(level: str) -> str:
    """A topic level percent-encoded for a URL path; `.` and `..` too, which a server
    would otherwise take as "this folder" and "the folder above" (a device publishing
    on `../../admin` must not move the request out of the url's path)."""
    if level in (".", ".."):
        return level.replace(".", "%2E")
    return quote(level, safe="")


# Headers the sink writes itself, or that describe the body it sends: one in `headers`
# was silently replaced (Content-Type, Idempotency-Key) or made every request wrong (a
# Content-Length the receiver trusted: it answered 200 to a body cut short, data lost).
_OWN_HEADERS = {
    "content-type": "set by the sink (application/json; with body: payload, content_type)",
    "idempotency-key": "set by the sink for each request (the FlowFile ids)",
    "content-length": "set by the sink for each request (the body's length)",
    "transfer-encoding": "set by the sink for each request",
    "content-encoding": "the sink sends its bodies as they are (not compressed)",
}

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def envelope(ff: FlowFile) -> bytes:
    """The FlowFile as one JSON object (payload inline when it is UTF-8 JSON)."""
    head = (
        f'{{"id":"{ff.id}","topic":{_dumps(ff.topic)},"ts":"{rfc3339(ff.created)}",'
        f'"attributes":{attributes_json(ff.attributes)},'
    )
    try:
        text = ff.content.decode()
        loads(text)
    except (ValueError, RecursionError):
        return f'{head}"payload_base64":"{base64.b64encode(ff.content).decode()}"}}'.encode()
    return f'{head}"payload":{text}}}'.encode()


# What a request line cannot hold as it is: spaces, control characters, anything not ASCII.
_UNSENT = re.compile(r"[\x00-\x20\x7f-\U0010ffff]")


@dataclass(frozen=True, kw_only=True)
class HttpSinkConfig(SinkConfig):
    """Keys of the `http` sink (plus batch, retry, rate_limit, overflow from SinkConfig)."""

    url: Annotated[
        str,
        Doc(
            "`http://` or `https://` URL template: `{topic}` (levels percent-encoded,"
            " `..` too), `{topic.N}` (level N from 0, negative from the end; empty if the"
            " topic has none), `{gateway}`, `{sink}`; `{{` and `}}` for literal braces. The"
            " rest is sent as written: percent-encode a space (`%20`) or a character"
            " outside ASCII.",
            example="https://hooks.example.com/in/{topic}",
        ),
    ]
    mode: Annotated[
        Literal["batch", "each"],
        Doc("`batch`: a JSON array of envelopes per request; `each`: one request per FlowFile."),
    ] = "batch"
    body: Annotated[
        Literal["envelope", "payload"],
        Doc("`mode: each`: send the envelope, or the FlowFile's content bytes as they are."),
    ] = "envelope"
    content_type: Annotated[
        str,
        Doc(
            "The Content-Type of `body: payload` requests (envelopes are always"
            " `application/json`)."
        ),
    ] = "application/json"
    method: Annotated[Literal["POST", "PUT"], Doc("The request method.")] = "POST"
    headers: Annotated[
        dict[str, str],
        Doc(
            "More request headers; values may be `ENC(...)` and are never logged; the values"
            " of Authorization, Proxy-Authorization, Cookie, X-Api-Key, Api-Key and names"
            " ending in -token, -secret or -password are shown as *** by the console and"
            " /api/config. Not Content-Type, Content-Length, Content-Encoding,"
            " Transfer-Encoding or Idempotency-Key: the sink sets those."
        ),
    ] = field(default_factory=dict)
    bearer_token: Annotated[
        str | None,
        Doc("Sends `Authorization: Bearer <token>`; may be `ENC(...)`, never logged."),
    ] = None
    username: Annotated[str | None, Doc("Basic auth user (with `password`).")] = None
    password: Annotated[
        str | None, Doc("Basic auth password; may be `ENC(...)`, never logged.")
    ] = None
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
        Doc(
            "The largest request body: a batch beyond it goes in several requests (sent"
            " `concurrency` at once); a single FlowFile beyond it is dead-lettered."
        ),
        Range(1024, 256 << 20, "must be between 1KiB and 256MiB"),
    ] = 4 << 20
    concurrency: Annotated[
        int,
        Doc(
            "Requests in flight at once (each mode, or a batch split by URL or size), so a"
            " receiver may get a batch's requests out of order; 1 sends them one after"
            " another."
        ),
        Range(1, 64, "must be between 1 and 64"),
    ] = 4
    error_body: Annotated[
        int,
        Doc("Bytes of a refusing answer's body kept in the dead letter's reason."),
        Range(0, 65536, "must be between 0 and 65536"),
    ] = 512
    connect_timeout: Annotated[
        Duration,
        Doc("The longest a connect may take."),
        POSITIVE_DURATION,
    ] = 10.0
    timeout: Annotated[
        Duration,
        Doc("The longest one request may take."),
        POSITIVE_DURATION,
    ] = 30.0

    def _check_head(self, head: str) -> Iterator[tuple[str, str]]:
        """The url's fixed head: readable, a port in range, a host written out, no
        credentials."""
        if problem := url_syntax_problem(head) or post_url_problem(head):
            yield "url", problem
            return
        split = urlsplit(head)
        if not split.hostname:
            yield "url", "the host must be written out (no placeholder in it)"
        if "@" in split.netloc:
            yield "url", "put credentials in username and password, not in the url"

    def check(self) -> Iterator[tuple[str, str]]:
        # A key that failed is None here (its problem is reported already).
        if self.url is None:
            pass
        elif not self.url.startswith(("http://", "https://")):
            yield "url", f"{safe_url(self.url)!r} must start with http:// or https://"
        else:
            try:
                parts = compile_template(self.url)
            except ValueError as err:
                yield "url", f"{safe_url(self.url)!r}: {err}"
            else:
                head = parts[0] if parts and isinstance(parts[0], str) else ""
                yield from self._check_head(head)
                user, host, port = authority_fields(parts)
                if _MARK in user:
                    yield "url", "put credentials in username and password, not in the url"
                if _MARK in port:
                    # the request failed with a ValueError out of the sink, for ever
                    yield "url", "the port must be written out (no placeholder in it)"
                if _MARK * 2 in host:
                    # its levels are joined by /, which ends the host: the rest went to
                    # the path (http://x{topic}/in sent a/b to http://xa/b/in)
                    yield (
                        "url",
                        "{topic} cannot be in the host (its levels go with /): use {topic.N}",
                    )
                written = "".join(part for part in parts if isinstance(part, str))
                if bad := _UNSENT.search(written):
                    # The url goes as written (the topic's levels percent-encoded into it):
                    # the receiver refused the request line, 400, and every FlowFile went
                    # to the dead letters.
                    yield (
                        "url",
                        f"holds {bad[0]!r}, which a URL cannot hold as it is: percent-encode"
                        " it (a space is %20, é is %C3%A9)",
                    )
            yield from client_tls_problems(
                self.url, self.verify, self.ca_file, self.cert_file, self.key_file
            )
        if bool(self.cert_file) != bool(self.key_file):
            yield "cert_file", "cert_file and key_file go together"
        headers = {k: v for k, v in (self.headers or {}).items() if v is not None}
        yield from auth_problems(headers, self.bearer_token, self.username, self.password)
        for name in headers:
            owned = _OWN_HEADERS.get(name.lower())
            if owned:
                yield f"headers.{name}", owned
        if self.body == "payload" and self.mode not in (None, "each"):
            yield "body", "body: payload needs mode: each (a batch is a JSON array)"
        if self.content_type not in (None, "application/json") and self.body == "envelope":
            yield "content_type", "content_type applies only with body: payload"
        if self.content_type is not None and has_control(self.content_type):
            # aiohttp refused every request with a ValueError: the sink crashed and
            # restarted on the same batch for ever
            yield "content_type", "cannot hold a line break or control character"


class HttpSink(Sink):
    """Sends each batch (or each FlowFile) to a webhook with aiohttp's client."""

    Config = HttpSinkConfig

    def __init__(self, config: HttpSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: HttpSinkConfig = config
        self._session: aiohttp.ClientSession | None = None
        parts = compile_template(config.url)
        fixed = {"gateway": ctx.gateway_id, "sink": ctx.name}
        # {gateway} and {sink} are fixed: resolve them now; the topic is filled per FlowFile.
        self._parts: list[str | int | None] = []
        for part in parts:
            if isinstance(part, str) or part[0] != "topic":
                text = part if isinstance(part, str) else quote(fixed[part[0]], safe="")
                if self._parts and isinstance(self._parts[-1], str):
                    self._parts[-1] += text
                else:
                    self._parts.append(text)
            else:
                self._parts.append(part[1])
        self._static = len(self._parts) == 1 and isinstance(self._parts[0], str)
        self._host_from_topic = (
            _MARK
            in authority_fields(
                [p if isinstance(p, str) or p[0] == "topic" else "x" for p in parts]
            )[1]
        )
        headers = {"User-Agent": "edge-stream", **config.headers}
        if config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {config.bearer_token}"
        elif config.username and config.password:
            pair = f"{config.username}:{config.password}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        self._headers = headers
        # What an answer's body may echo back (an error page quoting the request's
        # headers) and must not reach a dead letter, a log line or the status page.
        secrets = {config.bearer_token, config.password, *config.headers.values()}
        secrets |= {value for name, value in headers.items() if name == "Authorization"}
        secrets |= {value.split(" ", 1)[-1] for value in list(secrets) if value}
        forms = {f for v in secrets if v and len(v) >= 4 for f in written_forms(v)}
        self._secrets = sorted(forms, key=len, reverse=True)
        self._secret = (
            re.compile("|".join(map(re.escape, self._secrets)), re.IGNORECASE) if forms else None
        )
        self.requests = 0
        self.refused = 0
        # What the requests of a write that failed settled, by FlowFile id: None delivered
        # (2xx), else refused for good. The engine sends that batch again; only the rest goes.
        self._settled: Settled = {}

    def update(self, config: HttpSinkConfig) -> bool:
        self.config = config
        # Forget what was settled: a new dict, as a write still in flight goes on storing
        # into the one it took (cleared, that one would fill again behind the reload).
        self._settled = {}
        return True

    def _redact(self, text: str) -> str:
        """`text` with every secret of the sink written `***`, also one cut short at its
        end (an answer's body is read up to `error_body` bytes)."""
        if self._secret is None:
            return text
        text = self._secret.sub("***", text)  # any case: %2F and %2f are one escape
        folded = text.casefold()
        for secret in self._secrets:
            for size in range(len(secret) - 1, 3, -1):
                if folded.endswith(secret[:size].casefold()):
                    return text[:-size] + "***"
        return text

    async def connect(self) -> None:
        """Make the client (nothing is sent: a webhook may have no address to probe);
        PermanentError for TLS files that cannot be read, MissingError for a host name
        that does not resolve (a reload naming it is rolled back)."""
        if self._session is not None:
            return
        cfg = self.config
        head = urlsplit(self._parts[0]) if isinstance(self._parts[0], str) else None
        # Only a host written out whole: in http://dev-{topic.1}.example.com/ it is not.
        whole = head is not None and (self._static or head.path or head.query or head.fragment)
        if head is not None and head.hostname and whole:
            try:
                await asyncio.get_running_loop().getaddrinfo(head.hostname, None)
            except socket.gaierror as err:
                raise MissingError(
                    f"{safe_url(cfg.url)}: its host name does not resolve ({err.strerror})"
                ) from err
        try:
            tls = await asyncio.to_thread(
                client_tls, cfg.url, cfg.verify, cfg.ca_file, cfg.cert_file, cfg.key_file
            )
        except ClientTlsError as err:
            raise PermanentError(str(err)) from err
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.concurrency, ssl=tls),
            timeout=aiohttp.ClientTimeout(total=cfg.timeout, sock_connect=cfg.connect_timeout),
            headers=self._headers,
            raise_for_status=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def status(self) -> dict[str, object]:
        return {"url": safe_url(self.config.url), "requests": self.requests}

    # --- writing --------------------------------------------------------------------------

    def url_of(self, topic: str) -> str:
        """The request URL of a FlowFile on `topic` (levels percent-encoded)."""
        if self._static:
            return self._parts[0]  # type: ignore[return-value]
        levels = [_level(level) for level in topic.split("/")]
        out = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            elif part is None:
                out.append("/".join(levels))
            elif -len(levels) <= part < len(levels):
                out.append(levels[part])
        return "".join(out)

    def _requests(
        self, batch: list[FlowFile]
    ) -> tuple[list[tuple[str, list[FlowFile], bytes, str]], list[Rejected]]:
        """The requests of `batch`: (url, FlowFiles, body, content type), in order."""
        cfg = self.config
        requests: list[tuple[str, list[FlowFile], bytes, str]] = []
        refused: list[Rejected] = []
        if cfg.mode == "each":
            for ff in batch:
                if cfg.body == "payload":
                    body, kind = ff.content, cfg.content_type
                else:
                    body, kind = envelope(ff), "application/json"
                if len(body) > cfg.max_body:
                    refused.append(Rejected(ff, self._too_large(len(body))))
                elif (url := self._url_or_refuse(ff, refused)) is not None:
                    requests.append((url, [ff], body, kind))
            return requests, refused
        groups: dict[str, list[tuple[FlowFile, bytes]]] = {}
        for ff in batch:
            body = envelope(ff)
            if len(body) + 2 > cfg.max_body:
                refused.append(Rejected(ff, self._too_large(len(body) + 2)))
                continue
            if (url := self._url_or_refuse(ff, refused)) is not None:
                groups.setdefault(url, []).append((ff, body))
        for url, items in groups.items():
            start, size = 0, 2
            for i, (_, body) in enumerate(items):
                if i > start and size + len(body) + 1 > cfg.max_body:
                    requests.append(self._array(url, items[start:i]))
                    start, size = i, 2
                size += len(body) + 1
            requests.append(self._array(url, items[start:]))
        return requests, refused

    def _url_or_refuse(self, ff: FlowFile, refused: list[Rejected]) -> str | None:
        """The FlowFile's URL, or None with it refused: a lone surrogate in a topic level
        the URL holds cannot be percent-encoded (it failed the batch at every try), and
        a level in the host must make a host name (see _HOST)."""
        try:
            url = self.url_of(ff.topic)
        except UnicodeEncodeError:
            refused.append(Rejected(ff, "http: its topic is not valid Unicode text"))
            return None
        if self._host_from_topic:
            host = urlsplit(url).hostname or ""
            if not _HOST.fullmatch(host):
                refused.append(
                    Rejected(ff, f"http: its topic makes no host name in the url ({host!r})")
                )
                return None
        return url

    @staticmethod
    def _array(
        url: str, items: list[tuple[FlowFile, bytes]]
    ) -> tuple[str, list[FlowFile], bytes, str]:
        body = b"[" + b",".join(b for _, b in items) + b"]"
        return url, [ff for ff, _ in items], body, "application/json"

    def _too_large(self, size: int) -> str:
        limit = self.config.max_body
        return f"http: the request body would be {size} bytes, more than max_body ({limit})"

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        if not batch:
            return []
        if self._session is None:
            await self.connect()
        # this write's own: a reload (update) meanwhile gives the sink a new one
        settled = self._settled
        batch, earlier = unsettled(settled, batch)
        requests, refused = self._requests(batch)
        if not requests:
            settled.clear()
            return earlier + refused
        pending = iter(requests)
        results: list[list[Rejected]] = []

        async def worker() -> None:
            for request in pending:  # shared: each request is taken by one worker
                rejected = await self._send(*request)
                results.append(rejected)
                settled.update(dict.fromkeys((ff.id for ff in request[1]), None))
                settled.update((r.flowfile.id, r) for r in rejected)

        workers = [
            asyncio.ensure_future(worker())
            for _ in range(min(self.config.concurrency, len(requests)))
        ]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            # a failed request fails the write: the others end with it, or they would go
            # on in the background while the engine sends the batch again
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        settled.clear()
        return earlier + refused + [r for rejected in results for r in rejected]

    async def _send(
        self, url: str, flowfiles: list[FlowFile], body: bytes, kind: str
    ) -> list[Rejected]:
        """One request; the FlowFiles it refused for good, or a raised error."""
        session = self._session
        assert session is not None
        key = flowfiles[0].id if len(flowfiles) == 1 else f"{flowfiles[0].id}..{flowfiles[-1].id}"
        where = f"{self.config.method} {safe_url(url)}"
        try:
            async with session.request(
                self.config.method,
                URL(url, encoded=True),
                data=body,
                headers={"Content-Type": kind, "Idempotency-Key": key},
                allow_redirects=False,
            ) as answer:
                status = answer.status
                if 200 <= status < 300:
                    left = _ANSWER_READ
                    while left > 0 and (chunk := await answer.content.read(left)):
                        left -= len(chunk)
                    self.requests += 1
                    return []
                text = ""
                if self.config.error_body:
                    raw = await answer.content.read(self.config.error_body)
                    text = raw.decode("utf-8", "replace").strip()
                    text = self._redact(text)
                reason = f"{where} answered {status} {answer.reason or ''}".rstrip()
                if text:
                    reason += f": {' '.join(text.split())}"
                if status >= 500 or status in _RETRY:
                    after = retry_after(answer.headers.get("Retry-After"), time.time())
                    if after > 0:
                        raise RetryLater(f"{reason} (retry after {after:g} s)", after)
                    raise RetryableError(reason)
                if status in _CREDENTIALS:
                    raise PermanentError(f"{reason} (check bearer_token, username and password)")
                if 300 <= status < 400:
                    reason += " (redirects are not followed: set url to the new place)"
                self.refused += len(flowfiles)
                return [Rejected(ff, reason) for ff in flowfiles]
        except TimeoutError as err:  # first: aiohttp's timeouts are ClientErrors too
            raise RetryableError(f"{where} did not answer within {self.config.timeout:g}s") from err
        except (aiohttp.ClientError, OSError) as err:
            for cause in error_chain(err):  # retrying cannot fix a certificate
                if isinstance(cause, aiohttp.ClientConnectorCertificateError):
                    cause = cause.certificate_error  # the ssl error: aiohttp's holds no text
                refusal = certificate_refusal(cause, "cert_file and key_file")
                if refusal:
                    raise PermanentError(f"{where}: {refusal}") from err
            raise RetryableError(f"{where} failed: {error_text(err)}") from err

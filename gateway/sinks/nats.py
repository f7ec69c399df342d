"""Publishes FlowFiles into a NATS JetStream stream, each once, acknowledged by the stream.

Each FlowFile becomes one message on the subject `subject` (a template, below) with
the FlowFile's content as its payload and these headers:
  Nats-Msg-Id       the FlowFile id: JetStream's duplicate window drops a message
                    published again with the same id (a batch written again after a
                    crash or a lost connection), so each FlowFile is in the stream once
  Edge-Topic        the FlowFile's topic, percent-encoded (RFC 3986, `/` kept as is)
  Edge-Ts           its creation time in UTC (RFC 3339, microseconds)
  Edge-Attributes   its attributes as one JSON object (only when there are any)

The cursor moves only after JetStream acknowledged every message of the batch (an
acknowledgement saying `duplicate` counts: the stream has it). Publishes are
pipelined, at most `max_in_flight` messages and `max_in_flight_bytes` bytes awaiting
their acknowledgement at a time.

Effectively once into the stream, as long as a FlowFile written again arrives within
the stream's duplicate window (`duplicate_window`, 2 minutes by default in JetStream):
the gateway only ever writes again the batch that was in flight when something
failed, at once after a crash, or after an outage once the server is back; a retry
while it runs leaves out what JetStream had acknowledged of it (stored, or refused
for good). An outage longer than the window can leave a copy of what of that one
batch got no acknowledgement (at most `batch.max_rows` messages; the whole batch
after a crash); give the stream a longer window (`create_stream.duplicate_window`,
e.g. 1h) where that matters.

Subjects. `subject` holds `{topic}`, `{gateway}` (the gateway id) and `{sink}` (this
sink's name), e.g. `plant.{gateway}.{topic}`. Each MQTT topic level becomes one NATS
token (`/` becomes `.`). Inside a token, what NATS does not allow in one is
percent-encoded: `.` is `%2E`, a space `%20`, `*` `%2A`, `>` `%3E`, a control
character `%XX`, and `%` itself `%25`, so different topics never share a subject;
an empty level (`a//b`, a leading `/`) becomes `_`. A subject that starts with
`{topic}` never starts with `$` (`%24` instead), so no topic reaches the server's
own subjects (`$JS.API...`, `$SYS...`). `{gateway}` and `{sink}` are
encoded the same way. So `sensors/line 1/temp.c` from gateway `pi-01` goes to
`plant.pi-01.sensors.line%201.temp%2Ec`. A subject longer than 2048 bytes is refused.

Refused for good, that FlowFile only (it goes to the dead-letter table with the
reason, the rest of the batch is delivered): no stream takes its subject, a message
larger than the server's `max_payload` or the stream's `max_msg_size`, a subject
too long, a topic or attribute that is not valid Unicode text (a lone surrogate),
or any other refusal of JetStream with a 4xx code. Retried later: the
connection lost, no server reachable, no acknowledgement within `timeout`, a stream
that has no leader right now (an election after a node failed: NATS answers "no
responders", and the sink asks the cluster whether a stream covers the subject to
tell that from a missing stream), a stream full that discards new messages, and
any 5xx answer. A server that refuses the credentials, or whose TLS certificate
`ca_file` does not trust, when the sink starts stops it until the config is fixed (one
line, no secret); the same refusal while running is retried, since the operator may be
changing the server. A server that refuses our client certificate (or wants one and
gets none) may say so with a TLS alert (stopped, as above) or, under TLS 1.3, just
close the connection: that reads as a lost connection and is retried.

Servers: `servers` lists one or more `nats://host:4222` (or `tls://`) URLs of the
cluster; the sink connects to the first that answers, in that order, and on trouble
tries them all again with the engine's backoff.

Credentials: `user` and `password`, or `token`, or an NKey seed file (`nkey_seed_file`),
or a credentials file (`creds_file`, a user JWT and its seed, as `nsc` writes it, for a
server in operator mode).
Password and token may be `ENC(...)` secrets and are never logged. TLS: a `tls://` URL
or `ca_file` turns it on; `cert_file` and `key_file` present a client certificate.

`create_stream` (optional) makes the stream at connect when it does not exist, with
its `subjects` (default: the subject template with `{topic}` as `>`, so `{topic}`
must begin a token; subjects none of which can match a subject the template makes
are refused when the config loads), `retention`,
`replicas`, `max_bytes`, `max_age`, `max_msg_size`, `storage` and
`duplicate_window`. When it exists, its subjects are checked (they must include the
ones given: else the sink stops with the difference); other settings that differ are
logged as a warning and left alone (the stream is the operator's).

Keys
  type: nats
  servers: [nats://127.0.0.1:4222]   (required) one or more server URLs
  subject: "edge.{gateway}.{topic}"  the subject template
  user: null / password: null        user and password
  token: null                        or a token
  nkey_seed_file: null               or an NKey seed file
  creds_file: null                   or a credentials file (JWT + seed)
  ca_file: null / cert_file: null / key_file: null   TLS
  create_stream: null                create or check the stream (keys below)
    name: EDGE                       (required) the stream's name
    subjects: null                   (default: the template with {topic} as >)
    retention: limits                limits, interest or workqueue
    replicas: 1                      1 to 5 (3 in a 3-node cluster)
    storage: file                    file or memory
    max_bytes: null                  the stream's size limit (default: none)
    max_age: null                    the oldest message kept (default: no limit)
    max_msg_size: null               the largest message taken (default: the server's;
                                     a stream is made with at most 2GiB - 1 byte)
    duplicate_window: null           how long a Nats-Msg-Id is remembered (default 2m,
                                     or max_age when shorter, as JetStream does); at
                                     most max_age (JetStream refuses a longer one)
  max_in_flight: 1000                messages awaiting their acknowledgement
  max_in_flight_bytes: 8MiB          their bytes
  connect_timeout: 10s
  timeout: 10s                       the longest one batch may take
  and the delivery keys every sink has: batch, retry, rate_limit, overflow.

Example
  sinks:
    fleet: {type: nats, servers: ["nats://nats1.plant.lan:4222", "nats://nats2.plant.lan:4222"],
            subject: "plant.{gateway}.{topic}", user: gw, password: "ENC(...)",
            create_stream: {name: PLANT, replicas: 3, max_bytes: 10GiB, duplicate_window: 1h}}
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js import errors as js_errors

from gateway.config.model import SinkConfig
from gateway.config.schema import Doc, Duration, Range, Size, check_location
from gateway.config.tls import load_client_cert
from gateway.config.units import duration_text, size_text
from gateway.core.clock import rfc3339
from gateway.core.component import Context, Rejected, Settled, Sink, unsettled
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.core.subjects import may_overlap, pattern_subjects, template_subjects
from gateway.core.subjects import subject_problem as _subject_problem
from gateway.core.tls import certificate_refusal, error_chain
from gateway.core.topics import template_fields

SUBJECT_MAX = 2048
# Bytes of a message's headers besides their values: "NATS/1.0\r\n", "Nats-Msg-Id: ",
# "Edge-Topic: ", "Edge-Ts: " with a CRLF each, the closing CRLF; "Edge-Attributes: "
# and its CRLF when there are attributes.
_HEADER_LINES = 10 + 15 + 14 + 11 + 2
_ATTRIBUTES_LINE = 19
_PLACEHOLDERS = frozenset({"topic", "gateway", "sink"})
# JetStream error codes (err_code) that mean "not now": the stream is full and discards
# new messages (it may be trimmed or enlarged), or the server lacks resources.
_FULL = frozenset({10047, 10077, 10078})
# Refusals of a stream's creation that come with a 5xx code but will not change by
# themselves: more replicas than a server alone (not in a cluster) can keep.
_NEVER = frozenset({10074})


@dataclass(frozen=True, kw_only=True)
class NatsConnection:
    """The keys by which the nats sink and the nats source reach a NATS server or cluster."""

    servers: Annotated[
        list[str],
        Doc(
            "One or more `nats://host:4222` (or `tls://`) URLs of the server or cluster;"
            " tried in order.",
            example=["nats://127.0.0.1:4222"],
        ),
    ]
    user: Annotated[str | None, Doc("User name (with `password`).")] = None
    password: Annotated[str | None, Doc("Password, may be `ENC(...)`; never logged.")] = (
        dataclasses.field(default=None, repr=False)
    )
    token: Annotated[
        str | None, Doc("Token (instead of user and password), may be `ENC(...)`; never logged.")
    ] = dataclasses.field(default=None, repr=False)
    nkey_seed_file: Annotated[
        str | None, Doc("File holding an NKey seed (`SU...`) that signs the connect.")
    ] = None
    creds_file: Annotated[
        str | None, Doc("Credentials file (a user JWT and its NKey seed, as `nsc` writes it).")
    ] = None
    ca_file: Annotated[
        str | None, Doc("CA bundle that verifies the servers; turns TLS on (as `tls://` does).")
    ] = None
    cert_file: Annotated[
        str | None, Doc("Client certificate (PEM) for TLS; goes with `key_file`.")
    ] = None
    key_file: Annotated[str | None, Doc("The client certificate's private key (PEM).")] = None
    connect_timeout: Annotated[
        Duration,
        Doc("The longest a connect to one server may take."),
        Range(0.1, 300, message="must be between 100ms and 5m"),
    ] = 10.0

    def connection_problems(self) -> Iterator[tuple[str, str]]:
        # A key that failed is None here (its problem is reported already).
        if self.servers is not None and not self.servers:
            yield "servers", "name at least one server, e.g. [nats://127.0.0.1:4222]"
        for i, url in enumerate(self.servers or ()):
            if url is None:
                continue
            problem = _url_problem(url)
            if problem:
                yield f"servers[{i}]", problem
        ways = [
            name
            for name, value in (
                ("user", self.user or self.password),
                ("token", self.token),
                ("nkey_seed_file", self.nkey_seed_file),
                ("creds_file", self.creds_file),
            )
            if value
        ]
        if len(ways) > 1:
            yield ways[1], f"use one way to log in, not {' and '.join(ways)}"
        if bool(self.user) != bool(self.password):
            yield "password", "user and password go together"
        if bool(self.cert_file) != bool(self.key_file):
            yield "cert_file", "cert_file and key_file go together"


class _Client(NatsClient):
    """nats-py's client, but a message whose subject is not UTF-8 (NATS lets any client
    publish one) comes with its bad bytes written `\\xNN`: nats-py's decode raised in
    its read loop, which then stopped, and the connection read nothing more, silently."""

    def _build_message(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any
    ) -> Any:
        return super()._build_message(
            sid, subject.decode(errors="backslashreplace").encode(), reply, data, headers
        )


def _url_problem(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("nats", "tls"):
        return "must read nats://host:4222 or tls://host:4222"
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        return "put user, password and token in their own keys, not in the URL"
    if not authority:
        return "names no host"
    return check_location(authority)


def _tls_on(cfg: NatsConnection) -> bool:
    return bool(cfg.ca_file or cfg.cert_file) or any(u.startswith("tls://") for u in cfg.servers)


def _refusal(err: BaseException) -> str | None:
    """Why `err` means the server refuses us until an operator acts, or None."""
    for cause in error_chain(err):
        if isinstance(cause, nats_errors.AuthorizationError):
            return "authorization violation (check user and password, token, nkey or creds)"
        text = str(cause).lower()
        if "authorization violation" in text or "authentication" in text:
            return "authorization violation (check user and password, token, nkey or creds)"
        refusal = certificate_refusal(cause, "cert_file and key_file")
        if refusal:
            return refusal
    return None


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    name = type(err).__name__
    return f"{name}: {text}" if text and name not in text else (text or name)


def _check_readable(cfg: Any, keys: tuple[str, ...], permanent: type[Exception]) -> None:
    """Raise `permanent` naming the first of these file keys whose file cannot be read
    (OpenSSL's own error names no file)."""
    for name in keys:
        path = getattr(cfg, name)
        if path and not os.access(path, os.R_OK):
            raise permanent(f"{name} {path} cannot be read")


async def close_connection(nc: Any) -> None:
    """Close `nc`, errors ignored, within 2 s: after a failed TLS handshake nats-py waits
    for the plain stream's close forever (asyncio moved its socket to the TLS transport,
    which closed it), so a refused certificate would hang the connect."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await nc.close()


async def open_connection(cfg: NatsConnection, ctx: Context, permanent: type[Exception]) -> Any:
    """A NATS connection to the first server of `cfg.servers` that answers.

    nats-py's own reconnecting is off: the engine owns retries and backoff, and a
    connection lost must fail the batch in flight now, not after a timeout. A refusal
    (credentials, certificate) raises `permanent`; anything else RetryableError.
    """
    options: dict[str, Any] = {
        "allow_reconnect": False,
        # One server per connect call, tried at most twice, at once: with fewer attempts
        # nats-py retries it forever, with a wait it sleeps 2 s between them.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0,
        "connect_timeout": cfg.connect_timeout,
        "name": f"edge-stream {ctx.gateway_id} {ctx.kind} {ctx.name}",
        "pending_size": 4 << 20,
    }
    if cfg.user:
        options["user"], options["password"] = cfg.user, cfg.password
    elif cfg.token:
        options["token"] = cfg.token
    elif cfg.nkey_seed_file:
        options["nkeys_seed"] = cfg.nkey_seed_file
    elif cfg.creds_file:
        options["user_credentials"] = cfg.creds_file
    if _tls_on(cfg):
        _check_readable(cfg, ("ca_file", "cert_file", "key_file"), permanent)
        try:
            context = ssl.create_default_context(cafile=cfg.ca_file)
            if cfg.cert_file:
                load_client_cert(context, cfg.cert_file, cfg.key_file)
        except (OSError, ssl.SSLError) as err:
            raise permanent(f"cannot read the TLS files: {err}") from None
        options["tls"] = context
    _check_readable(cfg, ("nkey_seed_file", "creds_file"), permanent)

    reported: list[Exception] = []

    async def quiet(err: Exception) -> None:
        """nats-py reports errors here as well as raising them, the caller handles them;
        only here does it say why a connect found no server (refused, unreachable...)."""
        reported[:] = [err]

    problems = []
    for url in cfg.servers:
        url = url.replace("tls://", "nats://", 1) if "tls" in options else url
        nc = _Client()
        try:
            async with asyncio.timeout(cfg.connect_timeout * 2 + 1):
                await nc.connect(servers=[url], error_cb=quiet, **options)
        except (OSError, TimeoutError, nats_errors.Error, ssl.SSLError) as err:
            cause: BaseException = err
            if isinstance(err, nats_errors.NoServersError):
                # What went wrong on the last attempt: nc.last_error, unless it only says
                # "no servers" (a refused connect), then what nats-py told error_cb.
                last = nc.last_error
                if last is not None and not isinstance(last, nats_errors.NoServersError):
                    cause = last
                elif reported:
                    cause = reported[0]
            await close_connection(nc)
            refusal = _refusal(cause)
            if refusal is not None:
                raise permanent(f"{url} refused us: {refusal}") from None
            problems.append(f"{url}: {_describe(cause)}")
            continue
        return nc
    raise RetryableError(f"cannot connect to NATS: {'; '.join(problems)}")


# --- the sink -------------------------------------------------------------------------------


_MAX_MSG_SIZE = 2**31 - 1  # JetStream's max_msg_size is a 32-bit number
_DEFAULT_WINDOW = 120.0  # JetStream's duplicate window when a stream is made without one


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """`create_stream`: the JetStream stream the sink creates at connect, or checks."""

    name: Annotated[str, Doc("The stream's name.", example="EDGE")]
    subjects: Annotated[
        list[str] | None,
        Doc(
            "Its subjects (default: the subject template with `{topic}` as `>`); at least"
            " one must be able to match a subject of the template."
        ),
    ] = None
    retention: Annotated[
        Literal["limits", "interest", "workqueue"],
        Doc("`limits` (keep within the limits), `interest` or `workqueue`."),
    ] = "limits"
    replicas: Annotated[
        int, Doc("Copies of each message (3 in a 3-node cluster)."), Range(1, 5)
    ] = 1
    storage: Annotated[Literal["file", "memory"], Doc("`file` or `memory`.")] = "file"
    max_bytes: Annotated[Size | None, Doc("The stream's size limit (default: none).")] = None
    max_age: Annotated[Duration | None, Doc("The oldest message kept (default: no limit).")] = None
    max_msg_size: Annotated[
        Size | None,
        Doc(
            "The largest message the stream takes (default: the server's); a stream is made"
            " with at most 2GiB - 1 byte."
        ),
    ] = None
    duplicate_window: Annotated[
        Duration | None,
        Doc(
            "How long JetStream remembers a `Nats-Msg-Id` to drop a message sent again; at"
            " most `max_age` (default: 2m, or `max_age` when shorter, as JetStream does)."
        ),
        Range(1, message="must be at least 1s"),
    ] = None

    @property
    def window(self) -> float:
        """The duplicate window the stream is made with: JetStream's own default (2m, or
        max_age when shorter) when `duplicate_window` is not set."""
        if self.duplicate_window is not None:
            return self.duplicate_window
        return min(_DEFAULT_WINDOW, self.max_age) if self.max_age else _DEFAULT_WINDOW

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.name or any(c in self.name for c in " .*>\t\r\n/\\"):
            yield "name", f"{self.name!r}: a stream name has no spaces, '.', '*', '>', '/' or '\\'"
        for subject in self.subjects or []:
            problem = _subject_problem(subject, wildcards=True)
            if problem:
                yield "subjects", f"{subject!r}: {problem}"
        if (
            self.max_age is not None
            and self.duplicate_window is not None
            and 0 < self.max_age < self.duplicate_window
        ):
            # JetStream refuses such a stream: its creation was retried for ever. (Left
            # out, the window is max_age when shorter than 2m, as JetStream makes it.)
            yield (
                "duplicate_window",
                f"{duration_text(self.duplicate_window)} is longer than max_age"
                f" ({duration_text(self.max_age)}), which JetStream refuses: set"
                f" duplicate_window: {duration_text(self.max_age)} or less, or leave it out",
            )


@dataclass(frozen=True, kw_only=True)
class NatsSinkConfig(NatsConnection, SinkConfig):
    """Keys of the `nats` sink (plus batch, retry, rate_limit, overflow from SinkConfig)."""

    subject: Annotated[
        str,
        Doc(
            "The subject template: `{topic}` (its levels become tokens), `{gateway}`,"
            " `{sink}`; see the subjects section for the encoding.",
            example="plant.{gateway}.{topic}",
        ),
    ] = "edge.{gateway}.{topic}"
    create_stream: Annotated[
        StreamSettings | None,
        Doc("Create the stream at connect when missing, or check its subjects when it exists."),
    ] = None
    max_in_flight: Annotated[
        int,
        Doc("At most this many messages awaiting their acknowledgement."),
        Range(1, 100_000, message="must be between 1 and 100000"),
    ] = 1000
    max_in_flight_bytes: Annotated[
        Size,
        Doc(
            "At most this many bytes awaiting their acknowledgement (one larger message"
            " still goes)."
        ),
        Range(64 << 10, 1 << 30, message="must be between 64KiB and 1GiB"),
    ] = 8 << 20
    timeout: Annotated[
        Duration,
        Doc("The longest one batch may take, publishes and acknowledgements."),
        Range(0.1, 3600, message="must be between 100ms and 1h"),
    ] = 10.0

    def check(self) -> Iterator[tuple[str, str]]:
        yield from self.connection_problems()
        if self.subject is None:
            return
        try:
            fields = template_fields(self.subject)
        except ValueError as err:
            yield "subject", str(err)
            return
        for name in fields:
            if name not in _PLACEHOLDERS:
                yield (
                    "subject",
                    f"{self.subject!r}: unknown placeholder {{{name}}}; use {{topic}},"
                    " {gateway} or {sink}",
                )
                return
        probe = self.subject.format(topic="t", gateway="g", sink="s")
        problem = _subject_problem(probe, wildcards=False)
        if problem:
            yield "subject", f"{self.subject!r}: {problem}"
            return
        stream = self.create_stream
        if stream is not None and stream.subjects:
            subjects = [s for s in stream.subjects if _subject_problem(s, wildcards=True) is None]
            ours = template_subjects(self.subject)
            if subjects and not any(may_overlap(ours, pattern_subjects(s)) for s in subjects):
                yield (
                    "create_stream.subjects",
                    f"{', '.join(subjects)} cannot match any subject of the template"
                    f" {self.subject!r} (subject): every FlowFile would be refused; add"
                    " the subjects the template makes, or change subject",
                )
        head, found, _ = self.subject.partition("{topic}")
        defaults = self.create_stream is not None and not self.create_stream.subjects
        if defaults and found and head and not head.endswith("."):
            # 'pre{topic}' makes 'pre<first level>.…': no wildcard covers that.
            yield (
                "subject",
                f"{self.subject!r}: {{topic}} does not begin a token, so create_stream"
                " has no default subjects for it; put a '.' before {topic} or list"
                " create_stream.subjects",
            )


_TOKEN_ESCAPES = {c: f"%{ord(c):02X}" for c in ". *>%"}
_TOKEN_ESCAPES.update({chr(c): f"%{c:02X}" for c in [*range(0x20), 0x7F]})
_TOKEN_TABLE = str.maketrans(_TOKEN_ESCAPES)


def token(level: str) -> str:
    """One topic level (or the gateway id, the sink name) as a NATS subject token."""
    if not level:
        return "_"
    return level.translate(_TOKEN_TABLE)


def topic_tokens(topic: str) -> str:
    """An MQTT topic as NATS tokens: levels joined by '.', each encoded by `token`."""
    return ".".join(token(level) for level in topic.split("/"))


class _Batch:
    """The acknowledgements one write awaits: per index, None (waiting), "" (stored) or
    the reason a message was refused; `retry` when one answer says "not now"."""

    def __init__(self, number: int, size: int) -> None:
        self.number = number
        self.answers: list[str | None] = [None] * size
        self.sizes: dict[int, int] = {}  # in flight: index -> bytes
        self.bytes = 0
        self.retry: str | None = None
        self.no_responders: list[int] = []
        self.progress = asyncio.Event()


class NatsSink(Sink):
    """Pipelines each batch into JetStream and waits for every acknowledgement."""

    Config = NatsSinkConfig

    def __init__(self, config: NatsSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._ran = False  # connected once: a refusal from now on is retried
        self.config: NatsSinkConfig = config
        self._nc: Any = None
        self._inbox = ""
        self._batch: _Batch | None = None
        self._last: _Batch | None = None  # the batch of the latest try, for write() to settle
        self._batches = 0
        # {gateway} and {sink} are fixed: resolve them now; {topic} is filled per FlowFile.
        template = config.subject.replace("{topic}", "\0")
        template = template.format(gateway=token(ctx.gateway_id), sink=token(ctx.name))
        self._subject_parts = template.split("\0")
        self.duplicates = 0
        # What JetStream settled of a batch whose write failed, by FlowFile id: None stored,
        # else refused for good. The engine sends that batch again; only the rest goes (a
        # stream full for part of it answered "duplicate" to all the rest at every try, and
        # past the duplicate window stored it again).
        self._settled: Settled = {}

    def status(self) -> dict[str, object]:
        return {"duplicates": self.duplicates}

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, then create or check the stream. PermanentError when the server refuses
        the credentials or the certificate, or the stream exists with other subjects."""
        # A refusal stops the sink only at its start; once it ran, the same refusal is retried
        # (the operator may be changing the broker's side): the engine reconnects with this.
        await self._open(permanent=RetryableError if self._ran else PermanentError)
        self._ran = True

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            await close_connection(nc)

    async def _open(self, permanent: type[Exception] = RetryableError) -> Any:
        if self._nc is not None and self._nc.is_connected:
            return self._nc
        await self.close()
        cfg = self.config
        nc = await open_connection(cfg, self.ctx, permanent)
        try:
            # Every acknowledgement comes to one subscription: <inbox>.<batch>.<index>.
            self._inbox = nc.new_inbox()
            await nc.subscribe(f"{self._inbox}.>", cb=self._answer)
            if cfg.create_stream is not None:
                await self._ensure_stream(nc, cfg.create_stream, permanent)
        except (OSError, TimeoutError, nats_errors.Error) as err:
            await close_connection(nc)
            raise RetryableError(f"NATS: {_describe(err)}") from err
        except BaseException:
            await close_connection(nc)
            raise
        self._nc = nc
        self.ctx.log.info(
            "connected to %s (subject %s)", nc.connected_url.netloc, self.config.subject
        )
        return nc

    def _stream_subjects(self, settings: StreamSettings) -> list[str]:
        if settings.subjects:
            return list(settings.subjects)
        parts = self._subject_parts
        if len(parts) == 1:
            return [parts[0]]
        # The template with {topic} as '>': everything after the first {topic}.
        head = parts[0]
        return [f"{head}>" if head.endswith(".") or not head else f"{head}.>"]

    async def _ensure_stream(
        self, nc: Any, settings: StreamSettings, permanent: type[Exception]
    ) -> None:
        js = nc.jetstream(timeout=self.config.timeout)
        subjects = self._stream_subjects(settings)
        wanted = js_api.StreamConfig(
            name=settings.name,
            subjects=subjects,
            retention=js_api.RetentionPolicy(settings.retention),
            storage=js_api.StorageType(settings.storage),
            num_replicas=settings.replicas,
            max_bytes=settings.max_bytes if settings.max_bytes is not None else -1,
            max_age=settings.max_age or 0,
            max_msg_size=settings.max_msg_size if settings.max_msg_size is not None else -1,
            duplicate_window=settings.window,
        )
        try:
            info = await js.stream_info(settings.name)
        except js_errors.NotFoundError:
            size = settings.max_msg_size
            if size is not None and size > _MAX_MSG_SIZE:
                # JetStream answered "invalid JSON". Only making the stream needs it: one
                # that exists is left as it is, this setting warned about as any other.
                raise permanent(
                    f"cannot create stream {settings.name}: create_stream.max_msg_size"
                    f" {size_text(size)} is more than JetStream takes (2GiB - 1 byte); set it"
                    " lower or leave it out (the server's max_payload bounds a message anyway)"
                ) from None
            try:
                await js.add_stream(wanted)
            except js_errors.APIError as err:
                if (err.code is not None and err.code < 500) or err.err_code in _NEVER:
                    raise permanent(
                        f"cannot create stream {settings.name}: {err.description}"
                    ) from None
                raise RetryableError(
                    f"cannot create stream {settings.name}: {err.description}"
                ) from err
            self.ctx.log.info(
                "created stream %s (subjects %s, %d replicas)",
                settings.name,
                ", ".join(subjects),
                settings.replicas,
            )
            return
        except js_errors.APIError as err:
            raise RetryableError(f"stream {settings.name}: {err.description}") from err
        have = info.config
        missing = [s for s in subjects if s not in (have.subjects or [])]
        if missing:
            raise permanent(
                f"stream {settings.name} exists with subjects {have.subjects}, without"
                f" {missing}: change create_stream.subjects or the stream"
            )
        differ = [
            f"{name} {getattr(have, attr)!r} (config: {getattr(wanted, attr)!r})"
            for name, attr in (
                ("retention", "retention"),
                ("replicas", "num_replicas"),
                ("storage", "storage"),
                ("max_bytes", "max_bytes"),
                ("max_age", "max_age"),
                ("max_msg_size", "max_msg_size"),
                ("duplicate_window", "duplicate_window"),
            )
            if getattr(have, attr) != getattr(wanted, attr)
        ]
        if differ:
            self.ctx.log.warning(
                "stream %s exists with other settings, left as they are: %s",
                settings.name,
                "; ".join(differ),
            )

    # --- acknowledgements -----------------------------------------------------------------

    async def _answer(self, msg: Msg) -> None:
        """One acknowledgement (or refusal) from JetStream, for the batch in flight."""
        batch = self._batch
        number, _, index_text = msg.subject[len(self._inbox) + 1 :].partition(".")
        if batch is None or number != str(batch.number):
            return  # from a batch given up on (timed out): its retry asks again
        index = int(index_text)
        size = batch.sizes.pop(index, None)
        if size is None:
            return
        batch.bytes -= size
        batch.progress.set()
        headers = msg.headers or {}
        if headers.get("Status") == "503" and not msg.data:
            batch.no_responders.append(index)
            return
        try:
            reply = json.loads(msg.data)
        except ValueError:
            batch.retry = f"JetStream answered {msg.data[:100]!r}"
            return
        error = reply.get("error")
        if error is None:
            batch.answers[index] = ""
            if reply.get("duplicate"):
                self.duplicates += 1
            return
        code, err_code = error.get("code") or 0, error.get("err_code")
        description = error.get("description") or "refused"
        if code >= 500 or err_code in _FULL:
            batch.retry = f"JetStream: {description}"
        else:
            batch.answers[index] = f"JetStream refused it: {description}"

    # --- writing --------------------------------------------------------------------------

    def subject_of(self, topic: str) -> str:
        parts = self._subject_parts
        if len(parts) == 1:
            return parts[0]
        subject = topic_tokens(topic).join(parts)
        if not parts[0] and subject[:1] == "$":
            # A topic never names a system subject ($JS.API..., $SYS..., $KV...).
            subject = "%24" + subject[1:]
        return subject

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        if not batch:
            return []
        settled = self._settled
        batch, earlier = unsettled(settled, batch)  # what JetStream stored is not sent again
        if not batch:
            settled.clear()
            return earlier
        self._last = None
        try:
            rejected = await self._write(batch)
        except RetryableError:
            # Answered before the failure: stored (or a duplicate), or refused for good.
            state = self._last
            if state is not None:
                for index, answer in enumerate(state.answers):
                    if answer is not None:
                        ff = batch[index]
                        settled[ff.id] = Rejected(ff, f"nats: {answer}") if answer else None
            raise
        settled.clear()
        return earlier + rejected

    async def _write(self, batch: list[FlowFile]) -> list[Rejected]:
        nc = await self._open()
        self._batches += 1
        state = self._batch = self._last = _Batch(self._batches, len(batch))
        cfg = self.config
        limit = nc.max_payload
        try:
            async with asyncio.timeout(cfg.timeout):
                for index, ff in enumerate(batch):
                    # A lone surrogate in the topic or an attribute cannot be encoded: this
                    # FlowFile is refused, not the batch (it would fail at every try).
                    try:
                        subject = self.subject_of(ff.topic)
                        subject_bytes = len(subject.encode())
                        headers = {
                            "Nats-Msg-Id": ff.id,
                            "Edge-Topic": quote(ff.topic, safe="/"),
                            "Edge-Ts": rfc3339(ff.created),
                        }
                        if ff.attributes:
                            headers["Edge-Attributes"] = json.dumps(
                                ff.attributes, ensure_ascii=False, separators=(",", ":")
                            )
                        # What the server counts against max_payload: headers and content, in
                        # bytes ("NATS/1.0" and each "Key: value", CRLF each, a CRLF at the
                        # end). One larger makes the server close the connection.
                        size = len(ff.content) + _HEADER_LINES + len(headers["Edge-Topic"])
                        size += len(ff.id) + len(headers["Edge-Ts"])
                        if ff.attributes:
                            size += len(headers["Edge-Attributes"].encode()) + _ATTRIBUTES_LINE
                    except UnicodeEncodeError:
                        state.answers[index] = "its topic or an attribute is not valid Unicode text"
                        continue
                    if subject_bytes > SUBJECT_MAX:
                        state.answers[index] = f"its subject is longer than {SUBJECT_MAX} bytes"
                        continue
                    if size > limit:
                        state.answers[index] = (
                            f"the message ({size} bytes with headers) is larger than the"
                            f" server's max_payload ({limit} bytes)"
                        )
                        continue
                    while state.sizes and (
                        len(state.sizes) >= cfg.max_in_flight
                        or state.bytes + size > cfg.max_in_flight_bytes
                    ):
                        await self._progress(nc, state)
                    if state.retry:
                        break  # "not now": send no more, but hear out what is in flight
                    state.sizes[index] = size
                    state.bytes += size
                    await nc.publish(
                        subject,
                        ff.content,
                        reply=f"{self._inbox}.{state.number}.{index}",
                        headers=headers,
                    )
                await nc.flush(timeout=max(cfg.timeout, 1))
                # Every answer is awaited even after a "not now": a message stored after it
                # and not heard of would be sent again (a duplicate at the next try).
                while state.sizes:
                    await self._progress(nc, state)
                if state.no_responders and not state.retry:
                    await self._sort_no_responders(nc, batch, state)
        except TimeoutError as err:
            waiting = len(state.sizes)
            raise RetryableError(
                f"JetStream did not acknowledge {waiting} of {len(batch)} messages within"
                f" {cfg.timeout:g}s"
            ) from err
        except (OSError, nats_errors.Error) as err:
            await self.close()
            raise RetryableError(f"lost the NATS connection: {_describe(err)}") from err
        finally:
            self._batch = None
        if state.retry:
            raise RetryableError(state.retry)
        return [Rejected(batch[i], f"nats: {a}") for i, a in enumerate(state.answers) if a]

    async def _progress(self, nc: Any, state: _Batch) -> None:
        """Wait for the next acknowledgement; RetryableError if the connection closed."""
        state.progress.clear()
        if not nc.is_connected:
            await self.close()
            raise RetryableError("lost the NATS connection")
        with contextlib.suppress(TimeoutError):
            # A short wait: a connection closing sets no event, so look again now and then.
            async with asyncio.timeout(0.5):
                await state.progress.wait()

    async def _sort_no_responders(self, nc: Any, batch: list[FlowFile], state: _Batch) -> None:
        """ "No responders" means no stream listens on the subject: none covers it (refused
        for good) or its stream has no leader right now (an election: retried)."""
        js = nc.jetstream(timeout=min(self.config.timeout, 5.0))
        verdicts: dict[str, str | None] = {}
        for index in state.no_responders:
            subject = self.subject_of(batch[index].topic)
            if subject not in verdicts:
                try:
                    stream = await js.find_stream_name_by_subject(subject)
                except js_errors.NotFoundError:
                    verdicts[subject] = None
                except js_errors.APIError as err:
                    raise RetryableError(f"JetStream: {err.description}") from err
                except (TimeoutError, nats_errors.Error) as err:
                    raise RetryableError(
                        f"no stream answered on {subject}, and JetStream did not say whether"
                        f" one takes it ({_describe(err)}): a leader election?"
                    ) from err
                else:
                    raise RetryableError(
                        f"stream {stream} does not answer on {subject} (a leader election?)"
                    )
            state.answers[index] = f"no stream takes subject {subject}"

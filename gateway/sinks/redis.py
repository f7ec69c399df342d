"""Writes FlowFiles to Redis as stream entries, list items, per-topic hashes or pub/sub messages.

Modes (`mode:`)
  stream   XADD to the stream named by `key`, trimmed to about `maxlen` entries
           (`MAXLEN ~`). Fields: id, topic, ts, attributes (JSON), payload (the
           content bytes).
  list     RPUSH the envelope (below) onto the list named by `key`, then LTRIM it
           to the newest `maxlen` items.
  hash     HSET the latest FlowFile per `key` (e.g. one hash per topic), fields as
           in stream mode: a reader always finds the newest value of a topic.
  publish  PUBLISH the envelope on the channel named by `key`. Redis keeps nothing
           for pub/sub: a subscriber that is not connected misses the message.

The envelope is one JSON object, like a line of the file sink:
  {"id": "0190…", "topic": "sensors/a/telemetry", "ts": "2024-05-01T12:00:00.123456Z",
   "attributes": {...}, "payload": {...}}
with `payload` the content when it is UTF-8 JSON, else `payload_base64` (also for
text that is not JSON, such as `21.5 C`, which the file sink writes as `payload_text`).
`value: payload` sends the content bytes alone instead.
`ts` is the FlowFile's creation time in UTC (RFC 3339, microseconds).

Nothing is written twice. In stream, list and publish mode a batch runs as one
Lua script that, for every FlowFile, writes it only if its id is not among the
sink's most recent ids, and then records the id, atomically: a batch delivered
again (after a crash, or a connection lost before Redis answered) adds nothing.
The recent ids are a set, `<dedupe_prefix>:recent`, and the same ids in the order
written, `<dedupe_prefix>:order`; the script forgets the oldest beyond
`dedupe_window` ids. That is enough: the gateway only ever writes again the batch
that was in flight when something failed, at most `batch.max_rows` FlowFiles, so
the window must hold at least that many (default: 10 x batch.max_rows, at least
10,000; about 120 bytes of Redis memory each, so about 1.2 MB). The keys have no
TTL: with a `maxmemory-policy` that evicts any key (`allkeys-*`), Redis may drop
them under memory pressure and a batch written again after that would be stored
twice; `noeviction` or a `volatile-*` policy keeps them. Give each sink that
writes to the same Redis its own `dedupe_prefix` (the default, edge:<sink name>,
does; two sinks of one config with the same prefix and the same host in the URL
are refused, as the second would leave out what the first wrote: the same host
name or address, port and database, `/N` or `?db=N`; with `cluster: true` any
database), and keep it apart from the data keys.
`dedupe: false` writes without the script (faster; a batch written again after a
crash or a reload, or after a connection lost before Redis answered, is stored
twice; a retry while the sink runs after Redis refused part of a batch for now, say
out of memory, leaves out what Redis had taken of it). Hash mode needs no dedupe:
writing the same values again changes nothing.

A value Redis refuses for good (say the key holds another type: WRONGTYPE) sends
that FlowFile to the dead-letter table; the rest are delivered. Connection
trouble, a server out of memory, still loading or a read-only replica, and an
ACL user that may not run the mode's command, touch the dedupe keys or write a
key or channel without `{topic}` in it, are retried later; a key or a channel
from the row's topic that the ACL user may not write sends that row to the
dead-letter table. With dedupe, publish mode needs key permission on the dedupe
keys (`~<dedupe_prefix>:*`) besides the channels (`&...`); the channels need
none. A server that refuses the sink when it starts (user or password, a
missing ACL permission, a TLS certificate either side does not trust, a
database number beyond its `databases`, or `cluster: true` for a server that
is no cluster node) stops it until the config is fixed; TLS files (`ca_file`,
`cert_file`, `key_file`) that cannot be read do too; the same refusal on a
reconnect while running is retried, since the operator may be changing the
server's side.

`key` is a template: `{topic}` is the FlowFile's topic, `{gateway}` the
gateway id, `{sink}` this sink's name; write `{{` and `}}` for literal braces,
e.g. a Redis Cluster hash tag `{{edge}}:{topic}`.

With `cluster: true` the URL names any node of a Redis Cluster and the sink
uses redis-py's cluster client. A script may only touch keys of one hash slot,
so the batch runs as one script per slot of its keys, and each slot has its own
recent ids, `<dedupe_prefix>:{N}:recent` and `:order`, where {N} is a hash tag
of that slot (a number chosen for it): one window per slot the data keys use.
Put a hash tag in `key` (`{{edge}}:{topic}`) to keep every key, and the one
window, in one slot.

TLS: use a `rediss://` URL; `ca_file` verifies the server, `cert_file` and
`key_file` present a client certificate. ACL users: `username` and `password`
(or in the URL: `redis://user:password@host:6379/0`, with #, /, ? and @ in them
percent-encoded); the password may be an `ENC(...)` secret and is never logged.

Keys
  type: redis
  url: redis://127.0.0.1:6379/0   (required) redis:// or rediss://
  mode: stream             stream, list, hash or publish (default stream)
  key: "edge:{topic}"      the stream, list, hash or channel (default edge:{topic})
  maxlen: 100000           stream: about this many entries kept; list: exactly
                           this many; 0 keeps everything (default 100000);
                           not for hash and publish
  value: envelope          list and publish: envelope or payload (default envelope)
  dedupe: true             skip FlowFiles written already, as described above
                           (default true)
  dedupe_window: null      how many recent ids to remember, at least batch.max_rows
                           (default 10 x batch.max_rows, at least 10000); this and
                           dedupe_prefix only with dedupe, not in hash mode
  dedupe_prefix: null      prefix of the recent-ids keys (default edge:<sink name>);
                           give each sink writing to the same Redis its own prefix
  cluster: false           the URL is a Redis Cluster node (default false)
  username: null           ACL user (default: from the URL, else none)
  password: null           password (default: from the URL, else none)
  ca_file: null            CA bundle for rediss:// (default: the system's)
  cert_file: null          client certificate (PEM) for rediss://
  key_file: null           its private key (PEM)
  connect_timeout: 10s     (default 10s)
  timeout: 30s             the longest one batch may take (default 30s)
  and the delivery keys every sink has: batch, retry, rate_limit, overflow.

Example
  sinks:
    cache:  {type: redis, url: "redis://127.0.0.1:6379/0", mode: stream, maxlen: 500000}
    latest: {type: redis, url: "rediss://cache.plant.lan:6380/0", mode: hash,
             key: "site:{gateway}:{topic}", username: gw, password: "ENC(...)",
             ca_file: /etc/edge-stream/ca.pem}
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from gateway.config.model import SinkConfig
from gateway.config.schema import (
    POSITIVE_DURATION,
    Doc,
    Duration,
    Range,
    redis_url_problem,
    safe_redis_url,
)
from gateway.config.tls import load_client_cert
from gateway.core.clock import rfc3339
from gateway.core.component import Context, Rejected, Settled, Sink, unsettled
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile, attributes_json
from gateway.core.tls import certificate_refusal, error_chain
from gateway.core.topics import template_fields
from gateway.mqtt.urls import tls_context
from gateway.sinks._columns import loads

# KEYS: the recent-ids set, the order list, then the target keys (streams, lists).
# ARGV: mode, window, maxlen, then two arguments per row: its target, the index of its key
# in KEYS (stream, list) or its channel (publish: a channel is no key, and a script's KEYS
# are checked against the ACL user's key patterns), and one blob:
#   "<id>\0<topic>\0<ts>\0<attributes>\0<payload bytes>" (stream) or
#   "<id>\0<value bytes>" (list, publish).
# One blob per row rather than six arguments: packing arguments is most of the client's
# work per row. Only the last part may hold NUL bytes (a topic never does, the JSON
# attributes escape it). An id is recorded only together with a successful write, and
# the oldest ids beyond the window are forgotten, all in one atomic script: a crash can
# never leave an id recorded without its entry, nor an entry without its id.
WRITE_ONCE = """
local recent, order = KEYS[1], KEYS[2]
local mode, window, maxlen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local find, sub, unpack, min = string.find, string.sub, unpack, math.min
local errors, pushed, added, fresh = {}, {}, {}, {}
for row = 1, (#ARGV - 3) / 2 do
  local target, blob = ARGV[2 * row + 2], ARGV[2 * row + 3]
  local p1 = find(blob, '\0', 1, true)
  local id = sub(blob, 1, p1 - 1)
  if not fresh[id] and redis.call('SISMEMBER', recent, id) == 0 then
    local r
    if mode == 'publish' then
      -- a channel is no key: it comes in ARGV, so no key permission is needed for it
      r = redis.pcall('PUBLISH', target, sub(blob, p1 + 1))
    else
      target = KEYS[tonumber(target) + 2]
    end
    if mode == 'stream' then
      local p2 = find(blob, '\0', p1 + 1, true)
      local p3 = find(blob, '\0', p2 + 1, true)
      local p4 = find(blob, '\0', p3 + 1, true)
      local topic, ts = sub(blob, p1 + 1, p2 - 1), sub(blob, p2 + 1, p3 - 1)
      local attributes, payload = sub(blob, p3 + 1, p4 - 1), sub(blob, p4 + 1)
      if maxlen > 0 then
        r = redis.pcall('XADD', target, 'MAXLEN', '~', maxlen, '*', 'id', id, 'topic', topic,
          'ts', ts, 'attributes', attributes, 'payload', payload)
      else
        r = redis.pcall('XADD', target, '*', 'id', id, 'topic', topic, 'ts', ts,
          'attributes', attributes, 'payload', payload)
      end
    elseif mode == 'list' then
      r = redis.pcall('RPUSH', target, sub(blob, p1 + 1))
      if not (type(r) == 'table' and r.err) then pushed[target] = true end
    end
    if type(r) == 'table' and r.err then
      errors[#errors + 1] = row
      errors[#errors + 1] = r.err
    else
      fresh[id] = true
      added[#added + 1] = id
    end
  end
end
if maxlen > 0 then
  for target in pairs(pushed) do redis.call('LTRIM', target, -maxlen, -1) end
end
-- Record the new ids, then forget the oldest beyond the window (in chunks: unpack is
-- limited by Lua's C stack).
for i = 1, #added, 1000 do
  local last = min(i + 999, #added)
  redis.call('SADD', recent, unpack(added, i, last))
  redis.call('RPUSH', order, unpack(added, i, last))
end
local excess = redis.call('LLEN', order) - window
while excess > 0 do
  local n = min(excess, 1000)
  local old = redis.call('LRANGE', order, 0, n - 1)
  redis.call('LTRIM', order, n, -1)
  redis.call('SREM', recent, unpack(old))
  excess = excess - n
end
return errors
"""

# Errors that say "not now" rather than "never": the batch is retried later.
TRANSIENT = ("OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
# The same errors as redis-py hands back a pipelined command's: it cuts the code it knows off
# the text ("OOM command not allowed ..." reads "command not allowed ..."), the class says it.
TRANSIENT_ERRORS = (
    redis_errors.OutOfMemoryError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.MasterDownError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)

_PLACEHOLDERS = frozenset({"topic", "gateway", "sink"})

# How Redis says that the ACL user may not run a command: from a script (7.0: "ERR The
# user executing the script can't run this command or subcommand"), else NOPERM ("this
# user has no permissions to run the 'xadd' command", 7.2: "User u has no permissions to
# run ...").
_NO_COMMAND_PERMISSION = ("no permissions to run", "can't run this command")
# ... and a key or a channel it may not touch (7.0: "... no permissions to access one of the
# keys used as arguments", from a script "... can't access at least one of the keys ..."
# and "... can't publish to the channel ..."; 7.2: "No permissions to access a key"). When
# the key (or channel) comes from the row's topic, that row alone goes to the dead letters,
# as any row Redis refuses; a key without {topic} is every row's: the batch is retried.
_NO_KEY_PERMISSION = ("no permissions to access", "can't access", "can't publish")


def _acl_denial(text: str) -> bool:
    """Whether Redis's error text says the ACL user may not do it (in any version's case)."""
    text = text.lower()
    return any(words in text for words in (*_NO_COMMAND_PERMISSION, *_NO_KEY_PERMISSION))


# In a cluster, how many script calls of one slot go at once after the ACL refused a key
# (each takes a connection to the slot's node; the slots of a batch go side by side).
_CLUSTER_CONCURRENT_CALLS = 32


@dataclass
class _Group:
    """The rows of one script call: their keys (in order of first use), and per row its
    key, blob and FlowFile."""

    targets: dict[str, int] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    rows: list[FlowFile] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class RedisSinkConfig(SinkConfig):
    """Keys of the `redis` sink (plus batch, retry, rate_limit, overflow from SinkConfig)."""

    url: Annotated[
        str,
        Doc(
            "`redis://host:6379/0` or `rediss://` (TLS); may hold `user:password@`"
            " (percent-encode `#`, `/`, `?` and `@` in them: `%23`, `%2F`, `%3F`, `%40`).",
            example="redis://127.0.0.1:6379/0",
        ),
    ]
    mode: Annotated[
        Literal["stream", "list", "hash", "publish"],
        Doc(
            "`stream` (XADD), `list` (RPUSH), `hash` (HSET, the latest FlowFile per key)"
            " or `publish` (pub/sub, nothing kept).",
            example="stream",
        ),
    ] = "stream"
    key: Annotated[
        str,
        Doc(
            "The stream, list, hash or channel: `{topic}`, `{gateway}`, `{sink}`; `{{`"
            " and `}}` for literal braces."
        ),
    ] = "edge:{topic}"
    maxlen: Annotated[
        int,
        Doc(
            "`stream`: about this many entries kept; `list`: exactly this many; 0 keeps"
            " everything. Not used by `hash` and `publish`."
        ),
        # Redis refuses counts past 2^63 - 1, and the script (Lua numbers) rounds past 2^53.
        Range(0, 2**53 - 1, "must be 0 (keep everything) or more, up to 2^53 - 1"),
    ] = 100_000
    value: Annotated[
        Literal["envelope", "payload"],
        Doc(
            "`list` and `publish`: the JSON envelope or the content bytes alone (`payload`);"
            " `stream` and `hash` always write the fields id, topic, ts, attributes, payload."
        ),
    ] = "envelope"
    dedupe: Annotated[
        bool,
        Doc(
            "Skip FlowFiles written already (their ids are among the recent ones);"
            " `false` is faster, but a batch written again after a crash, a reload or a lost"
            " connection is stored twice (a retry after Redis refused part of it for now, out"
            " of memory, leaves out what Redis had taken)."
        ),
    ] = True
    dedupe_window: Annotated[
        int | None,
        Doc(
            "How many recent ids to remember, at least `batch.max_rows` (default 10 x"
            " `batch.max_rows`, at least 10000). Only with `dedupe`, not in `hash` mode."
        ),
    ] = None
    dedupe_prefix: Annotated[
        str | None,
        Doc(
            "Prefix of the recent-ids keys (default `edge:<sink name>`); give each sink"
            " writing to the same Redis its own (two sinks of one config with one prefix and the"
            " same host in the URL, with its port and database, are refused: the second would"
            " leave out what the first wrote). Only with `dedupe`, not in `hash` mode."
        ),
    ] = None
    cluster: Annotated[bool, Doc("The URL names a node of a Redis Cluster.")] = False
    username: Annotated[str | None, Doc("ACL user (default: from the URL, else none).")] = None
    password: Annotated[
        str | None,
        Doc("Password, may be `ENC(...)` (default: from the URL, else none); never logged."),
    ] = None
    ca_file: Annotated[
        str | None,
        Doc("CA bundle that verifies the server, for `rediss://` (default: the system's)."),
    ] = None
    cert_file: Annotated[
        str | None, Doc("Client certificate (PEM) for `rediss://`; goes with `key_file`.")
    ] = None
    key_file: Annotated[str | None, Doc("The client certificate's private key (PEM).")] = None
    connect_timeout: Annotated[
        Duration,
        Doc("The longest a connect may take."),
        POSITIVE_DURATION,
    ] = 10.0
    timeout: Annotated[
        Duration,
        Doc("The longest one batch may take."),
        POSITIVE_DURATION,
    ] = 30.0

    def check(self) -> Iterator[tuple[str, str]]:
        # A key that failed is None here (its problem is reported already).
        if self.url is None:
            pass
        elif not self.url.startswith(("redis://", "rediss://")):
            yield "url", f"{safe_redis_url(self.url)!r} must start with redis:// or rediss://"
        elif problem := _location_problem(self.url):
            yield "url", problem
        elif not self.url.startswith("rediss://"):
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name):
                    yield name, "needs TLS: use a rediss:// URL"
        if bool(self.cert_file) != bool(self.key_file):
            yield "cert_file", "cert_file and key_file go together"
        try:
            fields = template_fields(self.key or "")
        except ValueError as err:
            yield "key", str(err)
        else:
            for name in fields:
                if name not in _PLACEHOLDERS:
                    yield (
                        "key",
                        (
                            f"{self.key!r}: unknown placeholder {{{name}}}; use {{topic}}, "
                            "{gateway} or {sink}, and {{ }} for literal braces"
                        ),
                    )
        if (
            self.dedupe_window is not None
            and self.batch is not None
            and self.dedupe_window < self.batch.max_rows
        ):
            yield (
                "dedupe_window",
                f"must be at least batch.max_rows ({self.batch.max_rows}): the batch in"
                " flight when the gateway stopped must fit in it, or part of it is"
                " written twice",
            )
        if self.dedupe_prefix is not None and (
            not self.dedupe_prefix or any(c in self.dedupe_prefix for c in "{} ")
        ):
            yield "dedupe_prefix", "must be a non-empty name without braces or spaces"
        # Set away from its default in a mode that does not read it, a key would be ignored.
        if self.value not in (None, "envelope") and self.mode in ("stream", "hash"):
            yield "value", "value applies only with mode: list or publish"
        if self.maxlen not in (None, 100_000) and self.mode in ("hash", "publish"):
            yield "maxlen", "maxlen applies only with mode: stream or list"
        # The recent ids are kept only by a sink that dedupes (hash mode needs none).
        unread = (
            "mode: hash writes no recent ids (the latest value of a key, written again, is"
            " the same)"
            if self.mode == "hash"
            else "dedupe is false: no recent ids are kept"
            if self.dedupe is False
            else None
        )
        if unread:
            for name in ("dedupe_window", "dedupe_prefix"):
                if getattr(self, name) is not None:
                    yield name, f"{name} applies only with dedupe; {unread}"


# Host, port and database number (redis://h:6379/abc passed check-config); the scheme is
# checked before.
_location_problem = redis_url_problem


def _hash_tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes (its {tag}, or all of it)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


_slot_tags: dict[int, str] = {}
_next_tag = 0


def slot_tag(slot: int) -> str:
    """The smallest number (as text) that Redis Cluster hashes to `slot`.

    The dedupe keys of a slot carry it as their hash tag, `{…}`, so that one script
    touches one slot. The same slot always gets the same tag, in every process.
    """
    global _next_tag
    while slot not in _slot_tags:
        tag = str(_next_tag)
        _next_tag += 1
        _slot_tags.setdefault(key_slot(tag.encode()), tag)
    return _slot_tags[slot]


def _topic_problem(topic: str) -> str | None:
    """Why a topic cannot name a Redis key, or None."""
    if "\0" in topic:
        return "the topic holds a NUL character"
    if not topic.isascii():
        try:
            topic.encode()
        except UnicodeEncodeError as err:
            return f"the topic is not valid Unicode text ({err.reason})"
    return None


def _refusal(err: BaseException) -> str | None:
    """What in `err` says the server refuses us until an operator acts, or None."""
    for cause in error_chain(err):
        if isinstance(cause, redis_errors.AuthenticationError):
            return f"{cause} (check username and password)"
        if isinstance(cause, redis_errors.NoPermissionError | redis_errors.AuthorizationError):
            return f"{cause} (grant the ACL user the permission)"
        refusal = certificate_refusal(cause, "cert_file and key_file")
        if refusal:
            return refusal
        if isinstance(cause, redis_errors.ResponseError) and "cluster support disabled" in str(
            cause
        ):
            return "it is not a Redis Cluster node (set cluster: false)"
        if isinstance(cause, redis_errors.ResponseError) and "DB index is out of range" in str(
            cause
        ):
            # SELECT n beyond the server's `databases` (16 by default)
            return f"{cause} (the url's /N is beyond the server's `databases`)"
    return None


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def envelope(ff: FlowFile) -> bytes:
    """The FlowFile as one JSON object (payload inline when it is UTF-8 JSON)."""
    head = (
        f'{{"id":"{ff.id}","topic":{_dumps(ff.topic)},"ts":"{rfc3339(ff.created)}",'
        f'"attributes":{_dumps(ff.attributes)},'
    )
    try:
        text = ff.content.decode()
        loads(text)
    except (ValueError, RecursionError):
        return f'{head}"payload_base64":"{base64.b64encode(ff.content).decode()}"}}'.encode()
    return f'{head}"payload":{text}}}'.encode()


def _check_tls_files(cfg: RedisSinkConfig, permanent: type[Exception]) -> None:
    """Raise `permanent` when ca_file, cert_file or key_file cannot be read or used (else
    redis-py says "Error 2 connecting to host:port", as if the server were missing)."""
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(cfg, name)
        if path and not os.access(path, os.R_OK):
            raise permanent(f"{name} {path} cannot be read")
    if cfg.ca_file or cfg.cert_file:
        try:
            tls_context(cfg.ca_file, cfg.cert_file, cfg.key_file)
        except OSError as err:  # ssl.SSLError included
            raise permanent(
                f"cannot use the TLS files (ca_file, cert_file, key_file): {err}"
            ) from err


class RedisSink(Sink):
    """Pipelines each batch to one Redis server or cluster."""

    Config = RedisSinkConfig

    def __init__(self, config: RedisSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._ran = False  # connected once: a refusal from now on is retried
        self.config: RedisSinkConfig = config
        self._client: Any = None
        self._script_sha: str | None = None
        # {gateway} and {sink} are fixed: resolve them now; {topic} is filled per FlowFile.
        template = config.key.format(gateway=ctx.gateway_id, sink=ctx.name, topic="\0")
        self._key_parts = template.split("\0")
        self._prefix = config.dedupe_prefix or f"edge:{ctx.name}"
        self.window = config.dedupe_window or max(10 * config.batch.max_rows, 10_000)
        # What Redis settled of a batch whose write failed part way (dedupe: false), by
        # FlowFile id: None taken, else refused for good. The engine sends that batch again;
        # only the rest goes (a pipeline is no transaction: what ran before Redis filled up
        # stays, and each try stored it again).
        self._settled: Settled = {}

    def update(self, config: RedisSinkConfig) -> bool:
        """In place unless the dedupe window follows `batch.max_rows` and that changed."""
        if config.dedupe_window is None and config.batch.max_rows != self.config.batch.max_rows:
            return False
        self.config = config
        # Forget what was settled: a new dict, as a write still in flight goes on storing
        # into the one it took (cleared, that one would fill again behind the reload).
        self._settled = {}
        return True

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (and load the script).

        RetryableError if the server cannot be reached or is not ready; PermanentError
        if it refuses us: user or password, an ACL permission, a TLS certificate, or
        `cluster: true` on a server that is no cluster node.
        """
        # A refusal stops the sink only at its start; once it ran, the same refusal is retried
        # (the operator may be changing the broker's side): the engine reconnects with this.
        await self._open(permanent=RetryableError if self._ran else PermanentError)
        self._ran = True

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _open(self, permanent: type[Exception] = RetryableError) -> Any:
        """The client, connected now if need be. From write(), a refusal is retried: the
        operator may fix the password or the ACL while the data waits."""
        if self._client is not None:
            return self._client
        cfg = self.config
        options: dict[str, Any] = {
            "socket_connect_timeout": cfg.connect_timeout,
            "socket_timeout": cfg.timeout,
            # The engine owns retries and backoff; redis-py's own would hide an outage.
            "retry": Retry(NoBackoff(), 1 if cfg.cluster else 0),
        }
        if cfg.username is not None:
            options["username"] = cfg.username
        if cfg.password is not None:
            options["password"] = cfg.password
        if cfg.url.startswith("rediss://"):
            _check_tls_files(cfg, permanent)
            options.update(
                ssl_ca_certs=cfg.ca_file, ssl_certfile=cfg.cert_file, ssl_keyfile=cfg.key_file
            )
        client: Any = None
        try:
            if cfg.cluster:
                client = RedisCluster.from_url(cfg.url, **options)
                await client.initialize()
            else:
                client = Redis.from_url(cfg.url, **options)
                await client.ping()
            if self._uses_script:
                self._script_sha = await client.script_load(WRITE_ONCE)
        except ValueError:
            # redis-py could not read the URL. Its message, and so a chained traceback,
            # may quote a piece of the password: neither is shown.
            raise permanent(
                f"redis-py cannot read the url {safe_redis_url(cfg.url)}: percent-encode #, /, ?"
                " and @ in user and password"
            ) from None
        except (redis_errors.RedisError, RedisClusterException, OSError) as err:
            if client is not None:
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    await client.aclose()
            where = safe_redis_url(cfg.url)
            refusal = _refusal(err)
            if refusal is None and cfg.url.startswith("rediss://"):
                refusal = await self._tls_refusal(err)
            if refusal is not None:
                raise permanent(f"{where} refused us: {refusal}") from err
            raise RetryableError(f"cannot connect to {where}: {err}") from err
        self._client = client
        self.ctx.log.info("connected to %s (%s mode)", safe_redis_url(cfg.url), cfg.mode)
        return client

    async def _tls_refusal(self, err: BaseException) -> str | None:
        """After a connection reset during connect: did the server refuse our certificate?

        With TLS 1.3 a server checks the client certificate after the handshake looks
        done to the client, and its alert races with the client's first command: the
        connection mostly ends in a bare reset. A second connection that sends nothing
        receives the alert, if there is one.
        """
        if not any(isinstance(e, ConnectionResetError | BrokenPipeError) for e in error_chain(err)):
            return None
        cfg = self.config
        parts = urlsplit(cfg.url)
        context = ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.cert_file:
            load_client_cert(context, cfg.cert_file, cfg.key_file)
        try:
            async with asyncio.timeout(min(cfg.connect_timeout, 2.0)):
                reader, writer = await asyncio.open_connection(
                    parts.hostname, parts.port or 6379, ssl=context
                )
                try:
                    await reader.read(1)  # the server's alert, or nothing until the timeout
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except ssl.SSLError as probe:
            return _refusal(probe)
        except (OSError, TimeoutError):
            pass
        return None

    @property
    def _uses_script(self) -> bool:
        return self.config.dedupe and self.config.mode != "hash"

    async def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except (redis_errors.RedisError, OSError) as err:
                self.ctx.log.debug("closing the broken connection failed: %s", err)

    # --- writing --------------------------------------------------------------------------

    def _key(self, topic: str) -> str:
        parts = self._key_parts
        return parts[0] if len(parts) == 1 else topic.join(parts)

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        if not batch:
            return []
        # this write's own: a reload (update) meanwhile gives the sink a new one
        settled = self._settled
        batch, earlier = unsettled(settled, batch)  # what Redis took is not written again
        if not batch:
            settled.clear()
            return earlier
        client = await self._open()
        refused = earlier
        if not all(ff.topic.isascii() and "\0" not in ff.topic for ff in batch):
            # A topic that cannot name a key (rare): refuse those rows, write the rest.
            rows = []
            for ff in batch:
                problem = _topic_problem(ff.topic)
                if problem:
                    refused.append(Rejected(ff, f"redis: {problem}"))
                else:
                    rows.append(ff)
            batch = rows
            if not batch:
                settled.clear()
                return refused
        try:
            async with asyncio.timeout(self.config.timeout):
                if self.config.mode == "hash":
                    rejected = await self._write_hashes(client, batch)
                elif self._uses_script:
                    rejected = await self._write_once(client, batch)
                else:
                    rejected = await self._write_plain(client, batch, settled)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as err:
            await self._reset()
            raise RetryableError(f"lost {safe_redis_url(self.config.url)}: {err}") from err
        except TimeoutError as err:
            await self._reset()
            raise RetryableError(
                f"{safe_redis_url(self.config.url)} did not answer within {self.config.timeout:g}s"
            ) from err
        except (redis_errors.RedisError, RedisClusterException) as err:
            # Not about one row (those come back inside the script's answer): OOM, LOADING,
            # READONLY, cluster reconfiguring, NOSCRIPT after a failover ...
            await self._reset()
            reason = _refusal(err) or err
            raise RetryableError(
                f"{safe_redis_url(self.config.url)} refused the batch: {reason}"
            ) from err
        settled.clear()
        return refused + rejected

    def _values(self, ff: FlowFile) -> tuple[Any, ...]:
        if self.config.mode in ("stream", "hash"):
            return (
                ff.id,
                ff.topic,
                rfc3339(ff.created),
                attributes_json(ff.attributes),
                ff.content,
            )
        return (envelope(ff) if self.config.value == "envelope" else ff.content,)

    def dedupe_keys(self, slot: int | None = None) -> tuple[str, str]:
        """The recent-ids set and the order list: the sink's, or in a cluster the slot's."""
        prefix = self._prefix if slot is None else f"{self._prefix}:{{{slot_tag(slot)}}}"
        return f"{prefix}:recent", f"{prefix}:order"

    async def _write_once(self, client: Any, batch: list[FlowFile]) -> list[Rejected]:
        """Stream, list, publish with dedupe: one script call (in a cluster, one per slot)."""
        cluster, stream = self.config.cluster, self.config.mode == "stream"
        envelopes = self.config.value == "envelope"
        groups: dict[int | None, _Group] = {}
        for ff in batch:
            topic = ff.topic
            key = self._key(topic)
            # Standalone: one group for the batch. Cluster: one per slot (a script may
            # touch the keys of one slot only).
            slot = key_slot(key.encode()) if cluster else None
            group = groups.get(slot)
            if group is None:
                group = groups[slot] = _Group()
            if key not in group.targets:
                group.targets[key] = len(group.targets) + 1  # Lua counts from 1
            if stream:
                attributes = attributes_json(ff.attributes)
                head = f"{ff.id}\0{topic}\0{rfc3339(ff.created)}\0{attributes}\0"
                group.blobs.append(head.encode() + ff.content)
            else:
                value = envelope(ff) if envelopes else ff.content
                group.blobs.append(f"{ff.id}\0".encode() + value)
            group.keys.append(key)
            group.rows.append(ff)
        calls = [self._write_group(client, slot, group) for slot, group in groups.items()]
        return [refused for part in await asyncio.gather(*calls) for refused in part]

    @property
    def _settings(self) -> tuple[Any, ...]:
        """The script's first arguments."""
        return (self.config.mode, self.window, self.config.maxlen)

    def _script_call(self, slot: int | None, group: _Group) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of one script call for `group`."""
        args: list[Any] = list(self._settings)
        if self.config.mode == "publish":
            # The channels go in ARGV: as KEYS they would need key permissions.
            for key, blob in zip(group.keys, group.blobs, strict=True):
                args += (key, blob)
            return list(self.dedupe_keys(slot)), args
        targets = group.targets
        for key, blob in zip(group.keys, group.blobs, strict=True):
            args += (targets[key], blob)
        return [*self.dedupe_keys(slot), *targets], args

    async def _write_group(self, client: Any, slot: int | None, group: _Group) -> list[Rejected]:
        """One script call for the rows of one slot; the rows Redis refused."""
        try:
            errors = await self._evalsha(client, *self._script_call(slot, group))
        except redis_errors.NoPermissionError as err:
            # Redis checks every key a script names before running it, so one key the ACL
            # user may not write refuses the whole call, nothing written. A key that comes
            # from a row's topic: each key alone, and the rows of a refused one go to the
            # dead letters, unless it is the dedupe keys that are refused (then every row
            # would be: the user's, retried). A fixed key, or in publish mode (no key but
            # the dedupe keys), the user's: retried.
            if not self._row_denial(str(err)) or self.config.mode == "publish":
                raise
            if len(group.targets) > 1:
                return await self._write_by_key(client, slot, group)
            if await self._may_write(client, slot):
                return [self._refused(ff, str(err)) for ff in group.rows]
            raise
        return self._refusals(group.rows, errors)

    def _refusals(self, rows: list[FlowFile], errors: list[Any]) -> list[Rejected]:
        """The rows a script call's answer names: [row number, error, ...]."""
        return [
            self._refused(rows[int(errors[i]) - 1], errors[i + 1]) for i in range(0, len(errors), 2)
        ]

    async def _write_by_key(self, client: Any, slot: int | None, group: _Group) -> list[Rejected]:
        """The rows of a slot, one script call per key (after the ACL refused a key).

        One round trip on a server (the calls go in one pipeline), a few in a cluster (its
        pipeline takes no EVALSHA: the calls go _CLUSTER_CONCURRENT_CALLS at a time), after a
        call of no rows that checks the dedupe keys once (refused, every call is: the
        user's, retried).
        """
        parts: dict[str, _Group] = {}
        for key, blob, ff in zip(group.keys, group.blobs, group.rows, strict=True):
            part = parts.get(key)
            if part is None:
                part = parts[key] = _Group(targets={key: 1})
            part.keys.append(key)
            part.blobs.append(blob)
            part.rows.append(ff)
        calls = [(list(self.dedupe_keys(slot)), list(self._settings))]
        calls += [self._script_call(slot, part) for part in parts.values()]
        answers = await self._evalsha_many(client, calls)
        if isinstance(answers[0], Exception):
            raise answers[0]
        refused = []
        for part, answer in zip(parts.values(), answers[1:], strict=True):
            if isinstance(answer, redis_errors.NoPermissionError) and self._row_denial(str(answer)):
                refused += [self._refused(ff, str(answer)) for ff in part.rows]
            elif isinstance(answer, Exception):
                raise answer  # NOSCRIPT (a failover) too: retried, the script loaded again
            else:
                refused += self._refusals(part.rows, answer)
        return refused

    async def _evalsha_many(
        self, client: Any, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """The answers (or errors) of many script calls: one pipeline, one round trip.

        redis-py's cluster pipeline refuses EVALSHA: in a cluster the calls (all to the
        slot's one node) go concurrently instead, a bounded number at a time.
        """
        sha = self._script_sha
        if not self.config.cluster:
            async with client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                return list(await pipe.execute(raise_on_error=False))
        answers: list[Any] = []
        for start in range(0, len(calls), _CLUSTER_CONCURRENT_CALLS):
            chunk = calls[start : start + _CLUSTER_CONCURRENT_CALLS]
            answers += await asyncio.gather(
                *(client.evalsha(sha, len(keys), *keys, *args) for keys, args in chunk),
                return_exceptions=True,
            )
        return answers

    async def _may_write(self, client: Any, slot: int | None) -> bool:
        """Whether the ACL user may run the script on the dedupe keys (a call of no rows)."""
        try:
            await self._evalsha(client, list(self.dedupe_keys(slot)), list(self._settings))
        except redis_errors.NoPermissionError:
            return False
        return True

    def _row_denial(self, text: str) -> bool:
        """Whether an ACL refusal is the row's: a key or channel that comes from its topic.

        A command the user may not run, or a key every row shares, is the user's: every
        row would go to the dead letters.
        """
        text = text.lower()  # 7.0 writes "no permissions", 7.2 and Valkey "No permissions"
        if any(words in text for words in _NO_COMMAND_PERMISSION):
            return False
        return len(self._key_parts) > 1 and any(words in text for words in _NO_KEY_PERMISSION)

    async def _evalsha(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self._script_sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            # The server restarted or failed over since connect: load the script again.
            self._script_sha = await client.script_load(WRITE_ONCE)
            return await client.evalsha(self._script_sha, len(keys), *keys, *args)

    def _refused(self, ff: FlowFile, error: Any) -> Rejected:
        text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
        if text.startswith(TRANSIENT):
            # The rows before it are in and recorded; the retry skips them.
            raise redis_errors.ResponseError(text)
        if _acl_denial(text) and not self._row_denial(text):
            # The ACL user's, not the row's: every row would go to the dead letters.
            raise redis_errors.NoPermissionError(text)
        return Rejected(ff, f"redis {self.config.mode} {self._key(ff.topic)!r}: {text}")

    async def _write_hashes(self, client: Any, batch: list[FlowFile]) -> list[Rejected]:
        latest: dict[str, FlowFile] = {}
        for ff in batch:
            latest[self._key(ff.topic)] = ff  # later FlowFiles overwrite earlier ones
        async with client.pipeline(transaction=False) as pipe:
            for key, ff in latest.items():
                fields = dict(
                    zip(
                        ("id", "topic", "ts", "attributes", "payload"),
                        self._values(ff),
                        strict=True,
                    )
                )
                pipe.hset(key, mapping=fields)
            answers = await pipe.execute(raise_on_error=False)
        refused = {}
        for key, answer in zip(latest, answers, strict=True):
            if isinstance(answer, TRANSIENT_ERRORS):
                raise answer  # Redis full (part way), loading ...: the batch is retried
            if isinstance(answer, redis_errors.ResponseError):
                refused[key] = self._refused(latest[key], answer.args[0] if answer.args else answer)
            elif isinstance(answer, Exception):
                raise answer
        return [
            Rejected(ff, refused[k].reason) for ff in batch if (k := self._key(ff.topic)) in refused
        ]

    async def _write_plain(
        self, client: Any, batch: list[FlowFile], settled: dict[str, Rejected | None]
    ) -> list[Rejected]:
        """Without markers: pipelined XADD / RPUSH+LTRIM / PUBLISH; at least once.

        When the batch fails part way, what Redis answered of it goes into `settled`.
        """
        mode, maxlen = self.config.mode, self.config.maxlen
        keys = [self._key(ff.topic) for ff in batch]
        async with client.pipeline(transaction=False) as pipe:
            for key, ff in zip(keys, batch, strict=True):
                values = self._values(ff)
                if mode == "stream":
                    fields = dict(
                        zip(("id", "topic", "ts", "attributes", "payload"), values, strict=True)
                    )
                    pipe.xadd(key, fields, maxlen=maxlen or None, approximate=True)
                elif mode == "list":
                    pipe.rpush(key, values[0])
                else:
                    pipe.publish(key, values[0])
            if mode == "list" and maxlen:
                for key in dict.fromkeys(keys):
                    pipe.ltrim(key, -maxlen, -1)
            answers = await pipe.execute(raise_on_error=False)
        rejected: list[Rejected] = []
        try:
            # zip stops at the batch's end: the LTRIM answers that follow are not rows.
            for ff, answer in zip(batch, answers, strict=False):
                if isinstance(answer, TRANSIENT_ERRORS):
                    raise answer  # Redis full (part way), loading ...: the batch is retried
                if isinstance(answer, redis_errors.ResponseError):
                    rejected.append(self._refused(ff, answer.args[0] if answer.args else answer))
                elif isinstance(answer, Exception):
                    raise answer
        except redis_errors.RedisError:
            # No transaction: the commands that answered OK ran and stay; the retry of this
            # batch leaves them out, and those refused for good.
            for ff, answer in zip(batch, answers, strict=False):
                if not isinstance(answer, Exception):
                    settled[ff.id] = None
            settled.update((r.flowfile.id, r) for r in rejected)
            raise
        return rejected

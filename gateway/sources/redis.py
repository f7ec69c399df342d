"""Reads a Redis stream through a consumer group, or a list, each entry once, as FlowFiles.

Modes (`mode:`)
  stream   XREADGROUP from the stream `key` as consumer `consumer` of group `group`
           (created at the start or the end of the stream when missing, `start`).
           An entry is acknowledged (XACK) only after the store committed it. Entries
           another consumer of the group read and never acknowledged (it crashed) are
           taken over with XAUTOCLAIM once they have been idle for `claim_idle`.
  list     BLMOVE items from the list `key` into a processing list (`<key>:processing`,
           or `processing`) and remove them from there only after the store committed
           them. Give each gateway its own processing list.

Two sources of one config on one consumer of a group (or on one processing list) of
one server are refused when the config loads: each would take the other's entries
for its own.

A stream entry's FlowFile holds its fields as a JSON object (values as text; a name
or value that is not UTF-8 in base64, as the sql sources write bytes), or,
when `field` is set, that one field's bytes as they are (an entry the redis sink
wrote: `field: payload`; an entry without that field goes to the dead letters with
its fields as a JSON object); a list item's FlowFile holds the item's bytes. Its topic
comes from `topic`: `{key}`, `{source}`, and in stream mode `{FIELD}` for a field
of the entry (missing: `_`). Attributes: `redis.key` and, in stream mode,
`redis.id` (the entry id).

Exactly once across crashes: the position of the last entry read (the stream
entry id; in list mode a count of items moved) is committed with the FlowFiles,
with the stream, group and consumer (the list and processing list) it is of: a
source whose keys changed takes no other's position for its own, and reads what
is pending for it again.
A gateway killed after the commit but before the XACK finds those entries still
pending for it when it starts, sees they are at or before its position, and
acknowledges them without reading them again; an entry not committed is read
again, as delivered once (XCLAIM with RETRYCOUNT 1: its delivery count in XPENDING
stays 1) and with its position, so that a second crash after its commit and
before its XACK does not read it a third time. In list mode a counter key
(`<processing>:done`) counts the items removed from the processing list, in the
same MULTI as the removal, so that the items the store has and Redis does not yet
know of are told apart the same way (and a removal whose answer was lost with the
connection is not made twice: the counter says how many are left to remove).
Entries taken over from another consumer are read at least once: their FlowFile
ids are made from the stream key and the entry id, so the SQL and Redis sinks,
which write each id once, still store them once.

Connection trouble is retried with the engine's backoff; in stream mode the entries
a read lost with the connection had delivered (pending for this consumer, never
seen), and in list mode the items a move lost with it had moved, are read first
once it is back. A server that refuses the credentials or an ACL permission stops
the source until the config is fixed.

Keys
  type: redis
  url: redis://127.0.0.1:6379/0   (required) redis:// or rediss://
  mode: stream             stream or list (default stream)
  key: readings            the stream or list (required)
  group: edge-stream       stream: the consumer group (default edge-stream)
  consumer: null           stream: this gateway's consumer name (default <gateway id>)
  start: beginning         stream: where a new group starts: beginning or end
  field: null              stream: take this field's bytes as the content
  processing: null         list: the processing list (default <key>:processing)
  count: 500               entries per read (1 - 10000)
  block: 1s                how long one read waits for new entries
  claim_idle: 60s          stream: take over another consumer's entries idle this long
                           (at most 1d)
  topic: "redis/{key}"     the topic template
  username, password, ca_file, connect_timeout, timeout: as for the redis sink

Example
  sources:
    readings: {type: redis, url: "redis://127.0.0.1:6379/0", key: readings,
               topic: "plant/{device}/telemetry"}
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.config.model import RETRY_MAX, Claim, SourceConfig
from gateway.config.schema import POSITIVE_DURATION, Doc, Duration, Range, safe_redis_url
from gateway.core.component import Context, Message, Source
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.core.topics import template_fields, validate_topic
from gateway.sinks.redis import _location_problem, _refusal

COUNT_MAX = 10_000


@dataclass(frozen=True, kw_only=True)
class RedisSourceConfig(SourceConfig):
    """Keys of the `redis` source."""

    url: Annotated[
        str,
        Doc(
            "`redis://host:6379/0` or `rediss://` (TLS); may hold `user:password@`"
            " (percent-encode `#`, `/`, `?` and `@` in them).",
            example="redis://127.0.0.1:6379/0",
        ),
    ] = dataclasses.field(repr=False)
    mode: Annotated[
        Literal["stream", "list"],
        Doc("`stream` (a consumer group, XREADGROUP) or `list` (BLMOVE).", example="stream"),
    ] = "stream"
    key: Annotated[str, Doc("The stream or list to read.", example="readings")]
    group: Annotated[str, Doc("Stream: the consumer group.")] = "edge-stream"
    consumer: Annotated[
        str | None,
        Doc("Stream: this gateway's consumer name in the group (default: the gateway id)."),
    ] = None
    start: Annotated[
        Literal["beginning", "end"],
        Doc(
            "Stream: where the group starts when this source creates it: `beginning`"
            " reads the entries already there, `end` only new ones."
        ),
    ] = "beginning"
    field: Annotated[
        str | None,
        Doc(
            "Stream: the FlowFile's content is this field's bytes (default: all fields as"
            " a JSON object); an entry without it goes to the dead letters.",
            example="payload",
        ),
    ] = None
    processing: Annotated[
        str | None,
        Doc("List: where items wait until they are stored (default `<key>:processing`)."),
    ] = None
    count: Annotated[
        int,
        Doc("At most this many entries per read."),
        Range(1, COUNT_MAX, message=f"must be between 1 and {COUNT_MAX}"),
    ] = 500
    block: Annotated[
        Duration,
        Doc("How long one read waits for new entries."),
        Range(0.01, 60, message="must be between 10ms and 60s"),
    ] = 1.0
    claim_idle: Annotated[
        Duration,
        Doc(
            "Stream: take over entries another consumer left pending this long (at most"
            " 1d: what a consumer that died left is delivered within it)."
        ),
        Range(1, RETRY_MAX, "must be between 1s and 1d"),
    ] = 60.0
    topic: Annotated[
        str,
        Doc(
            "The topic template: `{key}`, `{source}`, and in stream mode `{FIELD}` for a"
            " field of the entry; `{{` and `}}` for a literal brace.",
            example="plant/{device}/telemetry",
        ),
    ] = "redis/{key}"
    username: Annotated[str | None, Doc("ACL user (default: from the URL, else none).")] = None
    password: Annotated[
        str | None,
        Doc("Password, may be `ENC(...)` (default: from the URL, else none); never logged."),
    ] = dataclasses.field(default=None, repr=False)
    ca_file: Annotated[
        str | None,
        Doc("CA bundle that verifies the server, for `rediss://` (default: the system's)."),
    ] = None
    connect_timeout: Annotated[
        Duration,
        Doc("The longest a connect may take."),
        POSITIVE_DURATION,
    ] = 10.0
    timeout: Annotated[
        Duration,
        Doc("The longest one command may take (besides `block`)."),
        POSITIVE_DURATION,
    ] = 30.0

    def claims(self) -> list[Claim]:
        """The consumer (stream) or processing list (list) on its server: two sources
        sharing one each take the other's entries for their own. A stream consumer's
        pending entries at or before its position are acknowledged at its start as stored
        (the other's too, never stored); a list source removes as many items from the
        head of its processing list as it stored (the other's too)."""
        if not self.url.startswith(("redis://", "rediss://")) or _location_problem(self.url):
            return []
        parts = urlsplit(self.url)
        # the database as redis-py takes it: `?db=N` before the path's
        db = (parse_qs(parts.query).get("db") or [parts.path[1:]])[0]
        try:
            db = str(int(db or 0))
        except ValueError:
            pass  # refused by `check`
        where = f"{(parts.hostname or '').lower()}:{parts.port or 6379}/{db}"
        if self.mode == "stream":
            consumer = self.consumer or ""
            return [
                Claim(
                    "consumer",
                    f"consumer {consumer or '(the gateway id)'} of group {self.group} of"
                    f" stream {self.key} on {where}",
                    ("redis consumer", f"{where} {self.key} {self.group}", consumer),
                    "each would take the other's entries for its own at a start, acknowledge"
                    " them as stored and lose them; give each its own consumer or group",
                )
            ]
        processing = self.processing or f"{self.key}:processing"
        return [
            Claim(
                "processing",
                f"processing list {processing} on {where}",
                ("redis list", where, processing),
                "each would remove the other's items from it as its own, stored or not;"
                " give each its own processing list",
            )
        ]

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.url.startswith(("redis://", "rediss://")):
            yield "url", "must read redis://host:6379/0 or rediss://host:6379/0"
        else:
            problem = _location_problem(self.url)
            if problem:
                yield "url", problem
        for name in ("key", "group", "consumer", "processing"):
            if getattr(self, name) == "":
                yield name, "must not be empty"
        if self.mode == "list" and self.key in (self.processing, f"{self.processing}:done"):
            # BLMOVE from a list into itself only rotates it, and every item waiting in the
            # processing list is read again at each start
            yield "processing", f"must be another list than key ({self.key!r})"
        try:
            names = template_fields(self.topic)
        except ValueError as err:
            yield "topic", str(err)
            return
        problems = []
        for name in names:
            if not name.isidentifier():
                problems.append(f"{{{name}}} must be a plain name: {{key}}, {{source}} or a field")
            elif self.mode == "list" and name not in ("key", "source"):
                problems.append(f"{{{name}}}: a list item has no fields; use {{key}} or {{source}}")
        if problems:  # a {0} or {x.y} cannot be probed below (IndexError, AttributeError)
            for problem in problems:
                yield "topic", problem
            return
        probe = string.Formatter().vformat(self.topic, (), _Probe())
        problem = validate_topic(probe)
        if problem:
            yield "topic", problem


class _Probe(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "x"


def _text(value: bytes) -> str:
    """A field's name or value in the JSON of an entry: its text, or base64 for bytes that
    are not UTF-8 (decoding them with replacement characters lost the bytes for good)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return base64.b64encode(value).decode()


def _level(value: str) -> str:
    return value.replace("/", "_").replace("+", "_").replace("#", "_").replace("\0", "_") or "_"


def entry_flowfile_id(stream: str, entry_id: str, scope: str) -> str:
    """A UUIDv7-shaped id made from the entry: the same entry always gets the same id
    (its time from the entry id's milliseconds, the rest from a digest)."""
    ms = int(entry_id.partition("-")[0])
    digest = hashlib.sha256(f"{scope}\0{stream}\0{entry_id}".encode()).digest()
    rand_a = int.from_bytes(digest[:2]) & 0x0FFF
    rand_b = int.from_bytes(digest[2:10]) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisSource(Source):
    """Reads a stream (consumer group) or a list; see the module docstring."""

    Config = RedisSourceConfig
    mode = "stream"

    def __init__(self, config: RedisSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: RedisSourceConfig = config
        self.consumer = config.consumer or f"{ctx.gateway_id}"
        self.processing = config.processing or f"{config.key}:processing"
        self.done_key = f"{self.processing}:done"
        self.where = safe_redis_url(config.url)
        self._client: Any = None
        self._to_ack: list[str] = []  # committed entries (stream ids) not yet acknowledged
        # list: items counted as the position is (see _moved): committed up to _remove_upto,
        # removed from processing (the done counter) up to _removed as last seen or set
        self._remove_upto = 0
        self._removed = 0
        self._done_unsure = False  # a removal's answer was lost: read the done counter
        self._list_started = False  # list: the last run's items were sorted out
        self._recovered = False  # the entries pending at the start were sorted out
        self._position: Any = None  # stream: last committed id; list: items committed
        self._moved = 0  # list: items moved into processing, counted as the position is
        self._next_claim = 0.0
        self._claim_from = "0-0"
        self._recover_from = "-"  # stream: the pending entries at the start, page by page
        self._handed: str | None = None  # stream: the highest entry id handed over
        self._scope = f"{ctx.gateway_id}/{ctx.name}"
        # What a position is of, stored after it (and a NUL): a position of another stream,
        # group or processing list is not taken for this one's (versions before stored none)
        if config.mode == "stream":
            whose = {"stream": config.key, "group": config.group, "consumer": self.consumer}
        else:
            whose = {"list": config.key, "processing": self.processing}
        self._whose = orjson.dumps(whose)
        self._mark = b"\0" + self._whose
        fields = [n for _, n, _, _ in string.Formatter().parse(config.topic) if n]
        self._fields = [n for n in fields if n not in ("key", "source")]
        self._fixed = {"key": _level(config.key), "source": _level(ctx.name)}
        self.read_count = 0
        self.claimed = 0
        self.skipped = 0

    # -- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        cfg = self.config
        options: dict[str, Any] = {
            "socket_connect_timeout": cfg.connect_timeout,
            "socket_timeout": cfg.timeout + cfg.block,
            "retry": Retry(NoBackoff(), 0),  # the engine owns retries and backoff
        }
        if cfg.username is not None:
            options["username"] = cfg.username
        if cfg.password is not None:
            options["password"] = cfg.password
        if cfg.url.startswith("rediss://") and cfg.ca_file:
            options["ssl_ca_certs"] = cfg.ca_file
        client: Any = None
        try:
            client = Redis.from_url(cfg.url, **options)
            await client.ping()
            if cfg.mode == "stream":
                try:
                    await client.xgroup_create(
                        cfg.key, cfg.group, "0" if cfg.start == "beginning" else "$", mkstream=True
                    )
                    self.ctx.log.info("created consumer group %s on stream %s", cfg.group, cfg.key)
                except redis_errors.ResponseError as err:
                    if "BUSYGROUP" not in str(err):
                        raise
        except ValueError:
            raise PermanentError(
                f"redis-py cannot read the url {self.where}: percent-encode #, /, ? and @"
                " in user and password"
            ) from None
        except (redis_errors.RedisError, OSError) as err:
            if client is not None:
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    await client.aclose()
            refusal = _refusal(err)
            if refusal is not None:
                raise PermanentError(f"{self.where} refused us: {refusal}") from err
            if isinstance(err, redis_errors.ResponseError):  # WRONGTYPE: not a stream
                raise PermanentError(f"{self.where}: key {cfg.key}: {err}") from err
            raise RetryableError(f"cannot connect to {self.where}: {err}") from err
        self._client = client
        self.ctx.log.info("connected to %s (%s %s)", self.where, cfg.mode, cfg.key)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await self._settle(client)  # what is committed: acknowledged now
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await client.aclose()

    # -- acknowledgements (after the store's commit) -------------------------------------

    def _acker(self, entry_id: str) -> Any:
        return lambda: self._to_ack.append(entry_id)

    def _remover(self) -> None:
        self._remove_upto += 1

    async def _settle(self, client: Any) -> None:
        """Tell Redis what the store has committed since the last read."""
        if self._to_ack:
            ids, self._to_ack = self._to_ack, []
            try:
                await client.xack(self.config.key, self.config.group, *ids)
            except BaseException:
                self._to_ack[:0] = ids
                raise
        if self._remove_upto > self._removed:
            # After a removal whose answer did not come, as many as the done counter says
            # are left, not a count of our own: made again, it took items the store did not
            # have yet. Otherwise the counter is where this source left it: not read (a
            # round trip more at every read).
            upto = self._remove_upto  # acks arriving during the awaits: the next removal
            done = self._removed
            if self._done_unsure:
                done = int(await client.get(self.done_key) or 0)
            n = upto - done
            if n > 0:
                self._done_unsure = True  # until the answer comes
                async with client.pipeline(transaction=True) as pipe:
                    pipe.lpop(self.processing, n)
                    pipe.incrby(self.done_key, n)
                    await pipe.execute()
            self._done_unsure = False
            self._removed = upto

    # -- reading -----------------------------------------------------------------------

    async def read(self) -> list[Message]:
        client = self._client
        if client is None:
            raise RetryableError(f"not connected to {self.where}")
        try:
            await self._settle(client)
            if self.config.mode == "list":
                return await self._read_list(client)
            return await self._read_stream(client)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as err:
            self._done_unsure = True  # what became of a removal sent is not known
            if self._recovered:
                # An XREADGROUP whose answer was lost delivered its entries all the same:
                # pending for this consumer, never seen. Read again with the engine's
                # backoff, they came only with XAUTOCLAIM after claim_idle, as taken over;
                # and a restart before it found them at or before the position that newer
                # entries had moved past them, delivered once: acknowledged, never stored.
                # So the entries pending after the last one handed over are read first; in
                # list mode, for the same reason, the items in the processing list after
                # those handed over.
                self._recovered = False
                self._recover_from = "-" if self._handed is None else f"({self._handed}"
            raise RetryableError(f"reading {self.config.key} on {self.where}: {err}") from err
        except redis_errors.RedisError as err:
            refusal = _refusal(err)
            if refusal is not None:
                raise PermanentError(f"{self.where} refused us: {refusal}") from err
            if "NOGROUP" in str(err):  # the group or the stream was deleted: make it again
                raise RetryableError(f"{self.where}: {err}") from err
            raise PermanentError(f"reading {self.config.key} on {self.where}: {err}") from err

    async def _load_position(self) -> None:
        stored = await self.ctx.position()
        self._position = None
        if stored is None:
            return
        value, marked, whose = stored.partition(b"\0")
        if marked and whose != self._whose:
            # Another stream, group or processing list (the source's keys changed): its
            # position taken for this one acknowledged entries (removed items) never stored.
            self.ctx.log.warning(
                "the stored position is for %s, not %s; what is pending for this source is"
                " read again",
                whose.decode(errors="replace"),
                self._whose.decode(),
            )
            return
        self._position = value.decode(errors="replace")

    async def _read_stream(self, client: Any) -> list[Message]:
        cfg = self.config
        if not self._recovered:
            await self._load_position()
            messages = await self._recover_stream(client)
            if messages is not None:
                return messages
            self._recovered = True
        now = self.ctx.clock.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + cfg.claim_idle / 2
            messages = await self._claim(client)
            if messages:
                return messages
        reply = await client.xreadgroup(
            cfg.group, self.consumer, {cfg.key: ">"}, count=cfg.count, block=int(cfg.block * 1000)
        )
        entries = reply[0][1] if reply else []
        if entries:  # in the stream's order: the last is the highest
            self._hand(entries[-1][0].decode())
        return [self._stream_message(e, position=True) for e in entries]

    async def _recover_stream(self, client: Any) -> list[Message] | None:
        """At the start: this consumer's pending entries, a page at a time (None when
        there are none left). Those at or before the committed position, read once, are
        in the store already: acknowledged now, not read again."""
        cfg = self.config
        pending = await client.xpending_range(
            cfg.key,
            cfg.group,
            min=self._recover_from,
            max="+",
            count=cfg.count,
            consumername=self.consumer,
        )
        if not pending:
            return None
        try:
            position = None if self._position is None else _entry_key(self._position)
        except ValueError:  # no entry id: what is pending is read again
            position = None
        done, theirs, mine = [], [], []
        for p in pending:
            entry_id = p["message_id"].decode()
            if position is None or _entry_key(entry_id) > position:
                mine.append(entry_id)  # after the position: not stored (unless taken over)
            elif p["times_delivered"] == 1:
                done.append(entry_id)
            else:  # taken over from another consumer: stored or not, the id cannot tell
                theirs.append(entry_id)
        if done:
            await client.xack(cfg.key, cfg.group, *done)
            self.skipped += len(done)
            self.ctx.log.info(
                "%d entries pending since the last run were stored already: acknowledged",
                len(done),
            )
        if not (theirs or mine):
            self._recover_from = "(" + pending[-1]["message_id"].decode()
            return []
        read: list[tuple[Any, bool]] = []  # (entry, whether it moves the position)
        if theirs:
            claimed = await client.xclaim(cfg.key, cfg.group, self.consumer, 0, theirs)
            read += [(e, False) for e in claimed]
        if mine:
            # Read again as delivered once and with their positions, as at their first read:
            # the count XCLAIM adds (2) marked them as taken over from another consumer, so
            # a second crash, after their commit and before their XACK, read them again.
            claimed = await client.xclaim(cfg.key, cfg.group, self.consumer, 0, mine, retrycount=1)
            read += [(e, True) for e in claimed]
        gone = {*theirs, *mine} - {e[0].decode() for e, _ in read}
        if gone:  # trimmed from the stream meanwhile: nothing to read
            await client.xack(cfg.key, cfg.group, *gone)
        # only now: a page that failed on its way is read again, its entries again `mine`
        # (passed over, they would be acknowledged at the next start once the position
        # moved past them, never stored)
        self._recover_from = "(" + pending[-1]["message_id"].decode()
        read = [(e, moves) for e, moves in read if e[1] is not None]
        if read:
            self._hand(max((e[0].decode() for e, _ in read), key=_entry_key))
        return [self._stream_message(e, position=moves) for e, moves in read]

    async def _claim(self, client: Any) -> list[Message]:
        cfg = self.config
        reply = await client.xautoclaim(
            cfg.key,
            cfg.group,
            self.consumer,
            int(cfg.claim_idle * 1000),
            start_id=self._claim_from,
            count=cfg.count,
        )
        self._claim_from = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        entries = [e for e in reply[1] if e[1] is not None]
        if entries:
            self._hand(entries[-1][0].decode())  # from `start_id` on, in the stream's order
            self.claimed += len(entries)
            self.ctx.log.warning(
                "took over %d entries another consumer of group %s left pending",
                len(entries),
                cfg.group,
            )
        return [self._stream_message(e, position=False) for e in entries]

    def _hand(self, entry_id: str) -> None:
        """Note `entry_id`, the highest of a read, as handed over (see `read`): once a read,
        not per entry."""
        if self._handed is None or _entry_key(entry_id) > _entry_key(self._handed):
            self._handed = entry_id

    def _stream_message(self, entry: Any, position: bool) -> Message:
        cfg = self.config
        raw_id, fields = entry
        entry_id = raw_id.decode()
        content = fields.get(cfg.field.encode()) if cfg.field is not None else None
        reject = None
        if content is None:  # all fields; an entry without `field`: kept whole, dead-lettered
            content = orjson.dumps({_text(k): _text(v) for k, v in fields.items()})
            if cfg.field is not None:  # it became an empty FlowFile, delivered as data
                reject = f"the entry has no field {cfg.field!r} (its fields are the content)"
        values = dict(self._fixed)
        for name in self._fields:
            value = fields.get(name.encode())
            values[name] = _level(value.decode(errors="replace")) if value is not None else "_"
        ff = FlowFile(
            entry_flowfile_id(cfg.key, entry_id, self._scope),
            cfg.topic.format_map(values),
            {"redis.key": cfg.key, "redis.id": entry_id},
            content,
            self.ctx.clock.now_ns(),
        )
        self.read_count += 1
        return Message(
            ff,
            ack=self._acker(entry_id),
            position=entry_id.encode() + self._mark if position else None,
            reject=reject,
        )

    async def _read_list(self, client: Any) -> list[Message]:
        cfg = self.config
        if not self._recovered:
            if not self._list_started:
                await self._load_position()
                await self._recover_list(client)
                # only now: a recovery that failed on its way (its removal made, the answer
                # lost) is made again from the store's position and the done counter
                self._list_started = True
            # moved and never read (at the last run, or by a move whose answer was lost with
            # the connection), after those handed over: read first, a page at a time
            offset = max(self._moved - int(await client.get(self.done_key) or 0), 0)
            left = await client.lrange(self.processing, offset, offset + cfg.count - 1)
            if len(left) < cfg.count:
                self._recovered = True
            if left:
                return [self._list_message(item) for item in left]
        first = await client.blmove(cfg.key, self.processing, cfg.block, "LEFT", "RIGHT")
        if first is None:
            return []
        items = [first]
        # as many moves as there are items (another reader may take some meanwhile: None),
        # not count - 1 of them: an item at a time, 499 commands for nothing each
        more = min(cfg.count - 1, await client.llen(cfg.key)) if cfg.count > 1 else 0
        if more:
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(more):
                    pipe.lmove(cfg.key, self.processing, "LEFT", "RIGHT")
                items.extend(i for i in await pipe.execute() if i is not None)
        return [self._list_message(item) for item in items]

    async def _recover_list(self, client: Any) -> None:
        """At the start: remove the items the store has (its position counts them) that
        the last run had no time to remove from the processing list."""
        try:
            committed = int(self._position or 0)
        except ValueError:  # a stream's entry id, stored before positions said whose
            self.ctx.log.warning(
                "the stored position %s is no count of list items; what is in %s is read again",
                self._position,
                self.processing,
            )
            committed = 0
        done = int(await client.get(self.done_key) or 0)
        stored = max(committed - done, 0)
        if stored:
            async with client.pipeline(transaction=True) as pipe:
                pipe.lpop(self.processing, stored)
                pipe.incrby(self.done_key, stored)
                await pipe.execute()
            self.skipped += stored
            self.ctx.log.info(
                "%d items in %s were stored before the last stop: removed",
                stored,
                self.processing,
            )
        self._moved = max(committed, done)
        self._position = self._removed = self._remove_upto = self._moved

    def _list_message(self, item: bytes) -> Message:
        cfg = self.config
        self._moved += 1
        self.read_count += 1
        ff = FlowFile.create(
            cfg.topic.format_map(self._fixed),
            item,
            {"redis.key": cfg.key},
            self.ctx.clock.now_ns(),
        )
        return Message(ff, ack=self._remover, position=str(self._moved).encode() + self._mark)

    def status(self) -> dict[str, object]:
        return {
            "key": self.config.key,
            "mode": self.config.mode,
            "read": self.read_count,
            "claimed": self.claimed,
            "pending_acks": len(self._to_ack) + self._remove_upto - self._removed,
        }

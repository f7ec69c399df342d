"""The SQLite store: every FlowFile stays here until each of its sinks has it.

One connection, driven from one dedicated thread, so that each micro-batch is
a single call that runs a whole transaction (FlowFiles, dead letters,
processor state, redelivery marks) and each sink read or cursor advance is one
call too. aiosqlite would add a thread hop per statement; here it is one per
batch.

Tables
  flowfiles     seq (AUTOINCREMENT: keys never repeat, even after the table
                empties), the FlowFile, `sinks` (bit mask of the sinks that still
                want it) and its size in bytes
  sinks         name -> bit and cursor (the last seq delivered or skipped)
  dead_letters  FlowFiles that can never be delivered, with the reason
  state         processor state and source positions, by component name
  inbound       (source, slot) -> digest of the last committed message and its
                number among that source's messages, used to recognise a broker's
                redelivery of a message already stored
  inbound_held  (source, packet id) of MQTT QoS 2 messages stored and answered with
                PUBREC whose PUBREL has not come yet (see `SourceMarks`)
  inbound_ids   per source: the last packet id the broker handed out, how many
                times in a row its ids moved forward, and whether it ever reused one
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from gateway.core.component import MARK_DUP, MARK_QOS2
from gateway.core.errors import GatewayError
from gateway.core.flowfile import FlowFile, attributes_json

log = logging.getLogger("gateway.store")
T = TypeVar("T")

MAX_SINKS = 62
ROW_OVERHEAD = 96  # bytes of SQLite bookkeeping counted per stored FlowFile
TAIL_MAX = 10_000  # newest FlowFiles kept in memory for sinks that are caught up
PURGE_CHUNK = 50_000  # delivered FlowFiles deleted per maintenance pass
# A redelivered message matches a stored one only if that one is among the source's
# last REDELIVERY_WINDOW messages; see `committed`.
REDELIVERY_WINDOW = 32_768

_MARKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbound_held (
    source TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (source, packet_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbound_ids (
    source TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL,
    run INTEGER NOT NULL,
    reused INTEGER NOT NULL
);
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS flowfiles (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    attributes TEXT NOT NULL,
    content BLOB NOT NULL,
    created INTEGER NOT NULL,
    lineage TEXT NOT NULL,
    sinks INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sinks (
    name TEXT PRIMARY KEY,
    bit INTEGER NOT NULL UNIQUE,
    cursor INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    attributes TEXT NOT NULL,
    content BLOB NOT NULL,
    created INTEGER NOT NULL,
    lineage TEXT NOT NULL,
    origin TEXT NOT NULL,
    sink TEXT,
    reason TEXT NOT NULL,
    failed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    value BLOB
);
CREATE TABLE IF NOT EXISTS replay (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    attributes TEXT NOT NULL,
    content BLOB NOT NULL,
    created INTEGER NOT NULL,
    lineage TEXT NOT NULL,
    sink TEXT
);
CREATE TABLE IF NOT EXISTS inbound (
    source TEXT NOT NULL,
    slot INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (source, slot)
) WITHOUT ROWID;
"""

_INSERT = "INSERT INTO flowfiles (id, topic, attributes, content, created, lineage, sinks, size)"
_UPSERT_INBOUND = (
    "INSERT INTO inbound (source, slot, digest)",
    " ON CONFLICT (source, slot) DO UPDATE SET digest = excluded.digest",
)
_ROWS_PER_STATEMENT = 256


@cache
def _values_sql(head: str, width: int, rows: int, tail: str) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([one] * rows)}{tail}"


def _insert_rows(
    db: sqlite3.Connection, head: str, rows: list[tuple[Any, ...]], tail: str = ""
) -> None:
    """INSERT `rows` with a few statements of up to 256 rows each.

    The sqlite3 module lets go of the GIL around every step, and `executemany`
    steps once per row: while the event loop keeps the other thread busy, each
    step then waits up to the interpreter's switch interval (5 ms) to get the GIL
    back, and a batch of a thousand rows takes seconds. A multi-row statement is
    one step. The row counts are powers of two so that few statements are ever
    prepared (the sqlite3 module caches them).
    """
    if not rows:
        return
    width = len(rows[0])
    # SQLite before 3.32 binds at most 999 variables in a statement
    most = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    i, n = 0, len(rows)
    while i < n:
        k = _ROWS_PER_STATEMENT
        while k > n - i or k > most:
            k >>= 1
        db.execute(_values_sql(head, width, k, tail), list(chain.from_iterable(rows[i : i + k])))
        i += k


_INSERT_DEAD = (
    "INSERT INTO dead_letters (id, topic, attributes, content, created, lineage, origin, sink,"
    " reason, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class StoreError(GatewayError):
    """The store cannot write (disk full, damaged file)."""


@dataclass
class DeadLetter:
    flowfile: FlowFile
    origin: str
    reason: str
    sink: str | None = None


@dataclass
class Batch:
    """What one ingest transaction writes."""

    rows: list[tuple[FlowFile, int]]
    dead: list[DeadLetter]
    state: dict[str, bytes | None]
    inbound: list[tuple[str, int, bytes]]
    replayed: list[int] = field(default_factory=list)


def _encode(ff: FlowFile, mask: int) -> tuple[Any, ...]:
    attrs = attributes_json(ff.attributes)
    lineage = ",".join(ff.lineage)
    size = len(ff.content) + len(attrs) + len(ff.topic) + ROW_OVERHEAD
    return (ff.id, ff.topic, attrs, ff.content, ff.created, lineage, mask, size)


_attributes_of: dict[str, dict[str, str]] = {}


def _decode(row: tuple[Any, ...]) -> FlowFile:
    _, fid, topic, attrs, content, created, lineage = row[:7]
    # The same few attribute texts repeat; decode each once (FlowFiles never change them).
    attributes = _attributes_of.get(attrs)
    if attributes is None:
        if len(_attributes_of) >= 8192:
            _attributes_of.clear()
        attributes = _attributes_of[attrs] = json.loads(attrs)
    return FlowFile(
        fid, topic, attributes, content, created, tuple(lineage.split(",")) if lineage else ()
    )


class Store:
    """The durable buffer between ingest and the sinks.

    `max_bytes` bounds what the FlowFiles take (content, topic, attributes and
    a per-row overhead). When it is reached, the oldest FlowFiles are deleted
    (counted and logged) unless a sink with overflow `block` still waits for
    them; what is left for such sinks makes `over_budget` true, so the engine
    stops taking input until they drain. `overflow` is the default policy,
    `set_overflow` gives sinks their own.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 1 << 30,
        overflow: str = "drop_oldest",
        synchronous: str = "normal",
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.synchronous = synchronous
        self.bytes = 0
        self.dropped = 0
        self.dead_count = 0
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._bits: dict[str, int] = {}
        self._cursors: dict[str, int] = {}
        self._depth: dict[str, int] = {}
        self._inbound: dict[tuple[str, int], bytes] = {}  # digest + number, 8 bytes each
        self._numbered: dict[str, int] = {}  # source -> number of its last committed message
        self._held: dict[str, set[int]] = {}  # QoS 2 packet ids between PUBREC and PUBREL
        self._ids: dict[str, tuple[int, int, bool]] = {}  # source -> (last id, run, reused)
        self._listeners: list[Callable[[], None]] = []
        self._last_maintenance = 0.0
        self._policies: dict[str, str] = {}
        self._futile: tuple[int, tuple[int, ...]] | None = None
        self._tail: list[tuple[int, FlowFile, int]] = []
        self._tail_first = 0

    # -- lifecycle -------------------------------------------------------

    async def open(self, sinks: Iterable[str] = ()) -> None:
        """Open (or create) the database and register the sinks in use."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        await self._call(self._open_sync, list(sinks))

    def _open_sync(self, sinks: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            log.warning("store: SQLite refused WAL mode on %s (got %s)", self.path, mode)
        db.execute(f"PRAGMA synchronous = {'FULL' if self.synchronous == 'full' else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA journal_size_limit = 67108864")
        db.execute("PRAGMA cache_size = -8192")
        db.executescript(SCHEMA)
        if "sink" not in {row[1] for row in db.execute("PRAGMA table_info(replay)")}:
            db.execute("ALTER TABLE replay ADD COLUMN sink TEXT")
        self._db = db
        for name, bit, cursor in db.execute("SELECT name, bit, cursor FROM sinks"):
            self._bits[name] = bit
            self._cursors[name] = cursor
        for name in sinks:
            self._register_sync(name)
        self.bytes = db.execute("SELECT coalesce(sum(size), 0) FROM flowfiles").fetchone()[0]
        self.dead_count = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        for name in self._bits:
            self._depth[name] = self._count_sync(name)
        for source, slot, mark in db.execute("SELECT source, slot, digest FROM inbound"):
            self._inbound[(source, slot)] = mark
            number = int.from_bytes(mark[8:16], "big")
            if number > self._numbered.get(source, 0):
                self._numbered[source] = number
        self._open_marks_sync(db)

    def _count_sync(self, name: str) -> int:
        return int(
            self._db.execute(  # type: ignore[union-attr]
                "SELECT count(*) FROM flowfiles WHERE seq > ? AND sinks & ?",
                (self._cursors[name], 1 << self._bits[name]),
            ).fetchone()[0]
        )

    def _register_sync(self, name: str) -> None:
        if name in self._bits:
            return
        used = set(self._bits.values())
        free = next((b for b in range(MAX_SINKS) if b not in used), None)
        if free is None:
            raise StoreError(f"at most {MAX_SINKS} sinks can share one store")
        # A new sink starts at the current end: it does not receive old data.
        end = self._db.execute("SELECT coalesce(max(seq), 0) FROM flowfiles").fetchone()[0]  # type: ignore[union-attr]
        self._db.execute(  # type: ignore[union-attr]
            "INSERT INTO sinks (name, bit, cursor) VALUES (?, ?, ?)", (name, free, end)
        )
        self._bits[name] = free
        self._cursors[name] = end
        self._depth[name] = 0

    async def register_sinks(self, names: Iterable[str]) -> None:
        for name in names:
            await self._call(self._register_sync, name)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._call(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close_sync(self) -> None:
        if self._db is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                log.warning("store: checkpoint at close failed: %s", err)
            self._db.close()
            self._db = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as err:
            raise StoreError(f"store {self.path}: {err}") from err

    # -- facts -----------------------------------------------------------

    def bit(self, sink: str) -> int:
        return 1 << self._bits[sink]

    def depth(self, sink: str) -> int:
        return self._depth.get(sink, 0)

    @property
    def over_budget(self) -> bool:
        """True when the budget is full of data that `block` sinks still wait for."""
        return self.bytes >= self.max_bytes

    def committed(self, source: str, slot: int, digest: bytes) -> bool:
        """True if the last message committed from `source` in `slot` had this digest and
        is recent: a redelivery of a message whose acknowledgement never arrived.

        A slot (an MQTT packet id) comes round again after 65,535 messages, and a
        sensor that repeats itself sends the same digest again: the broker's
        redelivery of such a message, never stored, must not match the old one. The
        messages whose acknowledgement was lost are the last few batches, so only a
        mark among the source's last REDELIVERY_WINDOW messages counts.
        """
        mark = self._inbound.get((source, slot))
        if mark is None or mark[:8] != digest:
            return False
        if len(mark) < 16:
            return True  # written before marks were numbered
        number = int.from_bytes(mark[8:16], "big")
        return number > self._numbered.get(source, 0) - REDELIVERY_WINDOW

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) after every ingest commit."""
        self._listeners.append(callback)

    # -- inbound marks: redeliveries, QoS 2 state, packet id evidence -----------

    def marks(self, source: str) -> SourceMarks:
        """The view of this store's inbound bookkeeping that source `source` gets."""
        return SourceMarks(self, source)

    def _open_marks_sync(self, db: sqlite3.Connection) -> None:
        db.executescript(_MARKS_SCHEMA)
        for source, packet_id in db.execute("SELECT source, packet_id FROM inbound_held"):
            self._held.setdefault(source, set()).add(packet_id)
        for source, last, run, reused in db.execute(
            "SELECT source, last_id, run, reused FROM inbound_ids"
        ):
            self._ids[source] = (last, run, bool(reused))

    def _marks_for(self, inbound: list[tuple[str, int, bytes]]) -> _Marks:
        """What the commit writes for the inbound messages of a batch.

        Numbers are taken now, before the commit's await: a commit that overlaps
        this one (a dead-letter replay) must not hand out the same ones or undo
        these. The packet id evidence is applied only once the commit is done, so
        that a batch retried after a failed commit does not count its ids twice.
        """
        digests = []
        held = []
        ids: dict[str, tuple[int, int, bool]] = {}
        numbered = self._numbered
        for source, slot, digest in inbound:
            flags = digest[8] if len(digest) > 8 else 0
            if not flags & MARK_DUP:
                state = ids.get(source) or self._ids.get(source) or (0, 0, False)
                ids[source] = _next_id(state, slot)
            if flags & MARK_QOS2:
                held.append((source, slot))
                continue
            number = numbered[source] = numbered.get(source, 0) + 1
            digests.append((source, slot, digest[:8] + number.to_bytes(8, "big")))
        return _Marks(digests, held, ids)

    @staticmethod
    def _write_marks_sync(db: sqlite3.Connection, marks: _Marks) -> None:
        """Part of the ingest transaction: the marks go in with the FlowFiles or not at all."""
        if marks.digests:
            _insert_rows(db, _UPSERT_INBOUND[0], marks.digests, _UPSERT_INBOUND[1])
        if marks.held:
            db.executemany(
                "INSERT OR IGNORE INTO inbound_held (source, packet_id) VALUES (?, ?)", marks.held
            )
        if marks.ids:
            db.executemany(
                "INSERT INTO inbound_ids (source, last_id, run, reused) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (source) DO UPDATE SET last_id = excluded.last_id,"
                " run = excluded.run, reused = excluded.reused",
                [(source, *state) for source, state in marks.ids.items()],
            )

    def _marks_committed(self, marks: _Marks) -> None:
        for source, slot, mark in marks.digests:
            self._inbound[(source, slot)] = mark
        for source, packet_id in marks.held:
            self._held.setdefault(source, set()).add(packet_id)
        self._ids.update(marks.ids)

    def _release_sync(self, source: str, ids: list[int]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            db.executemany(
                "DELETE FROM inbound_held WHERE source = ? AND packet_id = ?",
                [(source, i) for i in ids],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _new_session_sync(self, source: str) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM inbound_held WHERE source = ?", (source,))
            db.execute("DELETE FROM inbound WHERE source = ?", (source,))
            db.execute("UPDATE inbound_ids SET last_id = 0, run = 0 WHERE source = ?", (source,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- ingest ------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Write one micro-batch in one transaction; return once it is durable."""
        encoded = [_encode(ff, mask) for ff, mask in batch.rows]
        added = sum(row[7] for row in encoded)
        # Numbers are taken now, before the await: a commit that overlaps this one (a
        # dead-letter replay) must not hand out the same ones or undo these.
        marks = self._marks_for(batch.inbound)
        last = await self._call(self._commit_sync, encoded, batch, marks)
        self.bytes += added
        if batch.rows:
            self._remember(last - len(batch.rows) + 1, batch.rows)
        masks: dict[int, int] = {}
        for _, mask in batch.rows:
            masks[mask] = masks.get(mask, 0) + 1
        for mask, count in masks.items():
            for name, bit in self._bits.items():
                if mask >> bit & 1:
                    self._depth[name] += count
        self._marks_committed(marks)
        self.dead_count += len(batch.dead)
        for callback in self._listeners:
            callback()
        await self.make_room()

    def _commit_sync(self, encoded: list[tuple[Any, ...]], batch: Batch, marks: _Marks) -> int:
        """Returns the seq of the last FlowFile inserted (they get consecutive seqs)."""
        db = self._db
        assert db is not None
        now = time.time_ns()
        last = 0
        db.execute("BEGIN")
        try:
            if encoded:
                _insert_rows(db, _INSERT, encoded)
                last = db.execute("SELECT last_insert_rowid()").fetchone()[0]
            if batch.dead:
                db.executemany(_INSERT_DEAD, [self._dead_row(d, now) for d in batch.dead])
            if batch.state:
                db.executemany(
                    "INSERT INTO state (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    list(batch.state.items()),
                )
            self._write_marks_sync(db, marks)
            if batch.replayed:
                db.executemany("DELETE FROM replay WHERE seq = ?", [(s,) for s in batch.replayed])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(last)

    def _remember(self, first: int, rows: list[tuple[FlowFile, int]]) -> None:
        """Keep the newest committed FlowFiles in memory, so caught-up sinks need no query.

        The tail is a run of consecutive seqs; a gap (another process inserted, or
        rows were dropped) starts it afresh.
        """
        tail = self._tail
        if not tail or self._tail_first + len(tail) != first:
            tail.clear()
            self._tail_first = first
        seq = first
        for ff, mask in rows:
            tail.append((seq, ff, mask))
            seq += 1
        if len(tail) > TAIL_MAX:
            cut = len(tail) - TAIL_MAX // 2
            del tail[:cut]
            self._tail_first += cut

    async def take_replay(self, limit: int) -> list[tuple[int, FlowFile, str | None]]:
        """Dead letters the CLI sent back (see `edge-stream dead-letters replay`).

        Each comes with the sink that refused it, or None when a route refused it
        and it must be routed again. The engine commits them like new input, so
        the running gateway's counters and memory tail stay right.
        """
        rows = await self.query(
            "SELECT seq, id, topic, attributes, content, created, lineage, sink FROM replay"
            " ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [(row[0], _decode(row), row[7]) for row in rows]

    async def recount(self) -> None:
        """Re-read what the CLI may change behind the gateway's back (dead-letter count)."""
        self.dead_count = (await self.query("SELECT count(*) FROM dead_letters"))[0][0]

    @staticmethod
    def _dead_row(d: DeadLetter, now: int) -> tuple[Any, ...]:
        ff = d.flowfile
        attrs = attributes_json(ff.attributes)
        lineage = ",".join(ff.lineage)
        return (
            ff.id,
            ff.topic,
            attrs,
            ff.content,
            ff.created,
            lineage,
            d.origin,
            d.sink,
            d.reason,
            now,
        )

    async def make_room(self) -> None:
        """Drop what may be dropped to get under the budget (see `_drop_oldest_sync`)."""
        if self.bytes >= self.max_bytes:
            await self._call(self._drop_oldest_sync)

    def set_overflow(self, policies: dict[str, str]) -> None:
        """Per-sink overflow policies (`block` or `drop_oldest`) that override the default."""
        self._policies = dict(policies)

    def _blocking(self) -> list[tuple[int, str]]:
        return [
            (bit, name)
            for name, bit in self._bits.items()
            if self._policies.get(name, self.overflow) == "block"
        ]

    def _drop_oldest_sync(self) -> None:
        """Make room by dropping the oldest FlowFiles no `block` sink still waits for.

        What a `block` sink has not delivered yet is kept; if that alone fills the
        budget, `over_budget` stays true and the engine stops taking input.
        """
        db = self._db
        assert db is not None
        blocking = self._blocking()
        if len(blocking) == len(self._bits):
            return
        state = (self.bytes, tuple(self._cursors.values()))
        if state == self._futile:
            return  # nothing changed since a scan that found nothing to drop
        target = int(self.max_bytes * 0.95)
        dropped: list[int] = []
        after = 0
        scanned = 0
        while self.bytes > target and scanned < 200_000:
            # One step for the page (a row at a time would hand the GIL over per row).
            rows = json.loads(
                db.execute(
                    "SELECT json_group_array(json_array(seq, sinks, size)) FROM (SELECT seq,"
                    " sinks, size FROM flowfiles WHERE seq > ? ORDER BY seq LIMIT 1000)",
                    (after,),
                ).fetchone()[0]
            )
            if not rows:
                break
            scanned += len(rows)
            after = rows[-1][0]
            for seq, mask, size in rows:
                if self.bytes <= target:
                    break
                if any(mask >> bit & 1 and seq > self._cursors[name] for bit, name in blocking):
                    continue
                dropped.append(seq)
                self.bytes -= size
                for name, bit in self._bits.items():
                    if mask >> bit & 1 and seq > self._cursors[name]:
                        self._depth[name] -= 1
        if not dropped:
            self._futile = state
            return
        self._tail.clear()
        db.execute("BEGIN")
        try:
            db.execute(
                "DELETE FROM flowfiles WHERE seq IN (SELECT value FROM json_each(?))",
                (json.dumps(dropped),),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.dropped += len(dropped)
        log.error(
            "store: the buffer reached its budget of %d bytes; dropped the %d oldest FlowFiles"
            " (overflow: drop_oldest). Sinks are not keeping up or are down.",
            self.max_bytes,
            len(dropped),
        )

    # -- delivery ----------------------------------------------------------

    async def read(
        self, sink: str, after: int, limit: int
    ) -> tuple[list[tuple[int, FlowFile]], int]:
        """The next FlowFiles for `sink` after seq `after`.

        Returns the rows and the seq up to which this read saw everything for
        the sink (so a sink with nothing to do can still move its cursor on).
        """
        tail = self._tail
        first = self._tail_first
        if tail and first - 1 <= after < first + len(tail):
            bit = self.bit(sink)
            rows = []
            for seq, ff, mask in tail[after - first + 1 :]:
                if mask & bit:
                    rows.append((seq, ff))
                    if len(rows) == limit:
                        return rows, seq
            return rows, first + len(tail) - 1
        return await self._call(self._read_sync, self.bit(sink), after, limit)

    def _read_sync(
        self, mask: int, after: int, limit: int
    ) -> tuple[list[tuple[int, FlowFile]], int]:
        db = self._db
        assert db is not None
        rows = db.execute(
            "SELECT seq, id, topic, attributes, content, created, lineage FROM flowfiles"
            " WHERE seq > ? AND sinks & ? ORDER BY seq LIMIT ?",
            (after, mask, limit),
        ).fetchall()
        if len(rows) < limit:
            end = db.execute("SELECT coalesce(max(seq), 0) FROM flowfiles").fetchone()[0]
            seen = max(end, after)
        else:
            seen = rows[-1][0]
        return [(row[0], _decode(row)) for row in rows], seen

    def cursor(self, sink: str) -> int:
        return self._cursors[sink]

    async def advance(self, sink: str, upto: int, delivered: int, dead: list[DeadLetter]) -> None:
        """Move `sink`'s cursor to `upto` after a delivery, recording its dead letters."""
        await self._call(self._advance_sync, sink, upto, dead)
        self._cursors[sink] = upto
        self._depth[sink] = max(0, self._depth[sink] - delivered - len(dead))
        self.dead_count += len(dead)

    def _advance_sync(self, sink: str, upto: int, dead: list[DeadLetter]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            if dead:
                now = time.time_ns()
                db.executemany(_INSERT_DEAD, [self._dead_row(d, now) for d in dead])
            db.execute("UPDATE sinks SET cursor = ? WHERE name = ?", (upto, sink))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- housekeeping --------------------------------------------------------

    async def maintain(self, active: Iterable[str]) -> int:
        """Delete what every active sink has, and keep the file and WAL small.

        Returns the number of FlowFiles purged.
        """
        names = [n for n in active if n in self._cursors]
        if not names:
            return 0
        upto = min(self._cursors[n] for n in names)
        purged, freed = await self._call(self._purge_sync, upto)
        self.bytes -= freed
        return purged

    def _purge_sync(self, upto: int) -> tuple[int, int]:
        db = self._db
        assert db is not None
        # At most PURGE_CHUNK rows a call, so a drained backlog does not hold up the
        # store thread (sinks read and commit on it); the next call takes the rest.
        # Counted first and deleted in one statement: one SQLite step each (a
        # RETURNING clause would step, and hand the GIL around, once per row).
        first = db.execute("SELECT min(seq) FROM flowfiles").fetchone()[0]
        purged = freed = 0
        if first is not None and first <= upto:
            last = min(upto, first + PURGE_CHUNK)
            purged, freed = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM flowfiles WHERE seq <= ?", (last,)
            ).fetchone()
            db.execute("DELETE FROM flowfiles WHERE seq <= ?", (last,))
        now = time.monotonic()
        if now - self._last_maintenance > 5.0:
            self._last_maintenance = now
            db.execute("PRAGMA incremental_vacuum(2048)")
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if not db.execute("SELECT 1 FROM flowfiles LIMIT 1").fetchone():
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(purged), int(freed)

    async def load_state(self) -> dict[str, bytes]:
        rows = await self._call(
            lambda: self._db.execute("SELECT name, value FROM state").fetchall()  # type: ignore[union-attr]
        )
        return {name: value for name, value in rows if value is not None}

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the store's thread (status page, CLI)."""
        return await self._call(
            lambda: self._db.execute(sql, params).fetchall()  # type: ignore[union-attr]
        )


class _Marks(NamedTuple):
    """The inbound bookkeeping of one ingest commit (see `Store._marks_for`)."""

    digests: list[tuple[str, int, bytes]]  # (source, slot, digest + number)
    held: list[tuple[str, int]]  # (source, QoS 2 packet id) answered with PUBREC
    ids: dict[str, tuple[int, int, bool]]  # source -> (last id, run, reused)


def _next_id(state: tuple[int, int, bool], packet_id: int) -> tuple[int, int, bool]:
    """The evidence about a broker's packet ids after it handed out `packet_id` (not DUP).

    Ids run from 1 to 65535 and then come round. A step forward (by up to half
    the range: gaps are fine, messages can expire in the broker) extends the
    run; the same id again or a step back means the broker reuses ids it freed,
    which is remembered for good.
    """
    last, run, reused = state
    if last:
        if 1 <= (packet_id - last) % 65535 < 32768:
            run += 1
        else:
            run, reused = 0, True
    return packet_id, run, reused


class SourceMarks:
    """One source's view of the store's inbound bookkeeping.

    QoS 1: `committed` says whether a DUP redelivery matches a message stored
    under that packet id recently, and `ids_counted` whether the broker's ids
    have been seen to move forward, never reused, over more than a given number
    of messages in a row (see gateway/sources/mqtt.py for why that makes the
    match safe). QoS 2: `held` is the set of packet ids stored and answered with
    PUBREC (written in the same commit as the FlowFiles); `release` forgets ids
    in a commit of its own (before PUBCOMP); `new_session` forgets everything
    the broker's old session could have sent again.
    """

    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source

    def committed(self, slot: int, digest: bytes) -> bool:
        return self.store.committed(self.source, slot, digest[:8])

    def ids_counted(self, more_than: int) -> bool:
        _last, run, reused = self.store._ids.get(self.source, (0, 0, False))
        return not reused and run > more_than

    def held(self) -> set[int]:
        return self.store._held.setdefault(self.source, set())

    async def release(self, ids: list[int]) -> None:
        await self.store._call(self.store._release_sync, self.source, ids)
        self.held().difference_update(ids)

    async def new_session(self) -> None:
        store = self.store
        await store._call(store._new_session_sync, self.source)
        self.held().clear()
        for key in [k for k in store._inbound if k[0] == self.source]:
            del store._inbound[key]
        _last, _run, reused = store._ids.get(self.source, (0, 0, False))
        if self.source in store._ids:
            store._ids[self.source] = (0, 0, reused)


def open_readonly(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A separate connection for the CLI, safe while the gateway runs (WAL)."""
    if not Path(path).exists():
        raise StoreError(f"no store at {path}: has the gateway run with this data_dir?")
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA busy_timeout = 10000")
    return db

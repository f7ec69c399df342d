"""The SQLite store: every FlowFile stays here until each of its sinks has it.

One connection, driven from one dedicated thread, so that each micro-batch is
a single call that runs a whole transaction (FlowFiles, dead letters,
processor state, redelivery marks) and each sink read or cursor advance is one
call too. aiosqlite would add a thread hop per statement; here it is one per
batch. What the CLI does to a store (dead letters, stats, reset) is in admin.py;
between them, these two modules hold every SQL statement run on the store.

Tables
  flowfiles     seq (AUTOINCREMENT: keys never repeat, even after the table
                empties), the FlowFile, `sinks` (bit mask of the sinks that still
                want it), its size in bytes and `crc`, a CRC32 of all of these
                (a row found corrupt loses the bit of the sink that read it)
  sinks         name -> bit and cursor (the last seq delivered or skipped)
  dead_letters  FlowFiles that can never be delivered, with the reason
  state         processor state (blobs), by component name
  state_kv      key/value state of components (`gateway.core.state`): one row per
                key, written with the batch that changed it; `seq` keeps key age
  state_reset   components whose state `edge-stream state reset` asked the running
                gateway to forget (it does so in its next commit)
  inbound       (source, slot) -> digest of the last committed message and its
                number among that source's messages, used to recognise a broker's
                redelivery of a message already stored
  inbound_held  (source, packet id) of MQTT QoS 2 messages stored and answered with
                PUBREC whose PUBREL has not come yet (see `SourceMarks`)
  inbound_ids   per source: the last packet id the broker handed out, how many
                times in a row its ids moved forward, and whether it ever reused one
  inbound_numbered  per source: how many messages with a packet id it committed
                (QoS 1 and 2: both use up ids; QoS 2 ones leave no `inbound` row)
  positions     per source: where it stopped reading (a database cursor, a stream
                entry id), written with the commit of the data it read up to there
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import json
import logging
import os
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from gateway.core.component import MARK_DUP, MARK_QOS2, MAX_SINKS
from gateway.core.errors import GatewayError, PermanentError
from gateway.core.flowfile import FlowFile, attributes_json
from gateway.core.throttle import LOG_INTERVAL, LogThrottle

log = logging.getLogger("gateway.store")
T = TypeVar("T")

# The disk under data_dir: a preallocated reserve file (store.reserve) is given up when
# SQLite finds the disk full, so that sinks can still move their cursors and purge what
# they delivered; intake pauses while less than DISK_LOW is free (the reserve counted as
# free) and resumes above DISK_OK once the reserve is back (it is made again as soon as
# DISK_OK is free, which leaves DISK_OK counted as free with it).
RESERVE_BYTES = 4 << 20
DISK_LOW = 8 << 20
DISK_OK = 12 << 20
# A reserve the file system refused for a reason other than space (a file-size limit,
# no fallocate, a read-only or failing disk) is tried again this rarely.
RESERVE_RETRY_S = 3600.0
APPLICATION_ID = 0x45535354  # "ESST" in the SQLite header: this file is an Edge Stream store
ROW_OVERHEAD = 96  # bytes of SQLite bookkeeping counted per stored FlowFile
# Overflow drop_oldest drops down to this share of buffer.max_bytes: a FlowFile larger than
# it would be dropped by the next commit before any sink had it.
KEEP_SHARE = 0.95
# The newest FlowFiles are kept in memory for sinks that are caught up: at most TAIL_MAX
# of them and TAIL_MAX_BYTES of their contents (at 250 KB payloads that is 32, not 10,000).
TAIL_MAX = 10_000
TAIL_MAX_BYTES = 8 << 20
HISTORY_KEEP = 1000  # reload records kept (`edge-stream config history`)
ALERT_EVENTS_KEEP = 1000  # alert events kept (firing, resolved) once sent
# ... and those still to be sent: more than the notifiers' queues hold (webhook 10000 at
# most, MQTT 1000), which drop the oldest, logged
ALERT_EVENTS_PENDING_KEEP = 20000
PURGE_CHUNK = 50_000  # delivered FlowFiles deleted per maintenance pass
SHORT_PURGE_BYTES = 1 << 20  # ... a transaction when the disk is short (see `_purge_sync`)
# ... and in one pass at most these bytes of rows walked, these seconds, these pages vacuumed
# (the store thread is shared with the sinks: a full disk does not stall delivery)
SHORT_PASS_BYTES = 16 << 20
SHORT_PASS_S = 0.5
SHORT_PASS_PAGES = 4096
VACUUM_MIN_PAGES = 1024  # free pages (4 MiB) past which the maintenance gives them back
# The dead letters have their own budget (buffer.dead_letters_max_bytes): past it, the
# oldest are deleted down to this share of it, DEAD_TRIM_CHUNK rows a transaction (as many
# as it takes, at each maintenance pass). A dead letter counts its content, topic,
# attributes and reason, and the overhead.
DEAD_KEEP_SHARE = 0.9
DEAD_TRIM_CHUNK = PURGE_CHUNK
DEAD_ROW_OVERHEAD = ROW_OVERHEAD
# The size of a dead letter in SQL (bytes, not characters: text is cast to a blob)
_DEAD_SIZE = (
    "length(content) + length(CAST(topic AS BLOB))"
    f" + length(CAST(attributes AS BLOB)) + length(CAST(reason AS BLOB)) + {DEAD_ROW_OVERHEAD}"
)
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
CREATE TABLE IF NOT EXISTS inbound_numbered (
    source TEXT PRIMARY KEY,
    number INTEGER NOT NULL
);
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS config_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    hash TEXT,
    trigger TEXT NOT NULL,
    outcome TEXT NOT NULL,
    changes TEXT NOT NULL,
    errors TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS flowfiles (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    attributes TEXT NOT NULL,
    content BLOB NOT NULL,
    created INTEGER NOT NULL,
    lineage TEXT NOT NULL,
    sinks INTEGER NOT NULL,
    size INTEGER NOT NULL,
    crc INTEGER
);
CREATE TABLE IF NOT EXISTS sinks (
    name TEXT PRIMARY KEY,
    bit INTEGER NOT NULL UNIQUE,
    cursor INTEGER NOT NULL,
    active INTEGER
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
CREATE TABLE IF NOT EXISTS state_kv (
    component TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (component, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_reset (
    component TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS replay (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    attributes TEXT NOT NULL,
    content BLOB NOT NULL,
    created INTEGER NOT NULL,
    lineage TEXT NOT NULL,
    sink TEXT,
    origin TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY,
    fired_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    body TEXT NOT NULL,
    pending TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    source TEXT PRIMARY KEY,
    position BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS inbound (
    source TEXT NOT NULL,
    slot INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (source, slot)
) WITHOUT ROWID;
"""

_INSERT = (
    "INSERT INTO flowfiles (id, topic, attributes, content, created, lineage, sinks, size, crc)"
)
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


def _octets(value: str | bytes) -> int:
    return len(value.encode() if isinstance(value, str) else value)


def _dead_bytes(rows: Iterable[tuple[Any, ...]]) -> int:
    """What dead letters count in their budget, from their `_INSERT_DEAD` rows: the
    same as `_DEAD_SIZE` says of them once stored."""
    return sum(
        _octets(r[1]) + _octets(r[2]) + _octets(r[3]) + _octets(r[8]) + DEAD_ROW_OVERHEAD
        for r in rows
    )


def dead_letter_bytes(db: sqlite3.Connection) -> int:
    """What the dead letters take, as their budget counts it (one pass over the table)."""
    return int(db.execute(f"SELECT coalesce(sum({_DEAD_SIZE}), 0) FROM dead_letters").fetchone()[0])


def _is_full(err: sqlite3.Error) -> bool:
    return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(err)


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _create(path: Path) -> None:
    """Create an empty store: built under another name and renamed into place, so that a
    store.db that exists is always a whole store (a crash midway leaves only the other)."""
    new = path.with_name(path.name + ".new")
    for leftover in (new, _wal(new), new.with_name(new.name + "-shm")):
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(new, isolation_level=None)
    try:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.executescript(SCHEMA)
        db.execute("PRAGMA journal_mode = WAL")
    finally:
        db.close()  # the last connection checkpoints and removes the WAL
    for target in (new, path.parent):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if target == new:
            os.replace(new, path)


def not_a_store(path: Path, uri: str | None = None) -> str | None:
    """Why the file at `path` is not an Edge Stream store, or None if it is one (`uri`:
    the SQLite URI to read it through instead of its path, see admin.read_only_uri)."""
    if path.is_symlink() and not path.exists():  # a disk not mounted, a link to itself
        return f"is a symbolic link to {os.readlink(path)}, which is not there"
    if not path.exists():
        return "is missing while its write-ahead log (-wal) is there"
    if not path.is_file():  # opened, a folder was an IsADirectoryError traceback
        return "is a folder, not a file" if path.is_dir() else "is not a regular file"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    try:
        with path.open("rb") as f:
            header = f.read(16)
    except OSError as err:
        unopenable(path, err)  # a permission or the disk: not the file
        return f"cannot be read ({err.strerror or err})"
    if header != b"SQLite format 3\x00":
        return f"is not a SQLite database ({size} bytes that do not start as one)"
    try:
        db = sqlite3.connect(uri or path, isolation_level=None, uri=uri is not None)
        try:
            if db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
                return None
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        finally:
            db.close()
    except sqlite3.DatabaseError as err:
        unopenable(path, err)
        return f"cannot be read ({err})"
    if not {"flowfiles", "sinks"} <= tables:
        return "is a SQLite database without the store's tables"
    return None  # a store written before the application id was set


def _trim_heap() -> None:
    """Return freed C heap to the system (glibc's malloc_trim); elsewhere, nothing."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def _run_then(
    then: Callable[[Any], None], failed: list[Exception], done: asyncio.Future[Any]
) -> None:
    """`Store._call`'s `then`, run as soon as the store thread's result is on the loop."""
    if done.cancelled() or done.exception() is not None:
        return
    try:
        then(done.result())
    except Exception as err:  # for the caller to raise (or `_unseen` to log)
        failed.append(err)


class StoreError(GatewayError):
    """The store cannot write (disk full, damaged file)."""


class DataDirInUse(StoreError):
    """Another process holds the data_dir's lock (a gateway runs on it)."""


class StoreDamaged(StoreError, PermanentError):
    """SQLite found the store file damaged (SQLITE_CORRUPT): retrying cannot help; a sink
    that meets it stops, shown as failed with this reason."""


# What SQLite says when it cannot open or write a file, not when the file is bad: a full
# disk (it cannot make the -shm file), an I/O error, a read-only or forbidden folder.
_NOT_THE_FILE = (
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_PERM,
)


# ... of which these say the disk has no room (a full disk cannot make the -shm file)
_NO_ROOM = (
    sqlite3.SQLITE_IOERR_SHMOPEN,
    sqlite3.SQLITE_IOERR_SHMSIZE,
    sqlite3.SQLITE_IOERR_SHMMAP,
)
# The errors of Python's own open that are about the disk or a permission, not the file
_NOT_THE_FILE_ERRNO = (errno.EACCES, errno.EPERM, errno.EIO)


def unopenable(path: Path, err: sqlite3.Error | OSError) -> None:
    """Raise a one-line StoreError if `err`, met checking the store at `path`, is about
    the disk or a permission rather than the file: such a store is not to be called
    damaged (a full disk had the start, and `store reset`, take a whole valid store for
    one and tell to move it aside, its backlog with it). The line says what to see to:
    room on the disk only when the disk is short of it, else the permission or the disk
    that could not be read (a failing SD card)."""
    if isinstance(err, OSError):
        if err.errno not in _NOT_THE_FILE_ERRNO:
            return
        code, what = None, err.strerror or str(err)
        denied = err.errno != errno.EIO
    else:
        code = getattr(err, "sqlite_errorcode", None)
        if code is None or code & 0xFF not in _NOT_THE_FILE:
            return
        what = str(err)
        denied = code & 0xFF in (sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY)
    try:
        st = os.statvfs(path.parent)
        room: int | None = st.f_bavail * st.f_frsize
        free = f"{st.f_bavail * st.f_frsize / 1048576:.1f} MiB free under {path.parent}"
    except OSError:
        room, free = None, f"? MiB free under {path.parent}"
    if code is not None and (code & 0xFF == sqlite3.SQLITE_FULL or code in _NO_ROOM):
        todo = "make room on the disk, then try again"
    elif read_only_fs(path):
        todo = (
            f"the file system of {path.parent} is mounted read-only (a disk remounted so"
            " after errors: dmesg says why): mount it read-write, then try again"
        )
    elif denied:
        todo = (
            "permission denied: let the gateway's user read and write it and its folder"
            " (or run this as that user), then try again"
        )
    elif room is not None and room < RESERVE_BYTES:
        todo = "make room on the disk (or see to it), then try again"
    elif code is not None and code & 0xFF == sqlite3.SQLITE_CANTOPEN:
        todo = "see to the disk and the folder's permissions, then try again"
    else:
        todo = "the disk could not be read: see to it (dmesg shows its errors), then try again"
    raise StoreError(
        f"{path}: cannot be opened ({what}; {free}); the file was not found damaged: {todo}"
    ) from err


def read_only_fs(path: Path) -> bool:
    """Whether the file system that holds `path` (a file or folder there) is read-only."""
    try:
        return bool(os.statvfs(path.resolve().parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def is_damaged(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(err)


def damaged_text(path: Path, err: sqlite3.Error) -> str:
    """The one line that says a store file is damaged and what to do about it."""
    return (
        f"store {path} is damaged ({err}): the FlowFiles in the damaged part cannot be"
        " read. Stop the gateway and run `edge-stream store reset -c CONFIG` (it moves the"
        f" file aside to {path.name}.corrupt-<time>; the gateway then starts empty)"
    )


# -- the data_dir lock ----------------------------------------------------------------

LOCK_NAME = ".lock"
_locks: dict[Path, list[int]] = {}  # data_dir -> [fd, holders] for this process


def hold_data_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Take the lock on `data_dir` (flock on <data_dir>/.lock) for this process.

    A second gateway on the same data_dir, or `edge-stream store reset` while a
    gateway runs, is refused by it. Holders in one process nest (a reload's new
    engine takes it before the old one lets go); `let_go_data_dir` undoes one.
    Returns the key to let go with.
    """
    key = Path(data_dir).resolve()
    held = _locks.get(key)
    if held is not None:
        held[1] += 1
        return key
    try:
        if key.exists() and not key.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder")
        key.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        # A file named as the data_dir, or a folder the gateway may not create, stopped
        # the start with a traceback.
        raise StoreError(
            f"gateway.data_dir {key}: cannot use it as the gateway's folder"
            f" ({err.strerror or err}); give a folder the gateway may write"
        ) from err
    lock = key / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        # A data_dir on a read-only file system stopped the start with a traceback.
        if err.errno == errno.EROFS:
            raise StoreError(
                f"gateway.data_dir {key}: the file system is mounted read-only (a disk"
                " remounted so after errors: dmesg says why), so the gateway's folder"
                f" cannot be used (it writes {lock}): mount it read-write, then try again"
            ) from err
        raise StoreError(
            f"gateway.data_dir {key}: cannot use it as the gateway's folder (cannot open"
            f" {lock}: {err.strerror or err}); give a folder the gateway may write"
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise DataDirInUse(
                f"{key}: another Edge Stream process uses this data_dir (it holds {lock});"
                " stop it first, or give this gateway its own gateway.data_dir"
            ) from err
        raise StoreError(f"{lock}: cannot lock the data_dir: {err}") from err
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as err:  # the pid is for people; a full disk must not stop the start
        log.warning("store: cannot write the pid into %s: %s", lock, err)
    _locks[key] = [fd, 1]
    return key


def let_go_data_dir(key: Path) -> None:
    """Undo one `hold_data_dir`; the last holder releases the lock."""
    held = _locks.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _locks[key]
        os.close(held[0])  # closing the only descriptor releases the flock


@dataclass
class DeadLetter:
    flowfile: FlowFile
    origin: str
    reason: str
    sink: str | None = None


@dataclass(frozen=True)
class DeadLetterSummary:
    """One line of the dead-letter list: what failed, where, why and when (the
    status API and `edge-stream dead-letters list`)."""

    seq: int
    id: str
    topic: str
    origin: str
    sink: str | None  # the sink that refused it; None when a route did
    reason: str
    failed_at: int  # ns since the epoch
    bytes: int  # of its content


def newest_dead_letters(db: sqlite3.Connection, limit: int) -> list[DeadLetterSummary]:
    """The newest `limit` dead letters, newest first."""
    rows = db.execute(
        "SELECT seq, id, topic, origin, sink, reason, failed_at, length(content)"
        " FROM dead_letters ORDER BY seq DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [DeadLetterSummary(*row) for row in rows]


def count_dead_letters(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])


@dataclass
class Batch:
    """What one ingest transaction writes."""

    rows: list[tuple[FlowFile, int]]
    dead: list[DeadLetter]
    state: dict[str, bytes | None]
    inbound: list[tuple[str, int, bytes]]
    replayed: list[int] = field(default_factory=list)
    # key/value state changes: (component, key, seq, value or None to delete)
    kv: list[tuple[str, str, int, bytes | None]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)  # components whose state goes
    positions: dict[str, bytes] = field(default_factory=dict)  # source -> its new position


CRC_V2 = 1 << 32  # marks a checksum that covers the sinks mask and size too


def _checksum(
    fid: str,
    topic: str,
    attrs: str,
    content: Any,
    created: int,
    lineage: str,
    sinks: int | None = None,
    size: int | None = None,
) -> int:
    """CRC32 of a stored FlowFile's fields, as they are written to and read from SQLite.

    With `sinks` and `size` (every row written since they were covered), the result
    carries CRC_V2 so that a reader knows which fields a stored checksum covers;
    rows written before keep a bare CRC32 of the other fields.
    """
    if isinstance(content, str):  # damage can turn the column into TEXT
        content = content.encode("utf-8", "surrogateescape")
    elif not isinstance(content, bytes | bytearray | memoryview):
        content = str(content).encode()
    if sinks is None:
        head = f"{fid}\0{topic}\0{attrs}\0{created}\0{lineage}\0"
        return zlib.crc32(content, zlib.crc32(head.encode()))
    # Most FlowFiles share their topic and attributes text with many others: the CRC of
    # those is computed once and continued with the fields of each FlowFile (this runs
    # twice per FlowFile, on write and on read, so it is on the hot path).
    start = _shared_crcs.get((topic, attrs))
    if start is None:
        if len(_shared_crcs) >= 4096:
            _shared_crcs.clear()
        start = _shared_crcs[(topic, attrs)] = zlib.crc32(f"{topic}\0{attrs}\0".encode())
    own = _CRC_INTS.pack(created, sinks, size or 0) + f"{fid}\0{lineage}".encode()
    return zlib.crc32(content, zlib.crc32(own, start)) | CRC_V2


_CRC_INTS = struct.Struct("<qQq")  # created (ns), sinks mask, size: as the checksum takes them

# (topic, attributes JSON) -> CRC32 of both, to continue from; bounded by count, and the
# keys are strings the store's tail and the sources keep anyway
_shared_crcs: dict[tuple[str, str], int] = {}


def _intact(row: tuple[Any, ...]) -> bool:
    """Whether a row read as (seq, id, topic, attributes, content, created, lineage, size,
    crc, sinks) matches its stored checksum (a row from before checksums has none)."""
    _, fid, topic, attrs, content, created, lineage, size, crc, sinks = row
    if crc is None:
        return True
    if int(crc) & CRC_V2:
        return _checksum(fid, topic, attrs, content, created, lineage, sinks, size) == int(crc)
    return _checksum(fid, topic, attrs, content, created, lineage) == int(crc)


def _encode_rows(rows: list[tuple[FlowFile, int]]) -> list[tuple[Any, ...]]:
    """The flowfiles rows to INSERT for (FlowFile, sinks mask) pairs, with size and checksum.

    This runs for every FlowFile stored, so `_checksum` is inlined for the usual row
    (bytes content, a topic and attributes whose CRC is cached), and FlowFiles that
    share their attributes dict with the one before (the MQTT source's) reuse its JSON.
    """
    out: list[tuple[Any, ...]] = []
    append = out.append
    pack = _CRC_INTS.pack
    crc32 = zlib.crc32
    shared = _shared_crcs
    last: dict[str, str] | None = None
    attrs = ""
    for ff, mask in rows:
        fid, topic, attributes, content, created, parents = ff
        if attributes is not last:
            attrs = attributes_json(attributes)
            last = attributes
        lineage = ",".join(parents) if parents else ""
        size = len(content) + len(attrs) + len(topic) + ROW_OVERHEAD
        start = shared.get((topic, attrs)) if type(content) is bytes else None
        if start is None:
            crc = _checksum(fid, topic, attrs, content, created, lineage, mask, size)
        else:
            own = pack(created, mask, size) + f"{fid}\0{lineage}".encode()
            crc = crc32(content, crc32(own, start)) | CRC_V2
        append((fid, topic, attrs, content, created, lineage, mask, size, crc))
    return out


def _chunk_end(db: sqlite3.Connection, first: int, end: int, limit: int) -> tuple[int, int]:
    """The last seq of the rows from `first` up to `end` whose sizes add up to at most
    `limit` (`first` at least), and that sum: the rows are walked in order, a page at a
    time, and the walk stops at the first row past `limit`."""
    last, run, after = first, 0, first - 1
    while True:
        rows = db.execute(
            # (a damaged size, text or below 0, counts 0: the pass neither fails nor grows)
            "SELECT seq, max(ifnull(CAST(size AS INTEGER), 0), 0) FROM flowfiles"
            " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 256",
            (after, end),
        ).fetchall()
        for seq, size in rows:
            if run + size > limit and seq != first:
                return last, run
            last, run = seq, run + size
        if len(rows) < 256:
            return last, run
        after = rows[-1][0]


def _vacuum(db: sqlite3.Connection, pages: int) -> None:
    """Give up to `pages` free pages back to the file system (auto_vacuum incremental).
    Each step of the pragma frees one page, and `execute` steps a statement without result
    columns once: `execute(...).fetchall()` freed one page a call (a drained backlog went
    back 4 KiB every 5 s, 256 KiB a second on a full disk). A script runs it to the end;
    not in a transaction, there is none for it to commit first."""
    db.executescript(f"PRAGMA incremental_vacuum({int(pages)});")


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back after a failed write, so that the caller re-raises the real cause.

    SQLite rolls a transaction back by itself on some errors (a full disk among
    them); a ROLLBACK then fails with "cannot rollback - no transaction is
    active", which must not replace the error that mattered.
    """
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as err:
            log.warning("store: rollback after a failed write failed too: %s", err)


@contextmanager
def _transaction(db: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[None]:
    """BEGIN ... COMMIT, or roll back on any error and re-raise that error. With `begin`
    "BEGIN IMMEDIATE" it takes the write lock first: what it reads is then what it
    writes over, with no other process's commit in between."""
    db.execute(begin)
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


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
        dead_max_bytes: int = 64 << 20,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes  # sets keep_bytes too
        self.dead_max_bytes = dead_max_bytes  # buffer.dead_letters_max_bytes
        self.overflow = overflow
        self.synchronous = synchronous
        self.bytes = 0
        self.dropped = 0
        # one ERROR line about drops per LOG_INTERVAL (a full budget drops at every commit)
        self._drops_log = LogThrottle(LOG_INTERVAL, time.monotonic)
        self.dead_count = 0
        # What the dead letters take (see `_DEAD_SIZE`): read at open and by `recount`,
        # added to by each write of dead letters, taken from by `_trim_dead_sync`.
        self.dead_bytes = 0
        self.dead_dropped = 0  # the oldest dead letters deleted over dead_max_bytes
        self._dead_log = LogThrottle(LOG_INTERVAL, time.monotonic)
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._settling: set[asyncio.Future[Any]] = set()  # see `_call`
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
        self._active: set[str] | None = None  # the sinks the engine runs (None: all known)
        self._swept = 0  # purge: every row up to here that no removed sink holds is gone
        self._pins: list[tuple[int, int]] | None = None  # the removed sinks' (bit, cursor)
        # make_room's "nothing to drop" note: (generation, bytes, cursors) of a scan that
        # found nothing. The generation moves with each set_overflow/set_active (on the
        # loop), so a scan begun with the old `block` sinks (on the store thread) and
        # ending after them notes a state that never matches again.
        self._futile: tuple[int, int, tuple[int, ...]] | None = None
        self._generation = 0
        self._tail: list[tuple[int, FlowFile, int, int]] = []  # seq, FlowFile, sinks, size
        self._tail_first = 0
        self.tail_bytes = 0
        self.reserve = self.path.with_name("store.reserve")
        self.disk_full = False
        self.disk_free = 0
        self.file_gone = False  # store.db was deleted or replaced under the open store
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the open store.db
        self._no_reserve = False  # the reserve could not be made, not for want of space
        self._reserve_retry = 0.0  # time.monotonic() of the next try then
        self._reserve_warned = False  # since it was last made
        self._oldest: dict[str, int] = {}  # sink -> `created` (ns) of its oldest waiting FlowFile

    # -- lifecycle -------------------------------------------------------

    async def open(self, sinks: Iterable[str] = ()) -> None:
        """Open (or create) the database and register the sinks in use."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        await self._call(self._open_sync, list(sinks))

    def _open_sync(self, sinks: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wal = _wal(self.path)
        gone = not self.path.exists() and not self.path.is_symlink()
        if gone and wal.exists() and wal.stat().st_size == 0:
            # What the close of a store.db deleted while the gateway ran leaves: an empty
            # WAL (and its -shm) that hold nothing. The restart its ERROR line asks for
            # starts a new store, rather than refusing "missing while its WAL is there".
            for leftover in (wal, self.path.with_name(self.path.name + "-shm")):
                leftover.unlink(missing_ok=True)
            log.warning(
                "store: %s was gone, its write-ahead log empty: a new store is made there"
                " (what the old file held and its sinks had not delivered is not in it)",
                self.path,
            )
        # A link that leads nowhere is no missing store: made anew, the new file replaced
        # the link, and what it led to was left out for good.
        if self.path.is_symlink() or self.path.exists() or wal.exists():
            problem = not_a_store(self.path)
            if problem:
                raise StoreError(
                    f"{self.path}: {problem}: not a valid Edge Stream store, so the gateway"
                    " does not start on it (the FlowFiles it held cannot be read). To start"
                    " with an empty store on purpose, stop the gateway and run"
                    " `edge-stream store reset -c CONFIG`: it moves the file aside to"
                    f" {self.path.name}.corrupt-<time>"
                )
        else:
            _create(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            log.warning("store: SQLite refused WAL mode on %s (got %s)", self.path, mode)
        db.execute(f"PRAGMA synchronous = {'FULL' if self.synchronous == 'full' else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA journal_size_limit = 8388608")  # what the WAL keeps after a reset
        # Debian builds SQLite with secure_delete on: every freed page is then written
        # again, zeroed, through the WAL, so purging delivered data needed as much free
        # disk as the data itself. FAST zeroes only what costs no extra writes.
        db.execute("PRAGMA secure_delete = FAST")
        db.execute("PRAGMA cache_size = -8192")
        db.executescript(SCHEMA)
        if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # stores from before it
        replay_columns = {row[1] for row in db.execute("PRAGMA table_info(replay)")}
        if "sink" not in replay_columns:
            db.execute("ALTER TABLE replay ADD COLUMN sink TEXT")
        if "origin" not in replay_columns:
            db.execute("ALTER TABLE replay ADD COLUMN origin TEXT")  # see take_replay
        if "active" not in {row[1] for row in db.execute("PRAGMA table_info(sinks)")}:
            db.execute("ALTER TABLE sinks ADD COLUMN active INTEGER")  # see save_active
        if "crc" not in {row[1] for row in db.execute("PRAGMA table_info(flowfiles)")}:
            # stores written before checksums: their rows keep crc NULL and are not checked
            db.execute("ALTER TABLE flowfiles ADD COLUMN crc INTEGER")
        self._db = db
        st = os.stat(self.path)
        self._file_id = (st.st_dev, st.st_ino)
        self._keep_reserve_sync()
        for name, bit, cursor in db.execute("SELECT name, bit, cursor FROM sinks"):
            self._bits[name] = bit
            self._cursors[name] = cursor
        self._register_sync(sinks)
        self.bytes = db.execute("SELECT coalesce(sum(size), 0) FROM flowfiles").fetchone()[0]
        self.dead_count = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        self.dead_bytes = dead_letter_bytes(db)
        for name in self._bits:
            self._depth[name] = self._count_sync(name)
            if self._depth[name]:
                self._oldest[name] = self._oldest_sync(name)
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

    def _oldest_sync(self, name: str) -> int:
        """`created` of the oldest FlowFile waiting for `name` (0 when none waits)."""
        row = self._db.execute(  # type: ignore[union-attr]
            "SELECT created FROM flowfiles WHERE seq > ? AND sinks & ? ORDER BY seq LIMIT 1",
            (self._cursors[name], 1 << self._bits[name]),
        ).fetchone()
        return int(row[0]) if row else 0

    def _register_sync(self, names: list[str]) -> None:
        """Give each new sink of `names` a bit and a cursor, all in one transaction: one
        commit per name left the first of two new sinks registered when the second
        failed (a removed sink in `store stats`, holding one of the MAX_SINKS bits). The
        maps in memory change only once it has committed."""
        db = self._db
        assert db is not None
        # Known sinks need no write, so no write lock: `store purge`, `replay` or
        # `drop-sink` holding it past the busy timeout made the gateway's start, or a
        # reload that only restarts a sink, fail for nothing. A read needs no lock in WAL.
        names = [
            name
            for name in dict.fromkeys(names)
            if name not in self._bits
            or not db.execute("SELECT 1 FROM sinks WHERE name = ?", (name,)).fetchone()
        ]
        if not names:
            return
        bits = dict(self._bits)
        forgotten: list[str] = []
        added: dict[str, tuple[int, int]] = {}  # name -> (bit, cursor)
        # IMMEDIATE: what it reads (the sinks there, the end) is what it writes over
        with _transaction(db, "BEGIN IMMEDIATE"):
            end: int | None = None
            for name in names:  # checked again: the CLI may have written since
                if name in bits:
                    if db.execute("SELECT 1 FROM sinks WHERE name = ?", (name,)).fetchone():
                        continue
                    # Dropped by `store drop-sink` while removed, and added back before
                    # `recount` let go of it: its cursor went on in memory only, and a
                    # restart started it at the end, past what waited for it. It starts
                    # again as a new sink.
                    del bits[name]
                    forgotten.append(name)
                used = set(bits.values())
                free = next((b for b in range(MAX_SINKS) if b not in used), None)
                if free is None:
                    raise StoreError(f"at most {MAX_SINKS} sinks can share one store")
                if end is None:  # a new sink starts at the current end: no old data
                    end = db.execute("SELECT coalesce(max(seq), 0) FROM flowfiles").fetchone()[0]
                db.execute(
                    "INSERT INTO sinks (name, bit, cursor) VALUES (?, ?, ?)", (name, free, end)
                )
                bits[name] = free
                added[name] = (free, end)
        for name in forgotten:
            del self._bits[name]
            self._cursors.pop(name, None)
            self._depth.pop(name, None)
            self._oldest.pop(name, None)
        for name, (bit, cursor) in added.items():
            self._bits[name] = bit
            self._cursors[name] = cursor
            self._depth[name] = 0

    def sink_room_problem(self, names: Iterable[str]) -> str | None:
        """Why the store cannot run the sinks `names` of a config (None: it can): it keeps
        at most MAX_SINKS, those removed from the config counted until `edge-stream store
        drop-sink` drops them."""
        wanted = set(names)
        known = wanted | set(self._bits)
        if len(known) <= MAX_SINKS:
            return None
        removed = sorted(set(self._bits) - wanted)
        text = (
            f"at most {MAX_SINKS} sinks can share one store; with this config it would keep"
            f" {len(known)}: the {len(wanted)} configured"
        )
        if removed:
            shown = ", ".join(removed[:5]) + (", ..." if len(removed) > 5 else "")
            text += (
                f" and {len(removed)} removed ({shown}), kept until `edge-stream store"
                " drop-sink NAME` drops them (with a config without them running)"
            )
        return text

    async def register_sinks(self, names: Iterable[str]) -> None:
        """Register the sinks of `names` the store does not know yet, all or none."""
        await self._call(self._register_sync, list(names))

    async def close(self) -> None:
        if self._executor is None:
            return
        self._log_drops(now=True)
        self._log_dead_drops(now=True)
        await self._call(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close_sync(self) -> None:
        if self._db is not None:
            try:
                # stopped cleanly, it runs no sink: `store drop-sink` need not wait for it
                self._db.execute("UPDATE sinks SET active = 0 WHERE active")
            except sqlite3.Error as err:
                log.warning("store: cannot note at close that no sink runs: %s", err)
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                log.warning("store: checkpoint at close failed: %s", err)
            self._db.close()
            self._db = None

    async def _call(
        self, fn: Callable[..., T], *args: Any, then: Callable[[T], None] | None = None
    ) -> T:
        """Run `fn(*args)` on the store thread. `then(result)` runs on the loop once `fn`
        succeeded, before the caller (or any later call's caller) resumes, and also when the
        caller was cancelled meanwhile: with `then`, `fn` goes on to its end on the thread,
        even when cancelled before it began, since what it writes in the file the store's
        memory must say too (a cursor moved, rows committed), or the next reader acts on
        what it was before. `settled` waits for those still under way."""
        if self._executor is None:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            done = loop.run_in_executor(self._executor, fn, *args)
            if then is None:
                return await done
            failed: list[Exception] = []
            # registered first: runs before the caller's wake-up (shield's, added after)
            done.add_done_callback(partial(_run_then, then, failed))
            self._settling.add(done)
            done.add_done_callback(self._settling.discard)
            try:
                result = await asyncio.shield(done)
            except asyncio.CancelledError:
                done.add_done_callback(partial(self._unseen, failed))
                raise
            if failed:
                raise failed[0]
            return result
        except sqlite3.Error as err:
            if _is_full(err):
                self.check_disk()
                raise StoreError(
                    f"store {self.path}: disk full ({self.disk_text()}): {err}"
                ) from err
            if is_damaged(err):
                raise StoreDamaged(damaged_text(self.path, err)) from err
            raise StoreError(f"store {self.path}: {err}") from err

    async def settled(self) -> None:
        """Wait until what the store thread writes for cancelled callers is done and in
        memory (see `_call`): a sink starting again reads its cursor after this."""
        if self._settling:
            await asyncio.wait(list(self._settling))

    def _unseen(self, failed: list[Exception], done: asyncio.Future[Any]) -> None:
        """Log what went wrong in a call whose caller was cancelled: no one else will."""
        err = failed[0] if failed else None if done.cancelled() else done.exception()
        if err is not None:
            log.error(
                "store %s: a write finished after its caller stopped failed: %s", self.path, err
            )

    def _spared(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the store thread; if the disk is full, give up the reserve and run
        it once more. For delivery only (cursors, purges): intake must not use the room."""
        try:
            return fn(*args)
        except sqlite3.Error as err:
            if not _is_full(err) or not self.reserve.exists():
                raise
            self.reserve.unlink()
            log.warning(
                "store: the disk under %s is full; gave up the %d MiB reserve so that"
                " delivery can move its cursors and purge",
                self.path.parent,
                RESERVE_BYTES >> 20,
            )
            return fn(*args)

    # -- the disk ------------------------------------------------------------

    def store_file_bytes(self) -> int:
        """What the store takes on disk: store.db and its WAL."""
        return sum(self.file_sizes())

    def file_sizes(self) -> tuple[int, int]:
        """The sizes of store.db and of its WAL (0 for a file that is not there)."""
        sizes = []
        for path in (self.path, _wal(self.path)):
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:
                sizes.append(0)
        return sizes[0], sizes[1]

    # -- the oldest waiting FlowFile of each sink (backlog age) -----------------

    def oldest_age(self, sink: str) -> float | None:
        """Seconds since the oldest FlowFile waiting for `sink` was made (its `created`),
        as `refresh_oldest` last found it; None when none waits."""
        if not self._depth.get(sink):
            return None
        created = self._oldest.get(sink)
        if created is None:
            return None
        return max(0.0, round((time.time_ns() - created) / 1e9, 3))

    def _note_oldest(self, rows: list[tuple[FlowFile, int]], masks: dict[int, int]) -> None:
        """Before the depths count this commit: a sink whose backlog was empty (or has no
        oldest known yet) gets its first FlowFile of this commit as its oldest now, not
        at the next `refresh_oldest`, so that while something waits its age is a number."""
        union = 0
        for mask in masks:
            union |= mask
        missing = {
            bit: name
            for name, bit in self._bits.items()
            if union >> bit & 1 and (not self._depth.get(name) or name not in self._oldest)
        }
        for ff, mask in rows:
            if not missing:
                break
            for bit in [b for b in missing if mask >> b & 1]:
                self._oldest[missing.pop(bit)] = ff.created

    async def refresh_oldest(self, sinks: Iterable[str]) -> None:
        """Find the oldest waiting FlowFile of each sink with a backlog: in the memory
        tail when the sink's cursor is in it, else one indexed query (by seq) per sink."""
        for sink in sinks:
            if sink not in self._bits or not self._depth.get(sink):
                self._oldest.pop(sink, None)
                continue
            after = self._cursors[sink]
            tail, first = self._tail, self._tail_first
            if tail and first - 1 <= after < first + len(tail):
                bit = self.bit(sink)
                found = next(
                    (ff.created for _, ff, mask, _ in tail[after - first + 1 :] if mask & bit), None
                )
                if found is not None:
                    self._oldest[sink] = found
                continue
            rows = await self._query(
                "SELECT created FROM flowfiles WHERE seq > ? AND sinks & ? ORDER BY seq LIMIT 1",
                (after, 1 << self._bits[sink]),
            )
            if rows:
                self._oldest[sink] = int(rows[0][0])
            elif not self._depth.get(sink):
                # (a commit after the query may have noted a new oldest: keep it)
                self._oldest.pop(sink, None)

    def disk_text(self) -> str:
        return (
            f"{self.disk_free / 1048576:.1f} MiB free on {self.path.parent},"
            f" store {self.store_file_bytes() / 1048576:.1f} MiB (store.db and WAL)"
        )

    def check_disk(self) -> bool:
        """Measure the free space under data_dir; True while it is too short for intake.

        Intake pauses while less than DISK_LOW is free and resumes above DISK_OK (the
        reserve file counts as free: it is there to be given up), so that delivery
        always has room to move cursors and purge.

        Also True for good once store.db was deleted or replaced while open: what would
        be committed (and acknowledged) then goes to a file no restart finds.
        """
        if self.gone():
            return True
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return self.disk_full
        self.disk_free = st.f_bavail * st.f_frsize
        room = self.disk_free + (RESERVE_BYTES if self.reserve.exists() else 0)
        if not self.disk_full and room < DISK_LOW:
            self.disk_full = True
            log.error(
                "store: disk full: %s; intake paused until %d MiB are free (the %d MiB"
                " reserve counted), sinks keep delivering and purging",
                self.disk_text(),
                DISK_OK >> 20,
                RESERVE_BYTES >> 20,
            )
        elif self.disk_full and room > DISK_OK and (self.reserve.exists() or self._no_reserve):
            # The reserve first (the maintenance loop makes it again): without it the
            # next full disk would leave delivery no room to move its cursors.
            self.disk_full = False
            log.warning(
                "store: disk space is back: %s%s; intake resumes",
                self.disk_text(),
                f", and the {RESERVE_BYTES >> 20} MiB reserve" if self.reserve.exists() else "",
            )
        return self.disk_full

    def gone(self) -> bool:
        """Whether store.db was deleted or replaced while open (for good once seen; one
        stat while not): what would be committed then goes to a file no restart finds."""
        if self.file_gone or self._file_id is None:
            return self.file_gone
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            return False  # cannot tell (a permission changed): SQLite says if it matters
        else:
            if (st.st_dev, st.st_ino) == self._file_id:
                return False
        self.file_gone = True
        log.error(
            "store: %s was deleted or replaced while the gateway ran; intake stopped (nothing"
            " more is acknowledged into a file no restart would find), the sinks keep"
            " delivering what it held: once they are done, restart the gateway (what still"
            " waits then is lost with that file)",
            self.path,
        )
        return True

    def _keep_reserve_sync(self) -> None:
        """Create the reserve file when it is missing and DISK_OK is free.

        Also while intake is paused for a full disk: intake resumes only once the
        reserve is back (see `check_disk`), and making it then changes nothing of
        what counts as free.
        """
        if self.reserve.exists():
            return
        if self._no_reserve and time.monotonic() < self._reserve_retry:
            return  # (tried again every 5 s, the warning below came every 5 s for ever)
        new = self.reserve.with_suffix(".new")
        try:
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < DISK_OK:
                return
            fd = os.open(new, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            os.replace(new, self.reserve)
        except OSError as err:
            new.unlink(missing_ok=True)
            # Short of space (or of quota): tried again at each maintenance, and intake
            # waits for it after a full disk. Any other reason may last (a file-size
            # limit, no fallocate) or pass (a disk remounted read-write): tried again
            # rarely, and intake does not wait for it.
            self._no_reserve = err.errno not in (errno.ENOSPC, errno.EDQUOT)
            self._reserve_retry = time.monotonic() + RESERVE_RETRY_S
            if not self._reserve_warned:
                self._reserve_warned = True
                log.warning(
                    "store: cannot keep the disk reserve %s: %s; tried again %s",
                    self.reserve,
                    err,
                    "every hour" if self._no_reserve else "as space comes back",
                )
        else:
            self._no_reserve = self._reserve_warned = False

    # -- facts -----------------------------------------------------------

    def knows(self, sink: str) -> bool:
        """Whether the store keeps a cursor for `sink` (running or removed)."""
        return sink in self._bits

    def bit(self, sink: str) -> int:
        return 1 << self._bits[sink]

    def depth(self, sink: str) -> int:
        return self._depth.get(sink, 0)

    @property
    def max_bytes(self) -> int:
        """The budget (buffer.max_bytes)."""
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self._max_bytes = value
        # what overflow drop_oldest drops down to; a FlowFile larger is never stored for it
        self.keep_bytes = int(value * KEEP_SHARE)

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
        # QoS 2 messages are numbered but leave no row in `inbound`: the count is kept here
        for source, number in db.execute("SELECT source, number FROM inbound_numbered"):
            if number > self._numbered.get(source, 0):
                self._numbered[source] = number

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
        counts: dict[str, int] = {}
        # Per source, the state is kept in locals while its messages run (a batch comes
        # mostly from one source): this loop runs once per inbound message.
        source = None
        state = before = (0, 0, False)
        number = 0
        for name, slot, digest in inbound:
            if name != source:
                if source is not None:
                    if state is not before:  # only a source that had a message not DUP
                        ids[source] = state
                    numbered[source] = counts[source] = number
                source = name
                state = before = ids.get(name) or self._ids.get(name) or (0, 0, False)
                number = numbered.get(name, 0)
            flags = digest[8] if len(digest) > 8 else 0
            if not flags & MARK_DUP:
                state = _next_id(state, slot)
            # Every message that used a packet id is numbered, QoS 2 too: the window of
            # REDELIVERY_WINDOW messages stands for the ids the broker handed out since.
            number += 1
            if flags & MARK_QOS2:
                held.append((name, slot))
            else:
                digests.append((name, slot, digest[:8] + number.to_bytes(8, "big")))
        if source is not None:
            if state is not before:
                ids[source] = state
            numbered[source] = counts[source] = number
        return _Marks(digests, held, ids, counts)

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
        if marks.numbered:
            db.executemany(
                "INSERT INTO inbound_numbered (source, number) VALUES (?, ?)"
                " ON CONFLICT (source) DO UPDATE SET number = max(number, excluded.number)",
                list(marks.numbered.items()),
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
        with _transaction(db):
            db.executemany(
                "DELETE FROM inbound_held WHERE source = ? AND packet_id = ?",
                [(source, i) for i in ids],
            )

    def _new_session_sync(self, source: str) -> None:
        db = self._db
        assert db is not None
        with _transaction(db):
            db.execute("DELETE FROM inbound_held WHERE source = ?", (source,))
            db.execute("DELETE FROM inbound WHERE source = ?", (source,))
            db.execute("UPDATE inbound_ids SET last_id = 0, run = 0 WHERE source = ?", (source,))

    # -- ingest ------------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Write one micro-batch in one transaction; return once it is durable."""
        encoded = _encode_rows(batch.rows)
        sizes = [row[7] for row in encoded]
        added = sum(sizes)
        if added > self.keep_bytes:  # one of them may be larger than drop_oldest keeps
            encoded, sizes = self._oversized(batch, encoded, sizes)
            added = sum(sizes)
        # Numbers are taken now, before the await: a commit that overlaps this one (a
        # dead-letter replay) must not hand out the same ones or undo these.
        marks = self._marks_for(batch.inbound)

        def committed(last: int) -> None:
            self.bytes += added
            if batch.rows:
                self._remember(last - len(batch.rows) + 1, batch.rows, sizes)
            masks: dict[int, int] = {}
            for _, mask in batch.rows:
                masks[mask] = masks.get(mask, 0) + 1
            self._note_oldest(batch.rows, masks)
            for mask, count in masks.items():
                for name, bit in self._bits.items():
                    if mask >> bit & 1:
                        self._depth[name] += count
            self._marks_committed(marks)
            if batch.dead:
                self.dead_count += len(batch.dead)
                self.dead_bytes += _dead_bytes(self._dead_row(d, 0) for d in batch.dead)
            for callback in self._listeners:
                callback()

        await self._call(self._commit_sync, encoded, batch, marks, then=committed)
        await self.make_room()

    def _oversized(
        self, batch: Batch, encoded: list[tuple[Any, ...]], sizes: list[int]
    ) -> tuple[list[tuple[Any, ...]], list[int]]:
        """Move to `batch.dead` the FlowFiles larger than what `drop_oldest` keeps
        (`keep_bytes`) for their `drop_oldest` sinks (stored, one would be dropped at the
        next commit before such a sink had it, and its source told it was stored), one
        dead letter for each of those sinks, which a replay hands to that sink only. A
        `block` sink keeps what waits for it: such a FlowFile is stored for the `block`
        sinks only (stored for all, it was dropped once they had it, lost to the others).
        Returns the rows and sizes kept; sizes are those counted in the budget (content,
        attributes, topic and ROW_OVERHEAD), measured once here."""
        blocking = self.blocking_mask()
        keep = self.keep_bytes
        rows, kept, kept_sizes = [], [], []
        for (ff, mask), row, size in zip(batch.rows, encoded, sizes, strict=True):
            dropping = mask & ~blocking  # its drop_oldest sinks
            if size <= keep or (mask and not dropping):
                rows.append((ff, mask))
                kept.append(row)
                kept_sizes.append(size)
                continue
            reason = (
                f"{size} bytes, more than overflow drop_oldest keeps ({keep} bytes of"
                f" buffer.max_bytes: {self.max_bytes}): it would drop it before"
            )
            sinks: list[str | None] = [*self.sinks_of(dropping)] or [None]
            # one for each sink, which the listing (origin, reason) tells apart
            batch.dead.extend(
                DeadLetter(ff, "store", f"{reason} {f'sink {s!r}' if s else 'the sink'} had it", s)
                for s in sinks
            )
            if mask & blocking:  # rare: re-encoded, as the checksum covers the mask
                rows.append((ff, mask & blocking))
                kept.append(_encode_rows([(ff, mask & blocking)])[0])
                kept_sizes.append(size)
        batch.rows = rows
        return kept, kept_sizes

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
            if batch.resets:
                self._reset_state_sync(db, batch.resets)
            if batch.kv:
                self._write_kv_sync(db, batch.kv)
            self._write_marks_sync(db, marks)
            if batch.positions:
                db.executemany(
                    "INSERT INTO positions (source, position) VALUES (?, ?)"
                    " ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                    list(batch.positions.items()),
                )
            if batch.replayed:
                db.executemany("DELETE FROM replay WHERE seq = ?", [(s,) for s in batch.replayed])
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return int(last)

    @staticmethod
    def _reset_state_sync(db: sqlite3.Connection, components: list[str]) -> None:
        rows = [(c,) for c in components]
        db.executemany("DELETE FROM state_kv WHERE component = ?", rows)
        db.executemany("DELETE FROM state_reset WHERE component = ?", rows)

    @staticmethod
    def _write_kv_sync(
        db: sqlite3.Connection, kv: list[tuple[str, str, int, bytes | None]]
    ) -> None:
        gone = [(c, k) for c, k, _, v in kv if v is None]
        if gone:
            db.executemany("DELETE FROM state_kv WHERE component = ? AND key = ?", gone)
        put = [row for row in kv if row[3] is not None]
        if put:
            db.executemany(
                "INSERT INTO state_kv (component, key, seq, value) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (component, key) DO UPDATE SET value = excluded.value",
                put,
            )

    async def load_kv(self, component: str) -> list[tuple[str, int, bytes]]:
        """The checkpointed key/value state of `component`: (key, seq, value) rows."""
        rows = await self._query(
            "SELECT key, seq, value FROM state_kv WHERE component = ? ORDER BY seq", (component,)
        )
        return [(k, s, v) for k, s, v in rows]

    async def kv_components(self) -> dict[str, int]:
        """The components with key/value state here, and how many keys each has."""
        rows = await self._query("SELECT component, COUNT(*) FROM state_kv GROUP BY component")
        return {name: count for name, count in rows}

    async def has_state(self) -> bool:
        """Whether any component has key/value state here (an empty store has none)."""
        return bool(await self._query("SELECT 1 FROM state_kv LIMIT 1"))

    async def take_resets(self) -> list[str]:
        """Components `edge-stream state reset` named while this gateway ran; the engine
        forgets their state and deletes the request in one commit (`Batch.resets`)."""
        return [row[0] for row in await self._query("SELECT component FROM state_reset")]

    def _remember(self, first: int, rows: list[tuple[FlowFile, int]], sizes: list[int]) -> None:
        """Keep the newest committed FlowFiles in memory, so caught-up sinks need no query.

        The tail is a run of consecutive seqs; a gap (another process inserted, or
        rows were dropped) starts it afresh. It holds at most TAIL_MAX FlowFiles and
        TAIL_MAX_BYTES of their sizes; past either, its older half goes.
        """
        tail = self._tail
        if not tail or self._tail_first + len(tail) != first:
            tail.clear()
            self.tail_bytes = 0
            self._tail_first = first
        tail.extend(
            [
                (seq, ff, mask, size)
                for seq, (ff, mask), size in zip(
                    range(first, first + len(rows)), rows, sizes, strict=True
                )
            ]
        )
        self.tail_bytes += sum(sizes)
        if len(tail) > TAIL_MAX or self.tail_bytes > TAIL_MAX_BYTES:
            keep_rows, keep_bytes = TAIL_MAX // 2, TAIL_MAX_BYTES // 2
            cut = max(0, len(tail) - keep_rows)
            left = self.tail_bytes - sum(row[3] for row in tail[:cut])
            while cut < len(tail) and left > keep_bytes:
                left -= tail[cut][3]
                cut += 1
            del tail[:cut]
            self.tail_bytes = left
            self._tail_first += cut

    def forget_tail(self) -> None:
        """Let go of the in-memory tail (reads then come from disk until new commits)."""
        self._tail.clear()
        self.tail_bytes = 0

    async def take_replay(self, limit: int) -> list[tuple[int, FlowFile, str | None, str | None]]:
        """Dead letters the CLI sent back (see `edge-stream dead-letters replay`).

        Each comes with the sink that refused it (or None), and its origin: which
        processor of which route refused it, rerun from that processor (None when
        replayed by a version that did not keep it: routed again). The engine
        commits them like new input, so the running gateway's counters and memory
        tail stay right.
        """
        rows = await self._query(
            "SELECT seq, id, topic, attributes, content, created, lineage, sink, origin"
            " FROM replay ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [(row[0], _decode(row), row[7], row[8]) for row in rows]

    async def record_reload(
        self,
        at: float,
        config_hash: str | None,
        trigger: str,
        outcome: str,
        changes: list[str],
        errors: list[str],
    ) -> None:
        """Keep one reload's record (`edge-stream config history`); the newest
        HISTORY_KEEP are kept. `errors` must hold no secret (the loader masks them)."""
        await self._call(
            self._spared,
            self._record_reload_sync,
            (at, config_hash, trigger, outcome, json.dumps(changes), json.dumps(errors)),
        )

    def _record_reload_sync(self, row: tuple[Any, ...]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            db.execute(
                "INSERT INTO config_history (at, hash, trigger, outcome, changes, errors)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
            db.execute(
                "DELETE FROM config_history WHERE seq <= (SELECT max(seq) FROM config_history) - ?",
                (HISTORY_KEEP,),
            )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    # -- alerts (gateway/alerts.py) ------------------------------------------

    async def alert_state(
        self, recent: int
    ) -> tuple[list[tuple[str, float, str]], list[tuple[int, float, str, list[str]]]]:
        """The active alerts (key, fired_at, body JSON) and the newest `recent` events,
        oldest first (seq, at, body JSON, the notifiers it is still to go to); events
        still pending for a notifier come whatever their age."""
        active = await self._query("SELECT key, fired_at, body FROM alerts ORDER BY fired_at")
        rows = await self._query(
            "SELECT seq, at, body, pending FROM alert_events WHERE seq > coalesce("
            "(SELECT max(seq) FROM alert_events), 0) - ? OR pending != '[]' ORDER BY seq",
            (recent,),
        )
        return (
            [(r[0], r[1], r[2]) for r in active],
            [(r[0], r[1], r[2], json.loads(r[3])) for r in rows],
        )

    async def alert_event(
        self, key: str, at: float, body: str, firing: bool, pending: list[str]
    ) -> int:
        """Record an alert firing (it becomes active) or resolving (it stops being
        active) and its event for `pending` notifiers, in one transaction; the event's seq."""
        return await self._call(
            self._spared, self._alert_event_sync, key, at, body, firing, json.dumps(pending)
        )

    def _alert_event_sync(self, key: str, at: float, body: str, firing: bool, pending: str) -> int:
        db = self._db
        assert db is not None
        with _transaction(db):
            if firing:
                db.execute(
                    "INSERT OR REPLACE INTO alerts (key, fired_at, body) VALUES (?, ?, ?)",
                    (key, at, body),
                )
            else:
                db.execute("DELETE FROM alerts WHERE key = ?", (key,))
            seq = int(
                db.execute(
                    "INSERT INTO alert_events (at, body, pending) VALUES (?, ?, ?)",
                    (at, body, pending),
                ).lastrowid
                or 0
            )
            # An event still to be sent stays (a restart sends it) until its notifier
            # sends or drops it (each notifier's queue is bounded); a hard cap past those.
            db.execute(
                "DELETE FROM alert_events WHERE seq <= ? AND pending = '[]'",
                (seq - ALERT_EVENTS_KEEP,),
            )
            lost = db.execute(
                "DELETE FROM alert_events WHERE seq <= ?", (seq - ALERT_EVENTS_PENDING_KEEP,)
            ).rowcount
        if lost > 0:
            log.error(
                "store: deleted %d alert event(s) not yet sent: at most the newest %d are kept",
                lost,
                ALERT_EVENTS_PENDING_KEEP,
            )
        return seq

    async def alert_sent(self, seqs: Sequence[int], notifier: str) -> None:
        """`notifier` has sent the events `seqs` (or gave them up): they are no longer
        pending there. One transaction, however many."""
        await self._call(self._spared, self._alert_sent_sync, seqs, notifier)

    def _alert_sent_sync(self, seqs: Sequence[int], notifier: str) -> None:
        db = self._db
        assert db is not None
        with _transaction(db):
            for seq in seqs:
                row = db.execute(
                    "SELECT pending FROM alert_events WHERE seq = ?", (seq,)
                ).fetchone()
                if row is not None:
                    left = [n for n in json.loads(row[0]) if n != notifier]
                    db.execute(
                        "UPDATE alert_events SET pending = ? WHERE seq = ?",
                        (json.dumps(left), seq),
                    )

    async def recount(self) -> None:
        """Re-read what the CLI may change behind the gateway's back: the dead-letter
        count, and removed sinks that `edge-stream store drop-sink` dropped."""
        self.dead_count, bytes_ = await self._call(self._count_dead_sync, self.dead_count)
        if bytes_ is not None:
            self.dead_bytes = bytes_
        known = await self._query("SELECT name FROM sinks")
        if len(known) != len(self._bits):
            names = {row[0] for row in known}
            for name in [n for n in self._bits if n not in names]:
                if self._active is None or name not in self._active:
                    del self._bits[name]
                    self._cursors.pop(name, None)
                    self._depth.pop(name, None)

    def _count_dead_sync(self, known: int) -> tuple[int, int | None]:
        """The dead letters' count, and their bytes when the count is not the `known` one
        (the console or the CLI purged or replayed some): a sum over the whole table is
        not made every few seconds for nothing."""
        db = self._db
        assert db is not None
        count = count_dead_letters(db)
        return count, None if count == known else dead_letter_bytes(db)

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
            self._log_drops()

    def _log_drops(self, now: bool = False) -> None:
        """What `drop_oldest` dropped (of what a sink still waited for): the first drop at
        once, then at most one ERROR line every LOG_INTERVAL seconds, with the count
        since the last (`maintain` logs the last ones once drops stop, `close` at once)."""
        new = self._drops_log.due(self.dropped, now)
        if new:
            log.error(
                "store: the buffer reached its budget of %d bytes; dropped %d of the oldest"
                " FlowFiles (%d in all; overflow: drop_oldest). Sinks are not keeping up or"
                " are down.",
                self.max_bytes,
                new,
                self.dropped,
            )

    def set_overflow(self, policies: dict[str, str]) -> None:
        """Per-sink overflow policies (`block` or `drop_oldest`) that override the default."""
        self._policies = dict(policies)
        # A sink that no longer blocks may free what a scan found nothing to drop in.
        self._generation += 1
        self._futile = None

    def set_active(self, names: Iterable[str]) -> None:
        """The sinks the engine runs now. A sink the store knows that is not among them
        was removed from the config: what it has not delivered is kept (purge passes it
        by) until `edge-stream store drop-sink NAME`, or until the sink is added back and
        resumes from its cursor. Its data counts as `drop_oldest` for the budget."""
        self._active = set(names)
        self._generation += 1  # a removed `block` sink's backlog may be dropped now
        self._futile = None

    async def save_active(self, starting: Iterable[str] = ()) -> None:
        """Note in the store which sinks the engine runs (`set_active`), and those
        `starting` (a reload's, before it may route to them), so that `edge-stream store
        drop-sink` refuses one of them while this gateway runs."""
        await self._call(self._save_active_sync, sorted({*(self._active or ()), *starting}))

    def _save_active_sync(self, names: list[str]) -> None:
        db = self._db
        assert db is not None
        with _transaction(db):
            db.execute("UPDATE sinks SET active = 0")
            db.executemany("UPDATE sinks SET active = 1 WHERE name = ?", [(n,) for n in names])

    def removed_sinks(self) -> dict[str, int]:
        """Sinks known to the store but not run now, with what waits for each."""
        active = self._active
        if active is None:
            return {}
        return {n: self._depth.get(n, 0) for n in sorted(self._bits) if n not in active}

    def sinks_of(self, mask: int) -> list[str]:
        """The names of the sinks whose bits are set in `mask`."""
        return [name for name, bit in self._bits.items() if mask >> bit & 1]

    def blocking_mask(self) -> int:
        """The bits of the running sinks with overflow `block`."""
        mask = 0
        for bit, _ in self._blocking():
            mask |= 1 << bit
        return mask

    def _blocking(self) -> list[tuple[int, str]]:
        active = self._active
        return [
            (bit, name)
            for name, bit in self._bits.items()
            if self._policies.get(name, self.overflow) == "block"
            and (active is None or name in active)
        ]

    def _drop_oldest_sync(self) -> None:
        """Make room by dropping the oldest FlowFiles no `block` sink still waits for.

        What a `block` sink has not delivered yet is kept; if that alone fills the
        budget, `over_budget` stays true and the engine stops taking input.
        """
        db = self._db
        assert db is not None
        generation = self._generation  # read before the list it stands for (see __init__)
        blocking = self._blocking()
        if len(blocking) == len(self._bits):
            return
        state = (generation, self.bytes, tuple(self._cursors.values()))
        if state == self._futile:
            return  # nothing changed since a scan that found nothing to drop
        target = self.keep_bytes
        dropped: list[int] = []
        lost = 0  # of them, those a sink still waited for (the others were delivered)
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
                waited = False
                for name, bit in self._bits.items():
                    if mask >> bit & 1 and seq > self._cursors[name]:
                        self._depth[name] -= 1
                        waited = True
                lost += waited
        if not dropped:
            self._futile = state
            return
        self.forget_tail()
        db.execute("BEGIN")
        try:
            db.execute(
                "DELETE FROM flowfiles WHERE seq IN (SELECT value FROM json_each(?))",
                (json.dumps(dropped),),
            )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        # Rows every sink had delivered (not yet purged) go too, but lose nothing: only
        # what a sink still waited for counts as dropped and is logged (`_log_drops`).
        self.dropped += lost

    # -- delivery ----------------------------------------------------------

    async def read(
        self, sink: str, after: int, limit: int, max_bytes: int | None = None
    ) -> tuple[list[tuple[int, FlowFile]], int]:
        """The next FlowFiles for `sink` after seq `after`: at most `limit` of them and at
        most `max_bytes` of their sizes, but always at least one, however large.

        Returns the rows and the seq up to which this read saw everything for
        the sink (so a sink with nothing to do can still move its cursor on).
        A FlowFile read from disk whose checksum does not match what was stored
        goes to the dead letters ("corrupt in store") instead of being returned,
        once per sink: its bit for `sink` is taken off in the same transaction.
        """
        budget = (1 << 62) if max_bytes is None else max_bytes
        tail = self._tail
        first = self._tail_first
        if tail and first - 1 <= after < first + len(tail):
            bit = self.bit(sink)
            rows: list[tuple[int, FlowFile]] = []
            taken = 0
            for seq, ff, mask, size in tail[after - first + 1 :]:
                if mask & bit:
                    if rows and taken + size > budget:
                        return rows, rows[-1][0]
                    rows.append((seq, ff))
                    taken += size
                    if len(rows) == limit:
                        return rows, seq
            return rows, first + len(tail) - 1
        rows, seen, corrupt, dead_bytes = await self._call(
            self._spared, self._read_sync, sink, after, limit, budget
        )
        if corrupt:
            # Recorded once: the read took the sink's bit off these rows, so no later
            # read (a retry, a dropped read-ahead) sees them again.
            self.dead_count += len(corrupt)
            self.dead_bytes += dead_bytes
            self._depth[sink] = max(0, self._depth[sink] - len(corrupt))
            self._unmark_tail(sink, {seq for seq, _ in corrupt})
            log.error(
                "store: %d FlowFile(s) for sink %s are corrupt in store (checksum mismatch;"
                " first: seq %d, id %s); they are in the dead letters, not delivered",
                len(corrupt),
                sink,
                corrupt[0][0],
                corrupt[0][1],
            )
        return rows, seen

    def _unmark_tail(self, sink: str, seqs: set[int]) -> None:
        bit = self.bit(sink)
        for i, (seq, ff, mask, size) in enumerate(self._tail):
            if seq in seqs:
                self._tail[i] = (seq, ff, mask & ~bit, size)

    def _read_sync(
        self, sink: str, after: int, limit: int, budget: int
    ) -> tuple[list[tuple[int, FlowFile]], int, list[tuple[int, str]], int]:
        """The rows, the last seq seen, the corrupt rows dead-lettered (seq, id) and
        what those dead letters count in their budget."""
        db = self._db
        assert db is not None
        bit = 1 << self._bits[sink]
        cur = db.execute(
            "SELECT seq, id, topic, attributes, content, created, lineage, size, crc, sinks"
            " FROM flowfiles WHERE seq > ? AND sinks & ? ORDER BY seq LIMIT ?",
            (after, bit, limit),
        )
        good: list[tuple[Any, ...]] = []
        bad: list[tuple[Any, ...]] = []
        taken = 0
        cut = False
        # Row by row (fetchall steps once per row too), so that a batch stops at its
        # byte budget without having read the rows after it.
        for row in cur:
            if good and taken + row[7] > budget:
                cut = True
                break
            if _intact(row):
                good.append(row)
                taken += row[7]
            else:
                bad.append(row)
        cur.close()
        scanned = good + bad
        if cut or len(scanned) == limit:
            seen = max(row[0] for row in scanned)
        else:
            end = db.execute("SELECT coalesce(max(seq), 0) FROM flowfiles").fetchone()[0]
            seen = max(end, after)
        if bad:
            # Dead-lettered and taken off this sink in one transaction: the row stays for
            # the other sinks (each records it once too) until the purge.
            now = time.time_ns()
            reason = "corrupt in store: its checksum does not match what was stored"
            dead = [(*row[1:7], "store", sink, reason, now) for row in bad]
            with _transaction(db):
                db.executemany(_INSERT_DEAD, dead)
                db.executemany(
                    "UPDATE flowfiles SET sinks = sinks & ~? WHERE seq = ?",
                    [(bit, row[0]) for row in bad],
                )
        return (
            [(row[0], _decode(row)) for row in good],
            seen,
            [(row[0], row[1]) for row in bad],
            _dead_bytes(dead) if bad else 0,
        )

    def cursor(self, sink: str) -> int:
        return self._cursors[sink]

    async def advance(self, sink: str, upto: int, delivered: int, dead: list[DeadLetter]) -> None:
        """Move `sink`'s cursor to `upto` after a delivery, recording its dead letters."""

        def moved(_: None) -> None:
            if dead:
                self.dead_count += len(dead)
                self.dead_bytes += _dead_bytes(self._dead_row(d, 0) for d in dead)
            if sink not in self._cursors:
                return  # dropped meanwhile (`store drop-sink` of a removed sink)
            self._cursors[sink] = upto
            self._depth[sink] = max(0, self._depth[sink] - delivered - len(dead))
            if not self._depth[sink]:
                self._oldest.pop(sink, None)  # the next commit notes the new oldest

        await self._call(self._spared, self._advance_sync, sink, upto, dead, then=moved)

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
            _rollback(db)
            raise

    # -- housekeeping --------------------------------------------------------

    async def maintain(self, active: Iterable[str]) -> int:
        """Delete what every active sink has, and keep the file and WAL small.

        Returns the number of FlowFiles purged.
        """
        self._log_drops()  # the drops since the last line, once it is due
        if self.dead_bytes > self.dead_max_bytes:
            # A chunk a call, as many as it takes (a flood may add more than a chunk a second)
            # The first reads the table's bytes, the others go by what that left (a sum
            # over millions of rows a chunk would hold up the store thread for minutes).
            keep = int(self.dead_max_bytes * DEAD_KEEP_SHARE)
            if await self.trim_dead_letters():
                while self.dead_bytes > keep and await self.trim_dead_letters(exact=False):
                    pass
        self._log_dead_drops()
        names = [n for n in active if n in self._cursors]
        if not names:
            return 0
        upto = min(self._cursors[n] for n in names)
        running = set(names)
        # A removed sink holds the rows it has not delivered (see `set_active`).
        pins = [
            (self._bits[n], self._cursors[n])
            for n in self._bits
            if n not in running and self._depth.get(n, 0) > 0
        ]
        short = self.check_disk()

        def freed(result: tuple[int, int]) -> None:
            self.bytes -= result[1]

        purged, _ = await self._call(self._spared, self._purge_sync, upto, short, pins, then=freed)
        purged = int(purged)
        if short:
            self.check_disk()  # the purge and the truncated WAL may have given space back
        return purged

    async def trim_dead_letters(self, exact: bool = True) -> int:
        """Delete the oldest dead letters down to DEAD_KEEP_SHARE of `dead_max_bytes`, at
        most DEAD_TRIM_CHUNK of them a call (one store-thread transaction: the sinks'
        reads and the commits go between two). Returns how many went. `exact`: read what
        the dead letters take from the table first (the first call of a pass)."""
        keep = int(self.dead_max_bytes * DEAD_KEEP_SHARE)

        def trimmed(result: tuple[int, int, int]) -> None:
            count, left, freed = result
            self.dead_count = max(0, self.dead_count - count)
            # read from the table: what it holds; else what went (a commit's dead letters
            # may have been added since `known` was taken)
            self.dead_bytes = left if exact else max(0, self.dead_bytes - freed)
            self.dead_dropped += count

        known = None if exact else self.dead_bytes
        count, _, _ = await self._call(
            self._spared, self._trim_dead_sync, keep, known, then=trimmed
        )
        return int(count)

    def _trim_dead_sync(self, keep: int, known: int | None = None) -> tuple[int, int, int]:
        """Delete the fewest oldest dead letters that bring them down to `keep` bytes;
        returns how many went, what the rest take and what went. The total is read here, in the
        transaction that deletes: the estimate may be behind a purge or a replay made
        through the console or the CLI, and would then delete dead letters within it.
        `known`: the total as the previous chunk of this pass left it, not read again."""
        db = self._db
        assert db is not None
        with _transaction(db, "BEGIN IMMEDIATE"):
            total = dead_letter_bytes(db) if known is None else known
            excess = total - keep
            if excess <= 0:
                return 0, total, 0
            # `before`: what the older rows of the chunk take; a row goes while that is
            # short of the excess (the row that reaches it goes too).
            last, count, size = db.execute(
                "SELECT max(seq), count(*), coalesce(sum(size), 0) FROM ("
                " SELECT seq, size, sum(size) OVER (ORDER BY seq) - size AS before FROM ("
                f"  SELECT seq, {_DEAD_SIZE} AS size FROM dead_letters ORDER BY seq LIMIT ?"
                " )) WHERE before < ?",
                (DEAD_TRIM_CHUNK, excess),
            ).fetchone()
            if last is not None:
                db.execute("DELETE FROM dead_letters WHERE seq <= ?", (last,))
        return int(count), total - int(size), int(size)

    def _log_dead_drops(self, now: bool = False) -> None:
        """The dead letters deleted over their budget: the first at once, then at most one
        WARNING line every LOG_INTERVAL seconds, with the count since the last."""
        new = self._dead_log.due(self.dead_dropped, now)
        if new:
            log.warning(
                "store: dead letters past buffer.dead_letters_max_bytes: deleted %d of the"
                " oldest (%d in all; budget %d bytes)",
                new,
                self.dead_dropped,
                self.dead_max_bytes,
            )

    def _purge_sync(
        self, upto: int, short: bool = False, pins: list[tuple[int, int]] | None = None
    ) -> tuple[int, int]:
        """Delete what every sink has; when the disk is short (`short`), also give the
        freed pages and the WAL back to the file system at once."""
        db = self._db
        assert db is not None
        # At most PURGE_CHUNK rows a call, so a drained backlog does not hold up the
        # store thread (sinks read and commit on it); the next call takes the rest.
        # Counted first and deleted in one statement: one SQLite step each (a
        # RETURNING clause would step, and hand the GIL around, once per row). The two
        # in one transaction that holds the write lock: a `store drop-sink` committed
        # between them (it clears the dropped sink's bits) had the delete take rows the
        # count had left out, and `bytes` stayed above what the store held, for good.
        purged = freed = 0
        if pins != self._pins:
            self._pins, self._swept = pins, 0  # a sink removed, added back or dropped: rescan
        if short:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the deletes' WAL needs the room
        end = None
        walked, deadline = 0, time.monotonic() + SHORT_PASS_S
        while True:
            # (seqs are deleted only by this thread: the range holds outside the transaction)
            after = self._swept if pins else 0
            row = db.execute("SELECT min(seq) FROM flowfiles WHERE seq > ?", (after,)).fetchone()
            first = row[0]
            if first is None or first > (upto if end is None else end):
                break
            if end is None:
                end = min(upto, first + PURGE_CHUNK)
            last = end
            if short:
                # A delete writes to the WAL about half the bytes it deletes: on a full
                # disk, where only the reserve gave room back, a backlog is deleted
                # SHORT_PURGE_BYTES a transaction (at least one row), the WAL truncated
                # between them (in one, a drained backlog of over 8 MiB never fitted: each
                # pass failed, and intake never resumed).
                # The chunk's end is walked to from `first` (a sum over the window's
                # rows before each chunk made a pass quadratic: 6 s for 600 MB).
                last, run = _chunk_end(db, first, end, SHORT_PURGE_BYTES)
                walked += run
            if pins:
                # Rows a removed sink still waits for stay; the window moves past them.
                held = " OR ".join(f"(seq > {int(c)} AND sinks & {1 << int(b)})" for b, c in pins)
                where, bounds = f"seq >= ? AND seq <= ? AND NOT ({held})", [first, last]
            else:
                where, bounds = "seq <= ?", [last]
            try:
                with _transaction(db, "BEGIN IMMEDIATE"):
                    count, size = db.execute(
                        f"SELECT count(*), coalesce(sum(size), 0) FROM flowfiles WHERE {where}",
                        bounds,
                    ).fetchone()
                    db.execute(f"DELETE FROM flowfiles WHERE {where}", bounds)
            except sqlite3.Error:
                if not purged:
                    raise
                return int(purged), int(freed)  # what went is counted; the next pass goes on
            purged += count
            freed += size
            if pins:
                self._swept = last
            if not short or last >= end:
                break
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                return int(purged), int(freed)  # as above: counted, the next pass goes on
            if walked >= SHORT_PASS_BYTES or time.monotonic() > deadline:
                break  # the next pass goes on

        if short:
            # Give space back in small steps: the WAL first, then 1 MiB of free pages at a
            # time, each followed by a checkpoint that shrinks the file.
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                for step in range(SHORT_PASS_PAGES // 256):
                    # at least one step a pass, however long the deletes took: until a
                    # pass gives pages back, the disk has no more room (intake waits)
                    if step and time.monotonic() > deadline:
                        break  # the next pass goes on
                    if not db.execute("PRAGMA freelist_count").fetchone()[0]:
                        break
                    _vacuum(db, 256)
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                if not purged:
                    raise
                return int(purged), int(freed)  # what went is counted; the next pass goes on
            self._keep_reserve_sync()  # before intake resumes (see `check_disk`)
            return int(purged), int(freed)
        now = time.monotonic()
        if now - self._last_maintenance > 5.0:
            self._last_maintenance = now
            self._keep_reserve_sync()
            # What a drained backlog freed goes back, 8 MiB every 5 s; the few pages a
            # steady flow frees and takes again are left for the next commits to reuse.
            if db.execute("PRAGMA freelist_count").fetchone()[0] > VACUUM_MIN_PAGES:
                _vacuum(db, 2048)
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if not db.execute("SELECT 1 FROM flowfiles LIMIT 1").fetchone():
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(purged), int(freed)

    async def release_memory(self) -> None:
        """Give back what the last busy spell left in memory, once the gateway is idle.

        The in-memory tail goes; SQLite keeps a copy of the values last bound to
        each cached statement, so the insert statements are bound once more with
        empty rows (in a transaction that is rolled back, nothing is written); then
        the C heap is trimmed where the C library allows it.
        """
        self.forget_tail()
        await self._call(self._release_memory_sync)

    def _release_memory_sync(self) -> None:
        db = self._db
        assert db is not None
        empty = ("", "", "", b"", 0, "", 0, 0, None)
        db.execute("BEGIN")
        try:
            k = _ROWS_PER_STATEMENT
            while k:
                _insert_rows(db, _INSERT, [empty] * k)
                k >>= 1
            db.execute(_INSERT_DEAD, ("", "", "", b"", 0, "", "", None, "", 0))
        finally:
            _rollback(db)
        _trim_heap()

    async def load_state(self) -> dict[str, bytes]:
        rows = await self._call(
            lambda: self._db.execute("SELECT name, value FROM state").fetchall()  # type: ignore[union-attr]
        )
        return {name: value for name, value in rows if value is not None}

    async def position(self, source: str) -> bytes | None:
        """The position last committed for `source` (see `Batch.positions`), or None."""
        rows = await self._call(
            lambda: self._db.execute(  # type: ignore[union-attr]
                "SELECT position FROM positions WHERE source = ?", (source,)
            ).fetchall()
        )
        return bytes(rows[0][0]) if rows else None

    async def dead_letters(self, limit: int) -> list[DeadLetterSummary]:
        """The newest `limit` dead letters, newest first (the status API)."""
        return await self._call(newest_dead_letters, self._db, limit)

    async def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the store's thread (this module and its tests only)."""
        return await self._call(
            lambda: self._db.execute(sql, params).fetchall()  # type: ignore[union-attr]
        )


class _Marks(NamedTuple):
    """The inbound bookkeeping of one ingest commit (see `Store._marks_for`)."""

    digests: list[tuple[str, int, bytes]]  # (source, slot, digest + number)
    held: list[tuple[str, int]]  # (source, QoS 2 packet id) answered with PUBREC
    ids: dict[str, tuple[int, int, bool]]  # source -> (last id, run, reused)
    numbered: dict[str, int]  # source -> number of its last message in this commit


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

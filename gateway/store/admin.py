"""The store seen from outside the gateway: what `edge-stream dead-letters` and
`edge-stream store` do to it.

`open_admin(path)` gives a `StoreAdmin` on its own SQLite connection, safe while
a gateway runs on the same file (WAL): it lists, shows, replays and purges dead
letters and counts what waits for each sink. Replay and purge write: replay moves
dead letters into the store's replay inbox, which the running gateway takes in
like new input (see `Store.take_replay`). `reset(path)` moves a damaged store
aside, never while a gateway holds the data_dir.

Together with sqlite.py this module holds every SQL statement the project runs on
its store; the CLI and the web server call these functions and format the results.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.core.flowfile import CONTENT_TRUNCATED, MQTT_INVALID
from gateway.store.sqlite import (
    CRC_V2,
    LOCK_NAME,
    DeadLetterSummary,
    StoreDamaged,
    StoreError,
    _checksum,
    _intact,
    _transaction,
    count_dead_letters,
    damaged_text,
    hold_data_dir,
    is_damaged,
    let_go_data_dir,
    newest_dead_letters,
    not_a_store,
    read_only_fs,
    unopenable,
)

__all__ = [
    "DeadLetterRecord",
    "DeadLetterSummary",
    "Purged",
    "ReloadRecord",
    "Replayed",
    "Reset",
    "SinkBacklog",
    "StateSummary",
    "StoreAdmin",
    "StoreStats",
    "damage",
    "open_admin",
    "reset",
]


@dataclass(frozen=True)
class Replayed:
    """What `StoreAdmin.replay` did: `count` dead letters moved to the replay inbox;
    `kept`: why the others asked for were left (their content is not the message) ->
    how many; `missing`: the numbers asked for that name no dead letter."""

    count: int
    kept: dict[str, int]
    missing: tuple[int, ...] = ()

    def note(self) -> str | None:
        """One line on those left, or None when every one asked for was replayed."""
        if not self.kept:
            return None
        left = sum(self.kept.values())
        if len(self.kept) == 1:
            why = next(iter(self.kept))
        else:
            why = ", ".join(f"{n} {reason}" for reason, n in self.kept.items())
        return (
            f"{left} dead letter(s) not replayed: their content is not the message: {why}"
            " (they stay: list, show or purge them)"
        )


@dataclass(frozen=True)
class Purged:
    """What `StoreAdmin.purge` did: `count` dead letters deleted; `missing`: the numbers
    asked for that name no dead letter."""

    count: int
    missing: tuple[int, ...] = ()


def not_found(missing: Sequence[int]) -> str:
    """The line on dead letter numbers that name none (a mistyped number: nothing done
    for it)."""
    numbers = ", ".join(map(str, missing))
    return f"no dead letter{'s' if len(missing) > 1 else ''} {numbers}"


CLEAR_CHUNK_BYTES = 8 << 20  # the rows `store drop-sink` checksums again at once

# What a source marks a dead letter whose content is not the message with (see
# gateway.core.flowfile): such ones are never replayed.
_TRUNCATED = f"json_extract(attributes, '$.\"{CONTENT_TRUNCATED}\"')"
_INVALID = f"json_extract(attributes, '$.\"{MQTT_INVALID}\"')"
_REPLAYABLE = f"({_TRUNCATED} IS NULL AND {_INVALID} IS NULL)"


@dataclass(frozen=True)
class DeadLetterRecord:
    """One dead letter in full (`edge-stream dead-letters show`)."""

    seq: int
    id: str
    topic: str
    attributes: dict[str, str]
    content: bytes
    created: int  # ns since the epoch
    origin: str
    sink: str | None  # the sink that refused it; None when a route did
    reason: str


@dataclass(frozen=True)
class StateSummary:
    """One component's key/value state (`edge-stream state list`)."""

    component: str
    keys: int
    bytes: int


@dataclass(frozen=True)
class SinkBacklog:
    """What waits in the store for one sink."""

    name: str
    waiting: int
    oldest: int | None  # `created` (ns) of the oldest waiting FlowFile; None when none waits


@dataclass(frozen=True)
class StoreStats:
    """`edge-stream store stats`: per sink what waits, and the store's totals."""

    sinks: list[SinkBacklog]  # by name
    flowfiles: int
    bytes: int  # what the FlowFiles count against buffer.max_bytes
    dead_letters: int
    replaying: int = 0  # dead letters replayed that the gateway has not taken in yet


@dataclass(frozen=True)
class ReloadRecord:
    """One reload attempt (`edge-stream config history`)."""

    at: float  # unix time
    hash: str | None  # the config text's hash (its ENC() values as written, never plaintext)
    trigger: str  # start, sighup, file, api, edit, remote, rollback
    outcome: str  # applied, refused, rolled_back
    changes: list[str]  # "sink warehouse changed", ...
    errors: list[str]


def _connect(path: Path, uri: str | None = None) -> sqlite3.Connection:
    db = sqlite3.connect(uri or path, isolation_level=None, timeout=10, uri=uri is not None)
    db.execute("PRAGMA busy_timeout = 10000")
    return db


def read_only_uri(path: Path) -> str | None:
    """On a read-only file system (an SD card the kernel remounted so after errors), the
    SQLite URI the store at `path` can still be read through; None on a writable one.

    SQLite opens a store in WAL mode only where it can make its -shm file, so the commands
    that only read failed there ("unable to open database file"). With a -wal that holds
    commits, or a gateway running (through another, writable mount), it is read read-only
    with its WAL (`mode=ro`, through the -shm left there); else the file alone holds every
    commit and cannot change, and is read as such (`immutable=1`)."""
    if not read_only_fs(path):
        return None
    # SQLite keeps the -wal and -shm beside the file a symbolic link points to (a store
    # linked to another disk), not beside the link: looked for there, a -wal full of
    # commits was not seen and the store was read without them.
    real = path.resolve()
    quoted = urllib.parse.quote(str(real))
    wal = real.with_name(real.name + "-wal")
    try:
        commits = wal.stat().st_size > 0
    except OSError:
        commits = False
    if commits or gateway_runs(path) is not False:
        return f"file:{quoted}?mode=ro"
    return f"file:{quoted}?immutable=1"


def gateway_runs(path: Path) -> bool | None:
    """Whether a gateway runs on the store at `path` (it holds its data_dir's lock);
    None when that cannot be told (the lock cannot be opened: a permission, a read-only
    file system)."""
    with _gateway_lock(path) as runs:
        return runs


@contextmanager
def _gateway_lock(path: Path) -> Iterator[bool | None]:
    """`gateway_runs`, and while it is False the data_dir's lock is held, so that no
    gateway starts on the store until the block ends (it is refused, "another Edge
    Stream process uses this data_dir").

    The lock file is opened read-only and never created nor written: made by `root`
    (the CLI run by root), the gateway's user could not open it and its next start
    failed. No lock file: no gateway has it, none runs."""
    try:
        fd = os.open(path.parent / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    except OSError:
        yield None
        return
    runs: bool | None = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        runs = True if err.errno in (errno.EWOULDBLOCK, errno.EACCES) else None
    try:
        yield runs
    finally:
        os.close(fd)  # lets go of the lock


def open_admin(
    path: str | os.PathLike[str], in_gateway: bool = False, write: bool = True
) -> StoreAdmin:
    """A `StoreAdmin` on the store at `path`, on a connection of its own.

    Refuses with a one-line StoreError when there is no store there, or when
    the file is not a valid Edge Stream store (the check the gateway's start
    makes): nothing is written into a file that is not one.

    `in_gateway`: called in the process of the gateway that has the store open (the
    console), which checked the file when it opened it. The check is then not made: it
    reads the file's header through a file descriptor of its own, and closing that
    descriptor drops every POSIX lock the process holds on the file, the gateway's
    SQLite connection's too (SQLite's "how to corrupt": an `edge-stream` command run
    afterwards then took itself for the last user of the store, checkpointed and
    deleted the WAL under the gateway, and the gateway's store read as damaged).

    `write: False`: the caller only reads, so a store on a read-only file system is read
    (`read_only_uri`); one that writes is refused there in one line.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():  # a link to nowhere: said below
        raise StoreError(f"no store at {path}: has the gateway run with this data_dir?")
    if in_gateway:
        return StoreAdmin(_connect(path), path)
    uri = None
    if write and read_only_fs(path):
        raise StoreError(
            f"{path}: the file system of {path.parent} is mounted read-only (a disk remounted"
            " so after errors: dmesg says why), so nothing in the store can be changed: mount"
            " it read-write, then try again"
        )
    if not write:
        uri = read_only_uri(path)
    problem = not_a_store(path, uri)
    if problem is not None:
        raise StoreError(
            f"{path}: {problem}: not a valid Edge Stream store. To start the gateway with"
            " an empty one, stop it and run `edge-stream store reset -c CONFIG`: it moves"
            f" the file aside to {path.name}.corrupt-<time>"
        )
    return StoreAdmin(_connect(path, uri), path)


class StoreAdmin:
    """Dead letters and statistics of one store file, for the CLI.

    Each method is one statement or one transaction in autocommit mode, so the
    gateway running on the same file waits at most that long for it.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StoreAdmin:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()
        # A damaged store file (`store stats` on it) stopped the command with
        # sqlite3's traceback: one line, saying what to do, as the gateway does.
        if isinstance(value, sqlite3.Error):
            if is_damaged(value):
                raise StoreDamaged(damaged_text(self.path, value)) from value
            raise StoreError(f"store {self.path}: {value}") from value

    # -- dead letters ------------------------------------------------------------

    def dead_letters(self, limit: int) -> list[DeadLetterSummary]:
        """The newest `limit` dead letters, newest first."""
        return newest_dead_letters(self.db, limit)

    def dead_letter_count(self) -> int:
        return count_dead_letters(self.db)

    def dead_letter(self, seq: int) -> DeadLetterRecord | None:
        """Dead letter number `seq`, or None if there is none by that number."""
        if not _a_seq(seq):
            return None
        row = self.db.execute(
            "SELECT seq, id, topic, attributes, content, created, origin, sink, reason"
            " FROM dead_letters WHERE seq = ?",
            (seq,),
        ).fetchone()
        if row is None:
            return None
        seq, fid, topic, attributes, content, created, origin, sink, reason = row
        return DeadLetterRecord(
            seq, fid, topic, json.loads(attributes), content, created, origin, sink, reason
        )

    def purge(self, seqs: Sequence[int] | None) -> Purged:
        """Delete the dead letters numbered `seqs` (None: all of them), in one
        transaction; how many went, and the numbers that named none."""
        where, params = _selection(seqs)
        with _transaction(self.db, "BEGIN IMMEDIATE"):
            missing = self._missing(seqs)
            gone = self.db.execute(f"DELETE FROM dead_letters WHERE {where}", params).rowcount
        return Purged(int(gone), missing)

    def _missing(self, seqs: Sequence[int] | None) -> tuple[int, ...]:
        """The numbers of `seqs` that name no dead letter, each once, in the order given."""
        if seqs is None:
            return ()
        where, params = _selection(seqs)
        found = {
            row[0] for row in self.db.execute(f"SELECT seq FROM dead_letters WHERE {where}", params)
        }
        return tuple(dict.fromkeys(n for n in seqs if n not in found))

    def replay(self, seqs: Sequence[int] | None) -> Replayed:
        """Move the dead letters numbered `seqs` (None: all) into the replay inbox, in
        one transaction; how many moved, and how many were left because their content is
        not the message (marked `content.truncated` or `mqtt.invalid` when written).

        The gateway takes the inbox in like new input: one that a sink refused goes
        back to that sink, one a route's processor refused goes through that processor
        and the ones after it, to that route's sinks, and a source's is routed again.
        """
        chosen, params = _selection(seqs)
        where = f"({chosen}) AND {_REPLAYABLE}"
        # the origin tells the gateway which route refused it (a store a gateway of this
        # version has not opened yet has no such column: routed through every route then)
        columns = "id, topic, attributes, content, created, lineage, sink"
        if "origin" in {row[1] for row in self.db.execute("PRAGMA table_info(replay)")}:
            columns += ", origin"
        with _transaction(self.db, "BEGIN IMMEDIATE"):
            missing = self._missing(seqs)
            moved = self.db.execute(
                f"INSERT INTO replay ({columns}) SELECT {columns} FROM"
                f" dead_letters WHERE {where} ORDER BY seq",
                params,
            ).rowcount
            self.db.execute(f"DELETE FROM dead_letters WHERE {where}", params)
            left = self.db.execute(
                f"SELECT {_TRUNCATED}, count(*) FROM dead_letters"
                f" WHERE ({chosen}) AND NOT {_REPLAYABLE} GROUP BY 1 ORDER BY 1 NULLS LAST",
                params,
            ).fetchall()
        # not truncated, so marked invalid: the raw packet
        kept = {
            "the raw invalid packet" if cut is None else f"truncated to {cut}": int(n)
            for cut, n in left
        }
        return Replayed(int(moved), kept, missing)

    # -- statistics ----------------------------------------------------------------

    def stats(self) -> StoreStats:
        """What waits for each sink (count and oldest), and the store's totals."""
        backlog = []
        for name, bit, cursor in self.db.execute(
            "SELECT name, bit, cursor FROM sinks ORDER BY name"
        ).fetchall():
            waiting, oldest = self.db.execute(
                "SELECT count(*), min(created) FROM flowfiles WHERE seq > ? AND sinks & ?",
                (cursor, 1 << bit),
            ).fetchone()
            backlog.append(SinkBacklog(name, waiting, oldest))
        flowfiles, size = self.db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM flowfiles"
        ).fetchone()
        replaying = self.db.execute("SELECT count(*) FROM replay").fetchone()[0]
        return StoreStats(backlog, flowfiles, size, count_dead_letters(self.db), replaying)

    def _runs_sink(self, name: str) -> bool:
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(sinks)")}
        if "active" not in columns:  # a gateway from before it: cannot tell
            return False
        row = self.db.execute("SELECT active FROM sinks WHERE name = ?", (name,)).fetchone()
        return bool(row and row[0])

    def drop_sink(self, name: str, running: bool | None = None) -> int:
        """Forget a sink that is no longer in the config, with what waited for it (the
        count is returned). A running gateway notices within 5 s (`Store.recount`).
        Refused while a gateway on the store runs it (`running` None: told by the
        data_dir's lock)."""
        with _gateway_lock(self.path) if running is None else nullcontext(running) as runs:
            return self._drop_sink(name, runs)

    def _drop_sink(self, name: str, runs: bool | None) -> int:
        # The checks in the write transaction: a gateway noting the sink as run (a reload
        # that adds it back) between them and the drop routed to a sink dropped under it.
        # (And no gateway starts meanwhile when none ran: `_gateway_lock` holds the lock.)
        with _transaction(self.db, "BEGIN IMMEDIATE"):
            row = self.db.execute(
                "SELECT bit, cursor FROM sinks WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                known = [r[0] for r in self.db.execute("SELECT name FROM sinks ORDER BY name")]
                raise StoreError(
                    f"the store knows no sink {name!r} (it knows: {', '.join(known) or 'none'})"
                )
            bit, cursor = row
            if runs is not False and self._runs_sink(name):
                # The file no longer has it, but the gateway still runs the config that
                # did (not reloaded yet): what it routes to the sink from now on waited
                # for a sink the store no longer knew, and a restart started it past all
                # of it. (A gateway that stopped cleanly noted it runs none.)
                raise StoreError(
                    f"sink {name!r} still runs in the gateway on this data_dir (its config"
                    " was not reloaded since the sink was removed): reload it first"
                    " (`edge-stream reload -c CONFIG` or SIGHUP), then drop the sink"
                    if runs
                    else f"sink {name!r} was run by the gateway on this data_dir, and"
                    f" whether that still runs cannot be told (its lock {self.path.parent}"
                    f"/{LOCK_NAME} cannot be opened; or run this as the gateway's user):"
                    " reload or stop it first, then drop the sink"
                )
            waiting = self.db.execute(
                "SELECT count(*) FROM flowfiles WHERE seq > ? AND sinks & ?", (cursor, 1 << bit)
            ).fetchone()[0]
            # its bit may go to a new sink: no row may carry it any more
            self._clear_bit(1 << bit)
            self.db.execute("DELETE FROM sinks WHERE name = ?", (name,))
        return int(waiting)

    def _clear_bit(self, bit: int) -> None:
        """Take a sink's bit off every row, in the caller's transaction. A row's checksum
        covers its sinks mask (CRC_V2): one that other sinks still want is checksummed
        again for the mask left, else they would find it "corrupt in store" and
        dead-letter it. A row that did not match its checksum keeps the old one (it is
        still found corrupt); a row for this sink alone is left for no sink (purged)."""
        self.db.execute("UPDATE flowfiles SET sinks = 0 WHERE sinks = ?", (bit,))
        after = 0
        while True:  # by chunks of CLEAR_CHUNK_BYTES, not all their contents at once
            # The chunk's end, from the sizes alone (500 rows a chunk were 125 MB of 250 KB
            # readings held at once); a row larger than a chunk is one alone.
            last, run = None, 0
            walk = self.db.execute(
                "SELECT seq, max(ifnull(CAST(size AS INTEGER), 0), 0) FROM flowfiles"
                " WHERE seq > ? AND sinks & ? ORDER BY seq",
                (after, bit),
            )
            try:
                for seq, size in walk:
                    if last is not None and run + size > CLEAR_CHUNK_BYTES:
                        break
                    last, run = seq, run + size
            finally:
                walk.close()
            if last is None:
                return
            rows = self.db.execute(
                "SELECT seq, id, topic, attributes, content, created, lineage, size, crc,"
                " sinks FROM flowfiles WHERE seq > ? AND seq <= ? AND sinks & ? ORDER BY seq",
                (after, last, bit),
            ).fetchall()
            changed = []
            for row in rows:
                seq, fid, topic, attrs, content, created, lineage, size, crc, sinks = row
                mask = sinks & ~bit
                if crc is not None and int(crc) & CRC_V2 and _intact(row):
                    crc = _checksum(fid, topic, attrs, content, created, lineage, mask, size)
                changed.append((mask, crc, seq))
            self.db.executemany("UPDATE flowfiles SET sinks = ?, crc = ? WHERE seq = ?", changed)
            del rows, row, content  # before the next chunk is read, not after
            after = last

    def reload_history(self, limit: int) -> list[ReloadRecord]:
        """The newest `limit` reload records, oldest first."""
        try:
            rows = self.db.execute(
                "SELECT at, hash, trigger, outcome, changes, errors FROM config_history"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        except sqlite3.OperationalError:  # a store from before the history: none yet
            return []
        return [
            ReloadRecord(at, h, trigger, outcome, json.loads(changes), json.loads(errors))
            for at, h, trigger, outcome, changes, errors in reversed(rows)
        ]

    # -- processor state -----------------------------------------------------------

    def states(self) -> list[StateSummary]:
        """Every component with key/value state: its keys and their bytes, by name."""
        try:
            rows = self.db.execute(
                "SELECT component, count(*), coalesce(sum(length(key) + length(value)), 0)"
                " FROM state_kv GROUP BY component ORDER BY component"
            ).fetchall()
        except sqlite3.OperationalError:  # a store from before key/value state
            return []
        return [StateSummary(c, n, size) for c, n, size in rows]

    def state(self, component: str, limit: int) -> list[tuple[str, bytes]]:
        """The first `limit` keys of `component`'s state (oldest first), with their values."""
        try:
            rows = self.db.execute(
                "SELECT key, value FROM state_kv WHERE component = ? ORDER BY seq LIMIT ?",
                (component, limit),
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        return [(k, v) for k, v in rows]

    def reset_state(self, component: str, running: bool | None = None) -> str:
        """Forget `component`'s state: "done" when no gateway runs on the store (deleted
        here, and the request left for the next start, whose engine then does not restore
        the Redis replica over it and replaces the replica's copy), "asked" when one does
        (its engine forgets it in memory and in the store with its next commit, within a
        second or two; see `Store.take_resets`), and "asked" too when that cannot be told
        (the request is then done by the gateway if it runs, or at its next start).
        `running` None: told by the data_dir's lock."""
        if running is None:
            running = gateway_runs(self.path)
        self.db.execute(
            "INSERT INTO state_reset (component) VALUES (?) ON CONFLICT DO NOTHING",
            (component,),
        )
        if running is not False:  # None: it may run, and would write the rows back
            return "asked"
        self.db.execute("DELETE FROM state_kv WHERE component = ?", (component,))
        return "done"

    def quick_check(self) -> list[str]:
        """SQLite's quick check of every page, at most three problems; ["ok"] if whole."""
        return [row[0] for row in self.db.execute("PRAGMA quick_check(3)")]


def _selection(seqs: Sequence[int] | None) -> tuple[str, tuple[Any, ...]]:
    if seqs is None:
        return "1", ()
    # a number SQLite cannot hold names no dead letter (and would raise OverflowError)
    chosen = tuple(n for n in seqs if _a_seq(n))
    return f"seq IN ({','.join('?' * len(chosen))})", chosen


def _a_seq(n: int) -> bool:
    """Could `n` number a dead letter? (SQLite's integers are signed 64-bit.)"""
    return 0 < n < 1 << 63


# -- reset -----------------------------------------------------------------------------


def damage(path: Path) -> str | None:
    """Why the store at `path` is damaged (header, tables, or SQLite's quick check of
    every page), or None if it is whole."""
    problem = not_a_store(path)
    if problem is not None:
        return problem
    try:
        admin = StoreAdmin(_connect(path), path)
        try:
            found = admin.quick_check()
        finally:
            admin.close()
    except sqlite3.DatabaseError as err:
        unopenable(path, err)
        return f"cannot be read ({err})"
    return None if found == ["ok"] else f"is damaged ({'; '.join(found)})"


@dataclass(frozen=True)
class Reset:
    """What `reset` did."""

    moved: list[Path]  # the files moved aside (store, -wal, -shm); empty: there was no store
    aside: Path | None  # the new name of the store file
    problem: str | None  # why it was damaged; None when a valid store went by force


def reset(path: Path, force: bool = False) -> Reset:
    """Move a damaged store (and its -wal and -shm files) aside, so that the next start
    is empty.

    Never while a gateway runs on the data_dir (it holds the data_dir's lock), and a
    valid store only with `force`: both are refused with a one-line StoreError.
    """
    if not path.parent.is_dir():
        return Reset([], None, None)
    try:
        lock = hold_data_dir(path.parent)
    except StoreError as err:
        raise StoreError(f"store reset refused: {err}") from err
    try:
        present = [
            path.with_name(path.name + suffix)
            for suffix in ("", "-wal", "-shm")
            if os.path.lexists(path.with_name(path.name + suffix))  # a link to nowhere too
        ]
        if not present:
            return Reset([], None, None)
        try:
            problem = damage(path)
        except StoreError as err:  # the disk or a permission, not the file (`unopenable`)
            if not force:
                raise StoreError(f"{err}; to start empty anyway, add --force") from err
            problem = None  # moved aside by force, as a valid store
        if problem is None and not force:
            raise StoreError(
                f"{path} is a valid store, not reset: it may hold data not"
                " delivered yet (`edge-stream store stats` shows it). To start empty"
                " anyway, add --force"
            )
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        for source in present:
            source.rename(aside.with_name(aside.name + source.name[len(path.name) :]))
        return Reset(present, aside, problem)
    finally:
        let_go_data_dir(lock)

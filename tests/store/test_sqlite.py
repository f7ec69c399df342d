"""The SQLite store: group commit, cursors, retention, redelivery marks, dead letters."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import sqlite3
import subprocess
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.component import MARK_QOS2
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.store.admin import reset
from gateway.store.sqlite import (
    SHORT_PASS_BYTES,
    SHORT_PURGE_BYTES,
    TAIL_MAX_BYTES,
    Batch,
    DeadLetter,
    Store,
    StoreError,
    _chunk_end,
    hold_data_dir,
    let_go_data_dir,
    unopenable,
)

pytestmark = pytest.mark.integration


def ff(n: int, topic: str = "t/1", size: int = 10) -> FlowFile:
    return FlowFile.create(topic, str(n).encode().ljust(size, b" "))


def batch(
    rows: list[tuple[FlowFile, int]], inbound: list[tuple[str, int, bytes]] | None = None
) -> Batch:
    return Batch(rows, [], {}, inbound or [])


async def open_store(path: Path, sinks: tuple[str, ...] = ("a", "b"), **opts: object) -> Store:
    store = Store(path / "store.db", **opts)  # type: ignore[arg-type]
    await store.open(sinks)
    return store


async def test_each_sink_reads_its_own_rows_in_order(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a, b = store.bit("a"), store.bit("b")
    items = [(ff(i), a if i % 2 else a | b) for i in range(10)]
    await store.commit(batch(items))
    rows_a, seen_a = await store.read("a", store.cursor("a"), 100)
    rows_b, _ = await store.read("b", store.cursor("b"), 100)
    assert [f.id for _, f in rows_a] == [f.id for f, _ in items]
    assert [f.id for _, f in rows_b] == [f.id for f, m in items if m & b]
    assert store.depth("a") == 10 and store.depth("b") == 5
    await store.advance("a", seen_a, len(rows_a), [])
    assert store.depth("a") == 0
    # b has not delivered yet, so nothing may be purged
    assert await store.maintain(["a", "b"]) == 0
    await store.close()


async def test_cursor_survives_reopen_and_rows_keys_never_repeat(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a",))
    await store.commit(batch([(ff(i), store.bit("a")) for i in range(5)]))
    rows, seen = await store.read("a", store.cursor("a"), 100)
    await store.advance("a", seen, len(rows), [])
    assert await store.maintain(["a"]) == 5
    last_seq = rows[-1][0]
    await store.close()
    # the table is empty now; a bare rowid would restart at 1 and collide with old cursors
    store = await open_store(tmp_path, ("a",))
    assert store.cursor("a") == last_seq
    await store.commit(batch([(ff(9), store.bit("a"))]))
    rows, _ = await store.read("a", store.cursor("a"), 100)
    assert len(rows) == 1 and rows[0][0] > last_seq
    await store.close()


async def test_drop_oldest_keeps_the_store_within_its_budget(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a",), max_bytes=1 << 20, overflow="drop_oldest")
    payload = 2000
    for start in range(0, 2000, 100):
        await store.commit(
            batch([(ff(i, size=payload), store.bit("a")) for i in range(start, start + 100)])
        )
    assert store.bytes <= 1 << 20
    assert store.dropped > 0
    rows, _ = await store.read("a", store.cursor("a"), 5000)
    assert len(rows) == store.depth("a") == 2000 - store.dropped
    # the newest survive, the oldest went
    assert rows[-1][1].content.startswith(b"1999")
    await store.close()


async def test_drop_oldest_counts_only_what_a_sink_still_waited_for(tmp_path: Path) -> None:
    # Delivered rows not yet purged were dropped too and counted (and logged at ERROR) as
    # lost: `dropped` said more was lost than was, so delivered + dropped > received.
    store = await open_store(tmp_path, ("a",), max_bytes=1 << 20, overflow="drop_oldest")
    await store.commit(batch([(ff(i, size=2000), store.bit("a")) for i in range(100)]))
    rows, seen = await store.read("a", store.cursor("a"), 1000)
    await store.advance("a", seen, len(rows), [])  # delivered; the purge has not run yet
    for start in range(100, 2000, 100):
        await store.commit(
            batch([(ff(i, size=2000), store.bit("a")) for i in range(start, start + 100)])
        )
    rows, _ = await store.read("a", store.cursor("a"), 5000)
    assert store.dropped > 0
    assert len(rows) + store.dropped == 1900  # every undelivered one: kept or dropped
    await store.close()


async def test_drop_oldest_logs_one_error_line_per_interval_with_the_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full budget drops at every commit, and each drop was an ERROR line (as many
    lines as commits); the QoS 0 drops are said once per interval with the count."""
    store = await open_store(tmp_path, ("a",), max_bytes=1 << 20, overflow="drop_oldest")
    now = [1000.0]
    store._drops_log.monotonic = lambda: now[0]
    a = store.bit("a")

    def lines() -> list[str]:
        said = [r for r in caplog.records if "reached its budget" in r.getMessage()]
        assert all(r.levelname == "ERROR" for r in said)
        return [r.getMessage() for r in said]

    start = 0
    while not store.dropped:
        await store.commit(batch([(ff(i, size=2000), a) for i in range(start, start + 100)]))
        start += 100
    logged = store.dropped
    for more in range(start, start + 1000, 100):
        await store.commit(batch([(ff(i, size=2000), a) for i in range(more, more + 100)]))
    assert store.dropped > logged
    [first] = lines()  # the first drop, at once; the others within the interval: not yet
    assert f"dropped {logged} of the oldest FlowFiles ({logged} in all" in first
    now[0] += 29.0
    await store.maintain(["a"])
    assert len(lines()) == 1
    now[0] += 1.0  # the interval is over: the maintenance pass says the rest
    await store.maintain(["a"])
    second = lines()[1]
    assert f"dropped {store.dropped - logged} of the oldest" in second
    assert f"({store.dropped} in all" in second
    now[0] += 60.0
    await store.maintain(["a"])
    assert len(lines()) == 2  # nothing new: nothing said
    before = store.dropped
    for more in range(start + 1000, start + 1300, 100):
        await store.commit(batch([(ff(i, size=2000), a) for i in range(more, more + 100)]))
    assert len(lines()) == 3  # the first after a quiet interval, at once
    assert store.dropped > before + 100, "more dropped within the interval"
    await store.close()  # a stop says those at once
    assert f"({store.dropped} in all" in lines()[-1]


async def test_a_flowfile_larger_than_the_whole_buffer_is_dead_lettered_for_each_sink(
    tmp_path: Path,
) -> None:
    """Its content and topic fit and its attributes (not measured) did not: it was
    stored, then dropped by the next commit before any sink had it."""
    store = await open_store(tmp_path, ("a", "b"), max_bytes=2000, overflow="drop_oldest")
    a, b = store.bit("a"), store.bit("b")
    big = FlowFile.create("t/1", b"x" * 100, {"note": "y" * 2000})
    await store.commit(batch([(ff(1), a), (big, a | b)]))
    assert (store.depth("a"), store.depth("b")) == (1, 0)
    dead = await store.dead_letters(10)
    assert sorted((d.id, d.sink) for d in dead) == [(big.id, "a"), (big.id, "b")]
    assert "(1900 bytes of buffer.max_bytes: 2000)" in dead[0].reason
    await store.close()


async def test_a_flowfile_larger_than_drop_oldest_keeps_is_stored_for_its_block_sinks_only(
    tmp_path: Path,
) -> None:
    """Routed to a `block` sink and a `drop_oldest` one, it was stored for both: once the
    `block` sink had it, the next commit dropped it, before the other had it (lost)."""
    store = await open_store(tmp_path, max_bytes=2000, overflow="drop_oldest")
    store.set_overflow({"a": "block"})
    a, b = store.bit("a"), store.bit("b")
    big = FlowFile.create("t/1", b"x" * 2000)
    await store.commit(batch([(big, a | b)]))
    assert (store.depth("a"), store.depth("b")) == (1, 0)
    [dead] = await store.dead_letters(10)
    assert (dead.id, dead.sink) == (big.id, "b")
    # named in the reason: `dead-letters list` and the console show origin and reason only
    assert dead.reason.endswith("it would drop it before sink 'b' had it")
    await store.close()
    store = await open_store(tmp_path, max_bytes=2000, overflow="drop_oldest")
    store.set_overflow({"a": "block"})
    rows, _ = await store.read("a", store.cursor("a"), 10)  # its checksum holds
    assert [f.content for _, f in rows] == [big.content]
    assert store.depth("b") == 0
    await store.close()


async def test_a_flowfile_just_under_the_budget_is_dead_lettered_not_dropped_at_once(
    tmp_path: Path,
) -> None:
    """One between the 95 % drop_oldest keeps and the whole budget was stored (its source
    acknowledged), then dropped by the next commit before any sink had it."""
    store = await open_store(tmp_path, ("a",), max_bytes=2000, overflow="drop_oldest")
    near = FlowFile.create("t/1", b"x" * (1950 - 96 - 3 - 2))  # 1950 bytes counted
    await store.commit(batch([(near, store.bit("a"))]))
    await store.commit(batch([(ff(1), store.bit("a"))]))
    assert (store.depth("a"), store.dropped) == (1, 0)
    assert [(d.id, d.sink) for d in await store.dead_letters(10)] == [(near.id, "a")]
    await store.close()


async def test_block_reports_over_budget_until_sinks_drain(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a",), max_bytes=1 << 20, overflow="block")
    while not store.over_budget:
        await store.commit(batch([(ff(i, size=4000), store.bit("a")) for i in range(50)]))
    assert store.dropped == 0
    rows, seen = await store.read("a", store.cursor("a"), 100000)
    await store.advance("a", seen, len(rows), [])
    await store.maintain(["a"])
    assert not store.over_budget and store.bytes == 0
    await store.close()


async def test_inbound_marks_recognise_a_redelivery_after_restart(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a",))
    await store.commit(batch([(ff(1), store.bit("a"))], inbound=[("mqtt1", 7, b"digest-1")]))
    assert store.committed("mqtt1", 7, b"digest-1")
    await store.close()
    store = await open_store(tmp_path, ("a",))
    assert store.committed("mqtt1", 7, b"digest-1")
    assert not store.committed("mqtt1", 7, b"digest-2")
    assert not store.committed("mqtt2", 7, b"digest-1")
    await store.close()


async def test_an_old_mark_does_not_match_a_repeated_message(tmp_path: Path) -> None:
    """Packet id 7 comes round again after 65,535 messages; a sensor that sends the same
    reading again must not have that new message taken for a redelivery of the old one."""
    store = await open_store(tmp_path, ("a",))
    await store.commit(batch([], inbound=[("mqtt1", 7, b"same-msg")]))
    later = [("mqtt1", 8 + n % 60_000, b"other-mg") for n in range(40_000)]
    await store.commit(batch([], inbound=later))
    assert not store.committed("mqtt1", 7, b"same-msg")
    assert store.committed("mqtt1", 8 + 39_999, b"other-mg")  # among the last messages
    assert not store.committed("mqtt1", 8, b"other-mg")  # 39,999 messages ago
    await store.close()
    store = await open_store(tmp_path, ("a",))  # the numbering survives a restart
    assert not store.committed("mqtt1", 7, b"same-msg")
    assert store.committed("mqtt1", 8 + 39_999, b"other-mg")
    await store.close()


async def test_overlapping_commits_keep_the_marks_numbering(tmp_path: Path) -> None:
    """A dead-letter replay commits while an ingest commit is still on the store thread."""
    store = await open_store(tmp_path, ("a",))
    first = batch([], inbound=[("mqtt1", 7, b"same-msg")])
    await asyncio.gather(store.commit(first), store.commit(batch([])))
    later = batch([], inbound=[("mqtt1", 8 + n % 60_000, b"other-mg") for n in range(40_000)])
    await asyncio.gather(store.commit(later), store.commit(batch([])))
    assert not store.committed("mqtt1", 7, b"same-msg")
    await store.close()


async def test_many_rows_fit_a_low_sqlite_variable_limit(tmp_path: Path) -> None:
    """SQLite before 3.32 binds at most 999 variables in one statement."""
    store = await open_store(tmp_path, ("a",))
    assert store._db is not None
    store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    await store.commit(batch([(ff(n), store.bit("a")) for n in range(1000)]))
    rows, _ = await store.read("a", 0, 2000)
    assert [f.content.strip() for _, f in rows] == [str(n).encode() for n in range(1000)]
    await store.close()


async def test_marks_written_before_they_were_numbered_still_match(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a",))
    await store.close()
    db = sqlite3.connect(tmp_path / "store.db")
    db.execute("INSERT INTO inbound (source, slot, digest) VALUES ('mqtt1', 7, ?)", (b"8bytes!!",))
    db.commit()
    db.close()
    store = await open_store(tmp_path, ("a",))
    assert store.committed("mqtt1", 7, b"8bytes!!")
    await store.close()


async def test_dead_letters_and_state_commit_with_the_batch(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a",))
    bad = ff(1)
    await store.commit(
        Batch(
            [(ff(2), store.bit("a"))],
            [DeadLetter(bad, "route r", "not JSON")],
            {"route r: processor 0": b"state"},
            [],
        )
    )
    rows, seen = await store.read("a", store.cursor("a"), 10)
    await store.advance("a", seen, 0, [DeadLetter(rows[0][1], "sink a", "refused", "a")])
    assert store.dead_count == 2
    got = await store._query("SELECT id, origin, reason, sink FROM dead_letters ORDER BY seq")
    assert got == [(bad.id, "route r", "not JSON", None), (rows[0][1].id, "sink a", "refused", "a")]
    assert await store.load_state() == {"route r: processor 0": b"state"}
    await store.close()


async def test_a_new_sink_starts_at_the_end(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a",))
    await store.commit(batch([(ff(i), store.bit("a")) for i in range(3)]))
    await store.register_sinks(["late"])
    rows, _ = await store.read("late", store.cursor("late"), 10)
    assert rows == []
    await store.close()


@pytest.mark.parametrize("sync", ["normal", "full"])
async def test_synchronous_modes_open(tmp_path: Path, sync: str) -> None:
    store = await open_store(tmp_path, ("a",), synchronous=sync)
    assert (await store._query("PRAGMA journal_mode"))[0][0] == "wal"
    await store.close()
    await store.close()  # idempotent


async def test_per_sink_overflow_drops_only_what_no_blocking_sink_waits_for(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("keep", "lossy"), max_bytes=1 << 20)
    store.set_overflow({"keep": "block"})
    keep, lossy = store.bit("keep"), store.bit("lossy")
    # a third of the data is for the blocking sink, the rest only for the lossy one
    for start in range(0, 1500, 100):
        await store.commit(
            batch(
                [
                    (ff(i, size=2000), keep if i % 3 == 0 else lossy)
                    for i in range(start, start + 100)
                ]
            )
        )
    assert store.dropped > 0
    assert store.depth("keep") == 500  # nothing the blocking sink waits for was dropped
    rows, _ = await store.read("keep", store.cursor("keep"), 10_000)
    assert len(rows) == 500
    # once only blocking data is left and the budget is full, intake must stop
    for start in range(1500, 2400, 100):
        await store.commit(batch([(ff(i, size=2000), keep) for i in range(start, start + 100)]))
    assert store.over_budget
    rows, seen = await store.read("keep", store.cursor("keep"), 10_000)
    await store.advance("keep", seen, len(rows), [])
    await store.maintain(["keep", "lossy"])
    await store.make_room()  # what is left waits only for the lossy sink: dropped
    assert not store.over_budget
    await store.close()


@pytest.mark.parametrize("change", ["removed", "drop_oldest"])
async def test_a_budget_full_for_a_block_sink_makes_room_once_it_no_longer_blocks(
    tmp_path: Path, change: str
) -> None:
    """The budget full of what a `block` sink waited for, make_room found nothing to drop
    and remembered so; a reload that removed that sink (its backlog then counts as
    drop_oldest) or set it to `overflow: drop_oldest` changed neither the bytes nor the
    cursors, so make_room still found "nothing changed" and intake stayed blocked for
    good."""
    store = await open_store(tmp_path, ("a", "b"), max_bytes=1 << 20)
    store.set_overflow({"a": "block"})
    store.set_active(["a", "b"])
    while not store.over_budget:
        await store.commit(batch([(ff(i, size=4000), store.bit("a")) for i in range(50)]))
    await store.make_room()
    assert store.over_budget and store.dropped == 0  # all of it waits for the block sink
    if change == "removed":
        store.set_active(["b"])
    else:
        store.set_overflow({})
    await store.make_room()
    assert not store.over_budget
    assert store.dropped > 0
    await store.close()


@pytest.mark.parametrize("change", ["removed", "drop_oldest"])
async def test_a_sink_no_longer_blocking_while_a_scan_runs_makes_room_after_it(
    tmp_path: Path, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reload's reset of make_room's "nothing to drop" note (set_active, set_overflow,
    on the event loop) landed while a scan on the store thread, begun with the old
    `block` sinks, still ran: the scan wrote its note back after the reset, and intake
    stayed blocked for good."""
    store = await open_store(tmp_path, ("a", "b"), max_bytes=1 << 20)
    store.set_overflow({"a": "block"})
    store.set_active(["a", "b"])
    while not store.over_budget:
        await store.commit(batch([(ff(i, size=4000), store.bit("a")) for i in range(50)]))
    blocking = store._blocking

    def then_the_reload() -> list[tuple[int, str]]:
        old = blocking()  # the scan has the old list; the reload lands now
        if change == "removed":
            store.set_active(["b"])
        else:
            store.set_overflow({})
        return old

    monkeypatch.setattr(store, "_blocking", then_the_reload)
    await store.make_room()
    monkeypatch.setattr(store, "_blocking", blocking)
    assert store.over_budget and store.dropped == 0  # that scan still kept it all
    await store.make_room()
    assert not store.over_budget
    assert store.dropped > 0
    await store.close()


async def test_new_sinks_are_registered_all_or_none(tmp_path: Path) -> None:
    """Each new sink was registered in a transaction of its own: of two new sinks, the
    first stayed when the second failed, shown as a removed sink (`store stats`,
    /api/status) and holding one of the 62 bits, though no config ever ran it."""
    names = tuple(f"s{i}" for i in range(61))
    store = await open_store(tmp_path, names)
    store.set_active(names)
    with pytest.raises(StoreError, match="at most 62 sinks"):
        await store.register_sinks([*names, "x", "y"])  # x fits, y is the 63rd
    assert store.removed_sinks() == {}
    with pytest.raises(KeyError):
        store.bit("x")
    await store.close()
    db = sqlite3.connect(tmp_path / "store.db")
    assert db.execute("SELECT count(*) FROM sinks WHERE name = 'x'").fetchone()[0] == 0
    db.close()
    store = await open_store(tmp_path, ())
    await store.register_sinks(["x"])  # the bit it would have held is free
    assert store.cursor("x") == 0 and store.depth("x") == 0
    await store.close()


async def test_known_sinks_register_while_the_cli_holds_the_write_lock(tmp_path: Path) -> None:
    """Registering took the write lock even when every sink was known: with `store purge`
    (or replay, drop-sink) holding it past the busy timeout, the gateway's start and a
    reload that only restarts a sink failed with a StoreError."""
    store = await open_store(tmp_path)
    await store._query("PRAGMA busy_timeout = 0")  # a wait for the lock fails at once
    cli = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    cli.execute("BEGIN IMMEDIATE")
    try:
        await store.register_sinks(["a", "b", "a"])
        with pytest.raises(StoreError):  # a new sink does need the lock
            await store.register_sinks(["a", "c"])
    finally:
        cli.execute("ROLLBACK")
        cli.close()
    await store.register_sinks(["a", "c"])
    assert store.cursor("c") == 0
    await store.close()


async def test_reads_from_the_memory_tail_match_reads_from_disk(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a, b = store.bit("a"), store.bit("b")
    for start in range(0, 600, 50):
        await store.commit(
            batch([(ff(i), a if i % 3 else a | b) for i in range(start, start + 50)])
        )
    for sink in ("a", "b"):
        for after, limit in ((0, 1000), (0, 7), (store.cursor(sink) + 123, 40)):
            from_memory = await store.read(sink, after, limit)
            tail = list(store._tail)
            store._tail.clear()
            from_disk = await store.read(sink, after, limit)
            store._tail.extend(tail)
            assert [(s, f.id) for s, f in from_memory[0]] == [(s, f.id) for s, f in from_disk[0]]
            assert from_memory[1] == from_disk[1]
    await store.close()


async def test_a_row_inserted_by_another_process_is_not_skipped(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a",))
    await store.commit(batch([(ff(i), store.bit("a")) for i in range(3)]))
    rows, seen = await store.read("a", store.cursor("a"), 10)
    await store.advance("a", seen, len(rows), [])
    # what `edge-stream dead-letters replay` does while the gateway runs
    other = sqlite3.connect(tmp_path / "store.db")
    other.execute(
        "INSERT INTO flowfiles (id, topic, attributes, content, created, lineage, sinks, size)"
        " VALUES ('replayed', 't', '{}', x'00', 0, '', ?, 100)",
        (store.bit("a"),),
    )
    other.commit()
    other.close()
    await store.commit(batch([(ff(9), store.bit("a"))]))
    rows, _ = await store.read("a", store.cursor("a"), 10)
    assert rows[0][1].id == "replayed" and len(rows) == 2
    await store.close()


async def test_the_memory_tail_stays_within_its_byte_budget(tmp_path: Path) -> None:
    """At 250 KB payloads the tail must hold a few dozen FlowFiles, not 10,000."""
    store = await open_store(tmp_path, ("a",))
    for start in range(0, 200, 10):
        await store.commit(
            batch([(ff(i, size=250_000), store.bit("a")) for i in range(start, start + 10)])
        )
        held = sum(len(f.content) for _, f, _, _ in store._tail)
        assert held <= store.tail_bytes <= TAIL_MAX_BYTES
    assert store._tail, "the tail still serves caught-up sinks"
    # what is left in the tail is the newest run, and reads from it still line up
    rows, seen = await store.read("a", store.cursor("a"), 1000, 1 << 40)
    assert len(rows) == 200 and seen == rows[-1][0]
    await store.release_memory()
    assert not store._tail and store.tail_bytes == 0
    rows_again, _ = await store.read("a", store.cursor("a"), 1000, 1 << 40)
    assert [f.id for _, f in rows_again] == [f.id for _, f in rows]
    await store.close()


@pytest.mark.parametrize("where", ["memory", "disk"])
async def test_a_read_stays_within_max_bytes_unless_one_flowfile_is_larger(
    tmp_path: Path, where: str
) -> None:
    store = await open_store(tmp_path, ("a",))
    sizes = [100_000, 60_000, 250_000, 30_000, 900_000, 10_000, 10_000]
    await store.commit(batch([(ff(i, size=n), store.bit("a")) for i, n in enumerate(sizes)]))
    if where == "disk":
        store.forget_tail()
    after, batches = store.cursor("a"), []
    while True:
        rows, seen = await store.read("a", after, 1000, 300_000)
        if not rows:
            break
        batches.append([len(f.content) for _, f in rows])
        assert seen == rows[-1][0]
        after = seen
    assert batches == [[100_000, 60_000], [250_000, 30_000], [900_000], [10_000, 10_000]]
    await store.close()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty (0 bytes)"),
        (b"these are not the pages of a database\n" * 100, "is not a SQLite database"),
        (b"SQLite format 3\x00" + b"\xff" * 4000, "cannot be read"),
    ],
)
async def test_a_store_file_that_is_not_a_store_is_refused(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    (tmp_path / "store.db").write_bytes(content)
    store = Store(tmp_path / "store.db")
    with pytest.raises(StoreError) as caught:
        await store.open(["a"])
    await store.close()
    message = str(caught.value)
    assert problem in message and "edge-stream store reset" in message and "\n" not in message
    assert (tmp_path / "store.db").read_bytes() == content, "the file is left as it was"


async def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "store.db")
    other.execute("CREATE TABLE notes (body TEXT)")
    other.commit()
    other.close()
    store = Store(tmp_path / "store.db")
    with pytest.raises(StoreError, match="without the store's tables"):
        await store.open(["a"])
    await store.close()


async def test_a_new_data_dir_gets_a_whole_store(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "new" / "dir", ("a",))
    await store.close()
    assert not (tmp_path / "new" / "dir" / "store.db.new").exists()
    store = await open_store(tmp_path / "new" / "dir", ("a",))  # and it opens again
    await store.close()


async def test_a_flipped_byte_in_a_stored_payload_is_dead_lettered_not_delivered(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path, ("a", "b"))
    both = store.bit("a") | store.bit("b")
    await store.commit(batch([(ff(i, size=100), both) for i in range(5)]))
    await store.close()
    # between runs, one byte of the third payload changes on disk
    db = sqlite3.connect(tmp_path / "store.db")
    seq, content = db.execute("SELECT seq, content FROM flowfiles ORDER BY seq").fetchall()[2]
    flipped = content[:50] + bytes([content[50] ^ 0x01]) + content[51:]
    db.execute("UPDATE flowfiles SET content = ? WHERE seq = ?", (flipped, seq))
    db.commit()
    db.close()
    store = await open_store(tmp_path, ("a", "b"))
    for sink in ("a", "b"):
        rows, seen = await store.read(sink, store.cursor(sink), 100)
        assert [s for s, _ in rows] == [s for s in range(seq - 2, seq + 3) if s != seq]
        assert seen == seq + 2
        await store.advance(sink, seen, len(rows), [])
        assert store.depth(sink) == 0
    dead = await store._query("SELECT sink, origin, reason, content FROM dead_letters")
    assert sorted(d[0] for d in dead) == ["a", "b"]
    assert all(d[1] == "store" and d[2].startswith("corrupt in store") for d in dead)
    assert all(d[3] == flipped for d in dead) and store.dead_count == 2
    assert store.dead_bytes == _dead_sum(store.path) > 2 * len(flipped)  # their budget's
    await store.close()


async def test_a_store_from_before_checksums_opens_and_delivers(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "store.db")
    old.executescript(
        "CREATE TABLE flowfiles (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
        " topic TEXT NOT NULL, attributes TEXT NOT NULL, content BLOB NOT NULL,"
        " created INTEGER NOT NULL, lineage TEXT NOT NULL, sinks INTEGER NOT NULL,"
        " size INTEGER NOT NULL);"
        "CREATE TABLE sinks (name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE,"
        " cursor INTEGER NOT NULL);"
        "INSERT INTO sinks VALUES ('a', 0, 0);"
        "INSERT INTO flowfiles (id, topic, attributes, content, created, lineage, sinks, size)"
        " VALUES ('old-1', 't/1', '{}', x'7b7d', 1, '', 1, 100);"
    )
    old.commit()
    old.close()
    store = await open_store(tmp_path, ("a",))
    await store.commit(batch([(ff(1), store.bit("a"))]))
    rows, _ = await store.read("a", store.cursor("a"), 100)
    assert rows[0][1].id == "old-1" and len(rows) == 2
    await store.close()


async def test_qos2_messages_count_in_the_window_of_a_qos1_mark(tmp_path: Path) -> None:
    """QoS 1 and 2 on one source share the packet ids: 40,000 QoS 2 messages after a QoS 1
    one mean its id has come round since, so its mark must no longer match."""
    store = await open_store(tmp_path, ("a",))
    await store.commit(batch([], inbound=[("mqtt1", 7, b"same-msg")]))
    qos2 = bytes((MARK_QOS2,))
    later = [("mqtt1", 8 + n % 60_000, b"other-mg" + qos2) for n in range(40_000)]
    await store.commit(batch([], inbound=later))
    assert not store.committed("mqtt1", 7, b"same-msg")
    await store.close()
    store = await open_store(tmp_path, ("a",))  # the count of QoS 2 ones survives a restart
    assert not store.committed("mqtt1", 7, b"same-msg")
    await store.commit(batch([], inbound=[("mqtt1", 9, b"next-msg")]))
    assert store.committed("mqtt1", 9, b"next-msg")
    await store.close()


def _flip_content(path: Path, index: int) -> tuple[int, bytes]:
    """Change one byte of the `index`th stored payload behind the store's back."""
    db = sqlite3.connect(path)
    seq, content = db.execute("SELECT seq, content FROM flowfiles ORDER BY seq").fetchall()[index]
    flipped = content[:50] + bytes([content[50] ^ 0x01]) + content[51:]
    db.execute("UPDATE flowfiles SET content = ? WHERE seq = ?", (flipped, seq))
    db.commit()
    db.close()
    return seq, flipped


async def test_a_corrupt_row_read_again_is_dead_lettered_once(tmp_path: Path) -> None:
    """Upstream down: the sink reads the same range again and again without moving its
    cursor. The corrupt row is recorded once, and the depth counts it once."""
    store = await open_store(tmp_path, ("a", "b"))
    both = store.bit("a") | store.bit("b")
    await store.commit(batch([(ff(i, size=100), both) for i in range(5)]))
    await store.close()
    seq, _ = _flip_content(tmp_path / "store.db", 2)
    store = await open_store(tmp_path, ("a", "b"))
    assert store.depth("a") == 5
    for _ in range(3):
        rows, seen = await store.read("a", store.cursor("a"), 100)
        assert [s for s, _ in rows] == [s for s in range(seq - 2, seq + 3) if s != seq]
        assert store.depth("a") == 4 and store.dead_count == 1
    dead = await store._query("SELECT sink FROM dead_letters")
    assert dead == [("a",)]
    await store.close()
    # after a restart too: the row is no longer waiting for a, still for b
    store = await open_store(tmp_path, ("a", "b"))
    assert store.depth("a") == 4 and store.depth("b") == 5 and store.dead_count == 1
    rows, seen = await store.read("a", store.cursor("a"), 100)
    assert len(rows) == 4 and store.dead_count == 1
    await store.advance("a", seen, len(rows), [])
    assert store.depth("a") == 0
    rows, seen = await store.read("b", store.cursor("b"), 100)
    rows, seen = await store.read("b", store.cursor("b"), 100)
    assert len(rows) == 4 and store.depth("b") == 4 and store.dead_count == 2
    await store.close()


async def test_a_damaged_sinks_mask_or_size_is_caught(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a", "b"))
    await store.commit(batch([(ff(i, size=100), store.bit("a")) for i in range(3)]))
    await store.close()
    db = sqlite3.connect(tmp_path / "store.db")
    seqs = [row[0] for row in db.execute("SELECT seq FROM flowfiles ORDER BY seq")]
    db.execute("UPDATE flowfiles SET sinks = 3 WHERE seq = ?", (seqs[0],))  # b's bit on
    db.execute("UPDATE flowfiles SET size = size + 1 WHERE seq = ?", (seqs[1],))
    db.commit()
    db.close()
    store = await open_store(tmp_path, ("a", "b"))
    rows_b, _ = await store.read("b", store.cursor("b"), 100)
    assert rows_b == [], "a FlowFile never routed to b is not delivered to it"
    rows_a, _ = await store.read("a", store.cursor("a"), 100)
    # the first row, once b's stray bit is gone, is whole again for a
    assert [s for s, _ in rows_a] == [seqs[0], seqs[2]]
    dead = await store._query("SELECT sink FROM dead_letters ORDER BY seq")
    assert dead == [("b",), ("a",)]
    await store.close()


async def test_bytearray_content_is_not_taken_for_corrupt(tmp_path: Path) -> None:
    store = await open_store(tmp_path, ("a",))
    content = bytearray(b'{"t": 21.5}')
    await store.commit(batch([(FlowFile.create("t/1", content), store.bit("a"))]))  # type: ignore[arg-type]
    store.forget_tail()  # read from disk, where the checksum is checked
    rows, _ = await store.read("a", store.cursor("a"), 100)
    assert [f.content for _, f in rows] == [b'{"t": 21.5}'] and store.dead_count == 0
    await store.close()


async def test_checksums_written_before_they_covered_sinks_and_size_still_match(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path, ("a",))
    await store.commit(batch([(ff(i, size=100), store.bit("a")) for i in range(2)]))
    await store.close()
    db = sqlite3.connect(tmp_path / "store.db")
    for seq, fid, topic, attrs, content, created, lineage in db.execute(
        "SELECT seq, id, topic, attributes, content, created, lineage FROM flowfiles"
    ).fetchall():
        head = f"{fid}\0{topic}\0{attrs}\0{created}\0{lineage}\0".encode()
        crc = zlib.crc32(content, zlib.crc32(head))  # as the first stores wrote it
        db.execute("UPDATE flowfiles SET crc = ? WHERE seq = ?", (crc, seq))
    db.commit()
    db.close()
    store = await open_store(tmp_path, ("a",))
    rows, _ = await store.read("a", store.cursor("a"), 100)
    assert len(rows) == 2 and store.dead_count == 0
    await store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs (the tests run as root); unmounted at the end whatever happened."""
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def take_disk(path: Path, leave: int) -> None:
    """Write a file at `path` that leaves about `leave` bytes free on its file system."""
    st = os.statvfs(path.parent)
    with path.open("wb") as f:
        left = st.f_bavail * st.f_frsize - leave
        while left > 0:
            chunk = min(left, 1 << 20)
            try:
                f.write(b"\0" * chunk)
                f.flush()
            except OSError:
                break
            left -= chunk


async def test_the_disk_reserve_is_back_before_intake_resumes(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk took the reserve; once space comes back, intake resumes only with the
    reserve made again, so the next full disk has one too. The log counts the reserve
    as the threshold does (it read "paused until 12 MiB are free", then "back: 9.3 MiB
    free; intake resumes")."""
    store = await open_store(small_disk, ("a",))
    assert store.reserve.exists() and not store.check_disk()
    for round_ in range(2):
        filler = small_disk / "filler"
        take_disk(filler, 2 << 20)
        assert store.check_disk(), "less than DISK_LOW free, the reserve counted"
        store.reserve.unlink()  # what the store does when SQLite finds the disk full
        await store.maintain(["a"])
        assert store.disk_full and not store.reserve.exists()
        filler.unlink()  # the operator makes room: 20 MB free
        while store.check_disk():
            await store.maintain(["a"])  # the maintenance loop, once a second
        assert store.reserve.exists(), f"round {round_}: intake resumed without the reserve"
    paused = [r.getMessage() for r in caplog.records if "disk full" in r.getMessage()]
    back = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
    assert "until 12 MiB are free (the 4 MiB reserve counted)" in paused[0]
    assert "MiB (store.db and WAL), and the 4 MiB reserve; intake resumes" in back[0]
    await store.close()


async def test_a_full_disk_purges_a_delivered_backlog_of_small_rows(small_disk: Path) -> None:
    """Delivered on a full disk, a backlog of small readings (1 KB: several a page, so the
    delete rewrote every page of it) was purged in one transaction, whose WAL needed more
    than the 4 MiB reserve gave back: each maintenance pass failed with "disk full", for
    good, and intake never resumed while the disk stayed full of the store itself. Then
    the freed pages went back to the file system 64 a pass (see the next test)."""
    store = await open_store(small_disk, ("a",))
    a = store.bit("a")
    for n in range(12):  # 12 MB of 1 KB rows
        await store.commit(batch([(ff(i, size=1000), a) for i in range(n * 1000, n * 1000 + 1000)]))
    take_disk(small_disk / "filler", 0)
    await store.maintain(["a"])  # the disk is short: the WAL is truncated
    assert store.disk_full and store.file_sizes()[1] == 0
    take_disk(small_disk / "filler2", 0)  # and another file takes what that gave back
    rows, seen = await store.read("a", store.cursor("a"), 20_000)
    assert len(rows) == 12_000
    await store.advance("a", seen, len(rows), [])  # on the reserve if need be
    for _ in range(5):  # the maintenance loop, once a second
        try:
            await store.maintain(["a"])
        except StoreError as err:
            raise AssertionError(f"a maintenance pass failed: {err}") from err
        empty = await store._query("SELECT count(*) FROM flowfiles") == [(0,)]
        if empty and not store.check_disk():
            break
    assert await store._query("SELECT count(*) FROM flowfiles") == [(0,)]
    assert store.bytes == 0
    assert not store.check_disk(), f"the purged backlog's space went back: {store.disk_text()}"
    await store.close()


async def test_a_drained_backlog_gives_its_pages_back_to_the_file_system(
    tmp_path: Path,
) -> None:
    """The maintenance pass meant to give up to 2048 free pages (8 MiB) back every 5 s,
    but the vacuum pragma, run by `execute`, freed one page a call: store.db stayed at
    its largest."""
    store = await open_store(tmp_path, ("a",))
    a = store.bit("a")
    for n in range(8):  # 8 MB of 1 KB rows
        await store.commit(batch([(ff(i, size=1000), a) for i in range(n * 1000, n * 1000 + 1000)]))
    rows, seen = await store.read("a", store.cursor("a"), 10_000)
    await store.advance("a", seen, len(rows), [])
    store._last_maintenance = time.monotonic()  # the vacuum ran a moment ago
    assert await store.maintain(["a"]) == 8000
    checkpoint = store._db.execute  # type: ignore[union-attr]
    await store._call(checkpoint, "PRAGMA wal_checkpoint(TRUNCATE)")
    big = store.file_sizes()[0]
    assert big > 8 << 20
    store._last_maintenance = 0.0  # 5 s later
    await store.maintain(["a"])
    await store._call(checkpoint, "PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.file_sizes()[0] < big - (7 << 20), (big, store.file_sizes())
    await store.close()


async def test_a_store_on_a_full_disk_is_not_called_damaged_nor_reset(small_disk: Path) -> None:
    """With no byte free, SQLite cannot make the store's -shm file: the start, `store stats`
    and the other store commands said the store "cannot be read (disk I/O error): not a
    valid Edge Stream store" and to run `store reset`, which then moved the whole valid
    store aside without --force: the gateway started empty, its backlog left behind."""
    from gateway.store.admin import open_admin

    store = await open_store(small_disk, ("a",))
    await store.commit(batch([(ff(i), store.bit("a")) for i in range(10)]))
    await store.close()
    store.reserve.unlink()  # given up at the full disk that came before
    take_disk(small_disk / "filler", 0)
    path = small_disk / "store.db"
    for attempt in (lambda: Store(path).open(["a"]), lambda: open_admin(path), lambda: reset(path)):
        with pytest.raises(StoreError) as err:
            result = attempt()
            if asyncio.iscoroutine(result):
                await result
        message = str(err.value)
        assert "cannot be opened" in message and "MiB free" in message, message
        assert "not a valid" not in message and "store reset" not in message, message
        assert "\n" not in message
    assert path.exists()
    (small_disk / "filler").unlink()
    store = await open_store(small_disk, ("a",))
    rows, _ = await store.read("a", store.cursor("a"), 100)
    assert len(rows) == 10
    await store.close()


async def test_store_reset_force_moves_aside_a_store_the_disk_cannot_open(
    small_disk: Path,
) -> None:
    """`store reset --force` is the operator's way to start fresh: it refused too, saying
    to make room, whenever SQLite could not open the store (a failing SD card as well)."""
    store = await open_store(small_disk, ("a",))
    await store.commit(batch([(ff(i), store.bit("a")) for i in range(10)]))
    await store.close()
    store.reserve.unlink()
    take_disk(small_disk / "filler", 0)
    path = small_disk / "store.db"
    with pytest.raises(StoreError) as err:
        reset(path)
    assert "make room on the disk" in str(err.value) and "add --force" in str(err.value)
    assert path.exists()
    done = reset(path, force=True)
    assert done.moved and done.moved[0] == path and not path.exists()
    assert done.aside is not None and done.aside.exists()


def test_an_io_error_with_room_on_the_disk_does_not_say_make_room(tmp_path: Path) -> None:
    """Every SQLITE_IOERR was "make room on the disk", a read error of a failing SD card
    with 74 GB free too. Room is said only for a full disk, the -shm file, or little free
    space; the other I/O errors say the disk could not be read."""
    path = tmp_path / "store.db"
    path.write_bytes(b"")

    def error(code: int) -> sqlite3.OperationalError:
        err = sqlite3.OperationalError("disk I/O error")
        err.sqlite_errorcode = code  # type: ignore[attr-defined]
        return err

    said = {}
    for name in ("SQLITE_IOERR_READ", "SQLITE_IOERR_SHMOPEN", "SQLITE_FULL"):
        with pytest.raises(StoreError) as err:
            unopenable(path, error(getattr(sqlite3, name)))
        said[name] = str(err.value)
    assert "make room" not in said["SQLITE_IOERR_READ"], said
    assert "the disk could not be read" in said["SQLITE_IOERR_READ"], said
    assert "make room on the disk" in said["SQLITE_IOERR_SHMOPEN"], said
    assert "make room on the disk" in said["SQLITE_FULL"], said
    unopenable(path, error(sqlite3.SQLITE_CORRUPT))  # the file's own: said by the caller


def test_a_data_dir_whose_lock_cannot_be_opened_is_refused_in_one_line(tmp_path: Path) -> None:
    """A data_dir on a read-only file system (or a folder in place of .lock) stopped the
    start with os.open's traceback."""
    (tmp_path / ".lock").mkdir()
    with pytest.raises(StoreError) as err:
        hold_data_dir(tmp_path)
    assert str(err.value) == (
        f"gateway.data_dir {tmp_path}: cannot use it as the gateway's folder (cannot open"
        f" {tmp_path}/.lock: Is a directory); give a folder the gateway may write"
    )


async def test_a_reserve_the_file_system_cannot_hold_is_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file-size limit (EFBIG) or a file system without fallocate: the warning was
    logged again at every maintenance, every 5 s for the life of the gateway."""

    def refuse(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    store = await open_store(tmp_path, ("a",))
    store._keep_reserve_sync()
    store._keep_reserve_sync()
    warned = [r for r in caplog.records if "cannot keep the disk reserve" in r.getMessage()]
    assert len(warned) == 1 and not store.reserve.exists()
    await store.close()


def refuse_fallocate(monkeypatch: pytest.MonkeyPatch, err: int) -> list[int]:
    """posix_fallocate fails with `err`; returns the list of its tries."""
    tries: list[int] = []

    def refuse(fd: int, offset: int, length: int) -> None:
        tries.append(fd)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    return tries


async def test_a_reserve_refused_for_want_of_quota_is_tried_at_each_maintenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quota is short of space: tried again at each maintenance, and intake waits for
    the reserve after a full disk (it gave up the reserve for the life of the gateway)."""
    fallocate = os.posix_fallocate
    tries = refuse_fallocate(monkeypatch, errno.EDQUOT)
    store = await open_store(tmp_path, ("a",))  # tries once
    store._keep_reserve_sync()
    assert not store._no_reserve
    store._keep_reserve_sync()
    assert len(tries) == 3 and not store._no_reserve and not store.reserve.exists()
    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    store._keep_reserve_sync()
    assert store.reserve.exists()
    await store.close()


async def test_a_reserve_refused_for_another_reason_is_tried_again_every_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An I/O error, a read-only remount: it gave up the reserve for the life of the
    gateway, and the next full disk left delivery no room."""
    fallocate = os.posix_fallocate
    tries = refuse_fallocate(monkeypatch, errno.EIO)
    store = await open_store(tmp_path, ("a",))  # tries once
    assert store._no_reserve
    now, hour = time.monotonic(), 3600  # the README's promise, not the constant
    with monkeypatch.context() as clock:  # not around an await: the event loop's clock
        clock.setattr(time, "monotonic", lambda: now + hour - 1)
        store._keep_reserve_sync()
        assert len(tries) == 1, "not before the hour"
        clock.setattr(time, "monotonic", lambda: now + hour + 1)
        store._keep_reserve_sync()
        store._keep_reserve_sync()
        assert len(tries) == 2, "once after it"
        monkeypatch.setattr(os, "posix_fallocate", fallocate)
        clock.setattr(time, "monotonic", lambda: now + 2 * hour + 2)
        store._keep_reserve_sync()
    assert store.reserve.exists() and not store._no_reserve
    warned = [r for r in caplog.records if "cannot keep the disk reserve" in r.getMessage()]
    assert len(warned) == 1
    await store.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_store_file_deleted_under_the_gateway_stops_intake(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """store.db deleted (or a copy put in its place) while open: the gateway went on
    committing and acknowledging into the old file, which no restart finds. Intake stops
    with one ERROR line; what the open file holds is still delivered."""
    store = await open_store(tmp_path, ("a",))
    await store.commit(batch([(ff(i), store.bit("a")) for i in range(3)]))
    assert not store.check_disk()
    if how == "deleted":
        store.path.unlink()
    else:
        copy = tmp_path / "copy.db"
        copy.write_bytes(store.path.read_bytes())
        copy.replace(store.path)
    assert store.check_disk() and store.check_disk()
    [line] = [r.getMessage() for r in caplog.records if "deleted or replaced" in r.getMessage()]
    assert str(store.path) in line and "intake stopped" in line
    rows, seen = await store.read("a", store.cursor("a"), 100)
    await store.advance("a", seen, len(rows), [])
    assert len(rows) == 3 and store.depth("a") == 0
    await store.close()
    # the restart the ERROR line asks for: it was refused, store.db "missing while its
    # write-ahead log (-wal) is there" (the empty WAL the deleted file's close left)
    store = await open_store(tmp_path, ("a",))
    assert store.depth("a") == 0
    await store.close()


@pytest.mark.parametrize("action", ["release", "new_session"])
async def test_a_full_disk_is_named_when_qos2_ids_are_forgotten(
    small_disk: Path, action: str
) -> None:
    """SQLite rolls back by itself on a full disk: the error says "disk full", not that
    a ROLLBACK after it found no transaction."""
    store = await open_store(small_disk, ("a",))
    held = [("src", i, b"d" * 8 + bytes([MARK_QOS2])) for i in range(1, 2001)]
    await store.commit(batch([], held))
    await store.close()
    store = await open_store(small_disk, ("a",))
    store.reserve.unlink()
    filler = small_disk / "filler"
    take_disk(filler, 0)
    marks = store.marks("src")
    with pytest.raises(StoreError) as err:
        if action == "release":
            await marks.release(list(range(1, 2001)))
        else:
            await marks.new_session()
    assert "disk full" in str(err.value) and "cannot rollback" not in str(err.value)
    filler.unlink()
    await store.close()


async def test_a_damaged_database_page_is_named_with_what_to_do(tmp_path: Path) -> None:
    """SQLite finds a page of the flowfiles table damaged (SQLITE_CORRUPT): the read does
    not fail as a retryable error forever but as a permanent one (the sink stops, shown as
    failed) whose one line names the store file and `edge-stream store reset`."""
    store = await open_store(tmp_path, ("a",))
    flowfiles = [ff(i, size=200) for i in range(500)]
    await store.commit(batch([(f, store.bit("a")) for f in flowfiles]))
    await store.close()
    store = await open_store(tmp_path, ("a",))
    await store._query("PRAGMA shrink_memory")  # what it read at open is read again
    data = bytearray((tmp_path / "store.db").read_bytes())
    page_size = (await store._query("PRAGMA page_size"))[0][0]
    where = data.index(flowfiles[250].id.encode())
    start = where - where % page_size
    data[start : start + 16] = b"\xff" * 16  # the page header: not a b-tree page any more
    with (tmp_path / "store.db").open("r+b") as f:
        f.seek(start)
        f.write(data[start : start + 16])
    with pytest.raises(StoreError) as err:
        await store.read("a", store.cursor("a"), 1000)
    assert isinstance(err.value, PermanentError)
    message = str(err.value)
    assert str(tmp_path / "store.db") in message and "damaged" in message
    assert "edge-stream store reset" in message and "\n" not in message
    await store.close()
    # and `store reset` takes it for damaged: no --force needed
    assert reset(tmp_path / "store.db").problem is not None  # moved aside, without force
    assert not (tmp_path / "store.db").exists()
    assert len([n for n in os.listdir(tmp_path) if n.startswith("store.db.corrupt-")]) == 1


async def test_a_removed_sink_keeps_its_backlog_through_purges_until_dropped(
    tmp_path: Path,
) -> None:
    from gateway.store.admin import open_admin

    store = await open_store(tmp_path)
    a, b = store.bit("a"), store.bit("b")
    await store.commit(batch([(ff(i), a | b) for i in range(10)]))
    rows, seen = await store.read("b", store.cursor("b"), 4)
    await store.advance("b", seen, len(rows), [])  # b has 4 of them, then is removed
    store.set_active(["a"])
    assert store.removed_sinks() == {"b": 6}
    await store.commit(batch([(ff(i), a) for i in range(10, 20)]))  # routed to a only
    rows, seen = await store.read("a", store.cursor("a"), 100)
    await store.advance("a", seen, len(rows), [])
    # what a has is purged, except the 6 that b still waits for
    assert await store.maintain(["a"]) == 14
    assert await store.maintain(["a"]) == 0
    rows, _ = await store.read("b", store.cursor("b"), 100)
    assert [f.content for _, f in rows] == [ff(i).content for i in range(4, 10)]
    # dropped from outside (the CLI): the running store lets go of them
    with open_admin(store.path) as admin:
        assert admin.drop_sink("b") == 6
        with pytest.raises(StoreError, match="knows no sink 'b'"):
            admin.drop_sink("b")
    await store.recount()
    assert store.removed_sinks() == {}
    assert await store.maintain(["a"]) == 6
    assert store.bytes == 0
    await store.close()


async def test_dropping_a_removed_sink_leaves_the_rows_other_sinks_wait_for_intact(
    tmp_path: Path,
) -> None:
    """A row's checksum covers its sinks mask, and `store drop-sink` cleared the dropped
    sink's bit without writing the checksum again: every FlowFile that another sink still
    waited for was then found "corrupt in store" by that sink and dead-lettered instead
    of delivered (30 of 60 readings into PostgreSQL, with the gateway running)."""
    from gateway.store.admin import open_admin

    store = await open_store(tmp_path)
    a, b = store.bit("a"), store.bit("b")
    await store.commit(batch([(ff(i), a | b) for i in range(10)]))
    await store.commit(batch([(ff(i), b) for i in range(10, 15)]))  # for b alone
    store.set_active(["a"])  # b removed while a is down: both wait
    await store.close()
    with open_admin(store.path) as admin:
        assert admin.drop_sink("b") == 15
    store = await open_store(tmp_path, sinks=("a",))
    rows, _ = await store.read("a", store.cursor("a"), 100)
    assert [f.content for _, f in rows] == [ff(i).content for i in range(10)]
    assert store.dead_count == 0
    assert await store._query("SELECT count(*) FROM dead_letters") == [(0,)]
    await store.close()


async def test_dropping_a_sink_holds_a_bounded_share_of_the_backlog_in_memory(
    tmp_path: Path,
) -> None:
    """`store drop-sink` checksums again the rows other sinks wait for, 500 rows at a
    time: with 250 KB readings, 125 MB held at once (273 MB peak on a Pi). The chunks
    are now of CLEAR_CHUNK_BYTES, by the rows' sizes."""
    from gateway.store.admin import CLEAR_CHUNK_BYTES, open_admin

    store = await open_store(tmp_path)
    a, b = store.bit("a"), store.bit("b")
    for n in range(4):  # 40 MB of 1 MB readings, for both sinks
        rows = [(ff(i, size=1 << 20), a | b) for i in range(n * 10, n * 10 + 10)]
        await store.commit(batch(rows))
    store.set_active(["a"])
    await store.close()
    tracemalloc.start()
    try:
        with open_admin(store.path) as admin:
            assert admin.drop_sink("b") == 40
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < CLEAR_CHUNK_BYTES + (4 << 20), f"{peak >> 20} MiB held at once"
    store = await open_store(tmp_path, sinks=("a",))
    rows, _ = await store.read("a", store.cursor("a"), 100)
    assert len(rows) == 40 and store.dead_count == 0
    await store.close()


async def test_a_sink_dropped_while_a_purge_runs_leaves_the_store_bytes_right(
    tmp_path: Path,
) -> None:
    """The purge counted the bytes it deleted, then deleted, in two statements: a `store
    drop-sink` that committed in between had the delete take the dropped sink's rows
    too, uncounted, and the store's bytes (`/api/status`, the budget) stayed above what
    it held for good, 0 once it was empty."""
    from gateway.store.admin import open_admin

    store = await open_store(tmp_path)
    a, b = store.bit("a"), store.bit("b")
    await store.commit(batch([(ff(i), a | b) for i in range(10)]))
    rows, seen = await store.read("a", store.cursor("a"), 100)
    await store.advance("a", seen, len(rows), [])
    store.set_active(["a"])  # b removed, its 10 waiting: the purge passes them by
    dropped: list[int | None] = []

    def the_cli_drops_b(sql: str) -> None:
        if sql.startswith("DELETE FROM flowfiles") and not dropped:
            with open_admin(store.path, in_gateway=True) as admin:
                admin.db.execute("PRAGMA busy_timeout = 0")
                try:
                    dropped.append(admin.drop_sink("b", running=False))
                except sqlite3.OperationalError:  # locked: it waits for the purge
                    dropped.append(None)

    assert store._db is not None
    store._db.set_trace_callback(the_cli_drops_b)
    await store.maintain(["a"])
    store._db.set_trace_callback(None)
    if dropped == [None]:
        with open_admin(store.path, in_gateway=True) as admin:
            assert admin.drop_sink("b", running=False) == 10
    await store.recount()
    await store.maintain(["a"])
    assert await store._query("SELECT count(*) FROM flowfiles") == [(0,)]
    assert store.bytes == 0
    await store.close()


async def test_drop_sink_refuses_a_sink_the_gateway_runs_and_one_added_back_is_kept(
    tmp_path: Path,
) -> None:
    """`store drop-sink` checked only the file: a sink taken out of it but still run (no
    reload yet) was dropped under the gateway, which went on routing to it; its rows
    waited for a sink the store no longer knew. So did a sink dropped and added back
    within the 5 s before `recount`: its cursor was never written again."""
    from gateway.store.admin import open_admin

    store = await open_store(tmp_path)
    store.set_active(["a", "b"])
    await store.save_active()
    with open_admin(store.path) as admin, pytest.raises(StoreError, match="still runs"):
        admin.drop_sink("b", running=True)
    store.set_active(["a"])  # the reload that removed it
    await store.save_active()
    with open_admin(store.path) as admin:
        assert admin.drop_sink("b", running=True) == 0
    store.set_active(["a", "b"])  # added back at once
    await store.register_sinks(["b"])
    await store.save_active()
    await store.commit(batch([(ff(i), store.bit("b")) for i in range(3)]))
    await store.close()
    store = await open_store(tmp_path)
    assert store.depth("b") == 3, "what waits for it after a restart"
    await store.close()


async def test_drop_sink_checks_in_its_transaction_whether_the_gateway_runs_it(
    tmp_path: Path,
) -> None:
    """The check was made before the drop's transaction: a reload adding the sink back
    in between (its `active` noted) had it dropped under the gateway routing to it."""
    from gateway.store.admin import open_admin

    store = await open_store(tmp_path)
    store.set_active(["a"])
    await store.save_active()
    gateway = sqlite3.connect(store.path, isolation_level=None)

    def reload_adds_it_back(sql: str) -> None:
        if sql == "BEGIN IMMEDIATE":
            gateway.execute("UPDATE sinks SET active = 1 WHERE name = 'b'")

    with open_admin(store.path) as admin, pytest.raises(StoreError, match="still runs"):
        admin.db.set_trace_callback(reload_adds_it_back)
        admin.drop_sink("b", running=True)
    gateway.close()
    assert store.knows("b")
    await store.close()


async def test_drop_sink_holds_the_lock_of_a_gateway_that_does_not_run_until_it_is_done(
    tmp_path: Path,
) -> None:
    """Whether a gateway ran was told before the drop's transaction: one starting in
    between (and running the sink) had it dropped under it."""
    from gateway.store.admin import open_admin

    store = await open_store(tmp_path)
    lock = tmp_path / ".lock"
    lock.touch()  # a gateway ran here and stopped
    starts: list[bool] = []

    def a_gateway_starts(sql: str) -> None:
        if sql == "BEGIN IMMEDIATE":
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                starts.append(True)
            except BlockingIOError:
                starts.append(False)
            finally:
                os.close(fd)

    with open_admin(store.path) as admin:
        admin.db.set_trace_callback(a_gateway_starts)
        assert admin.drop_sink("b") == 0
    assert starts == [False], "a gateway is refused while the drop holds the lock"
    await store.close()


async def test_drop_sink_after_a_clean_stop_when_the_lock_cannot_be_opened(
    tmp_path: Path,
) -> None:
    """Any failure to take the data_dir's lock (a permission, here a link to itself in
    its place) counted as a gateway running, and the sinks it ran at its stop stayed
    noted as running: such a sink could never be dropped."""
    from gateway.store.admin import gateway_runs, open_admin

    store = await open_store(tmp_path)
    store.set_active(["a", "b"])
    await store.save_active()
    lock = tmp_path / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(lock)  # opening it fails (ELOOP), for root too
    assert gateway_runs(store.path) is None  # cannot tell
    with (
        open_admin(store.path) as admin,
        pytest.raises(StoreError, match=r"cannot be told .*run this as the gateway's user"),
    ):
        admin.drop_sink("b")
    await store.close()
    with open_admin(store.path) as admin:
        assert admin.drop_sink("b") == 0


def test_telling_whether_a_gateway_runs_neither_creates_nor_writes_its_lock(
    tmp_path: Path,
) -> None:
    """It took the lock as a gateway does: run by root with no lock file, it left one
    owned by root that the gateway's user could not open (its next start failed), and it
    emptied the gateway's pid out of one."""
    from gateway.store.admin import gateway_runs

    lock = tmp_path / ".lock"
    assert gateway_runs(tmp_path / "store.db") is False
    assert not lock.exists()
    lock.write_text("1234\n")
    assert gateway_runs(tmp_path / "store.db") is False
    assert lock.read_text() == "1234\n"
    key = hold_data_dir(tmp_path)
    try:
        assert gateway_runs(tmp_path / "store.db") is True
    finally:
        let_go_data_dir(key)


async def test_a_sink_added_back_resumes_from_its_cursor(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a, b = store.bit("a"), store.bit("b")
    await store.commit(batch([(ff(i), a | b) for i in range(5)]))
    store.set_active(["a"])
    await store.commit(batch([(ff(i), a) for i in range(5, 8)]))
    store.set_active(["a", "b"])
    await store.register_sinks(["b"])
    rows, _ = await store.read("b", store.cursor("b"), 100)
    assert [f.content for _, f in rows] == [ff(i).content for i in range(5)]
    await store.close()


async def test_the_oldest_age_is_a_number_whenever_something_waits(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a, b = store.bit("a"), store.bit("b")
    assert store.oldest_age("a") is None
    first = FlowFile.create("t/1", b"x", created=time.time_ns() - 3600 * 10**9)
    await store.commit(batch([(first, a), (ff(1), a | b)]))
    # at once, before the maintenance loop's refresh_oldest: a number, the first one's age
    age_a, age_b = store.oldest_age("a"), store.oldest_age("b")
    assert age_a is not None and 3600 <= age_a < 3600 * 2
    assert age_b is not None and age_b < 3600
    rows, seen = await store.read("a", store.cursor("a"), 100)
    await store.advance("a", seen, len(rows), [])
    assert store.oldest_age("a") is None
    # a new backlog after an empty one: its own oldest, not the delivered one's
    await store.commit(batch([(ff(2), a)]))
    age_a = store.oldest_age("a")
    assert age_a is not None and age_a < 3600
    await store.close()
    # a store opened with a backlog knows its oldest before any refresh too
    store = await open_store(tmp_path)
    age_a, age_b = store.oldest_age("a"), store.oldest_age("b")
    assert age_a is not None and age_a < 3600 and age_b is not None and age_b < 3600
    await store.close()


async def test_an_alert_event_still_to_be_sent_outlives_the_kept_1000(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store kept the newest 1000 events, sent or not: with the webhook down longer
    (its queue may hold 10000), a restart sent only the newest 1000 and the older ones
    were lost without a word."""
    from gateway.store import sqlite as module

    monkeypatch.setattr(module, "ALERT_EVENTS_KEEP", 3)
    store = await open_store(tmp_path)
    first = await store.alert_event("k", 1.0, '{"n": 1}', True, ["webhook"])
    for n in range(2, 8):
        await store.alert_event("k", float(n), f'{{"n": {n}}}', n % 2 == 1, [])
    _, events = await store.alert_state(3)
    assert [(seq, body) for seq, _, body, _ in events] == [
        (first, '{"n": 1}'),
        (5, '{"n": 5}'),
        (6, '{"n": 6}'),
        (7, '{"n": 7}'),
    ]
    await store.alert_sent([first], "webhook")  # sent: now it goes with the next event
    await store.alert_event("k", 8.0, '{"n": 8}', True, [])
    _, events = await store.alert_state(100)
    assert [seq for seq, _, _, _ in events] == [6, 7, 8]
    await store.close()


async def test_alert_events_deleted_unsent_at_the_hard_cap_are_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the cap of events still to be sent, the oldest were deleted without a word."""
    from gateway.store import sqlite as module

    monkeypatch.setattr(module, "ALERT_EVENTS_KEEP", 2)
    monkeypatch.setattr(module, "ALERT_EVENTS_PENDING_KEEP", 4)
    store = await open_store(tmp_path)
    for n in range(1, 5):
        await store.alert_event("k", float(n), f'{{"n": {n}}}', True, ["webhook"])
    assert not caplog.records
    await store.alert_sent([1, 2, 3], "webhook")  # several in one call
    with caplog.at_level("WARNING", logger="gateway.store"):
        await store.alert_event("k", 5.0, '{"n": 5}', True, ["webhook"])  # 1 to 3 go
        assert not caplog.records
        for n in range(6, 9):
            await store.alert_event("k", float(n), f'{{"n": {n}}}', True, ["webhook"])
    assert [r.getMessage() for r in caplog.records] == [
        "store: deleted 1 alert event(s) not yet sent: at most the newest 4 are kept"
    ]
    _, events = await store.alert_state(100)
    assert [(seq, pending) for seq, _, _, pending in events] == [
        (5, ["webhook"]),
        (6, ["webhook"]),
        (7, ["webhook"]),
        (8, ["webhook"]),
    ]
    await store.close()


class _Held:
    """Another connection holding the store's write lock, so that the store thread's
    next write waits in the middle of its statement (busy_timeout) until `release`."""

    def __init__(self, store: Store, statement: str) -> None:
        import threading

        self.other = sqlite3.connect(store.path, isolation_level=None)
        self.other.execute("BEGIN IMMEDIATE")
        self.waiting = threading.Event()
        assert store._db is not None
        store._db.set_trace_callback(
            lambda sql: self.waiting.set() if sql.startswith(statement) else None
        )

    async def reached(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.waiting.wait, 5)
        assert self.waiting.is_set(), "the store thread reached the statement"

    def release(self) -> None:
        if self.other.in_transaction:
            self.other.execute("COMMIT")
        self.other.close()


async def test_an_advance_cancelled_while_it_writes_moves_the_cursor_in_memory_too(
    tmp_path: Path,
) -> None:
    """A sink cancelled in the middle of `advance` (a reload removing it past its finish
    time) had its cursor moved in the file but not in memory: started again in the same
    process, it delivered that batch again."""
    store = await open_store(tmp_path)
    await store.commit(batch([(ff(i), store.bit("a")) for i in range(3)]))
    rows, _ = await store.read("a", 0, 10)
    upto = rows[-1][0]
    held = _Held(store, "UPDATE sinks SET cursor")
    try:
        advance = asyncio.create_task(store.advance("a", upto, len(rows), []))
        await held.reached()
        advance.cancel()
        with pytest.raises(asyncio.CancelledError):
            await advance
        assert store.cursor("a") == 0, "still writing"
    finally:
        held.release()  # the store thread's UPDATE goes on and commits
    await store.settled()  # what a sink starting again waits for
    assert (store.cursor("a"), store.depth("a")) == (upto, 0)
    await store.close()
    store = await open_store(tmp_path)
    assert store.cursor("a") == upto, "the file says the same"
    await store.close()


async def test_a_commit_cancelled_while_it_writes_is_counted_in_memory_too(
    tmp_path: Path,
) -> None:
    """The ingest loop cancelled while the store thread committed: the rows were in the
    file but not in the sinks' depth, the budget's bytes, the tail or the dedupe marks."""
    store = await open_store(tmp_path)
    held = _Held(store, "INSERT INTO flowfiles")
    try:
        rows = [(ff(i), store.bit("a")) for i in range(3)]
        commit = asyncio.create_task(store.commit(batch(rows, [("plc", 7, b"digest-1")])))
        await held.reached()
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
    finally:
        held.release()
    await store.settled()
    assert store.depth("a") == 3
    assert store.bytes > 0
    assert store.committed("plc", 7, b"digest-1"), "a redelivery is known as stored"
    read, _ = await store.read("a", 0, 10)
    assert [f.content.strip() for _, f in read] == [b"0", b"1", b"2"]
    await store.close()


async def test_what_a_write_puts_in_memory_comes_before_a_later_call_s_caller_resumes(
    tmp_path: Path,
) -> None:
    """A commit's in-memory counts were made one loop turn after a later call's caller
    resumed: a recount of the dead letters (which read the commit's) then had the
    commit's letters added on top, counting them twice."""
    store = await open_store(tmp_path)
    held = _Held(store, "INSERT INTO flowfiles")
    try:
        dead = [DeadLetter(ff(9), "route r", "not JSON")]
        commit = asyncio.create_task(store.commit(Batch([(ff(1), store.bit("a"))], dead, {}, [])))
        await held.reached()
        recount = asyncio.create_task(store.recount())  # queued behind the commit
        await asyncio.sleep(0)
    finally:
        held.release()
    time.sleep(0.3)  # noqa: ASYNC251 - the loop busy while both finish on the store thread
    await asyncio.gather(commit, recount)
    assert store.dead_count == 1
    await store.close()


def _dead_sum(path: Path) -> int:
    """What the dead letters take, read afresh from the file (as the budget counts them)."""
    from gateway.store.sqlite import dead_letter_bytes

    db = sqlite3.connect(path)
    try:
        return dead_letter_bytes(db)
    finally:
        db.close()


async def test_dead_letters_past_their_budget_lose_the_oldest_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dead letters had no bound and were outside buffer.max_bytes: a serial line of
    garbage made 425 MB of store.db in 10 s. Past buffer.dead_letters_max_bytes the
    oldest go, down to 90 % of it, counted and logged; the newest stay."""
    from gateway.store.admin import open_admin

    cap = 100_000
    store = await open_store(tmp_path, ("a",), dead_max_bytes=cap)
    path = store.path
    a = store.bit("a")
    # about 1.2 KB each, in commits (a route's) and in advances (a sink's refusals)
    for n in range(0, 120, 10):
        dead = [DeadLetter(ff(i, "bad/é", 1000), "route r", "not JSON") for i in range(n, n + 5)]
        await store.commit(Batch([(ff(n), a)], dead, {}, []))
        _, seen = await store.read("a", store.cursor("a"), 100)
        refused = [
            DeadLetter(ff(i, "garbage/é", 1000), "sink a", "refused", "a")
            for i in range(n + 5, n + 10)
        ]
        await store.advance("a", seen, 0, refused)
    assert store.dead_count == 120
    assert store.dead_bytes == _dead_sum(path) > cap
    with caplog.at_level("WARNING", logger="gateway.store"):
        await store.maintain(["a"])
    left = await store._query("SELECT content FROM dead_letters ORDER BY seq")
    kept = [int(row[0]) for row in left]
    assert kept == list(range(120 - len(kept), 120))  # the newest, all of them
    assert store.dead_bytes == _dead_sum(path) <= cap * 0.9
    size = _dead_sum(path) // len(kept)
    assert store.dead_bytes > cap * 0.9 - size  # no more than needed went
    assert store.dead_count == len(kept) and store.dead_dropped == 120 - len(kept)
    said = [r.getMessage() for r in caplog.records if "dead_letters_max_bytes" in r.getMessage()]
    assert said == [
        "store: dead letters past buffer.dead_letters_max_bytes: deleted"
        f" {120 - len(kept)} of the oldest ({120 - len(kept)} in all; budget {cap} bytes)"
    ]
    # under the budget: nothing more goes
    await store.maintain(["a"])
    assert store.dead_count == len(kept)
    # the CLI purges some behind the gateway's back: recount reads the bytes again
    [(first,)] = await store._query("SELECT min(seq) FROM dead_letters")
    with open_admin(path, in_gateway=True) as admin:
        assert admin.purge([first]).count == 1
    await store.recount()
    assert store.dead_bytes == _dead_sum(path) and store.dead_count == len(kept) - 1
    await store.close()
    store = await open_store(tmp_path, ("a",), dead_max_bytes=cap)
    assert store.dead_bytes == _dead_sum(path) and store.dead_count == len(kept) - 1
    # a lower budget after a reload (the store reopened with it) trims at the next pass
    await store.close()
    store = await open_store(tmp_path, ("a",), dead_max_bytes=cap // 4)
    await store.maintain(["a"])
    assert store.dead_bytes == _dead_sum(path) <= cap // 4 * 0.9
    assert [int(r[0]) for r in await store._query("SELECT content FROM dead_letters")][-1] == 119
    await store.close()


async def test_a_purge_through_the_console_does_not_make_the_trim_delete_within_budget(
    tmp_path: Path,
) -> None:
    """The trim went by the estimate, which a purge through the console or the CLI (on
    their own connection) leaves behind until a recount: dead letters that came after a
    purge of all were deleted though the table held a tenth of its budget."""
    from gateway.store.admin import open_admin

    cap = 100_000
    store = await open_store(tmp_path, ("a",), dead_max_bytes=cap)
    a = store.bit("a")
    dead = [DeadLetter(ff(i, "bad", 1000), "route r", "not JSON") for i in range(100)]
    await store.commit(Batch([(ff(0), a)], dead, {}, []))
    with open_admin(store.path, in_gateway=True) as admin:
        admin.purge(None)  # all of them, behind the store's back
    more = [DeadLetter(ff(i, "bad", 1000), "route r", "not JSON") for i in range(100, 110)]
    await store.commit(Batch([(ff(1), a)], more, {}, []))
    assert store.dead_bytes > cap  # the estimate, before a recount
    await store.maintain(["a"])
    assert store.dead_dropped == 0
    assert len(await store._query("SELECT seq FROM dead_letters")) == 10
    assert store.dead_bytes == _dead_sum(store.path)
    await store.close()


async def test_a_flood_of_dead_letters_larger_than_a_chunk_is_trimmed_in_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A REST snapshot of 4M items without a topic was dead-lettered at every poll: more
    than a chunk of deletes a second. One maintenance pass takes chunk after chunk
    until the dead letters are within their budget."""
    import gateway.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "DEAD_TRIM_CHUNK", 7)
    store = await open_store(tmp_path, ("a",), dead_max_bytes=20_000)
    dead = [DeadLetter(ff(i, "x", 500), "route r", "no topic") for i in range(200)]
    await store.commit(Batch([], dead, {}, []))
    await store.maintain(["a"])
    assert store.dead_bytes == _dead_sum(store.path) <= 18_000
    left = [int(r[0]) for r in await store._query("SELECT content FROM dead_letters ORDER BY seq")]
    assert left == list(range(200 - len(left), 200))
    assert store.dead_dropped == 200 - len(left) > 7
    await store.close()


async def test_a_purge_pass_on_a_full_disk_is_bounded(tmp_path: Path) -> None:
    """On a full disk, a delivered backlog was purged 1 MiB a transaction, each chunk's end
    found by summing the sizes of every row left in the pass's window: the work grew with
    the square of the backlog (6 s of store thread for 600 MB), and one pass went on to
    the end of it, holding up delivery. A pass now walks at most SHORT_PASS_BYTES of rows,
    each row once, and the next pass goes on."""
    store = await open_store(tmp_path, ("a",))
    a = store.bit("a")
    for n in range(24):  # 24 MB of 1 KB rows
        await store.commit(batch([(ff(i, size=1000), a) for i in range(n * 1000, n * 1000 + 1000)]))
    rows, seen = await store.read("a", store.cursor("a"), 30_000)
    await store.advance("a", seen, len(rows), [])
    db = store._db
    assert db is not None
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    db.set_progress_handler(step, 1000)
    purged, freed = await store._call(store._purge_sync, store.cursor("a"), True, [])
    db.set_progress_handler(None, 0)
    assert 0 < freed <= SHORT_PASS_BYTES + SHORT_PURGE_BYTES, "a pass stops at its cap"
    assert steps[0] * 1000 < purged * 200, f"{steps[0] * 1000} SQLite steps for {purged} rows"
    left = (await store._query("SELECT count(*) FROM flowfiles"))[0][0]
    assert left == 24_000 - purged
    for _ in range(50):  # the next passes go on, each taking some
        if not left:
            break
        await store._call(store._purge_sync, store.cursor("a"), True, [])
        before, left = left, (await store._query("SELECT count(*) FROM flowfiles"))[0][0]
        assert left < before
    assert left == 0
    await store.close()


async def test_a_purge_pass_past_its_time_still_gives_pages_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The time cap was checked before the first vacuum step: a pass whose deletes took
    # longer (an SD card) gave nothing back, so the disk's free space, which intake waits
    # for, did not grow until the whole backlog was deleted.
    monkeypatch.setattr("gateway.store.sqlite.SHORT_PASS_S", 0.0)
    store = await open_store(tmp_path, ("a",))
    a = store.bit("a")
    for n in range(8):  # 8 MB of 1 KB rows
        await store.commit(batch([(ff(i, size=1000), a) for i in range(n * 1000, n * 1000 + 1000)]))
    rows, seen = await store.read("a", store.cursor("a"), 10_000)
    await store.advance("a", seen, len(rows), [])
    pages = (await store._query("PRAGMA page_count"))[0][0]
    for _ in range(3):
        await store._call(store._purge_sync, store.cursor("a"), True, [])
        before, pages = pages, (await store._query("PRAGMA page_count"))[0][0]
        assert pages < before, "each pass gives some pages back"
    await store.close()


async def test_a_damaged_size_neither_fails_nor_grows_a_purge_chunk(tmp_path: Path) -> None:
    # The chunk walk adds sizes in Python: a size damaged to text raised TypeError out of
    # the pass, and one damaged below 0 let the chunk grow past its bytes.
    store = await open_store(tmp_path, ("a",))
    a = store.bit("a")
    await store.commit(batch([(ff(i, size=1000), a) for i in range(10)]))
    db = store._db
    assert db is not None

    def walk() -> tuple[int, int]:
        db.execute("UPDATE flowfiles SET size = 'x' WHERE seq = 2")
        db.execute("UPDATE flowfiles SET size = -1000000000 WHERE seq = 3")
        first = db.execute("SELECT min(seq) FROM flowfiles").fetchone()[0]
        return _chunk_end(db, first, first + 100, 2500)

    last, run = await store._call(walk)
    assert run <= 2500 and last == 4  # rows 1-4 (two of them counting 0)
    await store.close()

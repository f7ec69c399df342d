"""The store's admin side (gateway/store/admin.py) against a real store file: dead letters
list / show / purge / replay, stats, reset, and the refusal of a file that is no store."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.core.flowfile import FlowFile
from gateway.store.admin import Purged, open_admin, reset
from gateway.store.sqlite import Batch, DeadLetter, Store, StoreError

pytestmark = pytest.mark.integration


def ff(n: int, topic: str = "t/1") -> FlowFile:
    return FlowFile.create(topic, f"reading {n}".encode(), {"n": str(n)})


async def store_with_dead_letters(tmp_path: Path) -> tuple[Store, list[FlowFile]]:
    """An open store with sinks a and b: three dead letters (one refused by route r, one
    by sink a, one by sink b, in that order), and two FlowFiles, one for each sink."""
    store = Store(tmp_path / "store.db")
    await store.open(["a", "b"])
    dead = [ff(1, "t/route"), ff(2, "t/a"), ff(3, "t/b")]
    await store.commit(
        Batch(
            [(ff(10), store.bit("a")), (ff(11), store.bit("b"))],
            [
                DeadLetter(dead[0], "route r: processor 0 (json)", "not valid JSON"),
                DeadLetter(dead[1], "sink a", "refused by a", "a"),
                DeadLetter(dead[2], "sink b", "refused by b", "b"),
            ],
            {},
            [],
        )
    )
    return store, dead


async def test_there_is_no_store_before_the_gateway_ran(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        open_admin(tmp_path / "store.db")
    assert str(err.value) == (
        f"no store at {tmp_path / 'store.db'}: has the gateway run with this data_dir?"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty (0 bytes)"),
        (b"these are not the pages of a database\n" * 100, "is not a SQLite database"),
        (b"SQLite format 3\x00" + b"\xff" * 4000, "cannot be read"),
    ],
)
def test_a_file_that_is_not_a_store_is_refused_in_one_line_and_left_alone(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as err:
        open_admin(path)
    message = str(err.value)
    assert problem in message and "not a valid Edge Stream store" in message
    assert "edge-stream store reset" in message and "\n" not in message
    assert path.read_bytes() == content


def test_a_folder_where_the_store_file_should_be_is_refused_in_one_line(tmp_path: Path) -> None:
    # opened, it was an IsADirectoryError traceback (store stats, store reset, run)
    path = tmp_path / "store.db"
    path.mkdir()
    with pytest.raises(StoreError) as err:
        open_admin(path)
    assert f"{path}: is a folder, not a file: not a valid Edge Stream store" in str(err.value)
    done = reset(path)
    assert done.aside is not None
    assert (done.problem, path.exists(), done.aside.is_dir()) == (
        "is a folder, not a file",
        False,
        True,
    )


async def test_a_store_file_linked_to_what_is_not_there_is_refused_not_replaced(
    tmp_path: Path,
) -> None:
    """store.db a symbolic link to a disk not mounted yet (or a link to itself): taken for
    no store, the gateway started empty and replaced the link with a new file, the
    FlowFiles behind it left out for good."""
    path = tmp_path / "store.db"
    path.symlink_to(tmp_path / "ssd" / "store.db")
    with pytest.raises(StoreError) as err:
        await Store(path).open(["a"])
    message = str(err.value)
    assert f"{path}: is a symbolic link to {tmp_path}/ssd/store.db, which is not there" in message
    assert "not a valid Edge Stream store" in message and "\n" not in message
    assert path.is_symlink()
    with pytest.raises(StoreError, match=r"is a symbolic link to .*, which is not there"):
        open_admin(path)  # `store stats`, `dead-letters list`: not "no store"
    done = reset(path)  # `store reset` moves the link aside, as it does a damaged file
    assert done.aside is not None and done.aside.is_symlink() and not path.is_symlink()
    (tmp_path / "loop.db").symlink_to(tmp_path / "loop.db")
    with pytest.raises(StoreError, match=r"is a symbolic link to .*loop\.db, which is not there"):
        await Store(tmp_path / "loop.db").open(["a"])


async def test_dead_letters_are_listed_newest_first_and_shown_in_full(tmp_path: Path) -> None:
    store, dead = await store_with_dead_letters(tmp_path)
    before = time.time_ns()
    with open_admin(store.path) as admin:
        listed = admin.dead_letters(10)
        assert [d.id for d in listed] == [f.id for f in reversed(dead)]
        assert [(d.origin, d.sink, d.reason) for d in listed] == [
            ("sink b", "b", "refused by b"),
            ("sink a", "a", "refused by a"),
            ("route r: processor 0 (json)", None, "not valid JSON"),
        ]
        assert [d.bytes for d in listed] == [len(f.content) for f in reversed(dead)]
        assert all(0 < d.failed_at <= before for d in listed)
        assert [d.id for d in admin.dead_letters(2)] == [dead[2].id, dead[1].id]
        assert admin.dead_letter_count() == 3

        record = admin.dead_letter(listed[1].seq)
        assert record is not None
        assert (record.id, record.topic, record.content) == (dead[1].id, "t/a", b"reading 2")
        assert record.attributes == {"n": "2"} and record.created == dead[1].created
        assert (record.origin, record.sink, record.reason) == ("sink a", "a", "refused by a")
        assert admin.dead_letter(999_999) is None
    # the running gateway's own connection lists the same (the status API)
    assert await store.dead_letters(10) == listed
    await store.close()


async def test_purge_by_number_and_all(tmp_path: Path) -> None:
    store, dead = await store_with_dead_letters(tmp_path)
    with open_admin(store.path) as admin:
        first, second, third = reversed(admin.dead_letters(10))
        # the numbers that name no dead letter are said, each once (a mistyped one)
        assert admin.purge([second.seq, 999_999, 999_999]) == Purged(1, (999_999,))
        assert [d.id for d in admin.dead_letters(10)] == [dead[2].id, dead[0].id]
        assert admin.purge(None) == Purged(2)
        assert admin.dead_letters(10) == [] and admin.dead_letter_count() == 0
        assert admin.purge([first.seq, third.seq]) == Purged(0, (first.seq, third.seq))
    await store.recount()
    assert store.dead_count == 0
    await store.close()


async def test_replay_goes_back_to_the_sink_that_refused_or_through_the_routes(
    tmp_path: Path,
) -> None:
    store, dead = await store_with_dead_letters(tmp_path)
    with open_admin(store.path) as admin:
        by_route, by_a, _by_b = reversed(admin.dead_letters(10))
        assert admin.replay([by_a.seq, by_route.seq]).count == 2
        assert [d.id for d in admin.dead_letters(10)] == [dead[2].id]
    replayed = await store.take_replay(10)
    # in the order they failed; each with the sink that refused it, None: route again
    assert [(f.id, f.content, f.attributes, sink) for _, f, sink, _ in replayed] == [
        (dead[0].id, b"reading 1", {"n": "1"}, None),
        (dead[1].id, b"reading 2", {"n": "2"}, "a"),
    ]
    await store.recount()
    assert store.dead_count == 1
    with open_admin(store.path) as admin:
        assert admin.replay(None).count == 1 and admin.dead_letter_count() == 0
    assert [(f.id, sink) for _, f, sink, _ in await store.take_replay(10)][-1] == (dead[2].id, "b")
    await store.close()


async def test_replay_leaves_the_dead_letters_whose_content_is_not_the_message(
    tmp_path: Path,
) -> None:
    # An MQTT message cut to max_payload, or the raw packet of an invalid PUBLISH, went
    # on to the sinks as if it were the reading, and the dead letter was removed.
    store = Store(tmp_path / "store.db")
    await store.open(["a"])
    cut = FlowFile.create("t/cut", b"first bytes", {"content.truncated": "max_payload"})
    raw = FlowFile.create("t/raw", b"\x32\x0a", {"mqtt.invalid": "1", "mqtt.qos": "1"})
    good, refused = ff(1), ff(2)
    await store.commit(
        Batch(
            [],
            [
                DeadLetter(cut, "source plant", "payload of 300000 bytes exceeds max_payload"),
                DeadLetter(raw, "source plant", "topic is not valid UTF-8"),
                DeadLetter(refused, "sink a", "refused by a", "a"),
                DeadLetter(good, "sink a", "refused by a", "a"),
            ],
            {},
            [],
        )
    )
    with open_admin(store.path) as admin:
        seqs = {d.id: d.seq for d in admin.dead_letters(10)}
        one = admin.replay([seqs[cut.id], seqs[good.id]])
        assert (one.count, one.kept) == (1, {"truncated to max_payload": 1})
        assert one.note() == (
            "1 dead letter(s) not replayed: their content is not the message: truncated to"
            " max_payload (they stay: list, show or purge them)"
        )
        every = admin.replay(None)
        assert (every.count, every.kept) == (
            1,
            {"truncated to max_payload": 1, "the raw invalid packet": 1},
        )
        assert every.note() == (
            "2 dead letter(s) not replayed: their content is not the message: 1 truncated to"
            " max_payload, 1 the raw invalid packet (they stay: list, show or purge them)"
        )
        assert {d.id for d in admin.dead_letters(10)} == {cut.id, raw.id}
        assert admin.replay(None).note() is not None and admin.dead_letter_count() == 2
        nothing = admin.replay([seqs[good.id], 0])  # gone already, or never there
        assert (nothing.count, nothing.note(), nothing.missing) == (0, None, (seqs[good.id], 0))
        # shown and purged as any other
        record = admin.dead_letter(seqs[raw.id])
        assert record is not None and record.content == b"\x32\x0a"
        assert admin.purge(None).count == 2
    # what went to the replay inbox: the two others, in the order they were replayed
    assert [f.id for _, f, _, _ in await store.take_replay(10)] == [good.id, refused.id]
    await store.close()


async def test_stats_count_what_waits_for_each_sink(tmp_path: Path) -> None:
    store, _dead = await store_with_dead_letters(tmp_path)
    await store.register_sinks(["c"])  # starts at the end: nothing waits for it
    with open_admin(store.path) as admin:
        stats = admin.stats()
    assert [(s.name, s.waiting) for s in stats.sinks] == [("a", 1), ("b", 1), ("c", 0)]
    a, b, c = stats.sinks
    assert a.oldest is not None and b.oldest is not None and a.oldest <= b.oldest
    assert c.oldest is None
    assert (stats.flowfiles, stats.bytes, stats.dead_letters) == (2, store.bytes, 3)
    rows, seen = await store.read("a", store.cursor("a"), 10)
    await store.advance("a", seen, len(rows), [])
    with open_admin(store.path) as admin:
        a, b, _c = admin.stats().sinks
    assert (a.waiting, a.oldest) == (0, None) and b.waiting == 1
    await store.close()


async def test_a_damaged_page_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    """`store stats` on a store with a damaged page stopped with sqlite3's traceback."""
    store = Store(tmp_path / "store.db")
    await store.open(["a"])
    big = [FlowFile.create("t/1", bytes([65 + n % 26]) * 3000) for n in range(100)]
    await store.commit(Batch([(f, store.bit("a")) for f in big], [], {}, []))
    await store.close()
    with store.path.open("r+b") as f:  # pages 8 to 40 of 4 KiB: the table's, not the header
        f.seek(8 * 4096)
        f.write(b"\xde\xad" * (16 * 4096))
    with pytest.raises(StoreError) as err, open_admin(store.path) as admin:
        admin.stats()
    message = str(err.value)
    assert message.startswith(f"store {store.path} is damaged (")
    assert "edge-stream store reset -c CONFIG" in message and "\n" not in message


async def test_reset_moves_a_damaged_store_aside_and_a_valid_one_only_by_force(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "store.db"
    assert reset(path).moved == []  # no data_dir yet
    path.parent.mkdir()
    assert reset(path).moved == []  # a data_dir without a store
    store = Store(path)
    await store.open(["a"])
    await store.close()
    with pytest.raises(StoreError) as err:
        reset(path)
    assert str(err.value).startswith(f"{path} is a valid store, not reset")
    assert "--force" in str(err.value) and "\n" not in str(err.value)
    assert path.exists()
    forced = reset(path, force=True)
    assert forced.problem is None and forced.moved == [path]
    assert forced.aside is not None and forced.aside.exists() and not path.exists()
    assert forced.aside.name.startswith("store.db.corrupt-")

    forced.aside.unlink()
    path.write_bytes(b"not a database at all" * 10)
    path.with_name("store.db-wal").write_bytes(b"")
    damaged = reset(path)
    assert damaged.problem is not None and "is not a SQLite database" in damaged.problem
    assert [p.name for p in damaged.moved] == ["store.db", "store.db-wal"]
    assert damaged.aside is not None
    assert damaged.aside.with_name(damaged.aside.name + "-wal").exists()
    assert not path.exists() and not path.with_name("store.db-wal").exists()


async def test_a_store_python_may_not_open_is_not_taken_for_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store the gateway's user may not read (a PermissionError from the header check,
    before SQLite) was "cannot be read (Permission denied): not a valid Edge Stream
    store", and a plain `store reset` moved the valid store aside. (The tests run as
    root, whom no mode stops: the header check's open is refused as the OS would.)"""
    path = tmp_path / "store.db"
    store = Store(path)
    await store.open(["a"])
    await store.close()
    real = Path.open

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", refuse)
    for attempt in (lambda: open_admin(path), lambda: reset(path)):
        with pytest.raises(StoreError) as err:
            attempt()
        message = str(err.value)
        assert "permission denied" in message and "not found damaged" in message, message
        assert "not a valid" not in message and "\n" not in message, message
    assert path.exists()
    forced = reset(path, force=True)
    assert forced.moved == [path] and not path.exists()


def test_reset_is_refused_while_another_process_holds_the_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"damaged")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from gateway.store.sqlite import hold_data_dir;"
            f" hold_data_dir({str(tmp_path)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(StoreError) as err:
            reset(path)
        message = str(err.value)
        assert message.startswith("store reset refused: ") and "\n" not in message
        assert "another Edge Stream process uses this data_dir" in message
        assert path.read_bytes() == b"damaged"
    finally:
        holder.communicate("", timeout=30)

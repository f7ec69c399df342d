"""The `redis` source against a real Redis: a stream through a consumer group (XACK after the
commit, the entries of a crash sorted out by the committed position, XAUTOCLAIM of a dead
consumer's entries) and a list (BLMOVE into a processing list, removed after the commit)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis as SyncRedis

from gateway.config import reference
from gateway.config.schema import Problems, build_component
from gateway.core.component import Context, Message
from gateway.core.errors import RetryableError
from gateway.engine.pipeline import Engine
from gateway.sources.redis import RedisSource, RedisSourceConfig, entry_flowfile_id
from gateway.store.sqlite import Batch, Store
from tests.sinks.contract import unique_name
from tests.sources.contract import SourceContract
from tests.sources.engine_run import lines, stop, until

pytestmark = pytest.mark.integration


def build(**keys: Any) -> tuple[Any, list[str]]:
    problems = Problems()
    config = build_component("source", {"type": "redis", **keys}, ("sources", "r"), problems)
    return config, [f"{'.'.join(map(str, p))}: {m}" for p, m in problems.items]


def make(url: str, committed: list[bytes | None], **keys: Any) -> RedisSource:
    """A source whose store position is `committed[0]` (what a restart would read)."""
    config, problems = build(url=url, block="100ms", **keys)
    assert problems == [], problems
    assert isinstance(config, RedisSourceConfig)
    ctx = Context("r", "source", gateway_id="gw1")

    async def position() -> bytes | None:
        return committed[0]

    ctx.position = position
    return RedisSource(config, ctx)


def commit(messages: list[Message], committed: list[bytes | None]) -> None:
    """What the engine does once the store committed `messages`: keep the last position,
    then run the acks."""
    for m in messages:
        if m.position is not None:
            committed[0] = m.position
    for m in messages:
        assert m.ack is not None
        m.ack()


async def crash(source: RedisSource) -> None:
    """The connection goes as with a killed process: nothing more is sent on it."""
    client, source._client = source._client, None
    await client.aclose()


async def read_all(source: RedisSource, rounds: int = 5) -> list[Message]:
    out: list[Message] = []
    for _ in range(rounds):
        out.extend(await source.read())
    return out


async def test_a_stream_entry_is_acked_after_the_commit_and_a_crash_repeats_nothing(
    redis: Any,
) -> None:
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    ids = [r.xadd(key, {"device": f"d{i % 2}", "v": str(i)}).decode() for i in range(10)]
    committed: list[bytes | None] = [None]
    source = make(redis.url, committed, key=key, count=4, topic="plant/{device}/{missing}")
    await source.connect()
    first = await source.read()
    assert [m.flowfile.attributes["redis.id"] for m in first] == ids[:4]
    assert orjson.loads(first[0].flowfile.content) == {"device": "d0", "v": "0"}
    assert first[0].flowfile.topic == "plant/d0/_"
    assert first[0].flowfile.id == entry_flowfile_id(key, ids[0], "gw1/r")
    second = await source.read()
    assert r.xpending(key, "edge-stream")["pending"] == 8, "nothing acked before the commit"
    commit(first, committed)
    await source.read()  # acks go out with the next read
    assert r.xpending(key, "edge-stream")["pending"] == 6
    # the store commits `second` and the gateway dies before its XACK; 2 more were read
    # and never committed
    commit(second, committed)
    source._to_ack.clear()  # the acks died with the process
    await crash(source)
    restarted = make(redis.url, committed, key=key, count=4)
    await restarted.connect()
    again = await read_all(restarted)
    assert [m.flowfile.attributes["redis.id"] for m in again] == ids[8:], (
        "the committed ones are not read again; the others are"
    )
    commit(again, committed)
    await restarted.read()
    assert r.xpending(key, "edge-stream")["pending"] == 0
    assert restarted.skipped == 4
    await restarted.close()


async def test_entries_read_again_after_a_crash_are_not_read_again_after_a_second(
    redis: Any,
) -> None:
    """Read again at the start, an entry was delivered twice and carried no position: its
    commit, and a second crash before its XACK, read it once more at the next start."""
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    ids = [r.xadd(key, {"v": str(i)}).decode() for i in range(6)]
    committed: list[bytes | None] = [None]
    source = make(redis.url, committed, key=key, count=3)
    await source.connect()
    assert len(await source.read()) == 3
    await crash(source)  # killed before the commit
    again = make(redis.url, committed, key=key, count=3)
    await again.connect()
    recovered = await again.read()
    assert [m.flowfile.attributes["redis.id"] for m in recovered] == ids[:3]
    commit(recovered, committed)
    again._to_ack.clear()  # killed after the commit, before the XACK
    await crash(again)
    third = make(redis.url, committed, key=key, count=3)
    await third.connect()
    got = await read_all(third, 3)
    assert [m.flowfile.attributes["redis.id"] for m in got] == ids[3:]
    await third.close()


async def test_entries_whose_answer_was_lost_with_the_connection_are_read_after_it(
    redis: Any,
) -> None:
    """An XREADGROUP answer lost with the connection left its entries pending, unseen: they
    came only with XAUTOCLAIM after claim_idle, and a restart before that found them
    delivered once at or before the position and acknowledged them, never stored."""
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    ids = [r.xadd(key, {"v": str(i)}).decode() for i in range(4)]
    committed: list[bytes | None] = [None]
    source = make(redis.url, committed, key=key, count=2)
    await source.connect()
    commit(await source.read(), committed)
    r.xreadgroup("edge-stream", "gw1", {key: ">"}, count=1)  # delivered; the answer lost
    r.client_kill_filter(_id=await source._client.client_id())
    with pytest.raises(RetryableError):
        await source.read()
    await source.close()
    await source.connect()  # as the engine does after its backoff
    got = await read_all(source, 3)
    assert [m.flowfile.attributes["redis.id"] for m in got] == ids[2:]
    commit(got, committed)
    await source.close()
    restarted = make(redis.url, committed, key=key, count=2)
    await restarted.connect()
    assert await read_all(restarted, 2) == []
    assert r.xpending(key, "edge-stream")["pending"] == 0
    await restarted.close()


async def test_entries_a_dead_consumer_left_pending_are_claimed(redis: Any) -> None:
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    r.xgroup_create(key, "edge-stream", "0", mkstream=True)
    ids = [r.xadd(key, {"payload": f"{i}"}).decode() for i in range(3)]
    r.xreadgroup("edge-stream", "dead", {key: ">"})  # read, never acknowledged
    committed: list[bytes | None] = [None]
    source = make(redis.url, committed, key=key, claim_idle="1s", field="payload")
    await source.connect()
    assert await read_all(source, 2) == [], "not idle long enough yet"
    await asyncio.sleep(1.1)
    source._next_claim = 0.0
    got = await read_all(source, 2)
    assert [m.flowfile.content for m in got] == [b"0", b"1", b"2"]
    assert [m.position for m in got] == [None] * 3, "a taken-over entry moves no position"
    assert got[0].flowfile.id == entry_flowfile_id(key, ids[0], "gw1/r")
    commit(got, committed)
    await source.read()
    assert r.xpending(key, "edge-stream")["pending"] == 0
    assert source.status()["claimed"] == 3
    await source.close()


async def test_an_entry_without_the_field_is_dead_lettered_not_an_empty_flowfile(
    redis: Any,
) -> None:
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    r.xadd(key, {"payload": '{"t":1}'})
    r.xadd(key, {"device": "d1", "other": "x"})
    source = make(redis.url, [None], key=key, field="payload")
    await source.connect()
    try:
        good, bad = await source.read()
    finally:
        await source.close()
    assert good.flowfile.content == b'{"t":1}' and good.reject is None
    assert orjson.loads(bad.flowfile.content) == {"device": "d1", "other": "x"}
    assert bad.reject == "the entry has no field 'payload' (its fields are the content)"
    assert bad.ack is not None and bad.position is not None, "acked and passed as any entry"


async def test_field_values_that_are_not_utf8_are_kept_in_base64(redis: Any) -> None:
    """They were decoded with replacement characters: b"\xff\xfe" read "\ufffd\ufffd", the
    bytes lost for good (in a dead letter too)."""
    key = unique_name()
    SyncRedis.from_url(redis.url).xadd(key, {"raw": b"\xff\xfe\x00", b"\xff": "v", "t": "21.5"})
    source = make(redis.url, [None], key=key)
    await source.connect()
    try:
        (message,) = await source.read()
    finally:
        await source.close()
    assert orjson.loads(message.flowfile.content) == {"raw": "//4A", "/w==": "v", "t": "21.5"}


async def test_a_list_item_leaves_the_processing_list_after_the_commit_only(
    redis: Any,
) -> None:
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    r.rpush(key, *[f"item{i}" for i in range(10)])
    committed: list[bytes | None] = [None]
    source = make(redis.url, committed, key=key, mode="list", count=4)
    await source.connect()
    first = await source.read()
    second = await source.read()
    assert [m.flowfile.content for m in first + second] == [f"item{i}".encode() for i in range(8)]
    assert r.llen(f"{key}:processing") == 8 and r.llen(key) == 2
    commit(first, committed)
    gets = r.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
    await source.read()  # removes the 4 committed, moves the last 2
    assert r.llen(f"{key}:processing") == 6
    # the done counter is where the source left it: not read again before each removal
    assert r.info("commandstats").get("cmdstat_get", {}).get("calls", 0) == gets
    # second is committed, the gateway dies before removing it; the last 2 never committed
    commit(second, committed)
    await crash(source)  # before the removal
    restarted = make(redis.url, committed, key=key, mode="list", count=4)
    await restarted.connect()
    again = await read_all(restarted)
    assert [m.flowfile.content for m in again] == [b"item8", b"item9"]
    r.rpush(key, "item10")
    newer = await read_all(restarted, 2)
    assert [m.flowfile.content for m in newer] == [b"item10"]
    commit(again + newer, committed)
    await restarted.read()
    assert r.llen(f"{key}:processing") == 0 and committed[0]
    assert committed[0].partition(b"\0")[0] == b"11"
    assert int(r.get(f"{key}:processing:done") or 0) == 11
    await restarted.close()


async def test_list_items_committed_during_a_removal_are_removed_by_the_next(
    redis: Any,
) -> None:
    """Acks arriving while the removal's EXEC was under way were counted as removed but
    never popped: committed items stayed in the processing list until a reconnect."""
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    r.rpush(key, *[f"item{i}" for i in range(8)])
    committed: list[bytes | None] = [None]
    source = make(redis.url, committed, key=key, mode="list", count=4)
    await source.connect()
    first = await source.read()
    second = await source.read()
    commit(first, committed)
    client = source._client
    real = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        execute = pipe.execute

        async def during(*a: Any, **k: Any) -> Any:
            commit(second, committed)  # the store commits the next batch meanwhile
            return await execute(*a, **k)

        pipe.execute = during
        return pipe

    client.pipeline = pipeline
    await source.read()  # removes the first 4
    client.pipeline = real
    assert r.llen(f"{key}:processing") == 4
    await source.read()  # and now the 4 committed during that removal
    assert r.llen(f"{key}:processing") == 0
    await source.close()


async def test_list_moves_and_removals_whose_answers_were_lost_lose_no_item(
    redis: Any,
) -> None:
    """A move whose answer was lost with the connection left an item in the processing list
    unread, and a removal made whose answer was lost was made again: either way the next
    removals took items the store never had."""
    key = unique_name()
    processing = f"{key}:processing"
    r = SyncRedis.from_url(redis.url)
    r.rpush(key, *[f"item{i}" for i in range(6)])
    committed: list[bytes | None] = [None]
    source = make(redis.url, committed, key=key, mode="list", count=2)
    await source.connect()
    commit(await source.read(), committed)
    r.lmove(key, processing, "LEFT", "RIGHT")  # moved for the source; the answer lost
    with r.pipeline() as pipe:  # the source's removal of the 2 committed; the answer lost
        pipe.lpop(processing, 2).incrby(f"{processing}:done", 2).execute()
    r.client_kill_filter(_id=await source._client.client_id())
    with pytest.raises(RetryableError):
        await source.read()
    await source.close()
    await source.connect()
    got = await read_all(source, 3)
    assert [m.flowfile.content for m in got] == [f"item{i}".encode() for i in range(2, 6)]
    commit(got, committed)
    await source.read()
    assert r.llen(processing) == 0 and int(r.get(f"{processing}:done") or 0) == 6
    await source.close()


async def test_a_position_of_another_group_or_list_is_not_taken_for_this_one(
    redis: Any,
) -> None:
    """The source's group (or list) changed, its name did not: the stored position, of the
    other one, acknowledged this group's pending entries as stored (removed this
    processing list's items), never stored."""
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    ids = [r.xadd(key, {"v": str(i)}).decode() for i in range(3)]
    r.xgroup_create(key, "g2", "0")
    r.xreadgroup("g2", "gw1", {key: ">"}, count=1)  # pending in g2, never stored
    committed: list[bytes | None] = [None]
    source = make(redis.url, committed, key=key, count=3)
    await source.connect()
    commit(await source.read(), committed)  # all three, in group edge-stream
    await source.close()
    moved = make(redis.url, committed, key=key, count=3, group="g2")
    await moved.connect()
    got = await read_all(moved, 2)
    assert [m.flowfile.attributes["redis.id"] for m in got] == ids
    await moved.close()
    r.rpush(f"{key}-b:processing", "b0")  # moved for a list source of key-b, never stored
    listed = make(redis.url, committed, key=f"{key}-b", mode="list")
    await listed.connect()
    assert [m.flowfile.content for m in await read_all(listed, 2)] == [b"b0"]
    await listed.close()


async def test_a_stream_runs_in_the_engine_once_each_across_a_restart(
    redis: Any, tmp_path: Path, run_engine: Callable[..., Any]
) -> None:
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    for i in range(30):
        r.xadd(key, {"n": str(i)})
    source = {"type": "redis", "url": redis.url, "key": key, "count": 7, "block": "100ms"}
    engine: Engine = await run_engine(source)
    await until(lambda: len(lines(tmp_path)) >= 30)
    assert engine.snapshot().sources["rows"].to_json()["read"] == 30
    await stop(engine)
    for i in range(30, 40):
        r.xadd(key, {"n": str(i)})
    await run_engine(source)
    await until(lambda: len(lines(tmp_path)) >= 40)
    await asyncio.sleep(0.5)
    assert [int(x["payload"]["n"]) for x in lines(tmp_path)] == list(range(40))
    assert r.xpending(key, "edge-stream")["pending"] == 0


def test_keys_are_checked() -> None:
    _config, problems = build(url="http://x", key="k", mode="list", topic="a/{device}")
    assert problems[0].startswith("sources.r.url: must read redis://")
    assert "a list item has no fields" in problems[1]
    _config, problems = build(url="redis://h:1/0", key="k", count=0)
    assert problems == ["sources.r.count: must be between 1 and 10000"]
    # a field by position or with an attribute was a traceback (IndexError, AttributeError)
    for template in ("a/{0}", "a/{x.y}", "a/{x[0]}"):
        _config, problems = build(url="redis://h:1/0", key="k", topic=template)
        assert len(problems) == 1 and problems[0].startswith("sources.r.topic: {"), problems
    # the list itself as its processing list rotated it, each item read again and again
    for key in ("k", "k:done"):
        _config, problems = build(url="redis://h:1/0", key=key, mode="list", processing="k")
        assert problems == [f"sources.r.processing: must be another list than key ({key!r})"]
    # empty names were taken: a stream "" read by a group "" (or, for consumer and
    # processing, the default used instead of what was written)
    for keys in ({"key": ""}, {"group": ""}, {"consumer": ""}, {"processing": "", "mode": "list"}):
        _config, problems = build(url="redis://h:1/0", **{"key": "k", **keys})
        name = next(k for k, v in keys.items() if v == "")
        assert problems == [f"sources.r.{name}: must not be empty"]


def test_a_claim_idle_of_years_is_refused() -> None:
    # 100000h was taken: what a consumer that died left pending was never taken over
    _config, problems = build(url="redis://h:1/0", key="k", claim_idle="100000h")
    assert problems == ["sources.r.claim_idle: must be between 1s and 1d"]
    _config, problems = build(url="redis://h:1/0", key="k", claim_idle="1d")
    assert problems == []


def test_a_timeout_of_zero_is_refused_under_its_own_key() -> None:
    # connect_timeout: 0s was said as "timeout: timeouts must be positive", a key the user
    # had not written; the bound is in the reference now (docs/reference/source-redis.md)
    for key in ("connect_timeout", "timeout"):
        _config, problems = build(url="redis://h:1/0", key="k", **{key: "0s"})
        assert problems == [f"sources.r.{key}: must be more than 0s"]
    rows = {k.path: k for k in reference.keys(RedisSourceConfig)}
    assert rows["connect_timeout"].bounds == rows["timeout"].bounds == "> 0s"


async def test_a_store_position_is_committed_with_the_batch(tmp_path: Path) -> None:
    """The store facility the sources use: the last position of a batch is kept with it."""
    store = Store(tmp_path / "store.db")
    await store.open(["out"])
    assert await store.position("r") is None
    await store.commit(Batch([], [], {}, [], positions={"r": b"5-0"}))
    await store.commit(Batch([], [], {}, [], positions={"other": b"x"}))
    await store.close()
    reopened = Store(tmp_path / "store.db")
    await reopened.open(["out"])
    assert await reopened.position("r") == b"5-0"
    await reopened.close()


class RedisStreamProducer:
    """XADDs entries; they are confirmed once the group has read and acknowledged them
    all (nothing pending, the group's last delivered id at the last entry)."""

    def __init__(self, url: str, key: str) -> None:
        self.r = SyncRedis.from_url(url)
        self.key = key
        self.last: dict[str, bytes] = {}

    async def send(self, tag: str, n: int) -> None:
        for i in range(n):
            self.last[tag] = self.r.xadd(self.key, {"tag": tag, "seq": str(i)})

    async def confirmed(self, tag: str) -> bool | None:
        groups = {g["name"]: g for g in self.r.xinfo_groups(self.key)}
        group = groups.get(b"edge-stream")
        if group is None or group["pending"]:
            return False
        last = self.last[tag].decode().split("-")
        delivered = group["last-delivered-id"].decode().split("-")
        return tuple(map(int, delivered)) >= tuple(map(int, last))

    async def close(self) -> None:
        self.r.close()


class TestRedisSourceContract(SourceContract):
    """An existing source in the source contract: a stream through a consumer group."""

    @pytest.fixture
    def key(self) -> str:
        return unique_name()

    @pytest.fixture
    def source_keys(self, redis: Any, key: str) -> dict[str, Any]:
        return {"type": "redis", "url": redis.url, "key": key, "block": "100ms"}

    @pytest.fixture
    def producer(self, redis: Any, key: str) -> RedisStreamProducer:
        return RedisStreamProducer(redis.url, key)

    @pytest.fixture
    def topic_of(self, key: str) -> Callable[[str, int], str]:
        return lambda tag, seq: f"redis/{key}"


async def test_a_list_read_moves_as_many_items_as_there_are(redis: Any) -> None:
    """After the BLMOVE of the first item, count - 1 LMOVEs were sent whatever the list
    held: items coming one at a time cost 500 commands each."""
    key = unique_name()
    r = SyncRedis.from_url(redis.url)
    committed: list[bytes | None] = [None]
    source = make(redis.url, committed, key=key, mode="list", count=500)
    await source.connect()
    try:
        assert await read_all(source, 1) == []  # sorted out the last run: nothing
        r.rpush(key, "a", "b", "c")
        moves = r.info("commandstats").get("cmdstat_lmove", {}).get("calls", 0)
        got = await source.read()
        assert [m.flowfile.content for m in got] == [b"a", b"b", b"c"]
        assert r.info("commandstats").get("cmdstat_lmove", {}).get("calls", 0) - moves == 2
    finally:
        await source.close()
